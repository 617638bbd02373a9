//! Logs and metrics: the tracing subscriber, and the Prometheus registry
//! behind `/metrics`.
//!
//! Logs go to stderr (stdout belongs to `pulse token` and `pulse schema`).
//! No token, password or secret is ever a field of a log line: request
//! spans carry the request id, tenant slug, operation name and duration.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init_tracing(config: &LogConfig) {
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.compact().try_init()
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
    /// `ok`, or `error` when the response carries any error.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `raw` or `rollup`.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub state: &'static str,
}

/// Every metric Pulse exports. One registry per app, so tests that run
/// several servers in one process see their own counts.
pub struct Telemetry {
    registry: Registry,
    pub graphql_requests: Family<OperationLabels, Counter>,
    pub graphql_duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    pub graphql_errors: Family<CodeLabels, Counter>,
    pub db_pool: Family<PoolLabels, Gauge>,
    pub db_pool_max: Gauge,
    pub db_stale_transactions: Counter,
    /// Statements sent to the database through sea-orm.
    pub db_statements: Counter,
    /// What the hot-metric cache did.
    pub cache: crate::cache::CacheCounters,
    /// Computations of missing cache entries, shared or not.
    pub flights: crate::cache::flight::FlightCounters,
    /// What the rate limiter refused.
    pub rates: crate::cache::rate::RateCounters,
    /// Metric queries refused for their estimated cost.
    pub budget_rejections: Counter,
    /// Estimated rows of metric queries, before they run.
    pub query_cost_estimated: Histogram,
    /// Rows metric queries actually aggregated, to check the estimate by.
    pub query_cost_actual: Histogram,
    /// Panics caught while serving a request.
    pub panics: Counter,
    /// The label values `graphql_requests` may use.
    pub operation_names: OperationNames,
    pub events_accepted: Counter,
    pub events_duplicate: Counter,
    pub events_rejected: Counter,
    pub ingest_saturated: Counter,
    pub ingest_group_events: Histogram,
    pub ingest_commit_seconds: Histogram,
    pub metric_queries: Family<SourceLabels, Counter>,
    pub metric_query_seconds: Family<SourceLabels, Histogram, fn() -> Histogram>,
    /// What persisted queries (APQ and the operation allow-list) did.
    pub persisted: crate::cache::persisted::PersistedCounters,
    /// Sockets, subscriptions, watchers and their work.
    pub live: crate::domain::live::LiveCounters,
    pub alerts: AlertCounters,
}

/// What alert evaluators and senders did, on this instance.
#[derive(Clone, Default)]
pub struct AlertCounters {
    /// By `outcome`: `met`, `clear`, `no_data`, `error`.
    pub evaluations: Family<[(&'static str, &'static str); 1], Counter>,
    /// By the state entered (`to`).
    pub transitions: Family<[(&'static str, &'static str); 1], Counter>,
    /// Webhook attempts by `result`: `sent`, `retry`, `failed`.
    pub deliveries: Family<[(&'static str, &'static str); 1], Counter>,
}

/// Distinct operation names labelled by default (`PULSE_METRICS_MAX_OPERATIONS`).
pub const DEFAULT_OPERATION_NAMES: usize = 200;

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Telemetry {
    pub fn new() -> Self {
        Self::with_operation_cap(DEFAULT_OPERATION_NAMES)
    }

    pub fn with_operation_cap(cap: usize) -> Self {
        let mut registry = Registry::with_prefix("pulse");
        let graphql_requests = Family::<OperationLabels, Counter>::default();
        let graphql_duration =
            Family::<OperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let graphql_errors = Family::<CodeLabels, Counter>::default();
        let db_pool = Family::<PoolLabels, Gauge>::default();
        let db_pool_max = Gauge::default();
        let db_stale_transactions = Counter::default();
        let panics = Counter::default();
        let db_statements = Counter::default();
        let cache = crate::cache::CacheCounters::default();
        for (name, help, counter) in [
            (
                "cache_hits",
                "Metric buckets served from the hot cache",
                &cache.hits,
            ),
            (
                "cache_misses",
                "Metric buckets the hot cache did not hold",
                &cache.misses,
            ),
            (
                "cache_invalidations",
                "Cache generations bumped by committed events (one per day and type touched)",
                &cache.invalidations,
            ),
            (
                "cache_written_bytes",
                "Bytes of entries written to the hot cache",
                &cache.bytes_written,
            ),
            (
                "cache_errors",
                "Redis calls of the hot cache that failed or timed out (the database answered)",
                &cache.errors,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        let flights = crate::cache::flight::FlightCounters::default();
        registry.register(
            "cache_fills",
            "Computations of missing metric buckets (one per distinct missing set at a time)",
            flights.led.clone(),
        );
        registry.register(
            "cache_fills_shared",
            "Requests that waited for another request's computation of the same buckets",
            flights.followed.clone(),
        );
        let rates = crate::cache::rate::RateCounters::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by kind (query, mutation, ingestion, budget)",
            rates.rejected.clone(),
        );
        registry.register(
            "rate_limit_errors",
            "Rate-limit checks Redis did not answer (limited in-process instead)",
            rates.errors.clone(),
        );
        let budget_rejections = Counter::default();
        registry.register(
            "budget_rejections",
            "Metric queries refused with QUERY_TOO_EXPENSIVE (per query or per minute)",
            budget_rejections.clone(),
        );
        // 1 row to ~10^12.
        let query_cost_estimated = Histogram::new(exponential_buckets(1.0, 4.0, 21));
        let query_cost_actual = Histogram::new(exponential_buckets(1.0, 4.0, 21));
        registry.register(
            "query_cost_estimated_rows",
            "Rows a metric query was estimated to touch, before it ran",
            query_cost_estimated.clone(),
        );
        registry.register(
            "query_cost_actual_rows",
            "Rows a metric query aggregated",
            query_cost_actual.clone(),
        );
        registry.register(
            "db_statements",
            "Statements sent to the database (through sea-orm)",
            db_statements.clone(),
        );
        registry.register(
            "panics",
            "Panics caught while serving a request (answered as INTERNAL_SERVER_ERROR)",
            panics.clone(),
        );
        registry.register(
            "db_stale_transactions",
            "Pooled connections that came back inside a transaction (healed or closed)",
            db_stale_transactions.clone(),
        );
        registry.register(
            "graphql_requests",
            "GraphQL requests by operation name and outcome",
            graphql_requests.clone(),
        );
        registry.register(
            "graphql_request_duration_seconds",
            "GraphQL request latency",
            graphql_duration.clone(),
        );
        registry.register(
            "graphql_errors",
            "GraphQL errors by extensions.code",
            graphql_errors.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database pool connections by state",
            db_pool.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "Configured size of the database pool",
            db_pool_max.clone(),
        );
        let events_accepted = Counter::default();
        let events_duplicate = Counter::default();
        let events_rejected = Counter::default();
        let ingest_saturated = Counter::default();
        // 1 to ~65k events per commit.
        let ingest_group_events = Histogram::new(exponential_buckets(1.0, 2.0, 17));
        let ingest_commit_seconds = latency_histogram();
        registry.register("events_accepted", "Events stored", events_accepted.clone());
        registry.register(
            "events_duplicate",
            "Events not stored because their id was seen before",
            events_duplicate.clone(),
        );
        registry.register(
            "events_rejected",
            "Events in batches rejected by validation",
            events_rejected.clone(),
        );
        registry.register(
            "ingest_saturated",
            "Ingestion requests refused because the writer queue was full",
            ingest_saturated.clone(),
        );
        registry.register(
            "ingest_group_events",
            "Events per group commit",
            ingest_group_events.clone(),
        );
        registry.register(
            "ingest_commit_seconds",
            "Latency of one group commit",
            ingest_commit_seconds.clone(),
        );
        let metric_queries = Family::<SourceLabels, Counter>::default();
        let metric_query_seconds =
            Family::<SourceLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "metric_queries",
            "Metric queries answered, by source (raw events or rollups)",
            metric_queries.clone(),
        );
        registry.register(
            "metric_query_db_seconds",
            "Database time of metric queries, by source",
            metric_query_seconds.clone(),
        );
        let persisted = crate::cache::persisted::PersistedCounters::default();
        registry.register(
            "persisted_queries",
            "Persisted-query outcomes: hit, miss, registered (stored by APQ), mismatch, not_in_list",
            persisted.outcomes.clone(),
        );
        registry.register(
            "persisted_query_errors",
            "Redis calls of the persisted-query store that failed or timed out (read as not found)",
            persisted.errors.clone(),
        );
        let live = crate::domain::live::LiveCounters::default();
        registry.register(
            "ws_connections",
            "Open GraphQL WebSocket connections (past connection_init)",
            live.connections.clone(),
        );
        registry.register(
            "subscriptions_active",
            "Active GraphQL subscriptions of every kind",
            live.subscriptions.clone(),
        );
        registry.register(
            "live_watchers",
            "Running metric watchers (distinct tenant and normalized query)",
            live.watchers.clone(),
        );
        registry.register(
            "live_recomputations",
            "Metric recomputations by watchers (one per change, whatever the subscribers)",
            live.recomputations.clone(),
        );
        registry.register(
            "subscription_messages",
            "Subscription messages handed to subscribers",
            live.messages.clone(),
        );
        registry.register(
            "subscription_slow_consumers",
            "Subscribers closed for falling behind their buffer",
            live.slow_consumers.clone(),
        );
        let alerts = AlertCounters::default();
        for (name, help, family) in [
            (
                "alert_evaluations",
                "Alert evaluations by outcome (met, clear, no_data, error)",
                &alerts.evaluations,
            ),
            (
                "alert_transitions",
                "Alert state transitions by the state entered",
                &alerts.transitions,
            ),
            (
                "alert_webhook_attempts",
                "Webhook delivery attempts by result (sent, retry, failed)",
                &alerts.deliveries,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        Telemetry {
            alerts,
            live,
            persisted,
            registry,
            metric_queries,
            metric_query_seconds,
            events_accepted,
            events_duplicate,
            events_rejected,
            ingest_saturated,
            ingest_group_events,
            ingest_commit_seconds,
            graphql_requests,
            graphql_duration,
            graphql_errors,
            db_pool,
            db_pool_max,
            db_stale_transactions,
            panics,
            db_statements,
            cache,
            flights,
            rates,
            budget_rejections,
            query_cost_estimated,
            query_cost_actual,
            operation_names: OperationNames::new(cap),
        }
    }

    /// The counters the query budgets report to.
    pub fn budget_counters(&self) -> crate::domain::metrics::budget::BudgetCounters {
        crate::domain::metrics::budget::BudgetCounters {
            rejections: self.budget_rejections.clone(),
            estimated: self.query_cost_estimated.clone(),
            actual: self.query_cost_actual.clone(),
        }
    }

    pub fn record_query(&self, source: &'static str, db_time: std::time::Duration) {
        let labels = SourceLabels { source };
        self.metric_queries.get_or_create(&labels).inc();
        self.metric_query_seconds
            .get_or_create(&labels)
            .observe(db_time.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

/// Operation names come from clients, so as label values they are tamed:
/// only authenticated requests name theirs (anyone else is
/// `unauthenticated`), each must be short and plain (`invalid` otherwise),
/// and only the first `cap` distinct names get a series of their own (the
/// rest are `other`), so neither memory nor `/metrics` grows with what
/// clients send.
pub struct OperationNames {
    cap: usize,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl OperationNames {
    pub fn new(cap: usize) -> Self {
        OperationNames {
            cap,
            seen: Default::default(),
        }
    }

    pub fn label(&self, name: Option<&str>, authenticated: bool) -> String {
        if !authenticated {
            return "unauthenticated".to_owned();
        }
        let Some(name) = name else {
            return "anonymous".to_owned();
        };
        let plain = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain {
            return "invalid".to_owned();
        }
        // A poisoned set is still a valid set.
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(name) {
            return name.to_owned();
        }
        if seen.len() < self.cap {
            seen.insert(name.to_owned());
            return name.to_owned();
        }
        "other".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_are_capped_and_only_for_the_authenticated() {
        let names = OperationNames::new(2);
        assert_eq!(names.label(Some("A"), false), "unauthenticated");
        assert_eq!(names.label(Some("A"), true), "A");
        assert_eq!(names.label(Some("B"), true), "B");
        assert_eq!(names.label(Some("C"), true), "other");
        assert_eq!(names.label(Some("A"), true), "A");
        assert_eq!(names.label(Some("a-b"), true), "invalid");
        assert_eq!(names.label(None, true), "anonymous");
    }
}
