//! `[[package]]`: an OS package installed (at a version, when pinned), absent,
//! or purged (absent, its configuration files too).
//! What is installed and how to change it is the package provider's business
//! (apt on Debian and Ubuntu); this type only compares and asks.

use anyhow::Result;
use cairn_proto::report::PropertyChange;
use cairn_proto::role::{self, PackageState};

use super::{BatchInstall, Drift, Resource};
use crate::providers::{Host, ToInstall};

pub struct PackageResource<'a>(pub &'a role::Package);

/// The property that says an interrupted package operation must be finished
/// before this change.
const UNFINISHED: &str = "unfinished";

impl Resource for PackageResource<'_> {
    /// `ensure` when presence differs (`absent` → the wanted version or
    /// `installed`, or the installed version → `absent` or `purged`, or what
    /// a removal left, `config-files`, → `purged`); `version` when a
    /// pinned package is installed at another version. Before either, when
    /// there is one: `unfinished`, what an interrupted package operation left
    /// that would block it.
    fn check(&self, host: &Host) -> Result<Drift> {
        let p = self.0;
        let packages = host.packages()?;
        let current = packages.installed(&p.name)?;
        let mut drift = Drift::default();
        match (p.state, current) {
            (PackageState::Absent, None) => {}
            (PackageState::Absent, Some(have)) => drift.push("ensure", have, "absent"),
            (PackageState::Purged, Some(have)) => drift.push("ensure", have, "purged"),
            (PackageState::Purged, None) => {
                if let Some(left) = packages.left_behind(&p.name)? {
                    drift.push("ensure", left, "purged");
                }
            }
            (PackageState::Installed, None) => {
                drift.push(
                    "ensure",
                    "absent",
                    p.version.as_deref().unwrap_or("installed"),
                );
            }
            (PackageState::Installed, Some(have)) => {
                if let Some(want) = &p.version
                    && *want != have
                {
                    drift.push("version", have, want.as_str());
                }
            }
        }
        if !drift.is_empty()
            && let Some(what) = packages.interrupted()?
        {
            drift
                .changes
                .insert(0, PropertyChange::new(UNFINISHED, what, "finished"));
        }
        Ok(drift)
    }

    fn apply(&self, host: &Host, drift: &Drift) -> Result<()> {
        let p = self.0;
        let packages = host.packages()?;
        // Still unfinished: a transaction this one was to share may have
        // finished it already.
        if drift.has(UNFINISHED) && packages.interrupted()?.is_some() {
            packages.finish_interrupted()?;
        }
        match p.state {
            PackageState::Installed => {
                packages.install(&p.name, p.version.as_deref(), p.install_recommends)
            }
            PackageState::Absent => packages.remove(&p.name),
            PackageState::Purged => packages.purge(&p.name),
        }
    }

    /// A package to install, when it is one.
    fn batch_install(&self) -> Option<BatchInstall<'_>> {
        let p = self.0;
        (p.state == PackageState::Installed).then_some(BatchInstall {
            package: ToInstall {
                name: &p.name,
                version: p.version.as_deref(),
            },
            recommends: p.install_recommends,
        })
    }
}

/// Applies, in one package transaction, the drift of each of `members` (the
/// [`Resource::batch_install`] of each, with the drift its `check` found; the
/// same `recommends`): what an interrupted package operation left is finished
/// once first, when a drift says so, then all are installed together.
pub fn install_together(host: &Host, members: &[(BatchInstall<'_>, &Drift)]) -> Result<()> {
    let packages = host.packages()?;
    if members.iter().any(|(_, drift)| drift.has(UNFINISHED)) {
        packages.finish_interrupted()?;
    }
    let wanted: Vec<ToInstall<'_>> = members.iter().map(|(b, _)| b.package).collect();
    let recommends = members.first().and_then(|(b, _)| b.recommends);
    debug_assert!(members.iter().all(|(b, _)| b.recommends == recommends));
    packages.install_together(&wanted, recommends)
}
