//! Owner, group and mode: the properties a file and a directory share.

use std::path::Path;

use anyhow::{Result, anyhow};

use super::Drift;
use crate::providers::FileSystem;
use crate::providers::fs::{Meta, Ownership};

/// How the agent keeps files whose content runs as root (unit files,
/// `/etc/sysctl.d/` files): root's, writable by root alone.
pub(super) const ROOT_0644: Ownership = Ownership {
    uid: 0,
    gid: 0,
    mode: 0o644,
};

/// How `current` differs from [`ROOT_0644`], for a report
/// (`owner app:root, mode 0666`); `None` when it does not.
pub(super) fn unlike_root_0644(files: &dyn FileSystem, current: &Meta) -> Option<String> {
    let want = ROOT_0644;
    ((current.uid, current.gid, current.mode) != (want.uid, want.gid, want.mode)).then(|| {
        format!(
            "owner {}:{}, mode {}",
            files.user_name(current.uid),
            files.group_name(current.gid),
            mode_str(current.mode)
        )
    })
}

/// What a role declares about a path's ownership; `None` leaves it alone.
#[derive(Debug, Clone, Copy)]
pub(super) struct Perms<'a> {
    pub owner: Option<&'a str>,
    pub group: Option<&'a str>,
    pub mode: Option<u32>,
}

impl Perms<'_> {
    /// Adds the owner, group and mode drift of an existing path.
    pub fn drift(&self, files: &dyn FileSystem, current: &Meta, drift: &mut Drift) {
        if let Some(owner) = self.owner {
            let have = files.user_name(current.uid);
            if have != owner {
                drift.push("owner", have, owner);
            }
        }
        if let Some(group) = self.group {
            let have = files.group_name(current.gid);
            if have != group {
                drift.push("group", have, group);
            }
        }
        if let Some(mode) = self.mode
            && current.mode != mode
        {
            drift.push("mode", mode_str(current.mode), mode_str(mode));
        }
    }

    /// Fixes owner, group and mode in place, as [`Perms::drift`] found them.
    pub fn apply(&self, files: &dyn FileSystem, path: &Path, drift: &Drift) -> Result<()> {
        if drift.has("owner") || drift.has("group") {
            let m = files
                .stat(path)?
                .ok_or_else(|| anyhow!("{} disappeared", path.display()))?;
            let uid = self.owner.map(|o| files.uid_of(o)).transpose()?;
            let gid = self.group.map(|g| files.gid_of(g)).transpose()?;
            files.set_owner(path, uid.unwrap_or(m.uid), gid.unwrap_or(m.gid))?;
        }
        // chown clears setuid/setgid bits, so the mode goes last.
        if let Some(mode) = self.mode
            && (drift.has("mode") || drift.has("owner") || drift.has("group"))
        {
            files.set_mode(path, mode)?;
        }
        Ok(())
    }

    /// Ownership for a path being created or replaced: what the role says,
    /// else what the `old` one had, else root and `default_mode`.
    pub fn for_new(
        &self,
        files: &dyn FileSystem,
        old: Option<Meta>,
        default_mode: u32,
    ) -> Result<Ownership> {
        Ok(Ownership {
            uid: match self.owner {
                Some(o) => files.uid_of(o)?,
                None => old.map_or(0, |m| m.uid),
            },
            gid: match self.group {
                Some(g) => files.gid_of(g)?,
                None => old.map_or(0, |m| m.gid),
            },
            mode: self.mode.or(old.map(|m| m.mode)).unwrap_or(default_mode),
        })
    }
}

/// Formats a permission mode the way roles write it.
fn mode_str(mode: u32) -> String {
    format!("{mode:04o}")
}
