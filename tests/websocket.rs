//! GraphQL over WebSocket: the token travels in `connection_init`; a
//! missing or bad one closes the socket with 4403, on both protocols.

use futures_util::{SinkExt, StreamExt};
use pulse::auth::Role;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common::*;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(app: &TestApp, protocol: &str) -> Socket {
    let mut request = format!("ws://{}/graphql/ws", app.addr)
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().expect("header"));
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    assert_eq!(response.headers()["sec-websocket-protocol"], protocol);
    socket
}

async fn init(socket: &mut Socket, payload: Value) {
    let msg = json!({ "type": "connection_init", "payload": payload }).to_string();
    socket.send(Message::text(msg)).await.expect("send");
}

/// The next message, within 10 s.
async fn next(socket: &mut Socket) -> Message {
    tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
        .await
        .expect("a message within 10 s")
        .expect("socket open")
        .expect("message")
}

/// Reads until the close frame and returns its code.
async fn close_code(socket: &mut Socket) -> u16 {
    loop {
        if let Message::Close(frame) = next(socket).await {
            return frame.map(|f| u16::from(f.code)).unwrap_or(0);
        }
    }
}

#[tokio::test]
async fn a_valid_token_in_connection_init_is_acknowledged() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut socket = open(&app, protocol).await;
        let token = app.token(&acme, Role::Viewer);
        init(
            &mut socket,
            json!({ "authorization": format!("Bearer {token}") }),
        )
        .await;
        let Message::Text(text) = next(&mut socket).await else {
            panic!("expected a text message");
        };
        let msg: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(msg["type"], "connection_ack", "{protocol}");
    }
}

#[tokio::test]
async fn a_missing_or_bad_token_closes_the_socket_with_4403() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let suspended = app
        .tenant_with("frozen", pulse::entities::tenant::TenantStatus::Suspended)
        .await;
    let payloads = [
        json!({}),
        json!({ "authorization": "Bearer not-a-jwt" }),
        json!({ "authorization": app.token(&acme, Role::Viewer) }),
        json!({ "authorization": format!("Bearer {}", app.token(&suspended, Role::Admin)) }),
    ];
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        for payload in &payloads {
            let mut socket = open(&app, protocol).await;
            init(&mut socket, payload.clone()).await;
            assert_eq!(close_code(&mut socket).await, 4403, "{protocol} {payload}");
        }
    }
    assert_eq!(u16::from(CloseCode::from(4403)), 4403);
}

#[tokio::test]
async fn a_socket_without_a_graphql_subprotocol_is_refused() {
    let app = spawn_app().await;
    let request = format!("ws://{}/graphql/ws", app.addr)
        .into_client_request()
        .expect("request");
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
}

#[tokio::test]
async fn operations_over_the_socket_take_the_same_rate_as_over_http() {
    let app = spawn_app().await;
    let t = app.tenant("ws-rate").await;
    app.set_plan(
        &t,
        "team",
        json!({ "limits": { "queries": { "per_tenant": 3, "per_user": 3 } } }),
    )
    .await;
    let token = app.token(&t, Role::Viewer);
    // One over HTTP, two over the socket: the third socket query is over.
    assert!(
        app.gql_as(&token, "{ me { role } }", json!({}))
            .await
            .get("errors")
            .is_none()
    );
    let mut socket = open(&app, "graphql-transport-ws").await;
    init(
        &mut socket,
        json!({ "authorization": format!("Bearer {token}") }),
    )
    .await;
    let Message::Text(ack) = next(&mut socket).await else {
        panic!("expected the ack");
    };
    assert!(ack.contains("connection_ack"), "{ack}");
    let mut outcomes = Vec::new();
    for id in ["1", "2", "3"] {
        let msg =
            json!({ "id": id, "type": "subscribe", "payload": { "query": "{ me { role } }" } });
        socket
            .send(Message::text(msg.to_string()))
            .await
            .expect("send");
        loop {
            let Message::Text(text) = next(&mut socket).await else {
                continue;
            };
            let msg: Value = serde_json::from_str(&text).expect("json");
            if msg["id"] != id || msg["type"] == "complete" {
                continue;
            }
            outcomes.push(msg);
            break;
        }
    }
    assert_eq!(outcomes[0]["type"], "next", "{outcomes:?}");
    assert_eq!(outcomes[1]["type"], "next", "{outcomes:?}");
    let refused = &outcomes[2];
    let code = refused["payload"]["errors"][0]["extensions"]["code"]
        .as_str()
        .or(refused["payload"][0]["extensions"]["code"].as_str());
    assert_eq!(code, Some("RATE_LIMITED"), "{refused}");
}
