//! `pulse-bench`: the benchmark scenarios of `bench/README.md`. Each one
//! starts its own `pulse` server (the release binary), drives it over HTTP
//! like a client would, and checks the database afterwards.

mod dashboard;
mod http;
mod ingest;
mod load;
mod queries;
mod server;
mod subscribe;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "pulse-bench", about = "Pulse benchmark scenarios")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Concurrent senders POSTing event batches to /v1/events.
    Ingest(ingest::IngestArgs),
    /// Fill a database with a realistic history through /v1/events.
    Load(load::LoadArgs),
    /// The metric benchmark queries, one at a time.
    Queries(queries::QueriesArgs),
    /// The demo dashboards resolved whole, against their slowest widget.
    Dashboard(dashboard::DashboardArgs),
    /// Closed-loop GraphQL load on the hot path: cached and uncached
    /// metrics, a whole dashboard, optionally under ingestion.
    Http(http::HttpArgs),
    /// WebSocket subscribers to live metrics under ingestion: delivery
    /// latency, missed changes, recomputations, server CPU and RSS.
    Subscribe(subscribe::SubscribeArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Ingest(args) => ingest::run(args).await,
        Scenario::Load(args) => load::run(args).await,
        Scenario::Queries(args) => queries::run(args).await,
        Scenario::Dashboard(args) => dashboard::run(args).await,
        Scenario::Http(args) => http::run(args).await,
        Scenario::Subscribe(args) => subscribe::run(args).await,
    }
}
