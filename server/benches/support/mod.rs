//! What the benchmarks share: the exit status and a number from the environment.

use std::process::ExitCode;

use anyhow::{Context, Result};

/// Runs `bench`; prints its error with the whole chain on failure.
pub fn exit(bench: impl FnOnce() -> Result<()>) -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The whole number in environment variable `name`, or `default` when unset.
pub fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}
