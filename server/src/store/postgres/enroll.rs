//! Join tokens and nodes in PostgreSQL (migrations `0003_nodes_tokens.sql`,
//! `0010_node_previous_certificate.sql`).

use super::*;

impl PgStore {
    /// The token `id`, if `secret_sha256` is its secret's; its row locked
    /// until `tx` ends, so that the use taken is the one seen free.
    async fn token_for_update(
        tx: &mut Tx,
        id: &str,
        secret_sha256: Option<&str>,
    ) -> Result<Option<TokenRecord>> {
        let row: Option<TokenRow> = sqlx::query_as(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens
             WHERE id = $1 AND ($2::text IS NULL OR secret_sha256 = $2) FOR UPDATE"
        ))
        .bind(id)
        .bind(secret_sha256)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("read token"))?;
        Ok(row.map(TokenRecord::from))
    }

    pub(super) async fn check_token_in_postgres(
        &self,
        id: &str,
        secret_sha256: &str,
    ) -> Result<std::result::Result<Assignment, TokenRefusal>> {
        let row: Option<TokenRow> = sqlx::query_as(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1 AND secret_sha256 = $2"
        ))
        .bind(id)
        .bind(secret_sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read token"))?;
        Ok(match row.map(TokenRecord::from) {
            None => Err(TokenRefusal::Unknown),
            Some(token) => match refusal(&token, now_micros()) {
                Some(refused) => Err(refused),
                None => Ok(token.assignment),
            },
        })
    }

    pub(super) async fn node_in_postgres(&self, name: &str) -> Result<Option<NodeRecord>> {
        let row: Option<NodeRow> =
            sqlx::query_as(&format!("SELECT {NODE_COLUMNS} FROM nodes WHERE name = $1"))
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("read node"))?;
        Ok(row.map(NodeRecord::from))
    }

    /// What the nodes table says of this certificate, read on every call.
    pub(super) async fn node_standing_in_postgres(
        &self,
        name: &str,
        fingerprint: &str,
    ) -> Result<NodeStanding> {
        let row: Option<StandingRow> = sqlx::query_as(
            "SELECT role, channel, fingerprint, previous_fingerprint, revoked_at
             FROM nodes WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read node"))?;
        Ok(standing_of(row, fingerprint))
    }

    pub(super) async fn create_token_in_postgres(
        &self,
        new: NewToken,
        actor: &Actor,
    ) -> Result<TokenRecord> {
        let mut tx = self.begin("begin token create").await?;
        let record = TokenRecord {
            id: new.id,
            assignment: new.assignment,
            created_by: actor.name.clone(),
            created_at: now_micros(),
            expires_at: new.expires_at,
            uses_allowed: new.uses_allowed,
            uses_used: 0,
            revoked_at: None,
        };
        // The primary key settles two creations of one id: the second inserts nothing.
        let inserted = sqlx::query(
            "INSERT INTO tokens (id, secret_sha256, role, channel, created_by, created_at, expires_at, uses_allowed)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&record.id)
        .bind(&new.secret_sha256)
        .bind(&record.assignment.role)
        .bind(&record.assignment.channel)
        .bind(&record.created_by)
        .bind(record.created_at)
        .bind(record.expires_at)
        .bind(i64::from(record.uses_allowed))
        .execute(&mut *tx)
        .await
        .map_err(db("store token"))?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "a token with id {} exists already",
                record.id
            )));
        }
        let detail = format!(
            "{}; {} use{}; expires {}",
            record.assignment,
            record.uses_allowed,
            if record.uses_allowed == 1 { "" } else { "s" },
            crate::service::rfc3339(record.expires_at)
        );
        append_audit(&mut tx, actor, "token create", &record.id, &detail, "ok").await?;
        tx.commit().await.map_err(db("commit token create"))?;
        Ok(record)
    }

    pub(super) async fn tokens_in_postgres(&self, limit: u32) -> Result<Vec<TokenRecord>> {
        let rows: Vec<TokenRow> = sqlx::query_as(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at DESC, id LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("list tokens"))?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub(super) async fn revoke_token_in_postgres(
        &self,
        id: &str,
        actor: &Actor,
    ) -> Result<TokenRecord> {
        let mut tx = self.begin("begin token revoke").await?;
        let mut record = match Self::token_for_update(&mut tx, id, None).await? {
            None => return Err(StoreError::NotFound(format!("token {id}"))),
            Some(t) if t.revoked_at.is_some() => {
                return Err(StoreError::Conflict(format!(
                    "token {id} is already revoked"
                )));
            }
            Some(t) => t,
        };
        let now = now_micros();
        sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db("revoke token"))?;
        record.revoked_at = Some(now);
        let detail = format!(
            "{}; {} of {} uses taken",
            record.assignment, record.uses_used, record.uses_allowed
        );
        append_audit(&mut tx, actor, "token revoke", id, &detail, "ok").await?;
        tx.commit().await.map_err(db("commit token revoke"))?;
        Ok(record)
    }

    pub(super) async fn enroll_in_postgres(
        &self,
        e: Enrollment,
        actor: &Actor,
    ) -> Result<std::result::Result<Enrolled, TokenRefusal>> {
        let mut tx = self.begin("begin node enroll").await?;
        // The token's row stays locked to the commit: the use counted below is
        // the one this check saw free, whichever server the other enrollment
        // reached.
        let token =
            match Self::token_for_update(&mut tx, &e.token_id, Some(&e.secret_sha256)).await? {
                None => return Ok(Err(TokenRefusal::Unknown)),
                Some(t) => t,
            };
        let now = now_micros();
        if let Some(refused) = refusal(&token, now) {
            return Ok(Err(refused));
        }
        sqlx::query("UPDATE tokens SET uses_used = uses_used + 1 WHERE id = $1")
            .bind(&token.id)
            .execute(&mut *tx)
            .await
            .map_err(db("take a use of the token"))?;
        lock(&mut tx, Lock::Node(&e.name)).await?;
        let before: Option<(i64, Option<i64>)> =
            sqlx::query_as("SELECT enrolled_at, revoked_at FROM nodes WHERE name = $1")
                .bind(&e.name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("read node"))?;
        let node = NodeRecord {
            name: e.name,
            assignment: token.assignment,
            fingerprint: e.fingerprint,
            enrolled_at: now,
            revoked_at: None,
            token_id: token.id,
            facts_json: e.facts_json,
        };
        sqlx::query(
            "INSERT INTO nodes (name, role, channel, fingerprint, enrolled_at, revoked_at, token_id, facts)
             VALUES ($1, $2, $3, $4, $5, NULL, $6, $7)
             ON CONFLICT (name) DO UPDATE SET role = excluded.role, channel = excluded.channel,
                 fingerprint = excluded.fingerprint, enrolled_at = excluded.enrolled_at,
                 revoked_at = NULL, token_id = excluded.token_id, facts = excluded.facts,
                 previous_fingerprint = NULL",
        )
        .bind(&node.name)
        .bind(&node.assignment.role)
        .bind(&node.assignment.channel)
        .bind(&node.fingerprint)
        .bind(node.enrolled_at)
        .bind(&node.token_id)
        .bind(&node.facts_json)
        .execute(&mut *tx)
        .await
        .map_err(db("record node"))?;
        let mut detail = format!("{}; token {}", node.assignment, node.token_id);
        match before {
            None => {}
            Some((at, None)) => detail.push_str(&format!(
                "; replaced the certificate enrolled at {}",
                crate::service::rfc3339(at)
            )),
            Some((at, Some(revoked))) => detail.push_str(&format!(
                "; enrolled again after its revocation at {} (earlier certificate of {})",
                crate::service::rfc3339(revoked),
                crate::service::rfc3339(at)
            )),
        }
        append_audit(&mut tx, actor, "node enroll", &node.name, &detail, "ok").await?;
        tx.commit().await.map_err(db("commit node enroll"))?;
        Ok(Ok(Enrolled {
            node,
            replaced: before.map(|(at, _)| at),
        }))
    }

    pub(super) async fn revoke_node_in_postgres(&self, name: &str, actor: &Actor) -> Result<()> {
        let mut tx = self.begin("begin node revoke").await?;
        lock(&mut tx, Lock::Node(name)).await?;
        let before: Option<(String, String, Option<i64>)> =
            sqlx::query_as("SELECT role, channel, revoked_at FROM nodes WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("read node"))?;
        let assignment = match before {
            None => return Err(StoreError::NotFound(format!("node {name}"))),
            Some((_, _, Some(_))) => {
                return Err(StoreError::Conflict(format!(
                    "node {name} is already revoked"
                )));
            }
            Some((role, channel, None)) => Assignment { role, channel },
        };
        sqlx::query(
            "UPDATE nodes SET revoked_at = $1, previous_fingerprint = NULL WHERE name = $2",
        )
        .bind(now_micros())
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db("revoke node"))?;
        let detail = format!("{assignment}; its certificate revoked");
        append_audit(&mut tx, actor, "node revoke", name, &detail, "ok").await?;
        super::changes::node_revoked(&mut tx, name).await?;
        tx.commit().await.map_err(db("commit node revoke"))
    }

    pub(super) async fn renew_node_in_postgres(
        &self,
        name: &str,
        fingerprint: &str,
        new_fingerprint: &str,
        valid_until: Micros,
        actor: &Actor,
    ) -> Result<std::result::Result<Assignment, NodeStanding>> {
        let mut tx = self.begin("begin node renew").await?;
        lock(&mut tx, Lock::Node(name)).await?;
        let current: Option<(String, String, i64, bool)> = sqlx::query_as(
            "SELECT role, channel, enrolled_at, fingerprint <> $2 FROM nodes
             WHERE name = $1 AND $2 IN (fingerprint, previous_fingerprint) AND revoked_at IS NULL",
        )
        .bind(name)
        .bind(fingerprint)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("read node"))?;
        let Some((role, channel, recorded_at, from_previous)) = current else {
            drop(tx);
            return Ok(Err(self
                .node_standing_in_postgres(name, fingerprint)
                .await?));
        };
        sqlx::query(
            "UPDATE nodes SET fingerprint = $1, previous_fingerprint = $2, enrolled_at = $3
             WHERE name = $4",
        )
        .bind(new_fingerprint)
        .bind(fingerprint)
        .bind(now_micros())
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db("renew node certificate"))?;
        let assignment = Assignment { role, channel };
        let detail = renewal_detail(&assignment, recorded_at, from_previous, valid_until);
        append_audit(&mut tx, actor, "node renew", name, &detail, "ok").await?;
        tx.commit().await.map_err(db("commit node renew"))?;
        Ok(Ok(assignment))
    }

    pub(super) async fn forget_previous_certificate_in_postgres(
        &self,
        name: &str,
        fingerprint: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE nodes SET previous_fingerprint = NULL
             WHERE name = $1 AND fingerprint = $2 AND previous_fingerprint IS NOT NULL",
        )
        .bind(name)
        .bind(fingerprint)
        .execute(&self.pool)
        .await
        .map_err(db("forget the node's previous certificate"))?;
        Ok(())
    }
}
