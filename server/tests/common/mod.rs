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
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

#[allow(unused_imports)] // each test file uses its own subset
pub use circles_test_support::ws::{Client, refused_upgrade};
