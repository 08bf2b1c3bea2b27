//! The tables an archive holds (`cairn-server export`, `import`: see
//! `crate::archive`), described once for both backends: each table's columns
//! and their kinds, the order its rows are read in, and the order tables are
//! restored in (a table after those its foreign keys name).
//!
//! A backend reads and writes these rows generically ([`Store::export_rows`],
//! [`Store::restore`]), so an archive is the same whichever backend wrote it
//! and restores into either.

use super::Result;

/// What a column holds; every kind may be `NULL` where the column allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// BIGINT (INTEGER in SQLite).
    Int,
    Text,
    /// BLOB (BYTEA in PostgreSQL).
    Bytes,
    Bool,
}

impl Kind {
    /// This kind's `NULL`.
    pub const fn null(self) -> Value {
        match self {
            Kind::Int => Value::Int(None),
            Kind::Text => Value::Text(None),
            Kind::Bytes => Value::Bytes(None),
            Kind::Bool => Value::Bool(None),
        }
    }
}

#[derive(Debug)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub nullable: bool,
    /// Set on a column a migration added to an existing table: rows of an
    /// archive written at an older schema lack it.
    pub added: Option<Added>,
}

/// The migration that added a column, and what it gave the rows already
/// there: what an import gives the rows of an older archive.
#[derive(Debug)]
pub struct Added {
    pub migration: i64,
    pub older_rows: Value,
}

/// The schema version of this build: its newest migration. An archive
/// records the one it was written at.
pub const SCHEMA_VERSION: i64 = 10;

/// The schema version of the first release that exported (archive format 1,
/// whose manifest does not say): no archive is older, so the columns added
/// by migrations up to it are in every archive.
pub const FIRST_ARCHIVE_SCHEMA: i64 = 8;

impl Table {
    /// The columns this table had at schema version `schema` (at most
    /// [`SCHEMA_VERSION`]), in order.
    pub fn columns_at(&self, schema: i64) -> impl Iterator<Item = &Column> {
        self.columns
            .iter()
            .filter(move |c| c.added.as_ref().is_none_or(|a| a.migration <= schema))
    }
}

#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    /// What its rows are, for messages ("role versions").
    pub what: &'static str,
    pub columns: &'static [Column],
    /// The `ORDER BY` its rows are read in: its primary key.
    pub key: &'static str,
    /// Its `id` is given by the database from a sequence (PostgreSQL's
    /// identity, SQLite's AUTOINCREMENT), which must continue after the
    /// restored ids.
    pub id_sequence: bool,
    /// Part of the run reports, exported only when asked (`--with-reports`).
    pub reports: bool,
}

/// One value of a row, of its column's kind; `None` is `NULL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    Bool(Option<bool>),
}

/// A row: one value per column, in the table's column order.
pub type Row = Vec<Value>;

/// A transaction restoring an archive into an empty database
/// ([`Store::restore`](super::Store::restore)): dropped without
/// [`Restore::commit`], nothing of it stays.
#[async_trait::async_trait]
pub trait Restore: Send {
    /// Inserts `rows` into `table` as they are, ids included.
    async fn insert(&mut self, table: &'static Table, rows: &[Row]) -> Result<()>;

    /// Rebuilds what is derived from the rows inserted (the reports counted
    /// per hour) and commits everything. Ids the database gives from now on
    /// follow the restored ones.
    async fn commit(self: Box<Self>) -> Result<()>;
}

const fn col(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        nullable: false,
        added: None,
    }
}

const fn null(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        nullable: true,
        added: None,
    }
}

/// A nullable column `migration` added (`ALTER TABLE … ADD COLUMN`), `NULL`
/// in the rows already there.
const fn null_since(migration: i64, name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        nullable: true,
        added: Some(Added {
            migration,
            older_rows: kind.null(),
        }),
    }
}

use Kind::{Bool, Bytes, Int, Text};

/// Every table an archive holds, in the order they are restored.
pub const ALL: [&Table; 10] = [
    &ROLE_VERSIONS,
    &CHANNELS,
    &CHANNEL_EVENTS,
    &AUDIT_LOG,
    &OPERATORS,
    &TOKENS,
    &NODES,
    &REPORTS,
    &NODE_RUNS,
    &CA,
];

/// Tables no archive holds: the dashboard's sign-in links and sessions,
/// which last hours and are bound to one server's address (after a restore,
/// operators sign in again); and the reports counted per hour, derived from
/// the reports and rebuilt from them when an archive is restored
/// ([`Restore::commit`]).
pub const LEFT_OUT: [&str; 3] = ["ui_links", "ui_sessions", "report_hours"];

pub const ROLE_VERSIONS: Table = Table {
    name: "role_versions",
    what: "role versions",
    columns: &[
        col("role", Text),
        col("version", Int),
        col("digest", Text),
        col("author", Text),
        col("message", Text),
        col("created_at", Int),
        col("bundle", Bytes),
    ],
    key: "role, version",
    id_sequence: false,
    reports: false,
};

pub const CHANNELS: Table = Table {
    name: "channels",
    what: "channels",
    columns: &[
        col("role", Text),
        col("channel", Text),
        col("version", Int),
        col("updated_at", Int),
        col("updated_by", Text),
    ],
    key: "role, channel",
    id_sequence: false,
    reports: false,
};

pub const CHANNEL_EVENTS: Table = Table {
    name: "channel_events",
    what: "channel moves (promotions and rollbacks)",
    columns: &[
        col("id", Int),
        col("role", Text),
        col("channel", Text),
        col("action", Text),
        null("from_version", Int),
        col("to_version", Int),
        null("undoes", Int),
        col("actor", Text),
        col("at", Int),
    ],
    key: "id",
    id_sequence: true,
    reports: false,
};

/// As stored, hashes included: the chain verifies after a restore because
/// ids, times and fields are the same.
pub const AUDIT_LOG: Table = Table {
    name: "audit_log",
    what: "audit entries",
    columns: &[
        col("id", Int),
        col("at", Int),
        col("actor", Text),
        col("actor_role", Text),
        col("action", Text),
        col("target", Text),
        col("detail", Text),
        col("peer", Text),
        col("outcome", Text),
        col("hash", Text),
    ],
    key: "id",
    // PostgreSQL's writer numbers entries itself (the last id plus one).
    id_sequence: false,
    reports: false,
};

pub const OPERATORS: Table = Table {
    name: "operators",
    what: "operators",
    columns: &[
        col("name", Text),
        col("role", Text),
        null("fingerprint", Text),
        col("updated_at", Int),
        null("revoked_at", Int),
    ],
    key: "name",
    id_sequence: false,
    reports: false,
};

/// Only the SHA-256 of each secret, as stored.
pub const TOKENS: Table = Table {
    name: "tokens",
    what: "join tokens",
    columns: &[
        col("id", Text),
        col("secret_sha256", Text),
        col("role", Text),
        col("channel", Text),
        col("created_by", Text),
        col("created_at", Int),
        col("expires_at", Int),
        col("uses_allowed", Int),
        col("uses_used", Int),
        null("revoked_at", Int),
    ],
    key: "id",
    id_sequence: false,
    reports: false,
};

pub const NODES: Table = Table {
    name: "nodes",
    what: "nodes",
    columns: &[
        col("name", Text),
        col("role", Text),
        col("channel", Text),
        col("fingerprint", Text),
        col("enrolled_at", Int),
        null("revoked_at", Int),
        col("token_id", Text),
        null("facts", Text),
        // A renewal's answer the node may not have received.
        null_since(10, "previous_fingerprint", Text),
    ],
    key: "name",
    id_sequence: false,
    reports: false,
};

pub const REPORTS: Table = Table {
    name: "reports",
    what: "run reports",
    columns: &[
        col("id", Int),
        col("node", Text),
        col("run_id", Text),
        col("role", Text),
        col("channel", Text),
        col("role_version", Int),
        col("role_digest", Text),
        col("status", Text),
        col("noop", Bool),
        col("from_cache", Bool),
        col("resources", Int),
        col("changed", Int),
        col("failed", Int),
        col("finished_at", Int),
        col("received_at", Int),
        col("report", Bytes),
    ],
    key: "id",
    id_sequence: true,
    reports: true,
};

/// Each node's newest run: it names a report, so it goes with them.
pub const NODE_RUNS: Table = Table {
    name: "node_runs",
    what: "nodes' last runs",
    columns: &[
        col("node", Text),
        col("report_id", Int),
        col("role", Text),
        col("channel", Text),
        col("role_version", Int),
        col("status", Text),
        col("from_cache", Bool),
        col("finished_at", Int),
        col("seen_at", Int),
        col("interval_secs", Int),
        col("facts", Text),
    ],
    key: "node",
    id_sequence: false,
    reports: true,
};

/// The CA's certificate and private key.
pub const CA: Table = Table {
    name: "ca",
    what: "CA",
    columns: &[
        col("id", Int),
        col("cert_pem", Text),
        col("key_pem", Text),
        col("created_at", Int),
    ],
    key: "id",
    id_sequence: false,
    reports: false,
};

/// The error for a database that is not empty: `counts` pairs each table
/// with its rows.
pub fn not_empty(place: &str, counts: &[(&Table, i64)]) -> super::StoreError {
    let held: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(t, n)| format!("{n} {}", t.what))
        .collect();
    super::StoreError::Conflict(format!(
        "the {place} is not empty: it holds {}; an archive is restored only into an empty \
         database\n  help: import into a new database, before any cairn-server has served it \
         (a server stores its CA at its first start)",
        held.join(", ")
    ))
}

/// The columns of `table` for a `SELECT`; with `cast_ints`, integer columns
/// are read as BIGINT whatever their width (PostgreSQL's `ca.id` is INTEGER).
pub(super) fn select_list(table: &Table, cast_ints: bool) -> String {
    let columns: Vec<String> = table
        .columns
        .iter()
        .map(|c| match c.kind {
            Kind::Int if cast_ints => format!("{0}::bigint AS {0}", c.name),
            _ => c.name.to_string(),
        })
        .collect();
    columns.join(", ")
}

/// The values of a row read with [`select_list`].
pub(super) fn decode_row<'r, R>(table: &Table, row: &'r R) -> std::result::Result<Row, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<bool>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Ok(match c.kind {
                Kind::Int => Value::Int(row.try_get(i)?),
                Kind::Text => Value::Text(row.try_get(i)?),
                Kind::Bytes => Value::Bytes(row.try_get(i)?),
                Kind::Bool => Value::Bool(row.try_get(i)?),
            })
        })
        .collect()
}

/// Most rows one `INSERT` of a restore carries: within both backends' limits
/// of bound values (a row binds at most 16).
pub const MAX_ROWS_PER_INSERT: usize = 256;

/// One `INSERT` of `rows` (at most [`MAX_ROWS_PER_INSERT`]) into `table`.
pub(super) fn insert_rows<'a, DB>(table: &Table, rows: &'a [Row]) -> sqlx::QueryBuilder<'a, DB>
where
    DB: sqlx::Database,
    DB::Arguments<'a>: Default,
    Option<i64>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<&'a str>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<&'a [u8]>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<bool>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let names: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
    let mut insert = sqlx::QueryBuilder::new(format!(
        "INSERT INTO {} ({}) ",
        table.name,
        names.join(", ")
    ));
    insert.push_values(rows, |mut b, row| {
        for value in row {
            match value {
                Value::Int(v) => b.push_bind(*v),
                Value::Text(v) => b.push_bind(v.as_deref()),
                Value::Bytes(v) => b.push_bind(v.as_deref()),
                Value::Bool(v) => b.push_bind(*v),
            };
        }
    });
    insert
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each migration of `backend` (`sqlite`, `postgres`): its number and SQL.
    fn migrations(backend: &str) -> Vec<(i64, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(backend);
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_str().unwrap().to_string();
                let number = name.split('_').next().unwrap().parse().unwrap();
                (number, std::fs::read_to_string(&path).unwrap())
            })
            .collect()
    }

    #[test]
    fn the_schema_version_is_the_newest_migration_of_both_backends() {
        for backend in ["sqlite", "postgres"] {
            let newest = migrations(backend).iter().map(|(n, _)| *n).max();
            assert_eq!(newest, Some(SCHEMA_VERSION), "{backend}");
        }
    }

    /// An archive written before a column was added can be imported only if
    /// the column says which migration added it (and what older rows get):
    /// every `ALTER TABLE t ADD [COLUMN] c` after the first archive's schema
    /// is marked, and nothing else is.
    #[test]
    fn every_column_a_migration_added_since_the_first_archive_says_so() {
        for backend in ["sqlite", "postgres"] {
            let mut added = Vec::new();
            for (number, sql) in migrations(backend) {
                let words: Vec<&str> = sql.split_whitespace().collect();
                for w in words.windows(6) {
                    if !(w[0].eq_ignore_ascii_case("alter")
                        && w[1].eq_ignore_ascii_case("table")
                        && w[3].eq_ignore_ascii_case("add"))
                    {
                        continue;
                    }
                    let column = if w[4].eq_ignore_ascii_case("column") {
                        w[5]
                    } else {
                        w[4]
                    };
                    assert!(
                        !column.eq_ignore_ascii_case("constraint"),
                        "{backend} {number}: extend this test to constraints"
                    );
                    added.push((number, w[2].to_string(), column.to_string()));
                }
            }
            assert!(
                added.iter().any(|(_, _, c)| c == "previous_fingerprint"),
                "{backend}: {added:?}"
            );
            for (number, table, column) in &added {
                if LEFT_OUT.contains(&table.as_str()) || *number <= FIRST_ARCHIVE_SCHEMA {
                    continue;
                }
                let table = ALL.iter().find(|t| t.name == table).unwrap();
                let column = table.columns.iter().find(|c| c.name == column).unwrap();
                assert_eq!(
                    column.added.as_ref().map(|a| a.migration),
                    Some(*number),
                    "{backend}: column {}.{} was added by migration {number}",
                    table.name,
                    column.name
                );
            }
            for table in ALL {
                for column in table.columns {
                    if let Some(a) = &column.added {
                        assert!(
                            added.iter().any(|(n, t, c)| {
                                *n == a.migration && t == table.name && c == column.name
                            }),
                            "{backend}: no migration {} adds {}.{}",
                            a.migration,
                            table.name,
                            column.name
                        );
                        assert!(
                            a.migration > FIRST_ARCHIVE_SCHEMA && a.migration <= SCHEMA_VERSION
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn an_older_schema_lacks_the_columns_added_after_it() {
        let names = |schema| NODES.columns_at(schema).map(|c| c.name).collect::<Vec<_>>();
        assert!(!names(FIRST_ARCHIVE_SCHEMA).contains(&"previous_fingerprint"));
        assert_eq!(names(SCHEMA_VERSION).len(), NODES.columns.len());
        assert_eq!(
            NODES
                .columns
                .last()
                .unwrap()
                .added
                .as_ref()
                .unwrap()
                .older_rows,
            Value::Text(None)
        );
    }

    /// A table a migration creates is either in every archive or left out on
    /// purpose: a new table is never silently missing from backups.
    #[test]
    fn every_table_the_migrations_create_is_archived_or_left_out_on_purpose() {
        for backend in ["sqlite", "postgres"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(backend);
            let mut created = Vec::new();
            for entry in std::fs::read_dir(&dir).unwrap() {
                let sql = std::fs::read_to_string(entry.unwrap().path()).unwrap();
                let words: Vec<&str> = sql.split_whitespace().collect();
                for w in words.windows(3) {
                    if w[0].eq_ignore_ascii_case("create") && w[1].eq_ignore_ascii_case("table") {
                        created.push(w[2].trim_matches(|c| c == '"' || c == '(').to_string());
                    }
                }
            }
            assert!(created.len() > LEFT_OUT.len(), "{backend}: {created:?}");
            for table in &created {
                assert!(
                    ALL.iter().any(|t| t.name == table) || LEFT_OUT.contains(&table.as_str()),
                    "{backend}: table {table} is neither in tables::ALL nor in tables::LEFT_OUT"
                );
            }
            for table in ALL.iter().map(|t| t.name).chain(LEFT_OUT) {
                assert!(
                    created.iter().any(|c| c == table),
                    "{backend}: no table {table}"
                );
            }
        }
    }
}
