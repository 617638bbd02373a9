//! Alerts end to end: definitions (roles, validation, limits, audit,
//! secrets), the state machine on a real timeline through the scheduler,
//! no data and errors, change conditions, `testAlert`, signed webhooks
//! (retries, final failure, replays refused by the receiver), silences,
//! `alertEvents`, tenant isolation, and with two instances on PostgreSQL
//! exactly one notification per transition and lease takeover after a
//! kill.
//!
//! Each test that runs the evaluator scopes it to its own tenant
//! (`PULSE_ALERT_TENANTS`), with intervals of a second or two and a
//! 100 ms poll; waits poll the API (or read the socket) with generous
//! deadlines rather than sleeping for fixed times.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use pulse::auth::Role;
use pulse::entities::tenant::TenantStatus;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::ws::Ws;
use crate::common::*;

const SECRET: &str = "a-webhook-secret-of-some-length";

const ALERT_FIELDS: &str = "id name state stateSince lastValue lastError lastTriggeredAt
    evaluateEvery forDuration keepFiringFor noData isActive threshold condition reducer
    labels silencedUntil silenceReason webhooks { id url headerNames hasSecret }
    owner { email }";

/// A server whose evaluator works for `slug` only, fast.
async fn alert_app(slug: &str, extra: &[(&str, &str)]) -> TestApp {
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let slug = slug.to_owned();
    spawn_app_with(move |s| {
        s.set("PULSE_ALERT_EVALUATION", "true")
            .set("PULSE_ALERT_TENANTS", &slug)
            .set("PULSE_ALERT_MIN_INTERVAL", "1s")
            .set("PULSE_ALERT_POLL_MS", "100")
            .set("PULSE_WEBHOOK_ALLOW_PRIVATE", "true")
            .set("PULSE_WEBHOOK_BACKOFF_MS", "100")
            .set("PULSE_WEBHOOK_BACKOFF_MAX_MS", "300")
            .set("PULSE_WEBHOOK_TIMEOUT_MS", "2000")
            .set("PULSE_WS_KEEPALIVE_MS", "5000");
        for (k, v) in &extra {
            s.set(k, v);
        }
    })
    .await
}

fn slug(prefix: &str) -> String {
    format!("{prefix}-{}", short_id())
}

fn ev(kind: &str) -> Value {
    json!({ "type": kind, "timestamp": chrono::Utc::now().to_rfc3339() })
}

fn ev_at(kind: &str, ago: chrono::Duration) -> Value {
    json!({ "type": kind, "timestamp": (chrono::Utc::now() - ago).to_rfc3339() })
}

/// COUNT of `kind` over the last hour, one bucket.
fn count_of(kind: &str) -> Value {
    json!({ "measure": "COUNT", "eventTypes": [kind], "range": { "last": "1h" } })
}

async fn create(app: &TestApp, token: &str, input: Value) -> Value {
    app.gql_as(
        token,
        &format!("mutation($i: AlertInput!) {{ createAlert(input: $i) {{ {ALERT_FIELDS} }} }}"),
        json!({ "i": input }),
    )
    .await
}

async fn create_ok(app: &TestApp, token: &str, input: Value) -> Value {
    let body = create(app, token, input).await;
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["createAlert"].clone()
}

async fn read(app: &TestApp, token: &str, id: &str) -> Value {
    let body = app
        .gql_as(
            token,
            &format!(
                "query($id: ID!) {{ alert(id: $id) {{ {ALERT_FIELDS}
                    history(first: 50) {{ edges {{ node {{ from to value threshold error notification
                        deliveries {{ url status attempts responseStatus lastError sentAt }} }} }} }} }} }}"
            ),
            json!({ "id": id }),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["alert"].clone()
}

/// The alert's transitions, oldest first, as `(from, to)`.
fn transitions(alert: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = alert["history"]["edges"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| {
            (
                e["node"]["from"].as_str().expect("from").to_owned(),
                e["node"]["to"].as_str().expect("to").to_owned(),
            )
        })
        .collect();
    out.reverse();
    out
}

/// Polls the alert until `done` holds (30 s at most).
async fn wait_for(
    app: &TestApp,
    token: &str,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alert = read(app, token, id).await;
        if done(&alert) {
            return alert;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {alert}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a counter to reach `at_least`. The loops count an outcome
/// just after recording it, so a count may trail what a read of the
/// alert already shows by a moment.
async fn counter_reaches(app: &TestApp, name: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counted = app.counter(name).await;
        if counted >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {counted}, expected at least {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pair(from: &str, to: &str) -> (String, String) {
    (from.to_owned(), to.to_owned())
}

/// A webhook receiver that does what the API asks of one: checks the
/// HMAC over `"<timestamp>.<body>"` in constant time, refuses timestamps
/// older than its tolerance and deliveries it already accepted (replays),
/// and answers with scripted statuses first (to make Pulse retry).
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    inner: Arc<Mutex<ReceiverState>>,
}

struct ReceiverState {
    secret: String,
    tolerance_secs: i64,
    script: VecDeque<u16>,
    accepted: Vec<Value>,
    /// Every request as it came: headers and body.
    raw: Vec<(HeaderMap, Bytes)>,
    /// `(status, why)` of each refusal.
    refused: Vec<(u16, String)>,
    seen: HashSet<String>,
}

impl Receiver {
    async fn start(secret: &str, script: &[u16]) -> Receiver {
        let inner = Arc::new(Mutex::new(ReceiverState {
            secret: secret.to_owned(),
            tolerance_secs: 300,
            script: script.iter().copied().collect(),
            accepted: Vec::new(),
            raw: Vec::new(),
            refused: Vec::new(),
            seen: HashSet::new(),
        }));
        let state = inner.clone();
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { receive(&state, headers, body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Receiver { addr, inner }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn accepted(&self) -> Vec<Value> {
        self.inner.lock().expect("receiver").accepted.clone()
    }

    fn refused(&self) -> Vec<(u16, String)> {
        self.inner.lock().expect("receiver").refused.clone()
    }

    fn requests(&self) -> usize {
        self.inner.lock().expect("receiver").raw.len()
    }

    async fn wait_accepted(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.accepted();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver accepted {} of {n}; refused {:?}",
                got.len(),
                self.refused()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn receive(state: &Mutex<ReceiverState>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let mut s = state.lock().expect("receiver");
    s.raw.push((headers.clone(), body.clone()));
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let refuse = |s: &mut ReceiverState, status: u16, why: &str| {
        s.refused.push((status, why.to_owned()));
        (
            StatusCode::from_u16(status).expect("status"),
            why.to_owned(),
        )
    };
    let Ok(timestamp) = header("x-pulse-timestamp").parse::<i64>() else {
        return refuse(&mut s, 400, "no timestamp");
    };
    let Some(hex_sig) = header("x-pulse-signature")
        .strip_prefix("sha256=")
        .map(str::to_owned)
    else {
        return refuse(&mut s, 401, "no signature");
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(s.secret.as_bytes()).expect("key");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&body);
    let valid = hex::decode(&hex_sig)
        .map(|sig| mac.verify_slice(&sig).is_ok())
        .unwrap_or(false);
    if !valid {
        return refuse(&mut s, 401, "bad signature");
    }
    if (chrono::Utc::now().timestamp() - timestamp).abs() > s.tolerance_secs {
        return refuse(&mut s, 401, "stale timestamp");
    }
    let payload: Value = serde_json::from_slice(&body).expect("JSON body");
    let id = payload["id"].as_str().unwrap_or_default().to_owned();
    if id != header("x-pulse-delivery") {
        return refuse(&mut s, 400, "delivery id mismatch");
    }
    if s.seen.contains(&id) {
        return refuse(&mut s, 409, "replayed delivery");
    }
    if let Some(status) = s.script.pop_front()
        && status != 200
    {
        return refuse(&mut s, status, "scripted failure");
    }
    s.seen.insert(id);
    s.accepted.push(payload);
    (StatusCode::OK, "ok".into())
}

#[tokio::test]
async fn alerts_are_defined_by_editors_changed_by_their_owners_and_audited() {
    let app = spawn_app_with(|s| {
        s.set("PULSE_MAX_ALERTS_PER_TENANT", "2");
    })
    .await;
    let t = app.tenant("alert-crud").await;
    let (viewer, editor, admin) = (
        app.token(&t, Role::Viewer),
        app.token(&t, Role::Editor),
        app.token(&t, Role::Admin),
    );
    let input = json!({
        "name": "Sign-ups dropped", "description": "fewer than 5 an hour",
        "query": count_of("signup"), "condition": "BELOW", "threshold": 5,
        "evaluateEvery": "1m", "forDuration": "5m", "keepFiringFor": "10m",
        "noData": "KEEP_LAST", "labels": { "team": "growth" },
        "webhooks": [{ "url": "https://hooks.example/pulse", "secret": SECRET,
                       "headers": { "Authorization": "Bearer abc" } }],
    });

    // VIEWERs read but do not write.
    assert_code(&create(&app, &viewer, input.clone()).await, "FORBIDDEN");
    let created = create_ok(&app, &editor, input.clone()).await;
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["state"], "OK");
    assert_eq!(created["evaluateEvery"], "1m");
    assert_eq!(created["forDuration"], "5m");
    assert_eq!(created["keepFiringFor"], "10m");
    assert_eq!(created["noData"], "KEEP_LAST");
    assert_eq!(created["reducer"], "LAST");
    assert_eq!(created["labels"], json!({ "team": "growth" }));
    assert_eq!(
        created["owner"]["email"],
        t.user(Role::Editor).email.as_str()
    );
    // The secret and the header's value never come back.
    let hook = &created["webhooks"][0];
    assert_eq!(hook["hasSecret"], true);
    assert_eq!(hook["headerNames"], json!(["Authorization"]));
    let text = created.to_string();
    assert!(
        !text.contains(SECRET) && !text.contains("Bearer abc"),
        "{text}"
    );
    let listed = app
        .gql_as(
            &viewer,
            "{ alerts { edges { node { id name } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        data(&listed)["alerts"]["edges"][0]["node"]["id"],
        id.as_str()
    );

    // Another EDITOR may not change it; its owner and ADMINs may. An
    // update naming the webhook keeps its secret.
    let other_editor = app
        .state
        .keys
        .mint(
            &t.user(Role::Admin).id.to_string(),
            &t.slug,
            Role::Editor,
            Duration::from_secs(600),
        )
        .expect("token");
    let update = "mutation($id: ID!, $i: AlertInput!) { updateAlert(id: $id, input: $i) {
        threshold webhooks { id hasSecret } } }";
    let mut changed = input.clone();
    changed["threshold"] = json!(3);
    changed["webhooks"] = json!([{ "id": hook["id"], "url": "https://hooks.example/other" }]);
    assert_code(
        &app.gql_as(&other_editor, update, json!({ "id": id, "i": changed }))
            .await,
        "FORBIDDEN",
    );
    let updated = app
        .gql_as(&admin, update, json!({ "id": id, "i": changed }))
        .await;
    assert_eq!(data(&updated)["updateAlert"]["threshold"], 3.0);
    assert_eq!(
        data(&updated)["updateAlert"]["webhooks"][0]["hasSecret"],
        true
    );
    assert_eq!(
        data(&updated)["updateAlert"]["webhooks"][0]["id"],
        hook["id"]
    );

    // Silences: in the future, at most 90 days ahead.
    let silence =
        "mutation($id: ID!, $u: DateTime!) { silenceAlert(id: $id, until: $u, reason: \"deploy\") {
        silencedUntil silenceReason } }";
    let past = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    assert_code(
        &app.gql_as(&editor, silence, json!({ "id": id, "u": past }))
            .await,
        "BAD_USER_INPUT",
    );
    let far = (chrono::Utc::now() + chrono::Duration::days(91)).to_rfc3339();
    assert_code(
        &app.gql_as(&editor, silence, json!({ "id": id, "u": far }))
            .await,
        "BAD_USER_INPUT",
    );
    let soon = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let silenced = app
        .gql_as(&editor, silence, json!({ "id": id, "u": soon }))
        .await;
    assert_eq!(data(&silenced)["silenceAlert"]["silenceReason"], "deploy");
    let lifted = app
        .gql_as(
            &editor,
            "mutation($id: ID!) { unsilenceAlert(id: $id) { silencedUntil } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        data(&lifted)["unsilenceAlert"]["silencedUntil"],
        Value::Null
    );

    // The per-tenant limit: at it, then past it.
    create_ok(&app, &editor, input.clone()).await;
    assert_code(
        &create(&app, &editor, input.clone()).await,
        "LIMIT_EXCEEDED",
    );

    // Every change is in the audit trail, without the secret.
    let audit = app
        .gql_as(
            &admin,
            "{ auditLog(first: 20) { edges { node { action after } } } }",
            json!({}),
        )
        .await;
    let actions: Vec<&str> = data(&audit)["auditLog"]["edges"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["node"]["action"].as_str())
        .filter(|a| a.starts_with("alert."))
        .collect();
    for expected in [
        "alert.create",
        "alert.update",
        "alert.silence",
        "alert.unsilence",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    assert!(!audit.to_string().contains(SECRET));

    let deleted = app
        .gql_as(
            &editor,
            "mutation($id: ID!) { deleteAlert(id: $id) }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(data(&deleted)["deleteAlert"], true);
    let gone = app
        .gql_as(
            &viewer,
            "query($id: ID!) { alert(id: $id) { id } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(data(&gone)["alert"], Value::Null);
}

#[tokio::test]
async fn bad_alert_definitions_get_a_clear_error_naming_the_field() {
    let app = spawn_app().await;
    let t = app.tenant("alert-bad").await;
    let editor = app.token(&t, Role::Editor);
    let good = json!({
        "name": "ok", "query": count_of("signup"), "condition": "ABOVE",
        "threshold": 1, "evaluateEvery": "30s",
    });
    let with = |patch: Value| {
        let mut input = good.clone();
        for (k, v) in patch.as_object().expect("patch") {
            input[k] = v.clone();
        }
        input
    };
    let funnel = app
        .gql_as(
            &editor,
            "mutation { createSavedQuery(input: { name: \"f\", funnel: { steps: [{eventType: \"a\"}, {eventType: \"b\"}],
                range: { last: \"7d\" }, conversionWindow: \"1d\" } }) { id } }",
            json!({}),
        )
        .await;
    let funnel_id = data(&funnel)["createSavedQuery"]["id"].clone();
    let cases = [
        (
            with(json!({ "evaluateEvery": "5s" })),
            "input.evaluateEvery",
        ),
        (
            with(json!({ "evaluateEvery": "2d" })),
            "input.evaluateEvery",
        ),
        (
            with(json!({ "evaluateEvery": "soon" })),
            "input.evaluateEvery",
        ),
        (with(json!({ "forDuration": "8d" })), "input.forDuration"),
        (with(json!({ "name": "" })), "input.name"),
        (with(json!({ "savedQueryId": funnel_id })), "input"),
        (
            with(json!({ "query": null, "savedQueryId": funnel_id })),
            "input.savedQueryId",
        ),
        (
            with(
                json!({ "query": { "measure": "COUNT", "groupBy": ["type"], "range": { "last": "1h" } } }),
            ),
            "input.query",
        ),
        (
            with(json!({ "query": { "measure": "COUNT", "range": {
                "from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z" } } })),
            "input.query",
        ),
        (
            with(json!({ "webhooks": [{ "url": "ftp://x.example/" }] })),
            "input.webhooks[0].url",
        ),
        (
            with(
                json!({ "webhooks": [{ "url": "https://x.example/", "headers": { "Host": "evil" } }] }),
            ),
            "input.webhooks[0].headers.Host",
        ),
        (
            with(json!({ "webhooks": [{ "url": "https://x.example/", "secret": "short" }] })),
            "input.webhooks[0].secret",
        ),
        (
            with(
                json!({ "webhooks": (0..6).map(|i| json!({ "url": format!("https://x.example/{i}") })).collect::<Vec<_>>() }),
            ),
            "input.webhooks",
        ),
        (
            with(json!({ "labels": { "Bad Name": "x" } })),
            "input.labels.Bad Name",
        ),
    ];
    for (input, field) in cases {
        let body = create(&app, &editor, input.clone()).await;
        assert_code(&body, "BAD_USER_INPUT");
        assert_eq!(
            body["errors"][0]["extensions"]["field"], field,
            "{input} → {body}"
        );
    }
    // At the limits: 5 webhooks and the minimum interval are fine.
    let mut at_limit = with(json!({ "evaluateEvery": "10s" }));
    at_limit["webhooks"] = json!(
        (0..5)
            .map(|i| json!({ "url": format!("https://x.example/{i}") }))
            .collect::<Vec<_>>()
    );
    create_ok(&app, &editor, at_limit).await;
}

#[tokio::test]
async fn an_alert_walks_pending_firing_recovering_ok_on_schedule() {
    let slug = slug("alert-sm");
    let app = alert_app(&slug, &[]).await;
    let t = app.tenant_slugged(slug, TenantStatus::Active).await;
    let editor = app.token(&t, Role::Editor);
    let viewer = app.token(&t, Role::Viewer);
    let mut events = Ws::connect(&app, &viewer).await;
    events
        .subscribe(
            "a",
            "subscription { alertEvents { alertId from to value at alert { name } } }",
            json!({}),
        )
        .await;
    app.ingest_ok(&editor, json!([ev("signup"), ev("signup"), ev("signup")]))
        .await;
    let input = json!({
        "name": "busy", "query": count_of("signup"), "condition": "ABOVE", "threshold": 2,
        "evaluateEvery": "1s", "forDuration": "2s", "keepFiringFor": "2s",
    });
    let alert = create_ok(&app, &editor, input.clone()).await;
    let id = alert["id"].as_str().expect("id").to_owned();

    // PENDING first, FIRING once the condition has held for 2 s.
    let pending = events.next_payload("a").await;
    let ev1 = &pending["data"]["alertEvents"];
    assert_eq!(
        (ev1["from"].as_str(), ev1["to"].as_str()),
        (Some("OK"), Some("PENDING")),
        "{pending}"
    );
    assert_eq!(ev1["value"], 3.0);
    assert_eq!(ev1["alert"]["name"], "busy");
    let firing = events.next_payload("a").await;
    let ev2 = &firing["data"]["alertEvents"];
    assert_eq!(
        (ev2["from"].as_str(), ev2["to"].as_str()),
        (Some("PENDING"), Some("FIRING")),
        "{firing}"
    );
    let at = |e: &Value| {
        chrono::DateTime::parse_from_rfc3339(e["at"].as_str().expect("at")).expect("time")
    };
    let held = at(ev2) - at(ev1);
    assert!(held >= chrono::Duration::seconds(2), "fired after {held}");
    let now = read(&app, &viewer, &id).await;
    assert_eq!(now["state"], "FIRING");
    assert!(now["lastTriggeredAt"].is_string());

    // Raise the bar: the condition clears, the alert recovers for 2 s,
    // then resolves.
    let mut raised = input.clone();
    raised["threshold"] = json!(10);
    let updated = app
        .gql_as(
            &editor,
            "mutation($id: ID!, $i: AlertInput!) { updateAlert(id: $id, input: $i) { id } }",
            json!({ "id": id, "i": raised }),
        )
        .await;
    assert!(updated.get("errors").is_none(), "{updated}");
    let recovering = events.next_payload("a").await;
    assert_eq!(
        recovering["data"]["alertEvents"]["to"], "RECOVERING",
        "{recovering}"
    );
    let ok = events.next_payload("a").await;
    assert_eq!(ok["data"]["alertEvents"]["to"], "OK", "{ok}");
    assert!(
        at(&ok["data"]["alertEvents"]) - at(&recovering["data"]["alertEvents"])
            >= chrono::Duration::seconds(2)
    );

    let done = read(&app, &viewer, &id).await;
    assert_eq!(
        transitions(&done),
        vec![
            pair("OK", "PENDING"),
            pair("PENDING", "FIRING"),
            pair("FIRING", "RECOVERING"),
            pair("RECOVERING", "OK")
        ]
    );
    let history = &done["history"]["edges"];
    // Newest first: the resolution compared 3 with the new threshold.
    assert_eq!(history[0]["node"]["value"], 3.0);
    assert_eq!(history[0]["node"]["threshold"], 10.0);
    // No webhooks: nothing owed.
    assert_eq!(history[0]["node"]["notification"], Value::Null);
    counter_reaches(&app, "pulse_alert_transitions_total", 4.0).await;
}

#[tokio::test]
async fn no_data_and_failing_queries_are_states_of_their_own() {
    let slug = slug("alert-nodata");
    let app = alert_app(&slug, &[]).await;
    let t = app.tenant_slugged(slug, TenantStatus::Active).await;
    let editor = app.token(&t, Role::Editor);
    // AVG of a property nobody sends: no value at all.
    let blind = json!({ "measure": "AVG", "field": "properties.ms", "eventTypes": ["load"], "range": { "last": "1h" } });
    let no_data = create_ok(&app, &editor, json!({
        "name": "blind", "query": blind, "condition": "ABOVE", "threshold": 100, "evaluateEvery": "1s",
    }))
    .await;
    let keep_last = create_ok(&app, &editor, json!({
        "name": "steady", "query": blind, "condition": "ABOVE", "threshold": 100, "evaluateEvery": "1s",
        "noData": "KEEP_LAST",
    }))
    .await;
    let as_ok = create_ok(&app, &editor, json!({
        "name": "calm", "query": blind, "condition": "ABOVE", "threshold": 100, "evaluateEvery": "1s",
        "noData": "OK",
    }))
    .await;
    // A saved query deleted from under its alert: the query fails.
    let saved = app
        .gql_as(&editor, "mutation($q: MetricQueryInput!) { createSavedQuery(input: { name: \"s\", query: $q }) { id } }",
            json!({ "q": count_of("signup") }))
        .await;
    let saved_id = data(&saved)["createSavedQuery"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let broken = create_ok(&app, &editor, json!({
        "name": "broken", "savedQueryId": saved_id, "condition": "ABOVE", "threshold": 1, "evaluateEvery": "1s",
    }))
    .await;
    let del = app
        .gql_as(
            &editor,
            "mutation($id: ID!) { deleteSavedQuery(id: $id) }",
            json!({ "id": saved_id }),
        )
        .await;
    assert_eq!(data(&del)["deleteSavedQuery"], true);

    let id = |a: &Value| a["id"].as_str().expect("id").to_owned();
    let blind_now = wait_for(&app, &editor, &id(&no_data), "NO_DATA", |a| {
        a["state"] == "NO_DATA"
    })
    .await;
    assert_eq!(transitions(&blind_now), vec![pair("OK", "NO_DATA")]);
    assert_eq!(
        blind_now["history"]["edges"][0]["node"]["value"],
        Value::Null
    );
    let failed = wait_for(&app, &editor, &id(&broken), "ERROR", |a| {
        a["state"] == "ERROR"
    })
    .await;
    assert!(
        failed["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("NOT_FOUND")),
        "{failed}"
    );
    assert!(failed["history"]["edges"][0]["node"]["error"].is_string());
    // KEEP_LAST and OK have been evaluated (the others moved) and stayed.
    for quiet in [&keep_last, &as_ok] {
        let a = wait_for(&app, &editor, &id(quiet), "an evaluation", |a| {
            a["lastError"].is_null() && !a["history"]["edges"].is_null()
        })
        .await;
        assert_eq!(a["state"], "OK");
        assert!(transitions(&a).is_empty(), "{a}");
    }
    counter_reaches(&app, "pulse_alert_evaluations_total", 4.0).await;
}

#[tokio::test]
async fn change_conditions_compare_with_the_previous_window() {
    let app = spawn_app().await;
    let t = app.tenant("alert-change").await;
    let editor = app.token(&t, Role::Editor);
    // 4 purchases 90 minutes ago (the previous hour), 10 in the last hour:
    // +150 %.
    let mut batch: Vec<Value> = (0..4)
        .map(|_| ev_at("purchase", chrono::Duration::minutes(90)))
        .collect();
    batch.extend((0..10).map(|_| ev_at("purchase", chrono::Duration::minutes(10))));
    app.ingest_ok(&editor, Value::Array(batch)).await;
    let test = "mutation($id: ID!) { testAlert(id: $id) { value current previous conditionMet state wouldBe error } }";
    let make = |condition: &str, threshold: f64| {
        json!({ "name": condition, "query": count_of("purchase"), "condition": condition,
                "threshold": threshold, "evaluateEvery": "1m" })
    };
    let up = create_ok(&app, &editor, make("CHANGE_PCT_ABOVE", 100.0)).await;
    let r = app.gql_as(&editor, test, json!({ "id": up["id"] })).await;
    let r = &data(&r)["testAlert"];
    assert_eq!(r["current"], 10.0);
    assert_eq!(r["previous"], 4.0);
    assert_eq!(r["value"], 150.0);
    assert_eq!(r["conditionMet"], true);
    assert_eq!(r["state"], "OK");
    assert_eq!(r["wouldBe"], "FIRING");

    let down = create_ok(&app, &editor, make("CHANGE_PCT_BELOW", -50.0)).await;
    let r = app.gql_as(&editor, test, json!({ "id": down["id"] })).await;
    assert_eq!(data(&r)["testAlert"]["conditionMet"], false);
    assert_eq!(data(&r)["testAlert"]["wouldBe"], "OK");

    // testAlert changed nothing.
    let after = read(&app, &editor, up["id"].as_str().expect("id")).await;
    assert_eq!(after["state"], "OK");
    assert!(transitions(&after).is_empty());
    // VIEWERs may not run it.
    assert_code(
        &app.gql_as(
            &app.token(&t, Role::Viewer),
            test,
            json!({ "id": up["id"] }),
        )
        .await,
        "FORBIDDEN",
    );
}

#[tokio::test]
async fn webhooks_are_signed_retried_and_their_fate_recorded() {
    let slug = slug("alert-hook");
    let app = alert_app(
        &slug,
        &[
            ("PULSE_WEBHOOK_MAX_ATTEMPTS", "3"),
            ("PULSE_PUBLIC_URL", "https://pulse.example"),
        ],
    )
    .await;
    let t = app.tenant_slugged(slug, TenantStatus::Active).await;
    let editor = app.token(&t, Role::Editor);
    // Fails twice, then takes it; always fails; refuses outright.
    let flaky = Receiver::start(SECRET, &[500, 503]).await;
    let down = Receiver::start(SECRET, &[500, 500, 500, 500]).await;
    let refusing = Receiver::start(SECRET, &[400]).await;
    app.ingest_ok(&editor, json!([ev("signup")])).await;
    let alert = create_ok(&app, &editor, json!({
        "name": "any sign-up", "query": count_of("signup"), "condition": "ABOVE", "threshold": 0,
        "evaluateEvery": "1s", "labels": { "team": "growth" },
        "dashboardId": "0190a8f0-0000-7000-8000-000000000001",
        "webhooks": [
            { "url": flaky.url(), "secret": SECRET },
            { "url": down.url(), "secret": SECRET },
            { "url": refusing.url(), "secret": SECRET },
        ],
    }))
    .await;
    let id = alert["id"].as_str().expect("id").to_owned();

    let got = flaky.wait_accepted(1).await;
    let body = &got[0];
    assert_eq!(body["alert"]["id"], id.as_str());
    assert_eq!(body["alert"]["name"], "any sign-up");
    assert_eq!(body["alert"]["labels"], json!({ "team": "growth" }));
    assert_eq!(body["tenant"], t.slug.as_str());
    assert_eq!(body["state"], "FIRING");
    assert_eq!(body["previousState"], "OK");
    assert_eq!(body["value"], 1.0);
    assert_eq!(body["threshold"], 0.0);
    assert_eq!(
        body["dashboardUrl"],
        "https://pulse.example/dashboards/0190a8f0-0000-7000-8000-000000000001"
    );
    assert!(body["at"].is_string());
    assert_eq!(flaky.refused().len(), 2, "two scripted failures before it");

    let settled = wait_for(&app, &editor, &id, "every delivery settled", |a| {
        a["history"]["edges"][0]["node"]["notification"] == "FAILED"
    })
    .await;
    let deliveries = settled["history"]["edges"][0]["node"]["deliveries"]
        .as_array()
        .expect("deliveries")
        .clone();
    let of = |url: &str| {
        deliveries
            .iter()
            .find(|d| d["url"] == url)
            .expect("delivery")
            .clone()
    };
    let sent = of(&flaky.url());
    assert_eq!(
        (sent["status"].as_str(), sent["attempts"].as_i64()),
        (Some("SENT"), Some(3)),
        "{sent}"
    );
    assert_eq!(sent["responseStatus"], 200);
    assert!(sent["sentAt"].is_string());
    let failed = of(&down.url());
    assert_eq!(
        (failed["status"].as_str(), failed["attempts"].as_i64()),
        (Some("FAILED"), Some(3)),
        "{failed}"
    );
    assert_eq!(failed["responseStatus"], 500);
    assert!(
        failed["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("gave up after 3")),
        "{failed}"
    );
    assert_eq!(down.requests(), 3);
    // A 4xx is the receiver's answer, not a hiccup: no retry.
    let refused = of(&refusing.url());
    assert_eq!(
        (refused["status"].as_str(), refused["attempts"].as_i64()),
        (Some("FAILED"), Some(1)),
        "{refused}"
    );
    assert_eq!(refusing.requests(), 1);
    counter_reaches(&app, "pulse_alert_webhook_attempts_total", 7.0).await;
}

#[tokio::test]
async fn a_receiver_can_refuse_replayed_stale_and_forged_deliveries() {
    let slug = slug("alert-replay");
    let app = alert_app(&slug, &[]).await;
    let t = app.tenant_slugged(slug, TenantStatus::Active).await;
    let editor = app.token(&t, Role::Editor);
    let receiver = Receiver::start(SECRET, &[]).await;
    app.ingest_ok(&editor, json!([ev("signup")])).await;
    create_ok(
        &app,
        &editor,
        json!({
            "name": "replays", "query": count_of("signup"), "condition": "ABOVE", "threshold": 0,
            "evaluateEvery": "1s", "webhooks": [{ "url": receiver.url(), "secret": SECRET }],
        }),
    )
    .await;
    receiver.wait_accepted(1).await;
    let (headers, body) = receiver.inner.lock().expect("receiver").raw[0].clone();
    let client = reqwest::Client::new();
    let resend = |headers: HeaderMap, body: Vec<u8>| {
        let client = client.clone();
        let url = receiver.url();
        async move {
            let mut req = client.post(url).body(body);
            for name in [
                "x-pulse-timestamp",
                "x-pulse-signature",
                "x-pulse-delivery",
                "content-type",
            ] {
                if let Some(v) = headers.get(name) {
                    req = req.header(name, v.to_str().expect("header"));
                }
            }
            req.send().await.expect("send").status().as_u16()
        }
    };
    // The captured request, sent again: refused as a replay.
    assert_eq!(resend(headers.clone(), body.to_vec()).await, 409);
    // The body changed under the same signature: refused.
    let forged = String::from_utf8(body.to_vec())
        .expect("utf8")
        .replace("FIRING", "OK");
    assert_eq!(resend(headers.clone(), forged.into_bytes()).await, 401);
    // Once the receiver's tolerance has passed, the timestamp gives the
    // replay away even without the id.
    {
        let mut s = receiver.inner.lock().expect("receiver");
        s.tolerance_secs = 1;
        s.seen.clear();
    }
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(resend(headers, body.to_vec()).await, 401);
    let why: Vec<String> = receiver.refused().into_iter().map(|(_, w)| w).collect();
    assert_eq!(
        why,
        vec!["replayed delivery", "bad signature", "stale timestamp"]
    );
    assert_eq!(receiver.accepted().len(), 1);
}

#[tokio::test]
async fn a_silence_holds_notifications_but_not_evaluation() {
    let slug = slug("alert-hush");
    let app = alert_app(&slug, &[]).await;
    let t = app.tenant_slugged(slug, TenantStatus::Active).await;
    let editor = app.token(&t, Role::Editor);
    let receiver = Receiver::start(SECRET, &[]).await;
    let input = json!({
        "name": "hushed", "query": count_of("signup"), "condition": "ABOVE", "threshold": 0,
        "evaluateEvery": "1s", "isActive": false,
        "webhooks": [{ "url": receiver.url(), "secret": SECRET }],
    });
    let alert = create_ok(&app, &editor, input.clone()).await;
    let id = alert["id"].as_str().expect("id").to_owned();
    let until = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let s = app
        .gql_as(&editor, "mutation($id: ID!, $u: DateTime!) { silenceAlert(id: $id, until: $u) { silencedUntil } }",
            json!({ "id": id, "u": until }))
        .await;
    assert!(data(&s)["silenceAlert"]["silencedUntil"].is_string(), "{s}");
    // Activate it and make it fire while silenced.
    app.ingest_ok(&editor, json!([ev("signup")])).await;
    let mut active = input.clone();
    active["isActive"] = json!(true);
    let update = "mutation($id: ID!, $i: AlertInput!) { updateAlert(id: $id, input: $i) { id } }";
    app.gql_as(&editor, update, json!({ "id": id, "i": active }))
        .await;
    let fired = wait_for(&app, &editor, &id, "FIRING", |a| a["state"] == "FIRING").await;
    let entry = &fired["history"]["edges"][0]["node"];
    assert_eq!(entry["notification"], "SILENCED");
    assert_eq!(entry["deliveries"][0]["status"], "SILENCED");
    // Lifted: the next transition (back to OK) is sent.
    app.gql_as(
        &editor,
        "mutation($id: ID!) { unsilenceAlert(id: $id) { id } }",
        json!({ "id": id }),
    )
    .await;
    let mut raised = active.clone();
    raised["threshold"] = json!(100);
    app.gql_as(&editor, update, json!({ "id": id, "i": raised }))
        .await;
    let got = receiver.wait_accepted(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0]["previousState"].as_str(), got[0]["state"].as_str()),
        (Some("FIRING"), Some("OK"))
    );
    assert_eq!(receiver.requests(), 1, "nothing was sent while silenced");
}

#[tokio::test]
async fn alerts_their_history_and_their_events_stay_in_their_tenant() {
    let slug_a = slug("alert-iso");
    let app = alert_app(&slug_a, &[]).await;
    let a = app.tenant_slugged(slug_a, TenantStatus::Active).await;
    let b = app.tenant("alert-iso-b").await;
    let (editor_a, admin_b) = (app.token(&a, Role::Editor), app.token(&b, Role::Admin));
    let mut events_b = Ws::connect(&app, &admin_b).await;
    events_b
        .subscribe(
            "b",
            "subscription { alertEvents { alertId to } }",
            json!({}),
        )
        .await;
    let mut events_a = Ws::connect(&app, &app.token(&a, Role::Viewer)).await;
    events_a
        .subscribe(
            "a",
            "subscription { alertEvents { alertId to } }",
            json!({}),
        )
        .await;
    app.ingest_ok(&editor_a, json!([ev("signup")])).await;
    let alert = create_ok(&app, &editor_a, json!({
        "name": "a's", "query": count_of("signup"), "condition": "ABOVE", "threshold": 0, "evaluateEvery": "1s",
    }))
    .await;
    let id = alert["id"].as_str().expect("id").to_owned();
    let seen = events_a.next_payload("a").await;
    assert_eq!(seen["data"]["alertEvents"]["alertId"], id.as_str());
    // B sees nothing of it: not the alert, its history, its events, nor
    // may it change, silence, test or delete it.
    assert!(
        events_b.quiet("b", Duration::from_millis(1_500)).await,
        "B heard A's alert"
    );
    let r = app
        .gql_as(
            &admin_b,
            "query($id: ID!) { alert(id: $id) { id } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(data(&r)["alert"], Value::Null);
    let r = app
        .gql_as(&admin_b, "{ alerts { edges { node { id } } } }", json!({}))
        .await;
    assert_eq!(data(&r)["alerts"]["edges"], json!([]));
    let input = json!({ "name": "x", "query": count_of("signup"), "condition": "ABOVE", "threshold": 0, "evaluateEvery": "1m" });
    for (q, vars) in [
        (
            "mutation($id: ID!, $i: AlertInput!) { updateAlert(id: $id, input: $i) { id } }",
            json!({ "id": id, "i": input }),
        ),
        (
            "mutation($id: ID!) { testAlert(id: $id) { value } }",
            json!({ "id": id }),
        ),
        (
            "mutation($id: ID!) { unsilenceAlert(id: $id) { id } }",
            json!({ "id": id }),
        ),
    ] {
        assert_code(&app.gql_as(&admin_b, q, vars).await, "NOT_FOUND");
    }
    let r = app
        .gql_as(
            &admin_b,
            "mutation($id: ID!) { deleteAlert(id: $id) }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(data(&r)["deleteAlert"], false);
    // Filtering by A's id from B's socket hears nothing either.
    let mut by_id = Ws::connect(&app, &admin_b).await;
    by_id
        .subscribe(
            "x",
            "subscription($id: ID) { alertEvents(alertId: $id) { to } }",
            json!({ "id": id }),
        )
        .await;
    let mut raise = input.clone();
    raise["threshold"] = json!(100);
    raise["evaluateEvery"] = json!("1s");
    app.gql_as(
        &editor_a,
        "mutation($id: ID!, $i: AlertInput!) { updateAlert(id: $id, input: $i) { id } }",
        json!({ "id": id, "i": raise }),
    )
    .await;
    let back = events_a.next_payload("a").await;
    assert_eq!(back["data"]["alertEvents"]["to"], "OK");
    assert!(by_id.quiet("x", Duration::from_millis(500)).await);
    assert!(events_b.quiet("b", Duration::from_millis(200)).await);
}

/// `pulse serve` as a second process on the test's database, evaluating
/// `slug`'s alerts (1 s minimum interval, 100 ms poll); killed when
/// dropped.
fn evaluator_process(database_url: &str, slug: &str) -> ServerProcess {
    ServerProcess::start(
        database_url,
        &[
            ("PULSE_ALERT_EVALUATION", "true"),
            ("PULSE_ALERT_TENANTS", slug),
            ("PULSE_ALERT_MIN_INTERVAL", "1s"),
            ("PULSE_ALERT_POLL_MS", "100"),
            ("PULSE_WEBHOOK_ALLOW_PRIVATE", "true"),
        ],
    )
}

#[tokio::test]
async fn two_processes_record_and_notify_each_transition_exactly_once() {
    if !is_postgres() {
        eprintln!("skipped: two processes share a database only on PostgreSQL");
        return;
    }
    let slug = slug("alert-two");
    let first = alert_app(&slug, &[]).await;
    let _second = evaluator_process(&first.state.config.database.url, &slug);
    let t = first.tenant_slugged(slug, TenantStatus::Active).await;
    let editor = first.token(&t, Role::Editor);
    let receiver = Receiver::start(SECRET, &[]).await;
    let mut events = Ws::connect(&first, &first.token(&t, Role::Viewer)).await;
    events
        .subscribe(
            "e",
            "subscription { alertEvents { alertId to } }",
            json!({}),
        )
        .await;
    first.ingest_ok(&editor, json!([ev("signup")])).await;
    // Give the second process time to start evaluating.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Ten alerts, each firing at once: with two processes racing for
    // them every 100 ms, each must fire once and notify once.
    let mut ids = Vec::new();
    for i in 0..10 {
        let a = create_ok(
            &first,
            &editor,
            json!({
                "name": format!("twice? {i}"), "query": count_of("signup"), "condition": "ABOVE",
                "threshold": 0, "evaluateEvery": "1s",
                "webhooks": [{ "url": receiver.url(), "secret": SECRET }],
            }),
        )
        .await;
        ids.push(a["id"].as_str().expect("id").to_owned());
        // Off the 100 ms poll's beat, so that either process may be the
        // first to see the next one.
        tokio::time::sleep(Duration::from_millis(130)).await;
    }
    let got = receiver.wait_accepted(ids.len()).await;
    // Several more rounds on both processes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        receiver.requests(),
        ids.len(),
        "one request per transition: {got:?}"
    );
    let mut notified: Vec<&str> = got
        .iter()
        .filter_map(|b| b["alert"]["id"].as_str())
        .collect();
    notified.sort_unstable();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(notified, expected);
    let mut owners = HashSet::new();
    for id in &ids {
        let a = read(&first, &editor, id).await;
        assert_eq!(transitions(&a), vec![pair("OK", "FIRING")], "{a}");
        use sea_orm::EntityTrait;
        let row =
            pulse::entities::alert::Entity::find_by_id(id.parse::<uuid::Uuid>().expect("uuid"))
                .one(&first.state.db)
                .await
                .expect("read")
                .expect("row");
        owners.insert(row.lease_owner);
    }
    eprintln!("lease owners among the alerts: {}", owners.len());
    // Every transition reaches a subscriber of the first process, the
    // other process's through Redis.
    if redis_url().is_some() {
        let mut heard: Vec<String> = Vec::new();
        for _ in 0..ids.len() {
            let e = events.next_payload("e").await;
            assert_eq!(e["data"]["alertEvents"]["to"], "FIRING", "{e}");
            heard.push(
                e["data"]["alertEvents"]["alertId"]
                    .as_str()
                    .expect("id")
                    .to_owned(),
            );
        }
        heard.sort_unstable();
        assert_eq!(heard, expected);
        assert!(
            events.quiet("e", Duration::from_millis(300)).await,
            "a transition heard twice"
        );
    }
}

#[tokio::test]
async fn concurrent_claims_give_each_due_alert_to_exactly_one_instance() {
    use pulse::domain::alerts::schedule::{claim_due, postpone};
    let app = spawn_app_with(|s| {
        s.set("PULSE_ALERT_MIN_INTERVAL", "1s");
    })
    .await;
    let t = app.tenant("alert-claims").await;
    let editor = app.token(&t, Role::Editor);
    let mut ids = HashSet::new();
    for i in 0..20 {
        let a = create_ok(
            &app,
            &editor,
            json!({
                "name": format!("claim {i}"), "query": count_of("signup"), "condition": "ABOVE",
                "threshold": 0, "evaluateEvery": "1s",
            }),
        )
        .await;
        ids.insert(
            a["id"]
                .as_str()
                .expect("id")
                .parse::<uuid::Uuid>()
                .expect("uuid"),
        );
    }
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let scope = Some(vec![t.id]);
    let now = chrono::Utc::now();
    let db = &app.state.db;
    // Two owners race for the same due alerts, three at a time; each
    // moves what it got on (as an evaluation would) before the next round.
    let (mut by_a, mut by_b) = (HashSet::new(), HashSet::new());
    for _ in 0..20 {
        let (got_a, got_b) = tokio::join!(
            claim_due(db, a, scope.clone(), now, 3),
            claim_due(db, b, scope.clone(), now, 3)
        );
        let (got_a, got_b) = (got_a.expect("claim a"), got_b.expect("claim b"));
        if got_a.is_empty() && got_b.is_empty() {
            break;
        }
        for (owner, got, mine) in [(a, &got_a, &mut by_a), (b, &got_b, &mut by_b)] {
            for alert in got {
                assert!(postpone(db, owner, alert, now).await.expect("postpone"));
                mine.insert(alert.model.id);
            }
        }
    }
    eprintln!(
        "claimed: {} by one owner, {} by the other",
        by_a.len(),
        by_b.len()
    );
    assert!(
        by_a.is_disjoint(&by_b),
        "claimed by both: {:?}",
        by_a.intersection(&by_b).collect::<Vec<_>>()
    );
    let all: HashSet<uuid::Uuid> = by_a.union(&by_b).copied().collect();
    assert_eq!(all, ids);
    // A held lease keeps the other owner out, even once the alert is due
    // again; its holder may claim it again.
    let due_again = now + chrono::Duration::milliseconds(1_100);
    for (owner, held) in [(a, &by_a), (b, &by_b)] {
        let again: HashSet<uuid::Uuid> = claim_due(db, owner, scope.clone(), due_again, 100)
            .await
            .expect("claim")
            .iter()
            .map(|x| x.model.id)
            .collect();
        assert_eq!(&again, held);
    }
    // Once every lease has run out (half an interval past the next
    // evaluation), anyone may.
    let later = now + chrono::Duration::seconds(3);
    let stolen = claim_due(db, b, scope.clone(), later, 100)
        .await
        .expect("claim");
    assert_eq!(stolen.len(), 20);
}

#[tokio::test]
async fn a_killed_instances_alerts_are_taken_over_within_two_intervals() {
    if !is_postgres() {
        eprintln!("skipped: two instances share a database only on PostgreSQL");
        return;
    }
    let slug = slug("alert-kill");
    // This one only serves the API (its evaluator is off).
    let app = spawn_app_with(|s| {
        s.set("PULSE_ALERT_MIN_INTERVAL", "1s");
    })
    .await;
    let t = app.tenant_slugged(slug.clone(), TenantStatus::Active).await;
    let editor = app.token(&t, Role::Editor);
    // The first evaluator: the real binary, killed with SIGKILL (no
    // chance to hand its leases on).
    let mut child = evaluator_process(&app.state.config.database.url, &slug);
    let alert = create_ok(
        &app,
        &editor,
        json!({
            "name": "orphan", "query": count_of("signup"), "condition": "ABOVE", "threshold": 100,
            "evaluateEvery": "2s",
        }),
    )
    .await;
    let id: uuid::Uuid = alert["id"].as_str().expect("id").parse().expect("uuid");
    let row = |db: sea_orm::DatabaseConnection| async move {
        use sea_orm::EntityTrait;
        pulse::entities::alert::Entity::find_by_id(id)
            .one(&db)
            .await
            .expect("read")
            .expect("row")
    };
    // Wait until the child holds it and has evaluated it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        let r = row(app.state.db.clone()).await;
        if r.lease_owner.is_some() && r.last_evaluated_at.is_some() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the child never evaluated the alert"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    child.kill();
    let killed_at = chrono::Utc::now();
    let last_by_child = row(app.state.db.clone())
        .await
        .last_evaluated_at
        .expect("evaluated");
    // The second evaluator.
    let second = alert_app(&t.slug, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let taken = loop {
        let r = row(app.state.db.clone()).await;
        if r.lease_owner == Some(second.state.instance) && r.last_evaluated_at > Some(last_by_child)
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "nobody took the alert over: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(held.lease_owner, Some(second.state.instance));
    let gap = taken.last_evaluated_at.expect("evaluated") - last_by_child;
    eprintln!(
        "taken over {} ms after the killed instance's last evaluation",
        gap.num_milliseconds()
    );
    // Two intervals of 2 s, plus the poll and a little scheduling slack.
    assert!(
        gap <= chrono::Duration::milliseconds(4_500),
        "taken over {gap} after the last evaluation"
    );
    assert!(taken.last_evaluated_at.expect("evaluated") > killed_at);
}

#[tokio::test]
async fn the_demo_alerts_are_seeded_once_and_evaluate_on_the_demo_data() {
    let app = spawn_isolated_app().await;
    let db = &app.state.db;
    pulse::domain::demo::seed(db).await.expect("accounts");
    pulse::domain::demo::seed_n_events(db, &app.state.writer, 10_000)
        .await
        .expect("events");
    pulse::graphql::demo::seed_dashboards(&app.state)
        .await
        .expect("seed");
    pulse::graphql::demo::seed_dashboards(&app.state)
        .await
        .expect("again");
    let editor = app
        .state
        .keys
        .mint(
            "admin@acme.example",
            "acme",
            Role::Editor,
            Duration::from_secs(60),
        )
        .expect("mint");
    let list = app
        .gql_as(
            &editor,
            "{ alerts { edges { node { id name condition threshold } } } }",
            json!({}),
        )
        .await;
    let alerts = data(&list)["alerts"]["edges"]
        .as_array()
        .expect("edges")
        .clone();
    let names: Vec<&str> = alerts
        .iter()
        .filter_map(|e| e["node"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["Bounce rate above 5 %", "Sign-ups per hour below 1"]
    );
    let test = "mutation($id: ID!) { testAlert(id: $id) { value conditionMet wouldBe error } }";
    let bounce = app
        .gql_as(&editor, test, json!({ "id": alerts[0]["node"]["id"] }))
        .await;
    let r = &data(&bounce)["testAlert"];
    assert_eq!(r["error"], Value::Null, "{bounce}");
    let rate = r["value"].as_f64().expect("a rate");
    // The demo's mailboxes bounce about 13 % of deliveries.
    assert!((0.05..0.3).contains(&rate), "{rate}");
    assert_eq!(r["conditionMet"], true);
    assert_eq!(r["wouldBe"], "PENDING", "forDuration 2m holds it first");
    let floor = app
        .gql_as(&editor, test, json!({ "id": alerts[1]["node"]["id"] }))
        .await;
    assert_eq!(data(&floor)["testAlert"]["error"], Value::Null, "{floor}");
    assert!(data(&floor)["testAlert"]["value"].is_number(), "{floor}");
}
