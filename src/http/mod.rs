//! HTTP transport: the router, GraphQL over HTTP and WebSocket, the
//! self-contained GraphiQL page and its assets, bulk event ingestion, and
//! the operational routes (health, readiness, metrics).
//!
//! The request stages, outermost first, and why in that order:
//! 1. a client's `X-Request-Id` is kept only when it is short and plain,
//!    then tower-http assigns one (UUIDv7) where there is none and copies
//!    it onto the response;
//! 2. tower-http's trace span (request id, method, path; tenant and
//!    operation recorded later by the handlers) and one log line per
//!    request — probes and scrapes are left out of both;
//! 3. the request id in a task-local, so an opaque internal error, even a
//!    panic's, can name it;
//! 4. a caught panic becomes the usual coded `INTERNAL_SERVER_ERROR` (a
//!    log line and a counter), never a dropped connection;
//! 5. a whole-request time limit (`PULSE_REQUEST_TIMEOUT_MS`, 408).

mod events;
pub mod graphiql;
mod graphql;
mod ops;
mod persisted;
mod ws;

use std::any::Any;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Response as HttpResponse, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use prometheus_client::metrics::counter::Counter;
use tower::ServiceBuilder;
use tower_http::catch_panic::{CatchPanicLayer, ResponseForPanic};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId as TowerRequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::app::AppState;

/// Why a request body could not be read whole.
pub(crate) enum Unread {
    /// Declared or found larger than the limit.
    TooLarge,
    /// The client's stream broke off.
    Broken,
}

/// The request body, at most `limit` bytes, read before anything is refused:
/// a response sent while the client is still writing makes the server close
/// the connection under it, and the client sees a broken pipe instead of the
/// answer. Each route answers [`Unread`] in its own error format, through
/// [`closing`] for `TooLarge`.
pub(crate) async fn read_bounded(
    body: Body,
    headers: &axum::http::HeaderMap,
    limit: usize,
) -> Result<axum::body::Bytes, Unread> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Unread::TooLarge);
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let is_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if is_limit {
            Unread::TooLarge
        } else {
            Unread::Broken
        }
    })
}

/// `response` with `Connection: close`: past a body's limit its unread rest
/// cannot be skipped, so the connection ends after the answer, and says so.
pub(crate) fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
use crate::error::{AppError, REQUEST_ID};
use crate::graphql::PulseSchema;

/// State of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    pub app: AppState,
    pub schema: PulseSchema,
}

/// The request's id, for handlers.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

const X_REQUEST_ID: &str = "x-request-id";

pub fn router(app: AppState, schema: PulseSchema) -> Router {
    let panics = app.telemetry.panics.clone();
    let timeout = app.config.request_timeout;
    let state = HttpState { app, schema };
    let traced = Router::new()
        .route(
            "/graphql",
            get(graphql::get_graphql).post(graphql::post_graphql),
        )
        .route("/graphql/ws", get(ws::websocket))
        .route("/graphiql/{file}", get(graphiql::asset))
        .route("/v1/events", post(events::post_events))
        .fallback(ops::not_found)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    tracing::info_span!(
                        "request",
                        request_id = req
                            .headers()
                            .get(X_REQUEST_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-"),
                        method = %req.method(),
                        path = %req.uri().path(),
                        tenant = tracing::field::Empty,
                        operation = tracing::field::Empty,
                    )
                })
                .on_request(())
                .on_response(
                    |response: &HttpResponse<Body>, latency: Duration, _: &tracing::Span| {
                        tracing::info!(
                            status = response.status().as_u16(),
                            duration_ms = latency.as_secs_f64() * 1000.0,
                            "request finished"
                        );
                    },
                )
                .on_failure(()),
        );
    // Probes and scrapes would drown the log.
    let probes = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics));
    stages(traced.merge(probes).with_state(state), panics, timeout)
}

/// Wraps `router` in the request stages 1 and 3–5 of the module doc (the
/// trace span, 2, belongs to the routes); public so that tests can run a
/// misbehaving route through the same stages.
pub fn stages(router: Router, panics: Counter, timeout: Duration) -> Router {
    router.layer(
        ServiceBuilder::new()
            .map_request(drop_unusable_request_id)
            .layer(SetRequestIdLayer::x_request_id(NewRequestId))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(middleware::from_fn(scope_request_id))
            .layer(CatchPanicLayer::custom(PanicResponse { panics }))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                timeout,
            )),
    )
}

/// A client's request id is believed only when it is short and plain, so
/// it is safe in logs and headers; otherwise a new one is made.
fn drop_unusable_request_id(mut req: Request) -> Request {
    let usable = req
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if !usable {
        req.headers_mut().remove(X_REQUEST_ID);
    }
    req
}

/// UUIDv7 request ids: unique, and sortable by time in logs.
#[derive(Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<TowerRequestId> {
        HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
            .ok()
            .map(TowerRequestId::new)
    }
}

/// Hands the request id to handlers and to opaque internal errors.
async fn scope_request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    req.extensions_mut().insert(RequestId(id.clone()));
    REQUEST_ID.scope(id, next.run(req)).await
}

/// A panic anywhere below answers like any internal error: opaque, coded,
/// with the request id, logged and counted.
#[derive(Clone)]
struct PanicResponse {
    panics: Counter,
}

impl ResponseForPanic for PanicResponse {
    type ResponseBody = Body;

    fn response_for_panic(&mut self, err: Box<dyn Any + Send + 'static>) -> HttpResponse<Body> {
        self.panics.inc();
        let detail = err
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| err.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        let err = AppError::internal(anyhow::anyhow!("panic: {detail}"));
        // `extend` logs the cause with the request id.
        let graphql = async_graphql::ErrorExtensions::extend(&err);
        let mut extensions = serde_json::json!({ "code": err.code() });
        if let Some(id) = AppError::current_request_id() {
            extensions["requestId"] = serde_json::json!(id);
        }
        let body = serde_json::json!({
            "errors": [{ "message": graphql.message, "extensions": extensions }]
        });
        let mut response = HttpResponse::new(Body::from(body.to_string()));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}
