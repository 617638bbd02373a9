//! GraphQL over WebSocket (`graphql-transport-ws` and the legacy
//! `graphql-ws`), around async-graphql's protocol pump.
//!
//! What the pump leaves to the transport, and this module owns:
//! - **Authentication.** The token travels in `connection_init`; a missing
//!   or bad one (or a suspended tenant) closes the socket with 4403 on
//!   both protocols. The socket takes a place in its tenant's count of
//!   sockets (4429 when full). Each operation authenticates the token
//!   again (`graphql::SocketToken`), as each HTTP request does.
//! - **Staying authorised.** The socket closes with 4403 when the token
//!   expires, and within one keep-alive interval of the user being
//!   disabled or the tenant suspended (checked on every ping).
//! - **Liveness.** A WebSocket ping every `PULSE_WS_KEEPALIVE_MS`; a
//!   client silent for two intervals is gone and its socket is dropped,
//!   and with it every subscription. A socket that never sends
//!   `connection_init` is closed with 4408 after `PULSE_WS_INIT_TIMEOUT_MS`.
//! - **Close codes** both protocols' clients understand, and a closing
//!   handshake that lets the client read them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_graphql::Data;
use async_graphql::http::{
    ALL_WEBSOCKET_PROTOCOLS, WebSocket as GraphQLWs, WebSocketProtocols as Protocols, WsMessage,
};
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};

use super::graphql::{request_meta, transport_error};
use super::{HttpState, RequestId};
use crate::auth::RequestMeta;
use crate::error::AppError;
use crate::graphql::{Caller, SocketToken};

/// A missing or bad token, a suspended tenant, an expired token.
const CLOSE_FORBIDDEN: u16 = 4403;
/// An operation sent before the connection was initialised.
const CLOSE_UNAUTHORIZED: u16 = 4401;
/// No `connection_init` in time.
const CLOSE_INIT_TIMEOUT: u16 = 4408;
/// The tenant has as many sockets open here as it may.
const CLOSE_TOO_MANY: u16 = 4429;

/// Each socket's read and write buffer to start with.
const SOCKET_BUFFER: usize = 4 << 10;

pub async fn websocket(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    request_id: Option<axum::Extension<RequestId>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(protocol) = subprotocol(&headers) else {
        return transport_error(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "Sec-WebSocket-Protocol must offer graphql-transport-ws or graphql-ws",
        );
    };
    let meta = request_meta(&headers, Some(peer), request_id.as_ref().map(|e| &e.0));
    let largest = state.app.config.limits.body_bytes;
    upgrade
        // A live dashboard holds its socket for hours, mostly idle: small
        // buffers (the defaults take 128 KiB each way per socket, over a
        // gigabyte for ten thousand subscribers) that grow when a message
        // needs it, and no message larger than a POST body may be.
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .max_message_size(largest)
        .max_frame_size(largest)
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| serve_socket(state, socket, protocol, meta))
}

/// The first GraphQL subprotocol the client offers.
fn subprotocol(headers: &HeaderMap) -> Option<Protocols> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().parse::<Protocols>().ok())
}

/// What `connection_init` settled, shared between the pump's callback and
/// the socket's loop.
#[derive(Default)]
struct Admission {
    /// The token and when it expires (Unix seconds, with the leeway HTTP
    /// allows too), once accepted.
    token: Option<(String, u64)>,
    /// The close code of a refusal.
    refused: Option<u16>,
}

/// Why the socket's loop closes it, or `None` to carry on.
enum Verdict {
    Carry,
    Close(u16, String),
    /// The client is gone: no close frame would reach it.
    Drop,
}

/// The async-graphql WebSocket pump, with admission at `connection_init`,
/// keep-alive, re-authorisation and close codes around it.
async fn serve_socket(
    state: HttpState,
    socket: axum::extract::ws::WebSocket,
    protocol: Protocols,
    meta: RequestMeta,
) {
    let (mut sink, mut stream) = socket.split();
    let opened = Instant::now();
    // Milliseconds since `opened` at the client's last frame of any kind.
    let heard = Arc::new(AtomicU64::new(0));
    // A reader of its own, so that after the server's close frame the
    // client's remaining frames (and its close) are still read: dropping a
    // socket with unread data resets the connection, and the client would
    // lose the close frame with its code.
    let (frames, input) = tokio::sync::mpsc::channel::<Bytes>(32);
    let reader = {
        let heard = heard.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                heard.store(millis_since(opened), Ordering::Relaxed);
                match msg {
                    Message::Text(_) | Message::Binary(_) => {
                        // After the close the pump is gone; keep draining.
                        let _ = frames.send(msg.into_data()).await;
                    }
                    // Reading on after the client's close lets tungstenite
                    // send its reply; the stream then ends. Pongs only
                    // count as signs of life.
                    Message::Close(_) | Message::Ping(_) | Message::Pong(_) => {}
                }
            }
        })
    };
    let input = tokio_stream::wrappers::ReceiverStream::new(input);
    let admission = Arc::new(Mutex::new(Admission::default()));
    let on_init = {
        let admission = admission.clone();
        let state = state.clone();
        move |payload: serde_json::Value| async move {
            let token = payload
                .get("authorization")
                .or_else(|| payload.get("Authorization"))
                .and_then(|v| v.as_str())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty());
            let app = &state.app;
            let admitted = match token {
                Some(token) => app
                    .tokens
                    .authenticate_until(&app.db, &app.keys, token)
                    .await
                    .and_then(|(ctx, exp)| Ok((app.live.connect(&ctx)?, ctx, exp, token))),
                None => Err(AppError::Unauthenticated(
                    "connection_init payload needs {\"authorization\": \"Bearer <jwt>\"}".into(),
                )),
            };
            let mut admission = lock(&admission);
            match admitted {
                Ok((slot, ctx, exp, token)) => {
                    tracing::debug!(tenant = %ctx.tenant_slug, "websocket authenticated");
                    let leeway = app.config.jwt.leeway.as_secs();
                    admission.token = Some((token.to_owned(), exp.saturating_add(leeway)));
                    let mut data = Data::default();
                    data.insert(Caller::Authenticated(ctx));
                    data.insert(SocketToken(token.to_owned()));
                    data.insert(slot);
                    Ok(data)
                }
                Err(err) => {
                    admission.refused = Some(match err {
                        AppError::LimitExceeded(_) => CLOSE_TOO_MANY,
                        _ => CLOSE_FORBIDDEN,
                    });
                    Err(async_graphql::Error::new(err.to_string()))
                }
            }
        }
    };
    let mut connection_data = Data::default();
    connection_data.insert(meta);
    let messages = GraphQLWs::new(state.schema.clone(), input, protocol)
        .connection_data(connection_data)
        .on_connection_init(on_init);
    // Boxed, so it can be dropped (and stop holding the frames' receiver
    // and the socket's subscriptions) before the closing handshake.
    let mut messages = Box::pin(messages);
    let live = state.app.config.live.clone();
    let mut ticks = tokio::time::interval(live.keepalive);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let init_deadline = tokio::time::sleep(live.init_timeout);
    tokio::pin!(init_deadline);
    let mut closed = false;
    loop {
        // Set when this loop (not the pump) decides to close.
        let mut ours = false;
        let frame = tokio::select! {
            msg = messages.next() => match msg {
                None => break,
                Some(WsMessage::Text(text)) => Message::Text(text.into()),
                Some(WsMessage::Close(code, reason)) => {
                    let refused = lock(&admission).refused;
                    let code = match refused {
                        Some(code) => code,
                        // The library's 1011 ("internal error") means an
                        // operation arrived before `connection_init` was
                        // acknowledged: graphql-transport-ws says 4401.
                        None if code == 1011 => CLOSE_UNAUTHORIZED,
                        None => code,
                    };
                    closed = true;
                    close_frame(code, &reason)
                }
            },
            () = &mut init_deadline, if lock(&admission).token.is_none() => {
                (closed, ours) = (true, true);
                close_frame(CLOSE_INIT_TIMEOUT, "connection_init did not come in time")
            }
            _ = ticks.tick() => match check(&state, &admission, opened, &heard, live.keepalive).await {
                Verdict::Carry => Message::Ping(Bytes::new()),
                Verdict::Close(code, reason) => {
                    (closed, ours) = (true, true);
                    close_frame(code, &reason)
                }
                Verdict::Drop => {
                    drop(messages);
                    reader.abort();
                    return;
                }
            },
        };
        if sink.send(frame).await.is_err() {
            drop(messages);
            finish_close(reader).await;
            return;
        }
        if ours {
            // The pump knows nothing of this close and would run on.
            break;
        }
    }
    drop(messages);
    // The library's pump may end without a close of its own (the legacy
    // protocol reports a refusal as a `connection_error` message and stops;
    // `connection_terminate`; an unreadable frame): close the socket
    // properly, with 4403 for a refusal, so no client sees a bare reset.
    if !closed {
        let frame = match lock(&admission).refused {
            Some(code) => close_frame(code, "forbidden"),
            None => close_frame(1000, ""),
        };
        let _ = sink.send(frame).await;
    }
    finish_close(reader).await;
}

/// On each keep-alive tick: is the client alive, and is its token (and
/// its user and tenant) still good?
async fn check(
    state: &HttpState,
    admission: &Mutex<Admission>,
    opened: Instant,
    heard: &AtomicU64,
    keepalive: Duration,
) -> Verdict {
    let silent = millis_since(opened).saturating_sub(heard.load(Ordering::Relaxed));
    if u128::from(silent) > 2 * keepalive.as_millis() {
        return Verdict::Drop;
    }
    let Some((token, expires)) = lock(admission).token.clone() else {
        return Verdict::Carry;
    };
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    if now >= expires {
        return Verdict::Close(CLOSE_FORBIDDEN, "token expired".into());
    }
    let app = &state.app;
    match app.tokens.authenticate(&app.db, &app.keys, &token).await {
        Ok(_) => Verdict::Carry,
        // A database hiccup is not the caller's fault: check again later.
        Err(AppError::Unavailable(_) | AppError::Internal(_)) => Verdict::Carry,
        Err(e) => Verdict::Close(CLOSE_FORBIDDEN, e.to_string()),
    }
}

fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: close_reason(reason).into(),
    }))
}

/// A close frame's reason must fit its control frame: at most 123 bytes,
/// cut on a character boundary (a longer one would fail to send, and the
/// client would see a bare reset instead of the code).
fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Waits briefly for the client's side of the closing handshake (its close
/// frame, or the end of its stream) before the socket is dropped.
async fn finish_close(reader: tokio::task::JoinHandle<()>) {
    let abort = reader.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), reader)
        .await
        .is_err()
    {
        abort.abort();
    }
}
