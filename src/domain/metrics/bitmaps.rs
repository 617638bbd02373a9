//! `COUNT_DISTINCT` of `userId` or `sessionId` from the hourly actor
//! bitmaps (`domain::events::actors`): per bucket the union of its hours'
//! bitmaps, its cardinality, and the union of all for the totals. The
//! partial hours at the ends of the range come from raw events, their
//! actors looked up by number and added to the same unions, so the answer
//! is exactly the raw path's.
//!
//! A query without an event-type filter or grouping reads the bitmaps
//! over all types, one per hour; one grouped by type reads each type's.
//!
//! Eligible: no property filters (event types are fine), grouping by
//! `type` at most, HOUR or coarser buckets (or none), a zone whose offset
//! over the range is always a whole number of hours (each UTC hour then
//! lies in one local bucket), at least one whole hour, and only hours the
//! tenant's bitmaps cover (`actor_coverage`). Anything else, or an edge
//! actor without a number, is answered from raw events.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDateTime, Utc};
use roaring::RoaringBitmap;
use sea_orm::{DbBackend, DbErr, QueryResult, Statement};

use super::Snapshot;
use super::plan::{Field, Measure, Plan};
use super::raw::{Aggregates, GroupKey, Window, edges, new_sql, rollup_hours, statement};
use super::time::{self, Granularity};
use crate::domain::events::actors::{ALL_TYPES, Kind, hour_of};
use crate::domain::events::query::{time_at, time_value};

/// The actors' kind and the whole UTC hours of the range, when the
/// bitmaps can answer the plan (see the module doc; coverage is checked
/// when it runs).
pub fn window(plan: &Plan) -> Option<(Kind, Window)> {
    let kind = match (&plan.measure, &plan.field) {
        (Measure::CountDistinct, Some(Field::UserId)) => Kind::User,
        (Measure::CountDistinct, Some(Field::SessionId)) => Kind::Session,
        _ => return None,
    };
    let eligible = plan.filters.is_empty()
        && plan.group_by.iter().all(|f| *f == Field::Type)
        && plan.granularity != Some(Granularity::Minute);
    if !eligible {
        return None;
    }
    Some((kind, rollup_hours(plan)?))
}

fn column(kind: Kind) -> &'static str {
    match kind {
        Kind::User => "user_id",
        Kind::Session => "session_id",
    }
}

/// `(event type, bucket)` → the actors seen there.
type Cells = HashMap<(String, Option<NaiveDateTime>), RoaringBitmap>;
/// One type's buckets and their actors.
type Buckets = Vec<(Option<NaiveDateTime>, RoaringBitmap)>;

/// The statements the bitmaps answer an eligible `plan` with, in order
/// (the golden tests pin them): the coverage check, the whole hours'
/// bitmaps, and the raw events of the partial hours at each end. (The
/// edge actors' numbers are looked up by name after those.)
pub fn statements(backend: DbBackend, plan: &Plan, tenant: uuid::Uuid) -> Vec<Statement> {
    let Some((kind, window)) = window(plan) else {
        return Vec::new();
    };
    let mut out = vec![
        coverage_statement(backend, tenant),
        bitmaps_statement(backend, plan, tenant, kind, window),
    ];
    out.extend(
        edges(plan, window)
            .into_iter()
            .map(|span| edge_statement(backend, plan, tenant, kind, span)),
    );
    out
}

/// The whole hours' bitmaps. Without a type filter or grouping, the rows
/// over all types (one per hour); grouped by type, every type's but those.
fn bitmaps_statement(
    backend: DbBackend,
    plan: &Plan,
    tenant: uuid::Uuid,
    kind: Kind,
    (start, end): Window,
) -> Statement {
    let mut sql = new_sql(backend);
    let text = format!(
        "SELECT event_type, hour_start, bitmap FROM actor_bitmaps WHERE tenant_id = {} AND kind = {} \
         AND hour_start >= {} AND hour_start < {}",
        sql.bind(tenant),
        sql.bind(kind.code()),
        sql.bind(time_value(backend, start)),
        sql.bind(time_value(backend, end)),
    );
    // `ALL_TYPES` as a literal, not a parameter: the partial index over
    // those rows serves only a query whose text says `event_type = ''`.
    debug_assert!(ALL_TYPES.is_empty());
    let rows = if !plan.event_types.is_empty() {
        sql.and_types_in(plan, "event_type")
    } else if plan.group_by.is_empty() {
        " AND event_type = ''".to_owned()
    } else {
        " AND event_type <> ''".to_owned()
    };
    statement(sql, text + &rows)
}

/// The distinct (type, actor) pairs of a partial hour's raw events.
fn edge_statement(
    backend: DbBackend,
    plan: &Plan,
    tenant: uuid::Uuid,
    kind: Kind,
    (from, to): Window,
) -> Statement {
    let col = column(kind);
    let mut sql = new_sql(backend);
    let text = format!(
        "SELECT type, {col} FROM events WHERE tenant_id = {} AND occurred_at >= {} \
         AND occurred_at < {} AND {col} IS NOT NULL{} GROUP BY type, {col}",
        sql.bind(tenant),
        sql.bind(time_value(backend, from)),
        sql.bind(time_value(backend, to)),
        sql.and_types_in(plan, "type"),
    );
    statement(sql, text)
}

/// The plan's answer from the bitmaps, or `None` when they do not cover
/// it (then the caller answers from raw events).
pub async fn aggregate(
    s: &mut Snapshot,
    plan: &Plan,
    tenant: uuid::Uuid,
    kind: Kind,
    window: Window,
) -> Result<Option<Aggregates>, DbErr> {
    let backend = s.backend();
    if !covered(s, tenant, plan.from).await? {
        return Ok(None);
    }
    let bucket_of = |hour: DateTime<Utc>| {
        plan.granularity
            .map(|g| time::truncate(g, time::local(plan.tz, hour)))
    };
    let mut cells = Cells::new();

    // Whole hours: the bitmaps.
    let stmt = bitmaps_statement(backend, plan, tenant, kind, window);
    for row in s.query_all(stmt).await? {
        let event_type: String = row.try_get_by_index(0)?;
        let hour = time_at(backend, &row, 1)?;
        let bytes: Vec<u8> = row.try_get_by_index(2)?;
        let bitmap = RoaringBitmap::deserialize_from(bytes.as_slice())
            .map_err(|e| DbErr::Custom(format!("an unreadable actor bitmap: {e}")))?;
        *cells.entry((event_type, bucket_of(hour))).or_default() |= bitmap;
    }

    // Partial hours at the ends: raw events, their actors by number.
    let mut edge_actors: Vec<(String, Option<NaiveDateTime>, String)> = Vec::new();
    for span in edges(plan, window) {
        let bucket = bucket_of(hour_of(span.0));
        let stmt = edge_statement(backend, plan, tenant, kind, span);
        for row in s.query_all(stmt).await? {
            edge_actors.push((row.try_get_by_index(0)?, bucket, row.try_get_by_index(1)?));
        }
    }
    if !edge_actors.is_empty() {
        let mut names: Vec<&str> = edge_actors.iter().map(|(_, _, a)| a.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let numbers = numbers_of(s, tenant, kind, &names).await?;
        for (event_type, bucket, actor) in edge_actors {
            let Some(number) = numbers.get(&actor) else {
                // Written without a number (before the bitmaps existed):
                // the raw path answers.
                return Ok(None);
            };
            cells
                .entry((event_type, bucket))
                .or_default()
                .insert(*number);
        }
    }
    Ok(Some(assemble(plan, cells)))
}

fn coverage_statement(backend: DbBackend, tenant: uuid::Uuid) -> Statement {
    let mut sql = new_sql(backend);
    let text = format!(
        "SELECT raw_before FROM actor_coverage WHERE tenant_id = {}",
        sql.bind(tenant)
    );
    statement(sql, text)
}

/// Whether the tenant's bitmaps cover every hour from `from`'s on: no
/// `actor_coverage` row, or one whose raw-only hours end by then.
pub(super) async fn covered(
    s: &mut Snapshot,
    tenant: uuid::Uuid,
    from: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let backend = s.backend();
    Ok(
        match s.query_one(coverage_statement(backend, tenant)).await? {
            Some(row) => time_at(backend, &row, 0)? <= hour_of(from),
            None => true,
        },
    )
}

/// Rows per lookup by actor or by number.
pub(super) const LOOKUP_CHUNK: usize = 1_000;

/// The numbers of `actors` (of `kind`) that have one.
pub(super) async fn numbers_of(
    s: &mut Snapshot,
    tenant: uuid::Uuid,
    kind: Kind,
    actors: &[&str],
) -> Result<HashMap<String, u32>, DbErr> {
    let backend = s.backend();
    let mut numbers = HashMap::with_capacity(actors.len());
    for chunk in actors.chunks(LOOKUP_CHUNK) {
        let mut sql = new_sql(backend);
        let list: Vec<String> = chunk.iter().map(|a| sql.bind((*a).to_owned())).collect();
        let text = format!(
            "SELECT actor, number FROM actor_numbers WHERE tenant_id = {} AND kind = {} AND actor IN ({})",
            sql.bind(tenant),
            sql.bind(kind.code()),
            list.join(", ")
        );
        for row in s.query_all(statement(sql, text)).await? {
            numbers.insert(row.try_get_by_index(0)?, number_at(backend, &row, 1)?);
        }
    }
    Ok(numbers)
}

/// The actors `numbers` (of `kind`) stand for; through the unique index
/// on `(tenant_id, kind, number)`.
pub(super) async fn actors_of(
    s: &mut Snapshot,
    tenant: uuid::Uuid,
    kind: Kind,
    numbers: &[u32],
) -> Result<HashMap<u32, String>, DbErr> {
    let backend = s.backend();
    let mut actors = HashMap::with_capacity(numbers.len());
    for chunk in numbers.chunks(LOOKUP_CHUNK) {
        let mut sql = new_sql(backend);
        let list: Vec<String> = chunk.iter().map(|n| sql.bind(i64::from(*n))).collect();
        let text = format!(
            "SELECT actor, number FROM actor_numbers WHERE tenant_id = {} AND kind = {} AND number IN ({})",
            sql.bind(tenant),
            sql.bind(kind.code()),
            list.join(", ")
        );
        for row in s.query_all(statement(sql, text)).await? {
            actors.insert(number_at(backend, &row, 1)?, row.try_get_by_index(0)?);
        }
    }
    Ok(actors)
}

/// An actor number column: `integer` on PostgreSQL, SQLite's 64-bit
/// integer; numbers are handed out from 0 up within `u32`.
fn number_at(backend: DbBackend, row: &QueryResult, i: usize) -> Result<u32, DbErr> {
    let n: i64 = if backend == DbBackend::Postgres {
        i64::from(row.try_get_by_index::<i32>(i)?)
    } else {
        row.try_get_by_index::<i64>(i)?
    };
    u32::try_from(n).map_err(|_| DbErr::Custom(format!("an actor number out of range: {n}")))
}

/// Unions cells into the points and totals the raw path would give.
fn assemble(plan: &Plan, cells: Cells) -> Aggregates {
    let len = |b: &RoaringBitmap| Some(b.len() as f64);
    let mut out = Aggregates {
        from_bitmaps: true,
        ..Default::default()
    };
    let mut all = RoaringBitmap::new();
    if plan.group_by.is_empty() {
        let mut buckets: HashMap<Option<NaiveDateTime>, RoaringBitmap> = HashMap::new();
        for ((_, bucket), bitmap) in cells {
            all |= &bitmap;
            *buckets.entry(bucket).or_default() |= bitmap;
        }
        for (bucket, bitmap) in buckets {
            out.points.insert((Some(Vec::new()), bucket), len(&bitmap));
        }
        out.total = len(&all);
        return out;
    }
    // Grouped by type: rank the types by their totals (ties by name), as
    // the raw ranking does; the rest sum into `__other__`.
    let mut by_type: BTreeMap<String, Vec<(Option<NaiveDateTime>, RoaringBitmap)>> =
        BTreeMap::new();
    for ((event_type, bucket), bitmap) in cells {
        all |= &bitmap;
        by_type
            .entry(event_type)
            .or_default()
            .push((bucket, bitmap));
    }
    out.total = len(&all);
    let mut ranked: Vec<(String, f64, Buckets)> = by_type
        .into_iter()
        .map(|(t, buckets)| {
            let mut union = RoaringBitmap::new();
            for (_, b) in &buckets {
                union |= b;
            }
            (t, union.len() as f64, buckets)
        })
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    // `__other__` sums the other groups' values, as it does for every
    // measure (API.md): per bucket and in total.
    let mut other: HashMap<Option<NaiveDateTime>, f64> = HashMap::new();
    let mut other_total = 0.0;
    for (i, (event_type, total, buckets)) in ranked.into_iter().enumerate() {
        if i < plan.limit {
            let key: GroupKey = vec![Some(event_type)];
            out.groups.push((key.clone(), Some(total)));
            for (bucket, bitmap) in buckets {
                out.points.insert((Some(key.clone()), bucket), len(&bitmap));
            }
        } else {
            out.more_groups = true;
            other_total += total;
            for (bucket, bitmap) in buckets {
                *other.entry(bucket).or_default() += bitmap.len() as f64;
            }
        }
    }
    if out.more_groups {
        for (bucket, value) in other {
            out.points.insert((None, bucket), Some(value));
        }
        out.other_total = Some(other_total);
    }
    out
}
