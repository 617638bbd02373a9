//! Decomposable metric queries answered bucket by bucket through the hot
//! cache (see [`crate::cache`] for why an entry is never stale).
//!
//! Each bucket's span within the range is filed under its stamp and served
//! from the cache until an event lands in its days. A whole bucket's key
//! is its start; a bucket cut by an end of the range (the start of `last:
//! 30d`, the open bucket ending now) is keyed by its exact span, which
//! repeats for a second at a time because relative ranges end at a whole
//! second ([`super::now`]). The buckets the cache did not hold are
//! computed in one read session, one statement per run of consecutive
//! buckets, once per instance however many requests want them at once
//! ([`crate::cache::flight`]), after the query budget is checked for just
//! that work.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::cells::{self, Cell, Partial};
use super::plan::Plan;
use super::raw::{self, GroupKey};
use super::time;
use super::{Snapshot, within};
use crate::auth::TenantCtx;
use crate::cache::{HotCache, Mark, MarkSet, entry_key};
use crate::error::{AppError, AppResult};
use sea_orm::DatabaseConnection;
use std::sync::Arc;

/// What the cache holds for one bucket.
#[derive(Serialize, Deserialize)]
struct Entry {
    /// When it was computed (Unix milliseconds).
    at: i64,
    skipped: u64,
    cells: Vec<(GroupKey, Partial)>,
}

/// How a cached answer was put together.
#[derive(Clone, Debug, Default)]
pub struct CacheUse {
    /// Every bucket came from the cache.
    pub complete: bool,
    /// Starts of the buckets computed from the database this time.
    pub recomputed: Vec<DateTime<Utc>>,
    /// When the oldest bucket served from the cache was computed.
    pub oldest: Option<DateTime<Utc>>,
}

struct Slot {
    local: NaiveDateTime,
    start: DateTime<Utc>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// The whole bucket lies in the range: its value may be cached.
    whole: bool,
    /// The counters of the days its span covers: positions in the
    /// question's [`MarkSet`].
    marks: Vec<usize>,
}

/// What a question over a range reads, worked out once per instance (a
/// dashboard asks it again and again): its buckets' spans and counters.
pub struct Prepared {
    slots: Vec<Slot>,
    marks: MarkSet,
}

/// [`Prepared`] questions by tenant, digest and range (the tenant too,
/// though nothing in them is a tenant's: every key carries it).
pub type PreparedSet = moka::sync::Cache<(uuid::Uuid, String, i64, i64), Arc<Prepared>>;

pub fn prepared_set() -> PreparedSet {
    moka::sync::Cache::builder()
        .max_capacity(10_000)
        .time_to_idle(std::time::Duration::from_secs(300))
        .build()
}

/// Whether `plan` can be answered through the cache.
pub fn eligible(plan: &Plan) -> bool {
    cells::decomposes(plan.measure) && plan.granularity.is_some() && !plan.buckets.is_empty()
}

fn prepare(plan: &Plan) -> Option<Prepared> {
    let g = plan.granularity?;
    let types: Vec<Option<String>> = if plan.event_types.is_empty() {
        vec![None]
    } else {
        plan.event_types.iter().cloned().map(Some).collect()
    };
    let mut spans = Vec::with_capacity(plan.buckets.len());
    let mut all: BTreeSet<Mark> = BTreeSet::new();
    for b in &plan.buckets {
        let end = time::bucket_end(g, plan.tz, b.local)?;
        let from = b.start.max(plan.from);
        let to = end.min(plan.to);
        let last = to - chrono::Duration::nanoseconds(1);
        let mut marks = vec![Mark::epoch()];
        let mut day = from.date_naive();
        while day <= last.date_naive() {
            marks.extend(types.iter().map(|t| Mark {
                day,
                event_type: t.clone(),
            }));
            day = day.succ_opt()?;
        }
        all.extend(marks.iter().cloned());
        spans.push((b, from, to, from == b.start && to == end, marks));
    }
    let marks: Vec<Mark> = all.into_iter().collect();
    let position: HashMap<&Mark, usize> = marks.iter().enumerate().map(|(i, m)| (m, i)).collect();
    let slots = spans
        .into_iter()
        .map(|(b, from, to, whole, own)| Slot {
            local: b.local,
            start: b.start,
            from,
            to,
            whole,
            marks: own
                .iter()
                .filter_map(|m| position.get(m).copied())
                .collect(),
        })
        .collect();
    Some(Prepared {
        slots,
        marks: MarkSet::new(marks),
    })
}

/// What identifies the question apart from its range: the same for every
/// request that asks it, on every instance.
fn digest(plan: &Plan) -> String {
    let text = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}",
        plan.measure,
        plan.field,
        plan.event_types,
        plan.filters,
        plan.group_by,
        plan.granularity,
        plan.tz.name(),
    );
    let hash = Sha256::digest(text.as_bytes());
    hash.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// How long entries live in Redis: whole buckets are asked for again and
/// again; cut ones only while their span repeats.
const WHOLE_TTL_SECS: u64 = 24 * 3600;
const CUT_TTL_SECS: u64 = 3600;

/// Everything a whole answer from the cache depends on: the question, its
/// range and the counters of every day it covers. Equal keys mean the
/// same entries, hence the same answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AnswerKey {
    tenant: uuid::Uuid,
    digest: String,
    from: i64,
    to: i64,
    nonce: String,
    counters: Vec<u64>,
}

/// Whole answers combined from cached entries, per instance: a dashboard
/// refreshed while nothing changes skips rebuilding the keys, decoding
/// the entries and combining the cells (a fifth of a cached query's CPU).
pub type Answers = moka::sync::Cache<AnswerKey, Arc<(raw::Aggregates, Option<DateTime<Utc>>)>>;

pub fn answers() -> Answers {
    moka::sync::Cache::builder()
        .max_capacity(10_000)
        .time_to_idle(std::time::Duration::from_secs(300))
        .build()
}

/// The work one flight did: the cells of the buckets it computed, with
/// their skipped values and the rows aggregated. `None`: too many cells
/// for this path.
pub type Flight = Result<Option<Arc<Computed>>, Arc<AppError>>;

pub struct Computed {
    cells: Vec<Cell>,
    skipped: u64,
}

impl Slot {
    /// The part of the key after the digest: the span, then the stamp.
    fn key(&self, stamp: &str) -> String {
        if self.whole {
            format!("{}.{stamp}", self.from.timestamp())
        } else {
            format!(
                "{}-{}.{stamp}",
                self.from.timestamp_micros(),
                self.to.timestamp_micros()
            )
        }
    }
}

/// Answers `plan` through `cache`, or `None` when it cannot (the counters
/// are unreachable, or a run has too many cells): the caller then takes
/// the uncached path.
pub async fn aggregate(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    plan: &Plan,
    timeout: std::time::Duration,
    cache: &HotCache,
    services: &super::Services,
) -> AppResult<Option<(raw::Aggregates, CacheUse)>> {
    let tenant = ctx.tenant_id;
    let digest = digest(plan);
    let span = (
        tenant,
        digest.clone(),
        plan.from.timestamp_micros(),
        plan.to.timestamp_micros(),
    );
    let prepared = match services.prepared.get(&span) {
        Some(prepared) => prepared,
        None => {
            let Some(prepared) = prepare(plan) else {
                return Ok(None);
            };
            let prepared = Arc::new(prepared);
            services.prepared.insert(span, prepared.clone());
            prepared
        }
    };
    let slots = &prepared.slots;
    // Read before the database is: see `crate::cache`.
    let Some(gens) = cache.generations(tenant, &prepared.marks).await else {
        return Ok(None);
    };
    let answer_key = AnswerKey {
        tenant,
        digest: digest.clone(),
        from: plan.from.timestamp_micros(),
        to: plan.to.timestamp_micros(),
        nonce: gens.nonce.clone(),
        counters: gens.values.clone(),
    };
    if let Some(answer) = services.answers.get(&answer_key) {
        cache.count_hits(slots.len());
        let used = CacheUse {
            complete: true,
            recomputed: Vec::new(),
            oldest: answer.1,
        };
        return Ok(Some((answer.0.clone(), used)));
    }
    let keys: Vec<String> = slots
        .iter()
        .map(|s| entry_key(tenant, &digest, &s.key(&gens.stamp(&s.marks))))
        .collect();
    let found = cache.get_many(&keys).await;
    let mut hits: HashMap<usize, Entry> = HashMap::new();
    for (i, text) in found.into_iter().enumerate() {
        if let Some(entry) = text.and_then(|t| serde_json::from_str::<Entry>(&t).ok()) {
            hits.insert(i, entry);
        }
    }

    // Runs of consecutive buckets to compute.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for i in (0..slots.len()).filter(|i| !hits.contains_key(i)) {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == i => *end = i,
            _ => runs.push((i, i)),
        }
    }
    let mut all: Vec<Cell> = Vec::new();
    let mut skipped = 0u64;
    if !runs.is_empty() {
        // The missing keys name the work exactly (tenant, question, spans,
        // stamps): requests that want the same computation share it.
        let flight_key = runs
            .iter()
            .flat_map(|&(first, last)| &keys[first..=last])
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(",");
        let work = compute(
            db.clone(),
            ctx.clone(),
            plan.clone(),
            timeout,
            cache.clone(),
            services.budgets.clone(),
            slots
                .iter()
                .map(|s| (s.local, s.from, s.to, s.whole))
                .collect(),
            keys.clone(),
            runs.clone(),
        );
        match services.flights.run(flight_key, work).await {
            Ok(Some(computed)) => {
                skipped += computed.skipped;
                all.extend(computed.cells.iter().cloned());
            }
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.duplicate()),
        }
    }

    let oldest = hits
        .values()
        .map(|e| e.at)
        .min()
        .and_then(DateTime::from_timestamp_millis);
    for (i, entry) in hits.iter() {
        skipped += entry.skipped;
        let local = Some(slots[*i].local);
        all.extend(entry.cells.iter().map(|(k, p)| (k.clone(), local, *p)));
    }
    let recomputed = runs
        .iter()
        .flat_map(|&(first, last)| (first..=last).map(|i| slots[i].start))
        .collect();
    let used = CacheUse {
        complete: runs.is_empty(),
        recomputed,
        oldest,
    };
    // Where the answer comes from is a property of the question, as on
    // the uncached path: cached buckets were computed the same way, and the
    // runs left (often just the cut ends) may be too short for rollups.
    let from_rollups = raw::rollup_window(plan).is_some() || super::numeric::window(plan).is_some();
    let aggregates = cells::combine(plan, all, skipped, from_rollups);
    if used.complete {
        services
            .answers
            .insert(answer_key, Arc::new((aggregates.clone(), used.oldest)));
    }
    Ok(Some((aggregates, used)))
}

/// Computes the buckets of `runs` (their budget first), files them under
/// `keys`, and returns their cells. Owns its inputs: it may outlive the
/// request that started it (see [`crate::cache::flight`]).
#[expect(
    clippy::too_many_arguments,
    reason = "one flight's whole input, moved in"
)]
async fn compute(
    db: DatabaseConnection,
    ctx: TenantCtx,
    plan: Plan,
    timeout: std::time::Duration,
    cache: HotCache,
    budgets: super::budget::Budgets,
    spans: Vec<(NaiveDateTime, DateTime<Utc>, DateTime<Utc>, bool)>,
    keys: Vec<String>,
    runs: Vec<(usize, usize)>,
) -> Flight {
    let parts: Vec<Plan> = runs
        .iter()
        .map(|&(first, last)| {
            let mut part = plan.clone();
            part.from = spans[first].1;
            part.to = spans[last].2;
            part.buckets = plan.buckets[first..=last].to_vec();
            part
        })
        .collect();
    let mut session = Snapshot::begin(&db, &ctx, timeout)
        .await
        .map_err(AppError::from)?;
    budgets
        .check(&mut session, &ctx, &plan, &parts, timeout)
        .await?;
    let mut computed: Vec<Cell> = Vec::new();
    let (mut skipped, mut rows) = (0u64, 0u64);
    for part in &parts {
        let rollup = raw::rollup_window(part);
        let fetched = within(
            timeout,
            cells::fetch(&mut session, part, ctx.tenant_id, rollup),
        )
        .await?;
        let Some(fetched) = fetched else {
            session.finish().await.map_err(AppError::from)?;
            return Ok(None);
        };
        skipped += fetched.skipped;
        rows += fetched.rows;
        computed.extend(fetched.cells);
    }
    session.finish().await.map_err(AppError::from)?;
    budgets.record_actual(rows);

    // File every bucket just computed (empty ones too).
    let now = Utc::now().timestamp_millis();
    let index: HashMap<NaiveDateTime, usize> =
        spans.iter().enumerate().map(|(i, s)| (s.0, i)).collect();
    let mut fresh: HashMap<usize, Entry> = runs
        .iter()
        .flat_map(|&(first, last)| first..=last)
        .map(|i| {
            let entry = Entry {
                at: now,
                skipped: 0,
                cells: Vec::new(),
            };
            (i, entry)
        })
        .collect();
    for (key, bucket, partial) in &computed {
        if let Some(entry) = bucket
            .and_then(|b| index.get(&b))
            .and_then(|i| fresh.get_mut(i))
        {
            entry.cells.push((key.clone(), *partial));
        }
    }
    let entries: Vec<(String, String, u64)> = fresh
        .iter()
        .filter_map(|(i, entry)| {
            let ttl = if spans[*i].3 {
                WHOLE_TTL_SECS
            } else {
                CUT_TTL_SECS
            };
            serde_json::to_string(entry)
                .ok()
                .map(|text| (keys[*i].clone(), text, ttl))
        })
        .collect();
    cache.put_many(entries).await;
    Ok(Some(Arc::new(Computed {
        cells: computed,
        skipped,
    })))
}
