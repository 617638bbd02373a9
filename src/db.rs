//! Database connections, migrations and tenant-scoped transactions.
//!
//! Every request path that touches tenant data opens its transaction with
//! [`begin_scoped`]: on PostgreSQL that switches the transaction to the
//! `pulse_app` role and sets `pulse.tenant_id`, so row-level security hides
//! other tenants' rows even from a query that forgets its `WHERE`. The
//! connection's own role (which bypasses RLS) is left to named system
//! paths: token resolution, login, tenant administration and the demo seed.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, Statement, TransactionTrait,
};

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};

use crate::auth::TenantCtx;
use crate::config::DatabaseConfig;

/// Arbitrary but fixed key for the migration advisory lock, so several
/// `pulse serve` processes starting together migrate one at a time.
const MIGRATION_LOCK_KEY: i64 = 0x7075_6c73_6501;

pub async fn connect(config: &DatabaseConfig) -> Result<DatabaseConnection, DbErr> {
    let mut opts = ConnectOptions::new(config.url.clone());
    opts.max_connections(config.max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false)
        // WAL lets readers proceed while a writer commits; the busy timeout
        // makes concurrent writers wait instead of failing. Set per
        // connection, so every pooled connection gets them.
        .map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5))
        });
    Database::connect(opts).await
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

/// Begins a transaction confined to `ctx`'s tenant (see the module doc).
pub async fn begin_scoped(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
) -> Result<DatabaseTransaction, DbErr> {
    let txn = db.begin().await?;
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
