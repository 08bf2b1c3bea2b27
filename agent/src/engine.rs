//! The engine: the only place that decides. For each resource, in the role's
//! order: skip it if something it depends on failed; `check`; in noop mode,
//! report; otherwise `apply`, `verify` (leftover drift is a failure), then do
//! the refresh it owes (a restart, or a reload when only reloads were asked).
//! Refreshes owed are written to disk as soon as they are owed and removed
//! once done, so a failed or interrupted run keeps them.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use anyhow::{Result, anyhow};
use cairn_proto::report::{PropertyChange, ResourceReport, ResourceStatus, RunReport, RunSummary};
use cairn_proto::role::{ResourceId, Role};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::progress::Observer;
use crate::providers::Host;
use crate::resources::{self, Drift, Refresh};
use crate::state::StateDir;

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Check only: report what would change, change nothing.
    pub noop: bool,
}

/// Converges `host` to `role`, telling `observer` as each resource starts and
/// finishes. Fails only when the run cannot start (its state cannot be read);
/// a failing resource is a result in the report.
pub fn run(
    role: &Role,
    host: &Host,
    state: &StateDir,
    opts: RunOptions,
    observer: &mut dyn Observer,
) -> Result<RunReport> {
    let started_at = now();
    let mut pending: BTreeMap<String, Refresh> = state.load_pending()?;
    // A refresh owed to a resource the role no longer has cannot be done.
    pending.retain(|id, _| role.resources.iter().any(|r| r.id.to_string() == *id));
    let mut notifiers: HashMap<&ResourceId, Vec<&ResourceId>> = HashMap::new();
    for r in &role.resources {
        for target in r.notify.iter().chain(&r.reload) {
            notifiers.entry(target).or_default().push(&r.id);
        }
    }
    let mut status: HashMap<&ResourceId, ResourceStatus> = HashMap::new();
    let mut reports = Vec::with_capacity(role.resources.len());

    let total = role.resources.len();
    for (index, r) in role.resources.iter().enumerate() {
        observer.started(index, total, &r.id);
        let t0 = Instant::now();
        let id = r.id.to_string();
        // What must converge first: what it requires and what notifies it.
        let deps = || {
            r.requires
                .iter()
                .chain(notifiers.get(&r.id).into_iter().flatten().copied())
        };
        let blocker = deps().find(|d| {
            matches!(
                status.get(d),
                Some(ResourceStatus::Failed | ResourceStatus::Skipped)
            )
        });
        let outcome = match blocker {
            Some(dep) => Outcome::skipped(format!(
                "skipped because {dep} {}",
                if status[dep] == ResourceStatus::Failed {
                    "failed"
                } else {
                    "was skipped"
                }
            )),
            None => {
                let outcome = converge(r, &id, host, state, opts, &mut pending);
                // In noop, a check can fail only because a dependency has not
                // been applied yet (a service whose package would be
                // installed): that is a pending change, not a failure. Which
                // of the pending dependencies it waits on cannot be told, so
                // each is named, in the order they converge.
                let waiting_on: Vec<&ResourceId> =
                    if opts.noop && outcome.status == ResourceStatus::Failed {
                        role.resources[..index]
                            .iter()
                            .map(|d| &d.id)
                            .filter(|d| {
                                status.get(d) == Some(&ResourceStatus::WouldChange)
                                    && deps().any(|x| x == *d)
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                match waiting_on.as_slice() {
                    [] => outcome,
                    deps => Outcome {
                        status: ResourceStatus::WouldChange,
                        changes: Vec::new(),
                        diff: None,
                        error: Some(format!(
                            "not checked until {} {} applied ({})",
                            and_list(deps),
                            if deps.len() == 1 { "is" } else { "are" },
                            outcome.error.unwrap_or_default()
                        )),
                    },
                }
            }
        };
        status.insert(&r.id, outcome.status);
        reports.push(ResourceReport {
            id,
            status: outcome.status,
            changes: outcome.changes,
            diff: outcome.diff,
            duration_us: t0.elapsed().as_micros() as u64,
            error: outcome.error,
        });
        observer.finished(reports.last().expect("just pushed"));
    }

    Ok(RunReport {
        run_id: uuid::Uuid::new_v4().to_string(),
        node: host.facts.fqdn.clone(),
        role: role.name.clone(),
        role_digest: role.digest.clone(),
        noop: opts.noop,
        started_at,
        finished_at: now(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        // Where the role came from is the caller's to say (`run::run_once`).
        channel: String::new(),
        role_version: 0,
        from_cache: false,
        summary: RunSummary::of(&reports),
        resources: reports,
    })
}

struct Outcome {
    status: ResourceStatus,
    changes: Vec<PropertyChange>,
    diff: Option<String>,
    error: Option<String>,
}

impl Outcome {
    fn skipped(why: String) -> Self {
        Outcome {
            status: ResourceStatus::Skipped,
            changes: Vec::new(),
            diff: None,
            error: Some(why),
        }
    }

    fn failed(drift: Drift, err: anyhow::Error) -> Self {
        Outcome {
            status: ResourceStatus::Failed,
            changes: drift.changes,
            diff: drift.diff,
            error: Some(format!("{err:#}")),
        }
    }
}

fn converge(
    r: &cairn_proto::role::Resource,
    id: &str,
    host: &Host,
    state: &StateDir,
    opts: RunOptions,
    pending: &mut BTreeMap<String, Refresh>,
) -> Outcome {
    let res = resources::for_spec(&r.spec);
    let drift = match res.check(host) {
        Ok(d) => d,
        Err(e) => {
            return Outcome::failed(Drift::default(), e.context(format!("could not check {id}")));
        }
    };
    let owes_refresh = pending.get(id).copied();

    if opts.noop {
        let mut drift = drift;
        if let Some(how) = owes_refresh
            && let Some(change) = res.refresh_preview(&drift, how)
        {
            drift.changes.push(change);
        }
        if drift.is_empty() {
            return Outcome {
                status: ResourceStatus::Unchanged,
                changes: Vec::new(),
                diff: None,
                error: None,
            };
        }
        // What this would notify owes a refresh for the rest of this noop run
        // only; nothing is written.
        owe_refreshes(r, pending);
        return Outcome {
            status: ResourceStatus::WouldChange,
            changes: drift.changes,
            diff: drift.diff,
            error: None,
        };
    }

    let mut applied = Drift::default();
    if !drift.is_empty() {
        if let Err(e) = res.apply(host, &drift) {
            return Outcome::failed(drift, e.context(format!("could not apply {id}")));
        }
        match res.verify(host) {
            Ok(left) if left.is_empty() => {}
            Ok(left) => {
                let props: Vec<String> = left
                    .changes
                    .iter()
                    .map(|c| format!("{} ({} → {})", c.property, c.before, c.after))
                    .collect();
                let err = anyhow!("{id} still differs after apply: {}", props.join(", "));
                return Outcome::failed(drift, err);
            }
            Err(e) => return Outcome::failed(drift, e.context(format!("could not verify {id}"))),
        }
        applied = drift;
        if owe_refreshes(r, pending)
            && let Err(e) = state.save_pending(pending)
        {
            return Outcome::failed(applied, e);
        }
    }

    if let Some(how) = owes_refresh {
        match res.refresh(host, &applied, how) {
            Ok(change) => {
                pending.remove(id);
                if let Err(e) = state.save_pending(pending) {
                    return Outcome::failed(applied, e);
                }
                applied.changes.extend(change);
            }
            Err(e) => {
                return Outcome::failed(applied, e.context(format!("could not refresh {id}")));
            }
        }
    }

    Outcome {
        status: if applied.is_empty() {
            ResourceStatus::Unchanged
        } else {
            ResourceStatus::Changed
        },
        changes: applied.changes,
        diff: applied.diff,
        error: None,
    }
}

/// Records the refreshes `r` asks of others now that it changed: a restart
/// for each it notifies, a reload for each it reloads; a restart already
/// owed stays one. Returns whether anything new is owed.
fn owe_refreshes(r: &cairn_proto::role::Resource, pending: &mut BTreeMap<String, Refresh>) -> bool {
    let asked = r
        .notify
        .iter()
        .map(|id| (id, Refresh::Restart))
        .chain(r.reload.iter().map(|id| (id, Refresh::Reload)));
    let mut changed = false;
    for (id, how) in asked {
        match pending.entry(id.to_string()) {
            Entry::Vacant(e) => {
                e.insert(how);
                changed = true;
            }
            Entry::Occupied(mut e) if *e.get() < how => {
                e.insert(how);
                changed = true;
            }
            Entry::Occupied(_) => {}
        }
    }
    changed
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[&ResourceId]) -> String {
    let names: Vec<String> = items.iter().map(ToString::to_string).collect();
    match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("RFC 3339 can format any UTC time")
}
