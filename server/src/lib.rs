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

pub mod auth;
mod config;
mod connection;
mod error;
mod redis_link;
mod routing;
pub mod rpc;
mod server;
mod signal;

pub use config::{ANONYMOUS_CALLER_ID, DEFAULT_HOST, DEFAULT_PORT, ServerConfig};
pub use error::ServerError;
pub use server::Server;
