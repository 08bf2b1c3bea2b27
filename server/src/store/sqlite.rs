//! The embedded backend: SQLite through sqlx, in the server's data directory.
//!
//! Durability: WAL journal with `synchronous = FULL`, so a transaction that
//! committed (and so was acknowledged) survives the process being killed at any
//! moment, and the machine losing power. Writers are serialized in-process by
//! a mutex, so version numbers are assigned one push at a time.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use tokio::sync::Mutex;

use super::*;

/// Converts at the edge: no sqlx type leaves this module.
fn db<E: std::error::Error + Send + Sync + 'static>(
    op: impl Into<String>,
) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Backend {
        op: op.into(),
        source: Box::new(e),
    }
}

pub struct SqliteStore {
    pool: SqlitePool,
    /// Held by every write transaction; dropped at the end of it. Bounds the
    /// writers to one, which is all SQLite allows anyway, without BUSY retries.
    write: Mutex<()>,
}

#[derive(sqlx::FromRow)]
struct VersionRow {
    role: String,
    version: i64,
    digest: String,
    author: String,
    message: String,
    created_at: i64,
}

impl From<VersionRow> for VersionMeta {
    fn from(r: VersionRow) -> Self {
        VersionMeta {
            role: r.role,
            version: r.version as u64,
            digest: r.digest,
            author: r.author,
            message: r.message,
            created_at: r.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct ChannelRow {
    role: String,
    channel: String,
    version: i64,
    updated_at: i64,
    updated_by: String,
}

impl From<ChannelRow> for Channel {
    fn from(r: ChannelRow) -> Self {
        Channel {
            role: r.role,
            channel: r.channel,
            version: r.version as u64,
            updated_at: r.updated_at,
            updated_by: r.updated_by,
        }
    }
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: i64,
    actor: String,
    actor_role: String,
    action: String,
    target: String,
    detail: String,
    peer: String,
    outcome: String,
}

const VERSION_COLUMNS: &str = "role, version, digest, author, message, created_at";

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(db("configure sqlite"))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await
            .map_err(db(format!("open {}", path.display())))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(db("apply database migrations"))?;
        Ok(SqliteStore {
            pool,
            write: Mutex::new(()),
        })
    }

    async fn begin(&self, op: &'static str) -> Result<Transaction<'static, Sqlite>> {
        self.pool.begin().await.map_err(db(op))
    }
}

async fn append_audit(
    tx: &mut Transaction<'static, Sqlite>,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: &str,
    outcome: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, actor_role, action, target, detail, peer, outcome)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(now_micros())
    .bind(&actor.name)
    .bind(&actor.role)
    .bind(action)
    .bind(target)
    .bind(detail)
    .bind(&actor.peer)
    .bind(outcome)
    .execute(&mut **tx)
    .await
    .map_err(db("append audit entry"))?;
    Ok(())
}

async fn current_channel(
    tx: &mut Transaction<'static, Sqlite>,
    role: &str,
    channel: &str,
) -> Result<Option<Channel>> {
    let row: Option<ChannelRow> = sqlx::query_as(
        "SELECT role, channel, version, updated_at, updated_by FROM channels WHERE role = ? AND channel = ?",
    )
    .bind(role)
    .bind(channel)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db("read channel"))?;
    Ok(row.map(Channel::from))
}

/// Points the channel at `version` and records the event; returns the move.
#[allow(clippy::too_many_arguments)]
async fn move_channel(
    tx: &mut Transaction<'static, Sqlite>,
    role: &str,
    channel: &str,
    version: u64,
    action: &str,
    undoes: Option<i64>,
    actor: &Actor,
) -> Result<ChannelMove> {
    let previous = current_channel(tx, role, channel).await?.map(|c| c.version);
    let at = now_micros();
    sqlx::query(
        "INSERT INTO channels (role, channel, version, updated_at, updated_by) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (role, channel) DO UPDATE SET version = excluded.version,
             updated_at = excluded.updated_at, updated_by = excluded.updated_by",
    )
    .bind(role)
    .bind(channel)
    .bind(version as i64)
    .bind(at)
    .bind(&actor.name)
    .execute(&mut **tx)
    .await
    .map_err(db("move channel"))?;
    sqlx::query(
        "INSERT INTO channel_events (role, channel, action, from_version, to_version, undoes, actor, at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(role)
    .bind(channel)
    .bind(action)
    .bind(previous.map(|v| v as i64))
    .bind(version as i64)
    .bind(undoes)
    .bind(&actor.name)
    .bind(at)
    .execute(&mut **tx)
    .await
    .map_err(db("record channel event"))?;
    let detail = match previous {
        Some(p) => format!("{channel}: {p} → {version}"),
        None => format!("{channel}: → {version}"),
    };
    append_audit(tx, actor, action, role, &detail, "ok").await?;
    Ok(ChannelMove {
        channel: Channel {
            role: role.to_string(),
            channel: channel.to_string(),
            version,
            updated_at: at,
            updated_by: actor.name.clone(),
        },
        previous,
    })
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn push(&self, new: NewVersion, actor: &Actor) -> Result<PushOutcome> {
        let _writer = self.write.lock().await;
        let mut tx = self.begin("begin push").await?;
        let latest: Option<VersionRow> = sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} FROM role_versions WHERE role = ? ORDER BY version DESC LIMIT 1"
        ))
        .bind(&new.role)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("read latest version"))?;
        if let Some(latest) = latest.filter(|l| l.digest == new.digest) {
            let detail = format!("identical to version {}; nothing stored", latest.version);
            append_audit(&mut tx, actor, "push", &new.role, &detail, "ok").await?;
            tx.commit().await.map_err(db("commit push"))?;
            return Ok(PushOutcome {
                version: latest.into(),
                created: false,
            });
        }
        let version: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM role_versions WHERE role = ?",
        )
        .bind(&new.role)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("number new version"))?;
        let meta = VersionMeta {
            role: new.role,
            version: version as u64,
            digest: new.digest,
            author: actor.name.clone(),
            message: new.message,
            created_at: now_micros(),
        };
        sqlx::query(
            "INSERT INTO role_versions (role, version, digest, author, message, created_at, bundle)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&meta.role)
        .bind(version)
        .bind(&meta.digest)
        .bind(&meta.author)
        .bind(&meta.message)
        .bind(meta.created_at)
        .bind(&new.bundle)
        .execute(&mut *tx)
        .await
        .map_err(db("store version"))?;
        let detail = format!("version {version} {}", meta.digest);
        append_audit(&mut tx, actor, "push", &meta.role, &detail, "ok").await?;
        tx.commit().await.map_err(db("commit push"))?;
        Ok(PushOutcome {
            version: meta,
            created: true,
        })
    }

    async fn roles(&self) -> Result<Vec<RoleSummary>> {
        let latest: Vec<VersionRow> = sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} FROM role_versions
             WHERE (role, version) IN (SELECT role, MAX(version) FROM role_versions GROUP BY role)
             ORDER BY role"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db("list roles"))?;
        let channels: Vec<ChannelRow> =
            sqlx::query_as("SELECT role, channel, version, updated_at, updated_by FROM channels ORDER BY role, channel")
                .fetch_all(&self.pool)
                .await
                .map_err(db("list channels"))?;
        let mut by_role: std::collections::HashMap<String, Vec<Channel>> = Default::default();
        for c in channels {
            by_role.entry(c.role.clone()).or_default().push(c.into());
        }
        Ok(latest
            .into_iter()
            .map(|v| RoleSummary {
                channels: by_role.remove(&v.role).unwrap_or_default(),
                latest: v.into(),
            })
            .collect())
    }

    async fn versions(&self, role: &str) -> Result<Vec<VersionMeta>> {
        let rows: Vec<VersionRow> = sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} FROM role_versions WHERE role = ? ORDER BY version"
        ))
        .bind(role)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list versions"))?;
        if rows.is_empty() {
            return Err(StoreError::NotFound(format!("role {role}")));
        }
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn get(&self, role: &str, version: Option<u64>) -> Result<(VersionMeta, Vec<u8>)> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            meta: VersionRow,
            bundle: Vec<u8>,
        }
        let query = format!(
            "SELECT {VERSION_COLUMNS}, bundle FROM role_versions WHERE role = ? {} ORDER BY version DESC LIMIT 1",
            if version.is_some() {
                "AND version = ?"
            } else {
                ""
            }
        );
        let mut q = sqlx::query_as::<_, Row>(&query).bind(role);
        if let Some(v) = version {
            q = q.bind(v as i64);
        }
        let row = q
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read version"))?;
        match row {
            Some(r) => Ok((r.meta.into(), r.bundle)),
            None => Err(StoreError::NotFound(match version {
                Some(v) => format!("version {v} of role {role}"),
                None => format!("role {role}"),
            })),
        }
    }

    async fn promote(
        &self,
        role: &str,
        channel: &str,
        version: u64,
        actor: &Actor,
    ) -> Result<ChannelMove> {
        let _writer = self.write.lock().await;
        let mut tx = self.begin("begin promote").await?;
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT version FROM role_versions WHERE role = ? AND version = ?")
                .bind(role)
                .bind(version as i64)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("read version"))?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!(
                "version {version} of role {role}"
            )));
        }
        let moved = move_channel(&mut tx, role, channel, version, "promote", None, actor).await?;
        tx.commit().await.map_err(db("commit promote"))?;
        Ok(moved)
    }

    async fn rollback(&self, role: &str, channel: &str, actor: &Actor) -> Result<ChannelMove> {
        let _writer = self.write.lock().await;
        let mut tx = self.begin("begin rollback").await?;
        if current_channel(&mut tx, role, channel).await?.is_none() {
            return Err(StoreError::NotFound(format!(
                "channel {channel} of role {role}"
            )));
        }
        let undo: Option<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT id, from_version FROM channel_events
             WHERE role = ? AND channel = ? AND action = 'promote'
               AND id NOT IN (SELECT undoes FROM channel_events
                              WHERE role = ? AND channel = ? AND undoes IS NOT NULL)
             ORDER BY id DESC LIMIT 1",
        )
        .bind(role)
        .bind(channel)
        .bind(role)
        .bind(channel)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("read channel history"))?;
        let (id, to) = match undo {
            Some((id, Some(from))) => (id, from as u64),
            _ => {
                return Err(StoreError::Conflict(format!(
                    "nothing to roll back: channel {channel} of role {role} has no earlier version in its history"
                )));
            }
        };
        let moved = move_channel(&mut tx, role, channel, to, "rollback", Some(id), actor).await?;
        tx.commit().await.map_err(db("commit rollback"))?;
        Ok(moved)
    }

    async fn channels(&self, role: &str) -> Result<(Vec<Channel>, Vec<ChannelEvent>)> {
        let channels: Vec<ChannelRow> = sqlx::query_as(
            "SELECT role, channel, version, updated_at, updated_by FROM channels WHERE role = ? ORDER BY channel",
        )
        .bind(role)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list channels"))?;
        let events: Vec<(String, String, Option<i64>, i64, String, i64)> = sqlx::query_as(
            "SELECT channel, action, from_version, to_version, actor, at FROM channel_events
             WHERE role = ? ORDER BY id DESC",
        )
        .bind(role)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read channel history"))?;
        if channels.is_empty() {
            let known: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM role_versions WHERE role = ? LIMIT 1")
                    .bind(role)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db("read role"))?;
            if known.is_none() {
                return Err(StoreError::NotFound(format!("role {role}")));
            }
        }
        Ok((
            channels.into_iter().map(Into::into).collect(),
            events
                .into_iter()
                .map(|(channel, action, from, to, actor, at)| ChannelEvent {
                    channel,
                    action,
                    from_version: from.map(|v| v as u64),
                    to_version: to as u64,
                    actor,
                    at,
                })
                .collect(),
        ))
    }

    async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        detail: &str,
        outcome: &str,
    ) -> Result<()> {
        let _writer = self.write.lock().await;
        let mut tx = self.begin("begin audit").await?;
        append_audit(&mut tx, actor, action, target, detail, outcome).await?;
        tx.commit().await.map_err(db("commit audit entry"))
    }

    async fn audit_log(&self, since: Option<Micros>, limit: u32) -> Result<Vec<AuditRecord>> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT * FROM (SELECT id, at, actor, actor_role, action, target, detail, peer, outcome
                            FROM audit_log WHERE at >= ? ORDER BY id DESC LIMIT ?)
             ORDER BY id",
        )
        .bind(since.unwrap_or(i64::MIN))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read audit log"))?;
        Ok(rows
            .into_iter()
            .map(|r| AuditRecord {
                id: r.id as u64,
                at: r.at,
                actor: r.actor,
                actor_role: r.actor_role,
                action: r.action,
                target: r.target,
                detail: r.detail,
                peer: r.peer,
                outcome: r.outcome,
            })
            .collect())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db("ping"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_store_suite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.db");
        let store = crate::store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        crate::store::tests::suite(store).await;
        assert!(path.is_file(), "the URL's path is the database file");
    }

    #[tokio::test]
    async fn the_audit_log_is_append_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("cairn.db"))
            .await
            .unwrap();
        let actor = Actor {
            name: "a".into(),
            role: "admin".into(),
            peer: "p".into(),
        };
        store.audit(&actor, "x", "y", "", "ok").await.unwrap();
        let err = sqlx::query("DELETE FROM audit_log")
            .execute(&store.pool)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
        let err = sqlx::query("UPDATE audit_log SET actor = 'b'")
            .execute(&store.pool)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
}
