//! `[[file]]`: content (inline, template or source), owner, group and mode, or
//! absence. A symbolic link at the path is replaced by a regular file, never
//! written through.

use std::path::Path;

use anyhow::{Result, bail};
use cairn_proto::diff::{self, Labels};
use cairn_proto::role;

use super::{Drift, Resource, mode_str};
use crate::providers::Host;
use crate::providers::fs::{self, FileKind, Meta, Ownership};

pub struct FileResource<'a>(pub &'a role::File);

const DEFAULT_MODE: u32 = 0o644;

impl FileResource<'_> {
    fn path(&self) -> &Path {
        Path::new(&self.0.path)
    }
}

impl Resource for FileResource<'_> {
    fn check(&self, _host: &Host) -> Result<Drift> {
        let f = self.0;
        let mut drift = Drift::default();
        let meta = fs::stat(self.path())?;
        let Some(want) = &f.content else {
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
        let (current, meta) = match meta {
            None => {
                drift.push("ensure", "absent", "file");
                (Vec::new(), None)
            }
            Some(m) if m.kind == FileKind::File => (fs::read(self.path())?, Some(m)),
            Some(m) if m.kind == FileKind::Symlink => {
                drift.push("ensure", "link", "file");
                (Vec::new(), None)
            }
            Some(m) => bail!("{} is a {}, not a file", f.path, m.kind.as_str()),
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
            owner_drift(
                &mut drift,
                &m,
                f.owner.as_deref(),
                f.group.as_deref(),
                f.mode,
            );
        }
        Ok(drift)
    }

    fn apply(&self, _host: &Host, drift: &Drift) -> Result<()> {
        let f = self.0;
        let path = self.path();
        let Some(want) = &f.content else {
            return fs::remove_file(path);
        };
        if drift.has("ensure") || drift.has("content") {
            // Keep what the role leaves unmanaged from the file being replaced.
            let old = fs::stat(path)?.filter(|m| m.kind == FileKind::File);
            let own = ownership(
                f.owner.as_deref(),
                f.group.as_deref(),
                f.mode,
                old,
                DEFAULT_MODE,
            )?;
            return fs::write_atomic(path, want, own);
        }
        apply_owner(path, drift, f.owner.as_deref(), f.group.as_deref(), f.mode)
    }
}

/// Adds owner, group and mode drift of an existing path.
pub(super) fn owner_drift(
    drift: &mut Drift,
    m: &Meta,
    owner: Option<&str>,
    group: Option<&str>,
    mode: Option<u32>,
) {
    if let Some(owner) = owner {
        let current = fs::user_name(m.uid);
        if current != owner {
            drift.push("owner", current, owner);
        }
    }
    if let Some(group) = group {
        let current = fs::group_name(m.gid);
        if current != group {
            drift.push("group", current, group);
        }
    }
    if let Some(mode) = mode
        && m.mode != mode
    {
        drift.push("mode", mode_str(m.mode), mode_str(mode));
    }
}

/// Fixes owner, group and mode in place, as `owner_drift` found them.
pub(super) fn apply_owner(
    path: &Path,
    drift: &Drift,
    owner: Option<&str>,
    group: Option<&str>,
    mode: Option<u32>,
) -> Result<()> {
    if drift.has("owner") || drift.has("group") {
        let m = fs::stat(path)?.ok_or_else(|| anyhow::anyhow!("{} disappeared", path.display()))?;
        let uid = owner.map(fs::uid_of).transpose()?.unwrap_or(m.uid);
        let gid = group.map(fs::gid_of).transpose()?.unwrap_or(m.gid);
        fs::set_owner(path, uid, gid)?;
    }
    // chown clears setuid/setgid bits, so the mode goes last.
    if let Some(mode) = mode
        && (drift.has("mode") || drift.has("owner") || drift.has("group"))
    {
        fs::set_mode(path, mode)?;
    }
    Ok(())
}

/// Ownership for a path being created or replaced: what the role says, else
/// what the old one had, else root and `default_mode`.
pub(super) fn ownership(
    owner: Option<&str>,
    group: Option<&str>,
    mode: Option<u32>,
    old: Option<Meta>,
    default_mode: u32,
) -> Result<Ownership> {
    Ok(Ownership {
        uid: match owner {
            Some(o) => fs::uid_of(o)?,
            None => old.map_or(0, |m| m.uid),
        },
        gid: match group {
            Some(g) => fs::gid_of(g)?,
            None => old.map_or(0, |m| m.gid),
        },
        mode: mode.or(old.map(|m| m.mode)).unwrap_or(default_mode),
    })
}

/// `{sha256 prefix}, N bytes`: identifies content in a report without copying it.
fn digest_label(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(data);
    let short: String = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{short}…, {} bytes", data.len())
}
