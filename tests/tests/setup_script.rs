//! `scripts/setup.sh` decides whether the `cargo` it finds can build the
//! workspace (Debian's packaged cargo cannot) before it reaches for rustup.
//! Its functions, loaded with `CAIRN_SETUP_FUNCTIONS_ONLY=1`, against fake
//! versions and a fake `cargo`. Boots no machine and changes nothing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use cairn_e2e::workspace_root;

/// Runs `script` in bash after loading setup.sh's functions, with `PATH` set
/// to `path`; returns its exit code and stdout.
fn with_setup_functions(script: &str, path: &str) -> (i32, String) {
    let setup = workspace_root().join("scripts/setup.sh");
    let out = Command::new("/bin/bash")
        .arg("-c")
        .arg(format!(". \"$0\"\n{script}"))
        .arg(&setup)
        .env("CAIRN_SETUP_FUNCTIONS_ONLY", "1")
        .env("PATH", path)
        .output()
        .expect("could not run bash");
    assert!(
        out.stderr.is_empty(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().expect("bash was killed"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

const SYSTEM_PATH: &str = "/usr/bin:/bin";

#[test]
fn rust_versions_compare_by_number() {
    let cases = [
        ("1.63.0", "1.89", false), // Debian bookworm's cargo
        ("1.88.9", "1.89", false),
        ("1.89.0", "1.89.1", false),
        ("0.99", "1.89", false),
        ("1.89.0", "1.89", true),
        ("1.89", "1.89.0", true),
        ("1.100.0", "1.89", true), // not text order
        ("2.0", "1.89", true),
        ("1.95.0-nightly", "1.95", true),
        ("unknown", "1.89", false),
        ("", "1.89", false),
    ];
    for (have, want, expected) in cases {
        let (code, _) = with_setup_functions(
            &format!("rust_version_at_least '{have}' '{want}'"),
            SYSTEM_PATH,
        );
        assert_eq!(code == 0, expected, "is {have:?} at least {want:?}?");
    }
}

#[test]
fn the_workspace_rust_version_is_read_from_cargo_toml() {
    let (code, out) = with_setup_functions(
        "workspace_rust_version \"$(dirname \"$0\")/../Cargo.toml\"",
        SYSTEM_PATH,
    );
    assert_eq!(code, 0);
    assert_eq!(out.trim(), env!("CARGO_PKG_RUST_VERSION"));
}

/// A directory holding a `cargo` that says it is `version`.
fn fake_cargo(dir: &Path, version_line: &str) {
    let cargo = dir.join("cargo");
    fs::write(
        &cargo,
        format!("#!/bin/sh\n[ \"$1\" = --version ] && echo '{version_line}'\n"),
    )
    .unwrap();
    fs::set_permissions(&cargo, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn an_old_or_missing_cargo_is_not_recent() {
    let dir = tempfile::tempdir().unwrap();
    let path = format!("{}:{SYSTEM_PATH}", dir.path().display());
    let check = "cargo_version; cargo_is_recent 1.89";

    fake_cargo(dir.path(), "cargo 1.63.0");
    assert_eq!(with_setup_functions(check, &path), (1, "1.63.0\n".into()));

    fake_cargo(dir.path(), "cargo 1.95.0 (f2d3ce0bd 2026-03-21)");
    assert_eq!(with_setup_functions(check, &path), (0, "1.95.0\n".into()));

    fs::remove_file(dir.path().join("cargo")).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let (code, out) = with_setup_functions(check, &empty.path().display().to_string());
    assert_eq!((code, out.as_str()), (1, ""), "no cargo at all");
}
