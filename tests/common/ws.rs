//! A `graphql-transport-ws` client for tests: connect with a token,
//! subscribe, read the next payload of a subscription, tell silence.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::TestApp;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Ws {
    pub socket: Socket,
}

/// How long a test waits for a message it expects.
pub const PATIENCE: Duration = Duration::from_secs(10);

impl Ws {
    /// A socket on `protocol`, not yet initialised.
    pub async fn open(app: &TestApp, protocol: &str) -> Ws {
        let mut request = format!("ws://{}/graphql/ws", app.addr)
            .into_client_request()
            .expect("request");
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().expect("header"));
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connect");
        Ws { socket }
    }

    /// An acknowledged `graphql-transport-ws` socket for `token`.
    pub async fn connect(app: &TestApp, token: &str) -> Ws {
        let mut ws = Ws::open(app, "graphql-transport-ws").await;
        ws.send(json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } }))
            .await;
        let ack = ws.next_json().await.expect("connection_ack");
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        ws
    }

    pub async fn send(&mut self, msg: Value) {
        self.socket
            .send(Message::text(msg.to_string()))
            .await
            .expect("send");
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        self.send(json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": variables } }))
            .await;
    }

    /// The next protocol message (pings answered, WebSocket pings
    /// skipped), or `None` when the socket closed or `wait` passed.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(text) => {
                    let v: Value = serde_json::from_str(&text).expect("json");
                    if v["type"] == "ping" {
                        self.send(json!({ "type": "pong" })).await;
                        continue;
                    }
                    return Some(v);
                }
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    pub async fn next_json(&mut self) -> Option<Value> {
        self.next_within(PATIENCE).await
    }

    /// The next `next` payload of subscription `id` (other ids' messages
    /// are skipped); panics on anything else.
    pub async fn next_payload(&mut self, id: &str) -> Value {
        loop {
            let msg = self.next_json().await.expect("a message within 10 s");
            if msg["id"] != id {
                continue;
            }
            assert_eq!(msg["type"], "next", "{msg}");
            return msg["payload"].clone();
        }
    }

    /// The next `next` payloads of `count` subscriptions, by id, in
    /// whatever order they come.
    pub async fn next_payloads(
        &mut self,
        count: usize,
    ) -> std::collections::HashMap<String, Value> {
        let mut got = std::collections::HashMap::new();
        while got.len() < count {
            let msg = self.next_json().await.expect("a message within 10 s");
            assert_eq!(msg["type"], "next", "{msg}");
            let id = msg["id"].as_str().expect("id").to_owned();
            assert!(
                got.insert(id, msg["payload"].clone()).is_none(),
                "two for one id"
            );
        }
        got
    }

    /// Whether nothing for `id` arrives within `wait`.
    pub async fn quiet(&mut self, id: &str, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                None => return true,
                Some(msg) if msg["id"] == id => return false,
                Some(_) => {}
            }
        }
    }

    /// Reads until the close frame and returns its code (0: none given,
    /// or the socket ended without one).
    pub async fn close_code(&mut self) -> u16 {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a close within 10 s");
            match msg {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| u16::from(f.code)).unwrap_or(0);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return 0,
            }
        }
    }
}
