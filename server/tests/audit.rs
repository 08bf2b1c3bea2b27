//! The audit log and the operators, against the real server (in this process,
//! or the `cairn-server` binary where a process or its start is what counts)
//! and the real `cairn` binary: bounded entries, paging, the hash chain and
//! its check, the start-up check of the log's protections, private database
//! files, and revocation.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_proto::pb;
use cairn_server::store::{self, Actor, audit};
use common::cli::*;
use common::*;
use prost::Message;
use serde_json::Value;
use tonic::Code;

const SERVER: &str = env!("CARGO_BIN_EXE_cairn-server");

/// `cairn-server ARGS`.
fn server_cmd(args: &[&str], data_dir: &Path) -> Output {
    Command::new(SERVER)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh data directory (mode 0700) in a temporary directory.
fn data_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    cairn_server::pki::ensure_data_dir(&data).unwrap();
    (tmp, data)
}

/// A connection of its own to the database in `data_dir`, as someone with the file has.
async fn sqlite(data_dir: &Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let db = data_dir.join(store::DEFAULT_DB_FILE);
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap()
}

/// Runs `sql` on the stopped server's database.
fn tamper(data_dir: &Path, sql: &str) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut conn = sqlite(data_dir).await;
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    });
}

/// Every audit entry, read through the API page by page.
async fn whole_log(creds: &Path) -> Vec<pb::AuditEntry> {
    let mut audit = connect(creds).await.audit();
    let (mut entries, mut after_id) = (Vec::new(), 0);
    loop {
        let page = audit
            .list(pb::AuditRequest {
                after_id,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        entries.extend(page.entries);
        after_id = entries.last().map_or(0, |e: &pb::AuditEntry| e.id);
        if !page.more {
            return entries;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_push_with_a_huge_role_name_stores_a_bounded_row() {
    let server = Server::start();
    let paula = server.operator("paula", "publisher");
    let name = "n".repeat(1 << 20);
    let manifest =
        format!("[role]\nname = \"{name}\"\n\n[[file]]\npath = \"/etc/x\"\nmode = \"0999\"\n");
    let rejected = connect(&paula)
        .await
        .roles()
        .push(pb::PushRequest {
            bundle: Some(pb::Bundle {
                files: vec![file(b"role.toml", manifest.as_bytes())],
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rejected.rejected && rejected.version.is_none());

    // The row as stored: every field within its bound.
    let db = server.data_dir.join(store::DEFAULT_DB_FILE);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let longest: (i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT MAX(length(actor)), MAX(length(actor_role)), MAX(length(peer)), MAX(length(action)),
                MAX(length(target)), MAX(length(detail)), MAX(length(outcome)) FROM audit_log",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let (name_max, text_max) = (audit::MAX_NAME_CHARS as i64, audit::MAX_TEXT_CHARS as i64);
    assert!(
        longest.0 <= name_max
            && longest.1 <= name_max
            && longest.2 <= name_max
            && longest.3 <= name_max
            && longest.4 <= name_max
            && longest.5 <= text_max
            && longest.6 <= text_max,
        "{longest:?}"
    );
    let rejected = whole_log(&paula)
        .await
        .into_iter()
        .find(|e| e.action == "push" && e.outcome.starts_with("rejected"))
        .expect("the rejected push is audited");
    assert!(
        rejected.target.starts_with("nnnn"),
        "{:.300}",
        rejected.target
    );
    assert!(rejected.target.ends_with(audit::CUT_MARKER));
    assert_eq!(rejected.target.chars().count(), audit::MAX_NAME_CHARS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairn_audit_lists_entries_too_large_together_for_one_message() {
    let (_tmp, data) = data_dir();
    // 400 entries with every field as long as stored fields may be, in
    // four-byte characters: about 5 MiB, more than a gRPC message may carry.
    const ENTRIES: usize = 400;
    let wide = |chars: usize| "𝄞".repeat(chars);
    {
        let store = store::open(&store::default_url(&data).unwrap())
            .await
            .unwrap();
        let actor = Actor {
            name: wide(audit::MAX_NAME_CHARS),
            role: wide(audit::MAX_NAME_CHARS),
            peer: wide(audit::MAX_NAME_CHARS),
        };
        for i in 0..ENTRIES {
            let (name, text) = (
                wide(audit::MAX_NAME_CHARS - 4) + &format!("{i:04}"),
                wide(audit::MAX_TEXT_CHARS),
            );
            store
                .audit(&actor, &name, &name, &text, &text)
                .await
                .unwrap();
        }
    }
    let server = Server::start_in(&data);
    let ada = server.operator("ada", "admin");

    // One page is bounded in size, and says there is more.
    let page = connect(&ada)
        .await
        .audit()
        .list(pb::AuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        page.more && page.entries.len() < ENTRIES,
        "{}",
        page.entries.len()
    );
    assert!(
        page.encoded_len() <= (1 << 20) + (16 << 10),
        "{}",
        page.encoded_len()
    );

    // The CLI pages through all of them, oldest first.
    let listed = json(&ada, &["audit", "--limit", "5000"]);
    let targets: Vec<String> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor_role"].as_str().unwrap().starts_with('𝄞'))
        .map(|e| {
            let target = e["target"].as_str().unwrap();
            target.chars().skip(audit::MAX_NAME_CHARS - 4).collect()
        })
        .collect();
    let expected: Vec<String> = (0..ENTRIES).map(|i| format!("{i:04}")).collect();
    assert_eq!(targets, expected);
    // --limit keeps the newest ones.
    let newest = json(&ada, &["audit", "--limit", "3"]);
    let actions: Vec<&str> = newest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.len(), 3);
    assert_eq!(actions[2], "operator add", "{actions:?}");
    let table = cairn(&ada, &["audit"]);
    assert!(table.status.success(), "{}", text(&table.stderr));
}

/// `cairn audit verify --output json`: its document and whether it succeeded.
fn verify(creds: &Path) -> (Value, Output) {
    let o = cairn(creds, &["audit", "verify", "--output", "json"]);
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&o.stdout), text(&o.stderr)));
    (v, o)
}

#[test]
fn verify_checks_the_chain_and_names_the_entry_changed_in_the_file() {
    let (_tmp, data) = data_dir();
    let mut server = Server::start_in(&data);
    let ada = server.operator("ada", "admin");
    let web = recipes().join("web");
    for _ in 0..3 {
        assert!(
            cairn(&ada, &["role", "push", web.to_str().unwrap()])
                .status
                .success()
        );
    }
    assert!(
        cairn(&ada, &["role", "promote", "web", "1"])
            .status
            .success()
    );

    let (ok, o) = verify(&ada);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let entries = ok["entries"].as_u64().unwrap();
    assert!(ok["ok"].as_bool().unwrap() && entries >= 5, "{ok}");
    assert_eq!(ok["head"].as_str().unwrap().len(), 64);
    let human = cairn(&ada, &["audit", "verify"]);
    assert!(
        text(&human.stdout).starts_with(&format!("audit log OK: {entries} entries, head hash ")),
        "{}",
        text(&human.stdout)
    );

    // Someone with the file drops the trigger, edits entry 2, and puts the
    // trigger back, so that the server starts as if nothing happened.
    server.stop().unwrap();
    let no_update_trigger = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut conn = sqlite(&data).await;
        let sql: String =
            sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'audit_log_no_update'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        sql
    });
    tamper(
        &data,
        "DROP TRIGGER audit_log_no_update;
         UPDATE audit_log SET detail = 'version 9' WHERE id = 2;",
    );
    // The trigger is back as it was: only the chain can tell.
    tamper(&data, &no_update_trigger);

    // Started again, on other ports: a new credential names them.
    let server = Server::start_in(&data);
    let ada = server.operator("ada", "admin");
    let (broken, o) = verify(&ada);
    assert!(!o.status.success(), "{broken}");
    assert!(!broken["ok"].as_bool().unwrap());
    assert_eq!(broken["broken"]["id"], 2, "{broken}");
    assert!(
        text(&o.stderr).contains("the audit log's hash chain breaks at entry 2"),
        "{}",
        text(&o.stderr)
    );
    let human = cairn(&ada, &["audit", "verify"]);
    assert!(
        text(&human.stdout).starts_with("audit log BROKEN at entry 2 "),
        "{}",
        text(&human.stdout)
    );
}

#[test]
fn the_server_refuses_to_start_without_the_audit_logs_triggers() {
    let (_tmp, data) = data_dir();
    let mut server = Server::start_in(&data);
    server.stop().unwrap();
    tamper(&data, "DROP TRIGGER audit_log_no_update");
    let (grpc, http) = free_ports();
    let o = Command::new(SERVER)
        .args([
            "serve",
            "--listen",
            &grpc.to_string(),
            "--http",
            &http.to_string(),
        ])
        .arg("--data-dir")
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("is no longer protected: missing trigger audit_log_no_update (refuses changes to audit entries)")
            && err.contains("help: the database was changed outside cairn-server"),
        "{err}"
    );
    // `operator add` refuses the same database.
    let out = data.parent().unwrap().join("x.toml");
    let o = server_cmd(
        &[
            "operator",
            "add",
            "x",
            "--role",
            "admin",
            "--out",
            out.to_str().unwrap(),
        ],
        &data,
    );
    assert!(!o.status.success() && text(&o.stderr).contains("audit_log_no_update"));
}

#[test]
fn database_files_are_private_whatever_the_umask() {
    let (tmp, data) = data_dir();
    // A database outside the data directory, in a directory anyone may enter.
    let open_dir = tmp.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let db = open_dir.join("cairn.db");
    let (grpc, http) = free_ports();
    let log = tmp.path().join("server.log");
    let mut child = Command::new("sh")
        .args(["-c", "umask 000 && exec \"$@\"", "sh", SERVER, "serve"])
        .args(["--listen", &grpc.to_string(), "--http", &http.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .arg("--database")
        .arg(format!("sqlite://{}", db.display()))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("cairn-server listening")
    {
        assert!(child.try_wait().unwrap().is_none(), "the server exited");
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    for suffix in ["", "-wal", "-shm"] {
        let path = open_dir.join(format!("cairn.db{suffix}"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_or_reissued_credential_is_refused_at_once() {
    let server = Server::start();
    let ada = server.operator("ada", "admin");
    let bob = server.operator("bob", "publisher");
    let old_bob = server.work.join("bob-old.toml");
    std::fs::copy(&bob, &old_bob).unwrap();

    // A connection made before the revocation is refused after it: each call is checked.
    let conn = connect(&bob).await;
    conn.roles().list(pb::ListRolesRequest {}).await.unwrap();
    let o = server_cmd(&["operator", "revoke", "bob"], &server.data_dir);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = conn
        .roles()
        .list(pb::ListRolesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message()
            .starts_with("credential revoked: operator bob was revoked"),
        "{err:?}"
    );
    let cli = cairn(&bob, &["role", "list"]);
    assert!(!cli.status.success());
    assert!(
        text(&cli.stderr).contains("credential revoked"),
        "{}",
        text(&cli.stderr)
    );
    // The server kept running for everyone else.
    json(&ada, &["role", "list"]);

    // Issued again: the new credential works, the one before does not.
    let bob = server.operator("bob", "publisher");
    json(&bob, &["role", "list"]);
    let err = connect(&old_bob)
        .await
        .roles()
        .list(pb::ListRolesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message()
            .starts_with("credential revoked: a newer credential was issued for operator bob"),
        "{err:?}"
    );
    std::fs::copy(&bob, &old_bob).unwrap();
    server.operator("bob", "auditor");
    let err = connect(&old_bob)
        .await
        .roles()
        .list(pb::ListRolesRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "re-adding revokes the one before"
    );

    // An unknown name is a clear error, and changes nothing.
    let o = server_cmd(&["operator", "revoke", "nobody"], &server.data_dir);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("no operator nobody to revoke: that name was never added"),
        "{}",
        text(&o.stderr)
    );

    // All of it is in the audit log, and the chain holds.
    let log = whole_log(&ada).await;
    let seen = |action: &str, detail: &str| {
        log.iter().any(|e| {
            e.action == action && e.target == "bob" && e.actor_role == "local" && e.detail == detail
        })
    };
    assert!(
        seen(
            "operator revoke",
            "role publisher; every certificate revoked"
        ),
        "{log:?}"
    );
    assert!(
        seen("operator add", "role auditor; earlier certificates revoked"),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|e| e.actor == "bob" && e.outcome.starts_with("denied: credential revoked"))
    );
    let (ok, o) = verify(&ada);
    assert!(o.status.success() && ok["ok"] == true, "{ok}");
}
