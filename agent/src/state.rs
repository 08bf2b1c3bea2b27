//! The agent's own state under `/var/lib/cairn/`: the run lock, refreshes
//! that were promised by a change but not yet done, and the files others keep
//! there through [`StateDir::read`] and [`StateDir::write`] (the node's
//! identity: [`crate::identity`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use nix::unistd::{getegid, geteuid};

use crate::providers::FileSystem;
use crate::providers::fs::{DirFd, FileKind, Ownership, Posix};
use crate::resources::Refresh;

pub const DEFAULT_DIR: &str = "/var/lib/cairn";
const LOCK_FILE: &str = "agent.lock";
const PENDING_FILE: &str = "pending-refresh.json";

/// The agent's state directory. Everything in it is reached as the fs
/// provider reaches a role's files (no link someone other than root placed
/// is followed, nothing is written through a link), and the directory must
/// be the agent's own (root's) and closed to everyone else: another user who
/// could plant a file there could forge owed refreshes or hold the lock.
pub struct StateDir {
    root: PathBuf,
    files: Posix,
}

/// The pending refreshes as written: `{"service:nginx": "reload", …}`, or,
/// from an agent before reloads existed, a list of ids, each owing a restart.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Pending {
    Asked(BTreeMap<String, Refresh>),
    Restarts(BTreeSet<String>),
}

impl Pending {
    fn into_map(self) -> BTreeMap<String, Refresh> {
        match self {
            Pending::Asked(map) => map,
            Pending::Restarts(ids) => ids.into_iter().map(|id| (id, Refresh::Restart)).collect(),
        }
    }
}

/// Held for the whole run; the OS releases the lock when the process ends,
/// however it ends, so a crash never leaves a stale lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir {
            root: root.into(),
            files: Posix::default(),
        }
    }

    /// The state directory, made (0700, the agent's) when missing, closed to
    /// others when open; refused when it is not a directory or another
    /// user's.
    fn ensure(&self) -> Result<DirFd> {
        self.ensure_dir(&self.root)
    }

    /// [`StateDir::ensure`] for `dir`, the state directory or one in it.
    fn ensure_dir(&self, dir: &Path) -> Result<DirFd> {
        let ensure = || -> Result<DirFd> {
            let (uid, gid) = (geteuid().as_raw(), getegid().as_raw());
            match self.files.stat(dir)? {
                None => {
                    self.files.create_parents(dir)?;
                    let own = Ownership {
                        uid,
                        gid,
                        mode: 0o700,
                    };
                    self.files.create_dir(dir, own)?;
                }
                Some(m) if m.kind != FileKind::Directory => {
                    bail!("it is a {}, not a directory", m.kind.as_str())
                }
                Some(m) if m.uid != uid => bail!(
                    "it is owned by {}, and must be the agent's ({})\n  help: chown {} {}",
                    self.files.user_name(m.uid),
                    self.files.user_name(uid),
                    self.files.user_name(uid),
                    dir.display()
                ),
                // The agent's own: closing it is safe.
                Some(m) if m.mode & 0o077 != 0 => self.files.set_mode(dir, 0o700)?,
                Some(_) => {}
            }
            self.files
                .dir(dir)?
                .context("it disappeared while it was being made")
        };
        ensure().with_context(|| format!("state directory {}", dir.display()))
    }

    /// Takes the machine-wide run lock, or says who holds it.
    pub fn lock(&self) -> Result<RunLock> {
        let dir = self.ensure()?;
        let path = self.root.join(LOCK_FILE);
        let flags =
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let mut file = openat(&*dir, LOCK_FILE, flags, Mode::S_IRUSR | Mode::S_IWUSR)
            .map(File::from)
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

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The content of file `name` in the directory, `None` when it (or the
    /// directory) does not exist; an error when it is not a plain file (a
    /// link is never followed).
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.root.join(name);
        if self.files.stat(&self.root)?.is_none() {
            return Ok(None);
        }
        self.ensure()?;
        match self.files.stat_read(&path)? {
            None => Ok(None),
            Some((_, Some(data))) => Ok(Some(data)),
            Some((m, None)) => bail!("{} is a {}, not a file", path.display(), m.kind.as_str()),
        }
    }

    /// Replaces file `name` in the directory (made if missing) with `data`,
    /// the agent's, with `mode` from its creation; durably and atomically
    /// (write, fsync, rename, directory fsync), never through a link.
    pub fn write(&self, name: &str, data: &[u8], mode: u32) -> Result<()> {
        self.ensure()?;
        let own = Ownership {
            uid: geteuid().as_raw(),
            gid: getegid().as_raw(),
            mode,
        };
        self.files.write_atomic(&self.root.join(name), data, own)
    }

    /// Resource ids that still owe a refresh from an earlier run, and which.
    pub fn load_pending(&self) -> Result<BTreeMap<String, Refresh>> {
        let path = self.root.join(PENDING_FILE);
        if self.files.stat(&self.root)?.is_none() {
            return Ok(BTreeMap::new());
        }
        self.ensure()?;
        match self.files.stat_read(&path)? {
            None => Ok(BTreeMap::new()),
            Some((_, Some(data))) => serde_json::from_slice::<Pending>(&data)
                .map(Pending::into_map)
                .with_context(|| {
                    format!(
                        "could not parse {} (delete it to drop pending refreshes)",
                        path.display()
                    )
                }),
            Some((m, None)) => bail!(
                "{} is a {}, not a file (delete it to drop pending refreshes)",
                path.display(),
                m.kind.as_str()
            ),
        }
    }

    /// Records the pending refreshes durably (write, fsync, rename, directory
    /// fsync) before the run goes on, so a crash cannot lose a promised
    /// restart.
    pub fn save_pending(&self, pending: &BTreeMap<String, Refresh>) -> Result<()> {
        self.ensure()?;
        let path = self.root.join(PENDING_FILE);
        let save = || -> Result<()> {
            if pending.is_empty() {
                if self.files.stat(&path)?.is_some() {
                    self.files.remove_file(&path)?;
                }
            } else {
                let own = Ownership {
                    uid: geteuid().as_raw(),
                    gid: getegid().as_raw(),
                    mode: 0o600,
                };
                self.files
                    .write_atomic(&path, &serde_json::to_vec(pending)?, own)?;
            }
            Ok(())
        };
        save().with_context(|| format!("could not record pending refreshes in {}", path.display()))
    }

    /// Removes file `name` from the directory, durably; a missing file is no
    /// error.
    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.root.join(name);
        if self.files.stat(&path)?.is_some() {
            self.files.remove_file(&path)?;
        }
        Ok(())
    }

    /// Makes the directory `name` in the directory, as the directory itself
    /// is made (0700, the agent's; a link or another user's refused), so
    /// that files can be written into it.
    pub fn make_dir(&self, name: &str) -> Result<()> {
        self.ensure()?;
        self.ensure_dir(&self.root.join(name)).map(drop)
    }

    /// The names in the directory `name` of the directory (made when
    /// missing), sorted; names that are not UTF-8 are not the agent's and
    /// are left out.
    pub fn list(&self, name: &str) -> Result<Vec<String>> {
        self.make_dir(name)?;
        let names = self.files.list_dir(&self.root.join(name))?;
        Ok(names
            .into_iter()
            .filter_map(|n| n.into_string().ok())
            .collect())
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
        let owed: BTreeMap<String, Refresh> = [
            ("service:nginx".to_string(), Refresh::Reload),
            ("exec:migrate".to_string(), Refresh::Restart),
        ]
        .into();
        state.save_pending(&owed).unwrap();
        assert_eq!(state.load_pending().unwrap(), owed);
        state.save_pending(&BTreeMap::new()).unwrap();
        assert!(!dir.path().join(PENDING_FILE).exists());
    }

    #[test]
    fn pending_refreshes_written_before_reloads_existed_are_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state
            .write(PENDING_FILE, br#"["service:nginx"]"#, 0o600)
            .unwrap();
        let owed: BTreeMap<String, Refresh> =
            [("service:nginx".to_string(), Refresh::Restart)].into();
        assert_eq!(state.load_pending().unwrap(), owed);
    }

    #[test]
    fn links_and_open_state_directories_are_refused() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();

        let state = StateDir::new(dir.path().join("state"));
        drop(state.lock().unwrap());
        // A lock file or a pending file planted as a link is never written
        // through: the lock is refused, the pending file replaced.
        std::fs::remove_file(dir.path().join("state").join(LOCK_FILE)).unwrap();
        symlink(&victim, dir.path().join("state").join(LOCK_FILE)).unwrap();
        let err = format!("{:#}", state.lock().unwrap_err());
        assert!(err.starts_with("could not open lock file"), "{err}");
        symlink(&victim, dir.path().join("state").join(PENDING_FILE)).unwrap();
        let err = format!("{:#}", state.load_pending().unwrap_err());
        assert!(err.contains("is a link, not a file"), "{err}");
        let owed: BTreeMap<String, Refresh> = [("service:x".to_string(), Refresh::Restart)].into();
        state.save_pending(&owed).unwrap();
        assert_eq!(state.load_pending().unwrap(), owed);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

        // The state directory itself as a link, or another user's; the
        // agent's own is closed to others.
        symlink(dir.path().join("state"), dir.path().join("link")).unwrap();
        let err = format!(
            "{:#}",
            StateDir::new(dir.path().join("link")).lock().unwrap_err()
        );
        assert!(
            err.ends_with("link: it is a link, not a directory"),
            "{err}"
        );
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let err = format!("{:#}", StateDir::new(&theirs).load_pending().unwrap_err());
        assert!(
            err.contains("theirs: it is owned by nobody, and must be the agent's"),
            "{err}"
        );
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::new(&open).lock().unwrap();
        let mode = std::fs::metadata(&open).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o700);
    }
}
