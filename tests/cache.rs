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

async fn ingest(app: &TestApp, token: &str, events: Value) {
    let resp = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(token)
        .json(&events)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 202);
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
    ingest(
        &app,
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
    ingest(&app, &token, json!([event("page_view", 2, 9)])).await;
    let (total, cached, recomputed) = run(&app, &token, &q).await;
    assert_eq!((total, cached), (3.0, false));
    assert_eq!(recomputed, vec![day(2)]);

    // Another type on another day leaves a query of page views cached;
    // a query of every type sees that day recomputed.
    ingest(&app, &token, json!([event("signup", 1, 3)])).await;
    let (total, cached, _) = run(&app, &token, &q).await;
    assert_eq!((total, cached), (3.0, true));
    let all = three_days(&[]);
    let (total, _, _) = run(&app, &token, &all).await;
    assert_eq!(total, 5.0);
    ingest(&app, &token, json!([event("purchase", 1, 4)])).await;
    let (total, cached, recomputed) = run(&app, &token, &all).await;
    assert_eq!((total, cached), (6.0, false));
    assert_eq!(recomputed, vec![day(1)]);

    // The open bucket (today, up to now) is never filed, so a relative
    // range always recomputes its ends and includes the newest event.
    ingest(
        &app,
        &token,
        json!([{ "type": "page_view", "userId": "u2" }]),
    )
    .await;
    let last = json!({ "measure": "COUNT", "granularity": "DAY", "eventTypes": ["page_view"],
                       "range": { "last": "2d" } });
    let (first, _, _) = run(&app, &token, &last).await;
    ingest(
        &app,
        &token,
        json!([{ "type": "page_view", "userId": "u3" }]),
    )
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
    ingest(
        &app,
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
    ingest(&app, &tb, json!([event("page_view", 2, 3)])).await;
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
    ingest(&one, &token, json!([event("page_view", 2, 1)])).await;
    let q = three_days(&["page_view"]);
    assert_eq!(run(&two, &token, &q).await.0, 1.0);
    let (total, cached, _) = run(&two, &token, &q).await;
    assert_eq!((total, cached), (1.0, true));
    ingest(&one, &token, json!([event("page_view", 2, 4)])).await;
    let (total, cached, recomputed) = run(&two, &token, &q).await;
    assert_eq!((total, cached), (2.0, false));
    assert_eq!(recomputed, vec![day(2)]);
}
