//! `[[package]]`: an OS package installed (at a version, when pinned) or absent.
//! What is installed and how to change it is the package provider's business
//! (apt on Debian and Ubuntu); this type only compares and asks.

use anyhow::Result;
use cairn_proto::role::{self, PackageState};

use super::{Drift, Resource};
use crate::providers::Host;

pub struct PackageResource<'a>(pub &'a role::Package);

impl Resource for PackageResource<'_> {
    /// `ensure` when presence differs (`absent` → the wanted version or
    /// `installed`, or the installed version → `absent`); `version` when a
    /// pinned package is installed at another version.
    fn check(&self, host: &Host) -> Result<Drift> {
        let p = self.0;
        let current = host.packages()?.installed(&p.name)?;
        let mut drift = Drift::default();
        match (p.state, current) {
            (PackageState::Absent, None) => {}
            (PackageState::Absent, Some(have)) => drift.push("ensure", have, "absent"),
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
        Ok(drift)
    }

    fn apply(&self, host: &Host, _drift: &Drift) -> Result<()> {
        let p = self.0;
        let packages = host.packages()?;
        match p.state {
            PackageState::Installed => packages.install(&p.name, p.version.as_deref()),
            PackageState::Absent => packages.remove(&p.name),
        }
    }
}
