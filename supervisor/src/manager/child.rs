//! The `child` process manager: each runner's worker is a
//! [`SupervisedChild`] of the supervisor — restarted with backoff, `failed`
//! after a crash loop, killed with the supervisor (parent-death signal) and
//! started again when the supervisor comes back with its target `running`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use circles_deploy::WorkerService;
use circles_supervise::{ChildState, ChildStatus, RestartPolicy, SupervisedChild, wait_ready};
use tokio::sync::watch;

use super::ManagedStatus;
use crate::error::SupervisorError;

/// Child runners by runner name.
#[derive(Debug)]
pub struct ChildManager {
    children: Mutex<HashMap<String, Slot>>,
    policy: RestartPolicy,
    log_dir: PathBuf,
}

/// One runner's child: the live handle, or the last status of a stopped one.
#[derive(Debug)]
enum Slot {
    Live(SupervisedChild),
    Gone(ChildStatus),
}

impl ChildManager {
    /// Children under `policy`, logging to `<log_dir>/<runner>.log`.
    pub fn new(policy: RestartPolicy, log_dir: PathBuf) -> Self {
        Self {
            children: Mutex::new(HashMap::new()),
            policy,
            log_dir,
        }
    }

    /// `<log_dir>/<runner>.log`
    pub fn log_file(&self, runner: &str) -> PathBuf {
        self.log_dir.join(format!("{runner}.log"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.children.lock().expect("child table")
    }

    /// Starts the worker unless it runs already (a `failed` one is tried
    /// again with a fresh failure count); returns its status receiver.
    pub fn start(&self, w: &WorkerService) -> watch::Receiver<ChildStatus> {
        let mut children = self.lock();
        if let Some(Slot::Live(child)) = children.get(&w.name) {
            if child.current().state == ChildState::Failed {
                child.restart();
            }
            return child.status();
        }
        let spec = circles_deploy::worker_child_spec(w, self.log_file(&w.name), true);
        let child = SupervisedChild::spawn(spec, self.policy);
        let rx = child.status();
        children.insert(w.name.clone(), Slot::Live(child));
        rx
    }

    /// [`Self::start`], then waits until it runs or has failed.
    pub async fn start_and_wait(&self, w: &WorkerService) -> Result<(), SupervisorError> {
        let rx = self.start(w);
        self.wait(w, rx).await
    }

    async fn wait(
        &self,
        w: &WorkerService,
        rx: watch::Receiver<ChildStatus>,
    ) -> Result<(), SupervisorError> {
        wait_ready(rx, &w.name)
            .await
            .map_err(|e| SupervisorError::NotStarted {
                runner: w.name.clone(),
                reason: e.reason.unwrap_or_else(|| format!("it is {}", e.state)),
                last_lines: circles_supervise::logs::tail_lines(&self.log_file(&w.name), 10)
                    .unwrap_or_default(),
            })
    }

    /// Restarts the worker now (starts it if it is not running) and waits
    /// until the new process runs or has failed.
    pub async fn restart_and_wait(&self, w: &WorkerService) -> Result<(), SupervisorError> {
        let rx = {
            let children = self.lock();
            match children.get(&w.name) {
                Some(Slot::Live(child)) => {
                    let old = child.current().pid;
                    child.restart();
                    let mut rx = child.status();
                    // Wait for the old process to be replaced before waiting
                    // for readiness, or the old "running" would answer.
                    rx.mark_unchanged();
                    Some((rx, old))
                }
                _ => None,
            }
        };
        match rx {
            Some((mut rx, old)) => {
                let _ = rx
                    .wait_for(|s| {
                        (s.pid.is_some() && s.pid != old) || s.state == ChildState::Failed
                    })
                    .await;
                self.wait(w, rx).await
            }
            None => self.start_and_wait(w).await,
        }
    }

    /// Stops the worker (SIGTERM, SIGKILL after the grace period) and keeps
    /// its last status.
    pub async fn stop(&self, runner: &str) {
        let child = match self.lock().remove(runner) {
            Some(Slot::Live(child)) => child,
            Some(gone) => {
                self.lock().insert(runner.to_string(), gone);
                return;
            }
            None => return,
        };
        let last = child.stop().await;
        self.lock().insert(runner.to_string(), Slot::Gone(last));
    }

    /// Stops the worker and forgets it.
    pub async fn remove(&self, runner: &str) {
        self.stop(runner).await;
        self.lock().remove(runner);
    }

    /// The worker's status; `stopped` when it has never run here.
    pub fn status(&self, runner: &str) -> ManagedStatus {
        let status = match self.lock().get(runner) {
            Some(Slot::Live(child)) => child.current(),
            Some(Slot::Gone(last)) => last.clone(),
            None => ChildStatus {
                state: ChildState::Stopped,
                ..ChildStatus::starting()
            },
        };
        ManagedStatus {
            state: status.state,
            pid: status.pid,
            started_at: status.pid.and(status.started_at),
            restarts: status.restarts,
            last_exit: status.last_exit,
            reason: status.reason,
        }
    }

    /// Stops every child (the supervisor is shutting down; their target
    /// state stays as it is, so they come back with it).
    pub async fn stop_all(&self) {
        let live: Vec<(String, SupervisedChild)> = {
            let mut children = self.lock();
            let names: Vec<String> = children
                .iter()
                .filter(|(_, s)| matches!(s, Slot::Live(_)))
                .map(|(n, _)| n.clone())
                .collect();
            names
                .into_iter()
                .filter_map(|n| match children.remove(&n) {
                    Some(Slot::Live(c)) => Some((n, c)),
                    _ => None,
                })
                .collect()
        };
        let stops = live.into_iter().map(|(name, child)| async move {
            let last = child.stop().await;
            (name, last)
        });
        for (name, last) in futures_util::future::join_all(stops).await {
            self.lock().insert(name, Slot::Gone(last));
        }
    }
}
