//! The circles task protocol, shared by the worker, the WebSocket server and
//! the launcher.
//!
//! This crate owns what those programs must agree on: what a circle key is
//! ([`CirclePublicKey`]), the Redis key names ([`protocol`]), the task model
//! ([`TaskStatus`], [`TaskRecord`], [`TaskOutcome`]) and the client that
//! submits a script to a circle and waits for its result ([`Dispatcher`]),
//! and the fleet view of every circle in Redis ([`fleet`]).
//! It knows nothing of Rhai, WebSockets or service managers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), circles_dispatcher::DispatchError> {
//! use circles_dispatcher::{CirclePublicKey, Dispatcher};
//! use std::time::Duration;
//! let circle: CirclePublicKey =
//!     "02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5".parse()?;
//! let dispatcher = Dispatcher::connect("redis://127.0.0.1:6379", "me").await?;
//! let output = dispatcher.run(&circle, "40 + 2", Duration::from_secs(5)).await?;
//! assert_eq!(output, "42");
//! # Ok(()) }
//! ```

mod client;
mod error;
pub mod fleet;
mod keys;
pub mod protocol;
mod redis_url;
pub mod task;
pub mod text;

pub use client::Dispatcher;
pub use error::DispatchError;
pub use fleet::{CircleState, FleetEntry, read_fleet};
pub use keys::{CircleKeypair, CirclePublicKey, EXPECTED_KEY_FORM, InvalidKey};
pub use redis_url::{RedisUrl, redact as redact_redis_url};
pub use task::{
    CircleOwner, SnapshotReport, TaskId, TaskKind, TaskOutcome, TaskRecord, TaskStatus,
    WorkerHeartbeat,
};
