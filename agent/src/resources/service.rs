//! `[[service]]`: running and enabled state. Notified, it restarts (or
//! reloads, when only asked to reload), unless this run just started it. A
//! unit whose file or drop-in changed since the service manager loaded it is
//! reloaded first (the `systemd` property), so what starts, restarts, reloads
//! or is enabled is the definition on disk. A service declared with neither
//! `running` nor `enabled` is only notified: nothing is read of it until a
//! notification comes, so a converged run costs it nothing (not even a
//! `systemctl show` on a host without a system bus).

use anyhow::{Result, bail};
use cairn_proto::report::PropertyChange;
use cairn_proto::role;

use super::{Drift, Refresh, Resource};
use crate::providers::{Host, Reloaded};

pub struct ServiceResource<'a>(pub &'a role::Service);

/// The property that says the service manager must read the unit again.
const RELOAD: &str = "systemd";

fn on_off(b: bool, on: &str, off: &str) -> String {
    if b { on } else { off }.to_string()
}

/// Declared with neither `running` nor `enabled`: it only reacts to
/// notifications.
fn only_notified(s: &role::Service) -> bool {
    s.running.is_none() && s.enabled.is_none()
}

impl Resource for ServiceResource<'_> {
    fn check(&self, host: &Host) -> Result<Drift> {
        let s = self.0;
        let mut drift = Drift::default();
        if only_notified(s) {
            // Nothing to compare; a stale unit is reloaded by `refresh`.
            return Ok(drift);
        }
        let services = host.services()?;
        let status = services.status(&s.name)?;
        if !status.exists {
            bail!(
                "service {} is not known to the service manager (is its package installed?)",
                s.name
            );
        }
        if services.stale(&s.name)? {
            drift.push(RELOAD, "unit changed on disk", "reloaded");
        }
        if let Some(want) = s.running
            && status.running != want
        {
            drift.push(
                "running",
                on_off(status.running, "true", "false"),
                on_off(want, "true", "false"),
            );
        }
        if let Some(want) = s.enabled {
            match status.enabled {
                Some(cur) if cur != want => {
                    drift.push("enabled", cur.to_string(), want.to_string())
                }
                Some(_) => {}
                None => bail!(
                    "service {} cannot be enabled or disabled (it is a static unit)",
                    s.name
                ),
            }
        }
        Ok(drift)
    }

    fn apply(&self, host: &Host, drift: &Drift) -> Result<()> {
        let s = self.0;
        let services = host.services()?;
        // What was read before the reload (enablement) may have changed with it.
        let reloaded;
        let drift = if drift.has(RELOAD) {
            services.reload_units()?;
            reloaded = self.check(host)?;
            &reloaded
        } else {
            drift
        };
        // Enable first, so a service that fails to start is still enabled
        // for the next boot, as declared.
        match s.enabled {
            Some(true) if drift.has("enabled") => services.enable(&s.name)?,
            Some(false) if drift.has("enabled") => services.disable(&s.name)?,
            _ => {}
        }
        match s.running {
            Some(true) if drift.has("running") => services.start(&s.name)?,
            Some(false) if drift.has("running") => services.stop(&s.name)?,
            _ => {}
        }
        Ok(())
    }

    fn refresh(&self, host: &Host, applied: &Drift, how: Refresh) -> Result<Vec<PropertyChange>> {
        let s = self.0;
        // A service declared stopped stays stopped; one just started already
        // runs the new configuration.
        if s.running == Some(false) || applied.has("running") {
            return Ok(Vec::new());
        }
        let services = host.services()?;
        if s.running.is_none() && !services.status(&s.name)?.running {
            return Ok(Vec::new());
        }
        let mut changes = Vec::new();
        // Its unit is reloaded here when it changed on disk, before it acts:
        // `check` read nothing of a service only notified, and what the
        // manager said earlier in the run (read in one go with the role's
        // other services) may predate a unit file this run wrote since.
        services.forget(&s.name);
        if services.stale(&s.name)? {
            services.reload_units()?;
            changes.push(PropertyChange::new(
                RELOAD,
                "unit changed on disk",
                "reloaded",
            ));
        }
        let done = match how {
            Refresh::Restart => {
                services.restart(&s.name)?;
                "restarted"
            }
            Refresh::Reload => match services.reload(&s.name)? {
                Reloaded::Reloaded => "reloaded",
                Reloaded::Restarted => "restarted (the unit cannot reload)",
            },
        };
        changes.push(PropertyChange::new("refresh", "", done));
        Ok(changes)
    }

    fn refresh_preview(&self, drift: &Drift, how: Refresh) -> Option<PropertyChange> {
        let would = match how {
            Refresh::Restart => "would restart",
            Refresh::Reload => "would reload",
        };
        (self.0.running != Some(false) && !drift.has("running"))
            .then(|| PropertyChange::new("refresh", "", would))
    }
}
