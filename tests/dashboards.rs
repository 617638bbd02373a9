//! Dashboards: widgets that resolve their own data (variables, filters,
//! range, saved queries, identical queries run once), optimistic
//! concurrency with kept versions, grants and visibility, audit.

use pulse::auth::Role;
use serde_json::{Value, json};

use crate::common::*;

const CREATE: &str = "mutation($i: DashboardInput!) { createDashboard(input: $i) {
    id version myPermission owner { email } widgets { id title kind } } }";
const GET: &str = "query($id: ID!, $v: JSON) { dashboard(id: $id, variables: $v) {
    id name version myPermission
    widgets { title kind data { __typename
        ... on MetricResult { total series { group total } }
        ... on FunnelResult { steps { eventType count } } } } } }";
const UPDATE: &str = "mutation($id: ID!, $i: DashboardInput!, $v: Int!) {
    updateDashboard(id: $id, input: $i, expectedVersion: $v) { version name } }";

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

async fn seeded() -> (TestApp, TestTenant) {
    let app = spawn_app().await;
    let t = app.tenant("dash").await;
    let mut events = Vec::new();
    for (campaign, delivered, opened) in [("spring", 4, 2), ("autumn", 2, 1)] {
        for i in 0..delivered {
            events.push(
                json!({ "type": "email.delivered", "userId": format!("u{i}"),
                                "properties": { "campaign": campaign, "plan": "pro" } }),
            );
        }
        for i in 0..opened {
            events.push(json!({ "type": "email.opened", "userId": format!("u{i}"),
                                "properties": { "campaign": campaign, "plan": "free" } }));
        }
    }
    events.push(json!({ "type": "signup", "userId": "u1" }));
    events.push(json!({ "type": "purchase", "userId": "u1" }));
    ingest(&app, &app.token(&t, Role::Editor), json!(events)).await;
    (app, t)
}

fn count(types: &[&str], extra: Value) -> Value {
    let mut q = json!({ "measure": "COUNT", "eventTypes": types, "range": { "last": "1d" } });
    for (k, v) in extra.as_object().expect("extra") {
        q[k] = v.clone();
    }
    q
}

fn email_dashboard() -> Value {
    json!({
        "name": "Email campaigns",
        "tags": ["email"],
        "variables": [{ "name": "campaign", "type": "STRING", "default": "spring",
                        "allowed": ["spring", "autumn"] }],
        "widgets": [
            { "title": "Delivered", "kind": "METRIC", "query": count(&["email.delivered"], json!({
                "filters": [{ "field": "properties.campaign", "op": "EQ", "value": "$campaign" }] })) },
            { "title": "Delivered again", "kind": "LINE", "query": count(&["email.delivered"], json!({
                "filters": [{ "field": "properties.campaign", "op": "EQ", "value": "$campaign" }] })) },
            { "title": "Opens by campaign", "kind": "BAR", "query": count(&["email.opened"], json!({
                "groupBy": ["properties.campaign"] })) },
            { "title": "Funnel", "kind": "FUNNEL", "funnel": {
                "steps": [{ "eventType": "signup" }, { "eventType": "purchase" }],
                "conversionWindow": "1d", "range": { "last": "1d" } } }
        ]
    })
}

fn metric_queries(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("pulse_metric_queries_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(app: &TestApp) -> String {
    app.http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

#[tokio::test]
async fn widgets_resolve_their_data_with_variables_and_identical_queries_run_once() {
    let (app, t) = seeded().await;
    let editor = app.token(&t, Role::Editor);
    let body = app
        .gql_as(&editor, CREATE, json!({ "i": email_dashboard() }))
        .await;
    let created = &data(&body)["createDashboard"];
    assert_eq!(created["version"], 1);
    assert_eq!(created["myPermission"], "ADMIN");
    assert_eq!(
        created["owner"]["email"],
        t.user(Role::Editor).email.as_str()
    );
    let id = created["id"].clone();

    let before = metric_queries(&scrape(&app).await);
    let body = app.gql_as(&editor, GET, json!({ "id": id })).await;
    let widgets = data(&body)["dashboard"]["widgets"]
        .as_array()
        .expect("widgets")
        .clone();
    // Two identical metric queries and a different one: two metric runs;
    // and the funnel.
    assert_eq!(metric_queries(&scrape(&app).await) - before, 3.0);
    assert_eq!(widgets[0]["data"]["total"], 4.0);
    assert_eq!(widgets[1]["data"]["total"], 4.0);
    assert_eq!(widgets[2]["data"]["total"], 3.0);
    assert_eq!(widgets[3]["data"]["__typename"], "FunnelResult");
    assert_eq!(widgets[3]["data"]["steps"][1]["count"], 1);
    // The same query through `metrics`.
    let direct = app
        .gql_as(
            &editor,
            "query($q: MetricQueryInput!) { metrics(query: $q) { total series { group total } } }",
            json!({ "q": count(&["email.opened"], json!({ "groupBy": ["properties.campaign"] })) }),
        )
        .await;
    assert_eq!(
        widgets[2]["data"]["series"],
        data(&direct)["metrics"]["series"]
    );

    // A viewer's variable value, among the allowed ones.
    let viewer_choice = app
        .gql_as(
            &editor,
            GET,
            json!({ "id": id, "v": { "campaign": "autumn" } }),
        )
        .await;
    assert_eq!(
        data(&viewer_choice)["dashboard"]["widgets"][0]["data"]["total"],
        2.0
    );
    for (v, field) in [
        (json!({ "campaign": "winter" }), "variables.campaign"),
        (json!({ "nope": "x" }), "variables.nope"),
    ] {
        let body = app.gql_as(&editor, GET, json!({ "id": id, "v": v })).await;
        assert_code(&body, "BAD_USER_INPUT");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
    }
}

#[tokio::test]
async fn dashboard_filters_range_and_saved_query_widgets_apply() {
    let (app, t) = seeded().await;
    let editor = app.token(&t, Role::Editor);
    let saved = app
        .gql_as(
            &editor,
            "mutation($i: SavedQueryInput!) { createSavedQuery(input: $i) { id } }",
            json!({ "i": { "name": "Delivered of", "isPublic": true,
                "query": count(&["email.delivered"], json!({
                    "filters": [{ "field": "properties.campaign", "op": "EQ", "value": "$c" }] })),
                "parameters": [{ "name": "c", "type": "STRING", "default": "spring" }] } }),
        )
        .await;
    let saved_id = data(&saved)["createSavedQuery"]["id"].clone();
    let input = json!({
        "name": "Filtered",
        "variables": [{ "name": "campaign", "type": "STRING", "default": "autumn" }],
        "filters": [{ "field": "properties.plan", "op": "EQ", "value": "pro" }],
        "range": { "last": "2d" },
        "widgets": [
            { "title": "All events, pro plan", "kind": "METRIC", "query": { "measure": "COUNT", "range": { "last": "1h" } } },
            { "title": "Saved, bound to the variable", "kind": "TABLE", "savedQueryId": saved_id,
              "parameters": { "c": "$campaign" } }
        ]
    });
    let id =
        data(&app.gql_as(&editor, CREATE, json!({ "i": input })).await)["createDashboard"]["id"]
            .clone();
    let body = app.gql_as(&editor, GET, json!({ "id": id })).await;
    let widgets = &data(&body)["dashboard"]["widgets"];
    // Only delivered events carry plan "pro": 6 of them.
    assert_eq!(widgets[0]["data"]["total"], 6.0);
    assert_eq!(widgets[1]["data"]["total"], 2.0);
}

#[tokio::test]
async fn saves_need_the_current_version_and_old_versions_can_be_restored() {
    let (app, t) = seeded().await;
    let editor = app.token(&t, Role::Editor);
    let id = data(
        &app.gql_as(&editor, CREATE, json!({ "i": email_dashboard() }))
            .await,
    )["createDashboard"]["id"]
        .clone();
    let mut renamed = email_dashboard();
    renamed["name"] = json!("Renamed");
    let body = app
        .gql_as(&editor, UPDATE, json!({ "id": id, "i": renamed, "v": 1 }))
        .await;
    assert_eq!(
        data(&body)["updateDashboard"],
        json!({ "version": 2, "name": "Renamed" })
    );
    // Someone saved in between: the stale save is refused with the version.
    let mut late = email_dashboard();
    late["name"] = json!("Late");
    let body = app
        .gql_as(&editor, UPDATE, json!({ "id": id, "i": late, "v": 1 }))
        .await;
    assert_code(&body, "VERSION_CONFLICT");
    assert_eq!(body["errors"][0]["extensions"]["currentVersion"], 2);

    let versions = app
        .gql_as(
            &editor,
            "query($id: ID!) { dashboard(id: $id) { versions(first: 10) { edges { node { version snapshot } } } } }",
            json!({ "id": id }),
        )
        .await;
    let kept: Vec<i64> = data(&versions)["dashboard"]["versions"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter_map(|e| e["node"]["version"].as_i64())
        .collect();
    assert_eq!(kept, [2, 1]);
    let restored = app
        .gql_as(
            &editor,
            "mutation($id: ID!) { restoreDashboardVersion(id: $id, version: 1) { version name } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        data(&restored)["restoreDashboardVersion"],
        json!({ "version": 3, "name": "Email campaigns" })
    );
    let body = app
        .gql_as(
            &editor,
            "mutation($id: ID!) { restoreDashboardVersion(id: $id, version: 99) { version } }",
            json!({ "id": id }),
        )
        .await;
    assert_code(&body, "BAD_USER_INPUT");

    let published = app
        .gql_as(
            &editor,
            "mutation($id: ID!) { publishDashboard(id: $id) { publishedAt } }",
            json!({ "id": id }),
        )
        .await;
    assert!(data(&published)["publishDashboard"]["publishedAt"].is_string());
    let copy = app
        .gql_as(
            &editor,
            "mutation($id: ID!) { duplicateDashboard(id: $id) { id name version isPublic } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        data(&copy)["duplicateDashboard"]["name"],
        "Copy of Email campaigns"
    );
    assert_eq!(data(&copy)["duplicateDashboard"]["version"], 1);

    let admin = app.token(&t, Role::Admin);
    let audit = app
        .gql_as(
            &admin,
            "{ auditLog(first: 20, filter: { resourceType: \"dashboard\" }) { edges { node { action before after } } } }",
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
            "dashboard.create",
            "dashboard.publish",
            "dashboard.restore",
            "dashboard.update",
            "dashboard.create"
        ]
    );
    let update = &data(&audit)["auditLog"]["edges"][3]["node"];
    assert_eq!(update["before"]["name"], "Email campaigns");
    assert_eq!(update["after"]["name"], "Renamed");
}

#[tokio::test]
async fn private_by_default_grants_bounded_by_role_and_invisible_across_tenants() {
    let (app, t) = seeded().await;
    let other = app.tenant("dash-other").await;
    let owner = app.token(&t, Role::Editor);
    let id = data(
        &app.gql_as(&owner, CREATE, json!({ "i": email_dashboard() }))
            .await,
    )["createDashboard"]["id"]
        .clone();
    let viewer = app.token(&t, Role::Viewer);
    let admin = app.token(&t, Role::Admin);
    let stranger = app.token(&other, Role::SuperAdmin);
    let sees = |token: &str| {
        let (app, token, id) = (&app, token.to_owned(), id.clone());
        async move {
            let body = app
                .gql_as(
                    &token,
                    "query($id: ID!) { dashboard(id: $id) { myPermission } }",
                    json!({ "id": id }),
                )
                .await;
            data(&body)["dashboard"]["myPermission"]
                .as_str()
                .map(str::to_owned)
        }
    };
    assert_eq!(sees(&viewer).await, None);
    assert_eq!(sees(&admin).await.as_deref(), Some("ADMIN"));
    assert_eq!(sees(&stranger).await, None);

    let share = "mutation($id: ID!, $e: String!, $p: DashboardPermission!) {
        shareDashboard(id: $id, userEmail: $e, permission: $p) { id } }";
    let viewer_email = t.user(Role::Viewer).email.clone();
    data(
        &app.gql_as(
            &owner,
            share,
            json!({ "id": id, "e": viewer_email, "p": "EDIT" }),
        )
        .await,
    );
    // The role bounds the grant: the VIEWER views.
    assert_eq!(sees(&viewer).await.as_deref(), Some("VIEW"));
    assert_code(
        &app.gql_as(
            &viewer,
            UPDATE,
            json!({ "id": id, "i": email_dashboard(), "v": 1 }),
        )
        .await,
        "FORBIDDEN",
    );
    // Another editor granted EDIT edits, but cannot share or delete.
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
    assert_eq!(sees(&colleague).await, None);
    let colleague_email = t.user(Role::SuperAdmin).email.clone();
    data(
        &app.gql_as(
            &owner,
            share,
            json!({ "id": id, "e": colleague_email, "p": "EDIT" }),
        )
        .await,
    );
    assert_eq!(sees(&colleague).await.as_deref(), Some("EDIT"));
    data(
        &app.gql_as(
            &colleague,
            UPDATE,
            json!({ "id": id, "i": email_dashboard(), "v": 1 }),
        )
        .await,
    );
    assert_code(
        &app.gql_as(
            &colleague,
            share,
            json!({ "id": id, "e": viewer_email, "p": "VIEW" }),
        )
        .await,
        "FORBIDDEN",
    );
    let delete = "mutation($id: ID!) { deleteDashboard(id: $id) }";
    assert_code(
        &app.gql_as(&colleague, delete, json!({ "id": id })).await,
        "FORBIDDEN",
    );
    // Another tenant's id is as if absent, for every mutation too.
    assert_code(
        &app.gql_as(
            &stranger,
            UPDATE,
            json!({ "id": id, "i": email_dashboard(), "v": 2 }),
        )
        .await,
        "NOT_FOUND",
    );
    assert_eq!(
        data(&app.gql_as(&stranger, delete, json!({ "id": id })).await)["deleteDashboard"],
        false
    );
    // Public: every member views.
    let mut public = email_dashboard();
    public["isPublic"] = json!(true);
    let public_id =
        data(&app.gql_as(&owner, CREATE, json!({ "i": public })).await)["createDashboard"]["id"]
            .clone();
    let body = app
        .gql_as(
            &viewer,
            "query($id: ID!) { dashboard(id: $id) { myPermission } }",
            json!({ "id": public_id }),
        )
        .await;
    assert_eq!(data(&body)["dashboard"]["myPermission"], "VIEW");
    let listed = app
        .gql_as(
            &viewer,
            "{ dashboards(first: 50) { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        data(&listed)["dashboards"]["edges"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let listed = app
        .gql_as(
            &stranger,
            "{ dashboards(first: 50) { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        data(&listed)["dashboards"]["edges"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert_eq!(
        data(&app.gql_as(&owner, delete, json!({ "id": id })).await)["deleteDashboard"],
        true
    );
    assert_eq!(sees(&admin).await, None);
}

#[tokio::test]
async fn bad_dashboards_are_refused_naming_the_field() {
    let (app, t) = seeded().await;
    let editor = app.token(&t, Role::Editor);
    let with = |patch: Value| {
        let mut input = email_dashboard();
        for (k, v) in patch.as_object().expect("patch") {
            input[k] = v.clone();
        }
        input
    };
    for (input, field) in [
        (with(json!({ "name": "" })), "input.name"),
        (with(json!({ "tags": ["ok", ""] })), "input.tags[1]"),
        (
            with(json!({ "refreshInterval": 1 })),
            "input.refreshInterval",
        ),
        (
            with(
                json!({ "widgets": [{ "title": "x", "kind": "FUNNEL", "query": count(&["a"], json!({})) }] }),
            ),
            "input.widgets[0].kind",
        ),
        (
            with(json!({ "widgets": [{ "title": "x", "kind": "LINE" }] })),
            "input.widgets[0]",
        ),
        (
            with(
                json!({ "widgets": [{ "title": "", "kind": "LINE", "query": count(&["a"], json!({})) }] }),
            ),
            "input.widgets[0].title",
        ),
        (with(json!({ "variables": [] })), "input.variables"),
    ] {
        let body = app.gql_as(&editor, CREATE, json!({ "i": input })).await;
        assert_code(&body, "BAD_USER_INPUT");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
    }
    let viewer = app.token(&t, Role::Viewer);
    assert_code(
        &app.gql_as(&viewer, CREATE, json!({ "i": email_dashboard() }))
            .await,
        "FORBIDDEN",
    );
}

#[tokio::test]
async fn share_links_open_read_only_with_locked_variables_until_revoked_or_expired() {
    let (app, t) = seeded().await;
    let other = app.tenant("dash-links").await;
    let owner = app.token(&t, Role::Editor);
    let id = data(
        &app.gql_as(&owner, CREATE, json!({ "i": email_dashboard() }))
            .await,
    )["createDashboard"]["id"]
        .clone();
    let create = "mutation($id: ID!, $e: String!, $l: JSON) {
        createShareLink(dashboardId: $id, expiresIn: $e, lockedVariables: $l) { token link { id expiresAt lockedVariables } } }";
    let body = app
        .gql_as(
            &owner,
            create,
            json!({ "id": id, "e": "7d", "l": { "campaign": "autumn" } }),
        )
        .await;
    let token = data(&body)["createShareLink"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let link_id = data(&body)["createShareLink"]["link"]["id"].clone();
    let shared = "query($t: String!) { sharedDashboard(token: $t) { name myPermission
        widgets { title data { ... on MetricResult { total } } } } }";
    // No login: the locked value, read-only.
    let body = app.gql_anonymous(shared, json!({ "t": token })).await;
    let board = &data(&body)["sharedDashboard"];
    assert_eq!(board["myPermission"], "VIEW");
    assert_eq!(board["widgets"][0]["data"]["total"], 2.0);
    // The viewer cannot widen it: no variables, no grants, no versions.
    let widen = app
        .gql_anonymous(
            "query($t: String!) { sharedDashboard(token: $t, variables: { campaign: \"spring\" }) { name } }",
            json!({ "t": token }),
        )
        .await;
    assert_code(&widen, "GRAPHQL_VALIDATION_FAILED");
    for field in [
        "versions { edges { cursor } }",
        "permissions { permission }",
        "shareLinks { id }",
    ] {
        let body = app
            .gql_anonymous(
                &format!("query($t: String!) {{ sharedDashboard(token: $t) {{ {field} }} }}"),
                json!({ "t": token }),
            )
            .await;
        assert_code(&body, "FORBIDDEN");
    }
    // Tampered, or a different kind of token: refused, said clearly.
    let mut tampered = token.clone();
    let last = tampered.pop().expect("char");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [tampered.as_str(), owner.as_str(), "not-a-token"] {
        let body = app.gql_anonymous(shared, json!({ "t": bad })).await;
        assert_code(&body, "UNAUTHENTICATED");
        assert_eq!(body["errors"][0]["message"], "invalid share link");
    }
    assert_code(
        &app.gql_as(&token, "{ me { role } }", json!({})).await,
        "UNAUTHENTICATED",
    );

    // SHARE is needed to make, list and revoke links.
    let viewer = app.token(&t, Role::Viewer);
    assert_code(
        &app.gql_as(&viewer, create, json!({ "id": id, "e": "1d" }))
            .await,
        "FORBIDDEN",
    );
    let bad_lock = app
        .gql_as(
            &owner,
            create,
            json!({ "id": id, "e": "1d", "l": { "nope": 1 } }),
        )
        .await;
    assert_eq!(
        bad_lock["errors"][0]["extensions"]["field"],
        "lockedVariables.nope"
    );
    let too_long = app
        .gql_as(&owner, create, json!({ "id": id, "e": "400d" }))
        .await;
    assert_eq!(too_long["errors"][0]["extensions"]["field"], "expiresIn");
    let listed = app
        .gql_as(
            &owner,
            "query($id: ID!) { dashboard(id: $id) { shareLinks { id revokedAt } } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(data(&listed)["dashboard"]["shareLinks"][0]["id"], link_id);
    let revoke = "mutation($id: ID!) { revokeShareLink(id: $id) }";
    let stranger = app.token(&other, Role::Admin);
    assert_eq!(
        data(
            &app.gql_as(&stranger, revoke, json!({ "id": link_id }))
                .await
        )["revokeShareLink"],
        false
    );
    assert_eq!(
        data(&app.gql_as(&owner, revoke, json!({ "id": link_id })).await)["revokeShareLink"],
        true
    );
    let body = app.gql_anonymous(shared, json!({ "t": token })).await;
    assert_eq!(body["errors"][0]["message"], "share link revoked");

    // Expiry.
    let body = app
        .gql_as(&owner, create, json!({ "id": id, "e": "1s" }))
        .await;
    let short = data(&body)["createShareLink"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let body = app.gql_anonymous(shared, json!({ "t": short })).await;
    assert_code(&body, "UNAUTHENTICATED");
    assert_eq!(body["errors"][0]["message"], "share link expired");
}

fn statements(text: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with("pulse_db_statements_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Owners and grants load in one batch each, whatever the page size.
#[tokio::test]
async fn listing_dashboards_runs_a_constant_number_of_statements() {
    let (app, t) = seeded().await;
    let owner = app.token(&t, Role::Editor);
    let viewer_email = t.user(Role::Viewer).email.clone();
    let share = "mutation($id: ID!, $e: String!) { shareDashboard(id: $id, userEmail: $e, permission: VIEW) { id } }";
    for i in 0..50 {
        let mut input = email_dashboard();
        input["name"] = json!(format!("Board {i}"));
        let id = data(&app.gql_as(&owner, CREATE, json!({ "i": input })).await)["createDashboard"]
            ["id"]
            .clone();
        if i % 2 == 0 {
            data(
                &app.gql_as(&owner, share, json!({ "id": id, "e": viewer_email }))
                    .await,
            );
        }
    }
    let list = "query($n: Int!) { dashboards(first: $n) { edges { node {
        name owner { email } permissions { permission userId } widgets { title kind }
        versions(first: 2) { edges { node { version } } pageInfo { hasNextPage } } } } } }";
    let mut cost = Vec::new();
    for n in [5, 50] {
        // Both requests verify their token from the database: the 1 s
        // token cache would otherwise spare one of them, depending on how
        // long the other took.
        app.state.tokens.forget_all();
        let before = statements(&scrape(&app).await);
        let body = app.gql_as(&owner, list, json!({ "n": n })).await;
        let edges = data(&body)["dashboards"]["edges"]
            .as_array()
            .expect("edges")
            .clone();
        assert_eq!(edges.len(), n as usize);
        assert_eq!(
            edges[0]["node"]["owner"]["email"],
            t.user(Role::Editor).email.as_str()
        );
        assert_eq!(edges[0]["node"]["permissions"][0]["permission"], "VIEW");
        assert_eq!(
            edges[0]["node"]["widgets"].as_array().map(Vec::len),
            Some(4)
        );
        let versions = &edges[0]["node"]["versions"];
        assert_eq!(versions["edges"][0]["node"]["version"], 1, "{versions}");
        assert_eq!(versions["pageInfo"]["hasNextPage"], false);
        cost.push(statements(&scrape(&app).await) - before);
    }
    assert!(cost[0] > 0.0, "the counter counts: {cost:?}");
    assert_eq!(cost[0], cost[1], "statements for 5 and for 50 dashboards");
}

/// Widgets that reference saved queries load them in one batch, and
/// identical bound queries run once: a dashboard of six such widgets
/// costs what one of two costs.
#[tokio::test]
async fn saved_query_widgets_load_their_queries_in_one_batch() {
    let (app, t) = seeded().await;
    let editor = app.token(&t, Role::Editor);
    let mut ids = Vec::new();
    for i in 0..6 {
        let saved = app
            .gql_as(
                &editor,
                "mutation($i: SavedQueryInput!) { createSavedQuery(input: $i) { id } }",
                json!({ "i": { "name": format!("Delivered {i}"),
                    "query": count(&["email.delivered"], json!({})) } }),
            )
            .await;
        ids.push(data(&saved)["createSavedQuery"]["id"].clone());
    }
    let board = |n: usize| {
        let widgets: Vec<Value> = ids[..n]
            .iter()
            .enumerate()
            .map(
                |(i, id)| json!({ "title": format!("W{i}"), "kind": "METRIC", "savedQueryId": id }),
            )
            .collect();
        json!({ "name": format!("{n} saved"), "widgets": widgets })
    };
    let read = "query($id: ID!) { dashboard(id: $id) { widgets { savedQueryId
        data { ... on MetricResult { total } } } versions(first: 1) { edges { node { version } } } } }";
    let mut cost = Vec::new();
    for n in [2, 6] {
        let id = data(&app.gql_as(&editor, CREATE, json!({ "i": board(n) })).await)
            ["createDashboard"]["id"]
            .clone();
        let before = statements(&scrape(&app).await);
        let body = app.gql_as(&editor, read, json!({ "id": id })).await;
        let widgets = data(&body)["dashboard"]["widgets"]
            .as_array()
            .expect("widgets")
            .clone();
        assert_eq!(widgets.len(), n);
        for w in &widgets {
            assert_eq!(w["data"]["total"], 6.0, "{body}");
        }
        cost.push(statements(&scrape(&app).await) - before);
    }
    assert!(cost[0] > 0.0, "the counter counts: {cost:?}");
    assert_eq!(
        cost[0], cost[1],
        "statements for 2 and for 6 saved-query widgets"
    );

    // A private saved query of someone else stays hidden behind a widget.
    let other = app.token(&t, Role::Admin);
    let private = app
        .gql_as(
            &other,
            "mutation($i: SavedQueryInput!) { createSavedQuery(input: $i) { id } }",
            json!({ "i": { "name": "Mine", "query": count(&["email.delivered"], json!({})) } }),
        )
        .await;
    let hidden = data(&private)["createSavedQuery"]["id"].clone();
    let input = json!({ "name": "Peek", "widgets": [
        { "title": "Theirs", "kind": "METRIC", "savedQueryId": hidden } ] });
    let created = app.gql_as(&editor, CREATE, json!({ "i": input })).await;
    let peek = data(&created)["createDashboard"]["id"].clone();
    let body = app.gql_as(&editor, read, json!({ "id": peek })).await;
    assert_code(&body, "NOT_FOUND");
    assert_eq!(
        body["errors"][0]["path"],
        json!(["dashboard", "widgets", 0, "data"])
    );
    assert!(
        body["data"]["dashboard"]["widgets"][0]["data"].is_null(),
        "{body}"
    );
    // Its owner's dashboard shows it.
    let theirs = app.gql_as(&other, CREATE, json!({ "i": input })).await;
    let theirs = data(&theirs)["createDashboard"]["id"].clone();
    let body = app.gql_as(&other, read, json!({ "id": theirs })).await;
    assert_eq!(data(&body)["dashboard"]["widgets"][0]["data"]["total"], 6.0);
}

#[tokio::test]
async fn the_demo_dashboards_are_seeded_once_and_every_widget_resolves() {
    let app = spawn_isolated_app().await;
    let db = &app.state.db;
    pulse::domain::demo::seed(db).await.expect("accounts");
    pulse::domain::demo::seed_n_events(db, &app.state.writer, 3_000)
        .await
        .expect("events");
    assert_eq!(
        pulse::graphql::demo::seed_dashboards(&app.state)
            .await
            .expect("seed"),
        2
    );
    assert_eq!(
        pulse::graphql::demo::seed_dashboards(&app.state)
            .await
            .expect("again"),
        0
    );
    let viewer = app
        .state
        .keys
        .mint(
            "viewer@acme.example",
            "acme",
            Role::Viewer,
            std::time::Duration::from_secs(60),
        )
        .expect("mint");
    let list = app
        .gql_as(
            &viewer,
            "{ dashboards(first: 10) { edges { node { id name } } } }",
            json!({}),
        )
        .await;
    let boards: Vec<(String, Value)> = data(&list)["dashboards"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e["node"]["name"].as_str().unwrap_or_default().to_owned(),
                e["node"]["id"].clone(),
            )
        })
        .collect();
    let names: Vec<&str> = boards.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Product overview", "Email campaigns"]);
    for (name, id) in &boards {
        let body = app.gql_as(&viewer, GET, json!({ "id": id })).await;
        let widgets = data(&body)["dashboard"]["widgets"]
            .as_array()
            .expect("widgets")
            .clone();
        assert!(widgets.len() >= 5, "{name}");
        for w in &widgets {
            assert!(w["data"]["__typename"].is_string(), "{name}: {w}");
        }
    }
    let email = &boards[1].1;
    let body = app
        .gql_as(
            &viewer,
            GET,
            json!({ "id": email, "v": { "campaign": "winback" } }),
        )
        .await;
    assert!(
        data(&body)["dashboard"]["widgets"][1]["data"]["total"]
            .as_f64()
            .is_some()
    );
}

fn open_rate() -> Value {
    let per_campaign = |t: &str| {
        json!({ "measure": "COUNT", "eventTypes": [t],
        "groupBy": ["properties.campaign"], "range": { "last": "1d" } })
    };
    json!({ "queries": [
        { "name": "opened", "query": per_campaign("email.opened") },
        { "name": "delivered", "query": per_campaign("email.delivered") }
    ], "expression": "opened / delivered" })
}

#[tokio::test]
async fn formulas_are_widgets_and_saved_queries_too() {
    let (app, t) = seeded().await;
    let editor = app.token(&t, Role::Editor);
    let saved = app
        .gql_as(
            &editor,
            "mutation($i: SavedQueryInput!) { createSavedQuery(input: $i) { id kind problem } }",
            json!({ "i": { "name": "Open rate", "formula": open_rate() } }),
        )
        .await;
    assert_eq!(data(&saved)["createSavedQuery"]["kind"], "FORMULA");
    let id = data(&saved)["createSavedQuery"]["id"].clone();
    let run = app
        .gql_as(
            &editor,
            "query($id: ID!) { runSavedQuery(id: $id) { ... on MetricResult { total series { group total } } } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(data(&run)["runSavedQuery"]["total"], 0.5);
    let input = json!({ "name": "Rates", "range": { "last": "2d" }, "widgets": [
        { "title": "Open rate", "kind": "TABLE", "formula": open_rate() },
        { "title": "Open rate (saved)", "kind": "METRIC", "savedQueryId": id } ] });
    let board = data(&app.gql_as(&editor, CREATE, json!({ "i": input })).await)["createDashboard"]
        ["id"]
        .clone();
    let body = app
        .gql_as(
            &editor,
            "query($id: ID!) { dashboard(id: $id) { widgets { data { ... on MetricResult { total series { group total } } } } } }",
            json!({ "id": board }),
        )
        .await;
    let widgets = &data(&body)["dashboard"]["widgets"];
    assert_eq!(widgets[0]["data"]["total"], 0.5);
    let rates: Vec<(String, f64)> = widgets[0]["data"]["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| {
            (
                s["group"]["properties.campaign"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                s["total"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    assert_eq!(rates.len(), 2, "{rates:?}");
    assert!(rates.iter().all(|(_, r)| *r == 0.5), "{rates:?}");
    assert_eq!(widgets[1]["data"]["total"], 0.5);
    let bad = json!({ "name": "Bad", "widgets": [{ "title": "x", "kind": "FUNNEL", "formula": open_rate() }] });
    let body = app.gql_as(&editor, CREATE, json!({ "i": bad })).await;
    assert_eq!(
        body["errors"][0]["extensions"]["field"],
        "input.widgets[0].kind"
    );
}

async fn cache_lookups(app: &TestApp) -> f64 {
    app.counter("pulse_cache_hits_total").await + app.counter("pulse_cache_misses_total").await
}

/// A query shared by a widget and by formulas of other widgets runs once
/// per dashboard request: counted by the cache's bucket lookups, which
/// every run of a bucketed COUNT makes once per whole bucket.
#[tokio::test]
async fn a_query_shared_by_widgets_and_formulas_runs_once() {
    let (app, t) = seeded().await;
    let editor = app.token(&t, Role::Editor);
    let midnight = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc();
    let range = json!({ "from": (midnight - chrono::Duration::days(3)).to_rfc3339(),
                        "to": midnight.to_rfc3339() });
    // The dashboard's range replaces each query's.
    let per_day = |t: &str| {
        json!({ "measure": "COUNT", "eventTypes": [t], "granularity": "DAY",
                "range": { "last": "1d" } })
    };
    let rate = json!({ "queries": [
        { "name": "opened", "query": per_day("email.opened") },
        { "name": "delivered", "query": per_day("email.delivered") }
    ], "expression": "opened / delivered" });
    let twice = json!({ "queries": [
        { "name": "delivered", "query": per_day("email.delivered") }
    ], "expression": "delivered * 2" });
    let input = json!({ "name": "Shared", "range": { "from": range["from"], "to": range["to"] },
        "widgets": [
            { "title": "Delivered", "kind": "LINE", "query": per_day("email.delivered") },
            { "title": "Open rate", "kind": "LINE", "formula": rate },
            { "title": "Twice", "kind": "METRIC", "formula": twice } ] });
    let created = app.gql_as(&editor, CREATE, json!({ "i": input })).await;
    let id = data(&created)["createDashboard"]["id"].clone();
    let read = "query($id: ID!) { dashboard(id: $id) { widgets { title
        data { ... on MetricResult { total } } } } }";
    let before = cache_lookups(&app).await;
    let body = app.gql_as(&editor, read, json!({ "id": id })).await;
    let widgets = &data(&body)["dashboard"]["widgets"];
    // The seeded events are of today, outside the range: all zero, but
    // each widget answered.
    for w in widgets.as_array().expect("widgets") {
        assert!(w["data"].is_object(), "{body}");
    }
    // Two distinct plans (delivered, opened) × three whole days; without
    // sharing, delivered would run three times (9 + 3 lookups).
    assert_eq!(cache_lookups(&app).await - before, 6.0, "{body}");
}

#[tokio::test]
async fn a_share_link_spends_the_owning_tenants_query_rate() {
    let (app, t) = seeded().await;
    let owner = app.token(&t, Role::Editor);
    let id = data(
        &app.gql_as(&owner, CREATE, json!({ "i": email_dashboard() }))
            .await,
    )["createDashboard"]["id"]
        .clone();
    let body = app
        .gql_as(
            &owner,
            "mutation($id: ID!) { createShareLink(dashboardId: $id, expiresIn: \"1d\") { token } }",
            json!({ "id": id }),
        )
        .await;
    let token = data(&body)["createShareLink"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    app.set_plan(
        &t,
        "team",
        json!({ "limits": { "queries": { "per_tenant": 100, "per_user": 2 } } }),
    )
    .await;
    let shared = "query($t: String!) { sharedDashboard(token: $t) { name } }";
    for _ in 0..2 {
        let body = app.gql_anonymous(shared, json!({ "t": token })).await;
        assert!(data(&body)["sharedDashboard"]["name"].is_string(), "{body}");
    }
    assert_code(
        &app.gql_anonymous(shared, json!({ "t": token })).await,
        "RATE_LIMITED",
    );
    // The tenant's own users are not the link: they go on.
    let me = app.gql_as(&owner, "{ me { role } }", json!({})).await;
    assert!(me.get("errors").is_none(), "{me}");
}
