//! The audit trail: one entry per mutation, written with it, with the
//! before and after images and the request's facts.

use pulse::auth::Role;
use serde_json::{Value, json};

use crate::common::*;

const AUDIT: &str = "query($f: AuditFilterInput) { auditLog(first: 50, filter: $f) {
    edges { node { action resourceType resourceId actor actorId before after ip userAgent requestId createdAt } } } }";

async fn entries(app: &TestApp, token: &str, filter: Value) -> Vec<Value> {
    let body = app.gql_as(token, AUDIT, json!({ "f": filter })).await;
    data(&body)["auditLog"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

#[tokio::test]
async fn create_user_records_who_what_and_the_request() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let admin = app.token(&acme, Role::Admin);
    let resp = app
        .http
        .post(app.url("/graphql"))
        .bearer_auth(&admin)
        .header("user-agent", "audit-test/1.0")
        .header("x-request-id", "audit-req-1")
        .json(&json!({
            "query": "mutation($input: UserInput!) { createUser(input: $input) { id } }",
            "variables": { "input": { "email": "dee@example.com", "role": "EDITOR", "password": "dee's password" } }
        }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.headers()["x-request-id"], "audit-req-1");
    let body: Value = resp.json().await.expect("json");
    let id = data(&body)["createUser"]["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let found = entries(&app, &admin, json!({ "action": "user.create" })).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let e = &found[0];
    assert_eq!(e["resourceType"], "user");
    assert_eq!(e["resourceId"], id.as_str());
    assert_eq!(e["actor"], acme.user(Role::Admin).email.as_str());
    assert_eq!(e["actorId"], acme.user(Role::Admin).id.to_string().as_str());
    assert!(e["before"].is_null());
    assert_eq!(e["after"]["email"], "dee@example.com");
    assert_eq!(e["after"]["role"], "EDITOR");
    assert_eq!(e["ip"], "127.0.0.1");
    assert_eq!(e["userAgent"], "audit-test/1.0");
    assert_eq!(e["requestId"], "audit-req-1");
    // The image never holds the password or its hash.
    let image = e["after"].to_string();
    assert!(
        !image.contains("password") && !image.contains("argon2"),
        "{image}"
    );
}

#[tokio::test]
async fn tenant_mutations_record_before_and_after_in_both_tenants() {
    let app = spawn_app().await;
    let root = app.tenant("root").await;
    let acme = app.tenant("acme").await;
    let operator = app.token(&root, Role::SuperAdmin);
    let slug = format!("fresh-{}", short_id());
    data(
        &app.gql_as(
            &operator,
            "mutation($i: TenantInput!) { createTenant(input: $i) { id } }",
            json!({ "i": { "slug": slug, "name": "Fresh" } }),
        )
        .await,
    );
    data(
        &app.gql_as(
            &operator,
            "mutation($s: String!) { setTenantStatus(slug: $s, status: TRIAL) { status } }",
            json!({ "s": acme.slug }),
        )
        .await,
    );

    let created = entries(&app, &operator, json!({ "action": "tenant.create" })).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["after"]["slug"], slug.as_str());
    assert!(created[0]["before"].is_null());

    let changed = entries(&app, &operator, json!({ "action": "tenant.set_status" })).await;
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0]["before"]["status"], "ACTIVE");
    assert_eq!(changed[0]["after"]["status"], "TRIAL");

    // Acme's admins see who changed their tenant.
    let theirs = entries(&app, &app.token(&acme, Role::Admin), json!({})).await;
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert_eq!(theirs[0]["action"], "tenant.set_status");
    assert_eq!(
        theirs[0]["actor"],
        root.user(Role::SuperAdmin).email.as_str()
    );
}

#[tokio::test]
async fn login_is_audited_and_failed_mutations_leave_no_entry() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let admin = app.token(&acme, Role::Admin);
    let create = "mutation($input: UserInput!) { createUser(input: $input) { id } }";
    data(
        &app.gql_as(
            &admin,
            create,
            json!({ "input": { "email": "eve@example.com", "role": "VIEWER", "password": "eve password" } }),
        )
        .await,
    );
    // Refused: duplicate email, and a role above the caller's.
    assert_code(
        &app.gql_as(
            &admin,
            create,
            json!({ "input": { "email": "eve@example.com", "role": "VIEWER" } }),
        )
        .await,
        "BAD_USER_INPUT",
    );
    assert_code(
        &app.gql_as(
            &admin,
            create,
            json!({ "input": { "email": "x@example.com", "role": "SUPER_ADMIN" } }),
        )
        .await,
        "FORBIDDEN",
    );
    let login = "mutation($t: String!) { login(tenant: $t, email: \"eve@example.com\", password: \"eve password\") { token } }";
    data(&app.gql_anonymous(login, json!({ "t": acme.slug })).await);

    let all = entries(&app, &admin, json!({})).await;
    let actions: Vec<&str> = all.iter().filter_map(|e| e["action"].as_str()).collect();
    // Newest first.
    assert_eq!(actions, ["user.login", "user.create"]);
    assert_eq!(all[0]["actor"], "eve@example.com");
    let me = app
        .gql_as(
            &admin,
            "{ users(first: 100) { edges { node { email lastLoginAt } } } }",
            json!({}),
        )
        .await;
    let eve = data(&me)["users"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .find(|e| e["node"]["email"] == "eve@example.com")
        .cloned()
        .expect("eve listed");
    assert!(eve["node"]["lastLoginAt"].is_string());
}

#[tokio::test]
async fn only_admins_and_up_read_the_audit_log() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    for role in ROLES {
        let body = app
            .gql_as(&app.token(&acme, role), AUDIT, json!({ "f": null }))
            .await;
        if role.at_least(Role::Admin) {
            data(&body);
        } else {
            assert_code(&body, "FORBIDDEN");
        }
    }
}
