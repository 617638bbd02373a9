//! Scenario `load`: fills a database with a realistic event history for
//! the query benchmarks, through `/v1/events` (so the rollups are kept the
//! way production keeps them).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context as _, bail};
use rand::{Rng, SeedableRng as _};

use crate::http::graphql;
use crate::server::ServerArgs;

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Events in all, spread evenly over the tenants.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: u64,
    /// Demo tenants to fill.
    #[arg(long, value_delimiter = ',', default_value = "acme,globex")]
    pub tenants: Vec<String>,
    /// Days of history, ending now.
    #[arg(long, default_value_t = 90)]
    pub days: i64,
    /// Distinct users per tenant.
    #[arg(long, default_value_t = 50_000)]
    pub users: u32,
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// How the history arrives: `time` as production traffic does (in
    /// time order, 1 % of events up to two days late), or `random`
    /// (every batch spread over the whole range: the worst case for the
    /// indexes and for the heap's locality).
    #[arg(long, value_enum, default_value_t = Order::Time)]
    pub order: Order,
    /// Properties to declare for numeric rollups before loading, as
    /// `field:ROLE` (e.g. `amount:NUMERIC,plan:DIMENSION`); the load then
    /// waits for every series' backfill (of the demo data) to finish.
    #[arg(long, value_delimiter = ',')]
    pub rollup_fields: Vec<String>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Order {
    Time,
    Random,
}

/// Seconds after the start of the history.
type Span = std::ops::Range<i64>;

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    args.server.seed_demo().await?;
    let tenants: Vec<&str> = args.tenants.iter().map(String::as_str).collect();
    crate::http::raise_limits(&args.server.database_url, &tenants).await?;
    let mut tokens = Vec::new();
    for t in &args.tenants {
        tokens.push(args.server.token(t, "EDITOR").await?);
    }
    let server = args.server.start().await?;
    if !args.rollup_fields.is_empty() {
        declare_rollups(&args, &server.base).await?;
    }
    let url = Arc::new(format!("{}/v1/events", server.base));
    let tokens = Arc::new(tokens);
    let sent = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let end = chrono::Utc::now() - chrono::Duration::seconds(60);
    let origin = end - chrono::Duration::days(args.days);
    let history = (end - origin).num_seconds();
    let mut tasks = Vec::new();
    for sender in 0..args.senders {
        let (client, url, tokens, sent) =
            (client.clone(), url.clone(), tokens.clone(), sent.clone());
        let (total, users, order) = (args.events, args.users, args.order);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
            let mut body = String::new();
            let mut batch_no = sender;
            loop {
                let claimed = sent.fetch_add(1_000, Ordering::Relaxed);
                if claimed >= total {
                    return anyhow::Ok(());
                }
                let n = (total - claimed).min(1_000);
                let span = match order {
                    Order::Random => 0..history,
                    Order::Time => {
                        let at = |k: u64| (history as f64 * k as f64 / total as f64) as i64;
                        at(claimed)..at(claimed + n).max(at(claimed) + 1)
                    }
                };
                let late = matches!(order, Order::Time);
                generate(&mut body, n as usize, origin, span, late, users, &mut rng);
                let token = &tokens[batch_no % tokens.len()];
                batch_no += 1;
                let resp = client
                    .post(url.as_str())
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                if resp.status() != reqwest::StatusCode::ACCEPTED {
                    bail!("HTTP {}: {}", resp.status(), resp.text().await?);
                }
                if claimed % 500_000 == 0 {
                    eprintln!(
                        "  {claimed} events sent, {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "load: {} events into {} in {elapsed:.0} s ({:.0} events/s)",
        args.events,
        args.tenants.join(", "),
        args.events as f64 / elapsed
    );
    if !args.rollup_fields.is_empty() {
        wait_for_backfills(&args, &server.base).await?;
    }
    server.stop().await
}

/// Declares `--rollup-fields` for each tenant, as its ADMIN.
async fn declare_rollups(args: &LoadArgs, base: &str) -> anyhow::Result<()> {
    for tenant in &args.tenants {
        let token = args.server.token(tenant, "ADMIN").await?;
        for spec in &args.rollup_fields {
            let Some((field, role)) = spec.split_once(':') else {
                bail!("--rollup-fields takes field:ROLE, not {spec:?}");
            };
            let body = serde_json::json!({
                "query": "mutation($f: String!, $r: RollupRole!) { declareRollupField(field: $f, role: $r) { fields { field } } }",
                "variables": { "f": field, "r": role },
            });
            graphql(base, &token, body)
                .await
                .with_context(|| format!("declaring {spec} for {tenant}"))?;
        }
    }
    Ok(())
}

/// Waits until every tenant's rollup series is ready (backfilled).
async fn wait_for_backfills(args: &LoadArgs, base: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    for tenant in &args.tenants {
        let token = args.server.token(tenant, "VIEWER").await?;
        loop {
            let body = serde_json::json!({ "query": "{ rollups { series { ready } } }" });
            let data = graphql(base, &token, body)
                .await
                .with_context(|| format!("reading {tenant}'s rollups"))?;
            let Some(series) = data["rollups"]["series"].as_array() else {
                bail!("reading {tenant}'s rollups: {data}");
            };
            if series.iter().all(|s| s["ready"] == true) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    println!(
        "load: rollup backfills ready {:.0} s after the load",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

const PATHS: [&str; 8] = [
    "/",
    "/pricing",
    "/docs",
    "/blog",
    "/signup",
    "/app",
    "/app/settings",
    "/changelog",
];
const PLANS: [&str; 3] = ["starter", "pro", "business"];
const COUNTRIES: [&str; 6] = ["US", "DE", "GB", "FR", "IN", "BR"];

/// A JSON array of `n` events at `span` after `origin` (with `late`, 1 %
/// of them up to two days earlier): mostly page views, then email
/// activity, sign-ups and purchases with amounts.
fn generate(
    out: &mut String,
    n: usize,
    origin: chrono::DateTime<chrono::Utc>,
    span: Span,
    late: bool,
    users: u32,
    rng: &mut impl Rng,
) {
    out.clear();
    out.push('[');
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        let mut offset = rng.random_range(span.clone());
        if late && rng.random_bool(0.01) {
            offset = (offset - rng.random_range(0..2 * 86_400)).max(0);
        }
        let at = origin + chrono::Duration::seconds(offset);
        let ts = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let user = rng.random_range(0..users);
        let country = COUNTRIES[rng.random_range(0..COUNTRIES.len())];
        let roll: f64 = rng.random();
        let (kind, props) = if roll < 0.70 {
            let path = PATHS[rng.random_range(0..PATHS.len())];
            (
                "page_view",
                format!(
                    r#"{{"path":"{path}","country":"{country}","ms":{}}}"#,
                    rng.random_range(20..3000)
                ),
            )
        } else if roll < 0.90 {
            let kind = [
                "email.sent",
                "email.delivered",
                "email.opened",
                "email.clicked",
            ][rng.random_range(0..4)];
            (
                kind,
                format!(r#"{{"campaign":"c{}"}}"#, rng.random_range(0..12)),
            )
        } else if roll < 0.95 {
            ("signup", format!(r#"{{"country":"{country}"}}"#))
        } else {
            let plan = PLANS[rng.random_range(0..PLANS.len())];
            let amount = rng.random_range(500..50_000) as f64 / 100.0;
            (
                "purchase",
                format!(r#"{{"plan":"{plan}","amount":{amount},"country":"{country}"}}"#),
            )
        };
        let _ = write!(
            out,
            r#"{{"id":"{}","type":"{kind}","timestamp":"{ts}","userId":"user-{user}","sessionId":"s-{user}-{}","properties":{props}}}"#,
            uuid::Uuid::new_v4(),
            at.timestamp() / 1800,
        );
    }
    out.push(']');
}
