//! Scenario `ingest`: N senders POST batches of generated events to
//! `/v1/events` for a fixed time; then the database must hold exactly the
//! accepted events, each once.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use rand::SeedableRng as _;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};

use crate::server::ServerArgs;

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Concurrent senders, each with one request in flight.
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Events per request.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// How long the senders send, in seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Demo tenant the events go to.
    #[arg(long, default_value = "acme")]
    pub tenant: String,
}

#[derive(Default)]
struct SenderReport {
    requests: u64,
    accepted: u64,
    duplicates: u64,
    failed: u64,
    unavailable: u64,
    latency_us: Option<Histogram<u64>>,
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    args.server.seed_demo().await?;
    // The writer is measured, not the tenant's ingestion rate limit.
    crate::http::raise_limits(&args.server.database_url, &[args.tenant.as_str()]).await?;
    let token = args.server.token(&args.tenant, "EDITOR").await?;
    let server = args.server.start().await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let event_type = Arc::new(format!("bench.{run_id}"));
    let url = Arc::new(format!("{}/v1/events", server.base));
    let token = Arc::new(token);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.senders)
        .build()?;

    println!(
        "ingest: {} senders × {} events per request for {} s, type {event_type}, database {}",
        args.senders,
        args.batch,
        args.seconds,
        backend_name(&args.server.database_url)
    );
    let cpu_before = server.cpu_seconds()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for sender in 0..args.senders {
        let (client, url, token, event_type) = (
            client.clone(),
            url.clone(),
            token.clone(),
            event_type.clone(),
        );
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            send(sender, batch, deadline, &client, &url, &token, &event_type).await
        }));
    }
    let mut total = SenderReport {
        latency_us: Some(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        ..Default::default()
    };
    for task in tasks {
        let r = task.await??;
        total.requests += r.requests;
        total.accepted += r.accepted;
        total.duplicates += r.duplicates;
        total.failed += r.failed;
        total.unavailable += r.unavailable;
        if let (Some(t), Some(h)) = (total.latency_us.as_mut(), r.latency_us.as_ref()) {
            t.add(h)?;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds()? - cpu_before;
    let rss = server.rss_mib()?;
    let hist = total.latency_us.context("no histogram")?;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;

    println!(
        "  requests {} (failed {}, 503 {}), events accepted {}, duplicates {}",
        total.requests, total.failed, total.unavailable, total.accepted, total.duplicates
    );
    println!(
        "  throughput {:.0} events/s over {elapsed:.1} s",
        total.accepted as f64 / elapsed
    );
    println!(
        "  request latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        hist.max() as f64 / 1000.0
    );
    println!(
        "  server CPU {:.2} cores on average, RSS at the end {rss:.0} MiB",
        cpu / elapsed
    );
    server.stop().await?;

    let (stored, distinct) =
        count_stored(&args.server.database_url, &args.tenant, &event_type).await?;
    println!("  database: {stored} rows of type {event_type}, {distinct} distinct ids");
    if stored != total.accepted || distinct != stored || total.duplicates != 0 {
        bail!(
            "lost or doubled events: accepted {}, stored {stored}, distinct {distinct}, duplicates {}",
            total.accepted,
            total.duplicates
        );
    }
    println!("  verified: every accepted event stored exactly once");
    Ok(())
}

async fn send(
    sender: usize,
    batch: usize,
    deadline: Instant,
    client: &reqwest::Client,
    url: &str,
    token: &str,
    event_type: &str,
) -> anyhow::Result<SenderReport> {
    let mut report = SenderReport {
        latency_us: Some(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        ..Default::default()
    };
    let mut body = String::with_capacity(batch * 256);
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    while Instant::now() < deadline {
        generate(&mut body, batch, sender, event_type, &mut rng);
        let sent = Instant::now();
        let resp = client
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let took = sent.elapsed().as_micros() as u64;
        report.requests += 1;
        if let Some(h) = report.latency_us.as_mut() {
            h.saturating_record(took.max(1));
        }
        if status == reqwest::StatusCode::ACCEPTED {
            let counts: serde_json::Value = serde_json::from_slice(&bytes)?;
            report.accepted += counts["accepted"].as_u64().unwrap_or(0);
            report.duplicates += counts["duplicates"].as_u64().unwrap_or(0);
        } else if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            report.unavailable += 1;
        } else {
            report.failed += 1;
            if report.failed == 1 {
                eprintln!(
                    "sender {sender}: HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }
    Ok(report)
}

const PATHS: [&str; 6] = ["/", "/pricing", "/docs", "/blog", "/signup", "/app"];
const PLANS: [&str; 3] = ["free", "pro", "team"];

/// A JSON array of `batch` events with fresh ids, timestamps within the
/// last hour and a few properties of the kinds real events carry.
fn generate(
    out: &mut String,
    batch: usize,
    sender: usize,
    event_type: &str,
    rng: &mut impl rand::Rng,
) {
    out.clear();
    out.push('[');
    let now = chrono::Utc::now();
    for i in 0..batch {
        if i > 0 {
            out.push(',');
        }
        let at = now - chrono::Duration::milliseconds(rng.random_range(0..3_600_000));
        let user = rng.random_range(0..50_000);
        let _ = write!(
            out,
            r#"{{"id":"{}","type":"{event_type}","timestamp":"{}","userId":"user-{user}","sessionId":"s-{sender}-{}","properties":{{"path":"{}","plan":"{}","amount":{:.2},"sender":{sender}}}}}"#,
            uuid::Uuid::new_v4(),
            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            user / 4,
            PATHS[rng.random_range(0..PATHS.len())],
            PLANS[rng.random_range(0..PLANS.len())],
            rng.random_range(1.0..500.0f64),
        );
    }
    out.push(']');
}

fn backend_name(url: &str) -> &'static str {
    if url.starts_with("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    }
}

async fn count_stored(
    database_url: &str,
    tenant: &str,
    event_type: &str,
) -> anyhow::Result<(u64, u64)> {
    let db = Database::connect(database_url).await?;
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT count(*), count(DISTINCT id) FROM events \
             WHERE tenant_id = (SELECT id FROM tenants WHERE slug = $1) AND type = $2"
        }
        _ => {
            "SELECT count(*), count(DISTINCT id) FROM events \
             WHERE tenant_id = (SELECT id FROM tenants WHERE slug = ?) AND type = ?"
        }
    };
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [tenant.into(), event_type.into()],
        ))
        .await?
        .context("no count row")?;
    let stored: i64 = row.try_get_by_index(0)?;
    let distinct: i64 = row.try_get_by_index(1)?;
    Ok((stored as u64, distinct as u64))
}
