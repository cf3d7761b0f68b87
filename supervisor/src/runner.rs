//! Runners: what the supervisor keeps about each (the persisted
//! [`RunnerConfig`]) and what it reports ([`RunnerInfo`], the one shape
//! shared by the RPC, `supervisor ctl`'s table and `--json`).

use circles_dispatcher::text::clip;
use std::collections::BTreeMap;
use std::path::PathBuf;

use circles_dispatcher::CirclePublicKey;
use circles_supervise::{ChildState, ExitStatus};
use serde::{Deserialize, Serialize};

use crate::error::SupervisorError;

/// Which process manager runs a runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ManagerKind {
    /// A supervised child process of the supervisor (dies with it, comes
    /// back when it restarts).
    Child,
    /// A systemd unit `tf.ourworld.circles.circle-worker-<pk>` (keeps
    /// running without the supervisor).
    Systemd,
    /// A launchd job with the same label.
    Launchd,
}

impl ManagerKind {
    /// `child`, `systemd`, `launchd`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Child => "child",
            Self::Systemd => "systemd",
            Self::Launchd => "launchd",
        }
    }

    /// The default on this host: systemd when root on a booted systemd,
    /// else child processes.
    pub fn host_default() -> Self {
        let root = rustix::process::geteuid().is_root();
        if root && std::path::Path::new(circles_services::host::SYSTEMD_BOOTED_MARKER).exists() {
            Self::Systemd
        } else {
            Self::Child
        }
    }
}

impl std::fmt::Display for ManagerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ManagerKind {
    type Err = SupervisorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "child" => Ok(Self::Child),
            "systemd" => Ok(Self::Systemd),
            "launchd" => Ok(Self::Launchd),
            other => Err(SupervisorError::InvalidInput(format!(
                "unknown process manager `{other}`: expected child, systemd or launchd"
            ))),
        }
    }
}

/// What the operator wants a runner to be; kept across supervisor restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    /// Keep it running (started again when the supervisor starts).
    Running,
    /// Leave it stopped.
    Stopped,
}

/// A runner as the supervisor stores it (`<data>/supervisor.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerConfig {
    /// Unique name.
    pub name: String,
    /// The circle (canonical hex).
    pub circle_public_key: CirclePublicKey,
    /// Sent once the worker first runs.
    #[serde(default)]
    pub init_script: Option<String>,
    /// The worker binary, when not the supervisor's default.
    #[serde(default)]
    pub worker_binary: Option<PathBuf>,
    /// Extra environment of the worker.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its process manager.
    pub manager: ManagerKind,
    /// What it should be.
    pub target: TargetState,
    /// Outcome of the last init script: `ok: …`, `error: …`, or `-`.
    #[serde(default = "no_init")]
    pub init: String,
    /// Whether the init script is still to be sent (at the next start).
    #[serde(default)]
    pub init_pending: bool,
}

fn no_init() -> String {
    "-".into()
}

/// Everything the API reports about one runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerInfo {
    /// Its name.
    pub name: String,
    /// The circle (canonical hex).
    pub circle_public_key: String,
    /// `child`, `systemd`, `launchd`.
    pub manager: ManagerKind,
    /// `stopped|starting|running|backoff|stopping|exited|failed|unknown`.
    pub state: ChildState,
    /// What the operator asked for: `running` or `stopped`.
    pub target: TargetState,
    /// The worker process, while there is one.
    pub pid: Option<u32>,
    /// When it started (RFC 3339).
    pub started_at: Option<String>,
    /// Seconds since it started.
    pub uptime_secs: Option<u64>,
    /// Restarts after exits (counted by the manager).
    pub restarts: u32,
    /// How the last process ended: `{"code": n}` or `{"signal": n}`.
    pub last_exit: Option<ExitStatus>,
    /// Why it is failed (or why the last run ended).
    pub reason: Option<String>,
    /// The last lines of its log, when it is failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_log_lines: Vec<String>,
    /// Tasks waiting in its queue; null when Redis does not answer.
    pub queue_depth: Option<u64>,
    /// Its worker's last heartbeat (RFC 3339), if alive.
    pub heartbeat_at: Option<String>,
    /// Tasks its current worker process has finished (from the heartbeat).
    pub tasks_done: Option<u64>,
    /// Resident memory of the worker process (from /proc).
    pub memory_rss_bytes: Option<u64>,
    /// Outcome of the last init script.
    pub init: String,
    /// `ws://…/<pk>` on the WebSocket server.
    pub url: String,
}

/// Longest runner name accepted.
pub const MAX_NAME_LEN: usize = 64;
/// Largest init script accepted, in bytes.
pub const MAX_INIT_SCRIPT: usize = 1024 * 1024;
/// Most environment variables per runner.
pub const MAX_ENV_VARS: usize = 64;
/// Largest environment value, in bytes.
pub const MAX_ENV_VALUE: usize = 4096;
/// Variables the supervisor sets itself; a runner's `env` may not.
pub const RESERVED_ENV: [&str; 3] = [
    circles_dispatcher::protocol::ENV_REDIS_URL,
    circles_supervise::notify::ENV_NOTIFY_SOCKET,
    circles_supervise::parent::ENV_PARENT_PID,
];

/// Prefixes of variables that change what a process loads or runs (the
/// dynamic loader's `LD_*`, glibc's `GCONV_PATH`/`LOCPATH`, …): given by
/// an API caller they would run code of their choosing in the runner.
pub const FORBIDDEN_ENV_PREFIXES: [&str; 5] = ["LD_", "GCONV_PATH", "LOCPATH", "MALLOC_", "GLIBC_"];

/// A runner name: 1–64 of `[A-Za-z0-9_-]`, so it is safe in a file name, a
/// log line and a table.
pub fn validate_name(name: &str) -> Result<(), SupervisorError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SupervisorError::InvalidInput(format!(
            "invalid runner name {:?}: use 1 to {MAX_NAME_LEN} letters, digits, `-` or `_`",
            clip(name, 80)
        )))
    }
}

/// A runner's extra environment: valid names, bounded sizes, nothing the
/// supervisor sets itself.
pub fn validate_env(env: &BTreeMap<String, String>) -> Result<(), SupervisorError> {
    let bad = |m: String| Err(SupervisorError::InvalidInput(m));
    if env.len() > MAX_ENV_VARS {
        return bad(format!(
            "{} environment variables given; at most {MAX_ENV_VARS}",
            env.len()
        ));
    }
    for (key, value) in env {
        let mut chars = key.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && key.len() <= 128;
        if !valid {
            return bad(format!(
                "environment variable name {:?} is not [A-Za-z_][A-Za-z0-9_]*",
                clip(key, 80)
            ));
        }
        if RESERVED_ENV.contains(&key.as_str()) {
            return bad(format!(
                "environment variable {key} is set by the supervisor and cannot be given"
            ));
        }
        if FORBIDDEN_ENV_PREFIXES.iter().any(|p| key.starts_with(p)) {
            return bad(format!(
                "environment variable {key} would change what the runner loads; it cannot be given"
            ));
        }
        if value.contains('\0') || value.len() > MAX_ENV_VALUE {
            return bad(format!(
                "environment variable {key}: the value must be at most {MAX_ENV_VALUE} bytes without NUL"
            ));
        }
    }
    Ok(())
}

/// An init script within bounds.
pub fn validate_init_script(script: &str) -> Result<(), SupervisorError> {
    if script.len() > MAX_INIT_SCRIPT {
        return Err(SupervisorError::InvalidInput(format!(
            "the init script is {} bytes; at most {MAX_INIT_SCRIPT}",
            script.len()
        )));
    }
    if script.trim().is_empty() {
        return Err(SupervisorError::InvalidInput(
            "the init script is empty; leave it out instead".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_for_files_and_tables() {
        for good in ["a", "alpha-1", "A_b", &"x".repeat(64)] {
            validate_name(good).unwrap();
        }
        for bad in ["", "a b", "../x", "a/b", "é", &"x".repeat(65), "a\n"] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains("invalid runner name"), "{err}");
        }
    }

    #[test]
    fn env_is_bounded_and_cannot_override_the_supervisor() {
        let env = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        validate_env(&env("FOO", "bar")).unwrap();
        for (k, v, needle) in [
            ("REDIS_URL", "x", "set by the supervisor"),
            ("NOTIFY_SOCKET", "x", "set by the supervisor"),
            ("1X", "x", "is not"),
            ("A-B", "x", "is not"),
            ("A", "a\0b", "NUL"),
            ("LD_PRELOAD", "/tmp/evil.so", "what the runner loads"),
            ("LD_LIBRARY_PATH", "/tmp", "what the runner loads"),
            ("GCONV_PATH", "/tmp", "what the runner loads"),
        ] {
            let err = validate_env(&env(k, v)).unwrap_err().to_string();
            assert!(err.contains(needle), "{k}: {err}");
        }
        let big = env("A", &"x".repeat(MAX_ENV_VALUE + 1));
        assert!(validate_env(&big).is_err());
        let many: BTreeMap<String, String> = (0..=MAX_ENV_VARS)
            .map(|i| (format!("V{i}"), String::new()))
            .collect();
        assert!(validate_env(&many).is_err());
    }

    #[test]
    fn manager_kinds_parse_and_print() {
        for k in [
            ManagerKind::Child,
            ManagerKind::Systemd,
            ManagerKind::Launchd,
        ] {
            assert_eq!(k.as_str().parse::<ManagerKind>().unwrap(), k);
        }
        let err = "docker".parse::<ManagerKind>().unwrap_err().to_string();
        assert!(err.contains("expected child, systemd or launchd"), "{err}");
    }
}
