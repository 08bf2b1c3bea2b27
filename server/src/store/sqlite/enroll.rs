//! Join tokens and nodes in SQLite (migrations `0003_nodes_tokens.sql`,
//! `0010_node_previous_certificate.sql`).
//!
//! Every change that makes a node certificate count or stop counting (an
//! enrollment, a revocation, a renewal, a previous certificate forgotten) is
//! counted in [`OperatorChanges`] after it commits, as operators' are, so
//! that every process drops the standings it kept.

use sqlx::SqlitePool;

use super::*;

/// The token `id`, if `secret_sha256` is its secret's.
async fn token_with_secret<'e, E: sqlx::SqliteExecutor<'e>>(
    executor: E,
    id: &str,
    secret_sha256: &str,
) -> Result<Option<TokenRecord>> {
    let row: Option<TokenRow> = sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ? AND secret_sha256 = ?"
    ))
    .bind(id)
    .bind(secret_sha256)
    .fetch_optional(executor)
    .await
    .map_err(db("read token"))?;
    Ok(row.map(TokenRecord::from))
}

async fn token<'e, E: sqlx::SqliteExecutor<'e>>(
    executor: E,
    id: &str,
) -> Result<Option<TokenRecord>> {
    let row: Option<TokenRow> =
        sqlx::query_as(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?"))
            .bind(id)
            .fetch_optional(executor)
            .await
            .map_err(db("read token"))?;
    Ok(row.map(TokenRecord::from))
}

pub(super) async fn check_token(
    pool: &SqlitePool,
    id: &str,
    secret_sha256: &str,
) -> Result<std::result::Result<Assignment, TokenRefusal>> {
    Ok(match token_with_secret(pool, id, secret_sha256).await? {
        None => Err(TokenRefusal::Unknown),
        Some(token) => match refusal(&token, now_micros()) {
            Some(refused) => Err(refused),
            None => Ok(token.assignment),
        },
    })
}

pub(super) async fn node(pool: &SqlitePool, name: &str) -> Result<Option<NodeRecord>> {
    let row: Option<NodeRow> =
        sqlx::query_as(&format!("SELECT {NODE_COLUMNS} FROM nodes WHERE name = ?"))
            .bind(name)
            .fetch_optional(pool)
            .await
            .map_err(db("read node"))?;
    Ok(row.map(NodeRecord::from))
}

/// What the nodes table says of this certificate.
pub(super) async fn read_node_standing(
    pool: &SqlitePool,
    name: &str,
    fingerprint: &str,
) -> Result<NodeStanding> {
    let row: Option<StandingRow> = sqlx::query_as(
        "SELECT role, channel, fingerprint, previous_fingerprint, revoked_at
         FROM nodes WHERE name = ?",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .map_err(db("read node"))?;
    Ok(standing_of(row, fingerprint))
}

impl SqliteStore {
    pub(super) async fn create_token_(&self, new: NewToken, actor: &Actor) -> Result<TokenRecord> {
        let _writer = self.write.lock().await;
        let mut tx = self.begin("begin token create").await?;
        if token(&mut *tx, &new.id).await?.is_some() {
            return Err(StoreError::Conflict(format!(
                "a token with id {} exists already",
                new.id
            )));
        }
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
        sqlx::query(
            "INSERT INTO tokens (id, secret_sha256, role, channel, created_by, created_at, expires_at, uses_allowed)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
        .map_err(db("store token"))?;
        let detail = format!(
            "{}; {} use{}; expires {}",
            record.assignment,
            record.uses_allowed,
            if record.uses_allowed == 1 { "" } else { "s" },
            crate::service::rfc3339(record.expires_at)
        );
        append_audit(
            &mut tx,
            &self.head,
            actor,
            "token create",
            &record.id,
            &detail,
            "ok",
        )
        .await?;
        tx.commit().await.map_err(db("commit token create"))?;
        Ok(record)
    }

    pub(super) async fn tokens_(&self, limit: u32) -> Result<Vec<TokenRecord>> {
        let rows: Vec<TokenRow> = sqlx::query_as(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at DESC, id LIMIT ?"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("list tokens"))?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub(super) async fn revoke_token_(&self, id: &str, actor: &Actor) -> Result<TokenRecord> {
        let _writer = self.write.lock().await;
        let mut tx = self.begin("begin token revoke").await?;
        let mut record = match token(&mut *tx, id).await? {
            None => return Err(StoreError::NotFound(format!("token {id}"))),
            Some(t) if t.revoked_at.is_some() => {
                return Err(StoreError::Conflict(format!(
                    "token {id} is already revoked"
                )));
            }
            Some(t) => t,
        };
        let now = now_micros();
        sqlx::query("UPDATE tokens SET revoked_at = ? WHERE id = ?")
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
        append_audit(
            &mut tx,
            &self.head,
            actor,
            "token revoke",
            id,
            &detail,
            "ok",
        )
        .await?;
        tx.commit().await.map_err(db("commit token revoke"))?;
        Ok(record)
    }

    pub(super) async fn enroll_(
        &self,
        e: Enrollment,
        actor: &Actor,
    ) -> Result<std::result::Result<Enrolled, TokenRefusal>> {
        let _writer = self.write.lock().await;
        let mut tx = self.begin("begin node enroll").await?;
        let now = now_micros();
        // The write lock is held from here to the commit: the use counted
        // below is the one this check saw free.
        let token = match token_with_secret(&mut *tx, &e.token_id, &e.secret_sha256).await? {
            None => return Ok(Err(TokenRefusal::Unknown)),
            Some(t) => t,
        };
        if let Some(refused) = refusal(&token, now) {
            return Ok(Err(refused));
        }
        sqlx::query("UPDATE tokens SET uses_used = uses_used + 1 WHERE id = ?")
            .bind(&token.id)
            .execute(&mut *tx)
            .await
            .map_err(db("take a use of the token"))?;
        let before: Option<(i64, Option<i64>)> =
            sqlx::query_as("SELECT enrolled_at, revoked_at FROM nodes WHERE name = ?")
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
             VALUES (?, ?, ?, ?, ?, NULL, ?, ?)
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
        append_audit(
            &mut tx,
            &self.head,
            actor,
            "node enroll",
            &node.name,
            &detail,
            "ok",
        )
        .await?;
        tx.commit().await.map_err(db("commit node enroll"))?;
        self.changes.count()?;
        Ok(Ok(Enrolled {
            node,
            replaced: before.map(|(at, _)| at),
        }))
    }

    pub(super) async fn revoke_node_(&self, name: &str, actor: &Actor) -> Result<()> {
        let _writer = self.write.lock().await;
        let mut tx = self.begin("begin node revoke").await?;
        let before: Option<(String, String, Option<i64>)> =
            sqlx::query_as("SELECT role, channel, revoked_at FROM nodes WHERE name = ?")
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
        sqlx::query("UPDATE nodes SET revoked_at = ?, previous_fingerprint = NULL WHERE name = ?")
            .bind(now_micros())
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db("revoke node"))?;
        let detail = format!("{assignment}; its certificate revoked");
        append_audit(
            &mut tx,
            &self.head,
            actor,
            "node revoke",
            name,
            &detail,
            "ok",
        )
        .await?;
        tx.commit().await.map_err(db("commit node revoke"))?;
        self.changes.count()
    }

    pub(super) async fn renew_node_(
        &self,
        name: &str,
        fingerprint: &str,
        new_fingerprint: &str,
        valid_until: Micros,
        actor: &Actor,
    ) -> Result<std::result::Result<Assignment, NodeStanding>> {
        let _writer = self.write.lock().await;
        let mut tx = self.begin("begin node renew").await?;
        let current: Option<(String, String, i64, bool)> = sqlx::query_as(
            "SELECT role, channel, enrolled_at, fingerprint <> ? FROM nodes
             WHERE name = ? AND ? IN (fingerprint, previous_fingerprint) AND revoked_at IS NULL",
        )
        .bind(fingerprint)
        .bind(name)
        .bind(fingerprint)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("read node"))?;
        let Some((role, channel, recorded_at, from_previous)) = current else {
            drop(tx);
            return Ok(Err(read_node_standing(&self.pool, name, fingerprint).await?));
        };
        sqlx::query(
            "UPDATE nodes SET fingerprint = ?, previous_fingerprint = ?, enrolled_at = ?
             WHERE name = ?",
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
        append_audit(
            &mut tx,
            &self.head,
            actor,
            "node renew",
            name,
            &detail,
            "ok",
        )
        .await?;
        tx.commit().await.map_err(db("commit node renew"))?;
        self.changes.count()?;
        Ok(Ok(assignment))
    }

    pub(super) async fn forget_previous_certificate_(
        &self,
        name: &str,
        fingerprint: &str,
    ) -> Result<()> {
        let _writer = self.write.lock().await;
        let forgotten = sqlx::query(
            "UPDATE nodes SET previous_fingerprint = NULL
             WHERE name = ? AND fingerprint = ? AND previous_fingerprint IS NOT NULL",
        )
        .bind(name)
        .bind(fingerprint)
        .execute(&self.pool)
        .await
        .map_err(db("forget the node's previous certificate"))?
        .rows_affected();
        if forgotten > 0 {
            self.changes.count()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_node_revoked_by_another_process_is_refused_at_the_next_call() {
        // Two stores on one file are two processes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.db");
        let server = SqliteStore::open(&path).await.unwrap();
        let command = SqliteStore::open(&path).await.unwrap();
        let admin = Actor {
            name: "a".into(),
            role: "admin".into(),
            peer: "p".into(),
        };
        let assignment = Assignment {
            role: "web".into(),
            channel: "production".into(),
        };
        command
            .create_token(
                NewToken {
                    id: "tttttt".into(),
                    secret_sha256: "s".into(),
                    assignment: assignment.clone(),
                    expires_at: now_micros() + 60_000_000,
                    uses_allowed: 2,
                },
                &admin,
            )
            .await
            .unwrap();
        let enroll = |fingerprint: &str| Enrollment {
            token_id: "tttttt".into(),
            secret_sha256: "s".into(),
            name: "web-1".into(),
            fingerprint: fingerprint.into(),
            facts_json: None,
        };
        command.enroll(enroll("f1"), &admin).await.unwrap().unwrap();
        for _ in 0..2 {
            // The second answer comes from memory.
            assert_eq!(
                server.node_standing("web-1", "f1").await.unwrap(),
                NodeStanding::Current(assignment.clone())
            );
        }
        command.revoke_node("web-1", &admin).await.unwrap();
        assert_eq!(
            server.node_standing("web-1", "f1").await.unwrap(),
            NodeStanding::Revoked
        );
        command.enroll(enroll("f2"), &admin).await.unwrap().unwrap();
        assert_eq!(
            server.node_standing("web-1", "f1").await.unwrap(),
            NodeStanding::Replaced
        );
        assert_eq!(
            server.node_standing("web-1", "f2").await.unwrap(),
            NodeStanding::Current(assignment)
        );
    }
}
