//! One run of the agent: facts → load → lock → prepare the host → engine →
//! report. `cairn-agent apply` calls it with a role read from a directory,
//! `cairn-agent run` with a bundle fetched from a server (or its cache); the
//! daemon loads a role once and converges to it with [`run_role`] until its
//! bundle or the node's facts change.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cairn_proto::bundle::RoleBundle;
use cairn_proto::facts::Facts;
use cairn_proto::report::RunReport;
use cairn_proto::role::{self, Diagnostics, Role};

use crate::engine::{self, RunOptions};
use crate::facts;
use crate::progress::{Observer, Silent};
use crate::providers::{Host, Providers};
use crate::state::StateDir;

/// What a run works on: the role, the node's facts, the host's providers.
pub struct RunInput {
    pub bundle: RoleBundle,
    /// The directory the bundle was read from, if any: diagnostics then name
    /// files in it, as the user wrote them.
    pub dir: Option<PathBuf>,
    /// The node's facts; gathered from this host when `None`.
    pub facts: Option<Facts>,
    /// Providers given instead of chosen from facts (tests give in-memory ones).
    pub providers: Providers,
}

impl RunInput {
    /// The role in `bundle`, on this host as it is.
    pub fn new(bundle: RoleBundle) -> Self {
        RunInput {
            bundle,
            dir: None,
            facts: None,
            providers: Providers::default(),
        }
    }

    /// The role in directory `dir`, on this host as it is.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let bundle = RoleBundle::from_dir(dir)
            .with_context(|| format!("could not read role {}", dir.display()))?;
        Ok(RunInput {
            dir: Some(dir.to_path_buf()),
            ..RunInput::new(bundle)
        })
    }

    /// Validates the role for a node with `facts`; nothing on the host is
    /// touched. Diagnostics name files under `dir` when the bundle came from one.
    pub fn load(&self, facts: &Facts) -> Result<Role> {
        role::load(&self.bundle, facts).map_err(|mut d| {
            if let Some(dir) = &self.dir {
                prefix_dir(&mut d, dir);
            }
            anyhow::Error::new(d)
        })
    }
}

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Check and report what would change; change nothing.
    pub noop: bool,
    /// Where the agent keeps its lock and owed refreshes.
    pub state_dir: PathBuf,
}

/// Converges this host to the role once. The role is validated before the
/// lock is taken and before anything is touched: an invalid role is an error
/// carrying its [`Diagnostics`] and changes nothing. Fails only when the run
/// cannot happen (invalid role, facts, lock, state); a failing resource is a
/// result in the report.
pub fn run_once(input: RunInput, options: &Options) -> Result<RunReport> {
    run_once_observed(input, options, &mut Silent)
}

/// [`run_once`], telling `observer` as each resource starts and finishes
/// (`cairn-agent apply` prints them as they happen).
pub fn run_once_observed(
    mut input: RunInput,
    options: &Options,
    observer: &mut dyn Observer,
) -> Result<RunReport> {
    let facts = match input.facts.take() {
        Some(f) => f,
        None => facts::gather()?,
    };
    let role = input.load(&facts)?;
    run_role(&role, facts, input.providers, options, observer)
}

/// Converges this host to a role already loaded for `facts` (the daemon keeps
/// it between runs, so a drift-correction run costs only the checks): the run
/// lock → `Host::prepare` → engine → report.
pub fn run_role(
    role: &Role,
    facts: Facts,
    providers: Providers,
    options: &Options,
    observer: &mut dyn Observer,
) -> Result<RunReport> {
    let state = StateDir::new(&options.state_dir);
    let _lock = state.lock()?;
    let mut host = Host::with_providers(facts, providers);
    host.prepare(role);
    engine::run(
        role,
        &host,
        &state,
        RunOptions { noop: options.noop },
        observer,
    )
}

/// Makes diagnostic file names point into the directory the user named.
fn prefix_dir(d: &mut Diagnostics, dir: &Path) {
    for diag in &mut d.0 {
        diag.file = dir.join(&diag.file).display().to_string();
    }
}
