//! Tenant isolation: an ADMIN of one tenant never sees another's users or
//! audit trail, whether by listing or by guessing ids.

use pulse::auth::Role;
use serde_json::{Value, json};

use crate::common::*;

const USERS: &str = "{ users(first: 100) { edges { node { id email } } } }";
const USER: &str = "query($id: ID!) { user(id: $id) { id email } }";
const AUDIT: &str = "query($f: AuditFilterInput) { auditLog(first: 100, filter: $f) { edges { node { id action resourceId actor } } } }";
const CREATE_USER: &str = "mutation($input: UserInput!) { createUser(input: $input) { id } }";

fn nodes(body: &Value, field: &str) -> Vec<Value> {
    data(body)[field]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

#[tokio::test]
async fn an_admin_never_sees_another_tenants_users() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let globex = app.tenant("globex").await;
    let acme_admin = app.token(&acme, Role::Admin);

    let listed = nodes(&app.gql_as(&acme_admin, USERS, json!({})).await, "users");
    let ids: Vec<&str> = listed.iter().filter_map(|u| u["id"].as_str()).collect();
    assert_eq!(ids.len(), acme.users.len());
    for u in globex.users.values() {
        assert!(
            !ids.contains(&u.id.to_string().as_str()),
            "globex user listed"
        );
    }

    // Guessing ids: every globex user is simply absent.
    for u in globex.users.values() {
        let body = app
            .gql_as(&acme_admin, USER, json!({ "id": u.id.to_string() }))
            .await;
        assert!(data(&body)["user"].is_null(), "{body}");
    }
    // While acme's own are found by the same query.
    let own = app
        .gql_as(
            &acme_admin,
            USER,
            json!({ "id": acme.user(Role::Viewer).id.to_string() }),
        )
        .await;
    assert_eq!(
        data(&own)["user"]["email"],
        acme.user(Role::Viewer).email.as_str()
    );
}

#[tokio::test]
async fn an_admin_never_sees_another_tenants_audit_entries() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let globex = app.tenant("globex").await;
    let globex_admin = app.token(&globex, Role::Admin);
    let created = app
        .gql_as(
            &globex_admin,
            CREATE_USER,
            json!({ "input": { "email": "secret@globex.test", "role": "VIEWER" } }),
        )
        .await;
    let globex_user_id = data(&created)["createUser"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let globex_entries = nodes(
        &app.gql_as(&globex_admin, AUDIT, json!({})).await,
        "auditLog",
    );
    assert!(!globex_entries.is_empty());

    let acme_admin = app.token(&acme, Role::Admin);
    let mine = nodes(&app.gql_as(&acme_admin, AUDIT, json!({})).await, "auditLog");
    assert!(
        mine.is_empty(),
        "acme saw entries it did not make: {mine:?}"
    );
    // Filtering by the globex resource finds nothing either.
    let probe = app
        .gql_as(
            &acme_admin,
            AUDIT,
            json!({ "f": { "resourceId": globex_user_id } }),
        )
        .await;
    assert!(nodes(&probe, "auditLog").is_empty());
    // And a globex cursor does not leak past acme's boundary.
    let cursor_probe =
        "query($after: String) { auditLog(first: 10, after: $after) { edges { node { id } } } }";
    let globex_cursor = {
        let body = app
            .gql_as(
                &globex_admin,
                "{ auditLog { edges { cursor } } }",
                json!({}),
            )
            .await;
        data(&body)["auditLog"]["edges"][0]["cursor"].clone()
    };
    let body = app
        .gql_as(&acme_admin, cursor_probe, json!({ "after": globex_cursor }))
        .await;
    assert!(nodes(&body, "auditLog").is_empty());
}

#[tokio::test]
async fn a_new_user_lands_only_in_the_callers_tenant() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let globex = app.tenant("globex").await;
    let acme_admin = app.token(&acme, Role::Admin);
    data(
        &app.gql_as(
            &acme_admin,
            CREATE_USER,
            json!({ "input": { "email": "new@acme.test", "role": "VIEWER" } }),
        )
        .await,
    );
    let globex_users = nodes(
        &app.gql_as(&app.token(&globex, Role::Admin), USERS, json!({}))
            .await,
        "users",
    );
    assert_eq!(globex_users.len(), globex.users.len());
    assert!(globex_users.iter().all(|u| u["email"] != "new@acme.test"));
    // The same email is free in another tenant.
    data(
        &app.gql_as(
            &app.token(&globex, Role::Admin),
            CREATE_USER,
            json!({ "input": { "email": "new@acme.test", "role": "VIEWER" } }),
        )
        .await,
    );
}
