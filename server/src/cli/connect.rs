//! Which server to talk to, with which credential, over mutual TLS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_proto::pb::audit_client::AuditClient;
use cairn_proto::pb::roles_client::RolesClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::credentials::Credentials;

/// How long to wait for the TCP and TLS handshakes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one call may take (a push of a large role included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest message the CLI accepts: a role bundle fetched by `show` or `diff`.
pub const MAX_MESSAGE: usize = 64 << 20;

/// A server and the credential to present to it.
pub struct Server {
    /// `https://HOST:PORT`, from `--server`/`CAIRN_SERVER` or the credential file.
    pub url: String,
    pub credentials_path: PathBuf,
    pub credentials: Credentials,
}

impl Server {
    /// Loads the credential file (`--credentials`, `CAIRN_CREDENTIALS`, or the
    /// default under `$HOME`) and settles the URL.
    pub fn resolve(credentials: Option<&Path>, server: Option<&str>) -> Result<Server> {
        let path = match credentials {
            Some(p) => p.to_path_buf(),
            None => default_credentials_path(std::env::var_os("HOME").map(PathBuf::from))?,
        };
        let creds = Credentials::load(&path).map_err(|e| {
            e.context(format!(
                "no usable operator credential (get one with `cairn-server operator add NAME --role ROLE --out {}` \
                 on the server, or pass --credentials FILE)",
                path.display()
            ))
        })?;
        let url = match server {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => creds.server.clone(),
        };
        check_url(&url)?;
        Ok(Server {
            url,
            credentials_path: path,
            credentials: creds,
        })
    }

    fn endpoint(&self) -> Result<Endpoint> {
        let c = &self.credentials;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&c.ca))
            .identity(Identity::from_pem(&c.cert, &c.key));
        Ok(Channel::from_shared(self.url.clone())
            .with_context(|| format!("invalid server URL {:?}", self.url))?
            .tls_config(tls)
            .with_context(|| {
                format!(
                    "could not use the TLS credential in {}",
                    self.credentials_path.display()
                )
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT))
    }

    /// Opens the connection: TCP, then TLS with this operator's certificate.
    pub async fn channel(&self) -> Result<Channel> {
        let endpoint = self.endpoint()?;
        endpoint.connect().await.map_err(|e| {
            anyhow::Error::new(e).context(crate::cli::error::Unreachable {
                url: self.url.clone(),
            })
        })
    }

    pub async fn roles(&self) -> Result<RolesClient<Channel>> {
        Ok(RolesClient::new(self.channel().await?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    pub async fn audit(&self) -> Result<AuditClient<Channel>> {
        Ok(AuditClient::new(self.channel().await?).max_decoding_message_size(MAX_MESSAGE))
    }
}

/// `$HOME/.config/cairn/credentials.toml`.
pub fn default_credentials_path(home: Option<PathBuf>) -> Result<PathBuf> {
    match home {
        Some(h) if !h.as_os_str().is_empty() => Ok(h.join(".config/cairn/credentials.toml")),
        _ => bail!(
            "HOME is not set, so there is no default credential file: pass --credentials FILE"
        ),
    }
}

/// The server URL must be `https://HOST:PORT`: the CLI only speaks mutual TLS,
/// and HOST is checked against the server certificate's names.
pub fn check_url(url: &str) -> Result<()> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .with_context(|| format!("invalid server URL {url:?} (expected https://HOST:PORT)"))?;
    if uri.scheme_str() != Some("https") {
        bail!("server URL {url:?} must start with https:// (cairn-server only speaks TLS)");
    }
    if uri.host().is_none_or(str::is_empty) {
        bail!("server URL {url:?} names no host (expected https://HOST:PORT)");
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        bail!("server URL {url:?} has a path; give only https://HOST:PORT");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for good in [
            "https://127.0.0.1:8443",
            "https://cairn.example.org:443",
            "https://[::1]:8443",
            "https://h",
        ] {
            check_url(good).unwrap_or_else(|e| panic!("{good}: {e:#}"));
        }
        for (bad, why) in [
            ("http://127.0.0.1:8443", "https://"),
            ("127.0.0.1:8443", "https://"),
            ("https://h:1/v1", "path"),
            ("not a url", "invalid"),
        ] {
            let err = format!("{:#}", check_url(bad).unwrap_err());
            assert!(err.contains(why) && err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn default_credentials_live_under_home() {
        assert_eq!(
            default_credentials_path(Some(PathBuf::from("/home/op"))).unwrap(),
            PathBuf::from("/home/op/.config/cairn/credentials.toml")
        );
        let err = default_credentials_path(None).unwrap_err().to_string();
        assert!(err.contains("--credentials"), "{err}");
    }

    #[test]
    fn missing_credentials_say_how_to_get_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let err = Server::resolve(Some(&path), None)
            .err()
            .expect("missing file accepted");
        let text = format!("{err:#}");
        assert!(text.contains("cairn-server operator add"), "{text}");
        assert!(text.contains("nope.toml"), "{text}");
    }

    #[test]
    fn server_flag_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let creds = Credentials {
            server: "https://from-file:1".into(),
            operator: "ada".into(),
            role: "admin".into(),
            ca: "ca".into(),
            cert: "cert".into(),
            key: "key".into(),
        };
        creds.save(&path).unwrap();
        assert_eq!(
            Server::resolve(Some(&path), None).unwrap().url,
            "https://from-file:1"
        );
        assert_eq!(
            Server::resolve(Some(&path), Some("https://flag:2"))
                .unwrap()
                .url,
            "https://flag:2"
        );
        let err = Server::resolve(Some(&path), Some("http://flag:2"))
            .err()
            .expect("http accepted");
        assert!(err.to_string().contains("https://"), "{err}");
    }
}
