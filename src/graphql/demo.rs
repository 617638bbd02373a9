//! The demo tenants' saved queries, dashboards and alerts, created through
//! the schema itself (as each tenant's first ADMIN), so they pass every
//! rule a client's would and stay in the shape clients send. Idempotent:
//! a tenant that already has the "Product overview" dashboard keeps its
//! dashboards, and one that has the bounce-rate alert keeps its alerts.

use anyhow::{Context as _, anyhow};
use async_graphql::{Request, Variables};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};

use super::Caller;
use crate::app::AppState;
use crate::auth::{Role, TenantCtx};
use crate::entities::{alert, dashboard, tenant, user};

/// The demo tenants whose dashboards are seeded.
pub const TENANTS: &[&str] = &["acme", "globex"];

/// Creates the demo dashboards where missing; returns how many tenants got
/// them.
pub async fn seed_dashboards(state: &AppState) -> anyhow::Result<usize> {
    let schema = super::build(Some(state.clone()), &state.config.limits);
    let mut seeded = 0;
    for slug in TENANTS {
        let Some(t) = tenant::Entity::find()
            .filter(tenant::Column::Slug.eq(*slug))
            .one(&state.db)
            .await?
        else {
            continue;
        };
        let has_dashboards = dashboard::Entity::find()
            .filter(dashboard::Column::TenantId.eq(t.id))
            .filter(dashboard::Column::Name.eq("Product overview"))
            .one(&state.db)
            .await?
            .is_some();
        let has_alerts = alert::Entity::find()
            .filter(alert::Column::TenantId.eq(t.id))
            .filter(alert::Column::Name.eq(BOUNCE_ALERT))
            .one(&state.db)
            .await?
            .is_some();
        if has_dashboards && has_alerts {
            continue;
        }
        let Some(admin) = user::Entity::find()
            .filter(user::Column::TenantId.eq(t.id))
            .filter(user::Column::Role.eq(Role::Admin))
            .order_by_asc(user::Column::CreatedAt)
            .one(&state.db)
            .await?
        else {
            continue;
        };
        let ctx = TenantCtx {
            tenant_id: t.id,
            tenant_slug: t.slug.clone(),
            user_id: Some(admin.id),
            actor: admin.email.clone(),
            role: Role::Admin,
            policy: Default::default(),
        };
        let run = |query: &'static str, variables: Value| {
            let schema = schema.clone();
            let ctx = ctx.clone();
            async move {
                let request = Request::new(query)
                    .variables(Variables::from_json(variables))
                    .data(Caller::Authenticated(ctx));
                let response = schema.execute(request).await;
                if let Some(e) = response.errors.first() {
                    return Err(anyhow!("{}", e.message));
                }
                response
                    .data
                    .into_json()
                    .context("reading a demo mutation's answer")
            }
        };
        let save = |input: Value| {
            let run = &run;
            async move {
                let saved = run(
                    "mutation($i: SavedQueryInput!) { createSavedQuery(input: $i) { id } }",
                    json!({ "i": input }),
                )
                .await
                .with_context(|| format!("a demo saved query of {slug}"))?;
                anyhow::Ok(saved["createSavedQuery"]["id"].clone())
            }
        };
        if !has_dashboards {
            let saved_id = save(sends_of_campaign()).await?;
            for input in [product_overview(), email_campaigns(&saved_id)] {
                run(
                    "mutation($i: DashboardInput!) { createDashboard(input: $i) { id } }",
                    json!({ "i": input }),
                )
                .await
                .with_context(|| format!("a demo dashboard of {slug}"))?;
            }
        }
        if !has_alerts {
            let bounce_rate = save(bounce_rate()).await?;
            for input in [bounce_alert(&bounce_rate), signup_floor_alert()] {
                run(
                    "mutation($i: AlertInput!) { createAlert(input: $i) { id } }",
                    json!({ "i": input }),
                )
                .await
                .with_context(|| format!("a demo alert of {slug}"))?;
            }
        }
        seeded += 1;
    }
    Ok(seeded)
}

fn last_30_days() -> Value {
    json!({ "last": "30d" })
}

fn product_overview() -> Value {
    json!({
        "name": "Product overview",
        "description": "Active users, sign-ups, revenue, conversion and retention.",
        "tags": ["product"],
        "isPublic": true,
        "range": last_30_days(),
        "refreshInterval": 300,
        "layout": { "columns": 12 },
        "widgets": [
            { "title": "Daily active users", "kind": "LINE", "query": {
                "measure": "COUNT_DISTINCT", "field": "userId", "granularity": "DAY",
                "range": last_30_days() } },
            { "title": "Sign-ups", "kind": "BAR", "query": {
                "measure": "COUNT", "eventTypes": ["signup"], "granularity": "DAY",
                "range": last_30_days() } },
            { "title": "Revenue by plan", "kind": "AREA", "query": {
                "measure": "SUM", "field": "properties.amount", "eventTypes": ["purchase"],
                "groupBy": ["properties.plan"], "granularity": "DAY", "range": last_30_days() } },
            { "title": "Sign-up to purchase", "kind": "FUNNEL", "funnel": {
                "steps": [{ "eventType": "signup" }, { "eventType": "purchase" }],
                "conversionWindow": "7d", "range": last_30_days() } },
            { "title": "Weekly retention", "kind": "RETENTION", "retention": {
                "startEvent": "signup", "returnEvent": "page_view", "period": "WEEK",
                "periods": 4, "range": last_30_days() } }
        ]
    })
}

/// The campaign filter every email widget shares.
fn of_campaign() -> Value {
    json!([{ "field": "properties.campaign", "op": "EQ", "value": "$campaign" }])
}

fn sends_of_campaign() -> Value {
    json!({
        "name": "Emails sent, by day",
        "description": "email.sent of one campaign",
        "isPublic": true,
        "query": { "measure": "COUNT", "eventTypes": ["email.sent"], "granularity": "DAY",
                   "filters": of_campaign(), "range": { "last": "$range" } },
        "parameters": [
            { "name": "campaign", "type": "STRING", "default": "spring-launch" },
            { "name": "range", "type": "TIME_RANGE", "default": last_30_days() }
        ]
    })
}

/// The events of `types` per campaign.
fn per_campaign(types: &[&str]) -> Value {
    json!({ "measure": "COUNT", "eventTypes": types, "groupBy": ["properties.campaign"],
            "range": last_30_days() })
}

/// `name / delivered` per campaign, a ratio in [0, 1]; the series come
/// ranked by it.
fn rate(name: &str, types: &[&str]) -> Value {
    json!({
        "queries": [
            { "name": name, "query": per_campaign(types) },
            { "name": "delivered", "query": per_campaign(&["email.delivered"]) }
        ],
        "expression": format!("{name} / delivered")
    })
}

fn email_campaigns(saved_query: &Value) -> Value {
    json!({
        "name": "Email campaigns",
        "description": "Sends, deliveries and engagement per campaign.",
        "tags": ["email"],
        "isPublic": true,
        "range": last_30_days(),
        "variables": [{ "name": "campaign", "type": "STRING", "default": "spring-launch",
                        "allowed": ["spring-launch", "weekly-digest", "winback", "onboarding"] }],
        "widgets": [
            { "title": "Sent (saved query)", "kind": "LINE", "savedQueryId": saved_query,
              "parameters": { "campaign": "$campaign" } },
            { "title": "Delivered", "kind": "METRIC", "query": {
                "measure": "COUNT", "eventTypes": ["email.delivered"], "filters": of_campaign(),
                "range": last_30_days() } },
            { "title": "Sent by campaign", "kind": "BAR", "query": per_campaign(&["email.sent"]) },
            { "title": "Open rate by campaign", "kind": "BAR",
              "formula": rate("opened", &["email.opened"]) },
            { "title": "Click rate by campaign", "kind": "BAR",
              "formula": rate("clicked", &["email.clicked"]) },
            { "title": "Campaigns ranked by reply rate", "kind": "TABLE",
              "formula": rate("replied", &["email.replied"]) },
            { "title": "Bounce rate by campaign", "kind": "TABLE",
              "formula": rate("bounced", &["email.bounced"]) }
        ]
    })
}

/// The name the alerts' seed is recognised by.
const BOUNCE_ALERT: &str = "Bounce rate above 5 %";

/// Bounced over delivered emails in the last 24 hours, a ratio.
fn bounce_rate() -> Value {
    let count = |kind: &str| json!({ "measure": "COUNT", "eventTypes": [kind], "range": { "last": "$window" } });
    json!({
        "name": "Bounce rate",
        "description": "email.bounced / email.delivered, all campaigns",
        "isPublic": true,
        "formula": {
            "queries": [
                { "name": "bounced", "query": count("email.bounced") },
                { "name": "delivered", "query": count("email.delivered") }
            ],
            "expression": "bounced / delivered"
        },
        "parameters": [{ "name": "window", "type": "STRING", "default": "24h" }]
    })
}

/// Fires while more than 5 % of deliveries bounce (the demo's mailboxes
/// bounce about 13 %, so it fires soon after start-up).
fn bounce_alert(bounce_rate: &Value) -> Value {
    json!({
        "name": BOUNCE_ALERT,
        "description": "Deliverability: more than one email in twenty bounced over the last day.",
        "savedQueryId": bounce_rate,
        "parameters": { "window": "24h" },
        "condition": "ABOVE",
        "threshold": 0.05,
        "evaluateEvery": "1m",
        "forDuration": "2m",
        "keepFiringFor": "10m",
        "labels": { "team": "email", "severity": "warning" }
    })
}

/// Fires when the quietest of the last three hours had no sign-up.
fn signup_floor_alert() -> Value {
    json!({
        "name": "Sign-ups per hour below 1",
        "description": "Some hour of the last three had no sign-up: the sign-up form may be broken.",
        "query": { "measure": "COUNT", "eventTypes": ["signup"], "granularity": "HOUR",
                   "range": { "last": "3h" } },
        "reducer": "MIN",
        "condition": "BELOW",
        "threshold": 1,
        "evaluateEvery": "1m",
        "forDuration": "5m",
        "labels": { "team": "growth", "severity": "critical" }
    })
}
