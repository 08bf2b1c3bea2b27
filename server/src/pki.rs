//! The server's own certificate authority.
//!
//! On first start the server creates a CA in its data directory and, on every
//! start, a server certificate for the names it is reached by. Operators get
//! client certificates from the same CA; a certificate's subject carries the
//! operator's name (CN) and role (OU), which the TLS handshake authenticates.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::auth::OperatorRole;

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

    fn issue(&self, params: CertificateParams) -> Result<Identity> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).context("could not parse the CA key")?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, ca_key)
            .context("could not parse the CA certificate")?;
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
        let (name, role) = crate::auth::operator_of(&der).unwrap();
        assert_eq!((name.as_str(), role), ("alice", OperatorRole::Publisher));
        assert_eq!(op.fingerprint, crate::auth::fingerprint(&der));

        fs::remove_file(data.join(CA_KEY)).unwrap();
        assert!(
            Pki::init_or_load(&data).is_err(),
            "a CA without its key is an error, not a new CA"
        );
    }

    fn rustls_pemfile_free_der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents
    }
}
