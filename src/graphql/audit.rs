//! The audit trail: `auditLog`, for ADMINs.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, ID, InputObject, Json, Object, Result};
use chrono::{DateTime, Utc};

use super::guard::{RoleGuard, state, tenant};
use super::users::parse_id;
use crate::auth::Role;
use crate::domain::audit::{self, AuditFilter};
use crate::domain::page::{PageRequest, encode_cursor};
use crate::entities::audit_log;

/// One recorded change.
pub struct AuditEntry(audit_log::Model);

#[Object]
impl AuditEntry {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// Dotted verb, e.g. `user.create`.
    async fn action(&self) -> &str {
        &self.0.action
    }
    async fn resource_type(&self) -> &str {
        &self.0.resource_type
    }
    async fn resource_id(&self) -> Option<&str> {
        self.0.resource_id.as_deref()
    }
    /// The acting user's email, or `system`.
    async fn actor(&self) -> &str {
        &self.0.actor
    }
    async fn actor_id(&self) -> Option<ID> {
        self.0.actor_user_id.map(|id| ID(id.to_string()))
    }
    async fn before(&self) -> Option<Json<serde_json::Value>> {
        self.0.before.clone().map(Json)
    }
    async fn after(&self) -> Option<Json<serde_json::Value>> {
        self.0.after.clone().map(Json)
    }
    async fn ip(&self) -> Option<&str> {
        self.0.ip.as_deref()
    }
    async fn user_agent(&self) -> Option<&str> {
        self.0.user_agent.as_deref()
    }
    async fn request_id(&self) -> Option<&str> {
        self.0.request_id.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

#[derive(InputObject, Default)]
pub struct AuditFilterInput {
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub actor_id: Option<ID>,
}

#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// The tenant's audit trail, newest first.
    #[graphql(
        guard = "RoleGuard::new(Role::Admin)",
        complexity = "super::page_complexity(first, child_complexity)"
    )]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        filter: Option<AuditFilterInput>,
    ) -> Result<Connection<String, AuditEntry>> {
        let page = PageRequest::new(first, after.as_deref())?;
        let filter = filter.unwrap_or_default();
        let filter = AuditFilter {
            action: filter.action,
            resource_type: filter.resource_type,
            resource_id: filter.resource_id,
            actor_user_id: filter
                .actor_id
                .map(|id| parse_id("filter.actorId", &id))
                .transpose()?,
        };
        let found = audit::list(&state(ctx)?.db, tenant(ctx)?, page, filter).await?;
        let mut conn = Connection::new(page.after.is_some(), found.has_next);
        conn.edges.extend(
            found
                .items
                .into_iter()
                .map(|e| Edge::new(encode_cursor(e.id), AuditEntry(e))),
        );
        Ok(conn)
    }
}
