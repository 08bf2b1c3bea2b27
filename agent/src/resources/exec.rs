//! `[[exec]]`: a command run by `/bin/sh -c` when its guards say so (`creates`:
//! a path that must not exist yet; `onlyif`: a command that must succeed;
//! `unless`: a command that must fail). A `refresh_only` exec runs only when
//! notified. An exec without guards runs on every run, as in Puppet.

use std::path::Path;

use anyhow::{Result, bail};
use cairn_proto::report::PropertyChange;
use cairn_proto::role;

use super::{Drift, Refresh, Resource};
use crate::providers::Host;

pub struct ExecResource<'a>(pub &'a role::Exec);

impl ExecResource<'_> {
    /// Whether the guards allow the command to run now.
    fn guards_allow(&self, host: &Host) -> Result<bool> {
        let e = self.0;
        let cwd = e.cwd.as_deref().map(Path::new);
        if let Some(path) = &e.creates
            && host.files().stat(Path::new(path))?.is_some()
        {
            return Ok(false);
        }
        if let Some(cmd) = &e.onlyif
            && !host.shell().run(cmd, cwd)?.success
        {
            return Ok(false);
        }
        if let Some(cmd) = &e.unless
            && host.shell().run(cmd, cwd)?.success
        {
            return Ok(false);
        }
        Ok(true)
    }

    fn execute(&self, host: &Host) -> Result<()> {
        let e = self.0;
        let ran = host
            .shell()
            .run(&e.command, e.cwd.as_deref().map(Path::new))?;
        if !ran.success {
            bail!("command `{}` failed with {}", e.command, ran.describe());
        }
        Ok(())
    }
}

impl Resource for ExecResource<'_> {
    fn check(&self, host: &Host) -> Result<Drift> {
        let mut drift = Drift::default();
        if !self.0.refresh_only && self.guards_allow(host)? {
            drift.push("executed", "no", "yes");
        }
        Ok(drift)
    }

    fn apply(&self, host: &Host, _drift: &Drift) -> Result<()> {
        self.execute(host)
    }

    /// A guarded exec must have satisfied its guard; an unguarded one has
    /// nothing to verify once its command succeeded.
    fn verify(&self, host: &Host) -> Result<Drift> {
        if self.0.has_guard() {
            let drift = self.check(host)?;
            if !drift.is_empty() {
                bail!(
                    "the command succeeded but its guard still asks for it to run (check creates/unless/onlyif)"
                );
            }
            return Ok(drift);
        }
        Ok(Drift::default())
    }

    /// An exec is only ever asked for the full refresh: it runs.
    fn refresh(&self, host: &Host, applied: &Drift, _: Refresh) -> Result<Vec<PropertyChange>> {
        // It already ran in this run; running it twice is never what was meant.
        if !applied.is_empty() || !self.guards_allow(host)? {
            return Ok(Vec::new());
        }
        self.execute(host)?;
        Ok(vec![PropertyChange::new("refresh", "", "executed")])
    }

    fn refresh_preview(&self, drift: &Drift, _: Refresh) -> Option<PropertyChange> {
        drift
            .is_empty()
            .then(|| PropertyChange::new("refresh", "", "would execute"))
    }
}
