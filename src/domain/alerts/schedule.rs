//! Exactly one evaluator per alert, however many instances run.
//!
//! The lease lives on the alert's row: `lease_owner` (an instance's id)
//! and `lease_until`. An instance claims a due alert with one conditional
//! `UPDATE` that succeeds only if nobody else holds an unexpired lease
//! (on PostgreSQL a second claimer blocks on the row, then re-reads the
//! condition and gets 0 rows), keeps it across evaluations by renewing it
//! to half an interval past the next one, and writes an evaluation's
//! result only while it still holds it (a fenced `UPDATE`). So an
//! instance that died is replaced once its lease runs out: 1½ intervals
//! after its last evaluation or claim, inside the two allowed.
//!
//! An evaluation's result, its transition, the history row and the
//! webhook deliveries the transition owes are one transaction: a
//! transition is recorded, and its notifications queued, exactly once.
//!
//! Claims scan every tenant (or the configured ones), so they run on the
//! connection's own role, a named system path; recording runs scoped to
//! the alert's tenant.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use serde_json::json;
use uuid::Uuid;

use super::evaluate::Evaluation;
use super::state_machine::{self, Position, State};
use super::{Alert, webhooks};
use crate::auth::TenantCtx;
use crate::db::{scoped_write, transaction};
use crate::entities::{alert, alert_delivery, alert_history};
use crate::error::AppResult;
use crate::realtime::AlertTransition;

/// A claim's lease: one and a half intervals from the claim, room for
/// the evaluation (whose query may take up to its timeout).
fn claimed_until(alert: &alert::Model, now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::milliseconds(alert.evaluate_every_secs.max(1) * 1_500)
}

/// A renewed lease: half an interval past the next evaluation, so that
/// the owner keeps the alert while it lives, and another instance takes
/// over 1½ intervals after the owner's last evaluation if it dies.
fn renewed_until(alert: &alert::Model, next: DateTime<Utc>) -> DateTime<Utc> {
    next + chrono::Duration::milliseconds(alert.evaluate_every_secs.max(1) * 500)
}

/// Nobody else holds the alert: no lease, ours, or an expired one.
fn free_for(owner: Uuid, now: DateTime<Utc>) -> Condition {
    Condition::any()
        .add(alert::Column::LeaseOwner.is_null())
        .add(alert::Column::LeaseOwner.eq(owner))
        .add(alert::Column::LeaseUntil.lt(now))
}

/// Claims up to `limit` active alerts due at `now` for `owner`, of
/// `tenants` only when given; returns the claimed rows.
pub async fn claim_due(
    db: &DatabaseConnection,
    owner: Uuid,
    tenants: Option<Vec<Uuid>>,
    now: DateTime<Utc>,
    limit: u64,
) -> AppResult<Vec<Alert>> {
    transaction(db, move |txn| {
        Box::pin(async move {
            let mut due = alert::Entity::find()
                .filter(alert::Column::IsActive.eq(true))
                .filter(alert::Column::NextEvaluationAt.lte(now))
                .filter(free_for(owner, now))
                .order_by_asc(alert::Column::NextEvaluationAt)
                .limit(limit);
            if let Some(tenants) = tenants {
                due = due.filter(alert::Column::TenantId.is_in(tenants));
            }
            let mut claimed = Vec::new();
            for candidate in due.all(txn).await? {
                let until = claimed_until(&candidate, now);
                let won = alert::Entity::update_many()
                    .col_expr(alert::Column::LeaseOwner, Expr::value(owner))
                    .col_expr(alert::Column::LeaseUntil, Expr::value(until))
                    .filter(alert::Column::Id.eq(candidate.id))
                    .filter(alert::Column::IsActive.eq(true))
                    .filter(free_for(owner, now))
                    .exec(txn)
                    .await?
                    .rows_affected
                    == 1;
                if won {
                    let mut model = candidate;
                    model.lease_owner = Some(owner);
                    model.lease_until = Some(until);
                    claimed.push(Alert { model });
                }
            }
            Ok(claimed)
        })
    })
    .await
}

/// Gives up `owner`'s leases (at shutdown), so that another instance
/// takes its alerts over at once instead of when the leases run out.
pub async fn release(db: &DatabaseConnection, owner: Uuid) -> AppResult<u64> {
    transaction(db, move |txn| {
        Box::pin(async move {
            Ok(alert::Entity::update_many()
                .col_expr(alert::Column::LeaseOwner, Expr::value(Option::<Uuid>::None))
                .col_expr(
                    alert::Column::LeaseUntil,
                    Expr::value(Option::<DateTime<Utc>>::None),
                )
                .filter(alert::Column::LeaseOwner.eq(owner))
                .exec(txn)
                .await?
                .rows_affected)
        })
    })
    .await
}

/// Moves a claimed alert's next evaluation on without evaluating it
/// (its tenant is suspended); `false` when the lease was lost. A system
/// path like the claim.
pub async fn postpone(
    db: &DatabaseConnection,
    owner: Uuid,
    alert: &Alert,
    at: DateTime<Utc>,
) -> AppResult<bool> {
    let (model, tenant) = (alert.model.clone(), alert.model.tenant_id);
    let next = at + alert.every();
    transaction(db, move |txn| {
        Box::pin(async move {
            Ok(alert::Entity::update_many()
                .col_expr(alert::Column::NextEvaluationAt, Expr::value(next))
                .col_expr(
                    alert::Column::LeaseUntil,
                    Expr::value(renewed_until(&model, next)),
                )
                .filter(alert::Column::Id.eq(model.id))
                .filter(alert::Column::TenantId.eq(tenant))
                .filter(alert::Column::LeaseOwner.eq(owner))
                .exec(txn)
                .await?
                .rows_affected
                == 1)
        })
    })
    .await
}

/// What recording an evaluation did.
#[derive(Clone, Debug, PartialEq)]
pub enum Recorded {
    /// Written, and the state did not change.
    Same,
    /// Written, with this transition (to publish once committed).
    Moved(AlertTransition),
    /// Another instance holds the alert now: nothing was written.
    LeaseLost,
}

/// Who records evaluations (this instance, the leases' owner) and what
/// notifications link to (`PULSE_PUBLIC_URL`, for dashboard links).
#[derive(Clone, Debug)]
pub struct Recorder {
    pub owner: Uuid,
    pub public_url: Option<String>,
}

impl Recorder {
    /// Records `evaluation` of a claimed alert at `at`, moving it to
    /// `next`: the state and figures on the row, the next evaluation and
    /// the renewed lease, and on a transition the history row and one
    /// delivery per webhook (silenced or pending). Fenced by the lease.
    pub async fn record(
        &self,
        db: &DatabaseConnection,
        ctx: &TenantCtx,
        alert: &Alert,
        evaluation: &Evaluation,
        next: Position,
        at: DateTime<Utc>,
    ) -> AppResult<Recorded> {
        record(db, ctx, self.clone(), alert, evaluation, next, at).await
    }
}

async fn record(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    recorder: Recorder,
    alert: &Alert,
    evaluation: &Evaluation,
    next: Position,
    at: DateTime<Utc>,
) -> AppResult<Recorded> {
    let Recorder { owner, public_url } = recorder;
    let from = alert.state();
    let model = alert.model.clone();
    let (caller, evaluation) = (ctx.clone(), evaluation.clone());
    let next_at = at + alert.every();
    scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let value = evaluation.outcome.value();
            let error = evaluation.outcome.error().map(str::to_owned);
            let mut update = alert::Entity::update_many()
                .col_expr(alert::Column::State, Expr::value(next.state.as_str()))
                .col_expr(alert::Column::StateSince, Expr::value(next.since))
                .col_expr(alert::Column::LastValue, Expr::value(value))
                .col_expr(alert::Column::LastError, Expr::value(error.clone()))
                .col_expr(alert::Column::LastEvaluatedAt, Expr::value(at))
                .col_expr(alert::Column::NextEvaluationAt, Expr::value(next_at))
                .col_expr(
                    alert::Column::LeaseUntil,
                    Expr::value(renewed_until(&model, next_at)),
                );
            let moved = next.state != from;
            if moved && next.state == State::Firing {
                update = update.col_expr(alert::Column::LastTriggeredAt, Expr::value(at));
            }
            let written = update
                .filter(alert::Column::Id.eq(model.id))
                .filter(alert::Column::TenantId.eq(caller.tenant_id))
                .filter(alert::Column::LeaseOwner.eq(owner))
                .exec(txn)
                .await?
                .rows_affected
                == 1;
            if !written {
                return Ok(Recorded::LeaseLost);
            }
            if !moved {
                return Ok(Recorded::Same);
            }
            // The definition as it is now (a webhook or silence may have
            // changed since the claim).
            let current = alert::Entity::find_by_id(model.id)
                .filter(alert::Column::TenantId.eq(caller.tenant_id))
                .one(txn)
                .await?
                .map(|model| Alert { model })
                .unwrap_or_else(|| Alert {
                    model: model.clone(),
                });
            let hooks = current.webhooks();
            let notify = state_machine::notifies(from, next.state) && !hooks.is_empty();
            let silenced = current.is_silenced(at);
            let notification = match (notify, silenced) {
                (false, _) => "NONE",
                (true, true) => "SILENCED",
                (true, false) => "PENDING",
            };
            let history_id = Uuid::now_v7();
            alert_history::Entity::insert(alert_history::ActiveModel {
                id: Set(history_id),
                tenant_id: Set(caller.tenant_id),
                alert_id: Set(model.id),
                at: Set(at),
                from_state: Set(from.as_str().to_owned()),
                to_state: Set(next.state.as_str().to_owned()),
                value: Set(value),
                threshold: Set(current.model.threshold),
                error: Set(error.clone()),
                notification: Set(notification.to_owned()),
            })
            .exec_without_returning(txn)
            .await?;
            if notify {
                let dashboard_url = public_url
                    .as_deref()
                    .zip(current.model.dashboard_id)
                    .map(|(base, id)| format!("{}/dashboards/{id}", base.trim_end_matches('/')));
                for hook in hooks {
                    let delivery_id = Uuid::now_v7();
                    let payload = json!({
                        "id": delivery_id,
                        "tenant": caller.tenant_slug,
                        "alert": {
                            "id": current.model.id,
                            "name": current.model.name,
                            "description": current.model.description,
                            "labels": current.model.labels,
                            "condition": current.model.condition,
                            "reducer": current.model.reducer,
                        },
                        "state": next.state.as_str(),
                        "previousState": from.as_str(),
                        "value": value,
                        "threshold": current.model.threshold,
                        "error": error,
                        "at": at,
                        "dashboardUrl": dashboard_url,
                    });
                    alert_delivery::Entity::insert(alert_delivery::ActiveModel {
                        id: Set(delivery_id),
                        tenant_id: Set(caller.tenant_id),
                        alert_id: Set(model.id),
                        history_id: Set(history_id),
                        webhook_id: Set(hook.id),
                        url: Set(hook.url.clone()),
                        payload: Set(payload),
                        status: Set(if silenced {
                            webhooks::Status::Silenced
                        } else {
                            webhooks::Status::Pending
                        }
                        .as_str()
                        .to_owned()),
                        attempts: Set(0),
                        next_attempt_at: Set(at),
                        response_status: Set(None),
                        last_error: Set(None),
                        sent_at: Set(None),
                        lease_owner: Set(None),
                        lease_until: Set(None),
                        created_at: Set(at),
                    })
                    .exec_without_returning(txn)
                    .await?;
                }
            }
            Ok(Recorded::Moved(AlertTransition {
                alert_id: model.id,
                from: from.as_str().to_owned(),
                to: next.state.as_str().to_owned(),
                value,
                at,
            }))
        })
    })
    .await
}
