//! `[[timer]]`: the unit files of a timer and its oneshot service, and the
//! timer enabled and running. Changed unit files are followed by one reload
//! of the service manager; a running timer whose schedule changed is
//! restarted. A converged timer costs two file reads and its state, which
//! the service provider reads with the role's services (no process).
//!
//! An absent timer is stopped and disabled, then both unit files are
//! removed and the service manager reloaded once; converged, it costs two
//! stats and its state.

use std::path::Path;

use anyhow::{Result, bail};
use cairn_proto::diff::{self, Labels};
use cairn_proto::role;
use cairn_proto::role::Presence;

use super::file::digest_label;
use super::perms::{ROOT_0644, unlike_root_0644};
use super::{Drift, Resource};
use crate::providers::fs::FileKind;
use crate::providers::{FileSystem, Host};

pub struct TimerResource<'a>(pub &'a role::Timer);

/// The two unit files: the property naming each in a report, its path and
/// the content it must have.
fn units(t: &role::Timer) -> [(&'static str, String, String); 2] {
    [
        ("timer", t.timer_path(), t.timer_file()),
        ("service", t.service_path(), t.service_file()),
    ]
}

/// What is at a unit file's path.
struct UnitFile {
    /// Its content; `None` for a link, which is replaced.
    content: Option<Vec<u8>>,
    /// How a report shows it.
    label: String,
    /// Root's alone: a unit file others may write runs their commands as root.
    root_only: bool,
}

/// What is at the unit file `path`, when anything is.
fn current(files: &dyn FileSystem, path: &str) -> Result<Option<UnitFile>> {
    Ok(match files.stat_read(Path::new(path))? {
        None => None,
        Some((m, Some(content))) => {
            let label = digest_label(&content);
            let (label, root_only) = match unlike_root_0644(files, &m) {
                None => (label, true),
                Some(perms) => (format!("{label}, {perms}"), false),
            };
            Some(UnitFile {
                content: Some(content),
                label,
                root_only,
            })
        }
        Some((m, None)) if m.kind == FileKind::Symlink => Some(UnitFile {
            content: None,
            label: "link".into(),
            root_only: true,
        }),
        Some((m, None)) => bail!("{path} is a {}, not a unit file", m.kind.as_str()),
    })
}

impl Resource for TimerResource<'_> {
    fn check(&self, host: &Host) -> Result<Drift> {
        let t = self.0;
        if t.state == Presence::Absent {
            return check_absent(t, host);
        }
        let mut drift = Drift::default();
        let mut diffs = Vec::new();
        for (property, path, want) in units(t) {
            let have = current(host.files(), &path)?.unwrap_or(UnitFile {
                content: None,
                label: "absent".into(),
                root_only: true,
            });
            if have.content.as_deref() == Some(want.as_bytes()) && have.root_only {
                continue;
            }
            drift.push(property, have.label, digest_label(want.as_bytes()));
            diffs.extend(
                diff::file(
                    &path,
                    have.content.as_deref(),
                    Some(want.as_bytes()),
                    Labels::Path,
                )
                .map(|d| d.text()),
            );
        }
        if !diffs.is_empty() {
            drift.diff = Some(diffs.concat());
        }
        let unit = t.timer_unit();
        let status = host.services()?.status(&unit)?;
        if !status.exists {
            if drift.is_empty() {
                // Its files are in place, yet systemd has not loaded it: a
                // reload was lost, or systemd refused the file.
                drift.push("loaded", "false", "true");
            }
            drift.push("enabled", "false", "true");
            drift.push("running", "false", "true");
            return Ok(drift);
        }
        match status.enabled {
            Some(true) => {}
            Some(false) => drift.push("enabled", "false", "true"),
            None => bail!("{unit} cannot be enabled (systemd calls it static)"),
        }
        if !status.running {
            drift.push("running", "false", "true");
        }
        Ok(drift)
    }

    fn apply(&self, host: &Host, drift: &Drift) -> Result<()> {
        let t = self.0;
        if t.state == Presence::Absent {
            return apply_absent(t, host, drift);
        }
        let files = host.files();
        let services = host.services()?;
        let mut reload = drift.has("loaded");
        for (property, path, want) in units(t) {
            if drift.has(property) {
                files.write_atomic(Path::new(&path), want.as_bytes(), ROOT_0644)?;
                reload = true;
            }
        }
        let unit = t.timer_unit();
        if reload {
            services.reload_units()?;
            if !services.status(&unit)?.exists {
                bail!(
                    "systemd did not load {unit} from {}; `systemctl status {unit}` says why \
                     (is on_calendar a calendar expression systemd reads?)",
                    t.timer_path()
                );
            }
        }
        if drift.has("enabled") {
            services.enable(&unit)?;
        }
        if drift.has("running") {
            services.start(&unit)?;
        } else if drift.has("timer") {
            // A running timer reads its new schedule when it starts again.
            services.restart(&unit)?;
        }
        Ok(())
    }
}

/// What is left of a timer that must be absent: a unit file (`timer`,
/// `service`: its digest, or `link`), the timer enabled, or running.
fn check_absent(t: &role::Timer, host: &Host) -> Result<Drift> {
    let mut drift = Drift::default();
    let mut diffs = Vec::new();
    for (property, path, _) in units(t) {
        let Some(have) = current(host.files(), &path)? else {
            continue;
        };
        drift.push(property, have.label, "absent");
        let removed = diff::file(&path, have.content.as_deref(), None, Labels::Path);
        diffs.extend(removed.map(|d| d.text()));
    }
    let services = if diffs.is_empty() {
        // Both files gone and no service manager to ask: nothing is left of
        // it (as a service only notified asks for none).
        match host.services() {
            Ok(services) => services,
            Err(_) => return Ok(drift),
        }
    } else {
        drift.diff = Some(diffs.concat());
        host.services()?
    };
    let status = services.status(&t.timer_unit())?;
    // A timer whose file is gone may still run until it is stopped.
    if status.exists && status.enabled == Some(true) {
        drift.push("enabled", "true", "false");
    }
    if status.running {
        drift.push("running", "true", "false");
    }
    Ok(drift)
}

/// Stops and disables the timer while its file is there for systemd to
/// read, then removes the unit files and reloads systemd once. A run of the
/// command already started finishes.
fn apply_absent(t: &role::Timer, host: &Host, drift: &Drift) -> Result<()> {
    let services = host.services()?;
    let unit = t.timer_unit();
    if drift.has("running") {
        services.stop(&unit)?;
    }
    if drift.has("enabled") {
        services.disable(&unit)?;
    }
    let mut removed = false;
    for (property, path, _) in units(t) {
        if drift.has(property) {
            host.files().remove_file(Path::new(&path))?;
            removed = true;
        }
    }
    if removed {
        services.reload_units()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use cairn_proto::facts::Facts;

    use super::*;
    use crate::providers::Providers;

    /// A host without a service manager (its facts fit no provider).
    fn host_without_services() -> Host {
        let mut facts = Facts::placeholder();
        facts.os.id = "alpine".into();
        facts.os.family = "alpine".into();
        let host = Host::with_providers(facts, Providers::default());
        assert!(host.services().is_err(), "this host has a service provider");
        host
    }

    #[test]
    fn a_removed_timer_without_its_files_needs_no_service_manager() {
        let host = host_without_services();
        let timer = role::Timer {
            name: "cairn-t-never-installed".into(),
            state: Presence::Absent,
            on_calendar: String::new(),
            command: String::new(),
            user: None,
            description: None,
        };
        let drift = TimerResource(&timer).check(&host).unwrap();
        assert!(drift.is_empty(), "{drift:?}");
    }
}
