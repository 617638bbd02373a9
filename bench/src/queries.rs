//! Scenario `queries`: the metric engine's benchmark queries, run one at a
//! time against a loaded database (see `load`), reporting p50/p95 of the
//! request and of the database time Pulse reports in `extensions.queries`;
//! then, with `--clients`, the dashboard query under closed-loop load.
//!
//! The database may be PostgreSQL or SQLite (`--database-url
//! sqlite:///path/pulse.db?mode=rwc`); the demo tenants are seeded first
//! (a no-op when they exist), so an empty SQLite file is the embedded
//! default with its demo data.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use crate::server::ServerArgs;

#[derive(Debug, clap::Args)]
pub struct QueriesArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[arg(long, default_value = "acme")]
    pub tenant: String,
    /// Timed runs per query (after two warm-up runs).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Concurrent clients for the dashboard throughput run; 0 skips it.
    #[arg(long, default_value_t = 0)]
    pub clients: usize,
    /// Seconds of the throughput run.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Skip the one-at-a-time table (only the throughput run).
    #[arg(long)]
    pub throughput_only: bool,
}

/// The dashboard query of the throughput run: a rollup-served COUNT of
/// page views by day over the last 30 days.
fn dashboard() -> Value {
    json!({
        "query": "query($q: MetricQueryInput!) { metrics(query: $q) { total series { points { bucket value } } } }",
        "variables": { "q": { "measure": "COUNT", "eventTypes": ["page_view"], "granularity": "DAY",
            "range": { "last": "30d" } } },
    })
}

fn cases() -> Vec<(&'static str, &'static str, Value)> {
    let metrics =
        "query($q: MetricQueryInput!) { metrics(query: $q) { total series { points { value } } } }";
    vec![
        (
            "a: COUNT of one type by DAY, 30 days",
            metrics,
            json!({ "q": {
            "measure": "COUNT", "eventTypes": ["purchase"], "granularity": "DAY", "range": { "last": "30d" } } }),
        ),
        (
            "a': COUNT of page_view by DAY, 30 days (the dashboard query)",
            metrics,
            json!({ "q": {
            "measure": "COUNT", "eventTypes": ["page_view"], "granularity": "DAY", "range": { "last": "30d" } } }),
        ),
        (
            "b: COUNT_DISTINCT userId by DAY, 30 days",
            metrics,
            json!({ "q": {
            "measure": "COUNT_DISTINCT", "field": "userId", "granularity": "DAY", "range": { "last": "30d" } } }),
        ),
        (
            "c: SUM amount by DAY by plan, 30 days",
            metrics,
            json!({ "q": {
            "measure": "SUM", "field": "properties.amount", "eventTypes": ["purchase"],
            "groupBy": ["properties.plan"], "granularity": "DAY", "range": { "last": "30d" } } }),
        ),
        (
            "d: 3-step funnel, 7 days",
            "query($i: FunnelInput!) { funnel(input: $i) { steps { count } } }",
            json!({ "i": { "steps": [{ "eventType": "page_view" }, { "eventType": "signup" }, { "eventType": "purchase" }],
            "conversionWindow": "7d", "range": { "last": "7d" } } }),
        ),
        (
            "e: weekly retention, 8 weeks",
            "query($i: RetentionInput!) { retention(input: $i) { cohorts { size rates } } }",
            json!({ "i": { "startEvent": "signup", "returnEvent": "purchase", "period": "WEEK", "periods": 8,
            "range": { "last": "8w" } } }),
        ),
    ]
}

pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len().saturating_sub(1)) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

pub async fn run(mut args: QueriesArgs) -> anyhow::Result<()> {
    args.server.seed_demo().await?;
    // The table measures the engine: no hot cache (unless the caller
    // says otherwise), and no rate limit or budget in the way.
    if !args
        .server
        .server_env
        .iter()
        .any(|(k, _)| k == "PULSE_HOT_CACHE")
    {
        args.server
            .server_env
            .push(("PULSE_HOT_CACHE".into(), "0".into()));
    }
    crate::http::raise_limits(&args.server.database_url, &[args.tenant.as_str()]).await?;
    let token = args.server.token(&args.tenant, "VIEWER").await?;
    let server = args.server.start().await?;
    let client = reqwest::Client::new();
    let url = format!("{}/graphql", server.base);
    if !args.throughput_only {
        one_at_a_time(&args, &client, &url, &token).await?;
    }
    if args.clients > 0 {
        throughput(&args, &url, &token, &server).await?;
    }
    server.stop().await
}

async fn one_at_a_time(
    args: &QueriesArgs,
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> anyhow::Result<()> {
    println!(
        "queries: tenant {}, {} runs each, one at a time",
        args.tenant, args.runs
    );
    println!("| query | source | p50 ms | p95 ms | db p50 ms | db p95 ms |");
    println!("|---|---|---:|---:|---:|---:|");
    for (name, query, variables) in cases() {
        let mut wall = Vec::new();
        let mut db = Vec::new();
        let mut source = String::from("-");
        for run in 0..args.runs + 2 {
            let started = Instant::now();
            let body: Value = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "query": query, "variables": variables }))
                .send()
                .await?
                .json()
                .await?;
            let took = started.elapsed().as_secs_f64() * 1000.0;
            if !body["errors"].is_null() {
                bail!("{name}: {}", body["errors"]);
            }
            if run < 2 {
                continue;
            }
            wall.push(took);
            if let Some(p) = body["extensions"]["queries"].get(0) {
                source = p["source"].as_str().unwrap_or("-").to_owned();
                db.extend(p["dbMs"].as_f64());
            }
        }
        wall.sort_by(f64::total_cmp);
        db.sort_by(f64::total_cmp);
        let fmt = |v: &[f64], q: f64| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.1}", percentile(v, q))
            }
        };
        println!(
            "| {name} | {source} | {} | {} | {} | {} |",
            fmt(&wall, 0.5),
            fmt(&wall, 0.95),
            fmt(&db, 0.5),
            fmt(&db, 0.95)
        );
    }
    Ok(())
}

/// `clients` tasks, each with one request in flight (closed loop), send the
/// dashboard query for `seconds`; reports requests per second, latency
/// percentiles and the server's CPU. Every answer is checked for errors.
async fn throughput(
    args: &QueriesArgs,
    url: &str,
    token: &str,
    server: &crate::server::Server,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let body = Arc::new(dashboard().to_string());
    // Warm-up: connections, caches of the database pages.
    for _ in 0..5 {
        send(&client, url, token, &body).await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let cpu_before = server.cpu_seconds()?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (client, url, token, body) = (
            client.clone(),
            url.to_owned(),
            token.to_owned(),
            body.clone(),
        );
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                send(&client, &url, &token, &body).await?;
                hist.record(t.elapsed().as_micros() as u64)?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(hist)
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (server.cpu_seconds()? - cpu_before) / elapsed;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "\ndashboard query, {} clients, {:.0} s: {:.0} requests/s, p50 {:.1} ms, p99 {:.1} ms, server CPU {:.2} cores",
        args.clients,
        elapsed,
        done.load(Ordering::Relaxed) as f64 / elapsed,
        ms(0.5),
        ms(0.99),
        cpu
    );
    Ok(())
}

async fn send(client: &reqwest::Client, url: &str, token: &str, body: &str) -> anyhow::Result<()> {
    let answer: Value = client
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await?
        .json()
        .await?;
    if !answer["errors"].is_null() {
        bail!("dashboard query: {}", answer["errors"]);
    }
    Ok(())
}
