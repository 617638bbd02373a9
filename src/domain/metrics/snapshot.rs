//! Where metric statements run: one read snapshot per query, confined to
//! the caller's tenant, whose statements the database stops at the
//! deadline.
//!
//! - PostgreSQL: a tenant-scoped (RLS) transaction with a local
//!   `statement_timeout`; the server cancels the statement. JIT is off.
//! - SQLite: a pooled connection with a progress handler that interrupts
//!   the statement once the deadline has passed, in a read transaction (one
//!   snapshot for every statement of the query). sea-orm hides the
//!   connection of its transactions, so this side speaks sqlx directly.
//!
//! [`within`](super::within) bounds the whole query as well, in case the
//! database does not get to check in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{self, Sqlite};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, QueryResult,
    RuntimeErr, Statement, StreamTrait, Values,
};
use sea_query_sqlx::SqlxValues;

use crate::auth::TenantCtx;
use crate::db::begin_scoped;

/// SQLite virtual-machine steps between two looks at the clock: small
/// enough to stop within about a millisecond, large enough to cost nothing.
const SQLITE_CHECK_EVERY: i32 = 10_000;

/// PostgreSQL's `query_canceled`, raised by `statement_timeout`.
const PG_QUERY_CANCELED: &str = "57014";
/// SQLite's `SQLITE_INTERRUPT`, returned when the progress handler stops a
/// statement.
const SQLITE_INTERRUPT: &str = "9";

pub struct Snapshot {
    conn: Conn,
}

enum Conn {
    Postgres(DatabaseTransaction),
    Sqlite(Interruptible),
}

impl Snapshot {
    /// Opens a session for `ctx`'s tenant whose statements the database
    /// stops `timeout` from now.
    pub async fn begin(
        db: &DatabaseConnection,
        ctx: &TenantCtx,
        timeout: Duration,
    ) -> Result<Snapshot, DbErr> {
        let conn = match db.get_database_backend() {
            DbBackend::Postgres => {
                let txn = begin_scoped(db, ctx).await?;
                // JIT compilation costs more than it saves on these scans:
                // measured 100-400 ms of a 300 ms-4 s statement on the
                // bench (bench/README.md).
                txn.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT set_config('statement_timeout', $1, true), set_config('jit', 'off', true)",
                    [timeout.as_millis().max(1).to_string().into()],
                ))
                .await?;
                Conn::Postgres(txn)
            }
            _ => {
                let pool = db.get_sqlite_connection_pool();
                let conn = pool.acquire().await.map_err(query_err)?;
                Conn::Sqlite(Interruptible::begin(conn, Instant::now() + timeout).await?)
            }
        };
        Ok(Snapshot { conn })
    }

    pub fn backend(&self) -> DbBackend {
        match &self.conn {
            Conn::Postgres(txn) => ConnectionTrait::get_database_backend(txn),
            Conn::Sqlite(_) => DbBackend::Sqlite,
        }
    }

    pub async fn query_all(&mut self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match &mut self.conn {
            Conn::Postgres(txn) => txn.query_all_raw(stmt).await,
            Conn::Sqlite(conn) => conn.query_all(stmt).await,
        }
    }

    /// Runs `stmt` and hands its rows to `each` one at a time as the
    /// database sends them, so that a caller keeping per-actor state never
    /// holds the whole result in memory.
    pub async fn for_each_row(
        &mut self,
        stmt: Statement,
        mut each: impl FnMut(&QueryResult) -> Result<(), DbErr> + Send,
    ) -> Result<(), DbErr> {
        match &mut self.conn {
            Conn::Postgres(txn) => {
                let mut rows = txn.stream_raw(stmt).await?;
                while let Some(row) = rows.try_next().await? {
                    each(&row)?;
                }
                Ok(())
            }
            Conn::Sqlite(conn) => conn.for_each_row(stmt, each).await,
        }
    }

    pub async fn query_one(&mut self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        Ok(self.query_all(stmt).await?.into_iter().next())
    }

    /// Ends the read transaction and gives the connection back.
    pub async fn finish(self) -> Result<(), DbErr> {
        match self.conn {
            Conn::Postgres(txn) => txn.commit().await,
            Conn::Sqlite(conn) => conn.finish().await,
        }
    }
}

/// Whether the database stopped a statement because its deadline passed.
pub fn cancelled_by_database(e: &DbErr) -> bool {
    let (DbErr::Query(RuntimeErr::SqlxError(e)) | DbErr::Exec(RuntimeErr::SqlxError(e))) = e else {
        return false;
    };
    let sqlx::Error::Database(e) = e.as_ref() else {
        return false;
    };
    matches!(
        e.code().as_deref(),
        Some(PG_QUERY_CANCELED | SQLITE_INTERRUPT)
    )
}

/// A SQLite connection that interrupts its statements past a deadline.
/// Dropped before [`finish`](Self::finish) (the query was abandoned), the
/// connection is closed rather than returned to the pool with the handler
/// and the transaction still on it.
struct Interruptible {
    conn: Option<PoolConnection<Sqlite>>,
}

impl Interruptible {
    async fn begin(mut conn: PoolConnection<Sqlite>, deadline: Instant) -> Result<Self, DbErr> {
        conn.lock_handle()
            .await
            .map_err(query_err)?
            .set_progress_handler(SQLITE_CHECK_EVERY, move || Instant::now() < deadline);
        let mut this = Interruptible { conn: Some(conn) };
        this.execute("BEGIN").await?;
        Ok(this)
    }

    fn conn(&mut self) -> Result<&mut PoolConnection<Sqlite>, DbErr> {
        self.conn
            .as_mut()
            .ok_or_else(|| DbErr::Custom("the metric snapshot has ended".into()))
    }

    async fn execute(&mut self, sql: &'static str) -> Result<(), DbErr> {
        sqlx::raw_sql(sql)
            .execute(&mut **self.conn()?)
            .await
            .map_err(query_err)?;
        Ok(())
    }

    async fn query_all(&mut self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let values = SqlxValues(stmt.values.unwrap_or(Values(Vec::new())));
        let rows = sqlx::query_with(sqlx::AssertSqlSafe(stmt.sql), values)
            .fetch_all(&mut **self.conn()?)
            .await
            .map_err(query_err)?;
        Ok(rows.into_iter().map(QueryResult::from).collect())
    }

    async fn for_each_row(
        &mut self,
        stmt: Statement,
        mut each: impl FnMut(&QueryResult) -> Result<(), DbErr> + Send,
    ) -> Result<(), DbErr> {
        let values = SqlxValues(stmt.values.unwrap_or(Values(Vec::new())));
        let mut rows =
            sqlx::query_with(sqlx::AssertSqlSafe(stmt.sql), values).fetch(&mut **self.conn()?);
        while let Some(row) = rows.try_next().await.map_err(query_err)? {
            each(&QueryResult::from(row))?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<(), DbErr> {
        self.execute("COMMIT").await?;
        if let Some(mut conn) = self.conn.take() {
            let removed = match conn.lock_handle().await {
                Ok(mut handle) => {
                    handle.remove_progress_handler();
                    Ok(())
                }
                Err(e) => Err(query_err(e)),
            };
            if removed.is_err() {
                // Never pool a connection that may keep the handler.
                conn.close_on_drop();
            }
            removed?;
        }
        Ok(())
    }
}

impl Drop for Interruptible {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.close_on_drop();
        }
    }
}

fn query_err(e: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(e)))
}
