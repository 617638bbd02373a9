//! Tenant administration: SUPER_ADMIN only, validated, and effective at once.

use pulse::auth::Role;
use serde_json::json;

use crate::common::*;

const TENANTS: &str = "{ tenants { slug name status } }";
const CREATE_TENANT: &str = "mutation($input: TenantInput!) { createTenant(input: $input) { id slug name status plan maxUsers } }";
const SET_STATUS: &str = "mutation($s: String!, $st: TenantStatus!) { setTenantStatus(slug: $s, status: $st) { slug status } }";

#[tokio::test]
async fn only_super_admins_list_and_manage_tenants() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let target = app.tenant("target").await;
    for role in ROLES {
        let token = app.token(&acme, role);
        let list = app.gql_as(&token, TENANTS, json!({})).await;
        let slug = format!(
            "made-by-{}-{}",
            role.as_str().to_lowercase().replace('_', "-"),
            short_id()
        );
        let create = app
            .gql_as(
                &token,
                CREATE_TENANT,
                json!({ "input": { "slug": slug, "name": "Made" } }),
            )
            .await;
        let status = app
            .gql_as(
                &token,
                SET_STATUS,
                json!({ "s": target.slug, "st": "TRIAL" }),
            )
            .await;
        if role == Role::SuperAdmin {
            let slugs: Vec<&str> = data(&list)["tenants"]
                .as_array()
                .expect("tenants")
                .iter()
                .filter_map(|t| t["slug"].as_str())
                .collect();
            assert!(slugs.contains(&acme.slug.as_str()) && slugs.contains(&target.slug.as_str()));
            assert_eq!(data(&create)["createTenant"]["slug"], slug.as_str());
            assert_eq!(data(&create)["createTenant"]["status"], "ACTIVE");
            assert_eq!(data(&status)["setTenantStatus"]["status"], "TRIAL");
        } else {
            for body in [&list, &create, &status] {
                assert_code(body, "FORBIDDEN");
            }
        }
    }
}

#[tokio::test]
async fn tenant_input_is_validated() {
    let app = spawn_app().await;
    let root = app.tenant("root").await;
    let token = app.token(&root, Role::SuperAdmin);
    let cases = [
        (json!({ "slug": "Bad Slug!", "name": "X" }), "slug"),
        (json!({ "slug": "a", "name": "X" }), "slug"),
        (json!({ "slug": root.slug, "name": "Taken" }), "slug"),
        (
            json!({ "slug": format!("ok-{}", short_id()), "name": "  " }),
            "name",
        ),
        (
            json!({ "slug": format!("ok-{}", short_id()), "name": "X", "maxUsers": 0 }),
            "maxUsers",
        ),
        (
            json!({ "slug": format!("ok-{}", short_id()), "name": "X", "domain": "not a domain" }),
            "domain",
        ),
    ];
    for (input, field) in cases {
        let body = app
            .gql_as(&token, CREATE_TENANT, json!({ "input": input }))
            .await;
        assert_code(&body, "BAD_USER_INPUT");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
    }
    let unknown = app
        .gql_as(
            &token,
            SET_STATUS,
            json!({ "s": "no-such-tenant", "st": "ACTIVE" }),
        )
        .await;
    assert_code(&unknown, "BAD_USER_INPUT");
}

#[tokio::test]
async fn suspending_a_tenant_locks_out_its_users_until_reactivated() {
    let app = spawn_app().await;
    let root = app.tenant("root").await;
    let acme = app.tenant("acme").await;
    let operator = app.token(&root, Role::SuperAdmin);
    let acme_admin = app.token(&acme, Role::Admin);
    let me = "{ me { role } }";
    data(&app.gql_as(&acme_admin, me, json!({})).await);

    let body = app
        .gql_as(
            &operator,
            SET_STATUS,
            json!({ "s": acme.slug, "st": "SUSPENDED" }),
        )
        .await;
    assert_eq!(data(&body)["setTenantStatus"]["status"], "SUSPENDED");
    for query in [me, "{ users { edges { node { id } } } }"] {
        assert_code(
            &app.gql_as(&acme_admin, query, json!({})).await,
            "TENANT_SUSPENDED",
        );
    }
    // Even a SUPER_ADMIN of a suspended tenant is locked out.
    assert_code(
        &app.gql_as(&app.token(&acme, Role::SuperAdmin), TENANTS, json!({}))
            .await,
        "TENANT_SUSPENDED",
    );

    data(
        &app.gql_as(
            &operator,
            SET_STATUS,
            json!({ "s": acme.slug, "st": "ACTIVE" }),
        )
        .await,
    );
    data(&app.gql_as(&acme_admin, me, json!({})).await);
}
