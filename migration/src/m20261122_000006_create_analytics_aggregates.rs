//! `analytics_aggregates`: hourly event counts per tenant and event type,
//! the seeds' aggregates table adapted to what can be kept exactly.
//!
//! The ingestion writer adds to it in the same transaction that stores the
//! events, so it is never behind an acknowledged event, late ones included.
//! Hours are UTC; any zone whose offset is a whole number of hours can be
//! answered from them at HOUR granularity or coarser. Existing events are
//! counted in when the table is created.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &str = r#"
CREATE TABLE IF NOT EXISTS analytics_aggregates (
    tenant_id   uuid        NOT NULL,
    event_type  text        NOT NULL,
    hour_start  timestamptz NOT NULL,
    event_count bigint      NOT NULL,
    PRIMARY KEY (tenant_id, event_type, hour_start)
);
CREATE INDEX IF NOT EXISTS idx_aggregates_tenant_hour ON analytics_aggregates (tenant_id, hour_start);
INSERT INTO analytics_aggregates (tenant_id, event_type, hour_start, event_count)
SELECT tenant_id, type, date_trunc('hour', occurred_at, 'UTC'), count(*)
FROM events GROUP BY 1, 2, 3
ON CONFLICT DO NOTHING;

GRANT SELECT, INSERT, UPDATE, DELETE ON analytics_aggregates TO pulse_app;
ALTER TABLE analytics_aggregates ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON analytics_aggregates;
CREATE POLICY tenant_isolation ON analytics_aggregates
    USING (tenant_id = pulse_current_tenant())
    WITH CHECK (tenant_id = pulse_current_tenant());
"#;

const SQLITE_UP: &str = r#"
CREATE TABLE IF NOT EXISTS analytics_aggregates (
    tenant_id   BLOB    NOT NULL,
    event_type  TEXT    NOT NULL,
    hour_start  INTEGER NOT NULL,
    event_count INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, event_type, hour_start)
);
CREATE INDEX IF NOT EXISTS idx_aggregates_tenant_hour ON analytics_aggregates (tenant_id, hour_start);
INSERT INTO analytics_aggregates (tenant_id, event_type, hour_start, event_count)
SELECT tenant_id, type, occurred_at / 3600000000 * 3600000000, count(*)
FROM events GROUP BY 1, 2, 3
ON CONFLICT DO NOTHING;
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
            .execute_unprepared("DROP TABLE IF EXISTS analytics_aggregates;")
            .await?;
        Ok(())
    }
}
