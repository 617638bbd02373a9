//! Scenario `subscribe`: live metrics over WebSocket subscriptions.
//!
//! `--subscribers` WebSockets (default 10,000) on `/graphql/ws`
//! (`graphql-transport-ws`), one `metricUpdated` subscription each, spread
//! over `--tenants` tenants (default 10, `bench-sub-0`, … made for the run
//! with `pulse tenant create`) and `--queries-per-tenant` distinct queries
//! per tenant (default 10): query `j` is COUNT of event type `bench_{j}`
//! by HOUR over `{last: "24h"}`, and subscriber `i` watches query
//! `(i / tenants) % queries` of tenant `i % tenants`. The sockets are
//! opened `--concurrency` at a time (default 200; an opening ends with the
//! `connection_ack`), and the set-up reports connections per second.
//!
//! Once every subscriber has its first message (the current value,
//! `sequence` 1), ingestion runs for `--duration` (default 30 s): each
//! second, one event per tenant is POSTed to `/v1/events` (type
//! `bench_{s % queries}` in second `s`, timestamped now, with the tenant's
//! service EDITOR token), and the instant its `202` arrives is kept. The
//! `m`-th acknowledged event of a (tenant, query) is delivered to one of
//! its subscribers by the first message whose total is at least `m` above
//! the first message's; delivery latency is that message's arrival minus
//! the `m`-th `202` (HDR histogram). After the last `202` the subscribers
//! have `--grace` (default 10 s) to catch up; what has not arrived by then
//! is missed. Each later message must carry the previous `sequence` + 1
//! and a higher total.
//!
//! `/metrics` is read (with `PULSE_METRICS_TOKEN` as bearer when that is
//! set, as in the `dashboard` scenario) just before ingestion and after
//! the grace period: the delta of `pulse_live_recomputations_total` is held
//! against the ingests of subscribed queries (each ingest changes exactly
//! one distinct query, so they should be equal). The server's CPU and its
//! RSS (`VmRSS`, sampled every second) are reported when the bench started
//! the server or was given its pid (`--server-pid`).
//!
//! The load generator shares the two cores with the server: one task per
//! socket, a 4 KiB read buffer per socket, and frames read into borrowed
//! structs that hold only `type`, `sequence` and `total`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::http::{load_average, machine_ticks, parse_duration, raise_limits};
use crate::server::{ServerArgs, cpu_seconds_of, rss_mib_of};

#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// WebSocket connections, one subscription each.
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: usize,
    /// Tenants made for the run (`bench-sub-0`, …); subscriber `i` is in
    /// tenant `i % tenants`.
    #[arg(long, default_value_t = 10)]
    pub tenants: usize,
    /// Distinct metric queries per tenant (COUNT of `bench_{j}` by HOUR
    /// over the last 24 h).
    #[arg(long, default_value_t = 10)]
    pub queries_per_tenant: usize,
    /// How long ingestion runs: one event per tenant per second (`30s`,
    /// `2m`).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Sockets being opened at once during the set-up.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// After the last `202`: how long changes may still arrive before the
    /// ones missing count as missed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,
    /// How long the whole set-up (every socket open, every first message)
    /// may take.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub setup_timeout: Duration,
    /// Subscribe to a server that is already running (`http://host:port`)
    /// instead of starting one; it must use the bench JWT secret and
    /// `--database-url`'s database.
    #[arg(long)]
    pub external: Option<String>,
    /// With `--external`: the server's process id, for its CPU and RSS.
    #[arg(long, requires = "external")]
    pub server_pid: Option<u32>,
}

/// Tenant `t` of the run is `bench-sub-{t}`.
const TENANT_PREFIX: &str = "bench-sub-";

const SUBSCRIPTION: &str =
    "subscription($q: MetricQueryInput!){ metricUpdated(query: $q){ sequence total } }";

/// The server's counter of live recomputations.
const RECOMPUTATIONS: &str = "pulse_live_recomputations_total";

/// The server's defaults for `PULSE_WS_MAX_CONNECTIONS_PER_TENANT` and
/// `PULSE_MAX_SUBSCRIPTIONS_PER_TENANT` (`src/config.rs`): a run with more
/// subscribers per tenant raises them for the server it starts.
const SERVER_CONNECTIONS_PER_TENANT: usize = 2_000;
const SERVER_SUBSCRIPTIONS_PER_TENANT: usize = 5_000;

/// Upgrade, and then `connection_ack`, each within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The RSS target of the issue, in MB (10^6 bytes).
const RSS_TARGET_MB: f64 = 600.0;

/// Set in a subscriber's progress once its socket has ended.
const ENDED: u64 = 1 << 63;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn tenant_slug(t: usize) -> String {
    format!("{TENANT_PREFIX}{t}")
}

/// Query `j` of every tenant.
fn metric_query(j: usize) -> Value {
    json!({ "measure": "COUNT", "eventTypes": [format!("bench_{j}")],
            "granularity": "HOUR", "range": { "last": "24h" } })
}

/// Subscriber `i`'s tenant and query.
fn placement(i: usize, tenants: usize, queries: usize) -> (usize, usize) {
    (i % tenants, (i / tenants) % queries)
}

fn init_frame(token: &str) -> Utf8Bytes {
    json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } })
        .to_string()
        .into()
}

fn subscribe_frame(j: usize) -> Utf8Bytes {
    json!({ "id": "1", "type": "subscribe",
            "payload": { "query": SUBSCRIPTION, "variables": { "q": metric_query(j) } } })
    .to_string()
    .into()
}

const PONG: &str = r#"{"type":"pong"}"#;

// Frames, read without building a `Value`: 10,000 sockets share the two
// cores with the server.

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    payload: Option<NextPayload>,
}

#[derive(Deserialize)]
struct NextPayload {
    data: Option<NextData>,
    errors: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct NextData {
    #[serde(rename = "metricUpdated")]
    metric_updated: Option<Update>,
}

#[derive(Deserialize)]
struct Update {
    sequence: Option<u64>,
    total: Option<f64>,
}

#[derive(Debug, PartialEq)]
enum Incoming {
    Ack,
    Next {
        sequence: Option<u64>,
        total: f64,
    },
    Ping,
    Pong,
    /// An `error`, a `complete`, a `next` with errors, or anything unread.
    Failed(String),
}

fn excerpt(text: &str) -> String {
    text.chars().take(300).collect()
}

fn parse(text: &str) -> Incoming {
    let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
        // An `error` frame's payload is a list: it lands here too.
        return Incoming::Failed(excerpt(text));
    };
    match frame.kind {
        "next" => match frame.payload {
            Some(NextPayload {
                data:
                    Some(NextData {
                        metric_updated: Some(u),
                    }),
                errors: None,
            }) => Incoming::Next {
                sequence: u.sequence,
                // COUNT over no events may be null: nothing counted.
                total: u.total.unwrap_or(0.0),
            },
            _ => Incoming::Failed(excerpt(text)),
        },
        "connection_ack" => Incoming::Ack,
        "ping" => Incoming::Ping,
        "pong" => Incoming::Pong,
        "complete" => Incoming::Failed("the server completed the subscription".into()),
        _ => Incoming::Failed(excerpt(text)),
    }
}

/// Changes a total `delta` above the first message stands for.
fn changes(delta: f64) -> u64 {
    if delta > 0.0 { delta.round() as u64 } else { 0 }
}

/// What every subscriber task shares.
struct Shared {
    url: String,
    config: WebSocketConfig,
    gate: Semaphore,
    /// Per tenant: its `connection_init` frame.
    inits: Vec<Utf8Bytes>,
    /// Per query: its `subscribe` frame.
    subscribes: Vec<Utf8Bytes>,
    /// Per subscriber: changes seen so far, [`ENDED`] once the socket is.
    progress: Vec<AtomicU64>,
    setup: mpsc::UnboundedSender<Setup>,
}

/// A subscriber's set-up, as it goes.
enum Setup {
    Acked(Instant),
    First,
    Failed(String),
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    /// The first message's sequence and total.
    first: Option<(Option<u64>, f64)>,
    /// Every later message: sequence, total, arrival.
    updates: Vec<(Option<u64>, f64, Instant)>,
    /// Why the socket ended before the run did (or never opened).
    error: Option<String>,
}

async fn subscriber(
    index: usize,
    (tenant, query): (usize, usize),
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen::default();
    let progress = &shared.progress[index];
    let mut ws = match open(tenant, query, &shared).await {
        Ok(ws) => ws,
        Err(e) => {
            let e = format!("{e:#}");
            let _ = shared.setup.send(Setup::Failed(e.clone()));
            seen.error = Some(e);
            progress.fetch_or(ENDED, Ordering::SeqCst);
            return seen;
        }
    };
    let ended: Result<(), String> = loop {
        tokio::select! {
            msg = ws.next() => {
                let at = Instant::now();
                let text = match msg {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        break Err(match frame {
                            Some(f) => format!("the server closed the socket: {} {}", f.code, f.reason),
                            None => "the server closed the socket".into(),
                        });
                    }
                    // WebSocket pings are answered by tungstenite itself.
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Err(format!("socket: {e}")),
                    None => break Err("the socket ended".into()),
                };
                match parse(&text) {
                    Incoming::Next { sequence, total } => match seen.first {
                        None => {
                            seen.first = Some((sequence, total));
                            let _ = shared.setup.send(Setup::First);
                        }
                        Some((_, base)) => {
                            seen.updates.push((sequence, total, at));
                            progress.fetch_max(changes(total - base), Ordering::SeqCst);
                        }
                    },
                    Incoming::Ping => {
                        if let Err(e) = ws.send(Message::text(PONG)).await {
                            break Err(format!("answering a ping: {e}"));
                        }
                    }
                    Incoming::Ack | Incoming::Pong => {}
                    Incoming::Failed(e) => break Err(e),
                }
            }
            _ = stop.changed() => break Ok(()),
        }
    };
    match ended {
        Ok(()) => {
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        }
        Err(e) => {
            if seen.first.is_none() {
                let _ = shared.setup.send(Setup::Failed(e.clone()));
            }
            seen.error = Some(e);
            progress.fetch_or(ENDED, Ordering::SeqCst);
        }
    }
    seen
}

/// Opens the socket, initialises it and subscribes; the gate bounds the
/// sockets being opened at once, up to their `connection_ack`.
async fn open(tenant: usize, query: usize, shared: &Shared) -> anyhow::Result<Ws> {
    let permit = shared.gate.acquire().await?;
    let mut request = shared.url.as_str().into_client_request()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let (mut ws, _) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, Some(shared.config), true),
    )
    .await
    .context("no upgrade within 30 s")?
    .context("upgrade")?;
    ws.send(Message::Text(shared.inits[tenant].clone())).await?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => match parse(&text) {
                    Incoming::Ack => return anyhow::Ok(()),
                    Incoming::Ping => ws.send(Message::text(PONG)).await?,
                    Incoming::Pong => {}
                    Incoming::Next { .. } => bail!("a `next` before connection_ack"),
                    Incoming::Failed(e) => bail!("{e}"),
                },
                Some(Ok(Message::Close(frame))) => bail!(
                    "closed before connection_ack: {}",
                    frame.map_or_else(|| "no code".into(), |f| format!("{} {}", f.code, f.reason))
                ),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the socket ended before connection_ack"),
            }
        }
    })
    .await
    .context("no connection_ack within 30 s")??;
    let _ = shared.setup.send(Setup::Acked(Instant::now()));
    drop(permit);
    ws.send(Message::Text(shared.subscribes[query].clone()))
        .await?;
    Ok(ws)
}

/// One ingested event: which (tenant, query), when it left, and when its
/// `202` arrived (or why it failed).
struct Posted {
    tenant: usize,
    query: usize,
    sent: Instant,
    acked: Result<Instant, String>,
}

#[derive(Deserialize)]
struct Counts {
    accepted: u64,
    duplicates: u64,
}

async fn post_event(
    client: reqwest::Client,
    url: Arc<str>,
    token: Arc<str>,
    tenant: usize,
    query: usize,
) -> Posted {
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let body = format!(
        r#"[{{"id":"{}","type":"bench_{query}","timestamp":"{at}"}}]"#,
        uuid::Uuid::new_v4()
    );
    let sent = Instant::now();
    let acked = async {
        let response = client
            .post(&*url)
            .bearer_auth(&*token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("transport: {e}"))?;
        // The status line is in: this is the instant the 202 arrived.
        let arrived = Instant::now();
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        let text = String::from_utf8_lossy(&bytes);
        if status != reqwest::StatusCode::ACCEPTED {
            return Err(format!("HTTP {status}: {}", excerpt(&text)));
        }
        match serde_json::from_slice::<Counts>(&bytes) {
            Ok(Counts {
                accepted: 1,
                duplicates: 0,
            }) => Ok(arrived),
            _ => Err(format!("202 with {}", excerpt(&text))),
        }
    }
    .await;
    Posted {
        tenant,
        query,
        sent,
        acked,
    }
}

/// One event per tenant per second for `duration`, each POST in its own
/// task (open loop); then waits for every answer.
async fn ingest(
    base: &str,
    tokens: &[Arc<str>],
    queries: usize,
    duration: Duration,
) -> anyhow::Result<Vec<Posted>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(tokens.len())
        .build()?;
    let url: Arc<str> = format!("{base}/v1/events").into();
    let seconds = (duration.as_secs_f64().ceil() as usize).max(1);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..seconds {
        tick.tick().await;
        for (tenant, token) in tokens.iter().enumerate() {
            tasks.spawn(post_event(
                client.clone(),
                url.clone(),
                token.clone(),
                tenant,
                s % queries,
            ));
        }
    }
    let mut posted = Vec::with_capacity(seconds * tokens.len());
    while let Some(p) = tasks.join_next().await {
        posted.push(p?);
    }
    Ok(posted)
}

/// Every series of `/metrics` whose name starts with `prefix`, summed over
/// its labels.
fn series(text: &str, prefix: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.starts_with(prefix) {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let rest = match line[name_end..].rsplit_once('}') {
            Some((_, rest)) => rest,
            None => &line[name_end..],
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *sums.entry(line[..name_end].to_owned()).or_insert(0.0) += v;
        }
    }
    sums
}

/// The live and socket series of `/metrics`, or why they could not be read.
async fn scrape(base: &str, token: Option<&str>) -> Result<BTreeMap<String, f64>, String> {
    let mut request = reqwest::Client::new().get(format!("{base}/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!(
            "/metrics answered {} (is PULSE_METRICS_TOKEN set for the server only?)",
            response.status()
        ));
    }
    let text = response.text().await.map_err(|e| e.to_string())?;
    let mut all = series(&text, "pulse_live_");
    all.extend(series(&text, "pulse_ws_"));
    Ok(all)
}

/// The soft limit on open files of process `pid` (or `self`).
fn open_files_limit(pid: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// The largest RSS (KiB) seen of the server and of the load generator.
#[derive(Default)]
struct RssPeaks {
    server: AtomicU64,
    own: AtomicU64,
}

fn kib(mib: f64) -> u64 {
    (mib * 1024.0) as u64
}

/// Samples both RSSs every second until aborted.
async fn sample_rss(pid: Option<u32>, peaks: Arc<RssPeaks>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Some(Ok(mib)) = pid.map(|p| rss_mib_of(&p.to_string())) {
            peaks.server.fetch_max(kib(mib), Ordering::Relaxed);
        }
        if let Ok(mib) = rss_mib_of("self") {
            peaks.own.fetch_max(kib(mib), Ordering::Relaxed);
        }
    }
}

/// Server and load-generator CPU seconds so far, and the machine's ticks.
struct Cpu {
    server: Option<f64>,
    own: f64,
    machine: Option<(u64, u64)>,
    at: Instant,
}

impl Cpu {
    fn now(pid: Option<u32>) -> anyhow::Result<Self> {
        Ok(Cpu {
            server: pid.map(|p| cpu_seconds_of(&p.to_string())).transpose()?,
            own: cpu_seconds_of("self")?,
            machine: machine_ticks(),
            at: Instant::now(),
        })
    }

    /// From `self` to `later`: seconds, server and own CPU seconds, and
    /// the machine's busy cores.
    fn until(&self, later: &Cpu) -> (f64, Option<f64>, f64, Option<f64>) {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        let machine = match (self.machine, later.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
                Some((b1 - b0) as f64 / (t1 - t0) as f64 * cores)
            }
            _ => None,
        };
        (
            wall,
            self.server.zip(later.server).map(|(a, b)| b - a),
            later.own - self.own,
            machine,
        )
    }
}

fn cpu_line(label: &str, from: &Cpu, to: &Cpu) -> String {
    let (wall, server, own, machine) = from.until(to);
    let cores = |s: f64| s / wall.max(1e-9);
    format!(
        "{label} ({wall:.1} s): server {}, load generator {own:.1} s ({:.2} cores), whole machine {}",
        server.map_or("-".into(), |s| format!("{s:.1} s ({:.2} cores)", cores(s))),
        cores(own),
        machine.map_or("-".into(), |c| format!("{c:.2} cores")),
    )
}

/// The set-up, as the main task saw it.
struct SetupFigures {
    acked: usize,
    first: usize,
    failed: usize,
    /// Until the last `connection_ack`, and until the last first message.
    to_last_ack: Duration,
    to_last_first: Duration,
    samples: Vec<String>,
}

async fn await_setup(
    events: &mut mpsc::UnboundedReceiver<Setup>,
    n: usize,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<SetupFigures> {
    let mut f = SetupFigures {
        acked: 0,
        first: 0,
        failed: 0,
        to_last_ack: Duration::ZERO,
        to_last_first: Duration::ZERO,
        samples: Vec::new(),
    };
    let deadline = started + timeout;
    while f.first + f.failed < n {
        let event = tokio::time::timeout_at(deadline.into(), events.recv()).await;
        match event {
            Ok(Some(Setup::Acked(at))) => {
                f.acked += 1;
                f.to_last_ack = f.to_last_ack.max(at.duration_since(started));
            }
            Ok(Some(Setup::First)) => {
                f.first += 1;
                f.to_last_first = started.elapsed();
            }
            Ok(Some(Setup::Failed(e))) => {
                f.failed += 1;
                if f.samples.len() < 5 {
                    f.samples.push(e);
                }
            }
            Ok(None) => bail!("the subscribers' set-up channel closed"),
            Err(_) => bail!(
                "set-up not done within {timeout:?}: {} acknowledged, {} first messages, {} failed \
                 of {n}{}",
                f.acked,
                f.first,
                f.failed,
                f.samples
                    .first()
                    .map_or(String::new(), |s| format!("; e.g. {s}"))
            ),
        }
    }
    Ok(f)
}

/// The run's judgement of what the subscribers saw.
#[derive(Default)]
struct Tally {
    subscribed: u64,
    setup_failed: u64,
    /// Sockets that ended during the run.
    dropped: u64,
    expected: u64,
    delivered: u64,
    missed_subscribers: u64,
    updates: u64,
    /// Messages that delivered more than one change at once.
    coalesced: u64,
    /// A first message without sequence 1, or a later one not the
    /// previous + 1.
    sequence_errors: u64,
    /// A total not above the previous one, or above every acknowledged
    /// change.
    unexpected: u64,
    /// Changes whose message arrived before the client had read their 202
    /// (recorded as 1 µs).
    before_ack: u64,
    samples: Vec<String>,
}

impl Tally {
    fn sample(&mut self, s: String) {
        if self.samples.len() < 5 {
            self.samples.push(s);
        }
    }

    /// Judges one subscriber against the `202` instants of its (tenant,
    /// query), in order.
    fn add(&mut self, index: usize, seen: &Seen, acks: &[Instant], hist: &mut Histogram<u64>) {
        let Some((first_sequence, base)) = seen.first else {
            self.setup_failed += 1;
            return;
        };
        self.subscribed += 1;
        if let Some(e) = &seen.error {
            self.dropped += 1;
            self.sample(format!("subscriber {index} dropped: {e}"));
        }
        if first_sequence != Some(1) {
            self.sequence_errors += 1;
            self.sample(format!(
                "subscriber {index}: first message with sequence {first_sequence:?}"
            ));
        }
        let (mut sequence, mut last_total, mut got) = (first_sequence, base, 0usize);
        for &(s, total, at) in &seen.updates {
            self.updates += 1;
            let next = sequence.and_then(|p| p.checked_add(1));
            if s.is_none() || s != next {
                self.sequence_errors += 1;
                self.sample(format!(
                    "subscriber {index}: sequence {s:?} after {sequence:?}"
                ));
            }
            sequence = s;
            let m = changes(total - base) as usize;
            if total <= last_total || m > acks.len() {
                self.unexpected += 1;
                self.sample(format!(
                    "subscriber {index}: total {total} after {last_total} (first {base}, {} \
                     changes acknowledged)",
                    acks.len()
                ));
            }
            last_total = total;
            let upto = m.min(acks.len());
            if upto > got + 1 {
                self.coalesced += 1;
            }
            for ack in acks.iter().take(upto).skip(got) {
                let micros = match at.checked_duration_since(*ack) {
                    Some(d) => d.as_micros().max(1) as u64,
                    None => {
                        self.before_ack += 1;
                        1
                    }
                };
                hist.saturating_record(micros);
            }
            got = got.max(upto);
        }
        self.expected += acks.len() as u64;
        self.delivered += got as u64;
        if got < acks.len() {
            self.missed_subscribers += 1;
        }
    }
}

pub async fn run(mut args: SubscribeArgs) -> anyhow::Result<()> {
    if args.subscribers == 0 || args.tenants == 0 || args.queries_per_tenant == 0 {
        bail!("--subscribers, --tenants and --queries-per-tenant must be at least 1");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    // Each socket is a descriptor here and one in the server.
    let needed = args.subscribers as u64 + 256;
    if let Some(limit) = open_files_limit("self")
        && limit < needed
    {
        bail!(
            "open files are limited to {limit} (ulimit -n); {} subscribers need about {needed} \
             here and as many in the server",
            args.subscribers
        );
    }
    // The server's per-tenant caps, when the run needs more than their
    // defaults (first, so `--server-env` may still override them).
    let per_tenant = args.subscribers.div_ceil(args.tenants);
    if per_tenant > SERVER_CONNECTIONS_PER_TENANT {
        args.server.server_env.insert(
            0,
            (
                "PULSE_WS_MAX_CONNECTIONS_PER_TENANT".into(),
                per_tenant.to_string(),
            ),
        );
    }
    if per_tenant > SERVER_SUBSCRIPTIONS_PER_TENANT {
        args.server.server_env.insert(
            0,
            (
                "PULSE_MAX_SUBSCRIPTIONS_PER_TENANT".into(),
                per_tenant.to_string(),
            ),
        );
    }

    let t = Instant::now();
    let slugs: Vec<String> = (0..args.tenants).map(tenant_slug).collect();
    for slug in &slugs {
        args.server
            .create_tenant(slug, &format!("Pulse bench {slug}"))
            .await?;
    }
    let slug_refs: Vec<&str> = slugs.iter().map(String::as_str).collect();
    raise_limits(&args.server.database_url, &slug_refs).await?;
    let mut viewers = Vec::with_capacity(args.tenants);
    let mut editors = Vec::with_capacity(args.tenants);
    for slug in &slugs {
        viewers.push(args.server.token(slug, "VIEWER").await?);
        editors.push(Arc::from(args.server.token(slug, "EDITOR").await?));
    }
    println!(
        "subscribe: {} tenants and their tokens ready in {:.1} s",
        args.tenants,
        t.elapsed().as_secs_f64()
    );

    let (server, base, pid) = match &args.external {
        Some(url) => (None, url.trim_end_matches('/').to_owned(), args.server_pid),
        None => {
            let server = args.server.start().await?;
            let (base, pid) = (server.base.clone(), Some(server.pid()));
            (Some(server), base, pid)
        }
    };
    if let Some(pid) = pid
        && let Some(limit) = open_files_limit(&pid.to_string())
        && limit < needed
    {
        println!(
            "  **the server may open only {limit} files; {} subscribers need about {needed}**",
            args.subscribers
        );
    }
    let result = scenario(&args, &base, &viewers, &editors, pid).await;
    if let Some(server) = server {
        server.stop().await?;
    }
    result
}

/// What happened between the set-up and the end of the grace period.
struct Measured {
    setup: SetupFigures,
    cpu_start: Cpu,
    cpu_setup: Cpu,
    cpu_ingest_start: Cpu,
    cpu_end: Cpu,
    rss_after_setup: Option<f64>,
    posted: Vec<Posted>,
    /// Per (tenant, query) slot: the `202` instants, in order.
    acks: Vec<Vec<Instant>>,
    caught_up: Option<Duration>,
    metrics_before: Result<BTreeMap<String, f64>, String>,
    metrics_after: Result<BTreeMap<String, f64>, String>,
}

async fn scenario(
    args: &SubscribeArgs,
    base: &str,
    viewers: &[String],
    editors: &[Arc<str>],
    pid: Option<u32>,
) -> anyhow::Result<()> {
    let (tenants, queries, n) = (args.tenants, args.queries_per_tenant, args.subscribers);
    let authority = base
        .strip_prefix("http://")
        .context("the server URL must be http://host:port")?;
    println!(
        "subscribe: {n} subscribers over {tenants} tenants × {queries} queries ({} distinct), \
         opened {} at a time; {:?} of ingestion (one event per tenant per second), grace {:?}; \
         server {base}{}; load average {}",
        tenants * queries,
        args.concurrency,
        args.duration,
        args.grace,
        pid.map_or(String::new(), |p| format!(" (pid {p})")),
        load_average()
    );

    let (setup_tx, mut setup_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        url: format!("ws://{authority}/graphql/ws"),
        config: WebSocketConfig::default()
            .read_buffer_size(4 << 10)
            .write_buffer_size(0),
        gate: Semaphore::new(args.concurrency),
        inits: viewers.iter().map(|t| init_frame(t)).collect(),
        subscribes: (0..queries).map(subscribe_frame).collect(),
        progress: (0..n).map(|_| AtomicU64::new(0)).collect(),
        setup: setup_tx,
    });
    let peaks = Arc::new(RssPeaks::default());
    let sampler = tokio::spawn(sample_rss(pid, peaks.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);

    let cpu_start = Cpu::now(pid)?;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(subscriber(
                i,
                placement(i, tenants, queries),
                shared.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    let measured = measure(args, base, editors, pid, &shared, &mut setup_rx, cpu_start).await;

    // Every socket is closed before the server is stopped, whatever
    // happened.
    let _ = stop_tx.send(true);
    // Sockets still waiting for their turn (a failed set-up) give up.
    shared.gate.close();
    let mut seen = Vec::with_capacity(n);
    for h in handles {
        seen.push(h.await.unwrap_or_else(|e| Seen {
            error: Some(format!("the subscriber's task failed: {e}")),
            ..Seen::default()
        }));
    }
    sampler.abort();
    report(args, measured?, &seen, &peaks)
}

async fn measure(
    args: &SubscribeArgs,
    base: &str,
    editors: &[Arc<str>],
    pid: Option<u32>,
    shared: &Shared,
    setup_rx: &mut mpsc::UnboundedReceiver<Setup>,
    cpu_start: Cpu,
) -> anyhow::Result<Measured> {
    let (tenants, queries) = (args.tenants, args.queries_per_tenant);
    let setup = await_setup(setup_rx, args.subscribers, cpu_start.at, args.setup_timeout).await?;
    let cpu_setup = Cpu::now(pid)?;
    let rss_after_setup = pid.and_then(|p| rss_mib_of(&p.to_string()).ok());
    if setup.first == 0 {
        bail!(
            "no subscriber got its first message{}",
            setup
                .samples
                .first()
                .map_or(String::new(), |s| format!("; e.g. {s}"))
        );
    }
    println!(
        "  set-up: {} of {} sockets acknowledged in {:.1} s = {:.0} connections/s; every first \
         message after {:.1} s; {} failed",
        setup.acked,
        args.subscribers,
        setup.to_last_ack.as_secs_f64(),
        setup.acked as f64 / setup.to_last_ack.as_secs_f64().max(1e-9),
        setup.to_last_first.as_secs_f64(),
        setup.failed
    );

    let metrics_token = args.server.metrics_token();
    let metrics_before = scrape(base, metrics_token.as_deref()).await;
    let cpu_ingest_start = Cpu::now(pid)?;
    let posted = ingest(base, editors, queries, args.duration).await?;

    let mut acks = vec![Vec::new(); tenants * queries];
    let mut last_ack = None;
    for p in &posted {
        if let Ok(at) = p.acked {
            acks[p.tenant * queries + p.query].push(at);
            last_ack = last_ack.max(Some(at));
        }
    }
    for slot in &mut acks {
        slot.sort();
    }

    // The grace period: until every open socket has seen every change of
    // its query, or `--grace` after the last 202.
    let deadline = last_ack.unwrap_or_else(Instant::now) + args.grace;
    let caught_up = loop {
        let behind = shared
            .progress
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                let p = p.load(Ordering::SeqCst);
                let (t, q) = placement(*i, tenants, queries);
                p & ENDED == 0 && p < acks[t * queries + q].len() as u64
            })
            .count();
        if behind == 0 {
            break Some(last_ack.map_or(Duration::ZERO, |a| a.elapsed()));
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let metrics_after = scrape(base, metrics_token.as_deref()).await;
    let cpu_end = Cpu::now(pid)?;
    Ok(Measured {
        setup,
        cpu_start,
        cpu_setup,
        cpu_ingest_start,
        cpu_end,
        rss_after_setup,
        posted,
        acks,
        caught_up,
        metrics_before,
        metrics_after,
    })
}

fn report(
    args: &SubscribeArgs,
    m: Measured,
    seen: &[Seen],
    peaks: &RssPeaks,
) -> anyhow::Result<()> {
    let (tenants, queries) = (args.tenants, args.queries_per_tenant);
    let ms = |micros: u64| micros as f64 / 1000.0;
    for s in &m.setup.samples {
        println!("    e.g. {s}");
    }
    println!(
        "  {}",
        cpu_line("CPU during the set-up", &m.cpu_start, &m.cpu_setup)
    );

    // Ingestion.
    let mut ack_latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut failed, mut samples) = (0, Vec::new());
    for p in &m.posted {
        match &p.acked {
            Ok(at) => {
                ack_latency.saturating_record(at.duration_since(p.sent).as_micros().max(1) as u64)
            }
            Err(e) => {
                failed += 1;
                if samples.len() < 3 {
                    samples.push(e.clone());
                }
            }
        }
    }
    let acked = m.posted.len() - failed;
    println!(
        "  ingest: {} events posted, {acked} acknowledged (202), {failed} failed; 202 latency ms \
         p50 {:.1} p99 {:.1} max {:.1}",
        m.posted.len(),
        ms(ack_latency.value_at_quantile(0.5)),
        ms(ack_latency.value_at_quantile(0.99)),
        ms(ack_latency.max())
    );
    for s in &samples {
        println!("    e.g. {s}");
    }

    // Delivery.
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut tally = Tally::default();
    let mut watched = vec![false; tenants * queries];
    for (i, s) in seen.iter().enumerate() {
        let (t, q) = placement(i, tenants, queries);
        tally.add(i, s, &m.acks[t * queries + q], &mut hist);
        watched[t * queries + q] |= s.first.is_some();
    }
    println!(
        "  delivery latency ms (202 → subscriber's message, {} changes): p50 {:.1}  p95 {:.1}  \
         p99 {:.1}  max {:.1}",
        hist.len(),
        ms(hist.value_at_quantile(0.50)),
        ms(hist.value_at_quantile(0.95)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.max())
    );
    println!(
        "  changes: {} expected, {} delivered; subscribers that missed a change: {} of {} \
         ({} dropped during the run, {} never set up); {}",
        tally.expected,
        tally.delivered,
        tally.missed_subscribers,
        tally.subscribed,
        tally.dropped,
        tally.setup_failed,
        match m.caught_up {
            Some(d) => format!("all caught up {:.2} s after the last 202", d.as_secs_f64()),
            None => format!("not all caught up within {:?} of the last 202", args.grace),
        }
    );
    println!(
        "  messages after the first: {}; delivering more than one change: {}; sequence errors: \
         {}; unexpected totals: {}; arrived before their 202 was read: {}",
        tally.updates, tally.coalesced, tally.sequence_errors, tally.unexpected, tally.before_ack
    );
    for s in &tally.samples {
        println!("    e.g. {s}");
    }

    // Recomputations against ingests of watched queries.
    let watched_ingests = m
        .posted
        .iter()
        .filter(|p| p.acked.is_ok() && watched[p.tenant * queries + p.query])
        .count() as f64;
    let recomputations = match (&m.metrics_before, &m.metrics_after) {
        (Ok(before), Ok(after)) => match (before.get(RECOMPUTATIONS), after.get(RECOMPUTATIONS)) {
            (Some(b), Some(a)) => Ok(a - b),
            _ => Err(format!("{RECOMPUTATIONS} is absent from /metrics")),
        },
        (Err(e), _) | (_, Err(e)) => Err(e.clone()),
    };
    match &recomputations {
        Ok(r) => println!(
            "  recomputations ({RECOMPUTATIONS}): {r} during ingestion and grace, against \
             {watched_ingests} acknowledged ingests of subscribed queries: {}",
            if *r == watched_ingests {
                "equal"
            } else {
                "**not equal**"
            }
        ),
        Err(e) => println!("  recomputations: unknown ({e})"),
    }
    if let (Ok(before), Ok(after)) = (&m.metrics_before, &m.metrics_after) {
        let names: std::collections::BTreeSet<&String> =
            before.keys().chain(after.keys()).collect();
        for name in names.into_iter().filter(|n| n.as_str() != RECOMPUTATIONS) {
            let show = |v: Option<&f64>| v.map_or("-".into(), |v| v.to_string());
            println!(
                "    {name}: {} → {}",
                show(before.get(name)),
                show(after.get(name))
            );
        }
    }

    // Resources.
    println!(
        "  {}",
        cpu_line(
            "CPU during ingestion and grace",
            &m.cpu_ingest_start,
            &m.cpu_end
        )
    );
    let peak_server = peaks.server.load(Ordering::Relaxed) as f64 / 1024.0;
    let peak_own = peaks.own.load(Ordering::Relaxed) as f64 / 1024.0;
    let mb = |mib: f64| mib * 1_048_576.0 / 1e6;
    let server_rss = (peak_server > 0.0).then_some(peak_server);
    println!(
        "  RSS (VmRSS, sampled every second): server max {}, after the set-up {}; load generator \
         max {peak_own:.0} MiB; load average {}",
        server_rss.map_or("- (pid unknown)".into(), |r| format!(
            "{r:.0} MiB ({:.0} MB)",
            mb(r)
        )),
        m.rss_after_setup
            .map_or("-".into(), |r| format!("{r:.0} MiB")),
        load_average()
    );

    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "unknown",
    };
    let p99 = hist.value_at_quantile(0.99);
    println!(
        "  targets: p99 ≤ 1 s {}; every subscriber every change {}; recomputations = ingests {}; \
         server RSS ≤ {RSS_TARGET_MB:.0} MB {}",
        verdict((!hist.is_empty()).then_some(p99 <= 1_000_000)),
        verdict(Some(
            tally.missed_subscribers == 0 && tally.setup_failed == 0
        )),
        verdict(recomputations.as_ref().ok().map(|r| *r == watched_ingests)),
        verdict(server_rss.map(|r| mb(r) <= RSS_TARGET_MB)),
    );
    let (ingest_wall, server_cpu, _, _) = m.cpu_ingest_start.until(&m.cpu_end);
    let (setup_wall, setup_cpu, _, _) = m.cpu_start.until(&m.cpu_setup);
    println!(
        "  row: | {} | {}×{} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {}/{} | {} | {} | {} | {} | {} |",
        args.subscribers,
        tenants,
        queries,
        m.setup.acked as f64 / m.setup.to_last_ack.as_secs_f64().max(1e-9),
        m.setup.to_last_first.as_secs_f64(),
        ms(hist.value_at_quantile(0.50)),
        ms(hist.value_at_quantile(0.95)),
        ms(p99),
        ms(hist.max()),
        tally.delivered,
        tally.expected,
        tally.missed_subscribers,
        recomputations
            .as_ref()
            .map_or("?".into(), |r| format!("{r}/{watched_ingests}")),
        setup_cpu.map_or("-".into(), |c| format!(
            "{c:.1} s ({:.2})",
            c / setup_wall.max(1e-9)
        )),
        server_cpu.map_or("-".into(), |c| format!(
            "{c:.1} s ({:.2})",
            c / ingest_wall.max(1e-9)
        )),
        server_rss.map_or("-".into(), |r| format!("{r:.0}")),
    );
    println!(
        "    (columns: subscribers, tenants×queries, connections/s, s until every first \
         message, delivery p50/p95/p99/max ms, changes delivered/expected, subscribers that \
         missed one, recomputations/ingests, server CPU s (cores) at set-up and during \
         ingestion and grace, server max RSS MiB)"
    );

    if tally.setup_failed > 0
        || tally.dropped > 0
        || tally.missed_subscribers > 0
        || tally.sequence_errors > 0
        || tally.unexpected > 0
        || failed > 0
    {
        bail!("the run had failures (see above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_spread_evenly_over_tenants_and_queries() {
        let mut per_slot = vec![0; 10 * 10];
        for i in 0..10_000 {
            let (t, q) = placement(i, 10, 10);
            per_slot[t * 10 + q] += 1;
        }
        assert!(per_slot.iter().all(|&n| n == 100));
        assert_eq!(placement(13, 10, 10), (3, 1));
    }

    #[test]
    fn frames_are_read_for_their_type_sequence_and_total() {
        assert_eq!(parse(r#"{"type":"connection_ack"}"#), Incoming::Ack);
        assert_eq!(parse(r#"{"type":"ping","payload":{}}"#), Incoming::Ping);
        assert_eq!(
            parse(
                r#"{"id":"1","type":"next","payload":{"data":{"metricUpdated":{"sequence":3,"total":12}}}}"#
            ),
            Incoming::Next {
                sequence: Some(3),
                total: 12.0
            }
        );
        let failed = |text: &str| matches!(parse(text), Incoming::Failed(_));
        assert!(failed(
            r#"{"id":"1","type":"error","payload":[{"message":"Unknown field \"sequence\""}]}"#
        ));
        assert!(failed(
            r#"{"id":"1","type":"next","payload":{"data":null,"errors":[{"message":"x"}]}}"#
        ));
        assert!(failed(r#"{"id":"1","type":"complete"}"#));
        assert!(failed("not json"));
    }

    #[test]
    fn metrics_series_are_summed_over_labels() {
        let text = "# HELP pulse_live_recomputations Recomputations.\n\
                    # TYPE pulse_live_recomputations counter\n\
                    pulse_live_recomputations_total{tenant=\"a\"} 3\n\
                    pulse_live_recomputations_total{tenant=\"b\",x=\"}\"} 4\n\
                    pulse_live_watchers 7\n\
                    pulse_db_statements_total 99\n";
        let s = series(text, "pulse_live_");
        assert_eq!(s.get(RECOMPUTATIONS), Some(&7.0));
        assert_eq!(s.get("pulse_live_watchers"), Some(&7.0));
        assert!(!s.contains_key("pulse_db_statements_total"));
    }

    #[test]
    fn each_change_is_timed_from_its_202_and_misses_are_counted() {
        let t0 = Instant::now();
        let acks = [
            t0,
            t0 + Duration::from_secs(10),
            t0 + Duration::from_secs(20),
        ];
        let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
        let mut tally = Tally::default();
        // Every change, one message each.
        let all = Seen {
            first: Some((Some(1), 5.0)),
            updates: (0..3)
                .map(|k| {
                    (
                        Some(k + 2),
                        6.0 + k as f64,
                        acks[k as usize] + Duration::from_millis(300),
                    )
                })
                .collect(),
            error: None,
        };
        tally.add(0, &all, &acks, &mut hist);
        assert_eq!(
            (tally.expected, tally.delivered, tally.missed_subscribers),
            (3, 3, 0)
        );
        assert_eq!(hist.len(), 3);
        assert!((299_000..=301_000).contains(&hist.max()));
        // The last change missing, and a sequence skipped.
        let short = Seen {
            first: Some((Some(1), 5.0)),
            updates: vec![(Some(3), 7.0, acks[1] + Duration::from_millis(100))],
            error: None,
        };
        tally.add(1, &short, &acks, &mut hist);
        assert_eq!(
            (tally.expected, tally.delivered, tally.missed_subscribers),
            (6, 5, 1)
        );
        assert_eq!((tally.coalesced, tally.sequence_errors), (1, 1));
        // Never set up: not a subscriber, nothing expected.
        tally.add(2, &Seen::default(), &acks, &mut hist);
        assert_eq!(
            (tally.setup_failed, tally.subscribed, tally.expected),
            (1, 2, 6)
        );
    }
}
