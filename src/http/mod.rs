//! HTTP transport: the router, GraphQL over HTTP and WebSocket, the
//! self-contained GraphiQL page and its assets, bulk event ingestion, and
//! the operational routes (health, readiness, metrics).
//!
//! Every request passes through [`observe`], which assigns a request id
//! (honouring a sane `X-Request-Id`), opens the tracing span that later
//! records tenant and operation, and logs one line with status and duration.

mod events;
pub mod graphiql;
mod graphql;
mod ops;

use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tracing::Instrument;

use crate::app::AppState;
use crate::error::REQUEST_ID;
use crate::graphql::PulseSchema;

/// State of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    pub app: AppState,
    pub schema: PulseSchema,
}

/// The request id assigned by [`observe`], for handlers.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

pub fn router(app: AppState, schema: PulseSchema) -> Router {
    let state = HttpState { app, schema };
    Router::new()
        .route(
            "/graphql",
            get(graphql::get_graphql).post(graphql::post_graphql),
        )
        .route("/graphql/ws", get(graphql::websocket))
        .route("/graphiql/{file}", get(graphiql::asset))
        .route("/v1/events", post(events::post_events))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

fn incoming_request_id(req: &Request) -> Option<String> {
    let value = req.headers().get("x-request-id")?.to_str().ok()?;
    let sane = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    sane.then(|| value.to_owned())
}

async fn observe(mut req: Request, next: Next) -> Response {
    let request_id = incoming_request_id(&req).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %req.method(),
        path = %path,
        tenant = tracing::field::Empty,
        operation = tracing::field::Empty,
    );
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let started = Instant::now();
    let mut response = REQUEST_ID
        .scope(request_id.clone(), next.run(req))
        .instrument(span.clone())
        .await;
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let status = response.status().as_u16();
    span.in_scope(|| {
        // Probes and scrapes would drown the log at info.
        if matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics") {
            tracing::debug!(status, duration_ms, "request finished");
        } else {
            tracing::info!(status, duration_ms, "request finished");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
