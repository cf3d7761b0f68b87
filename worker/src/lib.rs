//! The circles worker: one OS process per circle.
//!
//! It takes task ids from the circle's Redis queue (`rhai_tasks:<pk>`), runs
//! each script in a Rhai engine bound to the circle's own database
//! ([`store::CircleStore`], a redb file), and writes the outcome back
//! (`rhai_task_details:<id>`, `rhai_reply:<id>`), per the protocol owned by
//! `circles_dispatcher`.
//!
//! Reliability rules it keeps: a task is never only in memory (it is moved to
//! a processing list when taken, and a successor ends abandoned ones as
//! errors); SIGTERM finishes the task in hand; Redis outages are ridden out
//! with backoff; readiness is announced with `sd_notify` (`READY=1`) after
//! the worker is registered and its heartbeat key written.

pub mod cli;
pub mod engine;
pub mod memory;
pub mod queue;
mod run;
pub mod store;

pub use engine::{Limits, ScriptEngine};
pub use run::{WorkerConfig, run};
pub use store::{CircleStore, StoreError};

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The circle database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Redis URL does not parse.
    #[error("invalid Redis URL `{url}`: {source}")]
    RedisUrl {
        /// The URL as given (shown redacted).
        url: circles_dispatcher::RedisUrl,
        /// The parse error.
        source: redis::RedisError,
    },
    /// Another live worker on this host serves the same circle.
    #[error("another worker (pid {pid}) is already serving circle {circle}; stop it first")]
    AlreadyServed {
        /// The circle.
        circle: String,
        /// The other worker's process id.
        pid: u32,
    },
    /// Redis failed in a way retrying cannot fix.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}
