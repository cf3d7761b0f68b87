//! The one state model of a supervised process, shared by the launcher's
//! status table and the supervisor's `RunnerInfo`; the supervisor maps what
//! systemd and launchd report onto the same types, so a state reads the
//! same whichever manager runs the process.

use std::fmt;
use std::time::{Duration, SystemTime};

/// Where a supervised process is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum ChildState {
    /// Spawned (or being spawned), not yet ready.
    Starting,
    /// Ready (sent `READY=1`, or spawned when readiness is not awaited).
    Running,
    /// Exited; will be started again after a backoff.
    Backoff,
    /// Asked to stop; SIGTERM sent, waiting for it to exit.
    Stopping,
    /// Not running, and not meant to be.
    Stopped,
    /// Ended by itself and nothing will restart it (a service manager that
    /// gave up without calling it a failure, a one-shot program).
    Exited,
    /// Gave up restarting (crash loop, cannot be spawned).
    Failed,
    /// The manager could not tell.
    Unknown,
}

impl ChildState {
    /// The word shown in tables and APIs:
    /// `starting|running|backoff|stopping|stopped|exited|failed|unknown`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Backoff => "backoff",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Exited => "exited",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }

    /// Every state, in the order above.
    pub const ALL: [ChildState; 8] = [
        Self::Starting,
        Self::Running,
        Self::Backoff,
        Self::Stopping,
        Self::Stopped,
        Self::Exited,
        Self::Failed,
        Self::Unknown,
    ];
}

impl fmt::Display for ChildState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a process ended: its exit code, or the signal that killed it. A
/// SIGKILLed process shows as signal 9, never as "exit 0".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum ExitStatus {
    /// `exit(code)`.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl ExitStatus {
    /// From the standard library's status (Unix: code or signal).
    pub fn from_std(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Code(code),
            (None, Some(signal)) => Self::Signal(signal),
            // Neither: stopped/continued, which `wait` does not report.
            (None, None) => Self::Code(-1),
        }
    }

    /// Whether this is a clean `exit(0)`.
    pub fn success(self) -> bool {
        self == Self::Code(0)
    }

    /// `exit 3` / `signal 9`: short, for table cells.
    pub fn short(self) -> String {
        match self {
            Self::Code(c) => format!("exit {c}"),
            Self::Signal(s) => format!("signal {s}"),
        }
    }
}

impl fmt::Display for ExitStatus {
    /// `exit status 3` / `killed by signal 9 (SIGKILL)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Code(c) => write!(f, "exit status {c}"),
            Self::Signal(s) => match signal_name(s) {
                Some(name) => write!(f, "killed by signal {s} ({name})"),
                None => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// `SIGKILL` for 9, and so on for the signals people meet; `None` for others.
pub fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
}

/// Everything known about a supervised process at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildStatus {
    /// Its state.
    pub state: ChildState,
    /// The current process, while there is one.
    pub pid: Option<u32>,
    /// When the current process was spawned.
    pub started_at: Option<SystemTime>,
    /// Restarts after an exit so far (a restart asked for is not counted).
    pub restarts: u32,
    /// How the last process ended.
    pub last_exit: Option<ExitStatus>,
    /// Why it is `failed`, or why the last attempt ended (spawn error,
    /// readiness timeout, exit), for people.
    pub reason: Option<String>,
}

impl ChildStatus {
    /// A status that has not started yet.
    pub fn starting() -> Self {
        Self {
            state: ChildState::Starting,
            pid: None,
            started_at: None,
            restarts: 0,
            last_exit: None,
            reason: None,
        }
    }

    /// How long the current process has been up, while there is one.
    pub fn uptime(&self) -> Option<Duration> {
        self.pid?;
        self.started_at?.elapsed().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_signal_is_never_shown_as_an_exit_code() {
        // Raw wait statuses: 9 = killed by SIGKILL, 3 << 8 = exit(3).
        let killed = ExitStatus::from_std(std::process::ExitStatus::from_raw(9));
        assert_eq!(killed, ExitStatus::Signal(9));
        assert_eq!(killed.to_string(), "killed by signal 9 (SIGKILL)");
        assert_eq!(killed.short(), "signal 9");
        assert!(!killed.success());
        let exited = ExitStatus::from_std(std::process::ExitStatus::from_raw(3 << 8));
        assert_eq!(exited, ExitStatus::Code(3));
        assert_eq!(exited.to_string(), "exit status 3");
        assert!(ExitStatus::Code(0).success());
        assert_eq!(ExitStatus::Signal(64).to_string(), "killed by signal 64");
    }

    #[test]
    fn state_words_are_the_spec_ones() {
        let words: Vec<&str> = ChildState::ALL.iter().map(ChildState::as_str).collect();
        assert_eq!(
            words,
            [
                "starting", "running", "backoff", "stopping", "stopped", "exited", "failed",
                "unknown"
            ]
        );
    }
}
