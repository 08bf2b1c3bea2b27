//! References between resources (`requires`, `notify`, `reload`, implicit
//! edges), cycles, and the order a run converges them in.

use std::collections::{BinaryHeap, HashMap};

use super::diagnostic::{Diags, clip, suggest};
use super::id::ResourceId;
use super::kinds::Kind;
use super::manifest::Decl;
use super::{Location, Resource};

/// Reports every id declared twice.
pub(super) fn check_duplicates(diags: &mut Diags<'_>, decls: &[Decl]) {
    let mut seen: HashMap<&ResourceId, usize> = HashMap::new();
    for (i, d) in decls.iter().enumerate() {
        if let Some(&first) = seen.get(&d.id) {
            let (line, _) = diags.line_col(decls[first].span.start);
            diags.error(
                d.span.clone(),
                Some(&d.context),
                None,
                format!(
                    "duplicate resource {} (first declared on line {line})",
                    clip(&d.id.to_string())
                ),
                Some("each TYPE:NAME may be declared once; merge the two".into()),
            );
        } else {
            seen.insert(&d.id, i);
        }
    }
}

/// Checks references, adds implicit edges and orders the resources; empty
/// if anything is wrong (reported to `diags`).
pub(super) fn order(diags: &mut Diags<'_>, decls: Vec<Decl>) -> Vec<Resource> {
    let ids: HashMap<ResourceId, usize> = decls
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.clone(), i))
        .collect();
    let [mut requires, mut notify, mut reload] = references(diags, &decls, &ids);
    for (i, d) in decls.iter().enumerate() {
        for id in d.spec.implicit_requires() {
            if ids.contains_key(&id) && id != d.id && !requires[i].contains(&id) {
                requires[i].push(id);
            }
        }
    }
    if diags.any() {
        return Vec::new();
    }
    // A reload orders as a notify does: the service after what reloads it.
    let refreshes: Vec<Vec<ResourceId>> = notify
        .iter()
        .zip(&reload)
        .map(|(n, r)| n.iter().chain(r).cloned().collect())
        .collect();
    precede_every(&decls, &ids, &mut requires, &refreshes);
    let order = match topological(&decls, &ids, &requires, &refreshes) {
        Ok(order) => order,
        Err(cycle) => {
            let names: Vec<String> = cycle.iter().map(|&i| decls[i].id.to_string()).collect();
            let first = &decls[cycle[0]];
            diags.error(
                first.span.clone(),
                Some(&first.context),
                None,
                format!("dependency cycle: {} → {}", names.join(" → "), names[0]),
                Some(
                    "`requires`, `notify` and `reload` all order resources; remove one edge of the cycle"
                        .into(),
                ),
            );
            return Vec::new();
        }
    };
    let mut slots: Vec<Option<Decl>> = decls.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|i| {
            let d = slots[i]
                .take()
                .expect("each index appears once in a topological order");
            Resource {
                location: Location {
                    line: diags.line_col(d.span.start).0,
                },
                id: d.id,
                spec: d.spec,
                requires: std::mem::take(&mut requires[i]),
                notify: std::mem::take(&mut notify[i]),
                reload: std::mem::take(&mut reload[i]),
            }
        })
        .collect()
}

/// Each resource's declared `requires`, `notify` and `reload`, checked:
/// declared in the role, not itself, only refreshable kinds notified and only
/// services reloaded.
fn references(
    diags: &mut Diags<'_>,
    decls: &[Decl],
    ids: &HashMap<ResourceId, usize>,
) -> [Vec<Vec<ResourceId>>; 3] {
    let mut requires: Vec<Vec<ResourceId>> = vec![Vec::new(); decls.len()];
    let mut notify: Vec<Vec<ResourceId>> = vec![Vec::new(); decls.len()];
    let mut reload: Vec<Vec<ResourceId>> = vec![Vec::new(); decls.len()];
    for (i, d) in decls.iter().enumerate() {
        for (field, refs, out) in [
            ("requires", &d.requires, &mut requires[i]),
            ("notify", &d.notify, &mut notify[i]),
            ("reload", &d.reload, &mut reload[i]),
        ] {
            for r in refs {
                let mut push = |message: String, help: Option<String>| {
                    diags.error(r.span(), Some(&d.context), Some(field), message, help)
                };
                let id = match r.get_ref().parse::<ResourceId>() {
                    Ok(id) => id,
                    Err(e) => {
                        push(e, None);
                        continue;
                    }
                };
                if !ids.contains_key(&id) {
                    let help = suggest(&id.to_string(), ids.keys().map(|k| k.to_string()))
                        .map(|s| format!("did you mean `{s}`?"));
                    push(
                        format!("{} is not declared in this role", clip(&id.to_string())),
                        help,
                    );
                    continue;
                }
                if id == d.id {
                    push(format!("{id} refers to itself"), None);
                    continue;
                }
                if field == "notify" && !id.kind.refreshable() {
                    push(
                        format!(
                            "{id} cannot be notified: only services and execs react to a refresh"
                        ),
                        None,
                    );
                    continue;
                }
                if field == "reload" && id.kind != Kind::Service {
                    push(
                        format!("{id} cannot be reloaded: only services reload"),
                        Some("use `notify` to run an exec when this changes".into()),
                    );
                    continue;
                }
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
    }
    [requires, notify, reload]
}

/// Adds the edges of [`Kind::precedes_every`]: a resource of a following
/// kind (a package) requires every resource of the leading kind (an apt
/// repository). A resource some leader must follow already (a repository
/// requires the package, directly or through others) gets none of these
/// edges, which would make cycles the role never wrote: that package is
/// installed from the lists there are. No cycle can come of the edges added,
/// since each goes to a resource no leader follows.
fn precede_every(
    decls: &[Decl],
    ids: &HashMap<ResourceId, usize>,
    requires: &mut [Vec<ResourceId>],
    refreshes: &[Vec<ResourceId>],
) {
    let leaders: Vec<usize> = (0..decls.len())
        .filter(|&i| !decls[i].id.kind.precedes_every().is_empty())
        .collect();
    if leaders.is_empty() {
        return;
    }
    // What must come before each resource, by index.
    let mut before: Vec<Vec<usize>> = requires
        .iter()
        .map(|r| r.iter().map(|id| ids[id]).collect())
        .collect();
    for (i, targets) in refreshes.iter().enumerate() {
        for target in targets {
            before[ids[target]].push(i);
        }
    }
    // Everything some leader follows, which must come first.
    let mut first = vec![false; decls.len()];
    let mut stack: Vec<usize> = leaders.iter().flat_map(|&l| before[l].clone()).collect();
    while let Some(i) = stack.pop() {
        if !std::mem::replace(&mut first[i], true) {
            stack.extend(&before[i]);
        }
    }
    for leader in leaders {
        let id = &decls[leader].id;
        for (i, d) in decls.iter().enumerate() {
            if id.kind.precedes_every().contains(&d.id.kind)
                && !first[i]
                && !requires[i].contains(id)
            {
                requires[i].push(id.clone());
            }
        }
    }
}

/// Kahn's algorithm, always taking the ready resource that comes first by
/// (type, declaration order), so the order is stable and edges only move what
/// they must. A cycle is returned as the indexes on it.
fn topological(
    decls: &[Decl],
    ids: &HashMap<ResourceId, usize>,
    requires: &[Vec<ResourceId>],
    refreshes: &[Vec<ResourceId>],
) -> Result<Vec<usize>, Vec<usize>> {
    let n = decls.len();
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut indegree = vec![0usize; n];
    for i in 0..n {
        for dep in &requires[i] {
            after[ids[dep]].push(i);
            indegree[i] += 1;
        }
        for target in &refreshes[i] {
            after[i].push(ids[target]);
            indegree[ids[target]] += 1;
        }
    }
    let key = |i: usize| std::cmp::Reverse((decls[i].id.kind, i));
    let mut ready: BinaryHeap<_> = (0..n).filter(|&i| indegree[i] == 0).map(key).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(std::cmp::Reverse((_, i))) = ready.pop() {
        order.push(i);
        for &j in &after[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(key(j));
            }
        }
    }
    if order.len() < n {
        return Err(find_cycle(&after, &indegree));
    }
    Ok(order)
}

/// Finds one cycle among the nodes Kahn's algorithm could not order.
fn find_cycle(after: &[Vec<usize>], indegree: &[usize]) -> Vec<usize> {
    let stuck: Vec<bool> = indegree.iter().map(|&d| d > 0).collect();
    let start = stuck.iter().position(|&s| s).expect("a cycle exists");
    // Every stuck node has a stuck predecessor; walk successors until a repeat.
    let mut path = vec![start];
    let mut pos: HashMap<usize, usize> = HashMap::from([(start, 0)]);
    let mut cur = start;
    loop {
        let next = *after[cur]
            .iter()
            .find(|&&j| stuck[j] && reaches(after, &stuck, j, cur))
            .expect("a stuck node on a cycle has a successor on it");
        if let Some(&p) = pos.get(&next) {
            return path[p..].to_vec();
        }
        pos.insert(next, path.len());
        path.push(next);
        cur = next;
    }
}

fn reaches(after: &[Vec<usize>], stuck: &[bool], from: usize, to: usize) -> bool {
    let mut seen = vec![false; after.len()];
    let mut stack = vec![from];
    while let Some(i) = stack.pop() {
        if i == to {
            return true;
        }
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        stack.extend(after[i].iter().copied().filter(|&j| stuck[j]));
    }
    false
}
