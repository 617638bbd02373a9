//! Every setting Pulse reads, parsed and validated once at start-up.
//!
//! Settings come from `PULSE_*` environment variables (see API.md), looked
//! up through a function so tests can build a `Config` without touching the
//! process environment. A bad value is a [`ConfigError`] naming the variable;
//! `main` prints it as one line and exits non-zero.

use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

/// The embedded default: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://pulse.db?mode=rwc";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, thiserror::Error)]
#[error("invalid {var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: DatabaseConfig,
    /// `None`: in-process cache and bus.
    pub redis_url: Option<String>,
    pub jwt: JwtConfig,
    pub log: LogConfig,
    pub limits: Limits,
    pub ingest: IngestConfig,
    /// The statement timeout of metric queries (`QUERY_TIMEOUT` past it).
    pub query_timeout: Duration,
    /// What one tenant's analytic queries may ask for at once.
    pub analytics: AnalyticsLimits,
    /// `/metrics`: who may scrape it and how many operation names it shows.
    pub prometheus: PrometheusConfig,
    /// Whether `serve` seeds the demo tenants.
    pub demo: Demo,
    /// How long shutdown waits for in-flight requests before giving up.
    pub shutdown_grace: Duration,
    /// The longest any one HTTP request may take (408 past it).
    pub request_timeout: Duration,
    /// `PULSE_BACKGROUND_JOBS`: whether `run` starts the periodic jobs
    /// (partitions ahead, data expiry). On by default; a test server turns
    /// them off so that they never run beside what it measures.
    pub background_jobs: bool,
    /// `PULSE_HOT_CACHE`: whether metric queries read and fill the hot
    /// cache. On by default; off, every metric query is computed from the
    /// database (the uncached path, for comparison in `bench/`).
    pub hot_cache: bool,
    /// `PULSE_RETENTION_BITMAPS`: whether retention is answered from the
    /// hourly actor bitmaps where they answer it exactly. On by default;
    /// off, always from raw events (the path the bitmaps must equal, for
    /// comparison in tests and `bench/`).
    pub retention_bitmaps: bool,
    pub live: LiveConfig,
    pub alerts: AlertsConfig,
    pub rollups: RollupsConfig,
}

/// Numeric rollups of declared properties (`PULSE_ROLLUP_*`).
#[derive(Clone, Debug)]
pub struct RollupsConfig {
    /// `PULSE_ROLLUP_BACKFILL`: whether this instance backfills new
    /// series. On by default (any number of instances may: each chunk is
    /// filled under a lock); a test server turns it off unless the test is
    /// about it.
    pub backfill: bool,
    /// `PULSE_ROLLUP_BACKFILL_TENANTS`: backfill only these tenants'
    /// series (slugs, comma-separated); all when unset.
    pub tenants: Option<Vec<String>>,
    /// `PULSE_ROLLUP_BACKFILL_HOURS`: hours of events per backfill
    /// transaction (24); the tenant's ingestion waits for each.
    pub chunk_hours: u32,
    /// `PULSE_ROLLUP_BACKFILL_PAUSE_MS`: rest between chunks (0).
    pub pause: Duration,
    /// `PULSE_ROLLUP_MAX_DIMENSION_VALUES`: the default, and the most, a
    /// dimension may declare as its distinct values per hour (1000).
    pub max_dimension_values: u32,
}

/// Alert evaluation and webhook delivery (`PULSE_ALERT_*`, `PULSE_WEBHOOK_*`).
#[derive(Clone, Debug)]
pub struct AlertsConfig {
    /// `PULSE_ALERT_EVALUATION`: whether this instance evaluates alerts
    /// and sends their webhooks. On by default (any number of instances
    /// may: each alert has one evaluator at a time); a test server turns
    /// it off unless the test is about it.
    pub evaluate: bool,
    /// `PULSE_ALERT_TENANTS`: evaluate only these tenants' alerts (slugs,
    /// comma-separated); all when unset.
    pub tenants: Option<Vec<String>>,
    /// `PULSE_ALERT_MIN_INTERVAL`: the shortest `evaluateEvery` (10s).
    pub min_interval: Duration,
    /// `PULSE_ALERT_POLL_MS`: how often an evaluator looks for due alerts
    /// and deliveries.
    pub poll: Duration,
    /// `PULSE_MAX_ALERTS_PER_TENANT`.
    pub per_tenant: u64,
    /// `PULSE_PUBLIC_URL`: where links in notifications point.
    pub public_url: Option<String>,
    pub webhooks: crate::domain::alerts::webhooks::DeliverySettings,
}

/// Subscriptions and their sockets (`PULSE_LIVE_*`, `PULSE_WS_*`).
#[derive(Clone, Debug)]
pub struct LiveConfig {
    /// How long a watcher gathers bus messages before it recomputes.
    pub debounce: Duration,
    /// How often watchers recompute while other processes' messages may
    /// not arrive (the Redis relay is down).
    pub fallback_every: Duration,
    /// Pings on each socket this often; a socket silent for two intervals
    /// is closed, and the caller's token, user and tenant are checked again.
    pub keepalive: Duration,
    /// How long a new socket may wait before `connection_init`.
    pub init_timeout: Duration,
    /// Most subscriptions on one socket.
    pub per_connection: usize,
    /// Most sockets of one tenant on this instance.
    pub connections_per_tenant: usize,
    /// Most subscriptions of one tenant on this instance.
    pub subscriptions_per_tenant: usize,
    /// Events an `eventStream` subscriber may fall behind by before it is
    /// closed as too slow.
    pub stream_buffer: usize,
}

/// When `serve` seeds the demo data (see API.md, "startup").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Demo {
    Off,
    /// The embedded default: seed a database that has no tenants yet.
    IfEmpty,
    /// `PULSE_DEMO=1`: run the idempotent seed on every start.
    Always,
}

impl Demo {
    pub fn is_on(self) -> bool {
        self != Demo::Off
    }
}

#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    /// SQLite only: `true` (the default) commits with `synchronous=FULL`, so
    /// an acknowledged event survives a power loss; `PULSE_SQLITE_SYNCHRONOUS
    /// =normal` trades that for throughput (bench/README.md has the cost).
    pub sqlite_full_sync: bool,
}

impl DatabaseConfig {
    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres")
    }
}

#[derive(Clone)]
pub struct JwtConfig {
    /// `None`: use the file-backed development secret (see `auth::jwt`).
    pub secret: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`.
    pub leeway: Duration,
}

impl std::fmt::Debug for JwtConfig {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub filter: String,
    pub json: bool,
}

#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest accepted request body, in bytes.
    pub body_bytes: usize,
    /// Deepest accepted GraphQL selection.
    pub max_depth: usize,
    /// Largest accepted GraphQL complexity (connections count `first` times).
    pub max_complexity: usize,
    /// Most lexical tokens a GraphQL document may have; counted before it
    /// is parsed, so a huge document costs a scan, not a parse.
    pub max_tokens: usize,
}

#[derive(Clone)]
pub struct PrometheusConfig {
    /// `PULSE_METRICS_TOKEN`: when set, `/metrics` wants `Authorization:
    /// Bearer <it>`.
    pub token: Option<String>,
    /// Distinct GraphQL operation names given a label of their own.
    pub max_operations: usize,
}

impl std::fmt::Debug for PrometheusConfig {
    // The scrape token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusConfig")
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("max_operations", &self.max_operations)
            .finish()
    }
}

/// Bounds on analytic fields (`metrics`, `formula`, `funnel`,
/// `retention`): how wide a range, how many in one operation, and how many
/// of one tenant's statements run at once, so one tenant cannot stall or
/// starve the others.
#[derive(Clone, Debug)]
pub struct AnalyticsLimits {
    /// Widest range a query may cover.
    pub max_range: chrono::Duration,
    /// Most analytic fields in one operation (aliases count).
    pub max_fields: usize,
    /// Most analytic queries of one tenant running at once; more wait up
    /// to `queue_wait`, then get `RATE_LIMITED`.
    pub tenant_concurrency: usize,
    pub queue_wait: Duration,
}

/// The ingestion path: batch limits, the group-commit writer, and whose
/// `X-Forwarded-For` to believe.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Most events in one batch.
    pub max_events: usize,
    /// Largest batch, in bytes after decompression.
    pub max_bytes: usize,
    /// Most events committed together.
    pub group_events: usize,
    /// Most events queued or committing at once (bounds memory).
    pub queue_events: usize,
    /// How long a request waits for queue space before a 503.
    pub queue_wait: Duration,
    /// Concurrent writer tasks.
    pub writers: usize,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment, or a test's map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let explicit_db = get("PULSE_DATABASE_URL");
        let database_url = explicit_db
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        validate_database_url(&database_url)?;

        let redis_url = get("PULSE_REDIS_URL");
        if let Some(url) = &redis_url {
            validate_redis_url(url)?;
        }

        let listen_raw = get("PULSE_LISTEN").unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_raw
            .parse::<SocketAddr>()
            .map_err(|e| invalid("PULSE_LISTEN", &listen_raw, e))?;

        let log_filter = get("PULSE_LOG").unwrap_or_else(|| "info".to_owned());
        validate_log_filter(&log_filter)?;
        let json = match get("PULSE_LOG_FORMAT").as_deref() {
            None | Some("text") | Some("pretty") => false,
            Some("json") => true,
            Some(other) => {
                return Err(invalid(
                    "PULSE_LOG_FORMAT",
                    other,
                    "expected `text` or `json`",
                ));
            }
        };

        let demo = match get("PULSE_DEMO") {
            None if explicit_db.is_none() => Demo::IfEmpty,
            None => Demo::Off,
            Some(v) if parse_bool("PULSE_DEMO", &v)? => Demo::Always,
            Some(_) => Demo::Off,
        };

        Ok(Config {
            listen,
            database: DatabaseConfig {
                url: database_url,
                max_connections: number(&get, "PULSE_DB_MAX_CONNECTIONS", 16, 1..=1000)?,
                sqlite_full_sync: match get("PULSE_SQLITE_SYNCHRONOUS").as_deref() {
                    None | Some("full") | Some("FULL") => true,
                    Some("normal") | Some("NORMAL") => false,
                    Some(other) => {
                        return Err(invalid(
                            "PULSE_SQLITE_SYNCHRONOUS",
                            other,
                            "expected `full` (the default) or `normal`",
                        ));
                    }
                },
            },
            redis_url,
            jwt: JwtConfig {
                secret: get("PULSE_JWT_SECRET"),
                issuer: get("PULSE_JWT_ISSUER"),
                audience: get("PULSE_JWT_AUDIENCE"),
                leeway: Duration::from_secs(number(&get, "PULSE_JWT_LEEWAY_SECS", 30, 0..=600)?),
            },
            log: LogConfig {
                filter: log_filter,
                json,
            },
            limits: Limits {
                body_bytes: number(&get, "PULSE_BODY_LIMIT", 1 << 20, 1024..=(256 << 20))?,
                max_depth: number(&get, "PULSE_MAX_DEPTH", 15, 2..=100)?,
                max_complexity: number(&get, "PULSE_MAX_COMPLEXITY", 5_000, 10..=1_000_000)?,
                max_tokens: number(&get, "PULSE_MAX_QUERY_TOKENS", 15_000, 100..=1_000_000)?,
            },
            ingest: IngestConfig {
                max_events: number(&get, "PULSE_INGEST_MAX_EVENTS", 10_000, 1..=100_000)?,
                max_bytes: number(&get, "PULSE_INGEST_MAX_BYTES", 5 << 20, 1024..=(256 << 20))?,
                group_events: number(&get, "PULSE_INGEST_GROUP_EVENTS", 20_000, 1..=1_000_000)?,
                queue_events: number(&get, "PULSE_INGEST_QUEUE_EVENTS", 200_000, 1..=10_000_000)?,
                queue_wait: Duration::from_millis(number(
                    &get,
                    "PULSE_INGEST_QUEUE_WAIT_MS",
                    2_000,
                    0..=60_000,
                )?),
                writers: number(&get, "PULSE_INGEST_WRITERS", 2, 1..=32)?,
                trusted_proxies: match get("PULSE_TRUSTED_PROXIES") {
                    None => Vec::new(),
                    Some(raw) => parse_proxies(&raw)?,
                },
            },
            query_timeout: Duration::from_millis(number(
                &get,
                "PULSE_QUERY_TIMEOUT_MS",
                10_000,
                1..=600_000,
            )?),
            prometheus: PrometheusConfig {
                token: get("PULSE_METRICS_TOKEN"),
                max_operations: number(
                    &get,
                    "PULSE_METRICS_MAX_OPERATIONS",
                    crate::telemetry::DEFAULT_OPERATION_NAMES,
                    0..=10_000,
                )?,
            },
            analytics: AnalyticsLimits {
                max_range: chrono::Duration::days(number(
                    &get,
                    "PULSE_MAX_RANGE_DAYS",
                    3_700,
                    1..=36_500,
                )?),
                max_fields: number(&get, "PULSE_MAX_ANALYTIC_FIELDS", 20, 1..=1_000)?,
                tenant_concurrency: number(&get, "PULSE_TENANT_QUERY_CONCURRENCY", 4, 1..=1_000)?,
                queue_wait: Duration::from_millis(number(
                    &get,
                    "PULSE_TENANT_QUERY_WAIT_MS",
                    2_000,
                    0..=60_000,
                )?),
            },
            demo,
            // API.md promises exit within 10 s; leave room to close the pool.
            shutdown_grace: Duration::from_secs(8),
            background_jobs: match get("PULSE_BACKGROUND_JOBS") {
                Some(v) => parse_bool("PULSE_BACKGROUND_JOBS", &v)?,
                None => true,
            },
            hot_cache: match get("PULSE_HOT_CACHE") {
                Some(v) => parse_bool("PULSE_HOT_CACHE", &v)?,
                None => true,
            },
            retention_bitmaps: match get("PULSE_RETENTION_BITMAPS") {
                Some(v) => parse_bool("PULSE_RETENTION_BITMAPS", &v)?,
                None => true,
            },
            request_timeout: Duration::from_millis(number(
                &get,
                "PULSE_REQUEST_TIMEOUT_MS",
                30_000,
                100..=3_600_000,
            )?),
            live: LiveConfig {
                debounce: Duration::from_millis(number(
                    &get,
                    "PULSE_LIVE_DEBOUNCE_MS",
                    250,
                    0..=10_000,
                )?),
                fallback_every: Duration::from_millis(number(
                    &get,
                    "PULSE_LIVE_FALLBACK_MS",
                    5_000,
                    100..=600_000,
                )?),
                keepalive: Duration::from_millis(number(
                    &get,
                    "PULSE_WS_KEEPALIVE_MS",
                    15_000,
                    100..=600_000,
                )?),
                init_timeout: Duration::from_millis(number(
                    &get,
                    "PULSE_WS_INIT_TIMEOUT_MS",
                    10_000,
                    100..=600_000,
                )?),
                per_connection: number(&get, "PULSE_WS_MAX_SUBSCRIPTIONS", 100, 1..=100_000)?,
                connections_per_tenant: number(
                    &get,
                    "PULSE_WS_MAX_CONNECTIONS_PER_TENANT",
                    2_000,
                    1..=1_000_000,
                )?,
                subscriptions_per_tenant: number(
                    &get,
                    "PULSE_MAX_SUBSCRIPTIONS_PER_TENANT",
                    5_000,
                    1..=1_000_000,
                )?,
                stream_buffer: number(&get, "PULSE_LIVE_STREAM_BUFFER", 1_000, 1..=1_000_000)?,
            },
            alerts: AlertsConfig {
                evaluate: match get("PULSE_ALERT_EVALUATION") {
                    Some(v) => parse_bool("PULSE_ALERT_EVALUATION", &v)?,
                    None => true,
                },
                tenants: get("PULSE_ALERT_TENANTS").map(|raw| {
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                }),
                min_interval: match get("PULSE_ALERT_MIN_INTERVAL") {
                    Some(raw) => crate::duration::parse(&raw)
                        .map_err(|e| invalid("PULSE_ALERT_MIN_INTERVAL", &raw, e))?,
                    None => Duration::from_secs(10),
                },
                poll: Duration::from_millis(number(
                    &get,
                    "PULSE_ALERT_POLL_MS",
                    1_000,
                    50..=60_000,
                )?),
                per_tenant: number(&get, "PULSE_MAX_ALERTS_PER_TENANT", 1_000, 1..=1_000_000)?,
                public_url: match get("PULSE_PUBLIC_URL") {
                    Some(raw) => {
                        let url = url::Url::parse(&raw)
                            .map_err(|e| invalid("PULSE_PUBLIC_URL", &raw, e))?;
                        if !matches!(url.scheme(), "http" | "https") {
                            return Err(invalid(
                                "PULSE_PUBLIC_URL",
                                &raw,
                                "expected an http:// or https:// URL",
                            ));
                        }
                        Some(raw.trim_end_matches('/').to_owned())
                    }
                    None => None,
                },
                webhooks: crate::domain::alerts::webhooks::DeliverySettings {
                    timeout: Duration::from_millis(number(
                        &get,
                        "PULSE_WEBHOOK_TIMEOUT_MS",
                        5_000,
                        100..=60_000,
                    )?),
                    max_attempts: number(&get, "PULSE_WEBHOOK_MAX_ATTEMPTS", 6, 1..=50)?,
                    backoff: Duration::from_millis(number(
                        &get,
                        "PULSE_WEBHOOK_BACKOFF_MS",
                        2_000,
                        10..=600_000,
                    )?),
                    backoff_max: Duration::from_millis(number(
                        &get,
                        "PULSE_WEBHOOK_BACKOFF_MAX_MS",
                        300_000,
                        10..=86_400_000,
                    )?),
                    allow_private: match get("PULSE_WEBHOOK_ALLOW_PRIVATE") {
                        Some(v) => parse_bool("PULSE_WEBHOOK_ALLOW_PRIVATE", &v)?,
                        None => false,
                    },
                },
            },
            rollups: RollupsConfig {
                backfill: match get("PULSE_ROLLUP_BACKFILL") {
                    Some(v) => parse_bool("PULSE_ROLLUP_BACKFILL", &v)?,
                    None => true,
                },
                tenants: get("PULSE_ROLLUP_BACKFILL_TENANTS").map(|raw| {
                    raw.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                }),
                chunk_hours: number(&get, "PULSE_ROLLUP_BACKFILL_HOURS", 24, 1..=24 * 31)?,
                pause: Duration::from_millis(number(
                    &get,
                    "PULSE_ROLLUP_BACKFILL_PAUSE_MS",
                    0,
                    0..=600_000,
                )?),
                max_dimension_values: number(
                    &get,
                    "PULSE_ROLLUP_MAX_DIMENSION_VALUES",
                    1_000,
                    1..=100_000,
                )?,
            },
        })
    }
}

/// A comma-separated list of addresses and CIDR networks.
fn parse_proxies(raw: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    invalid(
                        "PULSE_TRUSTED_PROXIES",
                        raw,
                        format!("`{p}` is not an IP address or CIDR network"),
                    )
                })
        })
        .collect()
}

fn invalid(var: &'static str, value: &str, reason: impl ToString) -> ConfigError {
    ConfigError {
        var,
        value: value.to_owned(),
        reason: reason.to_string(),
    }
}

fn number<T>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(raw) = get(var) else {
        return Ok(default);
    };
    let value: T = raw
        .trim()
        .parse()
        .map_err(|_| invalid(var, &raw, "not a whole number"))?;
    if !range.contains(&value) {
        return Err(invalid(
            var,
            &raw,
            format!("must be between {} and {}", range.start(), range.end()),
        ));
    }
    Ok(value)
}

fn parse_bool(var: &'static str, raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(var, raw, "expected 1/0, true/false")),
    }
}

fn validate_database_url(raw: &str) -> Result<(), ConfigError> {
    let url = Url::parse(raw).map_err(|e| invalid("PULSE_DATABASE_URL", raw, e))?;
    match url.scheme() {
        "sqlite" | "postgres" | "postgresql" => Ok(()),
        other => Err(invalid(
            "PULSE_DATABASE_URL",
            raw,
            format!("unsupported scheme `{other}` (expected sqlite:// or postgres://)"),
        )),
    }
}

fn validate_redis_url(raw: &str) -> Result<(), ConfigError> {
    let url = Url::parse(raw).map_err(|e| invalid("PULSE_REDIS_URL", raw, e))?;
    if url.scheme() != "redis" {
        return Err(invalid("PULSE_REDIS_URL", raw, "expected a redis:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("PULSE_REDIS_URL", raw, "missing host"));
    }
    Ok(())
}

const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// `tracing`'s filter syntax accepts almost anything (a bare word is a target
/// name), so a typo like `PULSE_LOG=verbose` would silently log nothing
/// useful. Require every directive to end in a known level.
fn validate_log_filter(raw: &str) -> Result<(), ConfigError> {
    for directive in raw.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive.rsplit('=').next().unwrap_or(directive);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(invalid(
                "PULSE_LOG",
                raw,
                format!(
                    "unknown log level `{level}` (expected one of {})",
                    LEVELS.join(", ")
                ),
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(raw).map_err(|e| invalid("PULSE_LOG", raw, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_embedded_setup_with_demo_data() {
        let c = config(&[]).expect("defaults are valid");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.database.url, DEFAULT_DATABASE_URL);
        assert_eq!(c.demo, Demo::IfEmpty);
        assert_eq!(c.limits.body_bytes, 1 << 20);
        assert!(c.hot_cache);
    }

    #[test]
    fn the_hot_cache_can_be_turned_off() {
        let c = config(&[("PULSE_HOT_CACHE", "0")]).expect("valid");
        assert!(!c.hot_cache);
    }

    #[test]
    fn an_explicit_database_turns_demo_seeding_off_unless_asked() {
        let c = config(&[("PULSE_DATABASE_URL", "postgres://localhost/pulse")]).expect("valid");
        assert_eq!(c.demo, Demo::Off);
        let c = config(&[
            ("PULSE_DATABASE_URL", "postgres://localhost/pulse"),
            ("PULSE_DEMO", "1"),
        ])
        .expect("valid");
        assert_eq!(c.demo, Demo::Always);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("PULSE_LISTEN", "localhost"),
            ("PULSE_DATABASE_URL", "mysql://x/y"),
            ("PULSE_DATABASE_URL", "not a url"),
            ("PULSE_REDIS_URL", "http://x"),
            ("PULSE_LOG", "verbose"),
            ("PULSE_LOG", "pulse=loud"),
            ("PULSE_LOG_FORMAT", "xml"),
            ("PULSE_BODY_LIMIT", "12"),
            ("PULSE_MAX_DEPTH", "deep"),
            ("PULSE_DEMO", "maybe"),
            ("PULSE_HOT_CACHE", "sometimes"),
            ("PULSE_INGEST_MAX_EVENTS", "0"),
            ("PULSE_TRUSTED_PROXIES", "10.0.0.0/8, proxy.local"),
        ] {
            let err = config(&[(var, value)]).expect_err(value);
            assert_eq!(err.var, var);
            assert!(err.to_string().starts_with(&format!("invalid {var}=")));
        }
    }

    #[test]
    fn log_filters_with_targets_are_accepted() {
        config(&[("PULSE_LOG", "info,pulse=debug,sqlx=warn")]).expect("valid filter");
    }

    #[test]
    fn the_jwt_secret_is_redacted_from_debug_output() {
        let c = config(&[("PULSE_JWT_SECRET", "hunter2hunter2")]).expect("valid");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
