//! `[[apt_repository]]`: the source file (`/etc/apt/sources.list.d/NAME.sources`)
//! and its key (`/etc/apt/keyrings/NAME.gpg`), root's alone, with the
//! repository's package lists refreshed whenever either changes; or both
//! files absent. A converged repository costs two file reads.
//!
//! A change goes live only once apt has fetched and verified the
//! repository's lists with it: the key is written, apt refreshes the lists
//! of the new source read from a copy, and only then is the source written.
//! When apt fails, the key is put back as it was and the source is not
//! written, so no later apt run trips over a repository that does not work,
//! and the next Cairn run tries again.

use std::path::Path;

use anyhow::{Context, Result, bail};
use cairn_proto::diff::{self, Labels};
use cairn_proto::role;

use super::file::digest_label;
use super::perms::{ROOT_0644, unlike_root_0644};
use super::{Drift, Resource};
use crate::providers::fs::FileKind;
use crate::providers::{FileSystem, Host};

pub struct AptRepositoryResource<'a>(pub &'a role::AptRepository);

/// What is at one of the repository's files.
struct Current {
    /// The content of the regular file there, if one is.
    content: Option<Vec<u8>>,
    /// How a report shows it: `absent`, `link`, or a digest (and the owner
    /// and mode, when they are not root's 0644).
    label: String,
    /// Something is there (a file or a link).
    exists: bool,
    /// A regular file root alone may write (a source others may write
    /// points apt anywhere; a key others may write lets them sign).
    root_only: bool,
}

fn current(files: &dyn FileSystem, path: &str) -> Result<Current> {
    Ok(match files.stat_read(Path::new(path))? {
        None => Current {
            content: None,
            label: "absent".into(),
            exists: false,
            root_only: false,
        },
        Some((m, Some(content))) => {
            let perms = unlike_root_0644(files, &m);
            let mut label = digest_label(&content);
            if let Some(perms) = &perms {
                label = format!("{label}, {perms}");
            }
            Current {
                content: Some(content),
                label,
                exists: true,
                root_only: perms.is_none(),
            }
        }
        // A link is replaced, never written through.
        Some((m, None)) if m.kind == FileKind::Symlink => Current {
            content: None,
            label: "link".into(),
            exists: true,
            root_only: false,
        },
        Some((m, None)) => bail!("{path} is a {}, not a file", m.kind.as_str()),
    })
}

impl AptRepositoryResource<'_> {
    /// The two files as report properties: `(property, path, content the
    /// role wants, or None when absent)`.
    fn files(&self) -> [(&'static str, String, Option<Vec<u8>>); 2] {
        let r = self.0;
        [
            (
                "source",
                r.source_path(),
                r.source_file().map(String::into_bytes),
            ),
            (
                "key",
                r.key_path(),
                r.source.as_ref().map(|s| s.key.clone()),
            ),
        ]
    }
}

impl Resource for AptRepositoryResource<'_> {
    fn check(&self, host: &Host) -> Result<Drift> {
        let mut drift = Drift::default();
        for (property, path, want) in self.files() {
            let have = current(host.files(), &path)?;
            let Some(want) = want else {
                if have.exists {
                    drift.push(property, have.label, "absent");
                }
                continue;
            };
            if have.content.as_deref() == Some(&want[..]) && have.root_only {
                continue;
            }
            drift.push(property, have.label, digest_label(&want));
            // The key is binary and public: its digest says enough.
            if property == "source" {
                drift.diff = diff::file(&path, have.content.as_deref(), Some(&want), Labels::Path)
                    .map(|d| d.text());
            }
        }
        Ok(drift)
    }

    fn apply(&self, host: &Host, drift: &Drift) -> Result<()> {
        let r = self.0;
        let files = host.files();
        let (source_path, key_path) = (r.source_path(), r.key_path());
        let (source_path, key_path) = (Path::new(&source_path), Path::new(&key_path));
        let (Some(source), Some(want)) = (r.source_file(), &r.source) else {
            // The source first, so none is left naming a key that is gone.
            for (property, path) in [("source", source_path), ("key", key_path)] {
                if drift.has(property) {
                    files.remove_file(path)?;
                }
            }
            return Ok(());
        };
        // Before anything is written: a host without apt changes nothing.
        let packages = host.packages()?;
        // What to put back should apt refuse the new key.
        let mut old_key = None;
        if drift.has("key") {
            old_key = current(files, &r.key_path())?.content;
            files.create_parents(key_path)?;
            files.write_atomic(key_path, &want.key, ROOT_0644)?;
        }
        if let Err(e) = packages.update_source(&r.name, source.as_bytes()) {
            if drift.has("key") {
                let restored = match &old_key {
                    Some(old) => files.write_atomic(key_path, old, ROOT_0644),
                    None => files.remove_file(key_path),
                };
                restored.with_context(|| {
                    format!(
                        "{e:#}; and putting back {} as it was failed",
                        key_path.display()
                    )
                })?;
            }
            return Err(e.context(format!(
                "{} was not written{}",
                source_path.display(),
                if drift.has("key") {
                    format!(" and {} is as it was", key_path.display())
                } else {
                    String::new()
                }
            )));
        }
        files.create_parents(source_path)?;
        files.write_atomic(source_path, source.as_bytes(), ROOT_0644)
    }
}
