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
}

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
                        managed.last_exit = last_exit_from_journal(b.scope(), &name).await;
                    }
                }
                managed
            }
            Err(e) => ManagedStatus::unknown(format!("{} status of `{name}`: {e}", self.kind)),
        }
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

/// systemd's structured "unit process exited" journal message
/// (`SD_MESSAGE_UNIT_PROCESS_EXIT`), which carries `EXIT_CODE` and
/// `EXIT_STATUS`.
const UNIT_PROCESS_EXIT: &str = "98e322203f7a4ed290d09fe03c09fe15";

/// How the unit's last main process ended, from systemd's own journal
/// entry about it; `None` when the journal does not say.
async fn last_exit_from_journal(
    scope: circles_services::ServiceScope,
    name: &circles_services::ServiceName,
) -> Option<ExitStatus> {
    let mut cmd = tokio::process::Command::new("journalctl");
    if scope == circles_services::ServiceScope::User {
        cmd.arg("--user");
    }
    let unit_field = match scope {
        circles_services::ServiceScope::System => "UNIT",
        circles_services::ServiceScope::User => "USER_UNIT",
    };
    cmd.arg(format!("{unit_field}={}", name.unit_name()))
        .arg(format!("MESSAGE_ID={UNIT_PROCESS_EXIT}"))
        .args(["--no-pager", "--output", "json", "--lines", "1"]);
    let lines = super::logs::command_lines(cmd, "the journal").await.ok()?;
    let entry: serde_json::Value = serde_json::from_str(lines.last()?).ok()?;
    let status: i32 = entry["EXIT_STATUS"].as_str()?.parse().ok()?;
    match entry["EXIT_CODE"].as_str()? {
        "exited" => Some(ExitStatus::Code(status)),
        "killed" | "dumped" => Some(ExitStatus::Signal(status)),
        _ => None,
    }
}

/// What systemd (or launchd, in systemd's words) reports, in the one state
/// model: `active (running)` → running, `activating (start)` → starting,
/// `activating (auto-restart)` → backoff, `deactivating` → stopping,
/// `failed` → failed, `inactive` → stopped (exited after a failure that
/// nothing restarts), a unit that is neither loaded nor on disk → unknown.
pub fn managed_status(s: &ServiceStatus) -> ManagedStatus {
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
        ChildState::Unknown if !s.loaded && s.unit_path.is_none() => Some(format!(
            "`{}` is not installed (not started yet, or removed outside the supervisor); start_runner installs it",
            s.name
        )),
        ChildState::Failed => Some(format!(
            "`{}` is {} ({}){}",
            s.name,
            s.active_state,
            s.sub_state,
            last_exit.map(|e| format!(", last {e}")).unwrap_or_default()
        )),
        _ => None,
    };
    let pid = s.main_pid;
    ManagedStatus {
        state,
        pid,
        started_at: pid.and_then(crate::procfs::start_time),
        restarts: s.n_restarts.unwrap_or(0),
        last_exit: if s.exec_main_code == Some(0) {
            None
        } else {
            last_exit
        },
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(active: &str, sub: &str, code: Option<i32>, exit: Option<i32>) -> ServiceStatus {
        ServiceStatus {
            name: circles_services::ServiceName::new("tf.ourworld.circles.circle-worker-x")
                .unwrap(),
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
            let m = managed_status(&status(active, sub, Some(1), Some(0)));
            assert_eq!(m.state, want, "{active} ({sub})");
            assert_eq!(m.restarts, 3);
        }
        let killed = managed_status(&status("activating", "auto-restart", Some(2), Some(9)));
        assert_eq!(
            killed.last_exit,
            Some(ExitStatus::Signal(9)),
            "SIGKILL is not exit 9"
        );
        let exited = managed_status(&status("failed", "failed", Some(1), Some(3)));
        assert_eq!(exited.last_exit, Some(ExitStatus::Code(3)));
        assert!(exited.reason.unwrap().contains("last exit status 3"));
        let never = managed_status(&status("inactive", "dead", Some(0), Some(0)));
        assert_eq!(never.last_exit, None, "nothing ran yet");
        let mut gone = status("inactive", "dead", None, None);
        gone.loaded = false;
        gone.unit_path = None;
        let gone = managed_status(&gone);
        assert_eq!(gone.state, ChildState::Unknown);
        assert!(gone.reason.unwrap().contains("not installed"));
    }
}
