//! Turning credentials into a [`TenantCtx`]: bearer tokens on every request,
//! and passwords at `login`.
//!
//! Both are named system paths: they run before a tenant is known, on the
//! connection's own role, and every query names the tenant explicitly.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
};
use uuid::Uuid;

use super::audit::{self, Actor, Change};
use crate::auth::jwt::{JwtKeys, TokenError};
use crate::auth::policy::Policy;
use crate::auth::{RequestMeta, SERVICE_PREFIX, TenantCtx, password};
use crate::db;
use crate::entities::tenant;
use crate::entities::user::{self, UserStatus};
use crate::error::{AppError, AppResult};

/// Lifetime of tokens issued by `login`.
pub const LOGIN_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// Verifies a bearer token and checks that its tenant and user exist and
/// may act.
pub async fn authenticate(
    db: &DatabaseConnection,
    keys: &JwtKeys,
    token: &str,
) -> AppResult<TenantCtx> {
    verify(db, keys, token).await.map(|(ctx, _)| ctx)
}

/// [`authenticate`], with the token's expiry.
async fn verify(
    db: &DatabaseConnection,
    keys: &JwtKeys,
    token: &str,
) -> AppResult<(TenantCtx, u64)> {
    let claims = keys.verify(token).map_err(|e| match e {
        TokenError::Expired => AppError::Unauthenticated("token expired".into()),
        TokenError::Invalid => AppError::Unauthenticated("invalid token".into()),
    })?;
    let tenant = tenant_by_slug(db, &claims.tenant)
        .await?
        .ok_or_else(|| AppError::Unauthenticated("unknown tenant".into()))?;
    if !tenant.status.is_usable() {
        return Err(AppError::TenantSuspended);
    }
    let policy = Arc::new(Policy::of(&tenant.plan, &tenant.settings));
    if let Some(name) = claims.sub.strip_prefix(SERVICE_PREFIX) {
        let valid = (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(AppError::Unauthenticated("invalid service name".into()));
        }
        let ctx = TenantCtx {
            tenant_id: tenant.id,
            tenant_slug: tenant.slug,
            user_id: None,
            actor: claims.sub.clone(),
            role: claims.role,
            policy,
        };
        return Ok((ctx, claims.exp));
    }
    let by_subject = match Uuid::parse_str(&claims.sub) {
        Ok(id) => user::Column::Id.eq(id),
        Err(_) => user::Column::Email.eq(claims.sub.trim().to_lowercase()),
    };
    let user = user::Entity::find()
        .filter(user::Column::TenantId.eq(tenant.id))
        .filter(by_subject)
        .one(db)
        .await?
        .ok_or_else(|| AppError::Unauthenticated("unknown user".into()))?;
    if user.status != UserStatus::Active {
        return Err(AppError::Unauthenticated("user is not active".into()));
    }
    let ctx = TenantCtx {
        tenant_id: tenant.id,
        tenant_slug: tenant.slug,
        user_id: Some(user.id),
        actor: user.email,
        // A token outlives a demotion; the user's current role bounds it.
        role: claims.role.min(user.role),
        policy,
    };
    Ok((ctx, claims.exp))
}

/// Tokens verified in the last second, with what they resolved to: a
/// dashboard refreshing many times a second is authenticated once a
/// second instead of twice per request (two reads and a signature check).
///
/// The price is staleness of at most [`VerifiedTokens::TTL`] on instances
/// other than the one that made a change; the one that made it forgets
/// everything at once ([`VerifiedTokens::forget_all`]), so a suspension
/// holds there from the next request on. An entry never outlives its
/// token's `exp`.
#[derive(Clone)]
pub struct VerifiedTokens {
    cache: moka::sync::Cache<String, (TenantCtx, u64)>,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        VerifiedTokens {
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(VerifiedTokens::TTL)
                .build(),
        }
    }
}

impl VerifiedTokens {
    pub const TTL: Duration = Duration::from_secs(1);

    /// [`authenticate`], or its answer for the same token within the last
    /// second.
    pub async fn authenticate(
        &self,
        db: &DatabaseConnection,
        keys: &JwtKeys,
        token: &str,
    ) -> AppResult<TenantCtx> {
        self.authenticate_until(db, keys, token)
            .await
            .map(|(ctx, _)| ctx)
    }

    /// [`Self::authenticate`], with the token's expiry (`exp`, Unix
    /// seconds): a socket is closed then.
    pub async fn authenticate_until(
        &self,
        db: &DatabaseConnection,
        keys: &JwtKeys,
        token: &str,
    ) -> AppResult<(TenantCtx, u64)> {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        if let Some((ctx, exp)) = self.cache.get(token)
            && exp > now
        {
            return Ok((ctx, exp));
        }
        let (ctx, exp) = verify(db, keys, token).await?;
        self.cache.insert(token.to_owned(), (ctx.clone(), exp));
        Ok((ctx, exp))
    }

    /// Drops every entry: called after a change to a tenant or a user.
    pub fn forget_all(&self) {
        self.cache.invalidate_all();
    }
}

/// A signed-in user and their token.
#[derive(Debug)]
pub struct SignedIn {
    pub token: String,
    pub user: user::Model,
}

/// Checks a password and issues a token. Unknown tenant, unknown user,
/// inactive user and wrong password all give the same error after the same
/// amount of hashing work.
pub async fn login(
    db: &DatabaseConnection,
    keys: &JwtKeys,
    meta: &RequestMeta,
    tenant_slug: &str,
    email: &str,
    password_attempt: String,
) -> AppResult<SignedIn> {
    let rejected = || AppError::Unauthenticated("invalid tenant, email or password".into());
    let tenant = tenant_by_slug(db, tenant_slug).await?;
    let user = match &tenant {
        Some(t) => {
            user::Entity::find()
                .filter(user::Column::TenantId.eq(t.id))
                .filter(user::Column::Email.eq(email.trim().to_lowercase()))
                .one(db)
                .await?
        }
        None => None,
    };
    let hash = user.as_ref().and_then(|u| u.password_hash.clone());
    let verified = password::verify(password_attempt, hash).await;
    let (Some(tenant), Some(user)) = (tenant, user) else {
        return Err(rejected());
    };
    if !verified || user.status != UserStatus::Active {
        tracing::info!(tenant = %tenant.slug, user_id = %user.id, "login refused");
        return Err(rejected());
    }
    if !tenant.status.is_usable() {
        return Err(AppError::TenantSuspended);
    }

    let now = chrono::Utc::now();
    let (tenant_id, meta) = (tenant.id, meta.clone());
    let updated = db::transaction(db, move |txn| {
        Box::pin(async move {
            // `user` was read with its tenant in the filter.
            let mut stamp: user::ActiveModel = user.into();
            stamp.last_login_at = Set(Some(now));
            let updated = stamp.update(txn).await?;
            audit::record(
                txn,
                tenant_id,
                &Actor {
                    user_id: Some(updated.id),
                    name: updated.email.clone(),
                },
                &meta,
                Change {
                    action: "user.login",
                    resource_type: "user",
                    resource_id: Some(updated.id.to_string()),
                    before: None,
                    after: None,
                },
            )
            .await?;
            Ok(updated)
        })
    })
    .await?;

    let token = keys
        .mint(
            &updated.id.to_string(),
            &tenant.slug,
            updated.role,
            LOGIN_TOKEN_TTL,
        )
        .map_err(AppError::internal)?;
    Ok(SignedIn {
        token,
        user: updated,
    })
}

async fn tenant_by_slug(db: &DatabaseConnection, slug: &str) -> AppResult<Option<tenant::Model>> {
    Ok(tenant::Entity::find()
        .filter(tenant::Column::Slug.eq(slug.trim().to_lowercase()))
        .one(db)
        .await?)
}
