//! Tenants: the `Tenant` object, `tenants`, `createTenant` and
//! `setTenantStatus`, all for SUPER_ADMINs.

use async_graphql::{Context, Enum, ID, InputObject, Json, Object, Result};
use chrono::{DateTime, Utc};

use super::guard::{RoleGuard, meta, state, tenant};
use crate::auth::Role;
use crate::domain::tenants::{self, NewTenant, SettingsChange};
use crate::entities::tenant;

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(
    remote = "crate::entities::tenant::TenantStatus",
    name = "TenantStatus"
)]
pub enum TenantStatusValue {
    Active,
    Suspended,
    Trial,
    Cancelled,
}

/// An organisation using Pulse; all its data is invisible to every other.
pub struct Tenant(pub tenant::Model);

#[Object]
impl Tenant {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn slug(&self) -> &str {
        &self.0.slug
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn status(&self) -> TenantStatusValue {
        self.0.status.into()
    }
    async fn domain(&self) -> Option<&str> {
        self.0.domain.as_deref()
    }
    async fn plan(&self) -> &str {
        &self.0.plan
    }
    async fn max_users(&self) -> i32 {
        self.0.max_users
    }
    async fn settings(&self) -> Json<serde_json::Value> {
        Json(self.0.settings.clone())
    }
    async fn features(&self) -> Vec<String> {
        serde_json::from_value(self.0.features.clone()).unwrap_or_default()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

#[derive(InputObject)]
pub struct TenantInput {
    /// 2 to 63 characters of a-z, 0-9 and inner hyphens.
    pub slug: String,
    pub name: String,
    pub domain: Option<String>,
    /// Default `trial`.
    pub plan: Option<String>,
    /// Default 10.
    pub max_users: Option<i32>,
    /// Default ACTIVE.
    pub status: Option<TenantStatusValue>,
    /// A JSON object.
    pub settings: Option<Json<serde_json::Value>>,
    pub features: Option<Vec<String>>,
}

#[derive(Default)]
pub struct TenantQuery;

#[Object]
impl TenantQuery {
    /// Every tenant, by slug.
    #[graphql(guard = "RoleGuard::new(Role::SuperAdmin)")]
    async fn tenants(&self, ctx: &Context<'_>) -> Result<Vec<Tenant>> {
        let all = tenants::list(&state(ctx)?.db, tenant(ctx)?).await?;
        Ok(all.into_iter().map(Tenant).collect())
    }
}

/// Settings a tenant's admins control; omitted fields stay as they are.
#[derive(InputObject)]
pub struct TenantSettingsInput {
    /// Events older than this many days are refused and removed (1 to 3650; default 400).
    pub retention_days: Option<i32>,
    /// Store client IPs truncated (IPv4 /24, IPv6 /48).
    pub truncate_ip: Option<bool>,
    /// Allow-list mode: members below ADMIN may run only operations
    /// registered with `registerOperation` (ADMINs are exempt). Holds from
    /// the next request on.
    pub allow_list: Option<bool>,
}

#[derive(Default)]
pub struct TenantMutation;

#[Object]
impl TenantMutation {
    #[graphql(guard = "RoleGuard::new(Role::SuperAdmin)")]
    async fn create_tenant(&self, ctx: &Context<'_>, input: TenantInput) -> Result<Tenant> {
        let created = tenants::create(
            &state(ctx)?.db,
            tenant(ctx)?,
            meta(ctx),
            NewTenant {
                slug: input.slug,
                name: input.name,
                domain: input.domain,
                plan: input.plan,
                max_users: input.max_users,
                status: input.status.map(Into::into),
                settings: input.settings.map(|j| j.0),
                features: input.features,
            },
        )
        .await?;
        Ok(Tenant(created))
    }

    /// Suspending or cancelling a tenant refuses its every call from the
    /// next request on (on other instances, within a second).
    #[graphql(guard = "RoleGuard::new(Role::SuperAdmin)")]
    async fn set_tenant_status(
        &self,
        ctx: &Context<'_>,
        slug: String,
        status: TenantStatusValue,
    ) -> Result<Tenant> {
        let updated = tenants::set_status(
            &state(ctx)?.db,
            tenant(ctx)?,
            meta(ctx),
            &slug,
            status.into(),
        )
        .await?;
        // Tokens resolved before the change must not outlive it here.
        state(ctx)?.tokens.forget_all();
        Ok(Tenant(updated))
    }

    /// Moves a tenant to another plan; `limits` (when given) overrides the
    /// plan's rate limits and query budget:
    /// `{queries, mutations, ingestion: {per_tenant, per_user}, budget:
    /// {per_query, per_minute}}`, each part optional, rates per minute,
    /// budgets in estimated rows. Holds from the next request on.
    #[graphql(guard = "RoleGuard::new(Role::SuperAdmin)")]
    async fn set_tenant_plan(
        &self,
        ctx: &Context<'_>,
        slug: String,
        plan: String,
        limits: Option<Json<serde_json::Value>>,
    ) -> Result<Tenant> {
        let updated = tenants::set_plan(
            &state(ctx)?.db,
            tenant(ctx)?,
            meta(ctx),
            &slug,
            plan,
            limits.map(|j| j.0),
        )
        .await?;
        // Tokens resolved before the change must not outlive it here.
        state(ctx)?.tokens.forget_all();
        Ok(Tenant(updated))
    }

    /// Changes the caller's own tenant's settings (ADMIN and up).
    #[graphql(guard = "RoleGuard::new(Role::Admin)")]
    async fn update_tenant_settings(
        &self,
        ctx: &Context<'_>,
        input: TenantSettingsInput,
    ) -> Result<Tenant> {
        let updated = tenants::update_settings(
            &state(ctx)?.db,
            tenant(ctx)?,
            meta(ctx),
            SettingsChange {
                retention_days: input.retention_days,
                truncate_ip: input.truncate_ip,
                allow_list: input.allow_list,
            },
        )
        .await?;
        // Tokens resolved before the change must not outlive it here.
        state(ctx)?.tokens.forget_all();
        Ok(Tenant(updated))
    }
}
