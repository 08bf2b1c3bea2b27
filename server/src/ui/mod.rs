//! The web dashboard (`cairn-server serve --ui ADDR`): server-rendered pages
//! over HTTPS with the server's certificate, for operators signed in with a
//! one-time link from `cairn ui login` ([`session`]).
//!
//! Everything shown comes from nodes (names, facts, paths, diffs) and is
//! hostile: the templates (askama, under `server/templates/`) escape every
//! value, and no page carries inline script or style, so the
//! Content-Security-Policy ([`security_headers`]) forbids both. The assets
//! (`server/assets/`) are compiled into the binary. Pages work without
//! JavaScript; `live.js` only reloads the page's main part when the server
//! says the fleet changed ([`live`]).

// A handler's refusal is an axum `Response` (a page), returned as `Err` so
// that `?` works; it is not copied around enough for boxing it to pay.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;

use crate::nodes::ChannelMoves;
use crate::refusals::Refusals;
use crate::store::Store;
use crate::transport::{self, Counted, Limits};

mod grpc;
mod live;
mod pages;
pub mod session;

pub use grpc::DashboardApi;

/// Connections the dashboard takes at once, in all and from one address:
/// a few browsers, each with a handful of connections and one event stream.
const MAX_CONNECTIONS: usize = 1024;
const MAX_CONNECTIONS_PER_PEER: usize = 64;
/// A browser's connection is closed after this long, whatever it does; an
/// event stream cut so reconnects by itself.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(3600);

/// The largest request body read (a form).
const MAX_FORM_BYTES: usize = 16 * 1024;

/// What the pages read and whom they tell.
pub struct UiState {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) refusals: Arc<Refusals>,
    /// Told of a promote made from the dashboard; its fleet signal drives
    /// the live pages.
    pub(crate) moves: Arc<ChannelMoves>,
    /// True once the server shuts down: event streams end, so that draining
    /// does not wait for the browsers.
    pub(crate) stopping: watch::Receiver<bool>,
}

impl UiState {
    pub fn new(
        store: Arc<dyn Store>,
        refusals: Arc<Refusals>,
        moves: Arc<ChannelMoves>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        UiState {
            store,
            refusals,
            moves,
            stopping,
        }
    }

    fn fleet_changes(&self) -> watch::Receiver<u64> {
        self.moves.fleet_changes()
    }
}

/// The dashboard's routes. Every page needs a session ([`session::Viewer`]),
/// except the sign-in ones and the assets.
pub fn router(state: Arc<UiState>) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/nodes", get(pages::nodes))
        .route("/nodes/{name}", get(pages::node))
        .route("/reports/{id}", get(pages::report))
        .route("/roles", get(pages::roles))
        .route("/roles/{name}", get(pages::role))
        .route("/roles/{name}/promote", post(pages::promote))
        .route("/audit", get(pages::audit_log))
        .route("/events", get(live::events))
        .route("/sign-in", get(session::explain))
        .route("/sign-in/{secret}", get(session::sign_in))
        .route("/sign-out", post(session::sign_out))
        .route("/assets/{file}", get(asset))
        .fallback(pages::not_found)
        // The dashboard's forms are a few short fields.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            session::refuse_auditor_writes,
        ))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// The headers every answer carries: no script or style but the server's
/// own files, nothing framed or embedded, no referrer (a sign-in link's
/// secret never leaves in one), and pages never cached.
async fn security_headers(req: Request, next: Next) -> Response {
    let asset = req.uri().path().starts_with("/assets/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(
        h,
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=31536000; includeSubDomains",
    );
    set(
        h,
        axum::http::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        h,
        axum::http::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    if !asset {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    res
}

/// The files under `server/assets/`, compiled in.
async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "dashboard.css" => (
            include_str!("../../assets/dashboard.css"),
            "text/css; charset=utf-8",
        ),
        "live.js" => (
            include_str!("../../assets/live.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// The dashboard's TLS configuration: the server's certificate (and the CA
/// after it), HTTP/1.1, no client certificate asked (browsers sign in with
/// a link instead).
pub fn tls_config(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Arc<ServerConfig>> {
    use tokio_rustls::rustls::crypto::ring;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .chain(CertificateDer::pem_slice_iter(ca_pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .context("could not read the server certificate for the dashboard")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .context("could not read the server key for the dashboard")?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("could not set up TLS for the dashboard")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("could not use the server certificate for the dashboard")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the dashboard on `listener` until `stop` resolves: TLS handshakes
/// under the gRPC listener's caps and deadline ([`transport::accept_loop`]),
/// then axum.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: Arc<UiState>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    stop_accepting: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    let limits = Limits {
        total: MAX_CONNECTIONS,
        per_peer: MAX_CONNECTIONS_PER_PEER,
        anonymous_lifetime: CONNECTION_LIFETIME,
        ..Limits::default()
    };
    let accepting = transport::accept_loop(listener, tls, limits, tx, stop_accepting);
    let app = router(state).into_make_service_with_connect_info::<Peer>();
    let serving = axum::serve(Streams { rx, addr }, app).with_graceful_shutdown(stop);
    let ((), served) = tokio::join!(accepting, serving);
    served
}

/// Handshaken TLS connections from [`transport::accept_loop`], as axum takes them.
struct Streams {
    rx: mpsc::Receiver<TlsStream<Counted>>,
    addr: SocketAddr,
}

impl axum::serve::Listener for Streams {
    type Io = TlsStream<Counted>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(tls) => {
                let peer = tls.get_ref().0.peer_addr();
                (tls, peer)
            }
            // The accept loop ended (shutdown): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// The browser's address, for the audit log.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Streams>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Streams>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// An HTML page with its status.
pub(crate) fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        Body::from(body),
    )
        .into_response()
}

/// Whether a request may change something (every method but GET and HEAD).
fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD)
}
