//! Data expiry: events older than their tenant's `retention_days` go,
//! with their hourly counts, actor bitmaps and numeric rollups. (Named apart from cohort
//! retention, `metrics::journey`, which is an analysis, not a deletion.)
//!
//! On PostgreSQL, a monthly partition older than every tenant's cutoff is
//! dropped whole (instant, no bloat); the rest is deleted row by row per
//! tenant, together with the matching idempotency keys. A named system
//! path: it spans tenants, on the connection's own role.

use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait};

use super::query::time_value;
use super::store::Store;
use crate::cache::{HotCache, Mark};
use crate::domain::tenants::TenantSettings;
use crate::entities::tenant;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExpiryReport {
    pub partitions_dropped: usize,
    pub events_deleted: u64,
}

/// Applies every tenant's retention as of `now`.
pub async fn run_once(
    store: &Store,
    cache: &HotCache,
    now: DateTime<Utc>,
) -> anyhow::Result<ExpiryReport> {
    let db = store.db();
    let backend = db.get_database_backend();
    let tenants = tenant::Entity::find().all(db).await?;
    let cutoffs: Vec<_> = tenants
        .iter()
        .map(|t| {
            let days = TenantSettings::from_json(&t.settings).retention_days;
            // Whole hours, so the hourly aggregates lose exactly the
            // events that go.
            let cutoff = now - Duration::days(i64::from(days));
            let hour = cutoff.timestamp().div_euclid(3600) * 3600;
            (t.id, DateTime::from_timestamp(hour, 0).unwrap_or(cutoff))
        })
        .collect();
    let mut report = ExpiryReport::default();
    let Some(oldest_needed) = cutoffs.iter().map(|(_, c)| *c).min() else {
        return Ok(report);
    };
    report.partitions_dropped = store.partitions().drop_before(db, oldest_needed).await?;

    let mut tables = vec!["events"];
    if backend == DbBackend::Postgres {
        tables.push("event_ids");
    }
    for (tenant_id, cutoff) in cutoffs {
        let mut deleted = report.partitions_dropped > 0;
        for table in &tables {
            let delete = Query::delete()
                .from_table(Alias::new(*table))
                .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant_id))
                .and_where(Expr::col(Alias::new("occurred_at")).lt(time_value(backend, cutoff)))
                .to_owned();
            let result = db.execute(&delete).await?;
            if *table == "events" {
                report.events_deleted += result.rows_affected();
                deleted |= result.rows_affected() > 0;
            }
        }
        if deleted {
            // Cached buckets before the cutoff counted what just went.
            cache.bump(tenant_id, &[Mark::epoch()]).await?;
        }
        // The hourly rollups of what went: counts, actor bitmaps and
        // numeric rollups.
        for rollup in ["analytics_aggregates", "actor_bitmaps", "property_rollups"] {
            let delete = Query::delete()
                .from_table(Alias::new(rollup))
                .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant_id))
                .and_where(Expr::col(Alias::new("hour_start")).lt(time_value(backend, cutoff)))
                .to_owned();
            db.execute(&delete).await?;
        }
    }
    if report != ExpiryReport::default() {
        tracing::info!(
            partitions_dropped = report.partitions_dropped,
            events_deleted = report.events_deleted,
            "data expiry applied"
        );
    }
    Ok(report)
}
