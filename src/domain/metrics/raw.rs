//! Answers a [`Plan`] from raw events.
//!
//! One inner select maps each matching event to its bucket (the local start
//! of its time bucket), its group values and the measured value; outer
//! selects aggregate it. Decomposable measures take one outer select of
//! per-cell partials (see [`cells`](super::cells)); the others (and
//! groupings with too many cells) one each for the overall total, the
//! per-group totals that pick the top series, and the points. Both backends get the same shape of SQL;
//! they differ only in expressions (JSON access, local time), which is why
//! the text is assembled here rather than through sea-query, where every
//! such expression would be an opaque custom string anyway. Values are
//! always bound, never spliced; what is spliced (property keys, the unit)
//! is validated to `[A-Za-z0-9_-]`.
//!
//! Percentiles use linear interpolation between the two nearest ranks, as
//! PostgreSQL's `percentile_cont`; SQLite has no such aggregate, so there
//! window functions rank the values and the same formula is spelled out in
//! SQL (see [`Sql::measured`]): no value list is ever loaded here.
//!
//! [`Statements`] assembles the text and does nothing else, so the golden
//! tests snapshot exactly what [`aggregate`] runs.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use sea_orm::{DbBackend, QueryResult, Statement, Value as SqlValue};
use serde_json::Value;

use super::plan::{Field, Filter, FilterOp, Measure, Plan};
use super::time::{self, Granularity};
use super::{Snapshot, cells};
use crate::domain::events::query::time_value;

/// One group's values for the dimensions of `groupBy` (JSON text; `None`
/// when absent).
pub type GroupKey = Vec<Option<String>>;

/// What the raw path computed, before series are assembled.
#[derive(Clone, Debug, Default)]
pub struct Aggregates {
    pub total: Option<f64>,
    pub skipped: u64,
    /// Top groups in order, with their totals; empty without `groupBy`.
    pub groups: Vec<(GroupKey, Option<f64>)>,
    /// Whether more groups than `limit` matched.
    pub more_groups: bool,
    /// (group, bucket local start) → value; the group is empty without
    /// `groupBy`, and `None` marks the rest (`__other__`).
    pub points: HashMap<(Option<GroupKey>, Option<NaiveDateTime>), Option<f64>>,
    pub other_total: Option<f64>,
    /// Answered from the hourly aggregates (and raw events only for the
    /// partial hours at the ends of the range).
    pub from_rollups: bool,
    /// Answered from the hourly actor bitmaps (and raw events only for
    /// the partial hours at the ends).
    pub from_bitmaps: bool,
    /// Rows aggregated, where the statement counted them (decomposable
    /// measures).
    pub rows: Option<u64>,
}

pub(super) struct Sql {
    backend: DbBackend,
    values: Vec<SqlValue>,
}

impl Sql {
    pub(super) fn bind(&mut self, v: impl Into<SqlValue>) -> String {
        self.values.push(v.into());
        match self.backend {
            DbBackend::Postgres => format!("${}", self.values.len()),
            _ => format!("?{}", self.values.len()),
        }
    }

    /// `{column} IN (…)` over the plan's event types, bound as parameters;
    /// `None` when it names none.
    pub(super) fn types_in(&mut self, plan: &Plan, column: &str) -> Option<String> {
        if plan.event_types.is_empty() {
            return None;
        }
        let list: Vec<String> = plan
            .event_types
            .iter()
            .map(|t| self.bind(t.clone()))
            .collect();
        Some(format!("{column} IN ({})", list.join(", ")))
    }

    /// [`Sql::types_in`] as ` AND …`, or nothing.
    pub(super) fn and_types_in(&mut self, plan: &Plan, column: &str) -> String {
        self.types_in(plan, column)
            .map(|c| format!(" AND {c}"))
            .unwrap_or_default()
    }

    pub(super) fn pg(&self) -> bool {
        self.backend == DbBackend::Postgres
    }

    /// The JSON path literal for property keys.
    fn path(&self, keys: &[String]) -> String {
        if self.pg() {
            let quoted: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
            format!("'{{{}}}'", quoted.join(","))
        } else {
            let quoted: Vec<String> = keys.iter().map(|k| format!(".\"{k}\"")).collect();
            format!("'${}'", quoted.concat())
        }
    }

    /// The JSON type of a property: PostgreSQL's names (`number`, `string`,
    /// `boolean`, `null`, …) on both backends; NULL when absent.
    fn json_type(&self, keys: &[String]) -> String {
        let p = self.path(keys);
        if self.pg() {
            format!("jsonb_typeof(properties #> {p})")
        } else {
            format!(
                "(CASE json_type(properties, {p}) WHEN 'integer' THEN 'number' WHEN 'real' THEN 'number' \
                 WHEN 'text' THEN 'string' WHEN 'true' THEN 'boolean' WHEN 'false' THEN 'boolean' \
                 ELSE json_type(properties, {p}) END)"
            )
        }
    }

    fn present(&self, keys: &[String]) -> String {
        format!("(COALESCE({}, 'null') <> 'null')", self.json_type(keys))
    }

    fn number(&self, keys: &[String]) -> String {
        let p = self.path(keys);
        if self.pg() {
            format!(
                "(CASE WHEN jsonb_typeof(properties #> {p}) = 'number' THEN (properties #>> {p})::double precision END)"
            )
        } else {
            format!(
                "(CASE WHEN json_type(properties, {p}) IN ('integer', 'real') THEN CAST(json_extract(properties, {p}) AS REAL) END)"
            )
        }
    }

    fn string(&self, keys: &[String]) -> String {
        let p = self.path(keys);
        if self.pg() {
            format!(
                "(CASE WHEN jsonb_typeof(properties #> {p}) = 'string' THEN properties #>> {p} END)"
            )
        } else {
            format!(
                "(CASE WHEN json_type(properties, {p}) = 'text' THEN json_extract(properties, {p}) END)"
            )
        }
    }

    /// The property as JSON text (a group value); NULL when absent or null.
    pub(super) fn json_text(&self, keys: &[String]) -> String {
        let p = self.path(keys);
        if self.pg() {
            format!("NULLIF((properties #> {p})::text, 'null')")
        } else {
            format!("NULLIF(properties -> {p}, 'null')")
        }
    }

    pub(super) fn column(field: &Field) -> Option<&'static str> {
        match field {
            Field::Type => Some("type"),
            Field::UserId => Some("user_id"),
            Field::SessionId => Some("session_id"),
            Field::Property(_) => None,
        }
    }

    /// A group dimension as text.
    pub(super) fn dimension(&self, field: &Field) -> String {
        match field {
            Field::Property(keys) => self.json_text(keys),
            other => Self::column(other).unwrap_or("NULL").to_owned(),
        }
    }

    fn contains(&self, haystack: &str, needle: &str) -> String {
        if self.pg() {
            format!("(strpos({haystack}, {needle}) > 0)")
        } else {
            format!("(instr({haystack}, {needle}) > 0)")
        }
    }

    fn not_equal_null_safe(&self, a: &str, b: &str) -> String {
        if self.pg() {
            format!("({a} IS DISTINCT FROM {b})")
        } else {
            format!("({a} IS NOT {b})")
        }
    }

    /// `property == value`, JSON types included: the string "1" is not 1.
    fn property_equals(&mut self, keys: &[String], value: &Value) -> String {
        match value {
            Value::String(s) => format!("({} = {})", self.string(keys), self.bind(s.clone())),
            Value::Number(n) => {
                format!(
                    "({} = {})",
                    self.number(keys),
                    self.bind(n.as_f64().unwrap_or(f64::NAN))
                )
            }
            Value::Bool(b) => {
                let p = self.path(keys);
                if self.pg() {
                    format!(
                        "(jsonb_typeof(properties #> {p}) = 'boolean' AND properties #>> {p} = '{b}')"
                    )
                } else {
                    format!("(json_type(properties, {p}) = '{b}')")
                }
            }
            _ => "FALSE".to_owned(),
        }
    }

    pub(super) fn filter(&mut self, f: &Filter) -> String {
        let cmp = |op: FilterOp| match op {
            FilterOp::Gt => ">",
            FilterOp::Gte => ">=",
            FilterOp::Lt => "<",
            _ => "<=",
        };
        match (&f.field, f.op) {
            (Field::Property(keys), op) => match op {
                FilterOp::Eq => self.property_equals(keys, &f.value),
                FilterOp::Neq => format!(
                    "(NOT COALESCE({}, FALSE))",
                    self.property_equals(keys, &f.value)
                ),
                FilterOp::In | FilterOp::NotIn => {
                    // One `IN` per JSON type rather than an OR per value: a
                    // thousand ORs exceed SQLite's expression depth.
                    let values = f.value.as_array().map(Vec::as_slice).unwrap_or_default();
                    let strings: Vec<String> = values
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|v| self.bind(v.to_owned()))
                        .collect();
                    let numbers: Vec<String> = values
                        .iter()
                        .filter_map(Value::as_f64)
                        .map(|v| self.bind(v))
                        .collect();
                    let mut items = Vec::new();
                    if !strings.is_empty() {
                        items.push(format!("{} IN ({})", self.string(keys), strings.join(", ")));
                    }
                    if !numbers.is_empty() {
                        items.push(format!("{} IN ({})", self.number(keys), numbers.join(", ")));
                    }
                    for b in values.iter().filter(|v| v.is_boolean()) {
                        items.push(self.property_equals(keys, b));
                    }
                    let any = format!("COALESCE(({}), FALSE)", items.join(" OR "));
                    if op == FilterOp::In {
                        format!("({any})")
                    } else {
                        format!("(NOT {any})")
                    }
                }
                FilterOp::Gt | FilterOp::Gte | FilterOp::Lt | FilterOp::Lte => match &f.value {
                    Value::Number(n) => {
                        let expr = self.number(keys);
                        format!(
                            "({expr} {} {})",
                            cmp(op),
                            self.bind(n.as_f64().unwrap_or(f64::NAN))
                        )
                    }
                    v => {
                        let expr = self.string(keys);
                        format!(
                            "({expr} {} {})",
                            cmp(op),
                            self.bind(v.as_str().unwrap_or_default().to_owned())
                        )
                    }
                },
                FilterOp::Contains => {
                    let expr = self.string(keys);
                    let needle = self.bind(f.value.as_str().unwrap_or_default().to_owned());
                    format!("COALESCE({}, FALSE)", self.contains(&expr, &needle))
                }
                FilterOp::Exists => {
                    let present = self.present(keys);
                    if f.value.as_bool().unwrap_or(true) {
                        present
                    } else {
                        format!("(NOT {present})")
                    }
                }
            },
            (field, op) => {
                let col = Self::column(field).unwrap_or("NULL");
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                match op {
                    FilterOp::Eq => format!("({col} = {})", self.bind(text(&f.value))),
                    FilterOp::Neq => {
                        let p = self.bind(text(&f.value));
                        self.not_equal_null_safe(col, &p)
                    }
                    FilterOp::In | FilterOp::NotIn => {
                        let items: Vec<String> = f
                            .value
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|v| self.bind(text(v)))
                            .collect();
                        if op == FilterOp::In {
                            format!("({col} IN ({}))", items.join(", "))
                        } else {
                            format!("({col} IS NULL OR {col} NOT IN ({}))", items.join(", "))
                        }
                    }
                    FilterOp::Gt | FilterOp::Gte | FilterOp::Lt | FilterOp::Lte => {
                        format!("({col} {} {})", cmp(op), self.bind(text(&f.value)))
                    }
                    FilterOp::Contains => {
                        let needle = self.bind(text(&f.value));
                        format!("COALESCE({}, FALSE)", self.contains(col, &needle))
                    }
                    FilterOp::Exists => {
                        if f.value.as_bool().unwrap_or(true) {
                            format!("({col} IS NOT NULL)")
                        } else {
                            format!("({col} IS NULL)")
                        }
                    }
                }
            }
        }
    }

    /// The local start of an event's bucket: a `timestamp` on PostgreSQL,
    /// local microseconds since 1970 on SQLite (which has no time zones:
    /// the zone's offsets over the range are spelled out).
    pub(super) fn bucket(&mut self, plan: &Plan, column: &str) -> String {
        let Some(g) = plan.granularity else {
            return if self.pg() {
                "CAST(NULL AS timestamp)".into()
            } else {
                "NULL".into()
            };
        };
        let unit = match g {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Week => "week",
            Granularity::Month => "month",
        };
        if self.pg() {
            let tz = self.bind(plan.tz.name().to_owned());
            return format!("date_trunc('{unit}', {column} AT TIME ZONE {tz})");
        }
        let (first, changes) = time::offsets(plan.tz, plan.from, plan.to);
        let local = if changes.is_empty() {
            format!("({column} + {})", i64::from(first) * 1_000_000)
        } else {
            let mut case = format!("({column} + CASE");
            let mut offset = first;
            for (at, next) in &changes {
                case.push_str(&format!(
                    " WHEN {column} < {} THEN {}",
                    at.timestamp_micros(),
                    i64::from(offset) * 1_000_000
                ));
                offset = *next;
            }
            case.push_str(&format!(" ELSE {} END)", i64::from(offset) * 1_000_000));
            case
        };
        const MINUTE: i64 = 60_000_000;
        const DAY: i64 = 86_400_000_000;
        match g {
            Granularity::Minute => format!("({local} / {MINUTE} * {MINUTE})"),
            Granularity::Hour => format!("({local} / {} * {})", 60 * MINUTE, 60 * MINUTE),
            Granularity::Day => format!("({local} / {DAY} * {DAY})"),
            // 1970-01-01 was a Thursday: day d's Monday is d - (d + 3) % 7.
            Granularity::Week => {
                format!("((({local} / {DAY}) - ((({local} / {DAY}) + 3) % 7)) * {DAY})")
            }
            Granularity::Month => {
                let mut case = String::from("(CASE");
                let mut month = time::truncate(Granularity::Month, time::local(plan.tz, plan.from));
                let end = time::local(plan.tz, plan.to);
                loop {
                    let following = time::next(Granularity::Month, month);
                    let micros = |t: NaiveDateTime| t.and_utc().timestamp_micros();
                    if following > end {
                        if case.len() == "(CASE".len() {
                            // The range lies within one month.
                            break format!("({})", micros(month));
                        }
                        case.push_str(&format!(" ELSE {} END)", micros(month)));
                        break case;
                    }
                    case.push_str(&format!(
                        " WHEN {local} < {} THEN {}",
                        micros(following),
                        micros(month)
                    ));
                    month = following;
                }
            }
        }
    }

    /// The measured value of one event.
    fn value(&self, plan: &Plan) -> String {
        match (&plan.field, plan.measure) {
            (None, _) => "1".into(),
            (Some(Field::Property(keys)), Measure::Count) => {
                format!("(CASE WHEN {} THEN 1 END)", self.present(keys))
            }
            (Some(Field::Property(keys)), Measure::CountDistinct) => self.json_text(keys),
            (Some(Field::Property(keys)), _) => self.number(keys),
            (Some(other), _) => Self::column(other).unwrap_or("NULL").to_owned(),
        }
    }

    /// 1 for an event whose field is present but not a number, when the
    /// measure needs numbers: skipped, and reported.
    fn skipped(&self, plan: &Plan) -> String {
        match (&plan.field, plan.measure.numeric()) {
            (Some(Field::Property(keys)), true) => format!(
                "(CASE WHEN {} AND {} <> 'number' THEN 1 ELSE 0 END)",
                self.present(keys),
                self.json_type(keys)
            ),
            _ => "0".into(),
        }
    }

    /// The aggregate over `v`; over aggregate rows a count is a sum.
    fn measure(&self, measure: Measure, rollup: bool) -> String {
        let m = match measure {
            Measure::Count if rollup => "sum(v)".to_owned(),
            Measure::Count => "count(v)".to_owned(),
            // Over the distinct rows of [`rows`].
            Measure::CountDistinct => "count(v)".to_owned(),
            Measure::Sum => "sum(v)".to_owned(),
            Measure::Avg => "avg(v)".to_owned(),
            Measure::Min => "min(v)".to_owned(),
            Measure::Max => "max(v)".to_owned(),
            p => format!(
                "percentile_cont({}) WITHIN GROUP (ORDER BY v)",
                p.percentile().unwrap_or(0.5)
            ),
        };
        format!("CAST({m} AS DOUBLE PRECISION)")
    }

    /// `SELECT {cols, }<measure>, sum(skip) FROM ({rows}) e{filter}`,
    /// grouped by `cols` (a column list, or empty for one row), then
    /// `tail`.
    ///
    /// SQLite has no `percentile_cont`: there each row gets its rank in its
    /// group (window functions, which the database sorts within its own
    /// memory limits and spills to disk past them) and the group keeps the
    /// two nearest ranks, interpolated with PostgreSQL's formula: `pos =
    /// q * (n - 1)`, `first + (second - first) * (pos - floor(pos))`.
    fn measured(
        &self,
        plan: &Plan,
        rollup: bool,
        cols: &str,
        rows: &str,
        filter: &str,
        tail: &str,
    ) -> String {
        let lead = if cols.is_empty() {
            String::new()
        } else {
            format!("{cols}, ")
        };
        let group = if cols.is_empty() {
            String::new()
        } else {
            format!(" GROUP BY {cols}")
        };
        match plan.measure.percentile() {
            Some(q) if !self.pg() => {
                let partition = if cols.is_empty() {
                    String::new()
                } else {
                    format!("PARTITION BY {cols}")
                };
                let by = if cols.is_empty() { "" } else { " " };
                let lo = "CAST(pos AS INTEGER)";
                let at = |rank: &str| format!("max(CASE WHEN r = {rank} THEN v END)");
                let first = at(lo);
                let second = at(&format!("{lo} + (pos > {lo})"));
                format!(
                    "SELECT {lead}CAST({first} + ({second} - {first}) * (max(pos) - CAST(max(pos) AS INTEGER)) AS DOUBLE PRECISION), sum(skip) \
                     FROM (SELECT {lead}v, skip, row_number() OVER ({partition}{by}ORDER BY v NULLS LAST) - 1 AS r, \
                     {q:?} * (count(v) OVER ({partition}) - 1) AS pos FROM ({rows}) e{filter}) e{group}{tail}"
                )
            }
            _ => format!(
                "SELECT {lead}{m}, sum(skip) FROM ({rows}) e{filter}{group}{tail}",
                m = self.measure(plan.measure, rollup)
            ),
        }
    }

    /// Rows of groups in `groups` (or, `negate`d, of the others), as a
    /// condition on the outer columns.
    fn restriction(&mut self, groups: &[GroupKey], negate: bool) -> String {
        let any: Vec<String> = groups
            .iter()
            .map(|key| {
                let parts: Vec<String> = key
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        None => format!("g{i} IS NULL"),
                        Some(v) => {
                            let p = self.bind(v.clone());
                            if self.pg() {
                                format!("g{i} IS NOT DISTINCT FROM {p}")
                            } else {
                                format!("g{i} IS {p}")
                            }
                        }
                    })
                    .collect();
                format!("({})", parts.join(" AND "))
            })
            .collect();
        let any = if any.is_empty() {
            "FALSE".to_owned()
        } else {
            any.join(" OR ")
        };
        if negate {
            format!("NOT ({any})")
        } else {
            format!("({any})")
        }
    }
}

pub(super) fn group_columns(plan: &Plan) -> String {
    (0..plan.group_by.len())
        .map(|i| format!(", g{i}"))
        .collect()
}

/// The inner select: one row per matching event of the caller's tenant,
/// or, with a rollup window, one row per hourly aggregate inside it plus
/// one per raw event in the partial hours around it.
pub(super) fn inner(
    sql: &mut Sql,
    plan: &Plan,
    tenant: uuid::Uuid,
    rollup: Option<Window>,
) -> String {
    let Some((start, end)) = rollup else {
        return raw_inner(sql, plan, tenant, &[(plan.from, plan.to)]);
    };
    let bucket = sql.bucket(plan, "hour_start");
    let dims: String = (0..plan.group_by.len())
        .map(|i| format!(", event_type AS g{i}"))
        .collect();
    let mut wh = vec![
        format!("tenant_id = {}", sql.bind(tenant)),
        format!("hour_start >= {}", sql.bind(time_value(sql.backend, start))),
        format!("hour_start < {}", sql.bind(time_value(sql.backend, end))),
    ];
    wh.extend(sql.types_in(plan, "event_type"));
    let aggregates = format!(
        "SELECT {bucket} AS bucket{dims}, event_count AS v, 0 AS skip FROM analytics_aggregates WHERE {}",
        wh.join(" AND ")
    );
    let edges = edges(plan, (start, end));
    if edges.is_empty() {
        return aggregates;
    }
    format!(
        "{aggregates} UNION ALL {}",
        raw_inner(sql, plan, tenant, &edges)
    )
}

/// The partial hours at the range's ends around its whole hours
/// `window`: `[from, first whole hour)` and `[end of the last, to)`, where
/// not empty. Raw events answer them on every rollup path.
pub(super) fn edges(plan: &Plan, (start, end): Window) -> Vec<Window> {
    [(plan.from, start), (end, plan.to)]
        .into_iter()
        .filter(|(from, to)| from < to)
        .collect()
}

/// One select per span, joined by UNION ALL: each is a range scan of the
/// `(tenant, type, occurred_at)` (or `(tenant, occurred_at)`) index. An OR
/// of ranges in one WHERE is not: SQLite then walks every event of the
/// tenant and type (8 ms at 100k events for a rollup's two edges, 0.02 ms
/// as two scans), growing with the tenant's whole history.
pub(super) fn raw_inner(
    sql: &mut Sql,
    plan: &Plan,
    tenant: uuid::Uuid,
    spans: &[Window],
) -> String {
    let selects: Vec<String> = spans
        .iter()
        .map(|span| raw_span(sql, plan, tenant, *span))
        .collect();
    selects.join(" UNION ALL ")
}

fn raw_span(sql: &mut Sql, plan: &Plan, tenant: uuid::Uuid, (from, to): Window) -> String {
    let bucket = sql.bucket(plan, "occurred_at");
    let dims: String = plan
        .group_by
        .iter()
        .enumerate()
        .map(|(i, f)| format!(", {} AS g{i}", sql.dimension(f)))
        .collect();
    let value = sql.value(plan);
    let skipped = sql.skipped(plan);
    let mut wh = vec![
        format!("tenant_id = {}", sql.bind(tenant)),
        format!("occurred_at >= {}", sql.bind(time_value(sql.backend, from))),
        format!("occurred_at < {}", sql.bind(time_value(sql.backend, to))),
    ];
    wh.extend(sql.types_in(plan, "type"));
    for f in &plan.filters {
        wh.push(sql.filter(f));
    }
    format!(
        "SELECT {bucket} AS bucket{dims}, {value} AS v, {skipped} AS skip FROM events WHERE {}",
        wh.join(" AND ")
    )
}

/// The rows an outer select aggregates, keeping the columns `keys` (a
/// list ending in ", ", or empty): the inner select, or for COUNT_DISTINCT
/// its distinct `(keys, v)` rows, so that the outer measure is a plain
/// count. PostgreSQL runs that GROUP BY as a parallel hash aggregate where
/// count(DISTINCT) sorts every row in one process (bench query (b), total
/// over 1.7M events: 3.8 s → 1.5 s).
fn rows(
    sql: &mut Sql,
    plan: &Plan,
    tenant: uuid::Uuid,
    rollup: Option<Window>,
    keys: &str,
) -> String {
    let inner = inner(sql, plan, tenant, rollup);
    if plan.measure != Measure::CountDistinct {
        return inner;
    }
    format!("SELECT {keys}v, 0 AS skip FROM ({inner}) d GROUP BY {keys}v")
}

/// A half-open span of time.
pub type Window = (DateTime<Utc>, DateTime<Utc>);

/// The whole UTC hours of the range, when the hourly aggregates answer the
/// plan exactly: a plain COUNT, by type at most, no filters, HOUR or
/// coarser buckets, and a zone whose offset over the range is always a
/// whole number of hours (so every UTC hour lies in one local bucket).
pub fn rollup_window(plan: &Plan) -> Option<Window> {
    let eligible = plan.measure == Measure::Count
        && plan.field.is_none()
        && plan.filters.is_empty()
        && plan.group_by.iter().all(|f| *f == Field::Type)
        && plan.granularity != Some(Granularity::Minute);
    if !eligible {
        return None;
    }
    rollup_hours(plan)
}

/// The whole UTC hours of the range, when every UTC hour of it lies in
/// one local bucket (the zone's offset is a whole number of hours
/// throughout) and there is at least one.
pub fn rollup_hours(plan: &Plan) -> Option<Window> {
    let (first, changes) = time::offsets(plan.tz, plan.from, plan.to);
    if first % 3600 != 0 || changes.iter().any(|(_, o)| o % 3600 != 0) {
        return None;
    }
    let hour = |t: DateTime<Utc>, up: bool| {
        let secs = t.timestamp();
        let floor = secs.div_euclid(3600) * 3600;
        let exact = floor == secs && t.timestamp_subsec_nanos() == 0;
        let at = if up && !exact { floor + 3600 } else { floor };
        DateTime::from_timestamp(at, 0)
    };
    let (start, end) = (hour(plan.from, true)?, hour(plan.to, false)?);
    (start < end).then_some((start, end))
}

pub(super) fn statement(sql: Sql, text: String) -> Statement {
    Statement::from_sql_and_values(sql.backend, text, sql.values)
}

pub(super) fn new_sql(backend: DbBackend) -> Sql {
    Sql {
        backend,
        values: Vec::new(),
    }
}

pub(super) fn float(row: &QueryResult, i: usize) -> Result<Option<f64>, sea_orm::DbErr> {
    row.try_get_by_index::<Option<f64>>(i)
}

pub(super) fn key(row: &QueryResult, from: usize, n: usize) -> Result<GroupKey, sea_orm::DbErr> {
    (from..from + n)
        .map(|i| row.try_get_by_index::<Option<String>>(i))
        .collect()
}

pub(super) fn bucket_of(
    backend: DbBackend,
    row: &QueryResult,
) -> Result<Option<NaiveDateTime>, sea_orm::DbErr> {
    if backend == DbBackend::Postgres {
        row.try_get_by_index::<Option<NaiveDateTime>>(0)
    } else {
        Ok(row
            .try_get_by_index::<Option<i64>>(0)?
            .and_then(DateTime::from_timestamp_micros)
            .map(|t| t.naive_utc()))
    }
}

/// The statements of one plan, built without a database: the executor
/// ([`aggregate`]) runs them and the golden tests snapshot them, from the
/// same functions.
pub struct Statements<'a> {
    backend: DbBackend,
    plan: &'a Plan,
    tenant: uuid::Uuid,
    rollup: Option<Window>,
}

impl<'a> Statements<'a> {
    pub fn new(backend: DbBackend, plan: &'a Plan, tenant: uuid::Uuid) -> Self {
        Statements {
            backend,
            plan,
            tenant,
            rollup: rollup_window(plan),
        }
    }

    /// Every statement [`aggregate`] may run for the plan, in order: the
    /// one-statement partials when the measure decomposes, then the
    /// statement-per-part path it falls back to. `found` stands for the
    /// groups the ranking returned: with any, the `__other__` statements
    /// (whose text lists them) are included.
    pub fn all(&self, found: &[GroupKey]) -> Vec<Statement> {
        let mut out = Vec::new();
        if cells::decomposes(self.plan.measure) {
            out.push(cells::statement(
                self.backend,
                self.plan,
                self.tenant,
                self.rollup,
            ));
        }
        out.push(self.total());
        let restrict = if self.plan.group_by.is_empty() {
            None
        } else {
            out.push(self.ranking());
            (!found.is_empty()).then_some(found)
        };
        out.push(self.points(restrict));
        if let Some(keys) = restrict {
            out.push(self.rest(keys, true));
            out.push(self.rest(keys, false));
        }
        out
    }

    fn group_list(&self) -> String {
        let g = group_columns(self.plan);
        g.strip_prefix(", ").unwrap_or_default().to_owned()
    }

    /// The measure over everything, and the skipped values.
    fn total(&self) -> Statement {
        let mut sql = new_sql(self.backend);
        let rows = rows(&mut sql, self.plan, self.tenant, self.rollup, "");
        let text = sql.measured(self.plan, self.rollup.is_some(), "", &rows, "", "");
        statement(sql, text)
    }

    /// The groups by total, largest first, one more than `limit`.
    fn ranking(&self) -> Statement {
        let n = self.plan.group_by.len();
        let cols = self.group_list();
        let mut sql = new_sql(self.backend);
        let rows = rows(
            &mut sql,
            self.plan,
            self.tenant,
            self.rollup,
            &format!("{cols}, "),
        );
        let order: String = (0..n).map(|i| format!(", g{i} ASC NULLS FIRST")).collect();
        // Positional: the measure's column has no alias in every form.
        let tail = format!(
            " ORDER BY {} DESC NULLS LAST{order} LIMIT {}",
            n + 1,
            self.plan.limit + 1
        );
        let text = sql.measured(self.plan, self.rollup.is_some(), &cols, &rows, "", &tail);
        statement(sql, text)
    }

    /// The measure per (bucket, group), for the groups in `restrict` when
    /// some are left over for `__other__`.
    fn points(&self, restrict: Option<&[GroupKey]>) -> Statement {
        let gs = group_columns(self.plan);
        let mut sql = new_sql(self.backend);
        let rows = rows(
            &mut sql,
            self.plan,
            self.tenant,
            self.rollup,
            &format!("bucket{gs}, "),
        );
        let filter = match restrict {
            Some(keys) => format!(" WHERE {}", sql.restriction(keys, false)),
            None => String::new(),
        };
        let cols = format!("bucket{gs}");
        let text = sql.measured(self.plan, self.rollup.is_some(), &cols, &rows, &filter, "");
        statement(sql, text)
    }

    /// `__other__`: the measure over the groups not in `keys`, per bucket
    /// or in total.
    fn rest(&self, keys: &[GroupKey], by_bucket: bool) -> Statement {
        let gs = group_columns(self.plan);
        let mut sql = new_sql(self.backend);
        let keep = if by_bucket {
            format!("bucket{gs}, ")
        } else {
            format!("{}, ", self.group_list())
        };
        let rows = rows(&mut sql, self.plan, self.tenant, self.rollup, &keep);
        let filter = format!(" WHERE {}", sql.restriction(keys, true));
        let cols = if by_bucket { "bucket" } else { "" };
        let text = sql.measured(self.plan, self.rollup.is_some(), cols, &rows, &filter, "");
        statement(sql, text)
    }
}

pub async fn aggregate(
    s: &mut Snapshot,
    plan: &Plan,
    tenant: uuid::Uuid,
) -> Result<Aggregates, sea_orm::DbErr> {
    if let Some((kind, hours)) = super::bitmaps::window(plan)
        && let Some(out) = super::bitmaps::aggregate(s, plan, tenant, kind, hours).await?
    {
        return Ok(out);
    }
    let backend = s.backend();
    let parts = Statements::new(backend, plan, tenant);
    if cells::decomposes(plan.measure)
        && let Some(out) = cells::aggregate(s, plan, tenant, parts.rollup).await?
    {
        return Ok(out);
    }
    let mut out = Aggregates {
        from_rollups: parts.rollup.is_some(),
        ..Default::default()
    };
    let n = plan.group_by.len();
    if let Some(row) = s.query_one(parts.total()).await? {
        out.total = float(&row, 0)?;
        out.skipped = skipped(&row, 1)?;
    }

    if n > 0 {
        for row in s.query_all(parts.ranking()).await? {
            out.groups.push((key(&row, 0, n)?, float(&row, n)?));
        }
        if out.groups.len() > plan.limit {
            out.groups.truncate(plan.limit);
            out.more_groups = true;
        }
    }
    let keys: Vec<GroupKey> = out.groups.iter().map(|(k, _)| k.clone()).collect();
    let restrict = out.more_groups.then_some(keys.as_slice());

    for row in s.query_all(parts.points(restrict)).await? {
        let group = Some(key(&row, 1, n)?);
        out.points
            .insert((group, bucket_of(backend, &row)?), float(&row, n + 1)?);
    }

    if let Some(keys) = restrict {
        for row in s.query_all(parts.rest(keys, true)).await? {
            out.points
                .insert((None, bucket_of(backend, &row)?), float(&row, 1)?);
        }
        if let Some(row) = s.query_one(parts.rest(keys, false)).await? {
            out.other_total = float(&row, 0)?;
        }
    }
    Ok(out)
}

/// A `sum(skip)` column as a count.
pub(super) fn skipped(row: &QueryResult, i: usize) -> Result<u64, sea_orm::DbErr> {
    Ok(row.try_get_by_index::<Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
}

/// `percentile_cont`: linear interpolation between the nearest ranks of
/// sorted values, computed as PostgreSQL computes it.
pub fn percentile_cont(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let (first, second) = (sorted[lo], sorted[hi]);
    if hi == lo {
        return Some(first);
    }
    Some(first + (second - first) * (pos - lo as f64))
}

#[cfg(test)]
mod tests {
    use super::percentile_cont;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile_cont(&v, 0.5), Some(2.5));
        let p90 = percentile_cont(&v, 0.9).expect("values");
        assert!((p90 - 3.7).abs() < 1e-12, "{p90}");
        assert_eq!(percentile_cont(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile_cont(&[], 0.5), None);
    }
}
