//! Rate limits for operations that arrive over the WebSocket.
//!
//! HTTP admits a whole batch before execution (`http::graphql::admit`:
//! 429, `Retry-After`) and marks its requests [`Admitted`]. An operation
//! sent over the socket has no batch and no status line: it is admitted
//! here, as it is prepared, against the same rates (queries and
//! subscriptions as queries, mutations as mutations), and a refusal fails
//! that operation only, with `RATE_LIMITED` and `retryAfter`.

use async_graphql::extensions::ExtensionContext;
use async_graphql::parser::types::OperationType;
use async_graphql::{Request, ServerResult};

use super::guard::Caller;
use super::persisted::{Refused, request_data};
use crate::app::AppState;
use crate::cache::rate::Kind;
use crate::domain::limits;

/// In a request's data: the HTTP layer already took its rate.
#[derive(Clone, Copy)]
pub struct Admitted;

/// Admits `request` against the caller's rates unless HTTP already did;
/// run by the request extension (`super::extension`) as it is prepared.
pub(super) async fn admit(ctx: &ExtensionContext<'_>, request: &mut Request) -> ServerResult<()> {
    if request_data::<Admitted>(request).is_none()
        && let Some(Caller::Authenticated(caller)) = ctx.data_opt::<Caller>()
        && let Some(app) = ctx.data_opt::<AppState>()
    {
        let kind = match super::operation_type(request, &app.config.limits) {
            Some(OperationType::Mutation) => Kind::Mutation,
            _ => Kind::Query,
        };
        limits::admit(&app.limiter, caller, kind, 1)
            .await
            .map_err(|e| Refused::new(&e).0)?;
    }
    Ok(())
}
