//! The gRPC listener's accept loop: caps on connections, the TLS handshake
//! under a deadline, and backoff when the process runs out of descriptors.
//!
//! `accept` → a [`Slot`] (at most [`Limits::per_peer`] connections per peer
//! and [`Limits::total`] in all; over a cap the connection is closed at once)
//! → the TLS handshake, given [`Limits::handshake_timeout`] → the stream is
//! handed to tonic, which serves it. A slot is held by the stream and freed
//! when the connection ends, however it ends. A connection without a client
//! certificate (enrollment, or a caller about to be refused) is closed once
//! [`Limits::anonymous_lifetime`] is over, as sshd's `LoginGraceTime` closes
//! one that never authenticates, so it cannot keep its slot by idling.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, error, warn};

use crate::refusals::network;

/// A peer gets this long to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection without a client certificate is closed this long after its
/// handshake: enough to enroll, or to be told why a call is refused.
pub const ANONYMOUS_LIFETIME: Duration = Duration::from_secs(30);
/// At most this many connections from one peer (an IPv6 peer: its /64) at once,
/// unless `serve --max-connections-per-peer` says otherwise: room for the
/// agents behind one NAT address, or a host running many clients.
pub const MAX_CONNECTIONS_PER_PEER: usize = 1024;
/// At most this many connections at once, handshakes included, unless
/// `serve --max-connections` says otherwise: each agent holds one.
pub const MAX_CONNECTIONS: usize = 65_536;
/// At most this many calls in flight on one connection (HTTP/2 streams).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// After a failed `accept` (no descriptors left, no buffers) the loop waits
/// this long, doubling up to [`ACCEPT_BACKOFF_MAX`], instead of spinning.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Repeated warnings (refused connections, failing accepts) at most this often.
const WARN_EVERY: Duration = Duration::from_secs(1);
/// Idle time before TCP keepalive probes, so dead peers free their slots.
const KEEPALIVE_IDLE_SECS: u32 = 60;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub anonymous_lifetime: Duration,
    pub per_peer: usize,
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            anonymous_lifetime: ANONYMOUS_LIFETIME,
            per_peer: MAX_CONNECTIONS_PER_PEER,
            total: MAX_CONNECTIONS,
        }
    }
}

/// The server's TLS configuration: its certificate (sent with the CA's), and
/// client certificates verified against the CA when presented. A connection
/// without one is let through so that the certificate gate can refuse its
/// calls with a status that says what to do; a certificate from another CA
/// fails the handshake.
pub fn tls_config(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("could not read the CA certificate")?)
            .context("could not use the CA certificate")?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .context("could not set up client certificate verification")?;
    // The CA follows the server's certificate, so that a node which knows the
    // CA only by its pin can find it in the chain (`client::connect_pinned`).
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .chain(CertificateDer::pem_slice_iter(ca_pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .context("could not read the server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .context("could not read the server key")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("could not set up TLS")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("could not use the server certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts connections on `listener` until `stop` resolves (then the listener
/// is closed, so new connections are refused), sending each handshaken TLS
/// stream to `streams`.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    limits: Limits,
    streams: mpsc::Sender<TlsStream<Counted>>,
    stop: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Slots::new(limits));
    let mut over_cap = Throttled::default();
    let mut failing = Throttled::default();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            () = streams.closed() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(conn) => conn,
            // The peer gave up before we took the connection: nothing to wait for.
            Err(e) if is_peer_error(&e) => continue,
            Err(e) => {
                if let Some(more) = failing.due() {
                    error!(error = %e, more, "could not accept a connection; backing off {backoff:?}");
                }
                tokio::select! {
                    () = &mut stop => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        backoff = ACCEPT_BACKOFF_MIN;
        let Some(slot) = Slots::take(&slots, addr.ip()) else {
            if let Some(more) = over_cap.due() {
                warn!(peer = %addr, more, "too many connections; closing this one");
            }
            continue;
        };
        configure(&tcp);
        let acceptor = acceptor.clone();
        let streams = streams.clone();
        tokio::spawn(async move {
            let counted = Counted {
                tcp,
                _slot: slot,
                expiry: None,
            };
            match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(counted)).await {
                Ok(Ok(mut tls)) => {
                    let (counted, session) = tls.get_mut();
                    if session.peer_certificates().is_none_or(<[_]>::is_empty) {
                        counted.expire_after(limits.anonymous_lifetime);
                    }
                    // Fails only once serving stopped; the connection then closes.
                    let _ = streams.send(tls).await;
                }
                Ok(Err(e)) => debug!(peer = %addr, error = %e, "TLS handshake failed"),
                Err(_) => debug!(peer = %addr, "TLS handshake timed out"),
            }
        });
    }
}

/// Errors about the one connection being accepted, not about the listener.
fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// TCP_NODELAY, since without it a small response waits for the peer's delayed
/// ACK (~40 ms per fetch); keepalive, so a peer that vanished frees its slot.
fn configure(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(error = %e, "could not set TCP_NODELAY on a connection");
    }
    let keepalive = setsockopt(tcp, sockopt::KeepAlive, &true)
        .and_then(|()| setsockopt(tcp, sockopt::TcpKeepIdle, &KEEPALIVE_IDLE_SECS));
    if let Err(e) = keepalive {
        debug!(error = %e, "could not set TCP keepalive on a connection");
    }
}

/// A warning repeated at most once per [`WARN_EVERY`], saying how many were skipped.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    skipped: u64,
}

impl Throttled {
    /// `Some(skipped since the last one)` if a warning is due now.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

/// Connections open now, per peer and in all.
struct Slots {
    limits: Limits,
    open: Mutex<SlotCounts>,
}

#[derive(Default)]
struct SlotCounts {
    total: usize,
    /// Only peers with a connection open: at most `limits.total` entries.
    per_peer: HashMap<IpAddr, usize>,
}

impl Slots {
    fn new(limits: Limits) -> Self {
        Slots {
            limits,
            open: Mutex::new(SlotCounts::default()),
        }
    }

    /// A slot for a connection from `ip`, or `None` if a cap is reached.
    fn take(slots: &Arc<Slots>, ip: IpAddr) -> Option<Slot> {
        let peer = network(ip);
        let mut open = slots.open.lock().expect("connection slots lock poisoned");
        if open.total >= slots.limits.total {
            return None;
        }
        let n = open.per_peer.entry(peer).or_default();
        if *n >= slots.limits.per_peer {
            return None;
        }
        *n += 1;
        open.total += 1;
        Some(Slot {
            slots: slots.clone(),
            peer,
        })
    }
}

/// One connection's place under the caps, given back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .expect("connection slots lock poisoned");
        open.total -= 1;
        if let Some(n) = open.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.per_peer.remove(&self.peer);
            }
        }
    }
}

/// A TCP connection holding its [`Slot`] for as long as it is open.
pub struct Counted {
    tcp: TcpStream,
    _slot: Slot,
    /// When set, reads fail once it is reached, and the server closes the
    /// connection. Polled by every read, so an idle connection (on which the
    /// server always waits to read) wakes up when it passes.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Counted {
    /// The peer's address (unspecified once the socket forgot it).
    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.tcp
            .peer_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    fn expire_after(&mut self, lifetime: Duration) {
        self.expiry = Some(Box::pin(tokio::time::sleep(lifetime)));
    }
}

/// The peer's address, as for a bare TCP stream: with TLS on top,
/// `Request::peer_certs` and `remote_addr` work as with tonic's own TLS.
impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(expiry) = self.expiry.as_mut()
            && expiry.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "a connection without a client certificate lived its time",
            )));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_each_peer_and_the_total_and_come_back_when_dropped() {
        let slots = Arc::new(Slots::new(Limits {
            per_peer: 2,
            total: 3,
            ..Limits::default()
        }));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let a1 = Slots::take(&slots, a).unwrap();
        let _a2 = Slots::take(&slots, a).unwrap();
        assert!(Slots::take(&slots, a).is_none(), "a third from one peer");
        let _b1 = Slots::take(&slots, b).unwrap();
        assert!(Slots::take(&slots, c).is_none(), "a fourth in all");
        drop(a1);
        let _c1 = Slots::take(&slots, c).unwrap();
        assert!(Slots::take(&slots, a).is_none());
    }

    #[test]
    fn throttled_warnings_count_what_they_skip() {
        let mut t = Throttled::default();
        assert_eq!(t.due(), Some(0));
        assert_eq!(t.due(), None);
        assert_eq!(t.due(), None);
        t.last = Some(Instant::now() - WARN_EVERY);
        assert_eq!(t.due(), Some(2));
    }
}
