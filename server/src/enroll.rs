//! Enrollment and access: how a node gets its certificate with a join token
//! (`Enrollment`, the one service reached without a client certificate), and
//! how admins make and revoke tokens and revoke nodes (`Access`).
//!
//! A join token is `ID.SECRET` ([`TOKEN_ID_LEN`] and [`TOKEN_SECRET_LEN`]
//! characters of `a-z0-9`, about 82 random bits of secret); the server keeps
//! only the SHA-256 of the secret. An enrollment is checked in this order, the
//! cheapest and least revealing first: the token's form, the token (so a
//! caller without one makes the server do nothing more), the name, the facts,
//! the certificate request; then the certificate is signed and the node
//! recorded in the same transaction that takes the token's use. Every refusal
//! is logged and audited through [`crate::refusals`], coalesced per peer.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::node::{self, Assignment};
use cairn_proto::pb;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::auth::{NODE_UNIT, Permission};
use crate::pki::{NodeRequest, Pki};
use crate::refusals::Refusal;
use crate::service::{Api, check_assigned_role, check_channel, cut, rfc3339, store_status};
use crate::store::{self, Actor, NewToken, StoreError, TokenRecord, TokenRefusal, now_micros};

/// The gRPC path of `Enrollment.Enroll`, which the gate lets through without
/// a client certificate.
pub const ENROLL_PATH: &str = "/cairn.v1.Enrollment/Enroll";
/// Larger enrollment messages are refused before they are decoded.
pub const MAX_ENROLL_MESSAGE_BYTES: usize = 128 << 10;
/// The most facts a node may send when it enrolls, in bytes of JSON.
pub const MAX_FACTS_BYTES: usize = 64 << 10;

pub const TOKEN_ID_LEN: usize = 6;
pub const TOKEN_SECRET_LEN: usize = 16;
const TOKEN_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// How long a token admits enrollments unless told.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The longest a token may live.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// At most this many tokens (the newest) in a list.
pub const MAX_LISTED_TOKENS: u32 = 1000;
/// The most enrollments one token may admit.
pub const MAX_TOKEN_USES: u32 = 10_000;

/// `len` random characters of [`TOKEN_ALPHABET`].
fn random_text(len: usize) -> Result<String, Status> {
    let mut out = String::with_capacity(len);
    let mut bytes = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut bytes).map_err(|e| {
            tracing::error!(error = %e, "no randomness for a join token");
            Status::internal("the server could not make a random token; see its log")
        })?;
        // 252 = 7 × 36: taking only bytes below it keeps every character equally likely.
        out.extend(
            bytes
                .iter()
                .filter(|&&b| b < 252)
                .map(|&b| TOKEN_ALPHABET[usize::from(b % 36)] as char)
                .take(len - out.len()),
        );
    }
    Ok(out)
}

/// The id and secret of a token given as `ID.SECRET`, if it has that form.
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, len| s.len() == len && s.bytes().all(|b| TOKEN_ALPHABET.contains(&b));
    (ok(id, TOKEN_ID_LEN) && ok(secret, TOKEN_SECRET_LEN)).then_some((id, secret))
}

/// What the server stores of a token's secret.
pub fn secret_sha256(secret: &str) -> String {
    format!("{:x}", Sha256::digest(secret.as_bytes()))
}

/// A refused enrollment: the status to return, and the audit action naming
/// the case (one of a few fixed texts: refusals from one peer are counted
/// per case, so each case shows in the audit log).
struct Refused(Status, &'static str);

const UNKNOWN_TOKEN: &str = "enroll (unknown token)";

fn invalid(status: Status) -> Refused {
    Refused(status, "enroll (invalid request)")
}

/// Not the caller's doing: logged, not counted against it.
fn failed(status: Status) -> Refused {
    Refused(status, "")
}

/// The refusal for a token that admits no enrollment, saying which case it is.
fn token_refused(id: &str, refusal: TokenRefusal) -> Refused {
    let ask = "ask an admin for a new one (`cairn token create`)";
    match refusal {
        TokenRefusal::Unknown => Refused(
            Status::unauthenticated(format!("unknown join token {id}, or a wrong secret: {ask}")),
            UNKNOWN_TOKEN,
        ),
        TokenRefusal::Expired { at } => Refused(
            Status::permission_denied(format!("join token {id} expired at {}: {ask}", rfc3339(at))),
            "enroll (expired token)",
        ),
        TokenRefusal::UsedUp { uses } => Refused(
            Status::permission_denied(format!(
                "join token {id} is used up (it admitted {uses} enrollment{}): {ask}",
                if uses == 1 { "" } else { "s" }
            )),
            "enroll (used-up token)",
        ),
        TokenRefusal::Revoked { at } => Refused(
            Status::permission_denied(format!(
                "join token {id} was revoked at {}: {ask}",
                rfc3339(at)
            )),
            "enroll (revoked token)",
        ),
    }
}

/// The handlers of `Enrollment` (with the CA, to sign) and `Access`.
#[derive(Clone)]
pub struct Enroller {
    api: Api,
    pki: Arc<Pki>,
}

impl Enroller {
    pub fn new(api: Api, pki: Arc<Pki>) -> Self {
        Enroller { api, pki }
    }

    /// Checks an enrollment and carries it out.
    async fn admit(
        &self,
        req: pb::EnrollRequest,
        peer: &str,
    ) -> Result<pb::EnrollResponse, Refused> {
        let pb::EnrollRequest {
            token,
            csr_pem,
            node_name: name,
            facts_json,
        } = req;
        let (id, secret) = split_token(token.trim()).ok_or_else(|| {
            Refused(
                Status::unauthenticated(
                    "malformed join token: expected ID.SECRET, as `cairn token create` prints it",
                ),
                UNKNOWN_TOKEN,
            )
        })?;
        let secret = secret_sha256(secret);
        let store = self.api.store.as_ref();
        let checked = store.check_token(id, &secret).await;
        if let Err(refused) = checked.map_err(|e| failed(store_status(e)))? {
            return Err(token_refused(id, refused));
        }
        node::check_name(&name).map_err(|e| invalid(Status::invalid_argument(e.to_string())))?;
        let facts_json = match facts_json.as_str() {
            "" => None,
            text if text.len() > MAX_FACTS_BYTES => {
                return Err(invalid(Status::invalid_argument(format!(
                    "the facts are {} bytes long; at most {MAX_FACTS_BYTES} are accepted",
                    text.len()
                ))));
            }
            text => {
                serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| {
                    invalid(Status::invalid_argument(format!(
                        "the facts are not JSON: {e}"
                    )))
                })?;
                Some(facts_json)
            }
        };
        let request =
            NodeRequest::from_pem(&csr_pem).map_err(|e| invalid(Status::invalid_argument(e)))?;
        let cert = self.pki.sign_node(request, &name).map_err(|e| {
            tracing::error!(
                error = format!("{e:#}"),
                node = name,
                "could not sign a node certificate"
            );
            failed(Status::internal(
                "the server could not sign the certificate; see its log",
            ))
        })?;
        let actor = Actor {
            name: name.clone(),
            role: NODE_UNIT.into(),
            peer: peer.to_string(),
        };
        let enrolled = store
            .enroll(
                store::Enrollment {
                    token_id: id.to_string(),
                    secret_sha256: secret,
                    name: name.clone(),
                    fingerprint: cert.fingerprint,
                    facts_json,
                },
                &actor,
            )
            .await
            .map_err(|e| failed(store_status(e)))?
            .map_err(|refused| token_refused(id, refused))?;
        let assignment = enrolled.node.assignment;
        info!(node = name, token = id, %assignment, replaced = enrolled.replaced.is_some(), peer, "node enrolled");
        Ok(pb::EnrollResponse {
            node_name: name,
            cert_pem: cert.cert_pem,
            ca_pem: self.pki.ca_pem.clone(),
            assignment: Some(assignment.into()),
        })
    }
}

#[tonic::async_trait]
impl pb::enrollment_server::Enrollment for Enroller {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        self.api
            .observed("enroll", async {
                let peer = req
                    .remote_addr()
                    .map_or_else(|| "unknown".to_string(), |a| a.to_string());
                let req = req.into_inner();
                let target = req.node_name.clone();
                let Refused(status, action) = match self.admit(req, &peer).await {
                    Ok(response) => return Ok(response),
                    Err(refused) => refused,
                };
                if !action.is_empty() {
                    // The caller is nobody yet: the name it asked for is the target.
                    let anonymous = Actor {
                        name: "anonymous".into(),
                        role: "none".into(),
                        peer,
                    };
                    self.api
                        .refusals
                        .record(Refusal {
                            actor: &anonymous,
                            action,
                            target: &target,
                            status: &status,
                        })
                        .await;
                }
                Err(status)
            })
            .await
    }
}

fn token_info(t: TokenRecord, now: store::Micros) -> pb::TokenInfo {
    let state = if t.revoked_at.is_some() {
        "revoked"
    } else if t.expires_at <= now {
        "expired"
    } else if t.uses_used >= t.uses_allowed {
        "used up"
    } else {
        "valid"
    };
    pb::TokenInfo {
        id: t.id,
        assignment: Some(t.assignment.into()),
        created_by: t.created_by,
        created_at: rfc3339(t.created_at),
        expires_at: rfc3339(t.expires_at),
        uses_allowed: t.uses_allowed,
        uses_used: t.uses_used,
        revoked_at: t.revoked_at.map(rfc3339).unwrap_or_default(),
        state: state.into(),
    }
}

#[tonic::async_trait]
impl pb::access_server::Access for Enroller {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.api
            .observed("create_token", async {
                let role = req.get_ref().role.clone();
                let actor = self
                    .api
                    .authorize(&req, Permission::Admin, "token create", &role, "create join tokens")
                    .await?;
                let pb::CreateTokenRequest {
                    role,
                    channel,
                    ttl_seconds,
                    uses,
                } = req.into_inner();
                check_assigned_role(&role)?;
                let channel = check_channel(&channel)?;
                let ttl = match ttl_seconds {
                    0 => DEFAULT_TOKEN_TTL,
                    s => Duration::from_secs(s),
                };
                if ttl > MAX_TOKEN_TTL {
                    return Err(Status::invalid_argument(format!(
                        "a token may live at most {}",
                        humantime::format_duration(MAX_TOKEN_TTL)
                    )));
                }
                let uses = if uses == 0 { 1 } else { uses };
                if uses > MAX_TOKEN_USES {
                    return Err(Status::invalid_argument(format!(
                        "a token may admit at most {MAX_TOKEN_USES} enrollments"
                    )));
                }
                // A role nobody pushed is most often a typo: refused now
                // rather than found out on every node at its first run.
                match self.api.store.versions(&role).await {
                    Ok(_) => {}
                    Err(StoreError::NotFound(_)) => {
                        return Err(Status::failed_precondition(format!(
                            "role {role} has no version on this server; push it first \
                             (`cairn role push DIR`): a token assigns an existing role"
                        )));
                    }
                    Err(e) => return Err(store_status(e)),
                }
                let id = random_text(TOKEN_ID_LEN)?;
                let secret = random_text(TOKEN_SECRET_LEN)?;
                let record = self
                    .api
                    .store
                    .create_token(
                        NewToken {
                            id: id.clone(),
                            secret_sha256: secret_sha256(&secret),
                            assignment: Assignment { role, channel },
                            expires_at: now_micros() + ttl.as_micros() as store::Micros,
                            uses_allowed: uses,
                        },
                        &actor,
                    )
                    .await
                    .map_err(store_status)?;
                info!(token = id, assignment = %record.assignment, uses, actor = %actor.name, "join token created");
                Ok(pb::CreateTokenResponse {
                    token: format!("{id}.{secret}"),
                    info: Some(token_info(record, now_micros())),
                })
            })
            .await
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.api
            .observed("list_tokens", async {
                self.api
                    .authorize(
                        &req,
                        Permission::Admin,
                        "token list",
                        "",
                        "list join tokens",
                    )
                    .await?;
                let now = now_micros();
                let tokens = self
                    .api
                    .store
                    .tokens(MAX_LISTED_TOKENS)
                    .await
                    .map_err(store_status)?;
                Ok(pb::ListTokensResponse {
                    tokens: tokens.into_iter().map(|t| token_info(t, now)).collect(),
                })
            })
            .await
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        self.api
            .observed("revoke_token", async {
                let id = req.get_ref().id.clone();
                let actor = self
                    .api
                    .authorize(
                        &req,
                        Permission::Admin,
                        "token revoke",
                        &id,
                        "revoke join tokens",
                    )
                    .await?;
                let ok = id.len() == TOKEN_ID_LEN && id.bytes().all(|b| TOKEN_ALPHABET.contains(&b));
                if !ok {
                    return Err(Status::invalid_argument(format!(
                        "invalid token id {:?}: a token's id is the {TOKEN_ID_LEN} characters before \
                         its '.', as `cairn token list` shows them",
                        cut(&id)
                    )));
                }
                let record = self
                    .api
                    .store
                    .revoke_token(&id, &actor)
                    .await
                    .map_err(store_status)?;
                info!(token = id, actor = %actor.name, "join token revoked");
                Ok(token_info(record, now_micros()))
            })
            .await
    }

    async fn revoke_node(
        &self,
        req: Request<pb::RevokeNodeRequest>,
    ) -> Result<Response<pb::RevokeNodeResponse>, Status> {
        self.api
            .observed("revoke_node", async {
                let name = req.get_ref().name.clone();
                let actor = self
                    .api
                    .authorize(
                        &req,
                        Permission::Admin,
                        "node revoke",
                        &name,
                        "revoke nodes",
                    )
                    .await?;
                node::check_name(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
                let store = self.api.store.as_ref();
                let assignment = match store.node(&name).await.map_err(store_status)? {
                    Some(node) => node.assignment,
                    None => return Err(Status::not_found(format!("node {name} not found"))),
                };
                store
                    .revoke_node(&name, &actor)
                    .await
                    .map_err(store_status)?;
                self.api.moves.revoked(&name);
                info!(node = name, actor = %actor.name, "node revoked");
                Ok(pb::RevokeNodeResponse {
                    assignment: Some(assignment.into()),
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_in_form_and_split_back() {
        let a = format!(
            "{}.{}",
            random_text(TOKEN_ID_LEN).unwrap(),
            random_text(TOKEN_SECRET_LEN).unwrap()
        );
        let b = random_text(TOKEN_SECRET_LEN).unwrap();
        assert_ne!(&a[TOKEN_ID_LEN + 1..], b);
        let (id, secret) = split_token(&a).unwrap();
        assert_eq!((id.len(), secret.len()), (TOKEN_ID_LEN, TOKEN_SECRET_LEN));
        for bad in [
            "",
            "abcdef",
            "abcdef.",
            "abcdef.0123456789abcdeF",
            "abcde.0123456789abcdef0",
            "abcdef.0123456789abcdef.x",
            "abcdef.0123456789abcde\n",
        ] {
            assert_eq!(split_token(bad), None, "{bad:?}");
        }
        // Every character of the alphabet turns up, none other.
        let many = random_text(4000).unwrap();
        assert!(TOKEN_ALPHABET.iter().all(|c| many.as_bytes().contains(c)));
        assert_eq!(secret_sha256("x").len(), 64);
    }
}
