//! `cairn token create|list|revoke` and `cairn node revoke`: who may enroll,
//! and ending a node's access. Admin operators only (the server checks).

use std::time::Duration;

use anyhow::Result;
use cairn_proto::client::{CaPin, Connection};
use cairn_proto::pb;
use serde::Serialize;

use super::connect::Server;
use super::error::RpcResult;
use super::output::{Render, short_time, table};
use super::{Output, emit};

/// One join token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Token {
    pub id: String,
    pub role: String,
    pub channel: String,
    /// `valid`, `expired`, `used up` or `revoked`.
    pub state: String,
    pub uses_allowed: u32,
    pub uses_used: u32,
    pub created_by: String,
    /// RFC 3339, as the server sent them; `revoked_at` empty when not revoked.
    pub created_at: String,
    pub expires_at: String,
    pub revoked_at: String,
}

impl From<pb::TokenInfo> for Token {
    fn from(t: pb::TokenInfo) -> Self {
        let a = t.assignment.unwrap_or_default();
        Token {
            id: t.id,
            role: a.role,
            channel: a.channel,
            state: t.state,
            uses_allowed: t.uses_allowed,
            uses_used: t.uses_used,
            created_by: t.created_by,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
        }
    }
}

/// `cairn token create`: the token, once, and how a node uses it.
#[derive(Debug, Serialize)]
pub struct CreatedOut {
    /// `ID.SECRET`: the only time it is shown.
    pub token: String,
    #[serde(flatten)]
    pub info: Token,
    /// The server to enroll with and the pin of its CA, for the node.
    pub server: String,
    pub ca_pin: String,
}

impl Render for CreatedOut {
    fn human(&self) -> String {
        let t = &self.info;
        format!(
            "join token {} (shown only now)\n  \
             enrolls up to {} node{} as role {} at channel {}, until {}\n\
             on the node, put it in a file (mode 0600) and run:\n  \
             cairn-agent enroll --server {} --ca-pin {} --token-file FILE\n",
            self.token,
            t.uses_allowed,
            if t.uses_allowed == 1 { "" } else { "s" },
            t.role,
            t.channel,
            short_time(&t.expires_at),
            self.server,
            self.ca_pin,
        )
    }
}

/// `cairn token list`.
#[derive(Debug, Serialize)]
pub struct TokensOut {
    /// Newest first.
    pub tokens: Vec<Token>,
}

impl Render for TokensOut {
    fn human(&self) -> String {
        if self.tokens.is_empty() {
            return "no join tokens; make one with `cairn token create --role NAME`\n".into();
        }
        let mut t = table([
            "ID", "ROLE", "CHANNEL", "STATE", "USES", "EXPIRES", "CREATED", "BY",
        ]);
        for k in &self.tokens {
            t.add_row([
                k.id.clone(),
                k.role.clone(),
                k.channel.clone(),
                k.state.clone(),
                format!("{}/{}", k.uses_used, k.uses_allowed),
                short_time(&k.expires_at),
                short_time(&k.created_at),
                k.created_by.clone(),
            ]);
        }
        format!("{t}\n")
    }
}

/// `cairn token revoke`.
#[derive(Debug, Serialize)]
pub struct RevokedTokenOut {
    #[serde(flatten)]
    pub token: Token,
}

impl Render for RevokedTokenOut {
    fn human(&self) -> String {
        let t = &self.token;
        format!(
            "revoked join token {} (role {} at channel {}; {} of {} uses taken); it enrolls no more nodes\n",
            t.id, t.role, t.channel, t.uses_used, t.uses_allowed
        )
    }
}

/// `cairn node revoke`.
#[derive(Debug, Serialize)]
pub struct RevokedNodeOut {
    pub node: String,
    pub role: String,
    pub channel: String,
}

impl Render for RevokedNodeOut {
    fn human(&self) -> String {
        format!(
            "revoked node {} (role {} at channel {}); the server refuses its certificate from its next call on \
             and has ended its watch streams\n",
            self.node, self.role, self.channel
        )
    }
}

pub async fn create_token(
    server: &Server,
    role: String,
    channel: String,
    ttl: Duration,
    uses: u32,
    fmt: Output,
) -> Result<()> {
    let conn = server.connect().await?;
    let resp = conn
        .access()
        .create_token(pb::CreateTokenRequest {
            role: role.clone(),
            channel,
            ttl_seconds: ttl.as_secs(),
            uses,
        })
        .await
        .rpc(&conn, || {
            format!("could not create a join token for role {role}")
        })?;
    // The operator's credential holds the CA the node must pin.
    let ca_pin = CaPin::of_cert_pem(&server.credentials.ca).map_or_else(
        |_| "sha256:… (`cairn-server ca pin`)".into(),
        |p| p.to_string(),
    );
    emit(
        &CreatedOut {
            token: resp.token,
            info: resp.info.unwrap_or_default().into(),
            server: server.url.clone(),
            ca_pin,
        },
        fmt,
    )
}

pub async fn list_tokens(server: &Server, fmt: Output) -> Result<()> {
    let conn = server.connect().await?;
    let resp = conn
        .access()
        .list_tokens(pb::ListTokensRequest {})
        .await
        .rpc(&conn, || "could not list join tokens".to_string())?;
    emit(
        &TokensOut {
            tokens: resp.tokens.into_iter().map(Token::from).collect(),
        },
        fmt,
    )
}

pub async fn revoke_token(server: &Server, id: String, fmt: Output) -> Result<()> {
    let conn = server.connect().await?;
    let resp = conn
        .access()
        .revoke_token(pb::RevokeTokenRequest { id: id.clone() })
        .await
        .rpc(&conn, || format!("could not revoke join token {id}"))?;
    emit(&RevokedTokenOut { token: resp.into() }, fmt)
}

/// `cairn node revoke` (a `node` subcommand beside the fleet's reads, so it
/// takes their connection).
pub async fn revoke_node(conn: &Connection, name: String, fmt: Output) -> Result<()> {
    let resp = conn
        .access()
        .revoke_node(pb::RevokeNodeRequest { name: name.clone() })
        .await
        .rpc(conn, || format!("could not revoke node {name}"))?;
    let a = resp.assignment.unwrap_or_default();
    emit(
        &RevokedNodeOut {
            node: name,
            role: a.role,
            channel: a.channel,
        },
        fmt,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::render;

    fn token(id: &str) -> Token {
        Token {
            id: id.into(),
            role: "web".into(),
            channel: "production".into(),
            state: "valid".into(),
            uses_allowed: 3,
            uses_used: 1,
            created_by: "ada".into(),
            created_at: "2026-01-01T10:00:00Z".into(),
            expires_at: "2026-01-01T11:00:00.5Z".into(),
            revoked_at: String::new(),
        }
    }

    #[test]
    fn a_created_token_says_how_to_use_it() {
        let out = CreatedOut {
            token: "abcdef.0123456789abcdef".into(),
            info: token("abcdef"),
            server: "https://cairn.example.org:7443".into(),
            ca_pin: "sha256:00".into(),
        };
        let text = render(&out, Output::Table).unwrap();
        assert!(text.starts_with("join token abcdef.0123456789abcdef (shown only now)\n"));
        assert!(
            text.contains(
                "cairn-agent enroll --server https://cairn.example.org:7443 --ca-pin sha256:00 --token-file FILE"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "up to 3 nodes as role web at channel production, until 2026-01-01 11:00:00Z"
            ),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&out, Output::Json).unwrap()).unwrap();
        assert_eq!(json["token"], "abcdef.0123456789abcdef");
        assert_eq!(json["role"], "web");
        assert_eq!(json["uses_used"], 1);
    }

    #[test]
    fn listed_tokens_are_escaped() {
        let mut evil = token("abcdef");
        evil.created_by = "ada\u{1b}[2J".into();
        let text = render(&TokensOut { tokens: vec![evil] }, Output::Table).unwrap();
        assert!(!text.contains('\u{1b}') && text.contains("1/3"), "{text}");
        let none = render(&TokensOut { tokens: vec![] }, Output::Table).unwrap();
        assert!(none.contains("cairn token create"), "{none}");
    }
}
