//! The embedded backend: SQLite through sqlx, in the server's data directory.
//!
//! Durability: WAL journal with `synchronous = FULL`, so a transaction that
//! committed (and so was acknowledged) survives the process being killed at any
//! moment, and the machine losing power. Writers are serialized in-process by
//! a mutex, so version numbers are assigned one push at a time, and across
//! processes (`cairn-server operator add` next to a running server) by taking
//! the write lock when the transaction begins (`BEGIN IMMEDIATE`), so that
//! each audit entry is chained to the entry that is really the last one.
//!
//! Files: the database and its `-wal` and `-shm` files are mode 0600 whatever
//! the umask (SQLite gives the latter two the database file's mode).
//!
//! Opening refuses a database whose audit log lost its protection: see
//! [`PROTECTIONS`].
//!
//! Every call asks whether the caller's certificate still counts
//! ([`Store::standing`], [`Store::node_standing`]); answers are kept in
//! memory and dropped as soon as the operators or nodes table changes, which
//! [`OperatorChanges`] tells with a read of a small file instead of a query.
//!
//! Join tokens and nodes: [`enroll`].

use std::collections::HashMap;
use std::fs::{File, OpenOptions, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use tokio::sync::Mutex;

use super::rows::*;
use super::*;

mod archive;
mod dashboard;
mod enroll;
mod reports;

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
    /// The database file, for messages.
    path: PathBuf,
    /// Held by every write transaction; dropped at the end of it. Bounds the
    /// writers to one, which is all SQLite allows anyway, without BUSY retries.
    write: Mutex<()>,
    changes: OperatorChanges,
    standings: std::sync::Mutex<Standings<Standing>>,
    node_standings: std::sync::Mutex<Standings<NodeStanding>>,
    head: ChainHead,
}

/// At most this many certificates' standings are kept; past it, all are dropped.
const MAX_STANDINGS: usize = 4096;
/// Kept standings are dropped at least this often, so that a change whose
/// count was never written (its process died between commit and count) is
/// seen within this time.
const STANDINGS_TTL: Duration = Duration::from_secs(60);

/// The standings (of operators' or nodes' certificates) read while the
/// credential tables were at `generation`.
struct Standings<V> {
    generation: u64,
    since: Instant,
    /// By operator or node name, then certificate fingerprint (looked up
    /// without allocating a key: this is on every call).
    known: HashMap<String, HashMap<String, V>>,
    entries: usize,
}

impl<V: Clone> Standings<V> {
    fn new() -> std::sync::Mutex<Self> {
        std::sync::Mutex::new(Standings {
            generation: 0,
            since: Instant::now(),
            known: HashMap::new(),
            entries: 0,
        })
    }

    fn get(&self, generation: u64, name: &str, fingerprint: &str) -> Option<V> {
        if self.generation != generation || self.since.elapsed() >= STANDINGS_TTL {
            return None;
        }
        self.known.get(name)?.get(fingerprint).cloned()
    }

    fn keep(&mut self, generation: u64, name: &str, fingerprint: &str, standing: V) {
        if self.generation != generation
            || self.since.elapsed() >= STANDINGS_TTL
            || self.entries >= MAX_STANDINGS
        {
            self.generation = generation;
            self.since = Instant::now();
            self.known.clear();
            self.entries = 0;
        }
        let added = self
            .known
            .entry(name.to_string())
            .or_default()
            .insert(fingerprint.to_string(), standing)
            .is_none();
        self.entries += usize::from(added);
    }
}

/// A count of the changes to the operators and nodes tables (whatever makes a
/// certificate count or stop counting), in a file next to the database
/// (`cairn.db-operators`, named when it counted operators only), shared by
/// every process that opens it:
/// whoever changes the table counts the change after committing it. Reading it
/// is one small file read, which lets a server keep standings in memory and
/// still see a revocation made by `cairn-server operator revoke` at once.
struct OperatorChanges {
    path: PathBuf,
    /// The file, kept open so that a call costs one `pread`, not an open, a
    /// read and a close; opened again once it is [`STANDINGS_TTL`] old, so a
    /// file replaced instead of written counts within that time, as a change
    /// never counted does.
    held: std::sync::Mutex<Option<(File, Instant)>>,
}

impl OperatorChanges {
    fn new(db: &Path) -> Self {
        let mut name = db.as_os_str().to_owned();
        name.push("-operators");
        OperatorChanges {
            path: PathBuf::from(name),
            held: std::sync::Mutex::new(None),
        }
    }

    fn open(&self, create: bool) -> std::io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(create)
            .create(create)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&self.path)
    }

    /// The count; 0 before the first change. Any change of it, even back to 0
    /// (the file removed), drops what was kept.
    fn read(&self) -> Result<u64> {
        let mut held = self.held.lock().expect("count file lock");
        if held
            .as_ref()
            .is_none_or(|(_, opened)| opened.elapsed() >= STANDINGS_TTL)
        {
            *held = match self.open(false) {
                Ok(file) => Some((file, Instant::now())),
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(db(format!("open {}", self.path.display()))(e)),
            };
        }
        let Some((file, _)) = held.as_ref() else {
            return Ok(0);
        };
        let mut bytes = [0; 8];
        let n = file
            .read_at(&mut bytes, 0)
            .map_err(db(format!("read {}", self.path.display())))?;
        if n < bytes.len() {
            return Ok(0);
        }
        Ok(u64::from_le_bytes(bytes))
    }

    /// Counts one change; called after the change committed.
    fn count(&self) -> Result<()> {
        let file = self
            .open(true)
            .map_err(db(format!("open {}", self.path.display())))?;
        let file = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| db(format!("lock {}", self.path.display()))(e))?;
        let mut bytes = [0; 8];
        let n = file
            .read_at(&mut bytes, 0)
            .map_err(db(format!("read {}", self.path.display())))?;
        let next = if n < bytes.len() {
            1
        } else {
            u64::from_le_bytes(bytes).wrapping_add(1)
        };
        file.write_all_at(&next.to_le_bytes(), 0)
            .map_err(db(format!("write {}", self.path.display())))
    }
}

/// The triggers that keep the audit log append-only and chained (and versions
/// immutable), each with what it guards; the server refuses to start without
/// any of them (see `server/migrations/sqlite/` for their definitions).
pub const PROTECTIONS: [(&str, &str); 4] = [
    ("audit_log_no_update", "refuses changes to audit entries"),
    ("audit_log_no_delete", "refuses removal of audit entries"),
    (
        "audit_log_hash_required",
        "refuses audit entries without their chain hash",
    ),
    (
        "role_versions_immutable",
        "refuses changes to stored versions",
    ),
];

/// Creates the database file with mode 0600 if it does not exist, and takes
/// group and other permissions away from it and its `-wal` and `-shm` files if
/// it does: SQLite would create it 0644 and give the others the same mode.
fn restrict_files(path: &Path) -> Result<()> {
    let restrict = |file: File, path: &Path| {
        file.set_permissions(Permissions::from_mode(0o600))
            .map_err(db(format!("make {} private (mode 0600)", path.display())))
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(db(format!("create {}", path.display())))?;
    restrict(file, path)?;
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let side = PathBuf::from(name);
        match OpenOptions::new().append(true).open(&side) {
            Ok(file) => restrict(file, &side)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(db(format!("open {}", side.display()))(e)),
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, migrates it, chains
    /// audit entries stored before the chain existed, and checks that the
    /// audit log is still protected.
    pub async fn open(path: &Path) -> Result<Self> {
        Ok(Self::open_with(path, Pending::Apply).await?.0)
    }

    /// [`SqliteStore::open`], doing `pending` with migrations this build has
    /// and the database has not; returns the store and the migrations applied.
    pub async fn open_with(path: &Path, pending: Pending) -> Result<(Self, Vec<Migration>)> {
        restrict_files(path)?;
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
            // A connection is a file this process holds open, which nothing
            // breaks between uses: checking it before each use (sqlx's default)
            // only costs a round trip to its thread, on every call.
            .test_before_acquire(false)
            .connect_with(opts)
            .await
            .map_err(db(format!("open {}", path.display())))?;
        let migrator = sqlx::migrate!("./migrations/sqlite");
        let place = format!("database {}", path.display());
        let applied = applied_migrations(&pool).await?;
        let missing = schema::pending(&schema::known(&migrator), &applied, &place)?;
        if !missing.is_empty() && pending == Pending::Refuse && !applied.is_empty() {
            return Err(schema::out_of_date(&place, &applied, &missing));
        }
        // Run even with nothing missing: it refuses a migration that failed
        // half-way or whose file changed since it was applied.
        migrator
            .run(&pool)
            .await
            .map_err(db("apply database migrations"))?;
        let store = SqliteStore {
            pool,
            path: path.to_path_buf(),
            write: Mutex::new(()),
            changes: OperatorChanges::new(path),
            standings: Standings::new(),
            node_standings: Standings::new(),
            head: ChainHead::default(),
        };
        store.check_protections().await?;
        store.chain_unchained().await?;
        Ok((store, missing))
    }

    /// A write transaction, holding SQLite's write lock from its start.
    async fn begin(&self, op: &'static str) -> Result<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db(op))
    }

    /// The standing kept in `cache`, or the one `read` reads (then kept).
    async fn kept<V: Clone>(
        &self,
        cache: &std::sync::Mutex<Standings<V>>,
        name: &str,
        fingerprint: &str,
        read: impl Future<Output = Result<V>>,
    ) -> Result<V> {
        let before = self.changes.read()?;
        if let Some(standing) = cache
            .lock()
            .expect("standings lock")
            .get(before, name, fingerprint)
        {
            return Ok(standing);
        }
        let standing = read.await?;
        // Kept only if no change was counted while it was read: a change that
        // committed but is not counted yet is counted before its command
        // returns, and drops this at the next call.
        if self.changes.read()? == before {
            cache
                .lock()
                .expect("standings lock")
                .keep(before, name, fingerprint, standing.clone());
        }
        Ok(standing)
    }

    /// What the operators table says of this certificate.
    async fn read_standing(&self, name: &str, fingerprint: &str) -> Result<Standing> {
        let row: Option<(Option<String>, Option<i64>)> =
            sqlx::query_as("SELECT fingerprint, revoked_at FROM operators WHERE name = ?")
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

    fn damaged(&self, what: String) -> StoreError {
        StoreError::Damaged(format!(
            "the audit log in {} is no longer protected: {what}\n  \
             help: the database was changed outside cairn-server. Restore it from a backup, \
             or recreate what is missing from server/migrations/sqlite/; then check the log \
             with `cairn audit verify`",
            self.path.display()
        ))
    }

    /// Refuses a database whose audit log lost its chain column or one of
    /// [`PROTECTIONS`], or whose triggers no longer refuse what they should.
    async fn check_protections(&self) -> Result<()> {
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info('audit_log')")
                .fetch_all(&self.pool)
                .await
                .map_err(db("read the audit log's columns"))?;
        if !columns.iter().any(|c| c == "hash") {
            return Err(self.damaged("its column `hash` (the chain) is missing".into()));
        }
        let triggers: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'trigger'")
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
        // refuses nothing: try what they must refuse, then undo everything.
        let mut tx = self.begin("begin audit log check").await?;
        let refused = |r: std::result::Result<sqlx::sqlite::SqliteQueryResult, sqlx::Error>,
                       why: &str| {
            r.is_err_and(|e| e.to_string().contains(why))
        };
        let probe = "INSERT INTO audit_log (at, actor, actor_role, action, target, detail, peer, outcome, hash)
                     VALUES (0, '', '', 'protection check', '', '', '', '', ?)";
        let unhashed = sqlx::query(probe)
            .bind(None::<String>)
            .execute(&mut *tx)
            .await;
        sqlx::query(probe)
            .bind("check")
            .execute(&mut *tx)
            .await
            .map_err(db("check the audit log's triggers"))?;
        let last = "(SELECT MAX(id) FROM audit_log)";
        let changed = sqlx::query(&format!(
            "UPDATE audit_log SET detail = 'x' WHERE id = {last}"
        ))
        .execute(&mut *tx)
        .await;
        let removed = sqlx::query(&format!("DELETE FROM audit_log WHERE id = {last}"))
            .execute(&mut *tx)
            .await;
        tx.rollback()
            .await
            .map_err(db("undo the audit log check"))?;
        let failed: Vec<&str> = [
            (refused(unhashed, "chain hash"), "audit_log_hash_required"),
            (refused(changed, "append-only"), "audit_log_no_update"),
            (refused(removed, "append-only"), "audit_log_no_delete"),
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

    /// Gives entries stored before the chain existed (a prefix of the log)
    /// their hashes, in id order, in one transaction.
    async fn chain_unchained(&self) -> Result<()> {
        const BATCH: i64 = 100;
        let _writer = self.write.lock().await;
        let mut tx = self.begin("begin chaining the audit log").await?;
        let mut after: i64 = 0;
        loop {
            let rows: Vec<AuditRow> = sqlx::query_as(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE hash IS NULL AND id > ? ORDER BY id LIMIT ?"
            ))
            .bind(after)
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("read unchained audit entries"))?;
            let Some(first) = rows.first() else { break };
            let mut previous = hash_before(&mut tx, first.id).await?;
            for row in rows {
                after = row.id;
                let record = AuditRecord::from(row);
                let hash = audit::entry_hash(&previous, &record);
                sqlx::query("UPDATE audit_log SET hash = ? WHERE id = ?")
                    .bind(&hash)
                    .bind(record.id as i64)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("chain an earlier audit entry"))?;
                previous = hash;
            }
        }
        tx.commit()
            .await
            .map_err(db("commit the chained audit entries"))
    }
}

/// The hash of the audit entry before the one with id `id`; empty when there is none.
/// The migrations the database at `pool` applied, oldest first (none for a new one).
async fn applied_migrations(pool: &SqlitePool) -> Result<Vec<Migration>> {
    let exists: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(pool)
    .await
    .map_err(db("read the database's schema version"))?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, description FROM _sqlx_migrations ORDER BY version")
            .fetch_all(pool)
            .await
            .map_err(db("read the database's schema version"))?;
    Ok(rows
        .into_iter()
        .map(|(version, description)| Migration {
            version,
            description,
        })
        .collect())
}

async fn hash_before(tx: &mut Transaction<'static, Sqlite>, id: i64) -> Result<String> {
    let hash: Option<Option<String>> =
        sqlx::query_scalar("SELECT hash FROM audit_log WHERE id < ? ORDER BY id DESC LIMIT 1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db("read the audit entry before"))?;
    Ok(hash.flatten().unwrap_or_default())
}

/// The newest audit entry this process wrote, `(id, hash)`: the next entry is
/// chained to it without reading the log's end back first, provided the log
/// still ends there (checked by the insert itself).
type ChainHead = std::sync::Mutex<Option<(i64, String)>>;

async fn append_audit(
    tx: &mut Transaction<'static, Sqlite>,
    head: &ChainHead,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: &str,
    outcome: &str,
) -> Result<()> {
    let entry = |after: i64, previous: &str| {
        let entry = audit::cut(&AuditRecord {
            id: after as u64 + 1,
            at: now_micros(),
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
        let hash = audit::entry_hash(previous, &entry);
        (entry, hash)
    };
    let guess = head.lock().expect("chain head lock").clone();
    // Chained to the remembered head only if the log still ends with it (another
    // process may have appended, or this process's transaction rolled back).
    if let Some((last_id, previous)) = guess {
        let (new, hash) = entry(last_id, &previous);
        let added = bind_entry(
            sqlx::query(
                "INSERT INTO audit_log (id, at, actor, actor_role, action, target, detail, peer, outcome, hash)
                 SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
                 WHERE (SELECT MAX(id) FROM audit_log) = ?
                   AND (SELECT hash FROM audit_log WHERE id = ?) = ?",
            ),
            &new,
            &hash,
        )
        .bind(last_id)
        .bind(last_id)
        .bind(&previous)
        .execute(&mut **tx)
        .await
        .map_err(db("append audit entry"))?
        .rows_affected();
        if added == 1 {
            *head.lock().expect("chain head lock") = Some((new.id as i64, hash));
            return Ok(());
        }
    }
    // The transaction holds the write lock, so the last entry stays the last.
    let last: Option<(i64, Option<String>)> =
        sqlx::query_as("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await
            .map_err(db("read the last audit entry"))?;
    let (last_id, previous) = last.unwrap_or((0, None));
    let (new, hash) = entry(last_id, previous.as_deref().unwrap_or(""));
    bind_entry(
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor, actor_role, action, target, detail, peer, outcome, hash)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ),
        &new,
        &hash,
    )
    .execute(&mut **tx)
    .await
    .map_err(db("append audit entry"))?;
    *head.lock().expect("chain head lock") = Some((new.id as i64, hash));
    Ok(())
}

fn bind_entry<'q>(
    query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    entry: &'q AuditRecord,
    hash: &'q str,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    query
        .bind(entry.id as i64)
        .bind(entry.at)
        .bind(&entry.actor)
        .bind(&entry.actor_role)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.detail)
        .bind(&entry.peer)
        .bind(&entry.outcome)
        .bind(hash)
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
    head: &ChainHead,
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
    append_audit(tx, head, actor, action, role, &detail, "ok").await?;
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
        // The latest row has the highest number, and the write lock keeps it so.
        let version = latest.as_ref().map_or(0, |l| l.version) + 1;
        if let Some(latest) = latest.filter(|l| l.digest == new.digest) {
            let detail = format!("identical to version {}; nothing stored", latest.version);
            append_audit(&mut tx, &self.head, actor, "push", &new.role, &detail, "ok").await?;
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
        append_audit(
            &mut tx, &self.head, actor, "push", &meta.role, &detail, "ok",
        )
        .await?;
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
        let moved = move_channel(
            &mut tx, &self.head, role, channel, version, "promote", None, actor,
        )
        .await?;
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
        let moved = move_channel(
            &mut tx,
            &self.head,
            role,
            channel,
            to,
            "rollback",
            Some(id),
            actor,
        )
        .await?;
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
        append_audit(&mut tx, &self.head, actor, action, target, detail, outcome).await?;
        tx.commit().await.map_err(db("commit audit entry"))
    }

    async fn audit_log_filtered(
        &self,
        query: AuditQuery,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditRecord>> {
        // Fields are read only up to one character past their bound: entries
        // stored before the bounds existed may be huge, and a page holds many.
        let cut =
            |column: &str, max: usize| format!("substr({column}, 1, {}) AS {column}", max + 1);
        let (name, text) = (audit::MAX_NAME_CHARS, audit::MAX_TEXT_CHARS);
        let columns = format!(
            "id, at, {}, {}, {}, {}, {}, {}, {}, hash",
            cut("actor", name),
            cut("actor_role", name),
            cut("action", name),
            cut("target", name),
            cut("detail", text),
            cut("peer", name),
            cut("outcome", text),
        );
        let mut q = select_audit::<Sqlite>(&columns, &query, filter);
        let rows: Vec<AuditRow> = q
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(db("read audit log"))?;
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            let record = AuditRecord::from(row);
            if !audit::oversized(&record) {
                records.push(record);
                continue;
            }
            // One oversized entry at a time, whole, for its digest.
            let full: AuditRow = sqlx::query_as(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE id = ?"
            ))
            .bind(record.id as i64)
            .fetch_one(&self.pool)
            .await
            .map_err(db("read an oversized audit entry"))?;
            let full = AuditRecord::from(full);
            records.push(AuditRecord {
                full_digest: Some(audit::content_digest(&full)),
                ..audit::cut(&full)
            });
        }
        Ok(records)
    }

    async fn add_operator(
        &self,
        name: &str,
        role: &str,
        fingerprint: &str,
        actor: &Actor,
    ) -> Result<bool> {
        let _writer = self.write.lock().await;
        let mut tx = self.begin("begin operator add").await?;
        let before: Option<Option<i64>> =
            sqlx::query_scalar("SELECT revoked_at FROM operators WHERE name = ?")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("read operator"))?;
        let replaced = matches!(before, Some(None));
        sqlx::query(
            "INSERT INTO operators (name, role, fingerprint, updated_at, revoked_at) VALUES (?, ?, ?, ?, NULL)
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
        append_audit(
            &mut tx,
            &self.head,
            actor,
            "operator add",
            name,
            &detail,
            "ok",
        )
        .await?;
        tx.commit().await.map_err(db("commit operator add"))?;
        self.changes.count()?;
        Ok(replaced)
    }

    async fn revoke_operator(&self, name: &str, actor: &Actor) -> Result<()> {
        let _writer = self.write.lock().await;
        let mut tx = self.begin("begin operator revoke").await?;
        let before: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT role, revoked_at FROM operators WHERE name = ?")
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
        sqlx::query("UPDATE operators SET revoked_at = ?, updated_at = ? WHERE name = ?")
            .bind(now)
            .bind(now)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db("revoke operator"))?;
        let detail = format!("role {role}; every certificate revoked");
        append_audit(
            &mut tx,
            &self.head,
            actor,
            "operator revoke",
            name,
            &detail,
            "ok",
        )
        .await?;
        tx.commit().await.map_err(db("commit operator revoke"))?;
        self.changes.count()
    }

    async fn standing(&self, name: &str, fingerprint: &str) -> Result<Standing> {
        self.kept(
            &self.standings,
            name,
            fingerprint,
            self.read_standing(name, fingerprint),
        )
        .await
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db("ping"))?;
        Ok(())
    }

    // Nodes and join tokens (identity): in `enroll.rs`.

    async fn create_token(&self, token: NewToken, actor: &Actor) -> Result<TokenRecord> {
        self.create_token_(token, actor).await
    }

    async fn tokens(&self, limit: u32) -> Result<Vec<TokenRecord>> {
        self.tokens_(limit).await
    }

    async fn revoke_token(&self, id: &str, actor: &Actor) -> Result<TokenRecord> {
        self.revoke_token_(id, actor).await
    }

    async fn check_token(
        &self,
        id: &str,
        secret_sha256: &str,
    ) -> Result<std::result::Result<Assignment, TokenRefusal>> {
        enroll::check_token(&self.pool, id, secret_sha256).await
    }

    async fn enroll(
        &self,
        enrollment: Enrollment,
        actor: &Actor,
    ) -> Result<std::result::Result<Enrolled, TokenRefusal>> {
        self.enroll_(enrollment, actor).await
    }

    async fn node(&self, name: &str) -> Result<Option<NodeRecord>> {
        enroll::node(&self.pool, name).await
    }

    async fn revoke_node(&self, name: &str, actor: &Actor) -> Result<()> {
        self.revoke_node_(name, actor).await
    }

    async fn node_standing(&self, name: &str, fingerprint: &str) -> Result<NodeStanding> {
        self.kept(
            &self.node_standings,
            name,
            fingerprint,
            enroll::read_node_standing(&self.pool, name, fingerprint),
        )
        .await
    }

    // Reports and fleet (fleet): in `sqlite/reports.rs`.

    async fn store_reports(&self, reports: &[NewReport]) -> Result<Vec<bool>> {
        self.store_reports_in_sqlite(reports).await
    }

    async fn reports(&self, query: &ReportQuery) -> Result<Vec<ReportMeta>> {
        self.reports_in_sqlite(query).await
    }

    async fn report(&self, id: u64) -> Result<(ReportMeta, Vec<u8>)> {
        self.report_in_sqlite(id).await
    }

    async fn delete_reports_before(&self, before: Micros, limit: u32) -> Result<u64> {
        self.delete_reports_in_sqlite(before, limit).await
    }

    async fn channel_version(&self, role: &str, channel: &str) -> Result<Option<VersionMeta>> {
        self.channel_version_in_sqlite(role, channel).await
    }

    async fn fleet_nodes(&self, after: &str, limit: u32) -> Result<Vec<FleetNode>> {
        self.fleet_nodes_in_sqlite(after, limit).await
    }

    async fn fleet_node(&self, name: &str) -> Result<(FleetNode, String)> {
        self.fleet_node_in_sqlite(name).await
    }

    async fn fleet_status(&self, now: Micros) -> Result<Vec<ChannelStatus>> {
        self.fleet_status_in_sqlite(now).await
    }

    /// One server per database: it knows every change, as it made them all.
    fn changes(&self) -> Option<tokio::sync::mpsc::Receiver<Change>> {
        None
    }

    async fn revoked_nodes(&self, names: &[String]) -> Result<Vec<String>> {
        // The names go in as one JSON array, however many there are.
        let names = serde_json::to_string(names).map_err(db("encode node names"))?;
        sqlx::query_scalar(
            "SELECT name FROM nodes
             WHERE revoked_at IS NOT NULL AND name IN (SELECT value FROM json_each(?))
             ORDER BY name",
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
        let _w = self.write.lock().await;
        let mut tx = self.begin("begin storing the CA").await?;
        let stored = sqlx::query(
            "INSERT INTO ca (id, cert_pem, key_pem, created_at) VALUES (1, ?, ?, ?)
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
        if stored {
            append_audit(&mut tx, &self.head, actor, action, target, "", "ok").await?;
        }
        let (cert_pem, key_pem): (String, String) =
            sqlx::query_as("SELECT cert_pem, key_pem FROM ca WHERE id = 1")
                .fetch_one(&mut *tx)
                .await
                .map_err(db("read the CA"))?;
        tx.commit().await.map_err(db("commit the CA"))?;
        Ok((CaRecord { cert_pem, key_pem }, stored))
    }

    async fn job_lease(&self, _job: &str) -> Result<Option<JobLease>> {
        // One server owns a SQLite database (its data directory is locked).
        Ok(Some(JobLease::new(Owned)))
    }

    async fn export_rows(
        &self,
        tables: &[&'static tables::Table],
        rows: tokio::sync::mpsc::Sender<(usize, tables::Row)>,
    ) -> Result<()> {
        self.export_rows_in_sqlite(tables, rows).await
    }

    async fn restore(&self) -> Result<Box<dyn tables::Restore + '_>> {
        self.restore_in_sqlite().await
    }

    // The web dashboard.

    async fn create_sign_in_link(&self, link: NewSignInLink, actor: &Actor) -> Result<()> {
        self.create_sign_in_link_in_sqlite(link, actor).await
    }

    async fn delete_expired_sign_ins(&self, before: Micros) -> Result<u64> {
        self.delete_expired_sign_ins_in_sqlite(before).await
    }

    async fn sign_in(
        &self,
        link_sha256: &str,
        session: NewSession,
        now: Micros,
        peer: &str,
    ) -> Result<std::result::Result<Session, LinkRefusal>> {
        self.sign_in_in_sqlite(link_sha256, session, now, peer)
            .await
    }

    async fn session(&self, secret_sha256: &str, now: Micros) -> Result<Option<Session>> {
        self.session_in_sqlite(secret_sha256, now).await
    }

    async fn sign_out(&self, secret_sha256: &str, actor: &Actor) -> Result<bool> {
        self.sign_out_in_sqlite(secret_sha256, actor).await
    }

    async fn state_counts(&self, now: Micros) -> Result<StateCounts> {
        self.state_counts_in_sqlite(now).await
    }

    async fn runs_by_hour(&self, since: Micros) -> Result<Vec<HourOfRuns>> {
        self.runs_by_hour_in_sqlite(since).await
    }

    async fn find_nodes(
        &self,
        filter: &NodeFilter,
        now: Micros,
        after: &str,
        limit: u32,
    ) -> Result<Vec<FleetNode>> {
        self.find_nodes_in_sqlite(filter, now, after, limit).await
    }

    async fn renew_node(
        &self,
        name: &str,
        fingerprint: &str,
        new_fingerprint: &str,
        valid_until: Micros,
        actor: &Actor,
    ) -> Result<std::result::Result<Assignment, NodeStanding>> {
        self.renew_node_(name, fingerprint, new_fingerprint, valid_until, actor)
            .await
    }

    async fn forget_previous_certificate(&self, name: &str, fingerprint: &str) -> Result<()> {
        self.forget_previous_certificate_(name, fingerprint).await
    }
}

/// The lease on a job of a database this process owns: never lost.
struct Owned;

#[async_trait::async_trait]
impl HeldJob for Owned {
    async fn check(&mut self) -> Result<()> {
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

    fn someone() -> Actor {
        Actor {
            name: "a".into(),
            role: "admin".into(),
            peer: "p".into(),
        }
    }

    #[tokio::test]
    async fn the_chain_holds_when_processes_interleave_and_a_write_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.db");
        let server = SqliteStore::open(&path).await.unwrap();
        let command = SqliteStore::open(&path).await.unwrap();
        let who = someone();
        server.audit(&who, "a", "", "", "ok").await.unwrap();
        server.audit(&who, "b", "", "", "ok").await.unwrap();
        // Another process appends: the server's remembered head is stale.
        command.audit(&who, "c", "", "", "ok").await.unwrap();
        server.audit(&who, "d", "", "", "ok").await.unwrap();
        // An entry written in a transaction that rolls back leaves a head that
        // is not in the log.
        {
            let mut tx = server.begin("test").await.unwrap();
            append_audit(&mut tx, &server.head, &who, "gone", "", "", "ok")
                .await
                .unwrap();
            tx.rollback().await.unwrap();
        }
        command.audit(&who, "e", "", "", "ok").await.unwrap();
        server.audit(&who, "f", "", "", "ok").await.unwrap();
        let log = server
            .audit_log(AuditQuery {
                since: None,
                from: AuditCursor::After(0),
                limit: 100,
            })
            .await
            .unwrap();
        let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["a", "b", "c", "d", "e", "f"]);
        assert_eq!(audit::first_break(&log), None);
    }

    #[tokio::test]
    async fn a_change_by_another_process_is_seen_at_the_next_call() {
        // Two stores on one file are two processes: the server, and
        // `cairn-server operator …` next to it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.db");
        let server = SqliteStore::open(&path).await.unwrap();
        let command = SqliteStore::open(&path).await.unwrap();
        command
            .add_operator("ann", "admin", "fp1", &someone())
            .await
            .unwrap();
        for _ in 0..2 {
            // The second answer comes from memory.
            assert_eq!(
                server.standing("ann", "fp1").await.unwrap(),
                Standing::Current
            );
        }
        command
            .add_operator("ann", "admin", "fp2", &someone())
            .await
            .unwrap();
        assert_eq!(
            server.standing("ann", "fp1").await.unwrap(),
            Standing::Replaced
        );
        assert_eq!(
            server.standing("ann", "fp2").await.unwrap(),
            Standing::Current
        );
        command.revoke_operator("ann", &someone()).await.unwrap();
        assert_eq!(
            server.standing("ann", "fp2").await.unwrap(),
            Standing::Revoked
        );
        let mode = std::fs::metadata(dir.path().join("cairn.db-operators"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn the_audit_log_is_append_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("cairn.db"))
            .await
            .unwrap();
        store.audit(&someone(), "x", "y", "", "ok").await.unwrap();
        for refused in [
            "DELETE FROM audit_log",
            "UPDATE audit_log SET actor = 'b'",
            "UPDATE audit_log SET hash = 'b'",
        ] {
            let err = sqlx::query(refused).execute(&store.pool).await.unwrap_err();
            assert!(err.to_string().contains("append-only"), "{refused}: {err}");
        }
        let err = sqlx::query(
            "INSERT INTO audit_log (at, actor, actor_role, action, target, detail, peer, outcome)
             VALUES (0, '', '', '', '', '', '', '')",
        )
        .execute(&store.pool)
        .await
        .unwrap_err();
        assert!(err.to_string().contains("chain hash"), "{err}");
    }

    /// A database as the server before the chain left it: only the first migration.
    async fn old_database(path: &Path) -> SqlitePool {
        let pool = SqlitePool::connect_with(
            SqliteConnectOptions::from_str("sqlite:")
                .unwrap()
                .filename(path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
        let mut first = sqlx::migrate!("./migrations/sqlite");
        first.migrations = first
            .migrations
            .iter()
            .filter(|m| m.version == 1)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        first.run(&pool).await.unwrap();
        pool
    }

    #[tokio::test]
    async fn entries_from_before_the_chain_are_chained_and_their_operators_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.db");
        let old = old_database(&path).await;
        let huge = "h".repeat(2 << 20);
        for (actor, role, action, target, detail) in [
            ("root", "local", "operator add", "ada", "role admin"),
            ("anonymous", "none", "push", huge.as_str(), ""),
            ("root", "local", "operator add", "bob", "role publisher"),
            ("root", "local", "operator add", "bob", "role auditor"),
            ("ada", "admin", "operator add", "eve", "role admin"),
        ] {
            sqlx::query(
                "INSERT INTO audit_log (at, actor, actor_role, action, target, detail, peer, outcome)
                 VALUES (?, ?, ?, ?, ?, ?, 'local', 'ok')",
            )
            .bind(now_micros())
            .bind(actor)
            .bind(role)
            .bind(action)
            .bind(target)
            .bind(detail)
            .execute(&old)
            .await
            .unwrap();
        }
        old.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        store.audit(&someone(), "x", "y", "", "ok").await.unwrap();
        let log = store
            .audit_log(AuditQuery {
                since: None,
                from: AuditCursor::After(0),
                limit: 100,
            })
            .await
            .unwrap();
        assert_eq!(log.len(), 6);
        assert_eq!(audit::first_break(&log), None);
        // The oversized old entry comes back cut, with the digest of all of it.
        assert!(log[1].full_digest.is_some());
        assert_eq!(log[1].target.chars().count(), audit::MAX_NAME_CHARS);
        assert!(
            log.iter()
                .enumerate()
                .all(|(i, e)| i == 1 || e.full_digest.is_none())
        );

        // Operators added locally before keep working, with their newest role;
        // an entry not done locally adds nobody.
        for name in ["ada", "bob"] {
            assert_eq!(
                store.standing(name, "any").await.unwrap(),
                Standing::Unrecorded,
                "{name}"
            );
        }
        let role: String = sqlx::query_scalar("SELECT role FROM operators WHERE name = 'bob'")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(role, "auditor");
        assert_eq!(
            store.standing("eve", "any").await.unwrap(),
            Standing::Unknown
        );
    }

    /// Runs `sql` on its own connection, as someone with the file would.
    async fn tamper(path: &Path, sql: &str) {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect_with(
            &SqliteConnectOptions::from_str("sqlite:")
                .unwrap()
                .filename(path),
        )
        .await
        .unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_database_without_its_protections_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.db");
        drop(SqliteStore::open(&path).await.unwrap());
        tamper(&path, "DROP TRIGGER audit_log_no_delete").await;
        let err = SqliteStore::open(&path).await.err().unwrap().to_string();
        assert!(
            err.contains("missing trigger audit_log_no_delete (refuses removal of audit entries)")
                && err.contains("help: ")
                && err.contains(&path.display().to_string()),
            "{err}"
        );
        // One of the right name that refuses nothing is no better.
        tamper(
            &path,
            "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT 1; END",
        )
        .await;
        let err = SqliteStore::open(&path).await.err().unwrap().to_string();
        assert!(
            err.contains("trigger audit_log_no_delete no longer refuses what it should"),
            "{err}"
        );
        tamper(
            &path,
            "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_hash_required;
             ALTER TABLE audit_log DROP COLUMN hash",
        )
        .await;
        let err = SqliteStore::open(&path).await.err().unwrap().to_string();
        assert!(
            err.contains("column `hash` (the chain) is missing"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_schema_newer_than_known_is_refused_and_an_older_one_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.db");
        // Migrated by an older release: all but the last migration applied.
        let pool = old_database(&path).await;
        let mut older = sqlx::migrate!("./migrations/sqlite");
        older.migrations = older.migrations[..older.migrations.len() - 1]
            .to_vec()
            .into();
        older.run(&pool).await.unwrap();
        let known = schema::known(&sqlx::migrate!("./migrations/sqlite"));
        let last = known.last().unwrap();
        let err = SqliteStore::open_with(&path, Pending::Refuse)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!("1 more migration(s): {last}")),
            "{err}"
        );
        let (_, applied) = SqliteStore::open_with(&path, Pending::Apply).await.unwrap();
        assert_eq!(
            applied,
            std::slice::from_ref(last),
            "serve on SQLite migrates by itself"
        );

        // Migrated by a newer release.
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (9999, 'from the future', TRUE, X'00', 0)",
        )
        .execute(&pool)
        .await
        .unwrap();
        let err = SqliteStore::open(&path).await.err().unwrap().to_string();
        assert!(
            err.contains("is at version 9999")
                && err.contains(&format!("knows versions up to {}", last.version)),
            "{err}"
        );
    }
}
