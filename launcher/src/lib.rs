//! The circles launcher: brings a list of circles up and keeps them up.
//!
//! Two ways to run them:
//!
//! - [`direct`]: workers as child processes supervised by the launcher,
//!   the WebSocket server in-process — for development;
//! - [`service_mode`]: every worker as a systemd unit or launchd job named
//!   `tf.ourworld.circles.circle-worker-<pk>` plus one
//!   `tf.ourworld.circles.circle-ws-server`, installed transactionally and
//!   left running — for production. [`cleanup_launcher`] removes them all.
//!
//! Either way, input is validated first ([`settings`]), each circle's init
//! script is sent through the dispatcher once its worker is ready, and a
//! status table ([`status`]) shows the result; `launcher status --fleet`
//! shows every circle registered in Redis, on any host ([`status`]), and
//! [`backup`] moves a circle between hosts.

pub mod backup;
pub mod cli;
pub mod direct;
mod error;
pub mod init;
pub mod migrate;
pub mod progress;
pub mod redis_local;
pub mod service_mode;
pub mod service_record;
pub mod settings;
pub mod status;

pub use error::LaunchError;
pub use service_mode::cleanup_launcher;
