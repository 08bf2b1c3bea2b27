//! The web dashboard's sign-in links and sessions (migration `0008`), and the
//! fleet as its pages read it, in PostgreSQL.

use sqlx::QueryBuilder;

use crate::store::dashboard::FactValue;

use super::*;

/// Pushes the [`NodeState`] of the row `n` (nodes) / `r` (node_runs) at `now`.
fn push_state(q: &mut QueryBuilder<'_, Postgres>, now: Micros) {
    q.push("(CASE WHEN r.node IS NULL THEN 'never' WHEN r.seen_at < ")
        .push_bind(now)
        .push(" - ")
        .push_bind(STALE_AFTER_INTERVALS)
        .push(
            " * r.interval_secs * 1000000 THEN 'stale' \
             WHEN r.status = 'failed' THEN 'failed' WHEN r.status = 'changed' THEN 'changed' \
             ELSE 'converged' END)",
        );
}

impl PgStore {
    pub(super) async fn create_sign_in_link_in_postgres(
        &self,
        link: NewSignInLink,
        actor: &Actor,
    ) -> Result<()> {
        let now = now_micros();
        let mut tx = self.begin("begin sign-in link").await?;
        sqlx::query(
            "INSERT INTO ui_links (secret_sha256, operator, role, fingerprint, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&link.secret_sha256)
        .bind(&link.operator)
        .bind(&link.role)
        .bind(&link.fingerprint)
        .bind(now)
        .bind(link.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(db("store sign-in link"))?;
        append_audit(
            &mut tx,
            actor,
            "ui link",
            &link.operator,
            &format!("role {}; one sign-in to the dashboard", link.role),
            "ok",
        )
        .await?;
        tx.commit().await.map_err(db("commit sign-in link"))
    }

    pub(super) async fn sign_in_in_postgres(
        &self,
        link_sha256: &str,
        session: NewSession,
        now: Micros,
        peer: &str,
    ) -> Result<std::result::Result<Session, LinkRefusal>> {
        let mut tx = self.begin("begin sign-in").await?;
        // The link's row stays locked to the commit: of two uses, one takes it.
        let link: Option<(String, String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT operator, role, fingerprint, expires_at, used_at FROM ui_links
             WHERE secret_sha256 = $1 FOR UPDATE",
        )
        .bind(link_sha256)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("read sign-in link"))?;
        let (operator, role, fingerprint) = match link {
            None => return Ok(Err(LinkRefusal::Unknown)),
            Some((.., Some(at))) => return Ok(Err(LinkRefusal::Used { at })),
            Some((.., expires_at, None)) if expires_at <= now => {
                return Ok(Err(LinkRefusal::Expired { at: expires_at }));
            }
            Some((operator, role, fingerprint, _, None)) => (operator, role, fingerprint),
        };
        sqlx::query("UPDATE ui_links SET used_at = $1 WHERE secret_sha256 = $2")
            .bind(now)
            .bind(link_sha256)
            .execute(&mut *tx)
            .await
            .map_err(db("use sign-in link"))?;
        sqlx::query(
            "INSERT INTO ui_sessions (secret_sha256, operator, role, fingerprint, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&session.secret_sha256)
        .bind(&operator)
        .bind(&role)
        .bind(&fingerprint)
        .bind(now)
        .bind(session.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(db("start session"))?;
        let actor = Actor {
            name: operator.clone(),
            role: role.clone(),
            peer: peer.into(),
        };
        append_audit(
            &mut tx,
            &actor,
            "ui sign-in",
            &operator,
            "session started from a sign-in link",
            "ok",
        )
        .await?;
        tx.commit().await.map_err(db("commit sign-in"))?;
        Ok(Ok(Session {
            operator,
            role,
            fingerprint,
            created_at: now,
            expires_at: session.expires_at,
        }))
    }

    pub(super) async fn session_in_postgres(
        &self,
        secret_sha256: &str,
        now: Micros,
    ) -> Result<Option<Session>> {
        let row: Option<(String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT operator, role, fingerprint, created_at, expires_at FROM ui_sessions
             WHERE secret_sha256 = $1 AND ended_at IS NULL AND expires_at > $2",
        )
        .bind(secret_sha256)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read session"))?;
        Ok(row.map(
            |(operator, role, fingerprint, created_at, expires_at)| Session {
                operator,
                role,
                fingerprint,
                created_at,
                expires_at,
            },
        ))
    }

    pub(super) async fn sign_out_in_postgres(
        &self,
        secret_sha256: &str,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.begin("begin sign-out").await?;
        let ended = sqlx::query(
            "UPDATE ui_sessions SET ended_at = $1 WHERE secret_sha256 = $2 AND ended_at IS NULL",
        )
        .bind(now_micros())
        .bind(secret_sha256)
        .execute(&mut *tx)
        .await
        .map_err(db("end session"))?
        .rows_affected()
            > 0;
        if ended {
            append_audit(
                &mut tx,
                actor,
                "ui sign-out",
                &actor.name,
                "session ended",
                "ok",
            )
            .await?;
        }
        tx.commit().await.map_err(db("commit sign-out"))?;
        Ok(ended)
    }

    pub(super) async fn delete_expired_sign_ins_in_postgres(&self, before: Micros) -> Result<u64> {
        let mut tx = self.begin("begin deleting expired sign-ins").await?;
        let mut deleted = 0;
        for table in ["ui_links", "ui_sessions"] {
            deleted += sqlx::query(&format!("DELETE FROM {table} WHERE expires_at < $1"))
                .bind(before)
                .execute(&mut *tx)
                .await
                .map_err(db(format!("delete expired rows of {table}")))?
                .rows_affected();
        }
        tx.commit()
            .await
            .map_err(db("commit deleting expired sign-ins"))?;
        Ok(deleted)
    }

    pub(super) async fn state_counts_in_postgres(&self, now: Micros) -> Result<StateCounts> {
        let mut q = QueryBuilder::<Postgres>::new("SELECT state, COUNT(*) FROM (SELECT ");
        push_state(&mut q, now);
        q.push(
            " AS state FROM nodes n LEFT JOIN node_runs r ON r.node = n.name \
             WHERE n.revoked_at IS NULL) AS s GROUP BY state",
        );
        let rows: Vec<(String, i64)> = q
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(db("count nodes by state"))?;
        let mut counts = StateCounts::default();
        for (state, n) in rows {
            counts.add(&state, n.max(0) as u64);
        }
        Ok(counts)
    }

    pub(super) async fn runs_by_hour_in_postgres(&self, since: Micros) -> Result<Vec<HourOfRuns>> {
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(RUNS_BY_HOUR.1)
            .bind(since.div_euclid(crate::store::dashboard::HOUR))
            .fetch_all(&self.pool)
            .await
            .map_err(db("count runs by hour"))?;
        Ok(crate::store::dashboard::fold_hours(rows))
    }

    pub(super) async fn find_nodes_in_postgres(
        &self,
        filter: &NodeFilter,
        now: Micros,
        after: &str,
        limit: u32,
    ) -> Result<Vec<FleetNode>> {
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {FLEET_COLUMNS} FROM nodes n LEFT JOIN node_runs r ON r.node = n.name \
             WHERE n.name > "
        ));
        q.push_bind(after);
        if let Some(role) = &filter.role {
            q.push(" AND n.role = ").push_bind(role);
        }
        if let Some(channel) = &filter.channel {
            q.push(" AND n.channel = ").push_bind(channel);
        }
        if let Some(state) = filter.state {
            q.push(" AND ");
            push_state(&mut q, now);
            q.push(" = ").push_bind(state.as_str());
        }
        if let Some(version) = filter.version {
            q.push(" AND r.role_version = ").push_bind(version as i64);
        }
        if let Some((keys, value)) = &filter.fact {
            // Facts are checked to be a JSON object when stored. The JSON
            // values the filter matches (see FactValue), compared as jsonb:
            // numbers by value (12 equals 12.0), a boolean only a boolean.
            let mut matches = vec![serde_json::Value::from(value.as_str()).to_string()];
            match FactValue::of(value) {
                FactValue::Bool(b) => matches.push(b.to_string()),
                FactValue::Number(n) => matches.push(n.to_string()),
                FactValue::Text => {}
            }
            q.push(" AND (COALESCE(r.facts, n.facts)::jsonb #> ")
                .push_bind(keys)
                .push(") = ANY(CAST(")
                .push_bind(matches)
                .push(" AS jsonb[]))");
        }
        q.push(" ORDER BY n.name LIMIT ").push_bind(limit as i64);
        let rows: Vec<FleetRow> = q
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(db("find nodes"))?;
        rows.into_iter().map(FleetNode::try_from).collect()
    }
}
