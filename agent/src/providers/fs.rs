//! Files and directories, through POSIX calls ([`Posix`]). Writes are atomic: a
//! temporary file in the same directory gets its content, owner and mode, is
//! synced, and is renamed over the target, so a crash never leaves a torn file.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::thread::LocalKey;

use anyhow::{Context, Result, anyhow};
use nix::unistd::{Gid, Group, Uid, User};

use super::FileSystem;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    Other,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Directory => "directory",
            FileKind::Symlink => "link",
            FileKind::Other => "special file",
        }
    }
}

/// What `lstat` says about a path (links are not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: FileKind,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits, including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
}

/// Ownership and permissions for something being created or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// This host's file system; owners are named through the C library (NSS).
#[derive(Debug, Clone, Copy, Default)]
pub struct Posix;

impl FileSystem for Posix {
    fn stat(&self, path: &Path) -> Result<Option<Meta>> {
        let m = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("could not stat {}", path.display())),
        };
        let ft = m.file_type();
        let kind = if ft.is_file() {
            FileKind::File
        } else if ft.is_dir() {
            FileKind::Directory
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else {
            FileKind::Other
        };
        Ok(Some(Meta {
            kind,
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
        }))
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>> {
        fs::read(path).with_context(|| format!("could not read {}", path.display()))
    }

    fn write_atomic(&self, path: &Path, data: &[u8], own: Ownership) -> Result<()> {
        let dir = path
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?;
        let write = || -> Result<()> {
            let mut tmp = tempfile::Builder::new()
                .prefix(".cairn-")
                .tempfile_in(dir)
                .with_context(|| {
                    format!("could not create a temporary file in {}", dir.display())
                })?;
            tmp.write_all(data)
                .context("could not write the temporary file")?;
            let f = tmp.as_file();
            std::os::unix::fs::fchown(f, Some(own.uid), Some(own.gid))
                .context("could not set owner")?;
            f.set_permissions(fs::Permissions::from_mode(own.mode))
                .context("could not set mode")?;
            f.sync_all().context("could not sync")?;
            tmp.persist(path)
                .map_err(|e| e.error)
                .context("could not rename into place")?;
            sync_dir(dir)
        };
        write().with_context(|| format!("could not write {}", path.display()))
    }

    fn create_dir(&self, path: &Path, own: Ownership) -> Result<()> {
        let create = || -> Result<()> {
            fs::create_dir(path)?;
            std::os::unix::fs::lchown(path, Some(own.uid), Some(own.gid))?;
            fs::set_permissions(path, fs::Permissions::from_mode(own.mode))?;
            Ok(())
        };
        create().with_context(|| format!("could not create directory {}", path.display()))
    }

    fn set_owner(&self, path: &Path, uid: u32, gid: u32) -> Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .with_context(|| format!("could not change owner of {}", path.display()))
    }

    fn set_mode(&self, path: &Path, mode: u32) -> Result<()> {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("could not change mode of {}", path.display()))
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        fs::remove_file(path).with_context(|| format!("could not remove {}", path.display()))
    }

    fn remove_dir_all(&self, path: &Path) -> Result<()> {
        fs::remove_dir_all(path)
            .with_context(|| format!("could not remove directory {}", path.display()))
    }

    fn uid_of(&self, user: &str) -> Result<u32> {
        User::from_name(user)
            .with_context(|| format!("could not look up user {user}"))?
            .map(|u| u.uid.as_raw())
            .ok_or_else(|| anyhow!("user {user} does not exist"))
    }

    fn gid_of(&self, group: &str) -> Result<u32> {
        Group::from_name(group)
            .with_context(|| format!("could not look up group {group}"))?
            .map(|g| g.gid.as_raw())
            .ok_or_else(|| anyhow!("group {group} does not exist"))
    }

    fn user_name(&self, uid: u32) -> String {
        cached_name(&USER_NAMES, "/etc/passwd", uid, |uid| {
            User::from_uid(Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
        })
    }

    fn group_name(&self, gid: u32) -> String {
        cached_name(&GROUP_NAMES, "/etc/group", gid, |gid| {
            Group::from_gid(Gid::from_raw(gid))
                .ok()
                .flatten()
                .map(|g| g.name)
        })
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("could not sync directory {}", dir.display()))
}

/// Names already looked up, valid while the account file is unchanged. glibc
/// rereads `/etc/passwd` or `/etc/group` on every lookup; a converged run asks
/// for the same few owners of every file.
#[derive(Default)]
struct NameCache {
    stamp: Option<(u64, i64, i64, u64)>,
    names: HashMap<u32, String>,
}

thread_local! {
    static USER_NAMES: RefCell<NameCache> = RefCell::default();
    static GROUP_NAMES: RefCell<NameCache> = RefCell::default();
}

fn cached_name(
    cache: &'static LocalKey<RefCell<NameCache>>,
    file: &str,
    id: u32,
    lookup: impl FnOnce(u32) -> Option<String>,
) -> String {
    // Inode, mtime and size: a user added during the run (even by a rename
    // over the file) makes the cache start again.
    let stamp = fs::metadata(file)
        .ok()
        .map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.size()));
    cache.with(|c| {
        let mut c = c.borrow_mut();
        if c.stamp != stamp {
            c.names.clear();
            c.stamp = stamp;
        }
        c.names
            .entry(id)
            .or_insert_with(|| lookup(id).unwrap_or_else(|| id.to_string()))
            .clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_before_rename_and_replaces_links() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        std::os::unix::fs::symlink("/etc/hostname", &target).unwrap();
        let own = Ownership {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mode: 0o600,
        };
        Posix.write_atomic(&target, b"hello", own).unwrap();
        let m = Posix.stat(&target).unwrap().unwrap();
        assert_eq!((m.kind, m.mode), (FileKind::File, 0o600));
        assert_eq!(Posix.read(&target).unwrap(), b"hello");
        // The link target was not written through.
        assert_ne!(Posix.read(Path::new("/etc/hostname")).unwrap(), b"hello");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
