//! The node's identity, as enrollment left it in the state directory: its
//! name, assignment and servers, the server's CA, and its certificate and
//! private key (made on this node; it never left it).
//!
//! All of it is one file, `node.toml` (mode 0600, in the 0700 state
//! directory), replaced atomically: an enrollment again (a rebuilt machine, a
//! renewed certificate) never leaves a key beside a certificate that is not
//! its own. It is read and written only through [`StateDir`], which follows
//! no link another user could have planted.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use cairn_proto::client::{self, Connection};
use cairn_proto::node::{self, Assignment};
use serde::{Deserialize, Serialize};
use tonic::transport::Identity;

use crate::state::StateDir;

/// The identity's file in the state directory.
pub const FILE: &str = "node.toml";
/// A larger identity file is refused (a few certificates and a key are ~4 KiB).
const MAX_FILE_BYTES: usize = 256 << 10;

/// Who this node is to its servers.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeIdentity {
    pub name: String,
    /// The servers it enrolled with, in order of preference.
    pub servers: Vec<String>,
    /// PEM: the servers' CA, the only CA this node trusts for them.
    pub ca: String,
    /// PEM: the node's certificate, issued by that CA.
    pub cert: String,
    /// PEM: the node's private key.
    pub key: String,
    /// Last: a table, which TOML writes after the plain keys.
    pub assignment: Assignment,
}

/// Leaves the private key out of logs and panics.
impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("name", &self.name)
            .field("servers", &self.servers)
            .field("assignment", &self.assignment)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Reads the identity from the state directory `state_dir`; an error that
    /// says to enroll when there is none.
    pub fn load(state_dir: &Path) -> Result<NodeIdentity> {
        let state = StateDir::new(state_dir);
        let path = state_dir.join(FILE);
        let data = state
            .read(FILE)
            .with_context(|| format!("could not read the node's identity {}", path.display()))?;
        let Some(data) = data else {
            bail!(
                "this node is not enrolled: {} does not exist\n  \
                 help: enroll it first: cairn-agent enroll --server URL --ca-pin sha256:… --token-file FILE",
                path.display()
            );
        };
        if data.len() > MAX_FILE_BYTES {
            bail!(
                "the node's identity {} is larger than {MAX_FILE_BYTES} bytes",
                path.display()
            );
        }
        let parse = || -> Result<NodeIdentity> {
            let text = std::str::from_utf8(&data).context("it is not UTF-8")?;
            let identity: NodeIdentity = toml::from_str(text)?;
            identity.check()?;
            Ok(identity)
        };
        parse().with_context(|| {
            format!(
                "the node's identity {} is damaged; enroll the node again",
                path.display()
            )
        })
    }

    /// Writes the identity into the state directory `state_dir` (made 0700
    /// if missing), mode 0600, replacing any earlier one at once.
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        self.check()?;
        let text = toml::to_string(self).context("could not encode the node's identity")?;
        StateDir::new(state_dir)
            .write(FILE, text.as_bytes(), 0o600)
            .context("could not store the node's identity")
    }

    fn check(&self) -> Result<()> {
        node::check_name(&self.name)?;
        if self.servers.is_empty() {
            bail!("it names no server");
        }
        for url in &self.servers {
            client::check_url(url)?;
        }
        Ok(())
    }

    /// The certificate and key this node presents.
    pub fn tls_identity(&self) -> Identity {
        Identity::from_pem(&self.cert, &self.key)
    }

    /// Opens a mutual-TLS connection to `url` presenting the node's
    /// certificate and trusting only the CA it enrolled with.
    pub async fn connect(&self, url: &str) -> Result<Connection, client::Error> {
        client::connect(url, &self.ca, Some(self.tls_identity())).await
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    pub fn sample() -> NodeIdentity {
        NodeIdentity {
            name: "3f2a9c1b0d4e-web-1".into(),
            servers: vec!["https://a.example.org:7443".into()],
            ca: "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n".into(),
            cert: "-----BEGIN CERTIFICATE-----\ncert\n-----END CERTIFICATE-----\n".into(),
            key: "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n".into(),
            assignment: Assignment {
                role: "web".into(),
                channel: "stable".into(),
            },
        }
    }

    #[test]
    fn stored_privately_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let err = format!("{:#}", NodeIdentity::load(&state).unwrap_err());
        assert!(
            err.contains("not enrolled") && err.contains("help:"),
            "{err}"
        );
        sample().save(&state).unwrap();
        assert_eq!(NodeIdentity::load(&state).unwrap(), sample());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(FILE)), 0o600);
        let debug = format!("{:?}", sample());
        assert!(
            debug.contains("web-1") && !debug.contains("secret"),
            "{debug}"
        );
    }

    #[test]
    fn a_planted_link_or_a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        sample().save(&state).unwrap();
        // A link in place of the file is not followed, and is replaced on save.
        let elsewhere = dir.path().join("elsewhere.toml");
        std::fs::write(&elsewhere, toml::to_string(&sample()).unwrap()).unwrap();
        std::fs::remove_file(state.join(FILE)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, state.join(FILE)).unwrap();
        let err = format!("{:#}", NodeIdentity::load(&state).unwrap_err());
        assert!(err.contains("is a link, not a file"), "{err}");
        sample().save(&state).unwrap();
        assert!(
            !std::fs::symlink_metadata(state.join(FILE))
                .unwrap()
                .is_symlink()
        );

        let mut bad = sample();
        bad.name = "Not A Name".into();
        std::fs::write(state.join(FILE), toml::to_string(&bad).unwrap()).unwrap();
        let err = format!("{:#}", NodeIdentity::load(&state).unwrap_err());
        assert!(
            err.contains("is damaged; enroll the node again") && err.contains("invalid node name"),
            "{err}"
        );
        assert!(
            bad.save(&state).is_err(),
            "an invalid identity is not written"
        );
    }
}
