//! Several servers on one PostgreSQL database, each with its own data
//! directory: they share one CA (made by whichever starts first), so a node
//! or operator of one is accepted by the other; one of them runs the
//! background jobs; a data directory with another CA is refused; the schema is
//! migrated by `cairn-server migrate`, and a newer one is refused.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_proto::client::{self, CaPin, Connection, Credentials};
use cairn_proto::pb;
use cairn_server::store::{NewReport, ReportMeta, RunStatus};
use common::postgres::PgCluster;
use common::*;
use rcgen::{CertificateParams, KeyPair};
use sqlx::Connection as _;
use tonic::transport::Identity;

/// Advisory locks of background jobs: Cairn's lock space plus the jobs' kind
/// (`store/postgres.rs`), as PostgreSQL shows a two-key lock in `pg_locks`.
const JOB_LOCK_CLASS: i64 = 0x6361_6900 + 5;

/// `cairn-server ARGS…`, waited for at most 60 s.
fn server_cmd(args: &[&str]) -> Output {
    let mut child = Command::new(server_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cairn-server {args:?} did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn pin(args: &[&str]) -> String {
    let o = server_cmd(&[&["ca", "pin"], args].concat());
    assert!(o.status.success(), "ca pin {args:?}: {}", stderr(&o));
    stdout(&o).trim().to_string()
}

/// `cairn-server serve` on `data_dir` and `database`, expected to refuse to
/// start: its standard error.
fn refused_serve(data_dir: &Path, database: &str) -> String {
    let (grpc, http) = free_ports();
    let o = server_cmd(&[
        "serve",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--database",
        database,
        "--listen",
        &grpc.to_string(),
        "--http",
        &http.to_string(),
    ]);
    assert!(!o.status.success(), "it started: {}", stderr(&o));
    stderr(&o)
}

async fn sql(url: &str, statement: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(statement).execute(&mut conn).await.unwrap();
}

async fn count(url: &str, query: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar(query)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Enrolls node `name` through the server at `url` with `token`, as the agent
/// does; returns its certificate, key and the CA it was given.
async fn enroll(url: &str, pin: &str, token: &str, name: &str) -> (String, String, String) {
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let conn = client::connect_pinned(url, pin.parse::<CaPin>().unwrap())
        .await
        .unwrap();
    let enrolled = conn
        .enrollment()
        .enroll(pb::EnrollRequest {
            token: token.into(),
            csr_pem: csr,
            node_name: name.into(),
            facts_json: "{}".into(),
        })
        .await
        .unwrap()
        .into_inner();
    (enrolled.cert_pem, key.serialize_pem(), enrolled.ca_pem)
}

async fn fetch(conn: &Connection) -> Result<pb::FetchResponse, tonic::Status> {
    conn.nodes()
        .fetch(pb::FetchRequest {
            assignment: Some(pb::Assignment {
                role: "web".into(),
                channel: "stable".into(),
            }),
            known_digest: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The lines of `daemon`'s log containing `what`.
fn log_lines(daemon: &Daemon, what: &str) -> usize {
    std::fs::read_to_string(daemon.work.join("server.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

/// `RUST_LOG` for a server whose log tells each run of the background jobs.
const LOG_JOBS: &str = "info,cairn_server::serve=debug";
const RAN_JOBS: &str = "report retention ran";
const RUNS_JOBS: &str = "this server runs the background jobs";
const WAITS_FOR_JOBS: &str = "another server on the database runs the background jobs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_database_share_the_ca_and_one_runs_the_jobs() {
    let cluster = PgCluster::start();
    let db = cluster.database();
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tmp.path().join("a/data"), tmp.path().join("b/data"));
    // Both start at once on the new database: they race to make the CA.
    let (a, b) = std::thread::scope(|s| {
        let start = |dir: &Path| {
            let db = db.clone();
            let dir = dir.to_path_buf();
            s.spawn(move || {
                let (grpc, http) = free_ports();
                Daemon::start_with(&dir, grpc, http, LOG_JOBS, &["--database", &db])
            })
        };
        let (a, b) = (start(&dir_a), start(&dir_b));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM audit_log WHERE action = 'ca create'"
        )
        .await,
        1,
        "one CA was made"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM audit_log WHERE action LIKE 'ca %'"
        )
        .await,
        1
    );
    let ca = std::fs::read_to_string(dir_a.join("ca.crt")).unwrap();
    assert_eq!(ca, std::fs::read_to_string(dir_b.join("ca.crt")).unwrap());
    let shared_pin = pin(&["--database", &db, "--data-dir", dir_a.to_str().unwrap()]);
    assert_eq!(pin(&["--data-dir", dir_a.to_str().unwrap()]), shared_pin);
    assert_eq!(pin(&["--data-dir", dir_b.to_str().unwrap()]), shared_pin);

    // An operator added with A's data directory works against B.
    let creds = add_operator_to(Some(&db), &a.data_dir, &a.work, "ada", "admin", &a.url());
    let admin_a = connect(&creds).await;
    let mut on_b = Credentials::load(&creds).unwrap();
    on_b.server = b.url();
    let admin_b = on_b.connect().await.unwrap();
    admin_a
        .roles()
        .push(pb::PushRequest {
            bundle: Some(bundle_of(&recipes().join("web"))),
            message: String::new(),
            promote_to: "stable".into(),
        })
        .await
        .unwrap();
    let token = admin_b
        .access()
        .create_token(pb::CreateTokenRequest {
            role: "web".into(),
            channel: "stable".into(),
            ttl_seconds: 0,
            uses: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .token;

    // A node enrolled through A is accepted by B (and the other way round:
    // B's server certificate is trusted with the CA A handed out).
    let (cert, key, node_ca) = enroll(&a.url(), &shared_pin, &token, "web-1").await;
    assert_eq!(node_ca, ca);
    let identity = || Identity::from_pem(&cert, &key);
    for url in [a.url(), b.url()] {
        let node = client::connect(&url, &node_ca, Some(identity()))
            .await
            .unwrap();
        let fetched = fetch(&node).await.unwrap();
        assert!(fetched.bundle.is_some(), "{url}");
    }
    // Revoked through B, refused by A.
    admin_b
        .access()
        .revoke_node(pb::RevokeNodeRequest {
            name: "web-1".into(),
        })
        .await
        .unwrap();
    let node = client::connect(&a.url(), &node_ca, Some(identity()))
        .await
        .unwrap();
    assert_eq!(
        fetch(&node).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    // One of the two runs the background jobs (each at its start), the
    // other waits, and the database shows one lock held.
    let deadline = Instant::now() + Duration::from_secs(30);
    while log_lines(&a, RAN_JOBS) + log_lines(&b, RAN_JOBS) == 0
        || log_lines(&a, WAITS_FOR_JOBS) + log_lines(&b, WAITS_FOR_JOBS) == 0
    {
        assert!(
            Instant::now() < deadline,
            "the jobs' lease was never settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let told = |what| (log_lines(&a, what), log_lines(&b, what));
    let (runs, ran, waits) = (told(RUNS_JOBS), told(RAN_JOBS), told(WAITS_FOR_JOBS));
    assert!(
        (runs, ran, waits) == ((1, 0), (1, 0), (0, 1))
            || (runs, ran, waits) == ((0, 1), (0, 1), (1, 0)),
        "took the lease {runs:?}, ran the jobs {ran:?}, waited {waits:?}"
    );
    let holders = format!(
        "SELECT count(*) FROM pg_locks
         WHERE locktype = 'advisory' AND classid = {JOB_LOCK_CLASS} AND objsubid = 2 AND granted"
    );
    assert_eq!(count(&db, &holders).await, 1);

    // Killed, the holder's session ends and PostgreSQL releases its lock, for
    // the other to take at its next try.
    let mut holder = if ran == (1, 0) { a } else { b };
    holder.child.kill().unwrap();
    holder.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&db, &holders).await != 0 {
        assert!(Instant::now() < deadline, "the lock outlived its holder");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_move_to_another_server_when_theirs_stops() {
    let cluster = PgCluster::start();
    let db = cluster.database();
    let tmp = tempfile::tempdir().unwrap();
    let start = |dir: &str| {
        let db = db.clone();
        Server::start_configured(&tmp.path().join(dir).join("data"), move |c| {
            c.database = db;
            c.jobs_every = Duration::from_millis(100);
        })
    };
    let holder = format!(
        "SELECT COALESCE(MAX(pid), 0)::bigint FROM pg_locks
         WHERE locktype = 'advisory' AND classid = {JOB_LOCK_CLASS} AND objsubid = 2 AND granted"
    );
    // The first server takes the jobs at its start.
    let mut first = start("a");
    let wait_for_holder = async |other_than: i64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pid = count(&db, &holder).await;
            if pid != 0 && pid != other_than {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no other holder of the jobs' lock"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let first_pid = wait_for_holder(0).await;
    let _second = start("b");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&db, &holder).await, first_pid, "the holder keeps it");

    // Old reports are expired by whichever holds the jobs: after the first
    // stops, the second takes them over.
    first.stop().unwrap();
    wait_for_holder(first_pid).await;
    let store = cairn_server::store::open(&db).await.unwrap();
    let old = cairn_server::store::now_micros() - 40 * 86_400_000_000;
    store
        .store_reports(&[NewReport {
            meta: ReportMeta {
                id: 0,
                node: "n1".into(),
                run_id: "old".into(),
                role: "web".into(),
                channel: "stable".into(),
                role_version: 1,
                role_digest: "d".into(),
                status: RunStatus::Unchanged,
                noop: false,
                from_cache: false,
                resources: 0,
                changed: 0,
                failed: 0,
                finished_at: old,
                received_at: old,
            },
            interval_secs: 60,
            facts_json: String::new(),
            report: Vec::new(),
        }])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&db, "SELECT count(*) FROM reports").await > 0 {
        assert!(Instant::now() < deadline, "the old report was not expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_with_another_ca_is_refused() {
    let cluster = PgCluster::start();
    let db = cluster.database();
    let tmp = tempfile::tempdir().unwrap();
    let (grpc, http) = free_ports();
    let first = Daemon::start_with(
        &tmp.path().join("a/data"),
        grpc,
        http,
        "info",
        &["--database", &db],
    );
    let db_pin = pin(&["--database", &db]);
    // A data directory that served its own SQLite database has its own CA.
    let stranger = tmp.path().join("c/data");
    let work = tmp.path().join("c/work");
    std::fs::create_dir_all(&work).unwrap();
    add_operator(&stranger, &work, "eve", "admin", &first.url());
    let stranger_pin = pin(&["--data-dir", stranger.to_str().unwrap()]);
    assert_ne!(stranger_pin, db_pin);
    let err = refused_serve(&stranger, &db);
    assert!(
        err.contains(&format!(
            "({stranger_pin}) is not the database's CA ({db_pin})"
        )) && err.contains("help: is --database the database this data directory was used with?"),
        "{err}"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM audit_log WHERE action LIKE 'ca %'"
        )
        .await,
        1,
        "nothing stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directorys_ca_is_adopted_by_a_new_database() {
    let cluster = PgCluster::start();
    let db = cluster.database();
    let tmp = tempfile::tempdir().unwrap();
    // A server that ran on SQLite made its CA in its data directory.
    let data = tmp.path().join("a/data");
    let work = tmp.path().join("a/work");
    std::fs::create_dir_all(&work).unwrap();
    let creds = add_operator(&data, &work, "ada", "admin", "https://127.0.0.1:1");
    let old_pin = pin(&["--data-dir", data.to_str().unwrap()]);
    // Moved to PostgreSQL: its CA is the database's, and its operators'
    // credentials still work (once added there).
    let (grpc, http) = free_ports();
    let server = Daemon::start_with(&data, grpc, http, "info", &["--database", &db]);
    assert_eq!(pin(&["--database", &db]), old_pin);
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) FROM audit_log WHERE action = 'ca adopt' AND target = '{old_pin}'"
            )
        )
        .await,
        1
    );
    let creds_pg = add_operator_to(Some(&db), &data, &work, "bob", "admin", &server.url());
    let ca_in = |path: &Path| Credentials::load(path).unwrap().ca;
    assert_eq!(ca_in(&creds), ca_in(&creds_pg));
    connect(&creds_pg)
        .await
        .roles()
        .list(pb::ListRolesRequest::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_what_is_missing_and_serve_refuses_a_schema_it_does_not_know() {
    let cluster = PgCluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    // A new database: migrate says every migration it applied, then nothing.
    let db = cluster.database();
    let o = server_cmd(&["migrate", "--database", &db]);
    assert!(o.status.success(), "{}", stderr(&o));
    let known = sqlx::migrate!("./migrations/postgres");
    let lines: Vec<String> = known
        .iter()
        .map(|m| format!("applied migration {:04} {}", m.version, m.description))
        .collect();
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), lines);
    let o = server_cmd(&["migrate", "--database", &db]);
    assert_eq!(
        stdout(&o),
        "the database's schema is up to date; nothing applied\n"
    );

    // Migrated by an older release: serve refuses; migrate applies the rest.
    let older_db = cluster.database();
    let mut older = sqlx::migrate!("./migrations/postgres");
    older.migrations = older.migrations[..older.migrations.len() - 1]
        .to_vec()
        .into();
    let mut conn = sqlx::PgConnection::connect(&older_db).await.unwrap();
    older.run(&mut conn).await.unwrap();
    let last = known.iter().last().unwrap();
    let last = format!("{:04} {}", last.version, last.description);
    let err = refused_serve(&data, &older_db);
    assert!(
        err.contains(&format!("needs 1 more migration(s): {last}"))
            && err.contains("help: run `cairn-server migrate --database URL`"),
        "{err}"
    );
    let o = server_cmd(&["migrate", "--database", &older_db]);
    assert_eq!(stdout(&o), format!("applied migration {last}\n"));
    let (grpc, http) = free_ports();
    drop(Daemon::start_with(
        &data,
        grpc,
        http,
        "info",
        &["--database", &older_db],
    ));

    // Migrated by a newer release: serve and migrate refuse, naming both versions.
    sql(
        &db,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from the future', TRUE, '\\x00', 0)",
    )
    .await;
    let newest = known.iter().map(|m| m.version).max().unwrap();
    let err = refused_serve(&tmp.path().join("other"), &db);
    for err in [err, stderr(&server_cmd(&["migrate", "--database", &db]))] {
        assert!(
            err.contains("is at version 9999 (migration 9999 from the future")
                && err.contains(&format!("knows versions up to {newest}"))
                && err.contains("help:"),
            "{err}"
        );
    }
}
