//! The supervision loop of one child and the handle that owns it.
//!
//! One tokio task per child runs [`Supervision::run`]: spawn, wait for
//! `READY=1` (or an exit, the ready timeout, a stop), serve, and on exit ask
//! the [`RestartTracker`] whether to restart after a backoff or give up. The
//! handle talks to the task through a `watch` of [`Control`] (stop, restart)
//! and reads every change back from a `watch` of [`ChildStatus`].

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::NotReady;
use crate::notify::{ENV_NOTIFY_SOCKET, ReadyListener};
use crate::parent::{ENV_PARENT_PID, die_with_parent};
use crate::policy::{RestartDecision, RestartPolicy, RestartTracker};
use crate::spec::ChildSpec;
use crate::status::{ChildState, ChildStatus, ExitStatus};

/// Environment variables a child inherits from its supervisor; everything
/// else it gets only through its spec.
const INHERITED_ENV: [&str; 9] = [
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "RUST_LOG",
    "RUST_BACKTRACE",
    // The worker's documented switch, set by operators for a whole launch.
    "PRESERVE_TASKS",
];

/// What the handle asks of the supervision task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Control {
    /// Stop for good (also when the handle is dropped).
    stop: bool,
    /// Bumped by each restart request.
    restart: u64,
}

/// A child process under supervision; see the crate docs. Dropping it stops
/// the child (SIGTERM, SIGKILL after the grace period) in the background;
/// [`SupervisedChild::stop`] does the same and waits.
#[derive(Debug)]
pub struct SupervisedChild {
    name: String,
    status: watch::Receiver<ChildStatus>,
    control: watch::Sender<Control>,
    task: Option<JoinHandle<()>>,
}

impl SupervisedChild {
    /// Starts supervising `spec` under `policy`. Must be called within a
    /// tokio runtime. Never fails: a child that cannot be spawned goes
    /// through the restart policy like one that exits at once, and ends
    /// `failed` with the reason.
    pub fn spawn(spec: ChildSpec, policy: RestartPolicy) -> Self {
        let (status_tx, status) = watch::channel(ChildStatus::starting());
        let (control, control_rx) = watch::channel(Control::default());
        let name = spec.name.clone();
        let supervision = Supervision {
            spec,
            policy,
            status: status_tx,
            control: control_rx,
            seen_restart: 0,
        };
        Self {
            name,
            status,
            control,
            task: Some(tokio::spawn(supervision.run())),
        }
    }

    /// The name from the spec.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A receiver that sees every status change.
    pub fn status(&self) -> watch::Receiver<ChildStatus> {
        self.status.clone()
    }

    /// The status now.
    pub fn current(&self) -> ChildStatus {
        self.status.borrow().clone()
    }

    /// Waits until the child runs (`Ok`) or has given up or stopped (`Err`).
    /// Backoff and restarts in between are waited through.
    pub async fn ready(&self) -> Result<(), NotReady> {
        wait_ready(self.status.clone(), &self.name).await
    }

    /// Restarts the child now: the running process is stopped (SIGTERM, then
    /// SIGKILL after the grace period) and started again at once; a child in
    /// backoff or `failed` starts again with a fresh failure count. Not
    /// counted in `restarts`. Returns at once; watch [`Self::status`].
    pub fn restart(&self) {
        self.control.send_modify(|c| c.restart += 1);
    }

    /// Stops the child and waits until it is gone; returns its last status.
    pub async fn stop(mut self) -> ChildStatus {
        self.control.send_modify(|c| c.stop = true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.current()
    }
}

impl Drop for SupervisedChild {
    fn drop(&mut self) {
        // The task sees the stop and terminates the child; if the runtime is
        // going away instead, `kill_on_drop` kills it.
        self.control.send_modify(|c| c.stop = true);
    }
}

/// [`SupervisedChild::ready`] on a status receiver, for callers that must
/// not hold the handle (or a lock around it) while waiting.
pub async fn wait_ready(
    mut status: watch::Receiver<ChildStatus>,
    name: &str,
) -> Result<(), NotReady> {
    let settled = |s: &ChildStatus| {
        matches!(
            s.state,
            ChildState::Running | ChildState::Failed | ChildState::Stopped
        )
    };
    let settled_status = status.wait_for(settled).await.map(|s| s.clone()).ok();
    // `None`: the task ended without a final status: it was stopped.
    let status = settled_status.unwrap_or_else(|| ChildStatus {
        state: ChildState::Stopped,
        ..status.borrow().clone()
    });
    if status.state == ChildState::Running {
        return Ok(());
    }
    Err(NotReady {
        name: name.to_string(),
        state: status.state,
        reason: status.reason,
        last_exit: status.last_exit,
    })
}

/// How one run of the process ended.
enum RunEnd {
    /// A stop was asked for; the process is gone.
    Stopped(Option<ExitStatus>),
    /// A restart was asked for; the process is gone.
    RestartAsked(Option<ExitStatus>),
    /// It ended by itself (or was killed for not becoming ready).
    Exited {
        exit: Option<ExitStatus>,
        /// How long it served after becoming ready; zero if it never did.
        served: Duration,
        /// For people: "exited (exit status 3)", "was not ready within 30s".
        reason: String,
    },
}

/// What the supervision task owns.
struct Supervision {
    spec: ChildSpec,
    policy: RestartPolicy,
    status: watch::Sender<ChildStatus>,
    control: watch::Receiver<Control>,
    /// The last restart request acted on.
    seen_restart: u64,
}

/// What the control channel asks for now.
enum Asked {
    Stop,
    Restart,
}

impl Supervision {
    async fn run(mut self) {
        let notify = if self.spec.wait_ready {
            match ReadyListener::new() {
                Ok(s) => Some(s),
                Err(e) => {
                    let reason = format!("could not create its notify socket: {e}");
                    tracing::error!(child = %self.spec.name, "{reason}");
                    self.publish(|s| {
                        s.state = ChildState::Failed;
                        s.reason = Some(reason);
                    });
                    self.wait_stop_or_restart().await;
                    return;
                }
            }
        } else {
            None
        };
        let mut tracker = RestartTracker::new(self.policy);
        loop {
            let end = self.run_once(notify.as_ref()).await;
            match end {
                RunEnd::Stopped(exit) => {
                    self.publish(|s| {
                        s.state = ChildState::Stopped;
                        s.pid = None;
                        s.last_exit = exit.or(s.last_exit);
                    });
                    return;
                }
                RunEnd::RestartAsked(exit) => {
                    tracing::info!(child = %self.spec.name, "restarting as asked");
                    tracker = RestartTracker::new(self.policy);
                    self.publish(|s| {
                        s.pid = None;
                        s.last_exit = exit.or(s.last_exit);
                    });
                }
                RunEnd::Exited {
                    exit,
                    served,
                    reason,
                } => match tracker.on_exit(served) {
                    RestartDecision::GiveUp { fast_failures } => {
                        // Said with the same restart count the tables
                        // show, so the message and the table agree.
                        let restarts = self.status.borrow().restarts;
                        let why = format!(
                            "{reason}; gave up after {restarts} restart{} ({fast_failures} failures in a row within {:?} of starting)",
                            if restarts == 1 { "" } else { "s" },
                            self.policy.fast_failure,
                        );
                        tracing::error!(child = %self.spec.name, log = %self.spec.log_file.display(), "failed: {why}");
                        self.publish(|s| {
                            s.state = ChildState::Failed;
                            s.pid = None;
                            s.last_exit = exit.or(s.last_exit);
                            s.reason = Some(why);
                        });
                        match self.wait_stop_or_restart().await {
                            Asked::Stop => {
                                self.publish(|s| s.state = ChildState::Stopped);
                                return;
                            }
                            Asked::Restart => tracker = RestartTracker::new(self.policy),
                        }
                    }
                    RestartDecision::Restart { after } => {
                        // A crash loop says its reason once, not at every turn.
                        let again = self.status.borrow().reason.as_deref() == Some(&reason);
                        if again {
                            tracing::warn!(child = %self.spec.name, "exited again, same reason; restarting in {after:?}");
                        } else {
                            tracing::warn!(child = %self.spec.name, "{reason}; restarting in {after:?}");
                        }
                        self.publish(|s| {
                            s.state = ChildState::Backoff;
                            s.pid = None;
                            s.restarts += 1;
                            s.last_exit = exit.or(s.last_exit);
                            s.reason = Some(reason);
                        });
                        tokio::select! {
                            asked = self.wait_stop_or_restart() => match asked {
                                Asked::Stop => {
                                    self.publish(|s| s.state = ChildState::Stopped);
                                    return;
                                }
                                Asked::Restart => tracker = RestartTracker::new(self.policy),
                            },
                            _ = tokio::time::sleep(after) => {}
                        }
                    }
                },
            }
        }
    }

    fn publish(&self, f: impl FnOnce(&mut ChildStatus)) {
        self.status.send_modify(f);
    }

    /// What the handle asks for now, if anything new.
    fn asked(&mut self) -> Option<Asked> {
        let control = *self.control.borrow_and_update();
        if control.stop {
            Some(Asked::Stop)
        } else if control.restart != self.seen_restart {
            self.seen_restart = control.restart;
            Some(Asked::Restart)
        } else {
            None
        }
    }

    /// Resolves at the next stop or restart request (a dropped handle is a
    /// stop).
    async fn wait_stop_or_restart(&mut self) -> Asked {
        loop {
            if let Some(asked) = self.asked() {
                return asked;
            }
            if self.control.changed().await.is_err() {
                return Asked::Stop;
            }
        }
    }

    async fn run_once(&mut self, notify: Option<&ReadyListener>) -> RunEnd {
        // A restart asked for now needs nothing more: this is a start.
        if let Some(Asked::Stop) = self.asked() {
            return RunEnd::Stopped(None);
        }
        // Before READY=1 nothing was served: a child that never gets there
        // counts as a fast failure however long it hung (no endless
        // "starting").
        let exited = |exit: Option<ExitStatus>, reason: String| RunEnd::Exited {
            exit,
            served: Duration::ZERO,
            reason,
        };
        let spec = &self.spec;
        let log = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)
        {
            Ok(f) => f,
            Err(e) => {
                return exited(
                    None,
                    format!("could not open its log {}: {e}", spec.log_file.display()),
                );
            }
        };
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args);
        // A fresh environment: the parent's may hold secrets (the
        // supervisor's own API secrets, a Redis URL, anything an operator
        // exported) that a child has no business inheriting. Only what a
        // program generally needs is passed on, then the spec's own.
        cmd.env_clear();
        for key in INHERITED_ENV {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        for key in &spec.env_remove {
            cmd.env_remove(key);
        }
        cmd.envs(&spec.env)
            .env(ENV_PARENT_PID, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .stderr(log)
            .kill_on_drop(true);
        if let Some(dir) = &spec.working_dir {
            cmd.current_dir(dir);
        }
        match notify {
            Some(n) => {
                cmd.env(ENV_NOTIFY_SOCKET, n.path());
            }
            // A child not waited for must not notify *our* service manager
            // (when we run under systemd) as if it were us.
            None => {
                cmd.env_remove(ENV_NOTIFY_SOCKET);
            }
        }
        if !spec.arms_death_signal {
            die_with_parent(&mut cmd);
        }
        // Where this run's output starts: the error it writes before
        // exiting is the reason people are shown.
        let log_start = std::fs::metadata(&spec.log_file).map_or(0, |m| m.len());
        let log_file = spec.log_file.clone();
        let reason = move |how: String| match crate::logs::last_error_since(&log_file, log_start) {
            Some(error) => format!("{error} ({how})"),
            None => how,
        };
        let started = notify.map_or_else(Instant::now, ReadyListener::before_spawn);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return exited(
                    None,
                    format!("could not be started ({}): {e}", spec.program.display()),
                );
            }
        };
        // Its log descriptors are the child's now; held here they would be
        // inherited (and closed at exec) by every later child.
        drop(cmd);
        let pid = child.id();
        tracing::debug!(child = %spec.name, pid, "spawned");
        self.publish(|s| {
            s.state = ChildState::Starting;
            s.pid = pid;
            s.started_at = Some(SystemTime::now());
        });

        if let (Some(notify), Some(pid)) = (notify, pid) {
            let ready_timeout = self.policy.ready_timeout;
            tokio::select! {
                _ = notify.ready(pid, started) => {}
                status = child.wait() => {
                    let exit = status.ok().map(ExitStatus::from_std);
                    return exited(exit, reason(format!("exited before becoming ready, {}", describe(exit))));
                }
                _ = tokio::time::sleep(ready_timeout) => {
                    let exit = self.terminate(&mut child).await;
                    return exited(exit, reason(format!("was not ready within {ready_timeout:?}")));
                }
                asked = self.wait_stop_or_restart() => return self.end_for(asked, &mut child).await,
            }
        }
        tracing::info!(child = %self.spec.name, pid, elapsed = ?started.elapsed(), "ready");
        self.publish(|s| {
            s.state = ChildState::Running;
            s.reason = None;
        });
        let ready_at = Instant::now();
        tokio::select! {
            status = child.wait() => {
                let exit = status.ok().map(ExitStatus::from_std);
                RunEnd::Exited { exit, served: ready_at.elapsed(), reason: reason(format!("exited, {}", describe(exit))) }
            }
            asked = self.wait_stop_or_restart() => self.end_for(asked, &mut child).await,
        }
    }

    async fn end_for(&mut self, asked: Asked, child: &mut Child) -> RunEnd {
        self.publish(|s| s.state = ChildState::Stopping);
        let exit = self.terminate(child).await;
        match asked {
            Asked::Stop => RunEnd::Stopped(exit),
            Asked::Restart => RunEnd::RestartAsked(exit),
        }
    }

    async fn terminate(&self, child: &mut Child) -> Option<ExitStatus> {
        terminate(child, self.policy.stop_grace).await
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL; returns how the process ended
/// once it is gone (for any child, e.g. a private redis-server).
pub async fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
            return status.ok().map(ExitStatus::from_std);
        }
        tracing::warn!(
            pid = pid.as_raw_nonzero().get(),
            "process did not stop within {grace:?}; killing it"
        );
    }
    let _ = child.start_kill();
    child.wait().await.ok().map(ExitStatus::from_std)
}

fn describe(exit: Option<ExitStatus>) -> String {
    exit.map_or_else(|| "status unknown".into(), |e| e.to_string())
}
