//! `cairn-agent enroll`, the real binary, against the real `cairn-server`
//! on loopback: a token from `cairn token create` enrolls the node, which
//! keeps its identity privately in the state directory given and deletes the
//! token file; a wrong pin or a used token fail with the token file kept.
//! Boots no machine and touches nothing outside its temporary directory.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use cairn_e2e::{Operator, Server, agent_binary, workspace_root};

/// A new join token for role `web`, written to `path` as a node gets it.
fn token_file(ops: &Operator, path: &Path) -> String {
    let token = ops.token("web", "production");
    std::fs::write(path, format!("{token}\n")).unwrap();
    token
}

fn enroll(args: &[&str], state: &Path, token: &Path, config: &Path) -> Output {
    Command::new(agent_binary())
        .arg("enroll")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .arg("--token-file")
        .arg(token)
        .arg("--config")
        .arg(config)
        .env_remove("CAIRN_STATE_DIR")
        .output()
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn the_agent_enrolls_with_a_token_and_keeps_its_identity_privately() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Server::start(dir);
    let ops = server.add_operator("ada", &dir.join("ada.toml"));
    ops.cairn(&[
        "role",
        "push",
        workspace_root().join("recipes/web").to_str().unwrap(),
    ]);
    let pin = server.ca_pin();
    let url = server.url();

    // The configuration names a server that does not answer first, then the
    // real one, and the pin; the flags give the name.
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "servers = [\"https://127.0.0.1:1\", \"{}\"]\nca_pin = \"{pin}\"\n",
            url
        ),
    )
    .unwrap();
    let state = dir.join("state");
    let token = dir.join("token");
    token_file(&ops, &token);
    let o = enroll(&["--name", "web-1"], &state, &token, &config);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("enrolled node web-1 (role web at channel production)"),
        "{stdout}"
    );
    assert!(!token.exists(), "the token file is deleted once enrolled");
    let identity = state.join("node.toml");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&identity), 0o600);
    let stored = std::fs::read_to_string(&identity).unwrap();
    for part in [
        "name = \"web-1\"",
        "BEGIN PRIVATE KEY",
        "BEGIN CERTIFICATE",
        &url,
        "https://127.0.0.1:1",
        "[assignment]",
        "role = \"web\"",
        "channel = \"production\"",
    ] {
        assert!(stored.contains(part), "{part} not in {stored}");
    }
    let audit = ops.cairn_json(&["audit"]);
    let enrolled = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "node enroll")
        .expect("the enrollment is audited");
    assert_eq!(enrolled["actor"], "web-1");

    // A wrong pin (here: flags over the file): refused before the token is
    // sent; the token file is kept.
    token_file(&ops, &token);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let o = enroll(
        &["--name", "web-2", "--server", &url, "--ca-pin", &wrong],
        &dir.join("state2"),
        &token,
        &config,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not the one pinned") && stderr.contains(&format!("not {wrong}")),
        "{stderr}"
    );
    assert!(token.exists(), "the token file is kept on failure");
    assert!(!dir.join("state2").join("node.toml").exists());

    // The right pin, but a name the server's certificate was not issued for
    // (it has only 127.0.0.1): the whole chain is checked, names included.
    let by_name = url.replace("127.0.0.1", "localhost");
    let o = enroll(
        &["--name", "web-2", "--server", &by_name, "--ca-pin", &pin],
        &dir.join("state2"),
        &token,
        &config,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("certificate not valid for name \"localhost\""),
        "{stderr}"
    );
    assert!(token.exists());

    // The same token again, once used: refused, saying so; the file is kept.
    let used = dir.join("used");
    let first = token_file(&ops, &used);
    let o = enroll(&["--name", "web-3"], &dir.join("state3"), &used, &config);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(&used, &first).unwrap();
    let o = enroll(&["--name", "web-4"], &dir.join("state4"), &used, &config);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("could not enroll node web-4")
            && stderr.contains("is used up")
            && stderr.contains("is kept"),
        "{stderr}"
    );
    assert!(used.exists());

    // The machine rebuilt (a new state directory), a fresh token, the name
    // it had, which is the default: it enrolls again.
    let o = enroll(&[], &dir.join("rebuilt"), &token, &config);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let name = stdout
        .strip_prefix("enrolled node ")
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    if machine_id.trim().len() >= 12 {
        assert!(name.starts_with(&machine_id.trim()[..12]), "{name}");
    }
    token_file(&ops, &token);
    let o = enroll(&[], &dir.join("rebuilt-again"), &token, &config);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let audit = ops.cairn_json(&["audit"]).to_string();
    assert!(
        audit.contains("replaced the certificate enrolled at"),
        "{audit}"
    );
}
