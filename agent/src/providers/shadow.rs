//! Local accounts through the shadow tools (`useradd`, `groupmod`, …).
//!
//! Reads parse `/etc/passwd` and `/etc/group` directly: a run asks about many
//! accounts, and parsing both files once costs less than spawning one process.
//! The parsed files are cached and trusted only while both files keep the same
//! [`Stamp`] (shadow tools replace them by rename), so
//! changes made by hand or by another tool are seen, and the cache is dropped
//! after every change made here.
//!
//! Password hashes are read from `/etc/shadow` only when a role declares one,
//! once for the run into the same cache, trusted while the file keeps its
//! [`Stamp`], and never shown.
//!
//! Homes are made, filled from `/etc/skel` and moved here, through the
//! host's [`FileSystem`], never by the tools: they work by path as root, so a
//! user owning a directory on the way could swap a component for a link
//! between a check and their call.
//!
//! Only local accounts are seen and managed: a user that exists only in LDAP
//! (through NSS) reads as absent here, and creating it makes a local one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use cairn_proto::role;

use super::fs::{FileKind, Ownership, Stamp, stamp_path};
use super::process::run_ok;
use super::{FileSystem, GroupEntry, Needs, UserChanges, UserEntry};

/// Where the shadow tools fit: wherever they are installed.
pub const NEEDS: &[Needs] = &[Needs::Command("useradd"), Needs::Command("groupadd")];

/// Permissions of a system user's home created here: what Debian's
/// `adduser --system` uses (`SYS_DIR_MODE`).
const SYSTEM_HOME_MODE: u32 = 0o755;

/// How deep `/etc/skel` is copied: it is root's, but a loop is a loop.
const MAX_SKEL_DEPTH: usize = 16;

pub struct Shadow {
    /// `/` for this system. Another directory holds a copy of `etc/` (an image
    /// being built, or a test), and every command gets `--prefix` for it.
    root: PathBuf,
    cache: RefCell<Option<Db>>,
}

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdLine {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLine {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

struct Db {
    stamps: [Stamp; 2],
    users: Vec<PasswdLine>,
    groups: Vec<GroupLine>,
    /// `/etc/shadow`'s stamp and each user's hash, read on the first question
    /// about a password.
    passwords: Option<(Stamp, HashMap<String, String>)>,
}

impl Default for Shadow {
    fn default() -> Self {
        Self::new()
    }
}

impl Shadow {
    /// The provider for this system's accounts.
    pub fn new() -> Self {
        Self::with_root("/")
    }

    /// The provider for the account files under `root` (`root/etc/passwd`, …).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Shadow {
            root: root.into(),
            cache: RefCell::new(None),
        }
    }

    fn passwd_path(&self) -> PathBuf {
        self.root.join("etc/passwd")
    }

    fn group_path(&self) -> PathBuf {
        self.root.join("etc/group")
    }

    /// Runs `f` on the parsed account files, reading them again only when they
    /// changed since the last read.
    fn with_db<T>(&self, f: impl FnOnce(&mut Db) -> T) -> Result<T> {
        let (passwd, group) = (self.passwd_path(), self.group_path());
        let stamps = [stamp(&passwd)?, stamp(&group)?];
        let mut cache = self.cache.borrow_mut();
        if cache.as_ref().is_none_or(|db| db.stamps != stamps) {
            let users = parse_passwd(&read(&passwd)?);
            let groups = parse_group(&read(&group)?);
            *cache = Some(Db {
                stamps,
                users,
                groups,
                passwords: None,
            });
        }
        Ok(f(cache.as_mut().expect("filled above")))
    }

    fn passwd_line(&self, name: &str) -> Result<Option<PasswdLine>> {
        self.with_db(|db| db.users.iter().find(|u| u.name == name).cloned())
    }

    /// Runs one shadow tool; whatever happens, the cached files are stale.
    fn tool(&self, program: &str, args: Vec<OsString>) -> Result<()> {
        let mut full: Vec<OsString> = Vec::with_capacity(args.len() + 2);
        if self.root != Path::new("/") {
            full.push("--prefix".into());
            full.push(self.root.clone().into_os_string());
        }
        full.extend(args);
        let result = run_ok(program, &full, &[]);
        *self.cache.borrow_mut() = None;
        result.map(drop)
    }

    /// `home` as a path on this system (under `root` when there is one).
    fn host_path(&self, home: &str) -> PathBuf {
        self.root.join(home.trim_start_matches('/'))
    }

    /// Refuses a home that a link someone other than root placed leads to or
    /// through, before the account is created or changed.
    fn check_home(&self, files: &dyn FileSystem, home: &str) -> Result<()> {
        files
            .stat(&self.host_path(home))
            .map(drop)
            .with_context(|| format!("will not make the home {home}"))
    }

    /// A value of `/etc/login.defs` (`KEY value`), as useradd reads it.
    fn login_def(&self, key: &str) -> Option<String> {
        let defs = std::fs::read_to_string(self.root.join("etc/login.defs")).ok()?;
        defs.lines().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(key)).then(|| words.next().map(str::to_string))?
        })
    }

    /// The mode useradd gives a new home: `HOME_MODE`, else what `UMASK`
    /// leaves of 0777 (Debian: 022, so 0755).
    fn home_mode(&self) -> u32 {
        let octal = |key| {
            self.login_def(key)
                .and_then(|v| u32::from_str_radix(&v, 8).ok())
        };
        octal("HOME_MODE").unwrap_or_else(|| 0o777 & !octal("UMASK").unwrap_or(0o022)) & 0o7777
    }

    /// The value of `KEY=` in `/etc/default/useradd`.
    fn useradd_default(&self, key: &str) -> Option<String> {
        let defaults = std::fs::read_to_string(self.root.join("etc/default/useradd")).ok()?;
        let prefix = format!("{key}=");
        defaults
            .lines()
            .find_map(|l| l.trim().strip_prefix(&prefix).map(str::to_string))
    }

    /// The home useradd gives `name` when the role declares none: under
    /// `HOME` of `/etc/default/useradd`, else `/home`.
    fn default_home(&self, name: &str) -> String {
        let base = self
            .useradd_default("HOME")
            .filter(|b| b.starts_with('/'))
            .unwrap_or_else(|| "/home".into());
        format!("{}/{name}", base.trim_end_matches('/'))
    }

    /// Makes the home of the user `name` as `useradd --create-home` would,
    /// unless something is at its path already (useradd leaves that alone
    /// too): missing parents root's and 0755, the home the user's with
    /// [`Self::home_mode`] (`SYSTEM_HOME_MODE` for a system user), filled from
    /// the skeleton directory (`SKEL` of `/etc/default/useradd`, else
    /// `/etc/skel`) unless `skel` is false.
    fn create_home(
        &self,
        files: &dyn FileSystem,
        name: &str,
        home: &str,
        system: bool,
    ) -> Result<()> {
        let path = self.host_path(home);
        if files.stat(&path)?.is_some() {
            return Ok(());
        }
        let entry = self
            .passwd_line(name)?
            .ok_or_else(|| anyhow!("user {name} is missing right after useradd created it"))?;
        let mode = if system {
            SYSTEM_HOME_MODE
        } else {
            self.home_mode()
        };
        files.create_parents(&path)?;
        files.create_dir(
            &path,
            Ownership {
                uid: entry.uid,
                gid: entry.gid,
                mode,
            },
        )?;
        if system {
            // As `adduser --system`: a service account needs no dotfiles.
            return Ok(());
        }
        let skel = self
            .useradd_default("SKEL")
            .filter(|s| s.starts_with('/'))
            .unwrap_or_else(|| "/etc/skel".into());
        let skel = self.host_path(&skel);
        if files
            .stat(&skel)?
            .is_some_and(|m| m.kind == FileKind::Directory)
        {
            copy_skel(files, &skel, &path, (entry.uid, entry.gid), 0)
                .with_context(|| format!("could not fill {home} from {}", skel.display()))?;
        }
        Ok(())
    }
}

/// Copies the regular files and directories of `from` into `to`, owned by
/// `owner` with their modes; other entries (links, devices) are skipped, as
/// they could point anywhere. Every write goes through `files`, so nothing a
/// user placed in the new home since it was made is followed.
fn copy_skel(
    files: &dyn FileSystem,
    from: &Path,
    to: &Path,
    (uid, gid): (u32, u32),
    depth: usize,
) -> Result<()> {
    if depth > MAX_SKEL_DEPTH {
        bail!(
            "{} is nested more than {MAX_SKEL_DEPTH} deep",
            from.display()
        );
    }
    for name in files.list_dir(from)? {
        let (src, dst) = (from.join(&name), to.join(&name));
        let Some((meta, data)) = files.stat_read(&src)? else {
            continue;
        };
        let own = Ownership {
            uid,
            gid,
            mode: meta.mode,
        };
        match (meta.kind, data) {
            (FileKind::File, Some(data)) => files.write_atomic(&dst, &data, own)?,
            (FileKind::Directory, _) => {
                files.create_dir(&dst, own)?;
                copy_skel(files, &src, &dst, (uid, gid), depth + 1)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn stamp(path: &Path) -> Result<Stamp> {
    stamp_path(path).with_context(|| format!("could not stat {}", path.display()))
}

fn read(path: &Path) -> Result<String> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            Err(anyhow!("{} does not exist", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
    }
}

/// Each user's hash in `/etc/shadow` (the first line of a name, as the C
/// library reads it).
fn parse_shadow(text: &str) -> HashMap<String, String> {
    let mut hashes = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(':');
        if let Some(name) = fields.next().filter(|n| !n.is_empty()) {
            let hash = fields.next().unwrap_or("").to_string();
            hashes.entry(name.to_string()).or_insert(hash);
        }
    }
    hashes
}

/// Parses `/etc/passwd`. Lines the C library would also skip (comments, NIS
/// `+`/`-` entries, too few fields, non-numeric ids) are skipped, so this sees
/// the same local users `getpwnam` does.
pub fn parse_passwd(text: &str) -> Vec<PasswdLine> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with(['#', '+', '-']))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() != 7 || f[0].is_empty() {
                return None;
            }
            Some(PasswdLine {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                gecos: f[4].to_string(),
                home: f[5].to_string(),
                shell: f[6].to_string(),
            })
        })
        .collect()
}

/// Parses `/etc/group`, skipping malformed lines as [`parse_passwd`] does.
pub fn parse_group(text: &str) -> Vec<GroupLine> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with(['#', '+', '-']))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() != 4 || f[0].is_empty() {
                return None;
            }
            Some(GroupLine {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

fn args<const N: usize>(list: [&str; N]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

impl super::AccountProvider for Shadow {
    fn name(&self) -> &'static str {
        "shadow"
    }

    fn group(&self, name: &str) -> Result<Option<GroupEntry>> {
        self.with_db(|db| {
            db.groups
                .iter()
                .find(|g| g.name == name)
                .map(|g| GroupEntry {
                    name: g.name.clone(),
                    gid: g.gid,
                })
        })
        .with_context(|| format!("could not look up group {name}"))
    }

    /// Supplementary groups are the groups whose member list names the user;
    /// the primary group (the passwd gid) is not among them unless listed.
    fn user(&self, name: &str) -> Result<Option<UserEntry>> {
        self.with_db(|db| {
            db.users.iter().find(|u| u.name == name).map(|u| UserEntry {
                name: u.name.clone(),
                uid: u.uid,
                home: u.home.clone(),
                shell: u.shell.clone(),
                comment: u.gecos.clone(),
                group: db
                    .groups
                    .iter()
                    .find(|g| g.gid == u.gid)
                    .map_or_else(|| u.gid.to_string(), |g| g.name.clone()),
                groups: db
                    .groups
                    .iter()
                    .filter(|g| g.members.iter().any(|m| m == name))
                    .map(|g| g.name.clone())
                    .collect(),
            })
        })
        .with_context(|| format!("could not look up user {name}"))
    }

    fn password(&self, name: &str) -> Result<Option<String>> {
        let path = self.root.join("etc/shadow");
        let look_up = || -> Result<Option<String>> {
            let now = stamp(&path)?;
            self.with_db(|db| {
                if let Some((known, hashes)) = &db.passwords
                    && *known == now
                {
                    return Ok(hashes.get(name).cloned());
                }
                let hashes = parse_shadow(&read(&path)?);
                let hash = hashes.get(name).cloned();
                db.passwords = Some((now, hashes));
                Ok(hash)
            })?
        };
        look_up().with_context(|| format!("could not look up the password of user {name}"))
    }

    fn create_group(&self, group: &role::Group) -> Result<()> {
        let mut a = Vec::new();
        if group.system {
            a.push("--system".into());
        }
        if let Some(gid) = group.gid {
            a.extend(args(["--gid", &gid.to_string()]));
        }
        a.push(group.name.clone().into());
        self.tool("groupadd", a)
            .with_context(|| format!("could not create group {}", group.name))
    }

    fn set_gid(&self, name: &str, gid: u32) -> Result<()> {
        // groupmod also moves users whose primary group this is to the new gid.
        self.tool("groupmod", args(["--gid", &gid.to_string(), name]))
            .with_context(|| format!("could not change the gid of group {name} to {gid}"))
    }

    fn delete_group(&self, name: &str) -> Result<()> {
        self.tool("groupdel", args([name]))
            .with_context(|| format!("could not delete group {name}"))
    }

    /// Creates the user with every declared property. Its primary group is the
    /// declared one, else the group named as the user when there is one
    /// (useradd would refuse to make it, as the user's own group), else a new
    /// group of that name or the host's default, as useradd decides.
    /// Homes: a normal user
    /// gets what `useradd --create-home` makes (the directory, filled from
    /// `/etc/skel`); a system user gets its home directory only when the role
    /// declares one, made without skeleton files, as `adduser --system` does;
    /// otherwise it keeps useradd's default home field with no directory, as
    /// Debian's `useradd --system` does. Homes are made here (see the module
    /// documentation), useradd only writes the account.
    fn create_user(&self, user: &role::User, files: &dyn FileSystem) -> Result<()> {
        let mut a = Vec::new();
        if user.system {
            a.push("--system".into());
        }
        a.push("--no-create-home".into());
        if let Some(uid) = user.uid {
            a.extend(args(["--uid", &uid.to_string()]));
        }
        let primary = match &user.group {
            Some(group) => Some(group.clone()),
            None => self
                .group(&user.name)
                .with_context(|| format!("could not create user {}", user.name))?
                .map(|g| g.name),
        };
        if let Some(group) = primary {
            a.extend(args(["--gid", &group]));
        }
        if !user.groups.is_empty() {
            a.extend(args(["--groups", &user.groups.join(",")]));
        }
        if let Some(hash) = &user.password {
            // One argument, so that errors can mask it (see process.rs).
            a.push(format!("--password={hash}").into());
        }
        if let Some(shell) = &user.shell {
            a.extend(args(["--shell", shell]));
        }
        if let Some(home) = &user.home {
            a.extend(args(["--home-dir", home]));
        }
        if let Some(comment) = &user.comment {
            a.extend(args(["--comment", comment]));
        }
        a.push(user.name.clone().into());
        let create = || -> Result<()> {
            let home = match (&user.home, user.system) {
                (Some(home), _) => Some(home.clone()),
                (None, false) => Some(self.default_home(&user.name)),
                (None, true) => None,
            };
            if let Some(home) = &home {
                self.check_home(files, home)?;
            }
            self.tool("useradd", a)?;
            if home.is_some() {
                // The home useradd wrote, should its default differ from ours.
                let home = match &user.home {
                    Some(home) => home.clone(),
                    None => {
                        self.passwd_line(&user.name)?
                            .ok_or_else(|| anyhow!("user {} is missing after useradd", user.name))?
                            .home
                    }
                };
                self.create_home(files, &user.name, &home, user.system)?;
            }
            Ok(())
        };
        create().with_context(|| format!("could not create user {}", user.name))
    }

    /// Changes what `changes` names. A new home gets the old one moved over
    /// (as `usermod --move-home` would, but through `files`, and only within
    /// one file system) when the old directory exists and the new path does
    /// not; otherwise only the account's home field changes.
    fn modify_user(&self, name: &str, changes: &UserChanges, files: &dyn FileSystem) -> Result<()> {
        if changes == &UserChanges::default() {
            return Ok(());
        }
        let modify = || -> Result<()> {
            let mut a = Vec::new();
            if let Some(uid) = changes.uid {
                a.extend(args(["--uid", &uid.to_string()]));
            }
            // The old home and where it moves, when it does.
            let mut moved = None;
            if let Some(home) = &changes.home {
                a.extend(args(["--home", home]));
                let old = self
                    .passwd_line(name)?
                    .ok_or_else(|| anyhow!("user {name} does not exist"))?
                    .home;
                let (from, to) = (self.host_path(&old), self.host_path(home));
                let old_is_dir = files
                    .stat(&from)?
                    .is_some_and(|m| m.kind == FileKind::Directory);
                self.check_home(files, home)?;
                if old_is_dir && files.stat(&to)?.is_none() {
                    moved = Some((from, to));
                }
            }
            if let Some(shell) = &changes.shell {
                a.extend(args(["--shell", shell]));
            }
            if let Some(comment) = &changes.comment {
                a.extend(args(["--comment", comment]));
            }
            if let Some(group) = &changes.group {
                a.extend(args(["--gid", group]));
            }
            if let Some(groups) = &changes.set_groups {
                a.extend(args(["--groups", &groups.join(",")]));
            } else if !changes.add_groups.is_empty() {
                a.extend(args([
                    "--append",
                    "--groups",
                    &changes.add_groups.join(","),
                ]));
            }
            if let Some(hash) = &changes.password {
                // One argument, so that errors can mask it (see process.rs).
                a.push(format!("--password={hash}").into());
            }
            a.push(name.into());
            if let Some((from, to)) = &moved {
                files.create_parents(to)?;
                files.rename(from, to)?;
            }
            let changed = self.tool("usermod", a);
            if changed.is_err()
                && let Some((from, to)) = &moved
            {
                // The account still names the old home: put it back.
                let _ = files.rename(to, from);
            }
            changed
        };
        modify().with_context(|| format!("could not modify user {name}"))
    }

    /// Removes the account but keeps its home directory and mail: a role that
    /// retires a user should not destroy its data as a side effect.
    fn delete_user(&self, name: &str) -> Result<()> {
        self.tool("userdel", args([name]))
            .with_context(|| format!("could not delete user {name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::AccountProvider;
    use crate::providers::fs::Posix;
    use cairn_proto::role::Presence;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
+nisuser::::::
broken:x:notanumber:1::/:/bin/sh
short:x:5
alice:x:1000:1000:Alice Liddell,,,:/home/alice:/bin/bash
";
    const GROUP: &str = "root:x:0:
adm:x:4:syslog,alice
sudo:x:27:alice
users:x:100:bob
alice:x:1000:
bad:x:
";

    #[test]
    fn parses_passwd_and_group() {
        let users = parse_passwd(PASSWD);
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["root", "daemon", "alice"]);
        assert_eq!(
            users[2],
            PasswdLine {
                name: "alice".into(),
                uid: 1000,
                gid: 1000,
                gecos: "Alice Liddell,,,".into(),
                home: "/home/alice".into(),
                shell: "/bin/bash".into(),
            }
        );
        let groups = parse_group(GROUP);
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["root", "adm", "sudo", "users", "alice"]);
        assert_eq!(groups[1].members, ["syslog", "alice"]);
        assert!(groups[0].members.is_empty());
    }

    fn sample_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        dir
    }

    #[test]
    fn password_hashes_are_cached_with_the_accounts_and_follow_outside_changes() {
        let dir = sample_root();
        let path = dir.path().join("etc/shadow");
        std::fs::write(
            &path,
            "root:*:19000:0:99999:7:::\nalice:$y$old:19000::::::\n",
        )
        .unwrap();
        let shadow = Shadow::with_root(dir.path());
        assert_eq!(shadow.password("alice").unwrap().as_deref(), Some("$y$old"));
        assert_eq!(shadow.password("root").unwrap().as_deref(), Some("*"));
        assert_eq!(shadow.password("bob").unwrap(), None);
        // Read with the account files: a question about a user is answered
        // from the same cache.
        assert!(shadow.user("alice").unwrap().is_some());
        assert!(
            shadow
                .cache
                .borrow()
                .as_ref()
                .is_some_and(|db| db.passwords.is_some())
        );
        // Replaced as `usermod` and `chpasswd` replace it: read again.
        let tmp = dir.path().join("etc/shadow+");
        std::fs::write(&tmp, "alice:$y$new:19000::::::\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(shadow.password("alice").unwrap().as_deref(), Some("$y$new"));
        std::fs::remove_file(&path).unwrap();
        let err = format!("{:#}", shadow.password("alice").unwrap_err());
        assert!(
            err.starts_with("could not look up the password of user alice"),
            "{err}"
        );
    }

    #[test]
    fn reads_users_with_supplementary_groups_and_sees_outside_changes() {
        let dir = sample_root();
        let shadow = Shadow::with_root(dir.path());
        let alice = shadow.user("alice").unwrap().unwrap();
        assert_eq!(
            (alice.uid, alice.comment.as_str()),
            (1000, "Alice Liddell,,,")
        );
        assert_eq!(
            alice.groups,
            ["adm", "sudo"],
            "the primary group is not supplementary"
        );
        assert_eq!(shadow.user("bob").unwrap(), None);
        assert_eq!(
            shadow.group("users").unwrap(),
            Some(GroupEntry {
                name: "users".into(),
                gid: 100
            })
        );
        // Another tool rewrites the file the way shadow tools do (a new file
        // renamed over it): the cached copy must not be used.
        let tmp = dir.path().join("etc/group+");
        std::fs::write(&tmp, GROUP.replace("sudo:x:27:alice", "sudo:x:27:")).unwrap();
        std::fs::rename(&tmp, dir.path().join("etc/group")).unwrap();
        assert_eq!(shadow.user("alice").unwrap().unwrap().groups, ["adm"]);

        std::fs::remove_file(dir.path().join("etc/passwd")).unwrap();
        let err = format!("{:#}", shadow.user("alice").unwrap_err());
        assert!(
            err.contains("user alice") && err.contains("etc/passwd"),
            "{err}"
        );
    }

    /// The real tools, pointed with `--prefix` at a private copy of the files,
    /// so this runs without touching the host's accounts.
    #[test]
    fn changes_files_under_a_prefix_with_the_real_tools() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        std::fs::write(etc.join("shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        std::fs::write(etc.join("group"), "root:x:0:\n").unwrap();
        std::fs::write(etc.join("gshadow"), "root:*::\n").unwrap();
        let shadow = Shadow::with_root(dir.path());
        let files = Posix::default();
        let group = role::Group {
            name: "web".into(),
            gid: Some(4321),
            system: false,
            state: Presence::Present,
        };
        shadow.create_group(&group).unwrap();
        assert_eq!(shadow.group("web").unwrap().map(|g| g.gid), Some(4321));
        shadow.set_gid("web", 4322).unwrap();
        assert_eq!(shadow.group("web").unwrap().map(|g| g.gid), Some(4322));

        let user = role::User {
            name: "svc".into(),
            uid: Some(4500),
            group: None,
            groups: vec![],
            groups_exact: false,
            password: None,
            shell: Some("/usr/sbin/nologin".into()),
            home: Some("/srv/svc".into()),
            comment: Some("Service".into()),
            system: true,
            state: Presence::Present,
        };
        shadow.create_user(&user, &files).unwrap();
        let entry = shadow.user("svc").unwrap().unwrap();
        assert_eq!(
            (entry.uid, entry.home.as_str(), entry.shell.as_str()),
            (4500, "/srv/svc", "/usr/sbin/nologin")
        );
        let home = files
            .stat(&dir.path().join("srv/svc"))
            .unwrap()
            .expect("system home created");
        assert_eq!(
            (home.kind, home.uid, home.mode),
            (FileKind::Directory, 4500, SYSTEM_HOME_MODE)
        );

        let changes = UserChanges {
            shell: Some("/bin/sh".into()),
            comment: Some("".into()),
            add_groups: vec!["web".into()],
            ..Default::default()
        };
        shadow.modify_user("svc", &changes, &files).unwrap();
        let entry = shadow.user("svc").unwrap().unwrap();
        assert_eq!(
            (entry.shell.as_str(), entry.comment.as_str()),
            ("/bin/sh", "")
        );
        assert_eq!(entry.groups, ["web"]);

        // A hash is set and read back; the exact list replaces the groups.
        let hash = "$6$salt$0123456789abcdef";
        let changes = UserChanges {
            password: Some(hash.into()),
            set_groups: Some(vec![]),
            ..Default::default()
        };
        shadow.modify_user("svc", &changes, &files).unwrap();
        assert_eq!(shadow.password("svc").unwrap().as_deref(), Some(hash));
        assert!(shadow.user("svc").unwrap().unwrap().groups.is_empty());
        // A failing tool's error shows the command without the hash, even
        // when a comment (never validated) looks like the option itself.
        let changes = UserChanges {
            password: Some(hash.into()),
            comment: Some("--password".into()),
            group: Some("no-such-group".into()),
            ..Default::default()
        };
        let err = format!(
            "{:#}",
            shadow.modify_user("svc", &changes, &files).unwrap_err()
        );
        assert!(
            err.contains("--password=(sensitive)") && !err.contains("0123456789abcdef"),
            "{err}"
        );
        let hostile = role::User {
            name: "svc2".into(),
            comment: Some("--password".into()),
            password: Some(hash.into()),
            group: Some("no-such-group".into()),
            ..user.clone()
        };
        let err = format!("{:#}", shadow.create_user(&hostile, &files).unwrap_err());
        assert!(
            err.contains("--password=(sensitive)") && !err.contains("0123456789abcdef"),
            "{err}"
        );

        let err = format!("{:#}", shadow.create_group(&group).unwrap_err());
        assert!(
            err.starts_with("could not create group web") && err.contains("groupadd"),
            "{err}"
        );

        shadow.delete_user("svc").unwrap();
        assert_eq!(shadow.user("svc").unwrap(), None);
        assert!(
            dir.path().join("srv/svc").is_dir(),
            "userdel keeps the home"
        );
        shadow.delete_group("web").unwrap();
        assert_eq!(shadow.group("web").unwrap(), None);
    }

    /// An account directory under a prefix, as Debian's tools expect it.
    fn account_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        std::fs::write(etc.join("shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        std::fs::write(etc.join("group"), "root:x:0:\n").unwrap();
        std::fs::write(etc.join("gshadow"), "root:*::\n").unwrap();
        std::fs::write(etc.join("login.defs"), "USERGROUPS_ENAB yes\n").unwrap();
        dir
    }

    /// useradd makes a user its own group and refuses when a group of that
    /// name exists: that group becomes the primary one instead, and a
    /// declared group wins over both.
    #[test]
    fn primary_group_declared_or_the_existing_one_named_as_the_user() {
        let dir = account_root();
        let shadow = Shadow::with_root(dir.path());
        let files = Posix::default();
        for (name, gid) in [("app", 4700), ("web", 4701)] {
            let group = role::Group {
                name: name.into(),
                gid: Some(gid),
                system: false,
                state: Presence::Present,
            };
            shadow.create_group(&group).unwrap();
        }
        let user = |name: &str, group: Option<&str>| role::User {
            name: name.into(),
            uid: None,
            group: group.map(str::to_string),
            groups: vec![],
            groups_exact: false,
            password: None,
            shell: None,
            home: None,
            comment: None,
            system: true,
            state: Presence::Present,
        };
        shadow.create_user(&user("app", None), &files).unwrap();
        let primary = |name: &str| {
            let line = shadow.passwd_line(name).unwrap().unwrap();
            (line.gid, shadow.user(name).unwrap().unwrap().group)
        };
        assert_eq!(primary("app"), (4700, "app".to_string()));

        shadow
            .create_user(&user("api", Some("web")), &files)
            .unwrap();
        assert_eq!(primary("api"), (4701, "web".to_string()));
        assert_eq!(shadow.group("api").unwrap(), None, "no group of its own");
        // (usermod --prefix looks groups up on this host, not under the
        // prefix: changing the group is tested in a booted machine.)

        // Without a group of its name, useradd makes one as before.
        shadow.create_user(&user("solo", None), &files).unwrap();
        let solo = shadow.group("solo").unwrap().expect("its own group");
        assert_eq!(primary("solo"), (solo.gid, "solo".to_string()));
    }

    /// A user's home is made here, not by useradd: filled from the skeleton
    /// directory with the user's ownership, and never through a link
    /// someone other than root placed on the way.
    #[test]
    fn homes_are_made_from_skel_through_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(etc.join("skel/.config")).unwrap();
        std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        std::fs::write(etc.join("shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        std::fs::write(etc.join("group"), "root:x:0:\n").unwrap();
        std::fs::write(etc.join("gshadow"), "root:*::\n").unwrap();
        std::fs::write(etc.join("login.defs"), "USERGROUPS_ENAB yes\nUMASK 027\n").unwrap();
        std::fs::write(etc.join("skel/.bashrc"), "# bashrc\n").unwrap();
        std::fs::write(etc.join("skel/.config/app"), "x").unwrap();
        let mode = |p: &Path, m| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        };
        mode(&etc.join("skel/.config/app"), 0o600);
        mode(&etc.join("skel/.config"), 0o700);
        std::os::unix::fs::symlink("/etc/shadow", etc.join("skel/shadow")).unwrap();
        let shadow = Shadow::with_root(dir.path());
        let user = |name: &str, home: Option<&str>| role::User {
            name: name.into(),
            uid: Some(4600),
            group: None,
            groups: vec![],
            groups_exact: false,
            password: None,
            shell: None,
            home: home.map(str::to_string),
            comment: None,
            system: false,
            state: Presence::Present,
        };
        let files = Posix::default();
        shadow.create_user(&user("alice", None), &files).unwrap();
        let meta = |rel: &str| files.stat(&dir.path().join(rel)).unwrap();
        let home = meta("home/alice").expect("home made");
        assert_eq!(
            (home.kind, home.uid, home.mode),
            (FileKind::Directory, 4600, 0o750)
        );
        let parent = meta("home").unwrap();
        assert_eq!((parent.uid, parent.mode), (0, 0o755));
        let bashrc = meta("home/alice/.bashrc").unwrap();
        assert_eq!(
            (bashrc.uid, bashrc.gid, bashrc.mode),
            (4600, home.gid, 0o644)
        );
        assert_eq!(
            files.read(&dir.path().join("home/alice/.bashrc")).unwrap(),
            b"# bashrc\n"
        );
        assert_eq!(meta("home/alice/.config").unwrap().mode, 0o700);
        assert_eq!(meta("home/alice/.config/app").unwrap().mode, 0o600);
        assert_eq!(meta("home/alice/shadow"), None, "links are not copied");

        // A link on the way that root did not place: no account, no home.
        std::fs::create_dir(dir.path().join("victim")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("victim"), dir.path().join("home/evil"))
            .unwrap();
        let wary = Posix::trusting(u32::MAX - 7);
        let err = shadow
            .create_user(&user("bob", Some("/home/evil/bob")), &wary)
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.starts_with("could not create user bob: will not make the home /home/evil/bob")
                && err.contains(&format!(
                    "{} is a symbolic link owned by root; Cairn does not write through it",
                    dir.path().join("home/evil").display()
                )),
            "{err}"
        );
        assert_eq!(shadow.user("bob").unwrap(), None);
        assert_eq!(
            std::fs::read_dir(dir.path().join("victim"))
                .unwrap()
                .count(),
            0
        );
    }
}
