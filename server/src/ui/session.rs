//! Signing in to the dashboard without a password: `cairn ui login` (with the
//! operator's certificate) gets a one-time link valid for [`LINK_LIFETIME`]
//! ([`super::grpc`]); following it starts a session of [`SESSION_LIFETIME`]
//! bound to that operator, role and certificate, held by a cookie
//! (`HttpOnly`, `Secure`, `SameSite=Strict`). Only the SHA-256 of a link's or
//! a session's secret is stored. A session counts while its certificate does
//! (a revoked operator is signed out at once). Writes need the session's
//! CSRF token (a hash of its secret, so nothing more is stored); an auditor's
//! session makes none ([`refuse_auditor_writes`]).

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use cairn_proto::bundle::hex;
use sha2::{Digest, Sha256};
use tonic::Status;
use tracing::error;

use super::{Peer, UiState, html, is_write};
use crate::auth::OperatorRole;
use crate::refusals::Refusal;
use crate::store::{self, Actor, LinkRefusal, NewSession, Standing, now_micros};

/// How long a sign-in link may be used.
pub const LINK_LIFETIME: Duration = Duration::from_secs(120);
/// How long a session lasts: a working day.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// The session cookie's name. `__Host-`: the browser keeps it only if it was
/// set `Secure`, for `/`, by this host alone.
pub const COOKIE: &str = "__Host-cairn-session";
/// Bytes of randomness in a link's or a session's secret.
const SECRET_BYTES: usize = 32;
/// How long expired links and sessions are kept before the background job
/// deletes them ([`expire_sign_ins`]): meanwhile a used or expired link is
/// told apart from an unknown one.
pub const KEEP_EXPIRED: Duration = Duration::from_secs(86_400);

/// Deletes the links and sessions that expired more than [`KEEP_EXPIRED`]
/// ago: one of the background jobs, run by the server that holds their
/// lease. Returns how many; a storage failure is logged, and the next round
/// tries again.
pub async fn expire_sign_ins(store: &dyn store::Store) -> u64 {
    let before = now_micros().saturating_sub(KEEP_EXPIRED.as_micros() as store::Micros);
    match store.delete_expired_sign_ins(before).await {
        Ok(deleted) => deleted,
        Err(e) => {
            error!(
                error = format!("{:#}", anyhow::Error::from(e)),
                "could not delete expired dashboard sign-in links and sessions"
            );
            0
        }
    }
}

/// A new secret: [`SECRET_BYTES`] random bytes, hex.
pub fn new_secret() -> std::io::Result<String> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(hex(&bytes))
}

/// What is stored of a secret.
pub fn sha256(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// The CSRF token of the session with `secret`: known to the pages it is
/// shown, never stored.
fn csrf_of(secret: &str) -> String {
    sha256(&format!("cairn dashboard csrf\0{secret}"))
}

/// Whether `secret` looks like one [`new_secret`] made: anything else is
/// not looked up.
fn well_formed(secret: &str) -> bool {
    secret.len() == SECRET_BYTES * 2 && secret.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The session secret in the request's cookie, if any.
fn cookie_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|v| well_formed(v))
}

/// The operator a request's session belongs to.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub name: String,
    pub role: OperatorRole,
    /// For the forms of this session's pages.
    pub csrf: String,
    session_sha256: String,
}

impl Viewer {
    pub fn can_publish(&self) -> bool {
        self.role >= OperatorRole::Publisher
    }

    pub fn actor(&self, peer: &Peer) -> Actor {
        Actor {
            name: self.name.clone(),
            role: self.role.as_str().into(),
            peer: peer.0.to_string(),
        }
    }

    /// Whether `token` is this session's CSRF token, compared in constant
    /// time.
    pub fn csrf_matches(&self, token: &str) -> bool {
        let (a, b) = (token.as_bytes(), self.csrf.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0, |d, (x, y)| d | (x ^ y)) == 0
    }
}

/// The session of the request, checked: open, unexpired, and its
/// certificate still the operator's. `Ok(None)` without one.
async fn viewer(state: &UiState, headers: &HeaderMap) -> Result<Option<Viewer>, Response> {
    let Some(secret) = cookie_secret(headers) else {
        return Ok(None);
    };
    let session_sha256 = sha256(secret);
    let failed = |e: store::StoreError| {
        error!(
            error = format!("{:#}", anyhow::Error::from(e)),
            "could not read a dashboard session"
        );
        unavailable()
    };
    let Some(s) = state
        .store
        .session(&session_sha256, now_micros())
        .await
        .map_err(failed)?
    else {
        return Ok(None);
    };
    match state
        .store
        .standing(&s.operator, &s.fingerprint)
        .await
        .map_err(failed)?
    {
        Standing::Current | Standing::Unrecorded => {}
        Standing::Revoked | Standing::Replaced | Standing::Unknown => return Ok(None),
    }
    let Ok(role) = s.role.parse() else {
        return Ok(None);
    };
    Ok(Some(Viewer {
        name: s.operator,
        role,
        csrf: csrf_of(secret),
        session_sha256,
    }))
}

impl FromRequestParts<Arc<UiState>> for Viewer {
    type Rejection = Response;

    /// Without a session: a page is redirected to the sign-in explanation,
    /// a write refused.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<UiState>,
    ) -> Result<Self, Self::Rejection> {
        match viewer(state, &parts.headers).await? {
            Some(v) => Ok(v),
            None if is_write(&parts.method) => Err(refused(
                StatusCode::FORBIDDEN,
                "Not signed in",
                "This request needs a session; sign in first.",
            )),
            None => Err(Redirect::to("/sign-in").into_response()),
        }
    }
}

/// Refuses every write of an auditor's session (but signing out) before its
/// body is read, whatever the route.
pub async fn refuse_auditor_writes(
    State(state): State<Arc<UiState>>,
    req: Request,
    next: Next,
) -> Response {
    if is_write(req.method()) && req.uri().path() != "/sign-out" {
        match viewer(&state, req.headers()).await {
            Err(res) => return res,
            Ok(Some(v)) if v.role < OperatorRole::Publisher => {
                let peer = req
                    .extensions()
                    .get::<ConnectInfo<Peer>>()
                    .map(|c| c.0)
                    .unwrap_or(Peer(([0, 0, 0, 0], 0).into()));
                let status = Status::permission_denied("an auditor's session changes nothing");
                state
                    .refusals
                    .record(Refusal {
                        actor: &v.actor(&peer),
                        action: "ui write",
                        target: req.uri().path(),
                        status: &status,
                    })
                    .await;
                return refused(
                    StatusCode::FORBIDDEN,
                    "Not allowed",
                    "An auditor's session sees everything and changes nothing.",
                );
            }
            Ok(_) => {}
        }
    }
    next.run(req).await
}

#[derive(Template)]
#[template(path = "message.html")]
struct Message<'a> {
    title: &'a str,
    text: &'a str,
    /// Shown as a command to run.
    command: Option<&'a str>,
}

/// A page saying why a request was refused.
pub(crate) fn refused(status: StatusCode, title: &str, text: &str) -> Response {
    page(status, title, text, None)
}

fn page(status: StatusCode, title: &str, text: &str, command: Option<&str>) -> Response {
    match (Message {
        title,
        text,
        command,
    })
    .render()
    {
        Ok(body) => html(status, body),
        Err(e) => {
            error!(error = %e, "could not render a page");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

pub(crate) fn unavailable() -> Response {
    refused(
        StatusCode::SERVICE_UNAVAILABLE,
        "Storage unavailable",
        "The server could not reach its database; see its log.",
    )
}

const HOW_TO_SIGN_IN: &str = "The dashboard has no passwords. Ask for a one-time sign-in link \
     with your operator credential, and open it here within 2 minutes:";

/// `GET /sign-in`: how to sign in.
pub async fn explain() -> Response {
    page(
        StatusCode::OK,
        "Sign in",
        HOW_TO_SIGN_IN,
        Some("cairn ui login"),
    )
}

/// `GET /sign-in/SECRET`: the link `cairn ui login` printed. Starts a
/// session and goes to the overview, or says why the link is refused.
pub async fn sign_in(
    State(state): State<Arc<UiState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(secret): Path<String>,
) -> Response {
    if !well_formed(&secret) {
        return refuse_link(&state, peer, "is not one the server issued").await;
    }
    let Ok(session_secret) = new_secret() else {
        return unavailable();
    };
    let now = now_micros();
    let session = NewSession {
        secret_sha256: sha256(&session_secret),
        expires_at: now + SESSION_LIFETIME.as_micros() as i64,
    };
    match state
        .store
        .sign_in(&sha256(&secret), session, now, &peer.0.to_string())
        .await
    {
        Ok(Ok(_)) => {
            let cookie = format!(
                "{COOKIE}={session_secret}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
                SESSION_LIFETIME.as_secs()
            );
            let mut res = Redirect::to("/").into_response();
            match HeaderValue::from_str(&cookie) {
                Ok(v) => {
                    res.headers_mut().insert(header::SET_COOKIE, v);
                    res
                }
                Err(_) => unavailable(),
            }
        }
        Ok(Err(LinkRefusal::Used { .. })) => refuse_link(&state, peer, "was already used").await,
        Ok(Err(LinkRefusal::Expired { .. })) => refuse_link(&state, peer, "has expired").await,
        Ok(Err(LinkRefusal::Unknown)) => {
            refuse_link(&state, peer, "is not one the server issued").await
        }
        Err(e) => {
            error!(
                error = format!("{:#}", anyhow::Error::from(e)),
                "could not sign in"
            );
            unavailable()
        }
    }
}

/// A sign-in link refused: recorded, and a page that says why and what to do.
async fn refuse_link(state: &UiState, peer: Peer, why: &str) -> Response {
    let status = Status::unauthenticated(format!("sign-in link refused: {why}"));
    state
        .refusals
        .record(Refusal {
            actor: &Actor {
                name: "anonymous".into(),
                role: "none".into(),
                peer: peer.0.to_string(),
            },
            action: "ui sign-in",
            target: "",
            status: &status,
        })
        .await;
    page(
        StatusCode::FORBIDDEN,
        "Sign-in link refused",
        &format!("This sign-in link {why}. {HOW_TO_SIGN_IN}"),
        Some("cairn ui login"),
    )
}

#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /sign-out`: ends the session on the server and forgets the cookie.
pub async fn sign_out(
    State(state): State<Arc<UiState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    viewer: Viewer,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    if !viewer.csrf_matches(&form.csrf) {
        return refused(
            StatusCode::FORBIDDEN,
            "Not allowed",
            "The form's CSRF token does not match this session.",
        );
    }
    if let Err(e) = state
        .store
        .sign_out(&viewer.session_sha256, &viewer.actor(&peer))
        .await
    {
        error!(
            error = format!("{:#}", anyhow::Error::from(e)),
            "could not sign out"
        );
        return unavailable();
    }
    let mut res = page(
        StatusCode::OK,
        "Signed out",
        &format!("Your session has ended. {HOW_TO_SIGN_IN}"),
        Some("cairn ui login"),
    );
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-cairn-session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_session_cookie_is_read() {
        let secret = new_secret().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={secret}; c=d")).unwrap(),
        );
        assert_eq!(cookie_secret(&h), Some(secret.as_str()));
        for bad in ["x", "<script>", &secret[1..], &format!("{secret}0")] {
            let mut h = HeaderMap::new();
            h.insert(
                header::COOKIE,
                HeaderValue::from_str(&format!("{COOKIE}={bad}")).unwrap(),
            );
            assert_eq!(cookie_secret(&h), None, "{bad}");
        }
        assert_ne!(
            csrf_of(&secret),
            sha256(&secret),
            "the CSRF token is not the stored hash"
        );
    }
}
