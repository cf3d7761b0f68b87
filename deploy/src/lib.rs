//! How circles run as OS services, shared by the launcher and the
//! supervisor so that both install the same thing under the same name and
//! each sees (and `launcher cleanup` removes) what the other installed.
//!
//! - [`kinds`]: the service names of each kind — a circle's worker
//!   `tf.ourworld.circles.circle-worker-<pk>`, the one WebSocket server
//!   `tf.ourworld.circles.circle-ws-server`, the supervisor
//!   `tf.ourworld.circles.supervisor` — and which kind a name is;
//! - [`worker`]: a worker described once, as a `ServiceSpec` or as a
//!   supervised child;
//! - [`fs`]: writing a file atomically with a given mode;
//! - [`address`]: a circle named by name, key, key prefix or table cell;
//! - [`cells`]: the cells of the status tables (times, dashes, one line);
//! - [`status`]: what a service manager reports, in the one state model of
//!   `circles-supervise`, with the reason of the last failure.

pub mod address;
pub mod cells;
pub mod fs;
pub mod kinds;
pub mod status;
pub mod worker;

/// `02abcdef…` → `circle-02abcdef`: the name of a circle given by key only.
pub fn short_name(key: &circles_dispatcher::CirclePublicKey) -> String {
    format!("circle-{}", &key.to_hex()[..8])
}

pub use kinds::{
    ServiceKind, circle_of, server_service_name, supervisor_service_name, worker_service_name,
};
pub use worker::{
    DEFAULT_WORKER_LIMITS, SECRETS_DIR, WorkerService, db_dir, file_sha256, redis_url_env,
    service_account, task_memory_budget_mb, worker_args, worker_child_spec, worker_service_spec,
};
