//! Users of a tenant: listing, lookup and creation.

use sea_orm::{
    ActiveEnum, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Actor, Change};
use super::page::{Page, PageRequest};
use crate::auth::{RequestMeta, Role, TenantCtx, password};
use crate::db::{scoped, scoped_write};
use crate::entities::tenant;
use crate::entities::user::{self, UserStatus};
use crate::error::{AppError, AppResult};

pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 1024;

/// What an admin supplies to create a user.
#[derive(Debug)]
pub struct NewUser {
    pub email: String,
    pub password: Option<String>,
    pub role: Role,
    pub display_name: Option<String>,
}

/// The user as the audit trail records it: never the password hash.
pub fn audit_image(user: &user::Model) -> serde_json::Value {
    json!({
        "id": user.id,
        "email": user.email,
        "displayName": user.display_name,
        "role": user.role.as_str(),
        "status": user.status.to_value(),
    })
}

pub async fn list(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    page: PageRequest,
) -> AppResult<Page<user::Model>> {
    let tenant_id = ctx.tenant_id;
    let rows = scoped(db, ctx, move |txn| {
        Box::pin(async move {
            let mut query = user::Entity::find()
                .filter(user::Column::TenantId.eq(tenant_id))
                .order_by_asc(user::Column::Id)
                .limit(page.first + 1);
            if let Some(after) = page.after {
                query = query.filter(user::Column::Id.gt(after));
            }
            Ok(query.all(txn).await?)
        })
    })
    .await?;
    Ok(Page::from_overfetch(rows, page.first))
}

/// A user of the caller's tenant; `None` for unknown ids and other tenants'.
pub async fn find(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    id: Uuid,
) -> AppResult<Option<user::Model>> {
    let tenant_id = ctx.tenant_id;
    scoped(db, ctx, move |txn| {
        Box::pin(async move {
            Ok(user::Entity::find_by_id(id)
                .filter(user::Column::TenantId.eq(tenant_id))
                .one(txn)
                .await?)
        })
    })
    .await
}

pub async fn create(
    db: &DatabaseConnection,
    ctx: &TenantCtx,
    meta: &RequestMeta,
    input: NewUser,
) -> AppResult<user::Model> {
    let email = normalize_email(&input.email)?;
    if input.role > ctx.role {
        return Err(AppError::Forbidden(format!(
            "a {} cannot create a user with role {}",
            ctx.role.as_str(),
            input.role.as_str()
        )));
    }
    let display_name = match input.display_name.map(|n| n.trim().to_owned()) {
        Some(n) if n.chars().count() > 200 => {
            return Err(AppError::bad_input("displayName", "at most 200 characters"));
        }
        Some(n) if n.is_empty() => None,
        other => other,
    };
    let password_hash = match input.password {
        Some(p) => {
            let len = p.chars().count();
            if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&len) {
                return Err(AppError::bad_input(
                    "password",
                    format!("must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"),
                ));
            }
            Some(password::hash(p).await.map_err(AppError::internal)?)
        }
        None => None,
    };

    let (caller, meta) = (ctx.clone(), meta.clone());
    scoped_write(db, ctx, move |txn| {
        Box::pin(async move {
            let tenant = tenant::Entity::find_by_id(caller.tenant_id)
                .one(txn)
                .await?
                .ok_or(AppError::NotFound("tenant"))?;
            let existing = user::Entity::find()
                .filter(user::Column::TenantId.eq(caller.tenant_id))
                .count(txn)
                .await?;
            if existing >= tenant.max_users.max(0) as u64 {
                return Err(AppError::QuotaExceeded(format!(
                    "tenant has reached its limit of {} users",
                    tenant.max_users
                )));
            }
            let taken = user::Entity::find()
                .filter(user::Column::TenantId.eq(caller.tenant_id))
                .filter(user::Column::Email.eq(&email))
                .one(txn)
                .await?
                .is_some();
            if taken {
                return Err(AppError::bad_input(
                    "email",
                    "a user with this email already exists in this tenant",
                ));
            }
            let now = chrono::Utc::now();
            let status = if password_hash.is_some() {
                UserStatus::Active
            } else {
                UserStatus::Invited
            };
            let created = user::Entity::insert(user::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(caller.tenant_id),
                email: Set(email),
                display_name: Set(display_name),
                password_hash: Set(password_hash),
                role: Set(input.role),
                status: Set(status),
                last_login_at: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
            })
            .exec_with_returning(txn)
            .await?;
            audit::record(
                txn,
                caller.tenant_id,
                &Actor::of(&caller),
                &meta,
                Change {
                    action: "user.create",
                    resource_type: "user",
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

/// Creates a user from the command line (`pulse user create`), so that a
/// fresh production database can get its first admin: the same rules and
/// audit as `createUser`, acting as `service:cli` in that tenant.
/// Idempotent: an existing email is returned unchanged, with `false`.
pub async fn bootstrap(
    db: &DatabaseConnection,
    meta: &RequestMeta,
    tenant_slug: &str,
    input: NewUser,
) -> AppResult<(user::Model, bool)> {
    let tenant = super::tenants::by_slug(db, tenant_slug)
        .await?
        .ok_or_else(|| AppError::bad_input("tenant", "no tenant with this slug"))?;
    let email = normalize_email(&input.email)?;
    let existing = user::Entity::find()
        .filter(user::Column::TenantId.eq(tenant.id))
        .filter(user::Column::Email.eq(&email))
        .one(db)
        .await?;
    if let Some(existing) = existing {
        return Ok((existing, false));
    }
    let ctx = TenantCtx {
        tenant_id: tenant.id,
        tenant_slug: tenant.slug,
        user_id: None,
        actor: format!("{}cli", crate::auth::SERVICE_PREFIX),
        role: Role::SuperAdmin,
        policy: Default::default(),
    };
    Ok((create(db, &ctx, meta, input).await?, true))
}

/// Trims and lower-cases an email and checks its shape; the field name is
/// `email` in errors.
pub fn normalize_email(raw: &str) -> AppResult<String> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 320
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        })
        && !email.chars().any(char::is_whitespace);
    if valid {
        Ok(email)
    } else {
        Err(AppError::bad_input("email", "not a valid email address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email("  Ann@Example.COM ").ok(),
            Some("ann@example.com".into())
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@x.io",
            "a@b",
            "a b@x.io",
            "a@x.io@y.io",
            "a@.io",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }
}
