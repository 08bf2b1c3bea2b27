//! The shared backend: PostgreSQL through sqlx, for one or several servers on
//! one database (`--database postgres://…`).
//!
//! Concurrency: several processes write one database (servers, and
//! `cairn-server operator …` next to them), so no invariant rests on a lock
//! held in this process. Each write transaction runs at READ COMMITTED and
//! takes the database lock its invariant needs before it reads what it decides
//! on; each statement then sees whatever committed before it began, so a read
//! after the lock sees the previous holder's commit:
//!
//! - a role's versions are numbered under a transaction-scoped advisory lock
//!   on the role ([`Lock::Role`]): the first push has no row to lock with
//!   `FOR UPDATE`. The primary key `(role, version)` is the backstop.
//! - a channel moves under an advisory lock on its role and name
//!   ([`Lock::Channel`]): its history decides what a rollback undoes.
//! - an operator's and a node's record change under an advisory lock on the
//!   name, so that what an entry says was replaced is what was; a token's uses
//!   are taken with its row locked (`FOR UPDATE`), so of two enrollments racing
//!   for its last use exactly one gets it.
//! - the shared CA is one row, inserted only if absent (`ON CONFLICT DO
//!   NOTHING` waits for a racing insert to commit), so of servers racing to
//!   store theirs one wins, and the read after it gives the others its CA.
//! - every audit entry is appended under one advisory lock
//!   ([`Lock::AuditChain`]) held to the commit, so entries are numbered and
//!   chained one after the other whoever writes them. It is always the last
//!   lock a transaction takes, so no transaction holding it waits for another:
//!   no deadlock.
//!
//! Reports need no lock: `(node, run_id)` is unique (`ON CONFLICT DO NOTHING`)
//! and a node's last run is an upsert, both atomic in PostgreSQL.
//!
//! Standings of certificates ([`Store::standing`], [`Store::node_standing`])
//! are read from the database on every call (one primary-key read), so a
//! revocation committed by any process counts at the next call.
//!
//! Background jobs: a lease is a session-level advisory lock, held by a
//! connection taken out of the pool for it ([`Store::job_lease`]), so it ends
//! with the session, however the process ends.
//!
//! Connections: at most [`MAX_CONNECTIONS`] (and a job lease's), each given [`CONNECT_TIMEOUT`]
//! to open and wait for; a connection lost (the database restarted) is
//! replaced by the pool. Errors name the database by host, port and name,
//! never by its URL, which may hold a password. Given several addresses (a
//! primary and its standbys), only the primary is used, and the pool follows
//! a standby promoted in its place: [`primary`].
//!
//! Opening refuses a database whose audit log lost its protection: see
//! [`PROTECTIONS`].
//!
//! Several servers: each channel move and node revocation is announced with
//! `NOTIFY` in its own transaction, so it is told only once it committed;
//! [`Store::changes`] listens for them: [`changes`].
//!
//! Join tokens and nodes: [`enroll`]; reports and the fleet: [`reports`].

use std::time::Duration;

use sqlx::migrate::Migrate;
use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection, Postgres, Transaction};

use super::rows::*;
use super::*;

mod archive;
mod changes;
mod dashboard;
mod enroll;
mod primary;
mod reports;

/// At most this many connections per process: enough for the handlers'
/// concurrent queries, few enough that several replicas stay well within
/// PostgreSQL's default `max_connections` (100).
pub const MAX_CONNECTIONS: u32 = 16;
/// How long opening a connection, or waiting for a free one, may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a statement may run, and a transaction may sit idle, on the pool's
/// connections (the gRPC call limit): a server that hangs or loses its
/// network mid-transaction holds its locks no longer than this.
const STATEMENT_TIMEOUT: &str = "60s";

/// Converts at the edge: no sqlx type leaves this module.
fn db<E: std::error::Error + Send + Sync + 'static>(
    op: impl Into<String>,
) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Backend {
        op: op.into(),
        source: Box::new(e),
    }
}

type Tx = Transaction<'static, Postgres>;

pub struct PgStore {
    /// Connects to the primary of the moment (see [`primary`]).
    pool: PgPool,
    /// With several addresses, the task that moves the pool to a new primary.
    _follower: Option<primary::Follower>,
    /// `database NAME at HOST:PORT[, HOST:PORT…]`, for messages (never the URL).
    place: String,
}

/// The triggers that keep the audit log append-only and chained (and versions
/// immutable), each with what it guards; the server refuses to start without
/// any of them (see `server/migrations/postgres/` for their definitions).
pub const PROTECTIONS: [(&str, &str); 5] = [
    ("audit_log_no_update", "refuses changes to audit entries"),
    ("audit_log_no_delete", "refuses removal of audit entries"),
    ("audit_log_no_truncate", "refuses emptying the audit log"),
    (
        "audit_log_hash_required",
        "refuses audit entries without their chain hash",
    ),
    (
        "role_versions_immutable",
        "refuses changes to stored versions",
    ),
];

/// What a write transaction locks (transaction-scoped advisory locks: released
/// by its commit or rollback, whatever happens to the process). Names are
/// hashed to the lock's key; two names with one hash only wait for each other.
enum Lock<'a> {
    /// Appending to the audit log: always the last lock taken.
    AuditChain,
    Role(&'a str),
    Channel(&'a str, &'a str),
    Operator(&'a str),
    Node(&'a str),
}

/// The first key of Cairn's advisory locks ("cai" and the kind), so that
/// they keep apart from another application's on the same database.
const LOCK_SPACE: i32 = 0x6361_6900;

async fn lock(tx: &mut Tx, what: Lock<'_>) -> Result<()> {
    let (kind, key) = match what {
        Lock::AuditChain => (0, String::new()),
        Lock::Role(role) => (1, role.to_string()),
        Lock::Channel(role, channel) => (2, format!("{role}\n{channel}")),
        Lock::Operator(name) => (3, name.to_string()),
        Lock::Node(name) => (4, name.to_string()),
    };
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(LOCK_SPACE + kind)
        .bind(key)
        .execute(&mut **tx)
        .await
        .map_err(db("take a lock"))?;
    Ok(())
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://` or `postgresql://`),
    /// migrates it if it is new (else refuses it with migrations pending: see
    /// [`Pending::Refuse`]), and checks that the audit log is still protected.
    pub async fn open(url: &str) -> Result<Self> {
        Ok(Self::open_with(url, Pending::Refuse).await?.0)
    }

    /// [`PgStore::open`], doing `pending` with migrations this build has and
    /// the database has not; returns the store and the migrations applied.
    pub async fn open_with(url: &str, pending: Pending) -> Result<(Self, Vec<Migration>)> {
        let mut addresses = primary::addresses(url)?;
        let place = primary::place(&addresses);
        // One connection first, to the primary, so that an unreachable
        // database is an error saying why (the pool would retry until its
        // timeout and say only that).
        let (current, mut first) = primary::find(&addresses, &place).await?;
        // sqlx's migration lock (a session-level advisory lock, released when
        // `first` closes, however this ends), from reading the schema to
        // migrating it: servers starting together on a new database migrate
        // one after the other, and each sees the schema whole, never half
        // migrated by another.
        first
            .lock()
            .await
            .map_err(db(format!("lock the schema of the {place}")))?;
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        migrator.set_locking(false);
        let applied = applied_migrations(&mut first, &place).await?;
        let missing = schema::pending(&schema::known(&migrator), &applied, &place)?;
        if !missing.is_empty() && pending == Pending::Refuse && !applied.is_empty() {
            return Err(schema::out_of_date(&place, &applied, &missing));
        }
        // Run even with nothing missing: it refuses a migration that failed
        // half-way or whose file changed since it was applied.
        migrator
            .run(&mut first)
            .await
            .map_err(db(format!("apply database migrations to the {place}")))?;
        first
            .close()
            .await
            .map_err(db(format!("close a connection to the {place}")))?;
        // The locking above relies on READ COMMITTED, whatever the database's
        // default; migrations (on the first connection) are not cut off.
        for address in &mut addresses {
            address.options = address.options.clone().options([
                // A space in a value is escaped in the startup options.
                ("default_transaction_isolation", "read\\ committed"),
                ("statement_timeout", STATEMENT_TIMEOUT),
                ("idle_in_transaction_session_timeout", STATEMENT_TIMEOUT),
            ]);
        }
        let (pool, follower) = primary::pool(addresses, current, place.clone());
        let store = PgStore {
            pool,
            _follower: follower,
            place,
        };
        store.check_protections().await?;
        Ok((store, missing))
    }

    async fn begin(&self, op: &'static str) -> Result<Tx> {
        self.pool.begin().await.map_err(db(op))
    }

    fn damaged(&self, what: String) -> StoreError {
        StoreError::Damaged(format!(
            "the audit log in the {} is no longer protected: {what}\n  \
             help: the database was changed outside cairn-server. Restore it from a backup, \
             or recreate what is missing from server/migrations/postgres/; then check the log \
             with `cairn audit verify`",
            self.place
        ))
    }

    /// Refuses a database whose audit log lost its chain column or one of
    /// [`PROTECTIONS`] (a disabled trigger counts as missing), or whose
    /// triggers no longer refuse what they should.
    async fn check_protections(&self) -> Result<()> {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = 'audit_log'",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("read the audit log's columns"))?;
        if !columns.iter().any(|c| c == "hash") {
            return Err(self.damaged("its column `hash` (the chain) is missing".into()));
        }
        let triggers: Vec<String> = sqlx::query_scalar(
            "SELECT t.tgname::text FROM pg_trigger t
             JOIN pg_class c ON c.oid = t.tgrelid
             WHERE c.relnamespace = current_schema()::regnamespace
               AND c.relname IN ('audit_log', 'role_versions')
               AND NOT t.tgisinternal AND t.tgenabled <> 'D'",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("read the database's triggers"))?;
        let missing: Vec<String> = PROTECTIONS
            .iter()
            .filter(|(name, _)| !triggers.iter().any(|t| t == name))
            .map(|(name, what)| format!("trigger {name} ({what})"))
            .collect();
        if !missing.is_empty() {
            return Err(self.damaged(format!("missing {}", missing.join(", "))));
        }
        // A trigger of the right name could have been replaced by one that
        // refuses nothing: try what they must refuse, each in a savepoint (a
        // refusal aborts what it ran in), then undo everything. Under the
        // chain's lock, so the probe takes no id another writer wants.
        let mut tx = self.begin("begin audit log check").await?;
        lock(&mut tx, Lock::AuditChain).await?;
        let next: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM audit_log")
            .fetch_one(&mut *tx)
            .await
            .map_err(db("read the audit log"))?;
        let insert = |hash: &str| {
            format!(
                "INSERT INTO audit_log (id, at, actor, actor_role, action, target, detail, peer, outcome, hash)
                 VALUES ($1, 0, '', '', 'protection check', '', '', '', '', {hash})"
            )
        };
        let refused = async |tx: &mut Tx, sql: &str, why: &str| -> Result<bool> {
            let mut savepoint = tx.begin().await.map_err(db("begin a savepoint"))?;
            let result = sqlx::query(sql).bind(next).execute(&mut *savepoint).await;
            savepoint
                .rollback()
                .await
                .map_err(db("roll back a savepoint"))?;
            Ok(result.is_err_and(|e| e.to_string().contains(why)))
        };
        let unhashed = refused(&mut tx, &insert("NULL"), "chain hash").await?;
        sqlx::query(&insert("'check'"))
            .bind(next)
            .execute(&mut *tx)
            .await
            .map_err(db("check the audit log's triggers"))?;
        let changed = refused(
            &mut tx,
            "UPDATE audit_log SET detail = 'x' WHERE id = $1",
            "append-only",
        )
        .await?;
        let removed = refused(
            &mut tx,
            "DELETE FROM audit_log WHERE id = $1",
            "append-only",
        )
        .await?;
        tx.rollback()
            .await
            .map_err(db("undo the audit log check"))?;
        let failed: Vec<&str> = [
            (unhashed, "audit_log_hash_required"),
            (changed, "audit_log_no_update"),
            (removed, "audit_log_no_delete"),
        ]
        .into_iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, name)| name)
        .collect();
        if !failed.is_empty() {
            return Err(self.damaged(format!(
                "trigger {} no longer refuses what it should",
                failed.join(", ")
            )));
        }
        Ok(())
    }
}

/// Appends an entry chained to the last one. Takes [`Lock::AuditChain`], held
/// until the transaction ends: the last entry read here stays the last, and
/// ids and times only grow (a time is never before the previous entry's, even
/// when another machine's clock is behind).
/// The migrations the database applied, oldest first (none for a new one).
async fn applied_migrations(conn: &mut PgConnection, place: &str) -> Result<Vec<Migration>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(db(format!("read the schema version of the {place}")))?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, description FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .map_err(db(format!("read the schema version of the {place}")))?;
    Ok(rows
        .into_iter()
        .map(|(version, description)| Migration {
            version,
            description,
        })
        .collect())
}

async fn append_audit(
    tx: &mut Tx,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: &str,
    outcome: &str,
) -> Result<()> {
    lock(tx, Lock::AuditChain).await?;
    let last: Option<(i64, i64, Option<String>)> =
        sqlx::query_as("SELECT id, at, hash FROM audit_log ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await
            .map_err(db("read the last audit entry"))?;
    let (last_id, last_at, previous) = last.unwrap_or((0, i64::MIN, None));
    let entry = audit::cut(&AuditRecord {
        id: last_id as u64 + 1,
        at: now_micros().max(last_at),
        actor: actor.name.clone(),
        actor_role: actor.role.clone(),
        action: action.into(),
        target: target.into(),
        detail: detail.into(),
        peer: actor.peer.clone(),
        outcome: outcome.into(),
        hash: String::new(),
        full_digest: None,
    });
    let hash = audit::entry_hash(previous.as_deref().unwrap_or(""), &entry);
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, actor_role, action, target, detail, peer, outcome, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(entry.id as i64)
    .bind(entry.at)
    .bind(&entry.actor)
    .bind(&entry.actor_role)
    .bind(&entry.action)
    .bind(&entry.target)
    .bind(&entry.detail)
    .bind(&entry.peer)
    .bind(&entry.outcome)
    .bind(&hash)
    .execute(&mut **tx)
    .await
    .map_err(db("append audit entry"))?;
    Ok(())
}

async fn current_channel(tx: &mut Tx, role: &str, channel: &str) -> Result<Option<Channel>> {
    let row: Option<ChannelRow> = sqlx::query_as(
        "SELECT role, channel, version, updated_at, updated_by FROM channels WHERE role = $1 AND channel = $2",
    )
    .bind(role)
    .bind(channel)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db("read channel"))?;
    Ok(row.map(Channel::from))
}

/// Points the channel at `version` and records the event; returns the move.
/// The caller holds [`Lock::Channel`].
async fn move_channel(
    tx: &mut Tx,
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
        "INSERT INTO channels (role, channel, version, updated_at, updated_by) VALUES ($1, $2, $3, $4, $5)
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
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
    changes::channel_moved(tx, role, channel).await?;
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
impl Store for PgStore {
    async fn push(&self, new: NewVersion, actor: &Actor) -> Result<PushOutcome> {
        let mut tx = self.begin("begin push").await?;
        lock(&mut tx, Lock::Role(&new.role)).await?;
        let latest: Option<VersionRow> = sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} FROM role_versions WHERE role = $1 ORDER BY version DESC LIMIT 1"
        ))
        .bind(&new.role)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("read latest version"))?;
        // The role's lock keeps the latest the latest until the commit.
        let version = latest.as_ref().map_or(0, |l| l.version) + 1;
        if let Some(latest) = latest.filter(|l| l.digest == new.digest) {
            let detail = format!("identical to version {}; nothing stored", latest.version);
            append_audit(&mut tx, actor, "push", &new.role, &detail, "ok").await?;
            tx.commit().await.map_err(db("commit push"))?;
            return Ok(PushOutcome {
                version: latest.into(),
                created: false,
            });
        }
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
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
        // One snapshot for both reads, so a role's channels match its versions.
        let mut tx = self.begin("begin listing roles").await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(db("begin listing roles"))?;
        let latest: Vec<VersionRow> = sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} FROM role_versions
             WHERE (role, version) IN (SELECT role, MAX(version) FROM role_versions GROUP BY role)
             ORDER BY role"
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(db("list roles"))?;
        let channels: Vec<ChannelRow> = sqlx::query_as(
            "SELECT role, channel, version, updated_at, updated_by FROM channels ORDER BY role, channel",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db("list channels"))?;
        tx.commit().await.map_err(db("end listing roles"))?;
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
            "SELECT {VERSION_COLUMNS} FROM role_versions WHERE role = $1 ORDER BY version"
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
        // A NULL version asks for the latest.
        let row: Option<Row> = sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS}, bundle FROM role_versions
             WHERE role = $1 AND ($2::bigint IS NULL OR version = $2)
             ORDER BY version DESC LIMIT 1"
        ))
        .bind(role)
        .bind(version.map(|v| v as i64))
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
        let mut tx = self.begin("begin promote").await?;
        lock(&mut tx, Lock::Channel(role, channel)).await?;
        // Versions are never removed, so one seen here stays.
        let exists: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM role_versions WHERE role = $1 AND version = $2",
        )
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
        let mut tx = self.begin("begin rollback").await?;
        lock(&mut tx, Lock::Channel(role, channel)).await?;
        if current_channel(&mut tx, role, channel).await?.is_none() {
            return Err(StoreError::NotFound(format!(
                "channel {channel} of role {role}"
            )));
        }
        let undo: Option<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT id, from_version FROM channel_events
             WHERE role = $1 AND channel = $2 AND action = 'promote'
               AND id NOT IN (SELECT undoes FROM channel_events
                              WHERE role = $1 AND channel = $2 AND undoes IS NOT NULL)
             ORDER BY id DESC LIMIT 1",
        )
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
        let mut tx = self.begin("begin reading channels").await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(db("begin reading channels"))?;
        let channels: Vec<ChannelRow> = sqlx::query_as(
            "SELECT role, channel, version, updated_at, updated_by FROM channels WHERE role = $1 ORDER BY channel",
        )
        .bind(role)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("list channels"))?;
        let events: Vec<(String, String, Option<i64>, i64, String, i64)> = sqlx::query_as(
            "SELECT channel, action, from_version, to_version, actor, at FROM channel_events
             WHERE role = $1 ORDER BY id DESC",
        )
        .bind(role)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("read channel history"))?;
        let known = !channels.is_empty()
            || sqlx::query_scalar::<_, i32>("SELECT 1 FROM role_versions WHERE role = $1 LIMIT 1")
                .bind(role)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("read role"))?
                .is_some();
        tx.commit().await.map_err(db("end reading channels"))?;
        if !known {
            return Err(StoreError::NotFound(format!("role {role}")));
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
        let mut tx = self.begin("begin audit").await?;
        append_audit(&mut tx, actor, action, target, detail, outcome).await?;
        tx.commit().await.map_err(db("commit audit entry"))
    }

    async fn audit_log_filtered(
        &self,
        query: AuditQuery,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditRecord>> {
        // Every entry was stored within its bounds (this backend never held
        // entries from before them), so none comes back cut.
        let mut q = select_audit::<Postgres>(AUDIT_COLUMNS, &query, filter);
        let rows: Vec<AuditRow> = q
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(db("read audit log"))?;
        Ok(rows.into_iter().map(AuditRecord::from).collect())
    }

    async fn add_operator(
        &self,
        name: &str,
        role: &str,
        fingerprint: &str,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.begin("begin operator add").await?;
        lock(&mut tx, Lock::Operator(name)).await?;
        let before: Option<Option<i64>> =
            sqlx::query_scalar("SELECT revoked_at FROM operators WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("read operator"))?;
        let replaced = matches!(before, Some(None));
        sqlx::query(
            "INSERT INTO operators (name, role, fingerprint, updated_at, revoked_at) VALUES ($1, $2, $3, $4, NULL)
             ON CONFLICT (name) DO UPDATE SET role = excluded.role, fingerprint = excluded.fingerprint,
                 updated_at = excluded.updated_at, revoked_at = NULL",
        )
        .bind(name)
        .bind(role)
        .bind(fingerprint)
        .bind(now_micros())
        .execute(&mut *tx)
        .await
        .map_err(db("record operator"))?;
        let detail = if replaced {
            format!("role {role}; earlier certificates revoked")
        } else {
            format!("role {role}")
        };
        append_audit(&mut tx, actor, "operator add", name, &detail, "ok").await?;
        tx.commit().await.map_err(db("commit operator add"))?;
        Ok(replaced)
    }

    async fn revoke_operator(&self, name: &str, actor: &Actor) -> Result<()> {
        let mut tx = self.begin("begin operator revoke").await?;
        lock(&mut tx, Lock::Operator(name)).await?;
        let before: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT role, revoked_at FROM operators WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("read operator"))?;
        let role = match before {
            None => return Err(StoreError::NotFound(format!("operator {name}"))),
            Some((_, Some(_))) => {
                return Err(StoreError::Conflict(format!(
                    "operator {name} is already revoked"
                )));
            }
            Some((role, None)) => role,
        };
        let now = now_micros();
        sqlx::query("UPDATE operators SET revoked_at = $1, updated_at = $1 WHERE name = $2")
            .bind(now)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db("revoke operator"))?;
        let detail = format!("role {role}; every certificate revoked");
        append_audit(&mut tx, actor, "operator revoke", name, &detail, "ok").await?;
        tx.commit().await.map_err(db("commit operator revoke"))
    }

    async fn standing(&self, name: &str, fingerprint: &str) -> Result<Standing> {
        let row: Option<(Option<String>, Option<i64>)> =
            sqlx::query_as("SELECT fingerprint, revoked_at FROM operators WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("read operator"))?;
        Ok(match row {
            None => Standing::Unknown,
            Some((_, Some(_))) => Standing::Revoked,
            Some((None, None)) => Standing::Unrecorded,
            Some((Some(current), None)) if current == fingerprint => Standing::Current,
            Some((Some(_), None)) => Standing::Replaced,
        })
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db("ping"))?;
        Ok(())
    }

    // Nodes and join tokens (identity): in `postgres/enroll.rs`.

    async fn create_token(&self, token: NewToken, actor: &Actor) -> Result<TokenRecord> {
        self.create_token_in_postgres(token, actor).await
    }

    async fn tokens(&self, limit: u32) -> Result<Vec<TokenRecord>> {
        self.tokens_in_postgres(limit).await
    }

    async fn revoke_token(&self, id: &str, actor: &Actor) -> Result<TokenRecord> {
        self.revoke_token_in_postgres(id, actor).await
    }

    async fn check_token(
        &self,
        id: &str,
        secret_sha256: &str,
    ) -> Result<std::result::Result<Assignment, TokenRefusal>> {
        self.check_token_in_postgres(id, secret_sha256).await
    }

    async fn enroll(
        &self,
        enrollment: Enrollment,
        actor: &Actor,
    ) -> Result<std::result::Result<Enrolled, TokenRefusal>> {
        self.enroll_in_postgres(enrollment, actor).await
    }

    async fn node(&self, name: &str) -> Result<Option<NodeRecord>> {
        self.node_in_postgres(name).await
    }

    async fn revoke_node(&self, name: &str, actor: &Actor) -> Result<()> {
        self.revoke_node_in_postgres(name, actor).await
    }

    async fn node_standing(&self, name: &str, fingerprint: &str) -> Result<NodeStanding> {
        self.node_standing_in_postgres(name, fingerprint).await
    }

    // Reports and fleet (fleet): in `postgres/reports.rs`.

    async fn store_reports(&self, reports: &[NewReport]) -> Result<Vec<bool>> {
        self.store_reports_in_postgres(reports).await
    }

    async fn reports(&self, query: &ReportQuery) -> Result<Vec<ReportMeta>> {
        self.reports_in_postgres(query).await
    }

    async fn report(&self, id: u64) -> Result<(ReportMeta, Vec<u8>)> {
        self.report_in_postgres(id).await
    }

    async fn delete_reports_before(&self, before: Micros, limit: u32) -> Result<u64> {
        self.delete_reports_in_postgres(before, limit).await
    }

    async fn channel_version(&self, role: &str, channel: &str) -> Result<Option<VersionMeta>> {
        self.channel_version_in_postgres(role, channel).await
    }

    async fn fleet_nodes(&self, after: &str, limit: u32) -> Result<Vec<FleetNode>> {
        self.fleet_nodes_in_postgres(after, limit).await
    }

    async fn fleet_node(&self, name: &str) -> Result<(FleetNode, String)> {
        self.fleet_node_in_postgres(name).await
    }

    async fn fleet_status(&self, now: Micros) -> Result<Vec<ChannelStatus>> {
        self.fleet_status_in_postgres(now).await
    }

    fn changes(&self) -> Option<tokio::sync::mpsc::Receiver<Change>> {
        Some(changes::start(self.pool.clone(), self.place.clone()))
    }

    async fn revoked_nodes(&self, names: &[String]) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT name FROM nodes WHERE revoked_at IS NOT NULL AND name = ANY($1) ORDER BY name",
        )
        .bind(names)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read revoked nodes"))
    }

    async fn ca(&self) -> Result<Option<CaRecord>> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT cert_pem, key_pem FROM ca WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(db("read the CA"))?;
        Ok(row.map(|(cert_pem, key_pem)| CaRecord { cert_pem, key_pem }))
    }

    async fn init_ca(
        &self,
        ca: &CaRecord,
        action: &str,
        target: &str,
        actor: &Actor,
    ) -> Result<(CaRecord, bool)> {
        let mut tx = self.begin("begin storing the CA").await?;
        // A racing insert of the row makes this one wait for its commit, then
        // do nothing; the read after it (READ COMMITTED) sees the winner's.
        let stored = sqlx::query(
            "INSERT INTO ca (id, cert_pem, key_pem, created_at) VALUES (1, $1, $2, $3)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ca.cert_pem)
        .bind(&ca.key_pem)
        .bind(now_micros())
        .execute(&mut *tx)
        .await
        .map_err(db("store the CA"))?
        .rows_affected()
            == 1;
        let (cert_pem, key_pem): (String, String) =
            sqlx::query_as("SELECT cert_pem, key_pem FROM ca WHERE id = 1")
                .fetch_one(&mut *tx)
                .await
                .map_err(db("read the CA"))?;
        if stored {
            append_audit(&mut tx, actor, action, target, "", "ok").await?;
        }
        tx.commit().await.map_err(db("commit the CA"))?;
        Ok((CaRecord { cert_pem, key_pem }, stored))
    }

    async fn job_lease(&self, job: &str) -> Result<Option<JobLease>> {
        // A connection of its own, out of the pool: the lock is the
        // session's, so it is held as long as this connection lives, and
        // released by PostgreSQL when the connection ends, however it ends.
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db(format!("connect to the {} for a job lock", self.place)))?
            .detach();
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(LOCK_SPACE + JOB_LOCK_KIND)
            .bind(job)
            .fetch_one(&mut conn)
            .await
            .map_err(db(format!("take the lock of job {job}")))?;
        if !taken {
            let _ = conn.close().await;
            return Ok(None);
        }
        Ok(Some(JobLease::new(SessionLock {
            conn,
            job: job.to_string(),
        })))
    }

    async fn export_rows(
        &self,
        tables: &[&'static tables::Table],
        rows: tokio::sync::mpsc::Sender<(usize, tables::Row)>,
    ) -> Result<()> {
        self.export_rows_in_postgres(tables, rows).await
    }

    async fn restore(&self) -> Result<Box<dyn tables::Restore + '_>> {
        self.restore_in_postgres().await
    }

    // The web dashboard.

    async fn create_sign_in_link(&self, link: NewSignInLink, actor: &Actor) -> Result<()> {
        self.create_sign_in_link_in_postgres(link, actor).await
    }

    async fn delete_expired_sign_ins(&self, before: Micros) -> Result<u64> {
        self.delete_expired_sign_ins_in_postgres(before).await
    }

    async fn sign_in(
        &self,
        link_sha256: &str,
        session: NewSession,
        now: Micros,
        peer: &str,
    ) -> Result<std::result::Result<Session, LinkRefusal>> {
        self.sign_in_in_postgres(link_sha256, session, now, peer)
            .await
    }

    async fn session(&self, secret_sha256: &str, now: Micros) -> Result<Option<Session>> {
        self.session_in_postgres(secret_sha256, now).await
    }

    async fn sign_out(&self, secret_sha256: &str, actor: &Actor) -> Result<bool> {
        self.sign_out_in_postgres(secret_sha256, actor).await
    }

    async fn state_counts(&self, now: Micros) -> Result<StateCounts> {
        self.state_counts_in_postgres(now).await
    }

    async fn runs_by_hour(&self, since: Micros) -> Result<Vec<HourOfRuns>> {
        self.runs_by_hour_in_postgres(since).await
    }

    async fn find_nodes(
        &self,
        filter: &NodeFilter,
        now: Micros,
        after: &str,
        limit: u32,
    ) -> Result<Vec<FleetNode>> {
        self.find_nodes_in_postgres(filter, now, after, limit).await
    }

    async fn renew_node(
        &self,
        name: &str,
        fingerprint: &str,
        new_fingerprint: &str,
        valid_until: Micros,
        actor: &Actor,
    ) -> Result<std::result::Result<Assignment, NodeStanding>> {
        self.renew_node_in_postgres(name, fingerprint, new_fingerprint, valid_until, actor)
            .await
    }

    async fn forget_previous_certificate(&self, name: &str, fingerprint: &str) -> Result<()> {
        self.forget_previous_certificate_in_postgres(name, fingerprint)
            .await
    }
}

/// The kind (after [`LOCK_SPACE`]) of the session-level locks of background
/// jobs, apart from the transaction-scoped ones of [`Lock`].
const JOB_LOCK_KIND: i32 = 5;

/// A job's lock, held by the session of `conn`.
struct SessionLock {
    conn: PgConnection,
    job: String,
}

#[async_trait::async_trait]
impl HeldJob for SessionLock {
    async fn check(&mut self) -> Result<()> {
        // The lock lives as long as the session: a connection that still
        // answers still holds it.
        match tokio::time::timeout(CONNECT_TIMEOUT, self.conn.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(db(format!("keep the lock of job {}", self.job))(e)),
            Err(_) => Err(StoreError::Backend {
                op: format!("keep the lock of job {}", self.job),
                source: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()).into(),
            }),
        }
    }
}

#[cfg(test)]
#[path = "../../tests/common/postgres.rs"]
pub(crate) mod cluster;

#[cfg(test)]
mod tests {
    use super::cluster::PgCluster;
    use super::*;

    #[test]
    fn without_postgresql_a_test_fails_saying_what_to_install() {
        let empty = tempfile::tempdir().unwrap();
        for given in [None, Some(empty.path().as_os_str().to_owned())] {
            let err = super::cluster::find_binaries(given, empty.path()).unwrap_err();
            assert!(
                err.contains("run scripts/setup.sh") && err.contains("apt-get install postgresql"),
                "{err}"
            );
        }
        let debian = empty.path().join("15/bin");
        std::fs::create_dir_all(&debian).unwrap();
        std::fs::write(debian.join("initdb"), "").unwrap();
        assert_eq!(
            super::cluster::find_binaries(None, empty.path()),
            Ok(debian)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_store_suite() {
        let cluster = PgCluster::start();
        for scheme in ["postgres://", "postgresql://"] {
            let url = cluster.database().replace("postgres://", scheme);
            let store = crate::store::open(&url).await.unwrap();
            crate::store::tests::suite(store).await;
        }
    }

    fn someone() -> Actor {
        Actor {
            name: "a".into(),
            role: "admin".into(),
            peer: "p".into(),
        }
    }

    fn new(role: &str, digest: &str) -> NewVersion {
        NewVersion {
            role: role.into(),
            digest: digest.into(),
            message: String::new(),
            bundle: digest.as_bytes().to_vec(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_is_told_of_what_another_committed_and_of_nothing_undone() {
        let cluster = PgCluster::start();
        let url = cluster.database();
        let (a, b) = (
            PgStore::open(&url).await.unwrap(),
            PgStore::open(&url).await.unwrap(),
        );
        let mut feed = a.changes().unwrap();
        let within = Duration::from_secs(20);
        let next = async |feed: &mut tokio::sync::mpsc::Receiver<Change>| {
            tokio::time::timeout(within, feed.recv())
                .await
                .expect("a change within 20 s")
                .expect("the feed is open")
        };
        // Listening first, then told to read everything again.
        assert_eq!(next(&mut feed).await, Change::Resync);
        b.push(new("web", "d1"), &someone()).await.unwrap();
        // Undone: never told.
        assert!(matches!(
            b.promote("web", "stable", 9, &someone()).await,
            Err(StoreError::NotFound(_))
        ));
        b.promote("web", "stable", 1, &someone()).await.unwrap();
        let moved = next(&mut feed).await;
        assert_eq!(
            moved,
            Change::ChannelMoved {
                role: "web".into(),
                channel: "stable".into()
            }
        );
        // Told after the commit: the move is there to read.
        assert_eq!(
            a.channel_version("web", "stable")
                .await
                .unwrap()
                .unwrap()
                .version,
            1
        );
        b.rollback("web", "stable", &someone()).await.unwrap_err();
        b.push(new("web", "d2"), &someone()).await.unwrap();
        b.promote("web", "stable", 2, &someone()).await.unwrap();
        b.rollback("web", "stable", &someone()).await.unwrap();
        for _ in 0..2 {
            assert!(matches!(next(&mut feed).await, Change::ChannelMoved { .. }));
        }
        let token = NewToken {
            id: "t".into(),
            secret_sha256: "h".into(),
            assignment: Assignment {
                role: "web".into(),
                channel: "stable".into(),
            },
            expires_at: now_micros() + 3_600_000_000,
            uses_allowed: 1,
        };
        b.create_token(token, &someone()).await.unwrap();
        let enrollment = Enrollment {
            token_id: "t".into(),
            secret_sha256: "h".into(),
            name: "web-1".into(),
            fingerprint: "fp".into(),
            facts_json: None,
        };
        b.enroll(enrollment, &someone()).await.unwrap().unwrap();
        b.revoke_node("web-1", &someone()).await.unwrap();
        assert_eq!(
            next(&mut feed).await,
            Change::NodeRevoked {
                name: "web-1".into()
            }
        );
        // Reports stored: told once per batch that stored any.
        let report = |run: &str| crate::store::tests::plain_report("web-1", run, 1, now_micros());
        b.store_reports(&[report("r1"), report("r2")])
            .await
            .unwrap();
        assert_eq!(next(&mut feed).await, Change::ReportsStored);
        b.store_reports(&[report("r1")]).await.unwrap();
        assert!(feed.try_recv().is_err(), "nothing else was told");

        // Its connection cut: it connects again, and says to read again.
        let cut: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(changes::APPLICATION_NAME)
        .fetch_all(&b.pool)
        .await
        .unwrap();
        assert_eq!(cut, [true]);
        assert_eq!(next(&mut feed).await, Change::Resync);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listening_connection_gone_silent_is_found_out_by_its_probe() {
        let cluster = PgCluster::start();
        let store = PgStore::open(&cluster.database()).await.unwrap();
        let mut feed = store.changes().unwrap();
        assert_eq!(feed.recv().await, Some(Change::Resync));
        // Its server process stopped: the connection stays open, and says nothing.
        let pid: i32 =
            sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
                .bind(changes::APPLICATION_NAME)
                .fetch_one(&store.pool)
                .await
                .unwrap();
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        let silent = std::time::Instant::now();
        // Found out after a quiet spell and an unanswered probe; connected again.
        let next = tokio::time::timeout(Duration::from_secs(90), feed.recv()).await;
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
        assert_eq!(next.expect("a resync within 90 s"), Some(Change::Resync));
        eprintln!("a silent connection replaced after {:?}", silent.elapsed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers_sharing_a_database_number_versions_and_chain_the_log_as_one() {
        // Two stores on one database are two servers: each has its own pool,
        // so only the database's locks keep them in order.
        let cluster = PgCluster::start();
        let url = cluster.database();
        // Whatever the database's default, transactions are READ COMMITTED,
        // which the locking is made for.
        let mut admin = PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "ALTER DATABASE cairn_test_0 SET default_transaction_isolation = serializable",
        )
        .execute(&mut admin)
        .await
        .unwrap();
        let (a, b) = (
            Arc::new(PgStore::open(&url).await.unwrap()),
            Arc::new(PgStore::open(&url).await.unwrap()),
        );
        let settings: (String, String, String) = sqlx::query_as(
            "SELECT current_setting('transaction_isolation'), current_setting('statement_timeout'),
                 current_setting('idle_in_transaction_session_timeout')",
        )
        .fetch_one(&a.pool)
        .await
        .unwrap();
        assert_eq!(
            settings,
            ("read committed".into(), "1min".into(), "1min".into())
        );
        let mut tasks = Vec::new();
        for i in 0..24 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let who = someone();
                store.audit(&who, "between", "", "", "ok").await.unwrap();
                store
                    .push(new("shared", &format!("d{i}")), &who)
                    .await
                    .unwrap()
                    .version
                    .version
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        got.sort();
        assert_eq!(got, (1..=24).collect::<Vec<u64>>());
        // A write that rolls back leaves nothing the next entry chains to.
        {
            let mut tx = a.begin("test").await.unwrap();
            append_audit(&mut tx, &someone(), "gone", "", "", "ok")
                .await
                .unwrap();
            tx.rollback().await.unwrap();
        }
        b.audit(&someone(), "last", "", "", "ok").await.unwrap();
        let log = a
            .audit_log(AuditQuery {
                since: None,
                from: AuditCursor::After(0),
                limit: 1000,
            })
            .await
            .unwrap();
        assert_eq!(log.len(), 24 * 2 + 1);
        assert_eq!(audit::first_break(&log), None);
        let ids: Vec<u64> = log.iter().map(|e| e.id).collect();
        assert_eq!(ids, (1..=log.len() as u64).collect::<Vec<_>>());
        assert!(!log.iter().any(|e| e.action == "gone"));

        // A change made through one counts at the other's next call.
        a.add_operator("ann", "admin", "f1", &someone())
            .await
            .unwrap();
        assert_eq!(b.standing("ann", "f1").await.unwrap(), Standing::Current);
        a.revoke_operator("ann", &someone()).await.unwrap();
        assert_eq!(b.standing("ann", "f1").await.unwrap(), Standing::Revoked);
    }

    #[tokio::test]
    async fn a_restarted_database_is_used_again_without_reopening() {
        let cluster = PgCluster::start();
        let store = PgStore::open(&cluster.database()).await.unwrap();
        store.push(new("web", "d1"), &someone()).await.unwrap();
        cluster.stop();
        let err = store.ping().await.unwrap_err().to_string();
        assert!(err.contains("could not ping"), "{err}");
        cluster.restart();
        // The pool drops the connections the restart broke and opens new ones.
        store.ping().await.unwrap();
        let (meta, _) = store.get("web", None).await.unwrap();
        assert_eq!(meta.digest, "d1");
    }

    #[tokio::test]
    async fn the_audit_log_is_append_only() {
        let cluster = PgCluster::start();
        let store = PgStore::open(&cluster.database()).await.unwrap();
        store.audit(&someone(), "x", "y", "", "ok").await.unwrap();
        for refused in [
            "DELETE FROM audit_log",
            "UPDATE audit_log SET actor = 'b'",
            "UPDATE audit_log SET hash = 'b'",
            "TRUNCATE audit_log",
        ] {
            let err = sqlx::query(refused).execute(&store.pool).await.unwrap_err();
            assert!(err.to_string().contains("append-only"), "{refused}: {err}");
        }
        let err = sqlx::query(
            "INSERT INTO audit_log (id, at, actor, actor_role, action, target, detail, peer, outcome)
             VALUES (100, 0, '', '', '', '', '', '', '')",
        )
        .execute(&store.pool)
        .await
        .unwrap_err();
        assert!(err.to_string().contains("chain hash"), "{err}");
        let err = sqlx::query("UPDATE role_versions SET digest = 'x'")
            .execute(&store.pool)
            .await;
        // No version yet: an update touching no row runs no trigger.
        assert!(err.is_ok());
        store.push(new("web", "d1"), &someone()).await.unwrap();
        let err = sqlx::query("UPDATE role_versions SET digest = 'x'")
            .execute(&store.pool)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("immutable"), "{err}");
    }

    #[tokio::test]
    async fn a_database_without_its_protections_is_refused() {
        let cluster = PgCluster::start();
        let url = cluster.database();
        let store = PgStore::open(&url).await.unwrap();
        let tamper = async |sql: &str| {
            sqlx::raw_sql(sql).execute(&store.pool).await.unwrap();
        };
        let refusal = async || PgStore::open(&url).await.err().unwrap().to_string();
        tamper("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_delete").await;
        let err = refusal().await;
        assert!(
            err.contains("missing trigger audit_log_no_delete (refuses removal of audit entries)")
                && err.contains("help: ")
                && err.contains(&format!(
                    "database cairn_test_0 at 127.0.0.1:{}",
                    cluster.port()
                )),
            "{err}"
        );
        tamper("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_delete").await;
        PgStore::open(&url).await.unwrap();
        // Triggers of the right names that refuse nothing are no better.
        tamper(
            "CREATE OR REPLACE FUNCTION cairn_refuse() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RETURN NULL; END; $$",
        )
        .await;
        let err = refusal().await;
        assert!(
            err.contains("trigger audit_log_hash_required, audit_log_no_update, audit_log_no_delete no longer refuses what it should"),
            "{err}"
        );
        tamper("DROP TRIGGER audit_log_no_truncate ON audit_log").await;
        assert!(
            refusal()
                .await
                .contains("missing trigger audit_log_no_truncate")
        );
        tamper("ALTER TABLE audit_log DROP COLUMN hash CASCADE").await;
        let err = refusal().await;
        assert!(
            err.contains("column `hash` (the chain) is missing"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_database_that_cannot_be_reached_is_named_without_its_password() {
        let cluster = PgCluster::start();
        let port = cluster.port();
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        for (url, expect) in [
            (
                format!("postgres://cairn:hunter2@127.0.0.1:{closed}/cairn"),
                format!("could not connect to the database cairn at 127.0.0.1:{closed}"),
            ),
            (
                format!("postgres://postgres:hunter2@127.0.0.1:{port}/nope"),
                "database \"nope\" does not exist".to_string(),
            ),
            // Refused rather than sent in the clear.
            (
                format!("postgres://postgres:hunter2@127.0.0.1:{port}/postgres?sslmode=require"),
                "server does not support TLS".to_string(),
            ),
        ] {
            let err = match crate::store::open(&url).await {
                Ok(_) => panic!("{expect}: opened"),
                Err(e) => {
                    let mut text = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        text.push_str(&format!(": {s}"));
                        source = s.source();
                    }
                    text
                }
            };
            assert!(err.contains(&expect), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    /// The certificate of a CA named `ca_name`, and a server certificate it
    /// signed for `names` with its key (PEM).
    fn tls_for(ca_name: &str, names: &[&str]) -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (ca_pem, cert.pem(), key.serialize_pem())
    }

    #[tokio::test]
    async fn a_database_over_tls_is_used_only_with_the_certificate_asked_for() {
        let (ca, cert, key) = tls_for("database CA", &["localhost"]);
        let cluster = PgCluster::start_with_tls(&cert, &key);
        let dir = tempfile::tempdir().unwrap();
        let (ca_file, other_file) = (dir.path().join("ca.crt"), dir.path().join("other.crt"));
        std::fs::write(&ca_file, &ca).unwrap();
        std::fs::write(&other_file, tls_for("another CA", &["localhost"]).0).unwrap();
        let database = cluster.database();
        let name = database.rsplit('/').next().unwrap();
        let port = cluster.port();
        let url =
            |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/{name}?{query}");
        let encrypted = async |store: &PgStore| -> bool {
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&store.pool)
                .await
                .unwrap()
        };
        // Verified: the certificate is the CA's, for the name connected to;
        // with several addresses too.
        let verified = format!("sslmode=verify-full&sslrootcert={}", ca_file.display());
        for url in [
            url("localhost", &verified),
            url("localhost", &verified).replacen(
                &format!("localhost:{port}"),
                &format!("localhost:{port},localhost:{port}"),
                1,
            ),
        ] {
            let store = PgStore::open(&url).await.unwrap();
            assert!(encrypted(&store).await, "{url}");
            store.push(new("web", "d1"), &someone()).await.unwrap();
        }
        // Encrypted, not verified (libpq's `require`).
        let store = PgStore::open(&url("127.0.0.1", "sslmode=require"))
            .await
            .unwrap();
        assert!(encrypted(&store).await);
        // Refused: another CA, or a name the certificate is not for.
        for (url, why) in [
            (
                url(
                    "localhost",
                    &format!("sslmode=verify-full&sslrootcert={}", other_file.display()),
                ),
                "UnknownIssuer",
            ),
            (
                url("127.0.0.1", &verified),
                "certificate not valid for name \"127.0.0.1\"",
            ),
        ] {
            let err = match PgStore::open(&url).await {
                Ok(_) => panic!("{url}: opened"),
                Err(e) => format!("{:#}", anyhow::Error::from(e)),
            };
            assert!(
                err.contains(&format!("could not connect to the database {name}"))
                    && err.contains(why),
                "{url}: {err}"
            );
        }
    }

    fn report(node: &str, run_id: &str, finished_at: Micros, received_at: Micros) -> NewReport {
        crate::store::tests::plain_report(node, run_id, finished_at, received_at)
    }

    /// (run id of the newest run, its finished_at, seen_at) of `node`.
    async fn last_run(store: &PgStore, node: &str) -> (String, i64, i64) {
        sqlx::query_as(
            "SELECT r.run_id, n.finished_at, n.seen_at
             FROM node_runs n JOIN reports r ON r.id = n.report_id WHERE n.node = $1",
        )
        .bind(node)
        .fetch_one(&store.pool)
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_batch_is_stored_as_if_its_reports_came_one_by_one() {
        let cluster = PgCluster::start();
        let store = PgStore::open(&cluster.database()).await.unwrap();
        store
            .store_reports(&[report("a", "a1", 100, 1000)])
            .await
            .unwrap();
        let created = store
            .store_reports(&[
                report("a", "a3", 300, 1001),
                // The same run twice in one batch, and once from an earlier batch.
                report("a", "a3", 300, 1002),
                report("a", "a1", 100, 1003),
                // Spooled and delivered late: older than the newest run.
                report("a", "a2", 200, 1004),
                report("b", "b1", 50, 1005),
                // Two runs of a node new to the store, the later first.
                report("c", "c2", 20, 1006),
                report("c", "c1", 10, 1007),
            ])
            .await
            .unwrap();
        assert_eq!(created, [true, false, false, true, true, true, true]);
        // The newest run wins; being heard from counts whatever the run.
        assert_eq!(last_run(&store, "a").await, ("a3".into(), 300, 1004));
        assert_eq!(last_run(&store, "b").await, ("b1".into(), 50, 1005));
        assert_eq!(last_run(&store, "c").await, ("c2".into(), 20, 1007));
        // More reports than one statement takes.
        let many: Vec<NewReport> = (0..reports::ROWS_PER_STATEMENT as i64 * 2 + 3)
            .map(|i| report(&format!("m{}", i % 7), &format!("m{i}"), i, 2000 + i))
            .collect();
        let created = store.store_reports(&many).await.unwrap();
        assert!(created.iter().all(|c| *c));
        let last = many.len() as i64 - 1;
        let node = format!("m{}", last % 7);
        assert_eq!(
            last_run(&store, &node).await,
            (format!("m{last}"), last, 2000 + last)
        );
    }

    fn ca(n: usize) -> CaRecord {
        CaRecord {
            cert_pem: format!("cert {n}"),
            key_pem: format!("key {n}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers_racing_to_store_their_ca_end_with_one() {
        let cluster = PgCluster::start();
        let url = cluster.database();
        let mut stores = Vec::new();
        for _ in 0..4 {
            stores.push(Arc::new(PgStore::open(&url).await.unwrap()));
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(stores.len()));
        let tasks: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, store)| {
                let (store, barrier) = (store.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .init_ca(&ca(i), "ca create", &format!("pin {i}"), &someone())
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        let winner = got[0].0.clone();
        assert!(got.iter().all(|(c, _)| *c == winner), "one CA for all");
        assert_eq!(got.iter().filter(|(_, stored)| *stored).count(), 1);
        assert_eq!(stores[3].ca().await.unwrap(), Some(winner));
        let log = stores[0]
            .audit_log(AuditQuery {
                since: None,
                from: AuditCursor::After(0),
                limit: 100,
            })
            .await
            .unwrap();
        assert_eq!(log.iter().filter(|e| e.action == "ca create").count(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_server_at_a_time_holds_a_job_until_its_session_ends() {
        let cluster = PgCluster::start();
        let url = cluster.database();
        let (a, b) = (
            PgStore::open(&url).await.unwrap(),
            PgStore::open(&url).await.unwrap(),
        );
        let mut held = a.job_lease("jobs").await.unwrap().expect("free at first");
        assert!(b.job_lease("jobs").await.unwrap().is_none());
        assert!(
            a.job_lease("jobs").await.unwrap().is_none(),
            "another connection of the same server does not hold it either"
        );
        assert!(b.job_lease("other job").await.unwrap().is_some());
        held.check().await.unwrap();
        // Its holder gone, another takes it.
        drop(held);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut held = loop {
            if let Some(lease) = b.job_lease("jobs").await.unwrap() {
                break lease;
            }
            assert!(std::time::Instant::now() < deadline, "never released");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // The database restarted: the session, and so the lease, is lost,
        // and the holder learns it.
        cluster.stop();
        cluster.restart();
        assert!(held.check().await.is_err());
        drop(held);
        assert!(a.job_lease("jobs").await.unwrap().is_some());
    }

    async fn insert_migration(url: &str, version: i64, description: &str) {
        let mut conn = PgConnection::connect(url).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES ($1, $2, TRUE, '\\x00', 0)",
        )
        .bind(version)
        .bind(description)
        .execute(&mut conn)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_schema_newer_than_known_is_refused_and_an_older_one_migrated_only_when_asked() {
        let cluster = PgCluster::start();
        let url = cluster.database();
        let (_, applied) = PgStore::open_with(&url, Pending::Refuse).await.unwrap();
        let known = schema::known(&sqlx::migrate!("./migrations/postgres"));
        assert_eq!(applied, known, "a new database is migrated");
        let newest = known.last().unwrap().version;

        // Migrated by a newer release.
        insert_migration(&url, 9999, "from the future").await;
        for pending in [Pending::Refuse, Pending::Apply] {
            let err = PgStore::open_with(&url, pending)
                .await
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains("is at version 9999")
                    && err.contains("9999 from the future")
                    && err.contains(&format!("knows versions up to {newest}")),
                "{err}"
            );
        }

        // Migrated by an older release: all but the last migration applied.
        let url = cluster.database();
        let mut older = sqlx::migrate!("./migrations/postgres");
        older.migrations = older.migrations[..older.migrations.len() - 1]
            .to_vec()
            .into();
        let mut conn = PgConnection::connect(&url).await.unwrap();
        older.run(&mut conn).await.unwrap();
        let last = known.last().unwrap();
        let err = PgStore::open(&url).await.err().unwrap().to_string();
        assert!(
            err.contains(&format!("needs 1 more migration(s): {last}"))
                && err.contains("cairn-server migrate"),
            "{err}"
        );
        let (_, applied) = PgStore::open_with(&url, Pending::Apply).await.unwrap();
        assert_eq!(applied, std::slice::from_ref(last));
        let (_, applied) = PgStore::open_with(&url, Pending::Refuse).await.unwrap();
        assert_eq!(applied, []);
    }
}
