//! A metric query as clients send it, validated into a [`Plan`] before
//! anything runs: every problem is a `BAD_USER_INPUT` naming its field.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use super::time::{self, Bucket, Granularity};
use crate::error::{AppError, AppResult};

/// Most buckets × series one query may produce.
pub const MAX_CELLS: usize = 10_000;
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1_000;
pub const MAX_GROUP_BY: usize = 3;
/// Most filters one query (or funnel step) may combine.
pub const MAX_FILTERS: usize = 20;
/// Most values all the `IN`/`NOT_IN` lists of one query may hold together:
/// every value is a bound parameter, and the databases cap those (SQLite
/// at 32,766), so a query must stay well under whatever else it binds.
pub const MAX_FILTER_VALUES: usize = 1_000;
/// Most event types one query may name.
pub const MAX_EVENT_TYPES: usize = 100;
/// The widest range by default: the longest tenant retention (ten years)
/// and a margin; `PULSE_MAX_RANGE_DAYS` sets it.
pub const DEFAULT_MAX_SPAN: Duration = Duration::days(3700);
/// Instants a range may name: events are never older or newer than these,
/// and staying far from the ends of time keeps every later step of time
/// arithmetic (buckets, windows, offsets) clear of overflow.
pub const EARLIEST: DateTime<Utc> = DateTime::from_timestamp_nanos(0);
/// 2200-01-01T00:00:00Z.
pub const LATEST: DateTime<Utc> = DateTime::from_timestamp_nanos(7_258_118_400_000_000_000);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

impl Measure {
    pub fn percentile(self) -> Option<f64> {
        match self {
            Measure::P50 => Some(0.5),
            Measure::P90 => Some(0.9),
            Measure::P95 => Some(0.95),
            Measure::P99 => Some(0.99),
            _ => None,
        }
    }

    /// Whether it reads a number from a property.
    pub fn numeric(self) -> bool {
        !matches!(self, Measure::Count | Measure::CountDistinct)
    }

    /// Whether an empty bucket is 0 (rather than null).
    pub fn zero_when_empty(self) -> bool {
        matches!(self, Measure::Count | Measure::CountDistinct | Measure::Sum)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterOp {
    Eq,
    Neq,
    In,
    NotIn,
    Gt,
    Gte,
    Lt,
    Lte,
    Contains,
    Exists,
}

/// What a metric reads, filters on or groups by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    Type,
    UserId,
    SessionId,
    /// `properties.<key>[.<key>…]`: the path of keys.
    Property(Vec<String>),
}

impl Field {
    pub fn parse(raw: &str, at: &str) -> AppResult<Field> {
        match raw {
            "type" => Ok(Field::Type),
            "userId" => Ok(Field::UserId),
            "sessionId" => Ok(Field::SessionId),
            _ => {
                let Some(path) = raw.strip_prefix("properties.") else {
                    return Err(AppError::bad_input(
                        at,
                        format!(
                            "unknown field `{raw}`: use type, userId, sessionId or properties.<key>"
                        ),
                    ));
                };
                let keys: Vec<String> = path.split('.').map(str::to_owned).collect();
                let valid = |k: &String| {
                    !k.is_empty()
                        && k.len() <= 100
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                };
                if keys.len() > 8 || !keys.iter().all(valid) {
                    return Err(AppError::bad_input(
                        at,
                        format!(
                            "`{raw}` is not a property path: up to 8 keys of [A-Za-z0-9_-] joined by dots"
                        ),
                    ));
                }
                Ok(Field::Property(keys))
            }
        }
    }

    /// The name clients use, e.g. `properties.plan`.
    pub fn name(&self) -> String {
        match self {
            Field::Type => "type".into(),
            Field::UserId => "userId".into(),
            Field::SessionId => "sessionId".into(),
            Field::Property(keys) => format!("properties.{}", keys.join(".")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Filter {
    pub field: Field,
    pub op: FilterOp,
    pub value: Value,
}

/// The query as the API takes it, before validation.
#[derive(Clone, Debug, Default)]
pub struct MetricQuery {
    pub measure: Option<Measure>,
    pub field: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub filters: Vec<(String, FilterOp, Option<Value>)>,
    pub group_by: Vec<String>,
    pub granularity: Option<Granularity>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub last: Option<String>,
    pub timezone: Option<String>,
    pub limit: Option<i32>,
}

/// A validated query, ready to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub measure: Measure,
    pub field: Option<Field>,
    pub event_types: Vec<String>,
    pub filters: Vec<Filter>,
    pub group_by: Vec<Field>,
    pub granularity: Option<Granularity>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub tz: Tz,
    pub limit: usize,
    pub buckets: Vec<Bucket>,
}

/// `30d`, `12h`, `15m`, `2w`, `45s` (the API's one duration syntax, see
/// [`crate::duration`]), no longer than the default widest range.
pub fn parse_relative(raw: &str) -> Option<Duration> {
    crate::duration::parse_chrono(raw)
        .ok()
        .filter(|d| *d <= DEFAULT_MAX_SPAN)
}

pub fn plan(q: MetricQuery, now: DateTime<Utc>, max_span: Duration) -> AppResult<Plan> {
    let measure = q
        .measure
        .ok_or_else(|| AppError::bad_input("query.measure", "is required"))?;
    let field = q
        .field
        .as_deref()
        .map(|f| Field::parse(f, "query.field"))
        .transpose()?;
    match (&field, measure) {
        (None, Measure::Count) => {}
        (None, _) => {
            return Err(AppError::bad_input(
                "query.field",
                format!("{measure:?} needs a field"),
            ));
        }
        (Some(Field::Type), m) if m != Measure::CountDistinct && m != Measure::Count => {
            return Err(AppError::bad_input("query.field", "`type` is not numeric"));
        }
        (Some(Field::UserId | Field::SessionId), m) if m.numeric() => {
            return Err(AppError::bad_input(
                "query.field",
                format!(
                    "{m:?} needs a numeric field, properties.<key>; userId and sessionId are not numeric"
                ),
            ));
        }
        _ => {}
    }

    let event_types = q.event_types.unwrap_or_default();
    if event_types.len() > MAX_EVENT_TYPES {
        return Err(AppError::bad_input(
            "query.eventTypes",
            format!("at most {MAX_EVENT_TYPES} types"),
        ));
    }
    for (i, t) in event_types.iter().enumerate() {
        if t.is_empty() || t.len() > 100 {
            return Err(AppError::bad_input(
                format!("query.eventTypes[{i}]"),
                "1 to 100 characters",
            ));
        }
    }

    check_filter_sizes("query.filters", &q.filters)?;
    let filters = q
        .filters
        .into_iter()
        .enumerate()
        .map(|(i, (field, op, value))| filter("query.filters", i, &field, op, value))
        .collect::<AppResult<Vec<_>>>()?;

    if q.group_by.len() > MAX_GROUP_BY {
        return Err(AppError::bad_input("query.groupBy", "at most 3 dimensions"));
    }
    let group_by = q
        .group_by
        .iter()
        .enumerate()
        .map(|(i, g)| Field::parse(g, &format!("query.groupBy[{i}]")))
        .collect::<AppResult<Vec<_>>>()?;
    for (i, g) in group_by.iter().enumerate() {
        if group_by[..i].contains(g) {
            return Err(AppError::bad_input(
                format!("query.groupBy[{i}]"),
                "repeats a dimension",
            ));
        }
    }

    let tz = timezone(q.timezone.as_deref(), "query.timezone")?;
    let (from, to) = range_within(
        q.from,
        q.to,
        q.last.as_deref(),
        now,
        max_span,
        "query.range",
    )?;

    let limit = match q.limit {
        None => DEFAULT_LIMIT,
        Some(n) if n >= 1 && n as usize <= MAX_LIMIT => n as usize,
        Some(_) => {
            return Err(AppError::bad_input(
                "query.limit",
                format!("between 1 and {MAX_LIMIT}"),
            ));
        }
    };
    let series = if group_by.is_empty() { 1 } else { limit + 1 };
    let too_many = || {
        AppError::bad_input(
            "query.granularity",
            format!(
                "more than {MAX_CELLS} buckets × series; use a coarser granularity, a shorter range or a lower limit"
            ),
        )
    };
    let buckets =
        time::buckets(q.granularity, tz, from, to, MAX_CELLS / series).ok_or_else(too_many)?;

    Ok(Plan {
        measure,
        field,
        event_types,
        filters,
        group_by,
        granularity: q.granularity,
        from,
        to,
        tz,
        limit,
        buckets,
    })
}

/// Bounds how many filters, and how many list values in all, `filters`
/// holds (errors name `prefix`), before any of them is looked at.
pub fn check_filter_sizes(
    prefix: &str,
    filters: &[(String, FilterOp, Option<Value>)],
) -> AppResult<()> {
    if filters.len() > MAX_FILTERS {
        return Err(AppError::bad_input(
            prefix,
            format!("at most {MAX_FILTERS} filters"),
        ));
    }
    let values: usize = filters
        .iter()
        .filter_map(|(_, _, v)| v.as_ref()?.as_array().map(Vec::len))
        .sum();
    if values > MAX_FILTER_VALUES {
        return Err(AppError::bad_input(
            prefix,
            format!("at most {MAX_FILTER_VALUES} list values across all filters"),
        ));
    }
    Ok(())
}

pub(super) fn filter(
    prefix: &str,
    i: usize,
    field: &str,
    op: FilterOp,
    value: Option<Value>,
) -> AppResult<Filter> {
    let field = Field::parse(field, &format!("{prefix}[{i}].field"))?;
    let at = format!("{prefix}[{i}].value");
    let value = value.unwrap_or(Value::Null);
    let scalar = |v: &Value| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_));
    let column = !matches!(field, Field::Property(_));
    match op {
        FilterOp::Eq | FilterOp::Neq => {
            if !scalar(&value) || (column && !value.is_string()) {
                return Err(AppError::bad_input(
                    at,
                    format!(
                        "{op:?} compares with a {}",
                        if column {
                            "string"
                        } else {
                            "string, number or boolean"
                        }
                    ),
                ));
            }
        }
        FilterOp::In | FilterOp::NotIn => {
            let ok = value.as_array().is_some_and(|items| {
                !items.is_empty()
                    && items.len() <= 1_000
                    && items
                        .iter()
                        .all(|v| scalar(v) && (!column || v.is_string()))
            });
            if !ok {
                return Err(AppError::bad_input(
                    at,
                    format!("{op:?} takes a list of 1 to 1000 scalars"),
                ));
            }
        }
        FilterOp::Gt | FilterOp::Gte | FilterOp::Lt | FilterOp::Lte => {
            if !(value.is_number() || value.is_string()) || (column && !value.is_string()) {
                return Err(AppError::bad_input(
                    at,
                    format!("{op:?} compares with a number or a string"),
                ));
            }
        }
        FilterOp::Contains => {
            if value.as_str().is_none_or(str::is_empty) {
                return Err(AppError::bad_input(at, "CONTAINS takes a non-empty string"));
            }
        }
        FilterOp::Exists => {
            if !(value.is_null() || value.is_boolean()) {
                return Err(AppError::bad_input(
                    at,
                    "EXISTS takes true, false or nothing (true)",
                ));
            }
        }
    }
    Ok(Filter { field, op, value })
}

/// An IANA zone name; `None` is UTC.
pub fn timezone(name: Option<&str>, at: &str) -> AppResult<Tz> {
    match name {
        None => Ok(Tz::UTC),
        Some(name) => name
            .parse()
            .map_err(|_| AppError::bad_input(at, format!("`{name}` is not an IANA timezone"))),
    }
}

/// [`range_within`] the default widest span.
pub fn range(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    last: Option<&str>,
    now: DateTime<Utc>,
    at: &str,
) -> AppResult<(DateTime<Utc>, DateTime<Utc>)> {
    range_within(from, to, last, now, DEFAULT_MAX_SPAN, at)
}

/// `{from, to}` (half-open, `from` before `to`) or `{last}` ending `now`,
/// at most `max_span` wide and between [`EARLIEST`] and [`LATEST`]; errors
/// name `at.from`, `at.to`, `at.last` or `at`.
pub fn range_within(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    last: Option<&str>,
    now: DateTime<Utc>,
    max_span: Duration,
    at: &str,
) -> AppResult<(DateTime<Utc>, DateTime<Utc>)> {
    let days = max_span.num_days();
    let (from, to) = match (from, to, last) {
        (None, None, Some(last)) => {
            let span = crate::duration::parse_chrono(last)
                .ok()
                .filter(|d| *d <= max_span)
                .ok_or_else(|| {
                    AppError::bad_input(
                        format!("{at}.last"),
                        format!(
                            "`{last}` is not a relative range such as 15m, 24h, 30d or 8w of at most {days} days"
                        ),
                    )
                })?;
            let from = now.checked_sub_signed(span).ok_or_else(|| {
                AppError::bad_input(format!("{at}.last"), "reaches before the year 1970")
            })?;
            (from, now)
        }
        (Some(from), Some(to), None) if from >= to => {
            return Err(AppError::bad_input(
                format!("{at}.from"),
                "must be before `to`",
            ));
        }
        (Some(from), Some(to), None) => {
            if to.signed_duration_since(from) > max_span {
                return Err(AppError::bad_input(
                    at,
                    format!("spans more than {days} days; narrow the range"),
                ));
            }
            (from, to)
        }
        (_, _, Some(_)) => {
            return Err(AppError::bad_input(
                at,
                "give either {from, to} or {last}, not both",
            ));
        }
        (None, _, None) => return Err(AppError::bad_input(format!("{at}.from"), "is required")),
        (_, None, None) => return Err(AppError::bad_input(format!("{at}.to"), "is required")),
    };
    if from < EARLIEST {
        return Err(AppError::bad_input(
            format!("{at}.from"),
            "must not be before 1970-01-01T00:00:00Z",
        ));
    }
    if to > LATEST {
        return Err(AppError::bad_input(
            format!("{at}.to"),
            "must not be after 2200-01-01T00:00:00Z",
        ));
    }
    Ok((from, to))
}
