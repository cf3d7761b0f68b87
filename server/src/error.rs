//! Errors of the server library. Each message names the object it is about
//! (the port, the Redis URL) so that a launcher can print it as it is.

use std::net::SocketAddr;

use circles_dispatcher::{DispatchError, RedisUrl};

/// Everything that can stop a [`crate::Server`] from binding or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process (or another listener of this server) holds the port.
    #[error("port {port} is already in use on {host}")]
    PortInUse {
        /// The host the listener tried to bind.
        host: String,
        /// The port that is taken.
        port: u16,
    },
    /// Binding failed for another reason (unknown host, no permission, ...).
    #[error("cannot listen on {host}:{port}: {source}")]
    Bind {
        /// The host the listener tried to bind.
        host: String,
        /// The port it tried to bind.
        port: u16,
        /// What the operating system said.
        source: std::io::Error,
    },
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
    RedisUnreachable {
        /// The URL dialled (shown redacted).
        url: RedisUrl,
        /// The connection error.
        source: redis::RedisError,
    },
    /// Another dispatcher error while connecting to Redis.
    #[error("cannot set up the dispatcher: {0}")]
    Dispatcher(DispatchError),
    /// A setting that cannot work.
    #[error("invalid server configuration: {0}")]
    InvalidConfig(String),
    /// A listener stopped serving on its own.
    #[error("the listener on {addr} failed: {source}")]
    Serve {
        /// The listener's address.
        addr: SocketAddr,
        /// The I/O error that ended it.
        source: std::io::Error,
    },
    /// A listener's task panicked or was cancelled.
    #[error("the listener on {addr} stopped unexpectedly: {reason}")]
    ListenerStopped {
        /// The listener's address.
        addr: SocketAddr,
        /// Panic message or cancellation.
        reason: String,
    },
}

impl From<DispatchError> for ServerError {
    fn from(error: DispatchError) -> Self {
        match error {
            DispatchError::InvalidRedisUrl { url, source } => Self::InvalidRedisUrl { url, source },
            DispatchError::RedisUnavailable { url, source } => {
                Self::RedisUnreachable { url, source }
            }
            other => Self::Dispatcher(other),
        }
    }
}
