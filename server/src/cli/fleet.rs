//! `cairn node list|show`, `cairn report list|show` and `cairn status`: what
//! the server knows of its fleet. Lists are read page by page (a response
//! holds at most 1,000 entries), up to `--limit`.
//!
//! Everything here was sent by nodes (names, facts, reports): the text for
//! people goes through [`super::output::render`], which escapes it, and every
//! table cell is escaped on its own.

use anyhow::{Context, Result};
use cairn_proto::client::Connection;
use cairn_proto::pb;
use cairn_proto::report::RunReport;
use cairn_proto::terminal::escape;
use clap::{Subcommand, ValueEnum};
use serde::Serialize;

use super::Since;
use super::error::RpcResult;
use super::output::{Render, short_time, table};

/// Most entries asked for in one request: the server's page limit.
const PAGE: u32 = 1000;
/// Most nodes `cairn node list` prints unless told otherwise.
pub const NODE_LIMIT: u32 = 10_000;
/// Most reports `cairn report list` prints unless told otherwise.
pub const REPORT_LIMIT: u32 = 100;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Every node: its role and channel, the version its newest run applied,
    /// how that run went and when, and whether the node is stale (not heard
    /// from for two of its run intervals).
    List {
        /// At most this many nodes, by name.
        #[arg(long, default_value_t = NODE_LIMIT, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// One node: its assignment, newest run, facts and newest reports.
    Show {
        name: String,
        /// How many of its newest reports to list (at most 100).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
        history: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Run reports, newest first.
    List {
        /// Only this node's.
        #[arg(long)]
        node: Option<String>,
        /// Only runs of this role.
        #[arg(long)]
        role: Option<String>,
        /// Only runs that went this way.
        #[arg(long, value_enum)]
        status: Option<RunStatusArg>,
        /// Only reports received in this period (e.g. 1h, 2days) or after this RFC 3339 time.
        #[arg(long, value_parser = super::parse_since)]
        since: Option<Since>,
        /// At most this many reports.
        #[arg(long, default_value_t = REPORT_LIMIT, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// One report: every resource with its changes and diff.
    Show { id: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunStatusArg {
    Failed,
    Changed,
    Unchanged,
}

impl RunStatusArg {
    fn as_str(self) -> &'static str {
        match self {
            RunStatusArg::Failed => "failed",
            RunStatusArg::Changed => "changed",
            RunStatusArg::Unchanged => "unchanged",
        }
    }
}

/// A node's newest run.
#[derive(Debug, Serialize)]
pub struct LastRun {
    pub report_id: u64,
    pub role: String,
    pub channel: String,
    pub role_version: u64,
    /// `failed`, `changed` or `unchanged`.
    pub status: String,
    pub from_cache: bool,
    pub finished_at: String,
    pub seen_at: String,
    pub interval_secs: u64,
}

#[derive(Debug, Serialize)]
pub struct Node {
    pub name: String,
    pub role: String,
    pub channel: String,
    pub revoked: bool,
    /// `null` when it never reported.
    pub last_run: Option<LastRun>,
    pub stale: bool,
}

impl From<pb::NodeSummary> for Node {
    fn from(n: pb::NodeSummary) -> Self {
        Node {
            name: n.name,
            role: n.role,
            channel: n.channel,
            revoked: n.revoked,
            stale: n.stale,
            last_run: n.last_run.map(|r| LastRun {
                report_id: r.report_id,
                role: r.role,
                channel: r.channel,
                role_version: r.role_version,
                status: r.status,
                from_cache: r.from_cache,
                finished_at: r.finished_at,
                seen_at: r.seen_at,
                interval_secs: r.interval_secs,
            }),
        }
    }
}

impl Node {
    /// How its newest run went, for people.
    fn status(&self) -> String {
        let mut s = match &self.last_run {
            None => "never reported".to_string(),
            Some(r) if r.from_cache => format!("{} (from cache)", r.status),
            Some(r) => r.status.clone(),
        };
        if self.revoked {
            s.push_str(", revoked");
        }
        s
    }

    /// The version its newest run applied, `role@version` when another role's.
    fn applied(&self) -> String {
        match &self.last_run {
            None => "-".into(),
            Some(r) if r.role != self.role => format!("{}@{}", r.role, r.role_version),
            Some(r) => r.role_version.to_string(),
        }
    }
}

/// `cairn node list`.
#[derive(Debug, Serialize)]
pub struct NodeListOut {
    pub nodes: Vec<Node>,
}

impl Render for NodeListOut {
    fn human(&self) -> String {
        if self.nodes.is_empty() {
            return "no nodes yet; enroll one with a token from `cairn token create`\n".into();
        }
        let mut t = table([
            "NODE", "ROLE", "CHANNEL", "VERSION", "LAST RUN", "FINISHED", "SEEN",
        ]);
        for n in &self.nodes {
            let (finished, seen) = n.last_run.as_ref().map_or_else(
                || (String::new(), String::new()),
                |r| (short_time(&r.finished_at), short_time(&r.seen_at)),
            );
            t.add_row([
                n.name.clone(),
                n.role.clone(),
                n.channel.clone(),
                n.applied(),
                n.status(),
                finished,
                if n.stale {
                    format!("{seen} (stale)")
                } else {
                    seen
                },
            ]);
        }
        format!("{t}\n")
    }
}

/// A stored report's summary.
#[derive(Debug, Serialize)]
pub struct Report {
    pub id: u64,
    pub node: String,
    pub run_id: String,
    pub role: String,
    pub channel: String,
    pub role_version: u64,
    pub role_digest: String,
    /// `failed`, `changed` or `unchanged`.
    pub status: String,
    pub noop: bool,
    pub from_cache: bool,
    pub resources: u64,
    pub changed: u64,
    pub failed: u64,
    /// By the node's clock.
    pub finished_at: String,
    /// By the server's clock.
    pub received_at: String,
}

impl From<pb::ReportSummary> for Report {
    fn from(r: pb::ReportSummary) -> Self {
        Report {
            id: r.id,
            node: r.node,
            run_id: r.run_id,
            role: r.role,
            channel: r.channel,
            role_version: r.role_version,
            role_digest: r.role_digest,
            status: r.status,
            noop: r.noop,
            from_cache: r.from_cache,
            resources: r.resources,
            changed: r.changed,
            failed: r.failed,
            finished_at: r.finished_at,
            received_at: r.received_at,
        }
    }
}

fn reports_table(reports: &[Report]) -> String {
    let mut t = table([
        "ID",
        "FINISHED",
        "NODE",
        "ROLE",
        "CHANNEL",
        "VERSION",
        "STATUS",
        "CHANGED",
        "FAILED",
        "RESOURCES",
    ]);
    for r in reports {
        let mut status = r.status.clone();
        if r.noop {
            status.push_str(" (noop)");
        }
        if r.from_cache {
            status.push_str(" (from cache)");
        }
        t.add_row([
            r.id.to_string(),
            short_time(&r.finished_at),
            r.node.clone(),
            r.role.clone(),
            r.channel.clone(),
            r.role_version.to_string(),
            status,
            r.changed.to_string(),
            r.failed.to_string(),
            r.resources.to_string(),
        ]);
    }
    format!("{t}\n")
}

/// `cairn node show`.
#[derive(Debug, Serialize)]
pub struct NodeShowOut {
    pub node: Node,
    /// The facts of its newest run; `null` when it never reported.
    pub facts: Option<serde_json::Value>,
    /// Newest first.
    pub history: Vec<Report>,
}

impl Render for NodeShowOut {
    fn human(&self) -> String {
        let n = &self.node;
        let mut s = format!(
            "node {}\nassigned: role {}, channel {}{}\n",
            escape(&n.name),
            escape(&n.role),
            escape(&n.channel),
            if n.revoked { " (revoked)" } else { "" }
        );
        match &n.last_run {
            None => s.push_str("last run: never reported\n"),
            Some(r) => s.push_str(&format!(
                "last run: {}, role {} version {} (channel {}), finished {}, report {}\n\
                 seen:     {}{}, runs every {} s\n",
                n.status(),
                escape(&r.role),
                r.role_version,
                escape(&r.channel),
                short_time(&r.finished_at),
                r.report_id,
                short_time(&r.seen_at),
                if n.stale { " (stale)" } else { "" },
                r.interval_secs,
            )),
        }
        if let Some(facts) = &self.facts {
            s.push_str("facts:\n");
            let pretty = serde_json::to_string_pretty(facts).unwrap_or_default();
            for line in pretty.lines() {
                s.push_str(&format!("  {}\n", escape(line)));
            }
        }
        if self.history.is_empty() {
            s.push_str("no reports stored\n");
        } else {
            s.push_str("newest reports:\n");
            s.push_str(&reports_table(&self.history));
        }
        s
    }
}

/// `cairn report list`.
#[derive(Debug, Serialize)]
pub struct ReportListOut {
    /// Newest first.
    pub reports: Vec<Report>,
}

impl Render for ReportListOut {
    fn human(&self) -> String {
        if self.reports.is_empty() {
            return "no reports match\n".into();
        }
        reports_table(&self.reports)
    }
}

/// `cairn report show`.
#[derive(Debug, Serialize)]
pub struct ReportShowOut {
    pub summary: Report,
    /// The run report as the node sent it (the agent's JSON form).
    pub report: RunReport,
}

impl Render for ReportShowOut {
    fn human(&self) -> String {
        let r = &self.summary;
        let mut s = format!(
            "report {} from node {}, run {}\nrole {} version {} (channel {}){}, finished {}, received {}\n",
            r.id,
            escape(&r.node),
            escape(&r.run_id),
            escape(&r.role),
            r.role_version,
            escape(&r.channel),
            if r.from_cache {
                " from the node's cache"
            } else {
                ""
            },
            short_time(&r.finished_at),
            short_time(&r.received_at),
        );
        s.push_str(&self.report.human());
        s
    }
}

#[derive(Debug, Serialize)]
pub struct ChannelStatus {
    pub role: String,
    pub channel: String,
    /// `null` when nothing was promoted to the channel.
    pub promoted_version: Option<u64>,
    pub nodes: u64,
    pub on_promoted: u64,
    pub on_older: u64,
    pub failing: u64,
    pub stale: u64,
    pub never_reported: u64,
}

/// `cairn status`.
#[derive(Debug, Serialize)]
pub struct StatusOut {
    pub channels: Vec<ChannelStatus>,
}

impl Render for StatusOut {
    fn human(&self) -> String {
        if self.channels.is_empty() {
            return "no nodes yet; enroll one with a token from `cairn token create`\n".into();
        }
        let mut t = table([
            "ROLE",
            "CHANNEL",
            "PROMOTED",
            "NODES",
            "ON PROMOTED",
            "ON OLDER",
            "FAILING",
            "STALE",
            "NEVER REPORTED",
        ]);
        for c in &self.channels {
            t.add_row([
                c.role.clone(),
                c.channel.clone(),
                c.promoted_version
                    .map_or_else(|| "-".into(), |v| v.to_string()),
                c.nodes.to_string(),
                c.on_promoted.to_string(),
                c.on_older.to_string(),
                c.failing.to_string(),
                c.stale.to_string(),
                c.never_reported.to_string(),
            ]);
        }
        format!("{t}\n")
    }
}

/// Up to `limit` nodes, by name.
pub async fn node_list(conn: &Connection, limit: u32) -> Result<NodeListOut> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut after_name = String::new();
    while nodes.len() < limit as usize {
        let want = (limit - nodes.len() as u32).min(PAGE);
        let page = conn
            .fleet()
            .list_nodes(pb::ListNodesRequest {
                after_name: after_name.clone(),
                limit: want,
            })
            .await
            .rpc(conn, || "could not list nodes".to_string())?;
        let Some(last) = page.nodes.last() else {
            break;
        };
        anyhow::ensure!(
            last.name > after_name,
            "the server sent nodes out of order (node {:?} after {after_name:?})",
            escape(&last.name)
        );
        after_name = last.name.clone();
        nodes.extend(page.nodes.into_iter().map(Node::from));
        if !page.more {
            break;
        }
    }
    Ok(NodeListOut { nodes })
}

pub async fn node_show(conn: &Connection, name: &str, history: u32) -> Result<NodeShowOut> {
    let resp = conn
        .fleet()
        .get_node(pb::GetNodeRequest {
            name: name.to_string(),
            history,
        })
        .await
        .rpc(conn, || format!("could not read node {}", escape(name)))?;
    let node = resp
        .node
        .with_context(|| format!("the server sent node {} without its record", escape(name)))?;
    let facts = match resp.facts_json.as_str() {
        "" => None,
        text => Some(serde_json::from_str(text).with_context(|| {
            format!(
                "the server sent facts of node {} that are not JSON",
                escape(name)
            )
        })?),
    };
    Ok(NodeShowOut {
        node: node.into(),
        facts,
        history: resp.history.into_iter().map(Report::from).collect(),
    })
}

/// The newest `limit` reports matching the filters, newest first.
pub async fn report_list(
    conn: &Connection,
    filter: pb::ListReportsRequest,
    limit: u32,
) -> Result<ReportListOut> {
    let mut reports: Vec<Report> = Vec::new();
    let mut before_id = 0;
    while reports.len() < limit as usize {
        let want = (limit - reports.len() as u32).min(PAGE);
        let page = conn
            .fleet()
            .list_reports(pb::ListReportsRequest {
                before_id,
                limit: want,
                ..filter.clone()
            })
            .await
            .rpc(conn, || "could not list reports".to_string())?;
        let Some(last) = page.reports.last() else {
            break;
        };
        anyhow::ensure!(
            before_id == 0 || last.id < before_id,
            "the server sent reports out of order (report {} before {before_id})",
            last.id
        );
        before_id = last.id;
        reports.extend(page.reports.into_iter().map(Report::from));
        if !page.more {
            break;
        }
    }
    Ok(ReportListOut { reports })
}

/// The `--status` filter as the server takes it.
pub fn status_filter(status: Option<RunStatusArg>) -> String {
    status.map(|s| s.as_str().to_string()).unwrap_or_default()
}

pub async fn report_show(conn: &Connection, id: u64) -> Result<ReportShowOut> {
    let resp = conn
        .fleet()
        .get_report(pb::GetReportRequest { id })
        .await
        .rpc(conn, || format!("could not read report {id}"))?;
    let (Some(summary), Some(report)) = (resp.summary, resp.report) else {
        anyhow::bail!("the server sent report {id} without its content");
    };
    let report = RunReport::try_from(report)
        .with_context(|| format!("the server sent report {id} in a form this cairn cannot read"))?;
    Ok(ReportShowOut {
        summary: summary.into(),
        report,
    })
}

pub async fn status(conn: &Connection) -> Result<StatusOut> {
    let resp = conn
        .fleet()
        .status(pb::StatusRequest {})
        .await
        .rpc(conn, || "could not read the fleet's status".to_string())?;
    Ok(StatusOut {
        channels: resp
            .channels
            .into_iter()
            .map(|c| ChannelStatus {
                role: c.role,
                channel: c.channel,
                promoted_version: (c.promoted_version > 0).then_some(c.promoted_version),
                nodes: c.nodes,
                on_promoted: c.on_promoted,
                on_older: c.on_older,
                failing: c.failing,
                stale: c.stale,
                never_reported: c.never_reported,
            })
            .collect(),
    })
}
