//! The node's identity, as enrollment left it in the state directory: its
//! name, assignment and servers, the server's CA, and its certificate and
//! private key (made on this node; it never left it).
//!
//! All of it is one file, `node.toml` (mode 0600, in the 0700 state
//! directory), replaced atomically: an enrollment again (a rebuilt machine, a
//! renewed certificate) never leaves a key beside a certificate that is not
//! its own. It is read and written only through [`StateDir`], which follows
//! no link another user could have planted.
//!
//! The certificate is renewed before it expires ([`NodeIdentity::renewal_due`],
//! [`NodeIdentity::renewed`]): once two thirds of its validity have passed,
//! the node makes a new key and asks the server for a certificate for it
//! (`Nodes.Renew`, with the certificate it holds), as Puppet's agents do.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use cairn_proto::client::{self, Connection, Refusal};
use cairn_proto::node::{self, Assignment};
use cairn_proto::pb;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tonic::transport::Identity;
use x509_parser::prelude::{FromDer, X509Certificate};

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

    /// When the node's certificate stops being valid.
    pub fn valid_until(&self) -> Result<OffsetDateTime> {
        Ok(read_cert(&self.cert)?.not_after)
    }

    /// Whether the certificate is due for renewal at `now`: two thirds of its
    /// validity have passed.
    pub fn renewal_due(&self, now: OffsetDateTime) -> Result<bool> {
        let cert = read_cert(&self.cert)?;
        let renew_at = cert.not_before + (cert.not_after - cert.not_before) * 2 / 3;
        Ok(now >= renew_at)
    }

    /// This identity with a new key, made here, and a certificate for it
    /// from the server on `conn` (`Nodes.Renew`, authenticated by the
    /// current certificate), once the certificate is checked to name this
    /// node and hold the new key. Stores nothing: the caller saves it (from
    /// then on the server counts only the new certificate).
    pub async fn renewed(&self, conn: &Connection) -> Result<NodeIdentity> {
        let (key, csr_pem) = key_and_request(&self.name)?;
        let response = conn
            .nodes()
            .renew(pb::RenewRequest { csr_pem })
            .await
            .refused_by(conn)?;
        let refuse = |why: String| {
            anyhow!(
                "the server at {} answered the renewal wrongly: {why}",
                conn.url()
            )
        };
        let cert = read_cert(&response.cert_pem).map_err(|e| refuse(format!("{e:#}")))?;
        if cert.common_name != self.name {
            return Err(refuse(format!(
                "the certificate names {:?}, not {:?}",
                cairn_proto::terminal::escape(&cert.common_name),
                self.name
            )));
        }
        if cert.public_key != key.public_key_raw() {
            return Err(refuse("the certificate is not for the new key".into()));
        }
        Ok(NodeIdentity {
            cert: response.cert_pem,
            key: key.serialize_pem(),
            ..self.clone()
        })
    }
}

/// A new key, made here, and a certificate request (PKCS#10, PEM) for it
/// naming node `name`: what enrollment and renewal send (the key never
/// leaves the node).
pub fn key_and_request(name: &str) -> Result<(KeyPair, String)> {
    let key = KeyPair::generate().context("could not generate the node's key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn
    };
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .context("could not make the certificate request")?;
    Ok((key, csr))
}

/// What the agent reads of a certificate.
struct CertInfo {
    common_name: String,
    public_key: Vec<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// Reads the first certificate of `pem`.
fn read_cert(pem: &str) -> Result<CertInfo> {
    let read = || -> Result<CertInfo> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())?;
        let (_, cert) = X509Certificate::from_der(&pem.contents)?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let validity = cert.validity();
        Ok(CertInfo {
            common_name,
            public_key: cert.public_key().subject_public_key.data.to_vec(),
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
        })
    };
    read().context("unreadable node certificate")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rcgen::PublicKeyData;

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
    fn renewal_is_due_once_two_thirds_of_the_validity_passed() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        params.not_before = start;
        params.not_after = start + time::Duration::seconds(90);
        let identity = NodeIdentity {
            cert: params.self_signed(&key).unwrap().pem(),
            ..sample()
        };
        assert_eq!(identity.valid_until().unwrap(), params.not_after);
        let at = |secs| identity.renewal_due(start + time::Duration::seconds(secs));
        assert!(!at(-10).unwrap() && !at(59).unwrap());
        assert!(at(60).unwrap() && at(120).unwrap());
        let err = format!("{:#}", sample().renewal_due(start).unwrap_err());
        assert!(err.contains("unreadable node certificate"), "{err}");

        // What renewal and enrollment send: a request naming the node, for a
        // new key each time.
        let (key, csr) = key_and_request("web-1").unwrap();
        let asked = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        assert_eq!(
            asked.params.distinguished_name.get(&DnType::CommonName),
            Some(&rcgen::DnValue::Utf8String("web-1".into()))
        );
        assert_eq!(asked.public_key.der_bytes(), key.der_bytes());
        assert_ne!(key_and_request("web-1").unwrap().1, csr);
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
