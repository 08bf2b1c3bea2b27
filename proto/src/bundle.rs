//! A role as a set of files in memory, and its content digest.
//!
//! The agent reads a role directory into a bundle, the server stores bundles; both
//! validate the bundle, never the directory, so they agree on what a role is.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};
use sha2::{Digest, Sha256};

use crate::pb;

/// File name of the role manifest inside a bundle.
pub const MANIFEST: &str = "role.toml";

/// Files of one role, keyed by their `/`-separated path relative to the role root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleBundle {
    files: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("could not read role directory {}", .path.display())]
    Walk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: symbolic links are not allowed in a role (copy the file in instead)", .0.display())]
    Symlink(PathBuf),
    #[error("{}: not a regular file or directory", .0.display())]
    Special(PathBuf),
    #[error("invalid path {0:?} in role: {1}")]
    BadPath(String, &'static str),
    #[error("file #{index}: its path is not valid UTF-8 ({lossy:?})")]
    NotUtf8 { index: usize, lossy: String },
    #[error("file {0:?} appears twice in the role")]
    Duplicate(String),
    #[error("{file:?} is a file, and a directory of {inside:?}: a role cannot hold both")]
    FileAndDirectory { file: String, inside: String },
}

impl RoleBundle {
    /// Reads every regular file below `dir`. Symbolic links and special files are
    /// refused rather than followed, so a bundle never reaches outside its role.
    /// Each entry is opened without following links, relative to the directory
    /// listing it, and what is read is what was checked: an entry swapped for a
    /// link while the role is read is refused, not followed.
    pub fn from_dir(dir: &Path) -> Result<Self, BundleError> {
        let walk_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: Errno| BundleError::Walk {
                path,
                source: e.into(),
            }
        };
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let root = openat(AT_FDCWD, dir, flags, Mode::empty()).map_err(walk_err(dir))?;
        let mut bundle = RoleBundle::default();
        // Directories still to read: their handle, path and path in the role.
        let mut todo = vec![(root, dir.to_path_buf(), String::new())];
        while let Some((fd, path, rel)) = todo.pop() {
            let mut listing = Dir::from_fd(fd).map_err(walk_err(&path))?;
            let mut names = Vec::new();
            for entry in listing.iter() {
                let name = entry
                    .map_err(walk_err(&path))?
                    .file_name()
                    .to_bytes()
                    .to_vec();
                if name != b"." && name != b".." {
                    names.push(OsString::from_vec(name));
                }
            }
            names.sort();
            for name in names {
                let entry_path = path.join(&name);
                let entry_rel = match name.to_str() {
                    Some(n) if rel.is_empty() => n.to_string(),
                    Some(n) => format!("{rel}/{n}"),
                    None => {
                        let lossy = entry_path.strip_prefix(dir).unwrap_or(&entry_path);
                        return Err(BundleError::BadPath(
                            lossy.to_string_lossy().into(),
                            "not UTF-8",
                        ));
                    }
                };
                match open_entry(&listing, &name, &entry_path)? {
                    Entry::Dir(fd) => todo.push((fd, entry_path, entry_rel)),
                    Entry::File(mut file) => {
                        let mut data = Vec::new();
                        file.read_to_end(&mut data)
                            .map_err(|source| BundleError::Read {
                                path: entry_path,
                                source,
                            })?;
                        bundle.insert(entry_rel, data)?;
                    }
                }
            }
        }
        Ok(bundle)
    }

    /// Adds a file. The path must be relative, `/`-separated, without `.` or `..`
    /// components, and fit on disk next to the others (see `check_path`; no file
    /// may be the directory of another): what a bundle received over the wire is
    /// checked the same way.
    pub fn insert(&mut self, path: String, data: Vec<u8>) -> Result<(), BundleError> {
        check_path(&path)?;
        let conflict = |file: &str, inside: &str| {
            Err(BundleError::FileAndDirectory {
                file: file.to_string(),
                inside: inside.to_string(),
            })
        };
        for (i, _) in path.match_indices('/') {
            if self.files.contains_key(&path[..i]) {
                return conflict(&path[..i], &path);
            }
        }
        let below = format!("{path}/");
        if let Some((inside, _)) = self.files.range(below.clone()..).next()
            && inside.starts_with(&below)
        {
            return conflict(&path, inside);
        }
        self.files.insert(path, data);
        Ok(())
    }

    /// The wire form: files in path order, so equal bundles encode equally.
    pub fn to_wire(&self) -> pb::Bundle {
        pb::Bundle {
            files: self
                .files()
                .map(|(p, c)| pb::BundleFile {
                    path: p.as_bytes().to_vec(),
                    content: c.to_vec(),
                })
                .collect(),
        }
    }

    /// From the wire, checking every path as [`RoleBundle::insert`] does and
    /// refusing names that are not UTF-8 and files sent twice.
    pub fn from_wire(wire: pb::Bundle) -> Result<Self, BundleError> {
        let mut bundle = RoleBundle::default();
        for (i, f) in wire.files.into_iter().enumerate() {
            let path = String::from_utf8(f.path).map_err(|e| BundleError::NotUtf8 {
                index: i + 1,
                lossy: shown(&String::from_utf8_lossy(e.as_bytes())),
            })?;
            if bundle.files.contains_key(&path) {
                return Err(BundleError::Duplicate(shown(&path)));
            }
            bundle.insert(path, f.content)?;
        }
        Ok(bundle)
    }

    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }

    pub fn files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(p, d)| (p.as_str(), d.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// `sha256:` + hex over the canonical form: a version tag, then for every file
    /// in path order its path and content, each prefixed by its length. Length
    /// prefixes make the encoding unambiguous; the order makes it independent of
    /// how the files were read.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"cairn-role-bundle-v1\n");
        for (path, data) in &self.files {
            h.update((path.len() as u64).to_be_bytes());
            h.update(path.as_bytes());
            h.update((data.len() as u64).to_be_bytes());
            h.update(data);
        }
        format!("sha256:{}", hex(&h.finalize()))
    }
}

/// `sha256:` and the first 12 hex digits of a [`RoleBundle::digest`]: enough to
/// tell versions apart for people. Anything else (another algorithm, a
/// malformed digest from outside) comes back whole.
pub fn short_digest(digest: &str) -> &str {
    const SHORT: usize = "sha256:".len() + 12;
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() > 12 && hex.bytes().take(12).all(|b| b.is_ascii_hexdigit()) => {
            &digest[..SHORT]
        }
        _ => digest,
    }
}

/// A directory entry of a role, opened.
enum Entry {
    Dir(OwnedFd),
    File(File),
}

/// Opens `name` in `dir`, refusing links and special files. The type is
/// read before opening, so no device is ever opened, and again from the
/// opened descriptor, so a swap in between is refused too.
fn open_entry(dir: &Dir, name: &OsString, path: &Path) -> Result<Entry, BundleError> {
    let read_err = |e: Errno| BundleError::Read {
        path: path.to_path_buf(),
        source: e.into(),
    };
    let kind = |st: &nix::sys::stat::FileStat| {
        SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
    };
    let before =
        kind(&fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(read_err)?);
    let flags = match before {
        SFlag::S_IFLNK => return Err(BundleError::Symlink(path.to_path_buf())),
        SFlag::S_IFDIR => OFlag::O_DIRECTORY,
        SFlag::S_IFREG => OFlag::empty(),
        _ => return Err(BundleError::Special(path.to_path_buf())),
    };
    // Non-blocking: a pipe swapped in must not hang the read.
    let flags = flags
        | OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = match openat(dir, name.as_os_str(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ELOOP) => return Err(BundleError::Symlink(path.to_path_buf())),
        Err(e) => return Err(read_err(e)),
    };
    match kind(&fstat(&fd).map_err(read_err)?) {
        k if k != before => Err(BundleError::Special(path.to_path_buf())),
        SFlag::S_IFDIR => Ok(Entry::Dir(fd)),
        _ => Ok(Entry::File(File::from(fd))),
    }
}

/// A path that can be written below a directory on any Linux file system:
/// the rule of [`crate::role::check_rel_path`].
fn check_path(path: &str) -> Result<(), BundleError> {
    crate::role::check_rel_path(path).map_err(|why| BundleError::BadPath(shown(path), why))
}

/// A path from outside as an error quotes it: at most 255 characters of it.
fn shown(path: &str) -> String {
    crate::role::clip_to(path, 255).into_owned()
}

/// `bytes` as lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_digests_keep_twelve_hex_digits() {
        let mut b = RoleBundle::default();
        b.insert("role.toml".into(), b"x".to_vec()).unwrap();
        let full = b.digest();
        assert_eq!(short_digest(&full), &full[..19]);
        assert_eq!(
            short_digest("sha256:0123456789abcdef"),
            "sha256:0123456789ab"
        );
        // Anything that is not a sha256 digest is shown whole, never cut mid-character.
        for odd in [
            "md5:x",
            "sha256:0123",
            "sha256:ééééééééééé",
            "sha256:0123456789aZcdef",
            "",
        ] {
            assert_eq!(short_digest(odd), odd);
        }
    }

    #[test]
    fn digest_ignores_read_order_and_sees_every_byte() {
        let mut a = RoleBundle::default();
        a.insert("role.toml".into(), b"x".to_vec()).unwrap();
        a.insert("files/a".into(), b"1".to_vec()).unwrap();
        let mut b = RoleBundle::default();
        b.insert("files/a".into(), b"1".to_vec()).unwrap();
        b.insert("role.toml".into(), b"x".to_vec()).unwrap();
        assert_eq!(a.digest(), b.digest());
        b.insert("files/a".into(), b"2".to_vec()).unwrap();
        assert_ne!(a.digest(), b.digest());
        // Moving bytes between path and content must change the digest.
        let mut c = RoleBundle::default();
        c.insert("ab".into(), b"c".to_vec()).unwrap();
        let mut d = RoleBundle::default();
        d.insert("a".into(), b"bc".to_vec()).unwrap();
        assert_ne!(c.digest(), d.digest());
    }

    #[test]
    fn escaping_paths_are_refused() {
        let mut b = RoleBundle::default();
        for p in ["../x", "/etc/passwd", "a/../../x", "a//b", "", "./a"] {
            assert!(b.insert(p.into(), vec![]).is_err(), "{p} accepted");
        }
    }

    #[test]
    fn the_wire_form_round_trips_and_is_checked() {
        let mut b = RoleBundle::default();
        b.insert("role.toml".into(), b"[role]\n".to_vec()).unwrap();
        b.insert("files/bin".into(), vec![0, 159, 146, 150])
            .unwrap();
        let back = RoleBundle::from_wire(b.to_wire()).unwrap();
        assert_eq!((&back, back.digest()), (&b, b.digest()));

        let wire = |files: &[&[u8]]| pb::Bundle {
            files: files
                .iter()
                .map(|p| pb::BundleFile {
                    path: p.to_vec(),
                    content: vec![],
                })
                .collect(),
        };
        let err = RoleBundle::from_wire(wire(&[b"../etc/passwd"])).unwrap_err();
        assert!(matches!(err, BundleError::BadPath(..)), "{err}");
        let err = RoleBundle::from_wire(wire(&[b"a", b"\xffa"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "file #2: its path is not valid UTF-8 (\"\u{fffd}a\")"
        );
        let err = RoleBundle::from_wire(wire(&[b"a", b"a"])).unwrap_err();
        assert!(matches!(err, BundleError::Duplicate(_)), "{err}");
    }

    #[test]
    fn bundles_that_cannot_be_written_to_disk_are_refused() {
        let wire = |paths: &[&str]| pb::Bundle {
            files: paths
                .iter()
                .map(|p| pb::BundleFile {
                    path: p.as_bytes().to_vec(),
                    content: vec![],
                })
                .collect(),
        };
        let refused = |paths: &[&str]| RoleBundle::from_wire(wire(paths)).unwrap_err().to_string();
        // A file and a directory at one path, in either order.
        let both =
            "\"files/a\" is a file, and a directory of \"files/a/b\": a role cannot hold both";
        assert_eq!(refused(&["files/a", "files/a/b"]), both);
        assert_eq!(refused(&["files/a/b", "files/a"]), both);
        assert_eq!(
            refused(&["a", "a/b/c"]),
            "\"a\" is a file, and a directory of \"a/b/c\": a role cannot hold both"
        );
        // Neighbours that only share a prefix are fine.
        RoleBundle::from_wire(wire(&["files/a", "files/a.b", "files/ab/c", "files/a-/b"])).unwrap();

        assert_eq!(
            refused(&["files/a\nb"]),
            "invalid path \"files/a\\nb\" in role: contains a control character"
        );
        let component = "c".repeat(256);
        assert_eq!(
            refused(&[&format!("files/{component}")]),
            format!(
                "invalid path \"files/{}…\" in role: has a component longer than 255 bytes",
                &component[..249]
            )
        );
        let long = "d/".repeat(2048) + "f";
        assert!(
            refused(&[&long]).ends_with("…\" in role: is longer than 4095 bytes"),
            "{}",
            refused(&[&long])
        );
    }

    #[test]
    fn symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("role.toml"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("leak")).unwrap();
        let err = RoleBundle::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, BundleError::Symlink(_)), "{err}");
    }

    #[test]
    fn a_role_directory_is_read_in_full_and_special_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("role.toml"), "r").unwrap();
        std::fs::create_dir_all(dir.path().join("templates/sub")).unwrap();
        std::fs::write(dir.path().join("templates/sub/a.hbs"), "a").unwrap();
        std::fs::create_dir(dir.path().join("files")).unwrap();
        let bundle = RoleBundle::from_dir(dir.path()).unwrap();
        let files: Vec<_> = bundle.files().collect();
        assert_eq!(
            files,
            [("role.toml", &b"r"[..]), ("templates/sub/a.hbs", &b"a"[..])]
        );

        // A pipe is refused, not read (which would wait for a writer).
        let fifo = dir.path().join("files/pipe");
        nix::unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
        let err = RoleBundle::from_dir(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: not a regular file or directory", fifo.display())
        );
    }

    #[test]
    fn a_link_deep_in_the_role_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("files")).unwrap();
        let link = dir.path().join("files/leak");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        let err = RoleBundle::from_dir(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: symbolic links are not allowed in a role (copy the file in instead)",
                link.display()
            )
        );
    }
}
