//! Node certificate renewal end to end: the real `cairn-server` signing node
//! certificates for 90 seconds (`--node-cert-lifetime 90s`), the real
//! `cairn-agent` on this host enrolled with a token, its configuration, state
//! and managed file in a temporary directory (the host's `/etc/cairn` and
//! `/var/lib/cairn` are not touched). The daemon renews its certificate before
//! it expires and goes on reporting past the first certificate's expiry, when
//! the server refuses that certificate (at the handshake, and on connections
//! opened before); a new `cairn-agent run` uses the identity it stored.
//!
//! Needs the debug binaries (`cargo build --bins`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_e2e::{Server, succeeded, terminate_and_read, wait_for, workspace_binary};

/// The node certificates' lifetime: renewal is due after two thirds of it.
const LIFETIME: Duration = Duration::from_secs(90);

/// The private key block of the node's identity file.
fn private_key(identity: &str) -> &str {
    let start = identity
        .find("-----BEGIN PRIVATE KEY-----")
        .expect("a private key in the identity");
    let end = identity[start..]
        .find("-----END PRIVATE KEY-----")
        .expect("the end of the private key");
    &identity[start..start + end]
}

#[test]
fn the_daemon_renews_its_certificate_and_reports_past_the_first_ones_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--node-cert-lifetime", "90s"]);
    let ops = server.add_operator("ops", &dir.path().join("ops.toml"));
    let role = dir.path().join("role");
    std::fs::create_dir_all(&role).unwrap();
    let managed = dir.path().join("motd");
    std::fs::write(
        role.join("role.toml"),
        format!(
            "[role]\nname = \"motd\"\n\n[[file]]\npath = \"{}\"\ncontent = \"renewed\"\n",
            managed.display()
        ),
    )
    .unwrap();
    ops.push(&role, "one", "stable");

    let node = format!("renew-{}", std::process::id());
    let state = dir.path().join("state");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "servers = [\"{}\"]\nca_pin = \"{}\"\nstate_dir = \"{}\"\nname = \"{node}\"\n\
             interval = \"5s\"\nsplay = \"0s\"\n",
            server.url(),
            server.ca_pin(),
            state.display()
        ),
    )
    .unwrap();
    let agent = |args: &[&str]| {
        let mut cmd = Command::new(workspace_binary("cairn-agent"));
        cmd.arg(args[0])
            .arg("--config")
            .arg(&config)
            .args(&args[1..]);
        cmd
    };
    let token = dir.path().join("token");
    std::fs::write(&token, ops.token("motd", "stable")).unwrap();
    let out = agent(&["enroll", "--token-file", token.to_str().unwrap()])
        .output()
        .unwrap();
    succeeded(&out, "cairn-agent enroll");
    let enrolled = Instant::now();
    let identity = state.join("node.toml");
    let first = std::fs::read_to_string(&identity).unwrap();

    let reports = || {
        let v = ops.cairn_json(&["report", "list", "--node", &node]);
        v["reports"].as_array().map_or(0, Vec::len)
    };
    let daemon = agent(&["daemon"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Past the end of the first certificate (signed before `enroll` returned)…
    let expired = enrolled + LIFETIME + Duration::from_secs(5);
    std::thread::sleep(expired.saturating_duration_since(Instant::now()));
    let before = reports();
    assert!(before > 0, "the daemon ran and reported");
    // …the daemon still reports: the server refuses an expired certificate.
    wait_for(
        "a report after the first certificate expired",
        Duration::from_secs(60),
        || reports() > before,
    );
    let (status, log) = terminate_and_read(daemon);
    assert!(status.success(), "the daemon exited {status}:\n{log}");
    // Renewed once two thirds had passed, not at every run (a run every 5 s).
    let renewals = log.matches("renewed the node's certificate at").count();
    assert!((1..=2).contains(&renewals), "{renewals} renewals:\n{log}");
    assert!(!log.contains("could not renew"), "{log}");

    // The new key and certificate are stored together, privately.
    let now = std::fs::read_to_string(&identity).unwrap();
    assert_ne!(private_key(&now), private_key(&first));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&identity), mode(&state)), (0o600, 0o700));
    let audit = ops.cairn_json(&["audit"]);
    let renewed: Vec<_> = audit["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no audit entries in {audit}"))
        .iter()
        .filter(|e| e["action"] == "node renew" && e["target"] == node.as_str())
        .collect();
    assert_eq!(renewed.len(), renewals, "{renewed:?}");

    // A new process uses the stored identity.
    let before = reports();
    let out = agent(&["run"]).output().unwrap();
    succeeded(&out, "cairn-agent run");
    assert_eq!(reports(), before + 1);
    assert_eq!(std::fs::read_to_string(&managed).unwrap(), "renewed");
}
