//! What a hostile client with a token (or without one) must not be able to
//! do: stall the server with extreme ranges, crash it with extreme dates,
//! starve other tenants, overflow bind limits, keep rights a user lost,
//! grow the metrics without bound, leave a pooled connection inside a
//! transaction by vanishing mid-request. Each limit at and past it, on
//! both backends.

use std::time::Duration;

use futures_util::StreamExt as _;
use pulse::auth::Role;
use pulse::entities::user;
use rand::Rng;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ConnectionTrait as _, EntityTrait};
use serde_json::{Value, json};

use crate::common::*;

const METRICS: &str = "query($q: MetricQueryInput!) { metrics(query: $q) { total } }";

fn field(body: &Value) -> &str {
    body["errors"][0]["extensions"]["field"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test]
async fn extreme_ranges_are_refused_at_once_while_health_keeps_answering() {
    let app = spawn_app().await;
    let t = app.tenant("ranges").await;
    let token = app.token(&t, Role::Viewer);
    let extreme = json!({ "from": "0001-01-01T00:00:00Z", "to": "9999-12-31T00:00:00Z" });
    let burst = (0..24).map(|i| {
        let (app, token, range) = (&app, &token, extreme.clone());
        async move {
            let (query, variables) = match i % 3 {
                0 => (
                    METRICS,
                    json!({ "q": { "measure": "COUNT", "granularity": "HOUR", "range": range,
                                   "timezone": "Europe/Berlin" } }),
                ),
                1 => (
                    "query($i: FunnelInput!) { funnel(input: $i) { steps { count } } }",
                    json!({ "i": { "steps": [{ "eventType": "a" }, { "eventType": "b" }],
                                   "conversionWindow": "1d", "range": range } }),
                ),
                _ => (
                    "query($i: RetentionInput!) { retention(input: $i) { cohorts { size } } }",
                    json!({ "i": { "startEvent": "a", "returnEvent": "b", "period": "DAY",
                                   "range": range } }),
                ),
            };
            app.gql_as(token, query, variables).await
        }
    });
    let health = async {
        let mut ok = 0;
        for _ in 0..20 {
            let resp = app
                .http
                .get(app.url("/healthz"))
                .send()
                .await
                .expect("healthz");
            ok += usize::from(resp.status().is_success());
        }
        ok
    };
    let (answers, healthy) = tokio::join!(futures_util::future::join_all(burst), health);
    assert_eq!(healthy, 20);
    for body in &answers {
        assert_code(body, "BAD_USER_INPUT");
        assert!(field(body).contains("range"), "{body}");
    }
}

#[tokio::test]
async fn every_date_and_range_input_refuses_extreme_dates_with_a_named_field() {
    let app = spawn_app().await;
    let t = app.tenant("dates").await;
    let viewer = app.token(&t, Role::Viewer);
    let editor = app.token(&t, Role::Editor);
    let metric =
        |range: Value| json!({ "q": { "measure": "COUNT", "granularity": "DAY", "range": range } });
    let cases = [
        (
            metric(json!({ "from": "1969-12-31T00:00:00Z", "to": "1970-01-02T00:00:00Z" })),
            "query.range.from",
        ),
        (
            metric(json!({ "from": "0001-01-01T00:00:00Z", "to": "0001-01-02T00:00:00Z" })),
            "query.range.from",
        ),
        (
            metric(json!({ "from": "2026-01-01T00:00:00Z", "to": "9999-12-31T23:59:59Z" })),
            "query.range",
        ),
        (
            metric(json!({ "from": "2199-12-31T00:00:00Z", "to": "2200-01-02T00:00:00Z" })),
            "query.range.to",
        ),
        (
            metric(json!({ "last": "99999999999w" })),
            "query.range.last",
        ),
        (metric(json!({ "last": "5300w" })), "query.range.last"),
        (metric(json!({ "last": "0d" })), "query.range.last"),
    ];
    for (variables, expected) in cases {
        let body = app.gql_as(&viewer, METRICS, variables.clone()).await;
        assert_code(&body, "BAD_USER_INPUT");
        assert_eq!(field(&body), expected, "{variables} → {body}");
    }
    // Funnels: an extreme range, and a window that would overflow `to`.
    let funnel = "query($i: FunnelInput!) { funnel(input: $i) { steps { count } } }";
    for (range, window) in [
        (
            json!({ "from": "0001-01-01T00:00:00Z", "to": "0001-02-01T00:00:00Z" }),
            "1d",
        ),
        (
            json!({ "from": "2199-01-01T00:00:00Z", "to": "2199-12-31T00:00:00Z" }),
            "5000w",
        ),
        (json!({ "last": "7d" }), "99999999999999d"),
    ] {
        let body = app
            .gql_as(
                &viewer,
                funnel,
                json!({ "i": { "steps": [{ "eventType": "a" }, { "eventType": "b" }],
                               "conversionWindow": window, "range": range } }),
            )
            .await;
        assert_code(&body, "BAD_USER_INPUT");
    }
    let body = app
        .gql_as(
            &viewer,
            "query($i: RetentionInput!) { retention(input: $i) { cohorts { size } } }",
            json!({ "i": { "startEvent": "a", "returnEvent": "b", "period": "MONTH", "periods": 100,
                           "range": { "from": "2199-01-01T00:00:00Z", "to": "2199-12-31T00:00:00Z" } } }),
        )
        .await;
    assert!(
        error_code(&body).is_none() || error_code(&body) == Some("BAD_USER_INPUT"),
        "{body}"
    );
    // The events listing takes the same sane years, naming the field (the
    // fuzzer's year -262143 was an internal error on PostgreSQL).
    for (f, field_name) in [
        (json!({ "from": "0001-01-01T00:00:00Z" }), "filter.from"),
        (json!({ "from": "-262143-01-01T00:00:00Z" }), "filter.from"),
        (json!({ "to": "9999-12-31T23:59:59Z" }), "filter.to"),
    ] {
        let body = app
            .gql_as(
                &viewer,
                "query($f: EventFilterInput) { events(filter: $f, first: 5) { edges { node { id } } } }",
                json!({ "f": f }),
            )
            .await;
        assert_code(&body, "BAD_USER_INPUT");
        assert_eq!(field(&body), field_name, "{body}");
    }
    let body = app
        .gql_as(
            &viewer,
            "query($f: EventFilterInput) { events(filter: $f, first: 5) { edges { node { id } } } }",
            json!({ "f": { "from": "1970-01-01T00:00:00Z", "to": "2200-01-01T00:00:00Z" } }),
        )
        .await;
    assert!(
        body.get("errors").is_none(),
        "the widest range answers: {body}"
    );
    // An event from the far future is refused, naming the field.
    let body = app
        .gql_as(
            &editor,
            "mutation($e: [EventInput!]!) { ingestEvents(events: $e) { accepted } }",
            json!({ "e": [{ "type": "x", "timestamp": "9999-12-31T23:59:59Z" }] }),
        )
        .await;
    assert_code(&body, "BAD_USER_INPUT");
}

#[tokio::test]
async fn the_widest_range_is_configurable_and_enforced_at_and_past_it() {
    let app = spawn_app_with(|s| {
        s.set("PULSE_MAX_RANGE_DAYS", 10);
    })
    .await;
    let t = app.tenant("span").await;
    let token = app.token(&t, Role::Viewer);
    let run = |range: Value| {
        let (app, token) = (&app, &token);
        async move {
            app.gql_as(
                token,
                METRICS,
                json!({ "q": { "measure": "COUNT", "range": range } }),
            )
            .await
        }
    };
    let at = run(json!({ "from": "2026-11-01T00:00:00Z", "to": "2026-11-11T00:00:00Z" })).await;
    assert_eq!(data(&at)["metrics"]["total"], 0.0);
    let past = run(json!({ "from": "2026-11-01T00:00:00Z", "to": "2026-11-11T00:00:01Z" })).await;
    assert_code(&past, "BAD_USER_INPUT");
    assert_eq!(field(&past), "query.range");
    data(&run(json!({ "last": "10d" })).await);
    let past = run(json!({ "last": "11d" })).await;
    assert_eq!(field(&past), "query.range.last");
}

#[tokio::test]
async fn a_flooding_tenant_queues_behind_itself_while_another_is_served() {
    let app = spawn_app_with(|s| {
        s.set("PULSE_TENANT_QUERY_CONCURRENCY", 1)
            .set("PULSE_TENANT_QUERY_WAIT_MS", 0);
    })
    .await;
    let (flood, calm) = (app.tenant("flood").await, app.tenant("calm").await);
    let now = chrono::Utc::now();
    let events: Vec<Value> = (0..3000)
        .map(|i| {
            json!({ "type": "view", "userId": format!("u{}", i % 700),
                    "timestamp": (now - chrono::Duration::minutes(i)).to_rfc3339(),
                    "properties": { "ms": i } })
        })
        .collect();
    app.ingest_ok(&app.token(&flood, Role::Editor), json!(events))
        .await;
    app.ingest_ok(
        &app.token(&calm, Role::Editor),
        json!([{ "type": "x" }, { "type": "x" }, { "type": "x" }, { "type": "y" }]),
    )
    .await;
    let flood_token = app.token(&flood, Role::Viewer);
    let heavy = json!({ "q": { "measure": "P90", "field": "properties.ms", "granularity": "HOUR",
                               "groupBy": ["userId"], "range": { "last": "3d" } } });
    let flooding = futures_util::future::join_all((0..40).map(|_| {
        let (app, token, q) = (&app, &flood_token, heavy.clone());
        async move { app.gql_as(token, METRICS, q).await }
    }));
    let calm_token = app.token(&calm, Role::Viewer);
    let served = async {
        // Sent while the flood is in flight.
        tokio::time::sleep(Duration::from_millis(20)).await;
        app.gql_as(
            &calm_token,
            METRICS,
            json!({ "q": { "measure": "COUNT", "eventTypes": ["x"], "range": { "last": "1d" } } }),
        )
        .await
    };
    let (flooded, calm_answer) = tokio::join!(flooding, served);
    assert_eq!(data(&calm_answer)["metrics"]["total"], 3.0);
    let refused: Vec<&Value> = flooded
        .iter()
        .filter(|b| error_code(b) == Some("RATE_LIMITED"))
        .collect();
    assert!(
        !refused.is_empty(),
        "one place for 40 queries: some must be refused"
    );
    assert!(refused[0]["errors"][0]["extensions"]["retryAfter"].as_u64() >= Some(1));
    for body in &flooded {
        assert!(
            error_code(body).is_none() || error_code(body) == Some("RATE_LIMITED"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn analytic_fields_per_operation_are_capped_with_aliases_and_fragments() {
    let app = spawn_app_with(|s| {
        s.set("PULSE_MAX_ANALYTIC_FIELDS", 3);
    })
    .await;
    let t = app.tenant("fields").await;
    let token = app.token(&t, Role::Viewer);
    let field = |alias: &str| {
        format!(
            r#"{alias}: metrics(query: {{ measure: COUNT, range: {{ last: "1d" }} }}) {{ total }}"#
        )
    };
    let three = format!("{{ {} {} {} }}", field("a"), field("b"), field("c"));
    let body = app.gql_as(&token, &three, json!({})).await;
    assert_eq!(data(&body)["c"]["total"], 0.0);
    let four = format!(
        "{{ {} {} {} {} }}",
        field("a"),
        field("b"),
        field("c"),
        field("d")
    );
    let body = app.gql_as(&token, &four, json!({})).await;
    assert_code(&body, "QUERY_TOO_COMPLEX");
    assert!(body["data"].is_null(), "nothing ran: {body}");
    let fragments = format!(
        "query {{ ...F ... on Query {{ {} }} }} fragment F on Query {{ {} {} }}",
        field("a"),
        field("b"),
        field("c")
    );
    data(&app.gql_as(&token, &fragments, json!({})).await);
    let fragments = format!(
        "query {{ ...F ... on Query {{ {} {} }} }} fragment F on Query {{ {} {} }}",
        field("a"),
        field("b"),
        field("c"),
        field("d")
    );
    assert_code(
        &app.gql_as(&token, &fragments, json!({})).await,
        "QUERY_TOO_COMPLEX",
    );
}

#[tokio::test]
async fn batches_hold_at_most_twenty_operations() {
    let app = spawn_app().await;
    let t = app.tenant("batch").await;
    let token = app.token(&t, Role::Viewer);
    for (n, status) in [(20, 200), (21, 400)] {
        let batch: Vec<Value> = (0..n)
            .map(|_| json!({ "query": "{ me { role } }" }))
            .collect();
        let resp = app
            .http
            .post(app.url("/graphql"))
            .bearer_auth(&token)
            .json(&batch)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), status, "{n} operations");
    }
}

#[tokio::test]
async fn documents_are_bounded_in_tokens_and_nesting_before_they_are_parsed() {
    let app = spawn_app_with(|s| {
        s.set("PULSE_MAX_QUERY_TOKENS", 600);
    })
    .await;
    let t = app.tenant("lexer").await;
    let token = app.token(&t, Role::Viewer);
    // `{` + n × `aN: __typename` (3 tokens each) + `}`.
    let aliases = |n: usize| {
        let fields: String = (0..n).map(|i| format!(" a{i}: __typename")).collect();
        format!("{{{fields} }}")
    };
    let at = app.gql_as(&token, &aliases(199), json!({})).await;
    assert!(at.get("errors").is_none(), "{at}");
    assert_eq!(data(&at)["a198"], "Query");
    let past = app.gql_as(&token, &aliases(200), json!({})).await;
    assert_code(&past, "QUERY_TOO_COMPLEX");
    assert!(
        past["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("602 tokens"),
        "{past}"
    );

    // Nesting: the depth limit (15) plus 32 brackets is refused lexically,
    // whatever the document's size, long before the parser would recurse.
    let nested = |n: usize| format!("{}{}", "{ a ".repeat(n), "}".repeat(n));
    let deep = app.gql_as(&token, &nested(48), json!({})).await;
    assert_code(&deep, "QUERY_TOO_DEEP");
    assert!(
        deep["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("47 deep"),
        "{deep}"
    );
    // Within the lexical bound, the parser runs and the selection depth
    // limit answers with the same code.
    let shallower = app.gql_as(&token, &nested(20), json!({})).await;
    assert_code(&shallower, "QUERY_TOO_DEEP");
    assert!(
        !shallower["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("47 deep")
    );
}

#[tokio::test]
async fn nul_characters_are_bad_input_wherever_they_come_from() {
    let app = spawn_app().await;
    let t = app.tenant("nul").await;
    let token = app.token(&t, Role::Viewer);
    // Inline, escaped in the document: a filter value and a field name.
    for query in [
        r#"{ metrics(query: {measure: COUNT, range: {last: "7d"}, filters: [{field: "userId", op: EQ, value: "a\u0000b"}]}) { total } }"#,
        r#"{ metrics(query: {measure: COUNT, range: {last: "7d"}, filters: [{field: "properties.\u0000", op: EXISTS}]}) { total } }"#,
        r#"{ metrics(query: {measure: COUNT, range: {last: "7d"}, groupBy: ["properties.\u{0}"]}) { total } }"#,
    ] {
        let body = app.gql_as(&token, query, json!({})).await;
        assert_code(&body, "BAD_USER_INPUT");
    }
    // In variables, in a list or a plain string.
    for q in [
        json!({"measure": "COUNT", "range": {"last": "7d"}, "filters": [{"field": "userId", "op": "IN", "value": ["x", "a\u{0}"]}]}),
        json!({"measure": "COUNT", "range": {"last": "7d"}, "groupBy": ["properties.a\u{0}"]}),
    ] {
        let body = app.gql_as(&token, METRICS, json!({ "q": q })).await;
        assert_code(&body, "BAD_USER_INPUT");
    }
    // A backslash before `u0000` is text, not a NUL: the query runs.
    let ok = app
        .gql_as(
            &token,
            r#"{ metrics(query: {measure: COUNT, range: {last: "7d"}, filters: [{field: "userId", op: EQ, value: "a\\u0000b"}]}) { total } }"#,
            json!({}),
        )
        .await;
    assert!(ok.get("errors").is_none(), "{ok}");
    assert_eq!(data(&ok)["metrics"]["total"], 0.0);
}

#[tokio::test]
async fn filters_and_lists_are_bounded_at_and_past_the_limits() {
    let app = spawn_app().await;
    let t = app.tenant("filters").await;
    let token = app.token(&t, Role::Viewer);
    let run = |q: Value| {
        let (app, token) = (&app, &token);
        async move { app.gql_as(token, METRICS, json!({ "q": q })).await }
    };
    let eq = |i: usize| json!({ "field": format!("properties.k{i}"), "op": "EXISTS" });
    let twenty: Vec<Value> = (0..20).map(eq).collect();
    data(&run(json!({ "measure": "COUNT", "filters": twenty, "range": { "last": "1d" } })).await);
    let twenty_one: Vec<Value> = (0..21).map(eq).collect();
    let body =
        run(json!({ "measure": "COUNT", "filters": twenty_one, "range": { "last": "1d" } })).await;
    assert_eq!(field(&body), "query.filters");
    let values = |n: usize| json!((0..n).map(|i| format!("v{i}")).collect::<Vec<_>>());
    let one_list = json!([{ "field": "properties.plan", "op": "IN", "value": values(1000) }]);
    data(&run(json!({ "measure": "COUNT", "filters": one_list, "range": { "last": "1d" } })).await);
    let two_lists = json!([
        { "field": "properties.plan", "op": "IN", "value": values(600) },
        { "field": "userId", "op": "NOT_IN", "value": values(401) },
    ]);
    let body =
        run(json!({ "measure": "COUNT", "filters": two_lists, "range": { "last": "1d" } })).await;
    assert_eq!(field(&body), "query.filters");
    let types = |n: usize| json!((0..n).map(|i| format!("t{i}")).collect::<Vec<_>>());
    data(
        &run(json!({ "measure": "COUNT", "eventTypes": types(100), "range": { "last": "1d" } }))
            .await,
    );
    let body =
        run(json!({ "measure": "COUNT", "eventTypes": types(101), "range": { "last": "1d" } }))
            .await;
    assert_eq!(field(&body), "query.eventTypes");
}

#[tokio::test]
async fn a_token_grants_at_most_the_users_current_role_and_nothing_once_disabled() {
    let app = spawn_app().await;
    let t = app.tenant("demote").await;
    let admin = t.user(Role::Admin).clone();
    let token = app.token(&t, Role::Admin);
    let users = "{ users(first: 1) { edges { node { email } } } }";
    data(&app.gql_as(&token, users, json!({})).await);

    let mut demoted: user::ActiveModel = admin.clone().into();
    demoted.role = Set(Role::Viewer);
    demoted.update(&app.state.db).await.expect("demote");
    // A change made behind the server's back is seen within a second
    // (`VerifiedTokens::TTL`); the test does not wait it out.
    app.state.tokens.forget_all();
    assert_code(&app.gql_as(&token, users, json!({})).await, "FORBIDDEN");
    let me = app.gql_as(&token, "{ me { role } }", json!({})).await;
    assert_eq!(data(&me)["me"]["role"], "VIEWER");

    let row = user::Entity::find_by_id(admin.id)
        .one(&app.state.db)
        .await
        .expect("read")
        .expect("user");
    let mut disabled: user::ActiveModel = row.into();
    disabled.status = Set(user::UserStatus::Suspended);
    disabled.update(&app.state.db).await.expect("disable");
    app.state.tokens.forget_all();
    assert_code(
        &app.gql_as(&token, "{ me { role } }", json!({})).await,
        "UNAUTHENTICATED",
    );
}

#[tokio::test]
async fn a_token_without_a_user_is_a_service_token_audited_as_such() {
    let app = spawn_app().await;
    let t = app.tenant("service").await;
    let token = app
        .state
        .keys
        .mint(
            "service:etl",
            &t.slug,
            Role::Admin,
            Duration::from_secs(600),
        )
        .expect("mint");
    let body = app
        .gql_as(
            &token,
            r#"mutation { createUser(input: { email: "made@svc.test", role: VIEWER }) { email } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data(&body)["createUser"]["email"], "made@svc.test");
    let audit = app
        .gql_as(
            &token,
            "{ auditLog(first: 5) { edges { node { action actor actorId } } } }",
            json!({}),
        )
        .await;
    let entry = &data(&audit)["auditLog"]["edges"][0]["node"];
    assert_eq!(entry["action"], "user.create");
    assert_eq!(entry["actor"], "service:etl");
    assert!(entry["actorId"].is_null());
    assert_code(
        &app.gql_as(&token, "{ me { role } }", json!({})).await,
        "FORBIDDEN",
    );
    // Not every subject may pose as a service.
    let bad = app
        .state
        .keys
        .mint(
            "service:no spaces",
            &t.slug,
            Role::Admin,
            Duration::from_secs(600),
        )
        .expect("mint");
    assert_code(
        &app.gql_as(&bad, "{ users { edges { cursor } } }", json!({}))
            .await,
        "UNAUTHENTICATED",
    );
}

#[tokio::test]
async fn operation_labels_are_capped_and_given_only_to_authenticated_callers() {
    let app = spawn_app_with(|s| {
        s.set("PULSE_METRICS_MAX_OPERATIONS", 2);
    })
    .await;
    let t = app.tenant("labels").await;
    let token = app.token(&t, Role::Viewer);
    for name in ["Alpha", "Beta", "Gamma", "Alpha"] {
        data(
            &app.gql_as(
                &token,
                &format!("query {name} {{ me {{ role }} }}"),
                json!({}),
            )
            .await,
        );
    }
    app.gql_anonymous("query SecretCampaignName { me { role } }", json!({}))
        .await;
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for present in [
        "operation=\"Alpha\"",
        "operation=\"Beta\"",
        "operation=\"other\"",
        "operation=\"unauthenticated\"",
    ] {
        assert!(metrics.contains(present), "{present} missing");
    }
    for absent in ["Gamma", "SecretCampaignName"] {
        assert!(!metrics.contains(absent), "{absent} leaked into /metrics");
    }
}

#[tokio::test]
async fn metrics_can_require_a_bearer_token() {
    let app = spawn_app_with(|s| {
        s.set("PULSE_METRICS_TOKEN", "scrape-secret-123");
    })
    .await;
    let get = |token: Option<&str>| {
        let mut req = app.http.get(app.url("/metrics"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    assert_eq!(get(None).await.expect("send").status().as_u16(), 401);
    assert_eq!(
        get(Some("scrape-secret-12"))
            .await
            .expect("send")
            .status()
            .as_u16(),
        401
    );
    let ok = get(Some("scrape-secret-123")).await.expect("send");
    assert_eq!(ok.status().as_u16(), 200);
    assert!(
        ok.text()
            .await
            .expect("text")
            .contains("pulse_panics_total")
    );
}

#[tokio::test]
async fn graphql_posts_need_a_json_content_type() {
    let app = spawn_app().await;
    let t = app.tenant("ctype").await;
    let token = app.token(&t, Role::Viewer);
    let body = json!({ "query": "{ me { role } }" }).to_string();
    for (content_type, status) in [
        (None, 415),
        (Some("text/plain"), 415),
        (Some("application/graphql"), 415),
        (Some("application/json; charset=utf-8"), 200),
        (Some("Application/JSON"), 200),
    ] {
        let mut req = app
            .http
            .post(app.url("/graphql"))
            .bearer_auth(&token)
            .body(body.clone());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.expect("send");
        assert_eq!(resp.status().as_u16(), status, "{content_type:?}");
        if status == 415 {
            let json: Value = resp.json().await.expect("json");
            assert_code(&json, "BAD_USER_INPUT");
        }
    }
}

#[tokio::test]
async fn request_errors_under_graphql_response_json_are_4xx_without_data() {
    let app = spawn_app().await;
    let t = app.tenant("media").await;
    let token = app.token(&t, Role::Viewer);
    let send = |query: &str, accept: &str| {
        app.http
            .post(app.url("/graphql"))
            .bearer_auth(&token)
            .header("accept", accept)
            .json(&json!({ "query": query }))
            .send()
    };
    let graphql = "application/graphql-response+json";
    for (query, code) in [
        ("{ me { role ", "GRAPHQL_PARSE_FAILED"),
        ("{ me { nope } }", "GRAPHQL_VALIDATION_FAILED"),
        (
            "{ metrics(query: { measure: NOPE, range: { last: \"1d\" } }) { total } }",
            "BAD_USER_INPUT",
        ),
    ] {
        let resp = send(query, graphql).await.expect("send");
        assert_eq!(resp.status().as_u16(), 400, "{query}");
        let body: Value = resp.json().await.expect("json");
        assert!(body.get("data").is_none(), "{query}: {body}");
        assert_code(&body, code);
        let resp = send(query, "application/json").await.expect("send");
        assert_eq!(resp.status().as_u16(), 200, "{query}");
    }
    // Executed, and its data null because a non-null field failed: a 200
    // that says `data: null`.
    let resp = send(
        "{ metrics(query: { measure: SUM, range: { last: \"1d\" } }) { total } }",
        graphql,
    )
    .await
    .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.expect("json");
    assert!(body.get("data").is_some_and(Value::is_null), "{body}");
    assert_code(&body, "BAD_USER_INPUT");
}

/// async-graphql reports these without a kind, so their codes depend on its
/// English wording; each mapping is pinned here, so an upgrade that changes
/// a message fails this test instead of silently changing a code.
#[tokio::test]
async fn library_errors_keep_their_pinned_codes() {
    let app = spawn_app_with(|s| {
        s.set("PULSE_MAX_DEPTH", 4).set("PULSE_MAX_COMPLEXITY", 300);
    })
    .await;
    let t = app.tenant("codes").await;
    let token = app.token(&t, Role::Admin);
    let cases: [(&str, Value, &str, Option<&str>); 6] = [
        (
            "{ me { user { email } } ",
            json!({}),
            "GRAPHQL_PARSE_FAILED",
            None,
        ),
        (
            "{ me { tenant { slug } nope } }",
            json!({}),
            "GRAPHQL_VALIDATION_FAILED",
            None,
        ),
        (
            "{ __schema { types { fields { type { name } } } } }",
            json!({}),
            "QUERY_TOO_DEEP",
            None,
        ),
        (
            "{ users(first: 100) { edges { node { email role status id } } } }",
            json!({}),
            "QUERY_TOO_COMPLEX",
            None,
        ),
        (
            "{ metrics(query: { measure: COUNT, limit: \"x\", range: { last: \"1d\" } }) { total } }",
            json!({}),
            "BAD_USER_INPUT",
            Some("query.limit"),
        ),
        (
            "query($q: MetricQueryInput!) { metrics(query: $q) { total } }",
            json!({ "q": { "measure": "COUNT", "range": 7 } }),
            "BAD_USER_INPUT",
            None,
        ),
    ];
    for (query, variables, code, field_name) in cases {
        let body = app.gql_as(&token, query, variables).await;
        assert_eq!(error_code(&body), Some(code), "{query}: {body}");
        if let Some(name) = field_name {
            assert_eq!(field(&body), name, "{body}");
        }
    }
}

async fn boom() -> &'static str {
    panic!("a bug")
}

#[tokio::test]
async fn a_panic_becomes_a_coded_internal_error_and_is_counted() {
    use axum::routing::get;
    let panics = prometheus_client::metrics::counter::Counter::default();
    let router = axum::Router::new().route("/boom", get(boom)).route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let router = pulse::http::stages(router, panics.clone(), Duration::from_millis(200));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let resp = client
            .get(format!("http://{addr}/boom"))
            .send()
            .await
            .expect("an answer, not a dropped connection");
        assert_eq!(resp.status().as_u16(), 500);
        let id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("request id")
            .to_owned();
        let body: Value = resp.json().await.expect("json");
        assert_code(&body, "INTERNAL_SERVER_ERROR");
        assert_eq!(body["errors"][0]["extensions"]["requestId"], id.as_str());
        assert!(
            !body.to_string().contains("a bug"),
            "the cause stays in the log"
        );
    }
    assert_eq!(panics.get(), 2);
    let slow = client
        .get(format!("http://{addr}/slow"))
        .send()
        .await
        .expect("send");
    assert_eq!(slow.status().as_u16(), 408);
}

/// Thousands of requests whose clients vanish at random points; afterwards
/// no pooled connection is inside a transaction, PostgreSQL said nothing
/// about transactions, and the next requests run in their own tenant (as
/// `pulse_app` on PostgreSQL).
#[tokio::test]
async fn cancelled_requests_never_leave_a_pooled_connection_inside_a_transaction() {
    let app = spawn_isolated_app().await;
    if is_postgres() {
        // The warning counter hears PostgreSQL's notices at all.
        let probes = notice_probes();
        app.state
            .db
            .execute_unprepared(&format!(
                "DO $$ BEGIN RAISE WARNING '{NOTICE_PROBE}'; END $$"
            ))
            .await
            .expect("raise a warning");
        assert_eq!(
            notice_probes(),
            probes + 1,
            "notices do not reach the test's counter"
        );
    }
    let warnings_before = transaction_warnings();
    let (a, b) = (app.tenant("cancel-a").await, app.tenant("cancel-b").await);
    app.ingest_ok(
        &app.token(&a, Role::Editor),
        json!([{ "type": "a-only", "userId": "ua" }]),
    )
    .await;
    app.ingest_ok(
        &app.token(&b, Role::Editor),
        json!([{ "type": "b-only", "userId": "ub" }]),
    )
    .await;
    let tokens = [app.token(&a, Role::Admin), app.token(&b, Role::Admin)];
    let queries = [
        "{ users(first: 5) { edges { node { email } } } }",
        "{ events(first: 5) { edges { node { type } } } }",
        "{ auditLog(first: 5) { edges { node { action } } } }",
        "{ metrics(query: { measure: COUNT, range: { last: \"1d\" } }) { total } }",
        "{ funnel(input: { steps: [{ eventType: \"a-only\" }, { eventType: \"b-only\" }], conversionWindow: \"1d\", range: { last: \"1d\" } }) { steps { count } } }",
    ];
    let seed: u64 = rand::rng().random();
    eprintln!("cancellation seed {seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let plan: Vec<(usize, usize, u64)> = (0..2000)
        .map(|_| {
            (
                rng.random_range(0..2),
                rng.random_range(0..queries.len()),
                rng.random_range(0..12_000),
            )
        })
        .collect();
    let url = app.url("/graphql");
    let client = reqwest::Client::new();
    let mut pending = futures_util::stream::iter(plan.into_iter().map(|(who, q, micros)| {
        let req = client
            .post(&url)
            .bearer_auth(&tokens[who])
            .json(&json!({ "query": queries[q] }))
            .timeout(Duration::from_micros(micros.max(1)));
        async move {
            let _ = req.send().await;
        }
    }))
    .buffer_unordered(32);
    while pending.next().await.is_some() {}
    // The same, closer in: scoped transactions whose caller is dropped
    // after every delay from 0 to 3 ms, so that some drops land while
    // BEGIN, a statement or COMMIT is in flight.
    let ctx_b = pulse::auth::TenantCtx {
        tenant_id: b.id,
        tenant_slug: b.slug.clone(),
        user_id: Some(b.user(Role::Admin).id),
        actor: b.user(Role::Admin).email.clone(),
        role: Role::Admin,
        policy: Default::default(),
    };
    for micros in (0..3_000).step_by(5) {
        let work = pulse::db::scoped(&app.state.db, &ctx_b, |txn| {
            Box::pin(async move {
                txn.execute_unprepared("SELECT 1").await?;
                Ok(())
            })
        });
        let _ = tokio::time::timeout(Duration::from_micros(micros), work).await;
    }
    // Releases run on their own tasks; let them finish.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    assert_eq!(
        app.state.telemetry.db_stale_transactions.get(),
        0,
        "seed {seed}"
    );
    assert_eq!(transaction_warnings(), warnings_before, "seed {seed}");
    if is_postgres() {
        let stuck = sea_orm::ConnectionTrait::query_one_raw(
            &app.state.db,
            sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND state LIKE 'idle in transaction%'",
            ),
        )
        .await
        .expect("activity")
        .expect("row");
        assert_eq!(
            stuck.try_get_by_index::<i64>(0).expect("count"),
            0,
            "seed {seed}"
        );
    }
    // Every connection of the pool, taken at once, runs in its caller's
    // tenant.
    let ctx = pulse::auth::TenantCtx {
        tenant_id: a.id,
        tenant_slug: a.slug.clone(),
        user_id: Some(a.user(Role::Admin).id),
        actor: a.user(Role::Admin).email.clone(),
        role: Role::Admin,
        policy: Default::default(),
    };
    let checks = (0..5).map(|_| {
        let (db, ctx) = (app.state.db.clone(), ctx.clone());
        async move {
            pulse::db::scoped(&db, &ctx, |txn| {
                Box::pin(async move {
                    let postgres = txn.get_database_backend() == sea_orm::DbBackend::Postgres;
                    let sql = if postgres {
                        "SELECT current_user::text, current_setting('pulse.tenant_id'), \
                         (SELECT count(*) FROM events WHERE type = 'b-only')"
                    } else {
                        "SELECT 'sqlite', '', 0"
                    };
                    let row = txn
                        .query_one_raw(sea_orm::Statement::from_string(
                            txn.get_database_backend(),
                            sql,
                        ))
                        .await?
                        .expect("row");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok((
                        row.try_get_by_index::<String>(0)?,
                        row.try_get_by_index::<String>(1)?,
                        row.try_get_by_index::<i64>(2)?,
                    ))
                })
            })
            .await
            .expect("scoped")
        }
    });
    for (role, tenant, others) in futures_util::future::join_all(checks).await {
        if is_postgres() {
            assert_eq!(role, "pulse_app", "seed {seed}");
            assert_eq!(tenant, a.id.to_string(), "seed {seed}");
        }
        assert_eq!(others, 0, "another tenant's event visible, seed {seed}");
    }
    // And over HTTP each tenant sees only its own events.
    for (tenant, token, own) in [(&a, &tokens[0], "a-only"), (&b, &tokens[1], "b-only")] {
        let body = app
            .gql_as(
                token,
                "{ events(first: 10) { edges { node { type } } } }",
                json!({}),
            )
            .await;
        let types: Vec<&str> = data(&body)["events"]["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .filter_map(|e| e["node"]["type"].as_str())
            .collect();
        assert_eq!(types, [own], "{} seed {seed}", tenant.slug);
    }
}

/// A thousand aliases of `me` read the caller's rows once.
#[tokio::test]
async fn aliased_me_fields_read_the_callers_rows_once() {
    let app = spawn_app().await;
    let t = app.tenant("me-aliases").await;
    let token = app.token(&t, Role::Viewer);
    let statements = || app.counter("pulse_db_statements_total");
    let mut cost = Vec::new();
    for n in [1, 1_000] {
        let fields: String = (0..n).map(|i| format!(" a{i}: me {{ role }}")).collect();
        // Both requests authenticate afresh, to compare like with like.
        app.state.tokens.forget_all();
        let before = statements().await;
        let body = app
            .gql_as(&token, &format!("{{{fields} }}"), json!({}))
            .await;
        assert!(body.get("errors").is_none(), "{body}");
        assert_eq!(data(&body)[format!("a{}", n - 1)]["role"], "VIEWER");
        cost.push(statements().await - before);
    }
    assert!(cost[0] > 0.0, "the counter counts: {cost:?}");
    assert_eq!(cost[0], cost[1], "statements for 1 and for 1,000 aliases");
}
