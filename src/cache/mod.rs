//! The hot-metric cache: metric cells per time bucket, kept until an event
//! lands in the bucket's span, never served once one has.
//!
//! Validity rests on **generations**, not on timely invalidation messages.
//! Per tenant, a counter per UTC day and per (UTC day, event type) counts
//! the commits that put events there; the ingestion writer bumps them after
//! its commit and *before* it acknowledges. A reader reads the counters of
//! a bucket's days first, then computes from the database, and files the
//! result under a key that includes their sum (its *stamp*). Counters only
//! grow, so once any commit touches the bucket the stamp differs and the
//! entry is never looked up again: a query that starts after an
//! acknowledgement can only see a stamp that includes it (read-your-writes,
//! on every instance that shares the counters), and an entry computed
//! before a commit can never be filed under a stamp that includes it.
//!
//! Two implementations behind [`HotCache`]: in-process (counters in a map,
//! entries in moka) for the embedded default, and Redis (counters in a hash
//! per tenant, entries as keys with a TTL) with a small in-process tier in
//! front. Entries are immutable under their key, so the local tier needs no
//! invalidation at all. A per-tenant random `nonce` in the counters' hash
//! goes into every stamp, so a Redis that lost its data (counters back at
//! zero) cannot revive an old stamp in anyone's local tier.
//!
//! Every key carries the tenant: `pulse:{tenant}:…`.

pub mod flight;
pub mod persisted;
pub mod rate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use prometheus_client::metrics::counter::Counter;
use uuid::Uuid;

/// How long a Redis call may take before the cache is skipped for it.
const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// The longest entries live in Redis; the local tier is bounded by size.
const ENTRY_TTL_SECS: u64 = 24 * 3600;
/// The local tier's budget, in bytes of entry text.
const LOCAL_BYTES: u64 = 64 << 20;
/// At most one log line per this interval about Redis failing.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// A Redis call bounded by [`REDIS_TIMEOUT`]: every user of Redis here
/// goes through it, so none can hang a request on a slow server.
pub(crate) async fn bounded<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(REDIS_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(anyhow::anyhow!("timed out")),
    }
}

/// The Redis failures of one user of it (the cache, the limiter, the
/// persisted queries): counted, and logged at most once per [`LOG_EVERY`]
/// with what the server does meanwhile.
#[derive(Clone)]
pub(crate) struct Failures {
    errors: Counter,
    last_log: Arc<Mutex<Option<Instant>>>,
    /// Who failed, for the log line ("hot cache").
    who: &'static str,
    /// What the server does instead ("answering from the database").
    meanwhile: &'static str,
}

impl Failures {
    pub(crate) fn new(errors: Counter, who: &'static str, meanwhile: &'static str) -> Self {
        Failures {
            errors,
            last_log: Arc::default(),
            who,
            meanwhile,
        }
    }

    pub(crate) fn record(&self, what: &str, e: &anyhow::Error) {
        self.errors.inc();
        if let Ok(mut last) = self.last_log.lock()
            && last.is_none_or(|at| at.elapsed() >= LOG_EVERY)
        {
            *last = Some(Instant::now());
            tracing::warn!(error = %e, "{}: Redis failed to {what}; {}", self.who, self.meanwhile);
        }
    }
}

/// One counter: events of `event_type` (or of any type, `None`) on `day`
/// (UTC).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mark {
    pub day: NaiveDate,
    pub event_type: Option<String>,
}

impl Mark {
    /// The tenant-wide counter every stamp includes: bumped when events go
    /// (data expiry), which may touch any day.
    pub fn epoch() -> Self {
        Mark {
            day: NaiveDate::MIN,
            event_type: None,
        }
    }

    /// The counter's field name: the day (fixed width), then the type.
    fn field(&self) -> String {
        if *self == Mark::epoch() {
            return "epoch".into();
        }
        match &self.event_type {
            Some(t) => format!("{}/{t}", self.day.format("%Y-%m-%d")),
            None => self.day.format("%Y-%m-%d").to_string(),
        }
    }
}

/// The counters a question reads, with their field names in the hash,
/// built once per question and range.
#[derive(Clone, Debug)]
pub struct MarkSet {
    pub marks: Vec<Mark>,
    fields: Vec<String>,
}

impl MarkSet {
    pub fn new(marks: Vec<Mark>) -> Self {
        let fields = marks.iter().map(Mark::field).collect();
        MarkSet { marks, fields }
    }
}

/// The counters a reader saw: a nonce (which incarnation of the counters)
/// and each requested counter's value, in the order of its [`MarkSet`].
#[derive(Clone, Debug)]
pub struct Generations {
    pub nonce: String,
    pub values: Vec<u64>,
}

impl Generations {
    /// The stamp of a bucket whose span touches the marks at `positions`.
    pub fn stamp(&self, positions: &[usize]) -> String {
        let sum: u64 = positions
            .iter()
            .map(|&i| self.values.get(i).copied().unwrap_or(0))
            .sum();
        format!("{}.{sum}", self.nonce)
    }
}

/// Counters of what the cache did, exported on `/metrics`.
#[derive(Clone, Default)]
pub struct CacheCounters {
    pub hits: Counter,
    pub misses: Counter,
    pub invalidations: Counter,
    pub bytes_written: Counter,
    pub errors: Counter,
}

#[derive(Clone)]
pub struct HotCache {
    local: moka::sync::Cache<String, Arc<str>>,
    store: Store,
    counters: CacheCounters,
    failures: Failures,
    /// Bumps Redis did not take: they are applied before the cache is
    /// read again, and until they are, it is not read (an entry filed
    /// before them would otherwise look current when Redis comes back
    /// with its data).
    pending: Arc<Mutex<Vec<(Uuid, Mark)>>>,
}

#[derive(Clone)]
enum Store {
    Memory {
        nonce: String,
        generations: Arc<Mutex<HashMap<(Uuid, Mark), u64>>>,
    },
    Redis(redis::aio::ConnectionManager),
}

/// An in-process map of texts by key, bounded by `bytes` of both.
pub(crate) fn local_tier(bytes: u64) -> moka::sync::Cache<String, Arc<str>> {
    moka::sync::Cache::builder()
        .weigher(|k: &String, v: &Arc<str>| u32::try_from(k.len() + v.len()).unwrap_or(u32::MAX))
        .max_capacity(bytes)
        .build()
}

/// Adds one to each counter, in one round trip.
async fn incr(conn: &redis::aio::ConnectionManager, bumps: &[(Uuid, Mark)]) -> anyhow::Result<()> {
    let mut pipe = redis::pipe();
    for (tenant, m) in bumps {
        pipe.hincr(generations_key(*tenant), m.field(), 1).ignore();
    }
    let mut conn = conn.clone();
    bounded(pipe.query_async::<()>(&mut conn)).await
}

fn generations_key(tenant: Uuid) -> String {
    format!("pulse:{tenant}:gens")
}

/// The key an entry is filed under: the tenant, a digest of what was asked
/// and the bucket's stamp.
pub fn entry_key(tenant: Uuid, digest: &str, stamp: &str) -> String {
    format!("pulse:{tenant}:cells:{digest}:{stamp}")
}

impl HotCache {
    pub fn memory(counters: CacheCounters) -> Self {
        HotCache {
            local: local_tier(LOCAL_BYTES),
            store: Store::Memory {
                nonce: Uuid::new_v4().simple().to_string(),
                generations: Arc::default(),
            },
            failures: Failures::new(
                counters.errors.clone(),
                "hot cache",
                "answering from the database",
            ),
            counters,
            pending: Arc::default(),
        }
    }

    pub fn redis(conn: redis::aio::ConnectionManager, counters: CacheCounters) -> Self {
        HotCache {
            local: local_tier(LOCAL_BYTES),
            store: Store::Redis(conn),
            failures: Failures::new(
                counters.errors.clone(),
                "hot cache",
                "answering from the database",
            ),
            counters,
            pending: Arc::default(),
        }
    }

    /// Records that events landed at `marks`; the writer calls it after
    /// each commit and before acknowledging.
    pub async fn bump(&self, tenant: Uuid, marks: &[Mark]) -> anyhow::Result<()> {
        if marks.is_empty() {
            return Ok(());
        }
        self.counters.invalidations.inc_by(marks.len() as u64);
        match &self.store {
            Store::Memory { generations, .. } => {
                let mut gens = generations
                    .lock()
                    .map_err(|_| anyhow::anyhow!("generations lock poisoned"))?;
                for m in marks {
                    *gens.entry((tenant, m.clone())).or_insert(0) += 1;
                }
                Ok(())
            }
            Store::Redis(conn) => {
                let bumps: Vec<(Uuid, Mark)> = marks.iter().map(|m| (tenant, m.clone())).collect();
                match incr(conn, &bumps).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        if let Ok(mut pending) = self.pending.lock() {
                            pending.extend(bumps);
                        }
                        Err(self.failed("bump generations", e))
                    }
                }
            }
        }
    }

    /// Applies the bumps Redis missed; false while it still cannot.
    async fn flush_pending(&self, conn: &redis::aio::ConnectionManager) -> bool {
        let bumps = match self.pending.lock() {
            Ok(mut pending) if !pending.is_empty() => std::mem::take(&mut *pending),
            Ok(_) => return true,
            Err(_) => return false,
        };
        match incr(conn, &bumps).await {
            Ok(()) => true,
            Err(e) => {
                if let Ok(mut pending) = self.pending.lock() {
                    pending.extend(bumps);
                }
                self.failed("apply missed bumps", e);
                false
            }
        }
    }

    /// The current counters at `marks`, or `None` when they cannot be read
    /// (then nothing may be served from or filed into the cache).
    pub async fn generations(&self, tenant: Uuid, set: &MarkSet) -> Option<Generations> {
        match &self.store {
            Store::Memory { nonce, generations } => {
                let gens = generations.lock().ok()?;
                let values = set
                    .marks
                    .iter()
                    .map(|m| gens.get(&(tenant, m.clone())).copied().unwrap_or(0))
                    .collect();
                Some(Generations {
                    nonce: nonce.clone(),
                    values,
                })
            }
            Store::Redis(conn) => {
                if !self.flush_pending(conn).await {
                    return None;
                }
                let key = generations_key(tenant);
                let mut conn = conn.clone();
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(&key).arg("nonce").arg(&set.fields);
                let read = cmd.query_async::<Vec<Option<String>>>(&mut conn);
                let found = match bounded(read).await {
                    Ok(found) => found,
                    Err(e) => {
                        self.failed("read generations", e);
                        return None;
                    }
                };
                let nonce = match found.first().cloned().flatten() {
                    Some(n) => n,
                    None => {
                        // First use (or Redis lost its data): a new
                        // incarnation, whoever sets it first.
                        let fresh = Uuid::new_v4().simple().to_string();
                        let mut set = redis::pipe();
                        set.cmd("HSETNX")
                            .arg(&key)
                            .arg("nonce")
                            .arg(&fresh)
                            .ignore();
                        set.cmd("HGET").arg(&key).arg("nonce");
                        let set = set.query_async::<(Option<String>,)>(&mut conn);
                        match bounded(set).await {
                            Ok((Some(n),)) => n,
                            Ok((None,)) => return None,
                            Err(e) => {
                                self.failed("set the nonce", e);
                                return None;
                            }
                        }
                    }
                };
                let values = found
                    .into_iter()
                    .skip(1)
                    .map(|v| v.and_then(|v| v.parse().ok()).unwrap_or(0))
                    .collect();
                Some(Generations { nonce, values })
            }
        }
    }

    /// The entries filed under `keys` (the local tier first, then Redis).
    pub async fn get_many(&self, keys: &[String]) -> Vec<Option<Arc<str>>> {
        let mut found: Vec<Option<Arc<str>>> = keys.iter().map(|k| self.local.get(k)).collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| found[i].is_none()).collect();
        if let (Store::Redis(conn), false) = (&self.store, missing.is_empty()) {
            let wanted: Vec<&String> = missing.iter().map(|&i| &keys[i]).collect();
            let mut conn = conn.clone();
            let mut cmd = redis::cmd("MGET");
            cmd.arg(&wanted);
            let read = cmd.query_async::<Vec<Option<String>>>(&mut conn);
            match bounded(read).await {
                Ok(values) => {
                    for (&i, v) in missing.iter().zip(values) {
                        if let Some(v) = v {
                            let v: Arc<str> = v.into();
                            self.local.insert(keys[i].clone(), v.clone());
                            found[i] = Some(v);
                        }
                    }
                }
                Err(e) => {
                    self.failed("read entries", e);
                }
            }
        }
        let hits = found.iter().filter(|f| f.is_some()).count() as u64;
        self.counters.hits.inc_by(hits);
        self.counters.misses.inc_by(keys.len() as u64 - hits);
        found
    }

    /// Counts `n` buckets served from entries read earlier (a memo of a
    /// whole answer built from them).
    pub fn count_hits(&self, n: usize) {
        self.counters.hits.inc_by(n as u64);
    }

    /// Files `entries` (key, text, seconds to live in Redis; the local
    /// tier is bounded by size).
    pub async fn put_many(&self, entries: Vec<(String, String, u64)>) {
        if entries.is_empty() {
            return;
        }
        let bytes: usize = entries.iter().map(|(k, v, _)| k.len() + v.len()).sum();
        self.counters.bytes_written.inc_by(bytes as u64);
        if let Store::Redis(conn) = &self.store {
            let mut pipe = redis::pipe();
            for (k, v, ttl) in &entries {
                pipe.set_ex(k, v, (*ttl).clamp(1, ENTRY_TTL_SECS)).ignore();
            }
            let mut conn = conn.clone();
            if let Err(e) = bounded(pipe.query_async::<()>(&mut conn)).await {
                self.failed("write entries", e);
            }
        }
        for (k, v, _) in entries {
            self.local.insert(k, v.into());
        }
    }

    fn failed(&self, what: &str, e: anyhow::Error) -> anyhow::Error {
        self.failures.record(what, &e);
        e
    }
}
