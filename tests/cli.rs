//! The `pulse` binary: configuration errors, `token`, `migrate`, `schema`,
//! and a real `serve` that logs JSON and stops on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pulse::auth::Role;
use pulse::auth::jwt::JwtKeys;
use pulse::config::JwtConfig;
use serde_json::{Value, json};

use crate::common::*;

/// The binary with a clean `PULSE_*` environment, run in a scratch dir (the
/// dev secret file lands there, never in the repository).
fn pulse(dir: &tempfile::TempDir) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pulse"));
    cmd.current_dir(dir.path());
    for (k, _) in std::env::vars() {
        if k.starts_with("PULSE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PULSE_JWT_SECRET", TEST_SECRET);
    // Alert evaluation scans every tenant of the shared test database;
    // only a test about it turns it on (scoped to its tenant).
    cmd.env("PULSE_ALERT_EVALUATION", "false");
    cmd
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Runs `cmd`, expecting failure with one clear line on stderr.
#[track_caller]
fn fails_with(cmd: &mut Command, needle: &str) {
    let out = cmd.output().expect("run pulse");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("pulse: "), "{stderr}");
    assert!(lines[0].contains(needle), "`{needle}` not in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_configuration_values_stop_start_up_with_one_clear_line() {
    let dir = scratch();
    let cases = [
        ("PULSE_LOG", "loud", "PULSE_LOG"),
        ("PULSE_LOG_FORMAT", "xml", "PULSE_LOG_FORMAT"),
        (
            "PULSE_DATABASE_URL",
            "mysql://localhost/pulse",
            "PULSE_DATABASE_URL",
        ),
        (
            "PULSE_DATABASE_URL",
            "postgres://[::1",
            "PULSE_DATABASE_URL",
        ),
        (
            "PULSE_REDIS_URL",
            "http://localhost:6379",
            "PULSE_REDIS_URL",
        ),
        ("PULSE_LISTEN", "localhost:http", "PULSE_LISTEN"),
        ("PULSE_BODY_LIMIT", "lots", "PULSE_BODY_LIMIT"),
        ("PULSE_MAX_DEPTH", "1", "PULSE_MAX_DEPTH"),
    ];
    for (var, value, needle) in cases {
        fails_with(pulse(&dir).arg("serve").env(var, value), needle);
    }
}

#[test]
fn a_listen_address_in_use_stops_start_up_with_one_clear_line() {
    let dir = scratch();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display());
    fails_with(
        pulse(&dir)
            .args(["serve", "--listen", &addr])
            .env("PULSE_DATABASE_URL", db)
            .env("PULSE_LOG", "error"),
        &format!("cannot listen on {addr}"),
    );
}

#[test]
fn an_unreachable_database_stops_start_up_with_one_clear_line() {
    let dir = scratch();
    fails_with(
        pulse(&dir)
            .arg("migrate")
            .env(
                "PULSE_DATABASE_URL",
                "postgres://nobody@127.0.0.1:1/nothing",
            )
            .env("PULSE_LOG", "off"),
        "cannot open database",
    );
}

#[test]
fn the_checked_in_schema_is_what_the_code_generates() {
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
            .expect("schema.graphql");
    let generated = pulse::graphql::sdl();
    assert!(
        checked_in == generated,
        "schema.graphql is stale: run `cargo run -- schema > schema.graphql`"
    );
    let out = pulse(&scratch()).arg("schema").output().expect("run");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), generated);
}

#[test]
fn token_with_a_user_needs_no_database_and_prints_one_line() {
    let out = pulse(&scratch())
        .args([
            "token",
            "--tenant",
            "acme",
            "--role",
            "editor",
            "--user",
            "Ann@Acme.example",
            "--ttl",
            "30m",
        ])
        .env(
            "PULSE_DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/nothing",
        )
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    assert_eq!(stdout.lines().count(), 1);
    let config = JwtConfig {
        secret: None,
        issuer: None,
        audience: None,
        leeway: Duration::ZERO,
    };
    let claims = JwtKeys::new(TEST_SECRET.as_bytes(), &config)
        .verify(stdout.trim())
        .expect("verifies");
    assert_eq!(
        (claims.sub.as_str(), claims.tenant.as_str(), claims.role),
        ("ann@acme.example", "acme", Role::Editor)
    );
    let ttl = claims.exp - claims.iat.expect("iat");
    assert_eq!(ttl, 1800);

    let out = pulse(&scratch())
        .args([
            "token", "--tenant", "acme", "--role", "owner", "--user", "a@b.c",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role `owner`"));
}

#[tokio::test]
async fn token_and_migrate_work_against_the_servers_database() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let url = app.state.config.database.url.clone();
    let dir = scratch();
    for _ in 0..2 {
        let out = pulse(&dir)
            .arg("migrate")
            .env("PULSE_DATABASE_URL", &url)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = pulse(&dir)
        .args(["token", "--tenant", &acme.slug, "--role", "ADMIN"])
        .env("PULSE_DATABASE_URL", &url)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without --user: a service token, acting for the tenant as
    // `service:cli`, not as whichever user came first.
    let token = String::from_utf8(out.stdout).expect("utf8");
    let body = app
        .gql_as(
            token.trim(),
            "{ users(first: 10) { edges { node { email } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        data(&body)["users"]["edges"].as_array().map(Vec::len),
        Some(4)
    );
    assert_code(
        &app.gql_as(token.trim(), "{ me { role } }", json!({})).await,
        "FORBIDDEN",
    );

    fails_with(
        pulse(&dir)
            .args(["token", "--tenant", "no-such-tenant", "--role", "ADMIN"])
            .env("PULSE_DATABASE_URL", &url)
            .env("PULSE_LOG", "off"),
        "no-such-tenant",
    );
}

/// A child process that is killed and reaped if a test fails before it
/// stops on its own.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Starts `pulse serve` on a free port with JSON logs; returns the server,
/// its address and a reader of its log lines.
/// `database_url` is an in-process test app's, so the test can make
/// fixtures there.
fn serve(
    dir: &tempfile::TempDir,
    database_url: &str,
) -> (Server, String, std::sync::mpsc::Receiver<String>) {
    serve_with(dir, database_url, &[])
}

/// [`serve`], with more environment.
fn serve_with(
    dir: &tempfile::TempDir,
    database_url: &str,
    env: &[(&str, &str)],
) -> (Server, String, std::sync::mpsc::Receiver<String>) {
    let mut cmd = pulse(dir);
    cmd.envs(env.iter().copied());
    cmd.arg("serve")
        .env("PULSE_LISTEN", "127.0.0.1:0")
        .env("PULSE_LOG_FORMAT", "json")
        .env("PULSE_DEMO", "0")
        .env("PULSE_DATABASE_URL", database_url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = Server(cmd.spawn().expect("spawn pulse serve"));
    let stderr = child.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("pulse serve logs that it listens");
        let entry: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if let Some(addr) = entry["addr"].as_str() {
            return (child, addr.to_owned(), rx);
        }
    }
}

#[tokio::test]
async fn serve_logs_json_request_spans_without_secrets_and_stops_on_sigterm() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let password = "a password for the log test";
    let created = app
        .gql_as(
            &app.token(&acme, Role::Admin),
            "mutation($i: UserInput!) { createUser(input: $i) { id } }",
            json!({ "i": { "email": "logged@example.com", "password": password, "role": "ADMIN" } }),
        )
        .await;
    data(&created);
    let dir = scratch();
    let (mut child, addr, logs) = serve(&dir, &app.state.config.database.url);
    let token = app.token(&acme, Role::Admin);
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("http://{addr}/graphql"))
        .bearer_auth(&token)
        .header("x-request-id", "cli-span-1")
        .json(&json!({ "query": "query WhoAmI { me { role } }" }))
        .send()
        .await
        .expect("send");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(data(&body)["me"]["role"], "ADMIN");
    let login = json!({
        "query": "mutation($t: String!, $p: String!) { login(tenant: $t, email: \"logged@example.com\", password: $p) { token } }",
        "variables": { "t": acme.slug, "p": password },
    });
    let body: Value = client
        .post(format!("http://{addr}/graphql"))
        .json(&login)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    data(&body);

    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "pulse did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit}");

    let lines: Vec<String> = logs.try_iter().collect();
    let all = lines.join("\n");
    for secret in [token.as_str(), TEST_SECRET, password] {
        assert!(!all.contains(secret), "a secret reached the log:\n{all}");
    }
    let entries: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let finished = entries
        .iter()
        .find(|e| e["message"] == "request finished" && e["span"]["request_id"] == "cli-span-1")
        .unwrap_or_else(|| panic!("no request line in\n{all}"));
    assert_eq!(finished["span"]["tenant"], acme.slug.as_str());
    assert_eq!(finished["span"]["operation"], "WhoAmI");
    assert!(finished["duration_ms"].is_number());
    assert!(entries.iter().any(|e| e["message"] == "stopped"), "{all}");
}

/// Runs `cmd` to success and returns the one JSON line it printed.
#[track_caller]
fn json_line(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("run pulse");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    serde_json::from_str(&stdout).expect("one JSON line")
}

/// A production database starts empty: no tenant, no user, so no token
/// can exist. The commands create the first ones, idempotently, through
/// the same rules and audit as the mutations.
#[tokio::test]
async fn a_fresh_database_is_bootstrapped_from_the_command_line_to_a_working_token() {
    let app = spawn_isolated_app().await;
    let url = app.state.config.database.url.clone();
    let dir = scratch();
    let slug = format!("boot-{}", short_id());
    let create_tenant = || {
        let mut cmd = pulse(&dir);
        cmd.args(["tenant", "create", "--slug", &slug, "--name", "Boot Inc"])
            .env("PULSE_DATABASE_URL", &url);
        cmd
    };
    let first = json_line(&mut create_tenant());
    assert_eq!(first["slug"], slug.as_str());
    assert_eq!(first["created"], true);
    let again = json_line(&mut create_tenant());
    assert_eq!(
        (&again["id"], &again["created"]),
        (&first["id"], &json!(false))
    );

    let create_user = || {
        let mut cmd = pulse(&dir);
        cmd.args([
            "user",
            "create",
            "--tenant",
            &slug,
            "--email",
            "Root@Boot.test",
            "--role",
            "ADMIN",
            "--password-stdin",
        ])
        .env("PULSE_DATABASE_URL", &url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        cmd
    };
    let run_with_password = |mut cmd: Command| {
        let mut child = cmd.spawn().expect("spawn");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"correct horse battery\n")
            .expect("password");
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).expect("one JSON line")
    };
    let user = run_with_password(create_user());
    assert_eq!(
        (
            &user["email"],
            &user["role"],
            &user["status"],
            &user["created"]
        ),
        (
            &json!("root@boot.test"),
            &json!("ADMIN"),
            &json!("ACTIVE"),
            &json!(true)
        )
    );
    assert_eq!(run_with_password(create_user())["created"], false);

    // The password works, and so does a token for the user.
    let login = app
        .gql_anonymous(
            "mutation($t: String!) { login(tenant: $t, email: \"root@boot.test\", password: \"correct horse battery\") { token } }",
            json!({ "t": slug }),
        )
        .await;
    assert!(data(&login)["login"]["token"].is_string());
    let out = pulse(&dir)
        .args([
            "token",
            "--tenant",
            &slug,
            "--role",
            "ADMIN",
            "--user",
            "root@boot.test",
        ])
        .output()
        .expect("run");
    let token = String::from_utf8(out.stdout).expect("utf8");
    let me = app
        .gql_as(
            token.trim(),
            "{ me { role user { email } tenant { name } } }",
            json!({}),
        )
        .await;
    assert_eq!(data(&me)["me"]["role"], "ADMIN");
    assert_eq!(data(&me)["me"]["tenant"]["name"], "Boot Inc");
    let audit = app
        .gql_as(
            token.trim(),
            "{ auditLog(first: 10) { edges { node { action actor } } } }",
            json!({}),
        )
        .await;
    let entries: Vec<(String, String)> = data(&audit)["auditLog"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e["node"]["action"].as_str().unwrap_or_default().to_owned(),
                e["node"]["actor"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        entries.contains(&("tenant.create".into(), "service:cli".into())),
        "{entries:?}"
    );
    assert!(
        entries.contains(&("user.create".into(), "service:cli".into())),
        "{entries:?}"
    );

    // Bad input is one clear line, and nothing is created.
    fails_with(
        pulse(&dir)
            .args([
                "user",
                "create",
                "--tenant",
                "no-such-tenant",
                "--email",
                "a@b.co",
                "--role",
                "VIEWER",
            ])
            .env("PULSE_DATABASE_URL", &url)
            .env("PULSE_LOG", "off"),
        "tenant",
    );
    fails_with(
        pulse(&dir)
            .args(["tenant", "create", "--slug", "Bad Slug!", "--name", "x"])
            .env("PULSE_DATABASE_URL", &url)
            .env("PULSE_LOG", "off"),
        "slug",
    );
}

/// Read-your-writes between two server processes sharing PostgreSQL and
/// Redis: an event acknowledged by one is in the other's next answer,
/// though that one had the bucket cached.
#[tokio::test]
async fn an_event_acknowledged_by_one_process_is_in_the_next_answer_of_another() {
    let (Some(redis), true) = (redis_url(), is_postgres()) else {
        eprintln!("skipped: processes share the cache only through Redis and PostgreSQL");
        return;
    };
    let app = spawn_app().await;
    let t = app.tenant("two-procs").await;
    let token = app.token(&t, Role::Editor);
    let dir = scratch();
    let (_child, addr, _logs) = serve_with(
        &dir,
        &app.state.config.database.url,
        &[
            ("PULSE_REDIS_URL", redis.as_str()),
            ("PULSE_BACKGROUND_JOBS", "false"),
        ],
    );
    let other = reqwest::Client::new();
    let day = |d: i64| {
        (chrono::Utc::now()
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            - chrono::Duration::days(d))
        .to_rfc3339()
    };
    let query = json!({
        "query": "query($q: MetricQueryInput!) { metrics(query: $q) { total cached } }",
        "variables": { "q": { "measure": "COUNT", "granularity": "DAY", "eventTypes": ["visit"],
                              "range": { "from": day(3), "to": day(0) } } },
    });
    let ask = || async {
        let body: Value = other
            .post(format!("http://{addr}/graphql"))
            .bearer_auth(&token)
            .json(&query)
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        let m = &body["data"]["metrics"];
        (
            m["total"].as_f64().unwrap_or(-1.0),
            m["cached"].as_bool(),
            body.clone(),
        )
    };
    let visit = |hour: i64| {
        let at = chrono::Utc::now()
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            - chrono::Duration::days(2)
            + chrono::Duration::hours(hour);
        json!([{ "type": "visit", "userId": "u", "timestamp": at.to_rfc3339() }])
    };
    app.ingest_ok(&token, visit(1)).await;
    assert_eq!(ask().await.0, 1.0);
    let (total, cached, body) = ask().await;
    assert_eq!((total, cached), (1.0, Some(true)), "{body}");
    for n in 2..=4 {
        app.ingest_ok(&token, visit(n)).await;
        let (total, _, body) = ask().await;
        assert_eq!(
            total, n as f64,
            "the other process missed an acknowledged event: {body}"
        );
    }
}
