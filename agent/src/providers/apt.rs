//! Debian and Ubuntu packages: dpkg says what is installed, apt-get changes it.
//!
//! What is installed comes from reading dpkg's status file once per run (under a
//! millisecond for the whole database) rather than spawning `dpkg-query` per
//! package (several milliseconds each), so a converged run costs almost nothing.
//! Changes go through `apt-get`, which resolves dependencies and refreshes the
//! package lists only when they are missing, stale, or do not know a package.
//!
//! A dpkg that was killed (a machine stopped during its first boot) leaves
//! packages half done and its journal unmerged, and apt refuses to work until
//! someone runs `dpkg --configure -a`. Before a change, the package resource
//! asks whether that happened ([`PackageProvider::interrupted`]) and has the
//! work finished here: `dpkg --configure -a`, then `apt-get -f install`.
//!
//! [`PackageProvider::interrupted`]: super::PackageProvider::interrupted

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};

use super::fs::{Posix, Stamp, stamp_path};
use super::process::{self, Ran};
use super::{FileSystem, Needs, ToInstall};

const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// dpkg's journal: status changes not yet merged into the status file.
const DPKG_UPDATES: &str = "/var/lib/dpkg/updates";
const APT_LISTS: &str = "/var/lib/apt/lists";

/// Where apt fits: Debian and its derivatives (Ubuntu).
pub const NEEDS: &[Needs] = &[Needs::OsFamily(&["debian"])];

/// Package lists older than this are refreshed before installing.
pub const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// How long to wait for another apt or dpkg (cloud-init, unattended-upgrades)
/// to release its locks on first boot.
const LOCK_WAIT: Duration = Duration::from_secs(300);
const LOCK_TIMEOUT_OPT: &str = "DPkg::Lock::Timeout=300";
const LOCK_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// How dpkg says another dpkg or apt holds its lock; it does not wait.
const DPKG_LOCKED: &str = "locked by another process";

/// The most journal entries read when describing an interrupted dpkg; dpkg
/// merges them into the status file every few dozen.
const MAX_JOURNAL_ENTRIES: usize = 1000;

/// Every apt-get call: no debconf prompts; English messages, because we match
/// apt's errors (maintainer scripts must work in any locale, and run under C in
/// cloud-init and containers anyway).
const ENV: &[(&str, &str)] = &[("DEBIAN_FRONTEND", "noninteractive"), ("LC_ALL", "C.UTF-8")];

/// Options of every apt-get call. Changed configuration files are kept as the
/// operator (or a Cairn file resource) left them, new defaults are taken where
/// nothing was changed: never a prompt. Unless a package says otherwise
/// (`install_recommends`), recommends follow the host's own
/// `APT::Install-Recommends`, as with an interactive `apt-get install`, so an
/// operator who disables them system-wide gets the same from Cairn.
const COMMON_ARGS: &[&str] = &[
    "-q",
    "-y",
    "-o",
    LOCK_TIMEOUT_OPT,
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
];

pub struct Apt {
    status_path: PathBuf,
    updates_dir: PathBuf,
    lists_dir: PathBuf,
    /// The dpkg database as last read; `None` until first asked and after every
    /// change, so a read after install or remove sees the new state.
    db: RefCell<Option<Installed>>,
    /// What an interrupted dpkg left ([`Apt::unfinished`]), with the stamps
    /// of the status file and the journal directory it was read at: asked
    /// before every package change, it is read again only when dpkg (run by
    /// apt here or by anything else, an `[[exec]]`) changed either.
    unfinished: RefCell<Option<(DpkgStamps, Unfinished)>>,
    /// `apt-get update` already ran for this provider (one per run at most).
    updated: Cell<bool>,
    /// The lists were stale before one repository's lists were refreshed
    /// alone: that refresh made the directory look fresh, but the other
    /// sources' lists are as stale (or missing) as they were.
    stale_before_source: Cell<bool>,
}

impl Default for Apt {
    fn default() -> Self {
        Self::new()
    }
}

impl Apt {
    pub fn new() -> Self {
        Apt {
            status_path: PathBuf::from(DPKG_STATUS),
            updates_dir: PathBuf::from(DPKG_UPDATES),
            lists_dir: PathBuf::from(APT_LISTS),
            db: RefCell::new(None),
            unfinished: RefCell::new(None),
            updated: Cell::new(false),
            stale_before_source: Cell::new(false),
        }
    }

    /// Forgets what was read of dpkg's database, after apt or dpkg ran.
    fn invalidate(&self) {
        self.db.replace(None);
        self.unfinished.replace(None);
    }

    /// Answers `question` from the dpkg database, read on the first question
    /// and after each change only.
    fn look_up<T>(&self, package: &str, question: impl FnOnce(&Installed) -> T) -> Result<T> {
        let mut slot = self.db.borrow_mut();
        if slot.is_none() {
            let raw = Posix::default().read(&self.status_path).with_context(|| {
                format!("could not look up package {package} in the dpkg database")
            })?;
            *slot = Some(Installed::parse(&String::from_utf8_lossy(&raw)));
        }
        Ok(question(slot.as_ref().expect("read above")))
    }

    /// `apt-get remove` or `apt-get purge` of `package`.
    fn remove_with(&self, verb: &str, package: &str) -> Result<()> {
        let args = [verb, package];
        let ran = self.apt_get(&args);
        self.invalidate();
        let ran = ran?;
        if !ran.success {
            return Err(failed(&args, &ran));
        }
        Ok(())
    }

    /// Runs `apt-get COMMON_ARGS args…`. dpkg's lock is waited for by apt itself
    /// (`DPkg::Lock::Timeout`); apt 2.6 has no such wait for the lists and
    /// archives locks, so a "Could not get lock" failure is retried here until
    /// `LOCK_WAIT` has passed.
    fn apt_get(&self, args: &[&str]) -> Result<Ran> {
        let all: Vec<&str> = COMMON_ARGS.iter().chain(args).copied().collect();
        run_waiting_for_lock("apt-get", &all, "Could not get lock")
    }

    fn update(&self) -> Result<()> {
        self.updated.set(true);
        let ran = self.apt_get(&["update"])?;
        if !ran.success {
            return Err(failed(&["update"], &ran).context("could not refresh the package lists"));
        }
        Ok(())
    }

    /// Runs one `apt-get install`; the caller judges its outcome.
    fn try_install(&self, args: &[&str]) -> Result<Ran> {
        let ran = self.apt_get(args);
        // Even a failed apt-get may have changed packages.
        self.invalidate();
        ran
    }

    /// Refreshes lists that are missing or old, which would install an
    /// outdated version or nothing at all. A failed refresh of merely old
    /// lists is returned, not fatal: the old lists may do, and an install that
    /// still fails can say why.
    fn refresh_stale_lists(&self) -> Result<Option<anyhow::Error>> {
        if self.updated.get() {
            return Ok(None);
        }
        let lists = scan_lists(&self.lists_dir)?;
        if !self.stale_before_source.get() && !lists_stale(&lists, SystemTime::now()) {
            return Ok(None);
        }
        match self.update() {
            Ok(()) => Ok(None),
            Err(e) if lists.has_packages => Ok(Some(e)),
            Err(e) => Err(e),
        }
    }

    /// One `apt-get install` of every one of `packages`.
    fn install_inner(&self, packages: &[ToInstall<'_>], recommends: Option<bool>) -> Result<()> {
        let update_error = self.refresh_stale_lists()?;
        let targets: Vec<String> = packages.iter().map(|p| p.to_string()).collect();
        let mut args = vec!["install"];
        // A pinned version is exactly what the role asks for, even when it is
        // older than the installed one.
        if packages.iter().any(|p| p.version.is_some()) {
            args.push("--allow-downgrades");
        }
        match recommends {
            Some(true) => args.push("--install-recommends"),
            Some(false) => args.push("--no-install-recommends"),
            None => {}
        }
        args.extend(targets.iter().map(String::as_str));
        let mut ran = self.try_install(&args)?;
        if !ran.success && !self.updated.get() && missing_from_lists(&ran.stderr) {
            // The lists may predate the package or version: refresh once, retry.
            self.update()?;
            ran = self.try_install(&args)?;
        }
        if ran.success {
            return Ok(());
        }
        let err = failed(&args, &ran);
        Err(match update_error {
            Some(u) => err.context(format!(
                "the package lists are stale and refreshing them failed: {u:#}"
            )),
            None => err,
        })
    }

    /// Whether dpkg's journal holds entries, and the packages left half done
    /// by the status file and the journal: read on the first question and
    /// after each change only.
    fn unfinished(&self) -> Result<Unfinished> {
        let stamps = DpkgStamps {
            status: stamp_if_any(&self.status_path)?,
            updates: stamp_if_any(&self.updates_dir)?,
        };
        if let Some((known_at, known)) = self.unfinished.borrow().as_ref()
            && *known_at == stamps
        {
            return Ok(known.clone());
        }
        let journal = self.journal()?;
        let mut texts = Vec::with_capacity(journal.len() + 1);
        let read =
            std::iter::once(&self.status_path).chain(journal.iter().take(MAX_JOURNAL_ENTRIES));
        for path in read {
            let raw = Posix::default()
                .read(path)
                .with_context(|| format!("could not read {}", path.display()))?;
            texts.push(String::from_utf8_lossy(&raw).into_owned());
        }
        let known = Unfinished {
            journal: !journal.is_empty(),
            half_done: half_done(texts.iter().map(String::as_str)),
        };
        self.unfinished.replace(Some((stamps, known.clone())));
        Ok(known)
    }

    /// A package whose unpacking dpkg was killed in is left half installed
    /// even after `apt-get -f install` (apt keeps it as it is): installed
    /// again here, from the lists, when it was being installed. None may be
    /// left half done after.
    fn reinstall_half_done(&self) -> Result<()> {
        let left = self.unfinished()?.half_done;
        let mut args = vec!["install", "--reinstall"];
        args.extend(left.iter().filter(|h| h.wanted).map(|h| h.name.as_str()));
        if args.len() > 2 {
            let ran = self.try_install(&args)?;
            if !ran.success {
                return Err(failed(&args, &ran));
            }
        }
        let left = self.unfinished()?.half_done;
        if !left.is_empty() {
            bail!("{} still half done after `apt-get -f install`", list(&left));
        }
        Ok(())
    }

    /// dpkg's journal entries (files named by a number, as apt counts
    /// them), in the order dpkg wrote them.
    fn journal(&self) -> Result<Vec<PathBuf>> {
        let context = || {
            format!(
                "could not list dpkg's journal in {}",
                self.updates_dir.display()
            )
        };
        let entries = match std::fs::read_dir(&self.updates_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(context),
        };
        let mut numbered: Vec<(u64, PathBuf)> = Vec::new();
        for entry in entries {
            let entry = entry.with_context(context)?;
            let name = entry.file_name();
            let number = name
                .to_str()
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok());
            if let Some(number) = number {
                numbered.push((number, entry.path()));
            }
        }
        numbered.sort();
        Ok(numbered.into_iter().map(|(_, path)| path).collect())
    }
}

/// `apt-get update` of one source file alone (`Dir::Etc::sourcelist`, no
/// `sources.list.d`), keeping the lists of every other source
/// (`List-Cleanup=0`), and failing on any error, a list that could not be
/// fetched included (`--error-on=any`; by default that is only a warning).
fn update_one_source_args(sources: &Path) -> [String; 8] {
    [
        "-o".into(),
        format!("Dir::Etc::sourcelist={}", sources.display()),
        "-o".into(),
        "Dir::Etc::sourceparts=-".into(),
        "-o".into(),
        "APT::Get::List-Cleanup=0".into(),
        "--error-on=any".into(),
        "update".into(),
    ]
}

fn failed(args: &[&str], ran: &Ran) -> anyhow::Error {
    anyhow!(
        "`apt-get {}` failed with {}",
        args.join(" "),
        ran.describe()
    )
}

/// Runs `program args…`, again while it fails saying `locked` (another apt
/// or dpkg at work), until [`LOCK_WAIT`] has passed.
fn run_waiting_for_lock(program: &str, args: &[&str], locked: &str) -> Result<Ran> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let ran = process::run(program, args, ENV)?;
        if ran.success || !ran.stderr.contains(locked) || Instant::now() >= deadline {
            return Ok(ran);
        }
        std::thread::sleep(LOCK_RETRY_PAUSE);
    }
}

impl super::PackageProvider for Apt {
    fn name(&self) -> &'static str {
        "apt"
    }

    /// Interrupted when dpkg's journal holds entries (what makes apt refuse
    /// with "dpkg was interrupted") or a package is left half done; read only
    /// when a package is about to change.
    fn interrupted(&self) -> Result<Option<String>> {
        let Unfinished { journal, half_done } = self
            .unfinished()
            .context("could not tell whether dpkg was interrupted")?;
        if !journal && half_done.is_empty() {
            return Ok(None);
        }
        Ok(Some(if half_done.is_empty() {
            "dpkg was interrupted".into()
        } else {
            format!("dpkg was interrupted: {}", list(&half_done))
        }))
    }

    fn finish_interrupted(&self) -> Result<()> {
        let finish = || -> Result<()> {
            // Packages left half installed are installed again from archives
            // the lists must know.
            let update_error = self.refresh_stale_lists()?;
            let configure = ["--force-confdef", "--force-confold", "--configure", "-a"];
            let configured = run_waiting_for_lock("dpkg", &configure, DPKG_LOCKED);
            self.invalidate();
            let configured = configured?;
            let fix = ["-f", "install"];
            let fixed = self.try_install(&fix)?;
            if fixed.success {
                return self.reinstall_half_done();
            }
            // dpkg --configure -a fails on a package that must be installed
            // again: apt-get -f install's failure is the one that counts,
            // dpkg's says why.
            let mut err = failed(&fix, &fixed);
            if !configured.success {
                err = err.context(format!(
                    "`dpkg {}` failed with {}",
                    configure.join(" "),
                    configured.describe()
                ));
            }
            if let Some(u) = update_error {
                err = err.context(format!("refreshing the package lists failed: {u:#}"));
            }
            Err(err)
        };
        finish().context("could not finish what an interrupted dpkg left undone")
    }

    fn installed(&self, package: &str) -> Result<Option<String>> {
        self.look_up(package, |db| db.version(package).map(str::to_owned))
    }

    fn left_behind(&self, package: &str) -> Result<Option<String>> {
        self.look_up(package, |db| db.left_behind(package).map(str::to_owned))
    }

    fn install(
        &self,
        package: &str,
        version: Option<&str>,
        recommends: Option<bool>,
    ) -> Result<()> {
        let one = ToInstall {
            name: package,
            version,
        };
        self.install_inner(&[one], recommends)
            .with_context(|| match version {
                Some(v) => format!("could not install package {package} version {v}"),
                None => format!("could not install package {package}"),
            })
    }

    /// One `apt-get install a b=1.2 c`: apt resolves them together and dpkg
    /// runs once. apt checks that every one can be installed before it
    /// changes anything, so a package it cannot find fails the whole
    /// transaction with nothing installed.
    fn install_together(&self, packages: &[ToInstall<'_>], recommends: Option<bool>) -> Result<()> {
        self.install_inner(packages, recommends).with_context(|| {
            let names: Vec<String> = packages.iter().map(|p| p.to_string()).collect();
            format!(
                "could not install packages {} in one transaction",
                names.join(", ")
            )
        })
    }

    /// `remove`, not `purge`: configuration files stay, as with Puppet's and
    /// Chef's default, so removing a package by mistake loses no local changes
    /// (dpkg then reports it as `config-files`, which counts as absent). As with
    /// `apt-get remove -y` by hand, packages that depend on it go too; apt
    /// refuses to remove essential packages under `-y`.
    fn remove(&self, package: &str) -> Result<()> {
        self.remove_with("remove", package)
            .with_context(|| format!("could not remove package {package}"))
    }

    /// apt reads the source from a copy in a directory of its own (apt
    /// takes a file as deb822 by its `.sources` name), so the live
    /// `sources.list.d` never holds a source whose lists failed.
    fn update_source(&self, name: &str, source: &[u8]) -> Result<()> {
        if !self.updated.get() && lists_stale(&scan_lists(&self.lists_dir)?, SystemTime::now()) {
            self.stale_before_source.set(true);
        }
        let update = || -> Result<()> {
            let dir = tempfile::Builder::new()
                .prefix("cairn-apt-source.")
                .tempdir()
                .context("could not make a directory for the source to try")?;
            let path = dir.path().join(format!("{name}.sources"));
            std::fs::write(&path, source)
                .with_context(|| format!("could not write {}", path.display()))?;
            let args = update_one_source_args(&path);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let ran = self.apt_get(&args)?;
            if !ran.success {
                return Err(failed(&args, &ran));
            }
            Ok(())
        };
        update().with_context(|| format!("could not refresh the package lists of {name}"))
    }

    /// As `remove`, configuration files too; packages that depend on it are
    /// purged with it.
    fn purge(&self, package: &str) -> Result<()> {
        self.remove_with("purge", package)
            .with_context(|| format!("could not purge package {package}"))
    }
}

/// Whether apt-get failed because its lists do not know the package or version,
/// which an `apt-get update` may fix.
pub(crate) fn missing_from_lists(stderr: &str) -> bool {
    stderr.contains("Unable to locate package")
        || stderr.contains("has no installation candidate")
        || (stderr.contains("Version '") && stderr.contains("was not found"))
}

/// Packages whose last word in `texts` (the status file, then dpkg's journal
/// entries in order) is a state an interrupted dpkg leaves, with that state.
fn half_done<'t>(texts: impl IntoIterator<Item = &'t str>) -> Vec<HalfDone> {
    let mut last: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for text in texts {
        for_each_stanza(text, |name, status, arch, _| {
            last.insert((name, arch), status);
        });
    }
    last.into_iter()
        .filter_map(|((name, _), status)| {
            let mut words = status.split_ascii_whitespace();
            let (want, flag, state) = (words.next(), words.next(), words.next()?);
            let half = flag == Some("reinstreq")
                || matches!(state, "half-installed" | "unpacked" | "half-configured");
            half.then(|| HalfDone {
                name: name.to_string(),
                state: state.to_string(),
                wanted: matches!(want, Some("install" | "hold")),
            })
        })
        .collect()
}

/// What dpkg's status file and journal directory were when read: dpkg
/// replaces the status file by rename and adds each journal entry as a new
/// file, so any run of dpkg moves one of them. `None`: missing.
#[derive(Clone, Copy, PartialEq, Eq)]
struct DpkgStamps {
    status: Option<Stamp>,
    updates: Option<Stamp>,
}

fn stamp_if_any(path: &Path) -> Result<Option<Stamp>> {
    match stamp_path(path) {
        Ok(stamp) => Ok(Some(stamp)),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("could not stat {}", path.display())),
    }
}

/// What an interrupted dpkg left.
#[derive(Clone)]
struct Unfinished {
    /// dpkg's journal holds entries.
    journal: bool,
    /// Packages left half done by the status file and the journal.
    half_done: Vec<HalfDone>,
}

/// A package an interrupted dpkg left half done.
#[derive(Clone)]
struct HalfDone {
    name: String,
    /// dpkg's state of it: `half-installed`, `unpacked`, …
    state: String,
    /// It was being installed, not removed.
    wanted: bool,
}

/// `a half-installed, b unpacked`.
fn list(half_done: &[HalfDone]) -> String {
    let each: Vec<String> = half_done
        .iter()
        .map(|h| format!("{} {}", h.name, h.state))
        .collect();
    each.join(", ")
}

/// Calls `f(name, status, arch, version)` for each stanza of a dpkg status
/// file (or journal entry), in one pass looking only at those four fields:
/// the file is large (mostly descriptions) and read on every run.
fn for_each_stanza<'t>(text: &'t str, mut f: impl FnMut(&'t str, &'t str, &'t str, &'t str)) {
    let (mut name, mut status, mut arch, mut version) = ("", "", "", "");
    // A final empty line closes the last stanza.
    for line in text.lines().chain([""]) {
        if line.is_empty() {
            if !name.is_empty() {
                f(name, status, arch, version);
            }
            (name, status, arch, version) = ("", "", "", "");
        } else if let Some(v) = line.strip_prefix("Package:") {
            name = v.trim();
        } else if let Some(v) = line.strip_prefix("Status:") {
            status = v.trim();
        } else if let Some(v) = line.strip_prefix("Architecture:") {
            arch = v.trim();
        } else if let Some(v) = line.strip_prefix("Version:") {
            version = v.trim();
        }
        // Other fields and continuation lines (which start with a blank) are
        // not needed.
    }
}

/// The installed packages of a dpkg status file.
#[derive(Debug, Default)]
pub(crate) struct Installed {
    /// dpkg's own architecture, which is the native one; `None` when the file
    /// has no `dpkg` entry (then any architecture counts).
    native: Option<String>,
    /// Package name → (architecture, version) of each installed instance: a
    /// `Multi-Arch: same` package appears once per architecture.
    packages: HashMap<String, Vec<(String, String)>>,
    /// Package name → (architecture, dpkg state) of each instance that is
    /// not installed but not gone either: `config-files` after a removal,
    /// `half-installed` and the like after a failure.
    left: HashMap<String, Vec<(String, String)>>,
}

impl Installed {
    pub(crate) fn parse(text: &str) -> Installed {
        let mut db = Installed::default();
        for_each_stanza(text, |name, status, arch, version| {
            if is_installed(status) {
                db.add(name, arch, version);
            } else if let Some(state) = status.split_ascii_whitespace().nth(2)
                && state != "not-installed"
            {
                db.left
                    .entry(name.to_string())
                    .or_default()
                    .push((arch.to_string(), state.to_string()));
            }
        });
        db
    }

    fn add(&mut self, name: &str, arch: &str, version: &str) {
        if name == "dpkg" {
            self.native = Some(arch.to_string());
        }
        self.packages
            .entry(name.to_string())
            .or_default()
            .push((arch.to_string(), version.to_string()));
    }

    /// The installed version of `name` for the native architecture or `all`,
    /// as `apt-get install name` would install it.
    pub(crate) fn version(&self, name: &str) -> Option<&str> {
        self.native_instance(self.packages.get(name)?)
    }

    /// The dpkg state of what is left of `name` (native architecture or
    /// `all`) when it is not installed: `config-files`, `half-installed`, …
    pub(crate) fn left_behind(&self, name: &str) -> Option<&str> {
        self.native_instance(self.left.get(name)?)
    }

    /// The value of the instance `apt-get install name` would act on.
    fn native_instance<'a>(&self, instances: &'a [(String, String)]) -> Option<&'a str> {
        instances
            .iter()
            .find(|(arch, _)| arch == "all" || self.native.as_deref().is_none_or(|n| n == arch))
            .map(|(_, v)| v.as_str())
    }
}

/// Whether a `Status:` value (`want error-flag state`) means the package is on
/// disk and configured. The want flag is only a selection (`hold`, `deinstall`
/// still have the package installed); pending triggers do not make a package
/// absent, and apt-get would not change them, so counting them as absent would
/// never converge. `config-files`, `half-installed` and the like are absent.
fn is_installed(status: &str) -> bool {
    let mut words = status.split_ascii_whitespace();
    let (_want, flag, state) = (words.next(), words.next(), words.next());
    flag == Some("ok")
        && matches!(
            state,
            Some("installed" | "triggers-pending" | "triggers-awaited")
        )
}

/// What the package lists directory holds, for the staleness rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lists {
    /// At least one `*_Packages` index (possibly compressed) is present.
    pub has_packages: bool,
    /// The newest time an update left on the directory, if any.
    pub newest: Option<SystemTime>,
}

/// Reads the lists directory. List files keep the server's Last-Modified time,
/// so a mirror that rarely changes would look stale forever; `partial/` is
/// written by every `apt-get update`, so its time counts as well.
pub(crate) fn scan_lists(dir: &Path) -> Result<Lists> {
    let mut lists = Lists {
        has_packages: false,
        newest: None,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(lists),
        Err(e) => {
            return Err(e).with_context(|| {
                format!("could not list the apt package lists in {}", dir.display())
            });
        }
    };
    for entry in entries {
        let entry = entry.with_context(|| {
            format!("could not list the apt package lists in {}", dir.display())
        })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_packages = name.contains("_Packages");
        if !(is_packages || name.ends_with("Release") || name == "partial") {
            continue;
        }
        let meta = entry
            .metadata()
            .with_context(|| format!("could not stat {}", entry.path().display()))?;
        has_mtime(&mut lists, meta.modified().ok());
        lists.has_packages |= is_packages && meta.is_file();
    }
    Ok(lists)
}

fn has_mtime(lists: &mut Lists, t: Option<SystemTime>) {
    if let Some(t) = t {
        lists.newest = Some(lists.newest.map_or(t, |n| n.max(t)));
    }
}

/// Whether the lists must be refreshed before installing: none at all, or none
/// touched within [`LISTS_MAX_AGE`]. A time in the future (the clock was set
/// back) counts as fresh rather than forcing an update on every run.
pub(crate) fn lists_stale(lists: &Lists, now: SystemTime) -> bool {
    if !lists.has_packages {
        return true;
    }
    match lists.newest {
        None => true,
        Some(t) => now.duration_since(t).is_ok_and(|age| age > LISTS_MAX_AGE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::PackageProvider;

    const SAMPLE: &str = "\
Package: dpkg
Essential: yes
Status: install ok installed
Priority: required
Architecture: amd64
Version: 1.21.22
Description: Debian package management system
 This package provides the low-level infrastructure for handling the
 installation and removal of Debian software packages.

Package: nginx-common
Status: deinstall ok config-files
Architecture: all
Version: 1.22.1-9
Conffiles:
 /etc/nginx/nginx.conf 0123456789abcdef0123456789abcdef

Package: libfoo1
Status: install ok installed
Multi-Arch: same
Architecture: i386
Version: 2.0-1

Package: libfoo1
Status: install ok installed
Multi-Arch: same
Architecture: amd64
Version: 2.0-2

Package: libbar1
Status: install ok installed
Multi-Arch: same
Architecture: i386
Version: 3.1-1

Package: tzdata
Status: hold ok installed
Architecture: all
Version: 2024a-0+deb12u1

Package: broken
Status: install reinstreq half-installed
Architecture: amd64
Version: 0.1-1

Package: man-db
Status: install ok triggers-pending
Architecture: amd64
Version: 2.11.2-2
Triggers-Pending: /usr/share/man

Package: unpacked
Status: install ok unpacked
Architecture: amd64
Version: 1.0-1
";

    #[test]
    fn dpkg_status_parser_keeps_installed_packages_only() {
        let db = Installed::parse(SAMPLE);
        assert_eq!(db.native.as_deref(), Some("amd64"));
        assert_eq!(db.version("dpkg"), Some("1.21.22"));
        // Removed but not purged: only configuration files are left.
        assert_eq!(db.version("nginx-common"), None);
        assert_eq!(db.version("broken"), None);
        assert_eq!(db.version("unpacked"), None);
        // A hold is a selection; the package is installed.
        assert_eq!(db.version("tzdata"), Some("2024a-0+deb12u1"));
        assert_eq!(db.version("man-db"), Some("2.11.2-2"));
        assert_eq!(db.version("not-there"), None);
    }

    #[test]
    fn dpkg_status_parser_keeps_what_a_removal_left() {
        let db = Installed::parse(&format!(
            "{SAMPLE}\nPackage: gone\nStatus: purge ok not-installed\nArchitecture: amd64\n"
        ));
        assert_eq!(db.left_behind("nginx-common"), Some("config-files"));
        assert_eq!(db.left_behind("broken"), Some("half-installed"));
        // Installed, purged, or never heard of: nothing left behind.
        assert_eq!(db.left_behind("dpkg"), None);
        assert_eq!(db.left_behind("gone"), None);
        assert_eq!(db.left_behind("not-there"), None);
    }

    #[test]
    fn half_done_packages_are_read_from_the_status_then_the_journal() {
        assert_eq!(
            list(&half_done([SAMPLE])),
            "broken half-installed, unpacked unpacked"
        );
        // Journal entries are later words: one finished `unpacked`, one
        // left `nginx` half installed.
        let journal = [
            "Package: unpacked\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0-1\n",
            "Package: nginx\nStatus: install reinstreq half-installed\nArchitecture: amd64\n",
        ];
        assert_eq!(
            list(&half_done([SAMPLE].into_iter().chain(journal))),
            "broken half-installed, nginx half-installed"
        );
    }

    #[test]
    fn an_interrupted_dpkg_is_seen_in_its_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (status, updates) = (dir.path().join("status"), dir.path().join("updates"));
        std::fs::write(&status, "Package: dpkg\nStatus: install ok installed\n\n").unwrap();
        let apt = Apt {
            status_path: status.clone(),
            updates_dir: updates.clone(),
            ..Apt::new()
        };
        assert_eq!(apt.interrupted().unwrap(), None, "no journal directory");
        std::fs::create_dir(&updates).unwrap();
        // dpkg's temporary file is not an entry.
        std::fs::write(updates.join("tmp.i"), "").unwrap();
        apt.invalidate();
        assert_eq!(apt.interrupted().unwrap(), None);
        std::fs::write(
            updates.join("0001"),
            "Package: figlet\nStatus: install reinstreq half-installed\n",
        )
        .unwrap();
        std::fs::write(
            updates.join("0000"),
            "Package: figlet\nStatus: install ok not-installed\n",
        )
        .unwrap();
        // Written by a dpkg run outside the provider (an exec), the journal
        // is read again without being told.
        assert_eq!(
            apt.interrupted().unwrap().as_deref(),
            Some("dpkg was interrupted: figlet half-installed")
        );
        for _ in 0..100 {
            assert_eq!(
                apt.interrupted().unwrap().as_deref(),
                Some("dpkg was interrupted: figlet half-installed")
            );
        }
        // dpkg finished the work: the journal is emptied and the status
        // file replaced.
        std::fs::remove_file(updates.join("0000")).unwrap();
        std::fs::remove_file(updates.join("0001")).unwrap();
        let replaced = dir.path().join("status.new");
        std::fs::write(
            &replaced,
            "Package: figlet\nStatus: install ok installed\n\n",
        )
        .unwrap();
        std::fs::rename(&replaced, &status).unwrap();
        assert_eq!(apt.interrupted().unwrap(), None);
        std::fs::remove_file(&status).unwrap();
        assert!(apt.interrupted().is_err(), "a missing status file is read");
    }

    #[test]
    fn dpkg_status_parser_picks_the_native_architecture() {
        let db = Installed::parse(SAMPLE);
        // The amd64 instance, whichever comes first in the file.
        assert_eq!(db.version("libfoo1"), Some("2.0-2"));
        // Only a foreign instance: `apt-get install libbar1` would still install it.
        assert_eq!(db.version("libbar1"), None);
        assert_eq!(db.packages["libfoo1"].len(), 2);
    }

    #[test]
    fn dpkg_status_parser_without_dpkg_entry_accepts_any_architecture() {
        let db = Installed::parse(
            "Package: x\nStatus: install ok installed\nArchitecture: arm64\nVersion: 1\n",
        );
        assert_eq!(db.native, None);
        assert_eq!(db.version("x"), Some("1"));
    }

    #[test]
    fn dpkg_status_parser_matches_dpkg_query_on_this_host() {
        let ran = process::run_ok(
            "dpkg-query",
            [
                "-W",
                "-f",
                "${Package}\t${db:Status-Status}\t${Version}\t${Architecture}\n",
            ],
            &[],
        )
        .unwrap();
        let native = process::run_ok("dpkg", ["--print-architecture"], &[]).unwrap();
        let native = native.stdout.trim();
        let db = Installed::parse(&std::fs::read_to_string(DPKG_STATUS).unwrap());
        assert_eq!(db.native.as_deref(), Some(native));
        let mut checked = 0;
        for line in ran.stdout.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let (name, state, version, arch) = (f[0], f[1], f[2], f[3]);
            if arch != native && arch != "all" {
                continue;
            }
            let want = (state == "installed").then_some(version);
            assert_eq!(db.version(name), want, "{line}");
            let left = !matches!(
                state,
                "installed" | "not-installed" | "triggers-pending" | "triggers-awaited"
            );
            assert_eq!(db.left_behind(name), left.then_some(state), "{line}");
            checked += 1;
        }
        assert!(checked > 50, "only {checked} packages compared");
    }

    fn lists(has_packages: bool, age_secs: Option<u64>, now: SystemTime) -> Lists {
        Lists {
            has_packages,
            newest: age_secs.map(|s| now - Duration::from_secs(s)),
        }
    }

    #[test]
    fn apt_lists_staleness_rule() {
        let now = SystemTime::now();
        let hour = 3600;
        assert!(
            lists_stale(&lists(false, None, now), now),
            "no lists at all"
        );
        assert!(
            lists_stale(&lists(false, Some(60), now), now),
            "only Release files, no Packages"
        );
        assert!(!lists_stale(&lists(true, Some(hour), now), now));
        assert!(!lists_stale(&lists(true, Some(23 * hour), now), now));
        assert!(lists_stale(&lists(true, Some(25 * hour), now), now));
        // Clock set back: the lists look newer than now; do not update every run.
        let future = Lists {
            has_packages: true,
            newest: Some(now + Duration::from_secs(hour)),
        };
        assert!(!lists_stale(&future, now));
    }

    fn touch(path: &Path, t: SystemTime) {
        let f = std::fs::File::create(path).unwrap();
        f.set_modified(t).unwrap();
    }

    #[test]
    fn apt_lists_scan_takes_the_newest_update_time() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let now = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(
            scan_lists(&d.join("missing")).unwrap(),
            Lists {
                has_packages: false,
                newest: None
            }
        );
        // An unrelated, newer file does not make old lists fresh.
        touch(&d.join("lock"), now);
        touch(
            &d.join("deb.example.org_debian_dists_bookworm_InRelease"),
            now - 3 * day,
        );
        let l = scan_lists(d).unwrap();
        assert!(!l.has_packages);
        assert!(lists_stale(&l, now));
        touch(
            &d.join("deb.example.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4"),
            now - 2 * day,
        );
        let l = scan_lists(d).unwrap();
        assert!(l.has_packages);
        assert_eq!(l.newest, Some(now - 2 * day));
        assert!(lists_stale(&l, now));
        // An update that found nothing new still writes partial/.
        std::fs::create_dir(d.join("partial")).unwrap();
        std::fs::File::open(d.join("partial"))
            .unwrap()
            .set_modified(now - Duration::from_secs(60))
            .unwrap();
        assert!(!lists_stale(&scan_lists(d).unwrap(), now));
    }

    #[test]
    fn apt_errors_that_an_update_may_fix() {
        assert!(missing_from_lists("E: Unable to locate package cairn-x\n"));
        assert!(missing_from_lists(
            "E: Package 'nginx' has no installation candidate\n"
        ));
        assert!(missing_from_lists(
            "E: Version '9.9' for 'figlet' was not found\n"
        ));
        assert!(!missing_from_lists(
            "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 42 (apt-get)\n"
        ));
        assert!(!missing_from_lists(
            "E: Sub-process /usr/bin/dpkg returned an error code (1)\n"
        ));
    }

    #[test]
    fn apt_installed_reads_the_database_once() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status");
        std::fs::write(
            &status,
            "Package: dpkg\nStatus: install ok installed\nVersion: 1.21.22\n\n",
        )
        .unwrap();
        let apt = Apt {
            status_path: status.clone(),
            ..Apt::new()
        };
        assert_eq!(apt.installed("dpkg").unwrap().as_deref(), Some("1.21.22"));
        // Later questions are answered from memory: the file is not read again.
        std::fs::remove_file(&status).unwrap();
        for i in 0..100 {
            assert_eq!(apt.installed(&format!("cairn-absent-{i}")).unwrap(), None);
        }
        assert!(apt.installed("dpkg").unwrap().is_some());
        // A change forgets it, so the next question reads the database again.
        apt.invalidate();
        assert!(apt.installed("dpkg").is_err());
    }
}
