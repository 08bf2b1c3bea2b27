//! Export and import in PostgreSQL: the rows of [`tables`] read in one
//! REPEATABLE READ transaction (one snapshot, while servers go on writing),
//! and restored in one transaction holding the tables against writers.

use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::*;
use crate::store::tables::{self, Restore, Row, Table};

/// Lifts the pool's statement and idle limits for this transaction: an
/// export or import of a large database may take longer than either.
async fn unlimited(tx: &mut Tx, op: &'static str) -> Result<()> {
    for sql in [
        "SET LOCAL statement_timeout = 0",
        "SET LOCAL idle_in_transaction_session_timeout = 0",
    ] {
        sqlx::query(sql).execute(&mut **tx).await.map_err(db(op))?;
    }
    Ok(())
}

impl PgStore {
    pub(super) async fn export_rows_in_postgres(
        &self,
        tables: &[&'static Table],
        rows: mpsc::Sender<(usize, Row)>,
    ) -> Result<()> {
        let mut tx = self.begin("begin the export").await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(db("begin the export"))?;
        unlimited(&mut tx, "begin the export").await?;
        for (i, table) in tables.iter().enumerate() {
            let sql = format!(
                "SELECT {} FROM {} ORDER BY {}",
                tables::select_list(table, true),
                table.name,
                table.key
            );
            let mut stream = sqlx::query(&sql).fetch(&mut *tx);
            while let Some(row) = stream.next().await {
                let row = row.map_err(db(format!("read the {}", table.what)))?;
                let values = tables::decode_row(table, &row)
                    .map_err(db(format!("read the {}", table.what)))?;
                if rows.send((i, values)).await.is_err() {
                    return Err(StoreError::Conflict(
                        "the export stopped before every row was read".into(),
                    ));
                }
            }
        }
        tx.commit().await.map_err(db("end the export"))
    }

    pub(super) async fn restore_in_postgres(&self) -> Result<Box<dyn Restore + '_>> {
        let mut tx = self.begin("begin the import").await?;
        unlimited(&mut tx, "begin the import").await?;
        // Other servers may read, not write, until the import ends; a server
        // starting meanwhile waits and then finds the database taken.
        let names: Vec<&str> = tables::ALL.iter().map(|t| t.name).collect();
        sqlx::query(&format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            names.join(", ")
        ))
        .execute(&mut *tx)
        .await
        .map_err(db("lock the tables for the import"))?;
        let mut counts = Vec::with_capacity(tables::ALL.len());
        for table in tables::ALL {
            let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", table.name))
                .fetch_one(&mut *tx)
                .await
                .map_err(db(format!("count the {}", table.what)))?;
            counts.push((table, n));
        }
        if counts.iter().any(|(_, n)| *n > 0) {
            return Err(tables::not_empty(&self.place, &counts));
        }
        Ok(Box::new(PgRestore { tx }))
    }
}

struct PgRestore {
    tx: Tx,
}

#[async_trait::async_trait]
impl Restore for PgRestore {
    async fn insert(&mut self, table: &'static Table, rows: &[Row]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        tables::insert_rows::<Postgres>(table, rows)
            .build()
            .persistent(false)
            .execute(&mut *self.tx)
            .await
            .map_err(db(format!("restore the {}", table.what)))?;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        // Rows inserted with their ids leave the identity sequences behind:
        // the next id given must follow the largest restored.
        for table in tables::ALL.iter().filter(|t| t.id_sequence) {
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence('{0}', 'id'), COALESCE(MAX(id), 0) + 1, false) \
                 FROM {0}",
                table.name
            ))
            .execute(&mut *self.tx)
            .await
            .map_err(db(format!("continue the ids of the {}", table.what)))?;
        }
        // What no archive holds is derived from what it held.
        for sql in REBUILD_HOURS {
            sqlx::query(sql)
                .execute(&mut *self.tx)
                .await
                .map_err(db("count the restored reports per hour"))?;
        }
        self.tx.commit().await.map_err(db("commit the import"))
    }
}
