//! Exact distinct counts at rollup speed: dense per-tenant numbers for
//! user and session ids, and per tenant, event type and UTC hour a
//! compressed bitmap of the numbers seen.
//!
//! - `actor_numbers`: `(tenant, kind, actor) → number`, kind 0 for user
//!   ids and 1 for session ids; numbers are dense per tenant and kind,
//!   handed out from `actor_counters` by the ingestion writer in the
//!   transaction that stores the events.
//! - `actor_bitmaps`: roaring bitmaps, appended as one delta per written
//!   batch and key (no read-modify-write between concurrent writers) and
//!   merged in the background; a reader unions the rows of a key.
//! - `actor_coverage`: per tenant, the hour before which events were
//!   written before this table existed. Those hours have no bitmaps and
//!   are answered from raw events; a tenant without a row is covered
//!   throughout.
//!
//! All are tenant tables under row-level security on PostgreSQL.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &str = r#"
CREATE TABLE IF NOT EXISTS actor_numbers (
    tenant_id uuid     NOT NULL,
    kind      smallint NOT NULL,
    actor     text     NOT NULL,
    number    integer  NOT NULL,
    PRIMARY KEY (tenant_id, kind, actor)
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_actor_numbers_number ON actor_numbers (tenant_id, kind, number);
CREATE TABLE IF NOT EXISTS actor_counters (
    tenant_id uuid     NOT NULL,
    kind      smallint NOT NULL,
    next      integer  NOT NULL,
    PRIMARY KEY (tenant_id, kind)
);
CREATE TABLE IF NOT EXISTS actor_bitmaps (
    id         bigserial   NOT NULL,
    tenant_id  uuid        NOT NULL,
    kind       smallint    NOT NULL,
    event_type text        NOT NULL,
    hour_start timestamptz NOT NULL,
    bitmap     bytea       NOT NULL,
    PRIMARY KEY (tenant_id, kind, hour_start, event_type, id)
);
CREATE TABLE IF NOT EXISTS actor_coverage (
    tenant_id  uuid        PRIMARY KEY,
    raw_before timestamptz NOT NULL
);
INSERT INTO actor_coverage (tenant_id, raw_before)
SELECT tenant_id, date_trunc('hour', max(occurred_at), 'UTC') + interval '1 hour'
FROM events GROUP BY tenant_id
ON CONFLICT DO NOTHING;
"#;

const SQLITE_UP: &str = r#"
CREATE TABLE IF NOT EXISTS actor_numbers (
    tenant_id BLOB    NOT NULL,
    kind      INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    number    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, kind, actor)
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_actor_numbers_number ON actor_numbers (tenant_id, kind, number);
CREATE TABLE IF NOT EXISTS actor_counters (
    tenant_id BLOB    NOT NULL,
    kind      INTEGER NOT NULL,
    next      INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, kind)
);
CREATE TABLE IF NOT EXISTS actor_bitmaps (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  BLOB    NOT NULL,
    kind       INTEGER NOT NULL,
    event_type TEXT    NOT NULL,
    hour_start INTEGER NOT NULL,
    bitmap     BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_actor_bitmaps_key ON actor_bitmaps (tenant_id, kind, hour_start, event_type);
CREATE TABLE IF NOT EXISTS actor_coverage (
    tenant_id  BLOB    PRIMARY KEY,
    raw_before INTEGER NOT NULL
);
INSERT OR IGNORE INTO actor_coverage (tenant_id, raw_before)
SELECT tenant_id, (max(occurred_at) / 3600000000 + 1) * 3600000000
FROM events GROUP BY tenant_id;
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        match manager.get_database_backend() {
            DbBackend::Postgres => {
                conn.execute_unprepared(POSTGRES_UP).await?;
                for table in [
                    "actor_numbers",
                    "actor_counters",
                    "actor_bitmaps",
                    "actor_coverage",
                ] {
                    conn.execute_unprepared(&format!(
                        "GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO pulse_app;
                         ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
                         DROP POLICY IF EXISTS tenant_isolation ON {table};
                         CREATE POLICY tenant_isolation ON {table}
                           USING (tenant_id = pulse_current_tenant())
                           WITH CHECK (tenant_id = pulse_current_tenant());"
                    ))
                    .await?;
                }
            }
            _ => {
                conn.execute_unprepared(SQLITE_UP).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TABLE IF EXISTS actor_coverage; DROP TABLE IF EXISTS actor_bitmaps;
                 DROP TABLE IF EXISTS actor_counters; DROP TABLE IF EXISTS actor_numbers;",
            )
            .await?;
        Ok(())
    }
}
