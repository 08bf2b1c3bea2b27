//! Running the daemon: open storage, bind both listeners, serve until the
//! shutdown future resolves, then drain: in-flight requests finish, new
//! connections are refused.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_proto::pb::audit_server::AuditServer;
use cairn_proto::pb::roles_server::RolesServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::pki::Pki;
use crate::service::{Api, MAX_MESSAGE_BYTES};
use crate::store;
const DRAIN_LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The CA and the server certificate.
    pub data_dir: PathBuf,
    /// Where roles, channels and the audit log are: see [`store::open`].
    pub database: String,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    /// Names and addresses clients reach the server by; the certificate's SANs.
    pub names: Vec<String>,
}

pub async fn run(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let pki = Pki::init_or_load(&config.data_dir)?;
    let server_id = pki
        .issue_server(&config.names)
        .context("could not issue the server certificate")?;
    let store = store::open(&config.database)
        .await
        .context("could not open the database")?;
    let metrics = Arc::new(Metrics::default());

    let grpc = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("could not listen on {} (gRPC)", config.listen))?;
    let http = TcpListener::bind(config.http)
        .await
        .with_context(|| format!("could not listen on {} (HTTP)", config.http))?;
    let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
    info!(grpc = %grpc_addr, http = %http_addr, names = ?config.names, data_dir = %config.data_dir.display(), "listening");
    // Scripts and tests read the bound ports (the config may say port 0) from this line.
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "cairn-server listening grpc={grpc_addr} http={http_addr}"
        )?;
        out.flush()?;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        info!("shutting down: finishing in-flight requests");
        let _ = stop_tx.send(true);
    });
    let mut stop_rx_drain = stop_rx.clone();
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(server_id.cert_pem, server_id.key_pem))
        .client_ca_root(Certificate::from_pem(&pki.ca_pem))
        // Handshakes without a certificate are let through so that the handler
        // can refuse them with a status that says what to do.
        .client_auth_optional(true);
    let api = Api::new(store.clone(), metrics.clone());
    let grpc_server = Server::builder()
        .tls_config(tls)
        .context("could not configure TLS")?
        .timeout(Duration::from_secs(60))
        .add_service(
            RolesServer::new(api.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(AuditServer::new(api))
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY a small response waits for the peer's delayed
            // ACK (~40 ms per fetch); tonic sets it only on listeners it binds.
            TcpIncoming::from(grpc)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60))),
            stopped(stop_rx.clone()),
        );
    let http_server = axum::serve(http, crate::http::router(store, metrics))
        .with_graceful_shutdown(stopped(stop_rx));

    let both = async {
        let (g, h) = tokio::join!(grpc_server, http_server);
        g.context("gRPC server failed")?;
        h.context("HTTP server failed")
    };
    // In-flight requests get DRAIN_LIMIT after the signal; a client that keeps
    // an idle connection open cannot hold the server up longer.
    let drained = async {
        let _ = stop_rx_drain.wait_for(|stop| *stop).await;
        tokio::time::sleep(DRAIN_LIMIT).await;
    };
    tokio::select! {
        r = both => r?,
        () = drained => warn!("connections still open {DRAIN_LIMIT:?} after shutdown began; closing them"),
    }
    info!("stopped");
    Ok(())
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
