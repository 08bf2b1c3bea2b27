//! The agent's own state under `/var/lib/cairn/`: the run lock, and refreshes
//! that were promised by a change but not yet done.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

pub const DEFAULT_DIR: &str = "/var/lib/cairn";
const LOCK_FILE: &str = "agent.lock";
const PENDING_FILE: &str = "pending-refresh.json";

pub struct StateDir {
    root: PathBuf,
}

/// Held for the whole run; the OS releases the lock when the process ends,
/// however it ends, so a crash never leaves a stale lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    fn ensure(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .with_context(|| format!("could not create state directory {}", self.root.display()))
    }

    /// Takes the machine-wide run lock, or says who holds it.
    pub fn lock(&self) -> Result<RunLock> {
        self.ensure()?;
        let path = self.root.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("could not open lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                bail!(
                    "another cairn-agent run is in progress (lock {} held by pid {})",
                    path.display(),
                    holder.trim()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("could not lock {}", path.display()));
            }
        }
        // Tell a second run who holds it; the content is informative only.
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(RunLock { _file: file })
    }

    /// Resource ids that still owe a refresh from an earlier run.
    pub fn load_pending(&self) -> Result<BTreeSet<String>> {
        let path = self.root.join(PENDING_FILE);
        match fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data).with_context(|| {
                format!(
                    "could not parse {} (delete it to drop pending refreshes)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(BTreeSet::new()),
            Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
        }
    }

    /// Records the pending refreshes durably (write, fsync, rename) before the
    /// run goes on, so a crash cannot lose a promised restart.
    pub fn save_pending(&self, pending: &BTreeSet<String>) -> Result<()> {
        self.ensure()?;
        let path = self.root.join(PENDING_FILE);
        let save = || -> Result<()> {
            if pending.is_empty() {
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
            } else {
                let mut tmp = tempfile::NamedTempFile::new_in(&self.root)?;
                serde_json::to_writer(&mut tmp, pending)?;
                tmp.as_file().sync_all()?;
                tmp.persist(&path).map_err(|e| e.error)?;
            }
            File::open(&self.root)?.sync_all()?;
            Ok(())
        };
        save().with_context(|| format!("could not record pending refreshes in {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_holder() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        let held = state.lock().unwrap();
        let err = state.lock().unwrap_err().to_string();
        assert!(
            err.contains("in progress") && err.contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(held);
        state.lock().unwrap();
    }

    #[test]
    fn pending_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        assert!(state.load_pending().unwrap().is_empty());
        let set: BTreeSet<String> = ["service:nginx".to_string()].into();
        state.save_pending(&set).unwrap();
        assert_eq!(state.load_pending().unwrap(), set);
        state.save_pending(&BTreeSet::new()).unwrap();
        assert!(!dir.path().join(PENDING_FILE).exists());
    }
}
