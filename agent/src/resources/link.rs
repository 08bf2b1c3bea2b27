//! `[[link]]`: a symbolic link's target, owner and group, or its absence. A
//! file at the path is replaced only with `force`; a directory never is, and
//! `state = "absent"` removes nothing but a link.

use std::ffi::OsStr;
use std::path::Path;

use anyhow::{Result, bail};
use cairn_proto::role;

use super::perms::Perms;
use super::{Drift, Resource};
use crate::providers::Host;
use crate::providers::fs::FileKind;

pub struct LinkResource<'a>(pub &'a role::Link);

impl LinkResource<'_> {
    fn path(&self) -> &Path {
        Path::new(&self.0.path)
    }

    fn perms(&self) -> Perms<'_> {
        Perms {
            owner: self.0.owner.as_deref(),
            group: self.0.group.as_deref(),
            // A link's own mode means nothing on Linux.
            mode: None,
        }
    }
}

impl Resource for LinkResource<'_> {
    fn check(&self, host: &Host) -> Result<Drift> {
        let l = self.0;
        let files = host.files();
        let mut drift = Drift::default();
        let meta = files.stat(self.path())?;
        let Some(target) = &l.target else {
            match meta {
                None => {}
                Some(m) if m.kind == FileKind::Symlink => drift.push("ensure", "link", "absent"),
                Some(m) => bail!(
                    "{} is a {}, not a link; a [[link]] with state = \"absent\" removes only links",
                    l.path,
                    m.kind.as_str()
                ),
            }
            return Ok(drift);
        };
        match meta {
            None => drift.push("ensure", "absent", "link"),
            Some(m) if m.kind == FileKind::Symlink => {
                let have = files.read_link(self.path())?;
                if have != OsStr::new(target) {
                    drift.push("target", have.to_string_lossy(), target.as_str());
                }
                self.perms().drift(files, &m, &mut drift);
            }
            Some(m) if m.kind == FileKind::File && l.force => drift.push("ensure", "file", "link"),
            Some(m) if m.kind == FileKind::File => bail!(
                "{} is a file; set force = true to replace it with the link",
                l.path
            ),
            Some(m) => bail!(
                "{} is a {}; a link replaces only a file (with force = true)",
                l.path,
                m.kind.as_str()
            ),
        }
        Ok(drift)
    }

    fn apply(&self, host: &Host, drift: &Drift) -> Result<()> {
        let files = host.files();
        let path = self.path();
        let Some(target) = &self.0.target else {
            return files.remove_file(path);
        };
        if drift.has("ensure") || drift.has("target") {
            // A new link is root's unless the role names its owner; a link
            // pointed elsewhere keeps the owner it had.
            let old = files.stat(path)?.filter(|m| m.kind == FileKind::Symlink);
            let own = self.perms().for_new(files, old, 0o777)?;
            return files.symlink(path, OsStr::new(target), own.uid, own.gid);
        }
        self.perms().apply(files, path, drift)
    }
}
