//! Export and import in SQLite: the rows of [`tables`] read in one read
//! transaction, and restored in one write transaction.

use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::*;
use crate::store::tables::{self, Restore, Row, Table};

impl SqliteStore {
    pub(super) async fn export_rows_in_sqlite(
        &self,
        tables: &[&'static Table],
        rows: mpsc::Sender<(usize, Row)>,
    ) -> Result<()> {
        // A deferred transaction: its first read takes the snapshot (of the
        // WAL) that every later read in it sees.
        let mut tx = self.pool.begin().await.map_err(db("begin the export"))?;
        for (i, table) in tables.iter().enumerate() {
            let sql = format!(
                "SELECT {} FROM {} ORDER BY {}",
                tables::select_list(table, false),
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

    pub(super) async fn restore_in_sqlite(&self) -> Result<Box<dyn Restore + '_>> {
        let writer = self.write.lock().await;
        let mut tx = self.begin("begin the import").await?;
        let mut counts = Vec::with_capacity(tables::ALL.len());
        for table in tables::ALL {
            let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", table.name))
                .fetch_one(&mut *tx)
                .await
                .map_err(db(format!("count the {}", table.what)))?;
            counts.push((table, n));
        }
        if counts.iter().any(|(_, n)| *n > 0) {
            let place = format!("database {}", self.path.display());
            return Err(tables::not_empty(&place, &counts));
        }
        Ok(Box::new(SqliteRestore {
            _writer: writer,
            tx,
        }))
    }
}

struct SqliteRestore<'a> {
    /// This process's writers wait; `BEGIN IMMEDIATE` holds off the others'.
    _writer: tokio::sync::MutexGuard<'a, ()>,
    tx: Transaction<'static, Sqlite>,
}

#[async_trait::async_trait]
impl Restore for SqliteRestore<'_> {
    async fn insert(&mut self, table: &'static Table, rows: &[Row]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        tables::insert_rows::<Sqlite>(table, rows)
            .build()
            .persistent(false)
            .execute(&mut *self.tx)
            .await
            .map_err(db(format!("restore the {}", table.what)))?;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        // What no archive holds is derived from what it held.
        for sql in REBUILD_HOURS {
            sqlx::query(sql)
                .execute(&mut *self.tx)
                .await
                .map_err(db("count the restored reports per hour"))?;
        }
        // AUTOINCREMENT goes on from the largest id inserted by itself.
        self.tx.commit().await.map_err(db("commit the import"))
    }
}
