//! Resources: each owns its properties and knows how to compare them with the
//! host (`check`) and how to change the host (`apply`), always through a
//! provider. Resources never decide whether to act; the engine does.

use anyhow::Result;
use cairn_proto::report::PropertyChange;
use cairn_proto::role::Spec;
use serde::{Deserialize, Serialize};

use crate::providers::{Host, ToInstall};

pub use package::install_together;

mod apt_repository;
mod directory;
mod exec;
mod file;
mod group;
mod link;
mod package;
mod perms;
mod service;
mod sysctl;
mod timer;
mod user;

/// How the host differs from what the resource wants. Empty means converged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    pub changes: Vec<PropertyChange>,
    /// Unified diff of file content, when content differs.
    pub diff: Option<String>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn push(&mut self, property: &str, before: impl Into<String>, after: impl Into<String>) {
        self.changes
            .push(PropertyChange::new(property, before, after));
    }

    pub fn has(&self, property: &str) -> bool {
        self.changes.iter().any(|c| c.property == property)
    }
}

/// What a notification asks of its target. A restart asked by any notifier
/// wins over reloads (the order of the variants says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Refresh {
    /// Only a reload (`reload = [...]`): a service reloads its configuration.
    Reload,
    /// The full refresh (`notify = [...]`): a service restarts, an exec runs.
    Restart,
}

/// What one resource installs as its part of a package transaction shared
/// with others: [`Resource::batch_install`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInstall<'a> {
    pub package: ToInstall<'a>,
    /// The transaction's option (`install_recommends`): only resources that
    /// agree on it can share one.
    pub recommends: Option<bool>,
}

/// The lifecycle every resource type implements. The engine calls, in order:
/// `check`; if there is drift and the run is not a noop, `apply(drift)`; then
/// `verify`, whose drift must be empty. `refresh` runs when a resource this one
/// is notified by changed.
pub trait Resource {
    /// Observes the host and returns how it differs. Never changes the host.
    fn check(&self, host: &Host) -> Result<Drift>;

    /// Changes the host so that `drift` (what `check` just returned) disappears.
    fn apply(&self, host: &Host, drift: &Drift) -> Result<()>;

    /// Checks again after `apply`. Leftover drift is an error, so a resource
    /// converges in one run or fails loudly.
    fn verify(&self, host: &Host) -> Result<Drift> {
        self.check(host)
    }

    /// Reacts to a notification: restart or reload a service, run an exec,
    /// as `how` asks. `applied` is what this run already changed on the
    /// resource itself (a service that was just started needs no restart).
    /// Returns the changes made, if any (a service only notified may have
    /// systemd reload its unit first). Only kinds that
    /// [`Kind::refreshable`](cairn_proto::role::Kind::refreshable) are ever
    /// notified, and only services asked to reload; validation guarantees it.
    fn refresh(&self, host: &Host, applied: &Drift, how: Refresh) -> Result<Vec<PropertyChange>> {
        let _ = (host, applied, how);
        Ok(Vec::new())
    }

    /// What `refresh` would do after the changes in `drift`, for noop
    /// reports; the same rules as `refresh`.
    fn refresh_preview(&self, drift: &Drift, how: Refresh) -> Option<PropertyChange> {
        let _ = (drift, how);
        None
    }

    /// When `apply` is a package install that may run in one transaction
    /// with other resources' (the engine decides which, and then calls
    /// [`install_together`] instead of their `apply`), what it installs;
    /// `None` (every other resource) when it must be applied on its own.
    fn batch_install(&self) -> Option<BatchInstall<'_>> {
        None
    }
}

/// The resource implementation for a declared spec.
pub fn for_spec(spec: &Spec) -> Box<dyn Resource + '_> {
    match spec {
        Spec::Group(s) => Box::new(group::GroupResource(s)),
        Spec::User(s) => Box::new(user::UserResource(s)),
        Spec::AptRepository(s) => Box::new(apt_repository::AptRepositoryResource(s)),
        Spec::Package(s) => Box::new(package::PackageResource(s)),
        Spec::Directory(s) => Box::new(directory::DirectoryResource(s)),
        Spec::File(s) => Box::new(file::FileResource(s)),
        Spec::Exec(s) => Box::new(exec::ExecResource(s)),
        Spec::Link(s) => Box::new(link::LinkResource(s)),
        Spec::Sysctl(s) => Box::new(sysctl::SysctlResource(s)),
        Spec::Service(s) => Box::new(service::ServiceResource(s)),
        Spec::Timer(s) => Box::new(timer::TimerResource(s)),
    }
}
