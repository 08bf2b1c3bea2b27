//! The server's own certificate authority.
//!
//! On first start the server creates a CA in its data directory and, on every
//! start, a server certificate for the names it is reached by. Operators get
//! client certificates from the same CA; a certificate's subject carries the
//! operator's name (CN) and role (OU), which the TLS handshake authenticates.
//! Nodes get theirs by sending a certificate request ([`Pki::sign_node`]):
//! their key never leaves them, and nothing but the request's public key is
//! taken from it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::auth::{NODE_UNIT, OperatorRole};

/// How long a node certificate is valid; a node enrolls again for a new one.
pub const NODE_CERT_DAYS: i64 = 365;
/// The largest certificate request accepted, in bytes of PEM.
pub const MAX_CSR_BYTES: usize = 16 << 10;

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";

pub struct Pki {
    dir: PathBuf,
    pub ca_pem: String,
    ca_key_pem: String,
}

/// A certificate and its private key, PEM-encoded.
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate's [`crate::auth::fingerprint`].
    pub fingerprint: String,
}

/// Creates the data directory with mode 0700 if it does not exist, and
/// refuses one others may read or enter: it holds the CA's private key.
pub fn ensure_data_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("could not create data directory {}", dir.display()))?;
    let meta = fs::symlink_metadata(dir)
        .with_context(|| format!("could not read data directory {}", dir.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_dir() || mode & 0o077 != 0 {
        bail!(
            "data directory {} is {}; it holds the CA's private key\n  help: chmod 700 {0}",
            dir.display(),
            if meta.is_dir() {
                format!("open to other users (mode {mode:04o})")
            } else {
                "not a directory".to_string()
            }
        );
    }
    Ok(())
}

/// The CA certificate (PEM) in the data directory `dir`, which must hold one.
pub fn read_ca_pem(dir: &Path) -> Result<String> {
    let path = dir.join(CA_CERT);
    fs::read_to_string(&path).with_context(|| {
        format!(
            "could not read the CA certificate {}\n  help: the server makes its CA when it first \
             starts; is --data-dir its data directory?",
            path.display()
        )
    })
}

impl Pki {
    /// Loads the CA from `dir`, creating it first if there is none.
    pub fn init_or_load(dir: &Path) -> Result<Pki> {
        ensure_data_dir(dir)?;
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {}
            (false, false) => {
                let key = KeyPair::generate().context("could not generate the CA key")?;
                let mut params = CertificateParams::default();
                params.distinguished_name = dn("Cairn CA", None);
                params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
                params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
                params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
                let cert = params
                    .self_signed(&key)
                    .context("could not create the CA certificate")?;
                // The key first: a CA certificate without its key is useless,
                // while a key alone is simply regenerated-over never; see below.
                write_secret(&key_path, &key.serialize_pem())?;
                write_public(&cert_path, &cert.pem())?;
            }
            _ => bail!(
                "{} and {} must both exist or both be absent; restore the missing one from a backup",
                cert_path.display(),
                key_path.display()
            ),
        }
        let read = |p: &Path| {
            fs::read_to_string(p).with_context(|| format!("could not read {}", p.display()))
        };
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca_pem: read(&cert_path)?,
            ca_key_pem: read(&key_path)?,
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).context("could not parse the CA key")?;
        Issuer::from_ca_cert_pem(&self.ca_pem, ca_key).context("could not parse the CA certificate")
    }

    fn issue(&self, params: CertificateParams) -> Result<Identity> {
        let issuer = self.issuer()?;
        let key = KeyPair::generate().context("could not generate a key")?;
        let cert = params
            .signed_by(&key, &issuer)
            .context("could not sign the certificate")?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            fingerprint: crate::auth::fingerprint(cert.der()),
        })
    }

    /// Issues the server certificate for `names` (DNS names or IP addresses)
    /// and stores it in the data directory.
    pub fn issue_server(&self, names: &[String]) -> Result<Identity> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(names.first().map_or("cairn-server", String::as_str), None);
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(
                    n.clone()
                        .try_into()
                        .with_context(|| format!("invalid server name {n:?}"))?,
                )),
            })
            .collect::<Result<_>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(365);
        let id = self.issue(params)?;
        write_secret(&self.dir.join(SERVER_KEY), &id.key_pem)?;
        write_public(&self.dir.join(SERVER_CERT), &id.cert_pem)?;
        Ok(id)
    }

    /// Issues a client certificate naming the operator and its role.
    pub fn issue_operator(&self, name: &str, role: OperatorRole) -> Result<Identity> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name, Some(role.as_str()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(365);
        self.issue(params)
    }
}

/// A node's certificate request, read and its signature checked (so the sender
/// holds the key); an error says what is wrong with it, for the sender.
pub struct NodeRequest(CertificateSigningRequestParams);

impl NodeRequest {
    /// Reads a PKCS#10 request in PEM, at most [`MAX_CSR_BYTES`] long.
    pub fn from_pem(pem: &str) -> std::result::Result<NodeRequest, String> {
        if pem.len() > MAX_CSR_BYTES {
            return Err(format!(
                "the certificate request is {} bytes long; at most {MAX_CSR_BYTES} are accepted",
                pem.len()
            ));
        }
        CertificateSigningRequestParams::from_pem(pem)
            .map(NodeRequest)
            .map_err(|e| format!("unusable certificate request (PKCS#10, PEM): {e}"))
    }
}

/// A node's certificate, PEM, and its [`crate::auth::fingerprint`].
pub struct NodeCertificate {
    pub cert_pem: String,
    pub fingerprint: String,
}

impl Pki {
    /// Issues node `name` a client certificate for the request's public key.
    /// Everything else is the CA's choice: the subject (CN = the name, OU =
    /// [`NODE_UNIT`]), the client-only key usages, the validity; the names and
    /// extensions the request asks for are ignored.
    pub fn sign_node(&self, request: NodeRequest, name: &str) -> Result<NodeCertificate> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name, Some(NODE_UNIT));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(NODE_CERT_DAYS);
        let csr = CertificateSigningRequestParams {
            params,
            public_key: request.0.public_key,
        };
        let cert = csr
            .signed_by(&self.issuer()?)
            .with_context(|| format!("could not sign the certificate of node {name}"))?;
        Ok(NodeCertificate {
            cert_pem: cert.pem(),
            fingerprint: crate::auth::fingerprint(cert.der()),
        })
    }
}

fn dn(common_name: &str, unit: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Cairn");
    if let Some(unit) = unit {
        dn.push(DnType::OrganizationalUnitName, unit);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes a private key: mode 0600 from creation, replaced atomically.
pub fn write_secret(path: &Path, data: &str) -> Result<()> {
    write_mode(path, data, 0o600)
}

fn write_public(path: &Path, data: &str) -> Result<()> {
    write_mode(path, data, 0o644)
}

fn write_mode(path: &Path, data: &str, mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().with_context(|| format!("could not write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn ca_is_created_once_with_strict_modes_and_signs_operators() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let pki = Pki::init_or_load(&data).unwrap();
        let again = Pki::init_or_load(&data).unwrap();
        assert_eq!(pki.ca_pem, again.ca_pem, "the CA is created once");
        let mode = |p: &str| fs::metadata(data.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(CA_KEY), 0o600);
        assert_eq!(
            fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        pki.issue_server(&["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        assert_eq!(mode(SERVER_KEY), 0o600);

        let op = pki
            .issue_operator("alice", OperatorRole::Publisher)
            .unwrap();
        let der = rustls_pemfile_free_der(&op.cert_pem);
        let (name, holder) = crate::auth::subject_of(&der).unwrap();
        assert_eq!(
            (name.as_str(), holder),
            (
                "alice",
                crate::auth::Holder::Operator(OperatorRole::Publisher)
            )
        );
        assert_eq!(op.fingerprint, crate::auth::fingerprint(&der));

        fs::remove_file(data.join(CA_KEY)).unwrap();
        assert!(
            Pki::init_or_load(&data).is_err(),
            "a CA without its key is an error, not a new CA"
        );
    }

    #[test]
    fn a_node_request_gets_only_what_the_ca_decides() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::init_or_load(&dir.path().join("data")).unwrap();
        // A request that asks for an operator's subject, a server name and a CA.
        let key = KeyPair::generate().unwrap();
        let mut asked = CertificateParams::new(vec!["cairn.example.org".to_string()]).unwrap();
        asked.distinguished_name = dn("mallory", Some("admin"));
        asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        asked.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
        let cert = pki
            .sign_node(NodeRequest::from_pem(&csr).unwrap(), "web-1")
            .unwrap();
        let der = rustls_pemfile_free_der(&cert.cert_pem);
        assert_eq!(cert.fingerprint, crate::auth::fingerprint(&der));
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let subject = parsed.subject();
        let cn = subject.iter_common_name().next().unwrap().as_str().unwrap();
        let ou = subject.iter_organizational_unit().next().unwrap();
        assert_eq!((cn, ou.as_str().unwrap()), ("web-1", NODE_UNIT));
        assert_eq!(subject.iter_organizational_unit().count(), 1);
        assert!(parsed.subject_alternative_name().unwrap().is_none());
        assert!(!parsed.is_ca());
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        // The node's own key is the certificate's: it never left the node.
        assert_eq!(
            parsed.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        let days = (parsed.validity().not_after.timestamp()
            - parsed.validity().not_before.timestamp())
            / 86_400;
        assert_eq!(days, NODE_CERT_DAYS);
        // That it chains to the CA, the server's TLS handshake checks
        // (server/tests/enroll.rs).

        // A request whose signature does not hold, or that is no request.
        let tampered = csr.replace(&csr[100..104], "AAAA");
        for bad in [tampered.as_str(), "hello", &"x".repeat(MAX_CSR_BYTES + 1)] {
            assert!(NodeRequest::from_pem(bad).is_err());
        }
    }

    fn rustls_pemfile_free_der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents
    }
}
