//! `POST /v1/events`: bulk ingestion over plain HTTP.
//!
//! Accepts a JSON array or NDJSON (`Content-Type: application/x-ndjson`),
//! optionally gzip-compressed, up to the configured size after
//! decompression (so a gzip bomb stops at the limit). Answers `202
//! {"accepted": N, "duplicates": M}` only after the events are committed.
//! Errors are JSON `{"error", "code"}` (plus `problems` for a rejected
//! batch) with the HTTP status of their code.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::HttpState;
use crate::domain::events::validate::Incoming;
use crate::domain::events::{self, RequestFacts, Source};
use crate::error::AppError;

/// An error as `/v1/events` answers it.
pub fn error_response(err: AppError) -> Response {
    let status = match &err {
        AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        AppError::Forbidden(_) | AppError::TenantSuspended => StatusCode::FORBIDDEN,
        AppError::BadInput { .. }
        | AppError::InvalidBatch { .. }
        | AppError::PersistedQueryHashMismatch => StatusCode::BAD_REQUEST,
        AppError::NotFound(_) | AppError::PersistedQueryNotFound => StatusCode::NOT_FOUND,
        AppError::NotInAllowList(_) => StatusCode::FORBIDDEN,
        AppError::VersionConflict { .. } => StatusCode::CONFLICT,
        AppError::QuotaExceeded(_)
        | AppError::RateLimited { .. }
        | AppError::QueryTooExpensive { .. }
        | AppError::LimitExceeded(_)
        | AppError::SlowConsumer(_) => StatusCode::TOO_MANY_REQUESTS,
        AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        AppError::QueryTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    // `extend` logs internal errors with the request id and hides them.
    let graphql = async_graphql::ErrorExtensions::extend(&err);
    let mut body = json!({ "error": graphql.message, "code": err.code() });
    match &err {
        AppError::InvalidBatch { problems, .. } => body["problems"] = json!(problems),
        AppError::BadInput { field, .. } => body["field"] = json!(field),
        AppError::Internal(_) => {
            if let Some(id) = AppError::current_request_id() {
                body["requestId"] = json!(id);
            }
        }
        _ => {}
    }
    let retry_after = match &err {
        AppError::RateLimited { retry_after, .. } => {
            let secs = retry_after.as_secs_f64().ceil() as u64;
            body["retryAfter"] = json!(secs);
            Some(secs)
        }
        _ => None,
    };
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(secs) = retry_after
        && let Ok(value) = HeaderValue::from_str(&secs.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn plain_error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        axum::Json(json!({ "error": message, "code": code })),
    )
        .into_response()
}

enum Format {
    Json,
    Ndjson,
}

/// The body's format, or why it is not acceptable.
fn format(headers: &HeaderMap) -> Result<Format, String> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err("missing Content-Type".into());
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Format::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Format::Ndjson),
        other => Err(format!("unsupported Content-Type `{other}`")),
    }
}

/// The raw body, at most `limit` bytes (see [`super::read_bounded`]).
async fn read_body(
    body: axum::body::Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<axum::body::Bytes, Response> {
    super::read_bounded(body, headers, limit)
        .await
        .map_err(|_| {
            super::closing(plain_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!("the request body exceeds the limit of {limit} bytes"),
            ))
        })
}

/// The body decoded by its `Content-Encoding` (gzip or none), at most
/// `limit` bytes after decompression, so a gzip bomb stops at the limit.
fn decode(
    raw: axum::body::Bytes,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Vec<u8>, Box<Response>> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let gzip = match encoding.as_deref() {
        None | Some("identity") => false,
        Some("gzip") | Some("x-gzip") => true,
        Some(other) => {
            return Err(Box::new(plain_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "BAD_USER_INPUT",
                format!("unsupported Content-Encoding `{other}` (gzip or none)"),
            )));
        }
    };
    if !gzip {
        return Ok(raw.to_vec());
    }
    let mut decoded = Vec::new();
    let mut reader = flate2::read::GzDecoder::new(&raw[..]).take(limit as u64 + 1);
    if let Err(e) = reader.read_to_end(&mut decoded) {
        return Err(Box::new(plain_error(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            format!("the body is not valid gzip: {e}"),
        )));
    }
    if decoded.len() > limit {
        return Err(Box::new(plain_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("the decompressed body exceeds the limit of {limit} bytes"),
        )));
    }
    Ok(decoded)
}

fn parse(body: &[u8], format: Format) -> Result<Vec<Incoming>, AppError> {
    match format {
        Format::Json => {
            let value: Value = serde_json::from_slice(body)
                .map_err(|e| AppError::bad_input("body", format!("malformed JSON: {e}")))?;
            match value {
                Value::Array(items) => Ok(items
                    .into_iter()
                    .map(|value| Incoming { value, line: None })
                    .collect()),
                _ => Err(AppError::bad_input(
                    "body",
                    "expected a JSON array of events",
                )),
            }
        }
        Format::Ndjson => {
            let text = std::str::from_utf8(body)
                .map_err(|_| AppError::bad_input("body", "NDJSON must be UTF-8"))?;
            let mut items = Vec::new();
            for (i, line) in text.split('\n').enumerate() {
                let line_no = i + 1;
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() {
                    continue;
                }
                let value = serde_json::from_str(line).map_err(|e| {
                    AppError::bad_input("body", format!("malformed JSON on line {line_no}: {e}"))
                })?;
                items.push(Incoming {
                    value,
                    line: Some(line_no),
                });
            }
            Ok(items)
        }
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy,
/// the right-most address in `X-Forwarded-For` that is not one.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let chain: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|part| part.trim().parse::<IpAddr>().ok())
        .collect();
    chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer)
}

pub async fn post_events(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let app = &state.app;
    let raw = match read_body(body, headers, app.config.ingest.max_bytes).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };

    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return error_response(AppError::Unauthenticated(
            "missing bearer token (Authorization: Bearer <jwt>)".into(),
        ));
    };
    let ctx = match app.tokens.authenticate(&app.db, &app.keys, token).await {
        Ok(ctx) => ctx,
        Err(e) => return error_response(e),
    };
    tracing::Span::current().record("tenant", ctx.tenant_slug.as_str());

    let format = match format(headers) {
        Ok(f) => f,
        Err(why) => {
            return plain_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "BAD_USER_INPUT",
                format!(
                    "{why}; send application/json (an array of events) or application/x-ndjson"
                ),
            );
        }
    };
    let body = match decode(raw, headers, app.config.ingest.max_bytes) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let items = match parse(&body, format) {
        Ok(items) => items,
        Err(e) => return error_response(e),
    };
    let facts = RequestFacts {
        ip: Some(client_ip(peer.ip(), headers, &app.config.ingest.trusted_proxies).to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(512).collect()),
        source: Source::Http,
    };
    match events::ingest(&app.db, &app.writer, &app.limiter, &ctx, facts, items).await {
        Ok(counts) => (StatusCode::ACCEPTED, axum::Json(counts)).into_response(),
        Err(e) => error_response(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "198.51.100.7, 10.1.1.1".parse().expect("header"),
        );
        let proxy: IpAddr = "10.0.0.2".parse().expect("ip");
        let stranger: IpAddr = "203.0.113.9".parse().expect("ip");
        assert_eq!(
            client_ip(proxy, &headers, &trusted).to_string(),
            "198.51.100.7"
        );
        assert_eq!(client_ip(stranger, &headers, &trusted), stranger);
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
    }
}
