//! The audit trail: one entry per mutation, written in the mutation's own
//! transaction so that a change and its record commit or fail together.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use serde_json::Value as Json;
use uuid::Uuid;

use super::page::{Page, PageRequest};
use crate::auth::{RequestMeta, TenantCtx};
use crate::db::scoped;
use crate::entities::audit_log;
use crate::error::AppResult;

/// What happened, to what, and how it looked before and after.
#[derive(Debug)]
pub struct Change {
    /// Dotted verb, e.g. `user.create`.
    pub action: &'static str,
    pub resource_type: &'static str,
    pub resource_id: Option<String>,
    pub before: Option<Json>,
    pub after: Option<Json>,
}

/// Who made a change: a user, or Pulse itself.
#[derive(Clone, Debug)]
pub struct Actor {
    pub user_id: Option<Uuid>,
    pub name: String,
}

impl Actor {
    pub fn of(ctx: &TenantCtx) -> Self {
        Actor {
            user_id: ctx.user_id,
            name: ctx.actor.clone(),
        }
    }

    pub fn system() -> Self {
        Actor {
            user_id: None,
            name: "system".into(),
        }
    }
}

/// Appends one entry to `tenant_id`'s trail on `conn` (the caller's
/// transaction).
pub async fn record(
    conn: &impl ConnectionTrait,
    tenant_id: Uuid,
    actor: &Actor,
    meta: &RequestMeta,
    change: Change,
) -> AppResult<()> {
    audit_log::Entity::insert(audit_log::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant_id),
        actor_user_id: Set(actor.user_id),
        actor: Set(actor.name.clone()),
        action: Set(change.action.to_owned()),
        resource_type: Set(change.resource_type.to_owned()),
        resource_id: Set(change.resource_id),
        before: Set(change.before),
        after: Set(change.after),
        ip: Set(meta.ip.clone()),
        user_agent: Set(meta.user_agent.as_deref().map(|ua| truncate(ua, 512))),
        request_id: Set(meta.request_id.clone()),
        created_at: Set(chrono::Utc::now()),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Optional narrowing of the trail.
#[derive(Debug, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub actor_user_id: Option<Uuid>,
}

/// The tenant's trail, newest first.
pub async fn list(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    page: PageRequest,
    filter: AuditFilter,
) -> AppResult<Page<audit_log::Model>> {
    let tenant_id = ctx.tenant_id;
    let rows = scoped(db, ctx, move |txn| {
        Box::pin(async move {
            let mut query = audit_log::Entity::find()
                .filter(audit_log::Column::TenantId.eq(tenant_id))
                .order_by_desc(audit_log::Column::Id)
                .limit(page.first + 1);
            if let Some(after) = page.after {
                query = query.filter(audit_log::Column::Id.lt(after));
            }
            if let Some(action) = filter.action {
                query = query.filter(audit_log::Column::Action.eq(action));
            }
            if let Some(rt) = filter.resource_type {
                query = query.filter(audit_log::Column::ResourceType.eq(rt));
            }
            if let Some(rid) = filter.resource_id {
                query = query.filter(audit_log::Column::ResourceId.eq(rid));
            }
            if let Some(actor) = filter.actor_user_id {
                query = query.filter(audit_log::Column::ActorUserId.eq(actor));
            }
            Ok(query.all(txn).await?)
        })
    })
    .await?;
    Ok(Page::from_overfetch(rows, page.first))
}
