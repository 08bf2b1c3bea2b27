//! Node certificate renewal (`Nodes.Renew`) over real TLS on loopback: a node
//! presenting its current certificate gets a new one for a key it made, as
//! enrollment signs it; the old certificate stops counting at once. A request
//! naming another node, a request that is no request, a revoked node, a
//! replaced certificate, an operator and a caller without a certificate are
//! each refused, and the refusals are audited. A certificate that expired is
//! refused on a connection opened while it was valid. A renewal whose answer
//! never reached the node is made again with the old certificate, which may
//! do nothing else, until the node calls with the new one.

mod common;

use std::path::Path;
use std::time::Duration;

use cairn_proto::client::{self, Connection, Credentials};
use cairn_proto::pb;
use common::*;
use rcgen::KeyPair;
use tonic::Code;
use tonic::transport::Identity;

/// The lifetime these tests give the server: short, as the flag allows.
const LIFETIME: Duration = Duration::from_secs(90);

/// A node's key and the certificate it holds for it.
struct Node {
    key: KeyPair,
    cert_pem: String,
}

struct Fleet {
    server: Server,
    ca_pem: String,
    admin: Connection,
    _tmp: tempfile::TempDir,
}

impl Fleet {
    /// A server signing node certificates for `lifetime`, with the `web`
    /// recipe pushed and promoted to `stable`.
    async fn start(lifetime: Duration) -> Fleet {
        let tmp = tempfile::tempdir().unwrap();
        let server = Server::start_configured(&tmp.path().join("data"), |c| {
            c.node_cert_lifetime = lifetime;
        });
        let creds = Credentials::load(&server.operator("ada", "admin")).unwrap();
        let admin = creds.connect().await.unwrap();
        admin
            .roles()
            .push(pb::PushRequest {
                bundle: Some(bundle_of(&recipes().join("web"))),
                message: String::new(),
                promote_to: "stable".into(),
            })
            .await
            .unwrap();
        Fleet {
            server,
            ca_pem: creds.ca,
            admin,
            _tmp: tmp,
        }
    }

    /// Enrolls node `name` with a fresh one-use token.
    async fn enroll(&self, name: &str) -> Node {
        let token = self
            .admin
            .access()
            .create_token(pb::CreateTokenRequest {
                role: "web".into(),
                channel: "stable".into(),
                ttl_seconds: 600,
                uses: 1,
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let (key, csr_pem) = node_request(Some(name));
        let anonymous = client::connect(&self.server.url(), &self.ca_pem, None)
            .await
            .unwrap();
        let enrolled = anonymous
            .enrollment()
            .enroll(pb::EnrollRequest {
                token,
                csr_pem,
                node_name: name.into(),
                facts_json: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        Node {
            key,
            cert_pem: enrolled.cert_pem,
        }
    }

    /// A connection presenting `node`'s certificate.
    async fn connect(&self, node: &Node) -> Connection {
        let id = Identity::from_pem(&node.cert_pem, node.key.serialize_pem());
        client::connect(&self.server.url(), &self.ca_pem, Some(id))
            .await
            .unwrap()
    }

    /// Every audit entry of `action`: (actor, target, outcome, detail).
    async fn audited(&self, action: &str) -> Vec<(String, String, String, String)> {
        self.admin
            .audit()
            .list(pb::AuditRequest::default())
            .await
            .unwrap()
            .into_inner()
            .entries
            .into_iter()
            .filter(|e| e.action == action)
            .map(|e| (e.actor, e.target, e.outcome, e.detail))
            .collect()
    }
}

async fn renew(conn: &Connection, csr_pem: String) -> Result<String, tonic::Status> {
    conn.nodes()
        .renew(pb::RenewRequest { csr_pem })
        .await
        .map(|r| r.into_inner().cert_pem)
}

/// A certificate's subject (CN, OU), raw public key and validity in seconds.
fn read_cert(pem: &str) -> (String, String, Vec<u8>, i64) {
    let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .unwrap()
        .1
        .contents;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let subject = cert.subject();
    let cn = subject.iter_common_name().next().unwrap().as_str().unwrap();
    let ou = subject.iter_organizational_unit().next().unwrap();
    let ou = ou.as_str().unwrap().to_string();
    let validity = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    (
        cn.to_string(),
        ou,
        cert.public_key().subject_public_key.data.to_vec(),
        validity,
    )
}

#[tokio::test]
async fn a_node_renews_its_certificate_and_the_old_one_stops_counting() {
    let fleet = Fleet::start(LIFETIME).await;
    let first = fleet.enroll("web-1").await;
    // Valid for the configured lifetime, from a tenth of it before signing.
    let (_, _, _, validity) = read_cert(&first.cert_pem);
    assert_eq!(validity, 99, "90 s ahead, 9 s back");
    let old = fleet.connect(&first).await;
    assert_eq!(node_api(&old).await, Code::Ok);

    let (key, csr) = node_request(Some("web-1"));
    let cert_pem = renew(&old, csr).await.unwrap();
    let (cn, ou, public_key, validity) = read_cert(&cert_pem);
    assert_eq!((cn.as_str(), ou.as_str(), validity), ("web-1", "node", 99));
    assert_eq!(public_key, key.public_key_raw(), "the node's new key");
    let second = Node { key, cert_pem };

    // The new certificate counts; the old one, on its open connection and on
    // a new one, no more.
    let new = fleet.connect(&second).await;
    assert_eq!(node_api(&new).await, Code::Ok);
    for conn in [&old, &fleet.connect(&first).await] {
        let err = conn
            .nodes()
            .fetch(pb::FetchRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(
            err.message().contains("renewed its certificate"),
            "{}",
            err.message()
        );
    }
    // Nor may it renew again.
    let err = renew(&old, node_request(Some("web-1")).1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // The new certificate renews in turn.
    let (key, csr) = node_request(Some("web-1"));
    let third = Node {
        cert_pem: renew(&new, csr).await.unwrap(),
        key,
    };
    assert_eq!(node_api(&fleet.connect(&third).await).await, Code::Ok);
    assert_eq!(node_api(&new).await, Code::Unauthenticated);

    // Each renewal audited as the node, with the certificate's end.
    let renewals = fleet.audited("node renew").await;
    assert_eq!(renewals.len(), 2, "{renewals:?}");
    for (actor, target, outcome, detail) in &renewals {
        assert_eq!(
            (actor.as_str(), target.as_str(), outcome.as_str()),
            ("web-1", "web-1", "ok")
        );
        assert!(
            detail.starts_with("role web at channel stable; replaced the certificate recorded at")
                && detail.contains("valid until"),
            "{detail}"
        );
    }
}

/// The codes of Fetch, Report and Watch called with `conn`'s certificate.
async fn node_calls(conn: &Connection) -> [Code; 3] {
    let code = |r: Result<(), tonic::Status>| r.map_or_else(|s| s.code(), |()| Code::Ok);
    let own = || {
        Some(pb::Assignment {
            role: "web".into(),
            channel: "stable".into(),
        })
    };
    let reported = conn
        .nodes()
        .report(pb::ReportRequest::default())
        .await
        .map(drop);
    let watched = conn
        .nodes()
        .watch(pb::WatchRequest { assignment: own() })
        .await
        .map(drop);
    [node_api(conn).await, code(reported), code(watched)]
}

#[tokio::test]
async fn a_renewal_whose_answer_was_lost_is_made_again_with_the_previous_certificate() {
    let fleet = Fleet::start(LIFETIME).await;
    let first = fleet.enroll("web-1").await;
    let old = fleet.connect(&first).await;
    assert_eq!(node_api(&old).await, Code::Ok);

    // The server commits a renewal whose answer never reaches the node.
    let (lost_key, csr) = node_request(Some("web-1"));
    let lost = Node {
        cert_pem: renew(&old, csr).await.unwrap(),
        key: lost_key,
    };
    // The old certificate now may renew, and nothing else: on its open
    // connection and on a new one, Fetch, Report and Watch are refused.
    for conn in [&old, &fleet.connect(&first).await] {
        assert_eq!(node_calls(conn).await, [Code::Unauthenticated; 3]);
        let err = conn
            .nodes()
            .fetch(pb::FetchRequest::default())
            .await
            .unwrap_err();
        assert!(
            err.message().contains("may only renew again"),
            "{}",
            err.message()
        );
    }

    // The node, still holding only the old certificate, renews again.
    let (key, csr) = node_request(Some("web-1"));
    let second = Node {
        cert_pem: renew(&old, csr).await.unwrap(),
        key,
    };
    // The certificate it never received stops counting.
    assert_eq!(
        node_calls(&fleet.connect(&lost).await).await,
        [Code::Unauthenticated; 3]
    );
    let new = fleet.connect(&second).await;
    // (A report of no node is the handler's refusal, past the gate.)
    assert_eq!(
        node_calls(&new).await,
        [Code::Ok, Code::PermissionDenied, Code::Ok]
    );
    // The node called with its current certificate: the old one may not
    // renew any more.
    let err = renew(&old, node_request(Some("web-1")).1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("no longer counts"),
        "{}",
        err.message()
    );
    assert_eq!(node_api(&new).await, Code::Ok);
    let renewals = fleet.audited("node renew").await;
    assert_eq!(renewals.len(), 2, "{renewals:?}");
    assert!(
        renewals[1]
            .3
            .contains("renewed with its previous certificate, replacing the unused one"),
        "{renewals:?}"
    );

    // Revoking the node ends the previous certificate as well.
    let (key, csr) = node_request(Some("web-1"));
    let _unused = Node {
        cert_pem: renew(&new, csr).await.unwrap(),
        key,
    };
    fleet
        .admin
        .access()
        .revoke_node(pb::RevokeNodeRequest {
            name: "web-1".into(),
        })
        .await
        .unwrap();
    let err = renew(&new, node_request(Some("web-1")).1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("node web-1 was revoked"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn renewal_is_refused_for_another_name_a_bad_request_a_revoked_node_and_no_certificate() {
    let fleet = Fleet::start(LIFETIME).await;
    let node = fleet.enroll("web-1").await;
    fleet.enroll("web-2").await;
    let conn = fleet.connect(&node).await;

    // A request for another node's name, or for no name.
    for asked in [Some("web-2"), None] {
        let err = renew(&conn, node_request(asked).1).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(
            err.message()
                .contains("node web-1 may renew only its own certificate"),
            "{}",
            err.message()
        );
    }
    // Something that is no certificate request, and one too large to read.
    for bad in ["hello".to_string(), "x".repeat(20 << 10)] {
        let err = renew(&conn, bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    // None of it changed the node's certificate.
    assert_eq!(node_api(&conn).await, Code::Ok);
    let refusals = fleet.audited("renew").await;
    // The first of each kind audited (the next ones in the minute are counted).
    for (target, said) in [
        ("web-2", "may renew only its own certificate"),
        ("web-1", "certificate request"),
    ] {
        assert!(
            refusals
                .iter()
                .any(|(actor, t, outcome, _)| actor == "web-1"
                    && t == target
                    && outcome.starts_with("denied: ")
                    && outcome.contains(said)),
            "{target}: {refusals:?}"
        );
    }

    // An operator has no node certificate to renew.
    let err = renew(&fleet.admin, node_request(Some("ada")).1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // No client certificate: the gate refuses before the request is read.
    let anonymous = client::connect(&fleet.server.url(), &fleet.ca_pem, None)
        .await
        .unwrap();
    let err = renew(&anonymous, node_request(Some("web-1")).1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // A revoked node may not renew its way back.
    fleet
        .admin
        .access()
        .revoke_node(pb::RevokeNodeRequest {
            name: "web-1".into(),
        })
        .await
        .unwrap();
    let err = renew(&conn, node_request(Some("web-1")).1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("node web-1 was revoked"),
        "{}",
        err.message()
    );
    assert!(fleet.audited("node renew").await.is_empty());
}

#[tokio::test]
async fn an_expired_certificate_is_refused_on_a_connection_opened_while_it_was_valid() {
    let lifetime = Duration::from_secs(60);
    let fleet = Fleet::start(lifetime).await;
    let node = fleet.enroll("web-1").await;
    let signed = std::time::Instant::now();
    let conn = fleet.connect(&node).await;
    assert_eq!(node_api(&conn).await, Code::Ok);
    // The handshake is over: only the gate can tell the certificate ended.
    tokio::time::sleep((signed + lifetime + Duration::from_secs(2)) - std::time::Instant::now())
        .await;
    let err = conn
        .nodes()
        .fetch(pb::FetchRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message()
            .starts_with("credential expired: the certificate of node web-1 is valid from"),
        "{}",
        err.message()
    );
    let err = renew(&conn, node_request(Some("web-1")).1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

/// The server refuses to start with a lifetime out of bounds.
#[test]
fn a_lifetime_out_of_bounds_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data: &Path = &tmp.path().join("data");
    let out = std::process::Command::new(server_bin())
        .args(["serve", "--node-cert-lifetime", "10s", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("out of range: from 60s to 1825 days"), "{err}");
    assert!(!data.exists(), "refused before anything was made");
}
