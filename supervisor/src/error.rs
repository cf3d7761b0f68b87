//! The one error type of the supervisor library, and the JSON-RPC code each
//! variant answers with (SPEC: -32010 … -32016, and the WebSocket server's
//! -32004 for a runner that is not running). Every message names the
//! runner, unit or path at fault and says what to do.

use circles_dispatcher::{DispatchError, TaskId};

/// JSON-RPC error codes of the supervisor API (SPEC "Supervisor").
pub mod codes {
    /// The standard "invalid params".
    pub const INVALID_PARAMS: i32 = -32602;
    /// Something failed that the caller cannot fix (Redis down, I/O).
    pub const SERVER_ERROR: i32 = -32000;
    /// No runner by that name.
    pub const RUNNER_NOT_FOUND: i32 = -32010;
    /// A runner by that name (or for that circle) exists already.
    pub const RUNNER_EXISTS: i32 = -32011;
    /// The circle key is not a secp256k1 public key.
    pub const INVALID_CIRCLE_KEY: i32 = -32012;
    /// The process manager failed; the message names the unit and step.
    pub const MANAGER_FAILURE: i32 = -32013;
    /// Missing or wrong secret, or a user secret on an admin method.
    pub const UNAUTHORIZED: i32 = -32014;
    /// No job by that id.
    pub const JOB_NOT_FOUND: i32 = -32015;
    /// The job did not end within its timeout.
    pub const JOB_TIMED_OUT: i32 = -32016;
    /// The runner is not running (no live worker serves its circle); the
    /// job was not queued. The same code as the WebSocket server's.
    pub const CIRCLE_OFFLINE: i32 = -32004;
}

/// Everything a supervisor operation can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// No runner by that name.
    #[error("runner `{0}` not found; `list_runners` shows the runners there are")]
    RunnerNotFound(String),
    /// The name is taken.
    #[error("runner `{0}` already exists; remove it first or pick another name")]
    RunnerExists(String),
    /// The circle already has a runner (one worker per circle).
    #[error("circle {key} already has runner `{runner}`; a circle has one runner")]
    CircleTaken {
        /// The circle key.
        key: String,
        /// The runner that has it.
        runner: String,
    },
    /// The circle key does not parse.
    #[error(transparent)]
    InvalidKey(#[from] circles_dispatcher::InvalidKey),
    /// A parameter that cannot be used (name, env, script, binary, ...).
    #[error("{0}")]
    InvalidInput(String),
    /// The process manager failed at a step; nothing was left half-made.
    #[error("{manager} failed {step}: {message}")]
    Manager {
        /// `child`, `systemd`, `launchd`.
        manager: &'static str,
        /// What it was doing, naming the unit or runner.
        step: String,
        /// Why, with the unit state and last log lines where known.
        message: String,
    },
    /// A runner started but did not become ready.
    #[error("runner `{runner}` did not start: {reason}{}", log_tail(.last_lines))]
    NotStarted {
        /// The runner.
        runner: String,
        /// Why (exit status, timeout).
        reason: String,
        /// Its last log lines.
        last_lines: Vec<String>,
    },
    /// No such job (never submitted, or expired).
    #[error("job {0} not found (never queued, or expired after the retention period)")]
    JobNotFound(String),
    /// A job ran past its timeout; it stays queued and may still run.
    #[error(
        "job {0} did not end within its timeout of {1}s; it stays queued and may still run (`get_job_status` tells)"
    )]
    JobTimedOut(TaskId, u64),
    /// The runner cannot take jobs now.
    #[error("runner `{runner}` is {state}: start it first (the job was not queued)")]
    RunnerNotRunning {
        /// The runner.
        runner: String,
        /// Its state.
        state: String,
    },
    /// The circle has no live worker (no heartbeat): nothing was queued.
    #[error("{0}; the job was not queued (start the runner, or see its status and logs)")]
    CircleOffline(String),
    /// Redis did not answer or refused.
    #[error("Redis unavailable at {url}: {message}")]
    Redis {
        /// The URL (shown redacted).
        url: circles_dispatcher::RedisUrl,
        /// What failed.
        message: String,
    },
    /// Missing or wrong secret, or a user secret on an admin method.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A job-side error from the dispatcher that is none of the above.
    #[error(transparent)]
    Dispatch(DispatchError),
    /// The supervisor's own files (state, logs).
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The supervisor cannot start as configured (bind, secrets, data dir).
    #[error("{0}")]
    Config(String),
}

fn log_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; last log lines:\n{}", lines.join("\n"))
    }
}

impl SupervisorError {
    /// The JSON-RPC error code for this error.
    pub fn code(&self) -> i32 {
        use codes::*;
        match self {
            Self::RunnerNotFound(_) => RUNNER_NOT_FOUND,
            Self::RunnerExists(_) | Self::CircleTaken { .. } => RUNNER_EXISTS,
            Self::InvalidKey(_) => INVALID_CIRCLE_KEY,
            Self::InvalidInput(_) => INVALID_PARAMS,
            Self::Manager { .. } | Self::NotStarted { .. } => MANAGER_FAILURE,
            Self::RunnerNotRunning { .. } | Self::CircleOffline(_) => CIRCLE_OFFLINE,
            Self::Unauthorized(_) => UNAUTHORIZED,
            Self::JobNotFound(_) => JOB_NOT_FOUND,
            Self::JobTimedOut(..) => JOB_TIMED_OUT,
            Self::Redis { .. } | Self::Dispatch(_) | Self::Io { .. } | Self::Config(_) => {
                SERVER_ERROR
            }
        }
    }

    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// A manager failure.
    pub(crate) fn manager(
        manager: &'static str,
        step: impl Into<String>,
        message: impl ToString,
    ) -> Self {
        Self::Manager {
            manager,
            step: step.into(),
            message: message.to_string(),
        }
    }

    /// Maps a dispatcher error on `url`.
    pub(crate) fn from_dispatch(e: DispatchError, timeout_secs: u64) -> Self {
        match e {
            DispatchError::TaskNotFound(id) => Self::JobNotFound(id.to_string()),
            DispatchError::Timeout { task_id, .. } => Self::JobTimedOut(task_id, timeout_secs),
            DispatchError::InvalidKey(k) => Self::InvalidKey(k),
            DispatchError::EmptyScript => Self::InvalidInput("the script is empty".into()),
            DispatchError::RedisUnavailable { url, source } => Self::Redis {
                url,
                message: source.to_string(),
            },
            e @ DispatchError::CircleOffline { .. } => Self::CircleOffline(e.to_string()),
            e => Self::Dispatch(e),
        }
    }
}
