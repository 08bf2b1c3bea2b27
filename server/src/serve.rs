//! Serving: open storage and the TLS identity ([`Server::open`]), then serve on
//! listeners the caller bound ([`run`]) until the shutdown future resolves,
//! then drain: in-flight requests finish, new connections are refused.
//!
//! The caller binds so that it knows the addresses before anything is served:
//! the daemon binds its flags' addresses, tests bind `127.0.0.1:0`.

use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use cairn_proto::pb::access_server::AccessServer;
use cairn_proto::pb::audit_server::AuditServer;
use cairn_proto::pb::dashboard_server::DashboardServer;
use cairn_proto::pb::enrollment_server::EnrollmentServer;
use cairn_proto::pb::fleet_server::FleetServer;
use cairn_proto::pb::nodes_server::NodesServer;
use cairn_proto::pb::roles_server::RolesServer;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls::ServerConfig;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::enroll::{Enroller, MAX_ENROLL_MESSAGE_BYTES};
use crate::fleet;
use crate::gate::{EXEMPT_PATHS, GateLayer};
use crate::metrics::Metrics;
use crate::nodes::{MAX_REPORT_BYTES, NodeApi};
use crate::pki::{self, Pki};
use crate::refusals::{self, Refusals};
use crate::service::{Api, MAX_MESSAGE_BYTES};
use crate::store::{self, Actor, JobLease, Store};
use crate::transport::{self, Limits, MAX_STREAMS_PER_CONNECTION};

const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// An HTTP/2 ping on a connection quiet this long, and how long its answer may take.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often background jobs run (and once at start): reports past their
/// retention are deleted, and the dashboard's expired sign-in links and
/// sessions; a server that does not hold the jobs' lease tries
/// to take it.
pub const JOBS_EVERY: Duration = Duration::from_secs(3600);
/// The lease on background jobs: one server on a database runs them.
const JOBS_LEASE: &str = "background jobs";
/// Reports are kept this many days unless `--report-retention` says otherwise.
pub const DEFAULT_REPORT_RETENTION_DAYS: u32 = 30;
pub const DEFAULT_REPORT_RETENTION: Duration =
    Duration::from_secs(DEFAULT_REPORT_RETENTION_DAYS as u64 * 86_400);

#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The CA and the server certificate.
    pub data_dir: PathBuf,
    /// Where roles, channels and the audit log are: see [`store::open`].
    pub database: String,
    /// Names and addresses clients reach the server by; the certificate's SANs.
    pub names: Vec<String>,
    /// Caps on gRPC connections, in total and per peer.
    pub limits: Limits,
    /// Reports received longer ago than this are deleted.
    pub report_retention: Duration,
    /// How often background jobs run: [`JOBS_EVERY`] (tests shorten it).
    pub jobs_every: Duration,
    /// How long the node certificates it signs are valid (enrollment and
    /// renewal): [`pki::DEFAULT_NODE_CERT_LIFETIME`] unless told.
    pub node_cert_lifetime: Duration,
}

impl ServeConfig {
    /// A configuration with the default connection caps and report retention.
    pub fn new(data_dir: PathBuf, database: String, names: Vec<String>) -> Self {
        ServeConfig {
            data_dir,
            database,
            names,
            limits: Limits::default(),
            report_retention: DEFAULT_REPORT_RETENTION,
            jobs_every: JOBS_EVERY,
            node_cert_lifetime: pki::DEFAULT_NODE_CERT_LIFETIME,
        }
    }
}

/// What the server serves: its storage and its TLS identity, opened.
pub struct Server {
    store: Arc<dyn Store>,
    /// The CA, which signs nodes' certificates when they enroll.
    pki: Arc<Pki>,
    tls: Arc<ServerConfig>,
    /// The dashboard's: the same certificate, HTTP/1.1, no client certificate.
    ui_tls: Arc<ServerConfig>,
    /// The first of the certificate's names: the dashboard's links name it.
    name: String,
    limits: Limits,
    report_retention: Duration,
    jobs_every: Duration,
    /// Held while the server lives: a second server on the same data directory
    /// would rewrite its keys and race its writes.
    _data_dir_lock: Flock<File>,
}

impl Server {
    /// Opens the database, then the CA the servers on it share (created on
    /// the first start: see [`Pki::open_shared`]), and issues this server's
    /// certificate for the configured names.
    pub async fn open(config: &ServeConfig) -> Result<Server> {
        pki::ensure_data_dir(&config.data_dir)?;
        let lock = lock_data_dir(&config.data_dir)?;
        let store = store::open(&config.database)
            .await
            .context("could not open the database")?;
        let me = Actor {
            name: config
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| "cairn-server".into()),
            role: "server".into(),
            peer: "local".into(),
        };
        let pki = Pki::open_shared(&config.data_dir, store.as_ref(), &me)
            .await?
            .with_node_cert_lifetime(config.node_cert_lifetime)?;
        let id = pki
            .issue_server(&config.names)
            .context("could not issue the server certificate")?;
        info!(names = ?config.names, data_dir = %config.data_dir.display(), "opened");
        let tls = transport::tls_config(&id.cert_pem, &id.key_pem, &pki.ca_pem)?;
        let ui_tls = crate::ui::tls_config(&id.cert_pem, &id.key_pem, &pki.ca_pem)?;
        Ok(Server {
            store,
            pki: Arc::new(pki),
            tls,
            ui_tls,
            name: me.name,
            limits: config.limits,
            report_retention: config.report_retention,
            jobs_every: config.jobs_every,
            _data_dir_lock: lock,
        })
    }
}

/// The file a running server holds locked in its data directory.
const LOCK_FILE: &str = "server.lock";

/// Takes the data directory for this process: a second server is refused.
fn lock_data_dir(dir: &Path) -> Result<Flock<File>> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("could not open lock file {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| match e {
        Errno::EWOULDBLOCK => anyhow!(
            "another cairn-server is using data directory {}\n  help: stop it first, or give this one its own --data-dir",
            dir.display()
        ),
        e => anyhow!("could not lock {}: {e}", path.display()),
    })
}

/// The gRPC (TLS) and HTTP (health, metrics) listeners, and the
/// dashboard's (HTTPS) if it is served, bound by the caller.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub ui: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(
        grpc: SocketAddr,
        http: SocketAddr,
        ui: Option<SocketAddr>,
    ) -> Result<Listeners> {
        let ui = match ui {
            Some(ui) => Some(
                TcpListener::bind(ui)
                    .await
                    .with_context(|| format!("could not listen on {ui} (dashboard)"))?,
            ),
            None => None,
        };
        Ok(Listeners {
            grpc: TcpListener::bind(grpc)
                .await
                .with_context(|| format!("could not listen on {grpc} (gRPC)"))?,
            http: TcpListener::bind(http)
                .await
                .with_context(|| format!("could not listen on {http} (HTTP)"))?,
            ui,
        })
    }
}

/// `https://NAME:PORT`: where a browser reaches the dashboard on `port`, by
/// the server certificate's first name.
fn ui_base_url(name: &str, port: u16) -> String {
    match name.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("https://[{name}]:{port}"),
        Err(_) => format!("https://{name}:{port}"),
    }
}

/// Serves `server` on `listeners` until `shutdown` resolves, then drains.
pub async fn run(
    server: Server,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    // `_lock` lives until serving ends, so the next server can take the directory only then.
    let Server {
        store,
        pki,
        tls,
        ui_tls,
        name,
        limits,
        report_retention,
        jobs_every,
        _data_dir_lock: _lock,
    } = server;
    let metrics = Arc::new(Metrics::default());
    let refusals = Arc::new(Refusals::new(store.clone()));
    let api = Api::new(store.clone(), metrics.clone(), refusals.clone());
    let api_moves = api.moves.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    {
        let moves = api.moves.clone();
        tokio::spawn(async move {
            shutdown.await;
            info!("shutting down: finishing in-flight requests");
            let _ = stop_tx.send(true);
            // Watch streams never finish by themselves: end them.
            moves.close();
        });
    }
    let mut stop_rx_drain = stop_rx.clone();
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let ui_base_url = match &listeners.ui {
        Some(l) => Some(ui_base_url(&name, l.local_addr()?.port())),
        None => None,
    };
    let dashboard = crate::ui::DashboardApi::new(api.clone(), ui_base_url);
    let ui_state = Arc::new(crate::ui::UiState::new(
        store.clone(),
        refusals.clone(),
        api.moves.clone(),
        stop_rx.clone(),
    ));
    let enroller = Enroller::new(api.clone(), pki.clone());
    // Handshaken connections, from the accept loop to tonic. Each holds a
    // connection slot, so the caps bound what waits here too.
    let (streams_tx, streams_rx) = mpsc::channel(64);
    let accepting = transport::accept_loop(
        listeners.grpc,
        tls,
        limits,
        streams_tx,
        stopped(stop_rx.clone()),
    );
    let grpc_server = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(60))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        // Agents hold a watch stream open for good: a peer that stopped
        // answering pings is dropped, and its connection slot freed.
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .layer(GateLayer::new(
            store.clone(),
            refusals.clone(),
            EXEMPT_PATHS,
        ))
        .add_service(
            RolesServer::new(api.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            NodesServer::new(NodeApi::new(api.clone(), pki))
                .max_decoding_message_size(MAX_REPORT_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(FleetServer::new(api.clone()))
        .add_service(DashboardServer::new(dashboard))
        .add_service(AuditServer::new(api))
        .add_service(
            EnrollmentServer::new(enroller.clone())
                .max_decoding_message_size(MAX_ENROLL_MESSAGE_BYTES),
        )
        .add_service(AccessServer::new(enroller))
        .serve_with_incoming_shutdown(
            ReceiverStream::new(streams_rx).map(Ok::<_, std::io::Error>),
            stopped(stop_rx.clone()),
        );
    // Bursts of refusals are recorded once their window is over, even if
    // their peer does not come back.
    let flushing = {
        let refusals = refusals.clone();
        let mut stop = stop_rx.clone();
        async move {
            let mut tick = tokio::time::interval(refusals::WINDOW / 4);
            loop {
                tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => break,
                    _ = tick.tick() => refusals.flush_expired().await,
                }
            }
        }
    };
    let jobs = {
        let store = store.clone();
        let mut stop = stop_rx.clone();
        async move {
            let mut tick = tokio::time::interval(jobs_every);
            let (mut lease, mut waiting) = (None, false);
            loop {
                tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => break,
                    _ = tick.tick() => {
                        if !hold_jobs_lease(store.as_ref(), &mut lease, &mut waiting).await {
                            continue;
                        }
                        let deleted = fleet::expire_reports(store.as_ref(), report_retention).await;
                        debug!(deleted, "report retention ran");
                        let deleted = crate::ui::session::expire_sign_ins(store.as_ref()).await;
                        debug!(deleted, "expired sign-ins deleted");
                    }
                }
            }
        }
    };
    // With several servers on one database: what the others did, told to
    // this one's watch streams.
    let following = {
        let moves = api_moves.clone();
        let feed = store.changes();
        let mut stop = stop_rx.clone();
        async move {
            let Some(feed) = feed else { return };
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => {}
                () = moves.follow(feed) => {}
            }
        }
    };
    let ui_server = {
        let (stop_serving, stop_accepting) = (stopped(stop_rx.clone()), stopped(stop_rx.clone()));
        async move {
            match listeners.ui {
                Some(listener) => {
                    crate::ui::serve(listener, ui_tls, ui_state, stop_serving, stop_accepting).await
                }
                None => Ok(()),
            }
        }
    };
    let http_server = axum::serve(listeners.http, crate::http::router(store, metrics))
        .with_graceful_shutdown(stopped(stop_rx));

    let both = async {
        let ((), (), (), (), g, h, u) = tokio::join!(
            accepting,
            flushing,
            jobs,
            following,
            grpc_server,
            http_server,
            ui_server
        );
        g.context("gRPC server failed")?;
        u.context("dashboard server failed")?;
        h.context("HTTP server failed")
    };
    // In-flight requests get DRAIN_LIMIT after the signal; a client that keeps
    // an idle connection open cannot hold the server up longer.
    let drained = async {
        let _ = stop_rx_drain.wait_for(|stop| *stop).await;
        tokio::time::sleep(DRAIN_LIMIT).await;
    };
    let served = tokio::select! {
        r = both => r,
        () = drained => {
            warn!("connections still open {DRAIN_LIMIT:?} after shutdown began; closing them");
            Ok(())
        }
    };
    refusals.flush_all().await;
    served?;
    info!("stopped");
    Ok(())
}

/// Whether this server may run the background jobs now: it holds their lease
/// (`lease`), still or newly taken. Each change is logged once (`waiting`:
/// whether it was told another server holds it), so which server of several
/// on one database runs them shows in their logs.
async fn hold_jobs_lease(
    store: &dyn Store,
    lease: &mut Option<JobLease>,
    waiting: &mut bool,
) -> bool {
    if let Some(held) = lease {
        match held.check().await {
            Ok(()) => return true,
            Err(e) => {
                warn!(
                    error = format!("{:#}", anyhow::Error::from(e)),
                    "lost the lease on background jobs; trying to take it again"
                );
                *lease = None;
            }
        }
    }
    match store.job_lease(JOBS_LEASE).await {
        Ok(Some(taken)) => {
            info!("this server runs the background jobs (report retention, expired sign-ins)");
            (*lease, *waiting) = (Some(taken), false);
            true
        }
        Ok(None) => {
            if !*waiting {
                info!(
                    "another server on the database runs the background jobs; \
                     this one takes them over if that one stops"
                );
                *waiting = true;
            }
            false
        }
        Err(e) => {
            warn!(
                error = format!("{:#}", anyhow::Error::from(e)),
                "could not take the lease on background jobs; trying again later"
            );
            false
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).expect("installing a SIGTERM handler cannot fail");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler cannot fail");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
