//! The server's own certificate authority.
//!
//! The CA is shared by every server on one database: the first to start
//! stores it there ([`Pki::open_shared`]), the others take it from there, and
//! each keeps a copy in its data directory, checked against the database's on
//! every start. Each server issues itself, on every start, a server
//! certificate for the names it is reached by. Operators get
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
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use cairn_proto::client::CaPin;

use crate::auth::{NODE_UNIT, OperatorRole};
use crate::store::{Actor, CaRecord, Store};

/// How long a node certificate is valid unless `--node-cert-lifetime` says
/// otherwise; the agent renews it (`Nodes.Renew`) once two thirds have passed.
pub const DEFAULT_NODE_CERT_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(365 * 86_400);
/// The shortest node certificate lifetime accepted: an agent renews only at
/// its runs, so a shorter one would expire between them.
pub const MIN_NODE_CERT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);
/// The longest, 1,825 days: the CA itself is valid for ten years.
pub const MAX_NODE_CERT_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(5 * 365 * 86_400);
/// A node certificate is valid from this long before it is signed (clocks
/// differ), at most a tenth of its lifetime: a short lifetime keeps most of
/// its validity ahead of it, so renewal is not due at once.
const NODE_CERT_BACKDATE: Duration = Duration::hours(1);
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
    /// How long the node certificates it signs are valid.
    node_cert_lifetime: Duration,
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

/// A new CA, valid for ten years.
pub fn new_ca() -> Result<CaRecord> {
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
    Ok(CaRecord {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The copy of the CA in the data directory `dir`, if it holds one.
pub fn read_data_dir_ca(dir: &Path) -> Result<Option<CaRecord>> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let read = |p: &Path| {
                fs::read_to_string(p).with_context(|| format!("could not read {}", p.display()))
            };
            Ok(Some(CaRecord {
                cert_pem: read(&cert_path)?,
                key_pem: read(&key_path)?,
            }))
        }
        (false, false) => Ok(None),
        _ => bail!(
            "{} and {} must both exist or both be absent\n  help: restore the missing one \
             from a backup, or remove both: the server then takes the CA from its database",
            cert_path.display(),
            key_path.display()
        ),
    }
}

/// The CA's pin (`sha256:…`), the audit log's name for it.
pub fn pin_of(ca: &CaRecord) -> Result<String> {
    CaPin::of_cert_pem(&ca.cert_pem)
        .map(|pin| pin.to_string())
        .map_err(|e| anyhow::anyhow!("could not read the CA certificate: {e}"))
}

/// The CA shared through `store` and the data directory's copy of it, made to
/// agree, without changing either: the database's CA; or, before the first
/// server stored one, the data directory's (`None` if neither has one). A
/// data directory holding another CA than the database's is an error.
pub async fn shared_ca(dir: &Path, store: &dyn Store) -> Result<Option<CaRecord>> {
    let local = read_data_dir_ca(dir)?;
    let shared = store
        .ca()
        .await
        .context("could not read the CA from the database")?;
    match (local, shared) {
        (Some(local), Some(shared)) if !same_ca(&local, &shared) => {
            Err(differs(dir, &local, &shared))
        }
        (local, shared) => Ok(shared.or(local)),
    }
}

/// Whether `a` and `b` are one CA (the same certificate and key).
pub fn same_ca(a: &CaRecord, b: &CaRecord) -> bool {
    a.cert_pem.trim() == b.cert_pem.trim() && a.key_pem.trim() == b.key_pem.trim()
}

fn differs(dir: &Path, local: &CaRecord, shared: &CaRecord) -> anyhow::Error {
    let pin = |ca| pin_of(ca).unwrap_or_else(|_| "an unreadable certificate".into());
    anyhow::anyhow!(
        "the CA in data directory {} ({}) is not the database's CA ({}): certificates it \
         issued would be refused by the other servers on the database, and theirs by it\n  \
         help: is --database the database this data directory was used with? To serve that \
         database from this directory, move ca.crt and ca.key out of it (it then takes the \
         database's CA); nodes and operators of the other CA must enroll and be added again",
        dir.display(),
        pin(local),
        pin(shared)
    )
}

impl Pki {
    /// The CA the servers on `store`'s database share, set up on first use
    /// and copied into the data directory `dir` (created, mode 0700, if
    /// absent; the key 0600):
    ///
    /// - a database with a CA: that CA; a data directory holding another is
    ///   refused;
    /// - a database without one and a data directory with one (a server from
    ///   before the CA was shared): that CA is stored in the database,
    ///   audited as `ca adopt`;
    /// - neither: a new CA, stored, audited as `ca create`.
    ///
    /// Of servers racing to store theirs, one wins and the others take its CA,
    /// so every server on the database ends with the same CA.
    pub async fn open_shared(dir: &Path, store: &dyn Store, actor: &Actor) -> Result<Pki> {
        ensure_data_dir(dir)?;
        let local = read_data_dir_ca(dir)?;
        let shared = store
            .ca()
            .await
            .context("could not read the CA from the database")?;
        let ca = match shared {
            Some(shared) => shared,
            None => {
                let (candidate, action) = match &local {
                    Some(local) => (local.clone(), "ca adopt"),
                    None => (new_ca()?, "ca create"),
                };
                let (ca, _) = store
                    .init_ca(&candidate, action, &pin_of(&candidate)?, actor)
                    .await
                    .context("could not store the CA in the database")?;
                ca
            }
        };
        if let Some(local) = &local
            && !same_ca(local, &ca)
        {
            return Err(differs(dir, local, &ca));
        }
        if local.is_none() {
            // The key first: a certificate without its key is refused at the
            // next start, a key alone is written over.
            write_secret(&dir.join(CA_KEY), &ca.key_pem)?;
            write_public(&dir.join(CA_CERT), &ca.cert_pem)?;
        }
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca_pem: ca.cert_pem,
            ca_key_pem: ca.key_pem,
            node_cert_lifetime: time_duration(DEFAULT_NODE_CERT_LIFETIME),
        })
    }

    /// Node certificates signed from now on are valid for `lifetime`
    /// (see [`check_node_cert_lifetime`]).
    pub fn with_node_cert_lifetime(mut self, lifetime: std::time::Duration) -> Result<Pki> {
        check_node_cert_lifetime(lifetime).map_err(anyhow::Error::msg)?;
        self.node_cert_lifetime = time_duration(lifetime);
        Ok(self)
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
    /// The name the request asks for: its subject's common name, if it has one.
    pub fn common_name(&self) -> Option<&str> {
        match self.0.params.distinguished_name.get(&DnType::CommonName)? {
            DnValue::Utf8String(s) => Some(s),
            DnValue::PrintableString(s) => Some(s.as_str()),
            _ => None,
        }
    }

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

/// A node's certificate, PEM, its [`crate::auth::fingerprint`] and the end
/// of its validity.
pub struct NodeCertificate {
    pub cert_pem: String,
    pub fingerprint: String,
    pub not_after: OffsetDateTime,
}

impl Pki {
    /// Issues node `name` a client certificate for the request's public key.
    /// Everything else is the CA's choice: the subject (CN = the name, OU =
    /// [`NODE_UNIT`]), the client-only key usages, the validity (the node
    /// certificate lifetime); the names and extensions the request asks for
    /// are ignored.
    pub fn sign_node(&self, request: NodeRequest, name: &str) -> Result<NodeCertificate> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name, Some(NODE_UNIT));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - NODE_CERT_BACKDATE.min(self.node_cert_lifetime / 10);
        params.not_after = now + self.node_cert_lifetime;
        let not_after = params.not_after;
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
            not_after,
        })
    }
}

/// Whether `lifetime` is between [`MIN_NODE_CERT_LIFETIME`] and
/// [`MAX_NODE_CERT_LIFETIME`]; an error says the bounds.
pub fn check_node_cert_lifetime(lifetime: std::time::Duration) -> Result<(), String> {
    if (MIN_NODE_CERT_LIFETIME..=MAX_NODE_CERT_LIFETIME).contains(&lifetime) {
        return Ok(());
    }
    Err(format!(
        "a node certificate lifetime of {}s is out of range: from {}s to {} days",
        lifetime.as_secs(),
        MIN_NODE_CERT_LIFETIME.as_secs(),
        MAX_NODE_CERT_LIFETIME.as_secs() / 86_400
    ))
}

/// `d` as a [`Duration`] (a node certificate lifetime: it fits).
fn time_duration(d: std::time::Duration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::MAX)
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

    async fn store_in(dir: &Path) -> std::sync::Arc<dyn Store> {
        crate::store::open(&format!("sqlite://{}", dir.join("cairn.db").display()))
            .await
            .unwrap()
    }

    fn local() -> Actor {
        Actor {
            name: "test".into(),
            role: "server".into(),
            peer: "local".into(),
        }
    }

    async fn ca_entries(store: &dyn Store) -> Vec<(String, String)> {
        let log = store
            .audit_log(crate::store::AuditQuery {
                since: None,
                from: crate::store::AuditCursor::After(0),
                limit: 100,
            })
            .await
            .unwrap();
        log.into_iter()
            .filter(|e| e.action.starts_with("ca "))
            .map(|e| (e.action, e.target))
            .collect()
    }

    #[tokio::test]
    async fn ca_is_created_once_shared_through_the_database_and_signs_operators() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path()).await;
        let data = dir.path().join("data");
        let pki = Pki::open_shared(&data, store.as_ref(), &local())
            .await
            .unwrap();
        let again = Pki::open_shared(&data, store.as_ref(), &local())
            .await
            .unwrap();
        assert_eq!(pki.ca_pem, again.ca_pem, "the CA is created once");
        // Another data directory on the same database gets the same CA.
        let other = dir.path().join("other");
        let replica = Pki::open_shared(&other, store.as_ref(), &local())
            .await
            .unwrap();
        assert_eq!(
            (replica.ca_pem.as_str(), replica.ca_key_pem.as_str()),
            (pki.ca_pem.as_str(), pki.ca_key_pem.as_str())
        );
        assert_eq!(
            fs::read_to_string(other.join(CA_CERT)).unwrap(),
            pki.ca_pem,
            "each data directory keeps a copy"
        );
        let pin = pin_of(&CaRecord {
            cert_pem: pki.ca_pem.clone(),
            key_pem: String::new(),
        })
        .unwrap();
        assert_eq!(
            ca_entries(store.as_ref()).await,
            [("ca create".to_string(), pin)]
        );

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
        let err = Pki::open_shared(&data, store.as_ref(), &local())
            .await
            .err()
            .expect("a CA certificate without its key is an error, not a new copy");
        assert!(err.to_string().contains("must both exist"), "{err}");
    }

    #[tokio::test]
    async fn a_data_directorys_ca_is_adopted_by_a_new_database_and_another_ca_refused() {
        let dir = tempfile::tempdir().unwrap();
        // A data directory from before the CA was shared.
        let data = dir.path().join("data");
        ensure_data_dir(&data).unwrap();
        let old = new_ca().unwrap();
        write_secret(&data.join(CA_KEY), &old.key_pem).unwrap();
        write_public(&data.join(CA_CERT), &old.cert_pem).unwrap();
        let store = store_in(dir.path()).await;
        let pki = Pki::open_shared(&data, store.as_ref(), &local())
            .await
            .unwrap();
        assert_eq!(pki.ca_pem, old.cert_pem);
        assert_eq!(store.ca().await.unwrap(), Some(old.clone()));
        assert_eq!(
            ca_entries(store.as_ref()).await,
            [("ca adopt".to_string(), pin_of(&old).unwrap())]
        );

        // A data directory with a CA of its own, on that database: refused,
        // and nothing changes.
        let stranger = dir.path().join("stranger");
        ensure_data_dir(&stranger).unwrap();
        let theirs = new_ca().unwrap();
        write_secret(&stranger.join(CA_KEY), &theirs.key_pem).unwrap();
        write_public(&stranger.join(CA_CERT), &theirs.cert_pem).unwrap();
        let err = Pki::open_shared(&stranger, store.as_ref(), &local())
            .await
            .err()
            .expect("another CA is refused")
            .to_string();
        assert!(
            err.contains(&format!(
                "({}) is not the database's CA ({})",
                pin_of(&theirs).unwrap(),
                pin_of(&old).unwrap()
            )) && err.contains("help:"),
            "{err}"
        );
        assert_eq!(store.ca().await.unwrap(), Some(old));
        assert_eq!(
            fs::read_to_string(stranger.join(CA_CERT)).unwrap(),
            theirs.cert_pem
        );
        assert_eq!(
            shared_ca(&stranger, store.as_ref())
                .await
                .err()
                .map(|e| e.to_string()),
            Some(err)
        );
    }

    #[tokio::test]
    async fn a_node_request_gets_only_what_the_ca_decides() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path()).await;
        let pki = Pki::open_shared(&dir.path().join("data"), store.as_ref(), &local())
            .await
            .unwrap();
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
        assert_eq!(days, 365);
        assert_eq!(
            NodeRequest::from_pem(&csr).unwrap().common_name(),
            Some("mallory")
        );
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
