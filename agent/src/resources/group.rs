//! `[[group]]`: a local group's existence and gid. `system` only matters when
//! the group is created (it picks the gid range); an existing group is never
//! recreated to change it.

use anyhow::Result;
use cairn_proto::role::{self, Presence};

use super::{Drift, Resource};
use crate::providers::Host;

pub struct GroupResource<'a>(pub &'a role::Group);

impl Resource for GroupResource<'_> {
    fn check(&self, host: &Host) -> Result<Drift> {
        let g = self.0;
        let mut drift = Drift::default();
        let current = host.accounts()?.group(&g.name)?;
        match (g.state, current) {
            (Presence::Absent, None) => {}
            (Presence::Absent, Some(_)) => drift.push("ensure", "present", "absent"),
            // Creation sets every declared property at once.
            (Presence::Present, None) => drift.push("ensure", "absent", "present"),
            (Presence::Present, Some(cur)) => {
                if let Some(gid) = g.gid
                    && cur.gid != gid
                {
                    drift.push("gid", cur.gid.to_string(), gid.to_string());
                }
            }
        }
        Ok(drift)
    }

    fn apply(&self, host: &Host, drift: &Drift) -> Result<()> {
        let g = self.0;
        let accounts = host.accounts()?;
        match g.state {
            Presence::Absent => accounts.delete_group(&g.name),
            Presence::Present if drift.has("ensure") => accounts.create_group(g),
            Presence::Present => match g.gid {
                Some(gid) if drift.has("gid") => accounts.set_gid(&g.name, gid),
                _ => Ok(()),
            },
        }
    }
}
