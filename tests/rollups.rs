//! Numeric rollups of declared properties: declaring (ADMIN only, checked,
//! audited, per tenant), the background backfill and its progress, answers
//! equal to the raw path's before, during and after it and on random
//! data, the dimension cap, and tenant isolation. Both backends.

use chrono::DurationRound;
use pulse::auth::Role;
use serde_json::{Value, json};

use crate::common::*;

const METRICS: &str = "query($q: MetricQueryInput!) { metrics(query: $q) {
    total series { group total points { bucket value } } } }";

const ROLLUPS: &str = "{ rollups { fields { field role maxValuesPerHour declaredBy }
    series { field dimension ready progress hoursDone hoursTotal } } }";

const DECLARE: &str = "mutation($f: String!, $r: RollupRole!, $m: Int) {
    declareRollupField(field: $f, role: $r, maxValuesPerHour: $m) { fields { field role } } }";

/// A server that backfills `slugs`' series, resting `pause_ms` between
/// chunks of `chunk_hours`.
async fn rollup_app(slugs: &[String], chunk_hours: u32, pause_ms: u64) -> TestApp {
    let scope = slugs.join(",");
    spawn_app_with(move |s| {
        s.set("PULSE_ROLLUP_BACKFILL", "true")
            .set("PULSE_ROLLUP_BACKFILL_TENANTS", &scope)
            .set("PULSE_ROLLUP_BACKFILL_HOURS", chunk_hours.to_string())
            .set("PULSE_ROLLUP_BACKFILL_PAUSE_MS", pause_ms.to_string());
    })
    .await
}

async fn tenant_named(app: &TestApp, prefix: &str) -> TestTenant {
    let t = app
        .tenant_slugged(
            format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            pulse::entities::tenant::TenantStatus::Active,
        )
        .await;
    data(
        &app.gql_as(
            &app.token(&t, Role::Admin),
            "mutation { updateTenantSettings(input: { retentionDays: 3650 }) { id } }",
            json!({}),
        )
        .await,
    );
    t
}

async fn declare(app: &TestApp, t: &TestTenant, field: &str, role: &str, max: Option<i64>) {
    data(
        &app.gql_as(
            &app.token(t, Role::Admin),
            DECLARE,
            json!({ "f": field, "r": role, "m": max }),
        )
        .await,
    );
}

async fn rollups(app: &TestApp, t: &TestTenant) -> Value {
    data(
        &app.gql_as(&app.token(t, Role::Viewer), ROLLUPS, json!({}))
            .await,
    )["rollups"]
        .clone()
}

/// Waits until every series of `t` is ready (at most 60 s).
async fn until_ready(app: &TestApp, t: &TestTenant) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = rollups(app, t).await;
        let series = r["series"].as_array().cloned().unwrap_or_default();
        if !series.is_empty() && series.iter().all(|s| s["ready"] == true) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "backfill stuck: {r}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Equal, numbers to a relative 1e-9 (sums of hourly sums are added in
/// another order than one sum over the events).
fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| close(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ => a == b,
    }
}

fn source(body: &Value) -> &str {
    body["extensions"]["queries"][0]["source"]
        .as_str()
        .unwrap_or("")
}

/// The same question with a filter every event passes: the raw path.
fn forced_raw(q: &Value) -> Value {
    let mut forced = q.clone();
    forced["filters"] = json!([{ "field": "type", "op": "EXISTS" }]);
    forced
}

/// Random events with every kind of `amount` (decimals, integers, strings
/// that are skipped, nulls, absent) and dimension values (strings,
/// numbers, null, absent), some written before the declarations (so
/// backfilled), some after (kept by the writer, late ones included), and
/// a neighbour with the same shapes and other amounts; random queries
/// answered from the rollups must equal the raw path's answers.
#[tokio::test]
async fn numeric_rollup_answers_equal_raw_answers_on_random_data() {
    use rand::{Rng, SeedableRng};
    let slugs = [
        format!("numeric-prop-{}", uuid::Uuid::new_v4().simple()),
        format!("numeric-prop-b-{}", uuid::Uuid::new_v4().simple()),
    ];
    let app = rollup_app(&slugs, 24, 0).await;
    let mut tenants = Vec::new();
    for slug in &slugs {
        let t = app
            .tenant_slugged(slug.clone(), pulse::entities::tenant::TenantStatus::Active)
            .await;
        data(
            &app.gql_as(
                &app.token(&t, Role::Admin),
                "mutation { updateTenantSettings(input: { retentionDays: 3650 }) { id } }",
                json!({}),
            )
            .await,
        );
        tenants.push(t);
    }
    let (tenant, neighbour) = (&tenants[0], &tenants[1]);
    let seed: u64 = std::env::var("PULSE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let base = chrono::DateTime::parse_from_rfc3339("2026-03-27T00:00:00Z")
        .expect("base")
        .with_timezone(&chrono::Utc);
    let types = ["purchase", "refund", "view"];
    let plans = [
        json!("free"),
        json!("pro"),
        json!("team"),
        json!(7),
        Value::Null,
    ];
    let batch = |rng: &mut rand::rngs::StdRng, scale: f64| -> Vec<Value> {
        (0..300)
            .map(|_| {
                let at = base + chrono::Duration::seconds(rng.random_range(0..6 * 86_400));
                let mut props = serde_json::Map::new();
                match rng.random_range(0..10) {
                    0 => {}
                    1 => {
                        props.insert("amount".into(), json!("n/a"));
                    }
                    2 => {
                        props.insert("amount".into(), Value::Null);
                    }
                    3 => {
                        props.insert("amount".into(), json!(rng.random_range(-50..500)));
                    }
                    _ => {
                        let cents = rng.random_range(1..100_000) as f64 / 100.0;
                        props.insert("amount".into(), json!(cents * scale));
                    }
                }
                if rng.random_bool(0.9) {
                    props.insert(
                        "plan".into(),
                        plans[rng.random_range(0..plans.len())].clone(),
                    );
                }
                if rng.random_bool(0.5) {
                    props.insert(
                        "campaign".into(),
                        json!(format!("c{}", rng.random_range(0..4))),
                    );
                }
                json!({ "type": types[rng.random_range(0..types.len())],
                        "timestamp": at.to_rfc3339(), "properties": props })
            })
            .collect()
    };
    let post = |t: &TestTenant, events: Vec<Value>| {
        let (app, token) = (&app, app.token(t, Role::Editor));
        async move {
            let (status, body) = app.post_events(&token, Value::Array(events)).await;
            assert_eq!(status, 202, "{body}");
        }
    };
    // Before the declarations: backfilled.
    for _ in 0..2 {
        post(tenant, batch(&mut rng, 1.0)).await;
        post(neighbour, batch(&mut rng, 1000.0)).await;
    }
    for t in [tenant, neighbour] {
        declare(&app, t, "amount", "NUMERIC", None).await;
        declare(&app, t, "properties.plan", "DIMENSION", None).await;
        declare(&app, t, "campaign", "DIMENSION", None).await;
    }
    for t in [tenant, neighbour] {
        until_ready(&app, t).await;
    }
    // After: kept by the writer, into hours already backfilled (late).
    for _ in 0..2 {
        post(tenant, batch(&mut rng, 1.0)).await;
        post(neighbour, batch(&mut rng, 1000.0)).await;
    }
    let viewer = app.token(tenant, Role::Viewer);
    let zones = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"];
    let granularities = [Value::Null, json!("HOUR"), json!("DAY"), json!("WEEK")];
    let measures = ["SUM", "AVG", "MIN", "MAX"];
    let groupings = [
        json!([]),
        json!(["type"]),
        json!(["properties.plan"]),
        json!(["type", "properties.campaign"]),
        json!(["properties.campaign", "type"]),
        json!(["properties.plan", "properties.campaign"]),
    ];
    let mut from_rollups = 0;
    for round in 0..30 {
        let from = base + chrono::Duration::minutes(rng.random_range(-600..5 * 1440));
        let to = from + chrono::Duration::minutes(rng.random_range(30..4 * 1440));
        let zone = zones[rng.random_range(0..zones.len())];
        let grouping = groupings[rng.random_range(0..groupings.len())].clone();
        let mut q = json!({
            "measure": measures[rng.random_range(0..measures.len())],
            "field": "properties.amount", "timezone": zone, "groupBy": grouping,
            "limit": rng.random_range(1..6),
            "range": { "from": from.to_rfc3339(), "to": to.to_rfc3339() },
        });
        let g = &granularities[rng.random_range(0..granularities.len())];
        if !g.is_null() {
            q["granularity"] = g.clone();
        }
        if rng.random_bool(0.3) {
            q["eventTypes"] = json!(["purchase", "refund"]);
        }
        let fast = app.gql_as(&viewer, METRICS, json!({ "q": q })).await;
        let slow = app
            .gql_as(&viewer, METRICS, json!({ "q": forced_raw(&q) }))
            .await;
        assert_eq!(source(&slow), "raw", "{slow}");
        let two_dimensions = grouping.as_array().is_some_and(|g| {
            g.iter()
                .filter(|f| f.as_str().is_some_and(|f| f.starts_with("properties.")))
                .count()
                > 1
        });
        // Rollups answer the whole UTC hours of the range, if it has one;
        // raw events the partial hours at its ends, if any.
        let whole_hours = from.timestamp() % 3600 == 0 && to.timestamp() % 3600 == 0;
        let has_whole_hour =
            (from.timestamp() + 3599).div_euclid(3600) < to.timestamp().div_euclid(3600);
        let expected = if has_whole_hour && zone != "Asia/Kolkata" && !two_dimensions {
            if whole_hours { "rollup" } else { "rollup+raw" }
        } else {
            "raw"
        };
        assert_eq!(source(&fast), expected, "seed {seed}, round {round}: {q}");
        if expected != "raw" {
            from_rollups += 1;
        }
        let (a, b) = (&data(&fast)["metrics"], &data(&slow)["metrics"]);
        assert!(
            close(a, b),
            "seed {seed}, round {round}: {q}\nrollup: {a}\nraw: {b}"
        );
    }
    assert!(from_rollups > 0, "seed {seed}: no round used the rollups");
}

/// Eight hours of purchases, two days ago, whose sums are known by hand;
/// the backfill fills one hour per chunk with a rest between chunks, so
/// queries run while it is under way: every answer is right, from raw
/// events until the series is ready and from the rollups after, and the
/// progress is visible between 0 and 1. An event written during the
/// backfill counts once, whichever side of the backfill's cursor it lands.
#[tokio::test]
async fn declaring_backfills_and_queries_are_right_before_during_and_after() {
    let slug = format!("numeric-fill-{}", uuid::Uuid::new_v4().simple());
    let app = rollup_app(std::slice::from_ref(&slug), 1, 300).await;
    let t = app
        .tenant_slugged(slug, pulse::entities::tenant::TenantStatus::Active)
        .await;
    let editor = app.token(&t, Role::Editor);
    let viewer = app.token(&t, Role::Viewer);
    let start = (chrono::Utc::now() - chrono::Duration::days(2))
        .duration_trunc(chrono::TimeDelta::hours(1))
        .expect("hour");
    // Hour h: a "pro" purchase of 10·(h+1) and a "free" one of 1.5; hour 3
    // also a "team" purchase whose amount is a string (skipped).
    let mut events = Vec::new();
    for h in 0..8i64 {
        let at = |m: i64| (start + chrono::Duration::minutes(h * 60 + m)).to_rfc3339();
        events.push(json!({ "type": "purchase", "timestamp": at(10),
            "properties": { "amount": 10 * (h + 1), "plan": "pro" } }));
        events.push(json!({ "type": "purchase", "timestamp": at(40),
            "properties": { "amount": 1.5, "plan": "free" } }));
        if h == 3 {
            events.push(json!({ "type": "purchase", "timestamp": at(50),
                "properties": { "amount": "lots", "plan": "team" } }));
        }
    }
    let (status, body) = app.post_events(&editor, Value::Array(events)).await;
    assert_eq!(status, 202, "{body}");
    let range = json!({ "from": start.to_rfc3339(),
                        "to": (start + chrono::Duration::hours(8)).to_rfc3339() });
    let total = json!({ "measure": "SUM", "field": "properties.amount", "range": range });
    let by_plan = json!({ "measure": "MAX", "field": "properties.amount",
        "groupBy": ["properties.plan"], "range": range });
    // 10 + 20 + … + 80 = 360, plus 8 × 1.5 = 12.
    let mut expected_total = 372.0;
    let ask = |q: &Value| {
        let (app, viewer) = (&app, viewer.clone());
        let q = q.clone();
        async move { app.gql_as(&viewer, METRICS, json!({ "q": q })).await }
    };
    let before = ask(&total).await;
    assert_eq!(source(&before), "raw");
    assert_eq!(data(&before)["metrics"]["total"], json!(expected_total));

    declare(&app, &t, "amount", "NUMERIC", None).await;
    declare(&app, &t, "plan", "DIMENSION", None).await;
    let (mut seen_partial, mut late_sent, mut answers_during) = (false, false, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = rollups(&app, &t).await;
        let series = r["series"].as_array().cloned().unwrap_or_default();
        assert_eq!(series.len(), 2, "{r}");
        let ready = series.iter().all(|s| s["ready"] == true);
        for s in &series {
            let p = s["progress"].as_f64().unwrap_or(-1.0);
            assert!((0.0..=1.0).contains(&p), "{s}");
            if p > 0.0 && p < 1.0 {
                seen_partial = true;
                assert_eq!(s["hoursTotal"], 8, "{s}");
            }
        }
        // Once the backfill is under way, one event in an hour it has
        // filled and one in an hour it has not.
        if seen_partial && !late_sent {
            let at = |h: i64| (start + chrono::Duration::minutes(h * 60 + 5)).to_rfc3339();
            let late = json!([
                { "type": "purchase", "timestamp": at(0), "properties": { "amount": 100, "plan": "pro" } },
                { "type": "purchase", "timestamp": at(7), "properties": { "amount": 0.25, "plan": "free" } },
            ]);
            let (status, body) = app.post_events(&editor, late).await;
            assert_eq!(status, 202, "{body}");
            expected_total += 100.25;
            late_sent = true;
        }
        let answer = ask(&total).await;
        assert_eq!(
            data(&answer)["metrics"]["total"],
            json!(expected_total),
            "{answer}"
        );
        if ready {
            assert_eq!(source(&answer), "rollup", "{answer}");
            break;
        }
        // Readiness only moves forward, so a series still not ready after
        // the answer was not ready while it was computed.
        let after = rollups(&app, &t).await;
        let none_ready = after["series"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["ready"] != true));
        if none_ready {
            assert_eq!(source(&answer), "raw", "{answer}");
        }
        answers_during += 1;
        assert!(std::time::Instant::now() < deadline, "backfill stuck: {r}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(seen_partial, "the progress was never seen between 0 and 1");
    assert!(late_sent && answers_during > 0);
    // After: 472.25 in all; the maxima by plan: pro 100, free 1.5, team
    // none (its only amount was a string).
    let after = ask(&by_plan).await;
    assert_eq!(source(&after), "rollup", "{after}");
    let series = data(&after)["metrics"]["series"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let max_of = |plan: &str| {
        series
            .iter()
            .find(|s| s["group"]["properties.plan"] == plan)
            .map(|s| s["total"].clone())
    };
    assert_eq!(max_of("pro"), Some(json!(100.0)), "{after}");
    assert_eq!(max_of("free"), Some(json!(1.5)), "{after}");
    assert_eq!(max_of("team"), Some(Value::Null), "{after}");
    let raw = ask(&forced_raw(&by_plan)).await;
    assert!(
        close(&data(&after)["metrics"], &data(&raw)["metrics"]),
        "{after} {raw}"
    );
}

/// A dimension with more distinct values in an hour than its cap is
/// answered from raw events (and correctly); at the cap, from rollups.
#[tokio::test]
async fn a_dimension_over_its_cap_falls_back_to_raw_events() {
    let slug = format!("numeric-cap-{}", uuid::Uuid::new_v4().simple());
    let app = rollup_app(std::slice::from_ref(&slug), 24, 0).await;
    let t = app
        .tenant_slugged(slug, pulse::entities::tenant::TenantStatus::Active)
        .await;
    let start = (chrono::Utc::now() - chrono::Duration::days(1))
        .duration_trunc(chrono::TimeDelta::hours(1))
        .expect("hour");
    // Hour 0: campaigns a, b (2 values); hour 1: a, b, c (3 values).
    let at = |h: i64, m: i64| (start + chrono::Duration::minutes(h * 60 + m)).to_rfc3339();
    let events = json!([
        { "type": "buy", "timestamp": at(0, 1), "properties": { "amount": 1, "campaign": "a" } },
        { "type": "buy", "timestamp": at(0, 2), "properties": { "amount": 2, "campaign": "b" } },
        { "type": "buy", "timestamp": at(1, 1), "properties": { "amount": 4, "campaign": "a" } },
        { "type": "buy", "timestamp": at(1, 2), "properties": { "amount": 8, "campaign": "b" } },
        { "type": "buy", "timestamp": at(1, 3), "properties": { "amount": 16, "campaign": "c" } },
    ]);
    let (status, body) = app.post_events(&app.token(&t, Role::Editor), events).await;
    assert_eq!(status, 202, "{body}");
    declare(&app, &t, "amount", "NUMERIC", None).await;
    declare(&app, &t, "campaign", "DIMENSION", Some(2)).await;
    until_ready(&app, &t).await;
    let viewer = app.token(&t, Role::Viewer);
    let q = |hours: i64| {
        json!({ "measure": "SUM", "field": "properties.amount", "groupBy": ["properties.campaign"],
                "range": { "from": start.to_rfc3339(),
                           "to": (start + chrono::Duration::hours(hours)).to_rfc3339() } })
    };
    // Hour 0 alone: 2 values, at the cap.
    let at_cap = app.gql_as(&viewer, METRICS, json!({ "q": q(1) })).await;
    assert_eq!(source(&at_cap), "rollup", "{at_cap}");
    assert_eq!(data(&at_cap)["metrics"]["total"], json!(3.0));
    // Hours 0 and 1: hour 1 has 3 values, past the cap.
    let past = app.gql_as(&viewer, METRICS, json!({ "q": q(2) })).await;
    assert_eq!(source(&past), "raw", "{past}");
    assert_eq!(data(&past)["metrics"]["total"], json!(31.0));
    // Ungrouped, the same hours come from the rollups.
    let mut total = q(2);
    total["groupBy"] = json!([]);
    let ungrouped = app.gql_as(&viewer, METRICS, json!({ "q": total })).await;
    assert_eq!(source(&ungrouped), "rollup", "{ungrouped}");
    assert_eq!(data(&ungrouped)["metrics"]["total"], json!(31.0));
}

/// Only ADMINs declare and drop; names and caps are checked, each with
/// its field; at most 10 per role; declarations are audited and belong to
/// their tenant; dropping removes the series.
#[tokio::test]
async fn declarations_are_admin_only_checked_limited_audited_and_per_tenant() {
    let app = spawn_app().await;
    let t = tenant_named(&app, "numeric-decl").await;
    let other = tenant_named(&app, "numeric-decl-b").await;
    let admin = app.token(&t, Role::Admin);
    for role in [Role::Viewer, Role::Editor] {
        let body = app
            .gql_as(
                &app.token(&t, role),
                DECLARE,
                json!({ "f": "amount", "r": "NUMERIC" }),
            )
            .await;
        assert_eq!(error_code(&body), Some("FORBIDDEN"), "{body}");
    }
    for (f, r, m, field) in [
        ("a b", "NUMERIC", None, "field"),
        ("", "DIMENSION", None, "field"),
        ("x'); DROP TABLE events; --", "NUMERIC", None, "field"),
        ("amount", "NUMERIC", Some(5), "maxValuesPerHour"),
        ("plan", "DIMENSION", Some(0), "maxValuesPerHour"),
        ("plan", "DIMENSION", Some(1_001), "maxValuesPerHour"),
    ] {
        let body = app
            .gql_as(&admin, DECLARE, json!({ "f": f, "r": r, "m": m }))
            .await;
        assert_eq!(error_code(&body), Some("BAD_USER_INPUT"), "{f}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
    }
    declare(&app, &t, "plan", "DIMENSION", Some(1_000)).await;
    for i in 0..10 {
        declare(&app, &t, &format!("n{i}"), "NUMERIC", None).await;
    }
    // Again: nothing changes.
    declare(&app, &t, "n0", "NUMERIC", None).await;
    let eleventh = app
        .gql_as(&admin, DECLARE, json!({ "f": "n10", "r": "NUMERIC" }))
        .await;
    assert_eq!(error_code(&eleventh), Some("LIMIT_EXCEEDED"), "{eleventh}");
    let r = rollups(&app, &t).await;
    assert_eq!(r["fields"].as_array().map(Vec::len), Some(11), "{r}");
    // Each numeric property: one series alone and one by `plan`.
    assert_eq!(r["series"].as_array().map(Vec::len), Some(20), "{r}");
    assert!(
        r["series"].as_array().is_some_and(|s| s
            .iter()
            .all(|s| s["ready"] == false && s["progress"] == 0.0)),
        "nothing backfills on a server without the job: {r}"
    );
    // The other tenant sees none of it, and cannot drop it.
    let theirs = rollups(&app, &other).await;
    assert_eq!(theirs["fields"], json!([]), "{theirs}");
    assert_eq!(theirs["series"], json!([]), "{theirs}");
    let drop = "mutation($f: String!, $r: RollupRole!) { dropRollupField(field: $f, role: $r) }";
    let body = app
        .gql_as(
            &app.token(&other, Role::Admin),
            drop,
            json!({ "f": "plan", "r": "DIMENSION" }),
        )
        .await;
    assert_eq!(data(&body)["dropRollupField"], false);
    let body = app
        .gql_as(&admin, drop, json!({ "f": "plan", "r": "DIMENSION" }))
        .await;
    assert_eq!(data(&body)["dropRollupField"], true);
    let r = rollups(&app, &t).await;
    assert_eq!(r["series"].as_array().map(Vec::len), Some(10), "{r}");
    let audit = app
        .gql_as(
            &admin,
            "{ auditLog(first: 50) { edges { node { action resourceId } } } }",
            json!({}),
        )
        .await;
    let actions: Vec<String> = data(&audit)["auditLog"]["edges"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["node"]["action"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "rollup_field.declare")
            .count(),
        11,
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| *a == "rollup_field.drop").count(),
        1,
        "{actions:?}"
    );
}

/// Data expiry removes the numeric rollups of what it deletes: sums from
/// the rollups count only what is left, per tenant.
#[tokio::test]
async fn data_expiry_removes_numeric_rollups() {
    let app = spawn_app().await;
    let keep = tenant_named(&app, "numeric-expiry").await;
    let other = tenant_named(&app, "numeric-expiry-b").await;
    for t in [&keep, &other] {
        declare(&app, t, "age", "NUMERIC", None).await;
        while pulse::domain::events::rollup_fields::backfill_step(&app.state.db, 24, Some(&[t.id]))
            .await
            .expect("backfill")
        {}
        let batch: Vec<Value> = [1i64, 29, 31, 100]
            .iter()
            .map(|d| {
                json!({ "type": "t", "timestamp": (chrono::Utc::now() - chrono::Duration::days(*d)).to_rfc3339(),
                        "properties": { "age": d } })
            })
            .collect();
        let (status, body) = app
            .post_events(&app.token(t, Role::Editor), Value::Array(batch))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    data(
        &app.gql_as(
            &app.token(&keep, Role::Admin),
            "mutation { updateTenantSettings(input: { retentionDays: 30 }) { id } }",
            json!({}),
        )
        .await,
    );
    pulse::domain::events::expiry::run_once(
        &app.state.event_store,
        &app.state.cache,
        chrono::Utc::now(),
    )
    .await
    .expect("expiry");
    let sum = |t: &TestTenant| {
        let (app, token) = (&app, app.token(t, Role::Viewer));
        async move {
            let body = app
                .gql_as(
                    &token,
                    METRICS,
                    json!({ "q": { "measure": "SUM", "field": "properties.age",
                                   "granularity": "DAY", "range": { "last": "400d" } } }),
                )
                .await;
            assert_eq!(source(&body), "rollup+raw", "{body}");
            data(&body)["metrics"]["total"].as_f64()
        }
    };
    assert_eq!(sum(&keep).await, Some(30.0));
    assert_eq!(sum(&other).await, Some(161.0));
}
