//! The engine's rules as data: a role run through `run_once` against
//! in-memory providers, so ordering, skips, refreshes, noop and verification
//! are checked without spawning a process, without root, and without touching
//! this host (`agent/tests/apply.rs` checks the same against the real binary).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Result, anyhow, bail};
use cairn_agent::providers::fs::{FileKind, Meta, Ownership};
use cairn_agent::providers::process::Ran;
use cairn_agent::providers::{
    FileSystem, PackageProvider, Providers, Reloaded, ServiceProvider, ServiceStatus, Shell,
    ToInstall,
};
use cairn_agent::run::{Options, RunInput, run_once};
use cairn_proto::bundle::RoleBundle;
use cairn_proto::facts::Facts;
use cairn_proto::report::ResourceStatus::{Changed, Failed, Skipped, Unchanged, WouldChange};
use cairn_proto::report::{PropertyChange, ResourceStatus, RunReport};
use cairn_proto::role::{Diagnostics, Role, Spec};

/// The whole host in memory, shared by every fake provider of a test.
#[derive(Default)]
struct World {
    files: BTreeMap<PathBuf, File>,
    /// Package name → installed version.
    packages: BTreeMap<String, String>,
    /// Packages whose installation fails.
    uninstallable: BTreeSet<String>,
    /// Packages whose installation says it worked but installs nothing.
    phantom: BTreeSet<String>,
    /// What an interrupted package operation left undone, until finished.
    interrupted: Option<String>,
    services: BTreeMap<String, ServiceStatus>,
    /// Services whose unit file changed since the service manager read it
    /// (written under `/etc/systemd/system/`, as systemd would see).
    stale: BTreeSet<String>,
    /// Shell commands that exit non-zero.
    failing: BTreeSet<String>,
    /// Every call that changes the world, in order (`install nginx`,
    /// `write /etc/x`, `restart nginx`, `run CMD`).
    changes: Vec<String>,
    /// Every shell command run, guards included, in order.
    commands: Vec<String>,
    /// The services the service provider learnt from the role in `prepare`.
    prepared: Vec<String>,
    /// Services that cannot reload: a reload restarts them.
    cannot_reload: BTreeSet<String>,
    /// Every service whose state was read (`status`, `stale`), in order.
    read: Vec<String>,
    /// What `stale` answered, kept until forgotten or reloaded: the first
    /// read of a run answers for every service of the role at once, as
    /// systemd's provider does.
    stale_read: Option<BTreeSet<String>>,
}

#[derive(Debug, Clone)]
struct File {
    kind: FileKind,
    content: Vec<u8>,
    own: Ownership,
}

/// One handle on the world; each provider the host gets is a clone.
#[derive(Clone, Default)]
struct Fake(Rc<RefCell<World>>);

impl Fake {
    fn world(&self) -> std::cell::RefMut<'_, World> {
        self.0.borrow_mut()
    }

    fn changes(&self) -> Vec<String> {
        self.0.borrow().changes.clone()
    }

    fn change(&self, what: String) {
        self.world().changes.push(what);
    }

    fn service(&self, name: &str, running: bool, enabled: bool) {
        self.world().services.insert(
            name.into(),
            ServiceStatus {
                exists: true,
                running,
                enabled: Some(enabled),
            },
        );
    }

    fn put_file(&self, path: &str, content: &str) {
        self.world().files.insert(
            path.into(),
            File {
                kind: FileKind::File,
                content: content.into(),
                own: Ownership {
                    uid: 0,
                    gid: 0,
                    mode: 0o644,
                },
            },
        );
    }

    fn content(&self, path: &str) -> Option<String> {
        let w = self.0.borrow();
        let f = w.files.get(Path::new(path))?;
        Some(String::from_utf8(f.content.clone()).unwrap())
    }

    fn providers(&self) -> Providers {
        Providers::default()
            .packages(self.clone())
            .services(self.clone())
            .files(self.clone())
            .shell(self.clone())
    }
}

impl PackageProvider for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn installed(&self, package: &str) -> Result<Option<String>> {
        Ok(self.0.borrow().packages.get(package).cloned())
    }

    fn left_behind(&self, _package: &str) -> Result<Option<String>> {
        Ok(None)
    }

    fn install(&self, package: &str, version: Option<&str>, _: Option<bool>) -> Result<()> {
        self.change(format!("install {package}"));
        let mut w = self.world();
        if w.uninstallable.contains(package) {
            bail!("no installation candidate for {package}");
        }
        if !w.phantom.contains(package) {
            w.packages
                .insert(package.into(), version.unwrap_or("1.0").into());
        }
        Ok(())
    }

    /// Like apt: nothing is installed when one of them cannot be.
    fn install_together(&self, packages: &[ToInstall<'_>], _: Option<bool>) -> Result<()> {
        let names: Vec<&str> = packages.iter().map(|p| p.name).collect();
        self.change(format!("install together {}", names.join(" ")));
        let mut w = self.world();
        if let Some(bad) = names.iter().find(|n| w.uninstallable.contains(**n)) {
            bail!("no installation candidate for {bad}");
        }
        for p in packages {
            if !w.phantom.contains(p.name) {
                w.packages
                    .insert(p.name.into(), p.version.unwrap_or("1.0").into());
            }
        }
        Ok(())
    }

    fn interrupted(&self) -> Result<Option<String>> {
        Ok(self.0.borrow().interrupted.clone())
    }

    fn finish_interrupted(&self) -> Result<()> {
        self.change("finish interrupted".into());
        self.world().interrupted = None;
        Ok(())
    }

    fn remove(&self, package: &str) -> Result<()> {
        self.change(format!("remove {package}"));
        self.world().packages.remove(package);
        Ok(())
    }

    fn purge(&self, package: &str) -> Result<()> {
        self.change(format!("purge {package}"));
        self.world().packages.remove(package);
        Ok(())
    }
}

impl ServiceProvider for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn prepare(&mut self, role: &Role) {
        let names = role.resources.iter().filter_map(|r| match &r.spec {
            Spec::Service(s) => Some(s.name.clone()),
            _ => None,
        });
        self.world().prepared.extend(names);
        self.world().stale_read = None;
    }

    fn status(&self, service: &str) -> Result<ServiceStatus> {
        self.world().read.push(service.into());
        Ok(self
            .0
            .borrow()
            .services
            .get(service)
            .copied()
            .unwrap_or(ServiceStatus {
                exists: false,
                running: false,
                enabled: None,
            }))
    }

    fn stale(&self, service: &str) -> Result<bool> {
        let mut w = self.world();
        w.read.push(service.into());
        if w.stale_read.is_none() {
            w.stale_read = Some(w.stale.clone());
        }
        Ok(w.stale_read.as_ref().is_some_and(|s| s.contains(service)))
    }

    fn forget(&self, service: &str) {
        let mut w = self.world();
        let now = w.stale.contains(service);
        if let Some(read) = &mut w.stale_read {
            if now {
                read.insert(service.into());
            } else {
                read.remove(service);
            }
        }
    }

    fn reload_units(&self) -> Result<()> {
        self.change("daemon-reload".into());
        let mut w = self.world();
        w.stale.clear();
        w.stale_read = None;
        Ok(())
    }

    fn start(&self, service: &str) -> Result<()> {
        self.set(service, "start", |s| s.running = true)
    }

    fn stop(&self, service: &str) -> Result<()> {
        self.set(service, "stop", |s| s.running = false)
    }

    fn restart(&self, service: &str) -> Result<()> {
        self.set(service, "restart", |s| s.running = true)
    }

    fn reload(&self, service: &str) -> Result<Reloaded> {
        if self.0.borrow().cannot_reload.contains(service) {
            self.restart(service)?;
            return Ok(Reloaded::Restarted);
        }
        self.set(service, "reload", |_| {})?;
        Ok(Reloaded::Reloaded)
    }

    fn enable(&self, service: &str) -> Result<()> {
        self.set(service, "enable", |s| s.enabled = Some(true))
    }

    fn disable(&self, service: &str) -> Result<()> {
        self.set(service, "disable", |s| s.enabled = Some(false))
    }
}

impl Fake {
    fn set(&self, service: &str, verb: &str, f: impl FnOnce(&mut ServiceStatus)) -> Result<()> {
        self.change(format!("{verb} {service}"));
        let mut w = self.world();
        let s = w
            .services
            .get_mut(service)
            .ok_or_else(|| anyhow!("no unit {service}"))?;
        f(s);
        Ok(())
    }

    fn file_mut<T>(&self, path: &Path, f: impl FnOnce(&mut File) -> T) -> Result<T> {
        let mut w = self.world();
        let file = w
            .files
            .get_mut(path)
            .ok_or_else(|| anyhow!("{} does not exist", path.display()))?;
        Ok(f(file))
    }
}

impl FileSystem for Fake {
    fn stat(&self, path: &Path) -> Result<Option<Meta>> {
        Ok(self.0.borrow().files.get(path).map(|f| Meta {
            kind: f.kind,
            uid: f.own.uid,
            gid: f.own.gid,
            mode: f.own.mode,
        }))
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>> {
        self.0
            .borrow()
            .files
            .get(path)
            .map(|f| f.content.clone())
            .ok_or_else(|| anyhow!("{} does not exist", path.display()))
    }

    fn write_atomic(&self, path: &Path, data: &[u8], own: Ownership) -> Result<()> {
        self.change(format!("write {}", path.display()));
        if let Some(unit) = path
            .strip_prefix("/etc/systemd/system")
            .ok()
            .and_then(|p| p.to_str()?.strip_suffix(".service"))
            .filter(|u| self.0.borrow().services.contains_key(*u))
        {
            self.world().stale.insert(unit.into());
        }
        let file = File {
            kind: FileKind::File,
            content: data.to_vec(),
            own,
        };
        self.world().files.insert(path.into(), file);
        Ok(())
    }

    fn write_atomic_checked(
        &self,
        path: &Path,
        data: &[u8],
        own: Ownership,
        accept: &mut dyn FnMut(&Path) -> Result<()>,
    ) -> Result<()> {
        accept(&path.with_extension("cairn-new"))?;
        self.write_atomic(path, data, own)
    }

    fn create_dir(&self, path: &Path, own: Ownership) -> Result<()> {
        self.change(format!("mkdir {}", path.display()));
        let dir = File {
            kind: FileKind::Directory,
            content: Vec::new(),
            own,
        };
        self.world().files.insert(path.into(), dir);
        Ok(())
    }

    fn symlink(&self, path: &Path, target: &OsStr, uid: u32, gid: u32) -> Result<()> {
        self.change(format!("ln -s {} {}", target.display(), path.display()));
        let link = File {
            kind: FileKind::Symlink,
            content: target.as_bytes().to_vec(),
            own: Ownership {
                uid,
                gid,
                mode: 0o777,
            },
        };
        self.world().files.insert(path.into(), link);
        Ok(())
    }

    fn read_link(&self, path: &Path) -> Result<OsString> {
        self.file_mut(path, |f| OsString::from_vec(f.content.clone()))
    }

    fn write_in_place(&self, path: &Path, data: &[u8]) -> Result<()> {
        self.change(format!("write in place {}", path.display()));
        self.file_mut(path, |f| f.content = data.to_vec())
    }

    fn set_owner(&self, path: &Path, uid: u32, gid: u32) -> Result<()> {
        self.change(format!("chown {}", path.display()));
        self.file_mut(path, |f| (f.own.uid, f.own.gid) = (uid, gid))
    }

    fn set_mode(&self, path: &Path, mode: u32) -> Result<()> {
        self.change(format!("chmod {}", path.display()));
        self.file_mut(path, |f| f.own.mode = mode)
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        self.change(format!("rm {}", path.display()));
        self.world().files.remove(path);
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> Result<()> {
        self.change(format!("rm -r {}", path.display()));
        self.world().files.retain(|p, _| !p.starts_with(path));
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> Result<Vec<OsString>> {
        Ok(self
            .0
            .borrow()
            .files
            .keys()
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name().map(OsString::from))
            .collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.change(format!("mv {} {}", from.display(), to.display()));
        let mut w = self.world();
        let moved: Vec<PathBuf> = w
            .files
            .keys()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        for old in moved {
            let file = w.files.remove(&old).expect("listed above");
            let new = to.join(old.strip_prefix(from).expect("below from"));
            w.files.insert(new, file);
        }
        Ok(())
    }

    fn uid_of(&self, user: &str) -> Result<u32> {
        match user {
            "root" => Ok(0),
            _ => bail!("user {user} does not exist"),
        }
    }

    fn gid_of(&self, group: &str) -> Result<u32> {
        match group {
            "root" => Ok(0),
            _ => bail!("group {group} does not exist"),
        }
    }

    fn user_name(&self, uid: u32) -> String {
        if uid == 0 {
            "root".into()
        } else {
            uid.to_string()
        }
    }

    fn group_name(&self, gid: u32) -> String {
        if gid == 0 {
            "root".into()
        } else {
            gid.to_string()
        }
    }
}

/// Understands `touch PATH` (creates an empty file) and `test -e PATH`; any
/// other command succeeds unless it is listed as failing. As with the real
/// shell, a missing working directory means it cannot start.
impl Shell for Fake {
    fn run(&self, command: &str, cwd: Option<&Path>) -> Result<Ran> {
        if let Some(dir) = cwd
            && !self.0.borrow().files.contains_key(dir)
        {
            bail!("could not start /bin/sh: {} does not exist", dir.display());
        }
        self.world().commands.push(command.into());
        let success = if let Some(path) = command.strip_prefix("touch ") {
            self.put_file(path, "");
            self.change(command.into());
            true
        } else if let Some(path) = command.strip_prefix("test -e ") {
            self.0.borrow().files.contains_key(Path::new(path))
        } else {
            !self.0.borrow().failing.contains(command)
        };
        Ok(Ran {
            success,
            code: Some(if success { 0 } else { 1 }),
            stdout: String::new(),
            stderr: if success { "" } else { "it failed" }.into(),
        })
    }
}

/// A role and a state directory; each run gets a new host on the same world,
/// as successive runs of the agent would.
struct Case {
    world: Fake,
    toml: String,
    state: tempfile::TempDir,
}

impl Case {
    fn new(resources: &str) -> Self {
        Case {
            world: Fake::default(),
            toml: format!("[role]\nname = \"t\"\n\n{resources}"),
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn try_run(&self, noop: bool) -> Result<RunReport> {
        let mut bundle = RoleBundle::default();
        bundle
            .insert("role.toml".into(), self.toml.as_bytes().to_vec())
            .unwrap();
        let input = RunInput {
            facts: Some(Facts::placeholder()),
            providers: self.world.providers(),
            ..RunInput::new(bundle)
        };
        let options = Options {
            noop,
            state_dir: self.state.path().join("state"),
        };
        run_once(input, &options)
    }

    fn apply(&self) -> RunReport {
        self.try_run(false).unwrap()
    }

    fn noop(&self) -> RunReport {
        self.try_run(true).unwrap()
    }

    /// Runs and returns only the changes made in this run.
    fn apply_changes(&self) -> (RunReport, Vec<String>) {
        let before = self.world.changes().len();
        let report = self.apply();
        (report, self.world.changes()[before..].to_vec())
    }
}

fn statuses(report: &RunReport) -> Vec<(&str, ResourceStatus)> {
    report
        .resources
        .iter()
        .map(|r| (r.id.as_str(), r.status))
        .collect()
}

fn error_of<'a>(report: &'a RunReport, id: &str) -> &'a str {
    report
        .resources
        .iter()
        .find(|r| r.id == id)
        .and_then(|r| r.error.as_deref())
        .unwrap_or_else(|| panic!("{id} has no error: {report:#?}"))
}

#[test]
fn resources_converge_by_type_then_requires_and_the_second_run_changes_nothing() {
    let case = Case::new(
        "[[service]]\nname = \"web\"\nrunning = true\n\n\
         [[file]]\npath = \"/etc/web.conf\"\ncontent = \"port 80\\n\"\n\n\
         [[package]]\nname = \"web\"\nrequires = [\"exec:add-repo\"]\n\n\
         [[exec]]\nname = \"add-repo\"\ncommand = \"touch /etc/repo\"\ncreates = \"/etc/repo\"\n\n\
         [[directory]]\npath = \"/srv\"\n",
    );
    case.world.service("web", false, true);

    let (report, changes) = case.apply_changes();
    // By type (packages, directories, files, execs, services), except that
    // the package waits for the exec it requires.
    assert_eq!(
        statuses(&report),
        [
            ("directory:/srv", Changed),
            ("file:/etc/web.conf", Changed),
            ("exec:add-repo", Changed),
            ("package:web", Changed),
            ("service:web", Changed),
        ],
        "{report:#?}"
    );
    assert_eq!(
        changes,
        [
            "mkdir /srv",
            "write /etc/web.conf",
            "touch /etc/repo",
            "install web",
            "start web"
        ]
    );

    let (report, changes) = case.apply_changes();
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(report.summary.unchanged, 5, "{report:#?}");
}

#[test]
fn a_failure_skips_its_dependents_and_the_rest_goes_on() {
    let case = Case::new(
        "[[package]]\nname = \"broken\"\n\n\
         [[file]]\npath = \"/etc/broken.conf\"\ncontent = \"x\"\nrequires = [\"package:broken\"]\nnotify = [\"service:broken\"]\n\n\
         [[file]]\npath = \"/etc/unrelated\"\ncontent = \"y\"\n\n\
         [[service]]\nname = \"broken\"\nrunning = true\n",
    );
    case.world.world().uninstallable.insert("broken".into());
    case.world.service("broken", false, false);

    let (report, changes) = case.apply_changes();
    assert_eq!(
        statuses(&report),
        [
            ("package:broken", Failed),
            ("file:/etc/broken.conf", Skipped),
            ("file:/etc/unrelated", Changed),
            ("service:broken", Skipped),
        ]
    );
    assert!(
        error_of(&report, "package:broken")
            .starts_with("could not apply package:broken: no installation candidate")
    );
    assert_eq!(
        error_of(&report, "file:/etc/broken.conf"),
        "skipped because package:broken failed"
    );
    assert_eq!(
        error_of(&report, "service:broken"),
        "skipped because file:/etc/broken.conf was skipped"
    );
    assert_eq!(changes, ["install broken", "write /etc/unrelated"]);
    assert_eq!(case.world.content("/etc/broken.conf"), None);
}

#[test]
fn packages_nothing_orders_apart_are_installed_in_one_transaction_each_with_its_own_entry() {
    let case = Case::new(
        "[[package]]\nname = \"web\"\nnotify = [\"service:web\"]\n\n\
         [[package]]\nname = \"tools\"\nversion = \"2.0\"\n\n\
         [[package]]\nname = \"kept\"\n\n\
         [[package]]\nname = \"extra\"\n\n\
         [[service]]\nname = \"web\"\nrunning = true\n",
    );
    case.world.service("web", true, true);
    case.world
        .world()
        .packages
        .insert("kept".into(), "1.0".into());

    let report = case.noop();
    assert!(case.world.changes().is_empty());
    assert_eq!(report.summary.would_change, 4, "{report:#?}");

    let (report, changes) = case.apply_changes();
    // The one already installed is left out; the notification is owed as
    // when each is installed on its own.
    assert_eq!(changes, ["install together web tools extra", "restart web"]);
    assert_eq!(
        statuses(&report),
        [
            ("package:web", Changed),
            ("package:tools", Changed),
            ("package:kept", Unchanged),
            ("package:extra", Changed),
            ("service:web", Changed),
        ]
    );
    assert_eq!(
        report.resources[1].changes,
        [PropertyChange::new("ensure", "absent", "2.0")]
    );
    assert_eq!(case.world.0.borrow().packages["tools"], "2.0");

    let (report, changes) = case.apply_changes();
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(report.summary.unchanged, 5, "{report:#?}");
}

#[test]
fn a_package_that_alone_drifts_is_installed_on_its_own() {
    let case = Case::new("[[package]]\nname = \"one\"\n\n[[package]]\nname = \"two\"\n");
    case.world
        .world()
        .packages
        .insert("two".into(), "1.0".into());
    let (report, changes) = case.apply_changes();
    assert_eq!(changes, ["install one"]);
    assert_eq!(
        statuses(&report),
        [("package:one", Changed), ("package:two", Unchanged)]
    );
}

#[test]
fn an_interrupted_package_operation_is_finished_once_before_the_shared_transaction() {
    let case = Case::new("[[package]]\nname = \"one\"\n\n[[package]]\nname = \"two\"\n");
    case.world.world().interrupted = Some("dpkg was interrupted".into());

    let (report, changes) = case.apply_changes();
    assert_eq!(changes, ["finish interrupted", "install together one two"]);
    // Each waited for it, so each says so.
    for r in &report.resources {
        assert_eq!(r.status, Changed, "{report:#?}");
        assert_eq!(
            r.changes,
            [
                PropertyChange::new("unfinished", "dpkg was interrupted", "finished"),
                PropertyChange::new("ensure", "absent", "installed"),
            ]
        );
    }
}

#[test]
fn a_failed_transaction_installs_each_on_its_own_and_fails_only_the_culprit() {
    let case = Case::new(
        "[[package]]\nname = \"first\"\n\n\
         [[package]]\nname = \"broken\"\n\n\
         [[package]]\nname = \"last\"\n\n\
         [[file]]\npath = \"/etc/broken.conf\"\ncontent = \"x\"\nrequires = [\"package:broken\"]\n",
    );
    case.world.world().uninstallable.insert("broken".into());

    let (report, changes) = case.apply_changes();
    assert_eq!(
        changes,
        [
            "install together first broken last",
            "install first",
            "install broken",
            "install last"
        ]
    );
    assert_eq!(
        statuses(&report),
        [
            ("package:first", Changed),
            ("package:broken", Failed),
            ("package:last", Changed),
            ("file:/etc/broken.conf", Skipped),
        ]
    );
    assert!(
        error_of(&report, "package:broken")
            .starts_with("could not apply package:broken: no installation candidate for broken")
    );
}

#[test]
fn packages_a_failure_blocks_or_an_order_separates_are_not_installed_together() {
    let case = Case::new(
        "[[package]]\nname = \"base\"\n\n\
         [[package]]\nname = \"needs-base\"\nrequires = [\"package:base\"]\n\n\
         [[package]]\nname = \"other\"\n\n\
         [[package]]\nname = \"after-repo\"\nrequires = [\"exec:repo\"]\n\n\
         [[package]]\nname = \"blocked\"\nrequires = [\"exec:repo\"]\n\n\
         [[package]]\nname = \"lean\"\ninstall_recommends = false\n\n\
         [[exec]]\nname = \"repo\"\ncommand = \"add-repo\"\n",
    );
    case.world.world().failing.insert("add-repo".into());

    let (report, changes) = case.apply_changes();
    assert_eq!(
        changes,
        [
            "install base",
            "install together needs-base other",
            "install lean"
        ]
    );
    assert_eq!(
        statuses(&report),
        [
            ("package:base", Changed),
            ("package:needs-base", Changed),
            ("package:other", Changed),
            ("package:lean", Changed),
            ("exec:repo", Failed),
            ("package:after-repo", Skipped),
            ("package:blocked", Skipped),
        ]
    );
}

#[test]
fn a_refresh_comes_once_after_all_notifiers_and_only_on_change() {
    let case = Case::new(
        "[[service]]\nname = \"web\"\nrunning = true\n\n\
         [[file]]\npath = \"/etc/a\"\ncontent = \"a\"\nnotify = [\"service:web\"]\n\n\
         [[file]]\npath = \"/etc/b\"\ncontent = \"b\"\nnotify = [\"service:web\"]\n",
    );
    case.world.service("web", true, true);

    let (report, changes) = case.apply_changes();
    assert_eq!(changes, ["write /etc/a", "write /etc/b", "restart web"]);
    let web = report.resources.last().unwrap();
    assert_eq!((web.id.as_str(), web.status), ("service:web", Changed));
    assert_eq!(web.changes[0].after, "restarted");

    // Nothing changed: no refresh.
    let (_, changes) = case.apply_changes();
    assert!(changes.is_empty(), "{changes:?}");

    // One notifier changes: one refresh again.
    case.world.put_file("/etc/b", "tampered");
    let (_, changes) = case.apply_changes();
    assert_eq!(changes, ["write /etc/b", "restart web"]);
}

#[test]
fn a_service_only_reloaded_reloads_and_a_restart_asked_by_anyone_wins() {
    let case = Case::new(
        "[[service]]\nname = \"web\"\nrunning = true\n\n\
         [[file]]\npath = \"/etc/a\"\ncontent = \"a\"\nreload = [\"service:web\"]\n\n\
         [[file]]\npath = \"/etc/b\"\ncontent = \"b\"\nreload = [\"service:web\"]\n\n\
         [[file]]\npath = \"/etc/unit\"\ncontent = \"u\"\nnotify = [\"service:web\"]\n",
    );
    case.world.service("web", true, true);
    case.world.put_file("/etc/unit", "u");

    // Two reloads asked: one reload, after both.
    let report = case.noop();
    let web = report.resources.last().unwrap();
    assert_eq!(
        (web.status, web.changes[0].after.as_str()),
        (WouldChange, "would reload")
    );
    let (report, changes) = case.apply_changes();
    assert_eq!(changes, ["write /etc/a", "write /etc/b", "reload web"]);
    let web = report.resources.last().unwrap();
    assert_eq!((web.id.as_str(), web.status), ("service:web", Changed));
    assert_eq!(web.changes[0].after, "reloaded");
    let (_, changes) = case.apply_changes();
    assert!(changes.is_empty(), "{changes:?}");

    // A reload and a restart asked: the restart alone.
    case.world.put_file("/etc/a", "tampered");
    case.world.put_file("/etc/unit", "tampered");
    let report = case.noop();
    assert_eq!(
        report.resources.last().unwrap().changes[0].after,
        "would restart"
    );
    let (report, changes) = case.apply_changes();
    assert_eq!(changes, ["write /etc/a", "write /etc/unit", "restart web"]);
    assert_eq!(
        report.resources.last().unwrap().changes[0].after,
        "restarted"
    );

    // A unit that cannot reload is restarted, and the report says so.
    case.world.world().cannot_reload.insert("web".into());
    case.world.put_file("/etc/b", "tampered");
    let (report, changes) = case.apply_changes();
    assert_eq!(changes, ["write /etc/b", "restart web"]);
    assert_eq!(
        report.resources.last().unwrap().changes[0].after,
        "restarted (the unit cannot reload)"
    );
}

#[test]
fn a_reload_owed_by_a_failed_run_stays_a_reload_until_a_restart_is_asked() {
    let case = Case::new(
        "[[exec]]\nname = \"gate\"\ncommand = \"gate\"\n\n\
         [[service]]\nname = \"web\"\nrequires = [\"exec:gate\"]\n\n\
         [[file]]\npath = \"/etc/web.conf\"\ncontent = \"v2\"\nreload = [\"service:web\"]\n\n\
         [[file]]\npath = \"/etc/web.unit\"\ncontent = \"v2\"\nnotify = [\"service:web\"]\n",
    );
    case.world.service("web", true, true);
    case.world.put_file("/etc/web.unit", "v2");
    case.world.world().failing.insert("gate".into());
    let (report, changes) = case.apply_changes();
    assert_eq!(changes, ["write /etc/web.conf"]);
    assert_eq!(report.resources.last().unwrap().status, Skipped);

    // Still failing: the owed reload is kept; then a restart is asked on top.
    case.world.put_file("/etc/web.unit", "v1");
    let (_, changes) = case.apply_changes();
    assert_eq!(changes, ["write /etc/web.unit"]);
    case.world.world().failing.clear();
    let (report, changes) = case.apply_changes();
    assert_eq!(changes, ["restart web"]);
    assert_eq!(
        report.resources.last().unwrap().changes[0].after,
        "restarted"
    );

    // A reload owed alone survives a failed run as a reload.
    case.world.world().failing.insert("gate".into());
    case.world.put_file("/etc/web.conf", "v1");
    let (_, changes) = case.apply_changes();
    assert_eq!(changes, ["write /etc/web.conf"]);
    case.world.world().failing.clear();
    let (_, changes) = case.apply_changes();
    assert_eq!(changes, ["reload web"]);
}

#[test]
fn a_changed_unit_is_reloaded_once_before_its_service_is_started_or_restarted() {
    let case = Case::new(
        "[[file]]\npath = \"/etc/systemd/system/app.service\"\ncontent = \"v2\"\n\
         notify = [\"service:app\"]\n\n\
         [[file]]\npath = \"/etc/systemd/system/worker.service\"\ncontent = \"v2\"\n\n\
         [[service]]\nname = \"app\"\nrunning = true\n\n\
         [[service]]\nname = \"worker\"\nrunning = true\n\n\
         [[service]]\nname = \"idle\"\n",
    );
    case.world.service("app", true, true);
    case.world.service("worker", false, true);
    case.world.service("idle", true, true);

    let (report, changes) = case.apply_changes();
    // One reload, before anything acts on the changed units.
    assert_eq!(
        changes,
        [
            "write /etc/systemd/system/app.service",
            "write /etc/systemd/system/worker.service",
            "daemon-reload",
            "restart app",
            "start worker"
        ]
    );
    let app = report.resources.iter().find(|r| r.id == "service:app");
    let app: Vec<_> = app
        .unwrap()
        .changes
        .iter()
        .map(|c| (c.property.as_str(), c.before.as_str(), c.after.as_str()))
        .collect();
    assert_eq!(
        app,
        [
            ("systemd", "unit changed on disk", "reloaded"),
            ("refresh", "", "restarted")
        ]
    );
    assert_eq!(
        statuses(&report)[2..],
        [
            ("service:app", Changed),
            ("service:worker", Changed),
            ("service:idle", Unchanged)
        ]
    );
    let (report, changes) = case.apply_changes();
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(report.summary.unchanged, 5);

    // Changed by hand: noop says a reload is due and does nothing.
    case.world.world().stale.insert("worker".into());
    let report = case.noop();
    let worker = &report.resources[3];
    assert_eq!(
        (worker.id.as_str(), worker.status),
        ("service:worker", WouldChange)
    );
    assert_eq!(worker.changes[0].after, "reloaded");
    assert_eq!(case.world.changes().len(), 5, "noop changed something");
    let (_, changes) = case.apply_changes();
    assert_eq!(changes, ["daemon-reload"]);
}

/// A service only notified (neither `running` nor `enabled`) is not read in
/// a run that does not notify it, so a converged run costs it nothing; when
/// notified, its unit changed on disk is reloaded before it restarts, and the
/// report says so.
#[test]
fn a_service_only_notified_is_read_only_when_notified() {
    let case = Case::new(
        "[[file]]\npath = \"/etc/systemd/system/idle.service\"\ncontent = \"v1\"\n\
         notify = [\"service:idle\"]\n\n\
         [[service]]\nname = \"idle\"\n",
    );
    case.world.service("idle", true, true);
    let (report, changes) = case.apply_changes();
    assert_eq!(
        changes,
        [
            "write /etc/systemd/system/idle.service",
            "daemon-reload",
            "restart idle"
        ]
    );
    let idle: Vec<_> = report.resources[1]
        .changes
        .iter()
        .map(|c| (c.property.as_str(), c.before.as_str(), c.after.as_str()))
        .collect();
    assert_eq!(
        idle,
        [
            ("systemd", "unit changed on disk", "reloaded"),
            ("refresh", "", "restarted")
        ]
    );

    // Converged, and even changed by hand: nothing asks about it.
    case.world.world().read.clear();
    case.world.world().stale.insert("idle".into());
    let (report, changes) = case.apply_changes();
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(
        statuses(&report),
        [
            ("file:/etc/systemd/system/idle.service", Unchanged),
            ("service:idle", Unchanged)
        ]
    );
    let report = case.noop();
    assert_eq!(report.summary.unchanged, 2);
    assert!(
        case.world.world().read.is_empty(),
        "{:?}",
        case.world.world().read
    );
}

/// What the service manager said early in the run (every service of the
/// role read at once) predates a unit file written later in the run: the
/// notified service asks again before it restarts, so it never restarts on
/// its old definition.
#[test]
fn a_unit_file_written_after_its_state_was_read_is_reloaded_before_the_restart() {
    let case = Case::new(
        "[[service]]\nname = \"first\"\nrunning = true\n\n\
         [[file]]\npath = \"/etc/systemd/system/app.service\"\ncontent = \"v2\"\n\
         notify = [\"service:app\"]\nrequires = [\"service:first\"]\n\n\
         [[service]]\nname = \"app\"\nrunning = true\n",
    );
    case.world.service("first", true, true);
    case.world.service("app", true, true);
    let (report, changes) = case.apply_changes();
    assert_eq!(
        changes,
        [
            "write /etc/systemd/system/app.service",
            "daemon-reload",
            "restart app"
        ]
    );
    let app: Vec<_> = report.resources[2]
        .changes
        .iter()
        .map(|c| (c.property.as_str(), c.after.as_str()))
        .collect();
    assert_eq!(app, [("systemd", "reloaded"), ("refresh", "restarted")]);
}

#[test]
fn a_refresh_owed_by_a_failed_run_is_done_by_the_next_run() {
    let case = Case::new(
        "[[exec]]\nname = \"gate\"\ncommand = \"gate\"\n\n\
         [[service]]\nname = \"web\"\nrequires = [\"exec:gate\"]\n\n\
         [[file]]\npath = \"/etc/web.conf\"\ncontent = \"v2\"\nnotify = [\"service:web\"]\n",
    );
    case.world.service("web", true, true);
    case.world.world().failing.insert("gate".into());

    let (report, changes) = case.apply_changes();
    assert_eq!(
        statuses(&report),
        [
            ("file:/etc/web.conf", Changed),
            ("exec:gate", Failed),
            ("service:web", Skipped),
        ]
    );
    assert_eq!(changes, ["write /etc/web.conf"]);

    // The gate opens. A noop sees the owed restart and does not do it.
    case.world.world().failing.clear();
    let report = case.noop();
    let web = report.resources.last().unwrap();
    assert_eq!(web.status, WouldChange);
    assert_eq!(web.changes[0].after, "would restart");
    assert_eq!(case.world.changes().len(), 1, "noop changed something");

    // The next run does it, though its notifier no longer changes.
    let (report, changes) = case.apply_changes();
    assert_eq!(
        statuses(&report),
        [
            ("file:/etc/web.conf", Unchanged),
            ("exec:gate", Changed),
            ("service:web", Changed),
        ]
    );
    assert_eq!(changes, ["restart web"]);

    // Done once: the run after owes nothing.
    let (_, changes) = case.apply_changes();
    assert!(changes.is_empty(), "{changes:?}");
}

#[test]
fn noop_reports_what_would_change_and_calls_no_change() {
    let case = Case::new(
        "[[package]]\nname = \"web\"\n\n\
         [[file]]\npath = \"/etc/web.conf\"\ncontent = \"new\\n\"\nmode = \"0600\"\nnotify = [\"service:web\", \"exec:reload\"]\n\n\
         [[directory]]\npath = \"/srv/web\"\n\n\
         [[exec]]\nname = \"migrate\"\ncommand = \"touch /var/migrated\"\nunless = \"test -e /var/migrated\"\n\n\
         [[exec]]\nname = \"reload\"\ncommand = \"reload\"\nrefresh_only = true\n\n\
         [[service]]\nname = \"web\"\nrunning = true\nenabled = true\n",
    );
    case.world.put_file("/etc/web.conf", "old\n");
    case.world.service("web", false, false);

    let report = case.noop();
    assert!(report.noop);
    assert!(
        report.resources.iter().all(|r| r.status == WouldChange),
        "{report:#?}"
    );
    let conf = report
        .resources
        .iter()
        .find(|r| r.id == "file:/etc/web.conf")
        .unwrap();
    let props: Vec<&str> = conf.changes.iter().map(|c| c.property.as_str()).collect();
    assert_eq!(props, ["content", "mode"]);
    assert!(conf.diff.as_deref().unwrap().contains("+new"));

    // Only observed: no change method called, only the guard run, nothing owed.
    assert!(
        case.world.changes().is_empty(),
        "{:?}",
        case.world.changes()
    );
    assert_eq!(case.world.0.borrow().commands, ["test -e /var/migrated"]);
    assert_eq!(
        case.world.content("/etc/web.conf").as_deref(),
        Some("old\n")
    );
    assert!(
        !case
            .state
            .path()
            .join("state/pending-refresh.json")
            .exists()
    );

    // A real run then does what the noop said, and what it notified.
    let (report, changes) = case.apply_changes();
    assert_eq!(report.summary.changed, 6, "{report:#?}");
    assert_eq!(
        changes,
        [
            "install web",
            "mkdir /srv/web",
            "write /etc/web.conf",
            "touch /var/migrated",
            "enable web",
            "start web"
        ]
    );
    let guard = "test -e /var/migrated";
    assert_eq!(
        case.world.0.borrow().commands,
        [guard, guard, "touch /var/migrated", guard, "reload"],
        "noop's guard; the guard, the command, the guard again to verify; the notified reload"
    );
}

#[test]
fn noop_does_not_fail_what_waits_on_a_pending_change() {
    let case = Case::new(
        "[[directory]]\npath = \"/srv/app\"\n\n\
         [[exec]]\nname = \"build\"\ncommand = \"touch /srv/app/built\"\ncwd = \"/srv/app\"\n\
         creates = \"/srv/app/built\"\nunless = \"false\"\nrequires = [\"directory:/srv/app\"]\n",
    );
    case.world.world().failing.insert("false".into());

    // The guard cannot run before the directory exists: a pending change.
    let report = case.noop();
    assert_eq!(
        statuses(&report),
        [
            ("directory:/srv/app", WouldChange),
            ("exec:build", WouldChange)
        ]
    );
    assert!(
        error_of(&report, "exec:build").starts_with(
            "not checked until directory:/srv/app is applied (could not check exec:build: could not start"
        ),
        "{report:#?}"
    );
    assert_eq!(report.summary.failed, 0);

    // The real run makes the directory, then runs the exec in it.
    let (report, changes) = case.apply_changes();
    assert_eq!(report.summary.changed, 2, "{report:#?}");
    assert_eq!(changes, ["mkdir /srv/app", "touch /srv/app/built"]);
}

/// A service whose unit a file would write, and which also requires a
/// package that would be installed: both are named, not only the first of
/// its `requires`.
#[test]
fn noop_names_every_pending_change_a_check_waits_on() {
    let case = Case::new(
        "[[package]]\nname = \"python3\"\n\n\
         [[package]]\nname = \"curl\"\n\n\
         [[file]]\npath = \"/etc/systemd/system/app.service\"\ncontent = \"[Service]\"\n\
         notify = [\"service:app\"]\n\n\
         [[service]]\nname = \"app\"\nrunning = true\n\
         requires = [\"package:python3\", \"package:curl\"]\n",
    );
    case.world
        .world()
        .packages
        .insert("curl".into(), "7.88".into());

    let report = case.noop();
    assert_eq!(
        statuses(&report),
        [
            ("package:python3", WouldChange),
            ("package:curl", Unchanged),
            ("file:/etc/systemd/system/app.service", WouldChange),
            ("service:app", WouldChange)
        ]
    );
    assert_eq!(
        error_of(&report, "service:app"),
        "not checked until package:python3 and file:/etc/systemd/system/app.service are \
         applied (could not check service:app: service app is not known to the service \
         manager (is its package installed?))"
    );
}

#[test]
fn drift_left_after_apply_is_a_failure() {
    let case = Case::new(
        "[[package]]\nname = \"ghost\"\n\n\
         [[file]]\npath = \"/etc/ghost.conf\"\ncontent = \"x\"\nrequires = [\"package:ghost\"]\n",
    );
    case.world.world().phantom.insert("ghost".into());

    let (report, changes) = case.apply_changes();
    assert_eq!(
        statuses(&report),
        [("package:ghost", Failed), ("file:/etc/ghost.conf", Skipped)]
    );
    assert_eq!(
        error_of(&report, "package:ghost"),
        "package:ghost still differs after apply: ensure (absent → installed)"
    );
    // The report still says what was attempted.
    assert_eq!(report.resources[0].changes[0].after, "installed");
    assert_eq!(changes, ["install ghost"]);
}

#[test]
fn an_invalid_role_touches_nothing_and_takes_no_lock() {
    let case = Case::new(
        "[[file]]\npath = \"/etc/fine\"\ncontent = \"x\"\n\n\
         [[file]]\npath = \"relative\"\ncontent = \"y\"\n",
    );
    let err = case.try_run(false).unwrap_err();
    let diagnostics = err.downcast_ref::<Diagnostics>().expect("role diagnostics");
    assert_eq!(diagnostics.0.len(), 1);
    assert_eq!(diagnostics.0[0].file, "role.toml");
    assert!(case.world.changes().is_empty());
    assert!(case.world.0.borrow().files.is_empty());
    assert!(
        !case.state.path().join("state").exists(),
        "the state directory (and its lock) was created before validation"
    );
}

#[test]
fn the_host_is_prepared_with_the_role_before_the_run() {
    let case = Case::new(
        "[[service]]\nname = \"web\"\n\n[[service]]\nname = \"db\"\n\n\
         [[file]]\npath = \"/etc/x\"\ncontent = \"x\"\n",
    );
    case.apply();
    let mut prepared = case.world.0.borrow().prepared.clone();
    prepared.sort();
    assert_eq!(prepared, ["db", "web"]);
}
