//! Event ingestion: counts and idempotency, validation (all or nothing),
//! formats, isolation, reading, the bus, retention, back-pressure and
//! durability across a SIGKILL.

use std::io::Write;
use std::time::Duration;

use chrono::{Duration as Days, Utc};
use futures_util::StreamExt;
use pulse::auth::Role;
use pulse::realtime::{EventsCommitted, Topic};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::*;

impl TestApp {
    /// POSTs `body` to /v1/events with a content type and optional gzip.
    pub async fn post_events_raw(
        &self,
        token: &str,
        content_type: &str,
        gzip: bool,
        body: Vec<u8>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self
            .http
            .post(self.url("/v1/events"))
            .bearer_auth(token)
            .header("content-type", content_type);
        let body = if gzip {
            req = req.header("content-encoding", "gzip");
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(&body).expect("gzip");
            enc.finish().expect("gzip")
        } else {
            body
        };
        let resp = req.body(body).send().await.expect("send");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json, headers)
    }

    pub async fn post_events(&self, token: &str, events: Value) -> (u16, Value) {
        let (status, body, _) = self
            .post_events_raw(
                token,
                "application/json",
                false,
                events.to_string().into_bytes(),
            )
            .await;
        (status, body)
    }

    /// Every event visible to `token`, newest first, paging through.
    pub async fn all_events(&self, token: &str, filter: Value) -> Vec<Value> {
        let query = "query($f: EventFilterInput, $after: String) {
            events(filter: $f, first: 100, after: $after) {
              edges { node { id type timestamp userId sessionId properties source ip userAgent } }
              pageInfo { hasNextPage endCursor } } }";
        let mut out = Vec::new();
        let mut after = Value::Null;
        loop {
            let body = self
                .gql_as(token, query, json!({ "f": filter, "after": after }))
                .await;
            let page = &data(&body)["events"];
            out.extend(
                page["edges"]
                    .as_array()
                    .expect("edges")
                    .iter()
                    .map(|e| e["node"].clone()),
            );
            if page["pageInfo"]["hasNextPage"] != true {
                return out;
            }
            after = page["pageInfo"]["endCursor"].clone();
        }
    }
}

fn ids(events: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = events
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    v.sort();
    v
}

fn ago(days: i64) -> String {
    (Utc::now() - Days::days(days)).to_rfc3339()
}

#[tokio::test]
async fn accepted_and_duplicates_are_counted_within_and_across_batches() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Editor);
    let (a, b) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
    let batch = json!([
        { "id": a, "type": "signup" },
        { "id": a, "type": "signup" },
        { "id": b, "type": "purchase", "properties": { "amount": 12.5 } },
        { "type": "page_view" },
    ]);
    let (status, body) = app.post_events(&token, batch.clone()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({ "accepted": 3, "duplicates": 1 }));
    // Again: the ids are known; the id-less event is new each time.
    let (status, body) = app.post_events(&token, batch).await;
    assert_eq!(status, 202);
    assert_eq!(body, json!({ "accepted": 1, "duplicates": 3 }));
    // The same id at another time (another month, another partition).
    let (_, body) = app
        .post_events(
            &token,
            json!([{ "id": a, "type": "signup", "timestamp": ago(40) }]),
        )
        .await;
    assert_eq!(body, json!({ "accepted": 0, "duplicates": 1 }));
    assert_eq!(app.all_events(&token, json!(null)).await.len(), 4);
}

#[tokio::test]
async fn concurrent_requests_with_overlapping_ids_store_each_id_once() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Editor);
    let shared: Vec<String> = (0..50).map(|_| Uuid::now_v7().to_string()).collect();
    let requests = (0..8).map(|i| {
        let events: Vec<Value> = shared
            .iter()
            .map(|id| json!({ "id": id, "type": "shared" }))
            .chain((0..10).map(|j| json!({ "id": Uuid::now_v7().to_string(), "type": format!("own{i}"), "properties": { "j": j } })))
            .collect();
        let (app, token) = (&app, &token);
        async move { app.post_events(token, Value::Array(events)).await }
    });
    let results = futures_util::future::join_all(requests).await;
    let (mut accepted, mut duplicates) = (0, 0);
    for (status, body) in results {
        assert_eq!(status, 202, "{body}");
        accepted += body["accepted"].as_u64().expect("accepted");
        duplicates += body["duplicates"].as_u64().expect("duplicates");
    }
    assert_eq!(accepted, 50 + 8 * 10);
    assert_eq!(duplicates, 7 * 50);
    assert_eq!(app.all_events(&token, json!(null)).await.len(), 130);
}

#[tokio::test]
async fn one_invalid_event_rejects_the_whole_batch_with_its_problems() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Editor);
    let batch = json!([
        { "type": "fine" },
        { "type": "bad type!" },
        { "type": "fine", "timestamp": (Utc::now() + Days::hours(25)).to_rfc3339() },
        { "type": "fine", "properties": [1, 2] },
    ]);
    let (status, body) = app.post_events(&token, batch).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "BAD_USER_INPUT");
    let problems: Vec<(u64, &str)> = body["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| {
            (
                p["index"].as_u64().expect("index"),
                p["field"].as_str().expect("field"),
            )
        })
        .collect();
    assert_eq!(problems, [(1, "type"), (2, "timestamp"), (3, "properties")]);
    assert!(
        app.all_events(&token, json!(null)).await.is_empty(),
        "nothing stored"
    );

    // The same through GraphQL.
    let gql = app
        .gql_as(
            &token,
            "mutation($e: [EventInput!]!) { ingestEvents(events: $e) { accepted } }",
            json!({ "e": [{ "type": "ok" }, { "type": "" }] }),
        )
        .await;
    assert_code(&gql, "BAD_USER_INPUT");
    assert_eq!(gql["errors"][0]["extensions"]["problems"][0]["index"], 1);
    assert!(app.all_events(&token, json!(null)).await.is_empty());
}

#[tokio::test]
async fn validation_limits_hold_at_and_past_each_limit() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Editor);
    let nested = |levels: usize| (1..levels).fold(json!({}), |inner, _| json!({ "a": inner }));
    let big = |bytes: usize| json!({ "k": "x".repeat(bytes - 8) });
    let cases = [
        (
            json!({ "type": "t".repeat(100) }),
            json!({ "type": "t".repeat(101) }),
        ),
        (
            json!({ "type": "t", "properties": nested(8) }),
            json!({ "type": "t", "properties": nested(9) }),
        ),
        (
            json!({ "type": "t", "properties": big(32 * 1024) }),
            json!({ "type": "t", "properties": big(32 * 1024 + 1) }),
        ),
        (
            json!({ "type": "t", "timestamp": (Utc::now() + Days::hours(23)).to_rfc3339() }),
            json!({ "type": "t", "timestamp": (Utc::now() + Days::hours(25)).to_rfc3339() }),
        ),
        (
            json!({ "type": "t", "timestamp": ago(399) }),
            json!({ "type": "t", "timestamp": ago(401) }),
        ),
        (
            json!({ "type": "t", "userId": "u".repeat(256) }),
            json!({ "type": "t", "userId": "u".repeat(257) }),
        ),
    ];
    for (at, past) in cases {
        let (status, body) = app.post_events(&token, json!([at])).await;
        assert_eq!(status, 202, "at the limit: {body}");
        let (status, body) = app.post_events(&token, json!([past])).await;
        assert_eq!(status, 400, "past the limit: {body}");
    }
}

#[tokio::test]
async fn batch_count_and_size_limits_hold_at_and_past() {
    let app = spawn_app_with(|s| {
        s.set("PULSE_INGEST_MAX_EVENTS", 50)
            .set("PULSE_INGEST_MAX_BYTES", 4096);
    })
    .await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Editor);
    let events = |n: usize| Value::Array((0..n).map(|_| json!({ "type": "t" })).collect());
    assert_eq!(app.post_events(&token, events(50)).await.0, 202);
    let (status, body) = app.post_events(&token, events(51)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("BAD_USER_INPUT"))
    );

    // Exactly 4096 bytes, then one more.
    let sized = |len: usize| {
        let empty = json!([{ "type": "t", "properties": { "p": "" } }]).to_string();
        json!([{ "type": "t", "properties": { "p": "x".repeat(len - empty.len()) } }]).to_string()
    };
    let (status, _, _) = app
        .post_events_raw(&token, "application/json", false, sized(4096).into_bytes())
        .await;
    assert_eq!(status, 202);
    let (status, body, _) = app
        .post_events_raw(&token, "application/json", false, sized(4097).into_bytes())
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("PAYLOAD_TOO_LARGE"))
    );
    // A gzip bomb: 2 MB of zeros that compresses to well under the limit.
    let bomb = format!(
        "[{{\"type\":\"t\",\"properties\":{{\"p\":\"{}\"}}}}]",
        "0".repeat(2 << 20)
    );
    let (status, body, _) = app
        .post_events_raw(&token, "application/json", true, bomb.into_bytes())
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("PAYLOAD_TOO_LARGE"))
    );
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("decompressed"),
        "{body}"
    );
}

#[tokio::test]
async fn ndjson_and_gzip_are_accepted_and_errors_name_the_line() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Editor);
    let ndjson = "{\"type\":\"a\"}\n\n{\"type\":\"b\",\"userId\":\"u1\"}\r\n{\"type\":\"c\"}\n";
    let (status, body, _) = app
        .post_events_raw(&token, "application/x-ndjson", false, ndjson.into())
        .await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (202, Some(3)),
        "{body}"
    );
    let (status, body, _) = app
        .post_events_raw(
            &token,
            "application/x-ndjson; charset=utf-8",
            true,
            ndjson.into(),
        )
        .await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (202, Some(3)),
        "{body}"
    );
    let json_gz = json!([{ "type": "gz" }]).to_string();
    let (status, _, _) = app
        .post_events_raw(&token, "application/json", true, json_gz.into_bytes())
        .await;
    assert_eq!(status, 202);

    // A bad event on line 4 (blank lines count).
    let bad = "{\"type\":\"a\"}\n\n{\"type\":\"b\"}\n{\"type\":\"no spaces\"}\n";
    let (status, body, _) = app
        .post_events_raw(&token, "application/x-ndjson", false, bad.into())
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["problems"][0]["line"], 4, "{body}");
    assert_eq!(body["problems"][0]["index"], 2, "{body}");
    // Malformed JSON on line 2.
    let (status, body, _) = app
        .post_events_raw(
            &token,
            "application/x-ndjson",
            false,
            "{\"type\":\"a\"}\n{oops\n".into(),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().expect("error").contains("line 2"),
        "{body}"
    );
    assert_eq!(app.all_events(&token, json!(null)).await.len(), 7);
}

#[tokio::test]
async fn malformed_bodies_get_a_clear_4xx() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Editor);
    let cases: [(&str, bool, &[u8], u16); 5] = [
        ("application/json", false, b"[{\"type\": ", 400),
        ("application/json", false, b"{\"type\": \"x\"}", 400),
        ("text/plain", false, b"[]", 415),
        ("application/json", true, b"[]", 202),
        ("application/x-ndjson", false, b"\xff\xfe", 400),
    ];
    for (content_type, gzip, body, expected) in cases {
        let (status, resp, _) = app
            .post_events_raw(&token, content_type, gzip, body.to_vec())
            .await;
        assert_eq!(status, expected, "{content_type} {body:?}: {resp}");
    }
    // Not gzip at all, though it says so.
    let resp = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body("[]")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn only_editors_and_up_ingest_and_tokens_decide_the_tenant() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let globex = app.tenant("globex").await;
    let one = json!([{ "type": "t" }]);
    let (status, body) = app
        .post_events(&app.token(&acme, Role::Viewer), one.clone())
        .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("FORBIDDEN")));
    let resp = app
        .http
        .post(app.url("/v1/events"))
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    let frozen = app
        .tenant_with("frozen", pulse::entities::tenant::TenantStatus::Suspended)
        .await;
    let (status, body) = app
        .post_events(&app.token(&frozen, Role::Admin), one.clone())
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("TENANT_SUSPENDED"))
    );

    // Acme's events are acme's alone, even with the same ids as globex's.
    let id = Uuid::now_v7().to_string();
    let ev = json!([{ "id": id, "type": "secret", "properties": { "owner": "acme" } }]);
    assert_eq!(
        app.post_events(&app.token(&acme, Role::Editor), ev).await.1["accepted"],
        1
    );
    let ev = json!([{ "id": id, "type": "secret", "properties": { "owner": "globex" } }]);
    assert_eq!(
        app.post_events(&app.token(&globex, Role::Editor), ev)
            .await
            .1["accepted"],
        1
    );
    let acme_sees = app
        .all_events(&app.token(&acme, Role::Viewer), json!(null))
        .await;
    let globex_sees = app
        .all_events(&app.token(&globex, Role::Viewer), json!(null))
        .await;
    assert_eq!(acme_sees.len(), 1);
    assert_eq!(acme_sees[0]["properties"]["owner"], "acme");
    assert_eq!(globex_sees.len(), 1);
    assert_eq!(globex_sees[0]["properties"]["owner"], "globex");
    let cross = app
        .all_events(
            &app.token(&globex, Role::Viewer),
            json!({ "properties": { "owner": "acme" } }),
        )
        .await;
    assert!(cross.is_empty());
}

#[tokio::test]
async fn events_filter_and_page_stably_while_new_events_arrive() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Editor);
    let batch: Vec<Value> = (0..30)
        .map(|i| {
            json!({
                "type": if i % 3 == 0 { "purchase" } else { "page_view" },
                "timestamp": (Utc::now() - Days::minutes(i)).to_rfc3339(),
                "userId": format!("u{}", i % 5),
                "sessionId": format!("s{}", i % 2),
                "properties": { "plan": if i % 2 == 0 { "pro" } else { "free" }, "n": i, "vip": i == 7 },
            })
        })
        .collect();
    assert_eq!(app.post_events(&token, Value::Array(batch)).await.0, 202);

    let count = |f: Value| {
        let (app, token) = (&app, &token);
        async move { app.all_events(token, f).await.len() }
    };
    assert_eq!(count(json!({ "types": ["purchase"] })).await, 10);
    assert_eq!(count(json!({ "userId": "u1" })).await, 6);
    assert_eq!(count(json!({ "sessionId": "s0" })).await, 15);
    assert_eq!(count(json!({ "properties": { "plan": "pro" } })).await, 15);
    assert_eq!(
        count(json!({ "properties": { "plan": "pro", "n": 4 } })).await,
        1
    );
    assert_eq!(
        count(json!({ "properties": { "n": "4" } })).await,
        0,
        "types must match"
    );
    assert_eq!(count(json!({ "properties": { "vip": true } })).await, 1);
    let from = (Utc::now() - Days::minutes(10) - Days::seconds(30)).to_rfc3339();
    let to = (Utc::now() - Days::minutes(4) - Days::seconds(30)).to_rfc3339();
    assert_eq!(count(json!({ "from": from, "to": to })).await, 6);
    let bad = app
        .gql_as(
            &token,
            "{ events(filter: { properties: { a: [1] } }) { edges { cursor } } }",
            json!({}),
        )
        .await;
    assert_code(&bad, "BAD_USER_INPUT");

    // Page 1, then new events arrive, then page 2: no gaps, no repeats.
    let page = "query($after: String) { events(first: 10, after: $after) { edges { node { id timestamp } } pageInfo { endCursor hasNextPage } } }";
    let first = app.gql_as(&token, page, json!({})).await;
    let first_ids: Vec<Value> = data(&first)["events"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"]["id"].clone())
        .collect();
    let cursor = data(&first)["events"]["pageInfo"]["endCursor"].clone();
    assert_eq!(
        app.post_events(&token, json!([{ "type": "late_arrival" }]))
            .await
            .0,
        202
    );
    let mut rest = Vec::new();
    let mut after = cursor;
    loop {
        let body = app.gql_as(&token, page, json!({ "after": after })).await;
        let events = &data(&body)["events"];
        rest.extend(
            events["edges"]
                .as_array()
                .expect("edges")
                .iter()
                .map(|e| e["node"]["id"].clone()),
        );
        if events["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = events["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(first_ids.len() + rest.len(), 30);
    assert!(first_ids.iter().all(|id| !rest.contains(id)));
}

#[tokio::test]
async fn the_bus_hears_of_events_only_after_they_are_committed() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let globex = app.tenant("globex").await;
    let token = app.token(&acme, Role::Editor);
    let mut acme_bus = app
        .state
        .bus
        .subscribe_to::<EventsCommitted>(acme.id, Topic::Events);
    let mut globex_bus = app
        .state
        .bus
        .subscribe_to::<EventsCommitted>(globex.id, Topic::Events);

    let t1 = Utc::now() - Days::hours(2);
    let t2 = Utc::now() - Days::hours(1);
    let batch = json!([
        { "type": "signup", "timestamp": t1.to_rfc3339() },
        { "type": "purchase", "timestamp": t2.to_rfc3339() },
    ]);
    let poster = {
        let (app, token) = (&app, &token);
        async move { app.post_events(token, batch).await }
    };
    let listener = async {
        let msg = tokio::time::timeout(Duration::from_secs(10), acme_bus.next())
            .await
            .expect("a message within 10 s")
            .expect("message");
        // At the moment the message arrives, the events are readable.
        let visible = app
            .all_events(&app.token(&acme, Role::Viewer), json!(null))
            .await
            .len();
        (msg, visible)
    };
    let ((status, _), (msg, visible)) = tokio::join!(poster, listener);
    assert_eq!(status, 202);
    assert_eq!(visible, 2, "the message came before the commit");
    assert_eq!(msg.tenant_id, acme.id);
    assert_eq!(msg.types, ["purchase", "signup"]);
    assert_eq!(msg.count, 2);
    assert_eq!(msg.from.timestamp_micros(), t1.timestamp_micros());
    assert_eq!(msg.to.timestamp_micros(), t2.timestamp_micros());
    // Globex heard nothing.
    let quiet = tokio::time::timeout(Duration::from_millis(300), globex_bus.next()).await;
    assert!(quiet.is_err(), "globex heard acme's events");
}

#[tokio::test]
async fn data_expiry_removes_exactly_the_events_past_each_tenants_cutoff_and_their_rollups() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let globex = app.tenant("globex").await;
    let ages = [1, 29, 31, 100, 390];
    for t in [&acme, &globex] {
        let batch: Vec<Value> = ages
            .iter()
            .map(|d| {
                json!({ "type": "t", "timestamp": ago(*d), "userId": format!("u{d}"),
                "properties": { "age": d } })
            })
            .collect();
        assert_eq!(
            app.post_events(&app.token(t, Role::Editor), Value::Array(batch))
                .await
                .0,
            202
        );
    }
    let admin = app.token(&acme, Role::Admin);
    let body = app
        .gql_as(
            &admin,
            "mutation { updateTenantSettings(input: { retentionDays: 30 }) { settings } }",
            json!({}),
        )
        .await;
    assert_eq!(
        data(&body)["updateTenantSettings"]["settings"]["retention_days"],
        30
    );
    // Every server in a shared test database runs this job when it starts,
    // so another test's server may get there first: what counts is what
    // is left, not who deleted it.
    pulse::domain::events::expiry::run_once(&app.state.event_store, &app.state.cache, Utc::now())
        .await
        .expect("retention");

    let left = |t: &TestTenant| {
        let (app, token) = (&app, app.token(t, Role::Viewer));
        async move {
            let mut ages: Vec<i64> = app
                .all_events(&token, json!(null))
                .await
                .iter()
                .filter_map(|e| e["properties"]["age"].as_i64())
                .collect();
            ages.sort_unstable();
            ages
        }
    };
    assert_eq!(left(&acme).await, [1, 29]);
    assert_eq!(
        left(&globex).await,
        [1, 29, 31, 100, 390],
        "another tenant's retention applied"
    );
    // The actor bitmaps of what went went with it: distinct users come
    // from them and count only who is left.
    let users = |t: &TestTenant| {
        let (app, token) = (&app, app.token(t, Role::Viewer));
        async move {
            let body = app
                .gql_as(
                    &token,
                    "query($q: MetricQueryInput!) { metrics(query: $q) { total } }",
                    json!({ "q": { "measure": "COUNT_DISTINCT", "field": "userId",
                                   "granularity": "DAY", "range": { "last": "400d" } } }),
                )
                .await;
            // Whole hours from the bitmaps; the range ends inside one.
            assert_eq!(
                body["extensions"]["queries"][0]["source"], "bitmap+raw",
                "{body}"
            );
            data(&body)["metrics"]["total"].as_f64()
        }
    };
    assert_eq!(users(&acme).await, Some(2.0));
    assert_eq!(users(&globex).await, Some(5.0));
    // And an event older than the new retention is now refused.
    let (status, _) = app
        .post_events(
            &app.token(&acme, Role::Editor),
            json!([{ "type": "t", "timestamp": ago(31) }]),
        )
        .await;
    assert_eq!(status, 400);
    // Settings are validated, and only admins change them.
    let bad = app
        .gql_as(
            &admin,
            "mutation { updateTenantSettings(input: { retentionDays: 0 }) { id } }",
            json!({}),
        )
        .await;
    assert_code(&bad, "BAD_USER_INPUT");
    let editor = app
        .gql_as(
            &app.token(&acme, Role::Editor),
            "mutation { updateTenantSettings(input: { retentionDays: 90 }) { id } }",
            json!({}),
        )
        .await;
    assert_code(&editor, "FORBIDDEN");
}

#[tokio::test]
async fn client_ips_follow_trusted_proxies_and_tenant_privacy() {
    let app = spawn_app_with(|s| {
        s.set("PULSE_TRUSTED_PROXIES", "127.0.0.1/32");
    })
    .await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Admin);
    let send = |xff: &'static str, ty: &'static str| {
        let (app, token) = (&app, &token);
        async move {
            app.http
                .post(app.url("/v1/events"))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .header("x-forwarded-for", xff)
                .header("user-agent", "probe/2")
                .body(json!([{ "type": ty }]).to_string())
                .send()
                .await
                .expect("send")
                .status()
        }
    };
    assert_eq!(send("198.51.100.23, 127.0.0.1", "plain").await, 202);
    data(
        &app.gql_as(
            &token,
            "mutation { updateTenantSettings(input: { truncateIp: true }) { id } }",
            json!({}),
        )
        .await,
    );
    assert_eq!(send("198.51.100.23", "private").await, 202);
    let plain = app.all_events(&token, json!({ "types": ["plain"] })).await;
    assert_eq!(plain[0]["ip"], "198.51.100.23");
    assert_eq!(plain[0]["userAgent"], "probe/2");
    let private = app
        .all_events(&token, json!({ "types": ["private"] }))
        .await;
    assert_eq!(private[0]["ip"], "198.51.100.0");

    // Without trust, the header is ignored.
    let untrusting = spawn_app().await;
    let globex = untrusting.tenant("globex").await;
    let t = untrusting.token(&globex, Role::Editor);
    let resp = untrusting
        .http
        .post(untrusting.url("/v1/events"))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .header("x-forwarded-for", "198.51.100.23")
        .body("[{\"type\":\"x\"}]")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 202);
    assert_eq!(
        untrusting.all_events(&t, json!(null)).await[0]["ip"],
        "127.0.0.1"
    );
}

#[tokio::test]
async fn a_saturated_writer_answers_503_with_retry_after_and_loses_nothing() {
    let app = spawn_app_with(|s| {
        s.set("PULSE_INGEST_QUEUE_EVENTS", 10)
            .set("PULSE_INGEST_QUEUE_WAIT_MS", 200)
            .set("PULSE_INGEST_WRITERS", 1);
    })
    .await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Editor);
    // Hold the write lock on one connection so the writer's commit waits.
    use sea_orm::ConnectionTrait;
    let mut options = sea_orm::ConnectOptions::new(app.state.config.database.url.clone());
    options.max_connections(1).min_connections(1);
    let blocker = sea_orm::Database::connect(options).await.expect("connect");
    let lock = if is_postgres() {
        "BEGIN; LOCK TABLE event_ids IN EXCLUSIVE MODE;"
    } else {
        "BEGIN IMMEDIATE"
    };
    blocker.execute_unprepared(lock).await.expect("lock");
    let first: Vec<Value> = (0..10).map(|_| json!({ "type": "held" })).collect();
    let held = {
        let (app, token) = (&app, &token);
        async move { app.post_events(token, Value::Array(first)).await }
    };
    let refused = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, body, headers) = app
            .post_events_raw(
                &token,
                "application/json",
                false,
                b"[{\"type\":\"late\"}]".to_vec(),
            )
            .await;
        // Let the first one through.
        blocker.execute_unprepared("COMMIT").await.expect("release");
        (status, body, headers)
    };
    let ((held_status, held_body), (status, body, headers)) = tokio::join!(held, refused);
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("UNAVAILABLE")),
        "{body}"
    );
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(held_status, 202, "{held_body}");
    assert_eq!(held_body["accepted"], 10);
    assert_eq!(app.all_events(&token, json!(null)).await.len(), 10);
}

#[tokio::test]
async fn metrics_count_accepted_duplicate_and_rejected_events() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Editor);
    let id = Uuid::now_v7().to_string();
    app.post_events(
        &token,
        json!([{ "id": id, "type": "a" }, { "id": id, "type": "a" }]),
    )
    .await;
    app.post_events(
        &token,
        json!([{ "type": "ok" }, { "type": "" }, { "type": "" }]),
    )
    .await;
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    for line in [
        "pulse_events_accepted_total 1",
        "pulse_events_duplicate_total 1",
        "pulse_events_rejected_total 3",
        "pulse_ingest_commit_seconds_count 1",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
}

#[tokio::test]
async fn acknowledged_events_survive_a_sigkill() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Editor);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pulse"));
    cmd.current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PULSE_DATABASE_URL", &app.state.config.database.url)
        .env("PULSE_JWT_SECRET", TEST_SECRET)
        .env("PULSE_LISTEN", "127.0.0.1:0")
        .env("PULSE_LOG_FORMAT", "json")
        .env("PULSE_DEMO", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    // Keep draining the log so the server never blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server logs its address");
        let entry: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if let Some(a) = entry["addr"].as_str() {
            break a.to_owned();
        }
    };
    let client = reqwest::Client::new();
    let mut acknowledged = Vec::new();
    for round in 0..5 {
        let batch: Vec<Value> = (0..200)
            .map(|i| json!({ "id": Uuid::now_v7().to_string(), "type": "durable", "properties": { "round": round, "i": i } }))
            .collect();
        let resp = client
            .post(format!("http://{addr}/v1/events"))
            .bearer_auth(&token)
            .json(&batch)
            .send()
            .await
            .unwrap_or_else(|e| panic!("send: {e}; log: {:?}", rx.try_iter().collect::<Vec<_>>()));
        assert_eq!(resp.status(), 202);
        acknowledged.extend(
            batch
                .iter()
                .map(|e| e["id"].as_str().expect("id").to_owned()),
        );
    }
    // Right after the last 202: no shutdown, no flush.
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let stored = ids(&app
        .all_events(&token, json!({ "types": ["durable"] }))
        .await);
    acknowledged.sort();
    assert_eq!(stored, acknowledged);
}

#[tokio::test]
async fn demo_seeding_goes_through_the_writer_and_is_idempotent() {
    let app = spawn_isolated_app().await;
    let db = &app.state.db;
    pulse::domain::demo::seed(db).await.expect("accounts");
    let writer = &app.state.writer;
    let first = pulse::domain::demo::seed_n_events(db, writer, 2_000)
        .await
        .expect("events");
    assert_eq!(first, 4_000);
    let again = pulse::domain::demo::seed_n_events(db, writer, 2_000)
        .await
        .expect("events");
    assert_eq!(again, 0);
    let report = pulse::domain::demo::seed(db).await.expect("accounts again");
    assert_eq!((report.tenants_created, report.users_created), (0, 0));
    let token = app
        .state
        .keys
        .mint(
            "viewer@acme.example",
            "acme",
            Role::Viewer,
            Duration::from_secs(60),
        )
        .expect("mint");
    let purchases = app
        .all_events(&token, json!({ "types": ["purchase"] }))
        .await;
    assert!(!purchases.is_empty());
    assert!(
        purchases
            .iter()
            .all(|e| e["properties"]["amount"].is_number() && e["source"] == "demo")
    );
}

#[tokio::test]
async fn a_property_key_with_a_quote_is_refused_alike_on_both_backends() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Editor);
    let stored = json!([{ "type": "t", "properties": { "a\"b": 1, "plain": 1 } }]);
    assert_eq!(app.post_events(&token, stored).await.0, 202);

    // SQLite's JSON paths cannot name such a key (it used to match nothing
    // there while PostgreSQL matched it): both backends refuse it.
    let query = "query($f: EventFilterInput) { events(filter: $f) { edges { cursor } } }";
    for key in ["a\"b", "a\\b", "a\u{1}b"] {
        let body = app
            .gql_as(&token, query, json!({ "f": { "properties": { key: 1 } } }))
            .await;
        assert_code(&body, "BAD_USER_INPUT");
        assert_eq!(
            body["errors"][0]["extensions"]["field"], "filter.properties",
            "{body}"
        );
    }
    let body = app
        .gql_as(
            &token,
            query,
            json!({ "f": { "properties": { "plain": 1 } } }),
        )
        .await;
    assert_eq!(
        data(&body)["events"]["edges"].as_array().map(Vec::len),
        Some(1)
    );
}
