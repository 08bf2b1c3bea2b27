//! Reaching a directory from `/` one component at a time, following a
//! symbolic link only when nobody but root could have placed or changed it.
//!
//! A path string is resolved by the kernel again on every call, so a check
//! and the change after it may reach different files when someone swaps a
//! component for a link in between. Here every component is opened with
//! `O_NOFOLLOW` relative to the directory before it, and the caller changes
//! things *at* the descriptor it got back: what was checked is what is
//! changed. A link on the way is followed only when it and the directory
//! holding it belong to root and that directory is writable by nobody else
//! (OpenSSH's StrictModes rule): `/lib → usr/lib` and `/var/run → /run` keep
//! working, a link in a user's home is refused.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, stat};

use super::{Stamp, stamp};

/// Links one path may pass through, as the kernel's limit (`ELOOP`).
const MAX_LINKS: usize = 40;

/// A directory reached safely; operations on what it holds go through it.
pub type DirFd = Rc<OwnedFd>;

/// Resolves directories and keeps them open for the run, so a converged run
/// walks each directory once, not once per file.
///
/// The cache holds descriptors, not paths: a hit is the very directory that
/// was reached safely, whatever happened to the path since. A hit is used only
/// while the path still names that directory, unchanged since it was reached
/// (one `stat`: same device, inode and change time; a new directory reusing
/// the inode has a new change time), so a directory replaced during the run
/// (by an exec, say) is walked again rather than written into where it was.
#[derive(Default)]
pub struct Resolver {
    /// The only owner whose links are followed: root (0), except in tests.
    trusted_uid: u32,
    cache: RefCell<HashMap<PathBuf, Cached>>,
}

struct Cached {
    fd: DirFd,
    stamp: Stamp,
}

impl Resolver {
    /// A resolver that trusts the links of `uid` instead of root's, so tests
    /// run by anyone can plant trusted and untrusted links.
    #[cfg(test)]
    pub fn trusting(uid: u32) -> Self {
        Resolver {
            trusted_uid: uid,
            cache: RefCell::default(),
        }
    }

    /// The directory `path` (absolute) names, or `None` when a component of
    /// it does not exist.
    pub fn dir(&self, path: &Path) -> Result<Option<DirFd>> {
        if let Some(fd) = self.cached(path) {
            return Ok(Some(fd));
        }
        let Some((fd, st)) = self.walk(path)? else {
            return Ok(None);
        };
        let fd = Rc::new(fd);
        let entry = Cached {
            fd: Rc::clone(&fd),
            stamp: stamp(&st),
        };
        self.cache.borrow_mut().insert(path.to_path_buf(), entry);
        Ok(Some(fd))
    }

    /// The directory holding `path` (`None` when it does not exist) and the
    /// name of `path` in it.
    pub fn parent<'p>(&self, path: &'p Path) -> Result<(Option<DirFd>, &'p OsStr)> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            bail!("{} names no entry in a directory", path.display());
        };
        Ok((self.dir(parent)?, name))
    }

    /// Notes that the agent itself just changed the entries of the directory
    /// `path` (a rename, a removal, a new entry), which changes its change
    /// time: the cached handle stays valid, so the next file there costs no
    /// new walk. The stamp is taken from the handle, so a path swapped
    /// meanwhile still misses.
    pub fn touched(&self, path: &Path) {
        if let Some(entry) = self.cache.borrow_mut().get_mut(path)
            && let Ok(st) = fstat(&*entry.fd)
        {
            entry.stamp = stamp(&st);
        }
    }

    /// The cached handle of `path` while the path still names that very
    /// directory, unchanged; a stale entry is dropped (a removed directory's
    /// handle is not kept open).
    fn cached(&self, path: &Path) -> Option<DirFd> {
        let mut cache = self.cache.borrow_mut();
        let entry = cache.get(path)?;
        if stat(path).is_ok_and(|now| stamp(&now) == entry.stamp) {
            return Some(Rc::clone(&entry.fd));
        }
        cache.remove(path);
        None
    }

    /// The directory `path` names and its status, reached safely.
    fn walk(&self, path: &Path) -> Result<Option<(OwnedFd, FileStat)>> {
        if !path.is_absolute() {
            bail!("{} is not an absolute path", path.display());
        }
        let root = open_path(AT_FDCWD, OsStr::new("/")).context("could not open /")?;
        let root_st = fstat(&root).context("could not stat /")?;
        // The directories from `/` to where the walk is, with their status and
        // paths for messages; `..` goes back up this, as the kernel's walk would.
        let mut reached: Vec<(OwnedFd, FileStat, PathBuf)> =
            vec![(root, root_st, PathBuf::from("/"))];
        // Components still to walk, the next one last.
        let mut todo: Vec<OsString> = components(path.as_os_str());
        let mut links = 0;
        while let Some(name) = todo.pop() {
            if name == ".." {
                if reached.len() > 1 {
                    reached.pop();
                }
                continue;
            }
            let (dir, dir_st, dir_path) = reached.last().expect("never empty");
            let here = dir_path.join(&name);
            let fd = match open_path(dir, &name) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => return Ok(None),
                Err(e) => {
                    return Err(e).with_context(|| format!("could not open {}", here.display()));
                }
            };
            let st = fstat(&fd).with_context(|| format!("could not stat {}", here.display()))?;
            match kind(&st) {
                SFlag::S_IFDIR => reached.push((fd, st, here)),
                SFlag::S_IFLNK => {
                    links += 1;
                    if links > MAX_LINKS {
                        bail!(
                            "{}: more than {MAX_LINKS} symbolic links on the way",
                            path.display()
                        );
                    }
                    self.check_link(&here, &st, dir_st, dir_path)?;
                    // The link this descriptor holds, not whatever has the name now.
                    let target = readlinkat(&fd, "")
                        .with_context(|| format!("could not read link {}", here.display()))?;
                    if target.as_bytes().starts_with(b"/") {
                        reached.truncate(1);
                    }
                    todo.extend(components(&target));
                }
                _ => bail!("{} is not a directory", here.display()),
            }
        }
        Ok(reached.pop().map(|(fd, st, _)| (fd, st)))
    }

    /// Refuses a link that someone other than root placed, or could replace.
    fn check_link(&self, link: &Path, st: &FileStat, d: &FileStat, dir_path: &Path) -> Result<()> {
        let refuse = |why: String| {
            anyhow!(
                "{} is a symbolic link {why}; Cairn does not write through it",
                link.display()
            )
        };
        if st.st_uid != self.trusted_uid {
            return Err(refuse(format!("owned by {}", super::owner_name(st.st_uid))));
        }
        if d.st_uid != self.trusted_uid {
            return Err(refuse(format!(
                "in {}, which is owned by {}",
                dir_path.display(),
                super::owner_name(d.st_uid)
            )));
        }
        if d.st_mode & 0o022 != 0 {
            return Err(refuse(format!(
                "in {}, which its group or others may write to",
                dir_path.display()
            )));
        }
        Ok(())
    }
}

/// Opens `name` in `dir` as a handle that follows nothing and reads nothing:
/// a directory to walk on from, or the link itself.
fn open_path(dir: impl AsFd, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The file type bits of `st`.
pub fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// The components of `path` to walk, the first one last; `.` and empty
/// components are dropped.
fn components(path: &OsStr) -> Vec<OsString> {
    path.as_bytes()
        .split(|&b| b == b'/')
        .rev()
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| OsStr::from_bytes(c).to_os_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn same_dir(a: &OwnedFd, b: &Path) -> bool {
        let (a, b) = (fstat(a).unwrap(), stat(b).unwrap());
        (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    }

    #[test]
    fn links_of_the_trusted_owner_in_closed_directories_are_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(base.join("usr/lib")).unwrap();
        symlink("usr/lib", base.join("lib")).unwrap();
        symlink(base.join("usr"), base.join("abs")).unwrap();
        symlink("../usr/lib", base.join("usr/up")).unwrap();
        let r = Resolver::trusting(me());
        for p in ["lib", "abs/lib", "usr/up", "usr/up/../lib", "./lib/."] {
            let fd = r.dir(&base.join(p)).unwrap().expect(p);
            assert!(same_dir(&fd, &base.join("usr/lib")), "{p}");
        }
        assert!(r.dir(&base.join("lib/missing/deeper")).unwrap().is_none());
        // The system's own links are root's, as `/var/run → /run`.
        let fd = Resolver::default().dir(Path::new("/var/run")).unwrap();
        assert!(same_dir(&fd.unwrap(), Path::new("/run")));
    }

    #[test]
    fn a_link_of_another_owner_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        std::fs::create_dir(base.join("victim")).unwrap();
        symlink(base.join("victim"), base.join(".ssh")).unwrap();
        // Trusting nobody who exists here: the link belongs to someone else.
        let err = Resolver::trusting(u32::MAX - 7)
            .dir(&base.join(".ssh"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{} is a symbolic link owned by {}; Cairn does not write through it",
                base.join(".ssh").display(),
                super::super::owner_name(me())
            )
        );
    }

    #[test]
    fn a_link_in_a_directory_others_may_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        std::fs::create_dir(base.join("shared")).unwrap();
        std::fs::create_dir(base.join("victim")).unwrap();
        symlink(base.join("victim"), base.join("shared/l")).unwrap();
        std::fs::set_permissions(base.join("shared"), std::fs::Permissions::from_mode(0o775))
            .unwrap();
        let err = Resolver::trusting(me())
            .dir(&base.join("shared/l/sub"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{} is a symbolic link in {}, which its group or others may write to; \
                 Cairn does not write through it",
                base.join("shared/l").display(),
                base.join("shared").display()
            )
        );
    }

    #[test]
    fn link_loops_end_in_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
        symlink("b", base.join("a")).unwrap();
        symlink("a", base.join("b")).unwrap();
        let err = Resolver::trusting(me()).dir(&base.join("a")).unwrap_err();
        assert!(
            err.to_string()
                .ends_with(&format!("more than {MAX_LINKS} symbolic links on the way")),
            "{err}"
        );
    }

    #[test]
    fn a_file_on_the_way_is_not_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), "").unwrap();
        let err = Resolver::default()
            .dir(&tmp.path().join("f/x"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{} is not a directory", tmp.path().join("f").display())
        );
    }

    #[test]
    fn a_cached_directory_replaced_since_is_walked_again() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        std::fs::create_dir(&d).unwrap();
        let r = Resolver::default();
        let first = r.dir(&d).unwrap().unwrap();
        assert!(Rc::ptr_eq(&first, &r.dir(&d).unwrap().unwrap()), "cached");
        std::fs::rename(&d, tmp.path().join("moved")).unwrap();
        std::fs::create_dir(&d).unwrap();
        let again = r.dir(&d).unwrap().unwrap();
        assert!(same_dir(&again, &d) && !same_dir(&first, &d));
    }
}
