//! Scenario `http`: the GraphQL hot path under closed-loop load (issue #11).
//!
//! `--connections` tasks (default 64), each with its own keep-alive
//! HTTP/1.1 connection and one request in flight (wrk's model), POST the
//! same GraphQL document to `/graphql` with a bearer JWT for `--warmup`
//! and then `--duration`; the latencies of requests sent and answered
//! inside the timed window go to an HDR histogram. Every answer, warm-up
//! included, is parsed and checked: HTTP 200, no `errors`, the data there.
//!
//! Modes: `cached` (COUNT of one event type by DAY over 30 days, hot cache
//! on), `uncached` (the same question with `PULSE_HOT_CACHE=0` on the same
//! binary), `dashboard` (a whole dashboard, by default one created for the
//! run whose six widgets the hot cache can serve).
//!
//! With `--ingest-rate`, a separate task posts events to `/v1/events`
//! meanwhile (open loop: batches leave on a timer, whatever the previous
//! ones are doing), and answers are held to read-your-writes through a
//! [`Ledger`]: an answer must count every event acknowledged before its
//! request was sent, and nothing that had not been sent when it arrived.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use chrono::{DateTime, NaiveTime, Utc};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use rand::SeedableRng as _;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use crate::server::{ServerArgs, cpu_seconds_of};

#[derive(Debug, clap::Args)]
pub struct HttpArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// What each request asks.
    #[arg(long, value_enum, default_value_t = Mode::Cached)]
    pub mode: Mode,
    /// Concurrent connections, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// The timed window (`20s`, `500ms`, `2m`).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before the timed window: answers checked, not timed.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Instead of `--duration`: stop after this many timed answers (for
    /// profiling a fixed amount of work).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Events per second posted to `/v1/events` meanwhile; 0: none.
    #[arg(long, default_value_t = 0)]
    pub ingest_rate: u64,
    /// Events per `/v1/events` request (the rate sets how often one leaves).
    #[arg(long, default_value_t = 100)]
    pub ingest_batch: u64,
    /// The range asked: `days` is the 30 whole UTC days ending with today
    /// (fixed for the run, so every bucket is whole and cacheable and every
    /// answer's total can be checked); `last30d` is `{last: "30d"}`, whose
    /// two cut buckets the server computes on every request.
    #[arg(long, value_enum, default_value_t = RangeKind::Days)]
    pub range: RangeKind,
    /// The event type counted (and most of what is ingested).
    #[arg(long, default_value = "page_view")]
    pub event_type: String,
    /// Demo tenant to query (`pulse seed-demo` runs first).
    #[arg(long, default_value = "acme")]
    pub tenant: String,
    /// Whose token the load carries: a user's email, or `service` for a
    /// service token. Default: the demo viewer, `viewer@<tenant>.example`.
    #[arg(long)]
    pub user: Option<String>,
    /// Mode `dashboard`: an existing dashboard of the tenant, by name (e.g.
    /// "Product overview"), instead of the cacheable one made for the run.
    #[arg(long)]
    pub dashboard: Option<String>,
    /// The HTTP client of the load: `raw` (a prepared request written to
    /// a bare TCP connection, the answer parsed with `httparse`: the least
    /// CPU per request), `hyper` (one `http1` connection per task) or
    /// `reqwest` (one client per task).
    #[arg(long, value_enum, default_value_t = ClientKind::Raw)]
    pub client: ClientKind,
    /// Load a server that is already running (e.g. under a profiler, see
    /// `bench/profile.sh`) instead of starting one; it must use the bench
    /// JWT secret and `--database-url`'s database.
    #[arg(long)]
    pub external: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Cached,
    Uncached,
    Dashboard,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RangeKind {
    Days,
    Last30d,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    Raw,
    Hyper,
    Reqwest,
}

pub(crate) fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = raw
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((raw, "s"), |i| raw.split_at(i));
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration like 20s"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("`{raw}`: unit must be ms, s or m")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// Generous limits for the bench tenant: the load is one tenant on
/// purpose, and must not be throttled by its per-minute rate limits or its
/// query budget. The shape is the server's `limits` override
/// (`auth::policy::LimitsOverride`: snake_case, unknown fields refused,
/// every number at most 2^50).
fn generous_limits() -> Value {
    let big = json!({ "per_tenant": 100_000_000u64, "per_user": 100_000_000u64 });
    json!({
        "queries": big, "mutations": big, "ingestion": big,
        "budget": { "per_query": 1_000_000_000_000u64, "per_minute": 1_000_000_000_000_000u64 },
    })
}

/// `settings` with `limits` replaced whole, the rest kept: the server
/// refuses a `limits` object with fields it does not know (and then falls
/// back to the plan's defaults), so nothing of an older one is merged in.
fn with_generous_limits(settings: Option<&str>) -> anyhow::Result<Value> {
    let mut settings: Value = settings
        .map(serde_json::from_str)
        .transpose()?
        .unwrap_or_else(|| json!({}));
    if !settings.is_object() {
        settings = json!({});
    }
    settings["limits"] = generous_limits();
    Ok(settings)
}

/// Gives each of `tenants` the [`generous_limits`], in the database.
pub(crate) async fn raise_limits(database_url: &str, tenants: &[&str]) -> anyhow::Result<()> {
    let db = Database::connect(database_url).await?;
    let backend = db.get_database_backend();
    let (select, update) = match backend {
        DbBackend::Postgres => (
            "SELECT settings::text FROM tenants WHERE slug = $1",
            "UPDATE tenants SET settings = $1::jsonb, updated_at = now() WHERE slug = $2",
        ),
        _ => (
            "SELECT settings FROM tenants WHERE slug = ?",
            "UPDATE tenants SET settings = ? WHERE slug = ?",
        ),
    };
    for &tenant in tenants {
        let row = db
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                select,
                [tenant.into()],
            ))
            .await?
            .with_context(|| format!("no tenant {tenant}"))?;
        let text: Option<String> = row.try_get_by_index(0)?;
        let settings = with_generous_limits(text.as_deref())?;
        db.execute_raw(Statement::from_sql_and_values(
            backend,
            update,
            [settings.to_string().into(), tenant.into()],
        ))
        .await?;
    }
    // Fresh tables have no statistics: without them PostgreSQL plans the
    // budget's estimate over the aggregates with the wrong index (5 ms
    // instead of 0.5). Production has autovacuum; a fresh bench does not.
    if backend == DbBackend::Postgres {
        db.execute_unprepared("ANALYZE").await?;
    }
    db.close().await?;
    Ok(())
}

/// The 30 whole UTC days ending with today: `[today − 29 days, tomorrow)`.
fn whole_days() -> (DateTime<Utc>, DateTime<Utc>) {
    let today = Utc::now().date_naive();
    let start = |d: chrono::NaiveDate| d.and_time(NaiveTime::MIN).and_utc();
    (
        start(today - chrono::Duration::days(29)),
        start(today + chrono::Duration::days(1)),
    )
}

fn range_json(from: DateTime<Utc>, to: DateTime<Utc>) -> Value {
    json!({ "from": from.to_rfc3339(), "to": to.to_rfc3339() })
}

const METRICS_DOC: &str = "query($q: MetricQueryInput!) { metrics(query: $q) { total cached series { points { bucket value } } } }";

fn count_by_day(event_type: &str, range: &Value) -> Value {
    json!({ "measure": "COUNT", "eventTypes": [event_type], "granularity": "DAY", "range": range })
}

fn metrics_body(event_type: &str, range: &Value) -> Bytes {
    Bytes::from(
        json!({ "query": METRICS_DOC, "variables": { "q": count_by_day(event_type, range) } })
            .to_string(),
    )
}

/// A demo-like dashboard whose every widget the hot cache can serve
/// (decomposable measures, a granularity). Widget 0 is the counted query,
/// so each answer's first total is checked like a `cached` answer.
fn cacheable_dashboard(name: &str, event_type: &str, range: &Value) -> Value {
    let q = |measure: &str, field: Option<&str>, types: &[&str], group: &[&str]| {
        let mut q = json!({ "measure": measure, "eventTypes": types, "granularity": "DAY",
                            "range": range });
        if let Some(f) = field {
            q["field"] = json!(f);
        }
        if !group.is_empty() {
            q["groupBy"] = json!(group);
        }
        q
    };
    json!({
        "name": name,
        "description": "pulse-bench http: every widget served by the hot cache",
        "isPublic": true,
        "range": range,
        "widgets": [
            { "title": "Page views", "kind": "LINE", "query": q("COUNT", None, &[event_type], &[]) },
            { "title": "Sign-ups", "kind": "BAR", "query": q("COUNT", None, &["signup"], &[]) },
            { "title": "Revenue by plan", "kind": "AREA",
              "query": q("SUM", Some("properties.amount"), &["purchase"], &["properties.plan"]) },
            { "title": "Page views by country", "kind": "BAR",
              "query": q("COUNT", None, &[event_type], &["properties.country"]) },
            { "title": "Average load time", "kind": "LINE",
              "query": q("AVG", Some("properties.load_ms"), &[event_type], &[]) },
            { "title": "Purchases per sign-up", "kind": "LINE", "formula": {
                "queries": [
                    { "name": "purchases", "query": q("COUNT", None, &["purchase"], &[]) },
                    { "name": "signups", "query": q("COUNT", None, &["signup"], &[]) }
                ],
                "expression": "purchases / signups" } }
        ]
    })
}

fn dashboard_body(id: &str) -> Bytes {
    let doc = format!(
        "query($id: ID!) {{ dashboard(id: $id) {{ widgets {{ title data {{ __typename \
         ...on MetricResult {{ total cached series {{ group total points {{ bucket value }} }} }} \
         ...on FunnelResult {{ {} }} ...on RetentionResult {{ {} }} }} }} }} }}",
        crate::dashboard::FUNNEL,
        crate::dashboard::RETENTION
    );
    Bytes::from(json!({ "query": doc, "variables": { "id": id } }).to_string())
}

// Answers, read without building a `Value`: the load generator shares the
// two cores with the server, so its per-answer cost is kept small.

#[derive(Deserialize)]
struct Answer<D> {
    data: Option<D>,
    errors: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct MetricsData {
    metrics: Option<MetricAnswer>,
}

#[derive(Deserialize)]
struct MetricAnswer {
    total: Option<f64>,
    cached: Option<bool>,
    series: Option<Vec<SeriesAnswer>>,
}

#[derive(Deserialize)]
struct SeriesAnswer {
    points: Vec<IgnoredAny>,
}

#[derive(Deserialize)]
struct DashboardData {
    dashboard: Option<DashboardAnswer>,
}

#[derive(Deserialize)]
struct DashboardAnswer {
    widgets: Vec<WidgetAnswer>,
}

#[derive(Deserialize)]
struct WidgetAnswer {
    /// Funnel and retention answers have none of a metric's fields; they
    /// are still `Some` here.
    data: Option<MetricAnswer>,
}

/// What a good answer told.
struct Checked {
    /// The counted query's total, when the answer has it.
    total: Option<f64>,
    /// Metric answers in it, and how many of them the cache served whole.
    metric_parts: u32,
    cached_parts: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Metrics,
    Dashboard,
}

fn check(shape: Shape, status: u16, body: &[u8]) -> Result<Checked, String> {
    if status != 200 {
        return Err(format!("HTTP {status}: {}", excerpt(body)));
    }
    let errors = |body: &[u8]| {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        format!("errors: {}", excerpt(v["errors"].to_string().as_bytes()))
    };
    let metric_ok = |m: &MetricAnswer| {
        m.series
            .as_ref()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|s| !s.points.is_empty()))
    };
    match shape {
        Shape::Metrics => {
            let a: Answer<MetricsData> =
                serde_json::from_slice(body).map_err(|e| format!("bad JSON ({e})"))?;
            if a.errors.is_some() {
                return Err(errors(body));
            }
            let m = a.data.and_then(|d| d.metrics).ok_or("no data.metrics")?;
            if !metric_ok(&m) {
                return Err(format!("no points: {}", excerpt(body)));
            }
            Ok(Checked {
                total: m.total,
                metric_parts: 1,
                cached_parts: u32::from(m.cached == Some(true)),
            })
        }
        Shape::Dashboard => {
            let a: Answer<DashboardData> =
                serde_json::from_slice(body).map_err(|e| format!("bad JSON ({e})"))?;
            if a.errors.is_some() {
                return Err(errors(body));
            }
            let d = a
                .data
                .and_then(|d| d.dashboard)
                .ok_or("no data.dashboard")?;
            if d.widgets.is_empty() {
                return Err("a dashboard without widgets".into());
            }
            let mut c = Checked {
                total: None,
                metric_parts: 0,
                cached_parts: 0,
            };
            for (i, w) in d.widgets.iter().enumerate() {
                let data = w.data.as_ref().ok_or(format!("widget {i} without data"))?;
                if data.cached.is_some() {
                    if !metric_ok(data) {
                        return Err(format!("widget {i}: no points"));
                    }
                    c.metric_parts += 1;
                    c.cached_parts += u32::from(data.cached == Some(true));
                }
                if i == 0 {
                    c.total = data.total;
                }
            }
            Ok(c)
        }
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(300).collect()
}

/// Read-your-writes bookkeeping for the counted query: events of the
/// counted type inside the checked range, sent and acknowledged so far.
///
/// `acked` grows only after a `202` has been read, so its value read just
/// before a request is sent counts only events acknowledged before it:
/// the answer's total must be at least `baseline + acked` then. `sent`
/// grows before a batch leaves, so read after the answer arrives it bounds
/// the total from above (nothing counted that was never sent, nothing
/// counted twice).
struct Ledger {
    baseline: f64,
    acked: AtomicU64,
    sent: AtomicU64,
    stale: AtomicU64,
    phantom: AtomicU64,
    checked: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Ledger {
    fn new(baseline: f64) -> Self {
        Ledger {
            baseline,
            acked: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            phantom: AtomicU64::new(0),
            checked: AtomicU64::new(0),
            samples: Mutex::default(),
        }
    }

    fn floor(&self) -> f64 {
        self.baseline + self.acked.load(Ordering::SeqCst) as f64
    }

    fn judge(&self, floor: f64, total: Option<f64>) {
        let ceiling = self.baseline + self.sent.load(Ordering::SeqCst) as f64;
        let total = total.unwrap_or(0.0);
        self.checked.fetch_add(1, Ordering::Relaxed);
        let wrong = if total < floor {
            self.stale.fetch_add(1, Ordering::Relaxed);
            "below what was acknowledged before the request"
        } else if total > ceiling {
            self.phantom.fetch_add(1, Ordering::Relaxed);
            "above what had been sent when the answer arrived"
        } else {
            return;
        };
        if let Ok(mut s) = self.samples.lock()
            && s.len() < 5
        {
            s.push(format!(
                "total {total} {wrong}: floor {floor}, ceiling {ceiling}"
            ));
        }
    }

    fn violations(&self) -> u64 {
        self.stale.load(Ordering::Relaxed) + self.phantom.load(Ordering::Relaxed)
    }
}

/// Where the load goes.
struct Target {
    /// `host:port`, for connecting and for `Host`.
    addr: String,
    host: HeaderValue,
    url: String,
    auth: HeaderValue,
}

impl Target {
    fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let addr = base
            .strip_prefix("http://")
            .context("the server URL must be http://host:port")?
            .trim_end_matches('/')
            .to_owned();
        Ok(Target {
            host: HeaderValue::from_str(&addr)?,
            url: format!("http://{addr}/graphql"),
            auth: HeaderValue::from_str(&format!("Bearer {token}"))?,
            addr,
        })
    }

    /// The whole HTTP/1.1 request for the `raw` client, built once.
    fn raw_request(&self, body: &Bytes) -> anyhow::Result<Bytes> {
        let mut r = format!(
            "POST /graphql HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Authorization: {}\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            self.auth.to_str()?,
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        Ok(Bytes::from(r))
    }
}

/// The `raw` client's connection: the request is written as prepared, and
/// the answer read into a buffer kept across requests.
struct RawConn {
    stream: Option<tokio::net::TcpStream>,
    buf: Vec<u8>,
    /// Whether a connection was opened before (the next one is a reconnect).
    opened: bool,
}

impl RawConn {
    async fn post(
        &mut self,
        addr: &str,
        request: &[u8],
        reconnects: &mut u64,
    ) -> anyhow::Result<(u16, Bytes)> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let stream = match &mut self.stream {
            Some(s) => s,
            None => {
                *reconnects += u64::from(self.opened);
                self.opened = true;
                let s = tokio::net::TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                self.stream.insert(s)
            }
        };
        stream.write_all(request).await?;
        self.buf.clear();
        // Headers first, then the body by its length.
        let (status, head, length, close) = loop {
            if stream.read_buf(&mut self.buf).await? == 0 {
                bail!("the server closed the connection");
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.buf)? {
                let value = |name: &str| {
                    response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                if value("transfer-encoding").is_some() {
                    bail!("a chunked answer: use --client hyper");
                }
                let length: usize = value("content-length")
                    .context("an answer without Content-Length")?
                    .trim()
                    .parse()?;
                let close = value("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                break (response.code.unwrap_or(0), head, length, close);
            }
        };
        while self.buf.len() < head + length {
            if stream.read_buf(&mut self.buf).await? == 0 {
                bail!("the server closed the connection mid-answer");
            }
        }
        let body = Bytes::copy_from_slice(&self.buf[head..head + length]);
        if close {
            self.stream = None;
        }
        Ok((status, body))
    }
}

/// One task's connection.
enum Conn {
    Raw(RawConn),
    Hyper(Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>),
    Reqwest(reqwest::Client),
}

impl Conn {
    fn new(kind: ClientKind) -> anyhow::Result<Self> {
        Ok(match kind {
            ClientKind::Raw => Conn::Raw(RawConn {
                stream: None,
                buf: Vec::with_capacity(64 << 10),
                opened: false,
            }),
            ClientKind::Hyper => Conn::Hyper(None),
            ClientKind::Reqwest => Conn::Reqwest(
                reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .http1_only()
                    .tcp_nodelay(true)
                    .build()?,
            ),
        })
    }

    /// POSTs `body` (`raw`: the prepared `request`); the status and the
    /// whole answer. A connection the server closed is opened again
    /// (`reconnects` counts it).
    async fn post(
        &mut self,
        target: &Target,
        body: &Bytes,
        request: &Bytes,
        reconnects: &mut u64,
    ) -> anyhow::Result<(u16, Bytes)> {
        match self {
            Conn::Raw(raw) => {
                let answer = raw.post(&target.addr, request, reconnects).await;
                if answer.is_err() {
                    raw.stream = None;
                }
                answer
            }
            Conn::Hyper(slot) => {
                if slot.as_ref().is_none_or(|s| s.is_closed()) {
                    if slot.is_some() {
                        *reconnects += 1;
                    }
                    *slot = Some(connect(&target.addr).await?);
                }
                let Some(sender) = slot.as_mut() else {
                    bail!("no connection");
                };
                let request = hyper::Request::post("/graphql")
                    .header(HOST, target.host.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .header(AUTHORIZATION, target.auth.clone())
                    .body(Full::new(body.clone()))?;
                let sent = async {
                    sender.ready().await?;
                    let response = sender.send_request(request).await?;
                    let status = response.status().as_u16();
                    let bytes = response.into_body().collect().await?.to_bytes();
                    anyhow::Ok((status, bytes))
                }
                .await;
                if sent.is_err() {
                    *slot = None;
                    *reconnects += 1;
                }
                sent
            }
            Conn::Reqwest(client) => {
                let response = client
                    .post(&target.url)
                    .header(CONTENT_TYPE, "application/json")
                    .header(AUTHORIZATION, target.auth.clone())
                    .body(body.clone())
                    .send()
                    .await?;
                let status = response.status().as_u16();
                Ok((status, response.bytes().await?))
            }
        }
    }
}

async fn connect(
    addr: &str,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// When the load runs and what is timed.
struct Window {
    /// Timed: requests sent at or after it...
    from: Instant,
    /// ...and answered by it (with `--requests`: far away).
    until: Instant,
    /// With `--requests`: timed answers still to take.
    budget: Option<AtomicU64>,
}

#[derive(Default)]
struct LoadReport {
    timed: u64,
    all: u64,
    errors: u64,
    reconnects: u64,
    metric_parts: u64,
    cached_parts: u64,
    samples: Vec<String>,
}

struct Load {
    target: Arc<Target>,
    body: Bytes,
    /// `body` as a whole HTTP request, for the `raw` client.
    request: Bytes,
    shape: Shape,
    /// Present when each answer's total can be held to the ledger.
    ledger: Option<Arc<Ledger>>,
    window: Window,
}

async fn worker(load: Arc<Load>, mut conn: Conn) -> anyhow::Result<(LoadReport, Histogram<u64>)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut r = LoadReport::default();
    loop {
        let sent = Instant::now();
        if sent >= load.window.until {
            break;
        }
        let timed = sent >= load.window.from;
        if timed
            && let Some(budget) = &load.window.budget
            && budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_err()
        {
            break;
        }
        let floor = load.ledger.as_ref().map(|l| l.floor());
        let answer = conn
            .post(&load.target, &load.body, &load.request, &mut r.reconnects)
            .await;
        let done = Instant::now();
        r.all += 1;
        let outcome = match answer {
            Ok((status, bytes)) => check(load.shape, status, &bytes),
            Err(e) => Err(format!("transport: {e:#}")),
        };
        match outcome {
            Ok(c) => {
                if let (Some(ledger), Some(floor)) = (&load.ledger, floor) {
                    ledger.judge(floor, c.total);
                }
                r.metric_parts += u64::from(c.metric_parts);
                r.cached_parts += u64::from(c.cached_parts);
            }
            Err(e) => {
                r.errors += 1;
                if r.samples.len() < 3 {
                    r.samples.push(e);
                }
            }
        }
        if timed && (done <= load.window.until || load.window.budget.is_some()) {
            r.timed += 1;
            hist.saturating_record(done.duration_since(sent).as_micros().max(1) as u64);
        }
    }
    Ok((r, hist))
}

#[derive(Default)]
struct IngestReport {
    batches: u64,
    acked_batches: u64,
    failed_batches: u64,
    events_acked: u64,
    samples: Vec<String>,
}

const PATHS: [&str; 6] = ["/", "/pricing", "/docs", "/blog", "/signup", "/app"];
const COUNTRIES: [&str; 6] = ["US", "DE", "FR", "GB", "IN", "BR"];
const PLANS: [&str; 3] = ["free", "pro", "team"];

/// A batch of events timestamped now: 80 % of the counted type, 10 %
/// sign-ups, 10 % purchases. Returns the body and how many events of the
/// counted type fall in `[from, to)`.
fn batch(
    size: u64,
    event_type: &str,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    rng: &mut impl rand::Rng,
) -> (String, u64) {
    let now = Utc::now();
    let at = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let counted_in_range = from <= now && now < to;
    let mut body = String::with_capacity(size as usize * 200);
    let mut counted = 0;
    body.push('[');
    for i in 0..size {
        if i > 0 {
            body.push(',');
        }
        let roll: f64 = rng.random();
        let user = rng.random_range(0..50_000);
        let (kind, properties) = if roll < 0.8 {
            counted += u64::from(counted_in_range);
            (
                event_type,
                json!({ "path": PATHS[rng.random_range(0..PATHS.len())],
                        "country": COUNTRIES[rng.random_range(0..COUNTRIES.len())],
                        "load_ms": rng.random_range(50..2_000) }),
            )
        } else if roll < 0.9 {
            (
                "signup",
                json!({ "country": COUNTRIES[rng.random_range(0..COUNTRIES.len())] }),
            )
        } else {
            (
                "purchase",
                json!({ "plan": PLANS[rng.random_range(0..PLANS.len())],
                        "amount": (rng.random_range(100..50_000) as f64) / 100.0 }),
            )
        };
        let _ = write!(
            body,
            r#"{{"id":"{}","type":"{kind}","timestamp":"{at}","userId":"bench-{user}","sessionId":"bench-s-{}","properties":{properties}}}"#,
            uuid::Uuid::new_v4(),
            user / 4
        );
    }
    body.push(']');
    (body, counted)
}

/// Posts `rate` events per second in batches of `size` until `until`,
/// each batch from its own task so a slow acknowledgement never delays
/// the next batch; then waits for every batch to be answered.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, all plain settings"
)]
async fn ingest(
    rate: u64,
    size: u64,
    until: Instant,
    url: String,
    token: String,
    event_type: String,
    range: (DateTime<Utc>, DateTime<Utc>),
    ledger: Arc<Ledger>,
) -> anyhow::Result<(IngestReport, Histogram<u64>)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()?;
    let period = Duration::from_secs_f64(size as f64 / rate as f64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let mut tasks = tokio::task::JoinSet::new();
    let mut report = IngestReport::default();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    loop {
        tick.tick().await;
        if Instant::now() >= until {
            break;
        }
        let (body, counted) = batch(size, &event_type, range, &mut rng);
        ledger.sent.fetch_add(counted, Ordering::SeqCst);
        report.batches += 1;
        let (client, url, token, ledger) =
            (client.clone(), url.clone(), token.clone(), ledger.clone());
        tasks.spawn(async move {
            let started = Instant::now();
            let response = client
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let outcome = match response {
                Ok(r) => {
                    let status = r.status();
                    match r.bytes().await {
                        Ok(b) if status == reqwest::StatusCode::ACCEPTED => {
                            let counts: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                            if counts["accepted"].as_u64() == Some(size)
                                && counts["duplicates"].as_u64() == Some(0)
                            {
                                // Acknowledged: from now on every query
                                // sent must count these events.
                                ledger.acked.fetch_add(counted, Ordering::SeqCst);
                                Ok(())
                            } else {
                                Err(format!("202 with {counts}"))
                            }
                        }
                        Ok(b) => Err(format!("HTTP {status}: {}", excerpt(&b))),
                        Err(e) => Err(format!("reading the answer: {e}")),
                    }
                }
                Err(e) => Err(format!("transport: {e}")),
            };
            (outcome, started.elapsed())
        });
        // Reap what has finished, so the set stays small.
        while let Some(done) = tasks.try_join_next() {
            account(&mut report, &mut latency, done?, size);
        }
    }
    while let Some(done) = tasks.join_next().await {
        account(&mut report, &mut latency, done?, size);
    }
    Ok((report, latency))
}

fn account(
    report: &mut IngestReport,
    latency: &mut Histogram<u64>,
    (outcome, took): (Result<(), String>, Duration),
    size: u64,
) {
    match outcome {
        Ok(()) => {
            report.acked_batches += 1;
            report.events_acked += size;
            latency.saturating_record(took.as_micros().max(1) as u64);
        }
        Err(e) => {
            report.failed_batches += 1;
            if report.samples.len() < 3 {
                report.samples.push(e);
            }
        }
    }
}

/// A checker for when the load's own answers cannot be held to the
/// ledger (`--range last30d`, an existing dashboard): the counted query
/// over the fixed whole days, one at a time, every 10 ms.
async fn checker(
    target: Arc<Target>,
    body: Bytes,
    ledger: Arc<Ledger>,
    until: Instant,
    kind: ClientKind,
) -> anyhow::Result<(u64, u64)> {
    let mut conn = Conn::new(kind)?;
    let request = target.raw_request(&body)?;
    let (mut reconnects, mut errors) = (0, 0);
    while Instant::now() < until {
        let floor = ledger.floor();
        match conn.post(&target, &body, &request, &mut reconnects).await {
            Ok((status, bytes)) => match check(Shape::Metrics, status, &bytes) {
                Ok(c) => ledger.judge(floor, c.total),
                Err(_) => errors += 1,
            },
            Err(_) => errors += 1,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((ledger.checked.load(Ordering::Relaxed), errors))
}

/// One request, its answer checked; for set-up and the final count.
async fn once(target: &Target, body: Bytes, shape: Shape) -> anyhow::Result<Checked> {
    let mut conn = Conn::new(ClientKind::Hyper)?;
    let (status, bytes) = conn.post(target, &body, &Bytes::new(), &mut 0).await?;
    check(shape, status, &bytes).map_err(|e| anyhow::anyhow!(e))
}

/// A GraphQL request outside the load (set-up), with `reqwest`.
/// Posts a GraphQL request; its `data`, or an error with its `errors`.
pub(crate) async fn graphql(base: &str, token: &str, body: Value) -> anyhow::Result<Value> {
    let answer: Value = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    if !answer["errors"].is_null() {
        bail!("{}", answer["errors"]);
    }
    Ok(answer["data"].clone())
}

/// Busy and total CPU ticks of the whole machine (`/proc/stat`).
pub(crate) fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub async fn run(mut args: HttpArgs) -> anyhow::Result<()> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.ingest_rate > 0 && args.ingest_batch == 0 {
        bail!("--ingest-batch must be at least 1");
    }
    // The cache setting comes first, so `--server-env` may still override it.
    let cache_on = if args.mode == Mode::Uncached {
        "0"
    } else {
        "1"
    };
    args.server
        .server_env
        .insert(0, ("PULSE_HOT_CACHE".into(), cache_on.into()));

    let t = Instant::now();
    args.server.seed_demo().await?;
    println!(
        "http: demo data ready in {:.1} s (pulse seed-demo)",
        t.elapsed().as_secs_f64()
    );
    raise_limits(&args.server.database_url, &[args.tenant.as_str()]).await?;
    let user = args
        .user
        .clone()
        .unwrap_or_else(|| format!("viewer@{}.example", args.tenant));
    let token = if user == "service" {
        args.server.token(&args.tenant, "VIEWER").await?
    } else {
        args.server
            .token_for(&args.tenant, "VIEWER", Some(&user))
            .await?
    };
    let editor = args
        .server
        .token_for(
            &args.tenant,
            "EDITOR",
            Some(&format!("editor@{}.example", args.tenant)),
        )
        .await?;

    let (server, base) = match &args.external {
        Some(url) => (None, url.trim_end_matches('/').to_owned()),
        None => {
            let server = args.server.start().await?;
            let base = server.base.clone();
            (Some(server), base)
        }
    };
    let result = scenario(&args, &base, &token, &editor, server.as_ref()).await;
    if let Some(server) = server {
        server.stop().await?;
    }
    result
}

async fn scenario(
    args: &HttpArgs,
    base: &str,
    token: &str,
    editor: &str,
    server: Option<&crate::server::Server>,
) -> anyhow::Result<()> {
    let days = whole_days();
    let days_json = range_json(days.0, days.1);
    let range = match args.range {
        RangeKind::Days => days_json.clone(),
        RangeKind::Last30d => json!({ "last": "30d" }),
    };
    let target = Arc::new(Target::new(base, token)?);
    let check_body = metrics_body(&args.event_type, &days_json);

    // The body of the load, and the dashboard made for the run (deleted
    // at the end).
    let mut made = None;
    let (body, shape, own_answers_checkable) = match args.mode {
        Mode::Cached | Mode::Uncached => (
            metrics_body(&args.event_type, &range),
            Shape::Metrics,
            args.range == RangeKind::Days,
        ),
        Mode::Dashboard => {
            let id = match &args.dashboard {
                Some(name) => {
                    let listed = graphql(
                        base,
                        token,
                        json!({ "query": "{ dashboards(first: 100) { edges { node { id name } } } }" }),
                    )
                    .await?;
                    listed["dashboards"]["edges"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|e| e["node"]["name"] == name.as_str())
                        .and_then(|e| e["node"]["id"].as_str())
                        .map(str::to_owned)
                        .with_context(|| format!("no dashboard {name:?} for {}", args.tenant))?
                }
                None => {
                    let name = format!(
                        "pulse-bench http {}",
                        &uuid::Uuid::new_v4().simple().to_string()[..8]
                    );
                    let input = cacheable_dashboard(&name, &args.event_type, &range);
                    let created = graphql(
                        base,
                        editor,
                        json!({ "query": "mutation($i: DashboardInput!) { createDashboard(input: $i) { id } }",
                                "variables": { "i": input } }),
                    )
                    .await
                    .context("creating the bench dashboard")?;
                    let id = created["createDashboard"]["id"]
                        .as_str()
                        .context("no dashboard id")?
                        .to_owned();
                    made = Some(id.clone());
                    id
                }
            };
            (
                dashboard_body(&id),
                Shape::Dashboard,
                args.dashboard.is_none() && args.range == RangeKind::Days,
            )
        }
    };

    let result = drive(
        args,
        base,
        editor,
        target,
        body,
        shape,
        own_answers_checkable,
        check_body,
        days,
        server,
    )
    .await;
    if let Some(id) = made {
        let deleted = graphql(
            base,
            editor,
            json!({ "query": "mutation($id: ID!) { deleteDashboard(id: $id) }",
                    "variables": { "id": id } }),
        )
        .await;
        if let Err(e) = deleted {
            eprintln!("could not delete the bench dashboard {id}: {e:#}");
        }
    }
    result
}

#[expect(
    clippy::too_many_arguments,
    reason = "the scenario's parts, passed once"
)]
async fn drive(
    args: &HttpArgs,
    base: &str,
    editor: &str,
    target: Arc<Target>,
    body: Bytes,
    shape: Shape,
    own_answers_checkable: bool,
    check_body: Bytes,
    days: (DateTime<Utc>, DateTime<Utc>),
    server: Option<&crate::server::Server>,
) -> anyhow::Result<()> {
    // The counted query's total before anything is ingested.
    let baseline = once(&target, check_body.clone(), Shape::Metrics)
        .await
        .context("the baseline query")?
        .total
        .unwrap_or(0.0);
    let ledger = Arc::new(Ledger::new(baseline));
    let ingesting = args.ingest_rate > 0;

    println!(
        "http: mode {:?}, range {:?}, {} connections ({:?} client), warm-up {:?}, {}, \
         ingest {} events/s in batches of {}, tenant {}, server {base}",
        args.mode,
        args.range,
        args.connections,
        args.client,
        args.warmup,
        match args.requests {
            Some(n) => format!("{n} timed requests"),
            None => format!("timed {:?}", args.duration),
        },
        args.ingest_rate,
        args.ingest_batch,
        args.tenant,
    );
    println!(
        "  counted: {} over [{}, {}): {baseline} events before the run; load average {}",
        args.event_type,
        days.0.format("%Y-%m-%d"),
        days.1.format("%Y-%m-%d"),
        load_average()
    );

    let started = Instant::now();
    let from = started + args.warmup;
    let (until, budget) = match args.requests {
        Some(n) => (
            started + Duration::from_secs(365 * 24 * 3600),
            Some(AtomicU64::new(n)),
        ),
        None => (from + args.duration, None),
    };
    let load = Arc::new(Load {
        target: target.clone(),
        request: target.raw_request(&body)?,
        body,
        shape,
        ledger: own_answers_checkable.then(|| ledger.clone()),
        window: Window {
            from,
            until,
            budget,
        },
    });

    // With `--requests` the end is not known in advance: the side tasks
    // are aborted when the load ends (below).
    let ingest_task = ingesting.then(|| {
        tokio::spawn(ingest(
            args.ingest_rate,
            args.ingest_batch,
            until,
            format!("{base}/v1/events"),
            editor.to_owned(),
            args.event_type.clone(),
            days,
            ledger.clone(),
        ))
    });
    let checker_task = (ingesting && !own_answers_checkable).then(|| {
        tokio::spawn(checker(
            target.clone(),
            check_body.clone(),
            ledger.clone(),
            until,
            args.client,
        ))
    });

    let mut workers = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        workers.push(tokio::spawn(worker(load.clone(), Conn::new(args.client)?)));
    }

    // CPU over the timed window: sampled at its start and at its end (with
    // `--requests`, when the last worker is done).
    tokio::time::sleep_until(from.into()).await;
    let cpu_self_0 = cpu_seconds_of("self")?;
    let cpu_server_0 = server.map(|s| s.cpu_seconds()).transpose()?;
    let machine_0 = machine_ticks();
    let t0 = Instant::now();
    let mut results = Vec::with_capacity(workers.len());
    let elapsed = match args.requests {
        Some(_) => {
            for w in workers.drain(..) {
                results.push(w.await);
            }
            t0.elapsed()
        }
        None => {
            tokio::time::sleep_until(until.into()).await;
            args.duration
        }
    }
    .as_secs_f64();
    let cpu_self = (cpu_seconds_of("self")? - cpu_self_0) / elapsed;
    let cpu_server = match (server, cpu_server_0) {
        (Some(s), Some(c0)) => Some((s.cpu_seconds()? - c0) / elapsed),
        _ => None,
    };
    let machine = match (machine_0, machine_ticks()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            Some((b1 - b0) as f64 / (t1 - t0) as f64 * cores)
        }
        _ => None,
    };
    for w in workers {
        results.push(w.await);
    }

    let mut total = LoadReport::default();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for w in results {
        let (r, h) = w??;
        hist.add(&h)?;
        total.timed += r.timed;
        total.all += r.all;
        total.errors += r.errors;
        total.reconnects += r.reconnects;
        total.metric_parts += r.metric_parts;
        total.cached_parts += r.cached_parts;
        total.samples.extend(r.samples);
    }

    // Side tasks end on their own at `until`; with `--requests` the load
    // may end first, and they would run on: abort them then.
    let mut ingest_report = None;
    if let Some(task) = ingest_task {
        if args.requests.is_some() {
            task.abort();
        } else {
            ingest_report = Some(task.await??);
        }
    }
    let checker_report = match checker_task {
        Some(task) if args.requests.is_none() => Some(task.await??),
        Some(task) => {
            task.abort();
            None
        }
        None => None,
    };

    let ms = |v: u64| v as f64 / 1000.0;
    println!(
        "  requests: {} timed in {elapsed:.1} s = {:.0} requests/s; {} in all (warm-up included)",
        total.timed,
        total.timed as f64 / elapsed,
        total.all
    );
    println!(
        "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(hist.value_at_quantile(0.50)),
        ms(hist.value_at_quantile(0.90)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.value_at_quantile(0.999)),
        ms(hist.max())
    );
    println!(
        "  answers with errors: {} (reconnects {}); metric answers served whole from the cache: {} of {} ({:.1} %)",
        total.errors,
        total.reconnects,
        total.cached_parts,
        total.metric_parts,
        100.0 * total.cached_parts as f64 / total.metric_parts.max(1) as f64
    );
    for s in &total.samples {
        println!("    e.g. {s}");
    }
    println!(
        "  CPU (cores, timed window): server {}, load generator {cpu_self:.2}, whole machine {}; load average {}",
        cpu_server.map_or("-".into(), |c| format!("{c:.2}")),
        machine.map_or("-".into(), |c| format!("{c:.2}")),
        load_average()
    );

    let mut failed = total.errors > 0;
    if args.mode == Mode::Uncached && total.cached_parts > 0 {
        // A server binary without `PULSE_HOT_CACHE` would serve from the
        // cache anyway: the comparison would be void.
        println!("  **the server answered from the hot cache although PULSE_HOT_CACHE=0**");
        failed = true;
    }
    if let Some((report, ack)) = &ingest_report {
        println!(
            "  ingest: {} batches of {}, {} acknowledged ({} events), {} failed; ack latency ms p50 {:.1} p99 {:.1} max {:.1}",
            report.batches,
            args.ingest_batch,
            report.acked_batches,
            report.events_acked,
            report.failed_batches,
            ms(ack.value_at_quantile(0.5)),
            ms(ack.value_at_quantile(0.99)),
            ms(ack.max())
        );
        for s in &report.samples {
            println!("    e.g. {s}");
        }
        failed |= report.failed_batches > 0;
        // Every batch is answered: the total must now be exact.
        let acked = ledger.acked.load(Ordering::SeqCst);
        let sent = ledger.sent.load(Ordering::SeqCst);
        let last = once(&target, check_body.clone(), Shape::Metrics)
            .await?
            .total
            .unwrap_or(0.0);
        let expected = baseline + acked as f64;
        let exact = if report.failed_batches == 0 {
            last == expected
        } else {
            last >= expected && last <= baseline + sent as f64
        };
        println!(
            "  after the run: {last} {} counted, expected {expected} (baseline {baseline} + {acked} acknowledged in range): {}",
            args.event_type,
            if exact { "ok" } else { "**MISMATCH**" }
        );
        failed |= !exact;
    }
    if own_answers_checkable || checker_report.is_some() {
        let how = if own_answers_checkable {
            "every answer of the load"
        } else {
            "a checker (the counted query over the whole days, every 10 ms)"
        };
        println!(
            "  read-your-writes, {how}: {} answers checked, {} below the acknowledged count, {} above the sent count",
            ledger.checked.load(Ordering::Relaxed),
            ledger.stale.load(Ordering::Relaxed),
            ledger.phantom.load(Ordering::Relaxed),
        );
        if let Some((_, errors)) = checker_report
            && errors > 0
        {
            println!("    checker answers with errors: {errors}");
            failed = true;
        }
        if let Ok(samples) = ledger.samples.lock() {
            for s in samples.iter() {
                println!("    e.g. {s}");
            }
        }
        failed |= ledger.violations() > 0;
    }
    println!(
        "  row: | {:?} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
        args.mode,
        args.connections,
        args.ingest_rate,
        total.timed as f64 / elapsed,
        ms(hist.value_at_quantile(0.50)),
        ms(hist.value_at_quantile(0.90)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.max()),
        total.errors,
        ledger.violations(),
    );
    if failed {
        bail!("the run had errors or read-your-writes violations (see above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_units_of_the_flags() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn limits_replace_the_old_ones_and_keep_the_other_settings() {
        let old = r#"{"retention_days": 90, "limits": {"queries": {"perUser": 5}}}"#;
        let s = with_generous_limits(Some(old)).expect("valid");
        assert_eq!(s["retention_days"], 90);
        assert!(s["limits"]["queries"].get("perUser").is_none());
        assert_eq!(s["limits"]["queries"]["per_user"], 100_000_000);
        assert_eq!(
            s["limits"]["budget"]["per_minute"],
            1_000_000_000_000_000u64
        );
        // The server's largest accepted limit is 2^50.
        let limits = generous_limits();
        let numbers: Vec<u64> = ["queries", "mutations", "ingestion", "budget"]
            .iter()
            .flat_map(|k| limits[*k].as_object().into_iter().flat_map(|o| o.values()))
            .filter_map(Value::as_u64)
            .collect();
        assert_eq!(numbers.len(), 8);
        assert!(numbers.iter().all(|&n| n <= 1 << 50));
    }

    #[test]
    fn answers_with_errors_or_without_data_fail_the_check() {
        let good = br#"{"data":{"metrics":{"total":3,"cached":true,"series":[{"points":[{"bucket":"x","value":3}]}]}}}"#;
        let c = check(Shape::Metrics, 200, good).expect("good");
        assert_eq!((c.total, c.cached_parts), (Some(3.0), 1));
        assert!(
            check(
                Shape::Metrics,
                200,
                br#"{"data":null,"errors":[{"message":"x"}]}"#
            )
            .is_err()
        );
        assert!(check(Shape::Metrics, 200, br#"{"data":{"metrics":null}}"#).is_err());
        assert!(check(Shape::Metrics, 429, good).is_err());
        let dash = br#"{"data":{"dashboard":{"widgets":[{"data":{"total":1,"cached":false,"series":[{"points":[1]}]}},{"data":{"steps":[]}}]}}}"#;
        let c = check(Shape::Dashboard, 200, dash).expect("good");
        assert_eq!((c.metric_parts, c.cached_parts, c.total), (1, 0, Some(1.0)));
        assert!(
            check(
                Shape::Dashboard,
                200,
                br#"{"data":{"dashboard":{"widgets":[{"data":null}]}}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn the_ledger_flags_stale_and_phantom_totals() {
        let l = Ledger::new(10.0);
        l.sent.store(5, Ordering::SeqCst);
        l.acked.store(3, Ordering::SeqCst);
        let floor = l.floor();
        l.judge(floor, Some(13.0));
        l.judge(floor, Some(15.0));
        assert_eq!(l.violations(), 0);
        l.judge(floor, Some(12.0));
        l.judge(floor, Some(16.0));
        assert_eq!(
            (
                l.stale.load(Ordering::Relaxed),
                l.phantom.load(Ordering::Relaxed)
            ),
            (1, 1)
        );
    }
}
