//! Reaching a Cairn server: the credential file, a mutual-TLS connection that
//! trusts only the server's own CA, and errors that say what to do.
//!
//! Every party that talks to a server goes through here: the `cairn` CLI, the
//! server's tests and load benchmark, and the agent. It links no server code
//! (storage, HTTP, CA).
//!
//! ```no_run
//! # async fn example() -> Result<(), cairn_proto::client::Error> {
//! use cairn_proto::client::{Credentials, Refusal};
//! use cairn_proto::pb;
//!
//! let creds = Credentials::load("ops.toml".as_ref())?;
//! let conn = creds.connect().await?;
//! let list = conn.roles().list(pb::ListRolesRequest {}).await.refused_by(&conn)?;
//! println!("{} roles", list.roles.len());
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Status};

use crate::pb::access_client::AccessClient;
use crate::pb::audit_client::AuditClient;
use crate::pb::dashboard_client::DashboardClient;
use crate::pb::enrollment_client::EnrollmentClient;
use crate::pb::fleet_client::FleetClient;
use crate::pb::nodes_client::NodesClient;
use crate::pb::roles_client::RolesClient;

/// How long to wait for the TCP and TLS handshakes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one call may take (a push of a large role included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest message a client sends or accepts: a role bundle, or a long list of versions.
pub const MAX_MESSAGE: usize = 64 << 20;

/// An operator credential file: where the server is, the CA that vouches for
/// it, and the operator's client certificate and key. Written by
/// `cairn-server operator add` (mode 0600: it holds a private key).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// `https://HOST:PORT`; HOST must be one of the server certificate's names.
    pub server: String,
    pub operator: String,
    pub role: String,
    /// PEM: the server's CA; the only CA trusted for this server.
    pub ca: String,
    /// PEM: the operator's client certificate and key.
    pub cert: String,
    pub key: String,
}

/// Leaves the private key out of logs and panics.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("operator", &self.operator)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadCredentials {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| Error::ParseCredentials {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The file's text. It holds a private key: write it with mode 0600.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a struct of strings always encodes as TOML")
    }

    /// The client certificate and key presented to the server.
    pub fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert, &self.key)
    }

    /// Connects to the file's `server` with this credential.
    pub async fn connect(&self) -> Result<Connection, Error> {
        connect(&self.server, &self.ca, Some(self.identity())).await
    }
}

/// Why a server could not be reached or did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not read credentials {}", path.display())]
    ReadCredentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not parse credentials {}", path.display())]
    ParseCredentials {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid server URL {url:?}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("could not use the TLS credential for {url}")]
    Tls {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The connection could not be opened: nothing reached the server.
    #[error("could not connect to cairn-server at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The server answered a call with an error status.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The server's chain has no CA with the pin, so it was not trusted:
    /// nothing was sent to it.
    #[error("the server at {url} is not the one pinned: {found}")]
    PinMismatch {
        url: String,
        /// What the server presented, for the message.
        found: String,
    },
}

impl Error {
    /// What the caller can do about it, when that does not depend on who the
    /// caller is.
    pub fn help(&self) -> Option<String> {
        match self {
            Error::Unreachable { url, .. } => Some(format!(
                "{}; also, the URL's host must be one of the server certificate's names \
                 (`cairn-server serve --name`), and the credential's CA must be that server's",
                not_running_or_refused(url)
            )),
            Error::Url { .. } => Some("give the server as https://HOST:PORT".into()),
            Error::PinMismatch { .. } => Some(
                "check the pin against `cairn-server ca pin` on the server; if it is right, \
                 this address does not reach that server (a wrong address, or an impostor)"
                    .into(),
            ),
            Error::Refused(r) => r.help(),
            Error::ReadCredentials { .. } | Error::ParseCredentials { .. } | Error::Tls { .. } => {
                None
            }
        }
    }
}

/// The help when the server at `url` did not answer, or may have refused the
/// credential's certificate during the handshake.
fn not_running_or_refused(url: &str) -> String {
    format!(
        "is cairn-server running at {url}? If it is, it may have refused this credential's \
         certificate: use a credential issued by that server"
    )
}

/// The server answered a call with an error status.
#[derive(Debug)]
pub struct Refused {
    pub status: Status,
    /// The server it came from, for the help line.
    pub url: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = self.status.message();
        match self.status.code() {
            // Role diagnostics: one per line, already complete; print them as they are.
            Code::InvalidArgument => write!(f, "the server refused it:\n{msg}"),
            Code::PermissionDenied => write!(f, "permission denied: {msg}"),
            Code::Unauthenticated => write!(f, "not authenticated: {msg}"),
            Code::NotFound => write!(f, "not found: {msg}"),
            Code::Unavailable => write!(f, "server unavailable: {msg}"),
            Code::DeadlineExceeded => write!(f, "no answer in time: {msg}"),
            Code::FailedPrecondition | Code::AlreadyExists | Code::OutOfRange => {
                write!(f, "refused: {msg}")
            }
            Code::Unknown => write!(f, "the call failed: {msg}"),
            // Client side: the connection went away under the call.
            Code::Cancelled => write!(f, "the connection was closed: {msg}"),
            Code::Internal | Code::DataLoss => write!(f, "the server failed: {msg}"),
            code => write!(f, "the server answered {code:?}: {msg}"),
        }
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The transport error under an `Unavailable`, when there is one.
        std::error::Error::source(&self.status)
    }
}

impl Refused {
    /// What to do about statuses whose remedy is the same for every caller.
    /// The others (a missing credential or role, invalid input, an unknown
    /// name) get their help from the caller, which knows how it got its
    /// credential and what it asked for.
    pub fn help(&self) -> Option<String> {
        let url = &self.url;
        Some(match self.status.code() {
            // A refused client certificate shows as any of these, depending on
            // when the server's TLS alert arrives.
            Code::Unavailable | Code::Unknown | Code::Cancelled => not_running_or_refused(url),
            Code::DeadlineExceeded => {
                format!("the server at {url} is slow or overloaded; try again")
            }
            Code::Internal | Code::DataLoss => {
                format!("the server at {url} failed; its log says more")
            }
            _ => return None,
        })
    }
}

/// An open mutual-TLS connection to one server; cheap to clone, and every
/// clone shares it.
#[derive(Debug, Clone)]
pub struct Connection {
    url: String,
    channel: Channel,
}

impl Connection {
    /// The `https://HOST:PORT` it reached.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The gRPC channel, for a client this module does not build.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The `Roles` service, accepting and sending messages up to [`MAX_MESSAGE`].
    pub fn roles(&self) -> RolesClient<Channel> {
        RolesClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The `Audit` service.
    pub fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(self.channel()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// The `Enrollment` service (a node getting its certificate; see
    /// [`connect_pinned`]).
    pub fn enrollment(&self) -> EnrollmentClient<Channel> {
        EnrollmentClient::new(self.channel())
    }

    /// The `Access` service: join tokens, node revocation.
    pub fn access(&self) -> AccessClient<Channel> {
        AccessClient::new(self.channel())
    }

    /// The `Nodes` service (what an enrolled node calls), accepting and
    /// sending messages up to [`MAX_MESSAGE`].
    pub fn nodes(&self) -> NodesClient<Channel> {
        NodesClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The `Fleet` service (operators' view of nodes and reports).
    pub fn fleet(&self) -> FleetClient<Channel> {
        FleetClient::new(self.channel()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// The `Dashboard` service (sign-in links for the web dashboard).
    pub fn dashboard(&self) -> DashboardClient<Channel> {
        DashboardClient::new(self.channel())
    }
}

/// Opens a connection to `url` (`https://HOST:PORT`) that trusts only
/// `ca_pem`, the server's CA, presenting `identity` when given (a call
/// without one is refused as unauthenticated by every handler that needs an
/// operator). Waits at most [`CONNECT_TIMEOUT`] for the handshakes; each call
/// then has [`REQUEST_TIMEOUT`].
pub async fn connect(
    url: &str,
    ca_pem: &str,
    identity: Option<Identity>,
) -> Result<Connection, Error> {
    let uri = check_url(url)?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    let endpoint = Channel::builder(uri)
        .tls_config(tls)
        .map_err(|source| Error::Tls {
            url: url.to_string(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| Error::Unreachable {
            url: url.to_string(),
            source,
        })?;
    Ok(Connection {
        url: url.to_string(),
        channel,
    })
}

/// Opens a connection to `url` (`https://HOST:PORT`) for a party that knows
/// the server's CA only by its [`CaPin`] (a node enrolling): the server's
/// chain must hold a certificate with that pin, and the server's certificate
/// must verify against it (names included), or the handshake fails with
/// [`Error::PinMismatch`] before anything is sent. No client certificate is
/// presented. The TLS is done here rather than by tonic, which cannot trust a
/// CA it is not given; tonic sees a plain stream.
pub async fn connect_pinned(url: &str, pin: CaPin) -> Result<Connection, Error> {
    let uri = check_url(url)?;
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone()).map_err(|_| Error::Url {
        url: url.to_string(),
        reason: "its host is neither a DNS name nor an IP address",
    })?;
    let verifier = Arc::new(pinned::PinnedCa::new(pin));
    let mut config = ClientConfig::builder_with_provider(pinned::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tls = TlsConnector::from(Arc::new(config));
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let (tls, server_name, host) = (tls.clone(), server_name.clone(), host.clone());
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let stream = tls.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // The scheme says the connector's stream needs no TLS from tonic.
    let plain = format!("http://{}", uri.authority().map_or("", |a| a.as_str()));
    let endpoint = Channel::from_shared(plain)
        .map_err(|_| Error::Url {
            url: url.to_string(),
            reason: "expected https://HOST:PORT",
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    let channel =
        endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|source| match verifier.mismatch() {
                Some(found) => Error::PinMismatch {
                    url: url.to_string(),
                    found,
                },
                None => Error::Unreachable {
                    url: url.to_string(),
                    source,
                },
            })?;
    Ok(Connection {
        url: url.to_string(),
        channel,
    })
}

mod pinned {
    //! The verifier behind [`super::connect_pinned`].

    use std::sync::{Arc, Mutex};

    use tokio_rustls::rustls::client::WebPkiServerVerifier;
    use tokio_rustls::rustls::client::danger::{
        HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
    };
    use tokio_rustls::rustls::crypto::{self, CryptoProvider};
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio_rustls::rustls::{DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

    use super::CaPin;

    pub fn provider() -> Arc<CryptoProvider> {
        Arc::new(crypto::ring::default_provider())
    }

    /// Trusts the certificate of the server's chain whose pin is the one
    /// given, and nothing else; remembers why it refused.
    #[derive(Debug)]
    pub struct PinnedCa {
        pin: CaPin,
        provider: Arc<CryptoProvider>,
        /// What the server presented, when no certificate of it had the pin.
        mismatch: Mutex<Option<String>>,
    }

    impl PinnedCa {
        pub fn new(pin: CaPin) -> Self {
            PinnedCa {
                pin,
                provider: provider(),
                mismatch: Mutex::new(None),
            }
        }

        /// Why the last handshake's chain was refused, if it had no pinned CA.
        pub fn mismatch(&self) -> Option<String> {
            self.mismatch.lock().expect("pin mismatch lock").clone()
        }
    }

    impl ServerCertVerifier for PinnedCa {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            let Some(ca) = intermediates
                .iter()
                .find(|c| CaPin::of_cert(c).is_ok_and(|p| p == self.pin))
            else {
                let found: Vec<String> = intermediates
                    .iter()
                    .filter_map(|c| CaPin::of_cert(c).ok())
                    .map(|p| p.to_string())
                    .collect();
                let found = if found.is_empty() {
                    "it sent no CA certificate (is it a cairn-server?)".to_string()
                } else {
                    format!("its CA's pin is {}, not {}", found.join(", "), self.pin)
                };
                *self.mismatch.lock().expect("pin mismatch lock") = Some(found.clone());
                return Err(Error::General(found));
            };
            let mut roots = RootCertStore::empty();
            roots
                .add(ca.clone().into_owned())
                .map_err(|e| Error::General(format!("the pinned CA is unusable: {e}")))?;
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| Error::General(format!("the pinned CA is unusable: {e}")))?
                .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}

/// The server URL must be `https://HOST:PORT`: servers speak only mutual
/// TLS, and HOST is checked against the server certificate's names. Returns
/// it parsed.
pub fn check_url(url: &str) -> Result<tonic::codegen::http::Uri, Error> {
    let bad = |reason| {
        Err(Error::Url {
            url: url.to_string(),
            reason,
        })
    };
    let Ok(uri) = url.parse::<tonic::codegen::http::Uri>() else {
        return bad("expected https://HOST:PORT");
    };
    if uri.scheme_str() != Some("https") {
        return bad("it must start with https:// (cairn-server only speaks TLS)");
    }
    if uri.host().is_none_or(str::is_empty) {
        return bad("it names no host (expected https://HOST:PORT)");
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return bad("it has a path; give only https://HOST:PORT");
    }
    Ok(uri)
}

/// A pin of a server's CA, as `cairn-server ca pin` prints it and a node's
/// user-data carries it: `sha256:` and the hex SHA-256 of the CA
/// certificate's SubjectPublicKeyInfo (DER), as kubeadm's
/// `discovery-token-ca-cert-hash`. A node that knows it can tell the server's
/// CA from any other before it trusts it with a join token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaPin([u8; 32]);

impl CaPin {
    /// The pin of a CA certificate (DER).
    pub fn of_cert(der: &[u8]) -> Result<CaPin, String> {
        let cert = CertificateDer::from(der);
        let anchor = webpki::anchor_from_trusted_cert(&cert)
            .map_err(|e| format!("unreadable CA certificate: {e}"))?;
        Ok(CaPin(
            Sha256::digest(webpki::spki_for_anchor(&anchor).as_ref()).into(),
        ))
    }

    /// The pin of the first certificate in `pem`.
    pub fn of_cert_pem(pem: &str) -> Result<CaPin, String> {
        let der = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .ok_or("no certificate in the PEM text")?
            .map_err(|e| format!("unreadable PEM certificate: {e}"))?;
        CaPin::of_cert(&der)
    }
}

impl fmt::Display for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::str::FromStr for CaPin {
    type Err = String;

    fn from_str(s: &str) -> Result<CaPin, String> {
        let bad = || {
            format!(
                "invalid CA pin {:?}: expected sha256: followed by 64 hex digits \
                 (`cairn-server ca pin` prints it)",
                s.chars().take(80).collect::<String>()
            )
        };
        let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut pin = [0; 32];
        for (byte, pair) in pin.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(CaPin(pin))
    }
}

/// Unwraps a call's response, or turns its status into [`Error::Refused`]
/// naming the server.
pub trait Refusal<T> {
    fn refused_by(self, conn: &Connection) -> Result<T, Error>;
}

impl<T> Refusal<T> for Result<tonic::Response<T>, Status> {
    fn refused_by(self, conn: &Connection) -> Result<T, Error> {
        self.map(tonic::Response::into_inner).map_err(|status| {
            Error::Refused(Refused {
                status,
                url: conn.url.clone(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn creds() -> Credentials {
        Credentials {
            server: "https://cairn.example.org:7443".into(),
            operator: "ada".into(),
            role: "admin".into(),
            ca: "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n".into(),
            cert: "cert".into(),
            key: "secret key".into(),
        }
    }

    #[test]
    fn credentials_round_trip_and_hide_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, creds().to_toml()).unwrap();
        assert_eq!(Credentials::load(&path).unwrap(), creds());
        let debug = format!("{:?}", creds());
        assert!(
            debug.contains("ada") && !debug.contains("secret"),
            "{debug}"
        );
    }

    #[test]
    fn bad_credential_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = Credentials::load(&missing).unwrap_err();
        assert!(matches!(err, Error::ReadCredentials { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.toml"), "{err}");

        let typo = dir.path().join("typo.toml");
        std::fs::write(&typo, creds().to_toml().replace("operator =", "opertor =")).unwrap();
        let err = Credentials::load(&typo).unwrap_err();
        assert!(err.to_string().contains("typo.toml"), "{err}");
        let cause = err.source().unwrap().to_string();
        assert!(
            cause.contains("line 2") && cause.contains("opertor"),
            "{cause}"
        );
    }

    #[test]
    fn urls() {
        for good in [
            "https://127.0.0.1:8443",
            "https://cairn.example.org:443",
            "https://[::1]:8443",
            "https://h",
        ] {
            check_url(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, why) in [
            ("http://127.0.0.1:8443", "https://"),
            ("127.0.0.1:8443", "https://"),
            ("https://h:1/v1", "path"),
            ("not a url", "invalid"),
        ] {
            let err = check_url(bad).unwrap_err().to_string();
            assert!(err.contains(why) && err.contains(bad), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_with_help() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let err = connect("https://127.0.0.1:1", &creds().ca, None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "could not connect to cairn-server at https://127.0.0.1:1"
        );
        let help = err.help().unwrap();
        assert!(
            help.starts_with("is cairn-server running at https://127.0.0.1:1?"),
            "{help}"
        );
        let err = connect("http://127.0.0.1:1", &creds().ca, None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Url { .. }), "{err:?}");
    }

    #[test]
    fn pins_parse_print_and_refuse_what_is_not_one() {
        let text = format!("sha256:{}", "0a".repeat(32));
        let pin: CaPin = text.parse().unwrap();
        assert_eq!(pin.to_string(), text);
        assert_eq!(
            text.to_uppercase()
                .replace("SHA256", "sha256")
                .parse::<CaPin>(),
            Ok(pin),
            "hex digits in either case"
        );
        for bad in [
            "",
            "0a0a",
            &format!("sha1:{}", "0a".repeat(32)),
            &format!("sha256:{}", "0a".repeat(31)),
            &format!("sha256:{}", "zz".repeat(32)),
            &format!("sha256:{}é", "0a".repeat(31)),
        ] {
            let err = bad.parse::<CaPin>().unwrap_err();
            assert!(err.contains("expected sha256:"), "{bad}: {err}");
        }
        assert!(CaPin::of_cert_pem("no certificate").is_err());
        assert!(CaPin::of_cert(b"not DER").is_err());
    }

    fn refused(status: Status) -> Error {
        Error::Refused(Refused {
            status,
            url: "https://cairn.example.org:8443".into(),
        })
    }

    #[test]
    fn refusals_say_what_happened() {
        let diags = "role.toml:12:1: [[file]] \"/etc/x\", field `mode`: invalid mode";
        assert_eq!(
            refused(Status::invalid_argument(diags)).to_string(),
            format!("the server refused it:\n{diags}")
        );
        assert_eq!(
            refused(Status::failed_precondition("nothing to roll back")).to_string(),
            "refused: nothing to roll back"
        );
    }

    #[test]
    fn help_only_where_every_caller_can_act_the_same() {
        let help = refused(Status::unavailable("connection reset"))
            .help()
            .unwrap();
        assert!(
            help.contains("running at https://cairn.example.org:8443"),
            "{help}"
        );
        let help = refused(Status::internal("disk full")).help().unwrap();
        assert!(help.contains("its log"), "{help}");
        for status in [
            Status::unauthenticated("no client certificate"),
            Status::permission_denied("needs publisher"),
            Status::invalid_argument("bad"),
            Status::not_found("role x"),
            Status::failed_precondition("nothing to roll back"),
        ] {
            assert_eq!(refused(status.clone()).help(), None, "{status:?}");
        }
    }
}
