//! What systemd or launchd reports about a circle service, in the one state
//! model of `circles-supervise` ([`ChildStatus`]: state, pid, restarts, last
//! exit as a code *or* a signal, reason), computed here once for `launcher
//! status` and the supervisor's service runners, so a state reads the same
//! whichever tool shows it — and the same as a direct-mode child's.
//!
//! Two things systemd does not say directly are looked up in its journal:
//! how the previous main process ended once the unit has been restarted
//! (`ExecMain*` then describe the new process, and a SIGKILLed worker would
//! read "exit 0"), and the error a failing worker wrote before it exited.

use std::time::Duration;

use circles_services::{ServiceBackend, ServiceError, ServiceName, ServiceScope, ServiceStatus};
use circles_supervise::{ChildState, ChildStatus, ExitStatus};

/// How long a journal query may take before it is given up (the status
/// then lacks the detail, it does not fail).
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Journal lines searched for a failing worker's last error.
const REASON_LINES: usize = 50;

/// systemd's state words in the one state model: `active (running)` →
/// running, `activating (start)` → starting, `activating (auto-restart)` →
/// backoff, `deactivating` → stopping, `failed` → failed, `inactive` →
/// stopped (exited, when it ended by a failure nothing restarts), a unit
/// neither loaded nor on disk → unknown. The last exit is left out while the
/// manager describes a process that has not ended (`ExecMainCode=0`).
pub fn child_status(s: &ServiceStatus) -> ChildStatus {
    let last_exit = s.last_exit().map(|(signal, n)| {
        if signal {
            ExitStatus::Signal(n)
        } else {
            ExitStatus::Code(n)
        }
    });
    let state = match (s.active_state.as_str(), s.sub_state.as_str()) {
        _ if !s.loaded && s.unit_path.is_none() => ChildState::Unknown,
        ("active", _) | ("reloading", _) => ChildState::Running,
        ("activating", "auto-restart") => ChildState::Backoff,
        ("activating", _) => ChildState::Starting,
        ("deactivating", _) => ChildState::Stopping,
        ("failed", _) => ChildState::Failed,
        ("inactive", _)
            if last_exit.is_some_and(|e| !e.success() && e != ExitStatus::Signal(15)) =>
        {
            ChildState::Exited
        }
        ("inactive", _) => ChildState::Stopped,
        _ => ChildState::Unknown,
    };
    let reason = match state {
        ChildState::Unknown if !s.loaded && s.unit_path.is_none() => {
            Some(format!("`{}` is not installed", s.name))
        }
        ChildState::Failed => Some(format!(
            "`{}` is {} ({}){}",
            s.name,
            s.active_state,
            s.sub_state,
            last_exit.map(|e| format!(", last {e}")).unwrap_or_default()
        )),
        _ => None,
    };
    ChildStatus {
        state,
        pid: s.main_pid,
        started_at: None,
        restarts: s.n_restarts.unwrap_or(0),
        last_exit: if s.exec_main_code == Some(0) {
            None
        } else {
            last_exit
        },
        reason,
    }
}

/// The status of service `name` in the one model, completed from the
/// journal on systemd: the last exit of a restarted unit, and — when it is
/// not running — the last error its process wrote, ahead of the reason.
pub async fn service_status(
    backend: &ServiceBackend,
    name: &ServiceName,
) -> Result<ChildStatus, ServiceError> {
    let raw = backend.status(name).await?;
    let mut status = child_status(&raw);
    let ServiceBackend::Systemd(systemd) = backend else {
        return Ok(status);
    };
    if status.last_exit.is_none() && status.restarts > 0 {
        status.last_exit = last_exit_from_journal(systemd.scope(), name).await;
    }
    let troubled = matches!(
        status.state,
        ChildState::Failed | ChildState::Backoff | ChildState::Exited
    ) || (status.state == ChildState::Starting && status.restarts > 0);
    if troubled && let Some(error) = error_from_journal(systemd.scope(), name).await {
        status.reason = Some(match status.reason {
            Some(manager) => format!("{error} ({manager})"),
            None => error,
        });
    }
    Ok(status)
}

/// The state word tables and `--json` show for a circle: the process state
/// (`ChildState`'s word), except `offline` for a process its manager calls
/// running while Redis has no live heartbeat of it (`heartbeat_live ==
/// Some(false)`: frozen, cut off from Redis, or not yet registered) — the
/// word the dispatcher and `play` use for a circle nobody serves.
pub fn state_word(state: &ChildState, heartbeat_live: Option<bool>) -> &'static str {
    match (state, heartbeat_live) {
        (ChildState::Running, Some(false)) => "offline",
        (state, _) => state.as_str(),
    }
}

/// A circle's process status read together with what Redis says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircleHealth {
    /// The word to show: [`state_word`].
    pub state: &'static str,
    /// The heartbeat, if it is this process's own (same pid on this host):
    /// another worker's (one that holds the circle while this one cannot
    /// start, or one on another host) is never shown as this circle's.
    pub heartbeat: Option<circles_dispatcher::WorkerHeartbeat>,
    /// The process's reason; else, for a running process without its
    /// heartbeat, why it is offline; else, for one that is not running
    /// while another worker serves the circle, who serves it.
    pub reason: Option<String>,
}

/// [`CircleHealth`] of a circle whose process is in `process`, given the
/// circle's heartbeat from Redis (`redis_answered` false: Redis said
/// nothing, so nothing is claimed about liveness) and this host's name.
pub fn circle_health(
    process: &ChildStatus,
    redis_answered: bool,
    heartbeat: Option<circles_dispatcher::WorkerHeartbeat>,
    this_host: &str,
) -> CircleHealth {
    let (own, foreign) = match heartbeat {
        Some(b) if process.pid == Some(b.pid) && b.host == this_host => (Some(b), None),
        Some(b) => (None, Some(b)),
        None => (None, None),
    };
    let live = redis_answered.then_some(own.is_some());
    let state = state_word(&process.state, live);
    let mut reason = process.reason.clone();
    if reason.is_none() && state == "offline" {
        reason =
            Some("no live heartbeat in Redis: the worker is frozen or cannot reach Redis".into());
    }
    if reason.is_none()
        && process.state != ChildState::Running
        && let Some(b) = &foreign
    {
        reason = Some(format!(
            "circle served by pid {} on host {} (since {})",
            b.pid, b.host, b.started_at
        ));
    }
    CircleHealth {
        state,
        heartbeat: own,
        reason,
    }
}

/// This host's name, as workers write it in their heartbeats and leases.
pub fn this_host() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// systemd's structured "unit process exited" journal message
/// (`SD_MESSAGE_UNIT_PROCESS_EXIT`), which carries `EXIT_CODE` and
/// `EXIT_STATUS`.
const UNIT_PROCESS_EXIT: &str = "98e322203f7a4ed290d09fe03c09fe15";

/// How the unit's last main process ended, from systemd's own journal
/// entry about it; `None` when the journal does not say.
pub async fn last_exit_from_journal(scope: ServiceScope, name: &ServiceName) -> Option<ExitStatus> {
    let mut cmd = tokio::process::Command::new("journalctl");
    if scope == ServiceScope::User {
        cmd.arg("--user");
    }
    let unit_field = match scope {
        ServiceScope::System => "UNIT",
        ServiceScope::User => "USER_UNIT",
    };
    cmd.arg(format!("{unit_field}={}", name.unit_name()))
        .arg(format!("MESSAGE_ID={UNIT_PROCESS_EXIT}"))
        .args(["--no-pager", "--output", "json", "--lines", "1"]);
    let lines = journal_lines(cmd).await?;
    parse_exit_entry(lines.last()?)
}

/// `EXIT_CODE`/`EXIT_STATUS` of a journal entry (JSON) as an exit status.
fn parse_exit_entry(line: &str) -> Option<ExitStatus> {
    let entry: serde_json::Value = serde_json::from_str(line).ok()?;
    let status: i32 = entry["EXIT_STATUS"].as_str()?.parse().ok()?;
    match entry["EXIT_CODE"].as_str()? {
        "exited" => Some(ExitStatus::Code(status)),
        "killed" | "dumped" => Some(ExitStatus::Signal(status)),
        _ => None,
    }
}

/// The last error line the unit's processes wrote to the journal (see
/// [`circles_supervise::logs::error_message`]).
pub async fn error_from_journal(scope: ServiceScope, name: &ServiceName) -> Option<String> {
    let mut cmd = tokio::process::Command::new("journalctl");
    cmd.arg(match scope {
        ServiceScope::System => "--unit",
        ServiceScope::User => "--user-unit",
    })
    .arg(name.unit_name())
    .args(["--no-pager", "--output", "cat", "--lines"])
    .arg(REASON_LINES.to_string());
    let lines = journal_lines(cmd).await?;
    let error = lines
        .iter()
        .rev()
        .find_map(|l| circles_supervise::logs::error_message(l))?;
    Some(
        circles_dispatcher::text::clip(error, circles_supervise::logs::MAX_REASON_LEN).into_owned(),
    )
}

/// Runs a journal query; its stdout lines, or `None` when it cannot run,
/// fails or takes too long.
async fn journal_lines(mut cmd: tokio::process::Command) -> Option<Vec<String>> {
    cmd.stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(JOURNAL_TIMEOUT, cmd.output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(active: &str, sub: &str, code: Option<i32>, exit: Option<i32>) -> ServiceStatus {
        ServiceStatus {
            name: ServiceName::new("tf.ourworld.circles.circle-worker-x").unwrap(),
            loaded: true,
            active_state: active.into(),
            sub_state: sub.into(),
            main_pid: None,
            n_restarts: Some(3),
            exec_main_status: exit,
            exec_main_code: code,
            unit_path: Some("/etc/systemd/system/x.service".into()),
        }
    }

    #[test]
    fn systemd_states_map_onto_the_one_model() {
        for (active, sub, want) in [
            ("active", "running", ChildState::Running),
            ("activating", "start", ChildState::Starting),
            ("activating", "auto-restart", ChildState::Backoff),
            ("deactivating", "stop-sigterm", ChildState::Stopping),
            ("failed", "failed", ChildState::Failed),
            ("inactive", "dead", ChildState::Stopped),
            ("maintenance", "x", ChildState::Unknown),
        ] {
            let m = child_status(&status(active, sub, Some(1), Some(0)));
            assert_eq!(m.state, want, "{active} ({sub})");
            assert_eq!(m.restarts, 3);
        }
        let killed = child_status(&status("activating", "auto-restart", Some(2), Some(9)));
        assert_eq!(
            killed.last_exit,
            Some(ExitStatus::Signal(9)),
            "SIGKILL is not exit 9"
        );
        let exited = child_status(&status("failed", "failed", Some(1), Some(3)));
        assert_eq!(exited.last_exit, Some(ExitStatus::Code(3)));
        assert!(exited.reason.unwrap().contains("last exit status 3"));
        // Restarted by systemd: ExecMain* describe the new process, which
        // has not ended; its "status 0" is not the last exit (issue 10 item 3).
        let restarted = child_status(&status("active", "running", Some(0), Some(0)));
        assert_eq!(restarted.last_exit, None);
        let mut gone = status("inactive", "dead", None, None);
        gone.loaded = false;
        gone.unit_path = None;
        let gone = child_status(&gone);
        assert_eq!(gone.state, ChildState::Unknown);
        assert!(gone.reason.unwrap().contains("not installed"));
    }

    #[test]
    fn journal_exit_entries_tell_codes_from_signals() {
        let entry = |code: &str, status: &str| {
            serde_json::json!({"EXIT_CODE": code, "EXIT_STATUS": status}).to_string()
        };
        assert_eq!(
            parse_exit_entry(&entry("killed", "9")),
            Some(ExitStatus::Signal(9))
        );
        assert_eq!(
            parse_exit_entry(&entry("dumped", "11")),
            Some(ExitStatus::Signal(11))
        );
        assert_eq!(
            parse_exit_entry(&entry("exited", "1")),
            Some(ExitStatus::Code(1))
        );
        assert_eq!(parse_exit_entry("not json"), None);
    }

    #[test]
    fn a_running_process_without_a_heartbeat_is_offline() {
        assert_eq!(state_word(&ChildState::Running, Some(true)), "running");
        assert_eq!(state_word(&ChildState::Running, None), "running");
        assert_eq!(state_word(&ChildState::Running, Some(false)), "offline");
        assert_eq!(state_word(&ChildState::Failed, Some(false)), "failed");
        assert_eq!(state_word(&ChildState::Backoff, Some(false)), "backoff");
    }
}
