//! GraphQL over HTTP (POST and GET; the WebSocket is `super::ws`); `GET` hands
//! browsers to the GraphiQL page (`super::graphiql`).
//!
//! The handlers own what async-graphql leaves to the transport: the body
//! limit, authentication (a [`Caller`] decided once per request), the
//! request facts the audit trail records, span fields, and metrics.

use std::net::SocketAddr;
use std::time::Instant;

use async_graphql::{BatchRequest, BatchResponse, Request as GqlRequest};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::persisted;
use super::{HttpState, RequestId};
use crate::auth::RequestMeta;
use crate::cache::rate::Kind;
use crate::config::Limits;
use crate::domain;
use crate::error::AppError;
use crate::graphql::{self, Caller, Executed};
use crate::telemetry::{CodeLabels, OperationLabels};

/// Most operations one batched POST may carry.
pub const MAX_BATCH: usize = 20;

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

/// An error answered before GraphQL execution, shaped like a GraphQL
/// response so clients handle one format.
pub(super) fn transport_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (status, axum::Json(body)).into_response()
}

/// Decides who is calling from the `Authorization` header.
async fn caller(state: &HttpState, headers: &HeaderMap) -> Caller {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Caller::Anonymous;
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Caller::from_result(Err(AppError::Unauthenticated(
            "malformed Authorization header (expected `Bearer <jwt>`)".into(),
        )));
    };
    let result = state
        .app
        .tokens
        .authenticate(&state.app.db, &state.app.keys, token)
        .await;
    if let Ok(ctx) = &result {
        tracing::Span::current().record("tenant", ctx.tenant_slug.as_str());
    }
    Caller::from_result(result)
}

pub(super) fn request_meta(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    id: Option<&RequestId>,
) -> RequestMeta {
    RequestMeta {
        request_id: id.map(|r| r.0.clone()),
        ip: peer.map(|p| p.ip().to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(512).collect()),
    }
}

fn accepts(headers: &HeaderMap, media: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|part| part.trim().starts_with(media)))
}

/// Runs a batch with the caller and request facts in its data, and
/// records span fields and metrics. Also says whether execution began (for
/// a single request; see [`Executed`]).
async fn execute(
    state: &HttpState,
    mut batch: BatchRequest,
    caller: Caller,
    meta: RequestMeta,
) -> (BatchResponse, bool) {
    let authenticated = matches!(caller, Caller::Authenticated(_));
    let names = &state.app.telemetry.operation_names;
    let operation = match &mut batch {
        BatchRequest::Single(r) => names.label(
            operation_name(r, &state.app.config.limits).as_deref(),
            authenticated,
        ),
        BatchRequest::Batch(_) => names.label(Some("batch"), authenticated),
    };
    tracing::Span::current().record("operation", operation.as_str());
    let started = Instant::now();
    let executed = Executed::default();
    let response = state
        .schema
        .execute_batch(
            batch
                .data(caller)
                .data(meta)
                .data(executed.clone())
                .data(graphql::rates::Admitted)
                .data(graphql::MeOnce::default()),
        )
        .await;
    let telemetry = &state.app.telemetry;
    let responses: Vec<&async_graphql::Response> = match &response {
        BatchResponse::Single(r) => vec![r],
        BatchResponse::Batch(rs) => rs.iter().collect(),
    };
    let outcome = if responses.iter().all(|r| r.errors.is_empty()) {
        "ok"
    } else {
        "error"
    };
    let labels = OperationLabels { operation, outcome };
    telemetry.graphql_requests.get_or_create(&labels).inc();
    telemetry
        .graphql_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    for err in responses.iter().flat_map(|r| &r.errors) {
        let code = err
            .extensions
            .as_ref()
            .and_then(|e| e.get("code"))
            .and_then(|v| match v {
                async_graphql::Value::String(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "UNKNOWN".to_owned());
        telemetry
            .graphql_errors
            .get_or_create(&CodeLabels { code })
            .inc();
    }
    (response, executed.get())
}

fn into_http((response, executed): (BatchResponse, bool), headers: &HeaderMap) -> Response {
    let graphql_media = accepts(headers, GRAPHQL_RESPONSE_JSON);
    // Under application/graphql-response+json a request that never reached
    // execution (parse, validation, limits) is a 400 without `data`; an
    // execution whose data is null is still a 200 with `data: null`. Under
    // plain JSON it is always 200.
    let request_error = match &response {
        BatchResponse::Single(r) => !executed && !r.errors.is_empty(),
        BatchResponse::Batch(_) => false,
    };
    // An unknown persisted-query hash is the protocol's normal first step,
    // answered 200 as Apollo Server does: Apollo clients take a 400 for a
    // broken server and stop sending hashes.
    let apq_miss = match &response {
        BatchResponse::Single(r) => r.errors.iter().all(|e| {
            e.extensions.as_ref().and_then(|x| x.get("code"))
                == Some(&async_graphql::Value::from("PERSISTED_QUERY_NOT_FOUND"))
        }),
        BatchResponse::Batch(_) => false,
    };
    let status = if graphql_media && request_error && !apq_miss {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let content_type = if graphql_media {
        GRAPHQL_RESPONSE_JSON
    } else {
        "application/json"
    };
    // Straight to bytes, but for the one case that edits the response.
    let body = if graphql_media && request_error {
        serde_json::to_value(&response).and_then(|mut body| {
            if let Some(map) = body.as_object_mut() {
                map.remove("data");
            }
            serde_json::to_vec(&body)
        })
    } else {
        serde_json::to_vec(&response)
    };
    match body {
        Ok(body) => (status, [(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => {
            let err = AppError::internal(e);
            let message = async_graphql::ErrorExtensions::extend(&err).message;
            transport_error(StatusCode::INTERNAL_SERVER_ERROR, err.code(), &message)
        }
    }
}

/// Whether the body is declared JSON (`application/json`, with any
/// parameters such as `charset`); GraphQL over HTTP requires it on POST.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Reads the body up to the configured limit; past it, 413.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, Response> {
    super::read_bounded(body, headers, limit)
        .await
        .map_err(|why| match why {
            super::Unread::TooLarge => super::closing(transport_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                &format!("request body exceeds the limit of {limit} bytes"),
            )),
            super::Unread::Broken => transport_error(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "could not read the request body",
            ),
        })
}

pub async fn post_graphql(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    // The body is read before anything is refused: a response sent while
    // the client is still writing makes the server close the connection
    // under it, and the client sees a broken pipe instead of the answer.
    let body = match read_body(body, &headers, state.app.config.limits.body_bytes).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    if !is_json(&headers) {
        return transport_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BAD_USER_INPUT",
            "POST /graphql takes a JSON body: send Content-Type: application/json",
        );
    }
    let batch: BatchRequest = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return transport_error(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                &format!("request body is not a GraphQL request in JSON: {e}"),
            );
        }
    };
    if let BatchRequest::Batch(items) = &batch
        && (items.is_empty() || items.len() > MAX_BATCH)
    {
        return transport_error(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            &format!("a batch holds 1 to {MAX_BATCH} operations"),
        );
    }
    // A request that names a persisted query may leave `query` out.
    if batch
        .iter()
        .any(|r| r.query.trim().is_empty() && !persisted::names_a_document(r))
    {
        return transport_error(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "`query` is required",
        );
    }
    let meta = request_meta(&headers, Some(peer), parts.extensions.get::<RequestId>());
    let caller = caller(&state, &headers).await;
    let mut batch = batch;
    persisted::resolve(&state, &caller, &mut batch).await;
    if let Err(refused) = admit(&state, &caller, &mut batch).await {
        return refused;
    }
    let response = execute(&state, batch, caller, meta).await;
    into_http(response, &headers)
}

/// GraphiQL for browsers; otherwise a query in the query string.
pub async fn get_graphql(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let headers = request.headers();
    if accepts(headers, "text/html") {
        return super::graphiql::page(&state.app, headers);
    }
    let query = request.uri().query().unwrap_or_default();
    let mut gql: GqlRequest = match async_graphql::http::parse_query_string(query) {
        Ok(r) => r,
        Err(e) => {
            return transport_error(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                &format!("invalid GraphQL GET request: {e}"),
            );
        }
    };
    // The library reads `operation_name`; clients (Apollo's among them)
    // send `operationName`, as in a POST body.
    if gql.operation_name.is_none() {
        gql.operation_name = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "operationName")
            .map(|(_, v)| v.into_owned());
    }
    let meta = request_meta(headers, Some(peer), request.extensions().get::<RequestId>());
    let caller = caller(&state, headers).await;
    let mut batch = BatchRequest::Single(gql);
    // A hash names the document: resolved first, so the check below sees
    // the text that would run.
    persisted::resolve(&state, &caller, &mut batch).await;
    // GET must not change state: mutations go over POST.
    if let BatchRequest::Single(gql) = &mut batch
        && is_mutation(gql, &state.app.config.limits)
    {
        let mut resp = transport_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "BAD_USER_INPUT",
            "mutations must use POST",
        );
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return resp;
    }
    if let Err(refused) = admit(&state, &caller, &mut batch).await {
        return refused;
    }
    let response = execute(&state, batch, caller, meta).await;
    let mut response = into_http(response, headers);
    // Every answer is the caller's own (a bearer token, per-user rights)
    // and live (open buckets change by the second): no cache may keep or
    // share it. Short GET URLs with a hash are still what lets a client
    // use GET at all for large documents.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("private, no-store"),
    );
    response
}

/// Takes the batch's operations from the caller's query and mutation
/// rates; over either, the whole batch is refused with 429, `Retry-After`
/// and `RATE_LIMITED` before anything runs. Anonymous callers are left to
/// execution, which refuses them.
async fn admit(
    state: &HttpState,
    caller: &Caller,
    batch: &mut BatchRequest,
) -> Result<(), Response> {
    let Caller::Authenticated(ctx) = caller else {
        return Ok(());
    };
    let limits = &state.app.config.limits;
    let mut requests: Vec<&mut GqlRequest> = match batch {
        BatchRequest::Single(r) => vec![r],
        BatchRequest::Batch(rs) => rs.iter_mut().collect(),
    };
    for r in requests.iter_mut() {
        state.app.documents.prime(ctx.tenant_id, r, limits);
    }
    let total = requests.len() as u64;
    let mutations = requests
        .into_iter()
        .filter_map(|r| is_mutation(r, limits).then_some(()))
        .count() as u64;
    let limiter = &state.app.limiter;
    let taken = async {
        domain::limits::admit(limiter, ctx, Kind::Mutation, mutations).await?;
        domain::limits::admit(limiter, ctx, Kind::Query, total - mutations).await
    };
    taken.await.map_err(|err| {
        let retry = match &err {
            AppError::RateLimited { retry_after, .. } => retry_after.as_secs_f64().ceil() as u64,
            _ => 1,
        };
        let extended = async_graphql::ErrorExtensions::extend(&err);
        let body = json!({ "errors": [{
            "message": extended.message,
            "extensions": { "code": err.code(), "retryAfter": retry },
        }] });
        let mut resp = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(retry.max(1)));
        resp
    })
}

/// The operation's name: the one the client selected, or the name of the
/// document's only operation. Parsing here is not wasted: the request
/// keeps the parsed document for execution.
fn operation_name(request: &mut GqlRequest, limits: &Limits) -> Option<String> {
    use async_graphql::parser::types::DocumentOperations;
    if let Some(name) = &request.operation_name {
        return Some(name.clone());
    }
    match &graphql::parsed(request, limits)?.operations {
        DocumentOperations::Multiple(ops) if ops.len() == 1 => {
            ops.keys().next().map(|n| n.to_string())
        }
        _ => None,
    }
}

/// Whether the selected operation changes state (a mutation, or a
/// subscription, which HTTP does not serve). A document that does not
/// parse is left to execution, which reports it.
fn is_mutation(request: &mut GqlRequest, limits: &Limits) -> bool {
    use async_graphql::parser::types::OperationType;
    graphql::operation_type(request, limits).is_some_and(|t| t != OperationType::Query)
}
