//! systemd, through `systemctl`. Status for every service the run names is read
//! with one `systemctl show` call and cached, so a converged run costs one
//! process however many services the role has; actions drop the cached entry.

use std::cell::RefCell;
use std::collections::HashMap;

use anyhow::{Context, Result, bail};

use super::process;
use super::{ServiceProvider, ServiceStatus};

pub struct Systemd {
    names: Vec<String>,
    cache: RefCell<HashMap<String, ServiceStatus>>,
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
    pub fn new(names: &[String]) -> Self {
        Systemd {
            names: names.iter().map(|n| unit_name(n)).collect(),
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// Reads the status of `units` in one `systemctl show` call.
    fn load(&self, units: &[String]) -> Result<()> {
        let mut args = vec![
            "show".to_string(),
            "--property=Id,LoadState,ActiveState,UnitFileState".into(),
        ];
        args.extend(units.iter().cloned());
        let ran = process::run_ok("systemctl", &args, &[])?;
        let mut cache = self.cache.borrow_mut();
        // One block of KEY=VALUE lines per unit, separated by blank lines, in
        // the order asked.
        for (unit, block) in units.iter().zip(ran.stdout.split("\n\n")) {
            let prop = |key: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                    .unwrap_or("")
            };
            let load = prop("LoadState");
            let active = prop("ActiveState");
            let file_state = prop("UnitFileState");
            let enabled = match file_state {
                "enabled" | "enabled-runtime" | "alias" => Some(true),
                "disabled" | "masked" | "masked-runtime" | "linked" | "linked-runtime" => {
                    Some(false)
                }
                // static, indirect, generated, transient, bad, empty: cannot be toggled.
                _ => None,
            };
            cache.insert(
                unit.clone(),
                ServiceStatus {
                    exists: load == "loaded",
                    running: matches!(active, "active" | "activating" | "reloading"),
                    enabled,
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
}

impl ServiceProvider for Systemd {
    fn name(&self) -> &'static str {
        "systemd"
    }

    fn status(&self, service: &str) -> Result<ServiceStatus> {
        let unit = unit_name(service);
        if let Some(s) = self.cache.borrow().get(&unit) {
            return Ok(*s);
        }
        let batch = if self.cache.borrow().is_empty() && self.names.contains(&unit) {
            self.names.clone()
        } else {
            vec![unit.clone()]
        };
        self.load(&batch)
            .with_context(|| format!("could not read the state of {unit}"))?;
        match self.cache.borrow().get(&unit) {
            Some(s) => Ok(*s),
            None => bail!("systemctl show printed nothing for {unit}"),
        }
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

    fn enable(&self, service: &str) -> Result<()> {
        self.act("enable", service)
    }

    fn disable(&self, service: &str) -> Result<()> {
        self.act("disable", service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names() {
        assert_eq!(unit_name("nginx"), "nginx.service");
        assert_eq!(unit_name("fstrim.timer"), "fstrim.timer");
        assert_eq!(unit_name("getty@tty1.service"), "getty@tty1.service");
    }
}
