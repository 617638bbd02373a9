//! Numeric rollups of declared properties: per tenant, numeric property,
//! declared dimension, event type and UTC hour, the count, sum, min and max
//! of the property's numeric values (and the count of values that were
//! present but not numbers), so that `SUM`/`AVG`/`MIN`/`MAX` of a declared
//! property need not read raw events.
//!
//! - `rollup_fields`: what a tenant's ADMIN declared: numeric properties
//!   (role 0) and dimensions (role 1), by property path (`amount`, `a.b`);
//!   a dimension's `max_values` is the most distinct values per hour its
//!   rollups answer (beyond, queries read raw events).
//! - `rollup_series`: one row per (numeric property, dimension or `''` for
//!   none) the declarations imply; the ingestion writer keeps every series
//!   from the moment it exists, and a background job backfills the hours
//!   before it (`backfill_from` … `backfill_to`, done up to
//!   `backfilled_until`). Queries use a series once `ready_at` is set.
//! - `property_rollups`: the hourly partials. `value` is the dimension's
//!   value as JSON text (what `groupBy` reports), `''` when absent or for
//!   the series without a dimension.
//!
//! All are tenant tables under row-level security on PostgreSQL. Times
//! are `timestamptz` there and microseconds since 1970 on SQLite, as for
//! the events.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &str = r#"
CREATE TABLE IF NOT EXISTS rollup_fields (
    tenant_id   uuid        NOT NULL,
    role        smallint    NOT NULL,
    name        text        NOT NULL,
    declared_at timestamptz NOT NULL,
    declared_by text        NOT NULL,
    max_values  integer,
    PRIMARY KEY (tenant_id, role, name)
);
CREATE TABLE IF NOT EXISTS rollup_series (
    tenant_id        uuid        NOT NULL,
    property         text        NOT NULL,
    dimension        text        NOT NULL,
    created_at       timestamptz NOT NULL,
    backfill_from    timestamptz,
    backfill_to      timestamptz,
    backfilled_until timestamptz,
    ready_at         timestamptz,
    PRIMARY KEY (tenant_id, property, dimension)
);
CREATE TABLE IF NOT EXISTS property_rollups (
    tenant_id  uuid             NOT NULL,
    property   text             NOT NULL,
    dimension  text             NOT NULL,
    hour_start timestamptz      NOT NULL,
    event_type text             NOT NULL,
    value      text             NOT NULL,
    n          bigint           NOT NULL,
    s          double precision,
    lo         double precision,
    hi         double precision,
    skipped    bigint           NOT NULL,
    PRIMARY KEY (tenant_id, property, dimension, hour_start, event_type, value)
);
"#;

const SQLITE_UP: &str = r#"
CREATE TABLE IF NOT EXISTS rollup_fields (
    tenant_id   BLOB    NOT NULL,
    role        INTEGER NOT NULL,
    name        TEXT    NOT NULL,
    declared_at INTEGER NOT NULL,
    declared_by TEXT    NOT NULL,
    max_values  INTEGER,
    PRIMARY KEY (tenant_id, role, name)
);
CREATE TABLE IF NOT EXISTS rollup_series (
    tenant_id        BLOB    NOT NULL,
    property         TEXT    NOT NULL,
    dimension        TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    backfill_from    INTEGER,
    backfill_to      INTEGER,
    backfilled_until INTEGER,
    ready_at         INTEGER,
    PRIMARY KEY (tenant_id, property, dimension)
);
CREATE TABLE IF NOT EXISTS property_rollups (
    tenant_id  BLOB    NOT NULL,
    property   TEXT    NOT NULL,
    dimension  TEXT    NOT NULL,
    hour_start INTEGER NOT NULL,
    event_type TEXT    NOT NULL,
    value      TEXT    NOT NULL,
    n          INTEGER NOT NULL,
    s          REAL,
    lo         REAL,
    hi         REAL,
    skipped    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, property, dimension, hour_start, event_type, value)
);
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        match manager.get_database_backend() {
            DbBackend::Postgres => {
                conn.execute_unprepared(POSTGRES_UP).await?;
                for table in ["rollup_fields", "rollup_series", "property_rollups"] {
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
                "DROP TABLE IF EXISTS property_rollups; DROP TABLE IF EXISTS rollup_series;
                 DROP TABLE IF EXISTS rollup_fields;",
            )
            .await?;
        Ok(())
    }
}
