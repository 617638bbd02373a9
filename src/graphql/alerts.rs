//! Alerts: the `Alert` object with its history, CRUD, silences,
//! `testAlert`, and the `alertEvents` subscription.
//!
//! An alert's query is stored like a widget's: an inline
//! `MetricQueryInput` as JSON, or a saved query's id with parameter
//! values. [`alert_query`] reads either back through the GraphQL input
//! types, so an alert's query validates exactly like the field it stands
//! for; the evaluator (`jobs::alerts`) reads it the same way.

use std::collections::BTreeMap;
use std::time::Duration;

use async_graphql::connection::{Connection, Edge};
use async_graphql::dataloader::DataLoader;
use async_graphql::{
    ComplexObject, Context, Enum, ID, InputObject, Json, Object, Result, SimpleObject, Subscription,
};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use sea_orm::DatabaseConnection;
use serde_json::{Map, Value};

use super::guard::{RoleGuard, meta, state, tenant};
use super::loaders::UserLoader;
use super::metrics::MetricQueryInput;
use super::saved_queries::{Bound, SavedQuery, bind, read_as, stored};
use super::users::{User, parse_id};
use crate::app::AppState;
use crate::auth::{InTenant, Role, TenantCtx};
use crate::domain::alerts::{
    self, AlertQuery, DefinitionLimits, Source, state_machine, webhooks::Status,
};
use crate::domain::metrics::{formula, plan};
use crate::domain::page::{PageRequest, encode_cursor};
use crate::domain::saved_queries;
use crate::error::{AppError, AppResult};

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "AlertState", remote = "crate::domain::alerts::State")]
pub enum AlertStateValue {
    Ok,
    /// The condition holds, not yet for `forDuration`.
    Pending,
    Firing,
    /// The condition cleared, not yet for `keepFiringFor`.
    Recovering,
    NoData,
    /// The query failed; `lastError` says why.
    Error,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::domain::alerts::Condition")]
pub enum AlertCondition {
    Above,
    Below,
    /// The change from the previous window, in percent: 20 is +20 %.
    ChangePctAbove,
    /// The change from the previous window, in percent: -50 is −50 %.
    ChangePctBelow,
}

/// How the window's buckets become the one value the condition reads.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::domain::alerts::Reducer")]
pub enum AlertReducer {
    /// The newest bucket.
    Last,
    Sum,
    Avg,
    Max,
    Min,
}

/// What an alert does when there is no value to compare (a window without
/// any, or a change from 0).
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::domain::alerts::NoDataPolicy")]
pub enum AlertNoData {
    /// As if the condition did not hold.
    Ok,
    /// Go to `NO_DATA`.
    NoData,
    /// Keep the current state.
    KeepLast,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::domain::alerts::webhooks::Status")]
pub enum NotificationStatus {
    Pending,
    Sent,
    /// Given up after the last retry, or refused by the receiver.
    Failed,
    /// The alert was silenced: not sent.
    Silenced,
}

#[derive(InputObject)]
pub struct WebhookInput {
    /// An existing webhook's id, to keep its secret without sending it
    /// again.
    pub id: Option<ID>,
    pub url: String,
    /// 16 to 256 characters: the HMAC key of `X-Pulse-Signature`.
    pub secret: Option<String>,
    /// Extra headers, `{"Authorization": "Bearer …"}`.
    pub headers: Option<Json<Value>>,
}

#[derive(InputObject)]
pub struct AlertInput {
    pub name: String,
    pub description: Option<String>,
    /// An inline metric query with a relative range (`{last: "1h"}`) and
    /// no `groupBy`; or `savedQueryId`.
    pub query: Option<MetricQueryInput>,
    /// A saved METRIC or FORMULA query, with `parameters`.
    pub saved_query_id: Option<ID>,
    pub parameters: Option<Json<Value>>,
    /// Default `LAST`.
    pub reducer: Option<AlertReducer>,
    pub condition: AlertCondition,
    pub threshold: f64,
    /// `"30s"`, `"5m"`: at least `PULSE_ALERT_MIN_INTERVAL` (10s), at
    /// most 1d.
    pub evaluate_every: String,
    /// How long the condition must hold before the alert fires; default
    /// `"0s"`.
    pub for_duration: Option<String>,
    /// How long a firing alert keeps firing after the condition clears;
    /// default `"0s"`.
    pub keep_firing_for: Option<String>,
    /// Default `NO_DATA`.
    pub no_data: Option<AlertNoData>,
    /// Default true.
    pub is_active: Option<bool>,
    /// `{"team": "growth"}`: names `[a-z_][a-z0-9_]*`, string values.
    pub labels: Option<Json<Value>>,
    /// A dashboard to link from notifications.
    pub dashboard_id: Option<ID>,
    pub webhooks: Option<Vec<WebhookInput>>,
}

/// `"0s"` or a duration of the one syntax (`duration::parse`).
fn hold(raw: Option<&str>, at: &str) -> AppResult<Duration> {
    match raw.map(str::trim) {
        None | Some("0") | Some("0s") | Some("0m") | Some("0h") => Ok(Duration::ZERO),
        Some(raw) => crate::duration::parse(raw).map_err(|e| AppError::bad_input(at, e)),
    }
}

/// The largest whole unit: `90s` → `"90s"`, `3600s` → `"1h"`.
fn spelled(secs: i64) -> String {
    for (unit, size) in [("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs > 0 && secs % size == 0 {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

fn string_map(value: Option<Json<Value>>, at: &str) -> AppResult<BTreeMap<String, String>> {
    match value.map(|j| j.0) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                _ => Err(AppError::bad_input(
                    format!("{at}.{k}"),
                    "values are strings",
                )),
            })
            .collect(),
        Some(_) => Err(AppError::bad_input(at, "an object of name → string")),
    }
}

/// Reads a saved query bound to `parameters` as an alert's query.
fn saved_as_alert_query(
    saved: &saved_queries::SavedQuery,
    parameters: &Map<String, Value>,
) -> AppResult<AlertQuery> {
    match bind(saved, parameters)? {
        Bound::Metric(q) => Ok(AlertQuery::Metric(q.into_domain())),
        Bound::Formula(f) => Ok(AlertQuery::Formula(f.into_domain())),
        Bound::Funnel(_) | Bound::Retention(_) => Err(AppError::bad_input(
            "input.savedQueryId",
            "an alert watches a METRIC or FORMULA query, not a funnel or retention",
        )),
    }
}

/// Checks that `query` plans (as of now) and has an alert's shape.
fn check_query(query: &AlertQuery, at: &str, max_span: chrono::Duration) -> AppResult<()> {
    query.window(at)?;
    let now = Utc::now();
    match query.clone() {
        AlertQuery::Metric(q) => plan::plan(q, now, max_span).map(|_| ()),
        AlertQuery::Formula(f) => formula::prepare(f, now, max_span).map(|_| ()),
    }
}

impl AlertInput {
    async fn into_domain(
        self,
        app: &AppState,
        caller: &TenantCtx,
    ) -> AppResult<alerts::AlertInput> {
        let max_span = app.config.analytics.max_range;
        let source = match (self.query, self.saved_query_id) {
            (Some(q), None) => {
                let json = stored(&q)?;
                check_query(
                    &AlertQuery::Metric(q.into_domain()),
                    "input.query",
                    max_span,
                )?;
                Source::Inline(json)
            }
            (None, Some(id)) => {
                let id = parse_id("input.savedQueryId", &id)?;
                let saved = saved_queries::find(&app.db, caller, id)
                    .await?
                    .ok_or(AppError::NotFound("saved query"))?;
                let parameters = match self.parameters.map(|j| j.0) {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(map)) => map,
                    Some(_) => {
                        return Err(AppError::bad_input(
                            "input.parameters",
                            "an object of name → value",
                        ));
                    }
                };
                check_query(
                    &saved_as_alert_query(&saved, &parameters)?,
                    "input.savedQueryId",
                    max_span,
                )?;
                Source::Saved { id, parameters }
            }
            _ => {
                return Err(AppError::bad_input(
                    "input",
                    "give exactly one of query and savedQueryId",
                ));
            }
        };
        let evaluate_every = crate::duration::parse(&self.evaluate_every)
            .map_err(|e| AppError::bad_input("input.evaluateEvery", e))?;
        let webhooks = self
            .webhooks
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                let at = format!("input.webhooks[{i}]");
                Ok(alerts::WebhookInput {
                    id: w
                        .id
                        .map(|id| parse_id(&format!("{at}.id"), &id))
                        .transpose()?,
                    url: w.url,
                    secret: w.secret,
                    headers: string_map(w.headers, &format!("{at}.headers"))?,
                })
            })
            .collect::<AppResult<Vec<_>>>()?;
        Ok(alerts::AlertInput {
            name: self.name,
            description: self.description,
            source,
            rule: alerts::Rule {
                reducer: self.reducer.map_or(alerts::Reducer::Last, Into::into),
                condition: self.condition.into(),
                threshold: self.threshold,
            },
            evaluate_every,
            for_duration: hold(self.for_duration.as_deref(), "input.forDuration")?,
            keep_firing_for: hold(self.keep_firing_for.as_deref(), "input.keepFiringFor")?,
            no_data: self
                .no_data
                .map_or(alerts::NoDataPolicy::NoData, Into::into),
            is_active: self.is_active.unwrap_or(true),
            labels: string_map(self.labels, "input.labels")?,
            webhooks,
            dashboard_id: self
                .dashboard_id
                .map(|id| parse_id("input.dashboardId", &id))
                .transpose()?,
        })
    }
}

fn limits(app: &AppState) -> DefinitionLimits {
    DefinitionLimits {
        min_interval: app.config.alerts.min_interval,
        per_tenant: app.config.alerts.per_tenant,
    }
}

/// An alert's query as it runs now: the inline query, or the saved query
/// bound to the alert's parameters (read as `ctx`, which must see it).
pub(crate) async fn alert_query(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    alert: &alerts::Alert,
) -> AppResult<AlertQuery> {
    let m = &alert.model;
    match (&m.query, m.saved_query_id) {
        (Some(json), _) => Ok(AlertQuery::Metric(
            read_as::<MetricQueryInput>(json.clone())?.into_domain(),
        )),
        (None, Some(id)) => {
            let saved = saved_queries::find(db, ctx, id)
                .await?
                .ok_or(AppError::NotFound("saved query"))?;
            let parameters = match &m.parameters {
                Some(Value::Object(map)) => map.clone(),
                _ => Map::new(),
            };
            saved_as_alert_query(&saved, &parameters)
        }
        (None, None) => Err(AppError::bad_input("query", "the alert has no query")),
    }
}

/// A webhook target; its secret is never shown.
#[derive(SimpleObject)]
pub struct Webhook {
    id: ID,
    url: String,
    /// The names of the extra headers (their values may be credentials).
    header_names: Vec<String>,
    has_secret: bool,
}

pub struct Alert(alerts::Alert);

#[Object]
impl Alert {
    async fn id(&self) -> ID {
        ID(self.0.model.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.model.name
    }
    async fn description(&self) -> Option<&str> {
        self.0.model.description.as_deref()
    }
    /// The inline query (a `MetricQueryInput` as JSON); null for a saved
    /// query's alert.
    async fn query(&self) -> Option<Json<Value>> {
        self.0.model.query.clone().map(Json)
    }
    async fn saved_query_id(&self) -> Option<ID> {
        self.0.model.saved_query_id.map(|id| ID(id.to_string()))
    }
    /// Null when the caller may not see it (or it was deleted).
    async fn saved_query(&self, ctx: &Context<'_>) -> Result<Option<SavedQuery>> {
        let Some(id) = self.0.model.saved_query_id else {
            return Ok(None);
        };
        Ok(saved_queries::find(&state(ctx)?.db, tenant(ctx)?, id)
            .await?
            .map(SavedQuery))
    }
    async fn parameters(&self) -> Option<Json<Value>> {
        self.0.model.parameters.clone().map(Json)
    }
    async fn reducer(&self) -> Result<AlertReducer> {
        Ok(self.0.rule()?.reducer.into())
    }
    async fn condition(&self) -> Result<AlertCondition> {
        Ok(self.0.rule()?.condition.into())
    }
    async fn threshold(&self) -> f64 {
        self.0.model.threshold
    }
    async fn evaluate_every(&self) -> String {
        spelled(self.0.model.evaluate_every_secs)
    }
    async fn for_duration(&self) -> String {
        spelled(self.0.model.for_secs)
    }
    async fn keep_firing_for(&self) -> String {
        spelled(self.0.model.keep_firing_for_secs)
    }
    async fn no_data(&self) -> AlertNoData {
        self.0.timing().no_data.into()
    }
    async fn is_active(&self) -> bool {
        self.0.model.is_active
    }
    async fn labels(&self) -> Json<Value> {
        Json(self.0.model.labels.clone())
    }
    async fn webhooks(&self) -> Vec<Webhook> {
        self.0
            .webhooks()
            .into_iter()
            .map(|w| Webhook {
                id: ID(w.id.to_string()),
                url: w.url,
                header_names: w.headers.into_keys().collect(),
                has_secret: w.secret.is_some(),
            })
            .collect()
    }
    async fn dashboard_id(&self) -> Option<ID> {
        self.0.model.dashboard_id.map(|id| ID(id.to_string()))
    }
    /// Null when the owner is gone (or a service created the alert).
    async fn owner(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        let Some(owner) = self.0.model.owner_id else {
            return Ok(None);
        };
        let loader = ctx.data::<DataLoader<UserLoader>>()?;
        Ok(loader
            .load_one(InTenant {
                tenant: self.0.model.tenant_id,
                key: owner,
            })
            .await?
            .map(User))
    }
    async fn state(&self) -> AlertStateValue {
        self.0.state().into()
    }
    /// When the alert entered its state.
    async fn state_since(&self) -> DateTime<Utc> {
        self.0.model.state_since
    }
    /// What the condition compared at the last evaluation (a percentage
    /// for CHANGE_PCT conditions).
    async fn last_value(&self) -> Option<f64> {
        self.0.model.last_value
    }
    async fn last_error(&self) -> Option<&str> {
        self.0.model.last_error.as_deref()
    }
    async fn last_evaluated_at(&self) -> Option<DateTime<Utc>> {
        self.0.model.last_evaluated_at
    }
    /// When it last started firing.
    async fn last_triggered_at(&self) -> Option<DateTime<Utc>> {
        self.0.model.last_triggered_at
    }
    async fn next_evaluation_at(&self) -> Option<DateTime<Utc>> {
        self.0
            .model
            .is_active
            .then_some(self.0.model.next_evaluation_at)
    }
    /// Null unless a silence is in force.
    async fn silenced_until(&self) -> Option<DateTime<Utc>> {
        self.0
            .model
            .silenced_until
            .filter(|_| self.0.is_silenced(Utc::now()))
    }
    async fn silence_reason(&self) -> Option<&str> {
        self.0
            .model
            .silence_reason
            .as_deref()
            .filter(|_| self.0.is_silenced(Utc::now()))
    }
    /// Transitions, newest first.
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn history(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, AlertHistoryEntry>> {
        let page = PageRequest::new(first, after.as_deref())?;
        let found = alerts::history(&state(ctx)?.db, tenant(ctx)?, self.0.model.id, page).await?;
        let mut conn = Connection::new(page.after.is_some(), found.has_next);
        conn.edges.extend(
            found
                .items
                .into_iter()
                .map(|h| Edge::new(encode_cursor(h.model.id), history_entry(h))),
        );
        Ok(conn)
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.model.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.model.updated_at
    }
}

/// One transition.
#[derive(SimpleObject)]
pub struct AlertHistoryEntry {
    id: ID,
    at: DateTime<Utc>,
    from: AlertStateValue,
    to: AlertStateValue,
    /// What the condition compared; null for no data and errors.
    value: Option<f64>,
    threshold: f64,
    error: Option<String>,
    /// Null when the transition owed no notification (no webhooks, or a
    /// step inside a firing episode).
    notification: Option<NotificationStatus>,
    deliveries: Vec<AlertDelivery>,
}

/// One webhook's notification of a transition.
#[derive(SimpleObject)]
pub struct AlertDelivery {
    id: ID,
    url: String,
    status: NotificationStatus,
    attempts: i32,
    /// The receiver's HTTP status at the last attempt.
    response_status: Option<i32>,
    last_error: Option<String>,
    sent_at: Option<DateTime<Utc>>,
    /// When the next attempt is due, while PENDING.
    next_attempt_at: Option<DateTime<Utc>>,
}

fn history_entry(h: alerts::HistoryEntry) -> AlertHistoryEntry {
    {
        let state = |raw: &str| {
            alerts::State::parse(raw)
                .unwrap_or(alerts::State::Error)
                .into()
        };
        AlertHistoryEntry {
            id: ID(h.model.id.to_string()),
            at: h.model.at,
            from: state(&h.model.from_state),
            to: state(&h.model.to_state),
            value: h.model.value,
            threshold: h.model.threshold,
            error: h.model.error.clone(),
            notification: Status::parse(&h.model.notification).map(Into::into),
            deliveries: h
                .deliveries
                .into_iter()
                .map(|d| {
                    let status = Status::parse(&d.status).unwrap_or(Status::Failed);
                    AlertDelivery {
                        id: ID(d.id.to_string()),
                        url: d.url,
                        status: status.into(),
                        attempts: d.attempts,
                        response_status: d.response_status,
                        last_error: d.last_error,
                        sent_at: d.sent_at,
                        next_attempt_at: (status == Status::Pending).then_some(d.next_attempt_at),
                    }
                })
                .collect(),
        }
    }
}

/// What `testAlert` found: the evaluation as of now, and the state it
/// would lead to. Nothing is recorded or sent.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct AlertTest {
    /// What the condition compared (a percentage for CHANGE_PCT).
    value: Option<f64>,
    /// The window's reduced value.
    current: Option<f64>,
    /// The previous window's, for CHANGE_PCT conditions.
    previous: Option<f64>,
    /// Null for no data and errors.
    condition_met: Option<bool>,
    error: Option<String>,
    state: AlertStateValue,
    would_be: AlertStateValue,
    #[graphql(skip)]
    evaluated_at: DateTime<Utc>,
}

#[ComplexObject]
impl AlertTest {
    async fn evaluated_at(&self) -> DateTime<Utc> {
        self.evaluated_at
    }
}

#[derive(Default)]
pub struct AlertQueryRoot;

#[Object]
impl AlertQueryRoot {
    /// The tenant's alerts, by creation.
    #[graphql(
        guard = "RoleGuard::new(Role::Viewer)",
        complexity = "super::page_complexity(first, child_complexity)"
    )]
    async fn alerts(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, Alert>> {
        let page = PageRequest::new(first, after.as_deref())?;
        let found = alerts::list(&state(ctx)?.db, tenant(ctx)?, page).await?;
        let mut conn = Connection::new(page.after.is_some(), found.has_next);
        conn.edges.extend(
            found
                .items
                .into_iter()
                .map(|a| Edge::new(encode_cursor(a.model.id), Alert(a))),
        );
        Ok(conn)
    }

    /// Null when absent or in another tenant.
    #[graphql(guard = "RoleGuard::new(Role::Viewer)")]
    async fn alert(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Alert>> {
        let Ok(id) = parse_id("id", &id) else {
            return Ok(None);
        };
        Ok(alerts::find(&state(ctx)?.db, tenant(ctx)?, id)
            .await?
            .map(Alert))
    }
}

#[derive(Default)]
pub struct AlertMutation;

#[Object]
impl AlertMutation {
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn create_alert(&self, ctx: &Context<'_>, input: AlertInput) -> Result<Alert> {
        let (app, caller) = (state(ctx)?, tenant(ctx)?);
        let input = input.into_domain(app, caller).await?;
        Ok(Alert(
            alerts::create(&app.db, caller, meta(ctx), input, limits(app)).await?,
        ))
    }

    /// The owner or an ADMIN. State and history stay; the alert is
    /// evaluated again at once.
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn update_alert(&self, ctx: &Context<'_>, id: ID, input: AlertInput) -> Result<Alert> {
        let id = parse_id("id", &id)?;
        let (app, caller) = (state(ctx)?, tenant(ctx)?);
        let input = input.into_domain(app, caller).await?;
        Ok(Alert(
            alerts::update(&app.db, caller, meta(ctx), id, input, limits(app)).await?,
        ))
    }

    /// The owner or an ADMIN; false when there was nothing to delete.
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn delete_alert(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let Ok(id) = parse_id("id", &id) else {
            return Ok(false);
        };
        let app = state(ctx)?;
        Ok(alerts::delete(&app.db, tenant(ctx)?, meta(ctx), id).await?)
    }

    /// Suppresses the alert's notifications (not its evaluation) until
    /// `until` (at most 90 days ahead).
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn silence_alert(
        &self,
        ctx: &Context<'_>,
        id: ID,
        until: DateTime<Utc>,
        reason: Option<String>,
    ) -> Result<Alert> {
        let id = parse_id("id", &id)?;
        let app = state(ctx)?;
        Ok(Alert(
            alerts::silence(&app.db, tenant(ctx)?, meta(ctx), id, Some(until), reason).await?,
        ))
    }

    /// Lifts a silence.
    #[graphql(guard = "RoleGuard::new(Role::Editor)")]
    async fn unsilence_alert(&self, ctx: &Context<'_>, id: ID) -> Result<Alert> {
        let id = parse_id("id", &id)?;
        let app = state(ctx)?;
        Ok(Alert(
            alerts::silence(&app.db, tenant(ctx)?, meta(ctx), id, None, None).await?,
        ))
    }

    /// Evaluates the alert now without changing it: the value, and the
    /// state it would move to.
    #[graphql(
        guard = "RoleGuard::new(Role::Editor)",
        complexity = "2 * super::METRIC_COST + child_complexity"
    )]
    async fn test_alert(&self, ctx: &Context<'_>, id: ID) -> Result<AlertTest> {
        let id = parse_id("id", &id)?;
        let (app, caller) = (state(ctx)?, tenant(ctx)?);
        let alert = alerts::find(&app.db, caller, id)
            .await?
            .ok_or(AppError::NotFound("alert"))?;
        let at = Utc::now();
        let evaluation = match alert_query(&app.db, caller, &alert).await {
            Ok(query) => {
                crate::jobs::alerts::engine(app)
                    .evaluate(caller, &query, &alert.rule()?, at)
                    .await
            }
            Err(e) => alerts::evaluate::Evaluation::failed(&e),
        };
        let next = state_machine::step(alert.position(), &evaluation.outcome, &alert.timing(), at);
        Ok(AlertTest {
            value: evaluation.outcome.value(),
            current: evaluation.current,
            previous: evaluation.previous,
            condition_met: match &evaluation.outcome {
                alerts::Outcome::Met(_) => Some(true),
                alerts::Outcome::Clear(_) => Some(false),
                _ => None,
            },
            error: evaluation.outcome.error().map(str::to_owned),
            state: alert.state().into(),
            would_be: next.state.into(),
            evaluated_at: at,
        })
    }
}

/// A transition, as `alertEvents` sends it.
pub struct AlertEvent {
    transition: crate::realtime::AlertTransition,
}

#[Object]
impl AlertEvent {
    /// The alert as it is now; null if it was deleted since.
    async fn alert(&self, ctx: &Context<'_>) -> Result<Option<Alert>> {
        Ok(
            alerts::find(&state(ctx)?.db, tenant(ctx)?, self.transition.alert_id)
                .await?
                .map(Alert),
        )
    }
    async fn alert_id(&self) -> ID {
        ID(self.transition.alert_id.to_string())
    }
    async fn from(&self) -> AlertStateValue {
        alerts::State::parse(&self.transition.from)
            .unwrap_or(alerts::State::Error)
            .into()
    }
    async fn to(&self) -> AlertStateValue {
        alerts::State::parse(&self.transition.to)
            .unwrap_or(alerts::State::Error)
            .into()
    }
    async fn value(&self) -> Option<f64> {
        self.transition.value
    }
    async fn at(&self) -> DateTime<Utc> {
        self.transition.at
    }
}

#[derive(Default)]
pub struct AlertSubscription;

#[Subscription]
impl AlertSubscription {
    /// The tenant's alert transitions from now on (of one alert with
    /// `alertId`), as they are recorded, on whichever instance evaluates.
    #[graphql(guard = "RoleGuard::new(Role::Viewer)")]
    async fn alert_events(
        &self,
        ctx: &Context<'_>,
        alert_id: Option<ID>,
    ) -> Result<impl Stream<Item = Result<AlertEvent>> + use<>> {
        let caller = tenant(ctx)?;
        let live = &state(ctx)?.live;
        let alert = alert_id.map(|id| parse_id("alertId", &id)).transpose()?;
        let slot = live.subscribe(
            caller,
            ctx.data_opt::<crate::domain::live::ConnectionSlot>(),
        )?;
        Ok(live.alert_events(caller, alert).map(move |t| {
            let _held = &slot;
            Ok(AlertEvent { transition: t? })
        }))
    }
}
