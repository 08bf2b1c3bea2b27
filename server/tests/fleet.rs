//! The node API and the operators' view of the fleet, against the real server
//! over real TLS on loopback: nodes with real node certificates fetch, watch
//! and report; operators read nodes, reports and status through the real
//! `cairn` binary.

mod common;

use std::path::Path;
use std::time::Duration;

use cairn_proto::client::{self, Connection, Credentials};
use cairn_proto::pb;
use cairn_proto::report::{PropertyChange, ResourceReport, ResourceStatus, RunReport, RunSummary};
use common::cli::*;
use common::*;
use serde_json::Value;
use tonic::Code;

/// How long a test waits for an event that should come within a second.
const DEADLINE: Duration = Duration::from_secs(20);

/// Enrolls node `name` as an agent does, through the real services: an admin
/// creates a one-use join token for the assignment (`Access.CreateToken`),
/// the node makes its key, sends a certificate request with the token
/// (`Enrollment.Enroll`, without a client certificate), and connects with the
/// certificate it got.
async fn enroll(server: &Server, name: &str, role: &str, channel: &str) -> Connection {
    let admin = Credentials::load(&server.operator("enroller", "admin")).unwrap();
    let ops = admin.connect().await.unwrap();
    let token = ops
        .access()
        .create_token(pb::CreateTokenRequest {
            role: role.into(),
            channel: channel.into(),
            ttl_seconds: 600,
            uses: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let (key, csr_pem) = node_request(Some(name));
    let anonymous = client::connect(&server.url(), &admin.ca, None)
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
    let identity = tonic::transport::Identity::from_pem(enrolled.cert_pem, key.serialize_pem());
    client::connect(&server.url(), &admin.ca, Some(identity))
        .await
        .unwrap()
}

/// A role `name` whose one file holds `content`.
fn role(name: &str, content: &str) -> pb::Bundle {
    pb::Bundle {
        files: vec![file(
            b"role.toml",
            format!(
                "[role]\nname = \"{name}\"\n\n[[file]]\npath = \"/etc/motd\"\ncontent = \"{content}\\n\"\n"
            )
            .as_bytes(),
        )],
    }
}

/// Pushes the role and points `promote_to` at it (empty: no promotion); the version.
async fn push(ops: &Connection, bundle: pb::Bundle, promote_to: &str) -> pb::VersionInfo {
    ops.roles()
        .push(pb::PushRequest {
            bundle: Some(bundle),
            message: String::new(),
            promote_to: promote_to.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap()
}

fn assigned(role: &str, channel: &str) -> Option<pb::Assignment> {
    Some(pb::Assignment {
        role: role.into(),
        channel: channel.into(),
    })
}

async fn fetch(
    node: &Connection,
    role: &str,
    channel: &str,
    known: &str,
) -> Result<pb::FetchResponse, tonic::Status> {
    node.nodes()
        .fetch(pb::FetchRequest {
            assignment: assigned(role, channel),
            known_digest: known.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A run report of `node` applying version `version` of `web`, one resource
/// of each of `statuses`, finished at `finished_at`.
fn run_report(
    node: &str,
    run_id: &str,
    version: u64,
    finished_at: &str,
    statuses: &[ResourceStatus],
) -> pb::RunReport {
    let resources: Vec<ResourceReport> = statuses
        .iter()
        .enumerate()
        .map(|(i, &status)| ResourceReport {
            id: format!("file:/etc/motd{i}"),
            status,
            changes: if status == ResourceStatus::Changed {
                vec![PropertyChange::new("content", "", "")]
            } else {
                vec![]
            },
            diff: (status == ResourceStatus::Changed).then(|| {
                "--- /etc/motd\n+++ /etc/motd\n@@ -1 +1 @@\n-old\n+new \u{1b}[2J\n".into()
            }),
            duration_us: 10,
            error: (status == ResourceStatus::Failed).then(|| "could not write /etc/motd".into()),
        })
        .collect();
    RunReport {
        run_id: run_id.into(),
        node: node.into(),
        role: "web".into(),
        role_digest: "sha256:00".into(),
        noop: false,
        started_at: "2026-01-01T00:00:00Z".into(),
        finished_at: finished_at.into(),
        agent_version: "0.1.0".into(),
        channel: "production".into(),
        role_version: version,
        from_cache: false,
        summary: RunSummary::of(&resources),
        resources,
    }
    .into()
}

async fn send(
    node: &Connection,
    report: pb::RunReport,
    facts: &str,
) -> Result<bool, tonic::Status> {
    send_every(node, report, facts, 60).await
}

/// [`send`] from an agent that runs every `interval_secs`.
async fn send_every(
    node: &Connection,
    report: pb::RunReport,
    facts: &str,
    interval_secs: u32,
) -> Result<bool, tonic::Status> {
    node.nodes()
        .report(pb::ReportRequest {
            report: Some(report),
            facts_json: facts.into(),
            interval_secs,
        })
        .await
        .map(|r| r.into_inner().created)
}

/// The audit entries of `action`, as (actor, target, outcome).
async fn audited(ops: &Connection, action: &str) -> Vec<(String, String, String)> {
    ops.audit()
        .list(pb::AuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .filter(|e| e.action == action)
        .map(|e| (e.actor, e.target, e.outcome))
        .collect()
}

/// Asserts that the audit log holds a refusal of `action` by `actor` on `target`.
async fn assert_denied_audited(ops: &Connection, action: &str, actor: &str, target: &str) {
    let refusals = audited(ops, action).await;
    assert!(
        refusals
            .iter()
            .any(|(a, t, outcome)| a == actor && t == target && outcome.starts_with("denied: ")),
        "{refusals:?}"
    );
}

#[tokio::test]
async fn a_node_fetches_its_own_role_and_is_refused_another() {
    let server = Server::start();
    let ops = connect(&server.operator("ann", "admin")).await;
    let v1 = push(&ops, role("web", "one"), "production").await;
    push(&ops, role("db", "one"), "production").await;
    let node = enroll(&server, "web-1", "web", "production").await;

    let got = fetch(&node, "web", "production", "").await.unwrap();
    assert_eq!(got.version.as_ref().unwrap().version, v1.version);
    assert_eq!(got.channel, "production");
    let bundle = got.bundle.expect("the bundle, for a node that holds none");
    let digest = cairn_proto::bundle::RoleBundle::from_wire(bundle)
        .unwrap()
        .digest();
    assert_eq!(digest, v1.digest);
    // Holding that version already: no bundle. An empty channel is `production`.
    let again = fetch(&node, "web", "", &v1.digest).await.unwrap();
    assert!(again.bundle.is_none());
    assert_eq!(again.version.unwrap().digest, v1.digest);

    // Another role, or another channel of its own role: refused and audited.
    for (role, channel) in [("db", "production"), ("web", "staging")] {
        let err = fetch(&node, role, channel, "").await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(
            err.message()
                .contains("node web-1 is assigned role web at channel production"),
            "{}",
            err.message()
        );
    }
    assert_denied_audited(&ops, "fetch", "web-1", "db@production").await;

    // What a node asks for is cut in the refusal, which travels in a header.
    let huge = "x".repeat(100_000);
    let err = fetch(&node, &huge, "production", "").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().len() < 500, "{} bytes", err.message().len());

    // A channel nothing was promoted to yet.
    let early = enroll(&server, "web-2", "web", "staging").await;
    let err = fetch(&early, "web", "staging", "").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("role web has no version promoted to channel staging yet"),
        "{}",
        err.message()
    );
    // An operator is no node.
    let err = fetch(&ops, "web", "production", "").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

/// The next message of a watch stream, within [`DEADLINE`].
async fn next(moves: &mut tonic::Streaming<pb::ChannelMoved>) -> pb::ChannelMoved {
    tokio::time::timeout(DEADLINE, moves.message())
        .await
        .expect("no channel move within the deadline")
        .unwrap()
        .expect("the stream ended")
}

#[tokio::test]
async fn a_watch_gets_the_current_version_then_every_move() {
    let server = Server::start();
    let ops = connect(&server.operator("ann", "admin")).await;
    let v1 = push(&ops, role("web", "one"), "production").await;
    let node = enroll(&server, "web-1", "web", "production").await;
    let mut moves = node
        .nodes()
        .watch(pb::WatchRequest {
            assignment: assigned("web", "production"),
        })
        .await
        .unwrap()
        .into_inner();
    let now = next(&mut moves).await;
    assert_eq!(
        (now.role.as_str(), now.channel.as_str(), now.version),
        ("web", "production", v1.version)
    );
    assert_eq!(now.digest, v1.digest);

    // A push that promotes, a promote, a rollback: each one reaches the node.
    let v2 = push(&ops, role("web", "two"), "production").await;
    assert_eq!(next(&mut moves).await.version, v2.version);
    let v3 = push(&ops, role("web", "three"), "").await;
    // Another channel moving says nothing to this node.
    ops.roles()
        .promote(pb::PromoteRequest {
            role: "web".into(),
            version: v3.version,
            channel: "staging".into(),
        })
        .await
        .unwrap();
    ops.roles()
        .promote(pb::PromoteRequest {
            role: "web".into(),
            version: v3.version,
            channel: "production".into(),
        })
        .await
        .unwrap();
    let moved = next(&mut moves).await;
    assert_eq!((moved.version, moved.digest), (v3.version, v3.digest));
    ops.roles()
        .rollback(pb::RollbackRequest {
            role: "web".into(),
            channel: "production".into(),
        })
        .await
        .unwrap();
    assert_eq!(next(&mut moves).await.version, v2.version);

    // Watching another assignment is refused.
    let err = node
        .nodes()
        .watch(pb::WatchRequest {
            assignment: assigned("db", "production"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_denied_audited(&ops, "watch", "web-1", "db@production").await;

    // Shutting down ends the stream, so an agent's watch does not hold up the
    // drain (at most 20 s) but reconnects elsewhere at once.
    let started = std::time::Instant::now();
    let mut server = server;
    let stopping = tokio::task::spawn_blocking(move || server.stop());
    let end = tokio::time::timeout(DEADLINE, moves.message())
        .await
        .expect("the watch stream was still open after the shutdown began");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    drop((moves, node, ops));
    stopping.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stopping took {:?}",
        started.elapsed()
    );
}

/// A node's open watch stream, after the position it starts with.
async fn watching(node: &Connection, role: &str) -> tonic::Streaming<pb::ChannelMoved> {
    let mut moves = node
        .nodes()
        .watch(pb::WatchRequest {
            assignment: assigned(role, "production"),
        })
        .await
        .unwrap()
        .into_inner();
    next(&mut moves).await;
    moves
}

#[tokio::test]
async fn a_revoked_nodes_watch_stream_ends_at_revoke_and_the_others_go_on() {
    let server = Server::start();
    let admin = server.operator("ann", "admin");
    let ops = connect(&admin).await;
    push(&ops, role("web", "one"), "production").await;
    let revoked = enroll(&server, "web-1", "web", "production").await;
    let other = enroll(&server, "web-2", "web", "production").await;
    let mut revoked_moves = watching(&revoked, "web").await;
    let mut other_moves = watching(&other, "web").await;

    // `cairn node revoke`, the real binary: the stream ends now, with the
    // reason, not at the node's next call.
    ok(&admin, &["node", "revoke", "web-1"]);
    let ended = tokio::time::timeout(DEADLINE, revoked_moves.message())
        .await
        .expect("the revoked node's watch stream stayed open");
    let status = ended.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .contains("credential revoked: node web-1 was revoked"),
        "{}",
        status.message()
    );
    // Nothing follows, not even a promote.
    let v2 = push(&ops, role("web", "two"), "production").await;
    assert!(matches!(revoked_moves.message().await, Ok(None) | Err(_)));

    // Another node's stream is untouched and still told of moves.
    assert_eq!(next(&mut other_moves).await.version, v2.version);
    // And the revoked node cannot watch again.
    let err = revoked
        .nodes()
        .watch(pb::WatchRequest {
            assignment: assigned("web", "production"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}

#[tokio::test]
async fn a_report_is_stored_once_and_another_nodes_is_refused() {
    let server = Server::start();
    let ops = connect(&server.operator("ann", "admin")).await;
    push(&ops, role("web", "one"), "production").await;
    let node = enroll(&server, "web-1", "web", "production").await;
    let report = run_report(
        "web-1",
        "run-1",
        1,
        "2026-01-01T00:00:01Z",
        &[ResourceStatus::Changed],
    );
    assert!(send(&node, report.clone(), "{}").await.unwrap());
    // Sent again (spooled during an outage): acknowledged, not stored again.
    assert!(!send(&node, report, "{}").await.unwrap());
    let listed = ops
        .fleet()
        .list_reports(pb::ListReportsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .reports;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].node.as_str(), listed[0].status.as_str()),
        ("web-1", "changed")
    );

    // Posting another node's report: refused, audited, nothing stored.
    let forged = run_report(
        "web-2",
        "run-9",
        1,
        "2026-01-01T00:00:01Z",
        &[ResourceStatus::Failed],
    );
    let err = send(&node, forged, "{}").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("node web-1 may not send a report of node web-2"),
        "{}",
        err.message()
    );
    assert_denied_audited(&ops, "report", "web-1", "web-2").await;
    // An invalid one is refused as such.
    let mut bad = run_report("web-1", "run-2", 1, "not a time", &[]);
    bad.role = "web".into();
    let err = send(&node, bad, "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let count = ops
        .fleet()
        .list_reports(pb::ListReportsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .reports
        .len();
    assert_eq!(count, 1);
}

/// Runs `cairn` with `args` and `--output json`, in a blocking task.
async fn cli_json(creds: &Path, args: &[&str]) -> Value {
    let creds = creds.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        json(&creds, &args)
    })
    .await
    .unwrap()
}

async fn cli_text(creds: &Path, args: &[&str]) -> String {
    let creds = creds.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&creds, &args)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn operators_see_nodes_reports_and_status_through_the_cli() {
    let server = Server::start();
    let creds = server.operator("ann", "admin");
    let auditor = server.operator("otto", "auditor");
    let ops = connect(&creds).await;
    push(&ops, role("web", "one"), "production").await;
    let v2 = push(&ops, role("web", "two"), "production").await;
    let fresh = enroll(&server, "web-1", "web", "production").await;
    let behind = enroll(&server, "web-2", "web", "production").await;
    let broken = enroll(&server, "web-3", "web", "production").await;
    enroll(&server, "web-4", "web", "production").await;
    let facts = r#"{"os":{"family":"debian"},"hostname":"web-1\u001b[2J"}"#;
    send(
        &fresh,
        run_report(
            "web-1",
            "a1",
            1,
            "2026-01-01T00:00:01Z",
            &[ResourceStatus::Changed],
        ),
        facts,
    )
    .await
    .unwrap();
    send(
        &fresh,
        run_report(
            "web-1",
            "a2",
            v2.version,
            "2026-01-01T00:10:00Z",
            &[ResourceStatus::Unchanged],
        ),
        facts,
    )
    .await
    .unwrap();
    // Delivered late (spooled): an older run does not hide the newer one.
    send(
        &fresh,
        run_report(
            "web-1",
            "a0",
            1,
            "2025-12-31T00:00:00Z",
            &[ResourceStatus::Failed],
        ),
        "{}",
    )
    .await
    .unwrap();
    // An agent that runs every second, and then is not heard from: stale.
    send_every(
        &behind,
        run_report(
            "web-2",
            "b1",
            1,
            "2026-01-01T00:00:01Z",
            &[ResourceStatus::Unchanged],
        ),
        "{}",
        1,
    )
    .await
    .unwrap();
    send(
        &broken,
        run_report(
            "web-3",
            "c1",
            v2.version,
            "2026-01-01T00:00:01Z",
            &[ResourceStatus::Changed, ResourceStatus::Failed],
        ),
        "{}",
    )
    .await
    .unwrap();

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let list = cli_json(&auditor, &["node", "list"]).await;
    let nodes = list["nodes"].as_array().unwrap();
    let row = |name: &str| nodes.iter().find(|n| n["name"] == name).unwrap().clone();
    assert_eq!(nodes.len(), 4);
    assert_eq!(row("web-1")["last_run"]["role_version"], v2.version);
    assert_eq!(row("web-1")["last_run"]["status"], "unchanged");
    assert_eq!(row("web-2")["last_run"]["role_version"], 1);
    assert_eq!(row("web-3")["last_run"]["status"], "failed");
    assert_eq!(row("web-4")["last_run"], Value::Null);
    let stale: Vec<&Value> = nodes
        .iter()
        .filter(|n| n["stale"] == true)
        .map(|n| &n["name"])
        .collect();
    assert_eq!(stale, ["web-2"]);
    assert!(
        nodes
            .iter()
            .all(|n| n["role"] == "web" && n["channel"] == "production")
    );
    let table = cli_text(&auditor, &["node", "list"]).await;
    assert!(
        table.contains("never reported") && table.contains("web-3"),
        "{table}"
    );

    let show = cli_json(&auditor, &["node", "show", "web-1"]).await;
    assert_eq!(show["facts"]["os"]["family"], "debian");
    let history: Vec<&str> = show["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["a0", "a2", "a1"], "newest received first");
    let text = cli_text(&auditor, &["node", "show", "web-1"]).await;
    assert!(
        text.contains(r#""hostname": "web-1\u001b[2J""#) && !text.contains('\u{1b}'),
        "{text}"
    );

    let failed = cli_json(
        &auditor,
        &["report", "list", "--status", "failed", "--since", "1h"],
    )
    .await;
    let ids: Vec<&str> = failed["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c1", "a0"]);
    let mine = cli_json(&auditor, &["report", "list", "--node", "web-2"]).await;
    assert_eq!(mine["reports"].as_array().unwrap().len(), 1);
    let c1 = failed["reports"][0]["id"].as_u64().unwrap().to_string();
    let shown = cli_text(&auditor, &["report", "show", &c1]).await;
    assert!(
        shown.contains("report ") && shown.contains("from node web-3"),
        "{shown}"
    );
    assert!(
        shown.contains("FAILED       file:/etc/motd1")
            && shown.contains("could not write /etc/motd"),
        "{shown}"
    );
    assert!(
        shown.contains("+new \\u{1b}[2J") && !shown.contains('\u{1b}'),
        "{shown}"
    );
    let shown = cli_json(&auditor, &["report", "show", &c1]).await;
    assert_eq!(shown["report"]["resources"].as_array().unwrap().len(), 2);

    let status = cli_json(&auditor, &["status"]).await;
    let web = &status["channels"][0];
    assert_eq!(
        (web["role"].as_str(), web["channel"].as_str()),
        (Some("web"), Some("production"))
    );
    assert_eq!(web["promoted_version"], v2.version);
    for (field, n) in [
        ("nodes", 4),
        ("on_promoted", 1),
        ("on_older", 1),
        ("failing", 1),
        ("stale", 1),
        ("never_reported", 1),
    ] {
        assert_eq!(web[field], n, "{field}: {status}");
    }
    let text = cli_text(&auditor, &["status"]).await;
    assert!(text.contains("production"), "{text}");
    let missing = tokio::task::spawn_blocking(move || fails(&auditor, &["node", "show", "nobody"]))
        .await
        .unwrap();
    assert!(missing.contains("node nobody not found"), "{missing}");
}
