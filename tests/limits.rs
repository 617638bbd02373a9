//! Rate limits per tenant and per user, by kind of work, from the tenant's
//! plan and settings: at the limit, past it, across users, tenants and
//! instances.

use pulse::auth::Role;
use serde_json::{Value, json};

use crate::common::*;

fn limits(queries: (u64, u64), mutations: (u64, u64), ingestion: (u64, u64)) -> Value {
    let quota = |(t, u): (u64, u64)| json!({ "per_tenant": t, "per_user": u });
    json!({ "limits": {
        "queries": quota(queries),
        "mutations": quota(mutations),
        "ingestion": quota(ingestion),
    }})
}

const ME: &str = "{ me { role } }";

/// Sends `query` as `token`; the HTTP status, `Retry-After` and body.
async fn send(app: &TestApp, token: &str, query: &str) -> (u16, Option<u64>, Value) {
    let resp = app
        .http
        .post(app.url("/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": query }))
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry, resp.json().await.expect("JSON body"))
}

fn assert_limited((status, retry, body): &(u16, Option<u64>, Value)) {
    assert_eq!(*status, 429, "{body}");
    assert_code(body, "RATE_LIMITED");
    let after = body["errors"][0]["extensions"]["retryAfter"]
        .as_u64()
        .expect("retryAfter");
    assert!((1..=60).contains(&after), "{body}");
    assert_eq!(*retry, Some(after), "Retry-After agrees with the extension");
    assert!(body.get("data").is_none(), "nothing ran: {body}");
}

fn assert_ok((status, _, body): &(u16, Option<u64>, Value)) {
    assert_eq!(*status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
}

#[tokio::test]
async fn queries_are_limited_per_user_then_per_tenant_and_other_tenants_go_on() {
    let app = spawn_app().await;
    let (a, b) = (app.tenant("rate-a").await, app.tenant("rate-b").await);
    app.set_plan(&a, "team", limits((5, 3), (100, 100), (1000, 1000)))
        .await;
    let viewer = app.token(&a, Role::Viewer);
    for _ in 0..3 {
        assert_ok(&send(&app, &viewer, ME).await);
    }
    assert_limited(&send(&app, &viewer, ME).await);
    // The refusal took nothing: the tenant still has two for other users.
    let editor = app.token(&a, Role::Editor);
    assert_ok(&send(&app, &editor, ME).await);
    assert_ok(&send(&app, &editor, ME).await);
    assert_limited(&send(&app, &app.token(&a, Role::Admin), ME).await);
    // Tenant B, on its own limits, is not held up at all.
    let other = app.token(&b, Role::Viewer);
    for _ in 0..10 {
        assert_ok(&send(&app, &other, ME).await);
    }
    // Mutations have their own rate: tenant A may still change things.
    let created = app
        .gql_as(
            &editor,
            r#"mutation { createSavedQuery(input: {name: "n", query: {measure: COUNT, range: {last: "1d"}}}) { id } }"#,
            json!({}),
        )
        .await;
    assert!(created.get("errors").is_none(), "{created}");
    assert!(
        app.counter("pulse_rate_limited_total{kind=\"Query\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn a_batch_counts_each_operation_and_mutations_have_their_own_rate() {
    let app = spawn_app().await;
    let t = app.tenant("rate-batch").await;
    app.set_plan(&t, "team", limits((4, 4), (2, 2), (1000, 1000)))
        .await;
    let token = app.token(&t, Role::Editor);
    let post_batch = |n: usize| {
        let batch: Vec<Value> = (0..n).map(|_| json!({ "query": ME })).collect();
        app.http
            .post(app.url("/graphql"))
            .bearer_auth(&token)
            .json(&batch)
            .send()
    };
    let resp = post_batch(5).await.expect("send");
    assert_eq!(
        resp.status().as_u16(),
        429,
        "five operations past a limit of four"
    );
    let resp = post_batch(4).await.expect("send");
    assert_eq!(
        resp.status().as_u16(),
        200,
        "four fit, the five refused took none"
    );

    let ingest = r#"mutation { ingestEvents(events: [{type: "x"}]) { accepted } }"#;
    assert_ok(&send(&app, &token, ingest).await);
    assert_ok(&send(&app, &token, ingest).await);
    assert_limited(&send(&app, &token, ingest).await);
}

/// Posts `n` events to `/v1/events`; the status, `Retry-After` and body.
async fn post_events(app: &TestApp, token: &str, n: usize) -> (u16, Option<u64>, Value) {
    let events: Vec<Value> = (0..n).map(|_| json!({ "type": "tick" })).collect();
    let resp = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(token)
        .json(&events)
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry, resp.json().await.expect("JSON body"))
}

#[tokio::test]
async fn ingestion_counts_events_and_answers_429_with_retry_after() {
    let app = spawn_app().await;
    let t = app.tenant("rate-ingest").await;
    app.set_plan(&t, "team", limits((100, 100), (100, 100), (10, 10)))
        .await;
    let token = app.token(&t, Role::Editor);
    // More than a minute's worth at once can never fit.
    let (status, retry, body) = post_events(&app, &token, 11).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "RATE_LIMITED", "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("more than the plan allows"))
    );
    assert_eq!(retry, Some(60));
    let (status, _, body) = post_events(&app, &token, 10).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (202, Some(10)),
        "{body}"
    );
    let (status, retry, body) = post_events(&app, &token, 1).await;
    assert_eq!(status, 429, "the eleventh event of the minute: {body}");
    assert_eq!(body["code"], "RATE_LIMITED", "{body}");
    let after = body["retryAfter"].as_u64();
    assert!(
        matches!(retry, Some(1..=60)) && after == retry,
        "{retry:?} {body}"
    );
    // Nothing refused was stored.
    let listed = app
        .gql_as(
            &token,
            "{ events(first: 50) { edges { cursor } } }",
            json!({}),
        )
        .await;
    let stored = data(&listed)["events"]["edges"].as_array().map(Vec::len);
    assert_eq!(stored, Some(10), "{listed}");
    assert!(
        app.counter("pulse_rate_limited_total{kind=\"Ingestion\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn a_trial_plan_allows_300_queries_a_minute_per_user() {
    let app = spawn_app().await;
    let t = app.tenant("rate-trial").await;
    app.set_plan(&t, "trial", json!({})).await;
    let token = app.token(&t, Role::Viewer);
    let started = std::time::Instant::now();
    for i in 0..300 {
        let (status, _, body) = send(&app, &token, ME).await;
        assert_eq!(status, 200, "query {i}: {body}");
    }
    // Past the burst only the refill (five a second since the first
    // query) gets through, however long the burst took to send: send 30
    // at a time until one is refused, then count what got through.
    let mut through = 0;
    let mut refused = None;
    for _ in 0..10 {
        let past = futures_util::future::join_all((0..30).map(|_| send(&app, &token, ME))).await;
        through += past.iter().filter(|r| r.0 == 200).count();
        if let Some(r) = past.into_iter().find(|r| r.0 != 200) {
            refused = Some(r);
            break;
        }
    }
    assert_limited(&refused.expect("a refusal past the burst"));
    let refill = 5.0 * started.elapsed().as_secs_f64();
    assert!(
        through as f64 <= refill + 2.0,
        "{through} got through past the burst, the refill allows {refill:.1}"
    );
}

#[tokio::test]
async fn limits_hold_across_instances_sharing_redis() {
    if redis_url().is_none() || !is_postgres() {
        eprintln!("skipped: instances share limits only through Redis and PostgreSQL");
        return;
    }
    let one = spawn_app().await;
    let two = spawn_app().await;
    let t = one.tenant("rate-two").await;
    one.set_plan(&t, "team", limits((4, 4), (100, 100), (1000, 1000)))
        .await;
    let token = one.token(&t, Role::Viewer);
    assert_ok(&send(&one, &token, ME).await);
    assert_ok(&send(&two, &token, ME).await);
    assert_ok(&send(&one, &token, ME).await);
    assert_ok(&send(&two, &token, ME).await);
    assert_limited(&send(&one, &token, ME).await);
    assert_limited(&send(&two, &token, ME).await);
}

#[tokio::test]
async fn only_a_super_admin_sets_a_plan_and_its_limits_hold_at_once() {
    let app = spawn_app().await;
    let (home, t) = (app.tenant("rate-home").await, app.tenant("rate-plan").await);
    let set = r#"mutation($slug: String!, $limits: JSON) {
        setTenantPlan(slug: $slug, plan: "team", limits: $limits) { plan settings } }"#;
    let low = json!({ "queries": { "per_tenant": 2, "per_user": 2 } });
    let admin = app
        .gql_as(
            &app.token(&t, Role::Admin),
            set,
            json!({ "slug": t.slug, "limits": low }),
        )
        .await;
    assert_code(&admin, "FORBIDDEN");
    let root = app.token(&home, Role::SuperAdmin);
    for bad in [
        json!({ "queries": { "per_tenant": 0, "per_user": 2 } }),
        json!({ "queries": { "per_tenant": 2 } }),
        json!({ "speed": 1 }),
    ] {
        let refused = app
            .gql_as(&root, set, json!({ "slug": t.slug, "limits": bad }))
            .await;
        assert_code(&refused, "BAD_USER_INPUT");
    }
    let changed = app
        .gql_as(&root, set, json!({ "slug": t.slug, "limits": low }))
        .await;
    assert_eq!(
        data(&changed)["setTenantPlan"]["settings"]["limits"],
        low,
        "{changed}"
    );
    let viewer = app.token(&t, Role::Viewer);
    assert_ok(&send(&app, &viewer, ME).await);
    assert_ok(&send(&app, &viewer, ME).await);
    assert_limited(&send(&app, &viewer, ME).await);
}

const METRICS: &str = "query($q: MetricQueryInput!) { metrics(query: $q) { total cached } }";

/// COUNT by DAY over the three whole days before today, optionally with a
/// filter (which takes it off the hourly aggregates).
fn three_days(filter: Option<&str>) -> Value {
    let midnight = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc();
    let mut q = json!({ "measure": "COUNT", "granularity": "DAY", "eventTypes": ["buy"],
        "range": { "from": (midnight - chrono::Duration::days(3)).to_rfc3339(),
                   "to": midnight.to_rfc3339() } });
    if let Some(plan) = filter {
        q["filters"] = json!([{ "field": "properties.plan", "op": "EQ", "value": plan }]);
    }
    q
}

fn budget(per_query: u64, per_minute: u64) -> Value {
    json!({ "limits": { "budget": { "per_query": per_query, "per_minute": per_minute } } })
}

/// Twenty `buy` events in one hour two days ago.
async fn twenty_buys(app: &TestApp, token: &str) {
    let at = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(5, 0, 0)
        .expect("5am")
        .and_utc()
        - chrono::Duration::days(2);
    let events: Vec<Value> = (0..20)
        .map(|i| {
            json!({ "type": "buy", "userId": format!("u{i}"), "timestamp": at.to_rfc3339(),
                         "properties": { "plan": "pro" } })
        })
        .collect();
    app.ingest_ok(token, json!(events)).await;
}

#[tokio::test]
async fn a_query_over_its_budget_is_refused_with_the_estimate_and_the_limit() {
    let app = spawn_app().await;
    let t = app.tenant("budget-query").await;
    let token = app.token(&t, Role::Editor);
    twenty_buys(&app, &token).await;
    app.set_plan(&t, "team", budget(10, 1_000_000_000)).await;
    let estimated = app.counter("pulse_query_cost_estimated_rows_count").await;
    // From the hourly aggregates: one row, and three cells.
    let rollup = app
        .gql_as(&token, METRICS, json!({ "q": three_days(None) }))
        .await;
    assert_eq!(data(&rollup)["metrics"]["total"], 20.0, "{rollup}");
    // Distinct users from the actor bitmaps: one per type and hour too.
    let mut distinct = three_days(None);
    distinct["measure"] = json!("COUNT_DISTINCT");
    distinct["field"] = json!("userId");
    let bitmap = app.gql_as(&token, METRICS, json!({ "q": distinct })).await;
    assert_eq!(data(&bitmap)["metrics"]["total"], 20.0, "{bitmap}");
    assert_eq!(bitmap["extensions"]["queries"][0]["source"], "bitmap");
    // Filtered, every event is read: 20 rows and 3 cells, over 10.
    let raw = app
        .gql_as(&token, METRICS, json!({ "q": three_days(Some("pro")) }))
        .await;
    assert_code(&raw, "QUERY_TOO_EXPENSIVE");
    let ext = &raw["errors"][0]["extensions"];
    assert_eq!(
        (ext["estimate"].as_u64(), ext["limit"].as_u64()),
        (Some(23), Some(10)),
        "{raw}"
    );
    assert!(
        ext.get("retryAfter").is_none(),
        "waiting does not help: {raw}"
    );
    // At the limit it runs.
    app.set_plan(&t, "team", budget(23, 1_000_000_000)).await;
    let at = app
        .gql_as(&token, METRICS, json!({ "q": three_days(Some("pro")) }))
        .await;
    assert_eq!(data(&at)["metrics"]["total"], 20.0, "{at}");
    assert!(app.counter("pulse_budget_rejections_total").await >= 1.0);
    assert!(app.counter("pulse_query_cost_estimated_rows_count").await >= estimated + 3.0);
    assert!(app.counter("pulse_query_cost_actual_rows_count").await >= 2.0);
}

#[tokio::test]
async fn the_minute_budget_is_shared_by_the_tenants_queries_and_cached_answers_are_free() {
    let app = spawn_app().await;
    let (t, other) = (
        app.tenant("budget-minute").await,
        app.tenant("budget-other").await,
    );
    let token = app.token(&t, Role::Editor);
    twenty_buys(&app, &token).await;
    // One unit (a thousand estimated rows) a minute: one query's worth.
    app.set_plan(&t, "team", budget(1_000, 1_000)).await;
    let first = app
        .gql_as(&token, METRICS, json!({ "q": three_days(Some("pro")) }))
        .await;
    assert_eq!(data(&first)["metrics"]["total"], 20.0, "{first}");
    let second = app
        .gql_as(
            &app.token(&t, Role::Viewer),
            METRICS,
            json!({ "q": three_days(Some("free")) }),
        )
        .await;
    assert_code(&second, "QUERY_TOO_EXPENSIVE");
    let ext = &second["errors"][0]["extensions"];
    assert_eq!(ext["limit"].as_u64(), Some(1_000), "{second}");
    assert!(
        matches!(ext["retryAfter"].as_u64(), Some(1..=60)),
        "{second}"
    );
    // The first answer, now cached, costs nothing to read again.
    let again = app
        .gql_as(&token, METRICS, json!({ "q": three_days(Some("pro")) }))
        .await;
    assert_eq!(data(&again)["metrics"]["cached"], true, "{again}");
    // Another tenant's budget is its own.
    let elsewhere = app
        .gql_as(
            &app.token(&other, Role::Viewer),
            METRICS,
            json!({ "q": three_days(Some("free")) }),
        )
        .await;
    assert_eq!(data(&elsewhere)["metrics"]["total"], 0.0, "{elsewhere}");
}
