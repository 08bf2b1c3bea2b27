//! Schema versions: the migrations a database has applied, against those this
//! build knows (`server/migrations/BACKEND/NNNN_description.sql`), and what
//! opening a database does about the difference ([`Pending`]).
//!
//! One rule for both backends: a database that applied a migration this build
//! does not know was migrated by a newer `cairn-server`, and is refused
//! whatever the policy, since this build would misread what that migration
//! changed.

use super::{Result, StoreError};

/// One migration, by its number and the description in its file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    pub description: String,
}

impl std::fmt::Display for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04} {}", self.version, self.description)
    }
}

/// What opening does with migrations this build has and the database has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// Applies them (`cairn-server migrate`; `serve` on SQLite, where one
    /// server owns the database).
    Apply,
    /// Refuses to open, unless the database has none applied yet (a new
    /// database has no older server on it to break): `serve` on PostgreSQL,
    /// where an upgraded replica must not change the schema under the others.
    Refuse,
}

/// The migrations of `known` that `applied` lacks, oldest first; an error if
/// `applied` holds one `known` does not (the database is newer than this build).
/// `place` names the database, for the message.
pub fn pending(known: &[Migration], applied: &[Migration], place: &str) -> Result<Vec<Migration>> {
    let newest_known = known.iter().map(|m| m.version).max().unwrap_or(0);
    if let Some(unknown) = applied
        .iter()
        .find(|a| !known.iter().any(|k| k.version == a.version))
    {
        let newest_applied = applied.iter().map(|a| a.version).max().unwrap_or(0);
        return Err(StoreError::Schema(format!(
            "the schema of the {place} is at version {newest_applied} (migration {unknown} was \
             applied by a newer cairn-server); this cairn-server knows versions up to \
             {newest_known}\n  help: run the cairn-server release that migrated it (or a newer \
             one), or restore the database from a backup taken before that migration"
        )));
    }
    Ok(known
        .iter()
        .filter(|k| !applied.iter().any(|a| a.version == k.version))
        .cloned()
        .collect())
}

/// The error for a database that lacks `pending` under [`Pending::Refuse`].
pub fn out_of_date(place: &str, applied: &[Migration], pending: &[Migration]) -> StoreError {
    let current = applied.iter().map(|a| a.version).max().unwrap_or(0);
    let list: Vec<String> = pending.iter().map(Migration::to_string).collect();
    StoreError::Schema(format!(
        "the schema of the {place} is at version {current}, and this cairn-server needs {} more \
         migration(s): {}\n  help: run `cairn-server migrate --database URL` once (other servers \
         on the database keep running), then start this server again",
        pending.len(),
        list.join(", ")
    ))
}

/// The migrations this build knows for a backend, from sqlx's embedded set.
pub fn known(migrator: &sqlx::migrate::Migrator) -> Vec<Migration> {
    migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| Migration {
            version: m.version,
            description: m.description.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(version: i64) -> Migration {
        Migration {
            version,
            description: format!("step {version}"),
        }
    }

    #[test]
    fn pending_migrations_are_those_not_applied_and_a_newer_database_is_refused() {
        let known = [m(1), m(2), m(3)];
        assert_eq!(pending(&known, &[], "db").unwrap(), known);
        assert_eq!(pending(&known, &[m(1)], "db").unwrap(), [m(2), m(3)]);
        assert_eq!(pending(&known, &known, "db").unwrap(), []);
        let err = pending(&known, &[m(1), m(2), m(3), m(9)], "database x at h:1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("database x at h:1 is at version 9")
                && err.contains("migration 0009 step 9")
                && err.contains("knows versions up to 3")
                && err.contains("help:"),
            "{err}"
        );
        let err = out_of_date("db", &[m(1)], &[m(2), m(3)]).to_string();
        assert!(
            err.contains("at version 1")
                && err.contains("0002 step 2, 0003 step 3")
                && err.contains("cairn-server migrate"),
            "{err}"
        );
    }
}
