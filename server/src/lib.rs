//! The circles WebSocket server: clients reach a circle at
//! `ws://HOST:PORT/<circle_pk>` and send Rhai scripts as JSON-RPC 2.0 `play`
//! calls, which the server hands to the circle's worker through the
//! dispatcher and answers with the script's output.
//!
//! This crate owns the WebSocket side of the contract in `SPEC.md`: routing
//! paths (and per-circle ports) to circles, the JSON-RPC envelope and its
//! error codes ([`rpc`]), `eth_sign` authentication with single-use nonces
//! ([`auth`]), and a graceful shutdown that lets calls in flight finish. It
//! does not run scripts itself: the task protocol belongs to
//! `circles-dispatcher`, and scripts run in the workers.
//!
//! The launcher runs the server in-process through [`Server`]; the `server`
//! binary is a thin command line over the same API.
//!
//! What clients can rely on beyond `SPEC.md`:
//! - A `play` runs as its connection's authenticated key (canonical hex);
//!   with authentication off and no `authenticate` on the connection, as
//!   [`ANONYMOUS_CALLER_ID`] (`"anonymous"`). `fetch_nonce` and
//!   `authenticate` work whether or not authentication is required.
//! - Requests on one connection may overlap: answers to `play` come back
//!   as they finish, matched by `id`. `fetch_nonce` and `authenticate` are
//!   handled in the order sent, so a `play` sent right behind an
//!   `authenticate` already runs as the new key.
//! - Batches are rejected with `-32600`; notifications get no answer; failures
//!   of the server itself (not the script) are `-32603`. See [`rpc`].
//! - Circles are those configured plus every circle in the Redis set
//!   `rhai_circles`, looked up on each upgrade; a Redis failure during that
//!   lookup is an HTTP 503, an unknown or malformed key an HTTP 404.
//!
//! ```no_run
//! # async fn demo() -> Result<(), circles_server::ServerError> {
//! use circles_server::{Server, ServerConfig};
//! let config = ServerConfig {
//!     port: 0, // any free port; ask `local_addr` which one
//!     ..ServerConfig::default()
//! };
//! let server = Server::bind(config).await?;
//! println!("listening on {}", server.local_addr());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

mod admission;
pub mod auth;
pub mod cli;
mod config;
mod connection;
mod error;
mod routing;
pub mod rpc;
mod server;
mod signal;

pub use admission::ConnectionLimits;
pub use config::{
    ANONYMOUS_CALLER_ID, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HOST, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP, DEFAULT_MAX_NONCES, DEFAULT_PORT,
    ServerConfig,
};
pub use error::ServerError;
pub use server::Server;
