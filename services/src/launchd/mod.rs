//! The launchd backend (macOS): plists in `~/Library/LaunchAgents` for the
//! `gui/<uid>` domain, or `/Library/LaunchDaemons` for the `system` domain.
//!
//! Only the modern `launchctl` verbs are used: `enable` + `bootstrap` to
//! install (`RunAtLoad` starts the job), `bootout` to remove or before
//! re-bootstrapping a changed plist (launchd keeps the plist it loaded),
//! `kickstart -k` to restart, and `print` to read state. `launchctl` is looked
//! up on `PATH`, which is how the tests put a recording stand-in in its place;
//! launchd has no readiness protocol, so an apply succeeds once launchd
//! accepted every job.

pub mod render;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backend::{
    ApplyReport, PUBLIC_FILE_MODE, Plan, PlannedAction, Rendered, SECRET_FILE_MODE, ServiceStatus,
};
use crate::error::{Rollback, ServiceError};
use crate::files;
use crate::host::HostEnv;
use crate::name::ServiceName;
use crate::spec::{ServiceScope, ServiceSpec};
use crate::templates::Templates;

const PLIST_SUFFIX: &str = ".plist";

/// `launchctl` exit codes meaning "no such service is loaded": ESRCH (3) from
/// `bootout`, and 113 ("Could not find service") from `print`/`kickstart`.
const NOT_LOADED_CODES: [i32; 2] = [3, 113];

/// launchd on macOS, through `launchctl`; see the module docs.
#[derive(Debug, Clone)]
pub struct LaunchdBackend {
    scope: ServiceScope,
    agents_dir: PathBuf,
    domain: String,
    templates: Templates,
    host: HostEnv,
}

/// What `launchctl print <domain>/<label>` says about a job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrintedJob {
    /// `state = …`: `running`, `waiting`, `not running`, …
    pub state: Option<String>,
    /// `pid = …`
    pub pid: Option<u32>,
    /// `last exit code = …`, absent while it never exited.
    pub last_exit_code: Option<i32>,
    /// `runs = …`: how many times launchd started it.
    pub runs: Option<u32>,
    /// `path = …`: the plist it was loaded from.
    pub path: Option<PathBuf>,
}

impl LaunchdBackend {
    /// The standard places: `$HOME/Library/LaunchAgents` and `gui/<uid>` for
    /// user scope, `/Library/LaunchDaemons` and `system` for system scope.
    pub fn new(
        scope: ServiceScope,
        templates: Templates,
        host: &HostEnv,
    ) -> Result<Self, ServiceError> {
        let (agents_dir, domain) = match scope {
            ServiceScope::System => (PathBuf::from("/Library/LaunchDaemons"), "system".into()),
            ServiceScope::User => (
                host.home
                    .as_ref()
                    .ok_or(ServiceError::NoHome { scope })?
                    .join("Library/LaunchAgents"),
                format!("gui/{}", host.euid),
            ),
        };
        Ok(Self::with_paths(scope, agents_dir, domain, templates, host))
    }

    /// Explicit plist directory and launchd domain.
    pub fn with_paths(
        scope: ServiceScope,
        agents_dir: impl Into<PathBuf>,
        domain: impl Into<String>,
        templates: Templates,
        host: &HostEnv,
    ) -> Self {
        Self {
            scope,
            agents_dir: agents_dir.into(),
            domain: domain.into(),
            templates,
            host: host.clone(),
        }
    }

    /// System or user.
    pub fn scope(&self) -> ServiceScope {
        self.scope
    }

    /// Where plists go.
    pub fn agents_dir(&self) -> &Path {
        &self.agents_dir
    }

    /// `gui/<uid>` or `system`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn plist_path(&self, name: &ServiceName) -> PathBuf {
        files::service_file(&self.agents_dir, name, PLIST_SUFFIX)
    }

    /// `<domain>/<label>`, the service target of most verbs.
    fn target(&self, name: &ServiceName) -> String {
        format!("{}/{}", self.domain, name)
    }

    /// The plist for `spec`; pure. A plist that carries secret environment
    /// values is written with mode 0600 (launchd reads it as root, or as
    /// the user for agents).
    pub fn render(&self, spec: &ServiceSpec) -> Result<Rendered, ServiceError> {
        Ok(Rendered {
            name: spec.name.clone(),
            path: self.plist_path(&spec.name),
            contents: render::render_plist(spec, self.scope, &self.templates)?,
            mode: if spec.secret_env.is_empty() {
                PUBLIC_FILE_MODE
            } else {
                SECRET_FILE_MODE
            },
            secret: None,
        })
    }

    /// Our service files in the plist directory.
    pub async fn list_installed_files(&self) -> Result<Vec<ServiceName>, ServiceError> {
        files::list_names(&self.agents_dir, PLIST_SUFFIX).await
    }

    /// The `WorkingDirectory` of our installed plist of `name`.
    pub async fn installed_working_directory(
        &self,
        name: &ServiceName,
    ) -> Result<Option<PathBuf>, ServiceError> {
        let path = self.plist_path(name);
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) if render::is_ours(&text) => text,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ServiceError::Read {
                    name: name.clone(),
                    path,
                    source,
                });
            }
        };
        Ok(plist::Value::from_reader_xml(text.as_bytes())
            .ok()
            .and_then(plist::Value::into_dictionary)
            .and_then(|d| d.get("WorkingDirectory")?.as_string().map(PathBuf::from)))
    }

    /// Renders every spec and compares it with the plist on disk.
    pub async fn plan(&self, specs: &[ServiceSpec]) -> Result<Plan, ServiceError> {
        files::plan_files(specs, |s| self.render(s), render::is_ours).await
    }

    /// Writes every new or changed plist, then for each: new →
    /// `enable` + `bootstrap`; changed → `bootout` + `enable` + `bootstrap`;
    /// unchanged → `print`, and `enable` + `bootstrap` only if it is not
    /// loaded. On failure, created plists are booted out and deleted, changed
    /// ones get their previous text back and are bootstrapped again.
    pub async fn apply(&self, plan: &Plan) -> Result<ApplyReport, ServiceError> {
        let mut created: Vec<&Rendered> = Vec::new();
        let mut updated: Vec<(&Rendered, &PlannedAction)> = Vec::new();
        let mut unchanged: Vec<&Rendered> = Vec::new();

        for (rendered, action) in &plan.items {
            if matches!(action, PlannedAction::Unchanged) {
                unchanged.push(rendered);
                continue;
            }
            let written = async {
                // launchd opens the log files but does not create their directory.
                for dir in log_dirs(&rendered.contents) {
                    files::create_dir(&dir).await?;
                }
                if self.scope == ServiceScope::System {
                    prepare_state_dir(rendered).await?;
                }
                files::write_rendered(rendered).await
            }
            .await;
            if let Err(e) = written {
                let step = format!("writing `{}` to {}", rendered.name, rendered.path.display());
                return Err(self.fail(step, e, &created, &updated).await);
            }
            match action {
                PlannedAction::Update { .. } => updated.push((rendered, action)),
                _ => created.push(rendered),
            }
        }

        for rendered in &created {
            if let Err(e) = self.load(&rendered.name, &rendered.path, false).await {
                let step = format!("loading `{}`", rendered.name);
                return Err(self.fail(step, e, &created, &updated).await);
            }
        }
        for (rendered, _) in &updated {
            let reloaded = async {
                let was_loaded = self.bootout(&rendered.name).await?;
                self.load(&rendered.name, &rendered.path, was_loaded).await
            }
            .await;
            if let Err(e) = reloaded {
                let step = format!("reloading `{}`", rendered.name);
                return Err(self.fail(step, e, &created, &updated).await);
            }
        }
        for rendered in &unchanged {
            let ensured = async {
                if self.print(&rendered.name).await?.is_none() {
                    self.load(&rendered.name, &rendered.path, false).await?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = ensured {
                let step = format!("loading `{}`", rendered.name);
                return Err(self.fail(step, e, &created, &updated).await);
            }
        }

        Ok(ApplyReport {
            created: created.iter().map(|r| r.name.clone()).collect(),
            updated: updated.iter().map(|(r, _)| r.name.clone()).collect(),
            unchanged: unchanged.iter().map(|r| r.name.clone()).collect(),
        })
    }

    async fn fail(
        &self,
        step: String,
        source: ServiceError,
        created: &[&Rendered],
        updated: &[(&Rendered, &PlannedAction)],
    ) -> ServiceError {
        tracing::warn!("apply failed while {step}: {source}; rolling back");
        let mut rollback = Rollback::default();
        for r in created {
            if let Err(e) = self.bootout(&r.name).await {
                rollback
                    .failures
                    .push(format!("booting out `{}`: {e}", r.name));
            }
            match files::remove_rendered(r).await {
                Ok(_) => rollback.removed.push(r.name.clone()),
                Err(e) => rollback.failures.push(e.to_string()),
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
            let restored = async {
                files::restore_previous(r, previous, *previous_mode, previous_secret.as_ref())
                    .await?;
                let was_loaded = self.bootout(&r.name).await?;
                self.load(&r.name, &r.path, was_loaded).await
            }
            .await;
            match restored {
                Ok(()) => rollback.restored.push(r.name.clone()),
                Err(e) => rollback
                    .failures
                    .push(format!("restoring `{}`: {e}", r.name)),
            }
        }
        ServiceError::Apply {
            step,
            source: Box::new(source),
            rollback,
        }
    }

    /// `enable` then `bootstrap`. A job disabled in launchd's database cannot
    /// be bootstrapped, hence the order. Right after a `bootout`
    /// (`after_bootout`) launchd may still be tearing the old job down, so a
    /// failed bootstrap is then retried a few times before it counts.
    async fn load(
        &self,
        name: &ServiceName,
        plist: &Path,
        after_bootout: bool,
    ) -> Result<(), ServiceError> {
        self.launchctl_ok(&["enable", &self.target(name)]).await?;
        let plist = plist.to_string_lossy();
        let mut attempt = 0;
        loop {
            match self
                .launchctl_ok(&["bootstrap", &self.domain, &plist])
                .await
            {
                Ok(_) => return Ok(()),
                Err(ServiceError::Command { .. }) if after_bootout && attempt < 4 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `bootout <domain>/<label>`; `Ok(false)` when it was not loaded.
    async fn bootout(&self, name: &ServiceName) -> Result<bool, ServiceError> {
        let target = self.target(name);
        let output = self.launchctl(&["bootout", &target]).await?;
        if output.status.success() {
            return Ok(true);
        }
        if not_loaded(&output) {
            return Ok(false);
        }
        Err(command_error(&["bootout", &target], &output))
    }

    /// `print <domain>/<label>`, parsed; `None` when it is not loaded.
    async fn print(&self, name: &ServiceName) -> Result<Option<PrintedJob>, ServiceError> {
        let target = self.target(name);
        let output = self.launchctl(&["print", &target]).await?;
        if output.status.success() {
            return Ok(Some(parse_print_job(&String::from_utf8_lossy(
                &output.stdout,
            ))));
        }
        if not_loaded(&output) {
            return Ok(None);
        }
        Err(command_error(&["print", &target], &output))
    }

    /// Loads each job that is not loaded (`enable` + `bootstrap`, which
    /// starts it: our plists are `RunAtLoad`), else `kickstart`s it.
    pub async fn start(&self, names: &[ServiceName]) -> Result<(), ServiceError> {
        for name in names {
            if self.print(name).await?.is_none() {
                self.load(name, &self.plist_path(name), false).await?;
            } else {
                self.launchctl_ok(&["kickstart", &self.target(name)])
                    .await?;
            }
        }
        Ok(())
    }

    /// `bootout` each job: launchd stops it (SIGTERM, then SIGKILL after
    /// its exit timeout) and would otherwise restart it (`KeepAlive`). The
    /// plist stays, so [`LaunchdBackend::start`] and the next login or
    /// boot load it again.
    pub async fn stop(&self, names: &[ServiceName]) -> Result<(), ServiceError> {
        for name in names {
            self.bootout(name).await?;
        }
        Ok(())
    }

    /// `kickstart -k <domain>/<label>` for each: kill and start again.
    pub async fn restart(&self, names: &[ServiceName]) -> Result<(), ServiceError> {
        for name in names {
            self.launchctl_ok(&["kickstart", "-k", &self.target(name)])
                .await?;
        }
        Ok(())
    }

    /// Our plists in the agents directory plus our labels loaded in the
    /// domain (`launchctl print <domain>`).
    pub async fn list_installed(&self) -> Result<Vec<ServiceName>, ServiceError> {
        let mut names: BTreeSet<ServiceName> = files::list_names(&self.agents_dir, PLIST_SUFFIX)
            .await?
            .into_iter()
            .collect();
        let listing = self.launchctl_ok(&["print", &self.domain]).await?;
        names.extend(
            parse_print_domain_services(&listing)
                .into_iter()
                .filter_map(|label| ServiceName::new(label).ok()),
        );
        Ok(names.into_iter().collect())
    }

    /// State from `launchctl print`, in systemd's words where they fit:
    /// `active`/`running` while running, `failed` after a non-zero exit,
    /// otherwise `inactive`; `sub_state` is launchd's own `state`.
    pub async fn status(&self, name: &ServiceName) -> Result<ServiceStatus, ServiceError> {
        let file = self.plist_path(name);
        let on_disk = file.exists().then_some(file);
        let Some(job) = self.print(name).await? else {
            return Ok(ServiceStatus {
                name: name.clone(),
                loaded: false,
                active_state: "inactive".into(),
                sub_state: "not loaded".into(),
                main_pid: None,
                n_restarts: None,
                exec_main_status: None,
                exec_main_code: None,
                unit_path: on_disk,
            });
        };
        let state = job.state.clone().unwrap_or_else(|| "unknown".into());
        let active_state = if state == "running" {
            "active"
        } else if job.last_exit_code.is_some_and(|c| c != 0) {
            "failed"
        } else {
            "inactive"
        };
        Ok(ServiceStatus {
            name: name.clone(),
            loaded: true,
            active_state: active_state.into(),
            sub_state: state,
            main_pid: job.pid,
            // launchd counts runs; every run after the first was a restart.
            n_restarts: job.runs.map(|r| r.saturating_sub(1)),
            exec_main_status: job.last_exit_code,
            exec_main_code: None,
            unit_path: job.path.or(on_disk),
        })
    }

    /// `bootout` each service and delete its plist; names neither loaded nor
    /// on disk are skipped. Returns the names that were there.
    pub async fn remove(&self, names: &[ServiceName]) -> Result<Vec<ServiceName>, ServiceError> {
        let mut removed = Vec::new();
        for name in names {
            let was_loaded = self.bootout(name).await?;
            let had_file = files::remove_file(name, &self.plist_path(name)).await?;
            if was_loaded || had_file {
                removed.push(name.clone());
            }
        }
        Ok(removed)
    }

    /// `tail` of the service's two log files (`-F` follows them, across
    /// rotation and before they exist).
    pub fn logs_command(&self, name: &ServiceName, follow: bool) -> std::process::Command {
        let (out, err) = self.plist_log_paths(name).unwrap_or_else(|| {
            (
                PathBuf::from(format!("{name}.out.log")),
                PathBuf::from(format!("{name}.err.log")),
            )
        });
        let mut cmd = std::process::Command::new("tail");
        cmd.args(["-n", "100"]);
        if follow {
            cmd.arg("-F");
        }
        cmd.arg(out).arg(err);
        cmd
    }

    /// The log paths in the installed plist (the spec that chose them is not
    /// at hand here).
    fn plist_log_paths(&self, name: &ServiceName) -> Option<(PathBuf, PathBuf)> {
        let dict = plist::Value::from_file(self.plist_path(name))
            .ok()?
            .into_dictionary()?;
        let get = |key: &str| dict.get(key)?.as_string().map(PathBuf::from);
        Some((get("StandardOutPath")?, get("StandardErrorPath")?))
    }

    async fn launchctl(&self, args: &[&str]) -> Result<std::process::Output, ServiceError> {
        let program = self
            .host
            .find_program("launchctl")
            .unwrap_or_else(|| PathBuf::from("launchctl"));
        tracing::debug!("launchctl {}", args.join(" "));
        tokio::process::Command::new(&program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| ServiceError::Spawn {
                command: format!("{} {}", program.display(), args.join(" ")),
                source,
            })
    }

    /// Runs `launchctl` and returns its stdout; a non-zero exit is an error.
    async fn launchctl_ok(&self, args: &[&str]) -> Result<String, ServiceError> {
        let output = self.launchctl(args).await?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(command_error(args, &output))
        }
    }
}

fn not_loaded(output: &std::process::Output) -> bool {
    let stderr = String::from_utf8_lossy(&output.stderr);
    output
        .status
        .code()
        .is_some_and(|c| NOT_LOADED_CODES.contains(&c))
        || stderr.contains("Could not find service")
        || stderr.contains("No such process")
}

fn command_error(args: &[&str], output: &std::process::Output) -> ServiceError {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let text = if stderr.is_empty() {
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    } else {
        stderr
    };
    ServiceError::Command {
        command: format!("launchctl {}", args.join(" ")),
        status: output.status.to_string(),
        output: text,
    }
}

/// For a daemon with an unprivileged account: creates its state directory
/// and hands it, with everything in it, to that account — launchd does
/// neither, and a database left root-owned by an earlier install must become
/// writable (mode 0700: no other account reads a circle's data); and makes
/// its log files that account's, since launchd opens them as the daemon's
/// user.
async fn prepare_state_dir(rendered: &Rendered) -> Result<(), ServiceError> {
    let Some(daemon) = render::daemon_files(&rendered.contents) else {
        return Ok(());
    };
    if let Some(dir) = &daemon.state_dir {
        files::create_dir(dir).await?;
    }
    let name = rendered.name.clone();
    let path = daemon
        .state_dir
        .clone()
        .unwrap_or_else(|| rendered.path.clone());
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = &daemon.state_dir {
            crate::account::hand_over(dir, &daemon.user, &daemon.group)?;
        }
        for log in &daemon.logs {
            crate::account::hand_over_file(log, &daemon.user, &daemon.group)?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r)
    .map_err(|source| ServiceError::Write { name, path, source })
}

/// Directories of `StandardOutPath` and `StandardErrorPath` in a rendered plist.
fn log_dirs(contents: &str) -> Vec<PathBuf> {
    let Some(dict) = plist::Value::from_reader_xml(contents.as_bytes())
        .ok()
        .and_then(plist::Value::into_dictionary)
    else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = ["StandardOutPath", "StandardErrorPath"]
        .iter()
        .filter_map(|k| dict.get(k)?.as_string())
        .filter_map(|p| Path::new(p).parent().map(Path::to_path_buf))
        .collect();
    dirs.dedup();
    dirs
}

/// Parses the top level of `launchctl print <domain>/<label>` (lines
/// `\tkey = value`, one tab deep; nested blocks are skipped).
pub fn parse_print_job(text: &str) -> PrintedJob {
    let mut job = PrintedJob::default();
    let mut depth = 0usize;
    for line in text.lines() {
        let trimmed = line.trim();
        // The first `{` opens the job itself, whose lines are the top level.
        if trimmed.ends_with('{') {
            depth += 1;
            continue;
        }
        if trimmed == "}" {
            depth = depth.saturating_sub(1);
            continue;
        }
        if depth != 1 {
            continue;
        }
        let Some((key, value)) = trimmed.split_once(" = ") else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "state" if job.state.is_none() => job.state = Some(value.to_string()),
            "pid" if job.pid.is_none() => job.pid = value.parse().ok(),
            "runs" if job.runs.is_none() => job.runs = value.parse().ok(),
            "path" if job.path.is_none() => job.path = Some(PathBuf::from(value)),
            "last exit code" if job.last_exit_code.is_none() => {
                // "(never exited)" leaves it unset.
                job.last_exit_code = value.parse().ok();
            }
            _ => {}
        }
    }
    job
}

/// The labels in the `services = { … }` block of `launchctl print <domain>`
/// (lines `PID  STATUS  LABEL`).
pub fn parse_print_domain_services(text: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if !inside {
            inside = trimmed == "services = {";
            continue;
        }
        if trimmed == "}" {
            break;
        }
        if let Some(label) = trimmed.split_whitespace().last() {
            labels.push(label.to_string());
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from `launchctl print gui/501/<label>` on macOS 14.
    const PRINT_JOB: &str = "gui/501/tf.ourworld.circles.circle-ws-server = {
\tactive count = 1
\tpath = /Users/me/Library/LaunchAgents/tf.ourworld.circles.circle-ws-server.plist
\ttype = LaunchAgent
\tstate = running

\tprogram = /usr/local/bin/server
\targuments = {
\t\t/usr/local/bin/server
\t\t--port
\t\t8080
\t}

\tstdout path = /Users/me/launch_data/logs/x.out.log
\truns = 3
\tpid = 4242
\timmediate reason = speculative
\tlast exit code = 1
\tspawn type = daemon (3)
\tenvironment = {
\t\tstate = bogus-nested-value
\t}
}
";

    #[test]
    fn parses_the_state_of_a_job() {
        let job = parse_print_job(PRINT_JOB);
        assert_eq!(job.state.as_deref(), Some("running"));
        assert_eq!(job.pid, Some(4242));
        assert_eq!(job.runs, Some(3));
        assert_eq!(job.last_exit_code, Some(1));
        assert_eq!(
            job.path.as_deref(),
            Some(Path::new(
                "/Users/me/Library/LaunchAgents/tf.ourworld.circles.circle-ws-server.plist"
            ))
        );
    }

    #[test]
    fn a_job_that_never_exited_has_no_exit_code() {
        let job = parse_print_job(
            "gui/0/x = {\n\tstate = waiting\n\tlast exit code = (never exited)\n}\n",
        );
        assert_eq!(job.state.as_deref(), Some("waiting"));
        assert_eq!(job.last_exit_code, None);
        assert_eq!(job.pid, None);
    }

    #[test]
    fn lists_the_services_of_a_domain() {
        let text = "gui/501 = {
\ttype = login
\tservices = {
\t\t       0      -     com.apple.something
\t\t    4242      0     tf.ourworld.circles.circle-ws-server
\t\t       0     78     tf.ourworld.circles-not-ours
\t}
\tunmanaged processes = {
\t\t1 2 not.a.service
\t}
}
";
        assert_eq!(
            parse_print_domain_services(text),
            [
                "com.apple.something",
                "tf.ourworld.circles.circle-ws-server",
                "tf.ourworld.circles-not-ours"
            ]
        );
    }
}
