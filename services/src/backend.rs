//! [`ServiceBackend`]: one type for the launcher, dispatching to systemd,
//! launchd or the fallback, plus the values they share (plans, reports,
//! status).
//!
//! The flow is always render → plan → apply: rendering is pure, planning
//! only reads files, and only apply changes the system. A launcher can print
//! the plan (or fail on `AlreadyExists`) before touching anything.

use std::path::PathBuf;

use crate::error::ServiceError;
use crate::fallback::FallbackBackend;
use crate::host::HostEnv;
use crate::launchd::LaunchdBackend;
use crate::name::ServiceName;
use crate::spec::{BackendKind, ServiceScope, ServiceSpec};
use crate::systemd::SystemdBackend;
use crate::templates::Templates;

/// A rendered unit or plist and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The service.
    pub name: ServiceName,
    /// The file it is installed as.
    pub path: PathBuf,
    /// The file's full text.
    pub contents: String,
    /// Its permission bits: 0644, or 0600 when it holds a secret (a launchd
    /// plist with secret environment values).
    pub mode: u32,
    /// The service's secret environment file, for backends that keep one
    /// beside the unit (systemd `EnvironmentFile=`).
    pub secret: Option<SecretFile>,
}

/// A file of mode 0600 holding secret values; `Debug` does not show them.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// Where it is installed.
    pub path: PathBuf,
    /// Its full text.
    pub contents: String,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFile")
            .field("path", &self.path)
            .field("contents", &"<secret>")
            .finish()
    }
}

/// Mode of service files without secrets (launchd refuses group- or
/// world-writable plists).
pub const PUBLIC_FILE_MODE: u32 = 0o644;
/// Mode of every file holding a secret.
pub const SECRET_FILE_MODE: u32 = 0o600;

/// What apply will do with one rendered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedAction {
    /// No file yet: write it, enable and start the service.
    Create,
    /// Our file with other contents: replace it and restart the service.
    Update {
        /// The installed text, restored if the apply fails.
        previous: String,
        /// The installed file's permission bits, restored with it.
        previous_mode: u32,
        /// The installed secret file (restored if the apply fails), `None`
        /// when there was none.
        previous_secret: Option<SecretFile>,
    },
    /// Same text on disk: only start the service if it is not running.
    Unchanged,
}

/// The outcome of [`ServiceBackend::plan`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// One entry per spec, in the order given.
    pub items: Vec<(Rendered, PlannedAction)>,
}

impl Plan {
    /// Whether apply would change any file.
    pub fn changes_files(&self) -> bool {
        self.items
            .iter()
            .any(|(_, a)| !matches!(a, PlannedAction::Unchanged))
    }
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplyReport {
    /// Installed and started.
    pub created: Vec<ServiceName>,
    /// Rewritten and restarted.
    pub updated: Vec<ServiceName>,
    /// Left as they were (started only if they were not running).
    pub unchanged: Vec<ServiceName>,
}

/// A service's state as its manager reports it, in systemd's vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The service.
    pub name: ServiceName,
    /// The manager knows it (systemd `LoadState=loaded`, launchd loaded).
    pub loaded: bool,
    /// `active`, `activating`, `failed`, `inactive`, ...
    pub active_state: String,
    /// Finer state: systemd `running`/`auto-restart`/..., launchd's `state`.
    pub sub_state: String,
    /// The main process, while there is one.
    pub main_pid: Option<u32>,
    /// Automatic restarts so far, where the manager counts them.
    pub n_restarts: Option<u32>,
    /// Exit status of the last main process, where known — or its signal
    /// number, when [`ServiceStatus::exec_main_code`] says it was killed.
    pub exec_main_status: Option<i32>,
    /// How the last main process ended, where the manager says (systemd
    /// `ExecMainCode`): [`CLD_EXITED`] (its exit status is in
    /// `exec_main_status`), [`CLD_KILLED`] or [`CLD_DUMPED`] (a signal
    /// number is); 0 before any ran.
    pub exec_main_code: Option<i32>,
    /// The unit or plist file.
    pub unit_path: Option<PathBuf>,
}

/// [`ServiceStatus::exec_main_code`]: the process exited by itself.
pub const CLD_EXITED: i32 = 1;
/// [`ServiceStatus::exec_main_code`]: the process was killed by a signal.
pub const CLD_KILLED: i32 = 2;
/// [`ServiceStatus::exec_main_code`]: killed by a signal, with a core dump.
pub const CLD_DUMPED: i32 = 3;

impl ServiceStatus {
    /// How the last main process ended, as `(signal, number)`: `(false,
    /// code)` for an exit code, `(true, signal)` for a signal; `None` when no
    /// process has ended yet (or the manager does not say).
    pub fn last_exit(&self) -> Option<(bool, i32)> {
        let status = self.exec_main_status?;
        match self.exec_main_code {
            Some(CLD_KILLED | CLD_DUMPED) => Some((true, status)),
            Some(CLD_EXITED) | None => Some((false, status)),
            // 0: nothing has run yet.
            Some(_) => None,
        }
    }
}

/// The service manager of this machine; see the module docs.
#[derive(Debug)]
pub enum ServiceBackend {
    /// systemd over D-Bus.
    Systemd(SystemdBackend),
    /// launchd through `launchctl`.
    Launchd(LaunchdBackend),
    /// The `service-manager` crate.
    Fallback(FallbackBackend),
}

impl ServiceBackend {
    /// Picks the backend for this machine and process (see
    /// [`ServiceBackend::detect_in`]), reading the environment once.
    pub async fn detect(
        scope: Option<ServiceScope>,
        templates: Templates,
    ) -> Result<Self, ServiceError> {
        Self::detect_in(&HostEnv::from_process(), scope, templates).await
    }

    /// Picks the backend for `host`:
    ///
    /// - `CIRCLES_SERVICE_BACKEND=systemd|launchd|fallback` wins;
    /// - else systemd on Linux when it runs as PID 1, launchd on macOS, the
    ///   fallback elsewhere (on Linux without systemd, only if OpenRC is
    ///   there: `service-manager` would otherwise pick `systemctl`, which
    ///   cannot work without a running systemd).
    ///
    /// The scope defaults to system for root and user for everyone else. For
    /// systemd this connects right away, so "cannot reach systemd" is
    /// reported here rather than half-way through an apply.
    pub async fn detect_in(
        host: &HostEnv,
        scope: Option<ServiceScope>,
        templates: Templates,
    ) -> Result<Self, ServiceError> {
        let scope = scope.unwrap_or(if host.euid == 0 {
            ServiceScope::System
        } else {
            ServiceScope::User
        });
        let kind = match host.backend_override.as_deref() {
            Some("systemd") => BackendKind::Systemd,
            Some("launchd") => BackendKind::Launchd,
            Some("fallback") => BackendKind::Fallback,
            Some(other) => {
                return Err(ServiceError::UnknownBackend {
                    value: other.to_string(),
                });
            }
            None if cfg!(target_os = "macos") => BackendKind::Launchd,
            None if cfg!(target_os = "linux") && host.systemd_booted => BackendKind::Systemd,
            None if cfg!(target_os = "linux") => {
                if host.find_program("openrc").is_none()
                    && host.find_program("rc-service").is_none()
                {
                    return Err(ServiceError::Unsupported {
                        backend: BackendKind::Fallback,
                        what: "find a service manager: systemd is not running as PID 1 (no \
                               /run/systemd/system) and OpenRC is not installed"
                            .into(),
                    });
                }
                BackendKind::Fallback
            }
            None => BackendKind::Fallback,
        };
        Ok(match kind {
            BackendKind::Systemd => {
                let backend = SystemdBackend::new(scope, templates, host)?;
                backend.connection().await?;
                ServiceBackend::Systemd(backend)
            }
            BackendKind::Launchd => {
                ServiceBackend::Launchd(LaunchdBackend::new(scope, templates, host)?)
            }
            BackendKind::Fallback => ServiceBackend::Fallback(FallbackBackend::new(scope, host)?),
        })
    }

    /// Which manager.
    pub fn kind(&self) -> BackendKind {
        match self {
            ServiceBackend::Systemd(_) => BackendKind::Systemd,
            ServiceBackend::Launchd(_) => BackendKind::Launchd,
            ServiceBackend::Fallback(_) => BackendKind::Fallback,
        }
    }

    /// System or user services.
    pub fn scope(&self) -> ServiceScope {
        match self {
            ServiceBackend::Systemd(b) => b.scope(),
            ServiceBackend::Launchd(b) => b.scope(),
            ServiceBackend::Fallback(b) => b.scope(),
        }
    }

    /// One line for people, e.g. `systemd, system scope (/etc/systemd/system)`.
    pub fn describe(&self) -> String {
        match self {
            ServiceBackend::Systemd(b) => {
                format!("systemd, {} scope ({})", b.scope(), b.unit_dir().display())
            }
            ServiceBackend::Launchd(b) => format!(
                "launchd, {} scope ({}, domain {})",
                b.scope(),
                b.agents_dir().display(),
                b.domain()
            ),
            ServiceBackend::Fallback(b) => format!(
                "fallback via service-manager ({:?}), {} scope (records in {})",
                b.manager_kind(),
                b.scope(),
                b.registry_dir().display()
            ),
        }
    }

    /// What this backend cannot do; empty for systemd. Launchd has no
    /// readiness protocol; the fallback lacks much more.
    pub fn unavailable_features(&self) -> Vec<&'static str> {
        match self {
            ServiceBackend::Systemd(_) => Vec::new(),
            ServiceBackend::Launchd(_) => vec![
                "readiness: launchd has no READY=1; an apply succeeds once launchd accepted every job",
                "a start-limit: launchd restarts a failing service every ThrottleInterval forever",
            ],
            ServiceBackend::Fallback(b) => b.unavailable_features(),
        }
    }

    /// The file `spec` becomes; pure.
    pub fn render(&self, spec: &ServiceSpec) -> Result<Rendered, ServiceError> {
        match self {
            ServiceBackend::Systemd(b) => b.render(spec),
            ServiceBackend::Launchd(b) => b.render(spec),
            ServiceBackend::Fallback(b) => b.render(spec),
        }
    }

    /// Compares the rendered files with the installed ones. A file with one
    /// of our names that we did not write is [`ServiceError::AlreadyExists`].
    pub async fn plan(&self, specs: &[ServiceSpec]) -> Result<Plan, ServiceError> {
        match self {
            ServiceBackend::Systemd(b) => b.plan(specs).await,
            ServiceBackend::Launchd(b) => b.plan(specs).await,
            ServiceBackend::Fallback(b) => b.plan(specs).await,
        }
    }

    /// Carries out a plan, rolling everything back if a step fails.
    pub async fn apply(&self, plan: &Plan) -> Result<ApplyReport, ServiceError> {
        match self {
            ServiceBackend::Systemd(b) => b.apply(plan).await,
            ServiceBackend::Launchd(b) => b.apply(plan).await,
            ServiceBackend::Fallback(b) => b.apply(plan).await,
        }
    }

    /// Starts each installed service that is not running, and waits until
    /// it is (systemd: until `READY=1` for notify services).
    pub async fn start(&self, names: &[ServiceName]) -> Result<(), ServiceError> {
        match self {
            ServiceBackend::Systemd(b) => b.start(names).await,
            ServiceBackend::Launchd(b) => b.start(names).await,
            ServiceBackend::Fallback(b) => b.start(names).await,
        }
    }

    /// Stops each service and waits until it has stopped; it stays
    /// installed (and, with systemd, enabled: it starts again at boot).
    pub async fn stop(&self, names: &[ServiceName]) -> Result<(), ServiceError> {
        match self {
            ServiceBackend::Systemd(b) => b.stop(names).await,
            ServiceBackend::Launchd(b) => b.stop(names).await,
            ServiceBackend::Fallback(b) => b.stop(names).await,
        }
    }

    /// The services whose files (unit, plist, record) are in our directory,
    /// without asking the service manager.
    pub async fn list_installed_files(&self) -> Result<Vec<ServiceName>, ServiceError> {
        match self {
            ServiceBackend::Systemd(b) => b.list_installed_files().await,
            ServiceBackend::Launchd(b) => b.list_installed_files().await,
            ServiceBackend::Fallback(b) => b.list_installed().await,
        }
    }

    /// The working directory our installed file of `name` gives the
    /// service (`None` when there is no such file of ours, or the fallback
    /// backend): where an earlier install ran it.
    pub async fn installed_working_directory(
        &self,
        name: &ServiceName,
    ) -> Result<Option<PathBuf>, ServiceError> {
        match self {
            ServiceBackend::Systemd(b) => b.installed_working_directory(name).await,
            ServiceBackend::Launchd(b) => b.installed_working_directory(name).await,
            ServiceBackend::Fallback(_) => Ok(None),
        }
    }

    /// Restarts each service.
    pub async fn restart(&self, names: &[ServiceName]) -> Result<(), ServiceError> {
        match self {
            ServiceBackend::Systemd(b) => b.restart(names).await,
            ServiceBackend::Launchd(b) => b.restart(names).await,
            ServiceBackend::Fallback(b) => b.restart(names).await,
        }
    }

    /// Every service under [`crate::SERVICE_PREFIX`], on disk or loaded.
    pub async fn list_installed(&self) -> Result<Vec<ServiceName>, ServiceError> {
        match self {
            ServiceBackend::Systemd(b) => b.list_installed().await,
            ServiceBackend::Launchd(b) => b.list_installed().await,
            ServiceBackend::Fallback(b) => b.list_installed().await,
        }
    }

    /// One service's state.
    pub async fn status(&self, name: &ServiceName) -> Result<ServiceStatus, ServiceError> {
        match self {
            ServiceBackend::Systemd(b) => b.status(name).await,
            ServiceBackend::Launchd(b) => b.status(name).await,
            ServiceBackend::Fallback(b) => b.status(name).await,
        }
    }

    /// Stops and deletes the services; idempotent. Returns those that were
    /// there.
    pub async fn remove(&self, names: &[ServiceName]) -> Result<Vec<ServiceName>, ServiceError> {
        match self {
            ServiceBackend::Systemd(b) => b.remove(names).await,
            ServiceBackend::Launchd(b) => b.remove(names).await,
            ServiceBackend::Fallback(b) => b.remove(names).await,
        }
    }

    /// Removes every service under [`crate::SERVICE_PREFIX`], and nothing else.
    pub async fn cleanup(&self) -> Result<Vec<ServiceName>, ServiceError> {
        let names = self.list_installed().await?;
        self.remove(&names).await
    }

    /// A command that shows (or with `follow`, follows) the service's logs.
    pub fn logs_command(&self, name: &ServiceName, follow: bool) -> std::process::Command {
        match self {
            ServiceBackend::Systemd(b) => b.logs_command(name, follow),
            ServiceBackend::Launchd(b) => b.logs_command(name, follow),
            ServiceBackend::Fallback(b) => b.logs_command(name, follow),
        }
    }
}
