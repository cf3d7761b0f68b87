//! Helpers shared by the server's integration tests: a real Redis, real
//! workers, the server running in-process on free ports, and a WebSocket
//! JSON-RPC client (tokio-tungstenite, independent of the server's axum).
//!
//! The worker binary must be built first (`cargo build -p circles-worker`,
//! or `cargo build --workspace --bins` as `scripts/test.sh` does).

#![allow(dead_code)] // Each test file uses a different part of this.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use circles_dispatcher::CirclePublicKey;
use circles_server::{Server, ServerConfig, ServerError};
use circles_test_support::{RedisServer, WorkerProcess};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single answer may take before a test fails.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// A script that keeps the worker busy for `secs` seconds, then returns
/// "done". Workers running it need `--max-operations 0`.
pub fn busy_script(secs: f64) -> String {
    format!(r#"let t = timestamp(); while t.elapsed < {secs} {{ }} "done""#)
}

pub fn circle(key: &str) -> CirclePublicKey {
    key.parse().expect("valid test key")
}

/// Starts a worker for `key` and waits until it is ready. The harness call
/// blocks (it polls Redis with sleeps), so it runs outside the async
/// scheduler; tests use the multi-threaded runtime for that.
pub fn start_worker(
    redis: &RedisServer,
    key: &str,
    db_dir: &Path,
    extra_args: &[&str],
) -> WorkerProcess {
    tokio::task::block_in_place(|| WorkerProcess::start(redis, key, db_dir, extra_args, &[]))
}

/// A config for tests: loopback, any free port, this Redis, short timeout.
pub fn test_config(redis: &RedisServer) -> ServerConfig {
    ServerConfig {
        host: "127.0.0.1".to_string(),
        port: 0,
        redis_url: redis.url(),
        play_timeout: Duration::from_secs(10),
        ..ServerConfig::default()
    }
}

/// A server running in-process until [`RunningServer::shutdown`].
pub struct RunningServer {
    pub addr: SocketAddr,
    pub circle_addrs: Vec<(CirclePublicKey, SocketAddr)>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl RunningServer {
    pub async fn start(config: ServerConfig) -> Self {
        let server = Server::bind(config).await.expect("server binds");
        let addr = server.local_addr();
        let circle_addrs = server.circle_addrs();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            circle_addrs,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `ws://<main listener>/<path>`
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}/{}", self.addr, path)
    }

    /// Triggers the shutdown future; returns the task running the server.
    pub fn begin_shutdown(&mut self) -> JoinHandle<Result<(), ServerError>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("server still running")
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A WebSocket JSON-RPC client.
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

    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text))
            .await
            .expect("send frame");
    }

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

    /// Whether a frame arrives within `wait`.
    pub async fn nothing_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.socket.next())
            .await
            .is_err()
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
