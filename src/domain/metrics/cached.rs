//! Decomposable metric queries answered bucket by bucket through the hot
//! cache (see [`crate::cache`] for why an entry is never stale).
//!
//! A bucket that lies whole inside the range is filed under its stamp and
//! served from the cache until an event lands in its days; the buckets cut
//! by the ends of the range (the moving start of `last: 30d`, the open
//! bucket ending now) are computed each time, over their own short spans,
//! together with the whole buckets the cache did not hold: one statement
//! per run of consecutive buckets, in one read session.

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
use crate::cache::{HotCache, Mark, entry_key};
use crate::error::AppResult;
use sea_orm::DatabaseConnection;

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
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// The whole bucket lies in the range: its value may be cached.
    whole: bool,
    marks: Vec<Mark>,
}

/// Whether `plan` can be answered through the cache.
pub fn eligible(plan: &Plan) -> bool {
    cells::decomposes(plan.measure) && plan.granularity.is_some() && !plan.buckets.is_empty()
}

fn slots(plan: &Plan) -> Option<Vec<Slot>> {
    let g = plan.granularity?;
    let types: Vec<Option<String>> = if plan.event_types.is_empty() {
        vec![None]
    } else {
        plan.event_types.iter().cloned().map(Some).collect()
    };
    plan.buckets
        .iter()
        .map(|b| {
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
            Some(Slot {
                local: b.local,
                from,
                to,
                whole: from == b.start && to == end,
                marks,
            })
        })
        .collect()
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

/// Answers `plan` through `cache`, or `None` when it cannot (the counters
/// are unreachable, or a run has too many cells): the caller then takes
/// the uncached path.
pub async fn aggregate(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    plan: &Plan,
    timeout: std::time::Duration,
    cache: &HotCache,
) -> AppResult<Option<(raw::Aggregates, CacheUse)>> {
    let Some(slots) = slots(plan) else {
        return Ok(None);
    };
    let tenant = ctx.tenant_id;
    let marks: Vec<Mark> = slots
        .iter()
        .flat_map(|s| s.marks.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Read before the database is: see `crate::cache`.
    let Some(gens) = cache.generations(tenant, &marks).await else {
        return Ok(None);
    };
    let digest = digest(plan);
    let keys: Vec<Option<String>> = slots
        .iter()
        .map(|s| {
            s.whole.then(|| {
                let stamp = gens.stamp(&s.marks);
                entry_key(tenant, &digest, &format!("{}.{stamp}", s.from.timestamp()))
            })
        })
        .collect();
    let wanted: Vec<String> = keys.iter().flatten().cloned().collect();
    let mut found = cache.get_many(&wanted).await.into_iter();
    let mut hits: HashMap<usize, Entry> = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        if key.is_some()
            && let Some(text) = found.next().flatten()
            && let Ok(entry) = serde_json::from_str::<Entry>(&text)
        {
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
    let now = Utc::now();
    let mut computed: Vec<Cell> = Vec::new();
    let mut skipped = 0u64;
    // Where the answer comes from is a property of the question, as on
    // the uncached path: cached buckets were computed the same way, and the
    // runs left (often just the cut ends) may be too short for rollups.
    let from_rollups = raw::rollup_window(plan).is_some();
    if !runs.is_empty() {
        let mut session = Snapshot::begin(db, ctx, timeout).await?;
        for &(first, last) in &runs {
            let mut part = plan.clone();
            part.from = slots[first].from;
            part.to = slots[last].to;
            part.buckets = plan.buckets[first..=last].to_vec();
            let rollup = raw::rollup_window(&part);
            let fetched =
                within(timeout, cells::fetch(&mut session, &part, tenant, rollup)).await?;
            let Some((cells, part_skipped)) = fetched else {
                session.finish().await?;
                return Ok(None);
            };
            skipped += part_skipped;
            computed.extend(cells);
        }
        session.finish().await?;
    }

    // File the whole buckets just computed (empty ones too).
    let index: HashMap<NaiveDateTime, usize> = slots
        .iter()
        .enumerate()
        .map(|(i, s)| (s.local, i))
        .collect();
    let mut fresh: HashMap<usize, Entry> = HashMap::new();
    for &(first, last) in &runs {
        for (i, key) in keys.iter().enumerate().take(last + 1).skip(first) {
            if key.is_some() {
                fresh.insert(
                    i,
                    Entry {
                        at: now.timestamp_millis(),
                        skipped: 0,
                        cells: Vec::new(),
                    },
                );
            }
        }
    }
    for (key, bucket, partial) in &computed {
        if let Some(entry) = bucket
            .and_then(|b| index.get(&b))
            .and_then(|i| fresh.get_mut(i))
        {
            entry.cells.push((key.clone(), *partial));
        }
    }
    let entries: Vec<(String, String)> = fresh
        .iter()
        .filter_map(|(i, entry)| {
            let key = keys[*i].clone()?;
            serde_json::to_string(entry).ok().map(|text| (key, text))
        })
        .collect();
    cache.put_many(entries).await;

    let oldest = hits
        .values()
        .map(|e| e.at)
        .min()
        .and_then(DateTime::from_timestamp_millis);
    let mut all = computed;
    for (i, entry) in hits.iter() {
        skipped += entry.skipped;
        let local = Some(slots[*i].local);
        all.extend(entry.cells.iter().map(|(k, p)| (k.clone(), local, *p)));
    }
    let recomputed = runs
        .iter()
        .flat_map(|&(first, last)| (first..=last).map(|i| plan.buckets[i].start))
        .collect();
    let used = CacheUse {
        complete: runs.is_empty(),
        recomputed,
        oldest,
    };
    Ok(Some((
        cells::combine(plan, all, skipped, from_rollups),
        used,
    )))
}
