//! Funnels and retention on small data checked by hand, on both backends.

use pulse::auth::Role;
use serde_json::{Value, json};

use crate::common::*;

const FUNNEL: &str = "query($i: FunnelInput!) { funnel(input: $i) {
    steps { eventType count conversionFromStart conversionFromPrevious medianSecondsToConvert }
    breakdowns { value steps { eventType count } } } }";

const RETENTION: &str = "query($i: RetentionInput!) { retention(input: $i) {
    cohorts { start size returned rates } } }";

fn ev(t: &str, user: &str, at: &str, props: Value) -> Value {
    json!({ "type": t, "userId": user, "timestamp": at, "properties": props })
}

/// A tenant with `events` (retention widened for the fixed dates); returns
/// a VIEWER token. Each call is its own tenant.
async fn tenant_with(app: &TestApp, prefix: &str, events: Vec<Value>) -> String {
    let tenant = app.tenant(prefix).await;
    let body = app
        .gql_as(
            &app.token(&tenant, Role::Admin),
            "mutation { updateTenantSettings(input: { retentionDays: 3650 }) { id } }",
            json!({}),
        )
        .await;
    data(&body);
    let (status, body) = app
        .post_events(&app.token(&tenant, Role::Editor), Value::Array(events))
        .await;
    assert_eq!(status, 202, "{body}");
    app.token(&tenant, Role::Viewer)
}

fn funnel_events() -> Vec<Value> {
    vec![
        ev(
            "signup",
            "uA",
            "2026-10-01T10:00:00Z",
            json!({ "source": "ads" }),
        ),
        ev("activate", "uA", "2026-10-01T10:10:00Z", json!({})),
        ev(
            "purchase",
            "uA",
            "2026-10-01T11:10:00Z",
            json!({ "amount": 30 }),
        ),
        ev(
            "signup",
            "uB",
            "2026-10-02T09:00:00Z",
            json!({ "source": "ads" }),
        ),
        ev("activate", "uB", "2026-10-02T09:20:00Z", json!({})),
        // Past the one-day window.
        ev(
            "purchase",
            "uB",
            "2026-10-04T09:00:00Z",
            json!({ "amount": 80 }),
        ),
        // Activation before sign-up does not count.
        ev("activate", "uC", "2026-10-03T11:00:00Z", json!({})),
        ev(
            "signup",
            "uC",
            "2026-10-03T12:00:00Z",
            json!({ "source": "seo" }),
        ),
        ev(
            "purchase",
            "uD",
            "2026-10-03T12:00:00Z",
            json!({ "amount": 10 }),
        ),
        // Signs up in range, activates after it, within the window.
        ev(
            "signup",
            "uE",
            "2026-10-07T23:00:00Z",
            json!({ "source": "seo" }),
        ),
        ev("activate", "uE", "2026-10-08T01:00:00Z", json!({})),
        // Out of range.
        ev(
            "signup",
            "uF",
            "2026-10-09T10:00:00Z",
            json!({ "source": "ads" }),
        ),
    ]
}

fn funnel_input(extra: Value) -> Value {
    let mut input = json!({
        "steps": [ { "eventType": "signup" }, { "eventType": "activate" }, { "eventType": "purchase" } ],
        "conversionWindow": "1d",
        "range": { "from": "2026-10-01T00:00:00Z", "to": "2026-10-08T00:00:00Z" },
    });
    if let (Some(i), Value::Object(extra)) = (input.as_object_mut(), extra) {
        i.extend(extra);
    }
    input
}

#[tokio::test]
async fn a_funnel_counts_each_user_once_in_order_within_the_window() {
    let app = spawn_app().await;
    let token = tenant_with(&app, "funnel", funnel_events()).await;
    // The same users and steps in another tenant must not count.
    tenant_with(&app, "funnel-intruder", funnel_events()).await;
    let body = app
        .gql_as(&token, FUNNEL, json!({ "i": funnel_input(json!({})) }))
        .await;
    let steps = &data(&body)["funnel"]["steps"];
    assert_eq!(
        steps,
        &json!([
            { "eventType": "signup", "count": 4, "conversionFromStart": 1.0, "conversionFromPrevious": 1.0, "medianSecondsToConvert": null },
            { "eventType": "activate", "count": 3, "conversionFromStart": 0.75, "conversionFromPrevious": 0.75, "medianSecondsToConvert": 1200.0 },
            { "eventType": "purchase", "count": 1, "conversionFromStart": 0.25, "conversionFromPrevious": 1.0 / 3.0, "medianSecondsToConvert": 3600.0 },
        ])
    );

    // Step filters narrow what counts as the step.
    let input = funnel_input(json!({ "steps": [
        { "eventType": "signup" }, { "eventType": "activate" },
        { "eventType": "purchase", "filters": [{ "field": "properties.amount", "op": "GT", "value": 50 }] } ] }));
    let body = app.gql_as(&token, FUNNEL, json!({ "i": input })).await;
    assert_eq!(data(&body)["funnel"]["steps"][2]["count"], 0);

    // Broken down by the first step's property, largest first.
    let body = app
        .gql_as(
            &token,
            FUNNEL,
            json!({ "i": funnel_input(json!({ "breakdown": "properties.source" })) }),
        )
        .await;
    let breakdowns: Vec<(Value, Vec<Value>)> = data(&body)["funnel"]["breakdowns"]
        .as_array()
        .expect("breakdowns")
        .iter()
        .map(|b| {
            let counts = b["steps"]
                .as_array()
                .expect("steps")
                .iter()
                .map(|s| s["count"].clone())
                .collect();
            (b["value"].clone(), counts)
        })
        .collect();
    assert_eq!(
        breakdowns,
        [
            (json!("ads"), vec![json!(2), json!(2), json!(1)]),
            (json!("seo"), vec![json!(2), json!(1), json!(0)]),
        ]
    );
}

#[tokio::test]
async fn funnel_input_is_validated() {
    let app = spawn_app().await;
    let token = tenant_with(
        &app,
        "funnel-bad",
        vec![ev("signup", "u", "2026-10-01T00:00:00Z", json!({}))],
    )
    .await;
    let cases = [
        (
            json!({ "steps": [{ "eventType": "signup" }] }),
            "input.steps",
        ),
        (
            json!({ "conversionWindow": "soon" }),
            "input.conversionWindow",
        ),
        (json!({ "breakdown": "userId" }), "input.breakdown"),
        (json!({ "countBy": "email" }), "input.countBy"),
        (
            json!({ "range": { "from": "2026-10-08T00:00:00Z", "to": "2026-10-01T00:00:00Z" } }),
            "input.range.from",
        ),
        (
            json!({ "steps": [{ "eventType": "signup" }, { "eventType": "x", "filters": [{ "field": "nope", "op": "EQ", "value": 1 }] }] }),
            "input.steps[1].filters[0].field",
        ),
    ];
    for (extra, field) in cases {
        let body = app
            .gql_as(&token, FUNNEL, json!({ "i": funnel_input(extra.clone()) }))
            .await;
        assert_code(&body, "BAD_USER_INPUT");
        assert_eq!(
            body["errors"][0]["extensions"]["field"], field,
            "{extra}: {body}"
        );
    }
}

#[tokio::test]
async fn retention_is_a_matrix_of_weekly_cohorts() {
    let app = spawn_app().await;
    let events = vec![
        ev("signup", "u1", "2026-10-05T10:00:00Z", json!({})),
        ev("login", "u1", "2026-10-06T10:00:00Z", json!({})),
        ev("login", "u1", "2026-10-06T11:00:00Z", json!({})),
        ev("login", "u1", "2026-10-13T10:00:00Z", json!({})),
        ev("signup", "u2", "2026-10-07T10:00:00Z", json!({})),
        ev("login", "u2", "2026-10-20T10:00:00Z", json!({})),
        ev("signup", "u3", "2026-10-13T10:00:00Z", json!({})),
        ev("login", "u3", "2026-10-14T10:00:00Z", json!({})),
        ev("login", "u3", "2026-10-27T10:00:00Z", json!({})),
        // A login before the sign-up is not a return.
        ev("login", "u4", "2026-10-12T08:00:00Z", json!({})),
        ev("signup", "u4", "2026-10-12T09:00:00Z", json!({})),
        // Signs up after the range: no cohort.
        ev("signup", "u5", "2026-10-20T10:00:00Z", json!({})),
        ev("login", "u5", "2026-10-21T10:00:00Z", json!({})),
    ];
    let token = tenant_with(&app, "retention", events.clone()).await;
    tenant_with(&app, "retention-intruder", events).await;
    let input = json!({ "startEvent": "signup", "returnEvent": "login", "period": "WEEK", "periods": 2,
        "range": { "from": "2026-10-05T00:00:00Z", "to": "2026-10-19T00:00:00Z" } });
    let body = app.gql_as(&token, RETENTION, json!({ "i": input })).await;
    assert_eq!(
        data(&body)["retention"]["cohorts"],
        json!([
            { "start": "2026-10-05T00:00:00+00:00", "size": 2, "returned": [1, 1, 1], "rates": [0.5, 0.5, 0.5] },
            { "start": "2026-10-12T00:00:00+00:00", "size": 2, "returned": [1, 0, 1], "rates": [0.5, 0.0, 0.5] },
        ])
    );

    for (extra, field) in [
        (json!({ "period": "HOUR" }), "input.period"),
        (json!({ "periods": 0 }), "input.periods"),
        (json!({ "periods": 101 }), "input.periods"),
        (json!({ "timezone": "Nowhere/Special" }), "input.timezone"),
    ] {
        let mut bad = input.clone();
        if let (Some(i), Value::Object(extra)) = (bad.as_object_mut(), extra.clone()) {
            i.extend(extra);
        }
        let body = app.gql_as(&token, RETENTION, json!({ "i": bad })).await;
        assert_code(&body, "BAD_USER_INPUT");
        assert_eq!(
            body["errors"][0]["extensions"]["field"], field,
            "{extra}: {body}"
        );
    }
}

#[tokio::test]
async fn a_funnel_window_in_days_counts_local_calendar_days_of_its_zone() {
    let app = spawn_app().await;
    // Noon in Berlin the day before the spring change (2026-03-29, 02:00
    // → 03:00), then a purchase 23.5 hours later: within one UTC day, but
    // after noon Berlin time the next day, when a Berlin day ends (23 h).
    let token = tenant_with(
        &app,
        "funnel-dst",
        vec![
            ev("signup", "uA", "2026-03-28T11:00:00Z", json!({})),
            ev("purchase", "uA", "2026-03-29T10:30:00Z", json!({})),
        ],
    )
    .await;
    let converted = |window: &str, zone: Option<&str>| {
        let mut input = json!({
            "steps": [ { "eventType": "signup" }, { "eventType": "purchase" } ],
            "conversionWindow": window,
            "range": { "from": "2026-03-28T00:00:00Z", "to": "2026-03-29T00:00:00Z" },
        });
        if let Some(zone) = zone {
            input["timezone"] = json!(zone);
        }
        let (app, token) = (&app, &token);
        async move {
            let body = app.gql_as(token, FUNNEL, json!({ "i": input })).await;
            data(&body)["funnel"]["steps"][1]["count"].clone()
        }
    };
    assert_eq!(converted("1d", None).await, 1, "a UTC day is 24 h");
    assert_eq!(converted("1d", Some("UTC")).await, 1);
    assert_eq!(
        converted("1d", Some("Europe/Berlin")).await,
        0,
        "that Berlin day is 23 h"
    );
    // Hours stay elapsed time in any zone.
    assert_eq!(converted("24h", Some("Europe/Berlin")).await, 1);
    assert_eq!(converted("1w", Some("Europe/Berlin")).await, 1);
}
