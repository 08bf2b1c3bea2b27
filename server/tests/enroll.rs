//! Enrollment and node identity over real TLS on loopback: a join token
//! gets a node its certificate from a server it knows only by its CA pin;
//! the certificate then authenticates the node, and only as a node; used,
//! expired and revoked tokens, a wrong pin, a revoked or re-enrolled node are
//! each refused, and each refusal is in the audit log.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_proto::client::{self, CaPin, Connection, Refusal};
use cairn_proto::pb;
use common::cli::{fails, json, ok};
use common::*;
use rcgen::{CertificateParams, KeyPair};
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Identity;

/// `cairn-server ca pin --data-dir DIR`, the binary.
fn pin_of(data_dir: &Path) -> CaPin {
    let o = Command::new(server_bin())
        .args(["ca", "pin", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().parse().unwrap()
}

/// A node: its key, and what enrolling got it.
struct Node {
    key: KeyPair,
    enrolled: pb::EnrollResponse,
}

impl Node {
    /// A connection presenting the node's certificate, trusting the CA it got.
    async fn connect(&self, url: &str) -> Connection {
        let id = Identity::from_pem(&self.enrolled.cert_pem, self.key.serialize_pem());
        client::connect(url, &self.enrolled.ca_pem, Some(id))
            .await
            .unwrap()
    }
}

/// Enrolls as the agent does: a key made here, a request for it, the token,
/// over a connection pinned to the CA.
async fn enroll(url: &str, pin: CaPin, token: &str, name: &str) -> Result<Node, client::Error> {
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let conn = client::connect_pinned(url, pin).await?;
    let enrolled = conn
        .enrollment()
        .enroll(pb::EnrollRequest {
            token: token.into(),
            csr_pem: csr,
            node_name: name.into(),
            facts_json: r#"{"hostname":"web-1"}"#.into(),
        })
        .await
        .refused_by(&conn)?;
    Ok(Node { key, enrolled })
}

fn refused(result: Result<Node, client::Error>) -> tonic::Status {
    match result {
        Err(client::Error::Refused(r)) => r.status,
        Err(e) => panic!("not a refusal: {e:?}"),
        Ok(_) => panic!("enrolled"),
    }
}

/// A token for `role`, made by the admin credential `admin`.
async fn token(admin: &Connection, role: &str, ttl_seconds: u64, uses: u32) -> String {
    admin
        .access()
        .create_token(pb::CreateTokenRequest {
            role: role.into(),
            channel: "stable".into(),
            ttl_seconds,
            uses,
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

/// Pushes the `web` recipe, so that tokens may assign it.
async fn push_web(admin: &Connection) {
    admin
        .roles()
        .push(pb::PushRequest {
            bundle: Some(bundle_of(&recipes().join("web"))),
            message: String::new(),
            promote_to: "stable".into(),
        })
        .await
        .unwrap();
}

/// Every audit entry, oldest first.
async fn audit(admin: &Connection) -> Vec<pb::AuditEntry> {
    admin
        .audit()
        .list(pb::AuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
}

#[tokio::test]
async fn a_token_enrolls_a_node_whose_certificate_counts_only_as_that_node() {
    let server = Server::start();
    let admin = connect(&server.operator("ada", "admin")).await;
    push_web(&admin).await;
    let url = server.url();
    let pin = pin_of(&server.data_dir);

    // The pin is the SHA-256 of the CA's SubjectPublicKeyInfo, as an
    // independent parser reads it.
    let ca_pem = std::fs::read_to_string(server.data_dir.join("ca.crt")).unwrap();
    let der = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .unwrap()
        .1
        .contents;
    let (_, ca) = x509_parser::parse_x509_certificate(&der).unwrap();
    let spki = Sha256::digest(ca.tbs_certificate.subject_pki.raw);
    assert_eq!(pin.to_string(), format!("sha256:{spki:x}"));

    let secret = token(&admin, "web", 0, 1).await;
    let node = enroll(&url, pin, &secret, "web-1").await.unwrap();
    assert_eq!(node.enrolled.node_name, "web-1");
    assert_eq!(
        node.enrolled.assignment,
        Some(pb::Assignment {
            role: "web".into(),
            channel: "stable".into()
        })
    );
    assert_eq!(CaPin::of_cert_pem(&node.enrolled.ca_pem).unwrap(), pin);

    // The node's certificate passes the gate to the node API…
    let conn = node.connect(&url).await;
    let code = node_api(&conn).await;
    assert!(
        !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
        "{code:?}"
    );
    // …and is refused by every operator call.
    let err = conn
        .roles()
        .list(pb::ListRolesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .starts_with("a node certificate may not list roles"),
        "{}",
        err.message()
    );
    let err = conn
        .access()
        .create_token(pb::CreateTokenRequest {
            role: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // The token is used; the enrollment was audited as the node, with its token.
    let tokens = admin
        .access()
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        (tokens[0].uses_used, tokens[0].state.as_str()),
        (1, "used up")
    );
    assert!(secret.starts_with(&tokens[0].id));
    let log = audit(&admin).await;
    let enrolled = log.iter().find(|e| e.action == "node enroll").unwrap();
    assert_eq!(
        (enrolled.actor.as_str(), enrolled.actor_role.as_str()),
        ("web-1", "node")
    );
    assert!(
        enrolled.detail.contains(&format!("token {}", tokens[0].id)),
        "{}",
        enrolled.detail
    );
    // The secret is nowhere in the log.
    let (_, secret_part) = secret.split_once('.').unwrap();
    assert!(!log.iter().any(|e| format!("{e:?}").contains(secret_part)));
}

#[tokio::test]
async fn used_up_expired_revoked_and_unknown_tokens_are_refused_each_in_the_audit_log() {
    let mut server = Server::start();
    let admin_creds = server.operator("ada", "admin");
    let admin = connect(&admin_creds).await;
    push_web(&admin).await;
    let url = server.url();
    let pin = pin_of(&server.data_dir);

    let once = token(&admin, "web", 0, 1).await;
    enroll(&url, pin, &once, "n1").await.unwrap();
    let status = refused(enroll(&url, pin, &once, "n2").await);
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("is used up (it admitted 1 enrollment)"),
        "{}",
        status.message()
    );

    let short = token(&admin, "web", 1, 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let status = refused(enroll(&url, pin, &short, "n3").await);
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("expired at"),
        "{}",
        status.message()
    );

    let revoked = token(&admin, "web", 0, 5).await;
    let id = revoked.split_once('.').unwrap().0.to_string();
    admin
        .access()
        .revoke_token(pb::RevokeTokenRequest { id: id.clone() })
        .await
        .unwrap();
    let status = refused(enroll(&url, pin, &revoked, "n4").await);
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("was revoked at"),
        "{}",
        status.message()
    );

    // A wrong secret is an unknown token, as is a token of no such id.
    let wrong = format!("{id}.0123456789abcdef");
    for bad in [wrong.as_str(), "zzzzzz.0123456789abcdef", "not a token"] {
        let status = refused(enroll(&url, pin, bad, "n5").await);
        assert_eq!(status.code(), Code::Unauthenticated, "{bad}");
    }

    // An invalid request is refused without taking the token's use.
    let fresh = token(&admin, "web", 0, 1).await;
    let status = refused(enroll(&url, pin, &fresh, "Not_A_Name").await);
    assert_eq!(status.code(), Code::InvalidArgument);
    enroll(&url, pin, &fresh, "n6").await.unwrap();

    // Each case is audited in full, with the name it asked for, once per
    // peer in a window; repeats are counted and recorded at shutdown.
    drop(admin);
    server.stop().unwrap();
    let store =
        cairn_server::store::open(&cairn_server::store::default_url(&server.data_dir).unwrap())
            .await
            .unwrap();
    let log = store
        .audit_log(cairn_server::store::AuditQuery {
            since: None,
            from: cairn_server::store::AuditCursor::After(0),
            limit: 1000,
        })
        .await
        .unwrap();
    let refusal = |action: &str| {
        log.iter()
            .find(|e| e.action == action)
            .unwrap_or_else(|| panic!("no {action} in {log:#?}"))
    };
    for (action, target, says) in [
        ("enroll (used-up token)", "n2", "is used up"),
        ("enroll (expired token)", "n3", "expired at"),
        ("enroll (revoked token)", "n4", "was revoked"),
        ("enroll (unknown token)", "n5", "unknown join token"),
        (
            "enroll (invalid request)",
            "Not_A_Name",
            "invalid node name",
        ),
    ] {
        let e = refusal(action);
        assert_eq!(
            (e.actor.as_str(), e.target.as_str()),
            ("anonymous", target),
            "{e:?}"
        );
        assert!(
            e.outcome.starts_with("denied: ") && e.outcome.contains(says),
            "{e:?}"
        );
    }
    let counted = log
        .iter()
        .find(|e| e.action == "refusals")
        .expect("the repeated unknown tokens are counted");
    assert!(
        counted
            .outcome
            .starts_with("denied: 2 more refusals from 127.0.0.1"),
        "{counted:?}"
    );
}

#[tokio::test]
async fn a_wrong_pin_fails_before_the_token_is_sent() {
    let server = Server::start();
    let admin = connect(&server.operator("ada", "admin")).await;
    push_web(&admin).await;
    let secret = token(&admin, "web", 0, 1).await;
    // The pin of another server's CA.
    let other_pin = CaPin::of_cert_pem(&cairn_server::pki::new_ca().unwrap().cert_pem).unwrap();
    let before = audit(&admin).await.len();
    let err = enroll(&server.url(), other_pin, &secret, "n1")
        .await
        .err()
        .unwrap();
    let client::Error::PinMismatch { found, .. } = &err else {
        panic!("{err:?}");
    };
    let pin = pin_of(&server.data_dir);
    assert_eq!(
        found,
        &format!("its CA's pin is {pin}, not {other_pin}"),
        "{err}"
    );
    assert!(err.help().unwrap().contains("cairn-server ca pin"));
    // Nothing reached the server: no refusal, and the token is unused.
    assert_eq!(audit(&admin).await.len(), before);
    enroll(&server.url(), pin, &secret, "n1").await.unwrap();
}

#[tokio::test]
async fn a_revoked_node_is_refused_at_once_and_may_enroll_again_with_a_new_token() {
    let server = Server::start();
    let admin_creds = server.operator("ada", "admin");
    let admin = connect(&admin_creds).await;
    push_web(&admin).await;
    let url = server.url();
    let pin = pin_of(&server.data_dir);

    let first = enroll(&url, pin, &token(&admin, "web", 0, 1).await, "web-1")
        .await
        .unwrap();
    let conn = first.connect(&url).await;
    assert_ne!(node_api(&conn).await, Code::Unauthenticated);

    // `cairn node revoke`, the real binary: the open connection's next call is refused.
    let out = ok(&admin_creds, &["node", "revoke", "web-1"]);
    assert!(
        out.starts_with("revoked node web-1 (role web at channel stable)"),
        "{out}"
    );
    let err = conn
        .nodes()
        .fetch(pb::FetchRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("node web-1 was revoked"),
        "{}",
        err.message()
    );
    let err = fails(&admin_creds, &["node", "revoke", "web-1"]);
    assert!(err.contains("already revoked"), "{err}");
    let err = fails(&admin_creds, &["node", "revoke", "nobody"]);
    assert!(err.contains("node nobody not found"), "{err}");

    // The machine is rebuilt: a new key, a new token, the same name.
    let second = enroll(&url, pin, &token(&admin, "web", 0, 1).await, "web-1")
        .await
        .unwrap();
    let conn = second.connect(&url).await;
    assert_ne!(node_api(&conn).await, Code::Unauthenticated);
    // The first certificate stays refused: it was replaced.
    let old = first.connect(&url).await;
    let err = old
        .nodes()
        .fetch(pb::FetchRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("enrolled again since"),
        "{}",
        err.message()
    );

    // Enrolling a third time (no revocation between) replaces the second.
    let third = enroll(&url, pin, &token(&admin, "web", 0, 1).await, "web-1")
        .await
        .unwrap();
    assert_eq!(
        node_api(&second.connect(&url).await).await,
        Code::Unauthenticated
    );
    assert_ne!(
        node_api(&third.connect(&url).await).await,
        Code::Unauthenticated
    );
    let log = audit(&admin).await;
    let details: Vec<&str> = log
        .iter()
        .filter(|e| e.target == "web-1" && e.action.starts_with("node "))
        .map(|e| e.detail.as_str())
        .collect();
    assert_eq!(details.len(), 4, "{details:?}");
    assert!(
        details[2].contains("enrolled again after its revocation"),
        "{details:?}"
    );
    assert!(
        details[3].contains("replaced the certificate enrolled at"),
        "{details:?}"
    );
}

#[test]
fn the_cli_makes_lists_and_revokes_tokens_for_admins_only() {
    let server = Server::start();
    let admin = server.operator("ada", "admin");
    let publisher = server.operator("pat", "publisher");
    let err = fails(&admin, &["token", "create", "--role", "web"]);
    assert!(
        err.contains("role web has no version on this server; push it first"),
        "{err}"
    );
    ok(
        &publisher,
        &["role", "push", recipes().join("web").to_str().unwrap()],
    );
    let err = fails(&publisher, &["token", "create", "--role", "web"]);
    assert!(err.contains("may not create join tokens"), "{err}");

    let out = ok(&admin, &["token", "create", "--role", "web", "--uses", "3"]);
    let pin = pin_of(&server.data_dir).to_string();
    assert!(
        out.contains("enrolls up to 3 nodes as role web at channel production"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "--server {} --ca-pin {pin} --token-file FILE",
            server.url()
        )),
        "{out}"
    );
    let secret = out.split_whitespace().nth(2).unwrap().to_string();
    let created = json(
        &admin,
        &[
            "token",
            "create",
            "--role",
            "web",
            "--ttl",
            "2h",
            "--channel",
            "canary",
        ],
    );
    assert_eq!(created["channel"], "canary");
    assert_eq!(created["ca_pin"], pin);

    let listed = json(&admin, &["token", "list"]);
    let tokens = listed["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    let text = serde_json::to_string(&listed).unwrap();
    let (id, secret_part) = secret.split_once('.').unwrap();
    assert!(text.contains(id) && !text.contains(secret_part), "{text}");
    assert!(ok(&admin, &["token", "list"]).contains("0/3"));

    let out = ok(&admin, &["token", "revoke", id]);
    assert!(
        out.starts_with(&format!("revoked join token {id}")),
        "{out}"
    );
    let listed = json(&admin, &["token", "list"]);
    let state = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap()["state"]
        .clone();
    assert_eq!(state, "revoked");
    let err = fails(&admin, &["token", "revoke", id]);
    assert!(err.contains("already revoked"), "{err}");
    let err = fails(&publisher, &["token", "list"]);
    assert!(err.contains("may not list join tokens"), "{err}");
}
