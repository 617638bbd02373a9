//! `events`: the raw material of every metric.
//!
//! PostgreSQL: range-partitioned by month on `occurred_at` (Pulse creates
//! the monthly partitions itself, ahead of time and on demand), JSONB
//! properties, and a separate `event_ids` table whose primary key makes an
//! event id unique per tenant across all partitions: a partitioned table's
//! unique keys must include the partition key, so it cannot do that alone.
//!
//! SQLite: one table, timestamps as integer microseconds since the epoch
//! (exact, compact, and ordered, which text timestamps are not), properties
//! as JSON text, and the (tenant, id) primary key for idempotency.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    tenant_id   uuid        NOT NULL,
    id          uuid        NOT NULL,
    type        text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    user_id     text,
    session_id  text,
    properties  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    ip          text,
    user_agent  text,
    source      text        NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, occurred_at, id)
) PARTITION BY RANGE (occurred_at);
CREATE INDEX IF NOT EXISTS idx_events_tenant_type_time ON events (tenant_id, type, occurred_at);
CREATE INDEX IF NOT EXISTS idx_events_tenant_user ON events (tenant_id, user_id);

CREATE TABLE IF NOT EXISTS event_ids (
    tenant_id   uuid        NOT NULL,
    id          uuid        NOT NULL,
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON events, event_ids TO pulse_app;
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON events;
CREATE POLICY tenant_isolation ON events
    USING (tenant_id = pulse_current_tenant())
    WITH CHECK (tenant_id = pulse_current_tenant());
ALTER TABLE event_ids ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON event_ids;
CREATE POLICY tenant_isolation ON event_ids
    USING (tenant_id = pulse_current_tenant())
    WITH CHECK (tenant_id = pulse_current_tenant());
"#;

const SQLITE_UP: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    tenant_id   BLOB    NOT NULL,
    id          BLOB    NOT NULL,
    type        TEXT    NOT NULL,
    occurred_at INTEGER NOT NULL,
    user_id     TEXT,
    session_id  TEXT,
    properties  TEXT    NOT NULL DEFAULT '{}',
    ip          TEXT,
    user_agent  TEXT,
    source      TEXT    NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX IF NOT EXISTS idx_events_tenant_time ON events (tenant_id, occurred_at);
CREATE INDEX IF NOT EXISTS idx_events_tenant_type_time ON events (tenant_id, type, occurred_at);
CREATE INDEX IF NOT EXISTS idx_events_tenant_user ON events (tenant_id, user_id);
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sql = match manager.get_database_backend() {
            DbBackend::Postgres => POSTGRES_UP,
            _ => SQLITE_UP,
        };
        manager.get_connection().execute_unprepared(sql).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS events; DROP TABLE IF EXISTS event_ids;")
            .await?;
        Ok(())
    }
}
