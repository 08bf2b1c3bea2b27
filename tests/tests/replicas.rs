//! The real agent daemon against three real `cairn-server` replicas on one
//! PostgreSQL database (a throwaway cluster on loopback), on this host: the
//! agent watches the first replica in its list and converges a version
//! promoted through another; when its replica is SIGKILLed just after a
//! promote through a third, it fails over to the next one and converges
//! that version and the next, and every report it made is stored once.
//! With PostgreSQL stopped under a running server, the agent converges from
//! its cache and its report arrives once the database is back, the server not
//! restarted.
//!
//! Needs the debug binaries (`cargo build --bins`) and PostgreSQL's server
//! binaries (Debian's `postgresql` package).

#[path = "../../server/tests/common/postgres.rs"]
mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_e2e::{Operator, Server, succeeded, terminate, wait_for, workspace_binary};
use postgres::PgCluster;

/// How long the daemon gets to do what a test waits for.
const WAIT: Duration = Duration::from_secs(30);
/// How soon the daemon must be watching another replica after its own was killed.
const FAILOVER_WITHIN: Duration = Duration::from_secs(10);
const ROLE: &str = "motd";
const CHANNEL: &str = "stable";

/// Pushes the role, its one file `managed` holding `content`, through the
/// replica at `url`, and promotes it; returns the version.
fn push(ops: &Operator, dir: &Path, url: &str, managed: &Path, content: &str) -> u64 {
    let role = dir.join("role");
    std::fs::create_dir_all(&role).unwrap();
    std::fs::write(
        role.join("role.toml"),
        format!(
            "[role]\nname = \"{ROLE}\"\n\n[[file]]\npath = \"{}\"\ncontent = \"{content}\"\n",
            managed.display()
        ),
    )
    .unwrap();
    let v = ops.cairn_json(&[
        "--server",
        url,
        "role",
        "push",
        role.to_str().unwrap(),
        "-m",
        content,
        "--promote",
        CHANNEL,
    ]);
    v["version"]["version"]
        .as_u64()
        .unwrap_or_else(|| panic!("no version in {v}"))
}

/// Writes the agent's configuration `config` (its text `toml`) and enrolls
/// the node with a new join token for the role.
fn enroll(ops: &Operator, dir: &Path, config: &Path, toml: &str) {
    std::fs::write(config, toml).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, ops.token(ROLE, CHANNEL)).unwrap();
    let enrolled = Command::new(workspace_binary("cairn-agent"))
        .arg("enroll")
        .arg("--config")
        .arg(config)
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    succeeded(&enrolled, "cairn-agent enroll");
}

/// `cairn-agent daemon`, its output going to `log`.
fn daemon(config: &Path, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(workspace_binary("cairn-agent"))
        .arg("daemon")
        .arg("--config")
        .arg(config)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn the_daemon_follows_promotes_across_replicas_and_fails_over_when_its_replica_is_killed() {
    let cluster = PgCluster::start();
    let database = cluster.database();
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let a = Server::start_replica(&at("a"), &database);
    let mut b = Server::start_replica(&at("b"), &database);
    let c = Server::start_replica(&at("c"), &database);
    let ops = a.add_operator("ops", &at("ops.toml"));
    let managed = at("motd");
    assert_eq!(push(&ops, dir.path(), &a.url(), &managed, "v1"), 1);

    // The node prefers B, then A, then C.
    let node = format!("node-{}", std::process::id());
    let config = at("agent.toml");
    let state: PathBuf = at("state");
    enroll(
        &ops,
        dir.path(),
        &config,
        &format!(
            "servers = [{:?}, {:?}, {:?}]\nca_pin = \"{}\"\nstate_dir = \"{}\"\nname = \"{node}\"\n\
             interval = \"1h\"\nsplay = \"0s\"\n",
            b.url(),
            a.url(),
            c.url(),
            a.ca_pin(),
            state.display()
        ),
    );

    let log = at("agent.log");
    let agent = daemon(&config, &log);
    let watching = |url: &str| read(&log).contains(&format!("watching for new versions at {url}"));
    wait_for("the first run", WAIT, || read(&managed) == "v1");
    wait_for("the watch on B", WAIT, || watching(&b.url()));

    // Promoted through A, told to the daemon by B (the interval is an hour).
    let promoted = Instant::now();
    assert_eq!(push(&ops, dir.path(), &a.url(), &managed, "v2"), 2);
    wait_for("the version promoted through A", WAIT, || {
        read(&managed) == "v2"
    });
    eprintln!(
        "promoted through A, converged by the agent watching B: {:?}",
        promoted.elapsed()
    );

    // A version promoted through C, and B killed at once: whether B told
    // the daemon before it died (its run's report then goes to A, or was
    // stored by B just before) or not (A tells it on the new watch), the
    // daemon watches A, the next in its list, soon after, and converges.
    assert_eq!(push(&ops, dir.path(), &c.url(), &managed, "v3"), 3);
    b.kill();
    let killed = Instant::now();
    wait_for("the failover to A", FAILOVER_WITHIN, || watching(&a.url()));
    eprintln!("B killed, the agent watching A: {:?}", killed.elapsed());
    wait_for("the version promoted through C", WAIT, || {
        read(&managed) == "v3"
    });

    // The next version, promoted through C, told by A.
    assert_eq!(push(&ops, dir.path(), &c.url(), &managed, "v4"), 4);
    wait_for("the version promoted after the failover", WAIT, || {
        read(&managed) == "v4"
    });

    // Every run's report is stored once, whichever replica took it.
    let reports = || {
        let v = ops.cairn_json(&["report", "list", "--node", &node]);
        v["reports"]
            .as_array()
            .unwrap_or_else(|| panic!("no report list in {v}"))
            .clone()
    };
    wait_for("the fourth report", WAIT, || reports().len() >= 4);
    terminate(&agent);
    let mut agent = agent;
    let status = agent.wait().unwrap();
    let log = read(&log);
    assert!(status.success(), "the daemon exited {status}: {log}");
    let runs = log.matches(&format!("Applied role {ROLE} ")).count();
    let stored = reports();
    let versions: Vec<u64> = stored
        .iter()
        .map(|r| r["role_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [4, 3, 2, 1], "{stored:?}\n{log}");
    assert_eq!(runs, stored.len(), "one report per run: {log}");
    let mut run_ids: Vec<&str> = stored
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    run_ids.sort();
    run_ids.dedup();
    assert_eq!(run_ids.len(), 4, "{stored:?}");
    let spooled = std::fs::read_dir(state.join("reports"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(spooled, 0, "reports left in the spool: {log}");
}

/// `cairn-agent run --config CONFIG`: exit code, and what it printed.
fn run(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(workspace_binary("cairn-agent"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let printed = [out.stdout, out.stderr].concat();
    (
        out.status.code(),
        String::from_utf8_lossy(&printed).into_owned(),
    )
}

#[test]
fn with_postgresql_stopped_the_agent_converges_from_its_cache_and_reports_once_it_is_back() {
    let cluster = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let server = Server::start_replica(&at("server"), &cluster.database());
    let ops = server.add_operator("ops", &at("ops.toml"));
    let managed = at("motd");
    assert_eq!(push(&ops, dir.path(), &server.url(), &managed, "v1"), 1);
    let node = format!("node-{}", std::process::id());
    let config = at("agent.toml");
    let state = at("state");
    enroll(
        &ops,
        dir.path(),
        &config,
        &format!(
            "servers = [{:?}]\nca_pin = \"{}\"\nstate_dir = \"{}\"\nname = \"{node}\"\n",
            server.url(),
            server.ca_pin(),
            state.display()
        ),
    );
    let (code, err) = run(&config);
    assert_eq!((code, read(&managed).as_str()), (Some(0), "v1"), "{err}");

    // The database down, the server up: it answers that it cannot serve,
    // which the agent takes as no answer: it converges from its cache (the
    // drift corrected) and spools its report.
    cluster.stop();
    std::fs::write(&managed, "drifted").unwrap();
    let (code, err) = run(&config);
    assert_eq!((code, read(&managed).as_str()), (Some(0), "v1"), "{err}");
    assert!(
        err.contains("Used the cached role")
            && err.contains("server unavailable: the server could not reach its database"),
        "{err}"
    );
    let spool = || {
        std::fs::read_dir(state.join("reports"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(spool(), 1, "{err}");

    // The database back: the same server, not restarted, serves again, and
    // the spooled report is delivered with the next run's, each once.
    cluster.restart();
    let (code, err) = run(&config);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(spool(), 0, "{err}");
    let reports = ops.cairn_json(&["report", "list", "--node", &node]);
    let reports = reports["reports"].as_array().unwrap();
    let from_cache: Vec<bool> = reports
        .iter()
        .map(|r| r["from_cache"].as_bool().unwrap_or(false))
        .collect();
    let cached = from_cache.iter().filter(|c| **c).count();
    assert_eq!((from_cache.len(), cached), (3, 1), "{reports:?}");
}
