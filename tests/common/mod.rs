//! Spawning real Pulse servers for tests, and fixtures.
//!
//! The backend comes from `PULSE_TEST_DATABASE_URL` / `PULSE_TEST_REDIS_URL`:
//! unset, each app gets a fresh SQLite file; set, apps share that PostgreSQL
//! database (and Redis), and every test makes its own tenants with random
//! slugs, so tests run in parallel without seeing each other. Tests that
//! must break their database ask for [`spawn_isolated_app`], which on
//! PostgreSQL creates (and later drops) a database of their own.
//!
//! Logs stay quiet unless `TEST_LOG` is set.

#![allow(dead_code, reason = "each test module uses a different part")]

pub mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::Duration;
use tracing_subscriber::Layer as _;

use pulse::app::{AppState, Application};
use pulse::auth::Role;
use pulse::config::Config;
use pulse::entities::{tenant, user};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ConnectionTrait, EntityTrait};
use serde_json::{Value, json};
use uuid::Uuid;

/// The secret test servers sign with; tests mint tokens with it too.
pub const TEST_SECRET: &str = "pulse-test-secret-0123456789abcdef";

pub fn postgres_url() -> Option<String> {
    std::env::var("PULSE_TEST_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty())
}

pub fn redis_url() -> Option<String> {
    std::env::var("PULSE_TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.is_empty())
}

pub fn is_postgres() -> bool {
    postgres_url().is_some()
}

/// PostgreSQL's warnings about transactions, as sqlx reports them ("there
/// is already a transaction in progress", "there is no transaction in
/// progress"), seen by any server of this test process. Any at all means a
/// connection was lent while inside a transaction it should not have been.
static TRANSACTION_WARNINGS: AtomicUsize = AtomicUsize::new(0);

pub fn transaction_warnings() -> usize {
    TRANSACTION_WARNINGS.load(Ordering::SeqCst)
}

/// Notices that carry [`NOTICE_PROBE`]: a test raises one to prove that
/// notices do reach the counter (so that "no warning" means something).
static PROBES: AtomicUsize = AtomicUsize::new(0);
pub const NOTICE_PROBE: &str = "pulse-notice-probe";

pub fn notice_probes() -> usize {
    PROBES.load(Ordering::SeqCst)
}

/// Counts the notices sqlx logs under `sqlx::postgres::notice` that talk
/// about transactions.
struct NoticeCounter;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for NoticeCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "sqlx::postgres::notice" {
            return;
        }
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{value:?}"));
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        if message.0.contains("transaction in progress") {
            TRANSACTION_WARNINGS.fetch_add(1, Ordering::SeqCst);
        }
        if message.0.contains(NOTICE_PROBE) {
            PROBES.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn init_logs() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The notice counter always listens (at warn, where PostgreSQL's
        // warnings arrive); the readable log only with TEST_LOG.
        let logs = std::env::var_os("TEST_LOG").is_some().then(|| {
            tracing_subscriber::fmt::layer()
                .compact()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::EnvFilter::new(
                    std::env::var("PULSE_LOG").unwrap_or_else(|_| "info".into()),
                ))
        });
        let notices = NoticeCounter.with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("sqlx::postgres::notice", tracing::Level::TRACE),
        );
        let _ = tracing_subscriber::registry()
            .with(notices)
            .with(logs)
            .try_init();
    });
}

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub state: AppState,
    pub http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _store: Store,
}

/// Keeps a test's database alive for as long as its app.
enum Store {
    Shared,
    Sqlite(tempfile::TempDir),
    OwnPostgres { admin_url: String, name: String },
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Store::OwnPostgres { admin_url, name } = self {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop runs inside the test's runtime; do the async work on a
            // thread of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    if let Ok(db) = sea_orm::Database::connect(&admin_url).await {
                        let _ = db
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

/// Settings for a test server, as environment variables would give them.
pub struct Settings(HashMap<String, String>);

impl Settings {
    pub fn set(&mut self, var: &str, value: impl ToString) -> &mut Self {
        self.0.insert(var.to_owned(), value.to_string());
        self
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A server whose settings `tweak` may change.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    match postgres_url() {
        Some(url) => spawn(url, Store::Shared, tweak).await,
        None => sqlite_app(tweak).await,
    }
}

/// A server with a database of its own, for tests that break it.
pub async fn spawn_isolated_app() -> TestApp {
    match postgres_url() {
        Some(admin_url) => {
            let name = format!("{}_{}", database_name(&admin_url), short_id());
            let admin = sea_orm::Database::connect(&admin_url)
                .await
                .expect("connect to the test database");
            admin
                .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                .await
                .expect("create an isolated database");
            admin.close().await.expect("close");
            let mut url = url::Url::parse(&admin_url).expect("PULSE_TEST_DATABASE_URL");
            url.set_path(&name);
            spawn(
                url.to_string(),
                Store::OwnPostgres { admin_url, name },
                |_| {},
            )
            .await
        }
        None => sqlite_app(|_| {}).await,
    }
}

async fn sqlite_app(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("pulse.db").display()
    );
    spawn(url, Store::Sqlite(dir), tweak).await
}

fn database_name(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .map(|u| u.path().trim_start_matches('/').to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "pulse_test".into())
}

async fn spawn(url: String, store: Store, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    init_logs();
    let mut settings = Settings(HashMap::new());
    settings
        .set("PULSE_DATABASE_URL", &url)
        .set("PULSE_LISTEN", "127.0.0.1:0")
        .set("PULSE_JWT_SECRET", TEST_SECRET)
        .set("PULSE_DEMO", "false")
        .set("PULSE_DB_MAX_CONNECTIONS", "5")
        // Partitions and data expiry are tested by calling them; run on
        // their own, they would touch every test's tenants at random times.
        .set("PULSE_BACKGROUND_JOBS", "false")
        // Evaluators scan every tenant; a test about alerts turns them on
        // scoped to its own tenant (`alert_app`).
        .set("PULSE_ALERT_EVALUATION", "false")
        // Backfills likewise; a test about them turns them on for its
        // tenant.
        .set("PULSE_ROLLUP_BACKFILL", "false");
    if let Some(redis) = redis_url() {
        settings.set("PULSE_REDIS_URL", redis);
    }
    tweak(&mut settings);
    let config = Config::from_lookup(|k| settings.0.get(k).cloned()).expect("test config");
    let app = Application::build(config).await.expect("build the app");
    let addr = app.local_addr().expect("local addr");
    let state = app.state.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        state,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        shutdown: Some(tx),
        server: Some(server),
        _store: store,
    }
}

pub fn short_id() -> String {
    Uuid::new_v4().simple().to_string()[..10].to_owned()
}

/// A tenant made for one test: one active user per role.
#[derive(Clone, Debug)]
pub struct TestTenant {
    pub id: Uuid,
    pub slug: String,
    pub users: HashMap<Role, user::Model>,
}

impl TestTenant {
    pub fn user(&self, role: Role) -> &user::Model {
        &self.users[&role]
    }
}

pub const ROLES: [Role; 4] = [Role::Viewer, Role::Editor, Role::Admin, Role::SuperAdmin];

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the server as SIGTERM would and waits for it to finish.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(handle) => handle.await.expect("server task"),
            None => Ok(()),
        }
    }

    /// Another server on this one's database, with settings `tweak` may
    /// change: to compare two ways of answering over the same data.
    pub async fn beside(&self, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        spawn(self.state.config.database.url.clone(), Store::Shared, tweak).await
    }

    /// A tenant with a random slug starting with `prefix`.
    pub async fn tenant(&self, prefix: &str) -> TestTenant {
        self.tenant_with(prefix, tenant::TenantStatus::Active).await
    }

    pub async fn tenant_with(&self, prefix: &str, status: tenant::TenantStatus) -> TestTenant {
        self.tenant_slugged(format!("{prefix}-{}", short_id()), status)
            .await
    }

    /// A tenant with exactly `slug` (for settings that name it before the
    /// tenant exists, like `PULSE_ALERT_TENANTS`).
    pub async fn tenant_slugged(&self, slug: String, status: tenant::TenantStatus) -> TestTenant {
        let now = chrono::Utc::now();
        let prefix = slug.split('-').next().unwrap_or("test").to_owned();
        let t = tenant::Entity::insert(tenant::ActiveModel {
            id: Set(Uuid::now_v7()),
            slug: Set(slug.clone()),
            name: Set(format!("Test {prefix}")),
            domain: Set(None),
            status: Set(status),
            plan: Set("test".into()),
            max_users: Set(10),
            settings: Set(json!({})),
            features: Set(json!([])),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .exec_with_returning(&self.state.db)
        .await
        .expect("insert tenant");
        let mut users = HashMap::new();
        for role in ROLES {
            let name = role.as_str().to_lowercase().replace('_', "-");
            let u = user::Entity::insert(user::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(t.id),
                email: Set(format!("{name}@{slug}.test")),
                display_name: Set(None),
                password_hash: Set(None),
                role: Set(role),
                status: Set(user::UserStatus::Active),
                last_login_at: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
            })
            .exec_with_returning(&self.state.db)
            .await
            .expect("insert user");
            users.insert(role, u);
        }
        TestTenant {
            id: t.id,
            slug,
            users,
        }
    }

    /// Sets the tenant's plan and settings directly (as a SUPER_ADMIN
    /// would); they hold from the next request on.
    pub async fn set_plan(&self, tenant: &TestTenant, plan: &str, settings: Value) {
        let mut row: tenant::ActiveModel = tenant::Entity::find_by_id(tenant.id)
            .one(&self.state.db)
            .await
            .expect("read tenant")
            .expect("tenant exists")
            .into();
        row.plan = Set(plan.to_owned());
        row.settings = Set(settings);
        row.update(&self.state.db).await.expect("update tenant");
        self.state.tokens.forget_all();
    }

    /// A token for the tenant's user of `role`, valid for an hour.
    pub fn token(&self, tenant: &TestTenant, role: Role) -> String {
        self.state
            .keys
            .mint(
                &tenant.user(role).id.to_string(),
                &tenant.slug,
                role,
                Duration::from_secs(3600),
            )
            .expect("mint")
    }

    /// POSTs a GraphQL operation; returns the status and the JSON body.
    pub async fn post_gql(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON body"))
    }

    /// The JSON body of a GraphQL operation sent with `token`.
    pub async fn gql_as(&self, token: &str, query: &str, variables: Value) -> Value {
        self.post_gql(Some(token), query, variables).await.1
    }

    pub async fn gql_anonymous(&self, query: &str, variables: Value) -> Value {
        self.post_gql(None, query, variables).await.1
    }

    /// Posts `events` to `/v1/events` with `token`; they must be accepted.
    pub async fn ingest_ok(&self, token: &str, events: Value) {
        let resp = self
            .http
            .post(self.url("/v1/events"))
            .bearer_auth(token)
            .json(&events)
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        assert_eq!(status, 202, "{}", resp.text().await.unwrap_or_default());
    }

    /// The sum of a Prometheus counter's series on `/metrics` (e.g.
    /// `pulse_db_statements_total`), 0 when it has none yet.
    pub async fn counter(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// The `extensions.code` of the first error, if any.
pub fn error_code(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["code"].as_str()
}

/// Asserts the body has no errors and returns its `data`.
#[track_caller]
pub fn data(body: &Value) -> &Value {
    assert!(
        body.get("errors").is_none_or(Value::is_null),
        "unexpected errors: {body}"
    );
    &body["data"]
}

/// Asserts the first error has `code`.
#[track_caller]
pub fn assert_code(body: &Value, code: &str) {
    assert_eq!(error_code(body), Some(code), "expected {code} in {body}");
}

/// A Redis of the test's own, on a free port, that it can pause, stop and
/// start again.
pub struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = OwnRedis { port, child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (installed on the CI machine)");
        self.child = Some(child);
        for _ in 0..100 {
            if self.cli(&["PING"]).is_some_and(|o| o.contains("PONG")) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `pulse serve` as a child process on `database_url` (with Redis when
/// the run has it), listening on a free port; killed when dropped.
pub struct ServerProcess {
    child: std::process::Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    pub fn start(database_url: &str, env: &[(&str, &str)]) -> ServerProcess {
        use std::io::BufRead as _;
        let dir = tempfile::tempdir().expect("scratch");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pulse"));
        for (k, _) in std::env::vars() {
            if k.starts_with("PULSE_") {
                cmd.env_remove(k);
            }
        }
        if let Some(redis) = redis_url() {
            cmd.env("PULSE_REDIS_URL", redis);
        }
        cmd.current_dir(dir.path())
            .arg("serve")
            .env("PULSE_JWT_SECRET", TEST_SECRET)
            .env("PULSE_DATABASE_URL", database_url)
            .env("PULSE_LISTEN", "127.0.0.1:0")
            .env("PULSE_LOG_FORMAT", "json")
            .env("PULSE_LOG", "info")
            .env("PULSE_DEMO", "0")
            .env("PULSE_BACKGROUND_JOBS", "false")
            .env("PULSE_ALERT_EVALUATION", "false")
            .env("PULSE_ROLLUP_BACKFILL", "false")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn pulse serve");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = std::io::BufReader::new(stderr).lines();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let addr = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "pulse serve did not start"
            );
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("pulse serve exited before listening");
            };
            if let Ok(entry) = serde_json::from_str::<Value>(&line)
                && let Some(addr) = entry["addr"].as_str()
            {
                break addr.to_owned();
            }
        };
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ServerProcess {
            child,
            addr,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL: no chance to finish anything or hand anything on.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill");
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
