//! systemd. Status for every service the role names (learnt in `prepare`) is
//! read in one go over D-Bus (or, without a system bus, one `systemctl show`)
//! and cached, so a converged run spawns no process however many services the
//! role has.
//! Actions go through `systemctl`, which waits for the job to finish; they drop
//! the cached entry.
//!
//! systemd keeps running a unit with the definition it loaded: a unit file or
//! drop-in changed since is used only after `systemctl daemon-reload`, and
//! until then systemd says so in the unit's `NeedDaemonReload` property, read
//! here with the rest of the status. The service resource has systemd reload
//! before it acts on such a unit or trusts its enablement; one reload serves
//! every unit changed before it.

use std::cell::RefCell;
use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use cairn_proto::role::{Role, Spec};

use super::process;
use super::{Needs, Reloaded, ServiceProvider, ServiceStatus};

/// Where systemd fits: where it is running. This is the check sd_booted(3)
/// makes: systemd creates the directory at boot.
pub const NEEDS: &[Needs] = &[Needs::Directory {
    path: "/run/systemd/system",
    missing: "systemd is not running on this host",
}];

#[derive(Default)]
pub struct Systemd {
    /// The units of the role's services, read together on the first status asked.
    names: Vec<String>,
    cache: RefCell<HashMap<String, Unit>>,
}

/// What is cached of one unit.
#[derive(Clone, Copy)]
struct Unit {
    status: ServiceStatus,
    /// systemd's `NeedDaemonReload`.
    stale: bool,
}

/// `nginx` → `nginx.service`; names with a unit suffix stay as they are.
pub fn unit_name(service: &str) -> String {
    const SUFFIXES: [&str; 11] = [
        ".service",
        ".socket",
        ".target",
        ".timer",
        ".path",
        ".mount",
        ".automount",
        ".swap",
        ".slice",
        ".scope",
        ".device",
    ];
    if SUFFIXES.iter().any(|s| service.ends_with(s)) {
        service.to_string()
    } else {
        format!("{service}.service")
    }
}

impl Systemd {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the status of `units` in one go and caches it.
    fn load(&self, units: &[String]) -> Result<()> {
        let states = match read_dbus(units) {
            Ok(states) => states,
            // No system bus (an image without dbus): systemctl reaches systemd
            // over its private socket instead, at the cost of a process.
            Err(_) => read_systemctl(units)?,
        };
        let mut cache = self.cache.borrow_mut();
        for s in states {
            let enabled = match s.file_state.as_str() {
                "enabled" | "enabled-runtime" | "alias" => Some(true),
                "disabled" | "masked" | "masked-runtime" | "linked" | "linked-runtime" => {
                    Some(false)
                }
                // static, indirect, generated, transient, bad, empty: cannot be toggled.
                _ => None,
            };
            cache.insert(
                s.unit,
                Unit {
                    status: ServiceStatus {
                        exists: s.load == "loaded",
                        running: matches!(s.active.as_str(), "active" | "activating" | "reloading"),
                        enabled,
                    },
                    stale: s.need_reload,
                },
            );
        }
        Ok(())
    }

    fn act(&self, verb: &str, service: &str) -> Result<()> {
        let unit = unit_name(service);
        self.cache.borrow_mut().remove(&unit);
        process::run_ok("systemctl", [verb, unit.as_str()], &[])
            .with_context(|| format!("could not {verb} {unit}"))?;
        Ok(())
    }

    /// What is known of `service`'s unit, read (with the role's other
    /// services when nothing is cached) when not cached.
    fn unit(&self, service: &str) -> Result<Unit> {
        let unit = unit_name(service);
        if let Some(u) = self.cache.borrow().get(&unit) {
            return Ok(*u);
        }
        let batch = if self.cache.borrow().is_empty() && self.names.contains(&unit) {
            self.names.clone()
        } else {
            vec![unit.clone()]
        };
        self.load(&batch)
            .with_context(|| format!("could not read the state of {unit}"))?;
        match self.cache.borrow().get(&unit) {
            Some(u) => Ok(*u),
            None => bail!("systemctl show printed nothing for {unit}"),
        }
    }
}

impl ServiceProvider for Systemd {
    fn name(&self) -> &'static str {
        "systemd"
    }

    fn prepare(&mut self, role: &Role) {
        self.names = role
            .resources
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::Service(s) => Some(unit_name(&s.name)),
                Spec::Timer(t) => Some(t.timer_unit()),
                _ => None,
            })
            .collect();
    }

    fn status(&self, service: &str) -> Result<ServiceStatus> {
        Ok(self.unit(service)?.status)
    }

    fn stale(&self, service: &str) -> Result<bool> {
        Ok(self.unit(service)?.stale)
    }

    fn forget(&self, service: &str) {
        self.cache.borrow_mut().remove(&unit_name(service));
    }

    /// Every cached state may change with the definitions: all are dropped.
    fn reload_units(&self) -> Result<()> {
        self.cache.borrow_mut().clear();
        process::run_ok("systemctl", ["daemon-reload"], &[])
            .context("could not reload systemd's unit files (systemctl daemon-reload)")?;
        Ok(())
    }

    fn start(&self, service: &str) -> Result<()> {
        self.act("start", service)
    }

    fn stop(&self, service: &str) -> Result<()> {
        self.act("stop", service)
    }

    fn restart(&self, service: &str) -> Result<()> {
        self.act("restart", service)
    }

    /// `reload-or-restart`, which decides on the unit as systemd has it
    /// when the job runs; `CanReload`, read after, says which it did.
    fn reload(&self, service: &str) -> Result<Reloaded> {
        self.act("reload-or-restart", service)?;
        let unit = unit_name(service);
        let ran = process::run_ok(
            "systemctl",
            ["show", "--property=CanReload", "--value", unit.as_str()],
            &[],
        )
        .with_context(|| format!("could not read whether {unit} can reload"))?;
        Ok(match ran.stdout.trim() {
            "yes" => Reloaded::Reloaded,
            _ => Reloaded::Restarted,
        })
    }

    fn enable(&self, service: &str) -> Result<()> {
        self.act("enable", service)
    }

    fn disable(&self, service: &str) -> Result<()> {
        self.act("disable", service)
    }
}

/// One unit's state as systemd reports it.
struct UnitState {
    unit: String,
    load: String,
    active: String,
    file_state: String,
    need_reload: bool,
}

const SYSTEMD: &str = "org.freedesktop.systemd1";

/// Over D-Bus: one `ListUnitsByNames` call for all units, then two property
/// reads per loaded unit (about 0.2 ms each), instead of a `systemctl` process.
fn read_dbus(units: &[String]) -> Result<Vec<UnitState>> {
    use zbus::zvariant::{OwnedObjectPath, OwnedValue};
    type Listed = (
        String,
        String,
        String,
        String,
        String,
        String,
        OwnedObjectPath,
        u32,
        String,
        OwnedObjectPath,
    );

    let bus =
        zbus::blocking::Connection::system().context("could not connect to the system bus")?;
    let listed: Vec<Listed> = bus
        .call_method(
            Some(SYSTEMD),
            "/org/freedesktop/systemd1",
            Some("org.freedesktop.systemd1.Manager"),
            "ListUnitsByNames",
            &(units,),
        )
        .context("ListUnitsByNames failed")?
        .body()
        .deserialize()
        .context("unexpected ListUnitsByNames reply")?;
    listed
        .into_iter()
        .map(|(unit, _, load, active, _, _, path, ..)| {
            let property = |name: &str| -> Result<OwnedValue> {
                bus.call_method(
                    Some(SYSTEMD),
                    &path,
                    Some("org.freedesktop.DBus.Properties"),
                    "Get",
                    &("org.freedesktop.systemd1.Unit", name),
                )
                .with_context(|| format!("could not read {name} of {unit}"))?
                .body()
                .deserialize()
                .with_context(|| format!("unexpected reply reading {name} of {unit}"))
            };
            let (file_state, need_reload) = if load == "loaded" {
                (
                    String::try_from(property("UnitFileState")?)
                        .context("UnitFileState is not a string")?,
                    bool::try_from(property("NeedDaemonReload")?)
                        .context("NeedDaemonReload is not a boolean")?,
                )
            } else {
                (String::new(), false)
            };
            Ok(UnitState {
                unit,
                load,
                active,
                file_state,
                need_reload,
            })
        })
        .collect()
}

/// With one `systemctl show` process for all units.
fn read_systemctl(units: &[String]) -> Result<Vec<UnitState>> {
    let mut args = vec![
        "show".to_string(),
        "--property=Id,LoadState,ActiveState,UnitFileState,NeedDaemonReload".into(),
    ];
    args.extend(units.iter().cloned());
    let ran = process::run_ok("systemctl", &args, &[])?;
    // One block of KEY=VALUE lines per unit, separated by blank lines, in the
    // order asked.
    Ok(units
        .iter()
        .zip(ran.stdout.split("\n\n"))
        .map(|(unit, block)| {
            let prop = |key: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                    .unwrap_or("")
                    .to_string()
            };
            UnitState {
                unit: unit.clone(),
                load: prop("LoadState"),
                active: prop("ActiveState"),
                file_state: prop("UnitFileState"),
                need_reload: prop("NeedDaemonReload") == "yes",
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_learns_the_units_of_the_roles_services_and_timers() {
        let mut bundle = cairn_proto::bundle::RoleBundle::default();
        bundle
            .insert(
                "role.toml".into(),
                b"[role]\nname = \"t\"\n\n[[service]]\nname = \"nginx\"\nrunning = true\n\n\
             [[package]]\nname = \"nginx\"\n\n[[service]]\nname = \"fstrim.timer\"\nenabled = true\n\n\
             [[timer]]\nname = \"backup\"\non_calendar = \"daily\"\ncommand = \"true\"\n"
                    .to_vec(),
            )
            .unwrap();
        let role =
            cairn_proto::role::load(&bundle, &cairn_proto::facts::Facts::placeholder()).unwrap();
        let mut systemd = Systemd::new();
        systemd.prepare(&role);
        let mut names = systemd.names.clone();
        names.sort();
        assert_eq!(names, ["backup.timer", "fstrim.timer", "nginx.service"]);
        assert!(systemd.cache.borrow().is_empty(), "prepare reads nothing");
    }

    #[test]
    fn unit_names() {
        assert_eq!(unit_name("nginx"), "nginx.service");
        assert_eq!(unit_name("fstrim.timer"), "fstrim.timer");
        assert_eq!(unit_name("getty@tty1.service"), "getty@tty1.service");
    }
}
