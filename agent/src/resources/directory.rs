//! `[[directory]]`: existence, owner, group and mode. `state = "absent"` removes
//! the directory with everything in it.

use std::path::Path;

use anyhow::{Result, bail};
use cairn_proto::role::{self, Presence};

use super::file::{apply_owner, owner_drift, ownership};
use super::{Drift, Resource};
use crate::providers::Host;
use crate::providers::fs::{self, FileKind};

pub struct DirectoryResource<'a>(pub &'a role::Directory);

const DEFAULT_MODE: u32 = 0o755;

impl Resource for DirectoryResource<'_> {
    fn check(&self, _host: &Host) -> Result<Drift> {
        let d = self.0;
        let mut drift = Drift::default();
        let meta = fs::stat(Path::new(&d.path))?;
        match (d.state, meta) {
            (Presence::Absent, None) => {}
            (Presence::Absent, Some(m)) if m.kind == FileKind::Directory => {
                drift.push("ensure", "directory", "absent")
            }
            (Presence::Absent, Some(m)) => {
                bail!(
                    "{} is a {}, not a directory; refusing to remove it",
                    d.path,
                    m.kind.as_str()
                )
            }
            (Presence::Present, None) => drift.push("ensure", "absent", "directory"),
            (Presence::Present, Some(m)) if m.kind == FileKind::Directory => owner_drift(
                &mut drift,
                &m,
                d.owner.as_deref(),
                d.group.as_deref(),
                d.mode,
            ),
            (Presence::Present, Some(m)) => {
                bail!("{} is a {}, not a directory", d.path, m.kind.as_str())
            }
        }
        Ok(drift)
    }

    fn apply(&self, _host: &Host, drift: &Drift) -> Result<()> {
        let d = self.0;
        let path = Path::new(&d.path);
        match d.state {
            Presence::Absent => fs::remove_dir_all(path),
            Presence::Present if drift.has("ensure") => {
                let own = ownership(
                    d.owner.as_deref(),
                    d.group.as_deref(),
                    d.mode,
                    None,
                    DEFAULT_MODE,
                )?;
                fs::create_dir(path, own)
            }
            Presence::Present => {
                apply_owner(path, drift, d.owner.as_deref(), d.group.as_deref(), d.mode)
            }
        }
    }
}
