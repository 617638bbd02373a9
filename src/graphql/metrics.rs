//! `metrics(query)`: inputs, the result shape of API.md, and each answer's
//! provenance in the response's `extensions.queries`.

use async_graphql::{Context, Enum, InputObject, Json, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::guard::{RoleGuard, state, tenant};
use super::provenance::{Provenance, QueryLog};
use crate::app::AppState;
use crate::auth::{Role, TenantCtx};
use crate::db;
use crate::domain::metrics;
use crate::domain::metrics::{formula, journey};
use crate::error::AppResult;

#[derive(Enum, Copy, Clone, Eq, PartialEq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[graphql(remote = "crate::domain::metrics::plan::Measure")]
pub enum Measure {
    Count,
    CountDistinct,
    Sum,
    Avg,
    Min,
    Max,
    P50,
    P90,
    P95,
    P99,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[graphql(remote = "crate::domain::metrics::Granularity")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
    /// ISO weeks, from Monday.
    Week,
    Month,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[graphql(remote = "crate::domain::metrics::FilterOp")]
pub enum FilterOp {
    Eq,
    Neq,
    In,
    NotIn,
    Gt,
    Gte,
    Lt,
    Lte,
    /// Substring of a string value.
    Contains,
    /// `value` true (or absent): the field is present and not null.
    Exists,
}

/// `type`, `userId`, `sessionId` or `properties.<key>[.<key>…]`, compared
/// with `value` by `op`; filters combine with AND.
#[derive(InputObject, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterInput {
    pub field: String,
    pub op: FilterOp,
    pub value: Option<Json<Value>>,
}

/// Half-open `{from, to}`, or `{last: "30d"}` (units m, h, d, w) ending now.
#[derive(InputObject, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeRangeInput {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub last: Option<String>,
}

#[derive(InputObject, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricQueryInput {
    pub measure: Measure,
    /// Required for all but COUNT: `userId`, `sessionId` or
    /// `properties.<key>`; numeric measures need a property.
    pub field: Option<String>,
    /// None: all types.
    pub event_types: Option<Vec<String>>,
    pub filters: Option<Vec<FilterInput>>,
    /// Up to 3 of `type`, `userId`, `sessionId`, `properties.<key>`.
    pub group_by: Option<Vec<String>>,
    /// None: one bucket for the whole range.
    pub granularity: Option<Granularity>,
    pub range: TimeRangeInput,
    /// IANA name, default `UTC`; buckets align to its local midnight.
    pub timezone: Option<String>,
    /// Series cap, default 100; the rest are summed into `__other__`.
    pub limit: Option<i32>,
}

impl MetricQueryInput {
    pub fn into_domain(self) -> metrics::MetricQuery {
        metrics::MetricQuery {
            measure: Some(self.measure.into()),
            field: self.field,
            event_types: self.event_types,
            filters: filters(self.filters),
            group_by: self.group_by.unwrap_or_default(),
            granularity: self.granularity.map(Into::into),
            from: self.range.from,
            to: self.range.to,
            last: self.range.last,
            timezone: self.timezone,
            limit: self.limit,
        }
    }
}

/// One metric query of a formula, under the name its expression uses.
#[derive(InputObject, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedMetricQueryInput {
    /// `[a-z][a-z0-9_]*`, at most 64 characters, unique within the formula.
    pub name: String,
    pub query: MetricQueryInput,
}

/// Up to 6 named queries sharing granularity, range and timezone, and an
/// arithmetic expression over their names (`+ - * /`, unary minus,
/// parentheses, decimal constants), e.g. `clicked / delivered`. It is
/// evaluated per bucket and per group (groups match by value; a query
/// without groupBy applies to every group; a group a query lacks reads 0
/// for COUNT, COUNT_DISTINCT and SUM, null otherwise). A missing operand or
/// a division by zero gives null. Every name must be used.
#[derive(InputObject, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FormulaInput {
    pub queries: Vec<NamedMetricQueryInput>,
    pub expression: String,
}

impl FormulaInput {
    pub fn into_domain(self) -> formula::FormulaQuery {
        formula::FormulaQuery {
            queries: self
                .queries
                .into_iter()
                .map(|q| formula::NamedQuery {
                    name: q.name,
                    query: q.query.into_domain(),
                })
                .collect(),
            expression: self.expression,
        }
    }
}

#[derive(SimpleObject, Clone)]
pub struct Point {
    /// The instant the bucket starts.
    bucket: DateTime<Utc>,
    /// 0 for empty buckets of COUNT, COUNT_DISTINCT and SUM; null for the
    /// other measures.
    value: Option<f64>,
}

#[derive(SimpleObject, Clone)]
pub struct Series {
    /// Dimension → value, e.g. `{"type": "purchase"}`; `{}` without groupBy.
    group: Json<Value>,
    points: Vec<Point>,
    /// The measure over the whole range for this series.
    total: Option<f64>,
}

#[derive(SimpleObject, Clone)]
pub struct MetricResult {
    series: Vec<Series>,
    /// The measure over the whole range and all groups.
    total: Option<f64>,
    /// Served from the hot-metric cache.
    cached: bool,
    computed_at: DateTime<Utc>,
    /// In a `metricUpdated` stream, this result's place: 1 for the first,
    /// one more for each different result after it, so a gap shows a
    /// missed message. Null outside subscriptions.
    pub(crate) sequence: Option<i64>,
}

impl From<metrics::MetricResult> for MetricResult {
    fn from(r: metrics::MetricResult) -> Self {
        MetricResult {
            series: r
                .series
                .into_iter()
                .map(|s| Series {
                    group: Json(s.group),
                    points: s
                        .points
                        .into_iter()
                        .map(|(bucket, value)| Point { bucket, value })
                        .collect(),
                    total: s.total,
                })
                .collect(),
            total: r.total,
            cached: r.cache.as_ref().is_some_and(|c| c.complete),
            computed_at: r.computed_at,
            sequence: None,
        }
    }
}

#[derive(InputObject, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FunnelStepInput {
    pub event_type: String,
    pub filters: Option<Vec<FilterInput>>,
}

#[derive(InputObject, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FunnelInput {
    /// 2 to 10 ordered steps.
    pub steps: Vec<FunnelStepInput>,
    /// How long after the first step the last may come, e.g. `7d`. Days
    /// (`d`) and weeks (`w`) are local calendar days in `timezone`: `1d`
    /// from noon ends at noon the next day, 23 or 25 hours later across a
    /// DST change. Minutes (`m`) and hours (`h`) are elapsed time.
    pub conversion_window: String,
    /// The range of the first step; later steps may follow within the
    /// window.
    pub range: TimeRangeInput,
    /// IANA name, default `UTC`: the calendar `d` and `w` windows count in.
    pub timezone: Option<String>,
    /// `userId` (default) or `sessionId`.
    pub count_by: Option<String>,
    /// `properties.<key>` of the first-step event: one funnel per value.
    pub breakdown: Option<String>,
}

#[derive(SimpleObject, Clone)]
pub struct FunnelStep {
    event_type: String,
    /// Users (or sessions) who reached this step.
    count: i64,
    conversion_from_start: f64,
    conversion_from_previous: f64,
    /// Median seconds from the previous step; null for the first.
    median_seconds_to_convert: Option<f64>,
}

impl From<journey::FunnelStep> for FunnelStep {
    fn from(s: journey::FunnelStep) -> Self {
        FunnelStep {
            event_type: s.event_type,
            count: i64::try_from(s.count).unwrap_or(i64::MAX),
            conversion_from_start: s.conversion_from_start,
            conversion_from_previous: s.conversion_from_previous,
            median_seconds_to_convert: s.median_seconds_to_convert,
        }
    }
}

#[derive(SimpleObject, Clone)]
pub struct FunnelBreakdown {
    /// The breakdown property's value, or `"__other__"`.
    value: Json<Value>,
    steps: Vec<FunnelStep>,
}

#[derive(SimpleObject, Clone)]
pub struct FunnelResult {
    steps: Vec<FunnelStep>,
    /// With `breakdown`: the 20 largest values, then `__other__`.
    breakdowns: Vec<FunnelBreakdown>,
}

#[derive(InputObject, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionInput {
    /// The event that puts a user in a cohort (its first in range).
    pub start_event: String,
    /// The event that counts as coming back.
    pub return_event: String,
    /// DAY, WEEK or MONTH.
    pub period: Granularity,
    /// Later periods to follow each cohort for; default 8.
    pub periods: Option<i32>,
    pub range: TimeRangeInput,
    pub timezone: Option<String>,
    /// `userId` (default) or `sessionId`.
    pub count_by: Option<String>,
}

#[derive(SimpleObject, Clone)]
pub struct RetentionCohort {
    /// The instant the cohort's period starts.
    start: DateTime<Utc>,
    size: i64,
    /// Per period from 0 (the cohort's own): how many came back; null for
    /// periods not yet begun.
    returned: Vec<Option<i64>>,
    /// `returned / size`, in [0, 1].
    rates: Vec<Option<f64>>,
}

#[derive(SimpleObject, Clone)]
pub struct RetentionResult {
    /// One row per cohort: the matrix.
    cohorts: Vec<RetentionCohort>,
}

fn filters(input: Option<Vec<FilterInput>>) -> Vec<(String, metrics::FilterOp, Option<Value>)> {
    input
        .unwrap_or_default()
        .into_iter()
        .map(|f| (f.field, f.op.into(), f.value.map(|Json(v)| v)))
        .collect()
}

/// Runs one analytic query for the caller: first a place among its
/// tenant's concurrent queries (or `RATE_LIMITED`), then `work` on a
/// detached task holding that place, so that neither a vanished client
/// (its read transaction always ends properly, see `db`) nor a flood of
/// cancelled requests gets past the limit.
async fn analytic<T, F, Fut>(ctx: &Context<'_>, caller: &TenantCtx, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(AppState, TenantCtx) -> Fut + Send + 'static,
    Fut: Future<Output = AppResult<T>> + Send + 'static,
{
    let app = state(ctx)?.clone();
    let caller = caller.clone();
    let pass = app.analytics_gate.enter(caller.tenant_id).await?;
    Ok(db::detached(async move {
        let result = work(app, caller).await;
        drop(pass);
        result
    })
    .await?)
}

/// Counts an answer in the server's metrics and in the response's
/// `extensions.queries`.
fn record(
    ctx: &Context<'_>,
    app: &AppState,
    result: metrics::MetricResult,
) -> metrics::MetricResult {
    log_query(
        ctx,
        app,
        result.source,
        result.db_time,
        result.skipped,
        result.cache.clone(),
    );
    result
}

/// Counts an answered query (a metric, a funnel or a retention table) in
/// the server's metrics and in the response's `extensions.queries`.
fn log_query(
    ctx: &Context<'_>,
    app: &AppState,
    source: metrics::Source,
    db_time: std::time::Duration,
    skipped_values: u64,
    cache: Option<metrics::cached::CacheUse>,
) {
    app.telemetry.record_query(source.as_str(), db_time);
    if let Some(log) = ctx.data_opt::<QueryLog>() {
        log.push(Provenance {
            path: ctx.path_node.map(|p| p.to_string()).unwrap_or_default(),
            source: source.as_str(),
            db_ms: db_time.as_secs_f64() * 1000.0,
            skipped_values,
            cache,
        });
    }
}

/// `metrics`, for the field and for saved queries and widgets.
/// `caller` is the request's, or a share link's (see `dashboards`).
/// `memo`, on a dashboard, runs each distinct plan of its widgets once.
pub(crate) async fn run_metrics(
    ctx: &Context<'_>,
    caller: &TenantCtx,
    query: MetricQueryInput,
    memo: Option<metrics::PlanMemo>,
) -> Result<MetricResult> {
    let app = state(ctx)?;
    let query = query.into_domain();
    let max_span = app.config.analytics.max_range;
    let result = analytic(ctx, caller, move |app, caller| async move {
        metrics::run(
            &app.db,
            &caller,
            query,
            app.config.query_timeout,
            max_span,
            &app.analytics,
            memo.as_ref(),
        )
        .await
    })
    .await?;
    Ok(record(ctx, app, result).into())
}

/// `formula`, for the field and for saved queries and widgets; `memo` as
/// for [`run_metrics`].
pub(crate) async fn run_formula(
    ctx: &Context<'_>,
    caller: &TenantCtx,
    input: FormulaInput,
    memo: Option<metrics::PlanMemo>,
) -> Result<MetricResult> {
    let app = state(ctx)?;
    let query = input.into_domain();
    let max_span = app.config.analytics.max_range;
    // One place in the tenant's concurrency limit for the whole formula:
    // its queries run at once, so they hold it about as long as one query
    // would, and a place per query could leave a formula half-admitted
    // (holding some places while it waits for others).
    let result = analytic(ctx, caller, move |app, caller| async move {
        formula::run(
            &app.db,
            &caller,
            query,
            app.config.query_timeout,
            max_span,
            &app.analytics,
            memo.as_ref(),
        )
        .await
    })
    .await?;
    Ok(record(ctx, app, result).into())
}

/// `funnel`, for the field and for saved queries and widgets.
pub(crate) async fn run_funnel(
    ctx: &Context<'_>,
    caller: &TenantCtx,
    input: FunnelInput,
) -> Result<FunnelResult> {
    let query = journey::FunnelQuery {
        steps: input
            .steps
            .into_iter()
            .map(|s| journey::FunnelStepQuery {
                event_type: s.event_type,
                filters: filters(s.filters),
            })
            .collect(),
        conversion_window: input.conversion_window,
        from: input.range.from,
        to: input.range.to,
        last: input.range.last,
        timezone: input.timezone,
        count_by: input.count_by,
        breakdown: input.breakdown,
        max_span: Some(state(ctx)?.config.analytics.max_range),
    };
    let result = analytic(ctx, caller, move |app, caller| async move {
        journey::funnel(&app.db, &caller, query, app.config.query_timeout).await
    })
    .await?;
    log_query(
        ctx,
        state(ctx)?,
        metrics::Source::RAW,
        result.db_time,
        0,
        None,
    );
    Ok(FunnelResult {
        steps: result.steps.into_iter().map(Into::into).collect(),
        breakdowns: result
            .breakdowns
            .into_iter()
            .map(|(value, steps)| FunnelBreakdown {
                value: Json(value),
                steps: steps.into_iter().map(Into::into).collect(),
            })
            .collect(),
    })
}

/// `retention`, for the field and for saved queries and widgets.
pub(crate) async fn run_retention(
    ctx: &Context<'_>,
    caller: &TenantCtx,
    input: RetentionInput,
) -> Result<RetentionResult> {
    let query = journey::RetentionQuery {
        start_event: input.start_event,
        return_event: input.return_event,
        period: input.period.into(),
        periods: input.periods,
        from: input.range.from,
        to: input.range.to,
        last: input.range.last,
        timezone: input.timezone,
        count_by: input.count_by,
        max_span: Some(state(ctx)?.config.analytics.max_range),
    };
    let answer = analytic(ctx, caller, move |app, caller| async move {
        journey::retention(
            &app.db,
            &caller,
            query,
            app.config.query_timeout,
            app.config.retention_bitmaps,
        )
        .await
    })
    .await?;
    log_query(ctx, state(ctx)?, answer.source, answer.db_time, 0, None);
    let cohorts = answer.cohorts;
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Ok(RetentionResult {
        cohorts: cohorts
            .into_iter()
            .map(|c| RetentionCohort {
                start: c.start,
                size: count(c.size),
                returned: c.returned.into_iter().map(|r| r.map(count)).collect(),
                rates: c.rates,
            })
            .collect(),
    })
}

#[derive(Default)]
pub struct MetricQuery;

#[Object]
impl MetricQuery {
    /// An aggregate over the tenant's events, bucketed in time.
    #[graphql(
        guard = "RoleGuard::new(Role::Viewer)",
        complexity = "super::METRIC_COST + child_complexity"
    )]
    async fn metrics(&self, ctx: &Context<'_>, query: MetricQueryInput) -> Result<MetricResult> {
        run_metrics(ctx, tenant(ctx)?, query, None).await
    }

    /// Named metric queries combined by an arithmetic expression, per
    /// bucket and per group; `total` is the expression over the queries'
    /// totals.
    #[graphql(
        guard = "RoleGuard::new(Role::Viewer)",
        complexity = "input.queries.len().max(1) * super::METRIC_COST + child_complexity"
    )]
    async fn formula(&self, ctx: &Context<'_>, input: FormulaInput) -> Result<MetricResult> {
        run_formula(ctx, tenant(ctx)?, input, None).await
    }

    /// Ordered steps per user (or session) within a conversion window.
    #[graphql(
        guard = "RoleGuard::new(Role::Viewer)",
        complexity = "super::JOURNEY_COST + child_complexity"
    )]
    async fn funnel(&self, ctx: &Context<'_>, input: FunnelInput) -> Result<FunnelResult> {
        run_funnel(ctx, tenant(ctx)?, input).await
    }

    /// Cohorts by the period of each user's first start event, and the share
    /// who did the return event in each later period.
    #[graphql(
        guard = "RoleGuard::new(Role::Viewer)",
        complexity = "super::JOURNEY_COST + child_complexity"
    )]
    async fn retention(&self, ctx: &Context<'_>, input: RetentionInput) -> Result<RetentionResult> {
        run_retention(ctx, tenant(ctx)?, input).await
    }
}
