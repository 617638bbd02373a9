//! Alerts: a metric watched on a schedule, held to a condition, moved
//! through a state machine, and announced to webhooks.
//!
//! - [`state_machine`]: the pure transition function.
//! - [`evaluate`]: reducers, conditions, and running the query.
//! - [`schedule`]: which instance evaluates which alert (a lease on the
//!   row), and recording an evaluation's result, transition, history and
//!   deliveries in one transaction.
//! - [`webhooks`]: signing and delivering notifications, with retries.
//!
//! This module owns the definitions: validation, who may change what, the
//! audit trail, and reading history. Every member of the tenant sees its
//! alerts (webhook secrets never leave); `EDITOR`s create them; only the
//! owner and `ADMIN`s change, silence or delete one.

pub mod evaluate;
pub mod schedule;
pub mod state_machine;
pub mod webhooks;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::audit::{self, Actor, Change};
use super::page::{Page, PageRequest};
use crate::auth::{RequestMeta, Role, TenantCtx};
use crate::db::{scoped, scoped_write};
use crate::entities::{alert, alert_delivery, alert_history};
use crate::error::{AppError, AppResult};

pub use evaluate::{AlertQuery, Condition, Reducer, Rule};
pub use state_machine::{NoDataPolicy, Outcome, Position, State, Timing};

pub const MAX_WEBHOOKS: usize = 5;
pub const MAX_HEADERS: usize = 10;
pub const MAX_LABELS: usize = 20;
/// The longest `forDuration` and `keepFiringFor`.
pub const MAX_HOLD: Duration = Duration::from_secs(7 * 86_400);
/// The longest `evaluateEvery`.
pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);
/// The furthest a silence may reach.
pub const MAX_SILENCE: chrono::Duration = chrono::Duration::days(90);

/// Headers a webhook may not set: the transport's own and Pulse's
/// signature headers.
const RESERVED_HEADERS: [&str; 7] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "user-agent",
    "expect",
];

/// A webhook target as stored (inside `alerts.webhooks`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The HMAC key of `X-Pulse-Signature`; never returned by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// A webhook as a client gives it. On update, naming an existing
/// webhook's `id` without a `secret` keeps its secret.
#[derive(Clone, Debug, Default)]
pub struct WebhookInput {
    pub id: Option<Uuid>,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub secret: Option<String>,
}

/// Where an alert's numbers come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A `MetricQueryInput`, stored as its JSON.
    Inline(Value),
    /// A saved query (metric or formula) with values for its parameters.
    Saved {
        id: Uuid,
        parameters: Map<String, Value>,
    },
}

/// What a client saves; the caller has checked that the source reads as
/// a metric or formula query with a relative range.
#[derive(Clone, Debug)]
pub struct AlertInput {
    pub name: String,
    pub description: Option<String>,
    pub source: Source,
    pub rule: Rule,
    pub evaluate_every: Duration,
    pub for_duration: Duration,
    pub keep_firing_for: Duration,
    pub no_data: NoDataPolicy,
    pub is_active: bool,
    pub labels: BTreeMap<String, String>,
    pub webhooks: Vec<WebhookInput>,
    pub dashboard_id: Option<Uuid>,
}

/// What the definition rules depend on in the deployment's settings.
#[derive(Clone, Copy, Debug)]
pub struct DefinitionLimits {
    /// The shortest `evaluateEvery` (`PULSE_ALERT_MIN_INTERVAL`).
    pub min_interval: Duration,
    /// Most alerts per tenant (`PULSE_MAX_ALERTS_PER_TENANT`).
    pub per_tenant: u64,
}

/// An alert as read: its row, with the parts stored as strings and JSON
/// read back.
#[derive(Clone, Debug)]
pub struct Alert {
    pub model: alert::Model,
}

impl Alert {
    pub fn state(&self) -> State {
        State::parse(&self.model.state).unwrap_or(State::Error)
    }

    pub fn position(&self) -> Position {
        Position {
            state: self.state(),
            since: self.model.state_since,
        }
    }

    pub fn rule(&self) -> AppResult<Rule> {
        let corrupt = |what: &str| {
            AppError::internal(anyhow::anyhow!(
                "alert {} has an unknown {what}",
                self.model.id
            ))
        };
        Ok(Rule {
            reducer: Reducer::parse(&self.model.reducer).ok_or_else(|| corrupt("reducer"))?,
            condition: Condition::parse(&self.model.condition)
                .ok_or_else(|| corrupt("condition"))?,
            threshold: self.model.threshold,
        })
    }

    pub fn timing(&self) -> Timing {
        Timing {
            for_duration: chrono::Duration::seconds(self.model.for_secs),
            keep_firing_for: chrono::Duration::seconds(self.model.keep_firing_for_secs),
            no_data: NoDataPolicy::parse(&self.model.no_data).unwrap_or(NoDataPolicy::NoData),
        }
    }

    pub fn every(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.model.evaluate_every_secs.max(1))
    }

    pub fn webhooks(&self) -> Vec<Webhook> {
        serde_json::from_value(self.model.webhooks.clone()).unwrap_or_default()
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        serde_json::from_value(self.model.labels.clone()).unwrap_or_default()
    }

    pub fn is_silenced(&self, at: DateTime<Utc>) -> bool {
        self.model.silenced_until.is_some_and(|until| until > at)
    }
}

/// One transition, with what became of its notifications.
#[derive(Clone, Debug)]
pub struct HistoryEntry {
    pub model: alert_history::Model,
    pub deliveries: Vec<alert_delivery::Model>,
}

fn validate(input: &AlertInput, limits: &DefinitionLimits) -> AppResult<(String, Option<String>)> {
    let name = input.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(AppError::bad_input(
            "input.name",
            "must be 1 to 200 characters",
        ));
    }
    let description = match input.description.as_deref().map(str::trim) {
        Some(d) if d.chars().count() > 2_000 => {
            return Err(AppError::bad_input(
                "input.description",
                "at most 2000 characters",
            ));
        }
        Some("") | None => None,
        Some(d) => Some(d.to_owned()),
    };
    if !input.rule.threshold.is_finite() {
        return Err(AppError::bad_input(
            "input.threshold",
            "must be a finite number",
        ));
    }
    if input.evaluate_every < limits.min_interval || input.evaluate_every > MAX_INTERVAL {
        return Err(AppError::bad_input(
            "input.evaluateEvery",
            format!(
                "must be from {}s to 1d",
                limits.min_interval.as_secs().max(1)
            ),
        ));
    }
    for (value, at) in [
        (input.for_duration, "input.forDuration"),
        (input.keep_firing_for, "input.keepFiringFor"),
    ] {
        if value > MAX_HOLD {
            return Err(AppError::bad_input(at, "must be at most 7d"));
        }
    }
    if input.labels.len() > MAX_LABELS {
        return Err(AppError::bad_input(
            "input.labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (key, value) in &input.labels {
        let valid_key = (1..=64).contains(&key.len())
            && key.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_key {
            return Err(AppError::bad_input(
                format!("input.labels.{key}"),
                "label names are [a-z_][a-z0-9_]*, at most 64 characters",
            ));
        }
        if value.chars().count() > 200 {
            return Err(AppError::bad_input(
                format!("input.labels.{key}"),
                "at most 200 characters",
            ));
        }
    }
    if input.webhooks.len() > MAX_WEBHOOKS {
        return Err(AppError::bad_input(
            "input.webhooks",
            format!("at most {MAX_WEBHOOKS} webhooks"),
        ));
    }
    for (i, w) in input.webhooks.iter().enumerate() {
        validate_webhook(w, &format!("input.webhooks[{i}]"))?;
    }
    if let Source::Saved { parameters, .. } = &input.source
        && Value::Object(parameters.clone()).to_string().len() > 16 * 1024
    {
        return Err(AppError::bad_input("input.parameters", "at most 16 KiB"));
    }
    if let Source::Inline(query) = &input.source
        && query.to_string().len() > super::saved_queries::MAX_DEFINITION_BYTES
    {
        return Err(AppError::bad_input("input.query", "too large"));
    }
    Ok((name, description))
}

fn validate_webhook(w: &WebhookInput, at: &str) -> AppResult<()> {
    let url = url::Url::parse(w.url.trim())
        .map_err(|e| AppError::bad_input(format!("{at}.url"), format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || w.url.len() > 2_048 {
        return Err(AppError::bad_input(
            format!("{at}.url"),
            "an http:// or https:// URL with a host, at most 2048 characters",
        ));
    }
    if let Some(secret) = &w.secret
        && !(16..=256).contains(&secret.len())
    {
        return Err(AppError::bad_input(
            format!("{at}.secret"),
            "16 to 256 characters",
        ));
    }
    if w.headers.len() > MAX_HEADERS {
        return Err(AppError::bad_input(
            format!("{at}.headers"),
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    for (name, value) in &w.headers {
        let lower = name.to_ascii_lowercase();
        let token = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token || RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-pulse-") {
            return Err(AppError::bad_input(
                format!("{at}.headers.{name}"),
                "not a header name a webhook may set",
            ));
        }
        if value.len() > 1_024 || value.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(AppError::bad_input(
                format!("{at}.headers.{name}"),
                "values are at most 1024 printable characters",
            ));
        }
    }
    Ok(())
}

/// The stored webhooks for `given`, keeping the secrets of `current`
/// ones named by id without a new secret.
fn webhooks_to_store(given: &[WebhookInput], current: &[Webhook]) -> AppResult<Value> {
    let stored: Vec<Webhook> = given
        .iter()
        .map(|w| {
            let kept =
                w.id.and_then(|id| current.iter().find(|c| c.id == id))
                    .and_then(|c| c.secret.clone());
            Webhook {
                id: w
                    .id
                    .filter(|id| current.iter().any(|c| c.id == *id))
                    .unwrap_or_else(Uuid::now_v7),
                url: w.url.trim().to_owned(),
                headers: w.headers.clone(),
                secret: w.secret.clone().or(kept),
            }
        })
        .collect();
    serde_json::to_value(stored).map_err(AppError::internal)
}

fn require_editor(ctx: &TenantCtx) -> AppResult<()> {
    if ctx.role.at_least(Role::Editor) {
        Ok(())
    } else {
        Err(AppError::Forbidden("requires role EDITOR or higher".into()))
    }
}

/// The caller's tenant's alert `id`, read for a change the caller may
/// make (`NOT_FOUND` / `FORBIDDEN` otherwise).
async fn changeable(
    txn: &sea_orm::DatabaseTransaction,
    caller: &TenantCtx,
    id: Uuid,
) -> AppResult<alert::Model> {
    let current = alert::Entity::find_by_id(id)
        .filter(alert::Column::TenantId.eq(caller.tenant_id))
        .one(txn)
        .await?
        .ok_or(AppError::NotFound("alert"))?;
    may_change(caller, &current)?;
    Ok(current)
}

/// Only the owner and the tenant's `ADMIN`s change an alert.
fn may_change(ctx: &TenantCtx, m: &alert::Model) -> AppResult<()> {
    if ctx.role.at_least(Role::Admin) || (m.owner_id.is_some() && m.owner_id == ctx.user_id) {
        Ok(())
    } else {
        Err(AppError::Forbidden(
            "only the alert's owner or an ADMIN may change it".into(),
        ))
    }
}

/// What the audit trail keeps of an alert: the definition, without
/// webhook secrets.
pub fn audit_image(m: &alert::Model) -> Value {
    let alert = Alert { model: m.clone() };
    let webhooks: Vec<Value> = alert
        .webhooks()
        .iter()
        .map(|w| json!({"id": w.id, "url": w.url, "headers": w.headers.keys().collect::<Vec<_>>(), "hasSecret": w.secret.is_some()}))
        .collect();
    json!({
        "id": m.id,
        "name": m.name,
        "description": m.description,
        "query": m.query,
        "savedQueryId": m.saved_query_id,
        "parameters": m.parameters,
        "reducer": m.reducer,
        "condition": m.condition,
        "threshold": m.threshold,
        "evaluateEverySecs": m.evaluate_every_secs,
        "forSecs": m.for_secs,
        "keepFiringForSecs": m.keep_firing_for_secs,
        "noData": m.no_data,
        "isActive": m.is_active,
        "labels": m.labels,
        "webhooks": webhooks,
        "dashboardId": m.dashboard_id,
        "ownerId": m.owner_id,
        "silencedUntil": m.silenced_until,
        "silenceReason": m.silence_reason,
    })
}

async fn record(
    txn: &sea_orm::DatabaseTransaction,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    action: &'static str,
    before: Option<&alert::Model>,
    after: Option<&alert::Model>,
) -> AppResult<()> {
    audit::record(
        txn,
        ctx.tenant_id,
        &Actor::of(ctx),
        meta,
        Change {
            action,
            resource_type: "alert",
            resource_id: after.or(before).map(|m| m.id.to_string()),
            before: before.map(audit_image),
            after: after.map(audit_image),
        },
    )
    .await
}

fn source_columns(source: &Source) -> (Option<Value>, Option<Uuid>, Option<Value>) {
    match source {
        Source::Inline(q) => (Some(q.clone()), None, None),
        Source::Saved { id, parameters } => {
            (None, Some(*id), Some(Value::Object(parameters.clone())))
        }
    }
}

pub async fn create(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    input: AlertInput,
    limits: DefinitionLimits,
) -> AppResult<Alert> {
    require_editor(ctx)?;
    let (name, description) = validate(&input, &limits)?;
    let webhooks = webhooks_to_store(&input.webhooks, &[])?;
    let labels = serde_json::to_value(&input.labels).map_err(AppError::internal)?;
    let (query, saved_query_id, parameters) = source_columns(&input.source);
    let (caller, meta) = (ctx.clone(), meta.clone());
    let model = scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let count = alert::Entity::find()
                .filter(alert::Column::TenantId.eq(caller.tenant_id))
                .count(txn)
                .await?;
            if count >= limits.per_tenant {
                return Err(AppError::LimitExceeded(format!(
                    "this tenant already has {count} alerts, the most it may have; delete one first"
                )));
            }
            let now = Utc::now();
            let created = alert::Entity::insert(alert::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(caller.tenant_id),
                owner_id: Set(caller.user_id),
                name: Set(name),
                description: Set(description),
                query: Set(query),
                saved_query_id: Set(saved_query_id),
                parameters: Set(parameters),
                reducer: Set(input.rule.reducer.as_str().to_owned()),
                condition: Set(input.rule.condition.as_str().to_owned()),
                threshold: Set(input.rule.threshold),
                evaluate_every_secs: Set(input.evaluate_every.as_secs() as i64),
                for_secs: Set(input.for_duration.as_secs() as i64),
                keep_firing_for_secs: Set(input.keep_firing_for.as_secs() as i64),
                no_data: Set(input.no_data.as_str().to_owned()),
                is_active: Set(input.is_active),
                labels: Set(labels),
                webhooks: Set(webhooks),
                dashboard_id: Set(input.dashboard_id),
                state: Set(State::Ok.as_str().to_owned()),
                state_since: Set(now),
                last_value: Set(None),
                last_error: Set(None),
                last_evaluated_at: Set(None),
                last_triggered_at: Set(None),
                next_evaluation_at: Set(now),
                lease_owner: Set(None),
                lease_until: Set(None),
                silenced_until: Set(None),
                silence_reason: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
            })
            .exec_with_returning(txn)
            .await?;
            record(txn, &caller, &meta, "alert.create", None, Some(&created)).await?;
            Ok(created)
        })
    })
    .await?;
    Ok(Alert { model })
}

/// Replaces an alert's definition; its state and history stay, and it is
/// evaluated again at once under the new definition.
pub async fn update(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    id: Uuid,
    input: AlertInput,
    limits: DefinitionLimits,
) -> AppResult<Alert> {
    require_editor(ctx)?;
    let (name, description) = validate(&input, &limits)?;
    let labels = serde_json::to_value(&input.labels).map_err(AppError::internal)?;
    let (query, saved_query_id, parameters) = source_columns(&input.source);
    let (caller, meta) = (ctx.clone(), meta.clone());
    let model = scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let current = changeable(txn, &caller, id).await?;
            let webhooks = webhooks_to_store(
                &input.webhooks,
                &Alert {
                    model: current.clone(),
                }
                .webhooks(),
            )?;
            let before = current.clone();
            let mut active: alert::ActiveModel = current.into();
            active.name = Set(name);
            active.description = Set(description);
            active.query = Set(query);
            active.saved_query_id = Set(saved_query_id);
            active.parameters = Set(parameters);
            active.reducer = Set(input.rule.reducer.as_str().to_owned());
            active.condition = Set(input.rule.condition.as_str().to_owned());
            active.threshold = Set(input.rule.threshold);
            active.evaluate_every_secs = Set(input.evaluate_every.as_secs() as i64);
            active.for_secs = Set(input.for_duration.as_secs() as i64);
            active.keep_firing_for_secs = Set(input.keep_firing_for.as_secs() as i64);
            active.no_data = Set(input.no_data.as_str().to_owned());
            active.is_active = Set(input.is_active);
            active.labels = Set(labels);
            active.webhooks = Set(webhooks);
            active.dashboard_id = Set(input.dashboard_id);
            let now = Utc::now();
            active.next_evaluation_at = Set(now);
            active.updated_at = Set(now);
            let updated = active.update(txn).await?;
            record(
                txn,
                &caller,
                &meta,
                "alert.update",
                Some(&before),
                Some(&updated),
            )
            .await?;
            Ok(updated)
        })
    })
    .await?;
    Ok(Alert { model })
}

pub async fn delete(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    id: Uuid,
) -> AppResult<bool> {
    require_editor(ctx)?;
    let (caller, meta) = (ctx.clone(), meta.clone());
    scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let Some(current) = alert::Entity::find_by_id(id)
                .filter(alert::Column::TenantId.eq(caller.tenant_id))
                .one(txn)
                .await?
            else {
                return Ok(false);
            };
            may_change(&caller, &current)?;
            alert::Entity::delete_by_id(current.id)
                .filter(alert::Column::TenantId.eq(caller.tenant_id))
                .exec(txn)
                .await?;
            record(txn, &caller, &meta, "alert.delete", Some(&current), None).await?;
            Ok(true)
        })
    })
    .await
}

/// Suppresses an alert's notifications (not its evaluation) until
/// `until`; `None` lifts a silence.
pub async fn silence(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    id: Uuid,
    until: Option<DateTime<Utc>>,
    reason: Option<String>,
) -> AppResult<Alert> {
    require_editor(ctx)?;
    let now = Utc::now();
    if let Some(until) = until {
        if until <= now {
            return Err(AppError::bad_input("until", "must be in the future"));
        }
        if until - now > MAX_SILENCE {
            return Err(AppError::bad_input("until", "at most 90 days ahead"));
        }
    }
    let reason = match reason.as_deref().map(str::trim) {
        Some(r) if r.chars().count() > 500 => {
            return Err(AppError::bad_input("reason", "at most 500 characters"));
        }
        Some("") | None => None,
        Some(r) => Some(r.to_owned()),
    };
    let (caller, meta) = (ctx.clone(), meta.clone());
    let model = scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let current = changeable(txn, &caller, id).await?;
            let before = current.clone();
            let mut active: alert::ActiveModel = current.into();
            active.silenced_until = Set(until);
            active.silence_reason = Set(until.and(reason));
            active.updated_at = Set(Utc::now());
            let updated = active.update(txn).await?;
            let action = if until.is_some() {
                "alert.silence"
            } else {
                "alert.unsilence"
            };
            record(txn, &caller, &meta, action, Some(&before), Some(&updated)).await?;
            Ok(updated)
        })
    })
    .await?;
    Ok(Alert { model })
}

pub async fn list(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    page: PageRequest,
) -> AppResult<Page<Alert>> {
    let tenant = ctx.tenant_id;
    let rows = scoped(db, ctx, move |txn| {
        Box::pin(async move {
            let mut query = alert::Entity::find()
                .filter(alert::Column::TenantId.eq(tenant))
                .order_by_asc(alert::Column::Id)
                .limit(page.first + 1);
            if let Some(after) = page.after {
                query = query.filter(alert::Column::Id.gt(after));
            }
            Ok(query.all(txn).await?)
        })
    })
    .await?;
    let page = Page::from_overfetch(rows, page.first);
    Ok(Page {
        items: page
            .items
            .into_iter()
            .map(|model| Alert { model })
            .collect(),
        has_next: page.has_next,
    })
}

/// The caller's tenant's alert `id`; `None` for unknown ids and other
/// tenants'.
pub async fn find(db: &DatabaseConnection, ctx: &TenantCtx, id: Uuid) -> AppResult<Option<Alert>> {
    let tenant = ctx.tenant_id;
    let found = scoped(db, ctx, move |txn| {
        Box::pin(async move {
            Ok(alert::Entity::find_by_id(id)
                .filter(alert::Column::TenantId.eq(tenant))
                .one(txn)
                .await?)
        })
    })
    .await?;
    Ok(found.map(|model| Alert { model }))
}

/// An alert's transitions, newest first, each with its deliveries (two
/// statements per page).
pub async fn history(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    alert_id: Uuid,
    page: PageRequest,
) -> AppResult<Page<HistoryEntry>> {
    let tenant = ctx.tenant_id;
    let (rows, deliveries) = scoped(db, ctx, move |txn| {
        Box::pin(async move {
            let mut query = alert_history::Entity::find()
                .filter(alert_history::Column::TenantId.eq(tenant))
                .filter(alert_history::Column::AlertId.eq(alert_id))
                .order_by_desc(alert_history::Column::Id)
                .limit(page.first + 1);
            if let Some(after) = page.after {
                query = query.filter(alert_history::Column::Id.lt(after));
            }
            let rows = query.all(txn).await?;
            let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
            let deliveries = if ids.is_empty() {
                Vec::new()
            } else {
                alert_delivery::Entity::find()
                    .filter(alert_delivery::Column::TenantId.eq(tenant))
                    .filter(alert_delivery::Column::HistoryId.is_in(ids))
                    .order_by_asc(alert_delivery::Column::Id)
                    .all(txn)
                    .await?
            };
            Ok((rows, deliveries))
        })
    })
    .await?;
    let page = Page::from_overfetch(rows, page.first);
    Ok(Page {
        items: page
            .items
            .into_iter()
            .map(|model| HistoryEntry {
                deliveries: deliveries
                    .iter()
                    .filter(|d| d.history_id == model.id)
                    .cloned()
                    .collect(),
                model,
            })
            .collect(),
        has_next: page.has_next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(url: &str) -> WebhookInput {
        WebhookInput {
            url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn webhooks_need_an_http_url_and_may_not_set_reserved_headers() {
        assert!(validate_webhook(&hook("https://hooks.example/a"), "w").is_ok());
        assert!(validate_webhook(&hook("ftp://hooks.example/a"), "w").is_err());
        assert!(validate_webhook(&hook("not a url"), "w").is_err());
        let mut h = hook("http://127.0.0.1:9/x");
        h.headers
            .insert("Authorization".into(), "Bearer abc".into());
        assert!(validate_webhook(&h, "w").is_ok());
        for bad in ["Host", "X-Pulse-Signature", "content-length", "bad name"] {
            let mut h = hook("http://127.0.0.1:9/x");
            h.headers.insert(bad.into(), "v".into());
            assert!(validate_webhook(&h, "w").is_err(), "{bad}");
        }
        let mut h = hook("http://127.0.0.1:9/x");
        h.headers
            .insert("X-Ok".into(), "line\r\nInjected: 1".into());
        assert!(validate_webhook(&h, "w").is_err());
        let mut h = hook("http://127.0.0.1:9/x");
        h.secret = Some("short".into());
        assert!(validate_webhook(&h, "w").is_err());
    }

    #[test]
    fn an_update_naming_a_webhook_keeps_its_secret_unless_given_a_new_one() {
        let id = Uuid::now_v7();
        let current = vec![Webhook {
            id,
            url: "http://a.example/".into(),
            headers: BTreeMap::new(),
            secret: Some("s".repeat(20)),
        }];
        let kept = WebhookInput {
            id: Some(id),
            url: "http://b.example/".into(),
            ..Default::default()
        };
        let stranger = WebhookInput {
            id: Some(Uuid::now_v7()),
            url: "http://c.example/".into(),
            ..Default::default()
        };
        let stored: Vec<Webhook> =
            serde_json::from_value(webhooks_to_store(&[kept, stranger], &current).expect("stored"))
                .expect("reads");
        assert_eq!(stored[0].id, id);
        assert_eq!(stored[0].secret.as_deref(), Some("s".repeat(20).as_str()));
        assert_eq!(stored[0].url, "http://b.example/");
        // An id that is not one of this alert's webhooks gets a new id and
        // no secret: a secret cannot be borrowed by guessing ids.
        assert_ne!(stored[1].id, stored[0].id);
        assert_eq!(stored[1].secret, None);
    }
}
