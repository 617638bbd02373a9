//! Who the caller is, and declarative role checks on fields.

use async_graphql::{Context, Guard};

use crate::app::AppState;
use crate::auth::{RequestMeta, Role, TenantCtx};
use crate::error::AppError;

/// The outcome of authenticating one request, decided by the HTTP layer
/// before execution. Fields that need a caller turn a failure into its
/// error; `login` and introspection need none.
#[derive(Clone, Debug)]
pub enum Caller {
    Anonymous,
    Authenticated(TenantCtx),
    Rejected(Rejection),
}

#[derive(Clone, Debug)]
pub enum Rejection {
    Unauthenticated(String),
    Suspended,
    Unavailable(String),
}

impl Caller {
    pub fn from_result(result: Result<TenantCtx, AppError>) -> Self {
        match result {
            Ok(ctx) => Caller::Authenticated(ctx),
            Err(AppError::Unauthenticated(m)) => Caller::Rejected(Rejection::Unauthenticated(m)),
            Err(AppError::TenantSuspended) => Caller::Rejected(Rejection::Suspended),
            Err(AppError::Unavailable(m)) => Caller::Rejected(Rejection::Unavailable(m)),
            Err(other) => {
                // Already logged with the request id by `extend`.
                let _ = async_graphql::ErrorExtensions::extend(&other);
                Caller::Rejected(Rejection::Unavailable(
                    "could not verify credentials; retry shortly".into(),
                ))
            }
        }
    }

    pub fn tenant(&self) -> Result<&TenantCtx, AppError> {
        match self {
            Caller::Authenticated(ctx) => Ok(ctx),
            Caller::Anonymous => Err(AppError::Unauthenticated(
                "missing bearer token (Authorization: Bearer <jwt>)".into(),
            )),
            Caller::Rejected(Rejection::Unauthenticated(m)) => {
                Err(AppError::Unauthenticated(m.clone()))
            }
            Caller::Rejected(Rejection::Suspended) => Err(AppError::TenantSuspended),
            Caller::Rejected(Rejection::Unavailable(m)) => Err(AppError::Unavailable(m.clone())),
        }
    }
}

/// In a socket's connection data: the token its `connection_init`
/// carried. Each operation over the socket authenticates it again (as
/// every HTTP request does), so a lowered role, a disabled user or a
/// suspended tenant holds for the socket's next operation too.
pub struct SocketToken(pub String);

/// For an operation over a socket: the caller as of now, put into the
/// operation's own data (which fields read before the connection's), or
/// the operation's refusal. Run by the request extension as it prepares.
pub(super) async fn refresh_socket_caller(
    ctx: &async_graphql::extensions::ExtensionContext<'_>,
    request: &mut async_graphql::Request,
) -> async_graphql::ServerResult<()> {
    let (Some(SocketToken(token)), Some(app)) =
        (ctx.data_opt::<SocketToken>(), ctx.data_opt::<AppState>())
    else {
        return Ok(());
    };
    match app.tokens.authenticate(&app.db, &app.keys, token).await {
        Ok(caller) => {
            request.data.insert(Caller::Authenticated(caller));
            Ok(())
        }
        Err(e) => Err(super::persisted::Refused::new(&e).0),
    }
}

/// The verified caller of this request, or the reason there is none.
pub fn tenant<'a>(ctx: &'a Context<'_>) -> async_graphql::Result<&'a TenantCtx> {
    static ANONYMOUS: Caller = Caller::Anonymous;
    Ok(ctx.data_opt::<Caller>().unwrap_or(&ANONYMOUS).tenant()?)
}

pub fn state<'a>(ctx: &'a Context<'_>) -> async_graphql::Result<&'a AppState> {
    ctx.data::<AppState>()
}

pub fn meta<'a>(ctx: &'a Context<'_>) -> &'a RequestMeta {
    static EMPTY: RequestMeta = RequestMeta {
        request_id: None,
        ip: None,
        user_agent: None,
    };
    ctx.data_opt::<RequestMeta>().unwrap_or(&EMPTY)
}

/// Requires an authenticated caller with at least `role`.
pub struct RoleGuard {
    role: Role,
}

impl RoleGuard {
    pub fn new(role: Role) -> Self {
        RoleGuard { role }
    }
}

impl Guard for RoleGuard {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        let caller = tenant(ctx)?;
        if caller.role.at_least(self.role) {
            Ok(())
        } else {
            Err(
                AppError::Forbidden(format!("requires role {} or higher", self.role.as_str()))
                    .into(),
            )
        }
    }
}
