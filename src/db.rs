//! Database connections, migrations and tenant-scoped transactions.
//!
//! Every request path that touches tenant data runs its transaction through
//! [`scoped`]: on PostgreSQL that switches the transaction to the
//! `pulse_app` role and sets `pulse.tenant_id`, so row-level security hides
//! other tenants' rows even from a query that forgets its `WHERE`. The
//! connection's own role (which bypasses RLS) is left to named system
//! paths ([`transaction`]): token resolution, login, tenant administration
//! and the demo seed.
//!
//! **Cancel safety.** A request future may be dropped at any await (the
//! client went away). sqlx 0.9 does not survive that inside `BEGIN` (the
//! server is in a transaction that nothing will roll back) nor inside
//! `COMMIT` (a rollback is queued for a transaction the server already
//! ended), and the next borrower of that connection would run inside a stale
//! transaction whose `SET LOCAL` of role and tenant may not apply. So no
//! transaction here runs on a request's future: [`scoped`] and
//! [`transaction`] run theirs on a task of their own ([`detached`]) that a
//! dropped request cannot cut short. As a second line, every connection
//! coming back to the pool is checked and one still inside a transaction is
//! rolled back (PostgreSQL) or closed (SQLite) before anyone else gets it.

use std::future::Future;
use std::time::Duration;

use futures_util::future::BoxFuture;
use migration::{Migrator, MigratorTrait};
use prometheus_client::metrics::counter::Counter;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};

use crate::auth::TenantCtx;
use crate::config::DatabaseConfig;
use crate::error::{AppError, AppResult};

/// Arbitrary but fixed key for the migration advisory lock, so several
/// `pulse serve` processes starting together migrate one at a time.
const MIGRATION_LOCK_KEY: i64 = 0x7075_6c73_6501;

/// What the pool counts for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct PoolCounters {
    /// Connections found inside a transaction when they came back (healed
    /// or closed): zero while every path is cancel-safe.
    pub stale: Counter,
    /// Statements sent through sea-orm: what the no-N+1 tests read.
    pub statements: Counter,
}

/// Opens the pool (see [`PoolCounters`]).
pub async fn connect(
    config: &DatabaseConfig,
    counters: PoolCounters,
) -> Result<DatabaseConnection, DbErr> {
    let PoolCounters { stale, statements } = counters;
    let (pg_stale, sqlite_stale) = (stale.clone(), stale);
    let synchronous = if config.sqlite_full_sync {
        SqliteSynchronous::Full
    } else {
        SqliteSynchronous::Normal
    };
    let mut opts = ConnectOptions::new(config.url.clone());
    opts.max_connections(config.max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false)
        // WAL lets readers proceed while a writer commits; the busy timeout
        // makes concurrent writers wait instead of failing; FULL syncs the
        // WAL at every commit, so a 202 survives a power loss (NORMAL may
        // lose the last commits). Set per connection, so every pooled
        // connection gets them.
        .map_sqlx_sqlite_opts(move |o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(synchronous)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5))
        })
        .map_sqlx_postgres_pool_opts(move |o| {
            let stale = pg_stale.clone();
            o.after_release(move |conn, _| {
                let stale = stale.clone();
                Box::pin(async move {
                    // Outside a transaction a simple-protocol statement is
                    // its own transaction, so `now()` (the transaction's
                    // start) is exactly the statement's start; inside one,
                    // `now()` is when that transaction began. (The extended
                    // protocol restarts the statement clock at Execute, so
                    // this must not be a prepared statement.)
                    use sea_orm::sqlx::Row as _;
                    let clean: bool =
                        sea_orm::sqlx::raw_sql("SELECT now() = statement_timestamp()")
                            .fetch_one(&mut *conn)
                            .await?
                            .try_get(0)?;
                    if !clean {
                        stale.inc();
                        tracing::warn!(
                            "a pooled connection came back inside a transaction; rolling it back"
                        );
                        sea_orm::sqlx::raw_sql("ROLLBACK")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(true)
                })
            })
        })
        .map_sqlx_sqlite_pool_opts(move |o| {
            let stale = sqlite_stale.clone();
            o.after_release(move |conn, _| {
                let stale = stale.clone();
                Box::pin(async move {
                    use sea_orm::sqlx::Connection as _;
                    // sqlx's SQLite worker tracks its depth exactly (it
                    // rolls back a BEGIN nobody waited for); a connection
                    // still inside one is closed, never lent again.
                    if conn.is_in_transaction() {
                        stale.inc();
                        tracing::warn!(
                            "a pooled SQLite connection came back inside a transaction; closing it"
                        );
                        return Ok(false);
                    }
                    Ok(true)
                })
            })
        });
    let mut db = Database::connect(opts).await?;
    db.set_metric_callback(move |_| {
        statements.inc();
    });
    Ok(db)
}

/// Applies every pending migration; safe to run concurrently and repeatedly.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Migrator::up(db, None).await;
    }
    // Session-level lock held on one pooled connection while the migrator
    // uses others; it is released when this connection returns to the pool.
    let mut lock_conn = db
        .get_postgres_connection_pool()
        .acquire()
        .await
        .map_err(|e| DbErr::Conn(sea_orm::RuntimeErr::Internal(e.to_string())))?;
    sqlx_execute(&mut lock_conn, "SELECT pg_advisory_lock($1)").await?;
    let result = Migrator::up(db, None).await;
    sqlx_execute(&mut lock_conn, "SELECT pg_advisory_unlock($1)").await?;
    result
}

async fn sqlx_execute(
    conn: &mut sea_orm::sqlx::pool::PoolConnection<sea_orm::sqlx::Postgres>,
    sql: &'static str,
) -> Result<(), DbErr> {
    sea_orm::sqlx::query(sql)
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut **conn)
        .await
        .map(|_| ())
        .map_err(|e| DbErr::Exec(sea_orm::RuntimeErr::Internal(e.to_string())))
}

/// Runs `future` on a task of its own and waits for it: dropping the caller
/// (a vanished client) no longer cuts the work short at an await, so a
/// transaction inside always reaches its commit or rollback.
pub async fn detached<T: Send + 'static>(
    future: impl Future<Output = AppResult<T>> + Send + 'static,
) -> AppResult<T> {
    match tokio::spawn(future).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(AppError::Unavailable("the server is shutting down".into())),
    }
}

/// Runs `work` in a read transaction confined to `ctx`'s tenant (see the
/// module doc), on a detached task; commits on `Ok`, rolls back on `Err`.
pub async fn scoped<T, F>(db: &DatabaseConnection, ctx: &TenantCtx, work: F) -> AppResult<T>
where
    T: Send + 'static,
    F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, AppResult<T>> + Send + 'static,
{
    let (db, ctx) = (db.clone(), ctx.clone());
    detached(async move {
        let txn = begin_scoped_as(&db, &ctx, false).await?;
        finish(txn, work).await
    })
    .await
}

/// [`scoped`] for work that writes. On SQLite it takes the write lock at
/// `BEGIN` (IMMEDIATE): a deferred transaction that reads and then writes
/// fails at once with `SQLITE_BUSY_SNAPSHOT` when another writer committed
/// in between, where an immediate one waits its turn (busy timeout).
pub async fn scoped_write<T, F>(db: &DatabaseConnection, ctx: &TenantCtx, work: F) -> AppResult<T>
where
    T: Send + 'static,
    F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, AppResult<T>> + Send + 'static,
{
    let (db, ctx) = (db.clone(), ctx.clone());
    detached(async move {
        let txn = begin_scoped_as(&db, &ctx, true).await?;
        finish(txn, work).await
    })
    .await
}

fn write_options() -> TransactionOptions {
    TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    }
}

/// Runs `work` in a transaction on the connection's own role, which
/// bypasses row-level security: for the named system paths only (see the
/// module doc), which all write (so, like [`scoped_write`], IMMEDIATE on
/// SQLite). Detached like [`scoped`].
pub async fn transaction<T, F>(db: &DatabaseConnection, work: F) -> AppResult<T>
where
    T: Send + 'static,
    F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, AppResult<T>> + Send + 'static,
{
    let db = db.clone();
    detached(async move {
        let txn = db.begin_with_options(write_options()).await?;
        finish(txn, work).await
    })
    .await
}

async fn finish<T, F>(txn: DatabaseTransaction, work: F) -> AppResult<T>
where
    F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, AppResult<T>>,
{
    match work(&txn).await {
        Ok(value) => {
            txn.commit().await?;
            Ok(value)
        }
        Err(e) => {
            if let Err(rollback) = txn.rollback().await {
                tracing::warn!(error = %rollback, "rolling back a failed transaction");
            }
            Err(e)
        }
    }
}

/// Begins a transaction confined to `ctx`'s tenant (see the module doc).
/// Only for work already on a detached task ([`scoped`], metric snapshots).
pub(crate) async fn begin_scoped(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
) -> Result<DatabaseTransaction, DbErr> {
    begin_scoped_as(db, ctx, false).await
}

async fn begin_scoped_as(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    write: bool,
) -> Result<DatabaseTransaction, DbErr> {
    let txn = if write {
        db.begin_with_options(write_options()).await?
    } else {
        db.begin().await?
    };
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT set_config('role', 'pulse_app', true), set_config('pulse.tenant_id', $1, true)",
            [ctx.tenant_id.to_string().into()],
        ))
        .await?;
    }
    Ok(txn)
}

/// Connection-pool figures for `/metrics`: (open connections, idle ones).
pub fn pool_stats(db: &DatabaseConnection) -> (u32, usize) {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
        _ => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
    }
}
