//! Providers: the only code that touches the host.
//!
//! Each provider is a small capability set behind a trait. A [`Host`] holds one
//! of each: given by the caller ([`Providers`]; tests give in-memory ones), or
//! chosen from facts, where each provider declares when it fits as data
//! ([`Needs`]) and [`select`] reads that. Choosing only looks (a program in
//! `PATH`, a directory) and runs nothing: a provider reads the host's state
//! only when a resource first asks it something, so a role without services
//! runs where systemd is not running. Files ([`fs`]) and the
//! role's shell commands ([`process`]) are POSIX everywhere and need no choosing.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::Path;

use anyhow::{Result, anyhow};
use cairn_proto::facts::Facts;
use cairn_proto::role::Role;

use self::fs::{FileKind, Meta, Ownership};
use self::process::Ran;

pub mod apt;
pub mod fs;
pub mod process;
pub mod shadow;
pub mod systemd;

/// Installs and removes OS packages.
pub trait PackageProvider {
    fn name(&self) -> &'static str;
    /// Learns from the role what the run will ask, before anything is asked.
    /// Touches nothing.
    fn prepare(&mut self, role: &Role) {
        let _ = role;
    }
    /// The installed version of `package`, or `None` when it is not installed.
    fn installed(&self, package: &str) -> Result<Option<String>>;
    /// What the package database keeps of `package` when it is not installed
    /// (dpkg's state: `config-files` when only its configuration is left), or
    /// `None` when it keeps nothing.
    fn left_behind(&self, package: &str) -> Result<Option<String>>;
    /// Installs `package` (at `version` when given), with its recommended
    /// packages or without when `recommends` says, else as the host is set.
    fn install(&self, package: &str, version: Option<&str>, recommends: Option<bool>)
    -> Result<()>;
    /// Installs all of `packages` (each at its version when given) in one
    /// transaction of the package manager, as `install` would one, so their
    /// shared work (lists, dependency resolution, triggers) is done once.
    /// On an error, which of them were installed is not said.
    fn install_together(&self, packages: &[ToInstall<'_>], recommends: Option<bool>) -> Result<()>;
    fn remove(&self, package: &str) -> Result<()>;
    /// Removes `package` and its configuration files.
    fn purge(&self, package: &str) -> Result<()>;
    /// What an interrupted package operation left undone (and blocks every
    /// change until finished), for the report; `None` when nothing was.
    fn interrupted(&self) -> Result<Option<String>> {
        Ok(None)
    }
    /// Finishes what [`PackageProvider::interrupted`] found.
    fn finish_interrupted(&self) -> Result<()> {
        Ok(())
    }
    /// Refreshes the package lists of one apt source alone: `source` is the
    /// text its file `NAME.sources` is to have, tried before that file goes
    /// live; every other source's lists are kept. Fails, with apt's words,
    /// when a list cannot be fetched or its signature does not verify. Only
    /// apt has apt sources.
    fn update_source(&self, name: &str, source: &[u8]) -> Result<()> {
        let _ = source;
        Err(anyhow!(
            "{} has no apt sources, so apt repository {name} cannot be used",
            self.name()
        ))
    }
}

/// One package of [`PackageProvider::install_together`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToInstall<'a> {
    pub name: &'a str,
    /// The exact version wanted, when pinned.
    pub version: Option<&'a str>,
}

/// `name`, or `name=version` when pinned, as apt and the report write it.
impl fmt::Display for ToInstall<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}={v}", self.name),
            None => f.write_str(self.name),
        }
    }
}

/// What a service manager says about one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The unit is known to the service manager.
    pub exists: bool,
    pub running: bool,
    /// `None` when the unit cannot be enabled or disabled (static units).
    pub enabled: Option<bool>,
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    Reloaded,
    /// The service cannot reload, so it was restarted.
    Restarted,
}

/// Starts, stops and enables services.
pub trait ServiceProvider {
    fn name(&self) -> &'static str;
    /// Learns from the role what the run will ask (the services whose state
    /// it reads in one go), before anything is asked. Touches nothing.
    fn prepare(&mut self, role: &Role) {
        let _ = role;
    }
    fn status(&self, service: &str) -> Result<ServiceStatus>;
    /// Whether the definition the manager runs `service` with is older than
    /// its unit file or a drop-in on disk (systemd's `NeedDaemonReload`).
    fn stale(&self, service: &str) -> Result<bool> {
        let _ = service;
        Ok(false)
    }
    /// Drops what is known of `service`, so the next read asks the manager
    /// again: a unit file may have been written since it was read.
    fn forget(&self, service: &str) {
        let _ = service;
    }
    /// Makes the manager read every changed unit file again (`systemctl
    /// daemon-reload`); every cached state is dropped.
    fn reload_units(&self) -> Result<()> {
        Ok(())
    }
    fn start(&self, service: &str) -> Result<()>;
    fn stop(&self, service: &str) -> Result<()>;
    fn restart(&self, service: &str) -> Result<()>;
    /// Reloads the configuration of a running service, or restarts it when
    /// it cannot reload; says which.
    fn reload(&self, service: &str) -> Result<Reloaded>;
    fn enable(&self, service: &str) -> Result<()>;
    fn disable(&self, service: &str) -> Result<()>;
}

/// A local group as the account database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
}

/// A local user as the account database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub uid: u32,
    pub home: String,
    pub shell: String,
    pub comment: String,
    /// The primary group's name (its gid when no group has it).
    pub group: String,
    /// Supplementary group names.
    pub groups: Vec<String>,
}

/// Changes to an existing user; `None` leaves a property alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChanges {
    pub uid: Option<u32>,
    pub home: Option<String>,
    pub shell: Option<String>,
    pub comment: Option<String>,
    /// The primary group, by name.
    pub group: Option<String>,
    /// Groups to add the user to.
    pub add_groups: Vec<String>,
    /// The user's whole supplementary group list, replacing the current one
    /// (`groups_exact`); memberships it leaves out are removed.
    pub set_groups: Option<Vec<String>>,
    /// A crypt(3) hash for /etc/shadow.
    pub password: Option<String>,
}

/// Manages local users and groups.
pub trait AccountProvider {
    fn name(&self) -> &'static str;
    /// Learns from the role what the run will ask, before anything is asked.
    /// Touches nothing.
    fn prepare(&mut self, role: &Role) {
        let _ = role;
    }
    fn group(&self, name: &str) -> Result<Option<GroupEntry>>;
    fn user(&self, name: &str) -> Result<Option<UserEntry>>;
    /// The password hash of `name` in the shadow database; `None` when the
    /// user has no entry there.
    fn password(&self, name: &str) -> Result<Option<String>>;
    fn create_group(&self, group: &cairn_proto::role::Group) -> Result<()>;
    fn set_gid(&self, name: &str, gid: u32) -> Result<()>;
    fn delete_group(&self, name: &str) -> Result<()>;
    /// Creates `user`; its home, if any, is made through `files`.
    fn create_user(&self, user: &cairn_proto::role::User, files: &dyn FileSystem) -> Result<()>;
    /// Changes `name`; a home it moves is moved through `files`.
    fn modify_user(&self, name: &str, changes: &UserChanges, files: &dyn FileSystem) -> Result<()>;
    fn delete_user(&self, name: &str) -> Result<()>;
}

/// Files and directories: metadata, content, and owners by name. Every
/// change is complete or not made (writes are atomic).
pub trait FileSystem {
    /// What is at `path`, links not followed; `None` when nothing is.
    fn stat(&self, path: &Path) -> Result<Option<Meta>>;
    fn read(&self, path: &Path) -> Result<Vec<u8>>;
    /// What is at `path` and, when it is a regular file, its content: read
    /// from the very file looked at, with one walk to it.
    fn stat_read(&self, path: &Path) -> Result<Option<(Meta, Option<Vec<u8>>)>> {
        let Some(meta) = self.stat(path)? else {
            return Ok(None);
        };
        let data = match meta.kind {
            FileKind::File => Some(self.read(path)?),
            _ => None,
        };
        Ok(Some((meta, data)))
    }
    /// Replaces `path` (a link is replaced, never written through) with
    /// `data`, owned and moded as `own` says from its first moment.
    fn write_atomic(&self, path: &Path, data: &[u8], own: Ownership) -> Result<()>;
    /// [`FileSystem::write_atomic`], where the new content, complete with
    /// its owner and mode, replaces `path` only once `accept` succeeds on
    /// the path it was written to. When `accept` fails, `path` is left as
    /// it was, the new content is removed, and its error is returned.
    fn write_atomic_checked(
        &self,
        path: &Path,
        data: &[u8],
        own: Ownership,
        accept: &mut dyn FnMut(&Path) -> Result<()>,
    ) -> Result<()>;
    fn create_dir(&self, path: &Path, own: Ownership) -> Result<()>;
    /// Replaces `path` (nothing, a link or a file; never a directory) with a
    /// symbolic link to `target`, owned by `uid` and `gid` from its first
    /// moment.
    fn symlink(&self, path: &Path, target: &OsStr, uid: u32, gid: u32) -> Result<()>;
    /// What the symbolic link `path` points to.
    fn read_link(&self, path: &Path) -> Result<OsString>;
    /// Writes `data` into the existing regular file `path` in one write,
    /// neither replacing nor truncating it: for the kernel's settings under
    /// `/proc/sys`, which are written, never replaced.
    fn write_in_place(&self, path: &Path, data: &[u8]) -> Result<()>;
    /// Changes the owner of `path` itself (links not followed).
    fn set_owner(&self, path: &Path, uid: u32, gid: u32) -> Result<()>;
    fn set_mode(&self, path: &Path, mode: u32) -> Result<()>;
    fn remove_file(&self, path: &Path) -> Result<()>;
    /// Removes a directory with everything in it.
    fn remove_dir_all(&self, path: &Path) -> Result<()>;
    /// Creates the missing directories above `path` as `mkdir -p` does:
    /// root's, mode 0755.
    fn create_parents(&self, path: &Path) -> Result<()> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        // From the top down, `/` left out.
        let mut above: Vec<&Path> = parent
            .ancestors()
            .take_while(|p| p.parent().is_some())
            .collect();
        above.reverse();
        for dir in above {
            if self.stat(dir)?.is_none() {
                let own = Ownership {
                    uid: 0,
                    gid: 0,
                    mode: 0o755,
                };
                self.create_dir(dir, own)?;
            }
        }
        Ok(())
    }
    /// The names in the directory `path`, sorted.
    fn list_dir(&self, path: &Path) -> Result<Vec<OsString>>;
    /// Moves `from` to `to`, which must not exist; an error across file
    /// systems.
    fn rename(&self, from: &Path, to: &Path) -> Result<()>;
    /// The uid of the user named `user`; an error when there is none.
    fn uid_of(&self, user: &str) -> Result<u32>;
    /// The gid of the group named `group`; an error when there is none.
    fn gid_of(&self, group: &str) -> Result<u32>;
    /// The name of the user owning `uid`, or the number when none has it.
    fn user_name(&self, uid: u32) -> String;
    /// The name of the group `gid`, or the number when none has it.
    fn group_name(&self, gid: u32) -> String;
}

/// Runs the role's own commands: an exec and its guards.
pub trait Shell {
    /// Runs `command` with `/bin/sh -c` (in `cwd` when given). Fails only
    /// when it cannot start; how it exited is in the result.
    fn run(&self, command: &str, cwd: Option<&Path>) -> Result<Ran>;
}

/// One condition a provider needs from the host to fit it, declared as data
/// next to the provider and read by [`select`].
#[derive(Debug, Clone, Copy)]
pub enum Needs {
    /// `facts.os.family` is one of these.
    OsFamily(&'static [&'static str]),
    /// A program it runs is in `PATH`.
    Command(&'static str),
    /// A directory exists; `missing` says what its absence means.
    Directory {
        path: &'static str,
        missing: &'static str,
    },
}

impl Needs {
    /// Why the host does not meet this, or `None` when it does.
    fn unmet(&self, provider: &str, facts: &Facts) -> Option<String> {
        match *self {
            Needs::OsFamily(families) => {
                (!families.contains(&facts.os.family.as_str())).then(|| {
                    format!(
                        "{provider} serves the {} OS family, and this host is {} (family {:?})",
                        families.join(" or "),
                        facts.os.id,
                        facts.os.family
                    )
                })
            }
            Needs::Command(program) => process::find_program(program)
                .is_none()
                .then(|| format!("{provider} needs `{program}`, which is not in PATH")),
            Needs::Directory { path, missing } => (!Path::new(path).is_dir())
                .then(|| format!("{provider} needs {path}, which is missing: {missing}")),
        }
    }
}

/// A provider the selector may choose: its name, what it needs, and how to
/// make it (making one touches nothing).
pub struct Candidate<P: ?Sized> {
    pub name: &'static str,
    pub needs: &'static [Needs],
    pub make: fn() -> Box<P>,
}

/// Package providers, in order of preference.
pub const PACKAGE_PROVIDERS: &[Candidate<dyn PackageProvider>] = &[Candidate {
    name: "apt",
    needs: apt::NEEDS,
    make: || Box::new(apt::Apt::new()),
}];

/// Service providers, in order of preference.
pub const SERVICE_PROVIDERS: &[Candidate<dyn ServiceProvider>] = &[Candidate {
    name: "systemd",
    needs: systemd::NEEDS,
    make: || Box::new(systemd::Systemd::new()),
}];

/// Account providers, in order of preference.
pub const ACCOUNT_PROVIDERS: &[Candidate<dyn AccountProvider>] = &[Candidate {
    name: "shadow",
    needs: shadow::NEEDS,
    make: || Box::new(shadow::Shadow::new()),
}];

/// The first candidate whose needs the host meets, or an error saying what
/// each one is missing.
pub fn select<P: ?Sized>(
    kind: &str,
    candidates: &[Candidate<P>],
    facts: &Facts,
) -> Result<Box<P>, String> {
    let mut unmet = Vec::new();
    for c in candidates {
        match c.needs.iter().find_map(|n| n.unmet(c.name, facts)) {
            None => return Ok((c.make)()),
            Some(why) => unmet.push(why),
        }
    }
    Err(format!(
        "no {kind} provider fits this host: {}",
        unmet.join("; ")
    ))
}

/// Providers given for a [`Host`] instead of chosen from facts. Each one left
/// out is chosen.
#[derive(Default)]
pub struct Providers {
    packages: Option<Box<dyn PackageProvider>>,
    services: Option<Box<dyn ServiceProvider>>,
    accounts: Option<Box<dyn AccountProvider>>,
    files: Option<Box<dyn FileSystem>>,
    shell: Option<Box<dyn Shell>>,
}

impl Providers {
    pub fn packages(mut self, p: impl PackageProvider + 'static) -> Self {
        self.packages = Some(Box::new(p));
        self
    }

    pub fn services(mut self, p: impl ServiceProvider + 'static) -> Self {
        self.services = Some(Box::new(p));
        self
    }

    pub fn accounts(mut self, p: impl AccountProvider + 'static) -> Self {
        self.accounts = Some(Box::new(p));
        self
    }

    pub fn files(mut self, p: impl FileSystem + 'static) -> Self {
        self.files = Some(Box::new(p));
        self
    }

    pub fn shell(mut self, p: impl Shell + 'static) -> Self {
        self.shell = Some(Box::new(p));
        self
    }
}

/// The host as resources see it: its facts and one provider per capability.
/// A capability no provider fits is an error only for the resources that
/// need it.
pub struct Host {
    pub facts: Facts,
    packages: Result<Box<dyn PackageProvider>, String>,
    services: Result<Box<dyn ServiceProvider>, String>,
    accounts: Result<Box<dyn AccountProvider>, String>,
    files: Box<dyn FileSystem>,
    shell: Box<dyn Shell>,
}

impl Host {
    /// This host, with the providers its facts call for.
    pub fn new(facts: Facts) -> Self {
        Host::with_providers(facts, Providers::default())
    }

    /// This host with `given` providers, the others chosen from facts.
    pub fn with_providers(facts: Facts, given: Providers) -> Self {
        let packages = given
            .packages
            .map_or_else(|| select("package", PACKAGE_PROVIDERS, &facts), Ok);
        let services = given
            .services
            .map_or_else(|| select("service", SERVICE_PROVIDERS, &facts), Ok);
        let accounts = given
            .accounts
            .map_or_else(|| select("account", ACCOUNT_PROVIDERS, &facts), Ok);
        Host {
            packages,
            services,
            accounts,
            files: given
                .files
                .unwrap_or_else(|| Box::new(fs::Posix::default())),
            shell: given
                .shell
                .unwrap_or_else(|| Box::new(process::SystemShell)),
            facts,
        }
    }

    /// Lets every provider learn from the role what the run will ask, so it
    /// can read the host in one go when first asked. Touches nothing.
    pub fn prepare(&mut self, role: &Role) {
        if let Ok(p) = &mut self.packages {
            p.prepare(role);
        }
        if let Ok(p) = &mut self.services {
            p.prepare(role);
        }
        if let Ok(p) = &mut self.accounts {
            p.prepare(role);
        }
    }

    pub fn packages(&self) -> Result<&dyn PackageProvider> {
        self.packages.as_deref().map_err(|e| anyhow!("{e}"))
    }

    pub fn services(&self) -> Result<&dyn ServiceProvider> {
        self.services.as_deref().map_err(|e| anyhow!("{e}"))
    }

    pub fn accounts(&self) -> Result<&dyn AccountProvider> {
        self.accounts.as_deref().map_err(|e| anyhow!("{e}"))
    }

    pub fn files(&self) -> &dyn FileSystem {
        self.files.as_ref()
    }

    pub fn shell(&self) -> &dyn Shell {
        self.shell.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    trait Named {
        fn name(&self) -> &'static str;
    }

    struct Made(&'static str);

    impl Named for Made {
        fn name(&self) -> &'static str {
            self.0
        }
    }

    fn facts(id: &str, family: &str) -> Facts {
        let mut f = Facts::placeholder();
        f.os.id = id.into();
        f.os.family = family.into();
        f
    }

    #[test]
    fn selection_reads_what_each_provider_needs() {
        let candidates: &[Candidate<dyn Named>] = &[
            Candidate {
                name: "first",
                needs: &[Needs::OsFamily(&["debian"]), Needs::Command("sh")],
                make: || Box::new(Made("first")),
            },
            Candidate {
                name: "second",
                needs: &[Needs::Command("cairn-no-such-program")],
                make: || Box::new(Made("second")),
            },
        ];
        let chosen = select("test", candidates, &facts("ubuntu", "debian")).unwrap();
        assert_eq!(chosen.name(), "first");

        // The first does not fit: the next is tried, and when none fits the
        // error names each one and what it misses.
        let err = select("test", candidates, &facts("fedora", "rhel"))
            .err()
            .unwrap();
        assert_eq!(
            err,
            "no test provider fits this host: first serves the debian OS family, and this \
             host is fedora (family \"rhel\"); second needs `cairn-no-such-program`, which is not in PATH"
        );

        let dirs = [
            Needs::Directory {
                path: "/",
                missing: "never shown",
            },
            Needs::Directory {
                path: "/nonexistent/cairn",
                missing: "the thing is not running",
            },
        ];
        assert_eq!(dirs[0].unmet("p", &facts("debian", "debian")), None);
        assert_eq!(
            dirs[1].unmet("p", &facts("debian", "debian")).unwrap(),
            "p needs /nonexistent/cairn, which is missing: the thing is not running"
        );
    }

    #[test]
    fn the_default_choice_on_a_debian_host_is_apt_and_elsewhere_an_error() {
        let host = Host::new(facts("debian", "debian"));
        assert_eq!(host.packages().unwrap().name(), "apt");
        let host = Host::new(facts("alpine", "alpine"));
        let err = host.packages().err().unwrap().to_string();
        assert!(
            err.contains("no package provider") && err.contains("alpine"),
            "{err}"
        );
    }
}
