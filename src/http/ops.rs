//! Liveness, readiness and metrics.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::HttpState;
use crate::db::pool_stats;
use crate::telemetry::PoolLabels;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// 200 while the process lives.
pub async fn healthz() -> &'static str {
    "ok"
}

/// 200 only when the database (and Redis, when configured) answer.
pub async fn readyz(State(state): State<HttpState>) -> Response {
    let app = &state.app;
    let database = match tokio::time::timeout(PROBE_TIMEOUT, app.db.ping()).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database check failed");
            "unreachable".to_owned()
        }
        Err(_) => "timeout".to_owned(),
    };
    let redis = match &app.redis {
        None => None,
        Some(conn) => {
            let mut conn = conn.clone();
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut conn);
            Some(match tokio::time::timeout(PROBE_TIMEOUT, ping).await {
                Ok(Ok(_)) => "ok".to_owned(),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "readiness: Redis check failed");
                    "unreachable".to_owned()
                }
                Err(_) => "timeout".to_owned(),
            })
        }
    };
    let ready = database == "ok" && redis.as_deref().is_none_or(|r| r == "ok");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({ "ready": ready, "database": database });
    if let Some(r) = redis {
        body["redis"] = json!(r);
    }
    (status, Json(body)).into_response()
}

/// The Prometheus exposition; with `PULSE_METRICS_TOKEN` set, only for
/// `Authorization: Bearer <that token>`.
pub async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.app.config.prometheus.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        // Constant time: the token is a secret.
        let equal = given.len() == expected.len()
            && given
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !equal {
            let mut response = (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "error": "metrics need a bearer token", "code": "UNAUTHENTICATED" })),
            )
                .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    let m = &state.app.telemetry;
    let (open, idle) = pool_stats(&state.app.db);
    let idle = idle as i64;
    m.db_pool
        .get_or_create(&PoolLabels { state: "idle" })
        .set(idle);
    m.db_pool
        .get_or_create(&PoolLabels { state: "in_use" })
        .set(i64::from(open) - idle);
    m.db_pool_max
        .set(i64::from(state.app.config.database.max_connections));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "not found", "code": "NOT_FOUND" })),
    )
        .into_response()
}
