//! The `systemd` and `launchd` process managers: each runner's worker is
//! the service `tf.ourworld.circles.circle-worker-<pk>`, rendered by the
//! deploy crate exactly as the launcher renders it and installed through
//! the services crate (render → plan → apply, rolled back on failure). So
//! `launcher status` and `launcher cleanup` see the supervisor's runners,
//! and a runner keeps running when the supervisor is killed: a restarted
//! supervisor finds it by name (adoption is reading its status).

use std::time::SystemTime;

use circles_deploy::{WorkerService, worker_service_name, worker_service_spec};
use circles_services::{HostEnv, ServiceBackend, ServiceError, ServiceStatus, Templates};
use circles_supervise::{ChildState, ExitStatus};

use super::ManagedStatus;
use crate::error::SupervisorError;
use crate::runner::ManagerKind;

/// systemd or launchd through [`ServiceBackend`].
#[derive(Debug)]
pub struct ServiceManager {
    kind: ManagerKind,
    backend: ServiceBackend,
    /// The last exit seen per unit: systemd forgets it once it has
    /// restarted the unit (ExecMain* then describe the new process).
    last_exits: std::sync::Mutex<std::collections::HashMap<String, ExitStatus>>,
    /// The journal's reason per unit, with the restart count and state it
    /// was read for: a unit that stays failed is read once, not at every
    /// poll (the supervisor polls its service runners every second).
    reasons: std::sync::Mutex<std::collections::HashMap<String, JournalReason>>,
}

/// A unit's reason from the journal, the restart count and state it was
/// read for, and when.
type JournalReason = (u32, ChildState, Option<String>, std::time::Instant);

/// How long a journal reason is kept while the unit's restart count and
/// state stay the same (systemd resets the count when a unit is started by
/// hand, so the same pair can come back with another cause).
const REASON_KEPT: std::time::Duration = std::time::Duration::from_secs(30);

impl ServiceManager {
    /// Connects to the service manager of `kind` (system scope for root,
    /// user scope otherwise, as the launcher does).
    pub async fn connect(kind: ManagerKind) -> Result<Self, SupervisorError> {
        let mut host = HostEnv::from_process();
        host.backend_override = Some(kind.as_str().to_string());
        let backend = ServiceBackend::detect_in(&host, None, Templates::embedded())
            .await
            .map_err(|e| {
                SupervisorError::manager(
                    kind.as_str(),
                    "connecting",
                    format!("{e}; is {kind} running on this host? (use manager `child` otherwise)"),
                )
            })?;
        Ok(Self {
            kind,
            backend,
            last_exits: Default::default(),
            reasons: Default::default(),
        })
    }

    /// Which one.
    pub fn kind(&self) -> ManagerKind {
        self.kind
    }

    fn err(&self, step: String, e: ServiceError) -> SupervisorError {
        SupervisorError::manager(self.kind.as_str(), step, e)
    }

    /// Renders the worker's unit and plans it against what is installed
    /// (a foreign file of that name is refused here); with `start`, applies
    /// the plan — write, enable, start, wait until ready — which the
    /// services crate rolls back entirely if a step fails. Without `start`
    /// nothing is written yet: the unit is installed by the first start, so
    /// a runner that is only added leaves no unit that systemd would start
    /// at boot against its target state.
    pub async fn install(&self, w: &WorkerService, start: bool) -> Result<(), SupervisorError> {
        let spec = worker_service_spec(w);
        let name = spec.name.clone();
        let plan = self
            .backend
            .plan(std::slice::from_ref(&spec))
            .await
            .map_err(|e| self.err(format!("planning `{name}`"), e))?;
        if start {
            self.backend
                .apply(&plan)
                .await
                .map_err(|e| self.err(format!("installing `{name}`"), e))?;
        }
        Ok(())
    }

    /// Starts the unit, installing it first when it is gone (removed by
    /// `launcher cleanup`, say); waits until it is ready.
    pub async fn start(&self, w: &WorkerService) -> Result<(), SupervisorError> {
        let name = worker_service_name(&w.key);
        let status = self
            .backend
            .status(&name)
            .await
            .map_err(|e| self.err(format!("reading the state of `{name}`"), e))?;
        if status.unit_path.is_none() {
            return self.install(w, true).await;
        }
        self.backend
            .start(std::slice::from_ref(&name))
            .await
            .map_err(|e| self.err(format!("starting `{name}`"), e))
    }

    /// Stops the unit; it stays installed.
    pub async fn stop(&self, w: &WorkerService) -> Result<(), SupervisorError> {
        let name = worker_service_name(&w.key);
        self.backend
            .stop(std::slice::from_ref(&name))
            .await
            .map_err(|e| self.err(format!("stopping `{name}`"), e))
    }

    /// Restarts the unit (installing it if it is gone) and waits.
    pub async fn restart(&self, w: &WorkerService) -> Result<(), SupervisorError> {
        let name = worker_service_name(&w.key);
        let installed = self
            .backend
            .status(&name)
            .await
            .map(|s| s.unit_path.is_some())
            .unwrap_or(false);
        if !installed {
            return self.install(w, true).await;
        }
        self.backend
            .restart(std::slice::from_ref(&name))
            .await
            .map_err(|e| self.err(format!("restarting `{name}`"), e))
    }

    /// Stops, disables and deletes the unit.
    pub async fn remove(&self, w: &WorkerService) -> Result<(), SupervisorError> {
        let name = worker_service_name(&w.key);
        self.backend
            .remove(std::slice::from_ref(&name))
            .await
            .map(drop)
            .map_err(|e| self.err(format!("removing `{name}`"), e))
    }

    /// The unit's state, in the one state model.
    pub async fn status(&self, w: &WorkerService) -> ManagedStatus {
        let name = worker_service_name(&w.key);
        match self.backend.status(&name).await {
            Ok(status) => {
                let mut managed = managed_status(&status);
                if let Some(exit) = managed.last_exit {
                    self.last_exits
                        .lock()
                        .expect("last exits")
                        .insert(name.to_string(), exit);
                } else if managed.restarts > 0 {
                    // Once systemd has restarted a unit, ExecMain* describe
                    // the new process: how the previous one ended is what we
                    // saw before (the supervisor polls its service runners),
                    // or what systemd wrote to the journal about it.
                    managed.last_exit = self
                        .last_exits
                        .lock()
                        .expect("last exits")
                        .get(name.as_str())
                        .copied();
                    if managed.last_exit.is_none()
                        && let ServiceBackend::Systemd(b) = &self.backend
                    {
                        managed.last_exit =
                            circles_deploy::status::last_exit_from_journal(b.scope(), &name).await;
                    }
                }
                // Why it is not running: the worker's own last error, as
                // `launcher status` shows it.
                if matches!(
                    managed.state,
                    ChildState::Failed | ChildState::Backoff | ChildState::Exited
                ) && let ServiceBackend::Systemd(b) = &self.backend
                    && let Some(error) = self.journal_reason(b, &name, &managed).await
                {
                    managed.reason = Some(match managed.reason {
                        Some(manager) => format!("{error} ({manager})"),
                        None => error,
                    });
                }
                managed
            }
            Err(e) => ManagedStatus::unknown(format!("{} status of `{name}`: {e}", self.kind)),
        }
    }

    /// The worker's last error from the journal, read again when the unit's
    /// restart count or state changed since the last read, or after
    /// [`REASON_KEPT`].
    async fn journal_reason(
        &self,
        b: &circles_services::systemd::SystemdBackend,
        name: &circles_services::ServiceName,
        status: &ManagedStatus,
    ) -> Option<String> {
        let seen = (status.restarts, status.state.clone());
        if let Some((restarts, state, reason, at)) =
            self.reasons.lock().expect("reasons").get(name.as_str())
            && (*restarts, state.clone()) == seen
            && at.elapsed() < REASON_KEPT
        {
            return reason.clone();
        }
        let reason = circles_deploy::status::error_from_journal(b.scope(), name).await;
        self.reasons.lock().expect("reasons").insert(
            name.to_string(),
            (seen.0, seen.1, reason.clone(), std::time::Instant::now()),
        );
        reason
    }

    /// The journal (systemd) or the log files (launchd).
    pub async fn logs(
        &self,
        w: &WorkerService,
        lines: usize,
        since: Option<SystemTime>,
    ) -> Result<Vec<String>, SupervisorError> {
        let name = worker_service_name(&w.key);
        match &self.backend {
            ServiceBackend::Systemd(b) => {
                let mut cmd = tokio::process::Command::new("journalctl");
                cmd.arg(match b.scope() {
                    circles_services::ServiceScope::System => "--unit",
                    circles_services::ServiceScope::User => "--user-unit",
                })
                .arg(name.unit_name())
                .args(["--no-pager", "--output", "short-iso", "--lines"])
                .arg(lines.min(super::logs::MAX_LINES).to_string());
                if let Some(since) = since {
                    let secs = since
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs();
                    cmd.arg(format!("--since=@{secs}"));
                }
                let all =
                    super::logs::command_lines(cmd, &format!("the journal of `{name}`")).await?;
                // journalctl says "-- No entries --" when there are none.
                Ok(all.into_iter().filter(|l| !l.starts_with("-- ")).collect())
            }
            _ => {
                let (out, err) = self.launchd_log_files(w);
                let mut all = super::logs::file_tail(&out, lines, since).await?;
                all.extend(super::logs::file_tail(&err, lines, since).await?);
                let skip = all.len().saturating_sub(lines);
                Ok(all.split_off(skip))
            }
        }
    }

    fn launchd_log_files(&self, w: &WorkerService) -> (std::path::PathBuf, std::path::PathBuf) {
        circles_services::launchd::render::log_paths(&worker_service_spec(w))
    }

    /// `journalctl -f` (systemd) or the log files (launchd), from now on.
    pub fn follow_logs(
        &self,
        w: &WorkerService,
    ) -> Result<tokio::sync::mpsc::Receiver<String>, SupervisorError> {
        let name = worker_service_name(&w.key);
        match &self.backend {
            ServiceBackend::Systemd(b) => {
                let mut cmd = tokio::process::Command::new("journalctl");
                cmd.arg(match b.scope() {
                    circles_services::ServiceScope::System => "--unit",
                    circles_services::ServiceScope::User => "--user-unit",
                })
                .arg(name.unit_name())
                .args([
                    "--no-pager",
                    "--output",
                    "short-iso",
                    "--lines=0",
                    "--follow",
                ]);
                super::logs::follow_command(cmd).map_err(|e| {
                    SupervisorError::manager(
                        "systemd",
                        format!("following the journal of `{name}`"),
                        e,
                    )
                })
            }
            _ => {
                let (out, err) = self.launchd_log_files(w);
                Ok(super::logs::follow_files(vec![out, err]))
            }
        }
    }
}

/// The unit's status in the one state model (`circles_deploy::status`,
/// shared with `launcher status`), with the supervisor's own hint for a
/// unit that is not installed yet.
pub fn managed_status(s: &ServiceStatus) -> ManagedStatus {
    let status = circles_deploy::status::child_status(s);
    let reason = match status.state {
        ChildState::Unknown if !s.loaded && s.unit_path.is_none() => Some(format!(
            "`{}` is not installed (not started yet, or removed outside the supervisor); start_runner installs it",
            s.name
        )),
        _ => status.reason,
    };
    ManagedStatus {
        state: status.state,
        pid: status.pid,
        started_at: status.pid.and_then(crate::procfs::start_time),
        restarts: status.restarts,
        last_exit: status.last_exit,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_not_installed_says_how_to_install_it() {
        let gone = ServiceStatus {
            name: circles_services::ServiceName::new("tf.ourworld.circles.circle-worker-x")
                .unwrap(),
            loaded: false,
            active_state: "inactive".into(),
            sub_state: "dead".into(),
            main_pid: None,
            n_restarts: None,
            exec_main_status: None,
            exec_main_code: None,
            unit_path: None,
        };
        let m = managed_status(&gone);
        assert_eq!(m.state, ChildState::Unknown);
        assert!(m.reason.unwrap().contains("start_runner installs it"));
    }
}
