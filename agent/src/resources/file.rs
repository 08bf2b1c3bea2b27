//! `[[file]]`: content (inline, template or source), owner, group and mode, or
//! absence. A symbolic link at the path is replaced by a regular file, never
//! written through. With `validate`, new content goes live only once the
//! command accepts it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use cairn_proto::diff::{self, Labels};
use cairn_proto::role;

use super::perms::Perms;
use super::{Drift, Resource};
use crate::providers::Host;
use crate::providers::fs::{FileKind, Meta};

pub struct FileResource<'a>(pub &'a role::File);

const DEFAULT_MODE: u32 = 0o644;

impl FileResource<'_> {
    fn path(&self) -> &Path {
        Path::new(&self.0.path)
    }

    fn perms(&self) -> Perms<'_> {
        Perms {
            owner: self.0.owner.as_deref(),
            group: self.0.group.as_deref(),
            mode: self.0.mode,
        }
    }
}

impl Resource for FileResource<'_> {
    fn check(&self, host: &Host) -> Result<Drift> {
        let f = self.0;
        let files = host.files();
        let mut drift = Drift::default();
        let Some(want) = &f.content else {
            let meta = files.stat(self.path())?;
            match meta {
                None => {}
                Some(Meta {
                    kind: FileKind::Directory,
                    ..
                }) => {
                    bail!(
                        "{} is a directory; a [[file]] with state = \"absent\" will not remove it",
                        f.path
                    )
                }
                Some(m) => drift.push("ensure", m.kind.as_str(), "absent"),
            }
            return Ok(drift);
        };
        // Metadata and content of one file, not of two that had the path in turn.
        let (current, meta) = match files.stat_read(self.path())? {
            None => {
                drift.push("ensure", "absent", "file");
                (Vec::new(), None)
            }
            Some((m, Some(content))) => (content, Some(m)),
            Some((m, None)) if m.kind == FileKind::Symlink => {
                drift.push("ensure", "link", "file");
                (Vec::new(), None)
            }
            Some((m, None)) => bail!("{} is a {}, not a file", f.path, m.kind.as_str()),
        };
        if &current != want {
            if f.sensitive {
                // Not even a digest: a short secret could be guessed from one.
                if !drift.has("ensure") {
                    drift.push("content", "(sensitive)", "(sensitive)");
                }
            } else {
                if !drift.has("ensure") {
                    drift.push("content", digest_label(&current), digest_label(want));
                }
                drift.diff =
                    diff::file(&f.path, Some(&current), Some(want), Labels::Path).map(|d| d.text());
            }
        }
        if let Some(m) = meta {
            self.perms().drift(files, &m, &mut drift);
        }
        Ok(drift)
    }

    fn apply(&self, host: &Host, _drift: &Drift) -> Result<()> {
        let files = host.files();
        let path = self.path();
        let Some(want) = &self.0.content else {
            return files.remove_file(path);
        };
        // Owner and mode too are fixed by writing the file anew, never by
        // changing it in place: its inode may have other names (hard links),
        // perhaps one its owner had no right to change. Whatever drifted, the
        // role's content goes to a new file with the right owner and mode.
        // Keep what the role leaves unmanaged from the file being replaced.
        let old = files.stat(path)?.filter(|m| m.kind == FileKind::File);
        let own = self.perms().for_new(files, old, DEFAULT_MODE)?;
        if self.0.validate.is_none() {
            return files.write_atomic(path, want, own);
        }
        files.write_atomic_checked(path, want, own, &mut |new| {
            let new = new
                .to_str()
                .context("the new content's path is not UTF-8")?;
            let command = self.0.validate_command(new).expect("validate is set");
            let ran = host.shell().run(&command, None)?;
            if !ran.success {
                bail!(
                    "`{command}` refused the new content ({}); {} is unchanged",
                    ran.describe(),
                    self.0.path
                );
            }
            Ok(())
        })
    }
}

/// `{sha256 prefix}, N bytes`: identifies content in a report without copying it.
pub(super) fn digest_label(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(data);
    let short: String = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{short}…, {} bytes", data.len())
}
