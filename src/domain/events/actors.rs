//! Dense actor numbers and hourly distinct-actor bitmaps, kept by the
//! ingestion writer in the transaction that stores the events (see the
//! `actor_bitmaps` migration for the tables).
//!
//! For a written batch: the distinct user and session ids of the events
//! actually stored (duplicates excluded) get numbers, existing ones read
//! and new ones handed out from the tenant's counter; then one roaring
//! bitmap per (tenant, kind, event type, UTC hour) is appended as a delta,
//! and one per (tenant, kind, hour) over all types ([`ALL_TYPES`]).
//! On PostgreSQL known actors are read without a lock; only a batch with
//! new actors locks their tenants' counters (in key order, `ON CONFLICT DO
//! UPDATE`) and reads again under the lock, so concurrent writers, in this
//! process or another, never hand out one number twice nor number one
//! actor twice, and in the steady state (actors seen before) writers do
//! not wait for each other. The bitmap rows are plain inserts, so writers
//! never contend on them. [`compact`] merges a key's deltas later (a background job).
//!
//! A number never changes once committed, so each process keeps the
//! numbers it has seen ([`KnownNumbers`]) and reads only the others: in
//! the steady state a batch costs no lookup at all, and an event's numbers
//! are looked up once, when its actors are.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

use chrono::{DateTime, Utc};
use roaring::RoaringBitmap;
use sea_orm::sqlx::{self, Row as _};
use uuid::Uuid;

/// Whose ids a number stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    User = 0,
    Session = 1,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::User, Kind::Session];

    pub fn code(self) -> i16 {
        self as i16
    }
}

/// What the writer knows of a stored event, borrowed from the batch.
#[derive(Clone, Copy, Debug)]
pub struct Stored<'a> {
    pub tenant_id: Uuid,
    pub event_type: &'a str,
    pub occurred_at: DateTime<Utc>,
    pub user_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
}

impl<'a> Stored<'a> {
    fn actor(&self, kind: Kind) -> Option<&'a str> {
        match kind {
            Kind::User => self.user_id,
            Kind::Session => self.session_id,
        }
    }
}

/// `(tenant, kind)` → the batch's distinct actors of that kind.
type Wanted<'a> = BTreeMap<(Uuid, Kind), BTreeSet<&'a str>>;
/// `(tenant, kind)` → actor → number; looked up by `&str`, so the hot
/// path allocates no key per event. A batch's own map borrows its actors
/// (`Numbers<&str>`); what outlives the batch owns them.
struct Numbers<K = String>(HashMap<(Uuid, Kind), HashMap<K, u32>>);

impl<K> Default for Numbers<K> {
    fn default() -> Self {
        Numbers(HashMap::new())
    }
}

impl<K: Borrow<str> + Hash + Eq> Numbers<K> {
    fn get(&self, tenant: Uuid, kind: Kind, actor: &str) -> Option<u32> {
        self.0.get(&(tenant, kind))?.get(actor).copied()
    }

    fn has(&self, tenant: Uuid, kind: Kind, actor: &str) -> bool {
        self.get(tenant, kind, actor).is_some()
    }

    fn insert(&mut self, tenant: Uuid, kind: Kind, actor: K, number: u32) {
        self.0
            .entry((tenant, kind))
            .or_default()
            .insert(actor, number);
    }
}

/// Committed actor numbers this process has seen. Numbers are never
/// renumbered nor deleted, so an entry is never stale; entries learned
/// inside a transaction are added only after it commits ([`Learned`]).
///
/// Two generations of [`Numbers`] bound the memory: once the young one
/// holds [`KnownNumbers::GENERATION`] entries it becomes the old one (the
/// previous old one is dropped), and a hit in the old one is copied back
/// into the young one, so actors seen again stay. A batch takes the lock
/// once and looks its actors up by `&str` (a concurrent map with an owned
/// key per lookup cost a quarter of the server's CPU under `ingest`).
#[derive(Clone, Default)]
pub struct KnownNumbers(std::sync::Arc<std::sync::Mutex<Generations>>);

#[derive(Default)]
struct Generations {
    young: Numbers,
    old: Numbers,
    young_len: usize,
}

impl Generations {
    fn get(&mut self, tenant: Uuid, kind: Kind, actor: &str) -> Option<u32> {
        if let Some(n) = self.young.get(tenant, kind, actor) {
            return Some(n);
        }
        let n = self.old.get(tenant, kind, actor)?;
        self.insert(tenant, kind, actor.to_owned(), n);
        Some(n)
    }

    fn insert(&mut self, tenant: Uuid, kind: Kind, actor: String, number: u32) {
        if self.young.has(tenant, kind, &actor) {
            return;
        }
        if self.young_len >= KnownNumbers::GENERATION {
            self.old = std::mem::take(&mut self.young);
            self.young_len = 0;
        }
        self.young.insert(tenant, kind, actor, number);
        self.young_len += 1;
    }
}

impl KnownNumbers {
    /// Entries per generation: at most twice this are held (about 40 MB).
    /// Actors seen again are copied from the old generation to the young,
    /// so a working set of actors as large as a generation churns (every
    /// rotation drops a whole map and refills the next); the `ingest`
    /// benchmark's 100,000 actors stay well inside one.
    pub const GENERATION: usize = 250_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // A panic while holding it leaves whole entries only.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds what a committed transaction learned.
    pub fn remember(&self, learned: Learned) {
        let mut g = self.lock();
        for ((tenant, kind), numbers) in learned.0.0 {
            for (actor, number) in numbers {
                g.insert(tenant, kind, actor, number);
            }
        }
    }
}

/// Numbers a transaction read or handed out: for [`KnownNumbers::remember`]
/// once it has committed.
#[derive(Default)]
pub struct Learned(Numbers);

/// Each stored event's user and session numbers (indexed by [`Kind`]),
/// `None` where it has no such actor or its number is not known yet.
type Resolved = Vec<[Option<u32>; 2]>;

/// The batch's distinct actors whose numbers `known` does not hold, and
/// each event's numbers as far as `known` holds them: one lookup per event
/// and kind.
fn wanted<'a>(stored: &[Stored<'a>], known: &KnownNumbers) -> (Wanted<'a>, Resolved) {
    let mut out = Wanted::new();
    let mut resolved = Vec::with_capacity(stored.len());
    let mut known = known.lock();
    for s in stored {
        let mut numbers = [None; 2];
        for kind in Kind::ALL {
            let Some(actor) = s.actor(kind) else {
                continue;
            };
            match known.get(s.tenant_id, kind, actor) {
                Some(number) => numbers[kind as usize] = Some(number),
                None => {
                    out.entry((s.tenant_id, kind)).or_default().insert(actor);
                }
            }
        }
        resolved.push(numbers);
    }
    (out, resolved)
}

/// Completes `resolved` with the numbers the database gave the wanted
/// actors (in `numbers`).
fn resolve(
    stored: &[Stored<'_>],
    resolved: &mut Resolved,
    numbers: &Numbers<&str>,
) -> anyhow::Result<()> {
    for (s, r) in stored.iter().zip(resolved.iter_mut()) {
        for kind in Kind::ALL {
            let slot = &mut r[kind as usize];
            if slot.is_some() {
                continue;
            }
            if let Some(actor) = s.actor(kind) {
                *slot = Some(
                    numbers
                        .get(s.tenant_id, kind, actor)
                        .ok_or_else(|| anyhow::anyhow!("an actor without a number"))?,
                );
            }
        }
    }
    Ok(())
}

/// The numbers of `wanted` actors in `numbers`, for [`Learned`].
fn learned(wanted: &Wanted<'_>, numbers: &Numbers<&str>) -> Learned {
    let mut out = Numbers::default();
    for ((tenant, kind), set) in wanted {
        for actor in set {
            if let Some(n) = numbers.get(*tenant, *kind, actor) {
                out.insert(*tenant, *kind, (*actor).to_owned(), n);
            }
        }
    }
    Learned(out)
}

pub const HOUR_MICROS: i64 = 3_600_000_000;

/// The start of `t`'s UTC hour.
pub fn hour_of(t: DateTime<Utc>) -> DateTime<Utc> {
    let micros = t.timestamp_micros().div_euclid(HOUR_MICROS) * HOUR_MICROS;
    DateTime::from_timestamp_micros(micros).unwrap_or(t)
}

/// The `event_type` of the bitmaps that hold an hour's actors of every
/// type, kept beside the per-type ones so that a query without a type
/// reads one row per hour, not one per type. Event types are 1 to 100
/// characters, so no type is empty.
pub const ALL_TYPES: &str = "";

/// One delta per (tenant, kind, event type, hour) and one per (tenant,
/// kind, hour) over all types ([`ALL_TYPES`]), serialized, in key order.
fn deltas<'a>(stored: &[Stored<'a>], resolved: &Resolved) -> anyhow::Result<Vec<Delta<'a>>> {
    // (tenant, type, hour) → the cell's numbers per kind, unsorted.
    let mut cells: HashMap<(Uuid, &'a str, i64), [Vec<u32>; 2]> = HashMap::new();
    for (s, numbers) in stored.iter().zip(resolved) {
        if numbers == &[None, None] {
            continue;
        }
        let hour = s.occurred_at.timestamp_micros().div_euclid(HOUR_MICROS);
        for event_type in [s.event_type, ALL_TYPES] {
            let cell = cells.entry((s.tenant_id, event_type, hour)).or_default();
            for kind in Kind::ALL {
                if let Some(n) = numbers[kind as usize] {
                    cell[kind as usize].push(n);
                }
            }
        }
    }
    let mut out = Vec::with_capacity(cells.len() * 2);
    for ((tenant_id, event_type, hour), per_kind) in cells {
        for (kind, mut list) in Kind::ALL.into_iter().zip(per_kind) {
            if list.is_empty() {
                continue;
            }
            list.sort_unstable();
            list.dedup();
            let bitmap = RoaringBitmap::from_sorted_iter(list)?;
            let mut bytes = Vec::with_capacity(bitmap.serialized_size());
            bitmap.serialize_into(&mut bytes)?;
            out.push(Delta {
                tenant_id,
                kind,
                event_type,
                hour: DateTime::from_timestamp_micros(hour * HOUR_MICROS)
                    .ok_or_else(|| anyhow::anyhow!("an hour out of range"))?,
                bytes,
            });
        }
    }
    out.sort_unstable_by(|a, b| {
        (a.tenant_id, a.kind, a.event_type, a.hour).cmp(&(
            b.tenant_id,
            b.kind,
            b.event_type,
            b.hour,
        ))
    });
    Ok(out)
}

struct Delta<'a> {
    tenant_id: Uuid,
    kind: Kind,
    event_type: &'a str,
    hour: DateTime<Utc>,
    bytes: Vec<u8>,
}

/// Numbers and bitmap deltas for `stored`, on PostgreSQL, inside the
/// writer's transaction.
pub async fn record_postgres(
    conn: &mut sqlx::PgConnection,
    stored: &[Stored<'_>],
    known: &KnownNumbers,
) -> anyhow::Result<Learned> {
    let mut numbers: Numbers<&str> = Numbers::default();
    let (wanted, mut resolved) = wanted(stored, known);
    // Most actors of a batch have been seen before: read the numbers this
    // process does not know without taking any lock.
    if !wanted.is_empty() {
        known_postgres(conn, &wanted, &mut numbers).await?;
    }
    let missing: Wanted<'_> = wanted
        .iter()
        .filter_map(|(&(tenant, kind), set)| {
            let new: BTreeSet<&str> = set
                .iter()
                .filter(|a| !numbers.has(tenant, kind, a))
                .copied()
                .collect();
            (!new.is_empty()).then_some(((tenant, kind), new))
        })
        .collect();
    if !missing.is_empty() {
        number_postgres(conn, &missing, &mut numbers).await?;
    }
    if !wanted.is_empty() {
        resolve(stored, &mut resolved, &numbers)?;
    }
    let deltas = deltas(stored, &resolved)?;
    if deltas.is_empty() {
        return Ok(Learned::default());
    }
    sqlx::query(
        "INSERT INTO actor_bitmaps (tenant_id, kind, event_type, hour_start, bitmap) \
         SELECT * FROM unnest($1::uuid[], $2::int2[], $3::text[], $4::timestamptz[], $5::bytea[])",
    )
    .bind(deltas.iter().map(|d| d.tenant_id).collect::<Vec<_>>())
    .bind(deltas.iter().map(|d| d.kind.code()).collect::<Vec<_>>())
    .bind(deltas.iter().map(|d| d.event_type).collect::<Vec<_>>())
    .bind(deltas.iter().map(|d| d.hour).collect::<Vec<_>>())
    .bind(
        deltas
            .iter()
            .map(|d| d.bytes.as_slice())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(learned(&wanted, &numbers))
}

/// Adds the numbers `wanted` actors already have to `numbers`: one
/// statement per tenant and kind, a primary-key lookup per actor.
async fn known_postgres<'a>(
    conn: &mut sqlx::PgConnection,
    wanted: &Wanted<'a>,
    numbers: &mut Numbers<&'a str>,
) -> anyhow::Result<()> {
    for ((tenant, kind), set) in wanted {
        let actors: Vec<&str> = set.iter().copied().collect();
        // A join on the list, not `actor = ANY(…)`: with that, PostgreSQL
        // may plan a scan of the tenant's numbers filtered against the
        // whole list (seen: `texteq` 17 % of its CPU under `ingest`).
        let rows = sqlx::query(
            "SELECT n.actor, n.number FROM unnest($3::text[]) AS a(actor) \
             JOIN actor_numbers n ON n.tenant_id = $1 AND n.kind = $2 AND n.actor = a.actor",
        )
        .bind(*tenant)
        .bind(kind.code())
        .bind(&actors)
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let actor: &str = row.try_get(0)?;
            // The batch's own copy of the id, which outlives the row.
            if let Some(actor) = set.get(actor) {
                let number = u32::try_from(row.try_get::<i32, _>(1)?)?;
                numbers.insert(*tenant, *kind, actor, number);
            }
        }
    }
    Ok(())
}

/// Numbers the `missing` actors: locks their tenants' counters (in key
/// order), reads again who was numbered meanwhile by a writer that held
/// them, and hands out the next numbers to the rest.
async fn number_postgres<'a>(
    conn: &mut sqlx::PgConnection,
    missing: &Wanted<'a>,
    numbers: &mut Numbers<&'a str>,
) -> anyhow::Result<()> {
    let keys: Vec<(Uuid, Kind)> = missing.keys().copied().collect();
    let rows = sqlx::query(
        "INSERT INTO actor_counters (tenant_id, kind, next) \
         SELECT t, k, 0 FROM unnest($1::uuid[], $2::int2[]) AS u(t, k) ORDER BY 1, 2 \
         ON CONFLICT (tenant_id, kind) DO UPDATE SET next = actor_counters.next \
         RETURNING tenant_id, kind, next",
    )
    .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1.code()).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let mut next: HashMap<(Uuid, i16), i32> = HashMap::new();
    for row in rows {
        next.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
    }
    // Under the counters' locks: whoever numbered these actors meanwhile
    // has committed, and nobody else numbers them until this commits.
    known_postgres(conn, missing, numbers).await?;
    let (mut new_t, mut new_k, mut new_a, mut new_n) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((tenant, kind), set) in missing {
        let counter = next.entry((*tenant, kind.code())).or_insert(0);
        for actor in set {
            if numbers.has(*tenant, *kind, actor) {
                continue;
            }
            let number = *counter;
            *counter = counter
                .checked_add(1)
                .ok_or_else(|| anyhow::anyhow!("actor numbers exhausted for a tenant"))?;
            numbers.insert(*tenant, *kind, *actor, u32::try_from(number)?);
            new_t.push(*tenant);
            new_k.push(kind.code());
            new_a.push(*actor);
            new_n.push(number);
        }
    }
    if new_a.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO actor_numbers (tenant_id, kind, actor, number) \
         SELECT * FROM unnest($1::uuid[], $2::int2[], $3::text[], $4::int4[])",
    )
    .bind(&new_t)
    .bind(&new_k)
    .bind(&new_a)
    .bind(&new_n)
    .execute(&mut *conn)
    .await?;
    let (mut ct, mut ck, mut cn) = (Vec::new(), Vec::new(), Vec::new());
    for ((t, k), n) in &next {
        ct.push(*t);
        ck.push(*k);
        cn.push(*n);
    }
    sqlx::query(
        "UPDATE actor_counters c SET next = u.n \
         FROM unnest($1::uuid[], $2::int2[], $3::int4[]) AS u(t, k, n) \
         WHERE c.tenant_id = u.t AND c.kind = u.k",
    )
    .bind(ct)
    .bind(ck)
    .bind(cn)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Rows per SQLite statement (4 or 5 columns each).
const SQLITE_CHUNK: usize = 1_000;

/// [`record_postgres`] on SQLite, where the writer's transaction holds the
/// database's one write lock.
pub async fn record_sqlite(
    conn: &mut sqlx::SqliteConnection,
    stored: &[Stored<'_>],
    known: &KnownNumbers,
) -> anyhow::Result<Learned> {
    let mut numbers: Numbers<&str> = Numbers::default();
    let (wanted, mut resolved) = wanted(stored, known);
    for ((tenant, kind), set) in &wanted {
        let all: Vec<&str> = set.iter().copied().collect();
        for chunk in all.chunks(SQLITE_CHUNK) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "SELECT actor, number FROM actor_numbers WHERE tenant_id = ",
            );
            q.push_bind(*tenant)
                .push(" AND kind = ")
                .push_bind(kind.code())
                .push(" AND actor IN (");
            let mut list = q.separated(", ");
            for actor in chunk {
                list.push_bind(*actor);
            }
            q.push(")");
            for row in q.build().fetch_all(&mut *conn).await? {
                let actor: &str = row.try_get(0)?;
                if let Some(actor) = set.get(actor) {
                    let number = u32::try_from(row.try_get::<i64, _>(1)?)?;
                    numbers.insert(*tenant, *kind, actor, number);
                }
            }
        }
        let mut counter: i64 = sqlx::query_scalar(
            "SELECT next FROM actor_counters WHERE tenant_id = ?1 AND kind = ?2",
        )
        .bind(*tenant)
        .bind(kind.code())
        .fetch_optional(&mut *conn)
        .await?
        .unwrap_or(0);
        let fresh: Vec<(&str, i64)> = set
            .iter()
            .filter(|a| !numbers.has(*tenant, *kind, a))
            .map(|a| {
                let n = counter;
                counter += 1;
                (*a, n)
            })
            .collect();
        if fresh.is_empty() {
            continue;
        }
        for chunk in fresh.chunks(SQLITE_CHUNK) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO actor_numbers (tenant_id, kind, actor, number) ",
            );
            q.push_values(chunk, |mut b, (actor, n)| {
                b.push_bind(*tenant)
                    .push_bind(kind.code())
                    .push_bind(*actor)
                    .push_bind(*n);
            });
            q.build().execute(&mut *conn).await?;
        }
        for (actor, n) in &fresh {
            numbers.insert(*tenant, *kind, *actor, u32::try_from(*n)?);
        }
        sqlx::query(
            "INSERT INTO actor_counters (tenant_id, kind, next) VALUES (?1, ?2, ?3) \
             ON CONFLICT (tenant_id, kind) DO UPDATE SET next = excluded.next",
        )
        .bind(*tenant)
        .bind(kind.code())
        .bind(counter)
        .execute(&mut *conn)
        .await?;
    }
    if !wanted.is_empty() {
        resolve(stored, &mut resolved, &numbers)?;
    }
    let deltas = deltas(stored, &resolved)?;
    for chunk in deltas.chunks(SQLITE_CHUNK) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO actor_bitmaps (tenant_id, kind, event_type, hour_start, bitmap) ",
        );
        q.push_values(chunk, |mut b, d| {
            b.push_bind(d.tenant_id)
                .push_bind(d.kind.code())
                .push_bind(d.event_type)
                .push_bind(d.hour.timestamp_micros())
                .push_bind(d.bytes.as_slice());
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(learned(&wanted, &numbers))
}

/// Keys merged per [`compact`] call, at most.
const COMPACT_KEYS: i64 = 500;

/// Merges the deltas of up to 500 keys that have more than one into one
/// row each; returns how many keys it merged. Each key is merged in a
/// transaction of its own: readers see either the deltas or their union,
/// and writers appending new deltas meanwhile are not in the way. A named
/// system path (it spans tenants).
pub async fn compact(db: &sea_orm::DatabaseConnection) -> anyhow::Result<usize> {
    use sea_orm::DbBackend;
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            let keys = sqlx::query(
                "SELECT tenant_id, kind, event_type, hour_start FROM actor_bitmaps \
                 GROUP BY tenant_id, kind, event_type, hour_start HAVING count(*) > 1 LIMIT $1",
            )
            .bind(COMPACT_KEYS)
            .fetch_all(pool)
            .await?;
            for key in &keys {
                let (tenant, kind, event_type, hour): (Uuid, i16, String, DateTime<Utc>) = (
                    key.try_get(0)?,
                    key.try_get(1)?,
                    key.try_get(2)?,
                    key.try_get(3)?,
                );
                let mut txn = pool.begin().await?;
                let rows = sqlx::query(
                    "SELECT id, bitmap FROM actor_bitmaps WHERE tenant_id = $1 AND kind = $2 \
                     AND event_type = $3 AND hour_start = $4 FOR UPDATE",
                )
                .bind(tenant)
                .bind(kind)
                .bind(&event_type)
                .bind(hour)
                .fetch_all(&mut *txn)
                .await?;
                let (ids, merged) = merge(
                    rows.iter()
                        .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<Vec<u8>, _>(1)?))),
                )?;
                if ids.len() > 1 {
                    // By the whole key: `id` alone is not indexed (it is
                    // the primary key's last column), and a scan per key
                    // took a core from the writers.
                    sqlx::query(
                        "DELETE FROM actor_bitmaps WHERE tenant_id = $1 AND kind = $2 \
                         AND hour_start = $3 AND event_type = $4 AND id = ANY($5)",
                    )
                    .bind(tenant)
                    .bind(kind)
                    .bind(hour)
                    .bind(&event_type)
                    .bind(&ids)
                    .execute(&mut *txn)
                    .await?;
                    sqlx::query(
                        "INSERT INTO actor_bitmaps (tenant_id, kind, event_type, hour_start, bitmap) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(tenant)
                    .bind(kind)
                    .bind(&event_type)
                    .bind(hour)
                    .bind(merged)
                    .execute(&mut *txn)
                    .await?;
                }
                txn.commit().await?;
            }
            Ok(keys.len())
        }
        _ => {
            let pool = db.get_sqlite_connection_pool();
            let keys = sqlx::query(
                "SELECT tenant_id, kind, event_type, hour_start FROM actor_bitmaps \
                 GROUP BY tenant_id, kind, event_type, hour_start HAVING count(*) > 1 LIMIT ?1",
            )
            .bind(COMPACT_KEYS)
            .fetch_all(pool)
            .await?;
            for key in &keys {
                let (tenant, kind, event_type, hour): (Uuid, i64, String, i64) = (
                    key.try_get(0)?,
                    key.try_get(1)?,
                    key.try_get(2)?,
                    key.try_get(3)?,
                );
                // IMMEDIATE: take the write lock before reading what to merge.
                let mut conn = pool.acquire().await?;
                sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
                let result: anyhow::Result<()> = async {
                    let rows = sqlx::query(
                        "SELECT id, bitmap FROM actor_bitmaps WHERE tenant_id = ?1 AND kind = ?2 \
                         AND event_type = ?3 AND hour_start = ?4",
                    )
                    .bind(tenant)
                    .bind(kind)
                    .bind(&event_type)
                    .bind(hour)
                    .fetch_all(&mut *conn)
                    .await?;
                    let (ids, merged) = merge(rows.iter().map(|r| {
                        Ok((r.try_get::<i64, _>(0)?, r.try_get::<Vec<u8>, _>(1)?))
                    }))?;
                    if ids.len() > 1 {
                        for id in &ids {
                            sqlx::query("DELETE FROM actor_bitmaps WHERE id = ?1")
                                .bind(id)
                                .execute(&mut *conn)
                                .await?;
                        }
                        sqlx::query(
                            "INSERT INTO actor_bitmaps (tenant_id, kind, event_type, hour_start, bitmap) \
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                        )
                        .bind(tenant)
                        .bind(kind)
                        .bind(&event_type)
                        .bind(hour)
                        .bind(merged)
                        .execute(&mut *conn)
                        .await?;
                    }
                    Ok(())
                }
                .await;
                match result {
                    Ok(()) => {
                        sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
                    }
                    Err(e) => {
                        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                        return Err(e);
                    }
                }
            }
            Ok(keys.len())
        }
    }
}

/// The ids of a key's rows and the union of their bitmaps, serialized.
fn merge(
    rows: impl Iterator<Item = anyhow::Result<(i64, Vec<u8>)>>,
) -> anyhow::Result<(Vec<i64>, Vec<u8>)> {
    let mut ids = Vec::new();
    let mut union = RoaringBitmap::new();
    for row in rows {
        let (id, bytes) = row?;
        ids.push(id);
        union |= RoaringBitmap::deserialize_from(bytes.as_slice())?;
    }
    let mut out = Vec::with_capacity(union.serialized_size());
    union.serialize_into(&mut out)?;
    Ok((ids, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("valid")
    }

    #[test]
    fn one_delta_per_tenant_kind_type_and_hour_and_one_over_all_types() {
        let t = Uuid::now_v7();
        let ev = |kind: &'static str, secs: i64, user: &'static str, session| Stored {
            tenant_id: t,
            event_type: kind,
            occurred_at: at(secs),
            user_id: Some(user),
            session_id: session,
        };
        let stored = vec![
            ev("a", 3_600, "u1", Some("s1")),
            ev("a", 3_601, "u2", None),
            ev("a", 7_199, "u1", None),
            ev("a", 7_200, "u1", None),
            ev("b", 3_600, "u3", None),
        ];
        let (u1, u2, u3, s1) = (Some(0), Some(1), Some(2), Some(0));
        let resolved = vec![[u1, s1], [u2, None], [u1, None], [u1, None], [u3, None]];
        let d = deltas(&stored, &resolved).expect("deltas");
        let read = |d: &Delta| {
            RoaringBitmap::deserialize_from(d.bytes.as_slice())
                .expect("bitmap")
                .iter()
                .collect::<Vec<u32>>()
        };
        let summary: Vec<(Kind, &str, i64, Vec<u32>)> = d
            .iter()
            .map(|d| (d.kind, d.event_type, d.hour.timestamp(), read(d)))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Kind::User, ALL_TYPES, 3_600, vec![0, 1, 2]),
                (Kind::User, ALL_TYPES, 7_200, vec![0]),
                (Kind::User, "a", 3_600, vec![0, 1]),
                (Kind::User, "a", 7_200, vec![0]),
                (Kind::User, "b", 3_600, vec![2]),
                (Kind::Session, ALL_TYPES, 3_600, vec![0]),
                (Kind::Session, "a", 3_600, vec![0]),
            ]
        );
    }

    #[test]
    fn hours_floor_before_the_epoch_too() {
        assert_eq!(hour_of(at(-1)).timestamp(), -3_600);
        assert_eq!(hour_of(at(3_599)).timestamp(), 0);
    }
}
