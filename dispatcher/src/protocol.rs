//! Every Redis key, environment variable and default that the circles
//! programs share, in one place.
//!
//! The first three key families are the external contract (`SPEC.md`); the
//! rest are ours, documented here so that `redis-cli` users can find them.

use crate::CirclePublicKey;

/// List of task ids waiting for a circle's worker. The dispatcher `LPUSH`es,
/// the worker takes from the right, so the queue is first-in first-out.
pub const TASK_QUEUE_PREFIX: &str = "rhai_tasks:";
/// Hash holding one task (`script`, `status`, `output`, `error`, ...).
pub const TASK_DETAILS_PREFIX: &str = "rhai_task_details:";
/// List that receives exactly one entry when a task ends; the dispatcher
/// blocks on it with `BLPOP`.
pub const TASK_REPLY_PREFIX: &str = "rhai_reply:";
/// List of task ids a worker has taken but not yet finished. A task is moved
/// here atomically (`BLMOVE`) when taken, so a worker that dies mid-task
/// leaves a trace its successor can find and answer.
pub const PROCESSING_PREFIX: &str = "rhai_processing:";
/// String (JSON [`crate::WorkerHeartbeat`]) a live worker refreshes with a TTL.
/// It disappears within the TTL when the worker dies.
pub const WORKER_HEARTBEAT_PREFIX: &str = "rhai_worker:";
/// String (JSON [`crate::CircleOwner`]): the lease of the one worker that
/// owns a circle, across every host sharing this Redis. Taken with
/// `SET NX PX`, renewed with the heartbeat, released on a clean stop;
/// finishing a task checks it, so a worker that lost it (paused,
/// partitioned) cannot write over its successor's results.
pub const OWNER_PREFIX: &str = "rhai_owner:";
/// Counter: the fencing token of the next lease of a circle (`INCR`).
pub const OWNER_TOKEN_PREFIX: &str = "rhai_owner_token:";
/// Hash: circle key → when its worker last beat (RFC 3339). Unlike the
/// heartbeat it never expires, so "offline since …" can be told.
pub const LAST_SEEN_HASH: &str = "rhai_last_seen";
/// Set of every circle key that has had a worker. The WebSocket server routes
/// paths for these circles, so circles added later need no server restart.
pub const CIRCLES_SET: &str = "rhai_circles";

/// Subdirectory of a worker's database directory where it writes the
/// snapshots that [`crate::TaskKind::Snapshot`] tasks ask for (mode 0600,
/// named `<task id>.jsonl`). The one who asked reads and deletes it; the
/// worker deletes any left there longer than [`SNAPSHOT_KEEP_SECS`].
pub const SNAPSHOT_DIR: &str = "snapshots";
/// How long a snapshot file nobody collected is kept.
pub const SNAPSHOT_KEEP_SECS: u64 = 600;

/// Environment variable: when set (to anything but `0`/`false`/empty),
/// finished tasks never expire and a stopping worker leaves queued tasks queued.
pub const ENV_PRESERVE_TASKS: &str = "PRESERVE_TASKS";
/// Environment variable: the Redis URL for the worker and the server. It is
/// how a URL with a password reaches them: argv is visible to every user of
/// the host (`ps`), the environment only to the process's owner.
pub const ENV_REDIS_URL: &str = "REDIS_URL";
/// Environment variable: log filter for every binary (tracing `EnvFilter`).
pub const ENV_RUST_LOG: &str = "RUST_LOG";
/// Environment variable: set by systemd for `Type=notify` services, and by
/// the launcher in direct mode, so one readiness protocol serves both.
pub const ENV_NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Where the default Redis lives.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// How long the dispatcher waits for a result unless told otherwise.
pub const DEFAULT_TASK_TIMEOUT_SECS: u64 = 30;
/// Largest script, in bytes, that the dispatcher submits and a worker runs
/// unless configured otherwise. The WebSocket server sizes its frame limit
/// from it. One place, so that the three agree.
pub const DEFAULT_MAX_SCRIPT_BYTES: usize = 1024 * 1024;
/// How long finished task hashes and reply lists are kept.
pub const DEFAULT_TASK_RETENTION_SECS: u64 = 24 * 60 * 60;
/// How long a worker heartbeat lives without being refreshed.
pub const HEARTBEAT_TTL_SECS: u64 = 10;
/// How long a circle's ownership lease lives without being renewed; a
/// successor on another host can take the circle over this long after its
/// owner froze or lost its network.
pub const OWNER_LEASE_MS: u64 = 10_000;

/// `rhai_tasks:<pk>`
pub fn task_queue_key(circle: &CirclePublicKey) -> String {
    format!("{TASK_QUEUE_PREFIX}{circle}")
}

/// `rhai_task_details:<task_id>` (any id text: the worker answers ids that
/// are not UUIDs under their raw text too).
pub fn task_details_key(task: impl std::fmt::Display) -> String {
    format!("{TASK_DETAILS_PREFIX}{task}")
}

/// `rhai_reply:<task_id>`
pub fn task_reply_key(task: impl std::fmt::Display) -> String {
    format!("{TASK_REPLY_PREFIX}{task}")
}

/// `rhai_processing:<pk>`
pub fn processing_key(circle: &CirclePublicKey) -> String {
    format!("{PROCESSING_PREFIX}{circle}")
}

/// `rhai_worker:<pk>`
pub fn worker_heartbeat_key(circle: &CirclePublicKey) -> String {
    format!("{WORKER_HEARTBEAT_PREFIX}{circle}")
}

/// `rhai_owner:<pk>`
pub fn owner_key(circle: &CirclePublicKey) -> String {
    format!("{OWNER_PREFIX}{circle}")
}

/// `rhai_owner_token:<pk>`
pub fn owner_token_key(circle: &CirclePublicKey) -> String {
    format!("{OWNER_TOKEN_PREFIX}{circle}")
}

/// Whether an environment flag such as `PRESERVE_TASKS` is on.
pub fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| {
        let v = v.to_string_lossy();
        !(v.is_empty()
            || v == "0"
            || v.eq_ignore_ascii_case("false")
            || v.eq_ignore_ascii_case("no"))
    })
}
