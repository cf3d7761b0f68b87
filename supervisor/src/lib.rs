//! The circles supervisor: a long-running daemon that owns the runners
//! (circle workers) of one host and serves an OpenRPC JSON-RPC 2.0 API on
//! `127.0.0.1:3030` — HTTP `POST /` and WebSocket on the same port.
//!
//! The library is the whole supervisor; the `supervisor` binary (feature
//! `cli`, on by default) only parses flags and adds the `ctl` client. Build
//! the library alone with `cargo build -p circles-supervisor
//! --no-default-features`.
//!
//! - [`SupervisorBuilder`] → [`Supervisor`] → [`SupervisorApp::start`]:
//!   settings, then every operation as a method (usable without the
//!   server), then the server with graceful shutdown;
//! - [`manager`]: process managers — `child` (supervised child processes),
//!   `systemd`, `launchd` (the launcher's unit names, so `launcher status`
//!   and `launcher cleanup` see the supervisor's runners);
//! - [`rpc`]: the API, its method table, and `rpc.discover` serving
//!   `supervisor/openrpc.json`;
//! - [`secrets`]: admin and user secrets, from a 0600 file or the
//!   environment, compared in constant time;
//! - [`store`]: runners and their target state, kept across restarts;
//! - [`console`]: the web console served on `GET /` of the same port, a
//!   client of the API like any other.
//!
//! ```no_run
//! # async fn demo() -> Result<(), circles_supervisor::SupervisorError> {
//! use circles_supervisor::{SupervisorApp, SupervisorBuilder};
//! let supervisor = SupervisorBuilder::new()
//!     .redis_url("redis://127.0.0.1:6379")
//!     .port(3030)
//!     .build()
//!     .await?;
//! let app = SupervisorApp::new(supervisor).start().await?;
//! println!("API on {}", app.url());
//! app.stop().await;
//! # Ok(()) }
//! ```

mod app;
mod builder;
pub mod console;
mod error;
pub mod manager;
pub mod procfs;
pub mod rpc;
pub mod runner;
pub mod secrets;
pub mod store;
mod supervisor;

pub use app::{RunningApp, SupervisorApp};
pub use builder::{
    ApiSettings, DEFAULT_DATA_DIR, DEFAULT_NAMESPACE, DEFAULT_PORT, DEFAULT_WS_URL,
    SupervisorBuilder, default_worker_binary,
};
pub use error::{SupervisorError, codes};
pub use runner::{ManagerKind, RunnerConfig, RunnerInfo, TargetState};
pub use secrets::{Scope, Secrets, SecretsFile};
pub use supervisor::{
    AddRunner, BulkResult, GeneratedKey, JobRequest, JobResult, JobStatus, Supervisor,
    SupervisorSettings, SupervisorStatus,
};
