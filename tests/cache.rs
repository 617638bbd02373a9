//! The hot-metric cache: whole buckets served from the cache until an
//! event lands in them, exactly the touched buckets recomputed, every
//! acknowledged event in the next answer (on another instance too, when
//! they share Redis), and no tenant ever served another's entries.

use chrono::{Duration, Utc};
use pulse::auth::Role;
use serde_json::{Value, json};

use crate::common::*;

const QUERY: &str = "query($q: MetricQueryInput!) { metrics(query: $q) {
    total cached series { points { bucket value } } } }";

/// Midnight UTC, `days` days ago.
fn midnight(days: i64) -> chrono::DateTime<Utc> {
    let today = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight");
    today.and_utc() - Duration::days(days)
}

/// COUNT by DAY over the three whole days before today.
fn three_days(types: &[&str]) -> Value {
    json!({ "measure": "COUNT", "granularity": "DAY", "eventTypes": types,
            "range": { "from": midnight(3).to_rfc3339(), "to": midnight(0).to_rfc3339() } })
}

fn event(kind: &str, days_ago: i64, hour: u32) -> Value {
    let at = midnight(days_ago) + Duration::hours(i64::from(hour));
    json!({ "type": kind, "userId": "u1", "timestamp": at.to_rfc3339() })
}

/// (total, cached, recomputed bucket starts) of one run.
async fn run(app: &TestApp, token: &str, q: &Value) -> (f64, bool, Vec<String>) {
    let body = app.gql_as(token, QUERY, json!({ "q": q })).await;
    let m = &data(&body)["metrics"];
    let cache = &body["extensions"]["queries"][0]["cache"];
    assert!(cache.is_object(), "the cache took part: {body}");
    let recomputed = cache["recomputed"]
        .as_array()
        .expect("recomputed")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect();
    (
        m["total"].as_f64().expect("total"),
        m["cached"].as_bool().expect("cached"),
        recomputed,
    )
}

fn day(days_ago: i64) -> String {
    midnight(days_ago).to_rfc3339()
}

#[tokio::test]
async fn whole_buckets_are_served_until_an_event_lands_in_them() {
    let app = spawn_app().await;
    let t = app.tenant("cache").await;
    let token = app.token(&t, Role::Editor);
    app.ingest_ok(
        &token,
        json!([
            event("page_view", 3, 1),
            event("page_view", 2, 5),
            event("signup", 1, 7)
        ]),
    )
    .await;
    let q = three_days(&["page_view"]);

    let (total, cached, recomputed) = run(&app, &token, &q).await;
    assert_eq!((total, cached), (2.0, false));
    assert_eq!(recomputed, vec![day(3), day(2), day(1)]);
    // Again: every bucket from the cache.
    let (total, cached, recomputed) = run(&app, &token, &q).await;
    assert_eq!((total, cached), (2.0, true));
    assert!(recomputed.is_empty());

    // A late event two days back: that bucket alone is recomputed, and the
    // answer includes the event as soon as its ingestion was acknowledged.
    app.ingest_ok(&token, json!([event("page_view", 2, 9)]))
        .await;
    let (total, cached, recomputed) = run(&app, &token, &q).await;
    assert_eq!((total, cached), (3.0, false));
    assert_eq!(recomputed, vec![day(2)]);

    // Another type on another day leaves a query of page views cached;
    // a query of every type sees that day recomputed.
    app.ingest_ok(&token, json!([event("signup", 1, 3)])).await;
    let (total, cached, _) = run(&app, &token, &q).await;
    assert_eq!((total, cached), (3.0, true));
    let all = three_days(&[]);
    let (total, _, _) = run(&app, &token, &all).await;
    assert_eq!(total, 5.0);
    app.ingest_ok(&token, json!([event("purchase", 1, 4)]))
        .await;
    let (total, cached, recomputed) = run(&app, &token, &all).await;
    assert_eq!((total, cached), (6.0, false));
    assert_eq!(recomputed, vec![day(1)]);

    // The open bucket (today, up to now) is never filed, so a relative
    // range always recomputes its ends and includes the newest event.
    app.ingest_ok(&token, json!([{ "type": "page_view", "userId": "u2" }]))
        .await;
    let last = json!({ "measure": "COUNT", "granularity": "DAY", "eventTypes": ["page_view"],
                       "range": { "last": "2d" } });
    let (first, _, _) = run(&app, &token, &last).await;
    app.ingest_ok(&token, json!([{ "type": "page_view", "userId": "u3" }]))
        .await;
    let (second, cached, recomputed) = run(&app, &token, &last).await;
    assert_eq!(second, first + 1.0);
    assert!(!cached);
    assert!(recomputed.contains(&day(0)), "{recomputed:?}");
}

#[tokio::test]
async fn tenants_never_share_entries_or_invalidations() {
    let app = spawn_app().await;
    let a = app.tenant("cache-a").await;
    let b = app.tenant("cache-b").await;
    let (ta, tb) = (app.token(&a, Role::Editor), app.token(&b, Role::Editor));
    app.ingest_ok(
        &ta,
        json!([event("page_view", 2, 1), event("page_view", 1, 1)]),
    )
    .await;
    let q = three_days(&["page_view"]);
    assert_eq!(run(&app, &ta, &q).await.0, 2.0);
    assert!(run(&app, &ta, &q).await.1, "A's second run is cached");
    // B asks the same question: its own (empty) answer, computed for B.
    let (total, cached, recomputed) = run(&app, &tb, &q).await;
    assert_eq!((total, cached, recomputed.len()), (0.0, false, 3));
    // B's events move B's generations only.
    app.ingest_ok(&tb, json!([event("page_view", 2, 3)])).await;
    assert_eq!(run(&app, &tb, &q).await.0, 1.0);
    let (total, cached, _) = run(&app, &ta, &q).await;
    assert_eq!((total, cached), (2.0, true));
}

/// Two instances sharing the database and Redis: an event acknowledged by
/// one is in the next answer of the other, whose cache held the bucket.
/// The embedded default is one process with its cache in it; sharing it
/// between processes needs Redis, so without Redis this test has nothing
/// to check and says so.
#[tokio::test]
async fn an_event_acknowledged_by_one_instance_is_read_by_another() {
    if redis_url().is_none() || !is_postgres() {
        eprintln!("skipped: two instances share a cache only through Redis and PostgreSQL");
        return;
    }
    let one = spawn_app().await;
    let two = spawn_app().await;
    let t = one.tenant("cache-two").await;
    let token = one.token(&t, Role::Editor);
    one.ingest_ok(&token, json!([event("page_view", 2, 1)]))
        .await;
    let q = three_days(&["page_view"]);
    assert_eq!(run(&two, &token, &q).await.0, 1.0);
    let (total, cached, _) = run(&two, &token, &q).await;
    assert_eq!((total, cached), (1.0, true));
    one.ingest_ok(&token, json!([event("page_view", 2, 4)]))
        .await;
    let (total, cached, recomputed) = run(&two, &token, &q).await;
    assert_eq!((total, cached), (2.0, false));
    assert_eq!(recomputed, vec![day(2)]);
}

async fn cache_errors(app: &TestApp) -> f64 {
    app.counter("pulse_cache_errors_total").await
}

/// The total and whether the cache took part, without insisting it did.
async fn answer(app: &TestApp, token: &str, q: &Value) -> (f64, Option<bool>) {
    let body = app.gql_as(token, QUERY, json!({ "q": q })).await;
    let total = data(&body)["metrics"]["total"].as_f64().expect("total");
    let hit = body["extensions"]["queries"][0]["cache"]["hit"].as_bool();
    (total, hit)
}

/// Redis paused, then stopped and started empty: every answer stays right
/// (from the database while Redis is away), failures are counted, bumps
/// Redis missed are applied before its entries are trusted again, and
/// caching resumes by itself.
#[tokio::test]
async fn redis_away_is_not_an_outage_and_its_return_serves_nothing_stale() {
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let app = spawn_app_with(|s| {
        s.set("PULSE_REDIS_URL", &url);
    })
    .await;
    let t = app.tenant("cache-redis").await;
    let token = app.token(&t, Role::Editor);
    app.ingest_ok(&token, json!([event("page_view", 2, 1)]))
        .await;
    let q = three_days(&["page_view"]);
    assert_eq!(answer(&app, &token, &q).await, (1.0, Some(false)));
    assert_eq!(answer(&app, &token, &q).await, (1.0, Some(true)));

    // Paused (its data kept): the bump for a late event times out, the
    // answer comes from the database, and once Redis answers again the
    // missed bump is applied before any entry is read.
    let errors = cache_errors(&app).await;
    assert!(redis.cli(&["CLIENT", "PAUSE", "1500", "ALL"]).is_some());
    app.ingest_ok(&token, json!([event("page_view", 2, 6)]))
        .await;
    assert_eq!(answer(&app, &token, &q).await, (2.0, None));
    assert!(cache_errors(&app).await > errors, "failures are counted");
    tokio::time::sleep(std::time::Duration::from_millis(1_600)).await;
    assert_eq!(answer(&app, &token, &q).await, (2.0, Some(false)));
    assert_eq!(answer(&app, &token, &q).await, (2.0, Some(true)));

    // Stopped: still right, from the database.
    redis.stop();
    app.ingest_ok(&token, json!([event("page_view", 2, 7)]))
        .await;
    assert_eq!(answer(&app, &token, &q).await.0, 3.0);
    // Rate limits went on in-process meanwhile, and said so.
    assert!(app.counter("pulse_rate_limit_errors_total").await > 0.0);
    // Back, empty: caching resumes without a restart.
    redis.restart();
    let mut resumed = false;
    for _ in 0..100 {
        let (total, hit) = answer(&app, &token, &q).await;
        assert_eq!(total, 3.0);
        if hit == Some(true) {
            resumed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(resumed, "the cache serves again once Redis is back");
}

#[tokio::test]
async fn concurrent_requests_for_the_same_missing_buckets_compute_them_once() {
    let app = spawn_app().await;
    let t = app.tenant("cache-flight").await;
    let token = app.token(&t, Role::Editor);
    let events: Vec<Value> = (0..200)
        .map(|i| event("page_view", 1 + i % 3, (i % 24) as u32))
        .collect();
    app.ingest_ok(&token, json!(events)).await;
    let q = three_days(&["page_view"]);
    let (fills, shared) = (
        app.counter("pulse_cache_fills_total").await,
        app.counter("pulse_cache_fills_shared_total").await,
    );
    let answers = futures_util::future::join_all((0..16).map(|_| run(&app, &token, &q))).await;
    for (total, _, _) in &answers {
        assert_eq!(*total, 200.0);
    }
    // Every request either waited for the one computation or, arriving
    // after it, read what it filed: one fill, however they overlapped.
    assert_eq!(app.counter("pulse_cache_fills_total").await - fills, 1.0);
    let followers = app.counter("pulse_cache_fills_shared_total").await - shared;
    let cached = answers.iter().filter(|a| a.1).count() as f64;
    assert_eq!(followers + cached, 15.0, "{answers:?}");
}

#[tokio::test]
async fn a_moving_range_serves_its_cut_buckets_from_the_cache_within_a_second() {
    let app = spawn_app().await;
    let t = app.tenant("cache-last").await;
    let token = app.token(&t, Role::Editor);
    app.ingest_ok(
        &token,
        json!([event("page_view", 1, 3), event("page_view", 0, 0)]),
    )
    .await;
    let q = json!({ "measure": "COUNT", "granularity": "DAY", "eventTypes": ["page_view"],
                    "range": { "last": "3d" } });
    // Two answers in the same second share every bucket, the two cut
    // ones included; a later second recomputes only those.
    let mut same_second = false;
    for _ in 0..20 {
        let first = app.gql_as(&token, QUERY, json!({ "q": q })).await;
        let second = app.gql_as(&token, QUERY, json!({ "q": q })).await;
        assert_eq!(data(&first)["metrics"]["total"], 2.0, "{first}");
        assert_eq!(data(&second)["metrics"]["total"], 2.0, "{second}");
        // Cut buckets are keyed by their exact span: a whole hit means
        // both requests fell in one second.
        if data(&second)["metrics"]["cached"] == true {
            same_second = true;
            break;
        }
    }
    assert!(
        same_second,
        "two requests within one second were both computed"
    );
    // An event acknowledged now is in the very next answer.
    app.ingest_ok(&token, json!([{ "type": "page_view", "userId": "u2" }]))
        .await;
    let after = app.gql_as(&token, QUERY, json!({ "q": q })).await;
    assert_eq!(data(&after)["metrics"]["total"], 3.0, "{after}");
}
