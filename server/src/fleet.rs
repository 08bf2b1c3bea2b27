//! The `Fleet` service: what operators (auditor and up) read of the fleet —
//! nodes and their last runs, stored reports, and how each role's channels
//! stand, in bounded pages ([`crate::paging`]).

use std::time::Duration;

use cairn_proto::node;
use cairn_proto::pb;
use prost::Message;
use tonic::{Request, Response, Status};
use tracing::{error, info};

use crate::auth::Permission;
use crate::paging;
use crate::service::{Api, rfc3339, store_status};
use crate::store::{self, FleetNode, LastRun, Micros, ReportMeta, ReportQuery, RunStatus, Store};

/// How many of a node's newest reports `GetNode` lists unless asked, and at most.
const DEFAULT_HISTORY: u32 = 20;
const MAX_HISTORY: u32 = 100;

fn last_run(r: LastRun) -> pb::LastRun {
    pb::LastRun {
        report_id: r.report_id,
        role: r.role,
        channel: r.channel,
        role_version: r.role_version,
        status: r.status.as_str().into(),
        from_cache: r.from_cache,
        finished_at: rfc3339(r.finished_at),
        seen_at: rfc3339(r.seen_at),
        interval_secs: r.interval_secs,
    }
}

fn node_summary(n: FleetNode, now: Micros) -> pb::NodeSummary {
    pb::NodeSummary {
        stale: n.last.as_ref().is_some_and(|l| l.stale(now)),
        name: n.name,
        role: n.role,
        channel: n.channel,
        revoked: n.revoked,
        last_run: n.last.map(last_run),
    }
}

fn report_summary(m: ReportMeta) -> pb::ReportSummary {
    pb::ReportSummary {
        id: m.id,
        node: m.node,
        run_id: m.run_id,
        role: m.role,
        channel: m.channel,
        role_version: m.role_version,
        role_digest: m.role_digest,
        status: m.status.as_str().into(),
        noop: m.noop,
        from_cache: m.from_cache,
        resources: m.resources,
        changed: m.changed,
        failed: m.failed,
        finished_at: rfc3339(m.finished_at),
        received_at: rfc3339(m.received_at),
    }
}

/// An optional filter: empty means none.
fn filter(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

#[tonic::async_trait]
impl pb::fleet_server::Fleet for Api {
    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.observed("list_nodes", async {
            self.authorize(&req, Permission::Read, "node list", "", "list nodes")
                .await?;
            let pb::ListNodesRequest { after_name, limit } = req.into_inner();
            let limit = paging::limit(limit);
            let nodes = self
                .store
                .fleet_nodes(&after_name, limit + 1)
                .await
                .map_err(store_status)?;
            let now = store::now_micros();
            let (nodes, more) = paging::fill(nodes, limit, |n| node_summary(n, now));
            Ok(pb::ListNodesResponse { nodes, more })
        })
        .await
    }

    async fn get_node(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::GetNodeResponse>, Status> {
        self.observed("get_node", async {
            let name = req.get_ref().name.clone();
            self.authorize(&req, Permission::Read, "node show", &name, "read nodes")
                .await?;
            let history = match req.get_ref().history {
                0 => DEFAULT_HISTORY,
                n => n.min(MAX_HISTORY),
            };
            node::check_name(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let (node, facts_json) = self.store.fleet_node(&name).await.map_err(store_status)?;
            let reports = self
                .store
                .reports(&ReportQuery {
                    node: Some(name),
                    limit: history,
                    ..Default::default()
                })
                .await
                .map_err(store_status)?;
            Ok(pb::GetNodeResponse {
                node: Some(node_summary(node, store::now_micros())),
                facts_json,
                history: reports.into_iter().map(report_summary).collect(),
            })
        })
        .await
    }

    async fn list_reports(
        &self,
        req: Request<pb::ListReportsRequest>,
    ) -> Result<Response<pb::ListReportsResponse>, Status> {
        self.observed("list_reports", async {
            self.authorize(&req, Permission::Read, "report list", "", "list reports")
                .await?;
            let pb::ListReportsRequest {
                node,
                role,
                status,
                since,
                before_id,
                limit,
            } = req.into_inner();
            let status = match status.as_str() {
                "" => None,
                s => Some(RunStatus::parse(s).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "unknown run status {s:?}: failed, changed or unchanged"
                    ))
                })?),
            };
            let limit = paging::limit(limit);
            let reports = self
                .store
                .reports(&ReportQuery {
                    node: filter(node),
                    role: filter(role),
                    status,
                    since: paging::since(&since)?,
                    before_id: (before_id > 0).then_some(before_id),
                    limit: limit + 1,
                })
                .await
                .map_err(store_status)?;
            let (page, more) = paging::fill(reports, limit, report_summary);
            Ok(pb::ListReportsResponse {
                reports: page,
                more,
            })
        })
        .await
    }

    async fn get_report(
        &self,
        req: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::GetReportResponse>, Status> {
        self.observed("get_report", async {
            let id = req.get_ref().id;
            self.authorize(
                &req,
                Permission::Read,
                "report show",
                &id.to_string(),
                "read reports",
            )
            .await?;
            let (meta, bytes) = self.store.report(id).await.map_err(store_status)?;
            let report = pb::RunReport::decode(bytes.as_slice()).map_err(|e| {
                error!(id, error = %e, "stored report does not decode");
                Status::data_loss(format!("report {id} is unreadable in storage"))
            })?;
            Ok(pb::GetReportResponse {
                summary: Some(report_summary(meta)),
                report: Some(report),
            })
        })
        .await
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.observed("status", async {
            self.authorize(
                &req,
                Permission::Read,
                "status",
                "",
                "read the fleet's status",
            )
            .await?;
            let channels = self
                .store
                .fleet_status(store::now_micros())
                .await
                .map_err(store_status)?;
            Ok(pb::StatusResponse {
                channels: channels
                    .into_iter()
                    .map(|c| pb::ChannelStatus {
                        role: c.role,
                        channel: c.channel,
                        promoted_version: c.promoted.unwrap_or(0),
                        nodes: c.nodes,
                        on_promoted: c.on_promoted,
                        on_older: c.on_older,
                        failing: c.failing,
                        stale: c.stale,
                        never_reported: c.never_reported,
                    })
                    .collect(),
            })
        })
        .await
    }
}

/// Reports deleted in one transaction by [`expire_reports`]: small enough that
/// reports arriving meanwhile wait for the writer only briefly.
const EXPIRE_BATCH: u32 = 1000;

/// Deletes the reports received more than `retention` ago, a batch at a time;
/// returns how many. A storage failure is logged; the next round tries again.
pub async fn expire_reports(store: &dyn Store, retention: Duration) -> u64 {
    let before = store::now_micros().saturating_sub(retention.as_micros() as Micros);
    let mut deleted = 0;
    loop {
        match store.delete_reports_before(before, EXPIRE_BATCH).await {
            Ok(n) => {
                deleted += n;
                if n < u64::from(EXPIRE_BATCH) {
                    break;
                }
            }
            Err(e) => {
                error!(
                    error = format!("{:#}", anyhow::Error::from(e)),
                    "could not delete old reports"
                );
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    if deleted > 0 {
        info!(
            deleted,
            retention_days = retention.as_secs() / 86_400,
            "deleted old reports"
        );
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewReport;

    fn report(run_id: &str, received_at: Micros) -> NewReport {
        crate::store::tests::plain_report("n1", run_id, received_at, received_at)
    }

    #[tokio::test]
    async fn reports_past_their_retention_are_deleted_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
        let store = store::open(&url).await.unwrap();
        let day = 86_400_000_000;
        let now = store::now_micros();
        // More old ones than one batch holds.
        let old: Vec<NewReport> = (0..EXPIRE_BATCH + 5)
            .map(|i| report(&format!("old-{i}"), now - 31 * day))
            .collect();
        store.store_reports(&old).await.unwrap();
        store
            .store_reports(&[report("young", now - 29 * day)])
            .await
            .unwrap();
        let thirty_days = Duration::from_secs(30 * 86_400);
        assert_eq!(
            expire_reports(store.as_ref(), thirty_days).await,
            u64::from(EXPIRE_BATCH) + 5
        );
        let left = store
            .reports(&ReportQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        let left: Vec<&str> = left.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(left, ["young"]);
        assert_eq!(expire_reports(store.as_ref(), thirty_days).await, 0);
    }
}
