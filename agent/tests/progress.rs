//! The real `cairn-agent apply` prints each resource as it finishes: the
//! first resource's line is on its stdout while a later one is still running,
//! and `--format json` prints the report alone.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cairn_proto::report::{ResourceStatus, RunReport};

/// How long the test waits for a line the agent should print at once.
const LINE_DEADLINE: Duration = Duration::from_secs(30);

/// A role: a file, then an exec that waits until the test creates `go`, then
/// leaves `done` (its `creates`).
fn waiting_role(dir: &Path) -> std::path::PathBuf {
    let role = dir.join("role");
    fs::create_dir_all(&role).unwrap();
    let (file, go, done) = (dir.join("first"), dir.join("go"), dir.join("done"));
    fs::write(
        role.join("role.toml"),
        format!(
            "[role]\nname = \"progress\"\n\n\
             [[file]]\npath = \"{}\"\ncontent = \"hello\\n\"\n\n\
             [[exec]]\nname = \"wait-for-go\"\n\
             command = \"while [ ! -e {go} ]; do sleep 0.05; done; touch {done}\"\n\
             creates = \"{done}\"\n",
            file.display(),
            go = go.display(),
            done = done.display(),
        ),
    )
    .unwrap();
    role
}

fn agent(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-agent"));
    cmd.args(args)
        .env("CAIRN_STATE_DIR", dir.join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn each_resource_is_printed_as_it_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let role = waiting_role(dir.path());
    let go = dir.path().join("go");
    let mut child = agent(dir.path(), &["apply", role.to_str().unwrap()])
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });

    // The exec is still waiting for `go`: the file's line must be out already.
    let first = lines.recv_timeout(LINE_DEADLINE);
    let exec_still_running = child.try_wait().unwrap().is_none();
    // Let the run end whatever happened, so a failure does not hang the test.
    fs::write(&go, "").unwrap();
    let first = first.unwrap_or_else(|e| {
        panic!("no line on stdout within {LINE_DEADLINE:?} while the exec ran ({e})")
    });
    assert!(exec_still_running, "the exec ended before the test let it");
    let file_id = format!("file:{}", dir.path().join("first").display());
    assert!(
        first.starts_with(&format!("changed      {file_id} (")) && first.ends_with(" ms)"),
        "{first:?}"
    );

    let out = child.wait_with_output().unwrap();
    reader.join().unwrap();
    let rest: Vec<String> = lines.try_iter().collect();
    assert_eq!(out.status.code(), Some(0), "{rest:?}");
    // Off a terminal nothing transient is written: no carriage return, no escape.
    assert!(
        rest.iter().all(|l| !l.contains(['\r', '\x1b'])) && !first.contains(['\r', '\x1b']),
        "{rest:?}"
    );
    // The file's block goes on with its change and diff, indented.
    let unindented: Vec<&String> = rest.iter().filter(|l| !l.starts_with(' ')).collect();
    assert!(rest[0].starts_with("    ensure: absent → file"), "{rest:?}");
    let [exec, summary] = unindented.as_slice() else {
        panic!("expected the exec's line and the summary: {rest:?}");
    };
    assert!(
        exec.starts_with("changed      exec:wait-for-go ("),
        "{exec:?}"
    );
    // The summary closes; the resources are not listed a second time.
    assert!(
        summary.starts_with("Applied role progress (")
            && summary.contains(": 2 changed, 0 failed, 0 skipped, 0 unchanged (2 resources) in "),
        "{summary:?}"
    );

    // A run with nothing to do lists each resource unchanged, then sums up.
    let out = agent(dir.path(), &["apply", role.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with(&format!("unchanged    {file_id} (")),
        "{text}"
    );
    assert!(
        lines[1].starts_with("unchanged    exec:wait-for-go ("),
        "{text}"
    );
}

#[test]
fn json_output_is_the_report_alone() {
    let dir = tempfile::tempdir().unwrap();
    let role = waiting_role(dir.path());
    fs::write(dir.path().join("go"), "").unwrap();
    fs::write(dir.path().join("done"), "").unwrap();
    let out = agent(
        dir.path(),
        &["apply", role.to_str().unwrap(), "--format", "json"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
    // The whole of stdout is one JSON document: no progress line before it.
    let report: RunReport = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON report ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let statuses: Vec<_> = report.resources.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [ResourceStatus::Changed, ResourceStatus::Unchanged],
        "the exec's `creates` exists already"
    );
}
