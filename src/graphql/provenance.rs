//! Puts where each answer of the metric engine (metrics, funnels,
//! retention) came from into the response:
//! `extensions.queries: [{path, source, dbMs, skippedValues, cache}]`, where
//! `cache` (when the hot cache took part) is `{hit, ageMs, recomputed}`:
//! whether every bucket came from the cache, the age of the oldest one
//! that did, and the starts of the buckets computed this time.
//!
//! The request extension (`super::extension`) hands resolvers a
//! [`QueryLog`] through the request data and reads it back once execution
//! is done.

use std::sync::{Arc, Mutex};

use async_graphql::{Response, Value};

/// One answered query of the metric engine.
#[derive(Clone, Debug)]
pub struct Provenance {
    /// The response path, e.g. `metrics` or an alias.
    pub path: String,
    /// `raw`, `rollup` or `bitmap`.
    pub source: &'static str,
    pub db_ms: f64,
    /// Events whose field was present but not numeric.
    pub skipped_values: u64,
    /// How the hot cache took part, when it did.
    pub cache: Option<crate::domain::metrics::cached::CacheUse>,
}

/// What resolvers write to.
#[derive(Clone, Default)]
pub struct QueryLog(Arc<Mutex<Vec<Provenance>>>);

impl QueryLog {
    pub fn push(&self, p: Provenance) {
        if let Ok(mut entries) = self.0.lock() {
            entries.push(p);
        }
    }

    fn take(&self) -> Vec<Provenance> {
        self.0
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }
}

impl QueryLog {
    /// Writes what the resolvers logged into `response.extensions.queries`.
    pub fn attach(&self, response: &mut Response) {
        let entries = self.take();
        if !entries.is_empty() {
            let list = entries
                .into_iter()
                .map(|p| {
                    let mut m = async_graphql::indexmap::IndexMap::new();
                    m.insert(async_graphql::Name::new("path"), Value::from(p.path));
                    m.insert(async_graphql::Name::new("source"), Value::from(p.source));
                    m.insert(async_graphql::Name::new("dbMs"), Value::from(p.db_ms));
                    m.insert(
                        async_graphql::Name::new("skippedValues"),
                        Value::from(p.skipped_values),
                    );
                    if let Some(used) = p.cache {
                        let mut c = async_graphql::indexmap::IndexMap::new();
                        c.insert(async_graphql::Name::new("hit"), Value::from(used.complete));
                        // The age of the oldest bucket served from the cache.
                        let age = used
                            .oldest
                            .map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0));
                        c.insert(
                            async_graphql::Name::new("ageMs"),
                            age.map_or(Value::Null, Value::from),
                        );
                        c.insert(
                            async_graphql::Name::new("recomputed"),
                            Value::List(
                                used.recomputed
                                    .iter()
                                    .map(|t| Value::from(t.to_rfc3339()))
                                    .collect(),
                            ),
                        );
                        m.insert(async_graphql::Name::new("cache"), Value::Object(c));
                    }
                    Value::Object(m)
                })
                .collect();
            response
                .extensions
                .insert("queries".to_owned(), Value::List(list));
        }
    }
}
