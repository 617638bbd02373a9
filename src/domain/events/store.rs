//! Writing events: one statement per group on PostgreSQL (then the
//! actors' numbers and bitmaps, [`super::actors`], in the same
//! transaction), a few multi-row statements in one transaction on SQLite,
//! and PostgreSQL's monthly partitions.
//!
//! A named system path: the group-commit writer stores many tenants'
//! events at once, so it runs on the connection's own role (RLS bypassed);
//! every row carries the tenant id the request was authenticated for.
//! It speaks sqlx directly: arrays (`UNNEST`) and multi-row `RETURNING`
//! are what make it fast, and sea-orm's statement API offers neither.

use std::collections::HashSet;
use std::sync::Mutex;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use sea_orm::sqlx::{self, Row as _};
use sea_orm::{DatabaseConnection, DbBackend};
use uuid::Uuid;

use super::NewEvent;
use super::actors::{self, KnownNumbers, Stored};

/// One event of a group, with the tenant it belongs to.
pub struct Row<'a> {
    pub tenant_id: Uuid,
    pub event: &'a NewEvent,
}

/// Rows per SQLite statement: 11 columns each stays under SQLite's limit
/// of 32,766 bound variables.
const SQLITE_CHUNK: usize = 1_000;

const HOUR_MICROS: i64 = 3_600_000_000;

/// Stores the fresh events of a group and adds them to the hourly
/// aggregates and to their tenants' numeric rollups
/// ([`super::rollup_fields`]), in one statement and so one transaction.
/// Aggregate rows are upserted in key order, so concurrent writers lock
/// them in the same order and cannot deadlock. The property expressions
/// are the raw path's (`metrics::raw`), so a rollup holds exactly what the
/// raw path would compute from the same events.
const POSTGRES_INSERT: &str = r#"
WITH input AS (
    SELECT * FROM unnest(
        $1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
        $7::text[], $8::text[], $9::text[], $10::text[], $11::timestamptz[]
    ) AS t(tenant_id, id, type, occurred_at, user_id, session_id, properties, ip, user_agent, source, received_at)
), fresh AS (
    INSERT INTO event_ids (tenant_id, id, occurred_at)
    SELECT tenant_id, id, occurred_at FROM input
    ON CONFLICT DO NOTHING
    RETURNING tenant_id, id
), stored AS (
    INSERT INTO events (tenant_id, id, type, occurred_at, user_id, session_id, properties, ip, user_agent, source, received_at)
    SELECT i.tenant_id, i.id, i.type, i.occurred_at, i.user_id, i.session_id, i.properties::jsonb,
           i.ip, i.user_agent, i.source, i.received_at
    FROM input i JOIN fresh f ON f.tenant_id = i.tenant_id AND f.id = i.id
    RETURNING tenant_id, id, type, occurred_at, properties
), counted AS (
    INSERT INTO analytics_aggregates (tenant_id, event_type, hour_start, event_count)
    SELECT tenant_id, type, date_trunc('hour', occurred_at, 'UTC'), count(*)
    FROM stored GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (tenant_id, event_type, hour_start)
    DO UPDATE SET event_count = analytics_aggregates.event_count + excluded.event_count
), series AS (
    SELECT tenant_id, property, string_to_array(property, '.') AS pp,
           dimension, string_to_array(dimension, '.') AS dp
    FROM rollup_series WHERE tenant_id IN (SELECT DISTINCT tenant_id FROM input)
), valued AS (
    SELECT s.tenant_id, r.property, r.dimension, date_trunc('hour', s.occurred_at, 'UTC') AS hour_start, s.type,
           CASE WHEN r.dimension = '' THEN ''
                ELSE COALESCE(NULLIF((s.properties #> r.dp)::text, 'null'), '') END AS value,
           CASE WHEN jsonb_typeof(s.properties #> r.pp) = 'number'
                THEN (s.properties #>> r.pp)::double precision END AS v,
           CASE WHEN COALESCE(jsonb_typeof(s.properties #> r.pp), 'null') NOT IN ('null', 'number')
                THEN 1 ELSE 0 END AS skip
    FROM stored s JOIN series r ON r.tenant_id = s.tenant_id
), rolled AS (
    INSERT INTO property_rollups AS p
        (tenant_id, property, dimension, hour_start, event_type, value, n, s, lo, hi, skipped)
    SELECT tenant_id, property, dimension, hour_start, type, value, count(v), sum(v), min(v), max(v), sum(skip)
    FROM valued GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (tenant_id, property, dimension, hour_start, event_type, value) DO UPDATE SET
        n = p.n + excluded.n, s = COALESCE(p.s + excluded.s, p.s, excluded.s),
        lo = LEAST(p.lo, excluded.lo), hi = GREATEST(p.hi, excluded.hi),
        skipped = p.skipped + excluded.skipped
)
SELECT tenant_id, id FROM stored
"#;

/// Where events are written, and which PostgreSQL partitions exist.
pub struct Store {
    db: DatabaseConnection,
    partitions: Partitions,
    known: KnownNumbers,
}

impl Store {
    pub fn new(db: DatabaseConnection) -> Self {
        Store {
            db,
            partitions: Partitions::default(),
            known: KnownNumbers::default(),
        }
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn partitions(&self) -> &Partitions {
        &self.partitions
    }

    /// Inserts rows whose (tenant, id) pairs are distinct; returns the pairs
    /// actually stored (the rest were stored before: duplicates).
    pub async fn insert(&self, rows: &[Row<'_>]) -> anyhow::Result<HashSet<(Uuid, Uuid)>> {
        if rows.is_empty() {
            return Ok(HashSet::new());
        }
        match self.db.get_database_backend() {
            DbBackend::Postgres => {
                let months: HashSet<i32> = rows
                    .iter()
                    .map(|r| month_index(r.event.occurred_at))
                    .collect();
                self.partitions.ensure(&self.db, months).await?;
                self.insert_postgres(rows).await
            }
            _ => self.insert_sqlite(rows).await,
        }
    }

    async fn insert_postgres(&self, rows: &[Row<'_>]) -> anyhow::Result<HashSet<(Uuid, Uuid)>> {
        let n = rows.len();
        let mut tenant_ids = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut occurred = Vec::with_capacity(n);
        let mut users = Vec::with_capacity(n);
        let mut sessions = Vec::with_capacity(n);
        let mut properties = Vec::with_capacity(n);
        let mut ips = Vec::with_capacity(n);
        let mut agents = Vec::with_capacity(n);
        let mut sources = Vec::with_capacity(n);
        let mut received = Vec::with_capacity(n);
        // In index order, PostgreSQL's B-tree inserts touch far fewer
        // distinct pages: the primary key and the type index lead with
        // (tenant, type/time).
        let mut order: Vec<&Row<'_>> = rows.iter().collect();
        order.sort_unstable_by_key(|r| (r.tenant_id, r.event.occurred_at));
        for r in order {
            let e = r.event;
            tenant_ids.push(r.tenant_id);
            ids.push(e.id);
            types.push(e.event_type.as_str());
            occurred.push(e.occurred_at);
            users.push(e.user_id.as_deref());
            sessions.push(e.session_id.as_deref());
            properties.push(e.properties.to_string());
            ips.push(e.ip.as_deref());
            agents.push(e.user_agent.as_deref());
            sources.push(e.source.as_str());
            received.push(e.received_at);
        }
        // The events and their hourly counts (one statement), then their
        // actors' numbers and bitmaps: one transaction.
        // The shared side of the tenants' backfill locks, taken before the
        // statement reads which series to keep (see `rollup_fields`).
        let tenants: std::collections::BTreeSet<Uuid> = rows.iter().map(|r| r.tenant_id).collect();
        let mut txn = self
            .db
            .get_postgres_connection_pool()
            .begin_with(sqlx::AssertSqlSafe(super::rollup_fields::begin_writing(
                &tenants,
            )))
            .await?;
        let stored = sqlx::query(POSTGRES_INSERT)
            .bind(tenant_ids)
            .bind(ids)
            .bind(types)
            .bind(occurred)
            .bind(users)
            .bind(sessions)
            .bind(properties)
            .bind(ips)
            .bind(agents)
            .bind(sources)
            .bind(received)
            .fetch_all(&mut *txn)
            .await?;
        let mut pairs = HashSet::with_capacity(stored.len());
        for row in &stored {
            pairs.insert((row.try_get(0)?, row.try_get(1)?));
        }
        let actors_seen = stored_of(rows, &pairs);
        let learned = actors::record_postgres(&mut txn, &actors_seen, &self.known).await?;
        txn.commit().await?;
        self.known.remember(learned);
        Ok(pairs)
    }

    async fn insert_sqlite(&self, rows: &[Row<'_>]) -> anyhow::Result<HashSet<(Uuid, Uuid)>> {
        let mut txn = self.db.get_sqlite_connection_pool().begin().await?;
        let mut stored = HashSet::with_capacity(rows.len());
        let mut hourly: std::collections::BTreeMap<(Uuid, &str, i64), i64> = Default::default();
        let mut rowids = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(SQLITE_CHUNK) {
            let mut query = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO events (tenant_id, id, type, occurred_at, user_id, session_id, \
                 properties, ip, user_agent, source, received_at) ",
            );
            query.push_values(chunk, |mut b, r| {
                let e = r.event;
                b.push_bind(r.tenant_id)
                    .push_bind(e.id)
                    .push_bind(e.event_type.clone())
                    .push_bind(e.occurred_at.timestamp_micros())
                    .push_bind(e.user_id.clone())
                    .push_bind(e.session_id.clone())
                    .push_bind(e.properties.to_string())
                    .push_bind(e.ip.clone())
                    .push_bind(e.user_agent.clone())
                    .push_bind(e.source.as_str())
                    .push_bind(e.received_at.timestamp_micros());
            });
            query.push(" ON CONFLICT DO NOTHING RETURNING tenant_id, id, rowid");
            for row in query.build().fetch_all(&mut *txn).await? {
                stored.insert((row.try_get(0)?, row.try_get(1)?));
                rowids.push(row.try_get::<i64, _>(2)?);
            }
        }
        let actors_seen = stored_of(rows, &stored);
        for s in &actors_seen {
            let hour = s.occurred_at.timestamp_micros().div_euclid(HOUR_MICROS) * HOUR_MICROS;
            *hourly.entry((s.tenant_id, s.event_type, hour)).or_insert(0) += 1;
        }
        // The hourly aggregates, in the same transaction.
        let hourly: Vec<_> = hourly.into_iter().collect();
        for chunk in hourly.chunks(SQLITE_CHUNK) {
            let mut query = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO analytics_aggregates (tenant_id, event_type, hour_start, event_count) ",
            );
            query.push_values(chunk, |mut b, ((tenant, event_type, hour), count)| {
                b.push_bind(*tenant)
                    .push_bind(*event_type)
                    .push_bind(*hour)
                    .push_bind(*count);
            });
            query.push(
                " ON CONFLICT (tenant_id, event_type, hour_start) \
                 DO UPDATE SET event_count = event_count + excluded.event_count",
            );
            query.build().execute(&mut *txn).await?;
        }
        let tenants: std::collections::BTreeSet<Uuid> = rows.iter().map(|r| r.tenant_id).collect();
        super::rollup_fields::add_sqlite(&mut txn, &tenants, &rowids).await?;
        let learned = actors::record_sqlite(&mut txn, &actors_seen, &self.known).await?;
        txn.commit().await?;
        self.known.remember(learned);
        Ok(stored)
    }
}

/// What the actors' bookkeeping needs of the rows the statement stored
/// (`keys`, as it returned them): read from the batch itself, so the
/// statement returns only the keys.
fn stored_of<'a>(rows: &[Row<'a>], keys: &HashSet<(Uuid, Uuid)>) -> Vec<Stored<'a>> {
    rows.iter()
        .filter(|r| keys.contains(&(r.tenant_id, r.event.id)))
        .map(|r| Stored {
            tenant_id: r.tenant_id,
            event_type: &r.event.event_type,
            occurred_at: r.event.occurred_at,
            user_id: r.event.user_id.as_deref(),
            session_id: r.event.session_id.as_deref(),
        })
        .collect()
}

/// Months counted from year 0: `year * 12 + month0`.
pub fn month_index(t: DateTime<Utc>) -> i32 {
    t.year() * 12 + t.month0() as i32
}

pub fn month_start(index: i32) -> DateTime<Utc> {
    let (year, month0) = (index.div_euclid(12), index.rem_euclid(12));
    Utc.with_ymd_and_hms(year, month0 as u32 + 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn partition_name(index: i32) -> String {
    let start = month_start(index);
    format!("events_p{:04}{:02}", start.year(), start.month())
}

/// Parses `events_pYYYYMM` back into a month index.
fn partition_month(name: &str) -> Option<i32> {
    let digits = name.strip_prefix("events_p")?;
    if digits.len() != 6 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let year: i32 = digits[..4].parse().ok()?;
    let month: i32 = digits[4..].parse().ok()?;
    (1..=12).contains(&month).then_some(year * 12 + month - 1)
}

/// The monthly partitions of `events` on PostgreSQL, created on demand
/// and ahead of time; remembered so the hot path asks the database once.
#[derive(Default)]
pub struct Partitions {
    known: Mutex<HashSet<i32>>,
}

/// Advisory-lock key serialising partition DDL across writers and
/// processes.
const PARTITION_LOCK_KEY: i64 = 0x7075_6c73_6502;

impl Partitions {
    fn missing(&self, months: HashSet<i32>) -> Vec<i32> {
        let known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut missing: Vec<i32> = months.into_iter().filter(|m| !known.contains(m)).collect();
        missing.sort_unstable();
        missing
    }

    /// Makes sure a partition exists for each month.
    pub async fn ensure(
        &self,
        db: &DatabaseConnection,
        months: HashSet<i32>,
    ) -> anyhow::Result<()> {
        let missing = self.missing(months);
        if missing.is_empty() || db.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let pool = db.get_postgres_connection_pool();
        let mut txn = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PARTITION_LOCK_KEY)
            .execute(&mut *txn)
            .await?;
        for &month in &missing {
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF events FOR VALUES FROM ('{}') TO ('{}')",
                partition_name(month),
                month_start(month).format("%Y-%m-%d %H:%M:%S+00"),
                month_start(month + 1).format("%Y-%m-%d %H:%M:%S+00"),
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut *txn)
                .await?;
        }
        txn.commit().await?;
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        known.extend(missing);
        Ok(())
    }

    /// Creates partitions from last month to `ahead` months after this one.
    pub async fn ensure_window(&self, db: &DatabaseConnection, ahead: i32) -> anyhow::Result<()> {
        let now = month_index(Utc::now());
        self.ensure(db, (now - 1..=now + ahead).collect()).await
    }

    /// Drops every partition that ends at or before `cutoff`; returns how
    /// many were dropped.
    pub async fn drop_before(
        &self,
        db: &DatabaseConnection,
        cutoff: DateTime<Utc>,
    ) -> anyhow::Result<usize> {
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(0);
        }
        let pool = db.get_postgres_connection_pool();
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'events'::regclass",
        )
        .fetch_all(pool)
        .await?;
        let mut dropped = 0;
        for name in names {
            let Some(month) = partition_month(&name) else {
                continue;
            };
            if month_start(month + 1) <= cutoff {
                let mut txn = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(PARTITION_LOCK_KEY)
                    .execute(&mut *txn)
                    .await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {name}")))
                    .execute(&mut *txn)
                    .await?;
                txn.commit().await?;
                self.known
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&month);
                dropped += 1;
            }
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_round_trip_through_partition_names() {
        let t = Utc
            .with_ymd_and_hms(2026, 12, 31, 23, 59, 59)
            .single()
            .expect("date");
        let m = month_index(t);
        assert_eq!(partition_name(m), "events_p202612");
        assert_eq!(partition_name(m + 1), "events_p202701");
        assert_eq!(partition_month("events_p202612"), Some(m));
        assert_eq!(partition_month("events_p202613"), None);
        assert_eq!(partition_month("events_default"), None);
        assert_eq!(
            month_start(m + 1),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0)
                .single()
                .expect("date")
        );
    }
}
