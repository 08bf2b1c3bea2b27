//! Storage: versioned roles, channels and the audit log, behind one interface
//! so that every backend passes the same test suite ([`tests::suite`]).
//!
//! Every mutation writes its audit entry in the same transaction, so an action
//! is never stored without its record, nor recorded without being stored.
//!
//! [`open`] picks the backend from the database URL; everything else sees only
//! `dyn Store`, and no backend's types leave its module.

use std::path::Path;
use std::sync::Arc;

pub mod audit;
pub mod dashboard;
pub mod postgres;
mod rows;
pub mod schema;
pub mod sqlite;
pub mod tables;

pub use dashboard::{
    HourOfRuns, LinkRefusal, NewSession, NewSignInLink, NodeFilter, NodeState, Session, StateCounts,
};
pub use schema::{Migration, Pending};

/// The database URLs [`open`] understands, for messages.
pub const SUPPORTED_URLS: &str =
    "sqlite://PATH, postgres://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE (or postgresql://)";

/// Opens (creating if needed) the database at `url`: `sqlite://PATH`
/// (`sqlite:///var/lib/cairn-server/cairn.db` for an absolute PATH), or a
/// PostgreSQL database, `postgres://` or `postgresql://` with libpq's URL
/// syntax (the database must exist). Migrations: SQLite's are applied, as one
/// server owns it; PostgreSQL's only on a new database, else pending ones are
/// refused (see [`Pending`] and [`migrate`]). A database migrated by a newer
/// build is refused by both.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    let pending = match url.split_once("://") {
        Some(("postgres" | "postgresql", _)) => Pending::Refuse,
        _ => Pending::Apply,
    };
    Ok(open_with(url, pending).await?.0)
}

/// Opens the database at `url` as [`open`] does, applying every pending
/// migration; returns the store and the migrations it applied, oldest first.
pub async fn migrate(url: &str) -> Result<(Arc<dyn Store>, Vec<Migration>)> {
    open_with(url, Pending::Apply).await
}

async fn open_with(url: &str, pending: Pending) -> Result<(Arc<dyn Store>, Vec<Migration>)> {
    // Errors never repeat the URL: it may hold a password.
    match url.split_once("://") {
        Some(("sqlite", path)) if !path.is_empty() => {
            let (store, applied) = sqlite::SqliteStore::open_with(Path::new(path), pending).await?;
            Ok((Arc::new(store), applied))
        }
        Some(("sqlite", _)) => Err(StoreError::Url(
            "the sqlite database URL names no file (sqlite://PATH)".into(),
        )),
        Some(("postgres" | "postgresql", _)) => {
            let (store, applied) = postgres::PgStore::open_with(url, pending).await?;
            Ok((Arc::new(store), applied))
        }
        Some((scheme, _)) => Err(StoreError::Url(format!(
            "unsupported database scheme {scheme:?}; supported: {SUPPORTED_URLS}"
        ))),
        None => Err(StoreError::Url(format!(
            "the database URL has no scheme; supported: {SUPPORTED_URLS}"
        ))),
    }
}

/// The SQLite database's file in the data directory, when `--database` is not given.
pub const DEFAULT_DB_FILE: &str = "cairn.db";

/// The database URL used when none is given: SQLite in the data directory.
pub fn default_url(data_dir: &Path) -> Result<String> {
    match data_dir.join(DEFAULT_DB_FILE).to_str() {
        Some(path) => Ok(format!("sqlite://{path}")),
        None => Err(StoreError::Url(format!(
            "the data directory {} is not UTF-8, so it cannot be written as a database URL: pass --database sqlite://PATH",
            data_dir.display()
        ))),
    }
}

/// Microseconds since the Unix epoch, UTC.
pub type Micros = i64;

pub fn now_micros() -> Micros {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as Micros
}

/// Who did something, and from where: what every audit entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    /// `admin`, `publisher`, `auditor`, or `local` for actions taken on the
    /// server machine itself (`cairn-server operator add`).
    pub role: String,
    pub peer: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMeta {
    pub role: String,
    pub version: u64,
    pub digest: String,
    pub author: String,
    pub message: String,
    pub created_at: Micros,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVersion {
    pub role: String,
    pub digest: String,
    pub message: String,
    /// Encoded bundle, stored as is.
    pub bundle: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    pub version: VersionMeta,
    /// False when the content equals the latest version, which is returned.
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub role: String,
    pub channel: String,
    pub version: u64,
    pub updated_at: Micros,
    pub updated_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelEvent {
    pub channel: String,
    pub action: String,
    pub from_version: Option<u64>,
    pub to_version: u64,
    pub actor: String,
    pub at: Micros,
}

/// A channel pointer after it moved, and where it pointed before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelMove {
    pub channel: Channel,
    pub previous: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSummary {
    pub latest: VersionMeta,
    pub channels: Vec<Channel>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: u64,
    pub at: Micros,
    pub actor: String,
    pub actor_role: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub peer: String,
    pub outcome: String,
    /// Chains the entry to the one before: see [`audit`](self::audit).
    pub hash: String,
    /// Set when a field was longer than its bound, which only entries stored
    /// before the bounds existed can be: the fields above are then cut (see
    /// [`audit::cut`]) and this is the full entry's [`audit::content_digest`],
    /// so that the chain can still be checked.
    pub full_digest: Option<String>,
}

/// Which audit entries to read; every read is one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only entries at or after this time.
    pub since: Option<Micros>,
    pub from: AuditCursor,
    /// At most this many entries.
    pub limit: u32,
}

/// Which audit entries a page holds: every field set narrows it to entries
/// with exactly that value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
}

/// Where a page of the audit log starts, and which way it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditCursor {
    /// Entries with a larger id, oldest first (`After(0)`: from the first).
    After(u64),
    /// Entries with a smaller id, newest first (`Before(None)`: from the newest).
    Before(Option<u64>),
}

/// What the store knows of a client certificate, by operator name and
/// certificate fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The operator's current certificate.
    Current,
    /// The operator was added before certificates were recorded, and has not
    /// been added again or revoked since: any certificate of the CA for the
    /// name is accepted.
    Unrecorded,
    /// `operator revoke` revoked the operator.
    Revoked,
    /// A newer certificate was issued for the name (`operator add` again).
    Replaced,
    /// No operator of that name was ever added.
    Unknown,
}
// Nodes and join tokens (identity): types.

pub use cairn_proto::node::Assignment;

/// A join token as stored (never its secret, only the secret's SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The public part of the token (`ID` of `ID.SECRET`).
    pub id: String,
    /// What a node enrolled with it is assigned.
    pub assignment: Assignment,
    pub created_by: String,
    pub created_at: Micros,
    pub expires_at: Micros,
    pub uses_allowed: u32,
    pub uses_used: u32,
    pub revoked_at: Option<Micros>,
}

/// A token to store: [`Store::create_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    pub assignment: Assignment,
    pub expires_at: Micros,
    pub uses_allowed: u32,
}

/// Why a token admits no enrollment. An unknown id and a wrong secret are the
/// same answer, so that a caller cannot learn which ids exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown,
    Expired { at: Micros },
    UsedUp { uses: u32 },
    Revoked { at: Micros },
}

/// A node to record with the certificate issued to it: [`Store::enroll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    pub token_id: String,
    /// Hex SHA-256 of the secret the node presented.
    pub secret_sha256: String,
    pub name: String,
    /// [`crate::auth::fingerprint`] of the node's new certificate.
    pub fingerprint: String,
    /// The facts the node sent (JSON, bounded by the caller), if any.
    pub facts_json: Option<String>,
}

/// What the store knows of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    pub assignment: Assignment,
    /// The fingerprint of its one valid certificate.
    pub fingerprint: String,
    /// When its current certificate was recorded.
    pub enrolled_at: Micros,
    pub revoked_at: Option<Micros>,
    /// The token of its latest enrollment.
    pub token_id: String,
    pub facts_json: Option<String>,
}

/// A node enrolled: its record, and when the certificate it replaced (of an
/// earlier enrollment of the name) had been recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub node: NodeRecord,
    pub replaced: Option<Micros>,
}

/// What the store knows of a node certificate, by node name and certificate
/// fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeStanding {
    /// The node's current certificate, and its assignment.
    Current(Assignment),
    /// The node's current certificate, from a renewal it has not called with
    /// yet: the certificate it replaced still renews ([`NodeStanding::Previous`])
    /// until the node calls with this one
    /// ([`Store::forget_previous_certificate`]).
    Renewed(Assignment),
    /// The certificate the node's current one replaced at its latest renewal,
    /// which the node has not called with yet: the answer may never have
    /// reached it, so this one may renew again, and do nothing else.
    Previous(Assignment),
    /// `node revoke` revoked the node.
    Revoked,
    /// The node enrolled again, or renewed its certificate, since; this
    /// certificate no longer counts.
    Replaced,
    /// No node of that name ever enrolled.
    Unknown,
}

// Reports and fleet (fleet)

/// How a run went, from its report: a resource failed, else one changed, else none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Failed,
    Changed,
    Unchanged,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Failed => "failed",
            RunStatus::Changed => "changed",
            RunStatus::Unchanged => "unchanged",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        match s {
            "failed" => Some(RunStatus::Failed),
            "changed" => Some(RunStatus::Changed),
            "unchanged" => Some(RunStatus::Unchanged),
            _ => None,
        }
    }
}

/// What a stored report is listed by (the whole report is kept encoded beside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportMeta {
    /// The server's number for it; 0 before it is stored.
    pub id: u64,
    pub node: String,
    pub run_id: String,
    pub role: String,
    pub channel: String,
    pub role_version: u64,
    pub role_digest: String,
    pub status: RunStatus,
    pub noop: bool,
    pub from_cache: bool,
    pub resources: u64,
    pub changed: u64,
    pub failed: u64,
    /// By the node's clock.
    pub finished_at: Micros,
    /// By the server's clock, when stored.
    pub received_at: Micros,
}

/// A checked report to store, and what it says of its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReport {
    pub meta: ReportMeta,
    /// The agent's run interval, in seconds.
    pub interval_secs: u64,
    /// The node's facts at the run, JSON (bounded by the caller).
    pub facts_json: String,
    /// The whole report, protobuf-encoded.
    pub report: Vec<u8>,
}

/// Which reports to list: newest first, one page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportQuery {
    pub node: Option<String>,
    pub role: Option<String>,
    pub status: Option<RunStatus>,
    /// Only reports received at or after this time.
    pub since: Option<Micros>,
    /// Only reports with a smaller id (the cursor of the next page).
    pub before_id: Option<u64>,
    pub limit: u32,
}

/// A node's newest run, and when the server last heard from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRun {
    pub report_id: u64,
    pub role: String,
    pub channel: String,
    pub role_version: u64,
    pub status: RunStatus,
    pub from_cache: bool,
    pub finished_at: Micros,
    /// When its newest report arrived (server's clock).
    pub seen_at: Micros,
    pub interval_secs: u64,
}

/// A node not heard from for this many of its run intervals is stale (the
/// backends count stale nodes by the same rule).
pub const STALE_AFTER_INTERVALS: i64 = 2;

impl LastRun {
    /// Not heard from for [`STALE_AFTER_INTERVALS`] of its intervals at `now`.
    pub fn stale(&self, now: Micros) -> bool {
        now.saturating_sub(self.seen_at)
            > STALE_AFTER_INTERVALS
                .saturating_mul((self.interval_secs as i64).saturating_mul(1_000_000))
    }
}

/// A node as operators see it: its assignment and its newest run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetNode {
    pub name: String,
    pub role: String,
    pub channel: String,
    pub revoked: bool,
    /// `None` until it reports.
    pub last: Option<LastRun>,
}

/// The nodes assigned to one role and channel, by their newest run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelStatus {
    pub role: String,
    pub channel: String,
    /// `None` when nothing was promoted to the channel.
    pub promoted: Option<u64>,
    pub nodes: u64,
    /// Its newest run applied the promoted version and did not fail.
    pub on_promoted: u64,
    /// Its newest run applied another version (or role) and did not fail.
    pub on_older: u64,
    pub failing: u64,
    /// Not heard from for two of its intervals, whatever its run.
    pub stale: u64,
    pub never_reported: u64,
}

/// The certificate authority every server on one database shares (PEM): it
/// signs the server, operator and node certificates, so a certificate one
/// server issued is accepted by all. `key_pem` is the CA's private key.
#[derive(Clone, PartialEq, Eq)]
pub struct CaRecord {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaRecord {
    // Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRecord")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The right to run a background job (report retention) while held: on a
/// database several servers share, one server at a time holds it (see
/// [`Store::job_lease`]).
pub struct JobLease(Box<dyn HeldJob>);

impl JobLease {
    pub fn new(held: impl HeldJob) -> Self {
        JobLease(Box::new(held))
    }

    /// Ok while the lease still holds; an error once it was lost (the
    /// database connection that held it ended), after which it is never
    /// held again: ask for a new one.
    pub async fn check(&mut self) -> Result<()> {
        self.0.check().await
    }
}

/// What a backend keeps to hold a [`JobLease`]; dropping it releases it.
#[async_trait::async_trait]
pub trait HeldJob: Send + Sync + 'static {
    async fn check(&mut self) -> Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The database failed; the backend's own error is the source.
    #[error("database error: could not {op}")]
    Backend {
        op: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `--database` names nothing [`open`] can open.
    #[error("{0}")]
    Url(String),
    /// The database lost a protection of the audit log; the message says
    /// which and what to do.
    #[error("{0}")]
    Damaged(String),
    /// The database's schema is newer than this build's, or older and not to
    /// be migrated by opening it ([`Pending::Refuse`]); the message says what to do.
    #[error("{0}")]
    Schema(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The storage interface, used as `dyn Store`. Futures are `Send` so handlers
/// can await them on any worker thread.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new version numbered after the latest, unless its digest equals
    /// the latest's. Concurrent pushes to one role get distinct consecutive
    /// numbers. Audited as `push`.
    async fn push(&self, new: NewVersion, actor: &Actor) -> Result<PushOutcome>;

    /// The latest version of every role, with its channels, by name.
    async fn roles(&self) -> Result<Vec<RoleSummary>>;

    /// Every version of `role`, oldest first; `NotFound` for an unknown role.
    async fn versions(&self, role: &str) -> Result<Vec<VersionMeta>>;

    /// One version (the latest when `version` is `None`) and its encoded bundle.
    async fn get(&self, role: &str, version: Option<u64>) -> Result<(VersionMeta, Vec<u8>)>;

    /// Points `channel` of `role` at `version`. Audited as `promote`.
    async fn promote(
        &self,
        role: &str,
        channel: &str,
        version: u64,
        actor: &Actor,
    ) -> Result<ChannelMove>;

    /// Undoes the newest promote of the channel not yet undone. Audited as `rollback`.
    async fn rollback(&self, role: &str, channel: &str, actor: &Actor) -> Result<ChannelMove>;

    /// The channels of `role` and their history, newest first.
    async fn channels(&self, role: &str) -> Result<(Vec<Channel>, Vec<ChannelEvent>)>;

    /// Appends an entry for an action that changes nothing else (a denied
    /// request, a rejected push). Every field is cut to its bound first
    /// ([`audit`](self::audit)), and every entry written by any method carries its chain hash.
    async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        detail: &str,
        outcome: &str,
    ) -> Result<()>;

    /// One page of audit entries, in the cursor's direction. Entries stored
    /// before the bounds existed come back cut, with their full digest.
    async fn audit_log(&self, query: AuditQuery) -> Result<Vec<AuditRecord>> {
        self.audit_log_filtered(query, &AuditFilter::default())
            .await
    }

    /// As [`Store::audit_log`], only the entries `filter` admits: the page
    /// holds up to `query.limit` of them, read from an index of the field
    /// filtered on (migration 0009), not by walking the log.
    async fn audit_log_filtered(
        &self,
        query: AuditQuery,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditRecord>>;

    /// Records `fingerprint` as the one valid certificate of operator `name`,
    /// replacing (so revoking) any earlier one. Audited as `operator add`.
    /// Returns whether an earlier certificate was replaced.
    async fn add_operator(
        &self,
        name: &str,
        role: &str,
        fingerprint: &str,
        actor: &Actor,
    ) -> Result<bool>;

    /// Revokes every certificate of operator `name`; `NotFound` for a name never
    /// added, `Conflict` for one already revoked. Audited as `operator revoke`.
    async fn revoke_operator(&self, name: &str, actor: &Actor) -> Result<()>;

    /// The standing of the certificate with `fingerprint` presented by `name`.
    /// Read on every call, so a revocation by another process counts at once.
    async fn standing(&self, name: &str, fingerprint: &str) -> Result<Standing>;

    /// Whether the database answers.
    async fn ping(&self) -> Result<()>;

    // Nodes and join tokens (identity).

    /// Stores a join token. `Conflict` if its id is taken. Audited as `token create`.
    async fn create_token(&self, token: NewToken, actor: &Actor) -> Result<TokenRecord>;

    /// The newest `limit` tokens, newest first.
    async fn tokens(&self, limit: u32) -> Result<Vec<TokenRecord>>;

    /// Revokes a token: it admits no more enrollments. `NotFound` for an
    /// unknown id, `Conflict` for one already revoked. Audited as `token revoke`.
    async fn revoke_token(&self, id: &str, actor: &Actor) -> Result<TokenRecord>;

    /// Whether the token `id` with this secret would admit an enrollment now,
    /// and with which assignment; changes nothing (a cheap check before a
    /// certificate is signed: [`Store::enroll`] checks again).
    async fn check_token(
        &self,
        id: &str,
        secret_sha256: &str,
    ) -> Result<std::result::Result<Assignment, TokenRefusal>>;

    /// In one transaction: takes one use of the token (refused as
    /// [`TokenRefusal`] when it admits none: of two concurrent enrollments with
    /// a token's last use, exactly one gets it) and records the node with the
    /// token's assignment and its new certificate, replacing an earlier record
    /// of the name (its certificate stops counting, a revocation is lifted).
    /// Audited as `node enroll`; a refusal is not audited here.
    async fn enroll(
        &self,
        enrollment: Enrollment,
        actor: &Actor,
    ) -> Result<std::result::Result<Enrolled, TokenRefusal>>;

    /// The node called `name`, if one ever enrolled.
    async fn node(&self, name: &str) -> Result<Option<NodeRecord>>;

    /// Revokes node `name`: its certificate is refused from the next call on,
    /// by every process. `NotFound` for a name never enrolled, `Conflict` for
    /// one already revoked. Audited as `node revoke`.
    async fn revoke_node(&self, name: &str, actor: &Actor) -> Result<()>;

    /// The standing of the certificate with `fingerprint` presented by node
    /// `name`; as [`Store::standing`], a change by another process counts at
    /// once.
    async fn node_standing(&self, name: &str, fingerprint: &str) -> Result<NodeStanding>;

    // Reports and fleet (fleet)

    /// Stores each report not stored before (by node and run id) in one
    /// transaction, committed before this returns, and records for its node
    /// when it was last heard from; the node's last run and facts change only
    /// for a report that finished later than the one recorded (a spooled
    /// report delivered late does not hide a newer run). Returns, per report,
    /// whether it was stored now (false: it was already). Not audited.
    async fn store_reports(&self, reports: &[NewReport]) -> Result<Vec<bool>>;

    /// One page of reports, newest (largest id) first.
    async fn reports(&self, query: &ReportQuery) -> Result<Vec<ReportMeta>>;

    /// One report and its encoded body; `NotFound` for an unknown id.
    async fn report(&self, id: u64) -> Result<(ReportMeta, Vec<u8>)>;

    /// Deletes at most `limit` of the reports received before `before`, oldest
    /// first; returns how many it deleted.
    async fn delete_reports_before(&self, before: Micros, limit: u32) -> Result<u64>;

    /// The version `channel` of `role` points at, without its bundle; `None`
    /// when nothing was promoted to it.
    async fn channel_version(&self, role: &str, channel: &str) -> Result<Option<VersionMeta>>;

    /// Nodes by name after `after`, at most `limit`, with their newest run.
    async fn fleet_nodes(&self, after: &str, limit: u32) -> Result<Vec<FleetNode>>;

    /// One node with its newest run and the facts of that run (JSON, empty
    /// when it never reported); `NotFound` for an unknown name.
    async fn fleet_node(&self, name: &str) -> Result<(FleetNode, String)>;

    /// Per role and channel that unrevoked nodes are assigned to, by name:
    /// how their newest runs stand at `now` (see [`ChannelStatus`]).
    async fn fleet_status(&self, now: Micros) -> Result<Vec<ChannelStatus>>;

    // The CA and background jobs: what the servers on one database share.

    /// The CA the servers on this database share; `None` until one stored it.
    async fn ca(&self) -> Result<Option<CaRecord>>;

    /// Stores `ca` as the shared CA unless the database has one, in one
    /// transaction: of servers racing to store theirs, one wins and the others
    /// get its. Returns the CA stored and whether it is `ca`. Audited as
    /// `action` (`ca create`, `ca adopt`) with `target` only when stored.
    async fn init_ca(
        &self,
        ca: &CaRecord,
        action: &str,
        target: &str,
        actor: &Actor,
    ) -> Result<(CaRecord, bool)>;

    /// Takes the lease on background job `job` unless another process holds
    /// it (`None`). Held until dropped or, on a shared database, until the
    /// connection holding it ends (its process died, the database restarted):
    /// then another process may take it. On SQLite, which one server owns, it
    /// is always granted.
    async fn job_lease(&self, job: &str) -> Result<Option<JobLease>>;

    // Several servers on one database (replicas)

    /// Starts a feed of the changes any process commits to the database from
    /// now on that a server's open watch streams depend on (a channel moved,
    /// a node revoked), each told once it committed. Its first item, and the
    /// first after each time the feed was cut off and came back, is
    /// [`Change::Resync`]: what committed before it may not have been told,
    /// so the receiver reads the current state again. `None` when only this
    /// process writes the database (SQLite), which then knows every change
    /// itself. The feed stops when its receiver is dropped; at most
    /// [`CHANGE_FEED_BUFFER`] changes wait in it (a receiver that falls
    /// further behind gets a [`Change::Resync`] in place of what it missed).
    fn changes(&self) -> Option<tokio::sync::mpsc::Receiver<Change>>;

    /// Of the nodes called `names`, those revoked now.
    async fn revoked_nodes(&self, names: &[String]) -> Result<Vec<String>>;

    // Export and import (`crate::archive`): the rows of [`tables`], as stored.

    /// Sends every row of `tables` into `rows`, table after table in the
    /// order given, each in the order of its key, as `(index in tables,
    /// row)`, all read from one snapshot (one read transaction; REPEATABLE
    /// READ on PostgreSQL): a server may go on writing meanwhile, and what it
    /// commits after the snapshot is not sent. Fails if `rows` is closed
    /// before the end.
    async fn export_rows(
        &self,
        tables: &[&'static tables::Table],
        rows: tokio::sync::mpsc::Sender<(usize, tables::Row)>,
    ) -> Result<()>;

    /// Begins restoring an archive in one transaction that nothing else
    /// writes the tables in until it ends; `Conflict`, naming what is there,
    /// unless every table of [`tables::ALL`] is empty.
    async fn restore(&self) -> Result<Box<dyn tables::Restore + '_>>;
    // The web dashboard: sign-in links, sessions, the fleet as its pages read it.

    /// Stores a one-time sign-in link. Audited as `ui link`.
    async fn create_sign_in_link(&self, link: NewSignInLink, actor: &Actor) -> Result<()>;

    /// Deletes the sign-in links and sessions that expired before `before`
    /// (a background job: see `crate::ui::session::expire_sign_ins`);
    /// returns how many. Not audited: nothing they allowed is lost.
    async fn delete_expired_sign_ins(&self, before: Micros) -> Result<u64>;

    /// In one transaction: takes the link (by the SHA-256 of its secret) if
    /// it is unused and unexpired at `now` (of two concurrent uses exactly
    /// one gets it) and starts `session` for its operator, role and
    /// certificate. Audited as `ui sign-in`, by the link's operator from
    /// `peer`; a refusal is not audited here.
    async fn sign_in(
        &self,
        link_sha256: &str,
        session: NewSession,
        now: Micros,
        peer: &str,
    ) -> Result<std::result::Result<Session, LinkRefusal>>;

    /// The session (by the SHA-256 of its secret) if it was started, not
    /// ended, and not expired at `now`.
    async fn session(&self, secret_sha256: &str, now: Micros) -> Result<Option<Session>>;

    /// Ends the session; returns whether it was open. Audited as `ui sign-out`.
    async fn sign_out(&self, secret_sha256: &str, actor: &Actor) -> Result<bool>;

    /// Unrevoked nodes per [`NodeState`] at `now`.
    async fn state_counts(&self, now: Micros) -> Result<StateCounts>;

    /// Reports stored now, per hour (by `received_at`) and status, for every
    /// hour from the one holding `since` on, oldest first: read from counters
    /// kept as reports are stored and deleted, not by counting reports.
    async fn runs_by_hour(&self, since: Micros) -> Result<Vec<HourOfRuns>>;

    /// Nodes by name after `after`, at most `limit`, with their newest run,
    /// those `filter` admits at `now`.
    async fn find_nodes(
        &self,
        filter: &NodeFilter,
        now: Micros,
        after: &str,
        limit: u32,
    ) -> Result<Vec<FleetNode>>;

    // Node certificate renewal (`Nodes.Renew`).

    /// In one transaction: when node `name` is not revoked and `fingerprint`
    /// is its current certificate's or its [`NodeStanding::Previous`] one's,
    /// records `new_fingerprint` (of a certificate valid until `valid_until`)
    /// as its current certificate, and `fingerprint` as the previous one,
    /// which may only renew until the node calls with the new one; any other
    /// certificate stops counting at once (the current one too, when the
    /// previous one renews: its answer never reached the node). Audited as
    /// `node renew`. Otherwise changes nothing and returns the presented
    /// certificate's standing: a revocation or enrollment that committed
    /// since the caller was authenticated wins.
    async fn renew_node(
        &self,
        name: &str,
        fingerprint: &str,
        new_fingerprint: &str,
        valid_until: Micros,
        actor: &Actor,
    ) -> Result<std::result::Result<Assignment, NodeStanding>>;

    /// Node `name` called with its current certificate (`fingerprint`, of
    /// standing [`NodeStanding::Renewed`]): the previous one stops counting.
    /// Changes nothing if `fingerprint` is no longer the current one.
    async fn forget_previous_certificate(&self, name: &str, fingerprint: &str) -> Result<()>;
}

/// A change committed to the database: [`Store::changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The channel of the role moved (promote, rollback); read where it points now.
    ChannelMoved { role: String, channel: String },
    /// The node called this was revoked.
    NodeRevoked { name: String },
    /// Reports were stored: what shows the fleet is out of date.
    ReportsStored,
    /// Changes may have been missed: read again what depends on them.
    Resync,
}

/// How many changes a feed holds for a receiver that is behind.
pub const CHANGE_FEED_BUFFER: usize = 1024;

#[cfg(test)]
pub(crate) mod tests {
    //! The suite every backend must pass.

    use super::*;

    fn actor(name: &str) -> Actor {
        Actor {
            name: name.into(),
            role: "publisher".into(),
            peer: "127.0.0.1:1".into(),
        }
    }

    fn new(role: &str, digest: &str) -> NewVersion {
        NewVersion {
            role: role.into(),
            digest: digest.into(),
            message: format!("push {digest}"),
            bundle: digest.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn unknown_database_urls_name_the_supported_ones() {
        for (url, expect) in [
            (
                "mysql://cairn:hunter2@db/cairn",
                "unsupported database scheme \"mysql\"",
            ),
            // Read by sqlx, whose message names what is wrong, not the URL.
            (
                "postgres://cairn:hunter2@db:port/cairn",
                "the postgres database URL is not valid",
            ),
            ("/var/lib/cairn-server/cairn.db", "has no scheme"),
            ("sqlite://", "names no file"),
        ] {
            let err = open(url).await.err().expect(url).to_string();
            assert!(err.contains(expect), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{url}: {err}");
            if expect.starts_with("unsupported") || expect.contains("no scheme") {
                assert!(err.contains(SUPPORTED_URLS), "{url}: {err}");
            }
        }
    }

    pub async fn suite(store: Arc<dyn Store>) {
        let alice = actor("alice");

        // Versions number from 1; identical content creates nothing.
        let v1 = store.push(new("web", "d1"), &alice).await.unwrap();
        assert!(v1.created);
        assert_eq!(v1.version.version, 1);
        let again = store.push(new("web", "d1"), &alice).await.unwrap();
        assert!(!again.created);
        assert_eq!(again.version, v1.version);
        let v2 = store.push(new("web", "d2"), &alice).await.unwrap();
        assert_eq!((v2.version.version, v2.created), (2, true));
        // Going back to old content is a new version: only the latest counts.
        let v3 = store.push(new("web", "d1"), &alice).await.unwrap();
        assert_eq!((v3.version.version, v3.created), (3, true));
        store.push(new("db", "x1"), &alice).await.unwrap();

        let (meta, bundle) = store.get("web", Some(2)).await.unwrap();
        assert_eq!(
            (meta.digest.as_str(), bundle.as_slice()),
            ("d2", &b"d2"[..])
        );
        let (latest, _) = store.get("web", None).await.unwrap();
        assert_eq!(latest.version, 3);
        assert!(matches!(
            store.get("web", Some(9)).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.get("nope", None).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.versions("nope").await,
            Err(StoreError::NotFound(_))
        ));
        let versions: Vec<u64> = store
            .versions("web")
            .await
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(versions, [1, 2, 3]);

        // Concurrent pushes get distinct consecutive numbers.
        let mut tasks = Vec::new();
        for i in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .push(new("busy", &format!("c{i}")), &actor("bob"))
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
        assert_eq!(got, (1..=16).collect::<Vec<u64>>());

        // Channels: promote, promote, rollback, rollback walk back through history.
        let m = store.promote("web", "production", 1, &alice).await.unwrap();
        assert_eq!((m.channel.version, m.previous), (1, None));
        let m = store.promote("web", "production", 2, &alice).await.unwrap();
        assert_eq!((m.channel.version, m.previous), (2, Some(1)));
        store.promote("web", "production", 3, &alice).await.unwrap();
        store.promote("web", "staging", 3, &alice).await.unwrap();
        let m = store.rollback("web", "production", &alice).await.unwrap();
        assert_eq!((m.channel.version, m.previous), (2, Some(3)));
        let m = store.rollback("web", "production", &alice).await.unwrap();
        assert_eq!(m.channel.version, 1);
        assert!(matches!(
            store.rollback("web", "production", &alice).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.promote("web", "production", 7, &alice).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.rollback("web", "nope", &alice).await,
            Err(StoreError::NotFound(_))
        ));
        let (channels, history) = store.channels("web").await.unwrap();
        let pointers: Vec<(&str, u64)> = channels
            .iter()
            .map(|c| (c.channel.as_str(), c.version))
            .collect();
        assert_eq!(pointers, [("production", 1), ("staging", 3)]);
        let actions: Vec<(&str, Option<u64>, u64)> = history
            .iter()
            .filter(|e| e.channel == "production")
            .map(|e| (e.action.as_str(), e.from_version, e.to_version))
            .collect();
        assert_eq!(
            actions,
            [
                ("rollback", Some(2), 1),
                ("rollback", Some(3), 2),
                ("promote", Some(2), 3),
                ("promote", Some(1), 2),
                ("promote", None, 1)
            ]
        );

        let roles = store.roles().await.unwrap();
        let names: Vec<(&str, u64)> = roles
            .iter()
            .map(|r| (r.latest.role.as_str(), r.latest.version))
            .collect();
        assert_eq!(names, [("busy", 16), ("db", 1), ("web", 3)]);
        assert_eq!(roles[2].channels.len(), 2);

        // Every mutation was audited, in order, with its actor.
        store
            .audit(&actor("eve"), "push", "web", "", "denied")
            .await
            .unwrap();
        let page = |from, limit| {
            let store = store.clone();
            async move {
                store
                    .audit_log(AuditQuery {
                        since: None,
                        from,
                        limit,
                    })
                    .await
                    .unwrap()
            }
        };
        let log = page(AuditCursor::After(0), 1000).await;
        let pushes: Vec<&str> = log
            .iter()
            .filter(|e| e.action == "push" && e.outcome == "ok")
            .map(|e| e.detail.as_str())
            .collect();
        assert_eq!(pushes.len(), 5 + 16, "{pushes:?}");
        assert_eq!(pushes[1], "identical to version 1; nothing stored");
        assert_eq!(log.iter().filter(|e| e.action == "promote").count(), 4);
        assert_eq!(log.iter().filter(|e| e.action == "rollback").count(), 2);
        let last = log.last().unwrap();
        assert_eq!(
            (last.actor.as_str(), last.outcome.as_str()),
            ("eve", "denied")
        );
        assert!(
            log.windows(2)
                .all(|w| w[0].id < w[1].id && w[0].at <= w[1].at)
        );
        // Each entry is chained to the one before, from the first.
        assert_eq!(audit::first_break(&log), None);
        let recent = store
            .audit_log(AuditQuery {
                since: Some(last.at),
                from: AuditCursor::After(0),
                limit: 1000,
            })
            .await
            .unwrap();
        assert!(recent.iter().all(|e| e.at >= last.at) && !recent.is_empty());
        // Pages: forward from a cursor, or backward from the newest.
        let ids = |page: Vec<AuditRecord>| page.iter().map(|e| e.id).collect::<Vec<_>>();
        let all = ids(log.clone());
        assert_eq!(ids(page(AuditCursor::After(0), 2).await), all[..2]);
        assert_eq!(ids(page(AuditCursor::After(all[1]), 2).await), all[2..4]);
        let n = all.len();
        assert_eq!(
            ids(page(AuditCursor::Before(None), 2).await),
            [all[n - 1], all[n - 2]]
        );
        assert_eq!(
            ids(page(AuditCursor::Before(Some(all[n - 2])), 1).await),
            [all[n - 3]]
        );
        assert!(page(AuditCursor::After(all[n - 1]), 10).await.is_empty());

        // Filtered in the store: pages of only the entries admitted, newest
        // first, each page as full as the limit allows, through the whole log.
        let filters = [
            (Some("bob"), None, 16),
            (None, Some("promote"), 4),
            (Some("alice"), Some("push"), 5),
            (Some("eve"), Some("push"), 1),
            (Some("nobody"), None, 0),
        ];
        for (actor, action, expected) in filters {
            let filter = AuditFilter {
                actor: actor.map(String::from),
                action: action.map(String::from),
            };
            let wanted: Vec<u64> = log
                .iter()
                .rev()
                .filter(|e| actor.is_none_or(|a| e.actor == a))
                .filter(|e| action.is_none_or(|a| e.action == a))
                .map(|e| e.id)
                .collect();
            assert_eq!(wanted.len(), expected, "{filter:?}");
            let (mut found, mut cursor) = (Vec::new(), None);
            loop {
                let entries = store
                    .audit_log_filtered(
                        AuditQuery {
                            since: None,
                            from: AuditCursor::Before(cursor),
                            limit: 3,
                        },
                        &filter,
                    )
                    .await
                    .unwrap();
                assert!(entries.len() <= 3);
                let Some(last) = entries.last() else { break };
                cursor = Some(last.id);
                found.extend(entries.iter().map(|e| e.id));
                if entries.len() < 3 {
                    break;
                }
            }
            assert_eq!(found, wanted, "{filter:?}");
            let oldest_first = store
                .audit_log_filtered(
                    AuditQuery {
                        since: None,
                        from: AuditCursor::After(0),
                        limit: 1000,
                    },
                    &filter,
                )
                .await
                .unwrap();
            let oldest_first: Vec<u64> = oldest_first.iter().rev().map(|e| e.id).collect();
            assert_eq!(oldest_first, wanted, "{filter:?}");
        }

        // Whatever a caller sends, a stored entry is bounded.
        let huge = "r".repeat(1 << 20);
        let hostile = Actor {
            name: huge.clone(),
            role: huge.clone(),
            peer: huge.clone(),
        };
        store
            .audit(&hostile, &huge, &huge, &huge, &huge)
            .await
            .unwrap();
        let stored = page(AuditCursor::Before(None), 1).await.remove(0);
        assert_eq!(
            stored.full_digest, None,
            "stored within bounds, not cut on reading"
        );
        for (text, max) in audit::fields(&stored) {
            assert_eq!(text.chars().count(), max);
            assert!(text.ends_with(audit::CUT_MARKER));
        }

        // Operators: one valid certificate each, replaced by a new one, revoked.
        let admin = actor("root");
        assert_eq!(
            store.standing("olga", "f1").await.unwrap(),
            Standing::Unknown
        );
        assert!(
            !store
                .add_operator("olga", "admin", "f1", &admin)
                .await
                .unwrap()
        );
        assert_eq!(
            store.standing("olga", "f1").await.unwrap(),
            Standing::Current
        );
        assert!(
            store
                .add_operator("olga", "admin", "f2", &admin)
                .await
                .unwrap()
        );
        assert_eq!(
            store.standing("olga", "f1").await.unwrap(),
            Standing::Replaced
        );
        assert_eq!(
            store.standing("olga", "f2").await.unwrap(),
            Standing::Current
        );
        store.revoke_operator("olga", &admin).await.unwrap();
        assert_eq!(
            store.standing("olga", "f2").await.unwrap(),
            Standing::Revoked
        );
        assert!(matches!(
            store.revoke_operator("olga", &admin).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.revoke_operator("nobody", &admin).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(
            !store
                .add_operator("olga", "auditor", "f3", &admin)
                .await
                .unwrap()
        );
        assert_eq!(
            store.standing("olga", "f3").await.unwrap(),
            Standing::Current
        );
        let ops: Vec<(String, String)> = page(AuditCursor::Before(None), 4)
            .await
            .into_iter()
            .rev()
            .map(|e| (e.action, e.detail))
            .collect();
        assert_eq!(
            ops,
            [
                ("operator add".into(), "role admin".into()),
                (
                    "operator add".into(),
                    "role admin; earlier certificates revoked".into()
                ),
                (
                    "operator revoke".into(),
                    "role admin; every certificate revoked".into()
                ),
                ("operator add".into(), "role auditor".into()),
            ]
        );
        nodes_and_tokens(store.clone()).await;
        reports_and_fleet(store.clone()).await;
        shared_ca_and_jobs(store.clone()).await;
        export_reads_one_snapshot(store.clone()).await;
        // An archive is restored only into an empty database, which says
        // what it holds otherwise.
        let err = store
            .restore()
            .await
            .err()
            .expect("a database in use is not restored into")
            .to_string();
        assert!(
            err.contains("is not empty: it holds")
                && err.contains("21 role versions")
                && err.contains("1 CA"),
            "{err}"
        );
        dashboard_sign_in_and_nodes(store.clone()).await;
        store.ping().await.unwrap();
    }

    /// What commits while an export reads is not in it: a push made after
    /// the export read its first row is in neither table read after it.
    async fn export_reads_one_snapshot(store: Arc<dyn Store>) {
        let read = [&tables::ROLE_VERSIONS, &tables::AUDIT_LOG];
        // Room for one row: the reader waits, inside its snapshot, until the
        // push below committed.
        let (sender, mut receiver) = tokio::sync::mpsc::channel(1);
        let reading = store.export_rows(&read, sender);
        let writing = async {
            let mut rows = vec![receiver.recv().await.expect("a first row")];
            store.push(new("late", "l1"), &actor("lou")).await.unwrap();
            while let Some(row) = receiver.recv().await {
                rows.push(row);
            }
            rows
        };
        let (done, rows) = tokio::join!(reading, writing);
        done.unwrap();
        let late = |(_, row): &(usize, tables::Row)| {
            row.iter()
                .any(|v| *v == tables::Value::Text(Some("late".into())))
        };
        assert!(rows.iter().any(|(i, _)| *i == 1), "the audit log was read");
        assert!(!rows.iter().any(late), "the late push is not in the export");
        assert!(store.versions("late").await.is_ok(), "it was committed");
    }

    // The CA and background jobs.

    /// The dashboard: a sign-in link starts one session, once, before it
    /// expires; sessions end at sign-out; nodes counted and found by state,
    /// version and fact; runs counted per hour.
    async fn dashboard_sign_in_and_nodes(store: Arc<dyn Store>) {
        let ada = actor("ada");
        let now = now_micros();
        let link = |secret: &str, expires_at| NewSignInLink {
            secret_sha256: format!("link {secret}"),
            operator: "ada".into(),
            role: "auditor".into(),
            fingerprint: "f1".into(),
            expires_at,
        };
        let session = |secret: &str| NewSession {
            secret_sha256: format!("session {secret}"),
            expires_at: now + 3_600_000_000,
        };
        store
            .create_sign_in_link(link("l1", now + 120_000_000), &ada)
            .await
            .unwrap();
        store
            .create_sign_in_link(link("l2", now - 1), &ada)
            .await
            .unwrap();
        let started = store
            .sign_in("link l1", session("s1"), now, "10.0.0.9:1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                started.operator.as_str(),
                started.role.as_str(),
                started.fingerprint.as_str()
            ),
            ("ada", "auditor", "f1")
        );
        assert_eq!(
            store
                .sign_in("link l1", session("s2"), now, "10.0.0.9:1")
                .await
                .unwrap(),
            Err(LinkRefusal::Used { at: now })
        );
        assert_eq!(
            store
                .sign_in("link l2", session("s3"), now, "10.0.0.9:1")
                .await
                .unwrap(),
            Err(LinkRefusal::Expired { at: now - 1 })
        );
        assert_eq!(
            store
                .sign_in("link nope", session("s4"), now, "10.0.0.9:1")
                .await
                .unwrap(),
            Err(LinkRefusal::Unknown)
        );
        assert_eq!(
            store.session("session s1", now).await.unwrap(),
            Some(started.clone())
        );
        for refused in ["session s2", "session s3"] {
            assert_eq!(store.session(refused, now).await.unwrap(), None);
        }
        assert_eq!(
            store
                .session("session s1", started.expires_at)
                .await
                .unwrap(),
            None,
            "expired"
        );
        assert!(store.sign_out("session s1", &ada).await.unwrap());
        assert!(!store.sign_out("session s1", &ada).await.unwrap());
        assert_eq!(store.session("session s1", now).await.unwrap(), None);
        let log = store
            .audit_log(AuditQuery {
                since: None,
                from: AuditCursor::Before(None),
                limit: 4,
            })
            .await
            .unwrap();
        let actions: Vec<(&str, &str)> = log
            .iter()
            .map(|e| (e.action.as_str(), e.peer.as_str()))
            .collect();
        assert_eq!(
            actions,
            [
                ("ui sign-out", "127.0.0.1:1"),
                ("ui sign-in", "10.0.0.9:1"),
                ("ui link", "127.0.0.1:1"),
                ("ui link", "127.0.0.1:1")
            ]
        );

        // Links and sessions that expired before a time are deleted; a link
        // deleted is then unknown, one kept still says it expired.
        let day = 86_400_000_000;
        store
            .create_sign_in_link(link("old", now - 2 * day), &ada)
            .await
            .unwrap();
        let old = NewSession {
            secret_sha256: "session old".into(),
            expires_at: now - 2 * day,
        };
        let then = now - 3 * day;
        store
            .sign_in("link old", old, then, "10.0.0.9:1")
            .await
            .unwrap()
            .unwrap();
        assert!(store.session("session old", then).await.unwrap().is_some());
        assert_eq!(
            store.delete_expired_sign_ins(now - day).await.unwrap(),
            2,
            "the old link and its session"
        );
        assert_eq!(
            store
                .sign_in("link old", session("s5"), then, "10.0.0.9:1")
                .await
                .unwrap(),
            Err(LinkRefusal::Unknown)
        );
        assert_eq!(store.session("session old", then).await.unwrap(), None);
        assert_eq!(
            store
                .sign_in("link l2", session("s6"), now, "10.0.0.9:1")
                .await
                .unwrap(),
            Err(LinkRefusal::Expired { at: now - 1 }),
            "expired since less than the time given: kept"
        );
        assert_eq!(
            store
                .sign_in("link l1", session("s7"), now, "10.0.0.9:1")
                .await
                .unwrap(),
            Err(LinkRefusal::Used { at: now })
        );
        assert_eq!(store.delete_expired_sign_ins(now - day).await.unwrap(), 0);

        // Three nodes of role `dash`: one converged on version 2 (Debian
        // 12), one failing on version 1 (Debian 11), one never reported.
        let before = store.state_counts(now_micros()).await.unwrap();
        let later = now_micros() + 3_600_000_000;
        let mut t = token("dashtk", "s", 3, later);
        t.assignment.role = "dash".into();
        store.create_token(t, &ada).await.unwrap();
        for name in ["dash-a", "dash-b", "dash-c"] {
            store
                .enroll(enrollment("dashtk", "s", name, name), &ada)
                .await
                .unwrap()
                .unwrap();
        }
        let report = |node: &str, version: u64, status, facts: &str| {
            let mut r = new_report(node, &format!("{node}-run"), now_micros(), status);
            r.meta.role = "dash".into();
            r.meta.role_version = version;
            r.facts_json = facts.into();
            r
        };
        store
            .store_reports(&[
                report(
                    "dash-a",
                    2,
                    RunStatus::Unchanged,
                    r#"{"os": {"release": "12", "major": 12}, "cpus": 4, "load": 1.5,
                        "virtual": true, "tag": "true", "zone": "eu", "none": null}"#,
                ),
                report(
                    "dash-b",
                    1,
                    RunStatus::Failed,
                    r#"{"os": {"release": 11, "major": 11.0}, "cpus": 4.0, "load": 1.25,
                        "virtual": false, "zone": 12, "list": [1, 2]}"#,
                ),
            ])
            .await
            .unwrap();
        let after = store.state_counts(now_micros()).await.unwrap();
        let delta = |s| after.get(s) - before.get(s);
        assert_eq!(
            NodeState::ALL.map(delta),
            [1, 0, 1, 0, 1],
            "converged, changed, failed, stale, never"
        );
        // Ten days on, every node that reported is stale.
        let much_later = store
            .state_counts(now_micros() + 10 * 86_400_000_000)
            .await
            .unwrap();
        let reported = |c: &StateCounts| {
            [
                NodeState::Converged,
                NodeState::Changed,
                NodeState::Failed,
                NodeState::Stale,
            ]
            .map(|s| c.get(s))
            .iter()
            .sum::<u64>()
        };
        assert_eq!(
            NodeState::ALL.map(|s| much_later.get(s)),
            [0, 0, 0, reported(&after), after.get(NodeState::Never)]
        );
        let find = |filter: NodeFilter, after: &'static str| {
            let store = store.clone();
            async move {
                let found = store
                    .find_nodes(
                        &NodeFilter {
                            role: Some("dash".into()),
                            ..filter
                        },
                        now_micros(),
                        after,
                        2,
                    )
                    .await
                    .unwrap();
                found.into_iter().map(|n| n.name).collect::<Vec<_>>()
            }
        };
        assert_eq!(find(NodeFilter::default(), "").await, ["dash-a", "dash-b"]);
        assert_eq!(find(NodeFilter::default(), "dash-b").await, ["dash-c"]);
        for (state, names) in [
            (NodeState::Converged, vec!["dash-a"]),
            (NodeState::Failed, vec!["dash-b"]),
            (NodeState::Never, vec!["dash-c"]),
            (NodeState::Stale, vec![]),
        ] {
            let filter = NodeFilter {
                state: Some(state),
                ..NodeFilter::default()
            };
            assert_eq!(find(filter, "").await, names, "{state:?}");
        }
        let by_version = NodeFilter {
            version: Some(1),
            ..NodeFilter::default()
        };
        assert_eq!(find(by_version, "").await, ["dash-b"]);
        let by_fact = |keys: &[&str], value: &str| NodeFilter {
            fact: Some((
                keys.iter().map(|k| k.to_string()).collect(),
                value.to_string(),
            )),
            ..NodeFilter::default()
        };
        // Fact values compare by type, the same on every backend: text a
        // string, `true`/`false` a boolean (or that string), a number a
        // number equal to it (or that string).
        let (a, b, both, none): (&[&str], &[&str], &[&str], &[&str]) =
            (&["dash-a"], &["dash-b"], &["dash-a", "dash-b"], &[]);
        for (key, value, expected) in [
            ("os.release", "12", a),
            ("os.release", "11", b),
            ("os.release", "11.0", b),
            ("os.release", "13", none),
            ("os.major", "12", a),
            ("os.major", "11", b),
            ("os.major", "1.1e1", b),
            ("cpus", "4", both),
            ("cpus", "4.0", both),
            ("cpus", "4.5", none),
            ("cpus", "four", none),
            ("load", "1.5", a),
            ("load", "1.50", a),
            ("load", "1.25", b),
            ("virtual", "true", a),
            ("virtual", "false", b),
            ("virtual", "1", none),
            ("virtual", "0", none),
            ("tag", "true", a),
            ("zone", "eu", a),
            ("zone", "EU", none),
            ("zone", "12", b),
            ("none", "null", none),
            ("list", "1", none),
            ("os", "12", none),
            ("os.release.minor", "12", none),
            ("missing", "12", none),
            ("os.missing", "true", none),
        ] {
            let keys: Vec<&str> = key.split('.').collect();
            assert_eq!(
                find(by_fact(&keys, value), "").await,
                expected,
                "{key}={value}"
            );
        }
        let wrong_channel = NodeFilter {
            channel: Some("production".into()),
            ..NodeFilter::default()
        };
        assert!(find(wrong_channel, "").await.is_empty());

        // Runs per hour are the reports stored in each hour, from the hour
        // asked on.
        assert_runs_counted(store.as_ref(), "after the dashboard's reports").await;
        let this_hour = now.div_euclid(dashboard::HOUR) * dashboard::HOUR;
        for since in [this_hour, this_hour + 1, now, now - 50 * dashboard::HOUR] {
            let hours = store.runs_by_hour(since).await.unwrap();
            let all = store.runs_by_hour(0).await.unwrap();
            let from = since.div_euclid(dashboard::HOUR) * dashboard::HOUR;
            let expected: Vec<HourOfRuns> = all.into_iter().filter(|h| h.hour >= from).collect();
            assert_eq!(hours, expected, "since {since}");
            assert!(
                hours.iter().map(|h| h.failed).sum::<u64>() >= 1,
                "{hours:?}"
            );
        }
        assert!(
            store
                .runs_by_hour(this_hour + dashboard::HOUR)
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// Runs per hour ([`Store::runs_by_hour`], kept as reports are stored
    /// and deleted) equal the stored reports counted by hour and status.
    pub(crate) async fn assert_runs_counted(store: &dyn Store, when: &str) {
        let listed = store
            .reports(&ReportQuery {
                limit: 100_000,
                ..ReportQuery::default()
            })
            .await
            .unwrap();
        let mut counted = std::collections::BTreeMap::<Micros, HourOfRuns>::new();
        for r in &listed {
            let hour = r.received_at.div_euclid(dashboard::HOUR) * dashboard::HOUR;
            let h = counted.entry(hour).or_insert(HourOfRuns {
                hour,
                ..HourOfRuns::default()
            });
            match r.status {
                RunStatus::Failed => h.failed += 1,
                RunStatus::Changed => h.changed += 1,
                RunStatus::Unchanged => h.unchanged += 1,
            }
        }
        assert_eq!(
            store.runs_by_hour(0).await.unwrap(),
            counted.into_values().collect::<Vec<_>>(),
            "{when}"
        );
    }

    async fn shared_ca_and_jobs(store: Arc<dyn Store>) {
        let ca = |n: u8| CaRecord {
            cert_pem: format!("cert {n}"),
            key_pem: format!("key {n}"),
        };
        let local = Actor {
            name: "srv".into(),
            role: "server".into(),
            peer: "local".into(),
        };
        assert_eq!(store.ca().await.unwrap(), None);
        let first = store
            .init_ca(&ca(1), "ca create", "sha256:one", &local)
            .await
            .unwrap();
        assert_eq!(first, (ca(1), true));
        // The first stored stays: a second is not stored, and the first returned.
        let second = store
            .init_ca(&ca(2), "ca adopt", "sha256:two", &local)
            .await
            .unwrap();
        assert_eq!(second, (ca(1), false));
        assert_eq!(store.ca().await.unwrap(), Some(ca(1)));
        let log = store
            .audit_log(AuditQuery {
                since: None,
                from: AuditCursor::Before(None),
                limit: 1000,
            })
            .await
            .unwrap();
        let stored: Vec<(&str, &str, &str)> = log
            .iter()
            .filter(|e| e.action.starts_with("ca "))
            .map(|e| (e.action.as_str(), e.target.as_str(), e.actor_role.as_str()))
            .collect();
        assert_eq!(stored, [("ca create", "sha256:one", "server")]);

        let mut lease = store
            .job_lease("report retention")
            .await
            .unwrap()
            .expect("a lease nobody holds is granted");
        lease.check().await.unwrap();
    }

    // Nodes and join tokens (identity).

    fn token(id: &str, secret: &str, uses: u32, expires_at: Micros) -> NewToken {
        NewToken {
            id: id.into(),
            secret_sha256: format!("hash of {secret}"),
            assignment: Assignment {
                role: "web".into(),
                channel: "stable".into(),
            },
            expires_at,
            uses_allowed: uses,
        }
    }

    fn enrollment(token: &str, secret: &str, name: &str, fingerprint: &str) -> Enrollment {
        Enrollment {
            token_id: token.into(),
            secret_sha256: format!("hash of {secret}"),
            name: name.into(),
            fingerprint: fingerprint.into(),
            facts_json: Some("{}".into()),
        }
    }

    async fn nodes_and_tokens(store: Arc<dyn Store>) {
        let admin = actor("root");
        let later = now_micros() + 3_600_000_000;
        let t1 = store
            .create_token(token("aaaaaa", "s1", 1, later), &admin)
            .await
            .unwrap();
        assert_eq!((t1.uses_used, t1.created_by.as_str()), (0, "root"));
        assert!(matches!(
            store
                .create_token(token("aaaaaa", "other", 1, later), &admin)
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            store.check_token("aaaaaa", "hash of s1").await.unwrap(),
            Ok(t1.assignment.clone())
        );
        // A wrong secret is an unknown token: ids are not secret.
        for (id, secret) in [("aaaaaa", "hash of s2"), ("bbbbbb", "hash of s1")] {
            assert_eq!(
                store.check_token(id, secret).await.unwrap(),
                Err(TokenRefusal::Unknown)
            );
        }
        let nobody = actor("node");
        assert_eq!(
            store
                .enroll(enrollment("aaaaaa", "s2", "n1", "f1"), &nobody)
                .await
                .unwrap(),
            Err(TokenRefusal::Unknown)
        );

        // A token's last use goes to exactly one of two concurrent enrollments.
        let (a, b) = tokio::join!(
            store.enroll(enrollment("aaaaaa", "s1", "n1", "f1"), &nobody),
            store.enroll(enrollment("aaaaaa", "s1", "n2", "f2"), &nobody),
        );
        let (enrolled, refused) = match (a.unwrap(), b.unwrap()) {
            (Ok(e), Err(r)) | (Err(r), Ok(e)) => (e, r),
            other => panic!("exactly one enrollment must succeed: {other:?}"),
        };
        assert_eq!(refused, TokenRefusal::UsedUp { uses: 1 });
        let won = enrolled.node.name.clone();
        let won = won.as_str();
        let lost = if won == "n1" { "n2" } else { "n1" };
        assert_eq!(enrolled.replaced, None);
        assert!(store.node(lost).await.unwrap().is_none());
        let fp = enrolled.node.fingerprint.clone();
        let record = store.node(won).await.unwrap().unwrap();
        assert_eq!(record, enrolled.node);
        assert_eq!(
            (record.token_id.as_str(), record.facts_json.as_deref()),
            ("aaaaaa", Some("{}"))
        );
        assert_eq!(
            store.node_standing(won, &fp).await.unwrap(),
            NodeStanding::Current(record.assignment.clone())
        );
        assert_eq!(
            store.node_standing(won, "other").await.unwrap(),
            NodeStanding::Replaced
        );
        assert_eq!(
            store.node_standing(lost, &fp).await.unwrap(),
            NodeStanding::Unknown
        );
        // A node and an operator of one name are told apart.
        assert_eq!(store.standing(won, &fp).await.unwrap(), Standing::Unknown);

        // Expired and revoked tokens admit nobody, and say why.
        store
            .create_token(token("expire", "s3", 5, now_micros() - 1), &admin)
            .await
            .unwrap();
        assert!(matches!(
            store.check_token("expire", "hash of s3").await.unwrap(),
            Err(TokenRefusal::Expired { .. })
        ));
        let mut two = token("twouse", "s4", 2, later);
        two.assignment.role = "db".into();
        store.create_token(two, &admin).await.unwrap();
        let revoked = store.revoke_token("twouse", &admin).await.unwrap();
        assert!(revoked.revoked_at.is_some());
        assert!(matches!(
            store
                .enroll(enrollment("twouse", "s4", "n3", "f3"), &nobody)
                .await
                .unwrap(),
            Err(TokenRefusal::Revoked { .. })
        ));
        assert!(matches!(
            store.revoke_token("twouse", &admin).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.revoke_token("nope", &admin).await,
            Err(StoreError::NotFound(_))
        ));
        let ids: Vec<(String, u32)> = store
            .tokens(100)
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.id, t.uses_used))
            .collect();
        assert_eq!(ids.len(), 3);
        assert!(ids.contains(&("aaaaaa".into(), 1)), "{ids:?}");

        // Revoked at once; enrolling again (a rebuilt machine, a fresh token)
        // replaces the certificate and lifts the revocation.
        store.revoke_node(won, &admin).await.unwrap();
        assert_eq!(
            store.node_standing(won, &fp).await.unwrap(),
            NodeStanding::Revoked
        );
        assert!(matches!(
            store.revoke_node(won, &admin).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.revoke_node("nobody", &admin).await,
            Err(StoreError::NotFound(_))
        ));
        let mut fresh = token("fresh1", "s5", 1, later);
        fresh.assignment.channel = "canary".into();
        store.create_token(fresh, &admin).await.unwrap();
        let again = store
            .enroll(enrollment("fresh1", "s5", won, "f9"), &nobody)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.replaced, Some(record.enrolled_at));
        assert_eq!(again.node.assignment.channel, "canary");
        assert_eq!(
            store.node_standing(won, &fp).await.unwrap(),
            NodeStanding::Replaced
        );
        assert_eq!(
            store.node_standing(won, "f9").await.unwrap(),
            NodeStanding::Current(again.node.assignment.clone())
        );

        // Every change was audited with what it did.
        let log = store
            .audit_log(AuditQuery {
                since: None,
                from: AuditCursor::Before(None),
                limit: 8,
            })
            .await
            .unwrap();
        let actions: Vec<(&str, &str)> = log
            .iter()
            .rev()
            .map(|e| (e.action.as_str(), e.target.as_str()))
            .collect();
        assert_eq!(
            actions,
            [
                ("token create", "aaaaaa"),
                ("node enroll", won),
                ("token create", "expire"),
                ("token create", "twouse"),
                ("token revoke", "twouse"),
                ("node revoke", won),
                ("token create", "fresh1"),
                ("node enroll", won),
            ]
        );
        assert!(
            log[0]
                .detail
                .contains("enrolled again after its revocation"),
            "{}",
            log[0].detail
        );
        assert!(!log.iter().any(|e| e.detail.contains("hash of")));

        // Renewal: the presented certificate becomes the previous one, which
        // may only renew again until the node calls with the new one.
        let node_actor = actor(won);
        let valid_until = later;
        let assignment = again.node.assignment.clone();
        let standing = |fingerprint: &'static str| {
            let store = store.clone();
            async move { store.node_standing(won, fingerprint).await.unwrap() }
        };
        let renew = |fingerprint: &'static str, new: &'static str| {
            let (store, node_actor) = (store.clone(), node_actor.clone());
            async move {
                store
                    .renew_node(won, fingerprint, new, valid_until, &node_actor)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(renew("f9", "f10").await, Ok(assignment.clone()));
        assert_eq!(
            standing("f9").await,
            NodeStanding::Previous(assignment.clone())
        );
        assert_eq!(
            standing("f10").await,
            NodeStanding::Renewed(assignment.clone())
        );
        assert_eq!(store.node(won).await.unwrap().unwrap().fingerprint, "f10");
        assert_eq!(previous_fingerprint(&store, won).await, Some("f9".into()));
        // Its answer was lost: the previous certificate renews again, and the
        // new one the node never received stops counting.
        assert_eq!(renew("f9", "f11").await, Ok(assignment.clone()));
        assert_eq!(standing("f10").await, NodeStanding::Replaced);
        assert_eq!(
            standing("f9").await,
            NodeStanding::Previous(assignment.clone())
        );
        assert_eq!(
            standing("f11").await,
            NodeStanding::Renewed(assignment.clone())
        );
        assert_eq!(renew("f10", "f12").await, Err(NodeStanding::Replaced));
        // Forgetting with a certificate that is not the current one does nothing.
        store.forget_previous_certificate(won, "f9").await.unwrap();
        assert_eq!(
            standing("f9").await,
            NodeStanding::Previous(assignment.clone())
        );
        // The node called with the new one: the previous one is done.
        store.forget_previous_certificate(won, "f11").await.unwrap();
        assert_eq!(
            standing("f11").await,
            NodeStanding::Current(assignment.clone())
        );
        assert_eq!(standing("f9").await, NodeStanding::Replaced);
        assert_eq!(previous_fingerprint(&store, won).await, None);
        assert_eq!(renew("f9", "f12").await, Err(NodeStanding::Replaced));
        assert_eq!(
            store
                .renew_node("nobody", "f9", "f12", valid_until, &node_actor)
                .await
                .unwrap(),
            Err(NodeStanding::Unknown)
        );
        // Enrolling again forgets the previous certificate.
        assert_eq!(renew("f11", "f12").await, Ok(assignment.clone()));
        store
            .create_token(token("fresh2", "s6", 1, later), &admin)
            .await
            .unwrap();
        store
            .enroll(enrollment("fresh2", "s6", won, "f20"), &nobody)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(standing("f11").await, NodeStanding::Replaced);
        assert_eq!(standing("f12").await, NodeStanding::Replaced);
        assert_eq!(previous_fingerprint(&store, won).await, None);
        // So does revoking the node.
        let assignment = store.node(won).await.unwrap().unwrap().assignment;
        assert_eq!(renew("f20", "f21").await, Ok(assignment));
        store.revoke_node(won, &admin).await.unwrap();
        assert_eq!(previous_fingerprint(&store, won).await, None);
        assert_eq!(renew("f20", "f22").await, Err(NodeStanding::Revoked));
        assert_eq!(standing("f20").await, NodeStanding::Revoked);
        assert_eq!(standing("f21").await, NodeStanding::Revoked);
        let log = store
            .audit_log(AuditQuery {
                since: None,
                from: AuditCursor::Before(None),
                limit: 7,
            })
            .await
            .unwrap();
        let actions: Vec<&str> = log.iter().rev().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "node renew",
                "node renew",
                "node renew",
                "token create",
                "node enroll",
                "node renew",
                "node revoke"
            ]
        );
        assert!(log.iter().all(|e| e.target == won || e.target == "fresh2"));
        let detail = |i: usize| log[i].detail.as_str();
        assert!(
            detail(6).contains("replaced the certificate recorded at")
                && detail(6).contains("valid until"),
            "{}",
            detail(6)
        );
        assert!(
            detail(5).contains("renewed with its previous certificate"),
            "{}",
            detail(5)
        );
    }

    /// The previous certificate's fingerprint of node `name`, as an export
    /// reads it.
    async fn previous_fingerprint(store: &Arc<dyn Store>, name: &str) -> Option<String> {
        let (sender, mut receiver) = tokio::sync::mpsc::channel(64);
        let (done, rows) = tokio::join!(store.export_rows(&[&tables::NODES], sender), async {
            let mut rows = Vec::new();
            while let Some((_, row)) = receiver.recv().await {
                rows.push(row);
            }
            rows
        });
        done.unwrap();
        let column = |row: &tables::Row, column: &str| {
            let at = tables::NODES
                .columns
                .iter()
                .position(|c| c.name == column)
                .unwrap();
            match &row[at] {
                tables::Value::Text(text) => text.clone(),
                other => panic!("{column} is text, not {other:?}"),
            }
        };
        let row = rows
            .iter()
            .find(|row| column(row, "name").as_deref() == Some(name))
            .expect("the node is exported");
        column(row, "previous_fingerprint")
    }

    /// An unchanged run of `node` at version 1 of `web`, with no resources.
    pub(crate) fn plain_report(
        node: &str,
        run_id: &str,
        finished_at: Micros,
        received_at: Micros,
    ) -> NewReport {
        NewReport {
            meta: ReportMeta {
                id: 0,
                node: node.into(),
                run_id: run_id.into(),
                role: "web".into(),
                channel: "production".into(),
                role_version: 1,
                role_digest: "d1".into(),
                status: RunStatus::Unchanged,
                noop: false,
                from_cache: false,
                resources: 0,
                changed: 0,
                failed: 0,
                finished_at,
                received_at,
            },
            interval_secs: 60,
            facts_json: String::new(),
            report: vec![],
        }
    }

    fn new_report(node: &str, run_id: &str, finished_at: Micros, status: RunStatus) -> NewReport {
        NewReport {
            meta: ReportMeta {
                id: 0,
                node: node.into(),
                run_id: run_id.into(),
                role: "web".into(),
                channel: "production".into(),
                role_version: 2,
                role_digest: "d2".into(),
                status,
                noop: false,
                from_cache: false,
                resources: 3,
                changed: u64::from(status == RunStatus::Changed),
                failed: u64::from(status == RunStatus::Failed),
                finished_at,
                received_at: now_micros(),
            },
            interval_secs: 1800,
            facts_json: format!("{{\"run\":\"{run_id}\"}}"),
            report: run_id.as_bytes().to_vec(),
        }
    }

    /// Reports: stored once per node and run, listed newest first and
    /// filtered, deleted by age in batches; nodes with their newest runs, and
    /// the status per channel. Runs after [`suite`] left channel `production`
    /// of `web` at version 1.
    async fn reports_and_fleet(store: Arc<dyn Store>) {
        let v = store
            .channel_version("web", "production")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((v.version, v.digest.as_str()), (1, "d1"));
        assert_eq!(store.channel_version("web", "nope").await.unwrap(), None);
        assert_eq!(
            store.channel_version("nope", "production").await.unwrap(),
            None
        );

        let t = now_micros();
        let first = [
            new_report("n1", "r1", t, RunStatus::Changed),
            new_report("n1", "r2", t + 10, RunStatus::Unchanged),
            // The same run id from another node is another run.
            new_report("n2", "r1", t, RunStatus::Failed),
        ];
        assert_eq!(
            store.store_reports(&first).await.unwrap(),
            [true, true, true]
        );
        assert_runs_counted(store.as_ref(), "after a batch").await;
        // Delivered again (with another body, even): nothing stored.
        // The same run twice in one batch is stored (and counted) once.
        let mut again = new_report("n1", "r1", t, RunStatus::Failed);
        again.report = b"other".to_vec();
        let r3 = new_report("n1", "r3", t + 20, RunStatus::Failed);
        assert_eq!(
            store.store_reports(&[again, r3.clone(), r3]).await.unwrap(),
            [false, true, false]
        );
        assert_runs_counted(store.as_ref(), "after runs delivered again").await;
        let all = store
            .reports(&ReportQuery {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        let listed: Vec<(&str, &str)> = all
            .iter()
            .map(|r| (r.node.as_str(), r.run_id.as_str()))
            .collect();
        assert_eq!(
            listed,
            [("n1", "r3"), ("n2", "r1"), ("n1", "r2"), ("n1", "r1")]
        );
        assert!(all.windows(2).all(|w| w[0].id > w[1].id));
        let (meta, body) = store.report(all[3].id).await.unwrap();
        assert_eq!(
            (meta.status, body.as_slice()),
            (RunStatus::Changed, &b"r1"[..])
        );
        assert_eq!(meta, all[3]);
        assert!(matches!(
            store.report(999_999).await,
            Err(StoreError::NotFound(_))
        ));

        let ids = |q: ReportQuery| {
            let store = store.clone();
            async move {
                let limit = if q.limit == 0 { 100 } else { q.limit };
                store
                    .reports(&ReportQuery { limit, ..q })
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| (r.node, r.run_id))
                    .collect::<Vec<_>>()
            }
        };
        let pair = |n: &str, r: &str| (n.to_string(), r.to_string());
        assert_eq!(
            ids(ReportQuery {
                node: Some("n2".into()),
                ..Default::default()
            })
            .await,
            [pair("n2", "r1")]
        );
        assert_eq!(
            ids(ReportQuery {
                status: Some(RunStatus::Failed),
                ..Default::default()
            })
            .await,
            [pair("n1", "r3"), pair("n2", "r1")]
        );
        assert_eq!(
            ids(ReportQuery {
                node: Some("n1".into()),
                status: Some(RunStatus::Failed),
                role: Some("web".into()),
                ..Default::default()
            })
            .await,
            [pair("n1", "r3")]
        );
        assert!(
            ids(ReportQuery {
                role: Some("db".into()),
                ..Default::default()
            })
            .await
            .is_empty()
        );
        assert_eq!(
            ids(ReportQuery {
                before_id: Some(all[1].id),
                limit: 1,
                ..Default::default()
            })
            .await,
            [pair("n1", "r2")]
        );
        assert!(
            ids(ReportQuery {
                since: Some(now_micros() + 60_000_000),
                ..Default::default()
            })
            .await
            .is_empty()
        );

        // Nodes: the enrolled ones (not n3, which only sent reports), each
        // with its newest run by the time it finished.
        let admin = actor("root");
        let production = Assignment {
            role: "web".into(),
            channel: "production".into(),
        };
        store
            .create_token(
                NewToken {
                    id: "fleet".into(),
                    secret_sha256: "hash of fleet".into(),
                    assignment: production.clone(),
                    expires_at: t + 3_600_000_000,
                    uses_allowed: 10,
                },
                &admin,
            )
            .await
            .unwrap();
        for name in ["n1", "n2", "n4", "n5", "n6"] {
            let e = Enrollment {
                token_id: "fleet".into(),
                secret_sha256: "hash of fleet".into(),
                name: name.into(),
                fingerprint: format!("fp-{name}"),
                facts_json: None,
            };
            store.enroll(e, &admin).await.unwrap().unwrap();
        }
        store.revoke_node("n4", &admin).await.unwrap();
        let asked = ["n1", "n4", "nobody", "n5"].map(String::from);
        assert_eq!(store.revoked_nodes(&asked).await.unwrap(), ["n4"]);
        assert!(store.revoked_nodes(&[]).await.unwrap().is_empty());
        let mut current = new_report("n2", "r5", t + 30, RunStatus::Unchanged);
        current.meta.role_version = 1;
        let older = new_report("n5", "r6", t + 30, RunStatus::Unchanged);
        store.store_reports(&[current, older]).await.unwrap();
        let nodes = store.fleet_nodes("", 100).await.unwrap();
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n4", "n5", "n6"]);
        let n1 = &nodes[0];
        assert_eq!(
            (n1.role.as_str(), n1.channel.as_str()),
            ("web", "production")
        );
        let last = n1.last.as_ref().unwrap();
        assert_eq!((last.status, last.finished_at), (RunStatus::Failed, t + 20));
        assert_eq!(last.report_id, all[0].id, "r3, the newest run");
        assert_eq!(last.interval_secs, 1800);
        assert!(!last.stale(now_micros()));
        assert!(last.stale(now_micros() + 3601 * 1_000_000));
        assert!(nodes[2].revoked && nodes[4].last.is_none());
        let page: Vec<String> = store
            .fleet_nodes("n2", 2)
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(page, ["n4", "n5"]);
        let (n1, facts) = store.fleet_node("n1").await.unwrap();
        assert_eq!(
            (n1.name.as_str(), facts.as_str()),
            ("n1", r#"{"run":"r3"}"#)
        );
        assert!(matches!(
            store.fleet_node("n3").await,
            Err(StoreError::NotFound(_))
        ));
        // n1 failing, n2 on the promoted version 1, n5 on version 2 (older or
        // not, it is not the promoted one), n6 never reported; n4 revoked.
        let status = store.fleet_status(now_micros()).await.unwrap();
        assert_eq!(
            status,
            [ChannelStatus {
                role: "web".into(),
                channel: "production".into(),
                promoted: Some(1),
                nodes: 4,
                on_promoted: 1,
                on_older: 1,
                failing: 1,
                stale: 0,
                never_reported: 1,
            }]
        );
        let later = store
            .fleet_status(now_micros() + 3601 * 1_000_000)
            .await
            .unwrap();
        assert_eq!(later[0].stale, 3);

        // Retention: by the server's clock, in batches.
        let old = |run: &str| {
            let mut r = new_report("n3", run, t, RunStatus::Unchanged);
            r.meta.received_at = t - 40 * 86_400_000_000;
            r
        };
        store
            .store_reports(&[old("o1"), old("o2"), old("o3")])
            .await
            .unwrap();
        let cutoff = t - 30 * 86_400_000_000;
        assert_runs_counted(store.as_ref(), "with old reports").await;
        assert_eq!(store.delete_reports_before(cutoff, 2).await.unwrap(), 2);
        assert_runs_counted(store.as_ref(), "after retention deleted some").await;
        assert_eq!(store.delete_reports_before(cutoff, 2).await.unwrap(), 1);
        assert_eq!(store.delete_reports_before(cutoff, 2).await.unwrap(), 0);
        assert_runs_counted(store.as_ref(), "after retention").await;

        assert_eq!(
            store
                .reports(&ReportQuery {
                    limit: 100,
                    ..Default::default()
                })
                .await
                .unwrap()
                .len(),
            6,
            "younger reports are kept"
        );
    }
}
