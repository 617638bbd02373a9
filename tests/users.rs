//! Users: who may list and create them, and what a bad input gets.

use pulse::auth::Role;
use serde_json::json;

use crate::common::*;

const CREATE_USER: &str =
    "mutation($input: UserInput!) { createUser(input: $input) { id email role status } }";
const USERS: &str = "query($first: Int, $after: String) {
    users(first: $first, after: $after) { edges { cursor node { id email role } } pageInfo { hasNextPage endCursor } } }";

fn new_user(email: &str, role: &str) -> serde_json::Value {
    json!({ "input": { "email": email, "role": role } })
}

#[tokio::test]
async fn only_admins_and_up_create_users() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    for (i, role) in ROLES.into_iter().enumerate() {
        let body = app
            .gql_as(
                &app.token(&acme, role),
                CREATE_USER,
                new_user(&format!("matrix{i}@example.com"), "VIEWER"),
            )
            .await;
        if role.at_least(Role::Admin) {
            let user = &data(&body)["createUser"];
            assert_eq!(user["role"], "VIEWER", "{role:?}");
            // No password: invited, cannot sign in yet.
            assert_eq!(user["status"], "INVITED");
        } else {
            assert_code(&body, "FORBIDDEN");
            assert!(body["data"].is_null(), "{body}");
        }
    }
}

#[tokio::test]
async fn nobody_grants_a_role_above_their_own() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let admin = app.token(&acme, Role::Admin);
    let body = app
        .gql_as(
            &admin,
            CREATE_USER,
            new_user("boss@example.com", "SUPER_ADMIN"),
        )
        .await;
    assert_code(&body, "FORBIDDEN");
    let ok = app
        .gql_as(&admin, CREATE_USER, new_user("peer@example.com", "ADMIN"))
        .await;
    assert_eq!(data(&ok)["createUser"]["role"], "ADMIN");
    let root = app.token(&acme, Role::SuperAdmin);
    let ok = app
        .gql_as(
            &root,
            CREATE_USER,
            new_user("boss@example.com", "SUPER_ADMIN"),
        )
        .await;
    assert_eq!(data(&ok)["createUser"]["role"], "SUPER_ADMIN");
}

#[tokio::test]
async fn only_admins_and_up_list_users() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    for role in ROLES {
        let body = app.gql_as(&app.token(&acme, role), USERS, json!({})).await;
        if role.at_least(Role::Admin) {
            assert_eq!(
                data(&body)["users"]["edges"].as_array().map(Vec::len),
                Some(4)
            );
        } else {
            assert_code(&body, "FORBIDDEN");
        }
    }
}

#[tokio::test]
async fn users_page_through_with_cursors() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let admin = app.token(&acme, Role::Admin);
    let mut seen = Vec::new();
    let mut after = serde_json::Value::Null;
    loop {
        let body = app
            .gql_as(&admin, USERS, json!({ "first": 3, "after": after }))
            .await;
        let page = &data(&body)["users"];
        for edge in page["edges"].as_array().expect("edges") {
            seen.push(edge["node"]["email"].as_str().expect("email").to_owned());
        }
        if page["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = page["pageInfo"]["endCursor"].clone();
    }
    let mut expected: Vec<String> = acme.users.values().map(|u| u.email.clone()).collect();
    expected.sort();
    let mut got = seen.clone();
    got.sort();
    assert_eq!(got, expected, "every user exactly once");
}

#[tokio::test]
async fn page_sizes_and_cursors_are_validated() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let admin = app.token(&acme, Role::Admin);
    let at_limit = app.gql_as(&admin, USERS, json!({ "first": 100 })).await;
    data(&at_limit);
    for vars in [
        json!({ "first": 101 }),
        json!({ "first": -1 }),
        json!({ "after": "not a cursor" }),
    ] {
        let body = app.gql_as(&admin, USERS, vars.clone()).await;
        assert_code(&body, "BAD_USER_INPUT");
        assert!(
            body["errors"][0]["extensions"]["field"].is_string(),
            "{body}"
        );
    }
}

#[tokio::test]
async fn bad_user_input_names_the_field_and_stores_nothing() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let admin = app.token(&acme, Role::Admin);
    let cases = [
        (
            json!({ "email": "not-an-email", "role": "VIEWER" }),
            "email",
        ),
        (
            json!({ "email": "x@example.com", "role": "VIEWER", "password": "short" }),
            "password",
        ),
        (
            json!({ "email": "x@example.com", "role": "VIEWER", "displayName": "n".repeat(201) }),
            "displayName",
        ),
        (
            json!({ "email": acme.user(Role::Viewer).email.to_uppercase(), "role": "VIEWER" }),
            "email",
        ),
    ];
    for (input, field) in cases {
        let body = app
            .gql_as(&admin, CREATE_USER, json!({ "input": input }))
            .await;
        assert_code(&body, "BAD_USER_INPUT");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
    }
    let listed = app.gql_as(&admin, USERS, json!({})).await;
    assert_eq!(
        data(&listed)["users"]["edges"].as_array().map(Vec::len),
        Some(4)
    );
    // A value of the wrong GraphQL type is coded too.
    let body = app
        .gql_as(
            &admin,
            CREATE_USER,
            json!({ "input": { "email": "y@example.com", "role": "OWNER" } }),
        )
        .await;
    assert_code(&body, "BAD_USER_INPUT");
    assert_eq!(
        body["errors"][0]["extensions"]["field"], "input.role",
        "{body}"
    );
}

#[tokio::test]
async fn the_user_quota_is_enforced_at_the_limit() {
    let app = spawn_app().await;
    // Fixture tenants allow 10 users and start with 4.
    let acme = app.tenant("acme").await;
    let admin = app.token(&acme, Role::Admin);
    for i in 0..6 {
        let body = app
            .gql_as(
                &admin,
                CREATE_USER,
                new_user(&format!("q{i}@example.com"), "VIEWER"),
            )
            .await;
        data(&body);
    }
    let body = app
        .gql_as(
            &admin,
            CREATE_USER,
            new_user("one-too-many@example.com", "VIEWER"),
        )
        .await;
    assert_code(&body, "QUOTA_EXCEEDED");
}
