//! Rows as both backends read them, and what they become: the tables are the
//! same in SQLite and PostgreSQL (`migrations/sqlite/`, `migrations/postgres/`),
//! so one definition decodes either.

use super::*;

#[derive(sqlx::FromRow)]
pub(super) struct VersionRow {
    pub(super) role: String,
    pub(super) version: i64,
    pub(super) digest: String,
    pub(super) author: String,
    pub(super) message: String,
    pub(super) created_at: i64,
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
pub(super) struct ChannelRow {
    pub(super) role: String,
    pub(super) channel: String,
    pub(super) version: i64,
    pub(super) updated_at: i64,
    pub(super) updated_by: String,
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
pub(super) struct AuditRow {
    pub(super) id: i64,
    pub(super) at: i64,
    pub(super) actor: String,
    pub(super) actor_role: String,
    pub(super) action: String,
    pub(super) target: String,
    pub(super) detail: String,
    pub(super) peer: String,
    pub(super) outcome: String,
    pub(super) hash: Option<String>,
}

impl From<AuditRow> for AuditRecord {
    fn from(r: AuditRow) -> Self {
        AuditRecord {
            id: r.id as u64,
            at: r.at,
            actor: r.actor,
            actor_role: r.actor_role,
            action: r.action,
            target: r.target,
            detail: r.detail,
            peer: r.peer,
            outcome: r.outcome,
            hash: r.hash.unwrap_or_default(),
            full_digest: None,
        }
    }
}

pub(super) const AUDIT_COLUMNS: &str =
    "id, at, actor, actor_role, action, target, detail, peer, outcome, hash";

pub(super) const VERSION_COLUMNS: &str = "role, version, digest, author, message, created_at";

#[derive(sqlx::FromRow)]
pub(super) struct TokenRow {
    pub(super) id: String,
    pub(super) role: String,
    pub(super) channel: String,
    pub(super) created_by: String,
    pub(super) created_at: i64,
    pub(super) expires_at: i64,
    pub(super) uses_allowed: i64,
    pub(super) uses_used: i64,
    pub(super) revoked_at: Option<i64>,
}

pub(super) const TOKEN_COLUMNS: &str =
    "id, role, channel, created_by, created_at, expires_at, uses_allowed, uses_used, revoked_at";

impl From<TokenRow> for TokenRecord {
    fn from(r: TokenRow) -> Self {
        TokenRecord {
            id: r.id,
            assignment: Assignment {
                role: r.role,
                channel: r.channel,
            },
            created_by: r.created_by,
            created_at: r.created_at,
            expires_at: r.expires_at,
            uses_allowed: r.uses_allowed.clamp(0, u32::MAX.into()) as u32,
            uses_used: r.uses_used.clamp(0, u32::MAX.into()) as u32,
            revoked_at: r.revoked_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct NodeRow {
    pub(super) name: String,
    pub(super) role: String,
    pub(super) channel: String,
    pub(super) fingerprint: String,
    pub(super) enrolled_at: i64,
    pub(super) revoked_at: Option<i64>,
    pub(super) token_id: String,
    pub(super) facts: Option<String>,
}

pub(super) const NODE_COLUMNS: &str =
    "name, role, channel, fingerprint, enrolled_at, revoked_at, token_id, facts";

impl From<NodeRow> for NodeRecord {
    fn from(r: NodeRow) -> Self {
        NodeRecord {
            name: r.name,
            assignment: Assignment {
                role: r.role,
                channel: r.channel,
            },
            fingerprint: r.fingerprint,
            enrolled_at: r.enrolled_at,
            revoked_at: r.revoked_at,
            token_id: r.token_id,
            facts_json: r.facts,
        }
    }
}

/// A node's role, channel, current and previous certificates' fingerprints,
/// and revocation: what [`standing_of`] reads.
pub(super) type StandingRow = (String, String, String, Option<String>, Option<i64>);

/// The standing of the certificate `fingerprint` of the node `row` is (if any).
pub(super) fn standing_of(row: Option<StandingRow>, fingerprint: &str) -> NodeStanding {
    match row {
        None => NodeStanding::Unknown,
        Some((_, _, _, _, Some(_))) => NodeStanding::Revoked,
        Some((role, channel, current, previous, None)) => {
            let assignment = Assignment { role, channel };
            if current == fingerprint {
                if previous.is_some() {
                    NodeStanding::Renewed(assignment)
                } else {
                    NodeStanding::Current(assignment)
                }
            } else if previous.as_deref() == Some(fingerprint) {
                NodeStanding::Previous(assignment)
            } else {
                NodeStanding::Replaced
            }
        }
    }
}

/// The audit detail of a renewal: `from_previous` when the node renewed with
/// its previous certificate (the answer to its last renewal never reached it).
pub(super) fn renewal_detail(
    assignment: &Assignment,
    recorded_at: Micros,
    from_previous: bool,
    valid_until: Micros,
) -> String {
    let replaced = if from_previous {
        "renewed with its previous certificate, replacing the unused one recorded at"
    } else {
        "replaced the certificate recorded at"
    };
    format!(
        "{assignment}; {replaced} {}; valid until {}",
        crate::service::rfc3339(recorded_at),
        crate::service::rfc3339(valid_until)
    )
}

/// Why the token (already read) admits no enrollment at `now`, if it does not.
pub(super) fn refusal(token: &TokenRecord, now: Micros) -> Option<TokenRefusal> {
    if let Some(at) = token.revoked_at {
        Some(TokenRefusal::Revoked { at })
    } else if token.expires_at <= now {
        Some(TokenRefusal::Expired {
            at: token.expires_at,
        })
    } else if token.uses_used >= token.uses_allowed {
        Some(TokenRefusal::UsedUp {
            uses: token.uses_allowed,
        })
    } else {
        None
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct ReportRow {
    pub(super) id: i64,
    pub(super) node: String,
    pub(super) run_id: String,
    pub(super) role: String,
    pub(super) channel: String,
    pub(super) role_version: i64,
    pub(super) role_digest: String,
    pub(super) status: String,
    pub(super) noop: bool,
    pub(super) from_cache: bool,
    pub(super) resources: i64,
    pub(super) changed: i64,
    pub(super) failed: i64,
    pub(super) finished_at: i64,
    pub(super) received_at: i64,
}

pub(super) const REPORT_COLUMNS: &str = "id, node, run_id, role, channel, role_version, role_digest, status, \
     noop, from_cache, resources, changed, failed, finished_at, received_at";

/// The reports `q` asks for, newest first, naming only the filters given,
/// so that the planner picks the index of the one there is (`node = ? OR ?
/// IS NULL` would walk every report; a prepared one gets a generic plan
/// that does the same in PostgreSQL).
pub(super) fn select_reports<'a, DB>(q: &'a ReportQuery) -> sqlx::QueryBuilder<'a, DB>
where
    DB: sqlx::Database,
    DB::Arguments<'a>: Default,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut sql =
        sqlx::QueryBuilder::new(format!("SELECT {REPORT_COLUMNS} FROM reports WHERE id < "));
    sql.push_bind(q.before_id.map_or(i64::MAX, |id| id as i64));
    if let Some(node) = &q.node {
        sql.push(" AND node = ").push_bind(node.as_str());
    }
    if let Some(role) = &q.role {
        sql.push(" AND role = ").push_bind(role.as_str());
    }
    if let Some(status) = q.status {
        sql.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(since) = q.since {
        sql.push(" AND received_at >= ").push_bind(since);
    }
    sql.push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(q.limit));
    sql
}

/// The audit log page `query` asks for, narrowed by `filter` (only the
/// filters given: each is then read from its index), as `columns`; one query
/// for both backends.
pub(super) fn select_audit<'a, DB>(
    columns: &str,
    query: &AuditQuery,
    filter: &'a AuditFilter,
) -> sqlx::QueryBuilder<'a, DB>
where
    DB: sqlx::Database,
    DB::Arguments<'a>: Default,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut q = sqlx::QueryBuilder::new(format!("SELECT {columns} FROM audit_log WHERE at >= "));
    q.push_bind(query.since.unwrap_or(i64::MIN));
    let order = match query.from {
        AuditCursor::After(id) => {
            q.push(" AND id > ").push_bind(id as i64);
            "ASC"
        }
        AuditCursor::Before(Some(id)) => {
            q.push(" AND id < ").push_bind(id as i64);
            "DESC"
        }
        AuditCursor::Before(None) => "DESC",
    };
    if let Some(actor) = &filter.actor {
        q.push(" AND actor = ").push_bind(actor.as_str());
    }
    if let Some(action) = &filter.action {
        q.push(" AND action = ").push_bind(action.as_str());
    }
    q.push(format!(" ORDER BY id {order} LIMIT "))
        .push_bind(i64::from(query.limit));
    q
}

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
pub(super) struct FleetRow {
    pub(super) name: String,
    pub(super) role: String,
    pub(super) channel: String,
    pub(super) revoked_at: Option<i64>,
    pub(super) report_id: Option<i64>,
    pub(super) run_role: Option<String>,
    pub(super) run_channel: Option<String>,
    pub(super) role_version: Option<i64>,
    pub(super) status: Option<String>,
    pub(super) from_cache: Option<bool>,
    pub(super) finished_at: Option<i64>,
    pub(super) seen_at: Option<i64>,
    pub(super) interval_secs: Option<i64>,
}

pub(super) const FLEET_COLUMNS: &str = "n.name, n.role, n.channel, n.revoked_at, r.report_id, \
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

/// Reports per hour and status (`report_hours`, migration 0009): `(hour
/// number, status, reports)`, by hour then status, one row per pair, each
/// report counting `each` (1 stored, -1 deleted).
pub(super) fn count_by_hour<'m>(
    reports: impl IntoIterator<Item = (Micros, &'m str)>,
    each: i64,
) -> Vec<(i64, &'m str, i64)> {
    let mut counts = std::collections::BTreeMap::<(i64, &str), i64>::new();
    for (received_at, status) in reports {
        *counts
            .entry((received_at / dashboard::HOUR, status))
            .or_default() += each;
    }
    counts.into_iter().map(|((h, s), n)| (h, s, n)).collect()
}

/// One statement adding `counts` ([`count_by_hour`], at most a few thousand:
/// a batch's reports span an hour or two) to `report_hours`, negative counts
/// taking away; rows are locked in key order, so two writers never wait for
/// each other in a cycle. Rows left at zero or below are deleted after by
/// [`DELETE_EMPTY_HOURS`].
pub(super) fn add_to_hours<'a, DB>(counts: &'a [(i64, &'a str, i64)]) -> sqlx::QueryBuilder<'a, DB>
where
    DB: sqlx::Database,
    DB::Arguments<'a>: Default,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut upsert = sqlx::QueryBuilder::new("INSERT INTO report_hours (hour, status, runs) ");
    upsert.push_values(counts, |mut row, (hour, status, n)| {
        row.push_bind(*hour).push_bind(*status).push_bind(*n);
    });
    upsert
        .push(" ON CONFLICT (hour, status) DO UPDATE SET runs = report_hours.runs + excluded.runs");
    upsert
}

/// Deletes the hours with no reports left (after retention).
pub(super) const DELETE_EMPTY_HOURS: &str = "DELETE FROM report_hours WHERE runs <= 0";

/// Rebuilds `report_hours` from `reports` (after an import).
pub(super) const REBUILD_HOURS: [&str; 2] = [
    "DELETE FROM report_hours",
    "INSERT INTO report_hours (hour, status, runs) \
     SELECT received_at / 3600000000, status, COUNT(*) FROM reports \
     GROUP BY received_at / 3600000000, status",
];

/// The hours of `report_hours` from one (its number bound) on, oldest first:
/// SQLite's and PostgreSQL's spelling.
pub(super) const RUNS_BY_HOUR: (&str, &str) = (
    "SELECT hour, status, runs FROM report_hours WHERE hour >= ? AND runs > 0 \
     ORDER BY hour, status",
    "SELECT hour, status, runs FROM report_hours WHERE hour >= $1 AND runs > 0 \
     ORDER BY hour, status",
);
