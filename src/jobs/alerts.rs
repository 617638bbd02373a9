//! Alert evaluation and webhook delivery: two loops per instance, each
//! polling every `PULSE_ALERT_POLL_MS` for work that is due and that no
//! other instance holds (see `domain::alerts::schedule` for the lease).
//!
//! An evaluation runs as the alert's tenant (row-level security applies),
//! through the metric engine and the hot cache, under the tenant's query
//! gate; its transition is recorded with its history and deliveries in
//! one transaction and then published on the bus (`alertEvents`, on every
//! instance). Deliveries are sent by whichever instance claims them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::{Role, TenantCtx, policy::Policy};
use crate::domain::alerts::Alert;
use crate::domain::alerts::evaluate::{Engine, Evaluation};
use crate::domain::alerts::schedule::{self, Recorded, Recorder};
use crate::domain::alerts::state_machine::{self, Outcome};
use crate::domain::alerts::webhooks::{self, Attempt, Sender, Status};
use crate::domain::tenants;
use crate::error::AppResult;
use crate::realtime::Topic;

/// Alerts claimed per round, and evaluated at once.
const BATCH: u64 = 64;
const EVALUATE_AT_ONCE: usize = 4;
/// Deliveries claimed per round, and sent at once.
const DELIVERY_BATCH: u64 = 64;
const SEND_AT_ONCE: usize = 8;

/// What evaluations run with: this instance's database, metric services
/// and tenant gate.
pub fn engine(state: &AppState) -> Engine {
    Engine {
        db: state.db.clone(),
        services: state.analytics.clone(),
        gate: state.analytics_gate.clone(),
        timeout: state.config.query_timeout,
        max_span: state.config.analytics.max_range,
    }
}

/// Starts the evaluator and the sender; abort the handles to stop them
/// (then [`release`] hands the leases on).
pub fn spawn(state: &AppState) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let sender = Sender::new(state.config.alerts.webhooks)?;
    let poll = state.config.alerts.poll;
    let evaluator = every(poll, "an alert evaluation round failed", {
        let state = state.clone();
        move || {
            let state = state.clone();
            async move { evaluate_round(&state).await }
        }
    });
    let delivery = every(poll, "a webhook delivery round failed", {
        let state = state.clone();
        move || {
            let (state, sender) = (state.clone(), sender.clone());
            async move { delivery_round(&state, &sender).await }
        }
    });
    Ok(vec![evaluator, delivery])
}

/// Runs `round` every `poll` (a slow round delays the next rather than
/// piling up), logging a failed one as `failed`.
fn every<F, Fut>(poll: Duration, failed: &'static str, round: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = AppResult<usize>> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = round().await {
                tracing::warn!(error = format!("{e:#}"), "{failed}");
            }
        }
    })
}

/// Hands this instance's alert leases on at shutdown.
pub async fn release(state: &AppState) {
    match schedule::release(&state.db, state.instance).await {
        Ok(n) if n > 0 => tracing::info!(alerts = n, "released alert leases"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot release alert leases"),
    }
}

/// The tenants this instance evaluates (`PULSE_ALERT_TENANTS`), or all.
async fn scope(state: &AppState) -> AppResult<Option<Vec<Uuid>>> {
    let Some(slugs) = &state.config.alerts.tenants else {
        return Ok(None);
    };
    let mut ids = Vec::with_capacity(slugs.len());
    for slug in slugs {
        if let Some(t) = tenants::by_slug(&state.db, slug).await? {
            ids.push(t.id);
        }
    }
    Ok(Some(ids))
}

/// Claims what is due and evaluates it.
pub async fn evaluate_round(state: &AppState) -> AppResult<usize> {
    let tenants = scope(state).await?;
    let claimed =
        schedule::claim_due(&state.db, state.instance, tenants, Utc::now(), BATCH).await?;
    let count = claimed.len();
    // One tenant read per round and tenant.
    let mut contexts: HashMap<Uuid, Option<TenantCtx>> = HashMap::new();
    for alert in &claimed {
        let tenant = alert.model.tenant_id;
        if let std::collections::hash_map::Entry::Vacant(slot) = contexts.entry(tenant) {
            slot.insert(evaluation_ctx(state, tenant).await?);
        }
    }
    let contexts = Arc::new(contexts);
    futures_util::stream::iter(claimed)
        .for_each_concurrent(EVALUATE_AT_ONCE, |alert| {
            let contexts = contexts.clone();
            async move {
                let ctx = contexts.get(&alert.model.tenant_id).cloned().flatten();
                if let Err(e) = evaluate_one(state, ctx, alert).await {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "cannot record an alert evaluation"
                    );
                }
            }
        })
        .await;
    Ok(count)
}

/// The context an evaluation reads as: the alert's tenant with `ADMIN`
/// reach inside it (who may point an alert at what was checked when it
/// was saved). `None` for a tenant that is gone or not usable.
async fn evaluation_ctx(state: &AppState, tenant: Uuid) -> AppResult<Option<TenantCtx>> {
    let Some(t) = tenants::find(&state.db, tenant).await? else {
        return Ok(None);
    };
    if !t.status.is_usable() {
        return Ok(None);
    }
    Ok(Some(TenantCtx {
        tenant_id: t.id,
        policy: Arc::new(Policy::of(&t.plan, &t.settings)),
        tenant_slug: t.slug,
        user_id: None,
        actor: "alerts".into(),
        role: Role::Admin,
    }))
}

async fn evaluate_one(state: &AppState, ctx: Option<TenantCtx>, alert: Alert) -> AppResult<()> {
    let at = Utc::now();
    let Some(ctx) = ctx else {
        // A suspended tenant's alerts wait, without a transition.
        schedule::postpone(&state.db, state.instance, &alert, at).await?;
        return Ok(());
    };
    let evaluation = match crate::graphql::alert_query(&state.db, &ctx, &alert).await {
        Ok(query) => {
            engine(state)
                .evaluate(&ctx, &query, &alert.rule()?, at)
                .await
        }
        Err(e) => Evaluation::failed(&e),
    };
    let outcome = match &evaluation.outcome {
        Outcome::Met(_) => "met",
        Outcome::Clear(_) => "clear",
        Outcome::NoData => "no_data",
        Outcome::Error(_) => "error",
    };
    state
        .telemetry
        .alerts
        .evaluations
        .get_or_create(&[("outcome", outcome)])
        .inc();
    let next = state_machine::step(alert.position(), &evaluation.outcome, &alert.timing(), at);
    let recorder = Recorder {
        owner: state.instance,
        public_url: state.config.alerts.public_url.clone(),
    };
    let recorded = recorder
        .record(&state.db, &ctx, &alert, &evaluation, next, at)
        .await?;
    if let Recorded::Moved(transition) = recorded {
        state
            .telemetry
            .alerts
            .transitions
            .get_or_create(&[("to", next.state.as_str())])
            .inc();
        tracing::info!(
            tenant = %ctx.tenant_id,
            alert = %alert.model.id,
            from = %transition.from,
            to = %transition.to,
            value = ?transition.value,
            "alert transition"
        );
        if let Err(e) = state.bus.publish(ctx.tenant_id, Topic::Alerts, &transition) {
            tracing::warn!(error = %e, "cannot publish an alert transition");
        }
    }
    Ok(())
}

/// Claims due deliveries and attempts each once.
pub async fn delivery_round(state: &AppState, sender: &Sender) -> AppResult<usize> {
    let tenants = scope(state).await?;
    let lease = sender.settings.timeout + Duration::from_secs(30);
    let claimed = webhooks::claim_due(
        &state.db,
        state.instance,
        tenants,
        Utc::now(),
        lease,
        DELIVERY_BATCH,
    )
    .await?;
    let count = claimed.len();
    futures_util::stream::iter(claimed)
        .for_each_concurrent(SEND_AT_ONCE, |claimed| async move {
            let attempt = match &claimed.hook {
                Some(hook) => sender.attempt(hook, &claimed.delivery, Utc::now()).await,
                None => Attempt::Failed {
                    status: None,
                    error: "the alert no longer has this webhook".into(),
                    retry: false,
                },
            };
            let finished = webhooks::finish(
                &state.db,
                state.instance,
                &claimed.delivery,
                &attempt,
                &sender.settings,
                Utc::now(),
            )
            .await;
            let result = match finished {
                Ok(Some(Status::Sent)) => "sent",
                Ok(Some(Status::Pending)) => "retry",
                Ok(Some(_)) => "failed",
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record a webhook attempt");
                    return;
                }
            };
            state
                .telemetry
                .alerts
                .deliveries
                .get_or_create(&[("result", result)])
                .inc();
            if result != "sent" {
                tracing::warn!(
                    tenant = %claimed.delivery.tenant_id,
                    alert = %claimed.delivery.alert_id,
                    delivery = %claimed.delivery.id,
                    attempt = claimed.delivery.attempts,
                    ?attempt,
                    "a webhook delivery failed"
                );
            }
        })
        .await;
    Ok(count)
}
