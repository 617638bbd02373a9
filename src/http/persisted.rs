//! Apollo's automatic persisted queries (APQ) on POST and GET: a request
//! may name its document by `extensions.persistedQuery = {version: 1,
//! sha256Hash}` instead of sending it.
//!
//! Resolution happens once the caller is known and before rate limits,
//! so that everything after it (the mutation check of GET, the query and
//! mutation rates, the allow-list, execution) sees the real document:
//!
//! - hash and document: the document must hash to it
//!   (`PERSISTED_QUERY_HASH_MISMATCH` otherwise); it is then filed under
//!   the caller's tenant and runs;
//! - hash alone: the tenant's stored document (or its registered operation
//!   of that hash) runs; an unknown hash is answered `PersistedQueryNotFound`
//!   (`PERSISTED_QUERY_NOT_FOUND`), and the client sends both.
//!
//! Documents are filed per tenant, so the lookup needs an authenticated
//! caller. Anyone else (no token, a bad one) is told `PersistedQueryNotFound`
//! for a hash alone rather than `UNAUTHENTICATED`: the client then sends the
//! whole document, which runs as any request does. That keeps `login`
//! working for clients that send every operation by hash first, and the
//! others still get `UNAUTHENTICATED` from execution. Nothing is filed for
//! such callers.
//!
//! In allow-list mode a restricted caller's documents are not filed either:
//! they run only if registered, and registered ones resolve by hash anyway.
//!
//! A request that cannot be resolved is not dropped from its batch: it is
//! marked [`Refused`], and the schema answers it with its error in its place.

use async_graphql::{BatchRequest, Request as GqlRequest, Value};

use super::HttpState;
use crate::domain::persisted;
use crate::error::{AppError, AppResult};
use crate::graphql::Caller;
use crate::graphql::persisted::Refused;

/// The extension key of the protocol.
const KEY: &str = "persistedQuery";

/// Whether the request names a persisted query (so an empty `query` is
/// not a mistake).
pub fn names_a_document(request: &GqlRequest) -> bool {
    request
        .extensions
        .get(KEY)
        .is_some_and(|v| !matches!(v, Value::Null))
}

/// The hash a request names, lowercased; an error names the part of
/// `extensions.persistedQuery` that is wrong.
fn reference(request: &GqlRequest) -> AppResult<Option<String>> {
    let value = match request.extensions.get(KEY) {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let Value::Object(fields) = value else {
        return Err(AppError::bad_input(
            "extensions.persistedQuery",
            "expected {\"version\": 1, \"sha256Hash\": \"<64 hex digits>\"}",
        ));
    };
    match fields.get("version") {
        Some(Value::Number(n)) if n.as_i64() == Some(1) => {}
        _ => {
            return Err(AppError::bad_input(
                "extensions.persistedQuery.version",
                "unsupported persisted query version: only version 1 is supported",
            ));
        }
    }
    match fields.get("sha256Hash") {
        Some(Value::String(hash)) if persisted::is_digest(hash) => {
            Ok(Some(hash.to_ascii_lowercase()))
        }
        _ => Err(AppError::bad_input(
            "extensions.persistedQuery.sha256Hash",
            "expected the SHA-256 of the document as 64 hex digits",
        )),
    }
}

/// Resolves every request of `batch` that names a persisted query, and
/// marks the ones that cannot be resolved [`Refused`].
pub async fn resolve(state: &HttpState, caller: &Caller, batch: &mut BatchRequest) {
    // Not `batch.iter_mut()`: its boxed iterator is not `Send`, and it
    // would be held across the awaits below.
    let requests: Vec<&mut GqlRequest> = match batch {
        BatchRequest::Single(r) => vec![r],
        BatchRequest::Batch(rs) => rs.iter_mut().collect(),
    };
    for request in requests {
        if let Err(err) = resolve_one(state, caller, request).await {
            request.data.insert(Refused::new(&err));
        }
    }
}

async fn resolve_one(
    state: &HttpState,
    caller: &Caller,
    request: &mut GqlRequest,
) -> AppResult<()> {
    let Some(hash) = reference(request)? else {
        return Ok(());
    };
    let app = &state.app;
    let counters = &app.persisted.counters;
    let tenant = match caller {
        Caller::Authenticated(ctx) => Some(ctx),
        _ => None,
    };
    if !request.query.trim().is_empty() {
        if persisted::digest(&request.query) != hash {
            counters.count("mismatch");
            return Err(AppError::PersistedQueryHashMismatch);
        }
        // Only a document that parses is worth keeping; execution reports
        // why another does not.
        if let Some(ctx) = tenant
            && !persisted::is_restricted(ctx)
            && crate::graphql::parsed(request, &app.config.limits).is_some()
        {
            app.persisted
                .put(ctx.tenant_id, &hash, &request.query)
                .await;
            counters.count("registered");
        }
        return Ok(());
    }
    let Some(ctx) = tenant else {
        counters.count("miss");
        return Err(AppError::PersistedQueryNotFound);
    };
    if let Some(text) = app.persisted.get(ctx.tenant_id, &hash).await {
        counters.count("hit");
        request.query = text.to_string();
        return Ok(());
    }
    if let Some(text) = app
        .operations
        .document(&app.db, &app.persisted, ctx, &hash)
        .await?
    {
        counters.count("hit");
        app.persisted.put(ctx.tenant_id, &hash, &text).await;
        request.query = text;
        return Ok(());
    }
    counters.count("miss");
    Err(AppError::PersistedQueryNotFound)
}
