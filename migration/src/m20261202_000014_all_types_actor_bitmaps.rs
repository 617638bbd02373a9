//! Hourly actor bitmaps over all event types: rows of `actor_bitmaps`
//! whose `event_type` is empty (no event type is), kept by the writer
//! beside the per-type ones from now on, with a partial index of their
//! own.
//!
//! For the hours written before, each per-type row is copied as an
//! all-types delta: a reader unions a key's rows, so the copies together
//! are the hour's bitmap over all types, and the background compaction
//! merges them like any deltas. Instances of an earlier version must not
//! write while this runs or after it: their batches would leave the
//! all-types bitmaps short.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        conn.execute_unprepared(
            "INSERT INTO actor_bitmaps (tenant_id, kind, event_type, hour_start, bitmap) \
             SELECT tenant_id, kind, '', hour_start, bitmap FROM actor_bitmaps \
             WHERE event_type <> ''",
        )
        .await?;
        // A query without a type reads these rows only: through the key
        // index it would step over every type's entries of each hour.
        conn.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS idx_actor_bitmaps_all_types \
             ON actor_bitmaps (tenant_id, kind, hour_start) WHERE event_type = ''",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP INDEX IF EXISTS idx_actor_bitmaps_all_types; \
                 DELETE FROM actor_bitmaps WHERE event_type = ''",
            )
            .await?;
        Ok(())
    }
}
