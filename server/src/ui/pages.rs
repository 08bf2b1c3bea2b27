//! The dashboard's pages, each read from the store and rendered by its
//! template (`server/templates/`); every value is escaped by askama.

use std::sync::Arc;

use askama::Template;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use cairn_proto::bundle::RoleBundle;
use cairn_proto::pb;
use cairn_proto::report::{ResourceStatus, RunReport};
use prost::Message;
use serde::Deserialize;
use tracing::error;

use super::session::{Viewer, refused, unavailable};
use super::{Peer, UiState, html};
use crate::store::{
    AuditCursor, AuditFilter, AuditQuery, AuditRecord, ChannelStatus, FleetNode, HourOfRuns,
    Micros, NodeFilter, NodeState, ReportMeta, ReportQuery, RunStatus, StoreError, audit,
    dashboard::HOUR, now_micros,
};

/// Nodes on one page of the nodes list.
const NODES_PER_PAGE: u32 = 50;
/// Reports listed on a node's page, newest first.
const NODE_REPORTS: u32 = 50;
/// Failures listed on the overview.
const LAST_FAILURES: u32 = 10;
/// A fact filter: at most this many keys, each at most this long, and a
/// value at most this long.
const MAX_FACT_KEYS: usize = 8;
const MAX_FACT_KEY: usize = 64;
const MAX_FACT_VALUE: usize = 256;
/// Bounds of the filters' other fields.
const MAX_FILTER: usize = 128;

/// A page, or the page that says what went wrong.
type PageResult = Result<Response, Response>;

fn render(t: impl Template) -> PageResult {
    t.render()
        .map(|body| html(StatusCode::OK, body))
        .map_err(|e| {
            error!(error = %e, "could not render a page");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        })
}

/// A storage error as a page: not found, or unavailable (logged).
fn failed(what: &str) -> impl FnOnce(StoreError) -> Response + '_ {
    move |e| match e {
        StoreError::NotFound(_) => not_found_page(what),
        e => {
            error!(
                error = format!("{:#}", anyhow::Error::from(e)),
                "dashboard could not read {what}"
            );
            unavailable()
        }
    }
}

fn not_found_page(what: &str) -> Response {
    refused(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("There is no {what}."),
    )
}

pub async fn not_found(_viewer: Viewer) -> Response {
    not_found_page("such page")
}

/// `2026-11-26 22:37:28 UTC`, or `never`.
fn time(micros: Micros) -> String {
    let t = crate::service::rfc3339(micros);
    match t.get(..19) {
        Some(day_time) if micros > 0 => format!("{} UTC", day_time.replacen('T', " ", 1)),
        _ => "never".into(),
    }
}

/// A node's row: what every list of nodes shows.
pub struct NodeRow {
    pub name: String,
    pub role: String,
    pub channel: String,
    pub state: &'static str,
    pub version: String,
    pub last_run: String,
    pub report_id: Option<u64>,
    pub revoked: bool,
}

impl NodeRow {
    fn new(n: FleetNode, now: Micros) -> Self {
        let state = match &n.last {
            None => NodeState::Never,
            Some(l) if l.stale(now) => NodeState::Stale,
            Some(l) => match l.status {
                RunStatus::Failed => NodeState::Failed,
                RunStatus::Changed => NodeState::Changed,
                RunStatus::Unchanged => NodeState::Converged,
            },
        };
        NodeRow {
            state: state.as_str(),
            version: n
                .last
                .as_ref()
                .map_or_else(String::new, |l| l.role_version.to_string()),
            last_run: n
                .last
                .as_ref()
                .map_or_else(|| "never".into(), |l| time(l.finished_at)),
            report_id: n.last.as_ref().map(|l| l.report_id),
            revoked: n.revoked,
            name: n.name,
            role: n.role,
            channel: n.channel,
        }
    }
}

/// A report's row.
pub struct ReportRow {
    pub id: u64,
    pub node: String,
    pub role: String,
    pub version: u64,
    pub status: &'static str,
    pub summary: String,
    pub finished: String,
}

impl From<ReportMeta> for ReportRow {
    fn from(m: ReportMeta) -> Self {
        ReportRow {
            id: m.id,
            status: m.status.as_str(),
            summary: format!(
                "{} resources, {} changed, {} failed{}{}",
                m.resources,
                m.changed,
                m.failed,
                if m.noop { ", noop" } else { "" },
                if m.from_cache { ", from cache" } else { "" }
            ),
            finished: time(m.finished_at),
            node: m.node,
            role: m.role,
            version: m.role_version,
        }
    }
}

/// One stacked bar of the runs chart (SVG coordinates).
pub struct Bar {
    pub x: u32,
    pub y: u32,
    pub height: u32,
    pub class: &'static str,
    pub title: String,
}

/// Runs per hour over the last 24 hours, as stacked bars: failed on top of
/// changed on top of unchanged.
pub struct Chart {
    pub bars: Vec<Bar>,
    pub max: u64,
    pub total: u64,
}

impl Chart {
    pub const WIDTH: u32 = 24 * BAR_WIDTH;
    pub const HEIGHT: u32 = CHART_HEIGHT;
    /// A bar leaves a gap to the next.
    pub const BAR: u32 = BAR_WIDTH - 2;
}

const CHART_HEIGHT: u32 = 120;
const BAR_WIDTH: u32 = 20;

/// The start of the chart's first hour: 23 hours before the current one.
fn chart_start(now: Micros) -> Micros {
    (now / HOUR - 23) * HOUR
}

fn chart(hours: &[HourOfRuns], now: Micros) -> Chart {
    let first = chart_start(now);
    let max = hours
        .iter()
        .map(|h| h.failed + h.changed + h.unchanged)
        .max()
        .unwrap_or(0);
    let mut bars = Vec::new();
    let mut total = 0;
    for h in hours.iter().filter(|h| h.hour >= first) {
        let column = ((h.hour - first) / HOUR) as u32;
        let mut top = CHART_HEIGHT;
        for (n, class, what) in [
            (h.unchanged, "unchanged", "unchanged"),
            (h.changed, "changed", "changed"),
            (h.failed, "failed", "failed"),
        ] {
            total += n;
            if n == 0 {
                continue;
            }
            let height = ((n * u64::from(CHART_HEIGHT)).div_ceil(max.max(1))) as u32;
            top = top.saturating_sub(height);
            bars.push(Bar {
                x: column * BAR_WIDTH,
                y: top,
                height,
                class,
                title: format!("{}: {n} {what}", time(h.hour)),
            });
        }
    }
    Chart { bars, max, total }
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    viewer: Viewer,
    states: Vec<(&'static str, u64)>,
    rollout: Vec<ChannelStatus>,
    chart: Chart,
    /// The last failures.
    reports: Vec<ReportRow>,
}

/// `GET /`: nodes by state, rollout per role and channel, runs in the last
/// 24 hours, the last failures.
pub async fn overview(State(state): State<Arc<UiState>>, viewer: Viewer) -> PageResult {
    let now = now_micros();
    let store = &state.store;
    // Four reads of their own, at once: the page takes as long as the
    // slowest, not as long as all four.
    let failures_query = ReportQuery {
        status: Some(RunStatus::Failed),
        limit: LAST_FAILURES,
        ..ReportQuery::default()
    };
    let (counts, rollout, hours, failures) = tokio::join!(
        store.state_counts(now),
        store.fleet_status(now),
        store.runs_by_hour(chart_start(now)),
        store.reports(&failures_query),
    );
    let counts = counts.map_err(failed("node states"))?;
    let rollout = rollout.map_err(failed("rollout"))?;
    let hours = hours.map_err(failed("runs"))?;
    let failures = failures.map_err(failed("failures"))?;
    render(Overview {
        viewer,
        states: NodeState::ALL
            .iter()
            .map(|s| (s.as_str(), counts.get(*s)))
            .collect(),
        rollout,
        chart: chart(&hours, now),
        reports: failures.into_iter().map(ReportRow::from).collect(),
    })
}

/// The nodes list's filters, as the form sends them (empty: none).
#[derive(Debug, Default, Deserialize)]
pub struct NodesQuery {
    #[serde(default)]
    role: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    version: String,
    /// `key.path=value`.
    #[serde(default)]
    fact: String,
    /// The last name of the page before.
    #[serde(default)]
    after: String,
}

impl NodesQuery {
    /// The filter, or what is wrong with it.
    fn filter(&self) -> Result<NodeFilter, String> {
        let text = |s: &str, what: &str| -> Result<Option<String>, String> {
            match s.trim() {
                "" => Ok(None),
                s if s.len() > MAX_FILTER => Err(format!("the {what} is too long")),
                s => Ok(Some(s.to_string())),
            }
        };
        let state = match self.state.as_str() {
            "" => None,
            s => Some(NodeState::parse(s).ok_or("unknown state")?),
        };
        let version = match self.version.trim() {
            "" => None,
            v => Some(
                v.parse::<u64>()
                    .map_err(|_| "the version is a whole number".to_string())?,
            ),
        };
        Ok(NodeFilter {
            role: text(&self.role, "role")?,
            channel: text(&self.channel, "channel")?,
            state,
            version,
            fact: parse_fact(&self.fact)?,
        })
    }
}

/// `os.release=12` → (["os", "release"], "12"); keys of letters, digits,
/// `_` and `-`.
fn parse_fact(s: &str) -> Result<Option<(Vec<String>, String)>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let (key, value) = s
        .split_once('=')
        .ok_or("a fact filter is key=value, e.g. os.release=12")?;
    let keys: Vec<String> = key.trim().split('.').map(str::to_string).collect();
    if keys.len() > MAX_FACT_KEYS
        || keys.iter().any(|k| {
            k.is_empty()
                || k.len() > MAX_FACT_KEY
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
    {
        return Err(format!(
            "a fact's key is up to {MAX_FACT_KEYS} names of letters, digits, '_' and '-', \
             joined by '.'"
        ));
    }
    if value.len() > MAX_FACT_VALUE {
        return Err("the fact's value is too long".into());
    }
    Ok(Some((keys, value.trim().to_string())))
}

#[derive(Template)]
#[template(path = "nodes.html")]
struct Nodes {
    viewer: Viewer,
    query: NodesQuery,
    states: [NodeState; 5],
    problem: Option<String>,
    nodes: Vec<NodeRow>,
    /// The name the next page starts after, if there is one.
    next: Option<String>,
}

/// `GET /nodes`: one page of nodes, filtered.
pub async fn nodes(
    State(state): State<Arc<UiState>>,
    viewer: Viewer,
    Query(query): Query<NodesQuery>,
) -> PageResult {
    let now = now_micros();
    let (problem, mut nodes) = match query.filter() {
        Err(problem) => (Some(problem), Vec::new()),
        Ok(filter) => {
            let found = state
                .store
                .find_nodes(&filter, now, &query.after, NODES_PER_PAGE + 1)
                .await
                .map_err(failed("nodes"))?;
            (None, found)
        }
    };
    let next = (nodes.len() > NODES_PER_PAGE as usize).then(|| {
        nodes.truncate(NODES_PER_PAGE as usize);
        nodes.last().map(|n| n.name.clone()).unwrap_or_default()
    });
    render(Nodes {
        viewer,
        query,
        states: NodeState::ALL,
        problem,
        nodes: nodes.into_iter().map(|n| NodeRow::new(n, now)).collect(),
        next,
    })
}

/// A run on a node's timeline (SVG coordinates).
pub struct Tick {
    pub id: u64,
    pub x: u32,
    pub class: &'static str,
    pub title: String,
}

#[derive(Template)]
#[template(path = "node.html")]
struct Node {
    viewer: Viewer,
    node: NodeRow,
    facts: String,
    timeline: Vec<Tick>,
    timeline_width: u32,
    reports: Vec<ReportRow>,
}

/// A run's place on a node's timeline; its mark leaves a gap to the next.
const TICK_WIDTH: u32 = 12;
pub const TICK: u32 = TICK_WIDTH - 2;
pub const TIMELINE_HEIGHT: u32 = 16;

/// `GET /nodes/NAME`: its facts, its runs as a timeline, its reports.
pub async fn node(
    State(state): State<Arc<UiState>>,
    viewer: Viewer,
    Path(name): Path<String>,
) -> PageResult {
    if cairn_proto::node::check_name(&name).is_err() {
        return Err(not_found_page("node of that name"));
    }
    let now = now_micros();
    let (node, facts) = state
        .store
        .fleet_node(&name)
        .await
        .map_err(failed("node of that name"))?;
    let reports = state
        .store
        .reports(&ReportQuery {
            node: Some(name),
            limit: NODE_REPORTS,
            ..ReportQuery::default()
        })
        .await
        .map_err(failed("reports"))?;
    // Facts are a JSON object (checked when stored): shown indented.
    let facts = serde_json::from_str::<serde_json::Value>(&facts)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or(facts);
    let timeline: Vec<Tick> = reports
        .iter()
        .rev()
        .enumerate()
        .map(|(i, r)| Tick {
            id: r.id,
            x: i as u32 * TICK_WIDTH,
            class: r.status.as_str(),
            title: format!(
                "{} version {}: {}",
                time(r.finished_at),
                r.role_version,
                r.status.as_str()
            ),
        })
        .collect();
    render(Node {
        viewer,
        node: NodeRow::new(node, now),
        facts,
        timeline_width: timeline.len() as u32 * TICK_WIDTH,
        timeline,
        reports: reports.into_iter().map(ReportRow::from).collect(),
    })
}

/// One resource of a report: its status, id and duration, and its block as
/// the CLI prints it ([`cairn_proto::report::ResourceReport::human`]), line
/// by line with each line's kind for the stylesheet.
pub struct ResourceView {
    pub status: &'static str,
    pub id: String,
    pub duration: String,
    pub lines: Vec<(&'static str, String)>,
}

#[derive(Template)]
#[template(path = "report.html")]
struct Report {
    viewer: Viewer,
    meta: ReportRow,
    channel: String,
    received: String,
    summary: String,
    resources: Vec<ResourceView>,
}

/// A line of a diff, for the stylesheet: a file header, an added or removed
/// line, a hunk header, or other.
fn line_kind(line: &str) -> &'static str {
    match line {
        l if l.starts_with("+++") || l.starts_with("---") => "file",
        l if l.starts_with('+') => "add",
        l if l.starts_with('-') => "remove",
        l if l.starts_with("@@") => "hunk",
        _ => "",
    }
}

/// `GET /reports/ID`: every resource with its status, duration and diff.
/// What the agent left out of a report (a `sensitive` file's content) was
/// never sent.
pub async fn report(
    State(state): State<Arc<UiState>>,
    viewer: Viewer,
    Path(id): Path<u64>,
) -> PageResult {
    let (meta, bytes) = state
        .store
        .report(id)
        .await
        .map_err(failed("report of that number"))?;
    let report = pb::RunReport::decode(bytes.as_slice())
        .ok()
        .and_then(|r| RunReport::try_from(r).ok())
        .ok_or_else(|| {
            error!(id, "stored report does not decode");
            refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Unreadable report",
                "This report is unreadable in storage; see the server's log.",
            )
        })?;
    let resources = report
        .resources
        .iter()
        .map(|r| ResourceView {
            status: match r.status {
                ResourceStatus::Unchanged => "unchanged",
                ResourceStatus::Changed => "changed",
                ResourceStatus::WouldChange => "would-change",
                ResourceStatus::Failed => "failed",
                ResourceStatus::Skipped => "skipped",
            },
            id: r.id.clone(),
            duration: format!("{:.1} ms", r.duration_us as f64 / 1000.0),
            lines: r
                .human(true)
                .lines()
                .skip(1)
                // The CLI indents a resource's lines under it; a diff's start after that.
                .map(|l| {
                    (
                        line_kind(l.strip_prefix("    ").unwrap_or("")),
                        l.to_string(),
                    )
                })
                .collect(),
        })
        .collect();
    render(Report {
        viewer,
        channel: meta.channel.clone(),
        received: time(meta.received_at),
        summary: report.human_summary(),
        meta: meta.into(),
        resources,
    })
}

/// One role in the roles list.
pub struct RoleRow {
    pub name: String,
    pub latest: u64,
    pub channels: Vec<(String, u64)>,
}

#[derive(Template)]
#[template(path = "roles.html")]
struct Roles {
    viewer: Viewer,
    roles: Vec<RoleRow>,
}

/// `GET /roles`: every role, its latest version and its channels.
pub async fn roles(State(state): State<Arc<UiState>>, viewer: Viewer) -> PageResult {
    let roles = state.store.roles().await.map_err(failed("roles"))?;
    render(Roles {
        viewer,
        roles: roles
            .into_iter()
            .map(|r| RoleRow {
                name: r.latest.role,
                latest: r.latest.version,
                channels: r
                    .channels
                    .into_iter()
                    .map(|c| (c.channel, c.version))
                    .collect(),
            })
            .collect(),
    })
}

#[derive(Debug, Default, Deserialize)]
pub struct DiffQuery {
    a: Option<u64>,
    b: Option<u64>,
}

pub struct VersionRow {
    pub version: u64,
    pub author: String,
    pub message: String,
    pub created: String,
}

pub struct EventRow {
    pub channel: String,
    pub action: String,
    pub from: String,
    pub to: u64,
    pub actor: String,
    pub at: String,
}

/// Two versions compared, each file as `cairn role diff` prints it.
pub struct Comparison {
    pub a: u64,
    pub b: u64,
    pub files: Vec<(&'static str, String)>,
    pub redacted: Vec<String>,
}

#[derive(Template)]
#[template(path = "role.html")]
struct Role {
    viewer: Viewer,
    name: String,
    /// The versions the compare form starts at: those compared, or the
    /// latest and the one before.
    compare: (u64, u64),
    versions: Vec<VersionRow>,
    rollout: Vec<ChannelStatus>,
    history: Vec<EventRow>,
    comparison: Option<Comparison>,
}

/// A stored version's bundle with sensitive content replaced (on the
/// blocking pool: it validates the role), and the redacted paths.
async fn redacted_bundle(
    state: &UiState,
    name: &str,
    version: u64,
) -> Result<(RoleBundle, Vec<String>), Response> {
    let (_, bytes) = state
        .store
        .get(name, Some(version))
        .await
        .map_err(failed("version of that role"))?;
    let unreadable = || {
        refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Unreadable version",
            "This version is unreadable in storage; see the server's log.",
        )
    };
    let wire = pb::Bundle::decode(bytes.as_slice()).map_err(|_| unreadable())?;
    tokio::task::spawn_blocking(move || {
        let (wire, redacted) = crate::redact::sensitive(wire);
        RoleBundle::from_wire(wire).ok().map(|b| (b, redacted))
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(unreadable)
}

/// `GET /roles/NAME[?a=V&b=W]`: its versions, where its channels stand and
/// their history, a promote form (publishers), and two versions compared.
pub async fn role(
    State(state): State<Arc<UiState>>,
    viewer: Viewer,
    Path(name): Path<String>,
    Query(diff): Query<DiffQuery>,
) -> PageResult {
    let store = &state.store;
    let versions = store
        .versions(&name)
        .await
        .map_err(failed("role of that name"))?;
    let (_, history) = store
        .channels(&name)
        .await
        .map_err(failed("role of that name"))?;
    let rollout = store
        .fleet_status(now_micros())
        .await
        .map_err(failed("rollout"))?
        .into_iter()
        .filter(|c| c.role == name)
        .collect();
    let comparison = match (diff.a, diff.b) {
        (Some(a), Some(b)) => {
            let (old, mut redacted) = redacted_bundle(&state, &name, a).await?;
            let (new, more) = redacted_bundle(&state, &name, b).await?;
            redacted.extend(more);
            redacted.sort();
            redacted.dedup();
            let files = cairn_proto::diff::bundles(&old, &new)
                .iter()
                .flat_map(|f| f.text().lines().map(str::to_string).collect::<Vec<_>>())
                .map(|l| (line_kind(&l), l))
                .collect();
            Some(Comparison {
                a,
                b,
                files,
                redacted,
            })
        }
        _ => None,
    };
    let latest = versions.last().map_or(1, |v| v.version);
    let compare = (
        diff.a.unwrap_or(latest.saturating_sub(1).max(1)),
        diff.b.unwrap_or(latest),
    );
    render(Role {
        viewer,
        compare,
        versions: versions
            .into_iter()
            .rev()
            .map(|v| VersionRow {
                version: v.version,
                author: v.author,
                message: v.message,
                created: time(v.created_at),
            })
            .collect(),
        rollout,
        history: history
            .into_iter()
            .map(|e| EventRow {
                channel: e.channel,
                action: e.action,
                from: e.from_version.map_or_else(|| "—".into(), |v| v.to_string()),
                to: e.to_version,
                actor: e.actor,
                at: time(e.at),
            })
            .collect(),
        name,
        comparison,
    })
}

#[derive(Deserialize)]
pub struct PromoteForm {
    #[serde(default)]
    csrf: String,
    channel: String,
    version: u64,
}

/// `POST /roles/NAME/promote` (publishers; auditors were refused before the
/// body was read): points a channel at a version, as `cairn role promote`.
pub async fn promote(
    State(state): State<Arc<UiState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    viewer: Viewer,
    Path(name): Path<String>,
    axum::Form(form): axum::Form<PromoteForm>,
) -> PageResult {
    if !viewer.csrf_matches(&form.csrf) {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "Not allowed",
            "The form's CSRF token does not match this session.",
        ));
    }
    if !viewer.can_publish() {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "Not allowed",
            "Promoting needs a publisher or admin.",
        ));
    }
    let channel = crate::service::check_channel(&form.channel)
        .map_err(|e| refused(StatusCode::BAD_REQUEST, "Not promoted", e.message()))?;
    crate::service::check_role_name(&name)
        .map_err(|e| refused(StatusCode::BAD_REQUEST, "Not promoted", e.message()))?;
    match state
        .store
        .promote(&name, &channel, form.version, &viewer.actor(&peer))
        .await
    {
        Ok(_) => {
            state.moves.moved(&name, &channel).await;
            Ok(Redirect::to(&format!("/roles/{}", urlencode(&name))).into_response())
        }
        Err(StoreError::NotFound(what)) => Err(not_found_page(&what)),
        Err(StoreError::Conflict(msg)) => Err(refused(StatusCode::CONFLICT, "Not promoted", &msg)),
        Err(e) => Err(failed("role")(e)),
    }
}

/// Audit entries on one page, newest first.
const AUDIT_PER_PAGE: u32 = 50;
/// Entries read per step when the whole chain is checked.
const AUDIT_VERIFY_STEP: u32 = 1000;

#[derive(Debug, Default, Deserialize)]
pub struct AuditPageQuery {
    /// The page starts below this entry (the cursor of the next page).
    before: Option<u64>,
    /// Only entries of this actor, or with this action (exact).
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    /// Check the whole chain, from the first entry.
    #[serde(default)]
    verify: String,
}

impl AuditPageQuery {
    /// The filter, or what is wrong with it.
    fn filter(&self) -> Result<AuditFilter, String> {
        let exact = |s: &str, what: &str| match s.trim() {
            "" => Ok(None),
            s if s.len() > MAX_FILTER => Err(format!("the {what} is too long")),
            s => Ok(Some(s.to_string())),
        };
        Ok(AuditFilter {
            actor: exact(&self.actor, "actor")?,
            action: exact(&self.action, "action")?,
        })
    }
}

pub struct AuditRow {
    pub id: u64,
    pub at: String,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub peer: String,
    pub outcome: String,
}

impl From<&AuditRecord> for AuditRow {
    fn from(e: &AuditRecord) -> Self {
        AuditRow {
            id: e.id,
            at: time(e.at),
            actor: e.actor.clone(),
            role: e.actor_role.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            detail: e.detail.clone(),
            peer: e.peer.clone(),
            outcome: e.outcome.clone(),
        }
    }
}

/// What the page says of the hash chain of its entries.
pub enum PageChain {
    /// Each entry follows from the one before it.
    Verified,
    /// The chain breaks at this entry.
    Broken(u64),
    /// Filtered: the entries shown are not consecutive in the log, and an
    /// entry's hash follows from the one before it in the log, so only the
    /// whole chain can be checked.
    Filtered,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    viewer: Viewer,
    query: AuditPageQuery,
    problem: Option<String>,
    entries: Vec<AuditRow>,
    page_chain: PageChain,
    /// The whole chain, when asked: `Ok(entries)` or the first break.
    whole_chain: Option<Result<u64, u64>>,
    next: Option<u64>,
}

/// The id of the first entry of `page` (oldest first) whose hash does not
/// follow from the one before it; the first follows from `before`.
fn page_break(before: &str, page: &[AuditRecord]) -> Result<(), u64> {
    let mut previous = before;
    for e in page {
        if e.hash != audit::expected_hash(previous, e) {
            return Err(e.id);
        }
        previous = &e.hash;
    }
    Ok(())
}

/// The whole chain, read from the first entry in steps: `Ok(entries)`, or
/// the id of the first entry that does not follow.
async fn whole_chain(state: &UiState) -> Result<Result<u64, u64>, Response> {
    let (mut after, mut previous, mut count) = (0, String::new(), 0);
    loop {
        let step = state
            .store
            .audit_log(AuditQuery {
                since: None,
                from: AuditCursor::After(after),
                limit: AUDIT_VERIFY_STEP,
            })
            .await
            .map_err(failed("audit log"))?;
        let Some(last) = step.last() else {
            return Ok(Ok(count));
        };
        if let Err(id) = page_break(&previous, &step) {
            return Ok(Err(id));
        }
        count += step.len() as u64;
        after = last.id;
        previous = last.hash.clone();
    }
}

/// `GET /audit`: the audit log, newest first, a page at a time, filtered
/// by actor and action in the store; whether the page's entries follow
/// from each other (unfiltered pages only), and on request whether the
/// whole chain does (as `cairn audit verify`).
pub async fn audit_log(
    State(state): State<Arc<UiState>>,
    viewer: Viewer,
    Query(query): Query<AuditPageQuery>,
) -> PageResult {
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(problem) => {
            return render(AuditPage {
                viewer,
                query,
                problem: Some(problem),
                entries: Vec::new(),
                page_chain: PageChain::Filtered,
                whole_chain: None,
                next: None,
            });
        }
    };
    // One more than shown: the entry before the page's oldest, which its
    // hash follows from (unfiltered), and whether there is an older page.
    let mut page = state
        .store
        .audit_log_filtered(
            AuditQuery {
                since: None,
                from: AuditCursor::Before(query.before),
                limit: AUDIT_PER_PAGE + 1,
            },
            &filter,
        )
        .await
        .map_err(failed("audit log"))?;
    page.reverse();
    let before = if page.len() > AUDIT_PER_PAGE as usize {
        Some(page.remove(0))
    } else {
        None
    };
    let page_chain = if filter != AuditFilter::default() {
        PageChain::Filtered
    } else {
        // The first entry follows from nothing.
        match page_break(before.as_ref().map_or("", |b| b.hash.as_str()), &page) {
            Ok(()) => PageChain::Verified,
            Err(id) => PageChain::Broken(id),
        }
    };
    let whole_chain = if query.verify.is_empty() {
        None
    } else {
        Some(whole_chain(&state).await?)
    };
    let next = before.as_ref().and(page.first().map(|e| e.id));
    render(AuditPage {
        viewer,
        entries: page.iter().rev().map(AuditRow::from).collect(),
        problem: None,
        page_chain,
        whole_chain,
        next,
        query,
    })
}

/// What [`urlencode`] leaves as it is: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `s` percent-encoded for a URL's path segment or query value.
pub fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn urlencode_keeps_only_unreserved_characters() {
        assert_eq!(super::urlencode("web-1._~"), "web-1._~");
        assert_eq!(super::urlencode("a b/<é>?&"), "a%20b%2F%3C%C3%A9%3E%3F%26");
    }
}
