//! Saved queries: CRUD, who sees and changes what, typed parameters bound at
//! run time, and a stored query that no longer validates saying so.

use pulse::auth::Role;
use pulse::entities::saved_query;
use sea_orm::{ActiveValue::Set, EntityTrait};
use serde_json::{Value, json};

use crate::common::*;

const CREATE: &str = "mutation($i: SavedQueryInput!) { createSavedQuery(input: $i) {
    id name kind isPublic problem definition parameters { name type default } owner { email } } }";
const RUN: &str = "query($id: ID!, $p: JSON) { runSavedQuery(id: $id, parameters: $p) {
    __typename ... on MetricResult { total }
    ... on FunnelResult { steps { eventType count } }
    ... on RetentionResult { cohorts { size } } } }";
const GET: &str = "query($id: ID!) { savedQuery(id: $id) { id name problem } }";

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

/// Opens by campaign over a range: both parameters, with defaults.
fn opens_by_campaign(public: bool) -> Value {
    json!({
        "name": "Opens of a campaign",
        "description": "email.opened for $campaign",
        "isPublic": public,
        "query": {
            "measure": "COUNT",
            "eventTypes": ["email.opened"],
            "filters": [{ "field": "properties.campaign", "op": "EQ", "value": "$campaign" }],
            "range": { "last": "$range" }
        },
        "parameters": [
            { "name": "campaign", "type": "STRING", "default": "spring" },
            { "name": "range", "type": "TIME_RANGE", "default": { "last": "7d" } }
        ]
    })
}

async fn seeded() -> (TestApp, TestTenant) {
    let app = spawn_app().await;
    let t = app.tenant("saved").await;
    let events: Vec<Value> = ["spring", "spring", "spring", "autumn"]
        .iter()
        .map(|c| json!({ "type": "email.opened", "userId": "u1", "properties": { "campaign": c } }))
        .chain([
            json!({ "type": "signup", "userId": "u1" }),
            json!({ "type": "purchase", "userId": "u1" }),
        ])
        .collect();
    ingest(&app, &app.token(&t, Role::Editor), json!(events)).await;
    (app, t)
}

#[tokio::test]
async fn a_saved_query_runs_with_defaults_and_given_parameters_like_the_field() {
    let (app, t) = seeded().await;
    let editor = app.token(&t, Role::Editor);
    let body = app
        .gql_as(&editor, CREATE, json!({ "i": opens_by_campaign(false) }))
        .await;
    let saved = &data(&body)["createSavedQuery"];
    assert_eq!(saved["kind"], "METRIC");
    assert!(saved["problem"].is_null(), "{saved}");
    assert_eq!(saved["owner"]["email"], t.user(Role::Editor).email.as_str());
    assert_eq!(saved["definition"]["range"], json!({ "last": "$range" }));
    assert_eq!(saved["parameters"][1]["type"], "TIME_RANGE");
    let id = saved["id"].as_str().expect("id").to_owned();

    let run = |params: Value| {
        let (app, editor, id) = (&app, &editor, id.clone());
        async move {
            app.gql_as(editor, RUN, json!({ "id": id, "p": params }))
                .await
        }
    };
    let defaults = run(Value::Null).await;
    assert_eq!(
        data(&defaults)["runSavedQuery"]["__typename"],
        "MetricResult"
    );
    assert_eq!(data(&defaults)["runSavedQuery"]["total"], 3.0);
    let autumn = run(json!({ "campaign": "autumn", "range": { "last": "1d" } })).await;
    assert_eq!(data(&autumn)["runSavedQuery"]["total"], 1.0);
    // The same as the field itself.
    let direct = app
        .gql_as(
            &editor,
            "{ metrics(query: { measure: COUNT, eventTypes: [\"email.opened\"], range: { last: \"1d\" },
                 filters: [{ field: \"properties.campaign\", op: EQ, value: \"autumn\" }] }) { total } }",
            json!({}),
        )
        .await;
    assert_eq!(data(&direct)["metrics"]["total"], 1.0);

    // Bad runs name the parameter.
    for (params, field) in [
        (json!({ "campaign": 7 }), "parameters.campaign"),
        (json!({ "nope": "x" }), "parameters.nope"),
        (json!({ "range": { "last": 5 } }), "parameters.range"),
    ] {
        let body = run(params).await;
        assert_code(&body, "BAD_USER_INPUT");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
    }
    // A range parameter is checked like any range.
    let body = run(json!({ "range": { "last": "99999d" } })).await;
    assert_code(&body, "BAD_USER_INPUT");
}

#[tokio::test]
async fn funnels_and_retention_can_be_saved_and_run() {
    let (app, t) = seeded().await;
    let editor = app.token(&t, Role::Editor);
    let funnel = json!({ "name": "Sign-up to purchase", "funnel": {
        "steps": [{ "eventType": "signup" }, { "eventType": "purchase" }],
        "conversionWindow": "$window", "range": { "last": "1d" } },
        "parameters": [{ "name": "window", "type": "STRING", "default": "7d" }] });
    let id =
        data(&app.gql_as(&editor, CREATE, json!({ "i": funnel })).await)["createSavedQuery"]["id"]
            .clone();
    let body = app.gql_as(&editor, RUN, json!({ "id": id })).await;
    let steps = &data(&body)["runSavedQuery"]["steps"];
    assert_eq!(steps[0]["count"], 1);
    assert_eq!(steps[1]["count"], 1);
    let retention = json!({ "name": "Weekly retention", "retention": {
        "startEvent": "signup", "returnEvent": "purchase", "period": "WEEK", "periods": 2,
        "range": { "last": "7d" } } });
    let id = data(&app.gql_as(&editor, CREATE, json!({ "i": retention })).await)["createSavedQuery"]["id"]
        .clone();
    let body = app.gql_as(&editor, RUN, json!({ "id": id })).await;
    let sizes: i64 = data(&body)["runSavedQuery"]["cohorts"]
        .as_array()
        .expect("cohorts")
        .iter()
        .filter_map(|c| c["size"].as_i64())
        .sum();
    assert_eq!(sizes, 1);
}

#[tokio::test]
async fn saving_checks_every_field_and_names_it() {
    let (app, t) = seeded().await;
    let editor = app.token(&t, Role::Editor);
    let with = |patch: Value| {
        let mut input = opens_by_campaign(false);
        for (k, v) in patch.as_object().expect("patch") {
            input[k] = v.clone();
        }
        input
    };
    let cases = [
        (with(json!({ "name": "  " })), "input.name"),
        (
            with(
                json!({ "funnel": { "steps": [], "conversionWindow": "1d", "range": { "last": "1d" } } }),
            ),
            "input",
        ),
        (
            with(json!({ "parameters": [{ "name": "Campaign", "type": "STRING" }] })),
            "input.parameters[0].name",
        ),
        (
            with(
                json!({ "parameters": [{ "name": "campaign", "type": "NUMBER", "default": "x" }] }),
            ),
            "input.parameters[0].default",
        ),
        (
            with(json!({ "parameters": [{ "name": "campaign", "type": "STRING" }] })),
            "input.parameters",
        ),
    ];
    for (input, field) in cases {
        let body = app.gql_as(&editor, CREATE, json!({ "i": input })).await;
        assert_code(&body, "BAD_USER_INPUT");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
    }
    let none = json!({ "name": "nothing" });
    assert_code(
        &app.gql_as(&editor, CREATE, json!({ "i": none })).await,
        "BAD_USER_INPUT",
    );
    // A parameter without a default may be saved; running needs it.
    let required = with(json!({ "parameters": [
        { "name": "campaign", "type": "STRING" },
        { "name": "range", "type": "TIME_RANGE", "default": { "last": "7d" } }] }));
    let id = data(&app.gql_as(&editor, CREATE, json!({ "i": required })).await)["createSavedQuery"]
        ["id"]
        .clone();
    let body = app.gql_as(&editor, RUN, json!({ "id": id })).await;
    assert_eq!(
        body["errors"][0]["extensions"]["field"], "parameters.campaign",
        "{body}"
    );
    let body = app
        .gql_as(
            &editor,
            RUN,
            json!({ "id": id, "p": { "campaign": "spring" } }),
        )
        .await;
    assert_eq!(data(&body)["runSavedQuery"]["total"], 3.0);
    // Viewers read, they do not write.
    let viewer = app.token(&t, Role::Viewer);
    assert_code(
        &app.gql_as(&viewer, CREATE, json!({ "i": opens_by_campaign(true) }))
            .await,
        "FORBIDDEN",
    );
}

#[tokio::test]
async fn private_queries_are_seen_by_owner_and_admins_and_changed_by_them_only() {
    let (app, t) = seeded().await;
    let other = app.tenant("saved-other").await;
    let owner = app.token(&t, Role::Editor);
    let private = data(
        &app.gql_as(&owner, CREATE, json!({ "i": opens_by_campaign(false) }))
            .await,
    )["createSavedQuery"]["id"]
        .clone();
    let public = data(
        &app.gql_as(&owner, CREATE, json!({ "i": opens_by_campaign(true) }))
            .await,
    )["createSavedQuery"]["id"]
        .clone();
    // A second editor of the same tenant, not the owner.
    let colleague = app
        .state
        .keys
        .mint(
            &t.user(Role::SuperAdmin).id.to_string(),
            &t.slug,
            Role::Editor,
            std::time::Duration::from_secs(600),
        )
        .expect("mint");
    let sees = |token: &str, id: &Value| {
        let (app, token, id) = (&app, token.to_owned(), id.clone());
        async move {
            let body = app.gql_as(&token, GET, json!({ "id": id })).await;
            !data(&body)["savedQuery"].is_null()
        }
    };
    let admin = app.token(&t, Role::Admin);
    let viewer = app.token(&t, Role::Viewer);
    let stranger = app.token(&other, Role::SuperAdmin);
    assert!(sees(&owner, &private).await);
    assert!(sees(&admin, &private).await);
    assert!(!sees(&viewer, &private).await);
    assert!(!sees(&colleague, &private).await);
    assert!(!sees(&stranger, &private).await);
    assert!(sees(&viewer, &public).await);
    assert!(sees(&colleague, &public).await);
    assert!(!sees(&stranger, &public).await);
    let listed = |token: &str| {
        let (app, token) = (&app, token.to_owned());
        async move {
            let body = app
                .gql_as(
                    &token,
                    "{ savedQueries(first: 50) { edges { node { id } } } }",
                    json!({}),
                )
                .await;
            data(&body)["savedQueries"]["edges"]
                .as_array()
                .expect("edges")
                .len()
        }
    };
    assert_eq!((listed(&owner).await, listed(&admin).await), (2, 2));
    assert_eq!((listed(&viewer).await, listed(&stranger).await), (1, 0));
    // Running someone else's private query is as if it did not exist.
    assert_code(
        &app.gql_as(&viewer, RUN, json!({ "id": private })).await,
        "NOT_FOUND",
    );
    assert_code(
        &app.gql_as(&stranger, RUN, json!({ "id": public })).await,
        "NOT_FOUND",
    );

    let update = "mutation($id: ID!, $i: SavedQueryInput!) { updateSavedQuery(id: $id, input: $i) { name } }";
    let mut renamed = opens_by_campaign(true);
    renamed["name"] = json!("Renamed");
    assert_code(
        &app.gql_as(&colleague, update, json!({ "id": public, "i": renamed }))
            .await,
        "FORBIDDEN",
    );
    let body = app
        .gql_as(&admin, update, json!({ "id": public, "i": renamed }))
        .await;
    assert_eq!(data(&body)["updateSavedQuery"]["name"], "Renamed");
    let delete = "mutation($id: ID!) { deleteSavedQuery(id: $id) }";
    assert_code(
        &app.gql_as(&colleague, delete, json!({ "id": public }))
            .await,
        "FORBIDDEN",
    );
    assert_eq!(
        data(&app.gql_as(&stranger, delete, json!({ "id": public })).await)["deleteSavedQuery"],
        false
    );
    assert_eq!(
        data(&app.gql_as(&owner, delete, json!({ "id": public })).await)["deleteSavedQuery"],
        true
    );
    assert!(!sees(&owner, &public).await);

    let audit = app
        .gql_as(
            &admin,
            "{ auditLog(first: 20, filter: { resourceType: \"saved_query\" }) { edges { node { action before after } } } }",
            json!({}),
        )
        .await;
    let actions: Vec<&str> = data(&audit)["auditLog"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter_map(|e| e["node"]["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "saved_query.delete",
            "saved_query.update",
            "saved_query.create",
            "saved_query.create"
        ]
    );
    let update_entry = &data(&audit)["auditLog"]["edges"][1]["node"];
    assert!(
        update_entry["before"]
            .to_string()
            .contains("Opens of a campaign")
    );
    assert!(update_entry["after"].to_string().contains("Renamed"));
}

/// A query saved by an older version (here: written straight into the
/// table) whose input no longer validates says so when listed and when
/// run, with a code, not an internal error.
#[tokio::test]
async fn a_stale_saved_query_says_what_is_wrong_when_listed_and_run() {
    let (app, t) = seeded().await;
    let admin = app.token(&t, Role::Admin);
    let now = chrono::Utc::now();
    for (definition, parameters) in [
        (
            json!({ "measure": "COUNT", "range": { "last": "7d" }, "eventType": "renamed" }),
            json!([]),
        ),
        (
            json!({ "measure": "COUNT", "range": { "last": "$gone" } }),
            json!([]),
        ),
        (
            json!({ "measure": "SUM", "range": { "last": "7d" } }),
            json!([]),
        ),
    ] {
        let id = uuid::Uuid::now_v7();
        saved_query::Entity::insert(saved_query::ActiveModel {
            id: Set(id),
            tenant_id: Set(t.id),
            owner_id: Set(None),
            name: Set("old".into()),
            description: Set(None),
            kind: Set("METRIC".into()),
            definition: Set(definition.clone()),
            parameters: Set(parameters),
            is_public: Set(true),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .exec(&app.state.db)
        .await
        .expect("insert");
        let body = app
            .gql_as(&admin, GET, json!({ "id": id.to_string() }))
            .await;
        let problem = data(&body)["savedQuery"]["problem"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(!problem.is_empty(), "{definition} → {body}");
        let body = app
            .gql_as(&admin, RUN, json!({ "id": id.to_string() }))
            .await;
        assert_code(&body, "BAD_USER_INPUT");
    }
}
