//! Running the real `cairn` binary with one credential.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

pub const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

/// Runs `cairn` with only this credential (no ambient CAIRN_* settings).
pub fn cairn(creds: &Path, args: &[&str]) -> Output {
    Command::new(CAIRN)
        .env_remove("CAIRN_SERVER")
        .env("CAIRN_CREDENTIALS", creds)
        .args(args)
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns its stdout.
#[track_caller]
pub fn ok(creds: &Path, args: &[&str]) -> String {
    let o = cairn(creds, args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "cairn {args:?} failed:\n{err}\nstdout:\n{out}"
    );
    out.into_owned()
}

/// Runs a command expected to fail; returns its stderr.
#[track_caller]
pub fn fails(creds: &Path, args: &[&str]) -> String {
    let o = cairn(creds, args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(!o.status.success(), "cairn {args:?} succeeded:\n{out}");
    assert!(out.is_empty(), "a failed command printed a result: {out}");
    assert!(err.starts_with("error: "), "{err}");
    err.into_owned()
}

/// The command with `--output json`, which must succeed, parsed: one JSON document.
#[track_caller]
pub fn json(creds: &Path, args: &[&str]) -> Value {
    let args: Vec<&str> = args.iter().copied().chain(["--output", "json"]).collect();
    let out = ok(creds, &args);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("cairn {args:?} printed invalid JSON ({e}):\n{out}"))
}
