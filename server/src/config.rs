//! What a [`crate::Server`] is told to do: where to listen, which Redis to
//! use, which circles to serve, and the limits of its calls.
//!
//! The value is plain data with no I/O; the `server` binary builds it from
//! its flags and the launcher builds it from its own configuration.

use std::time::Duration;

use circles_dispatcher::CirclePublicKey;
use circles_dispatcher::protocol::{
    DEFAULT_MAX_SCRIPT_BYTES, DEFAULT_REDIS_URL, DEFAULT_TASK_TIMEOUT_SECS,
};

use crate::admission::ConnectionLimits;
use crate::auth::DEFAULT_NONCE_TTL;

/// Interface the main listener binds unless told otherwise: loopback, so
/// that nothing is exposed to the network by accident.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// Port of the main listener unless told otherwise.
pub const DEFAULT_PORT: u16 = 8080;
/// The `caller_id` recorded on tasks from connections that have not
/// authenticated (only possible when authentication is off).
pub const ANONYMOUS_CALLER_ID: &str = "anonymous";
/// How long a shutdown waits for calls in flight before answering them with
/// an error and closing their connections.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Connections open at once, overall and per client address, unless told
/// otherwise. Well below the descriptor limit the units set (65536), so
/// that `accept` never fails for lack of descriptors.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// See [`DEFAULT_MAX_CONNECTIONS`].
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Time from TCP accept to a completed WebSocket upgrade.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A WebSocket that sends nothing (not even a pong to our pings) for this
/// long is closed; pings go out at half of it.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Nonces outstanding at once, all keys together.
pub const DEFAULT_MAX_NONCES: usize = 100_000;

/// Everything a [`crate::Server`] needs to know before it binds.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Host name or IP address every listener binds to.
    pub host: String,
    /// Port of the main listener, which routes `/<circle_pk>` to any known
    /// circle. `0` picks a free port (see [`crate::Server::local_addr`]).
    pub port: u16,
    /// Redis that carries the task queues and the set of known circles.
    pub redis_url: String,
    /// Circles served even before their worker has registered in Redis.
    /// Circles in the Redis set `rhai_circles` are served as well.
    pub circles: Vec<CirclePublicKey>,
    /// Extra listeners bound to a single circle: on such a port, `/` and
    /// `/<that circle's key>` reach that circle (the launcher's
    /// `circles.json` format gives every circle its own port).
    pub circle_ports: Vec<(CirclePublicKey, u16)>,
    /// Whether `play` requires a prior `authenticate` on the connection.
    pub enable_auth: bool,
    /// How long a `play` waits for the worker's result before answering
    /// with the timeout error. Also sent to the worker as the task's
    /// `timeout_secs`.
    pub play_timeout: Duration,
    /// How long a nonce from `fetch_nonce` can be redeemed.
    pub nonce_ttl: Duration,
    /// How long a shutdown lets calls in flight finish.
    pub shutdown_grace: Duration,
    /// Caps on open connections and the handshake deadline.
    pub connections: ConnectionLimits,
    /// See [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// Largest script a `play` may carry, in bytes; a frame may be a little
    /// over twice that (JSON escaping), anything larger closes the
    /// connection with 1009.
    pub max_script_bytes: usize,
    /// See [`DEFAULT_MAX_NONCES`].
    pub max_nonces: usize,
    /// How often expired nonces are swept and memory freed by closed
    /// connections is handed back to the OS.
    pub housekeeping_interval: Duration,
}

impl ServerConfig {
    /// Largest WebSocket message accepted: room for a script of
    /// `max_script_bytes` with every character escaped once, plus the
    /// envelope.
    pub fn max_message_bytes(&self) -> usize {
        self.max_script_bytes
            .saturating_mul(2)
            .saturating_add(64 * 1024)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: DEFAULT_HOST.to_string(),
            port: DEFAULT_PORT,
            redis_url: DEFAULT_REDIS_URL.to_string(),
            circles: Vec::new(),
            circle_ports: Vec::new(),
            enable_auth: false,
            play_timeout: Duration::from_secs(DEFAULT_TASK_TIMEOUT_SECS),
            nonce_ttl: DEFAULT_NONCE_TTL,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            connections: ConnectionLimits {
                max_connections: DEFAULT_MAX_CONNECTIONS,
                max_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
                handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            },
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_script_bytes: DEFAULT_MAX_SCRIPT_BYTES,
            max_nonces: DEFAULT_MAX_NONCES,
            housekeeping_interval: Duration::from_secs(30),
        }
    }
}
