//! Which server to talk to, and with which credential. The connection itself
//! is [`cairn_proto::client`]'s.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use cairn_proto::client::{self, Connection, Credentials};

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
            anyhow::Error::new(e).context(format!(
                "no usable operator credential (get one with `cairn-server operator add NAME --role ROLE --out {}` \
                 on the server, or pass --credentials FILE)",
                path.display()
            ))
        })?;
        let url = match server {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => creds.server.clone(),
        };
        client::check_url(&url)?;
        Ok(Server {
            url,
            credentials_path: path,
            credentials: creds,
        })
    }

    /// Opens the connection: TCP, then TLS with this operator's certificate.
    pub async fn connect(&self) -> Result<Connection> {
        let c = &self.credentials;
        client::connect(&self.url, &c.ca, Some(c.identity()))
            .await
            .map_err(|e| match e {
                client::Error::Tls { .. } => anyhow::Error::new(e).context(format!(
                    "the credential {} holds an unusable certificate or key",
                    self.credentials_path.display()
                )),
                e => e.into(),
            })
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

#[cfg(test)]
mod tests {
    use super::*;

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
        std::fs::write(&path, creds.to_toml()).unwrap();
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
