//! A restore "in another cloud": a machine's agent (its systemd unit)
//! enrolled against a `cairn-server` on SQLite; the server exported while it
//! runs, the archive imported into PostgreSQL, served there on another port
//! (the new address), the first server stopped; the agent's configuration
//! pointed at the new address, and nothing else: it converges a version
//! promoted there through its watch, its report is stored there, and it never
//! enrolled again.
//!
//! Needs the debug binaries (`cargo build --bins`), the test image, and
//! PostgreSQL's server binaries (Debian's `postgresql` package).

#[path = "../../server/tests/common/postgres.rs"]
mod postgres;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_e2e::{Machine, Operator, Server, succeeded, wait_for, workspace_binary, workspace_root};
use postgres::PgCluster;

const ROLE: &str = "motd";
const CHANNEL: &str = "stable";
const MOTD: &str = "/srv/cairn-motd";
const WAIT: Duration = Duration::from_secs(60);

/// Pushes the role (its one file [`MOTD`] holding `content`) through the
/// server at `url` and promotes it; returns the version.
fn push(ops: &Operator, dir: &Path, url: &str, content: &str) -> u64 {
    let role = dir.join("role");
    std::fs::create_dir_all(&role).unwrap();
    std::fs::write(
        role.join("role.toml"),
        format!(
            "[role]\nname = \"{ROLE}\"\n\n[[file]]\npath = \"{MOTD}\"\ncontent = \"{content}\"\n"
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

/// The agent's configuration: the servers it reaches, the CA pin, its name.
fn agent_toml(url: &str, pin: &str, node: &str) -> String {
    format!("servers = [\"{url}\"]\nca_pin = \"{pin}\"\nname = \"{node}\"\ninterval = \"1h\"\n")
}

fn converged_to(vm: &Machine, content: &str) {
    wait_for(&format!("{MOTD} holding {content}"), WAIT, || {
        vm.sh(&format!("test \"$(cat {MOTD})\" = {content}"))
            .status
            .success()
    });
}

/// The versions of the node's stored reports, newest first, at `url`.
fn reported_versions(ops: &Operator, url: &str, node: &str) -> Vec<u64> {
    let v = ops.cairn_json(&["--server", url, "report", "list", "--node", node]);
    v["reports"]
        .as_array()
        .unwrap_or_else(|| panic!("no report list in {v}"))
        .iter()
        .map(|r| r["role_version"].as_u64().unwrap())
        .collect()
}

/// The audit entries of `action` at `url`.
fn audited(ops: &Operator, url: &str, action: &str) -> usize {
    let v = ops.cairn_json(&["--server", url, "audit", "--limit", "1000"]);
    v["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries in {v}"))
        .iter()
        .filter(|e| e["action"] == action)
        .count()
}

#[test]
fn an_agent_keeps_working_against_a_server_restored_elsewhere_without_enrolling_again() {
    let cluster = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let mut old = Server::start(&at("old"));
    let ops = old.add_operator("ops", &at("ops.toml"));
    assert_eq!(push(&ops, dir.path(), &old.url(), "v1"), 1);

    // The agent's unit in a machine, enrolled against the first server.
    let node = format!("restore-{}", std::process::id());
    let pin = old.ca_pin();
    let vm = Machine::boot("restore");
    vm.write_file("/root/token", ops.token(ROLE, CHANNEL));
    vm.write_file("/etc/cairn/agent.toml", agent_toml(&old.url(), &pin, &node));
    vm.sh_ok("cairn-agent enroll --token-file /root/token");
    let unit = std::fs::read_to_string(workspace_root().join("agent/systemd/cairn-agent.service"))
        .unwrap();
    vm.write_file("/etc/systemd/system/cairn-agent.service", unit);
    vm.sh_ok("systemctl daemon-reload && systemctl enable --now cairn-agent");
    converged_to(&vm, "v1");
    wait_for("the first report", WAIT, || {
        reported_versions(&ops, &old.url(), &node) == [1]
    });
    let identity = vm.sh_ok("sha256sum /var/lib/cairn/node.toml");

    // Exported while it runs; imported into PostgreSQL for a server on
    // another port; the first server stopped.
    let archive = at("cairn.tar");
    old.server_cmd(&[
        "export",
        "--out",
        archive.to_str().unwrap(),
        "--with-reports",
    ]);
    let database = cluster.database();
    let imported = Command::new(workspace_binary("cairn-server"))
        .arg("import")
        .arg(&archive)
        .arg("--data-dir")
        .arg(at("new").join("server"))
        .args(["--database", &database])
        .output()
        .unwrap();
    let said = succeeded(&imported, "cairn-server import");
    assert!(said.contains(&pin), "{said}");
    let new = Server::start_replica(&at("new"), &database);
    assert_ne!(new.url(), old.url());
    old.stop();

    // The agent pointed at the new address, nothing else changed.
    vm.write_file("/etc/cairn/agent.toml", agent_toml(&new.url(), &pin, &node));
    vm.sh_ok("systemctl restart cairn-agent");
    wait_for("the watch on the new server", WAIT, || {
        vm.sh_ok("journalctl -u cairn-agent --no-pager -o cat")
            .contains(&format!("watching for new versions at {}", new.url()))
    });
    assert_eq!(push(&ops, dir.path(), &new.url(), "v2"), 2);
    converged_to(&vm, "v2");
    wait_for("the report of version 2 on the new server", WAIT, || {
        reported_versions(&ops, &new.url(), &node).first() == Some(&2)
    });
    let versions = reported_versions(&ops, &new.url(), &node);
    assert_eq!(
        versions.last(),
        Some(&1),
        "the imported report: {versions:?}"
    );

    // It never enrolled again: the same identity, one enrollment in the log,
    // and the log's chain intact across the restore.
    assert_eq!(vm.sh_ok("sha256sum /var/lib/cairn/node.toml"), identity);
    assert_eq!(audited(&ops, &new.url(), "node enroll"), 1);
    ops.cairn(&["--server", &new.url(), "audit", "verify"]);
    vm.sh_ok("systemctl stop cairn-agent");
}
