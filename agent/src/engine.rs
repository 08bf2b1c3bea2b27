//! The engine: the only place that decides. For each resource, in the role's
//! order: skip it if something it depends on failed; `check`; in noop mode,
//! report; otherwise `apply`, `verify` (leftover drift is a failure), then do
//! the refresh it owes (a restart, or a reload when only reloads were asked).
//! Refreshes owed are written to disk as soon as they are owed and removed
//! once done, so a failed or interrupted run keeps them.
//!
//! Packages next to one another in the order share one package transaction
//! when nothing orders them apart ([`batches`]): at the first of them, each is
//! checked, and those that drift are installed together; each still gets its
//! own turn and report entry (verify, changes, refreshes). If the transaction
//! fails, each is applied on its own at its turn, so a failure is reported
//! on the package that caused it.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use cairn_proto::report::{PropertyChange, ResourceReport, ResourceStatus, RunReport, RunSummary};
use cairn_proto::role::{ResourceId, Role};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::progress::Observer;
use crate::providers::Host;
use crate::resources::{self, BatchInstall, Drift, Refresh};
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
    // A noop touches nothing, so it has nothing to do together.
    let batches = if opts.noop {
        Vec::new()
    } else {
        batches(role, &notifiers)
    };
    let mut batches = batches.into_iter().peekable();
    let mut ahead: HashMap<usize, Ahead> = HashMap::new();

    let total = role.resources.len();
    for (index, r) in role.resources.iter().enumerate() {
        observer.started(index, total, &r.id);
        if let Some(batch) = batches.next_if(|b| b.start == index) {
            ahead.extend(install_batch(role, batch, host, &notifiers, &status));
        }
        let ahead = ahead.remove(&index);
        let spent_ahead = ahead.as_ref().map_or(Duration::ZERO, |a| a.spent);
        let t0 = Instant::now();
        let id = r.id.to_string();
        let outcome = match blocker(r, &notifiers, &status) {
            Some(dep) => Outcome::skipped(format!(
                "skipped because {dep} {}",
                if status[dep] == ResourceStatus::Failed {
                    "failed"
                } else {
                    "was skipped"
                }
            )),
            None => {
                let outcome = converge(r, &id, host, state, opts, &mut pending, ahead);
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
                                    && deps(r, &notifiers).any(|x| x == *d)
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
            duration_us: (t0.elapsed() + spent_ahead).as_micros() as u64,
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

/// What a resource depends on, so must converge first: what it requires and
/// what notifies it.
fn deps<'a>(
    r: &'a cairn_proto::role::Resource,
    notifiers: &'a HashMap<&ResourceId, Vec<&ResourceId>>,
) -> impl Iterator<Item = &'a ResourceId> {
    r.requires
        .iter()
        .chain(notifiers.get(&r.id).into_iter().flatten().copied())
}

/// The first of `r`'s dependencies that failed or was skipped.
fn blocker<'a>(
    r: &'a cairn_proto::role::Resource,
    notifiers: &'a HashMap<&ResourceId, Vec<&ResourceId>>,
    status: &HashMap<&ResourceId, ResourceStatus>,
) -> Option<&'a ResourceId> {
    deps(r, notifiers).find(|d| {
        matches!(
            status.get(d),
            Some(ResourceStatus::Failed | ResourceStatus::Skipped)
        )
    })
}

/// The runs of the role's resources whose applies may share one package
/// transaction: at least two resources next to one another in the order,
/// each a [`Resource::batch_install`], all with the same transaction options,
/// none depending (by `requires`, `notify` or `reload`) on another of the run.
/// Anything else between them (a file a package needs, a repository) ends the
/// run, so one transaction never jumps over what the order puts first.
fn batches(role: &Role, notifiers: &HashMap<&ResourceId, Vec<&ResourceId>>) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    // The run being grown: where it starts and its options.
    let mut run: Option<(usize, Option<bool>)> = None;
    let close = |run: Option<(usize, Option<bool>)>, end: usize, found: &mut Vec<Range<usize>>| {
        if let Some((start, _)) = run
            && end - start >= 2
        {
            found.push(start..end);
        }
    };
    for (i, r) in role.resources.iter().enumerate() {
        let recommends = resources::for_spec(&r.spec)
            .batch_install()
            .map(|b| b.recommends);
        let joins = match (run, recommends) {
            (Some((start, options)), Some(recommends)) => {
                let members = &role.resources[start..i];
                options == recommends
                    && !deps(r, notifiers).any(|d| members.iter().any(|m| m.id == *d))
            }
            _ => false,
        };
        if !joins {
            close(run, i, &mut found);
            run = recommends.map(|options| (i, options));
        }
    }
    close(run, role.resources.len(), &mut found);
    found
}

/// What was done for a resource before its turn, at the start of its batch,
/// when it took part in the batch's transaction.
struct Ahead {
    /// What its check found.
    drift: Drift,
    /// That drift was applied, in the transaction.
    installed: bool,
    /// The time spent on it: its check and the whole transaction.
    spent: Duration,
}

/// At the first resource of `batch`: checks each resource of it that no
/// failed dependency blocks, and installs in one transaction those that drift
/// (when two or more do). Returns, by index, what was done for each that
/// took part; if the transaction failed, none is `installed`, so each is
/// applied on its own at its turn and a failure is reported on the package
/// that caused it. The others are checked again at their turn, as usual
/// (what was installed before them may have changed them; a failed check
/// is reported there).
fn install_batch(
    role: &Role,
    batch: Range<usize>,
    host: &Host,
    notifiers: &HashMap<&ResourceId, Vec<&ResourceId>>,
    status: &HashMap<&ResourceId, ResourceStatus>,
) -> HashMap<usize, Ahead> {
    let mut drifting = Vec::new();
    for i in batch.filter(|&i| blocker(&role.resources[i], notifiers, status).is_none()) {
        let res = resources::for_spec(&role.resources[i].spec);
        let t0 = Instant::now();
        if let Ok(drift) = res.check(host)
            && !drift.is_empty()
        {
            drifting.push((i, res, drift, t0.elapsed()));
        }
    }
    if drifting.len() < 2 {
        return HashMap::new();
    }
    let together: Vec<(BatchInstall<'_>, &Drift)> = drifting
        .iter()
        .map(|(_, res, drift, _)| {
            let install = res.batch_install().expect("a batch holds installs only");
            (install, drift)
        })
        .collect();
    let t0 = Instant::now();
    // Its error is not kept: each package is then installed on its own, and
    // its own error says what is wrong with it.
    let installed = resources::install_together(host, &together).is_ok();
    drop(together);
    let took = t0.elapsed();
    drifting
        .into_iter()
        .map(|(i, _, drift, checked_in)| {
            let spent = checked_in + took;
            (
                i,
                Ahead {
                    drift,
                    installed,
                    spent,
                },
            )
        })
        .collect()
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
    ahead: Option<Ahead>,
) -> Outcome {
    let res = resources::for_spec(&r.spec);
    let (checked, installed) = match ahead {
        Some(a) => (Ok(a.drift), a.installed),
        None => (res.check(host), false),
    };
    let drift = match checked {
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
        if !installed && let Err(e) = res.apply(host, &drift) {
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

#[cfg(test)]
mod tests {
    use cairn_proto::bundle::RoleBundle;
    use cairn_proto::facts::Facts;

    use super::*;

    /// The batches of the role with `resources`, as the ids of each.
    fn batched(resources: &str) -> Vec<Vec<String>> {
        let mut bundle = RoleBundle::default();
        let toml = format!("[role]\nname = \"t\"\n\n{resources}");
        bundle
            .insert("role.toml".into(), toml.into_bytes())
            .unwrap();
        let role = cairn_proto::role::load(&bundle, &Facts::placeholder()).unwrap();
        let mut notifiers: HashMap<&ResourceId, Vec<&ResourceId>> = HashMap::new();
        for r in &role.resources {
            for target in r.notify.iter().chain(&r.reload) {
                notifiers.entry(target).or_default().push(&r.id);
            }
        }
        batches(&role, &notifiers)
            .into_iter()
            .map(|b| role.resources[b].iter().map(|r| r.id.to_string()).collect())
            .collect()
    }

    fn package(name: &str, more: &str) -> String {
        format!("[[package]]\nname = \"{name}\"\n{more}\n")
    }

    #[test]
    fn packages_next_to_one_another_make_one_batch() {
        let role = ["pa", "pb", "pc", "pd"].map(|n| package(n, "")).concat();
        assert_eq!(
            batched(&format!(
                "{role}[[file]]\npath = \"/etc/x\"\ncontent = \"x\"\n"
            )),
            [["package:pa", "package:pb", "package:pc", "package:pd"]]
        );
        // Pinned versions and notifications do not keep a package out.
        assert_eq!(
            batched(&format!(
                "{}{}[[service]]\nname = \"web\"\n",
                package("pa", "version = \"1.2\""),
                package("pb", "notify = [\"service:web\"]"),
            )),
            [["package:pa", "package:pb"]]
        );
    }

    #[test]
    fn a_resource_that_orders_packages_apart_splits_them() {
        // c needs a file that needs b: the file comes between them.
        let role = format!(
            "{}{}{}[[file]]\npath = \"/etc/pb.conf\"\ncontent = \"x\"\nrequires = [\"package:pb\"]\n",
            package("pa", ""),
            package("pb", ""),
            package("pc", "requires = [\"file:/etc/pb.conf\"]"),
        );
        assert_eq!(batched(&role), [["package:pa", "package:pb"]]);
        // So does a package an exec must come before.
        let role = format!(
            "{}{}[[exec]]\nname = \"repo\"\ncommand = \"true\"\n",
            package("pa", ""),
            package("pb", "requires = [\"exec:repo\"]"),
        );
        assert!(batched(&role).is_empty());
    }

    #[test]
    fn a_package_that_requires_another_starts_a_new_batch() {
        let role = format!(
            "{}{}{}",
            package("pa", ""),
            package("pb", "requires = [\"package:pa\"]"),
            package("pc", ""),
        );
        assert_eq!(batched(&role), [["package:pb", "package:pc"]]);
    }

    #[test]
    fn packages_with_other_options_or_another_state_are_not_batched_together() {
        let role = format!(
            "{}{}{}{}{}",
            package("pa", ""),
            package("pb", ""),
            package("lean", "install_recommends = false"),
            package("gone", "state = \"absent\""),
            package("purged", "state = \"purged\""),
        );
        assert_eq!(batched(&role), [["package:pa", "package:pb"]]);
        let role = format!(
            "{}{}",
            package("lean", "install_recommends = false"),
            package("thin", "install_recommends = false"),
        );
        assert_eq!(batched(&role), [["package:lean", "package:thin"]]);
    }
}
