//! Run reports and what the server knows of each node's last run, in SQLite
//! (migration `0004_reports.sql`).

use super::*;

#[derive(sqlx::FromRow)]
struct ReportRow {
    id: i64,
    node: String,
    run_id: String,
    role: String,
    channel: String,
    role_version: i64,
    role_digest: String,
    status: String,
    noop: bool,
    from_cache: bool,
    resources: i64,
    changed: i64,
    failed: i64,
    finished_at: i64,
    received_at: i64,
}

const REPORT_COLUMNS: &str = "id, node, run_id, role, channel, role_version, role_digest, status, \
     noop, from_cache, resources, changed, failed, finished_at, received_at";

impl TryFrom<ReportRow> for ReportMeta {
    type Error = StoreError;
    fn try_from(r: ReportRow) -> Result<Self> {
        Ok(ReportMeta {
            id: r.id as u64,
            status: status_of(&r.status)?,
            node: r.node,
            run_id: r.run_id,
            role: r.role,
            channel: r.channel,
            role_version: r.role_version as u64,
            role_digest: r.role_digest,
            noop: r.noop,
            from_cache: r.from_cache,
            resources: r.resources as u64,
            changed: r.changed as u64,
            failed: r.failed as u64,
            finished_at: r.finished_at,
            received_at: r.received_at,
        })
    }
}

/// A stored status; the table's CHECK allows only the three.
pub(super) fn status_of(s: &str) -> Result<RunStatus> {
    RunStatus::parse(s).ok_or_else(|| StoreError::Backend {
        op: "read a run status".into(),
        source: format!("unknown run status {s:?} in the database").into(),
    })
}

/// A node (from `nodes`, migration 0003) with its newest run, if any.
#[derive(sqlx::FromRow)]
struct FleetRow {
    name: String,
    role: String,
    channel: String,
    revoked_at: Option<i64>,
    report_id: Option<i64>,
    run_role: Option<String>,
    run_channel: Option<String>,
    role_version: Option<i64>,
    status: Option<String>,
    from_cache: Option<bool>,
    finished_at: Option<i64>,
    seen_at: Option<i64>,
    interval_secs: Option<i64>,
}

const FLEET_COLUMNS: &str = "n.name, n.role, n.channel, n.revoked_at, r.report_id, \
     r.role AS run_role, r.channel AS run_channel, r.role_version, r.status, r.from_cache, \
     r.finished_at, r.seen_at, r.interval_secs";

impl TryFrom<FleetRow> for FleetNode {
    type Error = StoreError;
    fn try_from(r: FleetRow) -> Result<Self> {
        let last = match (r.report_id, r.status) {
            (Some(report_id), Some(status)) => Some(LastRun {
                report_id: report_id as u64,
                role: r.run_role.unwrap_or_default(),
                channel: r.run_channel.unwrap_or_default(),
                role_version: r.role_version.unwrap_or_default() as u64,
                status: status_of(&status)?,
                from_cache: r.from_cache.unwrap_or_default(),
                finished_at: r.finished_at.unwrap_or_default(),
                seen_at: r.seen_at.unwrap_or_default(),
                interval_secs: r.interval_secs.unwrap_or_default() as u64,
            }),
            _ => None,
        };
        Ok(FleetNode {
            name: r.name,
            role: r.role,
            channel: r.channel,
            revoked: r.revoked_at.is_some(),
            last,
        })
    }
}

impl SqliteStore {
    pub(super) async fn store_reports_in_sqlite(&self, reports: &[NewReport]) -> Result<Vec<bool>> {
        let _writer = self.write.lock().await;
        let mut tx = self.begin("begin storing reports").await?;
        let mut created = Vec::with_capacity(reports.len());
        for new in reports {
            let m = &new.meta;
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO reports (node, run_id, role, channel, role_version, role_digest, status,
                     noop, from_cache, resources, changed, failed, finished_at, received_at, report)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (node, run_id) DO NOTHING
                 RETURNING id",
            )
            .bind(&m.node)
            .bind(&m.run_id)
            .bind(&m.role)
            .bind(&m.channel)
            .bind(m.role_version as i64)
            .bind(&m.role_digest)
            .bind(m.status.as_str())
            .bind(m.noop)
            .bind(m.from_cache)
            .bind(m.resources as i64)
            .bind(m.changed as i64)
            .bind(m.failed as i64)
            .bind(m.finished_at)
            .bind(m.received_at)
            .bind(&new.report)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(format!("store report {} of node {}", m.run_id, m.node)))?;
            let Some(id) = id else {
                created.push(false);
                continue;
            };
            created.push(true);
            // The newest run wins; being heard from counts whatever the run.
            sqlx::query(
                "INSERT INTO node_runs (node, report_id, role, channel, role_version, status,
                     from_cache, finished_at, seen_at, interval_secs, facts)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (node) DO UPDATE SET
                     seen_at = CASE WHEN excluded.seen_at > node_runs.seen_at
                         THEN excluded.seen_at ELSE node_runs.seen_at END,
                     interval_secs = CASE WHEN excluded.finished_at >= node_runs.finished_at
                         THEN excluded.interval_secs ELSE node_runs.interval_secs END,
                     report_id = CASE WHEN excluded.finished_at >= node_runs.finished_at
                         THEN excluded.report_id ELSE node_runs.report_id END,
                     role = CASE WHEN excluded.finished_at >= node_runs.finished_at
                         THEN excluded.role ELSE node_runs.role END,
                     channel = CASE WHEN excluded.finished_at >= node_runs.finished_at
                         THEN excluded.channel ELSE node_runs.channel END,
                     role_version = CASE WHEN excluded.finished_at >= node_runs.finished_at
                         THEN excluded.role_version ELSE node_runs.role_version END,
                     status = CASE WHEN excluded.finished_at >= node_runs.finished_at
                         THEN excluded.status ELSE node_runs.status END,
                     from_cache = CASE WHEN excluded.finished_at >= node_runs.finished_at
                         THEN excluded.from_cache ELSE node_runs.from_cache END,
                     facts = CASE WHEN excluded.finished_at >= node_runs.finished_at
                         THEN excluded.facts ELSE node_runs.facts END,
                     finished_at = CASE WHEN excluded.finished_at >= node_runs.finished_at
                         THEN excluded.finished_at ELSE node_runs.finished_at END",
            )
            .bind(&m.node)
            .bind(id)
            .bind(&m.role)
            .bind(&m.channel)
            .bind(m.role_version as i64)
            .bind(m.status.as_str())
            .bind(m.from_cache)
            .bind(m.finished_at)
            .bind(m.received_at)
            .bind(new.interval_secs as i64)
            .bind(&new.facts_json)
            .execute(&mut *tx)
            .await
            .map_err(db(format!("record the last run of node {}", m.node)))?;
        }
        tx.commit().await.map_err(db("commit reports"))?;
        Ok(created)
    }

    pub(super) async fn reports_in_sqlite(&self, q: &ReportQuery) -> Result<Vec<ReportMeta>> {
        // Absent filters bind NULL and match everything.
        let rows: Vec<ReportRow> = sqlx::query_as(&format!(
            "SELECT {REPORT_COLUMNS} FROM reports
             WHERE (? IS NULL OR node = ?) AND (? IS NULL OR role = ?) AND (? IS NULL OR status = ?)
               AND received_at >= ? AND id < ?
             ORDER BY id DESC LIMIT ?"
        ))
        .bind(&q.node)
        .bind(&q.node)
        .bind(&q.role)
        .bind(&q.role)
        .bind(q.status.map(RunStatus::as_str))
        .bind(q.status.map(RunStatus::as_str))
        .bind(q.since.unwrap_or(i64::MIN))
        .bind(q.before_id.map_or(i64::MAX, |id| id as i64))
        .bind(q.limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list reports"))?;
        rows.into_iter().map(ReportMeta::try_from).collect()
    }

    pub(super) async fn report_in_sqlite(&self, id: u64) -> Result<(ReportMeta, Vec<u8>)> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            meta: ReportRow,
            report: Vec<u8>,
        }
        let row: Option<Row> = sqlx::query_as(&format!(
            "SELECT {REPORT_COLUMNS}, report FROM reports WHERE id = ?"
        ))
        .bind(id as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(db(format!("read report {id}")))?;
        match row {
            Some(r) => Ok((r.meta.try_into()?, r.report)),
            None => Err(StoreError::NotFound(format!("report {id}"))),
        }
    }

    pub(super) async fn delete_reports_in_sqlite(&self, before: Micros, limit: u32) -> Result<u64> {
        let _writer = self.write.lock().await;
        let mut tx = self.begin("begin deleting old reports").await?;
        let deleted = sqlx::query(
            "DELETE FROM reports WHERE id IN
                 (SELECT id FROM reports WHERE received_at < ? ORDER BY received_at LIMIT ?)",
        )
        .bind(before)
        .bind(limit as i64)
        .execute(&mut *tx)
        .await
        .map_err(db("delete old reports"))?
        .rows_affected();
        tx.commit()
            .await
            .map_err(db("commit deleting old reports"))?;
        Ok(deleted)
    }

    pub(super) async fn channel_version_in_sqlite(
        &self,
        role: &str,
        channel: &str,
    ) -> Result<Option<VersionMeta>> {
        let row: Option<VersionRow> = sqlx::query_as(
            "SELECT v.role, v.version, v.digest, v.author, v.message, v.created_at
             FROM channels c JOIN role_versions v ON v.role = c.role AND v.version = c.version
             WHERE c.role = ? AND c.channel = ?",
        )
        .bind(role)
        .bind(channel)
        .fetch_optional(&self.pool)
        .await
        .map_err(db(format!("read channel {channel} of role {role}")))?;
        Ok(row.map(VersionMeta::from))
    }

    pub(super) async fn fleet_nodes_in_sqlite(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<Vec<FleetNode>> {
        let rows: Vec<FleetRow> = sqlx::query_as(&format!(
            "SELECT {FLEET_COLUMNS} FROM nodes n LEFT JOIN node_runs r ON r.node = n.name
             WHERE n.name > ? ORDER BY n.name LIMIT ?"
        ))
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list nodes"))?;
        rows.into_iter().map(FleetNode::try_from).collect()
    }

    pub(super) async fn fleet_node_in_sqlite(&self, name: &str) -> Result<(FleetNode, String)> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            node: FleetRow,
            facts: Option<String>,
        }
        // The facts of its newest run, or those it sent when it enrolled.
        let row: Option<Row> = sqlx::query_as(&format!(
            "SELECT {FLEET_COLUMNS}, COALESCE(r.facts, n.facts) AS facts
             FROM nodes n LEFT JOIN node_runs r ON r.node = n.name WHERE n.name = ?"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db(format!("read node {name}")))?;
        match row {
            Some(r) => Ok((r.node.try_into()?, r.facts.unwrap_or_default())),
            None => Err(StoreError::NotFound(format!("node {name}"))),
        }
    }

    pub(super) async fn fleet_status_in_sqlite(&self, now: Micros) -> Result<Vec<ChannelStatus>> {
        type Row = (String, String, Option<i64>, i64, i64, i64, i64, i64, i64);
        // Each node that reported is on the promoted version, on another, or
        // failing (by its newest run); stale counts apart.
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT n.role, n.channel, c.version,
                 COUNT(*),
                 SUM(CASE WHEN r.status <> 'failed' AND r.role = n.role
                          AND r.role_version = c.version THEN 1 ELSE 0 END),
                 SUM(CASE WHEN r.status <> 'failed' AND (r.role <> n.role OR c.version IS NULL
                          OR r.role_version <> c.version) THEN 1 ELSE 0 END),
                 SUM(CASE WHEN r.status = 'failed' THEN 1 ELSE 0 END),
                 SUM(CASE WHEN r.seen_at < ? - 2 * r.interval_secs * 1000000 THEN 1 ELSE 0 END),
                 SUM(CASE WHEN r.node IS NULL THEN 1 ELSE 0 END)
             FROM nodes n
             LEFT JOIN node_runs r ON r.node = n.name
             LEFT JOIN channels c ON c.role = n.role AND c.channel = n.channel
             WHERE n.revoked_at IS NULL
             GROUP BY n.role, n.channel, c.version
             ORDER BY n.role, n.channel",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db("count nodes by role and channel"))?;
        Ok(rows
            .into_iter()
            .map(
                |(role, channel, promoted, nodes, on_promoted, on_older, failing, stale, never)| {
                    ChannelStatus {
                        role,
                        channel,
                        promoted: promoted.map(|v| v as u64),
                        nodes: nodes as u64,
                        on_promoted: on_promoted as u64,
                        on_older: on_older as u64,
                        failing: failing as u64,
                        stale: stale as u64,
                        never_reported: never as u64,
                    }
                },
            )
            .collect())
    }
}
