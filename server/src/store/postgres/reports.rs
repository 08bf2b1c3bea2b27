//! Run reports and what the server knows of each node's last run, in
//! PostgreSQL (migration `0004_reports.sql`).

use std::collections::{HashMap, HashSet};

use sqlx::QueryBuilder;

use super::*;

/// Reports (rows) written by one statement: within PostgreSQL's limit of
/// bound values (65,535; a report binds 15).
pub(super) const ROWS_PER_STATEMENT: usize = 1024;

impl PgStore {
    /// Stores a batch of reports in one transaction, each table written by
    /// one statement per [`ROWS_PER_STATEMENT`] reports. Rows are written in
    /// the order of their keys, so two servers storing batches that share
    /// nodes lock them in one order and never wait for each other in a cycle.
    pub(super) async fn store_reports_in_postgres(
        &self,
        reports: &[NewReport],
    ) -> Result<Vec<bool>> {
        // A run sent twice in one batch (a spool resent while the first
        // delivery was in flight) is stored once: its first copy counts.
        let mut first = HashSet::with_capacity(reports.len());
        let mut candidates: Vec<usize> = (0..reports.len())
            .filter(|&i| first.insert((&reports[i].meta.node, &reports[i].meta.run_id)))
            .collect();
        candidates.sort_by_key(|&i| (&reports[i].meta.node, &reports[i].meta.run_id));
        let mut tx = self.begin("begin storing reports").await?;
        let mut ids: HashMap<(String, String), i64> = HashMap::with_capacity(candidates.len());
        for chunk in candidates.chunks(ROWS_PER_STATEMENT) {
            let mut insert = QueryBuilder::<Postgres>::new(
                "INSERT INTO reports (node, run_id, role, channel, role_version, role_digest, \
                 status, noop, from_cache, resources, changed, failed, finished_at, received_at, \
                 report) ",
            );
            insert.push_values(chunk, |mut row, &i| {
                let (m, new) = (&reports[i].meta, &reports[i]);
                row.push_bind(&m.node)
                    .push_bind(&m.run_id)
                    .push_bind(&m.role)
                    .push_bind(&m.channel)
                    .push_bind(m.role_version as i64)
                    .push_bind(&m.role_digest)
                    .push_bind(m.status.as_str())
                    .push_bind(m.noop)
                    .push_bind(m.from_cache)
                    .push_bind(m.resources as i64)
                    .push_bind(m.changed as i64)
                    .push_bind(m.failed as i64)
                    .push_bind(m.finished_at)
                    .push_bind(m.received_at)
                    .push_bind(&new.report);
            });
            // Already stored runs (by any server) are left as they are, and
            // return nothing.
            insert.push(" ON CONFLICT (node, run_id) DO NOTHING RETURNING node, run_id, id");
            let stored: Vec<(String, String, i64)> = insert
                .build_query_as()
                .persistent(false)
                .fetch_all(&mut *tx)
                .await
                .map_err(db(format!("store {} reports", chunk.len())))?;
            ids.extend(stored.into_iter().map(|(node, run, id)| ((node, run), id)));
        }
        let created: Vec<(usize, i64)> = candidates
            .iter()
            .filter_map(|&i| {
                let m = &reports[i].meta;
                let id = ids.get(&(m.node.clone(), m.run_id.clone()))?;
                Some((i, *id))
            })
            .collect();
        // One row per node (an upsert may not touch a row twice): the run
        // that finished last, the later in the batch of two that finished
        // together, as if they had been sent one by one; and the newest
        // arrival of any of its runs.
        let mut in_batch_order = created.clone();
        in_batch_order.sort_unstable();
        let mut newest: HashMap<&str, (usize, i64, Micros)> = HashMap::new();
        for &(i, id) in &in_batch_order {
            let m = &reports[i].meta;
            newest
                .entry(&m.node)
                .and_modify(|(wi, wid, seen)| {
                    if m.finished_at >= reports[*wi].meta.finished_at {
                        (*wi, *wid) = (i, id);
                    }
                    *seen = (*seen).max(m.received_at);
                })
                .or_insert((i, id, m.received_at));
        }
        let mut newest: Vec<(&str, (usize, i64, Micros))> = newest.into_iter().collect();
        newest.sort_by_key(|(node, _)| *node);
        for chunk in newest.chunks(ROWS_PER_STATEMENT) {
            // The newest run wins (by finished_at) over the one recorded; a
            // row not updated is locked all the same, so the update of
            // `seen_at` below waits for no one.
            let mut upsert = QueryBuilder::<Postgres>::new(
                "INSERT INTO node_runs (node, report_id, role, channel, role_version, status, \
                 from_cache, finished_at, seen_at, interval_secs, facts) ",
            );
            upsert.push_values(chunk, |mut row, &(_, (i, id, seen))| {
                let (m, new) = (&reports[i].meta, &reports[i]);
                row.push_bind(&m.node)
                    .push_bind(id)
                    .push_bind(&m.role)
                    .push_bind(&m.channel)
                    .push_bind(m.role_version as i64)
                    .push_bind(m.status.as_str())
                    .push_bind(m.from_cache)
                    .push_bind(m.finished_at)
                    .push_bind(seen)
                    .push_bind(new.interval_secs as i64)
                    .push_bind(&new.facts_json);
            });
            upsert.push(
                " ON CONFLICT (node) DO UPDATE SET \
                 report_id = excluded.report_id, role = excluded.role, \
                 channel = excluded.channel, role_version = excluded.role_version, \
                 status = excluded.status, from_cache = excluded.from_cache, \
                 finished_at = excluded.finished_at, interval_secs = excluded.interval_secs, \
                 facts = excluded.facts \
                 WHERE excluded.finished_at >= node_runs.finished_at",
            );
            upsert
                .build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(db(format!("record the last runs of {} nodes", chunk.len())))?;
            // Being heard from counts whatever the run.
            let mut heard = QueryBuilder::<Postgres>::new(
                "UPDATE node_runs SET seen_at = GREATEST(node_runs.seen_at, heard.at) FROM (",
            );
            heard.push_values(chunk, |mut row, &(node, (_, _, seen))| {
                row.push_bind(node).push_bind(seen);
            });
            heard.push(") AS heard (node, at) WHERE node_runs.node = heard.node");
            heard
                .build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(db(format!(
                    "record when {} nodes were last heard from",
                    chunk.len()
                )))?;
        }
        let hours = count_by_hour(
            created
                .iter()
                .map(|&(i, _)| (reports[i].meta.received_at, reports[i].meta.status.as_str())),
            1,
        );
        for chunk in hours.chunks(ROWS_PER_STATEMENT) {
            add_to_hours::<Postgres>(chunk)
                .build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(db("count the reports per hour"))?;
        }
        if !created.is_empty() {
            // The dashboards of the other servers show the fleet anew.
            changes::reports_stored(&mut tx).await?;
        }
        tx.commit().await.map_err(db("commit reports"))?;
        let created: HashSet<usize> = created.into_iter().map(|(i, _)| i).collect();
        Ok((0..reports.len()).map(|i| created.contains(&i)).collect())
    }

    pub(super) async fn reports_in_postgres(&self, q: &ReportQuery) -> Result<Vec<ReportMeta>> {
        let mut sql = select_reports::<Postgres>(q);
        let rows: Vec<ReportRow> = sql
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(db("list reports"))?;
        rows.into_iter().map(ReportMeta::try_from).collect()
    }

    pub(super) async fn report_in_postgres(&self, id: u64) -> Result<(ReportMeta, Vec<u8>)> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            meta: ReportRow,
            report: Vec<u8>,
        }
        let row: Option<Row> = sqlx::query_as(&format!(
            "SELECT {REPORT_COLUMNS}, report FROM reports WHERE id = $1"
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

    pub(super) async fn delete_reports_in_postgres(
        &self,
        before: Micros,
        limit: u32,
    ) -> Result<u64> {
        let mut tx = self.begin("begin deleting old reports").await?;
        let deleted: Vec<(i64, String)> = sqlx::query_as(
            "DELETE FROM reports WHERE id IN
                 (SELECT id FROM reports WHERE received_at < $1 ORDER BY received_at LIMIT $2)
             RETURNING received_at, status",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db("delete old reports"))?;
        let hours = count_by_hour(deleted.iter().map(|(at, s)| (*at, s.as_str())), -1);
        for chunk in hours.chunks(ROWS_PER_STATEMENT) {
            add_to_hours::<Postgres>(chunk)
                .build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(db("count the reports per hour"))?;
        }
        sqlx::query(DELETE_EMPTY_HOURS)
            .execute(&mut *tx)
            .await
            .map_err(db("count the reports per hour"))?;
        tx.commit()
            .await
            .map_err(db("commit deleting old reports"))?;
        Ok(deleted.len() as u64)
    }

    pub(super) async fn channel_version_in_postgres(
        &self,
        role: &str,
        channel: &str,
    ) -> Result<Option<VersionMeta>> {
        let row: Option<VersionRow> = sqlx::query_as(
            "SELECT v.role, v.version, v.digest, v.author, v.message, v.created_at
             FROM channels c JOIN role_versions v ON v.role = c.role AND v.version = c.version
             WHERE c.role = $1 AND c.channel = $2",
        )
        .bind(role)
        .bind(channel)
        .fetch_optional(&self.pool)
        .await
        .map_err(db(format!("read channel {channel} of role {role}")))?;
        Ok(row.map(VersionMeta::from))
    }

    pub(super) async fn fleet_nodes_in_postgres(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<Vec<FleetNode>> {
        // Names compare byte by byte (the schema's COLLATE "C"), as in SQLite.
        let rows: Vec<FleetRow> = sqlx::query_as(&format!(
            "SELECT {FLEET_COLUMNS} FROM nodes n LEFT JOIN node_runs r ON r.node = n.name
             WHERE n.name > $1 ORDER BY n.name LIMIT $2"
        ))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("list nodes"))?;
        rows.into_iter().map(FleetNode::try_from).collect()
    }

    pub(super) async fn fleet_node_in_postgres(&self, name: &str) -> Result<(FleetNode, String)> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            node: FleetRow,
            facts: Option<String>,
        }
        // The facts of its newest run, or those it sent when it enrolled.
        let row: Option<Row> = sqlx::query_as(&format!(
            "SELECT {FLEET_COLUMNS}, COALESCE(r.facts, n.facts) AS facts
             FROM nodes n LEFT JOIN node_runs r ON r.node = n.name WHERE n.name = $1"
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

    pub(super) async fn fleet_status_in_postgres(&self, now: Micros) -> Result<Vec<ChannelStatus>> {
        type Row = (String, String, Option<i64>, i64, i64, i64, i64, i64, i64);
        // Each node that reported is on the promoted version, on another, or
        // failing (by its newest run); stale counts apart.
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT n.role, n.channel, c.version,
                 COUNT(*),
                 COUNT(*) FILTER (WHERE r.status <> 'failed' AND r.role = n.role
                          AND r.role_version = c.version),
                 COUNT(*) FILTER (WHERE r.status <> 'failed' AND (r.role <> n.role
                          OR c.version IS NULL OR r.role_version <> c.version)),
                 COUNT(*) FILTER (WHERE r.status = 'failed'),
                 COUNT(*) FILTER (WHERE r.seen_at < $1 - $2 * r.interval_secs * 1000000),
                 COUNT(*) FILTER (WHERE r.node IS NULL)
             FROM nodes n
             LEFT JOIN node_runs r ON r.node = n.name
             LEFT JOIN channels c ON c.role = n.role AND c.channel = n.channel
             WHERE n.revoked_at IS NULL
             GROUP BY n.role, n.channel, c.version
             ORDER BY n.role, n.channel",
        )
        .bind(now)
        .bind(STALE_AFTER_INTERVALS)
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
