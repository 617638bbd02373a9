//! Persisted operations: the `PersistedOperation` object, listing,
//! `registerOperation` and `deleteOperation` (ADMIN and up), and
//! [`PersistedGate`], the extension that refuses a request before it is
//! parsed when the HTTP layer could not resolve its persisted query or
//! when the tenant's allow-list does not hold its document.
//!
//! The allow-list is checked here, in the schema, rather than in the HTTP
//! handlers, so that it holds on every transport: POST, GET and the
//! WebSocket alike.

use std::any::TypeId;

use async_graphql::connection::{Connection, Edge};
use async_graphql::extensions::ExtensionContext;
use async_graphql::{
    Context, ErrorExtensions, ID, Object, Request, Result, ServerError, ServerResult,
};
use chrono::{DateTime, Utc};

use super::guard::{Caller, RoleGuard, meta, state, tenant};
use super::users::parse_id;
use crate::app::AppState;
use crate::auth::{Role, TenantCtx};
use crate::domain::page::{PageRequest, encode_cursor};
use crate::domain::persisted;
use crate::entities::persisted_operation;
use crate::error::AppError;

pub struct PersistedOperation(persisted_operation::Model);

/// A GraphQL document an ADMIN registered. Clients may run it by its hash
/// alone; in allow-list mode it is one of the only documents members below
/// ADMIN may run.
#[Object]
impl PersistedOperation {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Lowercase hex SHA-256 of `document`, as clients send it in
    /// `extensions.persistedQuery.sha256Hash`.
    async fn sha256_hash(&self) -> &str {
        &self.0.sha256_hash
    }
    async fn document(&self) -> &str {
        &self.0.document
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// Who registered it: the user's email, or `service:<name>`.
    async fn created_by(&self) -> &str {
        &self.0.actor
    }
}

#[derive(Default)]
pub struct PersistedOperationQuery;

#[Object]
impl PersistedOperationQuery {
    /// The tenant's registered operations, oldest first (ADMIN and up).
    #[graphql(
        guard = "RoleGuard::new(Role::Admin)",
        complexity = "super::page_complexity(first, child_complexity)"
    )]
    async fn persisted_operations(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, PersistedOperation>> {
        let page = PageRequest::new(first, after.as_deref())?;
        let found = persisted::list(&state(ctx)?.db, tenant(ctx)?, page).await?;
        let mut conn = Connection::new(page.after.is_some(), found.has_next);
        conn.edges.extend(
            found
                .items
                .into_iter()
                .map(|m| Edge::new(encode_cursor(m.id), PersistedOperation(m))),
        );
        Ok(conn)
    }
}

#[derive(Default)]
pub struct PersistedOperationMutation;

#[Object]
impl PersistedOperationMutation {
    /// Registers a document (ADMIN and up); its hash is computed here. The
    /// document must parse as GraphQL. Registering a document the tenant
    /// already has returns that operation unchanged. Holds on this
    /// instance from the next request on, and on the others as soon as
    /// they read the change through Redis (within a minute without it).
    #[graphql(guard = "RoleGuard::new(Role::Admin)")]
    async fn register_operation(
        &self,
        ctx: &Context<'_>,
        name: String,
        document: String,
    ) -> Result<PersistedOperation> {
        let app = state(ctx)?;
        if document.len() > persisted::MAX_DOCUMENT_BYTES {
            return Err(AppError::bad_input(
                "document",
                format!("at most {} bytes", persisted::MAX_DOCUMENT_BYTES),
            )
            .into());
        }
        if !super::parse_is_bounded(&document, &app.config.limits) {
            return Err(AppError::bad_input(
                "document",
                "nests too deeply or has too many tokens to be parsed",
            )
            .into());
        }
        if let Err(e) = async_graphql::parser::parse_query(&document) {
            return Err(
                AppError::bad_input("document", format!("is not a GraphQL document: {e}")).into(),
            );
        }
        let model = persisted::register(
            &app.db,
            &app.persisted,
            tenant(ctx)?,
            meta(ctx),
            &name,
            document,
        )
        .await?;
        Ok(PersistedOperation(model))
    }

    /// Deletes a registered operation (ADMIN and up); false when there was
    /// nothing to delete. In allow-list mode it is refused from the next
    /// request on.
    #[graphql(guard = "RoleGuard::new(Role::Admin)")]
    async fn delete_operation(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let Ok(id) = parse_id("id", &id) else {
            return Ok(false);
        };
        let app = state(ctx)?;
        Ok(persisted::delete(&app.db, &app.persisted, tenant(ctx)?, meta(ctx), id).await?)
    }
}

/// Put into a request's data by the HTTP layer when its persisted query
/// could not be resolved: [`PersistedGate`] answers with this error
/// instead of running the request, so each request of a batch keeps its
/// place and its own answer.
#[derive(Clone, Debug)]
pub struct Refused(pub ServerError);

impl Refused {
    pub fn new(err: &AppError) -> Self {
        let extended = err.extend();
        let mut server = ServerError::new(extended.message, None);
        server.extensions = extended.extensions;
        Refused(server)
    }
}

/// The value of type `T` in the request's own data (where the HTTP layer
/// puts it); the extension context does not see that data until the
/// request is prepared.
pub(crate) fn request_data<T: 'static>(request: &Request) -> Option<&T> {
    request
        .data
        .get(&TypeId::of::<T>())
        .and_then(|d| d.downcast_ref::<T>())
}

/// The message a refused caller reads: what happened and what to do.
fn not_in_list(ctx: &TenantCtx) -> AppError {
    AppError::NotInAllowList(format!(
        "tenant `{}` runs only registered operations, and this document is not one: \
         an ADMIN can register it with registerOperation(name, document)",
        ctx.tenant_slug
    ))
}

/// Refuses unresolved persisted queries and, in allow-list mode,
/// unregistered documents of callers below ADMIN (see the module doc); run
/// by the request extension (`super::extension`) as a request is prepared.
pub(super) async fn gate(ctx: &ExtensionContext<'_>, request: &Request) -> ServerResult<()> {
    if let Some(Refused(err)) = request_data::<Refused>(request) {
        return Err(err.clone());
    }
    // HTTP puts the caller into the request; the WebSocket into the
    // connection's data.
    let caller = request_data::<Caller>(request).or_else(|| ctx.data_opt::<Caller>());
    if let (Some(Caller::Authenticated(caller)), Some(app)) = (caller, ctx.data_opt::<AppState>())
        && persisted::is_restricted(caller)
    {
        let hash = persisted::digest(&request.query);
        let allowed = app
            .operations
            .contains(&app.db, &app.persisted, caller, &hash)
            .await
            .map_err(|e| Refused::new(&e).0)?;
        if !allowed {
            app.telemetry.persisted.count("not_in_list");
            return Err(Refused::new(&not_in_list(caller)).0);
        }
    }
    Ok(())
}
