//! Run reports and what the server knows of each node's last run, in SQLite
//! (migration `0004_reports.sql`).

use std::collections::HashSet;

use sqlx::QueryBuilder;

use super::*;

/// Reports (rows) written by one statement: within SQLite's limit of bound
/// values (32,766; a report binds 15).
const ROWS_PER_STATEMENT: usize = 256;

impl SqliteStore {
    /// Stores a batch of reports in one transaction, each table written by
    /// one statement per [`ROWS_PER_STATEMENT`] reports rather than one per
    /// report: each statement is a round trip to the database's thread, and on
    /// a busy machine those, not SQLite, set the rate.
    pub(super) async fn store_reports_in_sqlite(&self, reports: &[NewReport]) -> Result<Vec<bool>> {
        // A run sent twice in one batch (a spool resent while the first
        // delivery was in flight) is stored once: its first copy counts.
        let mut first = HashSet::with_capacity(reports.len());
        let candidates: Vec<usize> = (0..reports.len())
            .filter(|&i| first.insert((&reports[i].meta.node, &reports[i].meta.run_id)))
            .collect();
        let _writer = self.write.lock().await;
        let mut tx = self.begin("begin storing reports").await?;
        let mut ids: HashMap<(String, String), i64> = HashMap::with_capacity(candidates.len());
        for chunk in candidates.chunks(ROWS_PER_STATEMENT) {
            let mut insert = QueryBuilder::<Sqlite>::new(
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
            // Already stored runs are left as they are, and return nothing.
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
        for chunk in created.chunks(ROWS_PER_STATEMENT) {
            // The newest run wins (by finished_at); rows apply in order, so a
            // node's two runs in one batch are settled as if sent one by one.
            let mut upsert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO node_runs (node, report_id, role, channel, role_version, status, \
                 from_cache, finished_at, seen_at, interval_secs, facts) ",
            );
            upsert.push_values(chunk, |mut row, &(i, id)| {
                let (m, new) = (&reports[i].meta, &reports[i]);
                row.push_bind(&m.node)
                    .push_bind(id)
                    .push_bind(&m.role)
                    .push_bind(&m.channel)
                    .push_bind(m.role_version as i64)
                    .push_bind(m.status.as_str())
                    .push_bind(m.from_cache)
                    .push_bind(m.finished_at)
                    .push_bind(m.received_at)
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
        }
        // Being heard from counts whatever the run: the newest arrival per node.
        let mut seen: HashMap<&str, Micros> = HashMap::new();
        for &(i, _) in &created {
            let m = &reports[i].meta;
            let at = seen.entry(&m.node).or_insert(m.received_at);
            *at = (*at).max(m.received_at);
        }
        let seen: Vec<(&str, Micros)> = seen.into_iter().collect();
        for chunk in seen.chunks(ROWS_PER_STATEMENT) {
            let mut update = QueryBuilder::<Sqlite>::new(
                "UPDATE node_runs SET seen_at = MAX(node_runs.seen_at, heard.at) \
                 FROM (SELECT column1 AS node, column2 AS at FROM (",
            );
            update.push_values(chunk, |mut row, &(node, at)| {
                row.push_bind(node).push_bind(at);
            });
            update.push(")) AS heard WHERE node_runs.node = heard.node");
            update
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
            add_to_hours::<Sqlite>(chunk)
                .build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(db("count the reports per hour"))?;
        }
        tx.commit().await.map_err(db("commit reports"))?;
        let created: HashSet<usize> = created.into_iter().map(|(i, _)| i).collect();
        Ok((0..reports.len()).map(|i| created.contains(&i)).collect())
    }

    pub(super) async fn reports_in_sqlite(&self, q: &ReportQuery) -> Result<Vec<ReportMeta>> {
        let mut sql = select_reports::<Sqlite>(q);
        let rows: Vec<ReportRow> = sql
            .build_query_as()
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
        let deleted: Vec<(i64, String)> = sqlx::query_as(
            "DELETE FROM reports WHERE id IN
                 (SELECT id FROM reports WHERE received_at < ? ORDER BY received_at LIMIT ?)
             RETURNING received_at, status",
        )
        .bind(before)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("delete old reports"))?;
        let hours = count_by_hour(deleted.iter().map(|(at, s)| (*at, s.as_str())), -1);
        for chunk in hours.chunks(ROWS_PER_STATEMENT) {
            add_to_hours::<Sqlite>(chunk)
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
        // Grouped by role and channel alone (a channel has one version), so
        // the nodes are read in the order of `nodes_by_assignment` and never
        // sorted (50 → 30 ms for 10,000 in SQLite's shell).
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT n.role, n.channel, MAX(c.version),
                 COUNT(*),
                 SUM(CASE WHEN r.status <> 'failed' AND r.role = n.role
                          AND r.role_version = c.version THEN 1 ELSE 0 END),
                 SUM(CASE WHEN r.status <> 'failed' AND (r.role <> n.role OR c.version IS NULL
                          OR r.role_version <> c.version) THEN 1 ELSE 0 END),
                 SUM(CASE WHEN r.status = 'failed' THEN 1 ELSE 0 END),
                 SUM(CASE WHEN r.seen_at < ? - ? * r.interval_secs * 1000000 THEN 1 ELSE 0 END),
                 SUM(CASE WHEN r.node IS NULL THEN 1 ELSE 0 END)
             FROM nodes n
             LEFT JOIN node_runs r ON r.node = n.name
             LEFT JOIN channels c ON c.role = n.role AND c.channel = n.channel
             WHERE n.revoked_at IS NULL
             GROUP BY n.role, n.channel
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, run_id: &str, finished_at: Micros, received_at: Micros) -> NewReport {
        crate::store::tests::plain_report(node, run_id, finished_at, received_at)
    }

    /// (run id of the newest run, its finished_at, seen_at) of `node`.
    async fn last_run(store: &SqliteStore, node: &str) -> (String, i64, i64) {
        sqlx::query_as(
            "SELECT r.run_id, n.finished_at, n.seen_at
             FROM node_runs n JOIN reports r ON r.id = n.report_id WHERE n.node = ?",
        )
        .bind(node)
        .fetch_one(&store.pool)
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_batch_is_stored_as_if_its_reports_came_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("cairn.db"))
            .await
            .unwrap();
        store
            .store_reports_in_sqlite(&[report("a", "a1", 100, 1000)])
            .await
            .unwrap();
        let created = store
            .store_reports_in_sqlite(&[
                report("a", "a3", 300, 1001),
                // The same run twice in one batch, and once from an earlier batch.
                report("a", "a3", 300, 1002),
                report("a", "a1", 100, 1003),
                // Spooled and delivered late: older than the newest run.
                report("a", "a2", 200, 1004),
                report("b", "b1", 50, 1005),
            ])
            .await
            .unwrap();
        assert_eq!(created, [true, false, false, true, true]);
        // The newest run wins; being heard from counts whatever the run.
        assert_eq!(last_run(&store, "a").await, ("a3".into(), 300, 1004));
        assert_eq!(last_run(&store, "b").await, ("b1".into(), 50, 1005));
        // More reports than one statement takes.
        let many: Vec<NewReport> = (0..ROWS_PER_STATEMENT as i64 * 2 + 3)
            .map(|i| report("c", &format!("c{i}"), i, 2000 + i))
            .collect();
        let created = store.store_reports_in_sqlite(&many).await.unwrap();
        assert!(created.iter().all(|c| *c));
        let last = many.len() as i64 - 1;
        assert_eq!(
            last_run(&store, "c").await,
            (format!("c{last}"), last, 2000 + last)
        );
    }
}
