//! Process managers: how a runner's worker is installed, started, stopped,
//! inspected and removed. One enum over two implementations —
//! [`child::ChildManager`] (supervised child processes, the
//! `circles-supervise` crate) and [`service::ServiceManager`] (systemd or
//! launchd through the services crate, with the launcher's unit names) — so
//! the supervisor never asks which kind it holds.
//!
//! Every manager reports the same [`ManagedStatus`], in the one state model
//! of `circles-supervise`.

pub mod child;
pub mod logs;
pub mod service;

use std::time::SystemTime;

use circles_deploy::WorkerService;
use circles_supervise::{ChildState, ExitStatus};
use tokio::sync::OnceCell;

use crate::error::SupervisorError;
use crate::runner::ManagerKind;

pub use child::ChildManager;
pub use service::ServiceManager;

/// A runner's process as its manager sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedStatus {
    /// The state.
    pub state: ChildState,
    /// The main process.
    pub pid: Option<u32>,
    /// When the main process started.
    pub started_at: Option<SystemTime>,
    /// Restarts after exits.
    pub restarts: u32,
    /// How the last process ended.
    pub last_exit: Option<ExitStatus>,
    /// Why it is failed, or why the last run ended.
    pub reason: Option<String>,
}

impl ManagedStatus {
    /// Nothing known: not installed, never run.
    pub fn unknown(reason: impl Into<String>) -> Self {
        Self {
            state: ChildState::Unknown,
            pid: None,
            started_at: None,
            restarts: 0,
            last_exit: None,
            reason: Some(reason.into()),
        }
    }
}

/// The managers of one supervisor: child processes always; systemd or
/// launchd connected on first use (so a host without them can still run
/// child runners, and asking for them fails with a clear message).
#[derive(Debug)]
pub struct Managers {
    /// Supervised child processes.
    pub child: ChildManager,
    systemd: OnceCell<ServiceManager>,
    launchd: OnceCell<ServiceManager>,
}

/// One manager, borrowed from [`Managers`].
#[derive(Debug, Clone, Copy)]
pub enum Manager<'a> {
    /// Child processes.
    Child(&'a ChildManager),
    /// systemd or launchd.
    Service(&'a ServiceManager),
}

impl Managers {
    /// Child processes logging under `log_dir`; no service manager yet.
    pub fn new(child: ChildManager) -> Self {
        Self {
            child,
            systemd: OnceCell::new(),
            launchd: OnceCell::new(),
        }
    }

    /// The manager of `kind`, connecting to systemd/launchd the first time.
    pub async fn get(&self, kind: ManagerKind) -> Result<Manager<'_>, SupervisorError> {
        let cell = match kind {
            ManagerKind::Child => return Ok(Manager::Child(&self.child)),
            ManagerKind::Systemd => &self.systemd,
            ManagerKind::Launchd => &self.launchd,
        };
        let manager = cell
            .get_or_try_init(|| ServiceManager::connect(kind))
            .await?;
        Ok(Manager::Service(manager))
    }
}

impl Manager<'_> {
    /// Its kind.
    pub fn kind(&self) -> ManagerKind {
        match self {
            Manager::Child(_) => ManagerKind::Child,
            Manager::Service(m) => m.kind(),
        }
    }

    /// Installs the worker (a service manager starts it too when `start`;
    /// [`Manager::start`] follows either way); on failure nothing is left
    /// installed.
    pub async fn install(&self, w: &WorkerService, start: bool) -> Result<(), SupervisorError> {
        match self {
            // Nothing to install: `start` spawns it.
            Manager::Child(_) => Ok(()),
            Manager::Service(m) => m.install(w, start).await,
        }
    }

    /// Starts the worker (installing it first if it is not) and waits until
    /// it runs or has failed.
    pub async fn start(&self, w: &WorkerService) -> Result<(), SupervisorError> {
        match self {
            Manager::Child(m) => m.start_and_wait(w).await,
            Manager::Service(m) => m.start(w).await,
        }
    }

    /// Stops the worker; it stays installed.
    pub async fn stop(&self, w: &WorkerService) -> Result<(), SupervisorError> {
        match self {
            Manager::Child(m) => {
                m.stop(&w.name).await;
                Ok(())
            }
            Manager::Service(m) => m.stop(w).await,
        }
    }

    /// Restarts the worker (starts it if it was not running) and waits.
    pub async fn restart(&self, w: &WorkerService) -> Result<(), SupervisorError> {
        match self {
            Manager::Child(m) => m.restart_and_wait(w).await,
            Manager::Service(m) => m.restart(w).await,
        }
    }

    /// Stops and uninstalls the worker.
    pub async fn remove(&self, w: &WorkerService) -> Result<(), SupervisorError> {
        match self {
            Manager::Child(m) => {
                m.remove(&w.name).await;
                Ok(())
            }
            Manager::Service(m) => m.remove(w).await,
        }
    }

    /// The worker's process status.
    pub async fn status(&self, w: &WorkerService) -> ManagedStatus {
        match self {
            Manager::Child(m) => m.status(&w.name),
            Manager::Service(m) => m.status(w).await,
        }
    }

    /// The last `lines` log lines (oldest first), at or after `since`.
    pub async fn logs(
        &self,
        w: &WorkerService,
        lines: usize,
        since: Option<SystemTime>,
    ) -> Result<Vec<String>, SupervisorError> {
        match self {
            Manager::Child(m) => logs::file_tail(&m.log_file(&w.name), lines, since).await,
            Manager::Service(m) => m.logs(w, lines, since).await,
        }
    }

    /// New log lines as they are written, until the receiver is dropped.
    pub fn follow_logs(
        &self,
        w: &WorkerService,
    ) -> Result<tokio::sync::mpsc::Receiver<String>, SupervisorError> {
        match self {
            Manager::Child(m) => Ok(logs::follow_files(vec![m.log_file(&w.name)])),
            Manager::Service(m) => m.follow_logs(w),
        }
    }
}
