//! `[[package]]`: an OS package installed (at a version, when pinned), absent,
//! or purged (absent, its configuration files too).
//! What is installed and how to change it is the package provider's business
//! (apt on Debian and Ubuntu); this type only compares and asks.

use anyhow::Result;
use cairn_proto::report::PropertyChange;
use cairn_proto::role::{self, PackageState};

use super::{Drift, Resource};
use crate::providers::Host;

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
        if drift.has(UNFINISHED) {
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
}
