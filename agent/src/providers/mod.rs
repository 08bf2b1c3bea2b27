//! Providers: the only code that touches the host.
//!
//! Each provider is a small capability set behind a trait, chosen from facts when
//! a resource first needs it, so a role without services never asks for systemd.
//! Files and processes are POSIX everywhere and need no choosing ([`fs`],
//! [`process`]).

use std::cell::OnceCell;

use anyhow::{Result, anyhow, bail};
use cairn_proto::facts::Facts;

pub mod apt;
pub mod fs;
pub mod process;
pub mod shadow;
pub mod systemd;

/// Installs and removes OS packages.
pub trait PackageProvider {
    fn name(&self) -> &'static str;
    /// The installed version of `package`, or `None` when it is not installed.
    fn installed(&self, package: &str) -> Result<Option<String>>;
    /// Installs `package` (at `version` when given).
    fn install(&self, package: &str, version: Option<&str>) -> Result<()>;
    fn remove(&self, package: &str) -> Result<()>;
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

/// Starts, stops and enables services.
pub trait ServiceProvider {
    fn name(&self) -> &'static str;
    fn status(&self, service: &str) -> Result<ServiceStatus>;
    fn start(&self, service: &str) -> Result<()>;
    fn stop(&self, service: &str) -> Result<()>;
    fn restart(&self, service: &str) -> Result<()>;
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
    /// Groups to add the user to (membership is never removed).
    pub add_groups: Vec<String>,
}

/// Manages local users and groups.
pub trait AccountProvider {
    fn name(&self) -> &'static str;
    fn group(&self, name: &str) -> Result<Option<GroupEntry>>;
    fn user(&self, name: &str) -> Result<Option<UserEntry>>;
    fn create_group(&self, group: &cairn_proto::role::Group) -> Result<()>;
    fn set_gid(&self, name: &str, gid: u32) -> Result<()>;
    fn delete_group(&self, name: &str) -> Result<()>;
    fn create_user(&self, user: &cairn_proto::role::User) -> Result<()>;
    fn modify_user(&self, name: &str, changes: &UserChanges) -> Result<()>;
    fn delete_user(&self, name: &str) -> Result<()>;
}

/// The host as resources see it: facts, plus providers started on first use.
pub struct Host {
    pub facts: Facts,
    packages: OnceCell<Result<Box<dyn PackageProvider>, String>>,
    services: OnceCell<Result<Box<dyn ServiceProvider>, String>>,
    accounts: OnceCell<Result<Box<dyn AccountProvider>, String>>,
    /// Services the run will ask about, so the provider can read them in one go.
    service_names: Vec<String>,
}

impl Host {
    pub fn new(facts: Facts, service_names: Vec<String>) -> Self {
        Host {
            facts,
            packages: OnceCell::new(),
            services: OnceCell::new(),
            accounts: OnceCell::new(),
            service_names,
        }
    }

    pub fn packages(&self) -> Result<&dyn PackageProvider> {
        self.packages
            .get_or_init(|| select_packages(&self.facts).map_err(|e| format!("{e:#}")))
            .as_deref()
            .map_err(|e| anyhow!("{e}"))
    }

    pub fn services(&self) -> Result<&dyn ServiceProvider> {
        self.services
            .get_or_init(|| select_services(&self.service_names).map_err(|e| format!("{e:#}")))
            .as_deref()
            .map_err(|e| anyhow!("{e}"))
    }

    pub fn accounts(&self) -> Result<&dyn AccountProvider> {
        self.accounts
            .get_or_init(|| select_accounts().map_err(|e| format!("{e:#}")))
            .as_deref()
            .map_err(|e| anyhow!("{e}"))
    }
}

fn select_packages(facts: &Facts) -> Result<Box<dyn PackageProvider>> {
    match facts.os.family.as_str() {
        "debian" => Ok(Box::new(apt::Apt::new())),
        family => bail!(
            "no package provider for {} (family {family:?}): Cairn manages packages with apt on Debian and Ubuntu",
            facts.os.id
        ),
    }
}

fn select_services(names: &[String]) -> Result<Box<dyn ServiceProvider>> {
    // The check sd_booted(3) makes: systemd creates this directory at boot.
    if std::path::Path::new("/run/systemd/system").is_dir() {
        return Ok(Box::new(systemd::Systemd::new(names)));
    }
    bail!(
        "no service provider: systemd is not running on this host (/run/systemd/system is missing)"
    )
}

fn select_accounts() -> Result<Box<dyn AccountProvider>> {
    if process::find_program("useradd").is_some() {
        return Ok(Box::new(shadow::Shadow::new()));
    }
    bail!("no account provider: the shadow tools (useradd, groupadd) are not installed")
}
