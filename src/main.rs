//! The `pulse` command line: `serve` (the default), `migrate`, `token`,
//! `schema` and `seed-demo`, as API.md fixes them.
//!
//! Every failure ends as one line on stderr (`pulse: …`) and exit code 1;
//! stdout carries only what a command is asked to print.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::{Parser, Subcommand};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};

use pulse::app::{AppState, Application, shutdown_signal};
use pulse::auth::Role;
use pulse::auth::jwt::{self, JwtKeys};
use pulse::config::{Config, Demo};
use pulse::domain::demo::{self, SeedReport};
use pulse::entities::{tenant, user};
use pulse::{db, graphql, telemetry};

#[derive(Parser)]
#[command(
    name = "pulse",
    version,
    about = "Multi-tenant GraphQL analytics gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the GraphQL API (the default).
    Serve {
        /// Listen address; overrides PULSE_LISTEN.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Apply all database migrations and exit.
    Migrate,
    /// Print a signed JWT for a tenant and role.
    Token {
        /// Tenant slug.
        #[arg(long)]
        tenant: String,
        /// SUPER_ADMIN, ADMIN, EDITOR or VIEWER.
        #[arg(long)]
        role: Role,
        /// The user's email; default: an active user of the tenant with
        /// that role (or any active user when none has it).
        #[arg(long)]
        user: Option<String>,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = jwt::parse_ttl)]
        ttl: Duration,
    },
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Create the demo tenants and their data; safe to repeat.
    SeedDemo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pulse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or(Command::Serve { listen: None });
    if let Command::Schema = command {
        print!("{}", graphql::sdl());
        return Ok(());
    }
    let mut config = Config::from_env()?;
    telemetry::init_tracing(&config.log);
    match command {
        Command::Serve { listen } => {
            if let Some(listen) = listen {
                config.listen = listen;
            }
            serve(config).await
        }
        Command::Migrate => {
            let db = connect(&config).await?;
            db::migrate(&db).await.context("cannot apply migrations")?;
            eprintln!("pulse: migrations applied");
            Ok(())
        }
        Command::Token {
            tenant,
            role,
            user,
            ttl,
        } => token(&config, &tenant, role, user, ttl).await,
        Command::SeedDemo => {
            let state = AppState::connect(config).await?;
            let report = demo::seed(&state.db)
                .await
                .context("cannot seed the demo data")?;
            let events = demo::seed_events(&state.db, &state.writer)
                .await
                .context("cannot seed the demo events")?;
            state.writer.close().await;
            eprintln!(
                "pulse: demo data ready ({} tenants, {} users and {} events created)",
                report.tenants_created, report.users_created, events
            );
            print_accounts(&report);
            Ok(())
        }
        Command::Schema => Ok(()),
    }
}

async fn connect(config: &Config) -> anyhow::Result<DatabaseConnection> {
    db::connect(&config.database).await.with_context(|| {
        format!(
            "cannot open database {}",
            pulse::app::redact(&config.database.url)
        )
    })
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let demo_mode = config.demo;
    let app = Application::build(config).await?;
    let state = app.state.clone();
    let seed = match demo_mode {
        Demo::Off => false,
        Demo::IfEmpty => demo::is_empty(&state.db).await?,
        Demo::Always => true,
    };
    if seed {
        let report = demo::seed(&state.db)
            .await
            .context("cannot seed the demo data")?;
        tracing::info!(
            tenants = report.tenants_created,
            users = report.users_created,
            "seeded the demo data"
        );
        print_accounts(&report);
    }
    if seed {
        let seeding = std::time::Instant::now();
        let events = demo::seed_events(&state.db, &state.writer)
            .await
            .context("cannot seed the demo events")?;
        if events > 0 {
            tracing::info!(
                events,
                seconds = seeding.elapsed().as_secs_f64(),
                "seeded the demo events"
            );
        }
    }
    let addr = app.local_addr()?;
    tracing::info!(
        %addr,
        startup_ms = started.elapsed().as_millis() as u64,
        "listening; GraphiQL at http://{addr}/graphql"
    );
    if demo_mode.is_on() {
        // A convenience for the first run, printed to the console only (not
        // through the log pipeline, which never carries tokens).
        match first_user(&state.db, "acme", Role::Admin).await {
            Ok(Some(admin)) => match state.keys.mint(
                &admin.id.to_string(),
                "acme",
                Role::Admin,
                Duration::from_secs(12 * 3600),
            ) {
                Ok(token) => {
                    let header = format!("{{\"Authorization\": \"Bearer {token}\"}}");
                    // On loopback with the development secret the page opens
                    // with the header filled in (see `http::graphiql`).
                    let filled = if state.offer_demo_token(token) {
                        "; GraphiQL opens with it filled in"
                    } else {
                        ""
                    };
                    println!(
                        "\nGraphiQL: http://{addr}/graphql\nHTTP header for GraphiQL (ADMIN of acme, valid 12h{filled}):\n  {header}\n"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "cannot mint the demo token"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot look up the demo admin"),
        }
    }
    app.run(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

fn print_accounts(report: &SeedReport) {
    if report.users_created == 0 {
        return;
    }
    println!("Demo logins (tenant, email, password):");
    for a in &report.accounts {
        println!(
            "  {:<7} {:<26} {:<24} {}",
            a.tenant,
            a.email,
            a.password,
            a.role.as_str()
        );
    }
}

/// An active user of `slug` with `role`, or any active user of it.
async fn first_user(
    db: &DatabaseConnection,
    slug: &str,
    role: Role,
) -> anyhow::Result<Option<user::Model>> {
    let Some(tenant) = tenant::Entity::find()
        .filter(tenant::Column::Slug.eq(slug))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let active = user::Entity::find()
        .filter(user::Column::TenantId.eq(tenant.id))
        .filter(user::Column::Status.eq(user::UserStatus::Active))
        .order_by_asc(user::Column::CreatedAt);
    let with_role = active
        .clone()
        .filter(user::Column::Role.eq(role))
        .one(db)
        .await?;
    Ok(match with_role {
        Some(u) => Some(u),
        None => active.one(db).await?,
    })
}

async fn token(
    config: &Config,
    slug: &str,
    role: Role,
    user: Option<String>,
    ttl: Duration,
) -> anyhow::Result<()> {
    let (secret, _) = jwt::resolve_secret(&config.jwt).context("cannot read the JWT secret")?;
    let keys = JwtKeys::new(&secret, &config.jwt);
    let subject = match user {
        // Scripts that know the user need no database.
        Some(email) => email.trim().to_lowercase(),
        None => {
            let db = connect(config).await?;
            db::migrate(&db).await.context("cannot apply migrations")?;
            if config.demo == Demo::IfEmpty && demo::is_empty(&db).await? {
                demo::seed(&db).await.context("cannot seed the demo data")?;
            }
            first_user(&db, slug, role)
                .await?
                .ok_or_else(|| anyhow!("tenant `{slug}` does not exist or has no active user"))?
                .id
                .to_string()
        }
    };
    let token = keys.mint(&subject, slug, role, ttl)?;
    println!("{token}");
    Ok(())
}
