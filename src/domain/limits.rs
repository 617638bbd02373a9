//! Rate limits applied to a caller: the tenant's plan ([`Policy`]) read
//! with the caller, enforced by the shared [`RateLimiter`].
//!
//! [`Policy`]: crate::auth::policy::Policy

use crate::auth::TenantCtx;
use crate::auth::policy::Quota;
use crate::cache::rate::{Kind, RateLimiter};
use crate::error::{AppError, AppResult};

/// Who a per-user limit counts: the user, or the service token's name.
fn who(ctx: &TenantCtx) -> String {
    match ctx.user_id {
        Some(id) => id.to_string(),
        None => ctx.actor.clone(),
    }
}

fn noun(kind: Kind) -> &'static str {
    match kind {
        Kind::Query => "queries",
        Kind::Mutation => "mutations",
        Kind::Ingestion => "events ingested",
        Kind::Budget => "estimated rows of metric queries",
    }
}

/// Takes `cost` units of `quota` for `kind` from the caller's tenant and
/// user, or says how long until they would fit.
pub async fn take(
    limiter: &RateLimiter,
    ctx: &TenantCtx,
    kind: Kind,
    quota: Quota,
    cost: u64,
) -> Result<(), std::time::Duration> {
    limiter
        .take(ctx.tenant_id, &who(ctx), kind, quota, cost)
        .await
}

/// Takes `cost` units of `kind` from the caller's tenant and user, or
/// refuses with `RATE_LIMITED` and how long to wait.
pub async fn admit(limiter: &RateLimiter, ctx: &TenantCtx, kind: Kind, cost: u64) -> AppResult<()> {
    let quota = match kind {
        Kind::Query => ctx.policy.queries,
        Kind::Mutation => ctx.policy.mutations,
        Kind::Ingestion => ctx.policy.ingestion,
        // Budgets are taken by `metrics::budget`, in their own units.
        Kind::Budget => return Ok(()),
    };
    take(limiter, ctx, kind, quota, cost)
        .await
        .map_err(|retry_after| {
            let over = if cost > quota.per_user.min(quota.per_tenant) {
                format!(
                    "{cost} {} at once is more than the plan allows in a minute",
                    noun(kind)
                )
            } else {
                format!(
                    "rate limit reached: {} per minute for the tenant, {} per user",
                    quota.per_tenant, quota.per_user
                )
            };
            AppError::RateLimited {
                message: format!("{over} ({}); retry later", noun(kind)),
                retry_after,
            }
        })
}
