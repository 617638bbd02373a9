//! Subscriptions over the socket: `metricUpdated` (first result, updates
//! after ingest, silence when nothing changed, one watcher per tenant and
//! query), `eventStream`, `dashboardUpdated`; staying authorised (expiry,
//! suspension); limits; slow consumers; tenant isolation; two instances
//! over Redis and Redis going away.

use std::time::Duration;

use pulse::auth::Role;
use serde_json::{Value, json};

use crate::common::ws::Ws;
use crate::common::*;

const METRIC: &str = "subscription($q: MetricQueryInput!) {
    metricUpdated(query: $q) { sequence total cached } }";

fn count_of(types: &[&str]) -> Value {
    json!({ "measure": "COUNT", "eventTypes": types, "granularity": "DAY", "range": { "last": "7d" } })
}

fn ev(kind: &str) -> Value {
    json!({ "type": kind, "timestamp": chrono::Utc::now().to_rfc3339() })
}

fn update(payload: &Value) -> (i64, f64) {
    let r = &payload["data"]["metricUpdated"];
    assert!(payload.get("errors").is_none(), "{payload}");
    (
        r["sequence"].as_i64().expect("sequence"),
        r["total"].as_f64().expect("total"),
    )
}

/// Servers whose watchers answer quickly. A test reads one socket at a
/// time, and an unread socket answers no pings: the keep-alive stays long
/// enough (silence for two intervals is death) for what a test leaves
/// unread.
async fn live_app(extra: &[(&str, &str)]) -> TestApp {
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    spawn_app_with(move |s| {
        s.set("PULSE_LIVE_DEBOUNCE_MS", "50")
            .set("PULSE_WS_KEEPALIVE_MS", "2000");
        for (k, v) in &extra {
            s.set(k, v);
        }
    })
    .await
}

#[tokio::test]
async fn metric_updated_sends_the_current_result_then_each_change() {
    let app = live_app(&[]).await;
    let t = app.tenant("live-first").await;
    let editor = app.token(&t, Role::Editor);
    app.ingest_ok(&editor, json!([ev("signup"), ev("signup")]))
        .await;
    let mut ws = Ws::connect(&app, &app.token(&t, Role::Viewer)).await;
    ws.subscribe("1", METRIC, json!({ "q": count_of(&["signup"]) }))
        .await;
    assert_eq!(update(&ws.next_payload("1").await), (1, 2.0));
    app.ingest_ok(&editor, json!([ev("signup")])).await;
    assert_eq!(update(&ws.next_payload("1").await), (2, 3.0));
    app.ingest_ok(&editor, json!([ev("signup"), ev("signup")]))
        .await;
    assert_eq!(update(&ws.next_payload("1").await), (3, 5.0));
}

#[tokio::test]
async fn a_relative_range_drops_events_that_age_out_without_a_new_commit() {
    let app = live_app(&[]).await;
    let t = app.tenant("live-slide").await;
    let editor = app.token(&t, Role::Editor);
    let aged = (chrono::Utc::now() - chrono::Duration::seconds(54)).to_rfc3339();
    app.ingest_ok(
        &editor,
        json!([{ "type": "tick", "timestamp": aged }, { "type": "tick", "timestamp": aged }]),
    )
    .await;
    let mut ws = Ws::connect(&app, &app.token(&t, Role::Viewer)).await;
    let q = json!({ "measure": "COUNT", "eventTypes": ["tick"], "range": { "last": "1m" } });
    ws.subscribe("s", METRIC, json!({ "q": q })).await;
    assert_eq!(update(&ws.next_payload("s").await), (1, 2.0));
    // Nothing is ingested: within seconds both events are more than a
    // minute old, and the watcher's timer notices.
    let started = std::time::Instant::now();
    assert_eq!(update(&ws.next_payload("s").await), (2, 0.0));
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn an_unchanged_result_sends_nothing_and_other_types_do_not_wake_the_watcher() {
    let app = live_app(&[]).await;
    let t = app.tenant("live-quiet").await;
    let editor = app.token(&t, Role::Editor);
    let mut ws = Ws::connect(&app, &app.token(&t, Role::Viewer)).await;
    // Counts only "pro" signups: a "free" signup wakes the watcher (same
    // type), which recomputes the same answer and sends nothing.
    let q = json!({ "measure": "COUNT", "eventTypes": ["signup"], "range": { "last": "7d" },
                    "filters": [{ "field": "properties.plan", "op": "EQ", "value": "pro" }] });
    ws.subscribe("q", METRIC, json!({ "q": q })).await;
    assert_eq!(update(&ws.next_payload("q").await), (1, 0.0));
    let recomputed = || app.state.telemetry.live.recomputations.get();
    let before = recomputed();
    app.ingest_ok(
        &editor,
        json!([{ "type": "signup", "properties": { "plan": "free" } }]),
    )
    .await;
    assert!(ws.quiet("q", Duration::from_millis(1500)).await);
    assert_eq!(recomputed(), before + 1, "the same-type event woke it once");
    // Another type does not even wake it.
    app.ingest_ok(&editor, json!([ev("page_view")])).await;
    assert!(ws.quiet("q", Duration::from_millis(800)).await);
    assert_eq!(recomputed(), before + 1);
    app.ingest_ok(
        &editor,
        json!([{ "type": "signup", "properties": { "plan": "pro" } }]),
    )
    .await;
    // The sequence has no gap: nothing was sent for the unchanged result.
    assert_eq!(update(&ws.next_payload("q").await), (2, 1.0));
}

#[tokio::test]
async fn a_hundred_subscribers_of_one_query_share_one_watcher_that_leaves_with_them() {
    let app = live_app(&[]).await;
    let t = app.tenant("live-many").await;
    let viewer = app.token(&t, Role::Viewer);
    let mut sockets = Vec::new();
    for _ in 0..10 {
        let mut ws = Ws::connect(&app, &viewer).await;
        for i in 0..10 {
            // The same question with its event types in another order.
            let types: &[&str] = if i % 2 == 0 { &["a", "b"] } else { &["b", "a"] };
            ws.subscribe(&i.to_string(), METRIC, json!({ "q": count_of(types) }))
                .await;
        }
        sockets.push(ws);
    }
    for ws in &mut sockets {
        for payload in ws.next_payloads(10).await.values() {
            assert_eq!(update(payload), (1, 0.0));
        }
    }
    assert_eq!(app.counter("pulse_live_watchers").await, 1.0);
    assert_eq!(app.counter("pulse_subscriptions_active").await, 100.0);
    let before = app.counter("pulse_live_recomputations_total").await;
    app.ingest_ok(&app.token(&t, Role::Editor), json!([ev("a")]))
        .await;
    for ws in &mut sockets {
        for payload in ws.next_payloads(10).await.values() {
            assert_eq!(update(payload), (2, 1.0));
        }
    }
    assert_eq!(
        app.counter("pulse_live_recomputations_total").await - before,
        1.0,
        "one recomputation for a hundred subscribers"
    );
    drop(sockets);
    for _ in 0..100 {
        if app.counter("pulse_live_watchers").await == 0.0
            && app.counter("pulse_subscriptions_active").await == 0.0
            && app.counter("pulse_ws_connections").await == 0.0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("watchers, subscriptions or sockets outlived their clients");
}

#[tokio::test]
async fn a_tenant_never_hears_of_another_tenants_events_even_for_the_same_query() {
    let app = live_app(&[]).await;
    let a = app.tenant("live-a").await;
    let b = app.tenant("live-b").await;
    app.ingest_ok(&app.token(&a, Role::Editor), json!([ev("signup")]))
        .await;
    let mut wa = Ws::connect(&app, &app.token(&a, Role::Viewer)).await;
    let mut wb = Ws::connect(&app, &app.token(&b, Role::Viewer)).await;
    for ws in [&mut wa, &mut wb] {
        ws.subscribe("s", METRIC, json!({ "q": count_of(&["signup"]) }))
            .await;
    }
    assert_eq!(update(&wa.next_payload("s").await), (1, 1.0));
    assert_eq!(update(&wb.next_payload("s").await), (1, 0.0));
    assert_eq!(app.counter("pulse_live_watchers").await, 2.0);
    app.ingest_ok(
        &app.token(&b, Role::Editor),
        json!([ev("signup"), ev("signup")]),
    )
    .await;
    assert_eq!(update(&wb.next_payload("s").await), (2, 2.0));
    assert!(wa.quiet("s", Duration::from_millis(1000)).await);

    // The tail too.
    const TAIL: &str = "subscription { eventStream { type userId } }";
    wa.subscribe("t", TAIL, json!({})).await;
    wb.subscribe("t", TAIL, json!({})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.ingest_ok(
        &app.token(&b, Role::Editor),
        json!([{ "type": "secret", "userId": "b-user" }]),
    )
    .await;
    let got = wb.next_payload("t").await;
    assert_eq!(got["data"]["eventStream"]["userId"], "b-user");
    assert!(wa.quiet("t", Duration::from_millis(800)).await);
}

#[tokio::test]
async fn event_stream_tails_matching_events_in_commit_order() {
    let app = live_app(&[]).await;
    let t = app.tenant("live-tail").await;
    let editor = app.token(&t, Role::Editor);
    let mut ws = Ws::connect(&app, &app.token(&t, Role::Viewer)).await;
    ws.subscribe(
        "t",
        "subscription($f: EventFilterInput) { eventStream(filter: $f) { type userId properties } }",
        json!({ "f": { "types": ["click"], "properties": { "plan": "pro" } } }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for batch in 0..3 {
        let events: Vec<Value> = (0..4)
            .map(|i| {
                let plan = if i % 2 == 0 { "pro" } else { "free" };
                json!({ "type": if i == 3 { "view" } else { "click" },
                        "userId": format!("{batch}-{i}"), "properties": { "plan": plan } })
            })
            .collect();
        app.ingest_ok(&editor, json!(events)).await;
    }
    let mut users = Vec::new();
    for _ in 0..6 {
        let p = ws.next_payload("t").await;
        let e = &p["data"]["eventStream"];
        assert_eq!(e["type"], "click");
        assert_eq!(e["properties"]["plan"], "pro");
        users.push(e["userId"].as_str().expect("userId").to_owned());
    }
    assert_eq!(
        users,
        ["0-0", "0-2", "1-0", "1-2", "2-0", "2-2"],
        "commit order"
    );
    assert!(
        ws.quiet("t", Duration::from_millis(500)).await,
        "nothing else matched"
    );
}

#[tokio::test]
async fn a_consumer_past_its_buffer_is_told_and_closed() {
    let app = live_app(&[("PULSE_LIVE_STREAM_BUFFER", "5")]).await;
    let t = app.tenant("live-slow").await;
    let viewer = app.token(&t, Role::Viewer);
    let ctx = app
        .state
        .tokens
        .authenticate(&app.state.db, &app.state.keys, &viewer)
        .await
        .expect("ctx");
    // The server's own tail, not read while twenty events arrive.
    let mut tail = app.state.live.tail(&ctx, Default::default());
    let events: Vec<Value> = (0..20).map(|_| ev("flood")).collect();
    app.ingest_ok(&app.token(&t, Role::Editor), json!(events))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    use futures_util::StreamExt as _;
    let first = tokio::time::timeout(Duration::from_secs(5), tail.next())
        .await
        .expect("an answer")
        .expect("an item");
    let err = first.expect_err("told it is too slow before any backlog");
    assert_eq!(err.code(), "SLOW_CONSUMER");
    assert!(tail.next().await.is_none(), "then closed");
    assert_eq!(
        app.counter("pulse_subscription_slow_consumers_total").await,
        1.0
    );
}

#[tokio::test]
async fn an_expired_token_or_a_suspended_tenant_ends_the_socket_with_4403() {
    let app = live_app(&[
        ("PULSE_JWT_LEEWAY_SECS", "0"),
        ("PULSE_WS_KEEPALIVE_MS", "300"),
    ])
    .await;
    let t = app.tenant("live-expiry").await;
    let short = app
        .state
        .keys
        .mint(
            &t.user(Role::Viewer).id.to_string(),
            &t.slug,
            Role::Viewer,
            Duration::from_secs(2),
        )
        .expect("mint");
    let mut ws = Ws::connect(&app, &short).await;
    ws.subscribe("1", METRIC, json!({ "q": count_of(&["x"]) }))
        .await;
    assert_eq!(update(&ws.next_payload("1").await).0, 1);
    assert_eq!(ws.close_code().await, 4403);

    let u = app.tenant("live-suspend").await;
    let mut ws = Ws::connect(&app, &app.token(&u, Role::Viewer)).await;
    ws.subscribe("1", METRIC, json!({ "q": count_of(&["x"]) }))
        .await;
    assert_eq!(update(&ws.next_payload("1").await).0, 1);
    use sea_orm::{ActiveModelTrait as _, EntityTrait as _, Set};
    let row = pulse::entities::tenant::Entity::find_by_id(u.id)
        .one(&app.state.db)
        .await
        .expect("read")
        .expect("tenant");
    let mut row: pulse::entities::tenant::ActiveModel = row.into();
    row.status = Set(pulse::entities::tenant::TenantStatus::Suspended);
    row.update(&app.state.db).await.expect("suspend");
    app.state.tokens.forget_all();
    assert_eq!(ws.close_code().await, 4403);
}

#[tokio::test]
async fn subscribing_before_the_ack_is_4401_and_no_init_is_4408() {
    let app = live_app(&[("PULSE_WS_INIT_TIMEOUT_MS", "300")]).await;
    let mut ws = Ws::open(&app, "graphql-transport-ws").await;
    ws.subscribe("1", "subscription { eventStream { type } }", json!({}))
        .await;
    assert_eq!(ws.close_code().await, 4401);
    let mut ws = Ws::open(&app, "graphql-transport-ws").await;
    assert_eq!(ws.close_code().await, 4408);
}

#[tokio::test]
async fn subscriptions_per_socket_and_sockets_per_tenant_are_limited() {
    let app = live_app(&[
        ("PULSE_WS_MAX_SUBSCRIPTIONS", "2"),
        ("PULSE_WS_MAX_CONNECTIONS_PER_TENANT", "1"),
    ])
    .await;
    let t = app.tenant("live-limits").await;
    let other = app.tenant("live-limits-other").await;
    let viewer = app.token(&t, Role::Viewer);
    let mut ws = Ws::connect(&app, &viewer).await;
    for id in ["1", "2"] {
        ws.subscribe(id, METRIC, json!({ "q": count_of(&[id]) }))
            .await;
        assert_eq!(update(&ws.next_payload(id).await).0, 1);
    }
    ws.subscribe("3", METRIC, json!({ "q": count_of(&["3"]) }))
        .await;
    let refused = ws.next_payload("3").await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "LIMIT_EXCEEDED",
        "{refused}"
    );
    // A second socket of the tenant is one too many; another tenant's is not.
    let mut second = Ws::open(&app, "graphql-transport-ws").await;
    second
        .send(json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {viewer}") } }))
        .await;
    assert_eq!(second.close_code().await, 4429);
    Ws::connect(&app, &app.token(&other, Role::Viewer)).await;
    // Completing one subscription frees its place.
    ws.send(json!({ "id": "1", "type": "complete" })).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws.subscribe("4", METRIC, json!({ "q": count_of(&["4"]) }))
        .await;
    assert_eq!(update(&ws.next_payload("4").await).0, 1);
}

#[tokio::test]
async fn dashboard_updated_fires_on_edits_and_on_its_widgets_data_then_ends_when_deleted() {
    let app = live_app(&[]).await;
    let t = app.tenant("live-dash").await;
    let editor = app.token(&t, Role::Editor);
    let input = json!({ "name": "Live", "isPublic": true, "widgets": [
        { "title": "Signups", "kind": "METRIC", "query": count_of(&["signup"]) } ] });
    let created = app
        .gql_as(
            &editor,
            "mutation($i: DashboardInput!) { createDashboard(input: $i) { id version } }",
            json!({ "i": input }),
        )
        .await;
    let id = data(&created)["createDashboard"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let mut ws = Ws::connect(&app, &app.token(&t, Role::Viewer)).await;
    ws.subscribe(
        "d",
        "subscription($id: ID!) { dashboardUpdated(id: $id) { version name
            widgets { data { ... on MetricResult { total } } } } }",
        json!({ "id": id }),
    )
    .await;
    let total = |p: &Value| p["data"]["dashboardUpdated"]["widgets"][0]["data"]["total"].as_f64();
    let first = ws.next_payload("d").await;
    assert_eq!(first["data"]["dashboardUpdated"]["version"], 1, "{first}");
    assert_eq!(total(&first), Some(0.0));
    app.ingest_ok(&editor, json!([ev("signup")])).await;
    assert_eq!(total(&ws.next_payload("d").await), Some(1.0));
    // Events its widgets do not read wake nothing.
    app.ingest_ok(&editor, json!([ev("page_view")])).await;
    assert!(ws.quiet("d", Duration::from_millis(800)).await);
    let mut renamed = input.clone();
    renamed["name"] = json!("Live, renamed");
    let saved = app
        .gql_as(
            &editor,
            "mutation($id: ID!, $i: DashboardInput!) { updateDashboard(id: $id, input: $i, expectedVersion: 1) { version } }",
            json!({ "id": id, "i": renamed }),
        )
        .await;
    assert_eq!(data(&saved)["updateDashboard"]["version"], 2);
    let edited = ws.next_payload("d").await;
    assert_eq!(edited["data"]["dashboardUpdated"]["name"], "Live, renamed");
    assert_eq!(edited["data"]["dashboardUpdated"]["version"], 2);
    let deleted = app
        .gql_as(
            &editor,
            "mutation($id: ID!) { deleteDashboard(id: $id) }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(data(&deleted)["deleteDashboard"], true);
    let gone = ws.next_payload("d").await;
    assert_eq!(
        gone["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{gone}"
    );
}

/// Two instances sharing PostgreSQL and Redis: a subscriber on one hears
/// of events ingested through the other.
#[tokio::test]
async fn a_subscriber_on_one_instance_hears_of_events_ingested_through_another() {
    if redis_url().is_none() || !is_postgres() {
        eprintln!("skipped: instances share the bus only through Redis and PostgreSQL");
        return;
    }
    let one = live_app(&[]).await;
    let two = live_app(&[]).await;
    let t = one.tenant("live-two").await;
    let mut ws = Ws::connect(&two, &two.token(&t, Role::Viewer)).await;
    ws.subscribe("1", METRIC, json!({ "q": count_of(&["signup"]) }))
        .await;
    assert_eq!(update(&ws.next_payload("1").await), (1, 0.0));
    one.ingest_ok(&one.token(&t, Role::Editor), json!([ev("signup")]))
        .await;
    assert_eq!(update(&ws.next_payload("1").await), (2, 1.0));
}

/// Redis gone: the subscriber on the other instance still gets the change,
/// from its periodic recompute; Redis back: messages flow again.
#[tokio::test]
async fn without_redis_watchers_recompute_periodically_and_recover_when_it_returns() {
    if !is_postgres() {
        eprintln!("skipped: two instances share the events only through PostgreSQL");
        return;
    }
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let settings = [
        ("PULSE_REDIS_URL", url.as_str()),
        ("PULSE_LIVE_FALLBACK_MS", "500"),
    ];
    let one = live_app(&settings).await;
    let two = live_app(&settings).await;
    let t = one.tenant("live-outage").await;
    let editor = one.token(&t, Role::Editor);
    let mut ws = Ws::connect(&two, &two.token(&t, Role::Viewer)).await;
    ws.subscribe("1", METRIC, json!({ "q": count_of(&["signup"]) }))
        .await;
    assert_eq!(update(&ws.next_payload("1").await), (1, 0.0));
    redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    one.ingest_ok(&editor, json!([ev("signup")])).await;
    assert_eq!(update(&ws.next_payload("1").await), (2, 1.0));
    redis.restart();
    // Wait until instance two listens again, then the bus carries it.
    for _ in 0..100 {
        if *two.state.bus.health().borrow() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(*two.state.bus.health().borrow(), "the relay came back");
    let before = two.state.telemetry.live.recomputations.get();
    one.ingest_ok(&editor, json!([ev("signup")])).await;
    assert_eq!(update(&ws.next_payload("1").await), (3, 2.0));
    assert!(two.state.telemetry.live.recomputations.get() > before);
}
