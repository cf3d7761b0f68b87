//! The task model: ids, statuses, the task hash and the reply entry.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A task id (a UUID v4).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(uuid::Uuid);

impl TaskId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({self})")
    }
}

/// Where a task is in its life: `pending` → `processing` → `completed` | `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Queued, not yet taken by a worker.
    Pending,
    /// Taken by a worker, running.
    Processing,
    /// Ended with an output.
    Completed,
    /// Ended with an error message.
    Error,
}

impl TaskStatus {
    /// The string stored in the `status` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Error => "error",
        }
    }

    /// Whether the task has ended.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Error)
    }
}

impl FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => Self::Pending,
            "processing" => Self::Processing,
            "completed" => Self::Completed,
            "error" => Self::Error,
            other => return Err(format!("unknown task status `{other}`")),
        })
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Field names of the `rhai_task_details:<id>` hash.
pub mod field {
    /// The Rhai source to run.
    pub const SCRIPT: &str = "script";
    /// A [`super::TaskStatus`] string.
    pub const STATUS: &str = "status";
    /// The script's result rendered as a string (on `completed`).
    pub const OUTPUT: &str = "output";
    /// A human-readable message (on `error`).
    pub const ERROR: &str = "error";
    /// Who asked: the authenticated key, or the dispatcher's caller id.
    pub const CALLER_ID: &str = "caller_id";
    /// The circle key (canonical hex).
    pub const CONTEXT_ID: &str = "context_id";
    /// RFC 3339 UTC.
    pub const CREATED_AT: &str = "created_at";
    /// RFC 3339 UTC.
    pub const UPDATED_AT: &str = "updated_at";
    /// Seconds the caller is prepared to wait; also the script's wall-time cap.
    pub const TIMEOUT_SECS: &str = "timeout_secs";
    /// What the task is, when it is not a script: a [`super::TaskKind`]
    /// string. Absent on script tasks. Only trusted Redis clients write it
    /// (the dispatcher's [`crate::Dispatcher::snapshot`]); the WebSocket
    /// server submits scripts only, so no `play` can ask for anything else.
    pub const KIND: &str = "kind";
}

/// What a task asks the worker to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Run the task's `script` (the only kind clients of the WebSocket
    /// server can submit; the `kind` field is absent).
    Script,
    /// Write a consistent snapshot of the circle's database into
    /// `<db_dir>/snapshots/` on the worker's host and answer a
    /// [`SnapshotReport`] (for `launcher backup` while the worker runs).
    Snapshot,
}

impl TaskKind {
    /// The string stored in the `kind` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Script => "script",
            Self::Snapshot => "snapshot",
        }
    }
}

impl FromStr for TaskKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "script" => Self::Script,
            "snapshot" => Self::Snapshot,
            other => {
                return Err(format!(
                    "unknown task kind `{}`",
                    crate::text::clip(other, 40)
                ));
            }
        })
    }
}

/// The output of a [`TaskKind::Snapshot`] task: where the worker wrote the
/// snapshot, on its own host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotReport {
    /// Absolute path of the snapshot file on `host`.
    pub file: String,
    /// The host the worker runs on.
    pub host: String,
    /// Values in the snapshot.
    pub values: u64,
    /// Auto-increment counters in the snapshot.
    pub counters: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
}

/// The current time as stored in `created_at`/`updated_at`.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A task as read back from its hash. Fields a broken writer left out are
/// `None` rather than an error, so one bad hash cannot stop a reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskRecord {
    /// The task's id.
    pub id: TaskId,
    /// The script, if the hash has one.
    pub script: Option<String>,
    /// The status, if present and known.
    pub status: Option<TaskStatus>,
    /// The output, once completed.
    pub output: Option<String>,
    /// The error message, once failed.
    pub error: Option<String>,
    /// Who submitted it.
    pub caller_id: Option<String>,
    /// Which circle it is for.
    pub context_id: Option<String>,
    /// When it was submitted.
    pub created_at: Option<String>,
    /// When it last changed.
    pub updated_at: Option<String>,
    /// How long its caller waits.
    pub timeout_secs: Option<u64>,
    /// The `kind` field as written (absent on script tasks); see
    /// [`TaskKind`].
    pub kind: Option<String>,
}

impl TaskRecord {
    /// Builds a record from raw hash fields (as returned by `HGETALL`),
    /// tolerating bytes that are not UTF-8.
    pub fn from_fields(id: TaskId, fields: HashMap<String, Vec<u8>>) -> Self {
        let text = |name: &str| {
            fields
                .get(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        Self {
            id,
            script: text(field::SCRIPT),
            status: text(field::STATUS).and_then(|s| s.parse().ok()),
            output: text(field::OUTPUT),
            error: text(field::ERROR),
            caller_id: text(field::CALLER_ID),
            context_id: text(field::CONTEXT_ID),
            created_at: text(field::CREATED_AT),
            updated_at: text(field::UPDATED_AT),
            timeout_secs: text(field::TIMEOUT_SECS).and_then(|s| s.trim().parse().ok()),
            kind: text(field::KIND),
        }
    }
}

/// How a task ended: the one entry pushed on `rhai_reply:<id>` (as JSON), so
/// a waiting client needs no second round trip to read the hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum TaskOutcome {
    /// The script ran; `output` is its result as a string.
    Completed {
        /// The script's result.
        output: String,
    },
    /// The task failed; `error` says why.
    Error {
        /// A human-readable message.
        error: String,
    },
}

impl TaskOutcome {
    /// The status this outcome stores.
    pub fn status(&self) -> TaskStatus {
        match self {
            Self::Completed { .. } => TaskStatus::Completed,
            Self::Error { .. } => TaskStatus::Error,
        }
    }

    /// The JSON pushed on the reply list.
    pub fn to_reply(&self) -> String {
        serde_json::to_string(self).expect("task outcome serialises")
    }

    /// Parses a reply entry. An entry that is not our JSON is treated as a
    /// bare output string, so replies written by other tools still arrive.
    pub fn from_reply(entry: &str) -> Self {
        serde_json::from_str(entry).unwrap_or_else(|_| Self::Completed {
            output: entry.to_string(),
        })
    }
}

/// What a live worker publishes about itself under `rhai_worker:<pk>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerHeartbeat {
    /// The worker's process id.
    pub pid: u32,
    /// The host it runs on (its host name).
    #[serde(default)]
    pub host: String,
    /// The directory of its circle database on that host.
    #[serde(default)]
    pub db_dir: String,
    /// When this worker process started (RFC 3339).
    pub started_at: String,
    /// When the heartbeat was last refreshed (RFC 3339).
    pub beat_at: String,
    /// Tasks this process has finished.
    pub tasks_done: u64,
    /// The worker's version.
    pub version: String,
}

/// The lease under `rhai_owner:<pk>`: who owns a circle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircleOwner {
    /// Host name of the owner.
    pub host: String,
    /// Its process id, in `pid_namespace`.
    pub pid: u32,
    /// The PID namespace the pid means something in (`pid:[4026531836]`):
    /// two containers on one host share a host name but not this.
    #[serde(default)]
    pub pid_namespace: String,
    /// Unique per worker process.
    pub instance: String,
    /// Fencing token: grows with every new lease of the circle.
    #[serde(default)]
    pub token: u64,
    /// When the lease was first taken (RFC 3339).
    pub since: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_reply_roundtrip() {
        for outcome in [
            TaskOutcome::Completed {
                output: "42".into(),
            },
            TaskOutcome::Error {
                error: "boom \"quoted\"".into(),
            },
        ] {
            assert_eq!(TaskOutcome::from_reply(&outcome.to_reply()), outcome);
        }
        assert_eq!(
            TaskOutcome::from_reply("plain"),
            TaskOutcome::Completed {
                output: "plain".into()
            }
        );
    }

    #[test]
    fn garbage_fields_do_not_break_a_record() {
        let mut fields = HashMap::new();
        fields.insert("script".to_string(), vec![0xff, 0xfe, b'1']);
        fields.insert("status".to_string(), b"weird".to_vec());
        fields.insert("timeout_secs".to_string(), b"x".to_vec());
        let rec = TaskRecord::from_fields(TaskId::new(), fields);
        assert_eq!(rec.script.as_deref(), Some("\u{fffd}\u{fffd}1"));
        assert_eq!(rec.status, None);
        assert_eq!(rec.timeout_secs, None);
    }
}
