//! The automatic-persisted-query store: a tenant's GraphQL documents by
//! their SHA-256, so clients may send the hash instead of the text; and
//! the stamp that tells every instance when a tenant's registered
//! operations changed.
//!
//! Documents are content-addressed (the HTTP layer files one only under
//! the digest it checked), so an entry never goes stale and a local tier
//! needs no invalidation. Two implementations behind [`PersistedQueries`]:
//! in-process (moka, bounded by bytes) for the embedded default, and Redis
//! (keys with a 24 h TTL, shared by every instance) with a smaller
//! in-process tier in front. A Redis call that fails or takes longer than
//! 100 ms reads as "not found" and is counted: the client then sends the
//! full document, which is the protocol's own recovery.
//!
//! Every key carries the tenant (`pulse:{tenant}:apq:{hash}`), so one
//! tenant cannot learn another's documents by probing hashes.
//!
//! The *stamp* (`pulse:{tenant}:ops:stamp`) is a random token replaced
//! after every commit that registers or deletes an operation. Instances
//! cache a tenant's registered set tagged with the stamp they read before
//! loading it, and reload when the stamp differs (see
//! `domain::persisted`). A random token rather than a counter: a Redis
//! that lost its data cannot count back up to a value some cache still
//! holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Failures, bounded, local_tier};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use uuid::Uuid;

/// How long documents live in Redis. A client whose document expired is
/// told it is not found and sends it again.
const ENTRY_TTL_SECS: u64 = 24 * 3600;
/// The in-process store's budget, in bytes of keys and documents.
const MEMORY_BYTES: u64 = 32 << 20;
/// The local tier in front of Redis: only the hottest documents.
const LOCAL_BYTES: u64 = 8 << 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `hit`, `miss`, `registered`, `mismatch` or `not_in_list`.
    pub outcome: &'static str,
}

/// Counters of what persisted queries did, exported on `/metrics`.
#[derive(Clone, Default)]
pub struct PersistedCounters {
    pub outcomes: Family<OutcomeLabels, Counter>,
    /// Redis calls that failed or timed out (read as "not found").
    pub errors: Counter,
}

impl PersistedCounters {
    pub fn count(&self, outcome: &'static str) {
        self.outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

#[derive(Clone)]
pub struct PersistedQueries {
    /// The whole store in-process; the hot tier in front of Redis.
    local: moka::sync::Cache<String, Arc<str>>,
    redis: Option<redis::aio::ConnectionManager>,
    /// Each tenant's stamp, in-process (without Redis).
    stamps: Arc<Mutex<HashMap<Uuid, String>>>,
    pub counters: PersistedCounters,
    failures: Failures,
}

fn document_key(tenant: Uuid, hash: &str) -> String {
    format!("pulse:{tenant}:apq:{hash}")
}

fn stamp_key(tenant: Uuid) -> String {
    format!("pulse:{tenant}:ops:stamp")
}

impl PersistedQueries {
    pub fn memory(counters: PersistedCounters) -> Self {
        PersistedQueries {
            local: local_tier(MEMORY_BYTES),
            redis: None,
            stamps: Arc::default(),
            failures: Failures::new(
                counters.errors.clone(),
                "persisted queries",
                "reading documents as not found",
            ),
            counters,
        }
    }

    pub fn redis(conn: redis::aio::ConnectionManager, counters: PersistedCounters) -> Self {
        PersistedQueries {
            local: local_tier(LOCAL_BYTES),
            redis: Some(conn),
            ..PersistedQueries::memory(counters)
        }
    }

    /// The document filed under `hash` for `tenant`, if any (and if Redis
    /// answers in time).
    pub async fn get(&self, tenant: Uuid, hash: &str) -> Option<Arc<str>> {
        let key = document_key(tenant, hash);
        if let Some(found) = self.local.get(&key) {
            return Some(found);
        }
        let conn = self.redis.as_ref()?;
        let mut conn = conn.clone();
        let mut cmd = redis::cmd("GET");
        cmd.arg(&key);
        let read = cmd.query_async::<Option<String>>(&mut conn);
        match bounded(read).await {
            Ok(Some(text)) => {
                let text: Arc<str> = text.into();
                self.local.insert(key, text.clone());
                Some(text)
            }
            Ok(None) => None,
            Err(e) => {
                self.failures.record("read a document", &e);
                None
            }
        }
    }

    /// Files `document` under `hash` for `tenant`; the caller has checked
    /// that `hash` is its SHA-256. A Redis failure is counted and the
    /// document kept locally.
    pub async fn put(&self, tenant: Uuid, hash: &str, document: &str) {
        let key = document_key(tenant, hash);
        if let Some(conn) = &self.redis {
            let mut conn = conn.clone();
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(document).arg("EX").arg(ENTRY_TTL_SECS);
            let write = cmd.query_async::<()>(&mut conn);
            if let Err(e) = bounded(write).await {
                self.failures.record("write a document", &e);
            }
        }
        self.local.insert(key, document.into());
    }

    /// The tenant's current stamp ("" before its first change), or `None`
    /// when Redis cannot say (then a cached set is used until it expires).
    pub async fn stamp(&self, tenant: Uuid) -> Option<String> {
        let Some(conn) = &self.redis else {
            let stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            return Some(stamps.get(&tenant).cloned().unwrap_or_default());
        };
        let mut conn = conn.clone();
        let mut cmd = redis::cmd("GET");
        cmd.arg(stamp_key(tenant));
        let read = cmd.query_async::<Option<String>>(&mut conn);
        match bounded(read).await {
            Ok(stamp) => Some(stamp.unwrap_or_default()),
            Err(e) => {
                self.failures.record("read the operations stamp", &e);
                None
            }
        }
    }

    /// Gives the tenant a new stamp; called after a commit that changed its
    /// registered operations. When Redis misses it, other instances see
    /// the change once their cached set expires.
    pub async fn restamp(&self, tenant: Uuid) {
        let fresh = Uuid::new_v4().simple().to_string();
        let Some(conn) = &self.redis else {
            let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            stamps.insert(tenant, fresh);
            return;
        };
        let mut conn = conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(stamp_key(tenant)).arg(&fresh);
        let write = cmd.query_async::<()>(&mut conn);
        if let Err(e) = bounded(write).await {
            self.failures.record("write the operations stamp", &e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn documents_are_kept_per_tenant() {
        let store = PersistedQueries::memory(PersistedCounters::default());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        store.put(a, "h", "{ me { role } }").await;
        assert_eq!(store.get(a, "h").await.as_deref(), Some("{ me { role } }"));
        assert_eq!(store.get(b, "h").await, None);
    }

    #[tokio::test]
    async fn a_restamp_changes_only_that_tenants_stamp() {
        let store = PersistedQueries::memory(PersistedCounters::default());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(store.stamp(a).await.as_deref(), Some(""));
        store.restamp(a).await;
        let first = store.stamp(a).await;
        assert_ne!(first.as_deref(), Some(""));
        store.restamp(a).await;
        assert_ne!(store.stamp(a).await, first);
        assert_eq!(store.stamp(b).await.as_deref(), Some(""));
    }
}
