//! `cairn-server export` and `import`, the real binary: a SQLite server's
//! roles, channels, nodes (a renewal's previous certificate too), tokens,
//! operators, reports, CA and audit log moved into PostgreSQL and back,
//! compared with what was there; the enrolled node
//! and the operator keep working against the server on the restored database,
//! which goes on numbering after the restored ids; a damaged archive and a
//! database that is not empty are refused, and nothing is written; an
//! archive of the first release that exported (before migration 0010) is
//! imported into both backends.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use cairn_proto::client::{self, Connection, Credentials};
use cairn_proto::pb;
use cairn_proto::report::{RunReport, RunSummary};
use cairn_server::store::tables::{self, Row};
use cairn_server::store::{
    self, AuditCursor, AuditQuery, AuditRecord, CaRecord, Channel, ChannelEvent, FleetNode,
    HourOfRuns, NodeRecord, ReportMeta, ReportQuery, RunStatus, Store, TokenRecord, VersionMeta,
    audit, dashboard::HOUR,
};
use common::postgres::PgCluster;
use common::*;
use tonic::transport::Identity;

fn server(args: &[&str]) -> Output {
    Command::new(server_bin()).args(args).output().unwrap()
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn export(out: &Path, with_reports: bool, place: &[&str]) {
    let mut args = vec!["export", "--out", out.to_str().unwrap()];
    if with_reports {
        args.push("--with-reports");
    }
    let o = server(&[&args, place].concat());
    assert!(o.status.success(), "export: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("mode 0600") && text(&o.stdout).contains("the CA is sha256:"),
        "{}",
        text(&o.stdout)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the archive holds the CA's key");
}

/// `cairn-server import FILE` into `database` for a server on `data_dir`.
fn import(archive: &Path, data_dir: &Path, database: &str) -> Output {
    server(&[
        "import",
        archive.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--database",
        database,
    ])
}

fn sqlite_url(data_dir: &Path) -> String {
    store::default_url(data_dir).unwrap()
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

async fn push(ops: &Connection, bundle: pb::Bundle, promote_to: &str) -> u64 {
    ops.roles()
        .push(pb::PushRequest {
            bundle: Some(bundle),
            message: "a change".into(),
            promote_to: promote_to.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap()
        .version
}

/// A node's certificate and key, from enrolling as an agent does.
struct Node {
    cert: String,
    key: String,
    ca: String,
}

impl Node {
    async fn connect(&self, url: &str) -> Connection {
        client::connect(
            url,
            &self.ca,
            Some(Identity::from_pem(&self.cert, &self.key)),
        )
        .await
        .unwrap()
    }
}

async fn enroll(url: &str, admin: &Credentials, ops: &Connection, name: &str) -> Node {
    let token = ops
        .access()
        .create_token(pb::CreateTokenRequest {
            role: "web".into(),
            channel: "production".into(),
            ttl_seconds: 600,
            uses: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let key = rcgen::KeyPair::generate().unwrap();
    let csr_pem = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let enrolled = client::connect(url, &admin.ca, None)
        .await
        .unwrap()
        .enrollment()
        .enroll(pb::EnrollRequest {
            token,
            csr_pem,
            node_name: name.into(),
            facts_json: r#"{"os":"debian"}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    Node {
        cert: enrolled.cert_pem,
        key: key.serialize_pem(),
        ca: enrolled.ca_pem,
    }
}

/// Node `name` renews its certificate with `node`'s (a new key; the answer
/// is dropped).
async fn renew(node: &Connection, name: &str) -> Result<(), tonic::Status> {
    let (_key, csr_pem) = node_request(Some(name));
    node.nodes()
        .renew(pb::RenewRequest { csr_pem })
        .await
        .map(drop)
}

/// The node fetches its role: the version it is given.
async fn fetched_version(node: &Connection) -> u64 {
    node.nodes()
        .fetch(pb::FetchRequest {
            assignment: Some(pb::Assignment {
                role: "web".into(),
                channel: "production".into(),
            }),
            known_digest: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap()
        .version
}

/// Sends the report of run `run_id` of version `version`; whether it was stored now.
async fn report(node: &Connection, name: &str, run_id: &str, version: u64) -> bool {
    let report: pb::RunReport = RunReport {
        run_id: run_id.into(),
        node: name.into(),
        role: "web".into(),
        role_digest: "sha256:00".into(),
        noop: false,
        started_at: "2026-01-01T00:00:00Z".into(),
        finished_at: format!("2026-01-01T00:00:0{}Z", version.min(9)),
        agent_version: "0.1.0".into(),
        channel: "production".into(),
        role_version: version,
        from_cache: false,
        summary: RunSummary::of(&[]),
        resources: vec![],
    }
    .into();
    node.nodes()
        .report(pb::ReportRequest {
            report: Some(report),
            facts_json: r#"{"os":"debian"}"#.into(),
            interval_secs: 60,
        })
        .await
        .unwrap()
        .into_inner()
        .created
}

/// Everything a store holds, read through its interface.
#[derive(Debug, PartialEq)]
struct Contents {
    versions: Vec<(VersionMeta, Vec<u8>)>,
    channels: Vec<(Vec<Channel>, Vec<ChannelEvent>)>,
    audit: Vec<AuditRecord>,
    nodes: Vec<NodeRecord>,
    fleet: Vec<FleetNode>,
    tokens: Vec<TokenRecord>,
    reports: Vec<(ReportMeta, Vec<u8>)>,
    /// The reports counted per hour and status: derived, not archived, and
    /// rebuilt by an import.
    runs: Vec<HourOfRuns>,
    ca: Option<CaRecord>,
    /// Every row of every table, as stored (operators included).
    rows: Vec<Vec<Row>>,
}

async fn contents(url: &str) -> Contents {
    let store = store::open(url).await.unwrap();
    let mut versions = Vec::new();
    let mut channels = Vec::new();
    for summary in store.roles().await.unwrap() {
        let role = summary.latest.role;
        for v in store.versions(&role).await.unwrap() {
            versions.push(store.get(&role, Some(v.version)).await.unwrap());
        }
        channels.push(store.channels(&role).await.unwrap());
    }
    let audit = store
        .audit_log(AuditQuery {
            since: None,
            from: AuditCursor::After(0),
            limit: 10_000,
        })
        .await
        .unwrap();
    let fleet = store.fleet_nodes("", 1000).await.unwrap();
    let mut nodes = Vec::new();
    for n in &fleet {
        nodes.push(store.node(&n.name).await.unwrap().unwrap());
    }
    let mut reports = Vec::new();
    for meta in store
        .reports(&ReportQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
    {
        reports.push(store.report(meta.id).await.unwrap());
    }
    let runs = store.runs_by_hour(0).await.unwrap();
    // They are the stored reports, counted.
    let mut counted = std::collections::BTreeMap::<i64, HourOfRuns>::new();
    for (meta, _) in &reports {
        let hour = meta.received_at / HOUR * HOUR;
        let h = counted.entry(hour).or_insert(HourOfRuns {
            hour,
            ..HourOfRuns::default()
        });
        match meta.status {
            RunStatus::Failed => h.failed += 1,
            RunStatus::Changed => h.changed += 1,
            RunStatus::Unchanged => h.unchanged += 1,
        }
    }
    assert_eq!(runs, counted.into_values().collect::<Vec<_>>(), "{url}");
    Contents {
        versions,
        channels,
        audit,
        nodes,
        fleet,
        tokens: store.tokens(1000).await.unwrap(),
        reports,
        runs,
        ca: store.ca().await.unwrap(),
        rows: all_rows(store.as_ref()).await,
    }
}

async fn all_rows(store: &dyn Store) -> Vec<Vec<Row>> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(16);
    let reading = store.export_rows(&tables::ALL, sender);
    let collecting = async {
        let mut rows = vec![Vec::new(); tables::ALL.len()];
        while let Some((i, row)) = receiver.recv().await {
            rows[i].push(row);
        }
        rows
    };
    let (read, rows) = tokio::join!(reading, collecting);
    read.unwrap();
    rows
}

/// Flips one byte in the middle of member `name` of the archive at `path`.
fn damage(path: &Path, name: &str) {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let (offset, size) = archive
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path().unwrap().to_str() == Some(name))
        .map(|e| (e.raw_file_position(), e.size()))
        .unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    bytes[(offset + size / 2) as usize] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_postgres_and_back_keeps_everything_and_nodes_stay_enrolled() {
    let cluster = PgCluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let src_dir = tmp.path().join("src/data");
    let (grpc, http) = free_ports();
    let mut src = Daemon::start_in(&src_dir, grpc, http);
    let creds = src.operator("ada", "admin");
    let admin = Credentials::load(&creds).unwrap();
    let ops = connect(&creds).await;

    // Versions, channels moved back and forth, a denied push, tokens, a node
    // and its reports.
    for content in ["one", "two", "three"] {
        push(&ops, role("web", content), "production").await;
    }
    push(&ops, role("db", "x"), "").await;
    ops.roles()
        .promote(pb::PromoteRequest {
            role: "web".into(),
            version: 1,
            channel: "staging".into(),
        })
        .await
        .unwrap();
    ops.roles()
        .rollback(pb::RollbackRequest {
            role: "web".into(),
            channel: "production".into(),
        })
        .await
        .unwrap();
    let auditor = connect(&src.operator("aud", "auditor")).await;
    assert!(
        auditor
            .roles()
            .push(pb::PushRequest {
                bundle: Some(role("web", "denied")),
                message: String::new(),
                promote_to: String::new(),
            })
            .await
            .is_err()
    );
    let node = enroll(&src.url(), &admin, &ops, "web-1").await;
    let on_src = node.connect(&src.url()).await;
    assert_eq!(fetched_version(&on_src).await, 2);
    assert!(report(&on_src, "web-1", "run-1", 2).await);
    assert!(report(&on_src, "web-1", "run-2", 2).await);
    // A node whose renewal's answer it never received: its old certificate
    // may renew again wherever the archive is restored.
    let unrenewed = enroll(&src.url(), &admin, &ops, "web-2").await;
    renew(&unrenewed.connect(&src.url()).await, "web-2")
        .await
        .unwrap();

    // Exported while the server runs.
    let src_place = ["--data-dir", src_dir.to_str().unwrap()];
    let (full, lean) = (tmp.path().join("full.tar"), tmp.path().join("lean.tar"));
    export(&full, true, &src_place);
    export(&lean, false, &src_place);
    src.terminate();
    let before = contents(&sqlite_url(&src_dir)).await;
    assert_eq!(audit::first_break(&before.audit), None);
    assert!(before.audit.len() > 10 && before.reports.len() == 2);
    assert!(!before.runs.is_empty());
    assert_eq!(before.versions.len(), 4);

    // Into PostgreSQL: the same, entry for entry.
    let pg = cluster.database();
    let pg_dir = tmp.path().join("pg/data");
    let o = import(&full, &pg_dir, &pg);
    assert!(o.status.success(), "import: {}", text(&o.stderr));
    let pin = cairn_proto::client::CaPin::of_cert_pem(&node.ca).unwrap();
    assert!(
        text(&o.stdout).contains(&pin.to_string()),
        "{}",
        text(&o.stdout)
    );
    let restored = contents(&pg).await;
    assert_eq!(restored, before);
    assert_eq!(audit::first_break(&restored.audit), None);

    // Served from there, on another address: the node and the operator keep
    // their certificates; new ids follow the restored ones.
    let (grpc, http) = free_ports();
    let dst = Daemon::start_with(&pg_dir, grpc, http, "info", &["--database", &pg]);
    let on_dst = node.connect(&dst.url()).await;
    assert_eq!(fetched_version(&on_dst).await, 2);
    let old_on_dst = unrenewed.connect(&dst.url()).await;
    let refused = old_on_dst
        .nodes()
        .fetch(pb::FetchRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    renew(&old_on_dst, "web-2").await.unwrap();
    let mut moved = Credentials::load(&creds).unwrap();
    moved.server = dst.url();
    let ops_dst = moved.connect().await.unwrap();
    let v4 = push(&ops_dst, role("web", "four"), "production").await;
    assert_eq!(v4, 4);
    ops_dst
        .roles()
        .rollback(pb::RollbackRequest {
            role: "web".into(),
            channel: "production".into(),
        })
        .await
        .unwrap();
    ops_dst
        .roles()
        .promote(pb::PromoteRequest {
            role: "web".into(),
            version: 4,
            channel: "production".into(),
        })
        .await
        .unwrap();
    assert_eq!(fetched_version(&on_dst).await, 4);
    assert!(!report(&on_dst, "web-1", "run-2", 2).await, "stored once");
    assert!(report(&on_dst, "web-1", "run-3", 4).await);
    let after = contents(&pg).await;
    assert_eq!(audit::first_break(&after.audit), None);
    assert_eq!(after.audit[..before.audit.len()], before.audit[..]);
    let report_ids: Vec<u64> = after.reports.iter().map(|(m, _)| m.id).collect();
    assert!(
        report_ids[0] > before.reports[0].0.id,
        "a new report is numbered after the restored ones: {report_ids:?}"
    );

    // Back into SQLite, from the server that runs.
    let pg_archive = tmp.path().join("pg.tar");
    export(
        &pg_archive,
        true,
        &["--data-dir", pg_dir.to_str().unwrap(), "--database", &pg],
    );
    let back_dir = tmp.path().join("back/data");
    let o = import(&pg_archive, &back_dir, &sqlite_url(&back_dir));
    assert!(o.status.success(), "import: {}", text(&o.stderr));
    drop(dst);
    assert_eq!(contents(&sqlite_url(&back_dir)).await, contents(&pg).await);
    let (grpc, http) = free_ports();
    let back = Daemon::start_in(&back_dir, grpc, http);
    let on_back = node.connect(&back.url()).await;
    assert_eq!(fetched_version(&on_back).await, 4);
    assert!(report(&on_back, "web-1", "run-4", 4).await);

    // Without the reports: everything else.
    let pg_lean = cluster.database();
    let o = import(&lean, &tmp.path().join("lean/data"), &pg_lean);
    assert!(o.status.success(), "import: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("no run reports"),
        "{}",
        text(&o.stdout)
    );
    let restored = contents(&pg_lean).await;
    assert!(restored.reports.is_empty() && restored.runs.is_empty());
    assert!(restored.fleet.iter().all(|n| n.last.is_none()));
    assert_eq!(
        (
            &restored.versions,
            &restored.channels,
            &restored.audit,
            &restored.nodes,
            &restored.tokens,
            &restored.ca
        ),
        (
            &before.versions,
            &before.channels,
            &before.audit,
            &before.nodes,
            &before.tokens,
            &before.ca
        )
    );
}

/// Rewrites the archive at `from` into `to` as the first release that
/// exported wrote it: format version 1, no schema version, and no
/// `previous_fingerprint` in the nodes (migration 0010 came after it); every
/// member's size, rows and checksum in the manifest match.
fn as_first_release(from: &Path, to: &Path) {
    use sha2::{Digest, Sha256};
    let mut archive = tar::Archive::new(std::fs::File::open(from).unwrap());
    let mut members: Vec<(String, Vec<u8>)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_str().unwrap().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (name, data)
        })
        .collect();
    let nodes = members
        .iter_mut()
        .find(|(n, _)| n == "nodes.jsonl")
        .unwrap();
    let mut lines = Vec::new();
    for line in nodes.1.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut row: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(line).unwrap();
        row.remove("previous_fingerprint").unwrap();
        lines.extend(serde_json::to_vec(&row).unwrap());
        lines.push(b'\n');
    }
    nodes.1 = lines;

    let mut manifest: serde_json::Value = serde_json::from_slice(&members[0].1).unwrap();
    assert_eq!(manifest["schema_version"], tables::SCHEMA_VERSION);
    manifest["format_version"] = 1.into();
    manifest.as_object_mut().unwrap().remove("schema_version");
    for member in manifest["members"].as_array_mut().unwrap() {
        let data = &members
            .iter()
            .find(|(n, _)| member["name"] == n.as_str())
            .unwrap()
            .1;
        member["bytes"] = data.len().into();
        member["rows"] = data.iter().filter(|&&b| b == b'\n').count().into();
        member["sha256"] = format!("{:x}", Sha256::digest(data)).into();
        if member["table"] == "nodes" {
            let columns = member["columns"].as_array_mut().unwrap();
            assert_eq!(columns.pop().unwrap(), "previous_fingerprint");
        }
    }
    members[0].1 = serde_json::to_vec_pretty(&manifest).unwrap();

    let mut tar = tar::Builder::new(std::fs::File::create(to).unwrap());
    for (name, data) in &members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        tar.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    tar.finish().unwrap();
}

/// An operator restoring a backup of the release before migration 0010
/// into this one: every row comes back, and the nodes, which had no
/// previous certificate then, have none (as the migration left them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_of_the_first_release_is_imported_into_both_backends() {
    let cluster = PgCluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let src_dir = tmp.path().join("src/data");
    let (grpc, http) = free_ports();
    let mut src = Daemon::start_in(&src_dir, grpc, http);
    let creds = src.operator("ada", "admin");
    let admin = Credentials::load(&creds).unwrap();
    let ops = connect(&creds).await;
    push(&ops, role("web", "one"), "production").await;
    let node = enroll(&src.url(), &admin, &ops, "web-1").await;
    let renewed = enroll(&src.url(), &admin, &ops, "web-2").await;
    renew(&renewed.connect(&src.url()).await, "web-2")
        .await
        .unwrap();
    src.terminate();
    let archive = tmp.path().join("now.tar");
    export(&archive, true, &["--data-dir", src_dir.to_str().unwrap()]);
    let old = tmp.path().join("old.tar");
    as_first_release(&archive, &old);

    let before = contents(&sqlite_url(&src_dir)).await;
    let nodes = tables::ALL
        .iter()
        .position(|t| t.name == tables::NODES.name)
        .unwrap();
    let previous = tables::NODES.columns.len() - 1;
    assert_eq!(tables::NODES.columns[previous].name, "previous_fingerprint");
    assert!(
        before.rows[nodes]
            .iter()
            .any(|row| row[previous] != tables::Value::Text(None)),
        "web-2's renewal left its previous certificate: {:?}",
        before.rows[nodes]
    );
    let mut expected = before.rows.clone();
    for row in &mut expected[nodes] {
        row[previous] = tables::Value::Text(None);
    }

    let sqlite_dir = tmp.path().join("sqlite/data");
    for (database, data_dir) in [
        (sqlite_url(&sqlite_dir), sqlite_dir.clone()),
        (cluster.database(), tmp.path().join("pg/data")),
    ] {
        let o = import(&old, &data_dir, &database);
        assert!(o.status.success(), "{database}: {}", text(&o.stderr));
        let restored = contents(&database).await;
        assert_eq!(restored.rows, expected, "{database}");
        assert_eq!(audit::first_break(&restored.audit), None);
    }
    // Served from there, the enrolled node keeps working.
    let (grpc, http) = free_ports();
    let restored = Daemon::start_in(&sqlite_dir, grpc, http);
    assert_eq!(
        fetched_version(&node.connect(&restored.url()).await).await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_archive_or_a_database_in_use_is_refused_and_nothing_is_written() {
    let cluster = PgCluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let src_dir = tmp.path().join("src/data");
    let (grpc, http) = free_ports();
    let mut src = Daemon::start_in(&src_dir, grpc, http);
    let ops = connect(&src.operator("ada", "admin")).await;
    push(&ops, role("web", "one"), "production").await;
    src.terminate();
    let archive = tmp.path().join("a.tar");
    export(&archive, false, &["--data-dir", src_dir.to_str().unwrap()]);

    // One byte changed in the role versions: refused, naming the member,
    // before anything is written.
    let damaged = tmp.path().join("damaged.tar");
    std::fs::copy(&archive, &damaged).unwrap();
    damage(&damaged, "role_versions.jsonl");
    for database in [cluster.database(), sqlite_url(&tmp.path().join("d/data"))] {
        let o = import(&damaged, &tmp.path().join("d/data"), &database);
        assert!(!o.status.success());
        let err = text(&o.stderr);
        assert!(
            err.contains("member role_versions.jsonl does not match its checksum"),
            "{err}"
        );
        let empty = contents(&database).await;
        assert!(
            empty.rows.iter().all(Vec::is_empty) && empty.ca.is_none(),
            "{database}: {empty:?}"
        );
    }

    // A database a server already started on holds its CA (and more).
    let pg = cluster.database();
    let (grpc, http) = free_ports();
    let used_dir = tmp.path().join("used/data");
    drop(Daemon::start_with(
        &used_dir,
        grpc,
        http,
        "info",
        &["--database", &pg],
    ));
    let other = tmp.path().join("other/data");
    let o = import(&archive, &other, &pg);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("is not empty: it holds") && err.contains("1 CA"),
        "{err}"
    );
    // A restored database is not empty either: imported once only.
    let fresh = cluster.database();
    assert!(import(&archive, &other, &fresh).status.success());
    let err = text(&import(&archive, &other, &fresh).stderr);
    assert!(err.contains("1 role versions"), "{err}");
    // A data directory holding another CA is refused before anything is written.
    let fresh = cluster.database();
    let err = text(&import(&archive, &used_dir, &fresh).stderr);
    assert!(err.contains("holds another CA"), "{err}");
    assert!(contents(&fresh).await.rows.iter().all(Vec::is_empty));
}
