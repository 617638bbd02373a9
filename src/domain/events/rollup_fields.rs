//! Numeric rollups of declared properties (tables in the
//! `property_rollups` migration): a tenant's ADMIN declares numeric
//! properties (`amount`) and low-cardinality dimensions (`plan`); each
//! numeric property then has one *series* per dimension and one without,
//! holding per event type and UTC hour the count, sum, min and max of the
//! property's numeric values and how many values were not numbers.
//!
//! Who writes what:
//! - The ingestion writer adds every stored event to every series of its
//!   tenant, in the transaction that stores it (`store.rs` on PostgreSQL,
//!   [`add_sqlite`]), ready or not.
//! - A background job ([`backfill_step`]) fills a new series from the
//!   events stored before it, one chunk of hours per transaction: under
//!   the tenant's exclusive backfill lock it deletes the chunk's rows and
//!   recomputes them from the events. Writers hold the shared side of that
//!   lock (PostgreSQL: an advisory lock taken at `BEGIN`, [`begin_writing`];
//!   SQLite: its one write lock), so no write is in flight while a chunk
//!   is recomputed: an event committed before it is in the recomputation,
//!   one committed after it saw the series and adds itself. The hours to
//!   fill are fixed under that lock too, when the first chunk runs, so an
//!   event written before the series existed always lies inside them.
//! - Queries use a series once its backfill is done (`ready_at`); before,
//!   they read raw events (`metrics::numeric`).
//!
//! The expressions are those of the raw path (`metrics::raw`), so a rollup
//! is exactly what the raw path computes from the same events.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, Row as _};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value as SqlValue};
use serde_json::json;
use uuid::Uuid;

use super::actors::hour_of;
use super::query::{time_at, time_value};
use crate::auth::{RequestMeta, Role as UserRole, TenantCtx};
use crate::db::{scoped, scoped_write};
use crate::domain::audit::{self, Actor, Change};
use crate::domain::metrics::plan::Field;
use crate::error::{AppError, AppResult};

/// What a declared property is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Summed, averaged, min'd and max'd.
    Numeric = 0,
    /// Grouped by.
    Dimension = 1,
}

impl Role {
    fn code(self) -> i16 {
        self as i16
    }

    fn from_code(code: i64) -> Role {
        if code == 1 {
            Role::Dimension
        } else {
            Role::Numeric
        }
    }
}

/// Most numeric properties, and most dimensions, per tenant: every stored
/// event is added to (numeric × (dimensions + 1)) series.
pub const MAX_PER_ROLE: usize = 10;

/// A declaration.
#[derive(Clone, Debug)]
pub struct Declared {
    /// The property path, e.g. `amount` or `cart.total`.
    pub name: String,
    pub role: Role,
    pub declared_at: DateTime<Utc>,
    pub declared_by: String,
    /// A dimension's most distinct values per hour answered from rollups.
    pub max_values: Option<i32>,
}

/// A series and how far its backfill is.
#[derive(Clone, Debug)]
pub struct Series {
    pub property: String,
    /// `None`: the series without a dimension.
    pub dimension: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Hours filled from earlier events, of how many (both 0 before the
    /// backfill has looked).
    pub hours_done: i64,
    pub hours_total: i64,
    /// When queries started using it.
    pub ready_at: Option<DateTime<Utc>>,
}

impl Series {
    /// Share of the backfill done, 0 to 1.
    pub fn progress(&self) -> f64 {
        if self.ready_at.is_some() {
            1.0
        } else if self.hours_total <= 0 {
            0.0
        } else {
            (self.hours_done as f64 / self.hours_total as f64).clamp(0.0, 0.999)
        }
    }
}

/// A tenant's declarations and series.
#[derive(Clone, Debug, Default)]
pub struct Rollups {
    pub fields: Vec<Declared>,
    pub series: Vec<Series>,
}

/// `amount`, `properties.amount` → the path `amount`, checked as the
/// query planner checks property fields.
pub fn parse_name(raw: &str) -> AppResult<String> {
    let bare = raw.strip_prefix("properties.").unwrap_or(raw);
    match Field::parse(&format!("properties.{bare}"), "field")? {
        Field::Property(keys) => Ok(keys.join(".")),
        _ => Err(AppError::bad_input("field", "a property path")),
    }
}

fn require_admin(ctx: &TenantCtx) -> AppResult<()> {
    if ctx.role.at_least(UserRole::Admin) {
        Ok(())
    } else {
        Err(AppError::Forbidden("requires role ADMIN or higher".into()))
    }
}

fn stmt(backend: DbBackend, sql: &str, values: Vec<SqlValue>) -> Statement {
    let sql = if backend == DbBackend::Postgres {
        sql.to_owned()
    } else {
        // `$n` → `?n`: the same numbered parameters.
        sql.replace('$', "?")
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// The tenant's declarations and series.
pub async fn list(db: &DatabaseConnection, ctx: &TenantCtx) -> AppResult<Rollups> {
    let tenant = ctx.tenant_id;
    scoped(db, ctx, move |txn| {
        Box::pin(async move { read(txn, tenant).await })
    })
    .await
}

async fn read(conn: &impl ConnectionTrait, tenant: Uuid) -> AppResult<Rollups> {
    let backend = conn.get_database_backend();
    let mut out = Rollups::default();
    let rows = conn
        .query_all_raw(stmt(
            backend,
            "SELECT name, role, declared_at, declared_by, max_values FROM rollup_fields \
             WHERE tenant_id = $1 ORDER BY role, name",
            vec![tenant.into()],
        ))
        .await?;
    for row in rows {
        let role: i64 = if backend == DbBackend::Postgres {
            i64::from(row.try_get_by_index::<i16>(1)?)
        } else {
            row.try_get_by_index::<i64>(1)?
        };
        out.fields.push(Declared {
            name: row.try_get_by_index(0)?,
            role: Role::from_code(role),
            declared_at: time_at(backend, &row, 2)?,
            declared_by: row.try_get_by_index(3)?,
            max_values: if backend == DbBackend::Postgres {
                row.try_get_by_index::<Option<i32>>(4)?
            } else {
                row.try_get_by_index::<Option<i64>>(4)?
                    .and_then(|v| i32::try_from(v).ok())
            },
        });
    }
    let rows = conn
        .query_all_raw(stmt(
            backend,
            "SELECT property, dimension, created_at, backfill_from, backfill_to, backfilled_until, \
             ready_at FROM rollup_series WHERE tenant_id = $1 ORDER BY property, dimension",
            vec![tenant.into()],
        ))
        .await?;
    let optional =
        |row: &sea_orm::QueryResult, i: usize| -> Result<Option<DateTime<Utc>>, sea_orm::DbErr> {
            if backend == DbBackend::Postgres {
                row.try_get_by_index::<Option<DateTime<Utc>>>(i)
            } else {
                Ok(row
                    .try_get_by_index::<Option<i64>>(i)?
                    .and_then(DateTime::from_timestamp_micros))
            }
        };
    for row in rows {
        let dimension: String = row.try_get_by_index(1)?;
        let (from, to, until) = (optional(&row, 3)?, optional(&row, 4)?, optional(&row, 5)?);
        let hours = |a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>| match (a, b) {
            (Some(a), Some(b)) => (b - a).num_hours().max(0),
            _ => 0,
        };
        out.series.push(Series {
            property: row.try_get_by_index(0)?,
            dimension: (!dimension.is_empty()).then_some(dimension),
            created_at: time_at(backend, &row, 2)?,
            hours_done: hours(from, until),
            hours_total: hours(from, to),
            ready_at: optional(&row, 6)?,
        });
    }
    Ok(out)
}

/// Declares `name` for `role`, and creates the series it implies (their
/// backfill starts in the background). A dimension answers from rollups
/// up to `max_values` distinct values per hour (default and ceiling:
/// `ceiling`). Declaring what is declared changes nothing.
pub async fn declare(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    name: &str,
    role: Role,
    max_values: Option<i32>,
    ceiling: u32,
) -> AppResult<Rollups> {
    require_admin(ctx)?;
    let name = parse_name(name)?;
    let ceiling = i32::try_from(ceiling).unwrap_or(i32::MAX);
    let max_values = match (role, max_values) {
        (Role::Numeric, None) => None,
        (Role::Numeric, Some(_)) => {
            return Err(AppError::bad_input(
                "maxValuesPerHour",
                "applies to dimensions only",
            ));
        }
        (Role::Dimension, None) => Some(ceiling),
        (Role::Dimension, Some(v)) if (1..=ceiling).contains(&v) => Some(v),
        (Role::Dimension, Some(_)) => {
            return Err(AppError::bad_input(
                "maxValuesPerHour",
                format!("1 to {ceiling}"),
            ));
        }
    };
    let (caller, meta) = (ctx.clone(), meta.clone());
    scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let backend = txn.get_database_backend();
            let tenant = caller.tenant_id;
            let before = read(txn, tenant).await?;
            if before.fields.iter().any(|f| f.name == name && f.role == role) {
                return Ok(before);
            }
            if before.fields.iter().filter(|f| f.role == role).count() >= MAX_PER_ROLE {
                return Err(AppError::LimitExceeded(format!(
                    "a tenant may declare at most {MAX_PER_ROLE} {} properties; drop one first",
                    if role == Role::Numeric { "numeric" } else { "dimension" }
                )));
            }
            let now = Utc::now();
            txn.execute_raw(stmt(
                backend,
                "INSERT INTO rollup_fields (tenant_id, role, name, declared_at, declared_by, max_values) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                vec![
                    tenant.into(),
                    role.code().into(),
                    name.clone().into(),
                    time_value(backend, now),
                    caller.actor.clone().into(),
                    max_values.into(),
                ],
            ))
            .await?;
            let declared = |r: Role| {
                before
                    .fields
                    .iter()
                    .filter(move |f| f.role == r)
                    .map(|f| f.name.clone())
            };
            let new_series: Vec<(String, String)> = match role {
                Role::Numeric => std::iter::once(String::new())
                    .chain(declared(Role::Dimension))
                    .map(|d| (name.clone(), d))
                    .collect(),
                Role::Dimension => declared(Role::Numeric).map(|p| (p, name.clone())).collect(),
            };
            for (property, dimension) in new_series {
                txn.execute_raw(stmt(
                    backend,
                    "INSERT INTO rollup_series (tenant_id, property, dimension, created_at) \
                     VALUES ($1, $2, $3, $4)",
                    vec![
                        tenant.into(),
                        property.into(),
                        dimension.into(),
                        time_value(backend, now),
                    ],
                ))
                .await?;
            }
            audit::record(
                txn,
                tenant,
                &Actor::of(&caller),
                &meta,
                Change {
                    action: "rollup_field.declare",
                    resource_type: "rollup_field",
                    resource_id: Some(name.clone()),
                    before: None,
                    after: Some(json!({
                        "name": name, "role": role_name(role), "maxValuesPerHour": max_values,
                    })),
                },
            )
            .await?;
            read(txn, tenant).await
        })
    })
    .await
}

/// Drops a declaration, with its series and their rollups; false when it
/// was not declared.
pub async fn drop_field(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    name: &str,
    role: Role,
) -> AppResult<bool> {
    require_admin(ctx)?;
    let name = parse_name(name)?;
    let (caller, meta) = (ctx.clone(), meta.clone());
    scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let backend = txn.get_database_backend();
            let tenant = caller.tenant_id;
            let gone = txn
                .execute_raw(stmt(
                    backend,
                    "DELETE FROM rollup_fields WHERE tenant_id = $1 AND role = $2 AND name = $3",
                    vec![tenant.into(), role.code().into(), name.clone().into()],
                ))
                .await?
                .rows_affected();
            if gone == 0 {
                return Ok(false);
            }
            let column = match role {
                Role::Numeric => "property",
                Role::Dimension => "dimension",
            };
            for table in ["rollup_series", "property_rollups"] {
                txn.execute_raw(stmt(
                    backend,
                    &format!("DELETE FROM {table} WHERE tenant_id = $1 AND {column} = $2"),
                    vec![tenant.into(), name.clone().into()],
                ))
                .await?;
            }
            audit::record(
                txn,
                tenant,
                &Actor::of(&caller),
                &meta,
                Change {
                    action: "rollup_field.drop",
                    resource_type: "rollup_field",
                    resource_id: Some(name.clone()),
                    before: Some(json!({ "name": name, "role": role_name(role) })),
                    after: None,
                },
            )
            .await?;
            Ok(true)
        })
    })
    .await
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Numeric => "NUMERIC",
        Role::Dimension => "DIMENSION",
    }
}

/// Advisory-lock namespace of the backfill locks (PostgreSQL).
const LOCK_NAMESPACE: i32 = 0x5055_4c52;

/// A tenant's backfill lock key: 32 bits of its id (a collision only makes
/// two tenants wait for each other's backfill chunks).
fn lock_key(tenant: Uuid) -> i32 {
    let b = tenant.as_bytes();
    i32::from_le_bytes([b[12], b[13], b[14], b[15]])
}

/// The `BEGIN` of a writer's transaction on PostgreSQL: it takes the
/// shared side of its tenants' backfill locks, in key order, before any
/// statement reads which series to keep. Only integers are spliced.
pub fn begin_writing(tenants: &BTreeSet<Uuid>) -> String {
    let keys: BTreeSet<i32> = tenants.iter().map(|t| lock_key(*t)).collect();
    let locks: Vec<String> = keys
        .iter()
        .map(|k| format!("pg_advisory_xact_lock_shared({LOCK_NAMESPACE}, {k})"))
        .collect();
    format!("BEGIN; SELECT {}", locks.join(", "))
}

/// The SQLite series with their JSON paths (`$."a"."b"`; keys are
/// `[A-Za-z0-9_-]`, checked when declared).
const SQLITE_SERIES: &str = "SELECT tenant_id, property, dimension, \
     '$.\"' || replace(property, '.', '\".\"') || '\"' AS ppath, \
     '$.\"' || replace(dimension, '.', '\".\"') || '\"' AS dpath FROM rollup_series";

/// The per-event values of a series, on SQLite (`e`: events, `r`:
/// [`SQLITE_SERIES`]); the raw path's expressions.
const SQLITE_VALUED: &str = "e.tenant_id, r.property, r.dimension, \
     (e.occurred_at - ((e.occurred_at % 3600000000) + 3600000000) % 3600000000) AS hour_start, e.type, \
     CASE WHEN r.dimension = '' THEN '' ELSE COALESCE(NULLIF(e.properties -> r.dpath, 'null'), '') END AS value, \
     CASE WHEN json_type(e.properties, r.ppath) IN ('integer', 'real') \
          THEN CAST(json_extract(e.properties, r.ppath) AS REAL) END AS v, \
     CASE WHEN COALESCE(json_type(e.properties, r.ppath), 'null') NOT IN ('null', 'integer', 'real') \
          THEN 1 ELSE 0 END AS skip";

const SQLITE_UPSERT: &str = " ON CONFLICT (tenant_id, property, dimension, hour_start, event_type, value) \
     DO UPDATE SET n = n + excluded.n, s = COALESCE(s + excluded.s, s, excluded.s), \
     lo = CASE WHEN lo IS NULL OR excluded.lo < lo THEN excluded.lo ELSE lo END, \
     hi = CASE WHEN hi IS NULL OR excluded.hi > hi THEN excluded.hi ELSE hi END, \
     skipped = skipped + excluded.skipped";

/// Adds the events just stored (by rowid) to their tenants' series, in
/// the writer's transaction on SQLite (which holds the write lock).
pub async fn add_sqlite(
    conn: &mut sqlx::SqliteConnection,
    tenants: &BTreeSet<Uuid>,
    rowids: &[i64],
) -> anyhow::Result<()> {
    let with_series: Vec<Uuid> = sqlx::query_scalar("SELECT DISTINCT tenant_id FROM rollup_series")
        .fetch_all(&mut *conn)
        .await?;
    if !with_series.iter().any(|t| tenants.contains(t)) {
        return Ok(());
    }
    for chunk in rowids.chunks(1_000) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
            "INSERT INTO property_rollups (tenant_id, property, dimension, hour_start, event_type, \
             value, n, s, lo, hi, skipped) \
             SELECT tenant_id, property, dimension, hour_start, type, value, count(v), sum(v), \
             min(v), max(v), sum(skip) FROM (SELECT {SQLITE_VALUED} FROM events e \
             JOIN ({SQLITE_SERIES}) r ON r.tenant_id = e.tenant_id WHERE e.rowid IN ("
        ));
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        q.push(")) x WHERE true GROUP BY 1, 2, 3, 4, 5, 6");
        q.push(SQLITE_UPSERT);
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// One series waiting for its backfill.
struct Pending {
    tenant: Uuid,
    property: String,
    dimension: String,
}

/// The oldest waiting series of a tenant in `scope` (all when `None`).
fn first_pending<R: sqlx::Row>(
    rows: Vec<R>,
    scope: Option<&[Uuid]>,
) -> anyhow::Result<Option<Pending>>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> Uuid: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    for row in rows {
        let tenant: Uuid = row.try_get(0)?;
        if scope.is_none_or(|s| s.contains(&tenant)) {
            return Ok(Some(Pending {
                tenant,
                property: row.try_get(1)?,
                dimension: row.try_get(2)?,
            }));
        }
    }
    Ok(None)
}

/// Fills one chunk of `chunk_hours` hours of the oldest series still
/// waiting for its backfill, among the tenants in `scope` (all when
/// `None`); false when none waits. A named system path (it spans
/// tenants).
pub async fn backfill_step(
    db: &DatabaseConnection,
    chunk_hours: u32,
    scope: Option<&[Uuid]>,
) -> anyhow::Result<bool> {
    let chunk = chrono::Duration::hours(i64::from(chunk_hours.max(1)));
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            let rows = sqlx::query(
                "SELECT tenant_id, property, dimension FROM rollup_series \
                 WHERE ready_at IS NULL ORDER BY created_at",
            )
            .fetch_all(pool)
            .await?;
            let Some(p) = first_pending(rows, scope)? else {
                return Ok(false);
            };
            let mut txn = pool
                .begin_with(sqlx::AssertSqlSafe(format!(
                    "BEGIN; SELECT pg_advisory_xact_lock({LOCK_NAMESPACE}, {})",
                    lock_key(p.tenant)
                )))
                .await?;
            backfill_postgres(&mut txn, &p, chunk).await?;
            txn.commit().await?;
            Ok(true)
        }
        _ => {
            let pool = db.get_sqlite_connection_pool();
            let rows = sqlx::query(
                "SELECT tenant_id, property, dimension FROM rollup_series \
                 WHERE ready_at IS NULL ORDER BY created_at",
            )
            .fetch_all(pool)
            .await?;
            let Some(p) = first_pending(rows, scope)? else {
                return Ok(false);
            };
            // IMMEDIATE: the write lock, which every writer holds too.
            let mut txn = pool.begin_with("BEGIN IMMEDIATE").await?;
            backfill_sqlite(&mut txn, &p, chunk).await?;
            txn.commit().await?;
            Ok(true)
        }
    }
}

/// The hours left to fill: `(next, end)`, fixing the range on the first
/// chunk; `None` once there is nothing left.
fn next_chunk(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    chunk: chrono::Duration,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let (from, to) = (from?, to?);
    let next = until.unwrap_or(from);
    (next < to).then(|| (next, (next + chunk).min(to)))
}

async fn backfill_postgres(
    conn: &mut sqlx::PgConnection,
    p: &Pending,
    chunk: chrono::Duration,
) -> anyhow::Result<()> {
    let Some(state) = sqlx::query(
        "SELECT backfill_from, backfill_to, backfilled_until FROM rollup_series \
         WHERE tenant_id = $1 AND property = $2 AND dimension = $3 AND ready_at IS NULL FOR UPDATE",
    )
    .bind(p.tenant)
    .bind(&p.property)
    .bind(&p.dimension)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(());
    };
    type At = Option<DateTime<Utc>>;
    let (mut from, mut to, until): (At, At, At) =
        (state.try_get(0)?, state.try_get(1)?, state.try_get(2)?);
    if from.is_none() {
        // Under the lock, every event stored without this series is
        // committed: its hours are the ones to fill.
        let span = sqlx::query(
            "SELECT min(occurred_at), max(occurred_at) FROM events WHERE tenant_id = $1",
        )
        .bind(p.tenant)
        .fetch_one(&mut *conn)
        .await?;
        let (first, last): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
            (span.try_get(0)?, span.try_get(1)?);
        let now = Utc::now();
        from = Some(first.map(hour_of).unwrap_or(now));
        to = Some(
            last.map(|t| hour_of(t) + chrono::Duration::hours(1))
                .unwrap_or(now),
        );
    }
    let mut done_until = until.or(from);
    if let Some((a, b)) = next_chunk(from, to, until, chunk) {
        sqlx::query(
            "DELETE FROM property_rollups WHERE tenant_id = $1 AND property = $2 AND dimension = $3 \
             AND hour_start >= $4 AND hour_start < $5",
        )
        .bind(p.tenant)
        .bind(&p.property)
        .bind(&p.dimension)
        .bind(a)
        .bind(b)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO property_rollups \
                 (tenant_id, property, dimension, hour_start, event_type, value, n, s, lo, hi, skipped) \
             SELECT $1, $2, $3, date_trunc('hour', occurred_at, 'UTC'), type, value, \
                    count(v), sum(v), min(v), max(v), sum(skip) \
             FROM (SELECT occurred_at, type, \
                      CASE WHEN $3::text = '' THEN '' ELSE \
                        COALESCE(NULLIF((properties #> string_to_array($3::text, '.'))::text, 'null'), '') END AS value, \
                      CASE WHEN jsonb_typeof(properties #> string_to_array($2::text, '.')) = 'number' \
                        THEN (properties #>> string_to_array($2::text, '.'))::double precision END AS v, \
                      CASE WHEN COALESCE(jsonb_typeof(properties #> string_to_array($2::text, '.')), 'null') \
                        NOT IN ('null', 'number') THEN 1 ELSE 0 END AS skip \
                   FROM events WHERE tenant_id = $1 AND occurred_at >= $4 AND occurred_at < $5) x \
             GROUP BY 4, 5, 6",
        )
        .bind(p.tenant)
        .bind(&p.property)
        .bind(&p.dimension)
        .bind(a)
        .bind(b)
        .execute(&mut *conn)
        .await?;
        done_until = Some(b);
    }
    let ready = done_until >= to;
    sqlx::query(
        "UPDATE rollup_series SET backfill_from = $4, backfill_to = $5, backfilled_until = $6, \
         ready_at = CASE WHEN $7 THEN now() END \
         WHERE tenant_id = $1 AND property = $2 AND dimension = $3",
    )
    .bind(p.tenant)
    .bind(&p.property)
    .bind(&p.dimension)
    .bind(from)
    .bind(to)
    .bind(done_until)
    .bind(ready)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn backfill_sqlite(
    conn: &mut sqlx::SqliteConnection,
    p: &Pending,
    chunk: chrono::Duration,
) -> anyhow::Result<()> {
    let micros = |t: Option<i64>| t.and_then(DateTime::from_timestamp_micros);
    let Some(state) = sqlx::query(
        "SELECT backfill_from, backfill_to, backfilled_until FROM rollup_series \
         WHERE tenant_id = ?1 AND property = ?2 AND dimension = ?3 AND ready_at IS NULL",
    )
    .bind(p.tenant)
    .bind(&p.property)
    .bind(&p.dimension)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(());
    };
    let (mut from, mut to, until) = (
        micros(state.try_get(0)?),
        micros(state.try_get(1)?),
        micros(state.try_get(2)?),
    );
    if from.is_none() {
        let span = sqlx::query(
            "SELECT min(occurred_at), max(occurred_at) FROM events WHERE tenant_id = ?1",
        )
        .bind(p.tenant)
        .fetch_one(&mut *conn)
        .await?;
        let now = Utc::now();
        from = Some(micros(span.try_get(0)?).map(hour_of).unwrap_or(now));
        to = Some(
            micros(span.try_get(1)?)
                .map(|t| hour_of(t) + chrono::Duration::hours(1))
                .unwrap_or(now),
        );
    }
    let mut done_until = until.or(from);
    if let Some((a, b)) = next_chunk(from, to, until, chunk) {
        let (a_us, b_us) = (a.timestamp_micros(), b.timestamp_micros());
        sqlx::query(
            "DELETE FROM property_rollups WHERE tenant_id = ?1 AND property = ?2 AND dimension = ?3 \
             AND hour_start >= ?4 AND hour_start < ?5",
        )
        .bind(p.tenant)
        .bind(&p.property)
        .bind(&p.dimension)
        .bind(a_us)
        .bind(b_us)
        .execute(&mut *conn)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO property_rollups (tenant_id, property, dimension, hour_start, event_type, \
             value, n, s, lo, hi, skipped) \
             SELECT tenant_id, property, dimension, hour_start, type, value, count(v), sum(v), \
             min(v), max(v), sum(skip) FROM (SELECT {SQLITE_VALUED} FROM events e \
             JOIN ({SQLITE_SERIES}) r ON r.tenant_id = e.tenant_id \
             WHERE e.tenant_id = ?1 AND r.property = ?2 AND r.dimension = ?3 \
             AND e.occurred_at >= ?4 AND e.occurred_at < ?5) x GROUP BY 1, 2, 3, 4, 5, 6"
        )))
        .bind(p.tenant)
        .bind(&p.property)
        .bind(&p.dimension)
        .bind(a_us)
        .bind(b_us)
        .execute(&mut *conn)
        .await?;
        done_until = Some(b);
    }
    let ready = done_until >= to;
    let us = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_micros());
    sqlx::query(
        "UPDATE rollup_series SET backfill_from = ?4, backfill_to = ?5, backfilled_until = ?6, \
         ready_at = CASE WHEN ?7 THEN ?8 END \
         WHERE tenant_id = ?1 AND property = ?2 AND dimension = ?3",
    )
    .bind(p.tenant)
    .bind(&p.property)
    .bind(&p.dimension)
    .bind(us(from))
    .bind(us(to))
    .bind(us(done_until))
    .bind(ready)
    .bind(Utc::now().timestamp_micros())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_property_paths_with_or_without_the_prefix() {
        assert_eq!(parse_name("amount").expect("valid"), "amount");
        assert_eq!(
            parse_name("properties.cart.total").expect("valid"),
            "cart.total"
        );
        assert!(parse_name("a b").is_err());
        assert!(parse_name("").is_err());
        assert!(parse_name("x'); DROP TABLE events; --").is_err());
    }

    #[test]
    fn writers_lock_their_tenants_in_key_order() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let sql = begin_writing(&[a, b].into_iter().collect());
        let (ka, kb) = (lock_key(a).min(lock_key(b)), lock_key(a).max(lock_key(b)));
        let first = sql.find(&format!(", {ka})")).expect("first key");
        let second = sql.rfind(&format!(", {kb})")).expect("second key");
        assert!(first <= second, "{sql}");
        assert!(sql.starts_with("BEGIN; SELECT pg_advisory_xact_lock_shared("));
    }

    #[test]
    fn chunks_cover_the_range_once() {
        let h = |n: i64| DateTime::from_timestamp(n * 3600, 0).expect("valid");
        let c = chrono::Duration::hours(24);
        assert_eq!(
            next_chunk(Some(h(0)), Some(h(30)), None, c),
            Some((h(0), h(24)))
        );
        assert_eq!(
            next_chunk(Some(h(0)), Some(h(30)), Some(h(24)), c),
            Some((h(24), h(30)))
        );
        assert_eq!(next_chunk(Some(h(0)), Some(h(30)), Some(h(30)), c), None);
        assert_eq!(next_chunk(None, None, None, c), None);
    }
}
