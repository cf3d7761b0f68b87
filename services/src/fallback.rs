//! The fallback backend: the `service-manager` crate, for platforms where
//! neither systemd nor launchd runs (OpenRC, rc.d, Windows).
//!
//! It is deliberately the lesser backend, and says so through
//! [`FallbackBackend::unavailable_features`]: `service-manager` renders its own
//! service files (so our templates, hardening and quoting do not apply, and
//! arguments that need quoting are refused rather than mangled), has no
//! readiness notification, no restart counters, no job results and no
//! listing. To know what it installed, we keep a record per service in our own
//! registry directory; that record is the "file" planning compares against.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use plist::{Dictionary, Value};

use service_manager::{
    RestartPolicy as SmRestartPolicy, ServiceInstallCtx, ServiceLabel, ServiceLevel,
    ServiceManager, ServiceManagerKind, ServiceStartCtx, ServiceStatusCtx, ServiceStopCtx,
    ServiceUninstallCtx, TypedServiceManager,
};

use crate::backend::{ApplyReport, PUBLIC_FILE_MODE, Plan, PlannedAction, Rendered, ServiceStatus};
use crate::error::{Rollback, ServiceError};
use crate::files;
use crate::host::HostEnv;
use crate::launchd::render::{self as launchd_render, MANAGED_KEY, MANAGED_NOTE};
use crate::name::ServiceName;
use crate::spec::{BackendKind, ServiceScope, ServiceSpec};

/// Records are plists (the `plist` crate does the quoting), marked with the
/// same key as our launchd plists.
const RECORD_SUFFIX: &str = ".plist";

/// What this backend cannot do, for [`FallbackBackend::unavailable_features`].
pub const UNAVAILABLE: [&str; 8] = [
    "readiness: a start returns before the service is ready (no READY=1 wait)",
    "job results: a service that exits right after starting is not reported as a failed install",
    "transactional update: a failed apply removes the services it created but does not restore services it changed",
    "restart counts and exit status in status()",
    "our unit templates and hardening (the service-manager crate renders its own files)",
    "arguments, paths or environment values that need quoting (refused)",
    "listing services installed by anything but this backend (it reads its own records only)",
    "logs, except through journalctl when the underlying manager is systemd",
];

/// `service-manager` plus a record directory; see the module docs.
#[derive(Debug, Clone)]
pub struct FallbackBackend {
    scope: ServiceScope,
    kind: ServiceManagerKind,
    registry_dir: PathBuf,
}

impl FallbackBackend {
    /// The manager `service-manager` picks for this platform, with records in
    /// `/var/lib/circles/services` (system) or
    /// `$XDG_DATA_HOME/circles/services` (user, default `~/.local/share`).
    pub fn new(scope: ServiceScope, host: &HostEnv) -> Result<Self, ServiceError> {
        let kind = ServiceManagerKind::native().map_err(|e| ServiceError::Unsupported {
            backend: BackendKind::Fallback,
            what: format!("find a service manager on this platform: {e}"),
        })?;
        let registry_dir = match scope {
            ServiceScope::System => default_system_registry(),
            ServiceScope::User => host
                .xdg_data_home
                .clone()
                .or_else(|| host.home.as_ref().map(|h| h.join(".local/share")))
                .ok_or(ServiceError::NoHome { scope })?
                .join("circles/services"),
        };
        Ok(Self::with_registry_dir(scope, kind, registry_dir))
    }

    /// An explicit manager kind and record directory.
    pub fn with_registry_dir(
        scope: ServiceScope,
        kind: ServiceManagerKind,
        registry_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            scope,
            kind,
            registry_dir: registry_dir.into(),
        }
    }

    /// System or user.
    pub fn scope(&self) -> ServiceScope {
        self.scope
    }

    /// The `service-manager` kind in use.
    pub fn manager_kind(&self) -> ServiceManagerKind {
        self.kind
    }

    /// Where the records of installed services are kept.
    pub fn registry_dir(&self) -> &Path {
        &self.registry_dir
    }

    /// What this backend cannot do.
    pub fn unavailable_features(&self) -> Vec<&'static str> {
        UNAVAILABLE.to_vec()
    }

    fn record_path(&self, name: &ServiceName) -> PathBuf {
        files::service_file(&self.registry_dir, name, RECORD_SUFFIX)
    }

    fn manager(&self) -> Result<Box<dyn ServiceManager>, std::io::Error> {
        let mut manager = TypedServiceManager::target(self.kind);
        manager.set_level(match self.scope {
            ServiceScope::System => ServiceLevel::System,
            ServiceScope::User => ServiceLevel::User,
        })?;
        Ok(manager.into_box())
    }

    /// The record of `spec` (what would be installed), a plist; pure.
    /// Refuses specs that `service-manager`'s unquoted templates would mangle.
    pub fn render(&self, spec: &ServiceSpec) -> Result<Rendered, ServiceError> {
        spec.validate()?;
        if let Some(key) = spec.secret_env.0.keys().next() {
            return Err(ServiceError::InvalidSpec {
                name: spec.name.clone(),
                reason: format!(
                    "the fallback service backend cannot keep the secret {key} out of \
                     world-readable files (service-manager writes the environment into the \
                     service file it generates); use systemd or launchd, or a Redis without \
                     credentials"
                ),
            });
        }
        let needs_quoting = |s: &str| {
            s.is_empty()
                || s.chars().any(|c| {
                    c.is_whitespace() || c.is_control() || "\"'\\%$`;&|<>(){}*?#".contains(c)
                })
        };
        let program = spec.program.to_str().expect("validated");
        let working_directory = spec.working_directory.to_str().expect("validated");
        let words = std::iter::once(program)
            .chain(spec.args.iter().map(String::as_str))
            .chain(spec.env.values().map(String::as_str))
            .chain(std::iter::once(working_directory));
        for word in words {
            if needs_quoting(word) {
                return Err(ServiceError::InvalidSpec {
                    name: spec.name.clone(),
                    reason: format!(
                        "the fallback service backend cannot quote {word:?} (service-manager joins \
                         arguments with spaces); use systemd or launchd, or avoid spaces and shell \
                         characters"
                    ),
                });
            }
        }
        let text = |s: &str| Value::String(s.to_string());
        let mut managed = Dictionary::new();
        managed.insert("Note".into(), text(MANAGED_NOTE));
        managed.insert("Manager".into(), text(&format!("{:?}", self.kind)));
        managed.insert("Description".into(), text(&spec.description));
        managed.insert(
            "Fingerprint".into(),
            Value::Dictionary(
                spec.fingerprint
                    .iter()
                    .map(|(k, v)| (k.clone(), text(v)))
                    .collect(),
            ),
        );
        let mut dict = Dictionary::new();
        dict.insert(MANAGED_KEY.into(), Value::Dictionary(managed));
        dict.insert("Label".into(), text(spec.name.as_str()));
        dict.insert(
            "ProgramArguments".into(),
            Value::Array(
                std::iter::once(program)
                    .chain(spec.args.iter().map(String::as_str))
                    .map(text)
                    .collect(),
            ),
        );
        dict.insert(
            "EnvironmentVariables".into(),
            Value::Dictionary(spec.env.iter().map(|(k, v)| (k.clone(), text(v))).collect()),
        );
        dict.insert("WorkingDirectory".into(), text(working_directory));
        dict.insert(
            "RestartSec".into(),
            Value::Integer(spec.restart.restart_sec.into()),
        );
        let contents = launchd_render::to_xml(&spec.name, dict)?;
        Ok(Rendered {
            name: spec.name.clone(),
            path: self.record_path(&spec.name),
            contents,
            mode: PUBLIC_FILE_MODE,
            secret: None,
        })
    }

    /// Renders every spec and compares it with its record.
    pub async fn plan(&self, specs: &[ServiceSpec]) -> Result<Plan, ServiceError> {
        files::plan_files(specs, |s| self.render(s), is_ours).await
    }

    /// Installs and starts new services; stops, reinstalls and starts changed
    /// ones. What to install is read back from each planned record. On
    /// failure the services this apply created are removed; changed ones are
    /// not restored (see [`UNAVAILABLE`]).
    pub async fn apply(&self, plan: &Plan) -> Result<ApplyReport, ServiceError> {
        let mut report = ApplyReport::default();
        let mut created: Vec<ServiceName> = Vec::new();
        for (rendered, action) in &plan.items {
            let result = match action {
                PlannedAction::Unchanged => {
                    report.unchanged.push(rendered.name.clone());
                    continue;
                }
                PlannedAction::Create => {
                    created.push(rendered.name.clone());
                    self.install(rendered).await
                }
                PlannedAction::Update { .. } => {
                    let reinstalled = async {
                        if let Err(e) = self
                            .call(&rendered.name, "stop", |m, label| {
                                m.stop(ServiceStopCtx { label })
                            })
                            .await
                        {
                            tracing::debug!("{e}");
                        }
                        self.call(&rendered.name, "uninstall", |m, label| {
                            m.uninstall(ServiceUninstallCtx { label })
                        })
                        .await?;
                        self.install(rendered).await
                    }
                    .await;
                    if reinstalled.is_ok() {
                        report.updated.push(rendered.name.clone());
                    }
                    reinstalled
                }
            };
            if let Err(source) = result {
                let mut rollback = Rollback::default();
                match self.remove(&created).await {
                    Ok(removed) => rollback.removed = removed,
                    Err(e) => rollback.failures.push(e.to_string()),
                }
                if !report.updated.is_empty() {
                    rollback.failures.push(format!(
                        "the fallback backend does not restore changed services: {}",
                        report
                            .updated
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                return Err(ServiceError::Apply {
                    step: format!("installing `{}`", rendered.name),
                    source: Box::new(source),
                    rollback,
                });
            }
            if matches!(action, PlannedAction::Create) {
                report.created.push(rendered.name.clone());
            }
        }
        Ok(report)
    }

    /// Writes the record, then installs (enabled at boot) and starts.
    async fn install(&self, rendered: &Rendered) -> Result<(), ServiceError> {
        let record = Record::parse(rendered)?;
        files::write_rendered(rendered).await?;
        let ctx = ServiceInstallCtx {
            label: label(&rendered.name),
            program: record.program,
            args: record.args.into_iter().map(Into::into).collect(),
            contents: None,
            username: None,
            working_directory: Some(record.working_directory),
            environment: Some(record.env),
            autostart: true,
            restart_policy: SmRestartPolicy::Always {
                delay_secs: Some(record.restart_sec),
            },
        };
        self.call(&rendered.name, "install", move |m, _| m.install(ctx))
            .await?;
        self.call(&rendered.name, "start", |m, label| {
            m.start(ServiceStartCtx { label })
        })
        .await
    }

    /// Runs one blocking `service-manager` call off the async runtime.
    async fn call<F>(
        &self,
        name: &ServiceName,
        action: &'static str,
        f: F,
    ) -> Result<(), ServiceError>
    where
        F: FnOnce(&dyn ServiceManager, ServiceLabel) -> std::io::Result<()> + Send + 'static,
    {
        let this = self.clone();
        let label = label(name);
        let result = tokio::task::spawn_blocking(move || {
            let manager = this.manager()?;
            f(manager.as_ref(), label)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        result.map_err(|source| ServiceError::Fallback {
            name: name.clone(),
            action,
            source,
        })
    }

    /// Starts each service.
    pub async fn start(&self, names: &[ServiceName]) -> Result<(), ServiceError> {
        for name in names {
            self.call(name, "start", |m, label| m.start(ServiceStartCtx { label }))
                .await?;
        }
        Ok(())
    }

    /// Stops each service.
    pub async fn stop(&self, names: &[ServiceName]) -> Result<(), ServiceError> {
        for name in names {
            self.call(name, "stop", |m, label| m.stop(ServiceStopCtx { label }))
                .await?;
        }
        Ok(())
    }

    /// Stop, then start (the crate has no restart).
    pub async fn restart(&self, names: &[ServiceName]) -> Result<(), ServiceError> {
        for name in names {
            self.call(name, "stop", |m, label| m.stop(ServiceStopCtx { label }))
                .await?;
            self.call(name, "start", |m, label| m.start(ServiceStartCtx { label }))
                .await?;
        }
        Ok(())
    }

    /// The services we have records of.
    pub async fn list_installed(&self) -> Result<Vec<ServiceName>, ServiceError> {
        let names: BTreeSet<ServiceName> = files::list_names(&self.registry_dir, RECORD_SUFFIX)
            .await?
            .into_iter()
            .collect();
        Ok(names.into_iter().collect())
    }

    /// Running / stopped / not installed, as far as the crate can tell.
    pub async fn status(&self, name: &ServiceName) -> Result<ServiceStatus, ServiceError> {
        let this = self.clone();
        let label = label(name);
        let status =
            tokio::task::spawn_blocking(move || this.manager()?.status(ServiceStatusCtx { label }))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
                .map_err(|source| ServiceError::Fallback {
                    name: name.clone(),
                    action: "query",
                    source,
                })?;
        let record = self.record_path(name);
        let (loaded, active, sub) = match status {
            service_manager::ServiceStatus::Running => (true, "active", "running".to_string()),
            service_manager::ServiceStatus::Stopped(reason) => {
                (true, "inactive", reason.unwrap_or_else(|| "stopped".into()))
            }
            service_manager::ServiceStatus::NotInstalled => {
                (false, "inactive", "not installed".into())
            }
        };
        Ok(ServiceStatus {
            name: name.clone(),
            loaded,
            active_state: active.into(),
            sub_state: sub,
            main_pid: None,
            n_restarts: None,
            exec_main_status: None,
            exec_main_code: None,
            unit_path: record.exists().then_some(record),
        })
    }

    /// Stops and uninstalls each service we have a record of, then deletes
    /// the record. Returns the names that had one.
    pub async fn remove(&self, names: &[ServiceName]) -> Result<Vec<ServiceName>, ServiceError> {
        let mut removed = Vec::new();
        for name in names {
            let record = self.record_path(name);
            if !record.exists() {
                continue;
            }
            // Stopping a service that is not running fails on some managers;
            // uninstalling is what must work.
            if let Err(e) = self
                .call(name, "stop", |m, label| m.stop(ServiceStopCtx { label }))
                .await
            {
                tracing::debug!("{e}");
            }
            self.call(name, "uninstall", |m, label| {
                m.uninstall(ServiceUninstallCtx { label })
            })
            .await?;
            files::remove_file(name, &record).await?;
            removed.push(name.clone());
        }
        Ok(removed)
    }

    /// `journalctl` when the crate drives systemd; elsewhere there is no log
    /// source we know, and the command prints that and fails.
    pub fn logs_command(&self, name: &ServiceName, follow: bool) -> std::process::Command {
        if self.kind == ServiceManagerKind::Systemd {
            return crate::systemd::journal_command(self.scope, name, follow);
        }
        let message = format!(
            "logs of `{name}` are not available: the fallback service backend ({:?}) does not know where they go",
            self.kind
        );
        unavailable_command(&message)
    }
}

/// Our name as the whole label, so every manager sees exactly
/// `tf.ourworld.circles.…` (parsing it would split it at the dots and turn
/// it into `ourworld-circles.…` for systemd and OpenRC).
fn label(name: &ServiceName) -> ServiceLabel {
    ServiceLabel {
        qualifier: None,
        organization: None,
        application: name.to_string(),
    }
}

/// Whether a record file was written by us.
pub fn is_ours(contents: &str) -> bool {
    launchd_render::is_ours(contents)
}

/// What to install, read back from a rendered record.
struct Record {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    working_directory: PathBuf,
    restart_sec: u32,
}

impl Record {
    fn parse(rendered: &Rendered) -> Result<Self, ServiceError> {
        let bad = |reason: &str| ServiceError::InvalidSpec {
            name: rendered.name.clone(),
            reason: format!("its planned record is not one this backend rendered: {reason}"),
        };
        let dict = Value::from_reader_xml(rendered.contents.as_bytes())
            .map_err(|e| bad(&e.to_string()))?
            .into_dictionary()
            .ok_or_else(|| bad("not a dict"))?;
        let strings = |v: &Value| -> Option<Vec<String>> {
            v.as_array()?
                .iter()
                .map(|s| s.as_string().map(str::to_string))
                .collect()
        };
        let mut argv = dict
            .get("ProgramArguments")
            .and_then(strings)
            .ok_or_else(|| bad("no ProgramArguments"))?
            .into_iter();
        let program = PathBuf::from(argv.next().ok_or_else(|| bad("empty ProgramArguments"))?);
        let env = dict
            .get("EnvironmentVariables")
            .and_then(Value::as_dictionary)
            .ok_or_else(|| bad("no EnvironmentVariables"))?
            .iter()
            .map(|(k, v)| Some((k.clone(), v.as_string()?.to_string())))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("a non-string environment value"))?;
        Ok(Self {
            program,
            args: argv.collect(),
            env,
            working_directory: dict
                .get("WorkingDirectory")
                .and_then(Value::as_string)
                .map(PathBuf::from)
                .ok_or_else(|| bad("no WorkingDirectory"))?,
            restart_sec: dict
                .get("RestartSec")
                .and_then(Value::as_unsigned_integer)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad("no RestartSec"))?,
        })
    }
}

#[cfg(unix)]
fn default_system_registry() -> PathBuf {
    PathBuf::from("/var/lib/circles/services")
}

#[cfg(not(unix))]
fn default_system_registry() -> PathBuf {
    std::env::var_os("ProgramData")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
        .join(r"circles\services")
}

#[cfg(unix)]
fn unavailable_command(message: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "printf '%s\\n' \"$1\" >&2; exit 1", "sh", message]);
    cmd
}

#[cfg(not(unix))]
fn unavailable_command(message: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("cmd");
    cmd.args(["/C", &format!("echo {message} 1>&2 & exit /b 1")]);
    cmd
}
