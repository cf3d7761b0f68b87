//! Errors of the dispatcher library.

use std::time::Duration;

use crate::task::TaskId;
use crate::{InvalidKey, RedisUrl};

/// Everything that can go wrong when submitting a task or waiting for it.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The circle key is not a valid secp256k1 public key.
    #[error(transparent)]
    InvalidKey(#[from] InvalidKey),
    /// The Redis URL does not parse.
    #[error("invalid Redis URL `{url}`: {source}")]
    InvalidRedisUrl {
        /// The URL as given (shown redacted).
        url: RedisUrl,
        /// What the parser said.
        source: redis::RedisError,
    },
    /// Nothing answers at the Redis URL.
    #[error("Redis unreachable at {url}: {source}")]
    RedisUnavailable {
        /// The URL dialled (shown redacted).
        url: RedisUrl,
        /// The connection error.
        source: redis::RedisError,
    },
    /// A Redis command failed after connecting.
    #[error("Redis command failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// No reply arrived in time. The task stays queued and may still run.
    #[error("task {task_id} timed out after {}s without a result", waited.as_secs_f64())]
    Timeout {
        /// The task that is still out there.
        task_id: TaskId,
        /// How long we waited.
        waited: Duration,
    },
    /// This dispatcher already waits for [`crate::client::MAX_BLOCKING_WAITS`]
    /// results (each on a Redis connection of its own) and none finished
    /// within the timeout; nothing was queued.
    #[error(
        "busy: {in_flight} results are already being waited for; nothing was queued, try again"
    )]
    Busy {
        /// The waits in flight.
        in_flight: usize,
    },
    /// The worker ran the task and it failed; `message` is the worker's text.
    #[error("{message}")]
    ScriptError {
        /// The failed task.
        task_id: TaskId,
        /// The worker's error message.
        message: String,
    },
    /// No hash exists for this task id (never submitted, or expired).
    #[error("task {0} not found (never submitted, or expired)")]
    TaskNotFound(TaskId),
    /// A script with nothing in it.
    #[error("the script is empty")]
    EmptyScript,
    /// A script over the size limit; nothing was queued.
    #[error("the script is {size} bytes, over the limit of {max} bytes")]
    ScriptTooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// No live worker serves the circle (its heartbeat has expired, or it
    /// never had one); nothing was queued.
    #[error("circle {circle} is offline: no live worker serves it ({})", match last_seen {
        Some(at) => format!("last seen {at}"),
        None => "never seen".to_string(),
    })]
    CircleOffline {
        /// The circle (canonical hex).
        circle: String,
        /// When its worker last beat (RFC 3339), if ever.
        last_seen: Option<String>,
    },
}

impl DispatchError {
    /// Whether this is a transport problem (Redis) rather than a task outcome.
    pub fn is_redis(&self) -> bool {
        matches!(
            self,
            Self::Redis(_) | Self::RedisUnavailable { .. } | Self::InvalidRedisUrl { .. }
        )
    }
}
