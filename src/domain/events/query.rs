//! Reading events: filters, newest first, keyset cursors on
//! (timestamp, id), so a page boundary stays put while new events arrive.
//!
//! Runs in a tenant-scoped transaction (RLS on PostgreSQL) and filters by
//! the caller's tenant as well.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{
    Alias, Cond, Expr, ExprTrait, Order, Query, SelectStatement, Value as SqlValue,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, QueryResult, Statement};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::auth::TenantCtx;
use crate::db::scoped;
use crate::domain::page::Page;
use crate::error::{AppError, AppResult};

/// Narrows `events`; every part is optional and parts combine with AND.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub types: Option<Vec<String>>,
    /// Inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    /// Top-level property equality: each key must hold exactly its value.
    pub properties: Option<Map<String, Value>>,
}

/// A stored event as clients see it.
#[derive(Clone, Debug)]
pub struct EventRecord {
    pub id: Uuid,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub properties: Value,
    pub received_at: DateTime<Utc>,
    pub source: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl EventRecord {
    pub fn cursor(&self) -> String {
        let mut bytes = self.occurred_at.timestamp_micros().to_be_bytes().to_vec();
        bytes.extend_from_slice(self.id.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

fn decode_cursor(cursor: &str) -> AppResult<(i64, Uuid)> {
    let bad = || AppError::bad_input("after", "not a valid cursor");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    if bytes.len() != 24 {
        return Err(bad());
    }
    let micros = i64::from_be_bytes(bytes[..8].try_into().map_err(|_| bad())?);
    let id = Uuid::from_slice(&bytes[8..]).map_err(|_| bad())?;
    Ok((micros, id))
}

/// A timestamp as each backend stores it.
pub(crate) fn time_value(backend: DbBackend, t: DateTime<Utc>) -> SqlValue {
    match backend {
        DbBackend::Postgres => t.into(),
        _ => t.timestamp_micros().into(),
    }
}

/// A timestamp column as each backend stores it: the inverse of
/// [`time_value`].
pub(crate) fn time_at<I: sea_orm::ColIdx>(
    backend: DbBackend,
    row: &QueryResult,
    index: I,
) -> Result<DateTime<Utc>, sea_orm::DbErr> {
    match backend {
        DbBackend::Postgres => row.try_get_by::<DateTime<Utc>, I>(index),
        _ => Ok(micros_to_time(row.try_get_by::<i64, I>(index)?)),
    }
}

fn micros_to_time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

const COLUMNS: [&str; 10] = [
    "ip",
    "user_agent",
    "id",
    "type",
    "occurred_at",
    "user_id",
    "session_id",
    "properties",
    "received_at",
    "source",
];

/// The caller's events matching `filter`, newest first.
pub async fn list(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    filter: &EventFilter,
    first: u64,
    after: Option<&str>,
) -> AppResult<Page<EventRecord>> {
    let backend = db.get_database_backend();
    let stmt = list_statement(backend, ctx.tenant_id, filter, first, after)?;
    let rows = scoped(db, ctx, move |txn| {
        Box::pin(async move { Ok(txn.query_all_raw(stmt).await?) })
    })
    .await?;
    let records = rows
        .iter()
        .map(|row| decode(backend, row))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_overfetch(records, first))
}

/// The statement [`list`] runs, built without a database (the golden
/// tests snapshot it): one page plus one row, to tell whether more follow.
pub fn list_statement(
    backend: DbBackend,
    tenant: Uuid,
    filter: &EventFilter,
    first: u64,
    after: Option<&str>,
) -> AppResult<Statement> {
    let after = after.map(decode_cursor).transpose()?;
    let mut q = Query::select();
    q.columns(COLUMNS.map(Alias::new))
        .from(Alias::new("events"))
        .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant));
    apply_filter(&mut q, backend, filter)?;
    if let Some((micros, id)) = after {
        let at = time_value(backend, micros_to_time(micros));
        q.cond_where(
            Cond::any()
                .add(Expr::col(Alias::new("occurred_at")).lt(at.clone()))
                .add(
                    Cond::all()
                        .add(Expr::col(Alias::new("occurred_at")).eq(at))
                        .add(Expr::col(Alias::new("id")).lt(id)),
                ),
        );
    }
    q.order_by(Alias::new("occurred_at"), Order::Desc)
        .order_by(Alias::new("id"), Order::Desc)
        .limit(first + 1);
    Ok(backend.build(&q))
}

fn apply_filter(q: &mut SelectStatement, backend: DbBackend, f: &EventFilter) -> AppResult<()> {
    if let Some(types) = &f.types {
        if types.is_empty() {
            return Err(AppError::bad_input(
                "filter.types",
                "give at least one type, or omit it",
            ));
        }
        q.and_where(Expr::col(Alias::new("type")).is_in(types.iter().cloned()));
    }
    // The same sane years as every other range (see `metrics::plan`):
    // PostgreSQL cannot even hold the extremes chrono can.
    use crate::domain::metrics::plan::{EARLIEST, LATEST};
    for (field, at) in [("filter.from", f.from), ("filter.to", f.to)] {
        if at.is_some_and(|t| !(EARLIEST..=LATEST).contains(&t)) {
            return Err(AppError::bad_input(
                field,
                "must be between 1970-01-01T00:00:00Z and 2200-01-01T00:00:00Z",
            ));
        }
    }
    if let (Some(from), Some(to)) = (f.from, f.to)
        && from > to
    {
        return Err(AppError::bad_input("filter.from", "must not be after `to`"));
    }
    if let Some(from) = f.from {
        q.and_where(Expr::col(Alias::new("occurred_at")).gte(time_value(backend, from)));
    }
    if let Some(to) = f.to {
        q.and_where(Expr::col(Alias::new("occurred_at")).lt(time_value(backend, to)));
    }
    if let Some(user) = &f.user_id {
        q.and_where(Expr::col(Alias::new("user_id")).eq(user.as_str()));
    }
    if let Some(session) = &f.session_id {
        q.and_where(Expr::col(Alias::new("session_id")).eq(session.as_str()));
    }
    for (key, value) in f.properties.iter().flatten() {
        q.and_where(property_equals(backend, key, value)?);
    }
    Ok(())
}

/// `properties[key] == value` for a scalar value, the same on both
/// backends (JSON types must match: the string "1" is not the number 1).
fn property_equals(backend: DbBackend, key: &str, value: &Value) -> AppResult<Expr> {
    let not_scalar = || {
        AppError::bad_input(
            format!("filter.properties.{key}"),
            "property filters compare strings, numbers, booleans or null",
        )
    };
    if matches!(value, Value::Object(_) | Value::Array(_)) {
        return Err(not_scalar());
    }
    // SQLite's JSON paths have no escape for `"` (a quoted key ends at the
    // next one), so such a key silently matched nothing there while
    // PostgreSQL's containment matched it. Both backends refuse it instead,
    // with backslashes and control characters, which the two read
    // differently too.
    if key.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err(AppError::bad_input(
            "filter.properties",
            "property keys must not contain quotes, backslashes or control characters",
        ));
    }
    if backend == DbBackend::Postgres {
        let mut probe = Map::new();
        probe.insert(key.to_owned(), value.clone());
        return Ok(Expr::cust_with_values(
            "properties @> CAST($1 AS jsonb)",
            [Value::Object(probe).to_string()],
        ));
    }
    let path = format!("$.\"{key}\"");
    Ok(match value {
        Value::Null => Expr::cust_with_values("json_type(properties, ?) = 'null'", [path]),
        Value::Bool(b) => Expr::cust_with_values(
            "json_type(properties, ?) = ?",
            [path, if *b { "true" } else { "false" }.to_owned()],
        ),
        Value::Number(n) => Expr::cust_with_values(
            "(json_type(properties, ?) IN ('integer', 'real') AND json_extract(properties, ?) = ?)",
            [
                SqlValue::from(path.clone()),
                SqlValue::from(path),
                SqlValue::from(n.as_f64().unwrap_or(f64::NAN)),
            ],
        ),
        Value::String(s) => Expr::cust_with_values(
            "(json_type(properties, ?) = 'text' AND json_extract(properties, ?) = ?)",
            [path.clone(), path, s.clone()],
        ),
        Value::Object(_) | Value::Array(_) => return Err(not_scalar()),
    })
}

fn decode(backend: DbBackend, row: &QueryResult) -> AppResult<EventRecord> {
    let properties = match backend {
        DbBackend::Postgres => row.try_get::<Value>("", "properties")?,
        _ => serde_json::from_str(&row.try_get::<String>("", "properties")?)
            .map_err(AppError::internal)?,
    };
    let occurred_at = time_at(backend, row, "occurred_at")?;
    let received_at = time_at(backend, row, "received_at")?;
    Ok(EventRecord {
        id: row.try_get("", "id")?,
        event_type: row.try_get("", "type")?,
        occurred_at,
        user_id: row.try_get("", "user_id")?,
        session_id: row.try_get("", "session_id")?,
        properties,
        received_at,
        source: row.try_get("", "source")?,
        ip: row.try_get("", "ip")?,
        user_agent: row.try_get("", "user_agent")?,
    })
}
