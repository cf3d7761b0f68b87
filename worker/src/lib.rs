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
//!
//! Besides scripts it answers one internal task kind, a snapshot of its
//! database for backups ([`snapshot`]), which only trusted Redis clients
//! can ask for.

pub mod cli;
pub mod engine;
pub mod lease;
pub mod memory;
pub mod queue;
mod run;
pub mod snapshot;
pub mod store;

pub use engine::{Limits, ScriptEngine};

/// A fingerprint of this worker's code (its sources and the lock file; see
/// `build.rs`), printed by `worker --version`: two builds with the same id
/// run the same worker.
pub const SOURCE_ID: &str = env!("CIRCLES_WORKER_SOURCE_ID");
pub use run::{WorkerConfig, run};
pub use store::{CircleStore, RecordCounts, StoreError, StoreRecord};

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
    /// Another live worker, on this host or another, owns the circle.
    #[error(
        "circle {circle} is already served by pid {pid} on host {host} (since {since}); stop that worker first — a circle has one worker across all hosts"
    )]
    AlreadyServed {
        /// The circle.
        circle: String,
        /// The owner's host name.
        host: String,
        /// The owner's process id.
        pid: u32,
        /// When the owner took the circle.
        since: String,
    },
    /// Another worker took the circle over while this one was paused or
    /// cut off; this one stops.
    #[error(
        "lost circle {circle} to {owner} (this worker was paused or cut off longer than its lease); stopping"
    )]
    LostOwnership {
        /// The circle.
        circle: String,
        /// Who owns it now.
        owner: String,
    },
    /// Redis failed in a way retrying cannot fix.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}
