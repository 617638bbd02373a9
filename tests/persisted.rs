//! Persisted queries: Apollo's APQ protocol over POST and GET (not found,
//! hash mismatch, bad versions, per-tenant stores), and the per-tenant
//! operation allow-list (registered operations, who is exempt, deletion).

use pulse::auth::Role;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::*;

const ME: &str = "query Me { me { role tenant { slug } } }";

fn sha(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn apq(hash: &str) -> Value {
    json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } })
}

/// POSTs `body` as it is; the status and the JSON answer.
async fn post(app: &TestApp, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = app.http.post(app.url("/graphql")).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

/// A GET with `pairs` in the query string: status, headers, JSON answer.
async fn get(app: &TestApp, token: &str, pairs: &[(&str, String)]) -> (u16, HeaderMap, Value) {
    let resp = app
        .http
        .get(app.url("/graphql"))
        .query(pairs)
        .bearer_auth(token)
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.expect("JSON body"))
}

/// `pulse_persisted_queries_total{outcome="…"}` on `/metrics`.
async fn outcome(app: &TestApp, outcome: &str) -> f64 {
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let series = format!("pulse_persisted_queries_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or(0.0)
}

#[track_caller]
fn assert_not_found(status: u16, body: &Value) {
    assert_eq!(status, 200, "{body}");
    assert_code(body, "PERSISTED_QUERY_NOT_FOUND");
    // What Apollo clients look for before they resend the document.
    assert_eq!(body["errors"][0]["message"], "PersistedQueryNotFound");
    assert!(body["data"].is_null(), "nothing ran: {body}");
}

#[tokio::test]
async fn a_hash_alone_is_not_found_until_sent_with_its_document_then_runs_alone() {
    let app = spawn_app().await;
    let t = app.tenant("apq").await;
    let viewer = app.token(&t, Role::Viewer);
    let hash = sha(ME);

    let (status, body) = post(&app, Some(&viewer), json!({ "extensions": apq(&hash) })).await;
    assert_not_found(status, &body);
    // The protocol's first step is no failure, whatever the media type.
    let resp = app
        .http
        .post(app.url("/graphql"))
        .header("accept", "application/graphql-response+json")
        .bearer_auth(&viewer)
        .json(&json!({ "extensions": apq(&hash) }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);

    let (status, body) = post(
        &app,
        Some(&viewer),
        json!({ "query": ME, "extensions": apq(&hash) }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(data(&body)["me"]["role"], "VIEWER");

    // From now on the hash is enough, for any member of the tenant.
    for role in [Role::Viewer, Role::Editor] {
        let token = app.token(&t, role);
        let (status, body) = post(&app, Some(&token), json!({ "extensions": apq(&hash) })).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(data(&body)["me"]["role"], role.as_str());
        assert_eq!(data(&body)["me"]["tenant"]["slug"], t.slug.as_str());
    }
    assert_eq!(outcome(&app, "registered").await, 1.0);
    assert_eq!(outcome(&app, "hit").await, 2.0);
    assert_eq!(outcome(&app, "miss").await, 2.0);
}

#[tokio::test]
async fn get_requests_run_by_hash_and_still_refuse_mutations() {
    let app = spawn_app().await;
    let t = app.tenant("apq-get").await;
    let viewer = app.token(&t, Role::Viewer);
    let hash = sha(ME);
    let extensions = apq(&hash).to_string();

    let (status, _, body) = get(&app, &viewer, &[("extensions", extensions.clone())]).await;
    assert_not_found(status, &body);
    let (status, headers, body) = get(
        &app,
        &viewer,
        &[
            ("query", ME.to_owned()),
            ("operationName", "Me".to_owned()),
            ("extensions", extensions.clone()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(data(&body)["me"]["role"], "VIEWER");
    // Answers are the caller's own: no cache may keep them.
    assert_eq!(headers["cache-control"], "private, no-store");
    let (status, _, body) = get(&app, &viewer, &[("extensions", extensions)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(data(&body)["me"]["role"], "VIEWER");

    // A mutation stored over POST is still refused over GET by hash: the
    // check reads the resolved document.
    let editor = app.token(&t, Role::Editor);
    let mutation = r#"mutation { ingestEvents(events: [{type: "apq"}]) { accepted } }"#;
    let mhash = sha(mutation);
    let (_, body) = post(
        &app,
        Some(&editor),
        json!({ "query": mutation, "extensions": apq(&mhash) }),
    )
    .await;
    assert_eq!(data(&body)["ingestEvents"]["accepted"], 1);
    let (status, headers, body) =
        get(&app, &editor, &[("extensions", apq(&mhash).to_string())]).await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(headers["allow"], "POST");
    // By hash over POST it runs.
    let (_, body) = post(&app, Some(&editor), json!({ "extensions": apq(&mhash) })).await;
    assert_eq!(data(&body)["ingestEvents"]["accepted"], 1);
}

#[tokio::test]
async fn a_document_that_does_not_match_its_hash_is_refused_and_not_kept() {
    let app = spawn_app().await;
    let t = app.tenant("apq-mismatch").await;
    let viewer = app.token(&t, Role::Viewer);
    let claimed = sha("{ __typename }");
    let (status, body) = post(
        &app,
        Some(&viewer),
        json!({ "query": ME, "extensions": apq(&claimed) }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_code(&body, "PERSISTED_QUERY_HASH_MISMATCH");
    assert_eq!(
        body["errors"][0]["message"],
        "provided sha does not match query"
    );
    assert!(body["data"].is_null(), "{body}");
    assert_eq!(outcome(&app, "mismatch").await, 1.0);
    // Neither the claimed hash nor the real one was filed.
    for hash in [claimed, sha(ME)] {
        let (status, body) = post(&app, Some(&viewer), json!({ "extensions": apq(&hash) })).await;
        assert_not_found(status, &body);
    }
    // Under the GraphQL response media type it is a request error.
    let resp = app
        .http
        .post(app.url("/graphql"))
        .header("accept", "application/graphql-response+json")
        .bearer_auth(&viewer)
        .json(&json!({ "query": ME, "extensions": apq(&sha("x")) }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn bad_versions_and_hashes_are_bad_input_naming_the_field() {
    let app = spawn_app().await;
    let t = app.tenant("apq-bad").await;
    let viewer = app.token(&t, Role::Viewer);
    let hash = sha(ME);
    for (extensions, field) in [
        (
            json!({ "persistedQuery": { "version": 2, "sha256Hash": hash } }),
            "extensions.persistedQuery.version",
        ),
        (
            json!({ "persistedQuery": { "sha256Hash": hash } }),
            "extensions.persistedQuery.version",
        ),
        (
            json!({ "persistedQuery": { "version": 1, "sha256Hash": "abc" } }),
            "extensions.persistedQuery.sha256Hash",
        ),
        (
            json!({ "persistedQuery": { "version": 1 } }),
            "extensions.persistedQuery.sha256Hash",
        ),
        (
            json!({ "persistedQuery": "yes" }),
            "extensions.persistedQuery",
        ),
    ] {
        for query in [None, Some(ME)] {
            let mut body = json!({ "extensions": extensions });
            if let Some(q) = query {
                body["query"] = json!(q);
            }
            let (status, answer) = post(&app, Some(&viewer), body).await;
            assert_eq!(status, 200, "{answer}");
            assert_code(&answer, "BAD_USER_INPUT");
            assert_eq!(
                answer["errors"][0]["extensions"]["field"], field,
                "{answer}"
            );
        }
    }
    // Without a query and without a hash it is the usual refusal.
    let (status, body) = post(&app, Some(&viewer), json!({ "extensions": {} })).await;
    assert_eq!(status, 400, "{body}");
    assert_code(&body, "BAD_USER_INPUT");
}

#[tokio::test]
async fn a_tenant_cannot_run_another_tenants_document_by_its_hash() {
    let app = spawn_app().await;
    let (a, b) = (app.tenant("apq-a").await, app.tenant("apq-b").await);
    let hash = sha(ME);
    let (_, body) = post(
        &app,
        Some(&app.token(&a, Role::Viewer)),
        json!({ "query": ME, "extensions": apq(&hash) }),
    )
    .await;
    assert_eq!(data(&body)["me"]["tenant"]["slug"], a.slug.as_str());
    let other = app.token(&b, Role::Admin);
    let (status, body) = post(&app, Some(&other), json!({ "extensions": apq(&hash) })).await;
    assert_not_found(status, &body);
    // Nor can a caller without a token: it is told to send the document,
    // which then runs as any anonymous request does.
    let (status, body) = post(&app, None, json!({ "extensions": apq(&hash) })).await;
    assert_not_found(status, &body);
    let (_, body) = post(&app, None, json!({ "query": ME, "extensions": apq(&hash) })).await;
    assert_code(&body, "UNAUTHENTICATED");
    let typename = "{ __typename }";
    let (_, body) = post(
        &app,
        None,
        json!({ "query": typename, "extensions": apq(&sha(typename)) }),
    )
    .await;
    assert_eq!(data(&body)["__typename"], "Query");
}

#[tokio::test]
async fn each_request_of_a_batch_gets_its_own_answer_in_its_place() {
    let app = spawn_app().await;
    let t = app.tenant("apq-batch").await;
    let viewer = app.token(&t, Role::Viewer);
    let unknown = sha("{ me { role } }");
    let (status, body) = post(
        &app,
        Some(&viewer),
        json!([
            { "query": ME },
            { "extensions": apq(&unknown) },
            { "query": ME, "extensions": apq(&sha("nope")) },
            { "query": ME, "extensions": apq(&sha(ME)) },
        ]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(data(&body[0])["me"]["role"], "VIEWER");
    assert_code(&body[1], "PERSISTED_QUERY_NOT_FOUND");
    assert_code(&body[2], "PERSISTED_QUERY_HASH_MISMATCH");
    assert_eq!(data(&body[3])["me"]["role"], "VIEWER");
}

const REGISTER: &str = r#"mutation($name: String!, $document: String!) {
    registerOperation(name: $name, document: $document) {
        id name sha256Hash document createdAt createdBy } }"#;

async fn register(app: &TestApp, admin: &str, name: &str, document: &str) -> Value {
    let body = app
        .gql_as(
            admin,
            REGISTER,
            json!({ "name": name, "document": document }),
        )
        .await;
    data(&body)["registerOperation"].clone()
}

async fn set_allow_list(app: &TestApp, admin: &str, on: bool) {
    let body = app
        .gql_as(
            admin,
            "mutation($on: Boolean) { updateTenantSettings(input: {allowList: $on}) { settings } }",
            json!({ "on": on }),
        )
        .await;
    assert_eq!(
        data(&body)["updateTenantSettings"]["settings"]["allow_list"],
        on
    );
}

#[tokio::test]
async fn in_allow_list_mode_only_registered_operations_run_below_admin() {
    let app = spawn_app().await;
    let t = app.tenant("allow").await;
    let (viewer, editor) = (app.token(&t, Role::Viewer), app.token(&t, Role::Editor));
    let admin = app.token(&t, Role::Admin);
    // Off by default: anything runs.
    assert_eq!(
        data(&app.gql_as(&viewer, ME, json!({})).await)["me"]["role"],
        "VIEWER"
    );
    set_allow_list(&app, &admin, true).await;

    let refused = app.gql_as(&viewer, ME, json!({})).await;
    assert_code(&refused, "PERSISTED_QUERY_NOT_IN_LIST");
    let message = refused["errors"][0]["message"].as_str().expect("message");
    assert!(message.contains("registerOperation"), "{message}");
    assert!(refused["data"].is_null(), "nothing ran: {refused}");
    assert_eq!(outcome(&app, "not_in_list").await, 1.0);
    // Sending the hash too changes nothing, and files nothing.
    let (_, body) = post(
        &app,
        Some(&viewer),
        json!({ "query": ME, "extensions": apq(&sha(ME)) }),
    )
    .await;
    assert_code(&body, "PERSISTED_QUERY_NOT_IN_LIST");
    assert_eq!(outcome(&app, "registered").await, 0.0);
    // ADMINs are exempt, so they can manage the list (and use GraphiQL).
    assert_eq!(
        data(&app.gql_as(&admin, ME, json!({})).await)["me"]["role"],
        "ADMIN"
    );

    let op = register(&app, &admin, "Me", ME).await;
    assert_eq!(op["sha256Hash"], sha(ME));
    assert_eq!(op["document"], ME);
    assert_eq!(op["name"], "Me");
    assert_eq!(op["createdBy"], t.user(Role::Admin).email.as_str(), "{op}");
    // The next request runs it, by its text and by its hash alone (which
    // resolves from the registered operations: no client ever sent it).
    assert_eq!(
        data(&app.gql_as(&viewer, ME, json!({})).await)["me"]["role"],
        "VIEWER"
    );
    let (_, body) = post(&app, Some(&editor), json!({ "extensions": apq(&sha(ME)) })).await;
    assert_eq!(data(&body)["me"]["role"], "EDITOR");
    let (status, _, body) = get(&app, &viewer, &[("extensions", apq(&sha(ME)).to_string())]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(data(&body)["me"]["role"], "VIEWER");
    // The text must be the registered one exactly.
    let spaced = format!("{ME} ");
    assert_code(
        &app.gql_as(&viewer, &spaced, json!({})).await,
        "PERSISTED_QUERY_NOT_IN_LIST",
    );

    // A registered mutation runs too, with its variables.
    let ingest =
        "mutation Track($events: [EventInput!]!) { ingestEvents(events: $events) { accepted } }";
    assert_code(
        &app.gql_as(&editor, ingest, json!({ "events": [{ "type": "a" }] }))
            .await,
        "PERSISTED_QUERY_NOT_IN_LIST",
    );
    register(&app, &admin, "Track", ingest).await;
    let ran = app
        .gql_as(
            &editor,
            ingest,
            json!({ "events": [{ "type": "a" }, { "type": "b" }] }),
        )
        .await;
    assert_eq!(data(&ran)["ingestEvents"]["accepted"], 2);

    // Listed for ADMINs, oldest first.
    let listed = app
        .gql_as(
            &admin,
            "{ persistedOperations(first: 10) { edges { node { id name sha256Hash } } pageInfo { hasNextPage } } }",
            json!({}),
        )
        .await;
    let edges = data(&listed)["persistedOperations"]["edges"]
        .as_array()
        .expect("edges")
        .clone();
    let names: Vec<&str> = edges
        .iter()
        .filter_map(|e| e["node"]["name"].as_str())
        .collect();
    assert_eq!(names, ["Me", "Track"]);

    // Deleted, it is refused again from the next request on, by text and
    // by hash.
    let deleted = app
        .gql_as(
            &admin,
            "mutation($id: ID!) { deleteOperation(id: $id) }",
            json!({ "id": op["id"] }),
        )
        .await;
    assert_eq!(data(&deleted)["deleteOperation"], true);
    assert_code(
        &app.gql_as(&viewer, ME, json!({})).await,
        "PERSISTED_QUERY_NOT_IN_LIST",
    );
    let (_, body) = post(&app, Some(&viewer), json!({ "extensions": apq(&sha(ME)) })).await;
    assert_code(&body, "PERSISTED_QUERY_NOT_IN_LIST");

    // Audited like every change.
    let audit = app
        .gql_as(
            &admin,
            "{ auditLog(first: 20) { edges { node { action } } } }",
            json!({}),
        )
        .await;
    let actions: Vec<&str> = data(&audit)["auditLog"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter_map(|e| e["node"]["action"].as_str())
        .collect();
    for action in ["persisted_operation.register", "persisted_operation.delete"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }

    // Off again, anything runs.
    set_allow_list(&app, &admin, false).await;
    assert_eq!(
        data(&app.gql_as(&viewer, ME, json!({})).await)["me"]["role"],
        "VIEWER"
    );
}

#[tokio::test]
async fn the_allow_list_holds_over_the_websocket_too() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let app = spawn_app().await;
    let t = app.tenant("allow-ws").await;
    app.set_plan(&t, "team", json!({ "allow_list": true }))
        .await;
    let mut request = format!("ws://{}/graphql/ws", app.addr)
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    let token = app.token(&t, Role::Viewer);
    let send = |v: Value| Message::text(v.to_string());
    socket
        .send(send(json!({ "type": "connection_init",
            "payload": { "authorization": format!("Bearer {token}") } })))
        .await
        .expect("init");
    socket
        .send(send(
            json!({ "id": "1", "type": "subscribe", "payload": { "query": ME } }),
        ))
        .await
        .expect("subscribe");
    let mut answer = None;
    while answer.is_none() {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
            .expect("open")
            .expect("message");
        if let Message::Text(text) = msg {
            let v: Value = serde_json::from_str(&text).expect("json");
            if v["id"] == "1" {
                answer = Some(v);
            }
        }
    }
    let answer = answer.expect("answer");
    let errors = if answer["type"] == "error" {
        answer["payload"].clone()
    } else {
        answer["payload"]["errors"].clone()
    };
    assert_eq!(
        errors[0]["extensions"]["code"], "PERSISTED_QUERY_NOT_IN_LIST",
        "{answer}"
    );
}

#[tokio::test]
async fn only_admins_register_and_only_documents_that_parse() {
    let app = spawn_app().await;
    let t = app.tenant("allow-reg").await;
    let vars = json!({ "name": "Me", "document": ME });
    for role in [Role::Viewer, Role::Editor] {
        let body = app
            .gql_as(&app.token(&t, role), REGISTER, vars.clone())
            .await;
        assert_code(&body, "FORBIDDEN");
    }
    let admin = app.token(&t, Role::Admin);
    let body = app
        .gql_as(
            &admin,
            REGISTER,
            json!({ "name": "Broken", "document": "query { me { role" }),
        )
        .await;
    assert_code(&body, "BAD_USER_INPUT");
    assert_eq!(body["errors"][0]["extensions"]["field"], "document");
    let body = app
        .gql_as(&admin, REGISTER, json!({ "name": " ", "document": ME }))
        .await;
    assert_code(&body, "BAD_USER_INPUT");
    assert_eq!(body["errors"][0]["extensions"]["field"], "name");
    for role in [Role::Viewer, Role::Editor] {
        let body = app
            .gql_as(
                &app.token(&t, role),
                "{ persistedOperations { edges { node { id } } } }",
                json!({}),
            )
            .await;
        assert_code(&body, "FORBIDDEN");
    }
    // Registering the same document again returns the same operation.
    let first = register(&app, &admin, "Me", ME).await;
    let again = register(&app, &admin, "Me again", ME).await;
    assert_eq!(first["id"], again["id"]);
    assert_eq!(again["name"], "Me");
    // Another tenant's id deletes nothing.
    let other = app.tenant("allow-other").await;
    let body = app
        .gql_as(
            &app.token(&other, Role::Admin),
            "mutation($id: ID!) { deleteOperation(id: $id) }",
            json!({ "id": first["id"] }),
        )
        .await;
    assert_eq!(data(&body)["deleteOperation"], false);
    if is_postgres() {
        // Row-level security guards the table like every tenant table.
        use sea_orm::ConnectionTrait;
        let row = app
            .state
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT relrowsecurity FROM pg_class WHERE relname = 'persisted_operations'",
            ))
            .await
            .expect("query")
            .expect("row");
        assert!(row.try_get_by_index::<bool>(0).expect("bool"));
    }
}

/// Two instances sharing PostgreSQL and Redis: a document stored through
/// one runs by hash on the other, and a registration or deletion on one
/// holds on the other from its next request.
#[tokio::test]
async fn instances_sharing_redis_share_documents_and_the_allow_list() {
    if redis_url().is_none() || !is_postgres() {
        eprintln!("skipped: instances share persisted queries only through Redis and PostgreSQL");
        return;
    }
    let one = spawn_app().await;
    let two = spawn_app().await;
    let t = one.tenant("apq-two").await;
    let viewer = one.token(&t, Role::Viewer);
    let hash = sha(ME);
    let (_, body) = post(
        &one,
        Some(&viewer),
        json!({ "query": ME, "extensions": apq(&hash) }),
    )
    .await;
    data(&body);
    let (_, body) = post(&two, Some(&viewer), json!({ "extensions": apq(&hash) })).await;
    assert_eq!(data(&body)["me"]["role"], "VIEWER");

    let admin = one.token(&t, Role::Admin);
    set_allow_list(&one, &admin, true).await;
    // The mode is part of the tenant's policy, which another instance
    // reads with the token it remembers for a second: it holds there
    // within that second.
    tokio::time::sleep(
        pulse::domain::auth::VerifiedTokens::TTL + std::time::Duration::from_millis(200),
    )
    .await;
    let typename = "query T { __typename }";
    // Instance two caches the (empty) list...
    assert_code(
        &two.gql_as(&viewer, typename, json!({})).await,
        "PERSISTED_QUERY_NOT_IN_LIST",
    );
    // ...and sees the registration on instance one at once.
    let op = register(&one, &admin, "T", typename).await;
    assert_eq!(
        data(&two.gql_as(&viewer, typename, json!({})).await)["__typename"],
        "Query"
    );
    let deleted = one
        .gql_as(
            &admin,
            "mutation($id: ID!) { deleteOperation(id: $id) }",
            json!({ "id": op["id"] }),
        )
        .await;
    assert_eq!(data(&deleted)["deleteOperation"], true);
    assert_code(
        &two.gql_as(&viewer, typename, json!({})).await,
        "PERSISTED_QUERY_NOT_IN_LIST",
    );
}
