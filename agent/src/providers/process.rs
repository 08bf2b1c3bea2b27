//! Running programs: the one place the agent spawns processes, so every command
//! gets the same error reporting and environment.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

use super::Shell;

/// How much of a command's stderr [`Ran::describe`] shows.
pub const MAX_DESCRIBED_LINES: usize = 10;
pub const MAX_DESCRIBED_BYTES: usize = 2048;

/// The result of a command that ran to completion.
#[derive(Debug)]
pub struct Ran {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Ran {
    fn from(o: Output) -> Self {
        Ran {
            success: o.status.success(),
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Ran {
    /// `exit status N` (or the signal), then the last lines of stderr (at
    /// most [`MAX_DESCRIBED_LINES`] and [`MAX_DESCRIBED_BYTES`]).
    pub fn describe(&self) -> String {
        let status = match self.code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_string(),
        };
        let tail: Vec<&str> = self
            .stderr
            .trim_end()
            .lines()
            .rev()
            .take(MAX_DESCRIBED_LINES)
            .collect();
        if tail.is_empty() {
            return status;
        }
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let tail = tail.join("\n");
        // The end is what says why; a line can be of any length.
        let mut cut = tail.len().saturating_sub(MAX_DESCRIBED_BYTES);
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        let clipped = if cut > 0 { "…" } else { "" };
        format!("{status}: {clipped}{}", &tail[cut..])
    }
}

/// Runs `program args…` with stdin closed and output captured. Fails only when
/// the program cannot be started; a non-zero exit is in [`Ran::success`].
pub fn run<I, S>(program: &str, args: I, env: &[(&str, &str)]) -> Result<Ran>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_in(program, args, env, None)
}

fn run_in<I, S>(program: &str, args: I, env: &[(&str, &str)], cwd: Option<&Path>) -> Result<Ran>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd
        .output()
        .with_context(|| format!("could not start {program}"))?;
    Ok(out.into())
}

/// Options whose value is a secret, shown as `(sensitive)` wherever a
/// command is: `useradd` and `usermod` take a password hash in `--password`.
/// Callers pass such a value joined to its option (`--password=HASH`), one
/// argument: a value in the next argument could not be told from an ordinary
/// argument that happens to follow a hostile one (a comment `--password`).
const SECRET_OPTIONS: &[&str] = &["--password="];

/// `args` as an error shows them, one space apart, the value of every
/// [`SECRET_OPTIONS`] argument left out.
fn shown<S: AsRef<OsStr>>(args: &[S]) -> String {
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            let a = a.as_ref().to_string_lossy();
            match SECRET_OPTIONS.iter().find(|o| a.starts_with(**o)) {
                Some(option) => format!("{option}(sensitive)"),
                None => a.into_owned(),
            }
        })
        .collect();
    shown.join(" ")
}

/// Runs a command that must succeed; the error carries the command (secrets
/// left out), its exit status and stderr.
pub fn run_ok<I, S>(program: &str, args: I, env: &[(&str, &str)]) -> Result<Ran>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let ran = run(program, &args, env)?;
    if !ran.success {
        bail!(
            "`{program} {}` failed with {}",
            shown(&args),
            ran.describe()
        );
    }
    Ok(ran)
}

/// This host's `/bin/sh`, for execs and their guards.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemShell;

impl Shell for SystemShell {
    fn run(&self, command: &str, cwd: Option<&Path>) -> Result<Ran> {
        run_in("/bin/sh", ["-c", command], &[], cwd)
    }
}

/// Looks `program` up in `PATH` (or the standard system directories when
/// `PATH` is unset, as under a minimal init).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_carry_status_and_stderr() {
        let err = run_ok("/bin/sh", ["-c", "echo boom >&2; exit 3"], &[]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("exit status 3") && msg.contains("boom"),
            "{msg}"
        );
        assert!(run("/nonexistent/program", ["x"], &[]).is_err());
        let ran = SystemShell.run("pwd", Some(Path::new("/tmp"))).unwrap();
        assert_eq!(ran.stdout.trim(), "/tmp");
        assert!(find_program("sh").is_some());
    }

    #[test]
    fn a_failed_command_never_shows_a_secret() {
        let hash = "$y$j9T$cairn-secret-hash";
        let err = run_ok(
            "/bin/sh",
            [
                "-c",
                "exit 1",
                // A hostile value before the secret changes nothing.
                "--comment",
                "--password",
                &format!("--password={hash}"),
                "x",
            ],
            &[],
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(!msg.contains("cairn-secret"), "{msg}");
        assert!(
            msg.starts_with(
                "`/bin/sh -c exit 1 --comment --password --password=(sensitive) x` failed \
                 with exit status 1"
            ),
            "{msg}"
        );
    }

    #[test]
    fn a_description_is_bounded_and_keeps_the_end() {
        let ran = SystemShell
            .run(
                "head -c 100000 /dev/zero | tr '\\0' x >&2; echo ' the end' >&2; exit 1",
                None,
            )
            .unwrap();
        let d = ran.describe();
        assert!(d.starts_with("exit status 1: …x"), "{d:.40}");
        assert!(d.ends_with("x the end"), "{d}");
        assert_eq!(d.len(), "exit status 1: …".len() + MAX_DESCRIBED_BYTES);
    }
}
