//! The metric query engine: a [`MetricQuery`] is validated into a
//! [`Plan`](plan::Plan), answered from raw events, and assembled into
//! series with every bucket present.

pub mod bitmaps;
pub mod budget;
pub mod cached;
mod cells;
mod cohorts;
pub mod formula;
pub mod gate;
pub mod journey;
pub mod numeric;
pub mod plan;
pub mod raw;
pub mod snapshot;
pub mod time;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, DbErr};
use serde_json::{Map, Value};

pub use plan::{FilterOp, Measure, MetricQuery};
pub use snapshot::Snapshot;
pub use time::Granularity;

use crate::auth::TenantCtx;
use crate::cache::HotCache;
use crate::cache::flight::Flights;
use crate::error::{AppError, AppResult};

/// What metric queries run with besides the database: the hot cache (when
/// on), the single flights that fill it, and the query budgets.
#[derive(Clone)]
pub struct Services {
    pub cache: Option<HotCache>,
    pub flights: Flights<cached::Flight>,
    /// Whole answers combined from the cache, per instance.
    pub answers: cached::Answers,
    /// Questions' buckets and counters, worked out once per range.
    pub prepared: cached::PreparedSet,
    pub budgets: budget::Budgets,
}

/// The instant relative ranges (`last: 30d`) end at: now, rounded up to
/// the whole second. Requests within one second then ask for the same
/// spans, so the buckets cut by the range's ends are cached and computed
/// once for all of them; rounding up (not down) keeps every event already
/// acknowledged inside the range.
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    if t.timestamp_subsec_nanos() == 0 {
        return t;
    }
    DateTime::from_timestamp(t.timestamp() + 1, 0).unwrap_or(t)
}

/// The name of the series that sums the groups past `limit`.
pub const OTHER: &str = "__other__";

/// Where an answer came from: the hourly actor bitmaps, the hourly
/// rollups (counts or declared numeric properties), raw events, or a mix
/// (e.g. rollups for the whole hours and raw events for the partial hours
/// at the range's ends). Reported as `bitmap`, `rollup`, `raw` or the
/// parts joined by `+`, in that order (`rollup+raw`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Source {
    bitmap: bool,
    rollup: bool,
    raw: bool,
}

impl Source {
    pub const RAW: Source = Source {
        bitmap: false,
        rollup: false,
        raw: true,
    };
    pub const ROLLUP: Source = Source {
        bitmap: false,
        rollup: true,
        raw: false,
    };
    pub const BITMAP: Source = Source {
        bitmap: true,
        rollup: false,
        raw: false,
    };

    /// This, and raw events too when `raw`.
    pub fn and_raw(self, raw: bool) -> Source {
        Source {
            raw: self.raw || raw,
            ..self
        }
    }

    /// Both sources' parts.
    pub fn union(self, other: Source) -> Source {
        Source {
            bitmap: self.bitmap || other.bitmap,
            rollup: self.rollup || other.rollup,
            raw: self.raw || other.raw,
        }
    }

    pub fn as_str(self) -> &'static str {
        match (self.bitmap, self.rollup, self.raw) {
            (true, true, true) => "bitmap+rollup+raw",
            (true, true, false) => "bitmap+rollup",
            (true, false, true) => "bitmap+raw",
            (true, false, false) => "bitmap",
            (false, true, true) => "rollup+raw",
            (false, true, false) => "rollup",
            // Nothing read (no query): as raw.
            (false, false, _) => "raw",
        }
    }
}

/// Whether a plan answered from whole hours reads raw events for partial
/// hours at its ends.
fn raw_edges(plan: &plan::Plan) -> bool {
    raw::rollup_hours(plan).is_none_or(|hours| !raw::edges(plan, hours).is_empty())
}

#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Dimension name → value, e.g. `{"type": "purchase"}`; `{}` without
    /// `groupBy`; every dimension `"__other__"` for the rest.
    pub group: Value,
    pub points: Vec<(DateTime<Utc>, Option<f64>)>,
    pub total: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct MetricResult {
    pub series: Vec<Series>,
    pub total: Option<f64>,
    pub computed_at: DateTime<Utc>,
    pub source: Source,
    /// Time spent waiting for the database.
    pub db_time: Duration,
    /// Events whose field was present but not a number.
    pub skipped: u64,
    /// How the hot cache served it; `None` when it did not take part.
    pub cache: Option<cached::CacheUse>,
}

/// One run per distinct plan within one request, all planned at one `now`:
/// a dashboard whose widgets and formulas share a query runs it once.
#[derive(Clone)]
pub struct PlanMemo {
    pub now: DateTime<Utc>,
    runs: std::sync::Arc<std::sync::Mutex<HashMap<String, SharedRun>>>,
}

type SharedRun = futures_util::future::Shared<
    futures_util::future::BoxFuture<'static, Result<MetricResult, std::sync::Arc<AppError>>>,
>;

impl PlanMemo {
    pub fn new(now: DateTime<Utc>) -> Self {
        PlanMemo {
            now,
            runs: std::sync::Arc::default(),
        }
    }

    /// [`run_plan`], or the answer of the identical plan already running
    /// or run in this request.
    pub(crate) async fn run(
        &self,
        db: &DatabaseConnection,
        ctx: &TenantCtx,
        plan: &plan::Plan,
        timeout: Duration,
        services: &Services,
    ) -> AppResult<MetricResult> {
        use futures_util::FutureExt as _;
        let key = format!("{}|{plan:?}", ctx.tenant_id);
        let shared = {
            let mut runs = self
                .runs
                .lock()
                .map_err(|_| AppError::Internal(anyhow::anyhow!("plan memo poisoned")))?;
            runs.entry(key)
                .or_insert_with(|| {
                    let (db, ctx, plan) = (db.clone(), ctx.clone(), plan.clone());
                    let (services, now) = (services.clone(), self.now);
                    async move {
                        run_plan(&db, &ctx, &plan, now, timeout, &services)
                            .await
                            .map_err(std::sync::Arc::new)
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        shared.await.map_err(|e| e.duplicate())
    }
}

/// Runs `query` for the caller's tenant; the database gets `timeout`, the
/// range at most `max_span`. It holds a read transaction across awaits:
/// callers run it on a detached task (`db::detached`), as the resolvers do.
pub async fn run(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    query: MetricQuery,
    timeout: Duration,
    max_span: chrono::Duration,
    services: &Services,
    memo: Option<&PlanMemo>,
) -> AppResult<MetricResult> {
    let now = memo.map_or_else(now, |m| m.now);
    let plan = plan::plan(query, now, max_span)?;
    match memo {
        Some(memo) => memo.run(db, ctx, &plan, timeout, services).await,
        None => run_plan(db, ctx, &plan, now, timeout, services).await,
    }
}

/// Answers a validated `plan` (made at `now`) for the caller's tenant, in a
/// read session of its own; formulas plan all their queries at one `now`
/// first, so that their buckets line up, then run each through here.
pub(crate) async fn run_plan(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    plan: &plan::Plan,
    now: DateTime<Utc>,
    timeout: Duration,
    services: &Services,
) -> AppResult<MetricResult> {
    let started = Instant::now();
    if let Some(cache) = services.cache.as_ref().filter(|_| cached::eligible(plan))
        && let Some((aggregates, used)) =
            cached::aggregate(db, ctx, plan, timeout, cache, services).await?
    {
        let source = if aggregates.from_rollups {
            Source::ROLLUP.and_raw(raw_edges(plan))
        } else {
            Source::RAW
        };
        let mut result = assemble(plan, aggregates, now, source, started.elapsed());
        result.cache = Some(used);
        return Ok(result);
    }
    let mut session = Snapshot::begin(db, ctx, timeout).await?;
    let whole = [plan.clone()];
    services
        .budgets
        .check(&mut session, ctx, plan, &whole, timeout)
        .await?;
    let aggregates = within(timeout, raw::aggregate(&mut session, plan, ctx.tenant_id)).await?;
    session.finish().await?;
    if let Some(rows) = aggregates.rows {
        services.budgets.record_actual(rows);
    }
    let db_time = started.elapsed();
    let source = if aggregates.from_bitmaps {
        Source::BITMAP.and_raw(raw_edges(plan))
    } else if aggregates.from_rollups {
        Source::ROLLUP.and_raw(raw_edges(plan))
    } else {
        Source::RAW
    };
    Ok(assemble(plan, aggregates, now, source, db_time))
}

/// Awaits `query` for at most `timeout`; running out, here or on the
/// database (see [`snapshot`]), answers `QUERY_TIMEOUT`.
pub(crate) async fn within<T>(
    timeout: Duration,
    query: impl Future<Output = Result<T, DbErr>>,
) -> AppResult<T> {
    let timed_out = || {
        AppError::QueryTimeout(format!(
            "the query took longer than {} ms; narrow the range or the groups",
            timeout.as_millis()
        ))
    };
    match tokio::time::timeout(timeout, query).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if snapshot::cancelled_by_database(&e) => Err(timed_out()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(timed_out()),
    }
}

fn assemble(
    plan: &plan::Plan,
    mut a: raw::Aggregates,
    now: DateTime<Utc>,
    source: Source,
    db_time: Duration,
) -> MetricResult {
    let zero = plan.measure.zero_when_empty();
    let fill = |v: Option<f64>| if zero { Some(v.unwrap_or(0.0)) } else { v };
    let mut points_of = |group: Option<raw::GroupKey>| -> Vec<(DateTime<Utc>, Option<f64>)> {
        plan.buckets
            .iter()
            .map(|b| {
                let local = plan.granularity.map(|_| b.local);
                let v = a.points.remove(&(group.clone(), local)).flatten();
                (b.start, fill(v))
            })
            .collect()
    };
    let names: Vec<String> = plan.group_by.iter().map(plan::Field::name).collect();
    let mut series = Vec::new();
    if plan.group_by.is_empty() {
        series.push(Series {
            group: Value::Object(Map::new()),
            points: points_of(Some(Vec::new())),
            total: fill(a.total),
        });
    } else {
        let groups = std::mem::take(&mut a.groups);
        for (key, total) in groups {
            let group: Map<String, Value> = names
                .iter()
                .zip(&key)
                .map(|(name, v)| (name.clone(), group_value(plan, name, v.as_deref())))
                .collect();
            series.push(Series {
                group: Value::Object(group),
                points: points_of(Some(key)),
                total: fill(total),
            });
        }
        if a.more_groups {
            let group: Map<String, Value> = names
                .iter()
                .map(|n| (n.clone(), Value::String(OTHER.to_owned())))
                .collect();
            series.push(Series {
                group: Value::Object(group),
                points: points_of(None),
                total: fill(a.other_total),
            });
        }
    }
    MetricResult {
        series,
        total: fill(a.total),
        computed_at: now,
        source,
        db_time,
        skipped: a.skipped,
        cache: None,
    }
}

/// A group value as clients see it: property values are JSON (parsed from
/// the JSON text the database gives), columns are strings.
fn group_value(plan: &plan::Plan, name: &str, v: Option<&str>) -> Value {
    let Some(v) = v else { return Value::Null };
    let is_property = plan
        .group_by
        .iter()
        .any(|f| matches!(f, plan::Field::Property(_)) && f.name() == name);
    if is_property {
        serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()))
    } else {
        Value::String(v.to_owned())
    }
}
