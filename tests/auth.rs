//! Tokens and logins: every way a caller is refused, and the ways in.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pulse::auth::Role;
use pulse::auth::jwt::JwtKeys;
use pulse::config::JwtConfig;
use pulse::entities::tenant::TenantStatus;
use serde_json::{Value, json};

use crate::common::*;

const ME: &str = "{ me { role user { id email } tenant { slug } } }";

fn jwt_config() -> JwtConfig {
    JwtConfig {
        secret: None,
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(30),
    }
}

/// A token signed with the test secret over arbitrary claims.
fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .expect("encode")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn me_code(app: &TestApp, token: &str) -> Option<String> {
    error_code(&app.gql_as(token, ME, json!({})).await).map(str::to_owned)
}

#[tokio::test]
async fn a_valid_token_identifies_user_tenant_and_role() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let body = app
        .gql_as(&app.token(&acme, Role::Editor), ME, json!({}))
        .await;
    let me = &data(&body)["me"];
    assert_eq!(me["role"], "EDITOR");
    assert_eq!(me["tenant"]["slug"], acme.slug.as_str());
    assert_eq!(me["user"]["email"], acme.user(Role::Editor).email.as_str());
}

#[tokio::test]
async fn a_request_without_a_token_is_unauthenticated() {
    let app = spawn_app().await;
    let body = app.gql_anonymous(ME, json!({})).await;
    assert_code(&body, "UNAUTHENTICATED");
}

#[tokio::test]
async fn a_malformed_authorization_header_is_unauthenticated() {
    let app = spawn_app().await;
    let resp = app
        .http
        .post(app.url("/graphql"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .json(&json!({ "query": ME }))
        .send()
        .await
        .expect("send");
    assert_code(&resp.json().await.expect("json"), "UNAUTHENTICATED");
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_unauthenticated() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let forged = JwtKeys::new(b"not-the-server-secret-not-the-server", &jwt_config())
        .mint(
            &acme.user(Role::Admin).id.to_string(),
            &acme.slug,
            Role::Admin,
            Duration::from_secs(600),
        )
        .expect("mint");
    assert_eq!(
        me_code(&app, &forged).await.as_deref(),
        Some("UNAUTHENTICATED")
    );
}

#[tokio::test]
async fn an_expired_token_is_unauthenticated_past_the_leeway_only() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let sub = acme.user(Role::Viewer).id.to_string();
    let claims =
        |exp: i64| json!({ "sub": sub, "tenant": acme.slug, "role": "VIEWER", "exp": exp });
    // Within the default 30 s leeway: clocks drift.
    assert_eq!(me_code(&app, &sign(&claims(now() - 5))).await, None);
    assert_eq!(
        me_code(&app, &sign(&claims(now() - 120))).await.as_deref(),
        Some("UNAUTHENTICATED")
    );
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_unauthenticated() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(
        json!({
            "sub": acme.user(Role::Admin).id.to_string(),
            "tenant": acme.slug,
            "role": "SUPER_ADMIN",
            "exp": now() + 600,
        })
        .to_string(),
    );
    for token in [format!("{header}.{claims}."), format!("{header}.{claims}")] {
        assert_eq!(
            me_code(&app, &token).await.as_deref(),
            Some("UNAUTHENTICATED")
        );
    }
}

#[tokio::test]
async fn a_token_missing_required_claims_is_unauthenticated() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let sub = acme.user(Role::Viewer).id.to_string();
    let without_exp = json!({ "sub": sub, "tenant": acme.slug, "role": "VIEWER" });
    let bad_role = json!({ "sub": sub, "tenant": acme.slug, "role": "OWNER", "exp": now() + 60 });
    for claims in [without_exp, bad_role] {
        assert_eq!(
            me_code(&app, &sign(&claims)).await.as_deref(),
            Some("UNAUTHENTICATED"),
            "{claims}"
        );
    }
}

#[tokio::test]
async fn an_unknown_tenant_or_user_is_unauthenticated() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let unknown_tenant = json!({
        "sub": acme.user(Role::Admin).id.to_string(),
        "tenant": format!("nope-{}", short_id()),
        "role": "ADMIN",
        "exp": now() + 600,
    });
    let unknown_user = json!({
        "sub": uuid::Uuid::now_v7().to_string(),
        "tenant": acme.slug,
        "role": "ADMIN",
        "exp": now() + 600,
    });
    for claims in [unknown_tenant, unknown_user] {
        assert_eq!(
            me_code(&app, &sign(&claims)).await.as_deref(),
            Some("UNAUTHENTICATED")
        );
    }
}

#[tokio::test]
async fn a_user_of_another_tenant_cannot_borrow_this_tenants_slug() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let globex = app.tenant("globex").await;
    // Globex's admin id, but claiming acme.
    let claims = json!({
        "sub": globex.user(Role::Admin).id.to_string(),
        "tenant": acme.slug,
        "role": "ADMIN",
        "exp": now() + 600,
    });
    assert_eq!(
        me_code(&app, &sign(&claims)).await.as_deref(),
        Some("UNAUTHENTICATED")
    );
}

#[tokio::test]
async fn suspended_and_cancelled_tenants_get_tenant_suspended() {
    let app = spawn_app().await;
    for status in [TenantStatus::Suspended, TenantStatus::Cancelled] {
        let t = app.tenant_with("frozen", status).await;
        assert_eq!(
            me_code(&app, &app.token(&t, Role::Admin)).await.as_deref(),
            Some("TENANT_SUSPENDED")
        );
    }
    let trial = app.tenant_with("trial", TenantStatus::Trial).await;
    assert_eq!(me_code(&app, &app.token(&trial, Role::Viewer)).await, None);
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let app = spawn_app_with(|s| {
        s.set("PULSE_JWT_ISSUER", "https://auth.example")
            .set("PULSE_JWT_AUDIENCE", "pulse");
    })
    .await;
    let acme = app.tenant("acme").await;
    let base = json!({
        "sub": acme.user(Role::Viewer).id.to_string(),
        "tenant": acme.slug,
        "role": "VIEWER",
        "exp": now() + 600,
    });
    let with = |iss: &str, aud: &str| {
        let mut c = base.clone();
        c["iss"] = json!(iss);
        c["aud"] = json!(aud);
        sign(&c)
    };
    assert_eq!(
        me_code(&app, &with("https://auth.example", "pulse")).await,
        None
    );
    assert_eq!(
        me_code(&app, &with("https://evil.example", "pulse"))
            .await
            .as_deref(),
        Some("UNAUTHENTICATED")
    );
    assert_eq!(
        me_code(&app, &with("https://auth.example", "other"))
            .await
            .as_deref(),
        Some("UNAUTHENTICATED")
    );
    assert_eq!(
        me_code(&app, &sign(&base)).await.as_deref(),
        Some("UNAUTHENTICATED")
    );
    // The server's own tokens carry both.
    assert_eq!(me_code(&app, &app.token(&acme, Role::Viewer)).await, None);
}

const LOGIN: &str = "mutation($t: String!, $e: String!, $p: String!) {
    login(tenant: $t, email: $e, password: $p) { token user { email role } } }";

const CREATE_USER: &str =
    "mutation($input: UserInput!) { createUser(input: $input) { id email role status } }";

#[tokio::test]
async fn login_issues_a_working_token_for_the_right_password() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let admin = app.token(&acme, Role::Admin);
    let created = app
        .gql_as(
            &admin,
            CREATE_USER,
            json!({ "input": { "email": "Ann@Example.com", "password": "correct horse", "role": "EDITOR" } }),
        )
        .await;
    assert_eq!(data(&created)["createUser"]["status"], "ACTIVE");

    let body = app
        .gql_anonymous(
            LOGIN,
            json!({ "t": acme.slug, "e": "ann@example.com", "p": "correct horse" }),
        )
        .await;
    let login = &data(&body)["login"];
    assert_eq!(login["user"]["role"], "EDITOR");
    let token = login["token"].as_str().expect("token");
    let me = app.gql_as(token, ME, json!({})).await;
    assert_eq!(data(&me)["me"]["user"]["email"], "ann@example.com");
    assert_eq!(data(&me)["me"]["role"], "EDITOR");
}

#[tokio::test]
async fn login_failures_are_indistinguishable() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let admin = app.token(&acme, Role::Admin);
    data(
        &app.gql_as(
            &admin,
            CREATE_USER,
            json!({ "input": { "email": "bo@example.com", "password": "right password", "role": "VIEWER" } }),
        )
        .await,
    );
    let attempts = [
        json!({ "t": acme.slug, "e": "bo@example.com", "p": "wrong password" }),
        json!({ "t": acme.slug, "e": "nobody@example.com", "p": "right password" }),
        json!({ "t": "no-such-tenant", "e": "bo@example.com", "p": "right password" }),
        // Fixture users have no password at all.
        json!({ "t": acme.slug, "e": acme.user(Role::Viewer).email, "p": "anything" }),
    ];
    let mut messages = Vec::new();
    for vars in attempts {
        let body = app.gql_anonymous(LOGIN, vars).await;
        assert_code(&body, "UNAUTHENTICATED");
        assert!(body["data"].is_null(), "{body}");
        messages.push(body["errors"][0]["message"].as_str().map(str::to_owned));
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "messages differ: {messages:?}");
}

#[tokio::test]
async fn login_to_a_suspended_tenant_is_refused_with_tenant_suspended() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let admin = app.token(&acme, Role::Admin);
    data(
        &app.gql_as(
            &admin,
            CREATE_USER,
            json!({ "input": { "email": "cy@example.com", "password": "cy password", "role": "VIEWER" } }),
        )
        .await,
    );
    let root = app.tenant("root").await;
    let suspend =
        "mutation($s: String!) { setTenantStatus(slug: $s, status: SUSPENDED) { status } }";
    data(
        &app.gql_as(
            &app.token(&root, Role::SuperAdmin),
            suspend,
            json!({ "s": acme.slug }),
        )
        .await,
    );
    let body = app
        .gql_anonymous(
            LOGIN,
            json!({ "t": acme.slug, "e": "cy@example.com", "p": "cy password" }),
        )
        .await;
    assert_code(&body, "TENANT_SUSPENDED");
}
