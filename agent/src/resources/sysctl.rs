//! `[[sysctl]]`: a kernel parameter's live value, read from and written to
//! `/proc/sys`, and its file in `/etc/sysctl.d/`, which sets it again at
//! boot. Only what differs is written.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use cairn_proto::role::{self, normalize_sysctl_value};

use super::perms::{ROOT_0644, unlike_root_0644};
use super::{Drift, Resource};
use crate::providers::Host;
use crate::providers::fs::FileKind;

pub struct SysctlResource<'a>(pub &'a role::Sysctl);

impl Resource for SysctlResource<'_> {
    fn check(&self, host: &Host) -> Result<Drift> {
        let s = self.0;
        let files = host.files();
        let mut drift = Drift::default();
        let live = PathBuf::from(s.proc_path());
        if files.stat(&live)?.is_none() {
            bail!(
                "the kernel has no parameter {} ({} does not exist)",
                s.key,
                live.display()
            );
        }
        let have = normalize_sysctl_value(&String::from_utf8_lossy(&files.read(&live)?));
        if have != s.value {
            drift.push("value", have, s.value.as_str());
        }
        let conf = s.conf_path();
        match files.stat_read(Path::new(&conf))? {
            None => drift.push("persisted", "absent", s.value.as_str()),
            Some((m, Some(content))) => {
                // A file others may write sets what they like at boot.
                let perms = unlike_root_0644(files, &m);
                if content != s.conf_content().as_bytes() || perms.is_some() {
                    let mut before = persisted_value(s, &content);
                    if let Some(perms) = perms {
                        before = format!("{before}, {perms}");
                    }
                    drift.push("persisted", before, s.value.as_str());
                }
            }
            Some((m, None)) if m.kind == FileKind::Symlink => {
                drift.push("persisted", "link", s.value.as_str())
            }
            Some((m, None)) => bail!("{conf} is a {}, not a file", m.kind.as_str()),
        }
        Ok(drift)
    }

    fn apply(&self, host: &Host, drift: &Drift) -> Result<()> {
        let s = self.0;
        let files = host.files();
        // The live value first: a value the kernel refuses is not persisted
        // to fail again at every boot.
        if drift.has("value") {
            files.write_in_place(
                Path::new(&s.proc_path()),
                format!("{}\n", s.value).as_bytes(),
            )?;
        }
        if drift.has("persisted") {
            let conf = s.conf_path();
            let conf = Path::new(&conf);
            files.create_parents(conf)?;
            files.write_atomic(conf, s.conf_content().as_bytes(), ROOT_0644)?;
        }
        Ok(())
    }
}

/// The value a file of this key sets, as a report shows it: what follows
/// `KEY =` on its last line that sets the key, or `other content`.
fn persisted_value(s: &role::Sysctl, content: &[u8]) -> String {
    String::from_utf8_lossy(content)
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == s.key).then(|| normalize_sysctl_value(value))
        })
        .next_back()
        .unwrap_or_else(|| "other content".into())
}
