//! Local accounts through the shadow tools (`useradd`, `groupmod`, …).
//!
//! Reads parse `/etc/passwd` and `/etc/group` directly: a run asks about many
//! accounts, and parsing both files once costs less than spawning one process.
//! The parsed files are cached and trusted only while both files keep the same
//! inode, size and modification time (shadow tools replace them by rename), so
//! changes made by hand or by another tool are seen, and the cache is dropped
//! after every change made here.
//!
//! Only local accounts are seen and managed: a user that exists only in LDAP
//! (through NSS) reads as absent here, and creating it makes a local one.

use std::cell::RefCell;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use cairn_proto::role;

use super::fs::{FileKind, Ownership, Posix};
use super::process::run_ok;
use super::{FileSystem, GroupEntry, Needs, UserChanges, UserEntry};

/// Where the shadow tools fit: wherever they are installed.
pub const NEEDS: &[Needs] = &[Needs::Command("useradd"), Needs::Command("groupadd")];

/// Permissions of a system user's home created here: what Debian's
/// `adduser --system` uses (`SYS_DIR_MODE`).
const SYSTEM_HOME_MODE: u32 = 0o755;

pub struct Shadow {
    /// `/` for this system. Another directory holds a copy of `etc/` (an image
    /// being built, or a test), and every command gets `--prefix` for it.
    root: PathBuf,
    cache: RefCell<Option<Db>>,
    /// Homes are looked at and made through it, so no link is followed there.
    files: Posix,
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

/// Identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

struct Db {
    stamps: [Stamp; 2],
    users: Vec<PasswdLine>,
    groups: Vec<GroupLine>,
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
            files: Posix::default(),
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
    fn with_db<T>(&self, f: impl FnOnce(&Db) -> T) -> Result<T> {
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
            });
        }
        Ok(f(cache.as_ref().expect("filled above")))
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
    /// through: useradd and usermod create, fill and chown it by path, as root.
    fn check_home(&self, home: &str) -> Result<()> {
        self.files
            .reach_dir(&self.host_path(home))
            .map(drop)
            .with_context(|| format!("will not make the home {home}"))
    }

    /// The home useradd gives `name` when the role declares none: under
    /// `HOME` of `/etc/default/useradd`, else `/home`.
    fn default_home(&self, name: &str) -> String {
        let defaults = std::fs::read_to_string(self.root.join("etc/default/useradd"));
        let base = defaults
            .ok()
            .and_then(|d| {
                d.lines()
                    .find_map(|l| l.trim().strip_prefix("HOME=").map(str::to_string))
            })
            .filter(|b| b.starts_with('/'))
            .unwrap_or_else(|| "/home".into());
        format!("{}/{name}", base.trim_end_matches('/'))
    }

    /// Creates a system user's declared home the way `adduser --system` does:
    /// owned by the user and its primary group, without copying `/etc/skel`
    /// (a service account needs no shell dotfiles). An existing directory is
    /// left as it is.
    fn create_system_home(&self, name: &str, home: &str) -> Result<()> {
        let path = self.host_path(home);
        if self.files.stat(&path)?.is_some() {
            return Ok(());
        }
        let entry = self
            .passwd_line(name)?
            .ok_or_else(|| anyhow!("user {name} is missing right after useradd created it"))?;
        self.files.create_parents(&path)?;
        self.files.create_dir(
            &path,
            Ownership {
                uid: entry.uid,
                gid: entry.gid,
                mode: SYSTEM_HOME_MODE,
            },
        )
    }
}

fn stamp(path: &Path) -> Result<Stamp> {
    let m =
        std::fs::metadata(path).with_context(|| format!("could not stat {}", path.display()))?;
    Ok(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
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

    /// Creates the user with every declared property. Homes: a normal user gets
    /// `useradd --create-home` (the directory, filled from `/etc/skel`); a system
    /// user gets its home directory only when the role declares one, made
    /// without skeleton files, as `adduser --system` does; otherwise it keeps
    /// useradd's default home field with no directory, as Debian's `useradd
    /// --system` does.
    fn create_user(&self, user: &role::User) -> Result<()> {
        let mut a = Vec::new();
        if user.system {
            a.extend(args(["--system", "--no-create-home"]));
        } else {
            a.push("--create-home".into());
        }
        if let Some(uid) = user.uid {
            a.extend(args(["--uid", &uid.to_string()]));
        }
        if !user.groups.is_empty() {
            a.extend(args(["--groups", &user.groups.join(",")]));
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
            match (&user.home, user.system) {
                (Some(home), _) => self.check_home(home)?,
                (None, false) => self.check_home(&self.default_home(&user.name))?,
                (None, true) => {}
            }
            self.tool("useradd", a)?;
            if user.system
                && let Some(home) = &user.home
            {
                self.create_system_home(&user.name, home)?;
            }
            Ok(())
        };
        create().with_context(|| format!("could not create user {}", user.name))
    }

    /// Changes what `changes` names. A new home gets the old one's content moved
    /// over (`usermod --move-home`) when the old directory exists and the new
    /// path does not; otherwise only the account's home field changes.
    fn modify_user(&self, name: &str, changes: &UserChanges) -> Result<()> {
        if changes == &UserChanges::default() {
            return Ok(());
        }
        let modify = || -> Result<()> {
            let mut a = Vec::new();
            if let Some(uid) = changes.uid {
                a.extend(args(["--uid", &uid.to_string()]));
            }
            if let Some(home) = &changes.home {
                a.extend(args(["--home", home]));
                let old = self
                    .passwd_line(name)?
                    .ok_or_else(|| anyhow!("user {name} does not exist"))?
                    .home;
                let old_is_dir = self
                    .files
                    .stat(&self.host_path(&old))?
                    .is_some_and(|m| m.kind == FileKind::Directory);
                self.check_home(home)?;
                if old_is_dir && self.files.stat(&self.host_path(home))?.is_none() {
                    a.push("--move-home".into());
                }
            }
            if let Some(shell) = &changes.shell {
                a.extend(args(["--shell", shell]));
            }
            if let Some(comment) = &changes.comment {
                a.extend(args(["--comment", comment]));
            }
            if !changes.add_groups.is_empty() {
                a.extend(args([
                    "--append",
                    "--groups",
                    &changes.add_groups.join(","),
                ]));
            }
            a.push(name.into());
            self.tool("usermod", a)
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
            groups: vec![],
            shell: Some("/usr/sbin/nologin".into()),
            home: Some("/srv/svc".into()),
            comment: Some("Service".into()),
            system: true,
            state: Presence::Present,
        };
        shadow.create_user(&user).unwrap();
        let entry = shadow.user("svc").unwrap().unwrap();
        assert_eq!(
            (entry.uid, entry.home.as_str(), entry.shell.as_str()),
            (4500, "/srv/svc", "/usr/sbin/nologin")
        );
        let home = Posix::default()
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
        shadow.modify_user("svc", &changes).unwrap();
        let entry = shadow.user("svc").unwrap().unwrap();
        assert_eq!(
            (entry.shell.as_str(), entry.comment.as_str()),
            ("/bin/sh", "")
        );
        assert_eq!(entry.groups, ["web"]);

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
}
