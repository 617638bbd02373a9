//! Tenant administration, for SUPER_ADMINs.
//!
//! `tenants` is the one global table, so these are named system paths: they
//! run on the connection's own role, not a tenant-scoped transaction. The
//! audit entry goes to the actor's tenant and, when different, to the
//! tenant changed, so its admins see who changed it.

use sea_orm::{
    ActiveEnum, ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, TransactionTrait,
};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Actor, Change};
use crate::auth::{RequestMeta, Role, TenantCtx};
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
    let txn = db.begin().await?;
    let created = insert(&txn, input).await?;
    audit::record(
        &txn,
        ctx.tenant_id,
        &Actor::of(ctx),
        meta,
        Change {
            action: "tenant.create",
            resource_type: "tenant",
            resource_id: Some(created.id.to_string()),
            before: None,
            after: Some(audit_image(&created)),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(created)
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
    require_super_admin(ctx)?;
    let txn = db.begin().await?;
    let current = tenant::Entity::find()
        .filter(tenant::Column::Slug.eq(slug.trim().to_lowercase()))
        .one(&txn)
        .await?
        .ok_or_else(|| AppError::bad_input("slug", "no tenant with this slug"))?;
    let before = audit_image(&current);
    let mut active = current.into_active_model();
    active.status = Set(status);
    active.updated_at = Set(chrono::Utc::now());
    let updated = active.update(&txn).await?;
    let after = audit_image(&updated);
    let mut tenants = vec![ctx.tenant_id];
    if updated.id != ctx.tenant_id {
        tenants.push(updated.id);
    }
    for tenant_id in tenants {
        audit::record(
            &txn,
            tenant_id,
            &Actor::of(ctx),
            meta,
            Change {
                action: "tenant.set_status",
                resource_type: "tenant",
                resource_id: Some(updated.id.to_string()),
                before: Some(before.clone()),
                after: Some(after.clone()),
            },
        )
        .await?;
    }
    txn.commit().await?;
    Ok(updated)
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
