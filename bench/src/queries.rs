//! Scenario `queries`: the metric engine's benchmark queries, run one at a
//! time against a loaded database (see `load`), reporting p50/p95 of the
//! request and of the database time Pulse reports in `extensions.queries`.

use std::time::Instant;

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

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len().saturating_sub(1)) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

pub async fn run(args: QueriesArgs) -> anyhow::Result<()> {
    let token = args.server.token(&args.tenant, "VIEWER").await?;
    let server = args.server.start().await?;
    let client = reqwest::Client::new();
    let url = format!("{}/graphql", server.base);
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
                .post(&url)
                .bearer_auth(&token)
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
    server.stop().await
}
