//! The HTTP surface: limits, GET and GraphiQL, readiness, metrics, and
//! errors that never leak internals.

use pulse::auth::Role;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

async fn post_raw(app: &TestApp, token: &str, body: Vec<u8>) -> reqwest::Response {
    app.http
        .post(app.url("/graphql"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send")
}

/// A `{ me { role } }` request padded to exactly `len` bytes.
fn padded_request(len: usize) -> Vec<u8> {
    let empty = json!({ "query": "{ me { role } }", "variables": { "pad": "" } }).to_string();
    let pad = "x".repeat(len - empty.len());
    let body = json!({ "query": "{ me { role } }", "variables": { "pad": pad } }).to_string();
    assert_eq!(body.len(), len);
    body.into_bytes()
}

#[tokio::test]
async fn the_body_limit_admits_exactly_the_limit_and_refuses_past_it() {
    let app = spawn_app_with(|s| {
        s.set("PULSE_BODY_LIMIT", 2048);
    })
    .await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Viewer);

    let at = post_raw(&app, &token, padded_request(2048)).await;
    assert_eq!(at.status(), 200);
    let body: Value = at.json().await.expect("json");
    assert_eq!(data(&body)["me"]["role"], "VIEWER");

    let past = post_raw(&app, &token, padded_request(2049)).await;
    assert_eq!(past.status(), 413);
    let body: Value = past.json().await.expect("json");
    assert_code(&body, "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn a_chunked_body_without_length_is_cut_off_at_the_limit_too() {
    let app = spawn_app_with(|s| {
        s.set("PULSE_BODY_LIMIT", 2048);
    })
    .await;
    let body = padded_request(4096);
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let mut request = format!(
        "POST /graphql HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        app.addr
    )
    .into_bytes();
    for chunk in body.chunks(1000) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("PAYLOAD_TOO_LARGE"), "{text}");
}

/// `{ __type(name: "Query") { ofType { ofType { … name } } } }` with
/// `levels` selection levels in all.
fn nested_query(levels: usize) -> String {
    assert!(levels >= 2);
    let inner = levels - 2;
    format!(
        "{{ __type(name: \"Query\") {{ {} name {} }} }}",
        "ofType { ".repeat(inner),
        "} ".repeat(inner)
    )
}

#[tokio::test]
async fn queries_deeper_than_the_limit_are_refused_with_a_code() {
    let app = spawn_app_with(|s| {
        s.set("PULSE_MAX_DEPTH", 6);
    })
    .await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Viewer);
    let at = app.gql_as(&token, &nested_query(6), json!({})).await;
    data(&at);
    let past = app.gql_as(&token, &nested_query(7), json!({})).await;
    assert_code(&past, "QUERY_TOO_DEEP");
    assert!(past["data"].is_null());
}

/// `n` aliased copies of `{ me { role } }`, 2 complexity points each.
fn wide_query(n: usize) -> String {
    let fields: String = (0..n).map(|i| format!("m{i}: me {{ role }} ")).collect();
    format!("{{ {fields}}}")
}

#[tokio::test]
async fn queries_more_complex_than_the_limit_are_refused_with_a_code() {
    let app = spawn_app_with(|s| {
        s.set("PULSE_MAX_COMPLEXITY", 20);
    })
    .await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Admin);
    data(&app.gql_as(&token, &wide_query(10), json!({})).await);
    assert_code(
        &app.gql_as(&token, &wide_query(11), json!({})).await,
        "QUERY_TOO_COMPLEX",
    );

    // Connections cost `first` times their selection: 1 + first * 4 here.
    let page =
        |first: i32| format!("{{ users(first: {first}) {{ edges {{ node {{ id email }} }} }} }}");
    data(&app.gql_as(&token, &page(4), json!({})).await);
    assert_code(
        &app.gql_as(&token, &page(5), json!({})).await,
        "QUERY_TOO_COMPLEX",
    );
}

#[tokio::test]
async fn the_default_limits_admit_a_dashboard_sized_query() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Admin);
    let query = "{ me { role user { id email role status } tenant { id slug name status plan } }
        users(first: 100) { edges { cursor node { id email role status lastLoginAt createdAt } } pageInfo { hasNextPage endCursor } }
        auditLog(first: 100) { edges { cursor node { id action resourceType resourceId actor before after createdAt } } pageInfo { hasNextPage endCursor } } }";
    data(&app.gql_as(&token, query, json!({})).await);
}

#[tokio::test]
async fn malformed_requests_get_a_coded_400() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Viewer);
    for body in [&b"{ not json"[..], b"[]", b"{\"variables\": {}}"] {
        let resp = post_raw(&app, &token, body.to_vec()).await;
        assert_eq!(resp.status(), 400, "{}", String::from_utf8_lossy(body));
        assert_code(&resp.json().await.expect("json"), "BAD_USER_INPUT");
    }
    // A syntax error in the query itself is a GraphQL error with a code.
    let body = app.gql_as(&token, "{ me { role }", json!({})).await;
    assert_code(&body, "GRAPHQL_PARSE_FAILED");
    let body = app.gql_as(&token, "{ me { nope } }", json!({})).await;
    assert_code(&body, "GRAPHQL_VALIDATION_FAILED");
}

#[tokio::test]
async fn batches_run_up_to_the_cap() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Viewer);
    let op = json!({ "query": "{ me { role } }" });
    let batch = |n: usize| serde_json::to_vec(&vec![op.clone(); n]).expect("json");
    let resp = post_raw(&app, &token, batch(20)).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body.as_array().map(Vec::len), Some(20));
    assert_eq!(body[19]["data"]["me"]["role"], "VIEWER");
    let resp = post_raw(&app, &token, batch(21)).await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn get_serves_graphiql_to_browsers_and_queries_to_clients() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Viewer);

    let page = app
        .http
        .get(app.url("/graphql"))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .expect("send");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(
        html.contains("graphiql") && html.contains("/graphql/ws"),
        "{html}"
    );

    let resp = app
        .http
        .get(app.url("/graphql"))
        .query(&[
            ("query", "query Me { me { role } }"),
            ("operationName", "Me"),
        ])
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(data(&body)["me"]["role"], "VIEWER");

    let resp = app
        .http
        .get(app.url("/graphql"))
        .query(&[(
            "query",
            "mutation { login(tenant: \"a\", email: \"b\", password: \"c\") { token } }",
        )])
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn the_graphql_response_media_type_is_honoured() {
    let app = spawn_app().await;
    let resp = app
        .http
        .post(app.url("/graphql"))
        .header("accept", "application/graphql-response+json")
        .json(&json!({ "query": "{ me { role" }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.headers()["content-type"],
        "application/graphql-response+json"
    );
}

#[tokio::test]
async fn health_is_always_up_and_readiness_follows_the_database() {
    let app = spawn_app().await;
    let health = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("send");
    assert_eq!(health.status(), 200);
    let ready = app.http.get(app.url("/readyz")).send().await.expect("send");
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["ready"], true);
    if redis_url().is_some() {
        assert_eq!(body["redis"], "ok");
    }

    app.state.db.close_by_ref().await.expect("close the pool");
    let ready = app.http.get(app.url("/readyz")).send().await.expect("send");
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["ready"], false);
    assert_ne!(body["database"], "ok");
    let health = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("send");
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn metrics_count_requests_by_operation_outcome_and_error_code() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Viewer);
    data(
        &app.gql_as(&token, "query DashboardMe { me { role } }", json!({}))
            .await,
    );
    assert_code(
        &app.gql_anonymous("query DashboardMe { me { role } }", json!({}))
            .await,
        "UNAUTHENTICATED",
    );
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
        "pulse_graphql_requests_total{operation=\"DashboardMe\",outcome=\"ok\"} 1",
        "pulse_graphql_requests_total{operation=\"unauthenticated\",outcome=\"error\"} 1",
        "pulse_graphql_errors_total{code=\"UNAUTHENTICATED\"} 1",
        "pulse_graphql_request_duration_seconds_count{operation=\"DashboardMe\",outcome=\"ok\"} 1",
        "pulse_db_pool_max_connections 5",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    assert!(
        text.contains("pulse_db_pool_connections{state=\"idle\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn internal_errors_are_opaque_and_carry_the_request_id() {
    let app = spawn_isolated_app().await;
    let acme = app.tenant("acme").await;
    let token = app.token(&acme, Role::Admin);
    use sea_orm::ConnectionTrait;
    app.state
        .db
        .execute_unprepared("DROP TABLE audit_log")
        .await
        .expect("break the database");
    let resp = app
        .http
        .post(app.url("/graphql"))
        .bearer_auth(&token)
        .header("x-request-id", "broken-1")
        .json(&json!({
            "query": "mutation { createUser(input: { email: \"z@example.com\", role: VIEWER }) { id } }"
        }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_code(&body, "INTERNAL_SERVER_ERROR");
    let error = &body["errors"][0];
    assert_eq!(error["extensions"]["requestId"], "broken-1");
    let text = body.to_string().to_lowercase();
    for leak in [
        "audit_log",
        "insert",
        "sqlite",
        "postgres",
        "relation",
        "table",
    ] {
        assert!(!text.contains(leak), "`{leak}` leaked: {body}");
    }
    // The user was not created without its audit entry.
    let users = app
        .gql_as(&token, "{ users { edges { node { email } } } }", json!({}))
        .await;
    let emails = data(&users)["users"]["edges"].to_string();
    assert!(!emails.contains("z@example.com"), "{emails}");
}

#[tokio::test]
async fn unknown_routes_are_a_json_404_and_request_ids_are_echoed() {
    let app = spawn_app().await;
    let resp = app.http.get(app.url("/nope")).send().await.expect("send");
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().contains_key("x-request-id"));
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "NOT_FOUND");
}

#[tokio::test]
async fn shutdown_lets_the_server_stop_cleanly() {
    let app = spawn_app().await;
    let url = app.url("/healthz");
    let client = app.http.clone();
    assert_eq!(client.get(&url).send().await.expect("send").status(), 200);
    tokio::time::timeout(std::time::Duration::from_secs(10), app.shutdown())
        .await
        .expect("stopped within 10 s")
        .expect("clean stop");
    assert!(client.get(&url).send().await.is_err(), "still serving");
}
