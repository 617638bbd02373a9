//! Tenant administration, for SUPER_ADMINs.
//!
//! `tenants` is the one global table, so these are named system paths: they
//! run on the connection's own role, not a tenant-scoped transaction. The
//! audit entry goes to the actor's tenant and, when different, to the
//! tenant changed, so its admins see who changed it.

use sea_orm::{
    ActiveEnum, ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder,
};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Actor, Change};
use crate::auth::policy::LimitsOverride;
use crate::auth::{RequestMeta, Role, TenantCtx};
use crate::db;
use crate::entities::tenant::{self, TenantStatus};
use crate::error::{AppError, AppResult};

#[derive(Debug)]
pub struct NewTenant {
    pub slug: String,
    pub name: String,
    pub domain: Option<String>,
    pub plan: Option<String>,
    pub max_users: Option<i32>,
    pub status: Option<TenantStatus>,
    pub settings: Option<serde_json::Value>,
    pub features: Option<Vec<String>>,
}

pub fn audit_image(t: &tenant::Model) -> serde_json::Value {
    json!({
        "id": t.id,
        "slug": t.slug,
        "name": t.name,
        "domain": t.domain,
        "status": t.status.to_value(),
        "plan": t.plan,
        "maxUsers": t.max_users,
        "limits": t.settings.get("limits"),
    })
}

fn require_super_admin(ctx: &TenantCtx) -> AppResult<()> {
    if ctx.role == Role::SuperAdmin {
        Ok(())
    } else {
        Err(AppError::Forbidden("requires role SUPER_ADMIN".into()))
    }
}

/// A tenant by id, for rendering the caller's own tenant.
pub async fn find(db: &DatabaseConnection, id: Uuid) -> AppResult<Option<tenant::Model>> {
    Ok(tenant::Entity::find_by_id(id).one(db).await?)
}

pub async fn list(db: &DatabaseConnection, ctx: &TenantCtx) -> AppResult<Vec<tenant::Model>> {
    require_super_admin(ctx)?;
    Ok(tenant::Entity::find()
        .order_by_asc(tenant::Column::Slug)
        .all(db)
        .await?)
}

pub async fn create(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    input: NewTenant,
) -> AppResult<tenant::Model> {
    require_super_admin(ctx)?;
    // Recorded in the creator's tenant: that is whose trail shows it.
    let by = Some(ctx.tenant_id);
    create_audited(db, by, Actor::of(ctx), meta, input).await
}

/// Inserts a tenant and records `tenant.create` by `actor`, in the tenant
/// `recorded_in` (`None`: the new tenant's own trail), in one transaction.
async fn create_audited(
    db: &DatabaseConnection,
    recorded_in: Option<Uuid>,
    actor: Actor,
    meta: &RequestMeta,
    input: NewTenant,
) -> AppResult<tenant::Model> {
    let meta = meta.clone();
    db::transaction(db, move |txn| {
        Box::pin(async move {
            let created = insert(txn, input).await?;
            audit::record(
                txn,
                recorded_in.unwrap_or(created.id),
                &actor,
                &meta,
                Change {
                    action: "tenant.create",
                    resource_type: "tenant",
                    resource_id: Some(created.id.to_string()),
                    before: None,
                    after: Some(audit_image(&created)),
                },
            )
            .await?;
            Ok(created)
        })
    })
    .await
}

/// Creates a tenant from the command line (`pulse tenant create`): how a
/// production database gets its first tenant, before any token can exist.
/// The same rules as `createTenant`, audited in the new tenant as
/// `service:cli`. Idempotent: an existing slug is returned unchanged, with
/// `false`.
pub async fn bootstrap(
    db: &DatabaseConnection,
    meta: &RequestMeta,
    input: NewTenant,
) -> AppResult<(tenant::Model, bool)> {
    let slug = validate_slug(&input.slug)?;
    if let Some(existing) = by_slug(db, &slug).await? {
        return Ok((existing, false));
    }
    let actor = Actor {
        user_id: None,
        name: format!("{}cli", crate::auth::SERVICE_PREFIX),
    };
    let created = create_audited(db, None, actor, meta, input).await;
    match created {
        Ok(created) => Ok((created, true)),
        // Another run created it in the meantime: still idempotent.
        Err(e) => match by_slug(db, &slug).await? {
            Some(existing) => Ok((existing, false)),
            None => Err(e),
        },
    }
}

/// A tenant by slug, on the connection's own role (a system path).
pub async fn by_slug(db: &DatabaseConnection, slug: &str) -> AppResult<Option<tenant::Model>> {
    Ok(tenant::Entity::find()
        .filter(tenant::Column::Slug.eq(slug.trim().to_lowercase()))
        .one(db)
        .await?)
}

/// Validates and inserts a tenant on `conn`; shared with the demo seed.
pub(crate) async fn insert(
    conn: &impl sea_orm::ConnectionTrait,
    input: NewTenant,
) -> AppResult<tenant::Model> {
    let slug = validate_slug(&input.slug)?;
    let name = input.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(AppError::bad_input("name", "must be 1 to 200 characters"));
    }
    let domain = match input.domain.map(|d| d.trim().to_lowercase()) {
        Some(d) if d.is_empty() => None,
        Some(d) => Some(validate_domain(d)?),
        None => None,
    };
    let plan = input.plan.unwrap_or_else(|| "trial".into());
    if plan.is_empty() || plan.len() > 32 {
        return Err(AppError::bad_input("plan", "must be 1 to 32 characters"));
    }
    let max_users = input.max_users.unwrap_or(10);
    if !(1..=100_000).contains(&max_users) {
        return Err(AppError::bad_input(
            "maxUsers",
            "must be between 1 and 100000",
        ));
    }
    let settings = input.settings.unwrap_or_else(|| json!({}));
    if !settings.is_object() {
        return Err(AppError::bad_input("settings", "must be a JSON object"));
    }
    if let Some(limits) = settings.get("limits") {
        LimitsOverride::parse(limits).map_err(|e| AppError::bad_input("settings.limits", e))?;
    }
    if tenant::Entity::find()
        .filter(tenant::Column::Slug.eq(&slug))
        .one(conn)
        .await?
        .is_some()
    {
        return Err(AppError::bad_input(
            "slug",
            "a tenant with this slug already exists",
        ));
    }
    if let Some(d) = &domain
        && tenant::Entity::find()
            .filter(tenant::Column::Domain.eq(d))
            .one(conn)
            .await?
            .is_some()
    {
        return Err(AppError::bad_input(
            "domain",
            "another tenant uses this domain",
        ));
    }
    let now = chrono::Utc::now();
    let model = tenant::ActiveModel {
        id: Set(Uuid::now_v7()),
        slug: Set(slug),
        name: Set(name),
        domain: Set(domain),
        status: Set(input.status.unwrap_or(TenantStatus::Active)),
        plan: Set(plan),
        max_users: Set(max_users),
        settings: Set(settings),
        features: Set(json!(input.features.unwrap_or_default())),
        created_at: Set(now),
        updated_at: Set(now),
    };
    Ok(tenant::Entity::insert(model)
        .exec_with_returning(conn)
        .await?)
}

pub async fn set_status(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    slug: &str,
    status: TenantStatus,
) -> AppResult<tenant::Model> {
    update_by_slug(db, ctx, meta, slug, "tenant.set_status", move |t| {
        t.status = Set(status);
        Ok(())
    })
    .await
}

/// Moves a tenant to `plan` and, when given, replaces the `limits` that
/// override the plan's defaults (`{}` clears them): SUPER_ADMIN only, as a
/// tenant must not raise its own limits. Holds from the next request on.
pub async fn set_plan(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    slug: &str,
    plan: String,
    limits: Option<serde_json::Value>,
) -> AppResult<tenant::Model> {
    let plan = plan.trim().to_owned();
    if plan.is_empty() || plan.len() > 32 {
        return Err(AppError::bad_input("plan", "must be 1 to 32 characters"));
    }
    if let Some(limits) = &limits {
        LimitsOverride::parse(limits).map_err(|e| AppError::bad_input("limits", e))?;
    }
    update_by_slug(db, ctx, meta, slug, "tenant.set_plan", move |t| {
        t.plan = Set(plan);
        if let Some(limits) = limits {
            let mut settings = match t.settings.as_ref() {
                serde_json::Value::Object(map) => map.clone(),
                _ => serde_json::Map::new(),
            };
            settings.insert("limits".into(), limits);
            t.settings = Set(serde_json::Value::Object(settings));
        }
        Ok(())
    })
    .await
}

/// Changes the tenant `slug` with `change`, audited as `action` in the
/// caller's tenant and, when different, in the tenant changed.
async fn update_by_slug(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    slug: &str,
    action: &'static str,
    change: impl FnOnce(&mut tenant::ActiveModel) -> AppResult<()> + Send + 'static,
) -> AppResult<tenant::Model> {
    require_super_admin(ctx)?;
    let (caller, meta, slug) = (ctx.clone(), meta.clone(), slug.to_owned());
    db::transaction(db, move |txn| {
        Box::pin(async move {
            let current = tenant::Entity::find()
                .filter(tenant::Column::Slug.eq(slug.trim().to_lowercase()))
                .one(txn)
                .await?
                .ok_or_else(|| AppError::bad_input("slug", "no tenant with this slug"))?;
            let before = audit_image(&current);
            let mut active = current.into_active_model();
            change(&mut active)?;
            active.updated_at = Set(chrono::Utc::now());
            let updated = active.update(txn).await?;
            let after = audit_image(&updated);
            let mut tenants = vec![caller.tenant_id];
            if updated.id != caller.tenant_id {
                tenants.push(updated.id);
            }
            for tenant_id in tenants {
                audit::record(
                    txn,
                    tenant_id,
                    &Actor::of(&caller),
                    &meta,
                    Change {
                        action,
                        resource_type: "tenant",
                        resource_id: Some(updated.id.to_string()),
                        before: Some(before.clone()),
                        after: Some(after.clone()),
                    },
                )
                .await?;
            }
            Ok(updated)
        })
    })
    .await
}

/// The settings a tenant's admins control, stored in `tenants.settings`
/// (snake_case keys), with their defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantSettings {
    /// Events older than this many days are refused at ingestion and
    /// removed by the retention job.
    pub retention_days: u32,
    /// Store client IPs truncated (IPv4 /24, IPv6 /48) for privacy.
    pub truncate_ip: bool,
}

pub const DEFAULT_RETENTION_DAYS: u32 = 400;
/// Ten years: also bounds how far back event partitions reach.
pub const MAX_RETENTION_DAYS: u32 = 3650;

impl Default for TenantSettings {
    fn default() -> Self {
        TenantSettings {
            retention_days: DEFAULT_RETENTION_DAYS,
            truncate_ip: false,
        }
    }
}

impl TenantSettings {
    /// Reads the settings JSON; missing or out-of-range values fall back to
    /// the defaults (writes are validated, so that means an old row).
    pub fn from_json(settings: &serde_json::Value) -> Self {
        let defaults = TenantSettings::default();
        TenantSettings {
            retention_days: settings
                .get("retention_days")
                .and_then(serde_json::Value::as_u64)
                .filter(|d| (1..=u64::from(MAX_RETENTION_DAYS)).contains(d))
                .map_or(defaults.retention_days, |d| d as u32),
            truncate_ip: settings
                .get("truncate_ip")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(defaults.truncate_ip),
        }
    }
}

/// A change to a tenant's settings; `None` leaves a value as it is.
#[derive(Debug, Default)]
pub struct SettingsChange {
    pub retention_days: Option<i32>,
    pub truncate_ip: Option<bool>,
    /// Stored as `allow_list`, read into the tenant's policy.
    pub allow_list: Option<bool>,
}

/// The caller's tenant's settings.
pub async fn settings(db: &DatabaseConnection, ctx: &TenantCtx) -> AppResult<TenantSettings> {
    let tenant = find(db, ctx.tenant_id)
        .await?
        .ok_or(AppError::NotFound("tenant"))?;
    Ok(TenantSettings::from_json(&tenant.settings))
}

/// Changes the caller's own tenant's settings (ADMIN and up), audited.
pub async fn update_settings(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    change: SettingsChange,
) -> AppResult<tenant::Model> {
    if !ctx.role.at_least(Role::Admin) {
        return Err(AppError::Forbidden("requires role ADMIN or higher".into()));
    }
    if let Some(days) = change.retention_days
        && !(1..=MAX_RETENTION_DAYS as i32).contains(&days)
    {
        return Err(AppError::bad_input(
            "retentionDays",
            format!("must be between 1 and {MAX_RETENTION_DAYS}"),
        ));
    }
    let (caller, meta) = (ctx.clone(), meta.clone());
    db::transaction(db, move |txn| {
        Box::pin(async move {
            let current = tenant::Entity::find_by_id(caller.tenant_id)
                .one(txn)
                .await?
                .ok_or(AppError::NotFound("tenant"))?;
            let before = current.settings.clone();
            let mut settings = match &current.settings {
                serde_json::Value::Object(map) => map.clone(),
                _ => serde_json::Map::new(),
            };
            if let Some(days) = change.retention_days {
                settings.insert("retention_days".into(), json!(days));
            }
            if let Some(truncate) = change.truncate_ip {
                settings.insert("truncate_ip".into(), json!(truncate));
            }
            if let Some(allow_list) = change.allow_list {
                settings.insert("allow_list".into(), json!(allow_list));
            }
            let mut active = current.into_active_model();
            active.settings = Set(serde_json::Value::Object(settings));
            active.updated_at = Set(chrono::Utc::now());
            let updated = active.update(txn).await?;
            audit::record(
                txn,
                caller.tenant_id,
                &Actor::of(&caller),
                &meta,
                Change {
                    action: "tenant.update_settings",
                    resource_type: "tenant",
                    resource_id: Some(updated.id.to_string()),
                    before: Some(before),
                    after: Some(updated.settings.clone()),
                },
            )
            .await?;
            Ok(updated)
        })
    })
    .await
}

/// Slugs name tenants in tokens, URLs and keys: 2 to 63 characters of
/// lower-case letters, digits and inner hyphens.
pub fn validate_slug(raw: &str) -> AppResult<String> {
    let slug = raw.trim().to_lowercase();
    let ok = (2..=63).contains(&slug.len())
        && slug
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !slug.starts_with('-')
        && !slug.ends_with('-');
    if ok {
        Ok(slug)
    } else {
        Err(AppError::bad_input(
            "slug",
            "must be 2 to 63 characters of a-z, 0-9 and inner hyphens",
        ))
    }
}

fn validate_domain(domain: String) -> AppResult<String> {
    let ok = domain.len() <= 253
        && domain.contains('.')
        && domain.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(domain)
    } else {
        Err(AppError::bad_input("domain", "not a valid domain name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_fall_back_to_defaults() {
        assert_eq!(
            TenantSettings::from_json(&json!({})),
            TenantSettings::default()
        );
        let s = TenantSettings::from_json(&json!({ "retention_days": 30, "truncate_ip": true }));
        assert_eq!((s.retention_days, s.truncate_ip), (30, true));
        let odd = TenantSettings::from_json(&json!({ "retention_days": 0, "truncate_ip": "yes" }));
        assert_eq!(odd, TenantSettings::default());
    }

    #[test]
    fn slugs_are_checked() {
        assert_eq!(validate_slug(" Acme-2 ").ok(), Some("acme-2".into()));
        for bad in ["a", "-acme", "acme-", "ac me", "acme_corp", &"a".repeat(64)] {
            assert!(validate_slug(bad).is_err(), "{bad}");
        }
        assert!(validate_slug(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn domains_are_checked() {
        assert!(validate_domain("analytics.acme.com".into()).is_ok());
        assert!(validate_domain("localhost".into()).is_err());
        assert!(validate_domain("bad_domain.com".into()).is_err());
    }
}
