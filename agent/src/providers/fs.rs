//! Files and directories, through POSIX calls ([`Posix`]). Writes are atomic: a
//! temporary file in the same directory gets its content, owner and mode, is
//! synced, and is renamed over the target, so a crash never leaves a torn file;
//! the directory is synced after a rename or removal, so the change is durable.
//!
//! Every path is reached through [`resolve`], and every change is made at the
//! directory handle it returns, on the final name with no link followed: a
//! link someone other than root placed on the way is refused, and a link at
//! the end is replaced or refused, never written, chowned or moded through.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::hash::{BuildHasher, RandomState};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::thread::LocalKey;

use anyhow::{Context, Result, anyhow, bail};
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat, readlinkat, renameat, renameat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{
    Gid, Group, Uid, UnlinkatFlags, User, fchown, fchownat, fsync, symlinkat, unlinkat,
};

pub use self::resolve::DirFd;
use self::resolve::{Resolver, kind};
use super::FileSystem;

mod resolve;

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

/// One version of a file or directory, known without reading it: which file
/// (device, inode) and which state of it (size, modification and change
/// times; a write, a new entry, a chmod or chown each move the change time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

pub fn stamp(st: &FileStat) -> Stamp {
    Stamp {
        dev: st.st_dev,
        ino: st.st_ino,
        size: st.st_size,
        mtime: (st.st_mtime, st.st_mtime_nsec),
        ctime: (st.st_ctime, st.st_ctime_nsec),
    }
}

/// The [`Stamp`] of what `path` names now, links followed: for files the
/// agent only reads, as the account files.
pub fn stamp_path(path: &Path) -> nix::Result<Stamp> {
    nix::sys::stat::stat(path).map(|st| stamp(&st))
}

/// Ownership and permissions for something being created or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// This host's file system, every path reached from `/` through [`Resolver`]
/// and every change made at the directory it reached; owners are named
/// through the C library (NSS).
#[derive(Default)]
pub struct Posix {
    paths: Resolver,
    /// Directories already rid of temporary files an earlier run left behind.
    swept: RefCell<HashSet<(u64, u64)>>,
}

/// What temporary files of an atomic write are called, after a dot and the
/// name they become: the next write into that directory knows its own.
const TEMP_MARK: &str = ".cairn-tmp.";

impl Posix {
    /// A file system that trusts the links of `uid` instead of root's.
    #[cfg(test)]
    pub fn trusting(uid: u32) -> Self {
        Posix {
            paths: Resolver::trusting(uid),
            swept: RefCell::default(),
        }
    }

    /// The directory holding `path` and the name of `path` in it; an error
    /// naming that directory, and the first missing one above it, when it
    /// does not exist.
    fn parent_of<'p>(&self, path: &'p Path) -> Result<(DirFd, &'p OsStr)> {
        match self.paths.parent(path)? {
            (Some(dir), name) => Ok((dir, name)),
            (None, _) => {
                let parent = path.parent().unwrap_or(path);
                let first_missing = parent
                    .ancestors()
                    .take_while(|a| matches!(self.paths.dir(a), Ok(None)))
                    .last()
                    .unwrap_or(parent);
                if first_missing == parent {
                    bail!("the parent directory {} does not exist", parent.display())
                }
                bail!(
                    "the parent directory {} does not exist (nor does {})",
                    parent.display(),
                    first_missing.display()
                )
            }
        }
    }

    /// Notes that the agent changed the entries of the directory holding
    /// `path`, so its cached handle stays in use (see [`Resolver::touched`]).
    fn changed_entries_of(&self, path: &Path) {
        if let Some(parent) = path.parent() {
            self.paths.touched(parent);
        }
    }

    /// The directory `path`, reached as every change here reaches it
    /// (refusing a link someone other than root placed); `None` when it does
    /// not exist. For files kept open, as the agent's run lock.
    pub fn dir(&self, path: &Path) -> Result<Option<DirFd>> {
        self.paths.dir(path)
    }

    /// The content of the regular file `path`, reached as every change here
    /// reaches it (no link someone other than root placed is followed, nor a
    /// link at `path` itself), or `None` when it does not exist. A file of
    /// more than `limit` bytes is an error, read no further. For files the
    /// agent reads but does not manage, such as cloud-init's instance data.
    pub fn read_bounded(&self, path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
        let read = || -> Result<Option<Vec<u8>>> {
            let (Some(dir), name) = self.paths.parent(path)? else {
                return Ok(None);
            };
            // Non-blocking: a pipe swapped in for the file must not hang.
            let fd = match open_at(&dir, name, OFlag::O_RDONLY | OFlag::O_NONBLOCK) {
                Ok(fd) => fd,
                Err(e) if e.downcast_ref::<Errno>() == Some(&Errno::ENOENT) => return Ok(None),
                Err(e) => return Err(e),
            };
            if kind(&fstat(&fd)?) != SFlag::S_IFREG {
                bail!("not a regular file");
            }
            let mut data = Vec::new();
            fs::File::from(fd).take(limit + 1).read_to_end(&mut data)?;
            if data.len() as u64 > limit {
                bail!("it is larger than {limit} bytes");
            }
            Ok(Some(data))
        };
        read().with_context(|| format!("could not read {}", path.display()))
    }

    /// Removes the temporary files (and links) an interrupted write left in
    /// `dir`, once per directory and run.
    fn sweep(&self, dir: &DirFd, path: &Path) -> Result<()> {
        let st = fstat(&**dir)?;
        if !self.swept.borrow_mut().insert((st.st_dev, st.st_ino)) {
            return Ok(());
        }
        let mut list = Dir::openat(
            &**dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let leftovers: Vec<OsString> = list
            .iter()
            .filter_map(|e| e.ok())
            .filter(|e| matches!(e.file_type(), Some(Type::File | Type::Symlink)))
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
            .filter(|n| is_temp_name(n))
            .collect();
        for name in leftovers {
            match unlinkat(&**dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) => self.changed_entries_of(path),
                Err(Errno::ENOENT) => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("could not remove the leftover {}", name.to_string_lossy())
                    });
                }
            }
        }
        Ok(())
    }
}

impl FileSystem for Posix {
    fn stat(&self, path: &Path) -> Result<Option<Meta>> {
        let look = || -> Result<Option<Meta>> {
            let (Some(dir), name) = self.paths.parent(path)? else {
                return Ok(None);
            };
            match fstatat(&*dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => Ok(Some(meta(&st))),
                Err(Errno::ENOENT) => Ok(None),
                Err(e) => Err(e.into()),
            }
        };
        look().with_context(|| format!("could not stat {}", path.display()))
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>> {
        let read = || -> Result<Vec<u8>> {
            let (dir, name) = self.parent_of(path)?;
            read_file(&dir, name).map(|(_, data)| data)
        };
        read().with_context(|| format!("could not read {}", path.display()))
    }

    fn stat_read(&self, path: &Path) -> Result<Option<(Meta, Option<Vec<u8>>)>> {
        let look = || -> Result<Option<(Meta, Option<Vec<u8>>)>> {
            let (Some(dir), name) = self.paths.parent(path)? else {
                return Ok(None);
            };
            // The type first, so nothing but a regular file is ever opened;
            // then the status of what was opened, so both describe one file.
            let before = match fstatat(&*dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => meta(&st),
                Err(Errno::ENOENT) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            if before.kind != FileKind::File {
                return Ok(Some((before, None)));
            }
            let (st, data) = read_file(&dir, name)?;
            Ok(Some((meta(&st), Some(data))))
        };
        look().with_context(|| format!("could not read {}", path.display()))
    }

    fn write_atomic(&self, path: &Path, data: &[u8], own: Ownership) -> Result<()> {
        self.write_atomic_checked(path, data, own, &mut |_| Ok(()))
    }

    fn write_atomic_checked(
        &self,
        path: &Path,
        data: &[u8],
        own: Ownership,
        accept: &mut dyn FnMut(&Path) -> Result<()>,
    ) -> Result<()> {
        let mut write = || -> Result<()> {
            let (dir, name) = self.parent_of(path)?;
            self.sweep(&dir, path)?;
            let (temp, fd) = create_temp(&dir, name)?;
            let fill = || -> Result<()> {
                let mut f = fs::File::from(fd);
                f.write_all(data)
                    .context("could not write the temporary file")?;
                fchown(
                    &f,
                    Some(Uid::from_raw(own.uid)),
                    Some(Gid::from_raw(own.gid)),
                )
                .context("could not set owner")?;
                fchmod(&f, Mode::from_bits_truncate(own.mode)).context("could not set mode")?;
                f.sync_all().context("could not sync")?;
                // The temporary file as it will go live, under the path the
                // resolver reached its directory by.
                accept(&path.with_file_name(&temp))?;
                // Replaces a link at `name` rather than writing through it.
                renameat(&*dir, temp.as_os_str(), &*dir, name)
                    .context("could not rename into place")?;
                Ok(())
            };
            let filled = fill();
            if filled.is_err() {
                let _ = unlinkat(&*dir, temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            }
            self.changed_entries_of(path);
            filled?;
            sync_dir(&dir)
        };
        write().with_context(|| format!("could not write {}", path.display()))
    }

    fn create_dir(&self, path: &Path, own: Ownership) -> Result<()> {
        let create = || -> Result<()> {
            let (dir, name) = self.parent_of(path)?;
            // Nobody else's until it has its owner and mode.
            mkdirat(&*dir, name, Mode::S_IRWXU)?;
            self.changed_entries_of(path);
            let fd = match open_at(&dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
                Err(e) if e.downcast_ref() == Some(&Errno::ENOENT) => {
                    bail!(
                        "{} does not exist: someone moved it away as it was made",
                        path.display()
                    )
                }
                opened => opened?,
            };
            fchown(
                &fd,
                Some(Uid::from_raw(own.uid)),
                Some(Gid::from_raw(own.gid)),
            )?;
            fchmod(&fd, Mode::from_bits_truncate(own.mode))?;
            sync_dir(&dir)
        };
        create().with_context(|| format!("could not create directory {}", path.display()))
    }

    fn symlink(&self, path: &Path, target: &OsStr, uid: u32, gid: u32) -> Result<()> {
        let link = || -> Result<()> {
            let (dir, name) = self.parent_of(path)?;
            self.sweep(&dir, path)?;
            // Made, owned and renamed into place at the directory handle: the
            // path is never without a link, and never one of someone else.
            let temp = create_temp_link(&dir, name, target)?;
            let place = || -> Result<()> {
                fchownat(
                    &*dir,
                    temp.as_os_str(),
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .context("could not set owner")?;
                renameat(&*dir, temp.as_os_str(), &*dir, name)
                    .context("could not rename into place")?;
                Ok(())
            };
            let placed = place();
            if placed.is_err() {
                let _ = unlinkat(&*dir, temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            }
            self.changed_entries_of(path);
            placed?;
            sync_dir(&dir)
        };
        link().with_context(|| format!("could not make the link {}", path.display()))
    }

    fn read_link(&self, path: &Path) -> Result<OsString> {
        let read = || -> Result<OsString> {
            let (dir, name) = self.parent_of(path)?;
            Ok(readlinkat(&*dir, name)?)
        };
        read().with_context(|| format!("could not read the link {}", path.display()))
    }

    fn write_in_place(&self, path: &Path, data: &[u8]) -> Result<()> {
        let write = || -> Result<()> {
            let (dir, name) = self.parent_of(path)?;
            let fd = open_at(&dir, name, OFlag::O_WRONLY | OFlag::O_NONBLOCK)?;
            if kind(&fstat(&fd)?) != SFlag::S_IFREG {
                bail!("not a regular file");
            }
            // One write: the kernel reads a setting from each write alone.
            let n = nix::unistd::write(&fd, data)?;
            if n != data.len() {
                bail!("only {n} of {} bytes were taken", data.len());
            }
            Ok(())
        };
        write().with_context(|| format!("could not write {}", path.display()))
    }

    fn set_owner(&self, path: &Path, uid: u32, gid: u32) -> Result<()> {
        let chown = || -> Result<()> {
            let (dir, name) = self.parent_of(path)?;
            // The owner goes to what was opened and checked: a link itself,
            // never its target.
            let fd = openat(
                &*dir,
                name,
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            refuse_shared(&fstat(&fd)?)?;
            fchownat(
                &fd,
                "",
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
            Ok(())
        };
        chown().with_context(|| format!("could not change owner of {}", path.display()))
    }

    fn set_mode(&self, path: &Path, mode: u32) -> Result<()> {
        let chmod = || -> Result<()> {
            let (dir, name) = self.parent_of(path)?;
            // The mode goes to what was opened: never a link's target.
            let fd = open_at(&dir, name, OFlag::O_RDONLY | OFlag::O_NONBLOCK)?;
            let st = fstat(&fd)?;
            if !matches!(kind(&st), SFlag::S_IFREG | SFlag::S_IFDIR) {
                bail!("not a regular file or directory");
            }
            refuse_shared(&st)?;
            fchmod(&fd, Mode::from_bits_truncate(mode))?;
            Ok(())
        };
        chmod().with_context(|| format!("could not change mode of {}", path.display()))
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        let remove = || -> Result<()> {
            let (dir, name) = self.parent_of(path)?;
            unlinkat(&*dir, name, UnlinkatFlags::NoRemoveDir)?;
            self.changed_entries_of(path);
            sync_dir(&dir)
        };
        remove().with_context(|| format!("could not remove {}", path.display()))
    }

    fn remove_dir_all(&self, path: &Path) -> Result<()> {
        let remove = || -> Result<()> {
            let (dir, name) = self.parent_of(path)?;
            let removed = remove_tree(&*dir, name);
            self.changed_entries_of(path);
            removed?;
            sync_dir(&dir)
        };
        remove().with_context(|| format!("could not remove directory {}", path.display()))
    }

    fn list_dir(&self, path: &Path) -> Result<Vec<OsString>> {
        let list = || -> Result<Vec<OsString>> {
            let dir = self
                .paths
                .dir(path)?
                .ok_or_else(|| anyhow!("it does not exist"))?;
            let mut entries = Dir::openat(
                &*dir,
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            let mut names = Vec::new();
            for entry in entries.iter() {
                let name = entry?.file_name().to_bytes().to_vec();
                if name != b"." && name != b".." {
                    names.push(OsString::from_vec(name));
                }
            }
            names.sort();
            Ok(names)
        };
        list().with_context(|| format!("could not list directory {}", path.display()))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let rename = || -> Result<()> {
            let (from_dir, from_name) = self.parent_of(from)?;
            let (to_dir, to_name) = self.parent_of(to)?;
            match renameat2(
                &*from_dir,
                from_name,
                &*to_dir,
                to_name,
                RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => {}
                Err(Errno::EXDEV) => bail!("they are on different file systems"),
                Err(e) => return Err(e.into()),
            }
            self.changed_entries_of(from);
            self.changed_entries_of(to);
            sync_dir(&from_dir)?;
            sync_dir(&to_dir)
        };
        rename().with_context(|| format!("could not move {} to {}", from.display(), to.display()))
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
        owner_name(uid)
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

fn meta(st: &FileStat) -> Meta {
    let kind = match kind(st) {
        SFlag::S_IFREG => FileKind::File,
        SFlag::S_IFDIR => FileKind::Directory,
        SFlag::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    };
    Meta {
        kind,
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode & 0o7777,
    }
}

/// Opens `name` in `dir` with `flags`, never following a link there.
fn open_at(dir: &DirFd, name: &OsStr, flags: OFlag) -> Result<OwnedFd> {
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    match openat(&**dir, name, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::ELOOP) => bail!("it is a symbolic link; Cairn does not follow it"),
        // Linux checks O_DIRECTORY before O_NOFOLLOW: a link met where a
        // directory was asked for reads ENOTDIR, not ELOOP.
        Err(Errno::ENOTDIR)
            if flags.contains(OFlag::O_DIRECTORY)
                && fstatat(&**dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| kind(&st) == SFlag::S_IFLNK) =>
        {
            bail!("it is a symbolic link; Cairn does not follow it")
        }
        Err(e) => Err(e.into()),
    }
}

/// The status and content of the regular file `name` in `dir`.
fn read_file(dir: &DirFd, name: &OsStr) -> Result<(FileStat, Vec<u8>)> {
    // Non-blocking: a pipe swapped in for the file must not hang the run.
    let fd = open_at(dir, name, OFlag::O_RDONLY | OFlag::O_NONBLOCK)?;
    let st = fstat(&fd)?;
    if kind(&st) != SFlag::S_IFREG {
        bail!("not a regular file");
    }
    // Sized from the status just read: `File::read_to_end` would ask again.
    let mut data = Vec::with_capacity(usize::try_from(st.st_size).unwrap_or(0));
    fs::File::from(fd).take(u64::MAX).read_to_end(&mut data)?;
    Ok((st, data))
}

/// Refuses to change the owner or mode of a regular file with other names
/// (hard links): that would change every one of them, and one may be a file
/// its owner had no right to change (with `fs.protected_hardlinks` off).
fn refuse_shared(st: &FileStat) -> Result<()> {
    if kind(st) == SFlag::S_IFREG && st.st_nlink > 1 {
        bail!(
            "it is one of {} hard links to one file; Cairn does not change the owner or mode \
             of a file shared with other names",
            st.st_nlink
        );
    }
    Ok(())
}

/// Whether `name` is a temporary file of an atomic write.
fn is_temp_name(name: &OsStr) -> bool {
    let name = name.as_bytes();
    name.starts_with(b".")
        && name
            .windows(TEMP_MARK.len())
            .any(|w| w == TEMP_MARK.as_bytes())
}

/// A new name for a temporary entry for `name`: `.NAME.cairn-tmp.RANDOM`
/// (at most 28 bytes longer than `name`, as a file's `validate` is bounded
/// at load).
fn temp_name(name: &OsStr) -> OsString {
    // Room for the mark and the random part within NAME_MAX (255 bytes).
    let stem = &name.as_bytes()[..name.len().min(200)];
    let mut temp = b".".to_vec();
    temp.extend_from_slice(stem);
    temp.extend_from_slice(TEMP_MARK.as_bytes());
    temp.extend_from_slice(format!("{:016x}", RandomState::new().hash_one(0u8)).as_bytes());
    OsString::from_vec(temp)
}

/// Creates a new symbolic link to `target` for `name` in `dir`, under a
/// temporary name, which it returns.
fn create_temp_link(dir: &DirFd, name: &OsStr, target: &OsStr) -> Result<OsString> {
    let mut last = None;
    for _ in 0..8 {
        let temp = temp_name(name);
        match symlinkat(target, &**dir, temp.as_os_str()) {
            Ok(()) => return Ok(temp),
            Err(e @ Errno::EEXIST) => last = Some(e),
            Err(e) => return Err(e).context("could not create a temporary link"),
        }
    }
    Err(anyhow!(last.unwrap_or(Errno::EEXIST))).context("could not create a temporary link")
}

/// Creates a new, empty temporary file for `name` in `dir`, readable by its
/// owner only (see [`temp_name`]).
fn create_temp(dir: &DirFd, name: &OsStr) -> Result<(OsString, OwnedFd)> {
    let mut last = None;
    for _ in 0..8 {
        let temp = temp_name(name);
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        match openat(
            &**dir,
            temp.as_os_str(),
            flags | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        ) {
            Ok(fd) => return Ok((temp, fd)),
            Err(e @ Errno::EEXIST) => last = Some(e),
            Err(e) => return Err(e).context("could not create a temporary file"),
        }
    }
    Err(anyhow!(last.unwrap_or(Errno::EEXIST))).context("could not create a temporary file")
}

/// Makes the entries of `dir` durable: a rename or removal survives a crash.
fn sync_dir(dir: &DirFd) -> Result<()> {
    let fd = openat(
        &**dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    fsync(&fd).context("could not sync the directory")?;
    Ok(())
}

/// Removes the directory `name` in `parent` with everything in it, entering
/// no link: a link inside is removed, never followed.
fn remove_tree(parent: &impl AsFd, name: &OsStr) -> Result<()> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir = Dir::openat(parent, name, flags, Mode::empty())
        .with_context(|| format!("could not open {}", name.to_string_lossy()))?;
    let entries: Vec<(OsString, Option<Type>)> = dir
        .iter()
        .map(|e| {
            e.map(|e| {
                (
                    OsStr::from_bytes(e.file_name().to_bytes()).to_os_string(),
                    e.file_type(),
                )
            })
        })
        .collect::<nix::Result<_>>()?;
    for (entry, file_type) in entries {
        if entry == "." || entry == ".." {
            continue;
        }
        let is_dir = match file_type {
            Some(t) => t == Type::Directory,
            None => fstatat(&dir, entry.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| kind(&st) == SFlag::S_IFDIR),
        };
        if is_dir {
            remove_tree(&dir, &entry).with_context(|| format!("in {}", name.to_string_lossy()))?;
        } else {
            unlinkat(&dir, entry.as_os_str(), UnlinkatFlags::NoRemoveDir).with_context(|| {
                format!(
                    "could not remove {}/{}",
                    name.to_string_lossy(),
                    entry.to_string_lossy()
                )
            })?;
        }
    }
    unlinkat(parent, name, UnlinkatFlags::RemoveDir)
        .with_context(|| format!("could not remove {}", name.to_string_lossy()))?;
    Ok(())
}

/// The name of the user owning `uid`, or the number when none has it.
fn owner_name(uid: u32) -> String {
    cached_name(&USER_NAMES, "/etc/passwd", uid, |uid| {
        User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
    })
}

/// Names already looked up, valid while the account file is unchanged. glibc
/// rereads `/etc/passwd` or `/etc/group` on every lookup; a converged run asks
/// for the same few owners of every file.
#[derive(Default)]
struct NameCache {
    stamp: Option<Stamp>,
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
    // A user added during the run (even by a rename over the file) makes the
    // cache start again.
    let stamp = stamp_path(Path::new(file)).ok();
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
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    use super::*;

    fn mine(mode: u32) -> Ownership {
        Ownership {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mode,
        }
    }

    /// A file system that follows no link of this test's user, as the agent
    /// follows none of a user's.
    fn wary() -> Posix {
        Posix::trusting(u32::MAX - 7)
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn atomic_write_sets_mode_before_rename_and_replaces_links() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        std::os::unix::fs::symlink("/etc/hostname", &target).unwrap();
        let files = Posix::default();
        files.write_atomic(&target, b"hello", mine(0o600)).unwrap();
        let m = files.stat(&target).unwrap().unwrap();
        assert_eq!((m.kind, m.mode), (FileKind::File, 0o600));
        assert_eq!(files.read(&target).unwrap(), b"hello");
        // The link target was not written through.
        assert_ne!(files.read(Path::new("/etc/hostname")).unwrap(), b"hello");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn status_and_content_come_from_one_file_and_links_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, "content").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        symlink(&f, dir.path().join("l")).unwrap();
        let files = Posix::default();
        let (m, data) = files.stat_read(&f).unwrap().unwrap();
        assert_eq!((m.kind, m.mode), (FileKind::File, 0o640));
        assert_eq!(data.as_deref(), Some(&b"content"[..]));
        let (m, data) = files.stat_read(&dir.path().join("l")).unwrap().unwrap();
        assert_eq!((m.kind, data), (FileKind::Symlink, None));
        assert!(files.stat_read(&dir.path().join("none")).unwrap().is_none());
        assert!(
            files
                .stat_read(&dir.path().join("none/f"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_missing_parent_is_named_with_the_first_missing_directory_above() {
        let dir = tempfile::tempdir().unwrap();
        let files = Posix::default();
        let err = |path: &Path| format!("{:#}", files.create_dir(path, mine(0o755)).unwrap_err());
        let (a, b) = (dir.path().join("a"), dir.path().join("a/b"));
        assert_eq!(
            err(&a.join("c")),
            format!(
                "could not create directory {}: the parent directory {} does not exist",
                a.join("c").display(),
                a.display()
            )
        );
        assert_eq!(
            err(&b.join("c")),
            format!(
                "could not create directory {}: the parent directory {} does not exist (nor does {})",
                b.join("c").display(),
                b.display(),
                a.display()
            )
        );
    }

    #[test]
    fn a_write_removes_what_an_interrupted_one_left() {
        let dir = tempfile::tempdir().unwrap();
        let leftover = dir.path().join(".other.conf.cairn-tmp.0123456789abcdef");
        fs::write(&leftover, "half").unwrap();
        fs::write(dir.path().join("keep.cairn-tmp.txt"), "not ours").unwrap();
        Posix::default()
            .write_atomic(&dir.path().join("f"), b"x", mine(0o644))
            .unwrap();
        assert!(!leftover.exists());
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["f", "keep.cairn-tmp.txt"]);
    }

    #[test]
    fn nothing_is_changed_below_a_link_of_another_owner() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("keys"), "root's").unwrap();
        fs::create_dir(victim.join("sub")).unwrap();
        let ssh = dir.path().join(".ssh");
        symlink(&victim, &ssh).unwrap();
        let files = wary();
        let refused = format!("{} is a symbolic link owned by", ssh.display());
        let errors = [
            files.stat(&ssh.join("keys")).unwrap_err(),
            files.read(&ssh.join("keys")).unwrap_err(),
            files
                .write_atomic(&ssh.join("keys"), b"attacker's", mine(0o600))
                .unwrap_err(),
            files.set_owner(&ssh.join("keys"), 0, 0).unwrap_err(),
            files.set_mode(&ssh.join("keys"), 0o666).unwrap_err(),
            files.remove_file(&ssh.join("keys")).unwrap_err(),
            files.remove_dir_all(&ssh.join("sub")).unwrap_err(),
            files.create_dir(&ssh.join("new"), mine(0o755)).unwrap_err(),
            files
                .symlink(&ssh.join("keys"), OsStr::new("/x"), 0, 0)
                .unwrap_err(),
            files.read_link(&ssh.join("keys")).unwrap_err(),
            files
                .write_in_place(&ssh.join("keys"), b"attacker's")
                .unwrap_err(),
        ];
        for e in errors {
            assert!(format!("{e:#}").contains(&refused), "{e:#}");
        }
        assert_eq!(fs::read(victim.join("keys")).unwrap(), b"root's");
        assert_eq!(mode_of(&victim.join("keys")), 0o644);
        assert!(victim.join("sub").is_dir() && !victim.join("new").exists());
    }

    #[test]
    fn a_link_replaces_a_link_or_a_file_whole_with_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let files = Posix::default();
        let me = mine(0);
        let link = dir.path().join("l");
        files
            .symlink(&link, OsStr::new("first"), me.uid, me.gid)
            .unwrap();
        files
            .symlink(&link, OsStr::new("../second"), me.uid, me.gid)
            .unwrap();
        assert_eq!(files.read_link(&link).unwrap(), "../second");
        let st = fs::symlink_metadata(&link).unwrap();
        assert_eq!((st.uid(), st.gid()), (me.uid, me.gid));
        let file = dir.path().join("f");
        fs::write(&file, "replaced").unwrap();
        files
            .symlink(&file, OsStr::new("l"), me.uid, me.gid)
            .unwrap();
        assert_eq!(files.read_link(&file).unwrap(), "l");
        // A directory is never replaced, and no temporary link is left.
        fs::create_dir(dir.path().join("d")).unwrap();
        let err = files
            .symlink(&dir.path().join("d"), OsStr::new("x"), me.uid, me.gid)
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("could not rename into place"),
            "{err:#}"
        );
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["d", "f", "l"]);
    }

    #[test]
    fn writing_in_place_keeps_the_file_and_follows_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let files = Posix::default();
        let setting = dir.path().join("setting");
        fs::write(&setting, "0\n").unwrap();
        let before = fs::metadata(&setting).unwrap().ino();
        files.write_in_place(&setting, b"1\n").unwrap();
        assert_eq!(fs::read(&setting).unwrap(), b"1\n");
        assert_eq!(fs::metadata(&setting).unwrap().ino(), before);
        let link = dir.path().join("link");
        symlink(&setting, &link).unwrap();
        let err = files.write_in_place(&link, b"2\n").unwrap_err();
        assert!(format!("{err:#}").contains("is a symbolic link"), "{err:#}");
        assert!(
            files
                .write_in_place(&dir.path().join("none"), b"2")
                .is_err()
        );
        assert_eq!(fs::read(&setting).unwrap(), b"1\n");
    }

    #[test]
    fn a_link_at_the_end_is_never_moded_or_chowned_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "secret").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("f");
        symlink(&victim, &link).unwrap();
        let files = Posix::default();
        let err = files.set_mode(&link, 0o644).unwrap_err();
        assert!(format!("{err:#}").contains("is a symbolic link"), "{err:#}");
        assert_eq!(mode_of(&victim), 0o600);
        // The owner of the link itself, not of its target.
        let me = mine(0);
        files.set_owner(&link, me.uid, me.gid).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"secret");
    }

    #[test]
    fn removing_a_tree_removes_links_in_it_not_their_targets() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), "keep").unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), "").unwrap();
        symlink(&outside, tree.join("a/link")).unwrap();
        let files = Posix::default();
        assert!(files.dir(&tree.join("a")).unwrap().is_some(), "cached");
        files.remove_dir_all(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep");
        // A tree made again at the same path is the new one, not the cached old one.
        fs::create_dir_all(tree.join("a")).unwrap();
        files
            .write_atomic(&tree.join("a/f"), b"new", mine(0o644))
            .unwrap();
        assert_eq!(fs::read(tree.join("a/f")).unwrap(), b"new");
    }

    #[test]
    fn a_directory_is_made_with_its_owner_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let files = Posix::default();
        files.create_parents(&dir.path().join("x/y/z")).unwrap();
        assert!(dir.path().join("x/y").is_dir() && !dir.path().join("x/y/z").exists());
        files
            .create_dir(&dir.path().join("x/y/z"), mine(0o2750))
            .unwrap();
        let m = files.stat(&dir.path().join("x/y/z")).unwrap().unwrap();
        assert_eq!((m.kind, m.mode), (FileKind::Directory, 0o2750));
    }

    #[test]
    fn a_file_with_other_names_is_never_moded_or_chowned_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "secret").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        let managed = dir.path().join("f");
        fs::hard_link(&victim, &managed).unwrap();
        let files = Posix::default();
        let me = mine(0);
        for e in [
            files.set_mode(&managed, 0o644).unwrap_err(),
            files.set_owner(&managed, me.uid, me.gid + 1).unwrap_err(),
        ] {
            assert!(
                format!("{e:#}").ends_with(
                    "it is one of 2 hard links to one file; Cairn does not change the owner \
                     or mode of a file shared with other names"
                ),
                "{e:#}"
            );
        }
        let st = fs::metadata(&victim).unwrap();
        assert_eq!((st.mode() & 0o7777, st.gid()), (0o600, me.gid));
        // A write gives the managed name its own file.
        files.write_atomic(&managed, b"mine", mine(0o644)).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"secret");
        assert_eq!(mode_of(&victim), 0o600);
    }

    #[test]
    fn the_agents_own_changes_keep_a_directory_cached() {
        let dir = tempfile::tempdir().unwrap();
        let files = Posix::default();
        let first = files.paths.dir(dir.path()).unwrap().unwrap();
        files
            .write_atomic(&dir.path().join("a"), b"a", mine(0o644))
            .unwrap();
        files
            .create_dir(&dir.path().join("d"), mine(0o755))
            .unwrap();
        files.remove_file(&dir.path().join("a")).unwrap();
        files.remove_dir_all(&dir.path().join("d")).unwrap();
        let again = files.paths.dir(dir.path()).unwrap().unwrap();
        assert!(std::rc::Rc::ptr_eq(&first, &again), "walked again");
        // Someone else's change still makes the next use walk again.
        fs::write(dir.path().join("b"), "b").unwrap();
        let after = files.paths.dir(dir.path()).unwrap().unwrap();
        assert!(
            !std::rc::Rc::ptr_eq(&first, &after),
            "cached across a foreign change"
        );
    }
}
