//! The operator credential file: where the server is, the CA that vouches for
//! it, and the operator's client certificate and key. Written by
//! `cairn-server operator add`, read by `cairn`.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl Credentials {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read credentials {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("could not parse credentials {}", path.display()))
    }

    /// Writes the file with mode 0600: it holds a private key.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).context("could not encode credentials")?;
        crate::pki::write_secret(path, &text)
    }
}
