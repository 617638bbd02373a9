//! Liveness, readiness and metrics.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
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

pub async fn metrics(State(state): State<HttpState>) -> Response {
    let m = &state.app.metrics;
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
