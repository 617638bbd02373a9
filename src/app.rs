//! The application: shared state, start-up and graceful shutdown.
//!
//! [`Application::build`] connects, migrates and binds (port 0 picks a free
//! one), so tests spawn the same server `pulse serve` runs.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;

use crate::auth::jwt::{self, JwtKeys};
use crate::cache::HotCache;
use crate::cache::flight::Flights;
use crate::cache::persisted::PersistedQueries;
use crate::cache::rate::RateLimiter;
use crate::config::Config;
use crate::domain::events::store::Store;
use crate::domain::events::writer::{Writer, WriterConfig};
use crate::domain::metrics::gate::TenantGate;
use crate::domain::metrics::{self, budget::Budgets};
use crate::domain::persisted::OperationSets;
use crate::realtime::Bus;
use crate::telemetry::Telemetry;
use crate::{db, graphql, http, jobs};

/// Everything a request may need, built once; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<App>);

pub struct App {
    pub config: Config,
    pub db: DatabaseConnection,
    /// `None` without `PULSE_REDIS_URL`.
    pub redis: Option<redis::aio::ConnectionManager>,
    pub keys: JwtKeys,
    /// Parsed GraphQL documents, by tenant and text.
    pub documents: crate::graphql::Documents,
    /// Tokens verified in the last second.
    pub tokens: crate::domain::auth::VerifiedTokens,
    pub telemetry: Arc<Telemetry>,
    /// In-process, or Redis pub/sub when Redis is configured.
    pub bus: Bus,
    /// The hot-metric cache: in-process, or Redis with a local tier.
    pub cache: HotCache,
    /// Per-tenant and per-user rate limits (and the per-minute budget).
    pub limiter: RateLimiter,
    /// What metric queries run with: the cache, its flights, the budgets.
    pub analytics: metrics::Services,
    /// Automatic persisted queries by tenant and hash: in-process, or
    /// Redis with a local tier.
    pub persisted: PersistedQueries,
    /// Each tenant's registered operations (the allow-list), cached here.
    pub operations: OperationSets,
    pub event_store: Arc<Store>,
    /// The group-commit writer every ingestion path goes through.
    pub writer: Writer,
    /// Each tenant's share of concurrent analytic queries.
    pub analytics_gate: Arc<TenantGate>,
    /// Subscriptions: metric watchers, event tails, socket limits.
    pub live: crate::domain::live::Live,
    /// This process among the instances sharing the database: the owner
    /// of the alert leases it takes.
    pub instance: uuid::Uuid,
    /// The demo ADMIN token GraphiQL opens with. `serve` mints it after the
    /// server is built (it needs the seeded admin), hence set-once rather
    /// than a plain field; only [`App::offer_demo_token`] sets it.
    demo_token: OnceLock<String>,
}

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

impl App {
    /// Offers the demo token to the GraphiQL page, which keeps it only where
    /// [`http::graphiql::may_prefill`] allows; returns whether it was kept.
    pub fn offer_demo_token(&self, token: String) -> bool {
        http::graphiql::may_prefill(&self.config) && self.demo_token.set(token).is_ok()
    }

    /// The token [`App::offer_demo_token`] kept, if any.
    pub fn demo_token(&self) -> Option<&str> {
        self.demo_token.get().map(String::as_str)
    }
}

impl AppState {
    /// Connects to the database (and Redis) and applies migrations.
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        let telemetry = Arc::new(Telemetry::with_operation_cap(
            config.prometheus.max_operations,
        ));
        let db = db::connect(
            &config.database,
            db::PoolCounters {
                stale: telemetry.db_stale_transactions.clone(),
                statements: telemetry.db_statements.clone(),
            },
        )
        .await
        .with_context(|| format!("cannot open database {}", redact(&config.database.url)))?;
        db::migrate(&db).await.context("cannot apply migrations")?;
        let (redis, bus, cache, limiter, persisted) = match &config.redis_url {
            Some(url) => {
                let (client, conn) = connect_redis(url).await?;
                (
                    Some(conn.clone()),
                    Bus::redis(client, conn.clone()),
                    HotCache::redis(conn.clone(), telemetry.cache.clone()),
                    RateLimiter::redis(conn.clone(), telemetry.rates.clone()),
                    PersistedQueries::redis(conn, telemetry.persisted.clone()),
                )
            }
            None => (
                None,
                Bus::memory(),
                HotCache::memory(telemetry.cache.clone()),
                RateLimiter::memory(telemetry.rates.clone()),
                PersistedQueries::memory(telemetry.persisted.clone()),
            ),
        };
        let event_store = Arc::new(Store::new(db.clone()));
        event_store
            .partitions()
            .ensure_window(&db, jobs::PARTITIONS_AHEAD)
            .await
            .context("cannot create event partitions")?;
        let writer = Writer::start(
            WriterConfig {
                max_batch: config.ingest.max_events,
                max_group: config.ingest.group_events,
                queue_events: config.ingest.queue_events,
                queue_wait: config.ingest.queue_wait,
                writers: config.ingest.writers,
            },
            event_store.clone(),
            bus.clone(),
            cache.clone(),
            telemetry.clone(),
        );
        let (secret, dev_secret) =
            jwt::resolve_secret(&config.jwt).context("cannot read or create the dev JWT secret")?;
        if dev_secret {
            tracing::warn!(
                file = jwt::DEV_SECRET_FILE,
                "PULSE_JWT_SECRET is not set: using a generated development secret"
            );
        }
        let keys = JwtKeys::new(&secret, &config.jwt);
        let analytics = metrics::Services {
            // `PULSE_HOT_CACHE=0`: metric queries neither read nor fill the
            // cache. The ingestion writer bumps its counters either way, so
            // ingest costs the same with both settings.
            cache: config.hot_cache.then(|| cache.clone()),
            flights: Flights::new(telemetry.flights.clone()),
            answers: metrics::cached::answers(),
            prepared: metrics::cached::prepared_set(),
            budgets: Budgets {
                limiter: limiter.clone(),
                counters: telemetry.budget_counters(),
            },
        };
        let analytics_gate = Arc::new(TenantGate::new(
            config.analytics.tenant_concurrency,
            config.analytics.queue_wait,
        ));
        let live = crate::domain::live::Live::new(
            crate::domain::live::LiveParts {
                db: db.clone(),
                bus: bus.clone(),
                services: analytics.clone(),
                gate: analytics_gate.clone(),
                query_timeout: config.query_timeout,
                max_span: config.analytics.max_range,
                counters: telemetry.live.clone(),
            },
            config.live.clone(),
        );
        Ok(AppState(Arc::new(App {
            analytics_gate,
            live,
            instance: uuid::Uuid::new_v4(),
            config,
            db,
            redis,
            keys,
            tokens: Default::default(),
            documents: Default::default(),
            telemetry,
            bus,
            cache,
            limiter,
            analytics,
            persisted,
            operations: OperationSets::default(),
            event_store,
            writer,
            demo_token: OnceLock::new(),
        })))
    }
}

async fn connect_redis(
    url: &str,
) -> anyhow::Result<(redis::Client, redis::aio::ConnectionManager)> {
    let client =
        redis::Client::open(url).with_context(|| format!("invalid Redis URL {}", redact(url)))?;
    let conn = tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager())
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))
        .and_then(|r| r.map_err(Into::into))
        .with_context(|| format!("cannot reach Redis at {}", redact(url)))?;
    Ok((client, conn))
}

/// A URL fit for logs: the password replaced.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// A bound, ready-to-run server.
pub struct Application {
    pub state: AppState,
    listener: TcpListener,
    router: axum::Router,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listen = config.listen;
        let state = AppState::connect(config).await?;
        Self::with_state(state, listen).await
    }

    pub async fn with_state(state: AppState, listen: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let schema = graphql::build(Some(state.clone()), &state.config.limits);
        let router = http::router(state.clone(), schema);
        Ok(Application {
            state,
            listener,
            router,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets
    /// in-flight requests finish for up to the grace period, and closes the
    /// database pool.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let grace = self.state.config.shutdown_grace;
        let mut background = if self.state.config.background_jobs {
            jobs::spawn(&self.state)
        } else {
            Vec::new()
        };
        if self.state.config.rollups.backfill {
            background.push(jobs::rollups::spawn(&self.state));
        }
        let alerting = self.state.config.alerts.evaluate;
        if alerting {
            match jobs::alerts::spawn(&self.state) {
                Ok(handles) => background.extend(handles),
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "cannot start alert evaluation")
                }
            }
        }
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight requests");
            let _ = stopping_tx.send(());
        });
        let deadline = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            r = server => r,
            () = deadline => {
                tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests outlived the grace period");
                Ok(())
            }
        };
        for job in background {
            job.abort();
        }
        if alerting {
            jobs::alerts::release(&self.state).await;
        }
        // Requests still queued when the grace period ran out are committed
        // before the pool closes.
        self.state.writer.close().await;
        if let Err(e) = self.state.db.close_by_ref().await {
            tracing::warn!(error = %e, "closing the database pool");
        }
        result
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
