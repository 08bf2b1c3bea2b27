//! The agent against real servers, on this host: the
//! real `cairn-server` on loopback, the real `cairn` CLI as the operator, and
//! the real `cairn-agent` enrolled with a token, converging roles whose only
//! resources are files in a temporary directory, with its configuration and
//! state there too (the host's `/etc/cairn` and `/var/lib/cairn` are not
//! touched). Covers `cairn-agent run` (report delivered once; outage: the
//! cached role corrects drift and the report is spooled, then delivered once;
//! failover to a second server) and `cairn-agent daemon` (a promote reaches
//! it through the watch stream; after an outage it reconnects by itself and
//! delivers the spool; SIGTERM stops it with status 0); and its systemd unit
//! in one booted machine.
//!
//! Needs the debug binaries (`cargo build --bins`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_e2e::{
    Operator, Server, down_server_url, succeeded, terminate_and_read, wait_for, workspace_binary,
};
use serde_json::Value;

/// How long a daemon gets to do what a test waits for.
const WAIT: Duration = Duration::from_secs(30);

/// A server, an operator, a role whose one file lives in the test's
/// directory, and a node enrolled for it.
struct Fleet {
    dir: tempfile::TempDir,
    server: Server,
    ops: Operator,
    /// The file the role manages.
    managed: PathBuf,
    /// The agent's configuration file.
    config: PathBuf,
    node: String,
}

const ROLE: &str = "motd";
const CHANNEL: &str = "stable";

impl Fleet {
    /// Everything up, the role pushed and promoted with `content`, the node
    /// enrolled with the servers `servers` makes of this fleet's server's URL
    /// (in order) in its configuration.
    fn new(content: &str, servers: impl FnOnce(String) -> Vec<String>) -> Fleet {
        let mut fleet = Fleet::start(content, None);
        fleet.enroll(&servers(fleet.server.url()));
        fleet
    }

    /// Everything up but the node: the role's file is `managed`, else one
    /// in the test's directory.
    fn start(content: &str, managed: Option<&str>) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path());
        let ops = server.add_operator("ops", &dir.path().join("ops.toml"));
        let managed =
            managed.map_or_else(|| dir.path().join("managed").join("motd"), PathBuf::from);
        if let Some(parent) = managed.parent().filter(|p| p.starts_with(dir.path())) {
            std::fs::create_dir_all(parent).unwrap();
        }
        let node = format!("node-{}", std::process::id());
        let fleet = Fleet {
            config: dir.path().join("agent.toml"),
            dir,
            server,
            ops,
            managed,
            node,
        };
        fleet.push(content);
        fleet
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Pushes the role with its file holding `content` and promotes it to
    /// the channel; returns the version.
    fn push(&self, content: &str) -> u64 {
        let role = self.dir.path().join("role");
        std::fs::create_dir_all(&role).unwrap();
        std::fs::write(
            role.join("role.toml"),
            format!(
                "[role]\nname = \"{ROLE}\"\n\n[[file]]\npath = \"{}\"\ncontent = \"{content}\"\n",
                self.managed.display()
            ),
        )
        .unwrap();
        self.ops.push(&role, content, CHANNEL)
    }

    /// A join token for the role, the agent's configuration, and
    /// `cairn-agent enroll`.
    fn enroll(&mut self, servers: &[String]) {
        let token = self.ops.token(ROLE, CHANNEL);
        let token_file = self.dir.path().join("token");
        std::fs::write(&token_file, &token).unwrap();
        let pin = self.server.ca_pin();
        let servers = servers
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &self.config,
            format!(
                "servers = [{servers}]\nca_pin = \"{pin}\"\nstate_dir = \"{}\"\nname = \"{}\"\n\
                 interval = \"1h\"\nsplay = \"0s\"\n",
                self.state_dir().display(),
                self.node
            ),
        )
        .unwrap();
        let out = self
            .agent(&["enroll", "--token-file", token_file.to_str().unwrap()])
            .output()
            .unwrap();
        succeeded(&out, "cairn-agent enroll");
    }

    /// `cairn-agent SUBCOMMAND --config CONFIG ARGS…`.
    fn agent(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(workspace_binary("cairn-agent"));
        let (sub, rest) = args.split_first().unwrap();
        cmd.arg(sub).arg("--config").arg(&self.config).args(rest);
        cmd
    }

    /// `cairn-agent run --format json`: exit code, report, stderr.
    fn run(&self) -> (i32, Value, String) {
        let out = self.agent(&["run", "--format", "json"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("no report ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"));
        (out.status.code().unwrap_or(-1), report, stderr)
    }

    /// The node's reports on the server, newest first (`cairn report list`).
    fn report_list(&self) -> Vec<Value> {
        let v = self
            .ops
            .cairn_json(&["report", "list", "--node", &self.node]);
        v["reports"]
            .as_array()
            .unwrap_or_else(|| panic!("no report list in {v}"))
            .clone()
    }

    /// The run ids of the node's reports on the server, newest first.
    fn reports(&self) -> Vec<String> {
        self.report_list()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap().to_string())
            .collect()
    }

    fn managed(&self) -> String {
        std::fs::read_to_string(&self.managed).unwrap_or_default()
    }

    /// The files in the agent's report spool.
    fn spool_files(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.state_dir().join("reports")) {
            Ok(dir) => dir.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn run_id(report: &Value) -> String {
    report["run_id"].as_str().unwrap().to_string()
}

#[test]
fn run_converges_and_its_report_reaches_the_server_once() {
    let fleet = Fleet::new("one", |url| vec![url]);
    let (code, report, stderr) = fleet.run();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(fleet.managed(), "one");
    assert_eq!(report["node"], fleet.node.as_str());
    assert_eq!(report["channel"], CHANNEL);
    assert_eq!(report["role_version"], 1);
    assert!(report.get("from_cache").is_none(), "{report}");
    assert_eq!(report["summary"]["changed"], 1);
    assert_eq!(fleet.reports(), [run_id(&report)]);
    assert!(fleet.spool_files().is_empty());

    // Again: nothing to do, a second report; each stored once.
    let (code, again, _) = fleet.run();
    assert_eq!(code, 0);
    assert_eq!(again["summary"]["unchanged"], 1);
    assert_eq!(fleet.reports(), [run_id(&again), run_id(&report)]);
}

#[test]
fn with_the_server_down_run_converges_from_the_cache_and_spools_until_it_is_back() {
    let mut fleet = Fleet::new("cached", |url| vec![url]);
    let (code, first, stderr) = fleet.run();
    assert_eq!(code, 0, "{stderr}");

    fleet.server.stop();
    std::fs::write(&fleet.managed, "drifted").unwrap();
    let (code, report, stderr) = fleet.run();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        fleet.managed(),
        "cached",
        "the cached role corrected the drift"
    );
    assert_eq!(report["from_cache"], true);
    assert_eq!(report["role_version"], 1);
    assert_eq!(report["summary"]["changed"], 1);
    assert!(
        stderr.contains("cached role") && stderr.contains(&fleet.server.url()),
        "{stderr}"
    );
    let spooled = fleet.spool_files();
    assert_eq!(spooled.len(), 1);
    let kept_report = std::fs::read(&spooled[0]).unwrap();

    // Without a server and without a cache: an error naming the servers.
    let cache = fleet.state_dir().join("bundle.pb");
    let kept = std::fs::read(&cache).unwrap();
    std::fs::remove_file(&cache).unwrap();
    let out = fleet.agent(&["run"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no server answered") && stderr.contains(&fleet.server.url()),
        "{stderr}"
    );
    std::fs::write(&cache, kept).unwrap();

    // Back: the next run delivers the spooled report, then its own; each once.
    fleet.server.restart();
    let (code, after, stderr) = fleet.run();
    assert_eq!(code, 0, "{stderr}");
    assert!(after.get("from_cache").is_none());
    let expected = [run_id(&after), run_id(&report), run_id(&first)];
    assert_eq!(fleet.reports(), expected);
    assert!(fleet.spool_files().is_empty());
    let stored = fleet.report_list();
    assert_eq!(stored[1]["from_cache"], true, "{stored:?}");
    assert_eq!(stored[0]["from_cache"], false, "{stored:?}");

    // A report delivered again (its acknowledgement lost, say) is stored
    // once; one spooled under another node name (the machine enrolled again
    // under a new one) can never be delivered, and is dropped, with a line.
    let name = spooled[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let other_node = kept_report
        .windows(fleet.node.len())
        .position(|w| w == fleet.node.as_bytes());
    let mut theirs = kept_report.clone();
    let at = other_node.expect("the node's name in its report");
    theirs[at] = b'x';
    let theirs_path = spooled[0].with_file_name(format!("{:020}{}", 1, &name[20..]));
    std::fs::write(&theirs_path, theirs).unwrap();
    std::fs::write(&spooled[0], kept_report).unwrap();
    let (code, last, stderr) = fleet.run();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "dropped the spooled report of run {}",
            run_id(&report)
        )),
        "{stderr}"
    );
    assert!(fleet.spool_files().is_empty());
    let mut expected = expected.to_vec();
    expected.insert(0, run_id(&last));
    assert_eq!(fleet.reports(), expected);
}

#[test]
fn with_the_first_server_down_the_second_is_used() {
    let down = down_server_url();
    let fleet = Fleet::new("failover", |url| vec![down.clone(), url]);
    let (code, report, stderr) = fleet.run();
    assert_eq!(code, 0, "{stderr}");
    assert!(report.get("from_cache").is_none(), "{report}");
    assert_eq!(fleet.managed(), "failover");
    assert_eq!(fleet.reports(), [run_id(&report)]);
}

impl Fleet {
    /// `cairn-agent daemon`, its output kept for [`stop_daemon`].
    fn daemon(&self) -> Child {
        self.agent(&["daemon"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// SIGTERM; the daemon must exit 0, saying so last. Returns its output.
fn stop_daemon(daemon: Child) -> String {
    let (status, log) = terminate_and_read(daemon);
    assert!(
        status.success(),
        "the daemon exited {status}; its log:\n{log}"
    );
    assert!(log.contains("cairn-agent: stopped\n"), "{log}");
    log
}

#[test]
fn the_daemon_converges_a_promote_through_its_watch_and_stops_on_sigterm() {
    let fleet = Fleet::new("v1", |url| vec![url]);
    let daemon = fleet.daemon();
    // The first run, at start.
    wait_for("the first run", WAIT, || fleet.managed() == "v1");
    wait_for("the first report", WAIT, || fleet.reports().len() == 1);

    // The interval is an hour: only the watch can bring this version.
    let promoted = Instant::now();
    fleet.push("v2");
    wait_for("the promoted version", WAIT, || fleet.managed() == "v2");
    let took = promoted.elapsed();
    wait_for("the second report", WAIT, || fleet.reports().len() == 2);

    let log = stop_daemon(daemon);
    assert!(log.contains("moved to version 2"), "{log}");
    eprintln!("promote to converged: {took:?}");
}

#[test]
fn the_daemon_reconnects_after_an_outage_and_delivers_the_spool() {
    let mut fleet = Fleet::new("v1", |url| vec![url]);
    let daemon = fleet.daemon();
    wait_for("the first report", WAIT, || fleet.reports().len() == 1);

    // Down: a run meanwhile (the daemon's lock is free between its runs)
    // converges from the cache and spools its report.
    fleet.server.stop();
    let (code, cached, stderr) = fleet.run();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(cached["from_cache"], true);
    assert_eq!(fleet.spool_files().len(), 1);

    // Back: the daemon reconnects by itself and delivers the spool; a
    // promote then reaches it through the new watch stream.
    fleet.server.restart();
    wait_for("the spooled report", WAIT, || {
        fleet.reports().contains(&run_id(&cached))
    });
    assert!(fleet.spool_files().is_empty());
    fleet.push("v2");
    wait_for("the promoted version", WAIT, || fleet.managed() == "v2");

    let log = stop_daemon(daemon);
    assert!(log.contains("reconnecting in"), "{log}");
    assert!(log.contains("moved to version 2"), "{log}");
}

/// The unit file in a booted machine (systemd as PID 1), against the server
/// on this host's loopback: enrolled, `systemctl enable --now` converges the
/// role, a promote reaches it, `systemctl stop` ends it cleanly.
#[test]
fn the_unit_keeps_a_machine_converged_and_stops_cleanly() {
    const MOTD: &str = "/srv/cairn-motd";
    let fleet = Fleet::start("v1", Some(MOTD));
    let vm = cairn_e2e::Machine::boot("agent-unit");
    vm.write_file("/root/token", fleet.ops.token(ROLE, CHANNEL));
    let pin = fleet.server.ca_pin();
    vm.write_file(
        "/etc/cairn/agent.toml",
        format!(
            "servers = [\"{}\"]\nca_pin = \"{pin}\"\nname = \"{}\"\ninterval = \"1h\"\n",
            fleet.server.url(),
            fleet.node
        ),
    );
    vm.sh_ok("cairn-agent enroll --token-file /root/token");
    let unit = std::fs::read_to_string(
        cairn_e2e::workspace_root().join("agent/systemd/cairn-agent.service"),
    )
    .unwrap();
    vm.write_file("/etc/systemd/system/cairn-agent.service", unit);
    vm.sh_ok("systemctl daemon-reload && systemctl enable --now cairn-agent");
    let converged_to = |content: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while vm
            .sh(&format!("test \"$(cat {MOTD})\" = {content}"))
            .status
            .code()
            != Some(0)
        {
            if Instant::now() > deadline {
                let journal = vm.sh_ok("journalctl -u cairn-agent --no-pager -o cat");
                panic!("{MOTD} never became {content}; the agent's journal:\n{journal}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    converged_to("v1");
    fleet.push("v2");
    converged_to("v2");

    vm.sh_ok("systemctl stop cairn-agent");
    assert_eq!(vm.unit_property("cairn-agent", "Result"), "success");
    let journal = vm.sh_ok("journalctl -u cairn-agent --no-pager -o cat");
    assert!(journal.contains("moved to version 2"), "{journal}");
    assert!(journal.contains("cairn-agent: stopped"), "{journal}");
    assert_eq!(fleet.reports().len(), 2, "{journal}");
}
