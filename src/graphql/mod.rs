//! The GraphQL schema: assembly here, thin resolvers per capability in the
//! sibling modules (each holds its output objects, inputs, `*Query` and
//! `*Mutation`, merged below). Resolvers validate arguments into domain
//! types, call `domain`, and wrap the models they get back.
//!
//! The schema never imports axum: the HTTP layer puts a [`Caller`] and a
//! `RequestMeta` into each request's data.

mod alerts;
mod audit;
mod budget;
mod dashboards;
pub mod demo;
mod events;
mod extension;
mod guard;
mod live;
mod loaders;
mod metrics;
pub mod persisted;
mod provenance;
pub mod rates;
mod rollups;
mod saved_queries;
mod session;
mod tenants;
mod users;

use std::sync::Arc;

use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{MergedObject, MergedSubscription, Schema};

pub(crate) use alerts::alert_query;
pub use extension::{ErrorCodes, Executed};
pub use guard::{Caller, RoleGuard, SocketToken};
pub use session::MeOnce;

use crate::app::AppState;
use crate::config::Limits;

#[derive(MergedObject, Default)]
pub struct Query(
    session::SessionQuery,
    users::UserQuery,
    tenants::TenantQuery,
    audit::AuditQuery,
    events::EventQuery,
    metrics::MetricQuery,
    saved_queries::SavedQueryQuery,
    dashboards::DashboardQuery,
    dashboards::SharedDashboardQuery,
    persisted::PersistedOperationQuery,
    alerts::AlertQueryRoot,
    rollups::RollupQuery,
);

#[derive(MergedObject, Default)]
pub struct Mutation(
    session::SessionMutation,
    users::UserMutation,
    tenants::TenantMutation,
    events::EventMutation,
    saved_queries::SavedQueryMutation,
    dashboards::DashboardMutation,
    persisted::PersistedOperationMutation,
    alerts::AlertMutation,
    rollups::RollupMutation,
);

#[derive(MergedSubscription, Default)]
pub struct Subscription(live::LiveSubscription, alerts::AlertSubscription);

pub type PulseSchema = Schema<Query, Mutation, Subscription>;

/// The complexity of one `metrics` field: a database query, worth a
/// hundred plain fields, so the complexity budget also bounds how many one
/// operation may carry.
pub(crate) const METRIC_COST: usize = 100;
/// Funnels and retention walk every matching event of their actors.
pub(crate) const JOURNEY_COST: usize = 200;

/// How deep brackets may nest in a document: selections up to the depth
/// limit, and input values a little further.
fn max_nesting(limits: &Limits) -> usize {
    limits.max_depth.saturating_add(32)
}

/// Whether a document is within the limits checked before parsing (see
/// [`extension::shape`]): only such a document may be parsed ahead of
/// execution, e.g. to read its operation's name.
pub fn parse_is_bounded(query: &str, limits: &Limits) -> bool {
    let shape = extension::shape(query);
    shape.depth <= max_nesting(limits) && shape.tokens <= limits.max_tokens
}

/// The request's document parsed, when its text is within the lexical
/// limits; a document past them is left to execution, which refuses it
/// with a coded error without parsing it. The request keeps the parsed
/// document, so execution does not parse it again.
pub fn parsed<'r>(
    request: &'r mut async_graphql::Request,
    limits: &Limits,
) -> Option<&'r async_graphql::parser::types::ExecutableDocument> {
    if !parse_is_bounded(&request.query, limits) {
        return None;
    }
    request.parsed_query().ok()
}

/// Parsed documents by tenant and text: dashboards send the same few
/// documents over and over, and parsing one is a tenth of a cached
/// metric query's CPU. Keyed by tenant too, so that no tenant can tell by
/// timing what another sends.
#[derive(Clone)]
pub struct Documents(moka::sync::Cache<(uuid::Uuid, String), Arc<ExecutableDocument>>);

/// Documents longer than this are parsed every time.
const CACHED_DOCUMENT_BYTES: usize = 16 << 10;

impl Default for Documents {
    fn default() -> Self {
        Documents(
            moka::sync::Cache::builder()
                // A parsed document takes several times its text (every
                // name and position); weigh it generously.
                .weigher(|(_, text): &(uuid::Uuid, String), _| {
                    u32::try_from(text.len() * 16).unwrap_or(u32::MAX)
                })
                .max_capacity(32 << 20)
                .build(),
        )
    }
}

impl Documents {
    /// Gives `request` its parsed document from the cache, or parses it
    /// (within the lexical limits) and files it.
    pub fn prime(&self, tenant: uuid::Uuid, request: &mut async_graphql::Request, limits: &Limits) {
        if request.query.len() > CACHED_DOCUMENT_BYTES {
            return;
        }
        let key = (tenant, request.query.clone());
        if let Some(doc) = self.0.get(&key) {
            request.set_parsed_query((*doc).clone());
        } else if let Some(doc) = parsed(request, limits) {
            self.0.insert(key, Arc::new(doc.clone()));
        }
    }
}

/// The type of the operation the request selects (by `operationName`, or
/// the document's first), or `None` when the document does not parse.
pub fn operation_type(
    request: &mut async_graphql::Request,
    limits: &Limits,
) -> Option<async_graphql::parser::types::OperationType> {
    let wanted = request.operation_name.clone();
    let doc = parsed(request, limits)?;
    doc.operations
        .iter()
        .find(|(name, _)| match (&wanted, name) {
            (Some(wanted), Some(n)) => n.as_str() == wanted,
            _ => true,
        })
        .map(|(_, op)| op.node.ty)
}

/// Builds the schema; `state` is `None` only for printing the SDL.
pub fn build(state: Option<AppState>, limits: &Limits) -> PulseSchema {
    let max_fields = state
        .as_ref()
        .map_or(usize::MAX, |s| s.config.analytics.max_fields);
    let max_nesting = max_nesting(limits);
    let mut builder = Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .limit_depth(limits.max_depth)
    .limit_complexity(limits.max_complexity)
    // Selections nest up to the depth limit and input values a little
    // further; the lexical check refuses deeper documents before the
    // parser runs, and the parser's own bound backs it.
    .limit_recursive_depth(max_nesting)
    .extension(ErrorCodes {
        max_nesting,
        max_tokens: limits.max_tokens,
        max_fields,
    });
    if let Some(state) = state {
        builder = builder
            .data(loaders::UserLoader::new(state.db.clone()))
            .data(loaders::GrantLoader::new(state.db.clone()))
            .data(loaders::SavedQueryLoader::new(state.db.clone()))
            .data(loaders::VersionLoader::new(state.db.clone()))
            .data(state);
    }
    builder.finish()
}

/// The SDL that `pulse schema` prints and `schema.graphql` holds.
pub fn sdl() -> String {
    let limits = Limits {
        body_bytes: 0,
        max_depth: usize::MAX,
        max_complexity: usize::MAX,
        max_tokens: usize::MAX,
    };
    build(None, &limits).sdl()
}

/// GraphQL's `first`-based complexity for connection fields: each page
/// item costs its selection.
pub(crate) fn page_complexity(first: Option<i32>, child: usize) -> usize {
    let items = first.map_or(crate::domain::page::DEFAULT_PAGE as usize, |n| {
        n.max(0) as usize
    });
    items.saturating_mul(child).saturating_add(1)
}
