//! `cairn ui login`: a one-time link that signs the operator in to the web
//! dashboard, asked for with the operator's credential like every command.

use anyhow::Result;
use cairn_proto::pb;
use serde::Serialize;

use super::connect::Server;
use super::error::RpcResult;
use super::output::{Render, short_time};
use super::{Output, emit};

/// `cairn ui login`.
#[derive(Debug, Serialize)]
pub struct LoginOut {
    /// Open it in a browser, once, before `expires_at`.
    pub url: String,
    /// RFC 3339.
    pub expires_at: String,
}

impl Render for LoginOut {
    fn human(&self) -> String {
        format!(
            "{}\nopen this link in your browser to sign in to the dashboard; it works once, until {}\n",
            self.url,
            short_time(&self.expires_at)
        )
    }
}

pub async fn login(server: &Server, fmt: Output) -> Result<()> {
    let conn = server.connect().await?;
    let resp = conn
        .dashboard()
        .sign_in_link(pb::SignInLinkRequest {})
        .await
        .rpc(&conn, || {
            "could not get a sign-in link for the dashboard".to_string()
        })?;
    emit(
        &LoginOut {
            url: resp.url,
            expires_at: resp.expires_at,
        },
        fmt,
    )
}
