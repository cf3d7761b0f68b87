//! The systemd backend: unit files in `/etc/systemd/system` (system scope) or
//! `~/.config/systemd/user` (user scope), driven over D-Bus.
//!
//! Every action is a D-Bus call to `org.freedesktop.systemd1.Manager`, never a
//! `systemctl` process, so we can subscribe to `JobRemoved` *before* enqueuing
//! a start and learn each job's real result: for `Type=notify` units the start
//! job ends only when the program has sent `READY=1`, so "apply succeeded"
//! means every service is up. An apply writes all files, enables them and
//! reloads systemd once, then starts or restarts everything in parallel and
//! waits; if anything fails, it undoes exactly what it did (see
//! [`SystemdBackend::apply`]).

mod dbus;
pub mod render;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::OnceCell;
use zbus::message::Type as MessageType;
use zbus::{Connection, MatchRule, MessageStream, OwnedObjectPath};

use crate::backend::{
    ApplyReport, PUBLIC_FILE_MODE, Plan, PlannedAction, Rendered, SecretFile, ServiceStatus,
};
use crate::error::{Rollback, ServiceError};
use crate::files;
use crate::host::HostEnv;
use crate::name::{SERVICE_PREFIX, ServiceName};
use crate::spec::{ServiceScope, ServiceSpec};
use crate::templates::Templates;

use dbus::ManagerProxy;

/// Unit files end in this.
const UNIT_SUFFIX: &str = ".service";

/// How long we wait for one batch of jobs. systemd's own start timeout
/// (`TimeoutStartSec=`, 90 s by default) normally fails a job long before.
const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// Job mode for every job: replace conflicting queued jobs, like `systemctl`.
const JOB_MODE: &str = "replace";

/// Journal lines included in a failure report.
const LOG_LINES: &str = "15";

/// systemd over D-Bus; see the module docs.
#[derive(Debug)]
pub struct SystemdBackend {
    scope: ServiceScope,
    unit_dir: PathBuf,
    templates: Templates,
    host: HostEnv,
    conn: OnceCell<Connection>,
    job_timeout: Duration,
}

/// What one verb does to a unit, for job bookkeeping and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Start,
    Restart,
    Stop,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Restart => "restart",
            Verb::Stop => "stop",
        }
    }

    fn gerund(self) -> &'static str {
        match self {
            Verb::Start => "starting",
            Verb::Restart => "restarting",
            Verb::Stop => "stopping",
        }
    }
}

/// `JobRemoved` signals, subscribed before the jobs they report are enqueued.
struct JobWatch {
    stream: MessageStream,
    pending: Vec<(OwnedObjectPath, ServiceName, Verb)>,
}

impl SystemdBackend {
    /// A backend for `scope` with the standard unit directory:
    /// `/etc/systemd/system`, or `$XDG_CONFIG_HOME/systemd/user` (default
    /// `~/.config/systemd/user`). Does not connect yet.
    pub fn new(
        scope: ServiceScope,
        templates: Templates,
        host: &HostEnv,
    ) -> Result<Self, ServiceError> {
        let unit_dir = match scope {
            ServiceScope::System => PathBuf::from("/etc/systemd/system"),
            ServiceScope::User => host
                .xdg_config_home
                .clone()
                .or_else(|| host.home.as_ref().map(|h| h.join(".config")))
                .ok_or(ServiceError::NoHome { scope })?
                .join("systemd/user"),
        };
        Ok(Self::with_unit_dir(scope, unit_dir, templates, host))
    }

    /// A backend writing units to `unit_dir`, which must be one systemd reads
    /// (see `systemd.unit(5)`, "Unit File Load Path") for installs to work;
    /// any directory will do for rendering and planning.
    pub fn with_unit_dir(
        scope: ServiceScope,
        unit_dir: impl Into<PathBuf>,
        templates: Templates,
        host: &HostEnv,
    ) -> Self {
        Self {
            scope,
            unit_dir: unit_dir.into(),
            templates,
            host: host.clone(),
            conn: OnceCell::new(),
            job_timeout: DEFAULT_JOB_TIMEOUT,
        }
    }

    /// Changes how long [`SystemdBackend::apply`], `restart` and `remove` wait
    /// for systemd's jobs.
    pub fn set_job_timeout(&mut self, timeout: Duration) {
        self.job_timeout = timeout;
    }

    /// System or user manager.
    pub fn scope(&self) -> ServiceScope {
        self.scope
    }

    /// Where unit files go.
    pub fn unit_dir(&self) -> &Path {
        &self.unit_dir
    }

    /// The D-Bus connection, made on first use and subscribed to job signals.
    pub async fn connection(&self) -> Result<&Connection, ServiceError> {
        self.conn
            .get_or_try_init(|| async {
                let conn = dbus::connect(self.scope, &self.host).await?;
                let manager = dbus::manager(&conn).await.map_err(dbus_error("Manager"))?;
                manager.subscribe().await.map_err(dbus_error("Subscribe"))?;
                Ok(conn)
            })
            .await
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>, ServiceError> {
        let conn = self.connection().await?;
        dbus::manager(conn).await.map_err(dbus_error("Manager"))
    }

    /// The unit for `spec`, and its secret environment file if it has
    /// secrets; pure.
    pub fn render(&self, spec: &ServiceSpec) -> Result<Rendered, ServiceError> {
        Ok(Rendered {
            name: spec.name.clone(),
            path: self.unit_path(&spec.name),
            contents: render::render_unit(spec, self.scope, &self.templates)?,
            mode: PUBLIC_FILE_MODE,
            secret: (!spec.secret_env.is_empty()).then(|| SecretFile {
                path: render::secret_env_path(spec),
                contents: render::render_secret_env(spec),
            }),
        })
    }

    /// Our service files in the unit directory.
    pub async fn list_installed_files(&self) -> Result<Vec<ServiceName>, ServiceError> {
        files::list_names(&self.unit_dir, UNIT_SUFFIX).await
    }

    /// The `WorkingDirectory=` of the installed unit of `name`, when it has
    /// one of ours.
    pub async fn installed_working_directory(
        &self,
        name: &ServiceName,
    ) -> Result<Option<PathBuf>, ServiceError> {
        let Some(text) = self.installed_unit(name).await? else {
            return Ok(None);
        };
        Ok(unit_setting(&text, "WorkingDirectory")
            .last()
            .map(|v| PathBuf::from(v.replace("%%", "%"))))
    }

    /// The text of our installed unit file of `name`.
    async fn installed_unit(&self, name: &ServiceName) -> Result<Option<String>, ServiceError> {
        let path = self.unit_path(name);
        match tokio::fs::read_to_string(&path).await {
            Ok(text) if render::is_ours(&text) => Ok(Some(text)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ServiceError::Read {
                name: name.clone(),
                path,
                source,
            }),
        }
    }

    /// The secret environment file our installed unit of `name` reads
    /// (`<secrets_dir>/<name>.env`), so removing the unit removes it too.
    async fn installed_secret_file(
        &self,
        name: &ServiceName,
    ) -> Result<Option<PathBuf>, ServiceError> {
        Ok(self
            .installed_unit(name)
            .await?
            .and_then(|text| secret_file_of(&text, name)))
    }

    fn unit_path(&self, name: &ServiceName) -> PathBuf {
        files::service_file(&self.unit_dir, name, UNIT_SUFFIX)
    }

    /// Renders every spec and compares it with the unit file on disk.
    pub async fn plan(&self, specs: &[ServiceSpec]) -> Result<Plan, ServiceError> {
        files::plan_files(specs, |s| self.render(s), render::is_ours).await
    }

    /// Carries out `plan` as one transaction.
    ///
    /// 1. write every new or changed unit file;
    /// 2. enable them (`EnableUnitFiles`) and reload systemd once;
    /// 3. start the new units, restart the changed ones, and start unchanged
    ///    ones that are not running (after `ResetFailedUnit` if they failed);
    /// 4. wait for every job's `JobRemoved` signal.
    ///
    /// If a step fails, everything this apply did is undone: units it created
    /// are stopped, disabled, deleted and reset; units it changed get their
    /// previous file back (and are restarted with it if the new one had
    /// already been started). The error says which service
    /// failed, at which step, why (with the unit's state and last journal
    /// lines), and what the rollback did.
    pub async fn apply(&self, plan: &Plan) -> Result<ApplyReport, ServiceError> {
        let mut report = ApplyReport::default();
        let mut created: Vec<&Rendered> = Vec::new();
        let mut updated: Vec<(&Rendered, &PlannedAction)> = Vec::new();
        let mut unchanged: Vec<&Rendered> = Vec::new();

        // 1. Files.
        for (rendered, action) in &plan.items {
            if let Err(e) = match action {
                PlannedAction::Unchanged => {
                    unchanged.push(rendered);
                    Ok(())
                }
                PlannedAction::Create => {
                    // Recorded before writing: a half-written pair (secret
                    // file without unit) is removed by the rollback too.
                    created.push(rendered);
                    files::write_rendered(rendered).await
                }
                PlannedAction::Update { .. } => {
                    updated.push((rendered, action));
                    files::write_rendered(rendered).await
                }
            } {
                let step = format!("writing `{}` to {}", rendered.name, rendered.path.display());
                return Err(self.fail(step, e, &created, &updated, false).await);
            }
        }
        let wrote = !created.is_empty() || !updated.is_empty();

        // 2. Enable and reload, once for the whole batch.
        if wrote {
            let units: Vec<String> = created
                .iter()
                .map(|r| r.name.unit_name())
                .chain(updated.iter().map(|(r, _)| r.name.unit_name()))
                .collect();
            if let Err(e) = self.enable(&units).await {
                let step = format!("enabling {}", units.join(", "));
                return Err(self.fail(step, e, &created, &updated, false).await);
            }
            if let Err(e) = self.reload().await {
                return Err(self
                    .fail("reloading systemd".into(), e, &created, &updated, false)
                    .await);
            }
        }

        // 3. Jobs.
        let mut jobs: Vec<(ServiceName, Verb)> = Vec::new();
        jobs.extend(created.iter().map(|r| (r.name.clone(), Verb::Start)));
        jobs.extend(updated.iter().map(|(r, _)| (r.name.clone(), Verb::Restart)));
        for rendered in &unchanged {
            match self.ensure_startable(&rendered.name).await {
                Ok(true) => jobs.push((rendered.name.clone(), Verb::Start)),
                Ok(false) => {}
                Err(e) => {
                    let step = format!("checking `{}`", rendered.name);
                    return Err(self.fail(step, e, &created, &updated, false).await);
                }
            }
        }

        // 4. Wait. From here on, changed services may run their new unit, so
        // a rollback restarts them with the old one.
        let failure = match self.run_jobs(&jobs).await {
            Ok(failures) => failures
                .into_iter()
                .next()
                .map(|(name, verb, error)| (format!("{} `{name}`", verb.gerund()), error)),
            Err(e) => Some(("starting services".to_string(), e)),
        };
        if let Some((step, error)) = failure {
            return Err(self.fail(step, error, &created, &updated, true).await);
        }

        // A service that no longer has secrets (a Redis URL without a
        // password now) leaves no stale secret file behind. Only now: had
        // the apply failed, the restored unit would still read it.
        for (rendered, action) in &updated {
            if let (None, PlannedAction::Update { previous, .. }) = (&rendered.secret, action)
                && let Some(stale) = secret_file_of(previous, &rendered.name)
                && let Err(e) = files::remove_file(&rendered.name, &stale).await
            {
                tracing::warn!("{e}");
            }
        }

        report.created = created.iter().map(|r| r.name.clone()).collect();
        report.updated = updated.iter().map(|(r, _)| r.name.clone()).collect();
        report.unchanged = unchanged.iter().map(|r| r.name.clone()).collect();
        Ok(report)
    }

    /// Rolls back and builds the apply error.
    async fn fail(
        &self,
        step: String,
        source: ServiceError,
        created: &[&Rendered],
        updated: &[(&Rendered, &PlannedAction)],
        restart_updated: bool,
    ) -> ServiceError {
        tracing::warn!("apply failed while {step}: {source}; rolling back");
        let rollback = self.rollback(created, updated, restart_updated).await;
        ServiceError::Apply {
            step,
            source: Box::new(source),
            rollback,
        }
    }

    /// Undoes an apply; never gives up half-way, collecting what failed.
    /// Changed services are restarted only when `restart_updated` (their
    /// restart jobs ran); before that they still run their previous unit and
    /// getting the old file back is enough.
    async fn rollback(
        &self,
        created: &[&Rendered],
        updated: &[(&Rendered, &PlannedAction)],
        restart_updated: bool,
    ) -> Rollback {
        let mut rollback = Rollback::default();
        let mut failures = Vec::new();
        if created.is_empty() && updated.is_empty() {
            return rollback;
        }
        let created_names: Vec<ServiceName> = created.iter().map(|r| r.name.clone()).collect();

        // Stop what we created (a unit in auto-restart is stopped too).
        let stops: Vec<(ServiceName, Verb)> = created_names
            .iter()
            .map(|n| (n.clone(), Verb::Stop))
            .collect();
        match self.run_jobs(&stops).await {
            Ok(stop_failures) => failures.extend(
                stop_failures
                    .into_iter()
                    .map(|(name, _, e)| format!("stopping `{name}`: {e}")),
            ),
            Err(e) => failures.push(format!("stopping created units: {e}")),
        }
        if !created.is_empty() {
            let units: Vec<String> = created_names.iter().map(ServiceName::unit_name).collect();
            if let Err(e) = self.disable(&units).await {
                failures.push(format!("disabling {}: {e}", units.join(", ")));
            }
        }
        for r in created {
            match files::remove_rendered(r).await {
                Ok(_) => rollback.removed.push(r.name.clone()),
                Err(e) => failures.push(e.to_string()),
            }
        }
        for (r, action) in updated {
            let PlannedAction::Update {
                previous,
                previous_mode,
                previous_secret,
            } = action
            else {
                continue;
            };
            match files::restore_previous(r, previous, *previous_mode, previous_secret.as_ref())
                .await
            {
                Ok(()) => rollback.restored.push(r.name.clone()),
                Err(e) => failures.push(e.to_string()),
            }
        }
        if let Err(e) = self.reload().await {
            failures.push(format!("reloading systemd: {e}"));
        }
        // A failed unit stays loaded until its failure is forgotten; after
        // that, with its file gone, systemd unloads it.
        for name in &created_names {
            if let Err(e) = self.reset_failed(name).await {
                failures.push(format!("resetting `{name}`: {e}"));
            }
        }
        let restarts: Vec<(ServiceName, Verb)> = if restart_updated {
            updated
                .iter()
                .map(|(r, _)| (r.name.clone(), Verb::Restart))
                .collect()
        } else {
            Vec::new()
        };
        match self.run_jobs(&restarts).await {
            Ok(restart_failures) => failures.extend(
                restart_failures
                    .into_iter()
                    .map(|(name, _, e)| format!("restarting the previous `{name}`: {e}")),
            ),
            Err(e) => failures.push(format!("restarting previous units: {e}")),
        }
        rollback.failures = failures;
        rollback
    }

    /// For an unchanged unit: `true` when it should be started because it is
    /// not running. A failed unit's failure (and start-limit counter) is reset
    /// first, so a new apply gets it going again.
    async fn ensure_startable(&self, name: &ServiceName) -> Result<bool, ServiceError> {
        let status = self.status(name).await?;
        match status.active_state.as_str() {
            "active" | "activating" | "reloading" => Ok(false),
            "failed" => {
                self.reset_failed(name).await?;
                Ok(true)
            }
            _ => Ok(true),
        }
    }

    /// Restarts (or starts) each service and waits for the jobs.
    pub async fn restart(&self, names: &[ServiceName]) -> Result<(), ServiceError> {
        self.run_verb(names, Verb::Restart).await
    }

    /// Starts each service and waits for the jobs (for notify services, until
    /// `READY=1`). A failed unit's failure is reset first, so a unit that hit
    /// its start limit can be started again by asking.
    pub async fn start(&self, names: &[ServiceName]) -> Result<(), ServiceError> {
        for name in names {
            if self.status(name).await?.active_state == "failed" {
                self.reset_failed(name).await?;
            }
        }
        self.run_verb(names, Verb::Start).await
    }

    /// Stops each service and waits for the jobs; the units stay installed
    /// and enabled.
    pub async fn stop(&self, names: &[ServiceName]) -> Result<(), ServiceError> {
        self.run_verb(names, Verb::Stop).await
    }

    async fn run_verb(&self, names: &[ServiceName], verb: Verb) -> Result<(), ServiceError> {
        let jobs: Vec<(ServiceName, Verb)> = names.iter().map(|n| (n.clone(), verb)).collect();
        let mut failures = self.run_jobs(&jobs).await?.into_iter();
        match failures.next() {
            None => Ok(()),
            Some((_, _, first)) => {
                for (name, _, other) in failures {
                    tracing::warn!("{} `{name}` failed too: {other}", verb.gerund());
                }
                Err(first)
            }
        }
    }

    /// Our services: unit files in the unit directory and units systemd has
    /// loaded (a unit still running after its file was deleted counts), all
    /// under [`SERVICE_PREFIX`].
    pub async fn list_installed(&self) -> Result<Vec<ServiceName>, ServiceError> {
        let mut names: BTreeSet<ServiceName> = files::list_names(&self.unit_dir, UNIT_SUFFIX)
            .await?
            .into_iter()
            .collect();
        let pattern = format!("{SERVICE_PREFIX}*{UNIT_SUFFIX}");
        let rows = self
            .manager()
            .await?
            .list_units_by_patterns(&[], &[pattern.as_str()])
            .await
            .map_err(dbus_error("ListUnitsByPatterns"))?;
        for (unit, _, load_state, active_state, ..) in rows {
            // A stale reference to a unit without a file is not installed.
            if load_state == "not-found" && active_state == "inactive" {
                continue;
            }
            if let Some(name) = ServiceName::from_file_name(&unit, UNIT_SUFFIX) {
                names.insert(name);
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The unit's state as systemd has it; a unit systemd has not loaded is
    /// `loaded: false`, `inactive`.
    pub async fn status(&self, name: &ServiceName) -> Result<ServiceStatus, ServiceError> {
        let file = self.unit_path(name);
        let on_disk = file.exists().then_some(file);
        let unit_name = name.unit_name();
        match self.read_status(name, on_disk.clone()).await? {
            Ok(status) => Ok(status),
            Err(e) if dbus::is_no_such_unit(&e) => Ok(ServiceStatus {
                name: name.clone(),
                loaded: false,
                active_state: "inactive".into(),
                sub_state: "dead".into(),
                main_pid: None,
                n_restarts: None,
                exec_main_status: None,
                exec_main_code: None,
                unit_path: on_disk,
            }),
            Err(e) => Err(dbus_error_for("GetUnit/Get", &unit_name)(e)),
        }
    }

    /// The D-Bus part of [`SystemdBackend::status`]: the outer error is "no
    /// connection", the inner one a failed call.
    async fn read_status(
        &self,
        name: &ServiceName,
        on_disk: Option<PathBuf>,
    ) -> Result<zbus::Result<ServiceStatus>, ServiceError> {
        let conn = self.connection().await?;
        let manager = self.manager().await?;
        Ok(async {
            let path = manager.get_unit(&name.unit_name()).await?;
            let unit = dbus::unit(conn, path.clone()).await?;
            let service = dbus::service(conn, path).await?;
            let loaded = unit.load_state().await? == "loaded";
            let fragment = unit.fragment_path().await?;
            // Service properties only exist on a loaded service unit.
            let (main_pid, n_restarts, exec_main_status, exec_main_code) = if loaded {
                (
                    Some(service.main_pid().await?).filter(|pid| *pid != 0),
                    Some(service.n_restarts().await?),
                    Some(service.exec_main_status().await?),
                    Some(service.exec_main_code().await?),
                )
            } else {
                (None, None, None, None)
            };
            Ok(ServiceStatus {
                name: name.clone(),
                loaded,
                active_state: unit.active_state().await?,
                sub_state: unit.sub_state().await?,
                main_pid,
                n_restarts,
                exec_main_status,
                exec_main_code,
                unit_path: (!fragment.is_empty())
                    .then(|| PathBuf::from(fragment))
                    .or(on_disk),
            })
        }
        .await)
    }

    /// Stops, disables and deletes each service, reloads once and forgets
    /// failures. Names that are neither on disk nor loaded are skipped, so
    /// removing twice is fine; returns the names that were there.
    pub async fn remove(&self, names: &[ServiceName]) -> Result<Vec<ServiceName>, ServiceError> {
        let mut present = Vec::new();
        let mut loaded = Vec::new();
        let mut with_file = Vec::new();
        for name in names {
            let has_file = self.unit_path(name).exists();
            let state = self.status(name).await?;
            // A unit systemd only remembers as "not-found" and inactive (a
            // stale reference, e.g. after `systemctl status`) is not there.
            let is_loaded = state.loaded || state.active_state != "inactive";
            if has_file || is_loaded {
                present.push(name.clone());
            }
            if has_file {
                with_file.push(name.clone());
            }
            if is_loaded {
                loaded.push((name.clone(), Verb::Stop));
            }
        }
        if present.is_empty() {
            return Ok(present);
        }
        let mut stop_failures = self.run_jobs(&loaded).await?.into_iter();
        if let Some((_, _, first)) = stop_failures.next() {
            return Err(first);
        }
        if !with_file.is_empty() {
            let units: Vec<String> = with_file.iter().map(ServiceName::unit_name).collect();
            self.disable(&units).await?;
            for name in &with_file {
                if let Some(secret) = self.installed_secret_file(name).await? {
                    files::remove_file(name, &secret).await?;
                }
                files::remove_file(name, &self.unit_path(name)).await?;
            }
            self.reload().await?;
        }
        for name in &present {
            self.reset_failed(name).await?;
        }
        Ok(present)
    }

    /// See [`journal_command`].
    pub fn logs_command(&self, name: &ServiceName, follow: bool) -> std::process::Command {
        journal_command(self.scope, name, follow)
    }

    async fn enable(&self, units: &[String]) -> Result<(), ServiceError> {
        let units: Vec<&str> = units.iter().map(String::as_str).collect();
        self.manager()
            .await?
            .enable_unit_files(&units, false, true)
            .await
            .map_err(dbus_error_for("EnableUnitFiles", &units.join(", ")))?;
        Ok(())
    }

    async fn disable(&self, units: &[String]) -> Result<(), ServiceError> {
        let units: Vec<&str> = units.iter().map(String::as_str).collect();
        self.manager()
            .await?
            .disable_unit_files(&units, false)
            .await
            .map_err(dbus_error_for("DisableUnitFiles", &units.join(", ")))?;
        Ok(())
    }

    async fn reload(&self) -> Result<(), ServiceError> {
        self.manager()
            .await?
            .reload()
            .await
            .map_err(dbus_error("Reload"))
    }

    /// `ResetFailedUnit`; a unit that is not loaded has nothing to reset.
    async fn reset_failed(&self, name: &ServiceName) -> Result<(), ServiceError> {
        let unit = name.unit_name();
        match self.manager().await?.reset_failed_unit(&unit).await {
            Ok(()) => Ok(()),
            Err(e) if dbus::is_no_such_unit(&e) => Ok(()),
            Err(e) => Err(dbus_error_for("ResetFailedUnit", &unit)(e)),
        }
    }

    /// Enqueues every job, then waits for all of them. Returns the jobs that
    /// failed, each with an error carrying the unit's state and journal; a
    /// stop of a unit that is not loaded counts as done. `Err` only when
    /// systemd cannot be reached at all.
    async fn run_jobs(
        &self,
        jobs: &[(ServiceName, Verb)],
    ) -> Result<Vec<(ServiceName, Verb, ServiceError)>, ServiceError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.connection().await?;
        let manager = self.manager().await?;
        // Subscribe to JobRemoved before enqueuing, so no result can be missed.
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .interface("org.freedesktop.systemd1.Manager")
            .member("JobRemoved")
            .path("/org/freedesktop/systemd1")
            .build()
            .map_err(dbus_error("AddMatch(JobRemoved)"))?;
        let stream = MessageStream::for_match_rule(rule, conn, std::num::NonZeroUsize::new(4096))
            .await
            .map_err(dbus_error("AddMatch(JobRemoved)"))?;
        let mut watch = JobWatch {
            stream,
            pending: Vec::new(),
        };
        let mut failures = Vec::new();
        for (name, verb) in jobs {
            let unit = name.unit_name();
            let enqueued = match verb {
                Verb::Start => manager.start_unit(&unit, JOB_MODE).await,
                Verb::Restart => manager.restart_unit(&unit, JOB_MODE).await,
                Verb::Stop => manager.stop_unit(&unit, JOB_MODE).await,
            };
            match enqueued {
                Ok(job) => watch.pending.push((job, name.clone(), *verb)),
                Err(e) if *verb == Verb::Stop && dbus::is_no_such_unit(&e) => {}
                Err(e) => {
                    let call = format!("{}Unit({unit})", capitalize(verb.as_str()));
                    failures.push((name.clone(), *verb, ServiceError::DBus { call, source: e }));
                }
            }
        }
        for (name, verb, result) in self.wait_jobs(&mut watch).await {
            let error = match result {
                Ok(()) => continue,
                Err(Some(result)) => ServiceError::JobFailed {
                    name: name.clone(),
                    verb: verb.as_str(),
                    result,
                    status: self.diagnose(&name).await,
                },
                Err(None) => ServiceError::JobTimeout {
                    name: name.clone(),
                    verb: verb.as_str(),
                    secs: self.job_timeout.as_secs(),
                },
            };
            failures.push((name, verb, error));
        }
        Ok(failures)
    }

    /// Waits for each pending job's `JobRemoved`: `Ok` for result `done`,
    /// `Err(Some(result))` otherwise, `Err(None)` when the timeout passed.
    async fn wait_jobs(
        &self,
        watch: &mut JobWatch,
    ) -> Vec<(ServiceName, Verb, Result<(), Option<String>>)> {
        let mut outcomes = Vec::new();
        let deadline = tokio::time::Instant::now() + self.job_timeout;
        while !watch.pending.is_empty() {
            let next = tokio::time::timeout_at(deadline, watch.stream.next()).await;
            let message = match next {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => {
                    tracing::debug!("bad message on the JobRemoved stream: {e}");
                    continue;
                }
                // Timeout, or the connection closed: nothing more will come.
                Ok(None) | Err(_) => break,
            };
            let Ok((_id, job, _unit, result)) =
                message
                    .body()
                    .deserialize::<(u32, OwnedObjectPath, String, String)>()
            else {
                continue;
            };
            if let Some(i) = watch.pending.iter().position(|(p, ..)| *p == job) {
                let (_, name, verb) = watch.pending.swap_remove(i);
                tracing::debug!("{} job for `{name}`: {result}", verb.as_str());
                outcomes.push((
                    name,
                    verb,
                    if result == "done" {
                        Ok(())
                    } else {
                        Err(Some(result))
                    },
                ));
            }
        }
        outcomes.extend(
            watch
                .pending
                .drain(..)
                .map(|(_, name, verb)| (name, verb, Err(None))),
        );
        outcomes
    }

    /// The unit's state and last journal lines, for failure reports.
    async fn diagnose(&self, name: &ServiceName) -> String {
        let mut text = match self.unit_state_line(name).await {
            Ok(line) => line,
            Err(e) => format!("unit state unavailable ({e})"),
        };
        if let Some(lines) = self.last_log_lines(name).await {
            text.push_str("; last log lines:\n");
            text.push_str(&lines);
        }
        text
    }

    async fn unit_state_line(&self, name: &ServiceName) -> Result<String, ServiceError> {
        let conn = self.connection().await?;
        let unit_name = name.unit_name();
        let path = self
            .manager()
            .await?
            .get_unit(&unit_name)
            .await
            .map_err(dbus_error_for("GetUnit", &unit_name))?;
        let get = dbus_error_for("Get", &unit_name);
        let unit = dbus::unit(conn, path.clone()).await.map_err(&get)?;
        let service = dbus::service(conn, path).await.map_err(&get)?;
        Ok(format!(
            "ActiveState={} SubState={} Result={} ExecMainStatus={}",
            unit.active_state().await.map_err(&get)?,
            unit.sub_state().await.map_err(&get)?,
            service.result().await.map_err(&get)?,
            service.exec_main_status().await.map_err(&get)?,
        ))
    }

    /// The unit's last journal lines, when `journalctl` can give them within
    /// a few seconds. D-Bus has no access to the journal; this is the one
    /// place we run a program, and only to explain a failure.
    async fn last_log_lines(&self, name: &ServiceName) -> Option<String> {
        let journalctl = self.host.find_program("journalctl")?;
        let mut cmd = tokio::process::Command::new(journalctl);
        match self.scope {
            ServiceScope::System => cmd.arg("-u"),
            ServiceScope::User => cmd.arg("--user-unit"),
        };
        cmd.arg(name.unit_name())
            .args(["-n", LOG_LINES, "--no-pager", "-o", "short-iso"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(5), cmd.output())
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("-- ") && !l.trim().is_empty())
            .collect();
        (!lines.is_empty()).then(|| {
            lines
                .iter()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }
}

/// The secret environment file (`<secrets_dir>/<name>.env`) a unit's text
/// names in `EnvironmentFile=`.
fn secret_file_of(unit: &str, name: &ServiceName) -> Option<PathBuf> {
    let file_name = format!("{name}.env");
    unit_setting(unit, "EnvironmentFile")
        .into_iter()
        .map(|v| PathBuf::from(v.trim_start_matches('-').replace("%%", "%")))
        .find(|p| p.file_name().is_some_and(|f| f == file_name.as_str()))
}

/// The values of `key=` lines in a unit file's text, in order.
fn unit_setting<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
        .collect()
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

fn dbus_error(call: &'static str) -> impl Fn(zbus::Error) -> ServiceError {
    move |source| ServiceError::DBus {
        call: call.to_string(),
        source,
    }
}

fn dbus_error_for(call: &'static str, arg: &str) -> impl Fn(zbus::Error) -> ServiceError {
    let call = format!("{call}({arg})");
    move |source| ServiceError::DBus {
        call: call.clone(),
        source,
    }
}

/// `journalctl -u <unit>` (system) or `journalctl --user-unit <unit>`
/// (user), with `-f` when following.
pub(crate) fn journal_command(
    scope: ServiceScope,
    name: &ServiceName,
    follow: bool,
) -> std::process::Command {
    let mut cmd = std::process::Command::new("journalctl");
    match scope {
        ServiceScope::System => cmd.arg("-u"),
        ServiceScope::User => cmd.arg("--user-unit"),
    };
    cmd.arg(name.unit_name());
    if follow {
        cmd.arg("-f");
    }
    cmd
}
