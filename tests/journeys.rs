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
    let tenant = tenant_holding(app, prefix, events).await;
    app.token(&tenant, Role::Viewer)
}

/// [`tenant_with`], returning the tenant.
async fn tenant_holding(app: &TestApp, prefix: &str, events: Vec<Value>) -> TestTenant {
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
    tenant
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

/// Where an answer came from, as `extensions.queries` reports it.
fn source_of(body: &Value) -> &str {
    body["extensions"]["queries"][0]["source"]
        .as_str()
        .unwrap_or("(not reported)")
}

/// Events placed where the bitmaps alone cannot tell the answer: the
/// range starts and ends inside hours, and some returns share the hour of
/// the first start. Sign-ups start, logins return; UTC days from
/// 2026-10-05T09:30Z to 2026-10-07T15:30Z, each followed two days.
fn cohort_events() -> Vec<Value> {
    let with_session = |mut e: Value, session: &str| {
        e["sessionId"] = json!(session);
        e
    };
    vec![
        // Head hour (09:30-10:00, raw): a login before the sign-up does
        // not count the same day; one after it does.
        ev("login", "uHB", "2026-10-05T09:35:00Z", json!({})),
        ev("signup", "uHB", "2026-10-05T09:50:00Z", json!({})),
        ev("login", "uHB", "2026-10-06T12:00:00Z", json!({})),
        with_session(
            ev("signup", "uHA", "2026-10-05T09:40:00Z", json!({})),
            "sHA",
        ),
        with_session(ev("login", "uHA", "2026-10-05T09:45:00Z", json!({})), "sHA"),
        // Whole hours (bitmaps): in the sign-up's own hour, a login before
        // it does not count, one after it does.
        with_session(ev("login", "u1", "2026-10-05T12:10:00Z", json!({})), "s1"),
        with_session(ev("signup", "u1", "2026-10-05T12:20:00Z", json!({})), "s1"),
        ev("login", "u1", "2026-10-06T09:00:00Z", json!({})),
        with_session(ev("signup", "u2", "2026-10-05T13:10:00Z", json!({})), "s2a"),
        with_session(ev("login", "u2", "2026-10-05T13:50:00Z", json!({})), "s2b"),
        // A login earlier the same day, in an earlier hour: not a return.
        ev("login", "u3", "2026-10-05T14:00:00Z", json!({})),
        ev("signup", "u3", "2026-10-05T16:00:00Z", json!({})),
        ev("login", "u3", "2026-10-07T09:00:00Z", json!({})),
        // Signs up again the next day: still day one's cohort.
        ev("signup", "u4", "2026-10-05T17:00:00Z", json!({})),
        ev("signup", "u4", "2026-10-06T10:00:00Z", json!({})),
        ev("login", "u4", "2026-10-06T10:30:00Z", json!({})),
        // A login in a later hour of the same day: a return for sure.
        with_session(ev("signup", "u8", "2026-10-06T08:00:00Z", json!({})), "s8"),
        with_session(ev("login", "u8", "2026-10-06T20:00:00Z", json!({})), "s8"),
        // A sign-up before `from` (same hour) does not count: the first in
        // range is on day two.
        ev("signup", "u9", "2026-10-05T09:00:00Z", json!({})),
        ev("login", "u9", "2026-10-05T11:00:00Z", json!({})),
        ev("signup", "u9", "2026-10-06T11:00:00Z", json!({})),
        ev("login", "u9", "2026-10-08T09:00:00Z", json!({})),
        // A login stamped like the sign-up counts (`at >= since`).
        ev("signup", "u10", "2026-10-06T14:00:00Z", json!({})),
        ev("login", "u10", "2026-10-06T14:00:00Z", json!({})),
        // Tail hour (15:00-15:30, raw sign-ups; logins from the bitmap):
        // logins after the sign-up count, even past `to`.
        ev("login", "u5", "2026-10-07T15:05:00Z", json!({})),
        ev("signup", "u5", "2026-10-07T15:10:00Z", json!({})),
        ev("login", "u5", "2026-10-07T15:20:00Z", json!({})),
        ev("signup", "u6", "2026-10-07T15:10:00Z", json!({})),
        ev("login", "u6", "2026-10-07T15:40:00Z", json!({})),
        // Signs up after `to`: no cohort.
        ev("signup", "u7", "2026-10-07T15:45:00Z", json!({})),
        ev("login", "u7", "2026-10-07T15:50:00Z", json!({})),
    ]
}

#[tokio::test]
async fn retention_from_bitmaps_is_exact_where_hours_do_not_tell() {
    let app = spawn_app().await;
    // The same database, answering from raw events only.
    let raw = app
        .beside(|s| {
            s.set("PULSE_RETENTION_BITMAPS", "false");
        })
        .await;
    // A neighbour with the same user ids, numbered differently (its extra
    // users come first) and logging in where this tenant does not.
    let mut theirs = vec![
        ev("signup", "u0a", "2026-10-05T10:00:00Z", json!({})),
        ev("signup", "u0b", "2026-10-05T10:00:00Z", json!({})),
        ev("login", "u4", "2026-10-05T18:00:00Z", json!({})),
        ev("login", "u1", "2026-10-05T12:30:00Z", json!({})),
    ];
    theirs.extend(cohort_events());
    tenant_with(&app, "cohorts-neighbour", theirs).await;
    let tenant = tenant_holding(&app, "cohorts", cohort_events()).await;
    let token = app.token(&tenant, Role::Viewer);

    let input = |extra: Value| {
        let mut i = json!({ "startEvent": "signup", "returnEvent": "login", "period": "DAY",
            "periods": 2, "timezone": "UTC",
            "range": { "from": "2026-10-05T09:30:00Z", "to": "2026-10-07T15:30:00Z" } });
        if let (Some(i), Value::Object(extra)) = (i.as_object_mut(), extra) {
            i.extend(extra);
        }
        i
    };
    let third = 1.0 / 3.0;
    let cases = [
        // Day one: uHB, uHA, u1, u2, u3, u4 sign up. The same day after
        // their sign-up: uHA, u2. Day two: uHB, u1, u4. Day three: u3.
        // Day two: u8, u9, u10; the same day after it: u8, u10 (the tie);
        // day four: u9. Day three (before 15:30): u5, u6, both back
        // after their sign-up within the hour.
        (
            input(json!({})),
            json!([
                { "start": "2026-10-05T00:00:00+00:00", "size": 6, "returned": [2, 3, 1],
                  "rates": [2.0 / 6.0, 0.5, 1.0 / 6.0] },
                { "start": "2026-10-06T00:00:00+00:00", "size": 3, "returned": [2, 0, 1],
                  "rates": [2.0 * third, 0.0, third] },
                { "start": "2026-10-07T00:00:00+00:00", "size": 2, "returned": [2, 0, 0],
                  "rates": [1.0, 0.0, 0.0] },
            ]),
        ),
        // Logins both start and return: cohorts by the first login in
        // range, each back the day it starts. Day one: uHB, uHA, u1, u2,
        // u3, u9 (day two: uHB, u1; day three: u3); day two: u4, u8, u10;
        // day three: u5 (u6 and u7 log in after `to`).
        (
            input(json!({ "startEvent": "login" })),
            json!([
                { "start": "2026-10-05T00:00:00+00:00", "size": 6, "returned": [6, 2, 1],
                  "rates": [1.0, third, 1.0 / 6.0] },
                { "start": "2026-10-06T00:00:00+00:00", "size": 3, "returned": [3, 0, 0],
                  "rates": [1.0, 0.0, 0.0] },
                { "start": "2026-10-07T00:00:00+00:00", "size": 1, "returned": [1, 0, 0],
                  "rates": [1.0, 0.0, 0.0] },
            ]),
        ),
        // By session: sHA (back after it), s1 (login before), s2a (no
        // login in that session) on day one; s8 (back) on day two.
        (
            input(json!({ "countBy": "sessionId" })),
            json!([
                { "start": "2026-10-05T00:00:00+00:00", "size": 3, "returned": [1, 0, 0],
                  "rates": [third, 0.0, 0.0] },
                { "start": "2026-10-06T00:00:00+00:00", "size": 1, "returned": [1, 0, 0],
                  "rates": [1.0, 0.0, 0.0] },
                { "start": "2026-10-07T00:00:00+00:00", "size": 0, "returned": [0, 0, 0],
                  "rates": [0.0, 0.0, 0.0] },
            ]),
        ),
    ];
    for (input, expected) in cases {
        let body = app.gql_as(&token, RETENTION, json!({ "i": input })).await;
        assert_eq!(data(&body)["retention"]["cohorts"], expected, "{input}");
        let slow = raw.gql_as(&token, RETENTION, json!({ "i": input })).await;
        assert_eq!(
            data(&slow)["retention"]["cohorts"],
            expected,
            "raw: {input}"
        );
        // The range's partial hours at both ends come from raw events.
        assert_eq!(source_of(&body), "bitmap+raw", "{input}: {body}");
        assert_eq!(source_of(&slow), "raw", "{input}: {slow}");
    }
    // Half-hour offsets split UTC hours between days: raw events answer.
    let kolkata = input(json!({ "timezone": "Asia/Kolkata" }));
    let body = app.gql_as(&token, RETENTION, json!({ "i": kolkata })).await;
    assert_eq!(source_of(&body), "raw", "{body}");
}

/// Random events (late ones, bursts of one actor within an hour, ties,
/// a neighbour with the same ids) and random retention queries: the
/// answer with the bitmaps must equal the raw path's, from a second
/// server on the same database with `PULSE_RETENTION_BITMAPS=0`.
#[tokio::test]
async fn bitmap_retention_equals_raw_retention_on_random_data() {
    use chrono::{DateTime, Duration, DurationRound, Utc};
    use rand::{Rng, SeedableRng};

    let app = spawn_app().await;
    let raw = app
        .beside(|s| {
            s.set("PULSE_RETENTION_BITMAPS", "false");
        })
        .await;
    let tenant = tenant_holding(&app, "cohorts-prop", Vec::new()).await;
    let neighbour = tenant_holding(&app, "cohorts-prop-b", Vec::new()).await;
    let viewer = app.token(&tenant, Role::Viewer);
    let seed: u64 = std::env::var("PULSE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Ten weeks, across Berlin's autumn change (2026-10-25).
    let base: DateTime<Utc> = "2026-08-24T00:00:00Z".parse().expect("base");
    let span = 70 * 86_400;
    let types = ["signup", "login", "view", "buy"];
    let event = |rng: &mut rand::rngs::StdRng, at: DateTime<Utc>, user: u32, session: u32| {
        let mut e = json!({ "type": types[rng.random_range(0..types.len())],
            "timestamp": at.to_rfc3339() });
        if rng.random_bool(0.9) {
            e["userId"] = json!(format!("u{user}"));
        }
        if rng.random_bool(0.7) {
            e["sessionId"] = json!(format!("s{session}"));
        }
        e
    };
    // Four batches at random times, so later batches hold earlier (late)
    // events; half of each is bursts of one actor within an hour, some at
    // one instant, so first starts and returns share hours.
    for _ in 0..4 {
        let mut events = Vec::new();
        while events.len() < 400 {
            let at = base + Duration::seconds(rng.random_range(0..span));
            let (user, session) = (rng.random_range(0..30), rng.random_range(0..80));
            if rng.random_bool(0.5) {
                events.push(event(&mut rng, at, user, session));
                continue;
            }
            let hour = at.duration_trunc(Duration::hours(1)).expect("hour");
            for _ in 0..rng.random_range(2..5) {
                let at = if rng.random_bool(0.2) {
                    at
                } else {
                    hour + Duration::seconds(rng.random_range(0..3600))
                };
                events.push(event(&mut rng, at, user, session));
            }
        }
        for t in [&neighbour, &tenant] {
            let (status, body) = app
                .post_events(&app.token(t, Role::Editor), Value::Array(events.clone()))
                .await;
            assert_eq!(status, 202, "{body}");
        }
        // The neighbour also has events of its own, in the same hours.
        let (status, body) = app
            .post_events(
                &app.token(&neighbour, Role::Editor),
                json!([{ "type": "login", "userId": "u0", "timestamp": base.to_rfc3339() }]),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }

    let zones = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"];
    let periods = [
        ("DAY", 14 * 1440),
        ("WEEK", 6 * 7 * 1440),
        ("MONTH", 70 * 1440),
    ];
    for round in 0..30 {
        let (period, widest) = periods[rng.random_range(0..periods.len())];
        let mut from = base + Duration::minutes(rng.random_range(-600..60 * 1440));
        let mut to = from + Duration::minutes(rng.random_range(1..widest));
        if rng.random_bool(0.3) {
            from = from.duration_trunc(Duration::hours(1)).expect("hour");
            to = to.duration_trunc(Duration::hours(1)).expect("hour") + Duration::hours(1);
        }
        if rng.random_bool(0.15) {
            // Within one hour, or nearly.
            to = from + Duration::minutes(rng.random_range(1..50));
        }
        let start = types[rng.random_range(0..2)];
        let ret = if rng.random_bool(0.25) {
            start
        } else {
            types[rng.random_range(0..types.len())]
        };
        let zone = zones[rng.random_range(0..zones.len())];
        let input = json!({ "startEvent": start, "returnEvent": ret, "period": period,
            "periods": rng.random_range(1..=8), "timezone": zone,
            "countBy": if rng.random_bool(0.6) { "userId" } else { "sessionId" },
            "range": { "from": from.to_rfc3339(), "to": to.to_rfc3339() } });
        let fast = app.gql_as(&viewer, RETENTION, json!({ "i": input })).await;
        let slow = raw.gql_as(&viewer, RETENTION, json!({ "i": input })).await;
        // Partial hours at the ends are read raw; whole ones may be too,
        // for actors whose return shares their first start's hour.
        let whole_hours = from.timestamp() % 3600 == 0 && to.timestamp() % 3600 == 0;
        let source = source_of(&fast);
        if zone == "Asia/Kolkata" {
            assert_eq!(source, "raw", "seed {seed}, round {round}: {input}");
        } else if whole_hours {
            assert!(
                source == "bitmap" || source == "bitmap+raw",
                "seed {seed}, round {round}: {input}: {source}"
            );
        } else {
            assert_eq!(source, "bitmap+raw", "seed {seed}, round {round}: {input}");
        }
        let (fast, slow) = (&data(&fast)["retention"], &data(&slow)["retention"]);
        if fast != slow {
            panic!("seed {seed}, round {round}: {input}\nbitmap: {fast}\nraw: {slow}");
        }
    }
}
