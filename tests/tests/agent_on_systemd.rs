//! The agent's own integration tests (`agent/tests/apply.rs`) on a host where
//! systemd is PID 1, as on a fresh Debian machine: they must not assume they
//! run in a container without systemd, as CI's does.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use cairn_e2e::{Machine, workspace_binary, workspace_root};

/// Where the test binary is inside the machine.
const GUEST_TESTS: &str = "/usr/local/libexec/cairn-agent-apply-tests";

/// The `apply` test executable of cairn-agent, as cargo reports it (its name
/// carries a hash). Built already when the workspace's tests were.
fn agent_apply_tests() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // --workspace: the features the workspace's test build used, so nothing
    // is rebuilt.
    let out = Command::new(&cargo)
        .current_dir(workspace_root())
        .args([
            "test",
            "--workspace",
            "--locked",
            "--no-run",
            "--test",
            "apply",
        ])
        .arg("--message-format=json")
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", cargo.to_string_lossy()));
    assert!(out.status.success(), "cargo test --no-run failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| {
            msg["reason"] == "compiler-artifact"
                && msg["target"]["name"] == "apply"
                && msg["package_id"]
                    .as_str()
                    .is_some_and(|id| id.contains("cairn-agent"))
        })
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no executable for cairn-agent's apply tests")
}

#[test]
fn the_agent_apply_tests_pass_where_systemd_runs() {
    let tests = agent_apply_tests();
    // The tests run the agent at the path cargo compiled into them.
    let agent = workspace_binary("cairn-agent");
    let agent_guest = agent.to_str().expect("a UTF-8 target directory");
    let m = Machine::boot_with(
        "agent-tests",
        &[
            (tests.as_path(), GUEST_TESTS),
            (agent.as_path(), agent_guest),
        ],
    );
    m.sh_ok("test -d /run/systemd/system");

    let out = m.sh(&format!("{GUEST_TESTS} --test-threads=2 2>&1"));
    let output = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{output}");
    assert!(
        output.contains("test services_need_systemd_but_the_rest_of_the_role_does_not ... ok"),
        "{output}"
    );
}
