//! A WebSocket JSON-RPC client for tests: connect to a circle's URL, call
//! methods, look at raw frames and refused upgrades.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any one answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A WebSocket JSON-RPC client.
#[derive(Debug)]
pub struct Client {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Client {
    /// Connects, panicking with the HTTP status if the upgrade is refused.
    pub async fn connect(url: &str) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        Self { socket, next_id: 1 }
    }

    /// Sends one request and returns the whole response object.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_json(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        let response = self.recv().await;
        assert_eq!(
            response["id"],
            json!(id),
            "answer to another request: {response}"
        );
        response
    }

    /// `play` and the result string, panicking on an error answer.
    pub async fn play(&mut self, script: &str) -> String {
        let response = self.call("play", json!({ "script": script })).await;
        match response["result"].as_str() {
            Some(output) => output.to_string(),
            None => panic!("play `{script}` failed: {response}"),
        }
    }

    /// Calls and returns the error object, panicking on success.
    pub async fn call_err(&mut self, method: &str, params: Value) -> Value {
        let response = self.call(method, params).await;
        assert!(
            response.get("result").is_none(),
            "expected an error: {response}"
        );
        response["error"].clone()
    }

    /// Sends a JSON value as one text frame.
    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text))
            .await
            .expect("send frame");
    }

    /// Sends any frame.
    pub async fn send_message(&mut self, message: Message) {
        self.socket.send(message).await.expect("send frame");
    }

    /// The next frame, which must be a JSON text frame.
    pub async fn recv(&mut self) -> Value {
        match self.recv_message().await {
            Message::Text(text) => serde_json::from_str(text.as_str())
                .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}")),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame, whatever it is (pings skipped).
    pub async fn recv_message(&mut self) -> Message {
        loop {
            let frame = tokio::time::timeout(ANSWER_TIMEOUT, self.socket.next())
                .await
                .expect("an answer in time")
                .expect("the connection is open")
                .expect("a readable frame");
            if !matches!(frame, Message::Ping(_) | Message::Pong(_)) {
                return frame;
            }
        }
    }

    /// Whether no frame but pings and pongs arrives within `wait` (pings
    /// are answered meanwhile, as reading does).
    pub async fn nothing_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(_) => return false,
            }
        }
    }
}

/// The HTTP status an upgrade request to `url` gets when it is refused,
/// with the body; panics if the upgrade succeeds.
pub async fn refused_upgrade(url: &str) -> (u16, String) {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("{url}: the upgrade was accepted"),
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (response.status().as_u16(), body)
        }
        Err(other) => panic!("{url}: expected an HTTP refusal, got {other}"),
    }
}
