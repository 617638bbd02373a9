//! The caller: `me` and `login`.

use async_graphql::{Context, Object, Result, SimpleObject};

use super::guard::{meta, state, tenant};
use super::tenants::Tenant;
use super::users::{RoleValue, User};
use crate::domain::{auth, tenants, users};
use crate::error::AppError;

/// Who is calling: their user, tenant and the role their token grants.
/// The caller's user and tenant rows, read at most once per request: a
/// document of a thousand aliased `me` fields costs two statements, not
/// two thousand. The HTTP layer puts one in each request (without one,
/// e.g. over the WebSocket, each field reads its own).
#[derive(Clone, Default)]
pub struct MeOnce(
    std::sync::Arc<
        tokio::sync::OnceCell<(crate::entities::user::Model, crate::entities::tenant::Model)>,
    >,
);

pub struct Viewer {
    user: User,
    tenant: Tenant,
    role: RoleValue,
}

#[Object]
impl Viewer {
    async fn user(&self) -> &User {
        &self.user
    }
    async fn tenant(&self) -> &Tenant {
        &self.tenant
    }
    /// The role in force, which guards every field: the token's, never more
    /// than the user's current role.
    async fn role(&self) -> RoleValue {
        self.role
    }
}

#[derive(SimpleObject)]
pub struct AuthPayload {
    /// A bearer token for `Authorization: Bearer <token>`.
    token: String,
    user: User,
}

#[derive(Default)]
pub struct SessionQuery;

#[Object]
impl SessionQuery {
    async fn me(&self, ctx: &Context<'_>) -> Result<Viewer> {
        let caller = tenant(ctx)?;
        let db = &state(ctx)?.db;
        let Some(user_id) = caller.user_id else {
            return Err(AppError::Forbidden(format!(
                "{} is a service token: it has no user (mint one with `pulse token --user EMAIL`)",
                caller.actor
            ))
            .into());
        };
        let load = || async {
            let (user, tenant) = tokio::try_join!(
                users::find(db, caller, user_id),
                tenants::find(db, caller.tenant_id)
            )?;
            Ok::<_, AppError>((
                user.ok_or(AppError::NotFound("user"))?,
                tenant.ok_or(AppError::NotFound("tenant"))?,
            ))
        };
        // Read once per request, however many aliases ask.
        let (user, tenant) = match ctx.data_opt::<MeOnce>() {
            Some(once) => once.0.get_or_try_init(load).await?.clone(),
            None => load().await?,
        };
        Ok(Viewer {
            user: User(user),
            tenant: Tenant(tenant),
            role: caller.role.into(),
        })
    }
}

#[derive(Default)]
pub struct SessionMutation;

#[Object]
impl SessionMutation {
    /// Signs in with a password; needs no token. Unknown tenant, unknown
    /// email and wrong password are the same UNAUTHENTICATED error.
    async fn login(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        email: String,
        password: String,
    ) -> Result<AuthPayload> {
        let app = state(ctx)?;
        let session = auth::login(&app.db, &app.keys, meta(ctx), &tenant, &email, password).await?;
        Ok(AuthPayload {
            token: session.token,
            user: User(session.user),
        })
    }
}
