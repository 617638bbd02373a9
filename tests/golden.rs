//! Golden SQL: every query shape the metric, funnel, retention and events
//! paths generate, one case per folder under `tests/golden/` (the
//! GraphQL-shaped `input.json`, and beside it `sqlite.snap` and
//! `postgres.snap`), assembled without a database from a fixed `now`.
//!
//! The snapshots pin each statement's text and bound values, the tenant
//! predicate included, so a change to the SQL shows up in review; the test
//! also checks that every read of `events` or of a rollup table is scoped
//! by the tenant. `plans` runs the same cases' statements on a
//! seeded database and checks their query plans.

use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};
use pulse::domain::events::query::{self as events, EventFilter};
use pulse::domain::metrics::journey::{self, FunnelQuery, FunnelStepQuery, RetentionQuery};
use pulse::domain::metrics::plan::{self, FilterOp, Measure, MetricQuery};
use pulse::domain::metrics::raw::{GroupKey, Statements};
use pulse::domain::metrics::time::Granularity;
use pulse::domain::metrics::{bitmaps, budget, numeric};
use sea_orm::{DbBackend, Statement};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

/// The tables of the tenants' events and their rollups.
pub const TENANT_TABLES: [&str; 5] = [
    "events",
    "analytics_aggregates",
    "actor_bitmaps",
    "actor_coverage",
    "property_rollups",
];

/// The tenant every golden statement is for.
pub const TENANT: Uuid = Uuid::from_u128(0x0000_0000_0000_0000_0000_0000_0000_00aa);

/// The fixed `now` of every case: mid-hour, so rollup windows have edges.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 15, 10, 17, 23)
        .single()
        .expect("valid date")
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Range {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    last: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterInput {
    field: String,
    op: String,
    value: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetricInput {
    measure: String,
    field: Option<String>,
    event_types: Option<Vec<String>>,
    #[serde(default)]
    filters: Vec<FilterInput>,
    #[serde(default)]
    group_by: Vec<String>,
    granularity: Option<String>,
    range: Range,
    timezone: Option<String>,
    limit: Option<i32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StepInput {
    event_type: String,
    #[serde(default)]
    filters: Vec<FilterInput>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FunnelInput {
    steps: Vec<StepInput>,
    conversion_window: String,
    range: Range,
    timezone: Option<String>,
    count_by: Option<String>,
    breakdown: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RetentionInput {
    start_event: String,
    return_event: String,
    period: String,
    periods: Option<i32>,
    range: Range,
    timezone: Option<String>,
    count_by: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EventsInput {
    filter: Option<EventFilterInput>,
    first: Option<u64>,
    after: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EventFilterInput {
    types: Option<Vec<String>>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    user_id: Option<String>,
    session_id: Option<String>,
    properties: Option<serde_json::Map<String, Value>>,
}

/// One case: the query as a client sends it (the variables of `metrics`,
/// `funnel`, `retention` or `events`), and for grouped metrics the groups
/// the ranking is taken to have found, which the `__other__` statements
/// list.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Case {
    metrics: Option<MetricInput>,
    funnel: Option<FunnelInput>,
    retention: Option<RetentionInput>,
    events: Option<EventsInput>,
    #[serde(default)]
    ranked: Vec<GroupKey>,
}

fn measure(raw: &str) -> Measure {
    match raw {
        "COUNT" => Measure::Count,
        "COUNT_DISTINCT" => Measure::CountDistinct,
        "SUM" => Measure::Sum,
        "AVG" => Measure::Avg,
        "MIN" => Measure::Min,
        "MAX" => Measure::Max,
        "P50" => Measure::P50,
        "P90" => Measure::P90,
        "P95" => Measure::P95,
        "P99" => Measure::P99,
        other => panic!("unknown measure {other}"),
    }
}

fn granularity(raw: &str) -> Granularity {
    match raw {
        "MINUTE" => Granularity::Minute,
        "HOUR" => Granularity::Hour,
        "DAY" => Granularity::Day,
        "WEEK" => Granularity::Week,
        "MONTH" => Granularity::Month,
        other => panic!("unknown granularity {other}"),
    }
}

fn filters(input: Vec<FilterInput>) -> Vec<(String, FilterOp, Option<Value>)> {
    input
        .into_iter()
        .map(|f| {
            let op = match f.op.as_str() {
                "EQ" => FilterOp::Eq,
                "NEQ" => FilterOp::Neq,
                "IN" => FilterOp::In,
                "NOT_IN" => FilterOp::NotIn,
                "GT" => FilterOp::Gt,
                "GTE" => FilterOp::Gte,
                "LT" => FilterOp::Lt,
                "LTE" => FilterOp::Lte,
                "CONTAINS" => FilterOp::Contains,
                "EXISTS" => FilterOp::Exists,
                other => panic!("unknown op {other}"),
            };
            (f.field, op, f.value)
        })
        .collect()
}

impl Case {
    pub fn read(path: &Path) -> Case {
        let text = std::fs::read_to_string(path).expect("read input.json");
        serde_json::from_str(&text).expect("a golden case")
    }

    /// Every statement the case's query may run on `backend`, in order.
    pub fn statements(self, backend: DbBackend, tenant: Uuid) -> Vec<Statement> {
        if let Some(m) = self.metrics {
            let q = MetricQuery {
                measure: Some(measure(&m.measure)),
                field: m.field,
                event_types: m.event_types,
                filters: filters(m.filters),
                group_by: m.group_by,
                granularity: m.granularity.as_deref().map(granularity),
                from: m.range.from,
                to: m.range.to,
                last: m.range.last,
                timezone: m.timezone,
                limit: m.limit,
            };
            let plan = plan::plan(q, now(), plan::DEFAULT_MAX_SPAN).expect("a valid metric query");
            // The query budget's estimate runs first, over the aggregates;
            // then the actor bitmaps or the numeric rollups, where they
            // may answer; the raw statements answer the rest.
            let mut all = vec![budget::statement(backend, &plan, tenant)];
            all.extend(bitmaps::statements(backend, &plan, tenant));
            if let Some(series) = numeric::window(&plan) {
                all.push(numeric::statement(backend, &plan, tenant, &series));
            }
            all.extend(Statements::new(backend, &plan, tenant).all(&self.ranked));
            return all;
        }
        if let Some(f) = self.funnel {
            let q = FunnelQuery {
                steps: f
                    .steps
                    .into_iter()
                    .map(|s| FunnelStepQuery {
                        event_type: s.event_type,
                        filters: filters(s.filters),
                    })
                    .collect(),
                conversion_window: f.conversion_window,
                from: f.range.from,
                to: f.range.to,
                last: f.range.last,
                timezone: f.timezone,
                count_by: f.count_by,
                breakdown: f.breakdown,
                max_span: None,
            };
            let plan = journey::funnel_plan(q, now()).expect("a valid funnel");
            return vec![plan.statement(backend, tenant)];
        }
        if let Some(r) = self.retention {
            let q = RetentionQuery {
                start_event: r.start_event,
                return_event: r.return_event,
                period: granularity(&r.period),
                periods: r.periods,
                from: r.range.from,
                to: r.range.to,
                last: r.range.last,
                timezone: r.timezone,
                count_by: r.count_by,
                max_span: None,
            };
            let plan = journey::retention_plan(q, now()).expect("a valid retention query");
            return vec![plan.statement(backend, tenant)];
        }
        let e = self
            .events
            .expect("one of metrics, funnel, retention, events");
        let filter = e
            .filter
            .map(|f| EventFilter {
                types: f.types,
                from: f.from,
                to: f.to,
                user_id: f.user_id,
                session_id: f.session_id,
                properties: f.properties,
            })
            .unwrap_or_default();
        let stmt = events::list_statement(
            backend,
            tenant,
            &filter,
            e.first.unwrap_or(20),
            e.after.as_deref(),
        )
        .expect("a valid events filter");
        vec![stmt]
    }
}

/// Statements as reviewers read them: one clause per line, then the
/// bound values by position.
fn render(statements: &[Statement]) -> String {
    let mut out = String::new();
    for (i, s) in statements.iter().enumerate() {
        let mut sql = s.sql.clone();
        for kw in [
            " UNION ALL ",
            " FROM ",
            " WHERE ",
            " GROUP BY ",
            " ORDER BY ",
        ] {
            sql = sql.replace(kw, &format!("\n {}", kw.trim_start()));
        }
        out.push_str(&format!("-- statement {}\n{sql}\n", i + 1));
        for (k, v) in s.values.iter().flat_map(|v| v.0.iter()).enumerate() {
            out.push_str(&format!("-- {} = {v:?}\n", k + 1));
        }
        out.push('\n');
    }
    out
}

/// Every `FROM` of a tenant table (events and their rollups) is followed
/// by `WHERE tenant_id = <the parameter bound to the tenant>`.
fn assert_tenant_scoped(s: &Statement) {
    let sql = s.sql.replace('"', "");
    let values: Vec<&sea_orm::Value> = s.values.iter().flat_map(|v| v.0.iter()).collect();
    for table in TENANT_TABLES {
        let from = format!("FROM {table} ");
        for (at, _) in sql.match_indices(&from) {
            let rest = &sql[at + from.len()..];
            let param = rest
                .strip_prefix("WHERE tenant_id = ")
                .unwrap_or_else(|| panic!("unscoped read of {table}: {}", s.sql));
            let digits: String = param
                .trim_start_matches(['$', '?'])
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            // sea-query's SQLite placeholders are plain `?`s: count them.
            let index: usize = digits.parse().unwrap_or_else(|_| {
                let upto = sql.len() - param.len() + 1;
                sql[..upto].matches('?').count()
            });
            let bound = values.get(index - 1).expect("the parameter is bound");
            assert_eq!(
                **bound,
                sea_orm::Value::from(TENANT),
                "tenant parameter of {}",
                s.sql
            );
        }
    }
}

#[test]
fn every_query_shape_generates_the_pinned_sql_on_both_backends() {
    insta::glob!("golden/*/input.json", |path| {
        let dir = path.parent().expect("a case folder");
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(dir);
        settings.set_prepend_module_to_snapshot(false);
        settings.remove_snapshot_suffix();
        settings.set_omit_expression(true);
        settings.bind(|| {
            for (name, backend) in [
                ("sqlite", DbBackend::Sqlite),
                ("postgres", DbBackend::Postgres),
            ] {
                let statements = Case::read(path).statements(backend, TENANT);
                for s in &statements {
                    assert_tenant_scoped(s);
                }
                insta::assert_snapshot!(name, render(&statements));
            }
        });
    });
}
