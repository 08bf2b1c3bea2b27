//! `[[directory]]`: existence, owner, group and mode. `state = "absent"` removes
//! the directory with everything in it.

use std::path::Path;

use anyhow::{Result, bail};
use cairn_proto::role::{self, Presence};

use super::perms::Perms;
use super::{Drift, Resource};
use crate::providers::Host;
use crate::providers::fs::FileKind;

pub struct DirectoryResource<'a>(pub &'a role::Directory);

const DEFAULT_MODE: u32 = 0o755;

impl DirectoryResource<'_> {
    fn perms(&self) -> Perms<'_> {
        Perms {
            owner: self.0.owner.as_deref(),
            group: self.0.group.as_deref(),
            mode: self.0.mode,
        }
    }
}

impl Resource for DirectoryResource<'_> {
    fn check(&self, host: &Host) -> Result<Drift> {
        let d = self.0;
        let mut drift = Drift::default();
        let meta = host.files().stat(Path::new(&d.path))?;
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
            (Presence::Present, Some(m)) if m.kind == FileKind::Directory => {
                self.perms().drift(host.files(), &m, &mut drift)
            }
            (Presence::Present, Some(m)) => {
                bail!("{} is a {}, not a directory", d.path, m.kind.as_str())
            }
        }
        Ok(drift)
    }

    fn apply(&self, host: &Host, drift: &Drift) -> Result<()> {
        let files = host.files();
        let path = Path::new(&self.0.path);
        match self.0.state {
            Presence::Absent => files.remove_dir_all(path),
            Presence::Present if drift.has("ensure") => {
                let own = self.perms().for_new(files, None, DEFAULT_MODE)?;
                files.create_dir(path, own)
            }
            Presence::Present => self.perms().apply(files, path, drift),
        }
    }
}
