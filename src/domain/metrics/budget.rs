//! Query budgets: before a metric query touches the database, its cost is
//! estimated and checked against the tenant's budget, per query and per
//! minute; over either, `QUERY_TOO_EXPENSIVE` with the estimate and the
//! limit.
//!
//! The estimate is read from the hourly aggregates, which count every
//! event by tenant, type and hour: one indexed range read of at most a row
//! per hour and type. A span answered from the aggregates touches one row
//! per aggregate row (and the raw events of its partial edge hours), and
//! so does one answered from the actor bitmaps (a bitmap per type and
//! hour); any
//! other span touches every event of its types in its hours. Filters are
//! not applied, so the estimate is an upper bound. The cost adds the cells
//! the answer holds (buckets × series), so a wide, fine-grained grouping
//! costs something even over few events. Estimates and the rows actually
//! aggregated are exported as histograms, to check the model by.

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use sea_orm::Statement;

use super::Snapshot;
use super::plan::Plan;
use super::raw;
use crate::auth::TenantCtx;
use crate::cache::rate::{Kind, RateLimiter};
use crate::domain::events::query::time_value;
use crate::domain::limits;
use crate::error::{AppError, AppResult};

/// The per-minute budget is taken in thousands of rows, so that budgets
/// in the billions keep a whole number of microseconds per unit.
const UNIT: u64 = 1_000;

#[derive(Clone)]
pub struct BudgetCounters {
    pub rejections: Counter,
    pub estimated: Histogram,
    pub actual: Histogram,
}

/// What checks budgets: the limiter for the per-minute sum, and counters.
#[derive(Clone)]
pub struct Budgets {
    pub limiter: RateLimiter,
    pub counters: BudgetCounters,
}

/// A query's estimated cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Rows the database would read.
    pub rows: u64,
    /// Cells of the answer: buckets × series.
    pub cells: u64,
}

impl Estimate {
    pub fn cost(&self) -> u64 {
        self.rows.saturating_add(self.cells)
    }
}

fn hour_floor(t: DateTime<Utc>) -> DateTime<Utc> {
    let secs = t.timestamp().div_euclid(3600) * 3600;
    DateTime::from_timestamp(secs, 0).unwrap_or(t)
}

fn hour_ceil(t: DateTime<Utc>) -> DateTime<Utc> {
    let floor = hour_floor(t);
    if floor == t {
        t
    } else {
        floor + chrono::Duration::hours(1)
    }
}

/// The statement estimating the rows `part` (one contiguous span of a
/// plan) touches; the golden tests pin it beside the query's own.
pub fn statement(backend: sea_orm::DbBackend, part: &Plan, tenant: uuid::Uuid) -> Statement {
    let mut sql = raw::new_sql(backend);
    // The whole hours the hourly counts or the actor bitmaps answer cost a
    // row per type and hour; an empty window (raw path): every hour counts
    // its events. (Numeric rollups are not counted as such: a dimension
    // over its cap falls back to raw events when the query runs.)
    let (ws, we) = raw::rollup_window(part)
        .or_else(|| super::bitmaps::window(part).map(|(_, hours)| hours))
        .unwrap_or((part.from, part.from));
    let mut wh = vec![
        format!("tenant_id = {}", sql.bind(tenant)),
        format!(
            "hour_start >= {}",
            sql.bind(time_value(backend, hour_floor(part.from)))
        ),
        format!(
            "hour_start < {}",
            sql.bind(time_value(backend, hour_ceil(part.to)))
        ),
    ];
    if !part.event_types.is_empty() {
        let types: Vec<String> = part
            .event_types
            .iter()
            .map(|t| sql.bind(t.clone()))
            .collect();
        wh.push(format!("event_type IN ({})", types.join(", ")));
    }
    let text = format!(
        "SELECT CAST(COALESCE(SUM(CASE WHEN hour_start >= {ws} AND hour_start < {we} \
         THEN 1 ELSE event_count END), 0) AS BIGINT) FROM analytics_aggregates WHERE {}",
        wh.join(" AND "),
        ws = sql.bind(time_value(backend, ws)),
        we = sql.bind(time_value(backend, we)),
    );
    raw::statement(sql, text)
}

/// The estimated cost of answering `parts` (spans of `plan`, each to be
/// computed by one statement).
pub async fn estimate(
    s: &mut Snapshot,
    plan: &Plan,
    parts: &[Plan],
    tenant: uuid::Uuid,
) -> Result<Estimate, sea_orm::DbErr> {
    let mut rows = 0u64;
    for part in parts {
        if let Some(row) = s.query_one(statement(s.backend(), part, tenant)).await? {
            let n: i64 = row.try_get_by_index(0)?;
            rows = rows.saturating_add(u64::try_from(n).unwrap_or(0));
        }
    }
    let buckets: u64 = parts.iter().map(|p| p.buckets.len().max(1) as u64).sum();
    let series = if plan.group_by.is_empty() {
        1
    } else {
        plan.limit as u64 + 1
    };
    Ok(Estimate {
        rows,
        cells: buckets.saturating_mul(series),
    })
}

impl Budgets {
    /// Estimates `parts` and takes the cost from the caller's budgets, or
    /// refuses with `QUERY_TOO_EXPENSIVE`.
    pub async fn check(
        &self,
        s: &mut Snapshot,
        ctx: &TenantCtx,
        plan: &Plan,
        parts: &[Plan],
        timeout: std::time::Duration,
    ) -> AppResult<Estimate> {
        let est = super::within(timeout, estimate(s, plan, parts, ctx.tenant_id)).await?;
        let cost = est.cost();
        self.counters.estimated.observe(cost as f64);
        let budget = ctx.policy.budget;
        let refuse = |message: String, limit: u64, retry_after| {
            self.counters.rejections.inc();
            AppError::QueryTooExpensive {
                message,
                estimate: cost,
                limit,
                retry_after,
            }
        };
        if cost > budget.per_query {
            return Err(refuse(
                format!(
                    "this query would touch about {} rows and {} cells, {cost} in all; \
                     the tenant's budget is {} per query: narrow the range, the event \
                     types or the groups",
                    est.rows, est.cells, budget.per_query
                ),
                budget.per_query,
                None,
            ));
        }
        let units = cost.div_ceil(UNIT);
        let per_minute = (budget.per_minute / UNIT).max(1);
        let quota = crate::auth::policy::Quota {
            per_tenant: per_minute,
            per_user: per_minute,
        };
        match limits::take(&self.limiter, ctx, Kind::Budget, quota, units).await {
            Ok(()) => Ok(est),
            Err(wait) => Err(refuse(
                format!(
                    "the tenant's queries have used their budget of {} estimated rows a \
                     minute; this one needs {cost}: retry later",
                    budget.per_minute
                ),
                budget.per_minute,
                Some(wait),
            )),
        }
    }

    /// Records the rows a query actually aggregated.
    pub fn record_actual(&self, rows: u64) {
        self.counters.actual.observe(rows as f64);
    }
}
