//! The `pulse` command line: `serve` (the default), `migrate`, `token`,
//! `schema` and `seed-demo`, as API.md fixes them.
//!
//! Every failure ends as one line on stderr (`pulse: …`) and exit code 1;
//! stdout carries only what a command is asked to print.

// The merged GraphQL roots nest deeply enough that the optimiser's layout
// queries pass the default limit of 128 in release builds.
#![recursion_limit = "256"]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::{Parser, Subcommand};
use sea_orm::{ActiveEnum, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};

use pulse::app::{AppState, Application, shutdown_signal};
use pulse::auth::jwt::{self, JwtKeys};
use pulse::auth::{RequestMeta, Role, SERVICE_PREFIX};
use pulse::config::{Config, Demo};
use pulse::domain::demo::{self, SeedReport};
use pulse::domain::{tenants, users};
use pulse::entities::{tenant, user};
use pulse::{db, graphql, telemetry};

/// See `Cargo.toml` for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// The user's email (the token then grants at most that user's
        /// current role); without it, a service token for the tenant,
        /// audited as `service:cli`.
        #[arg(long)]
        user: Option<String>,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = pulse::duration::parse)]
        ttl: Duration,
    },
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Create the demo tenants and their data; safe to repeat.
    SeedDemo,
    /// Manage tenants (bootstrap a production database).
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage users (bootstrap a production database).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant; an existing slug is left as it is. Prints the
    /// tenant as one JSON line.
    Create {
        #[arg(long)]
        slug: String,
        #[arg(long)]
        name: String,
        /// Plan name (default `trial`).
        #[arg(long)]
        plan: Option<String>,
        /// Most users the tenant may have (default 10).
        #[arg(long)]
        max_users: Option<i32>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user in a tenant; an existing email is left as it is.
    /// Prints the user as one JSON line.
    Create {
        /// Tenant slug.
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
        /// SUPER_ADMIN, ADMIN, EDITOR or VIEWER.
        #[arg(long)]
        role: Role,
        /// Read the password from the first line of standard input
        /// (without it the user is invited, with no password to log in).
        #[arg(long)]
        password_stdin: bool,
    },
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
            graphql::demo::seed_dashboards(&state)
                .await
                .context("cannot seed the demo dashboards")?;
            state.writer.close().await;
            eprintln!(
                "pulse: demo data ready ({} tenants, {} users and {} events created)",
                report.tenants_created, report.users_created, events
            );
            print_accounts(&report);
            Ok(())
        }
        Command::Tenant {
            command:
                TenantCommand::Create {
                    slug,
                    name,
                    plan,
                    max_users,
                },
        } => {
            let db = connect(&config).await?;
            db::migrate(&db).await.context("cannot apply migrations")?;
            let input = tenants::NewTenant {
                slug,
                name,
                domain: None,
                plan,
                max_users,
                status: None,
                settings: None,
                features: None,
            };
            let (tenant, created) = tenants::bootstrap(&db, &cli_meta(), input).await?;
            println!(
                "{}",
                serde_json::json!({
                    "id": tenant.id, "slug": tenant.slug, "name": tenant.name, "created": created,
                })
            );
            Ok(())
        }
        Command::User {
            command:
                UserCommand::Create {
                    tenant,
                    email,
                    role,
                    password_stdin,
                },
        } => {
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("cannot read the password from standard input")?;
                Some(line.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                None
            };
            let db = connect(&config).await?;
            db::migrate(&db).await.context("cannot apply migrations")?;
            let input = users::NewUser {
                email,
                password,
                role,
                display_name: None,
            };
            let (user, created) = users::bootstrap(&db, &cli_meta(), &tenant, input).await?;
            println!(
                "{}",
                serde_json::json!({
                    "id": user.id, "email": user.email, "role": user.role.as_str(),
                    "status": user.status.to_value(), "created": created,
                })
            );
            Ok(())
        }
        Command::Schema => Ok(()),
    }
}

/// What the audit trail records of a command-line change.
fn cli_meta() -> RequestMeta {
    RequestMeta {
        request_id: None,
        ip: None,
        user_agent: Some(format!("pulse-cli/{}", env!("CARGO_PKG_VERSION"))),
    }
}

async fn connect(config: &Config) -> anyhow::Result<DatabaseConnection> {
    db::connect(&config.database, Default::default())
        .await
        .with_context(|| {
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
        let dashboards = graphql::demo::seed_dashboards(&state)
            .await
            .context("cannot seed the demo dashboards")?;
        if dashboards > 0 {
            tracing::info!(tenants = dashboards, "seeded the demo dashboards");
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
        // Without a user, a service token: it acts for the tenant and is
        // audited as `service:cli`, never as some user who did not ask.
        None => {
            let db = connect(config).await?;
            db::migrate(&db).await.context("cannot apply migrations")?;
            if config.demo == Demo::IfEmpty && demo::is_empty(&db).await? {
                demo::seed(&db).await.context("cannot seed the demo data")?;
            }
            let exists = tenant::Entity::find()
                .filter(tenant::Column::Slug.eq(slug.trim().to_lowercase()))
                .one(&db)
                .await?
                .is_some();
            if !exists {
                return Err(anyhow!("tenant `{slug}` does not exist"));
            }
            format!("{SERVICE_PREFIX}cli")
        }
    };
    let token = keys.mint(&subject, slug, role, ttl)?;
    println!("{token}");
    Ok(())
}
