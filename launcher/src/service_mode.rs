//! Service mode: circles as systemd units or launchd jobs, left running.
//!
//! `launcher --use-service-manager --worker-binary PATH -c PK[:init.rhai]…`
//! validates everything, renders one worker service per circle plus the one
//! WebSocket server service, plans against what is installed (unchanged /
//! update / create, refusing foreign files), applies the plan as one
//! transaction (the services crate rolls back on failure), waits until each
//! new or changed worker is ready, sends its init script, prints the status
//! table and exits.
//!
//! The server service does not list the circles: it learns them from the
//! workers' registration in Redis, so a later run that adds circles leaves it
//! untouched and it serves old and new alike.
//!
//! System services run unprivileged ([`service_account`]): each worker
//! writes only its circle's database directory ([`db_dir`]) and gets the
//! Redis URL through its environment — from a 0600 file when the URL holds a
//! password. The data directory defaults to the platform's place
//! ([`default_data_dir`]), so `status`, `logs` and `cleanup` work from
//! anywhere; what an earlier, root-run install left is taken over by
//! [`crate::migrate`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use circles_dispatcher::protocol::{ENV_RUST_LOG, worker_heartbeat_key};
use circles_dispatcher::{CirclePublicKey, Dispatcher, RedisUrl};
use circles_services::{
    BackendKind, Plan, PlannedAction, ResourceLimits, RestartPolicy, SecretEnv, ServiceBackend,
    ServiceName, ServiceScope, ServiceSpec, ServiceTemplate, Templates,
};

use crate::cli::{Ceiling, CommonArgs, LaunchArgs};
use crate::error::LaunchError;
use crate::service_record::{SECRETS_DIR, ServiceRecord};
use crate::settings::{
    CircleSpec, DEFAULT_SERVER_NOFILE, LaunchSettings, Program, WorkerCeilings, check_binary,
};
use crate::status::{StatusRow, render_table};

pub use circles_deploy::kinds::{SERVER_SERVICE_NAME, WORKER_SERVICE_PREFIX};
pub use circles_deploy::{
    circle_of, db_dir, server_service_name, service_account, task_memory_budget_mb,
    worker_service_name,
};

/// How long to wait for a worker's heartbeat where the service manager
/// cannot tell readiness (launchd, fallback).
const HEARTBEAT_WAIT: Duration = Duration::from_secs(30);

/// The service backend for these flags (`--system`/`--user`, `--templates-dir`).
pub async fn backend(common: &CommonArgs) -> Result<ServiceBackend, LaunchError> {
    let scope = if common.system {
        Some(ServiceScope::System)
    } else if common.user {
        Some(ServiceScope::User)
    } else {
        None
    };
    let templates = match &common.templates_dir {
        Some(dir) => Templates::from_dir(dir)?,
        None => Templates::embedded(),
    };
    Ok(ServiceBackend::detect(scope, templates).await?)
}

/// What one service-mode launch did.
#[derive(Debug, Default)]
pub struct LaunchReport {
    /// Services installed by this run.
    pub created: Vec<ServiceName>,
    /// Services rewritten and restarted.
    pub updated: Vec<ServiceName>,
    /// Services left alone.
    pub unchanged: Vec<ServiceName>,
    /// Init scripts that failed: (circle name, message).
    pub init_failures: Vec<(String, String)>,
}

/// The whole service-mode launch; see the module docs.
pub async fn launch(args: &LaunchArgs, common: &CommonArgs) -> Result<LaunchReport, LaunchError> {
    // Validation first: nothing below touches the system until the
    // migration's stop and `apply`.
    let worker_binary = args
        .worker_binary
        .as_deref()
        .ok_or(LaunchError::WorkerBinaryRequired)?;
    let worker_binary = check_binary("worker", worker_binary)?;
    let server = resolve_server_program(args.server_binary.as_deref(), &worker_binary)?;
    let backend = backend(common).await?;
    tracing::info!("service manager: {}", backend.describe());
    for missing in backend.unavailable_features() {
        tracing::warn!("not available with {}: {missing}", backend.describe());
    }
    let data_dir = data_dir(common, &backend)?;
    check_data_dir(&backend, &data_dir)?;
    let mut migration = crate::migrate::discover(&backend, &data_dir).await?;
    let (mut settings, resolved) = LaunchSettings::resolve_without_ports(
        args,
        common,
        &data_dir,
        migration.earlier_data_dir.as_deref(),
    )?;
    migration.retain(&settings.circles.iter().map(|c| c.key).collect::<Vec<_>>());
    let mut record = ServiceRecord::load(&settings.data_dir);
    if let Some(earlier) = crate::migrate::earlier_record(&migration, &settings.data_dir) {
        record.adopt(earlier);
    }
    let installed = record.clone();
    record.merge(args, common, &mut settings)?;
    check_service_ports(&backend, &settings, &installed).await?;
    if !args.dry_run {
        crate::redis_local::check(&settings.redis_url, false).await?;
    }
    let specs = build_specs(&settings, &record.circle_ports(), &worker_binary, &server)?;
    let plan = backend.plan(&specs).await?;

    if args.dry_run {
        print_dry_run(&backend, &plan, &migration, &settings)?;
        return Ok(LaunchReport::default());
    }

    resolved.persist_new_keys()?;
    prepare_data_dir(&backend, &settings)?;
    crate::migrate::copy_databases(&backend, &migration).await?;
    let started = Instant::now();
    let applied = match backend.apply(&plan).await {
        Ok(applied) => applied,
        Err(e) => {
            crate::migrate::undo(&backend, &migration.databases).await;
            return Err(e.into());
        }
    };
    for copy in &migration.databases {
        eprintln!(
            "note: circle {} now keeps its database in {}; the earlier copy {} was left in place",
            copy.circle,
            copy.to.display(),
            copy.from.display()
        );
    }
    // Recorded at once: a run interrupted during the init scripts must not
    // leave the next run without the installed server's settings.
    record.save(&settings.data_dir)?;
    tracing::info!(
        created = applied.created.len(),
        updated = applied.updated.len(),
        unchanged = applied.unchanged.len(),
        elapsed = ?started.elapsed(),
        "services applied"
    );

    // Init scripts go to circles whose worker was (re)started by this run,
    // and again to those whose last init script failed: the cause may have
    // been a timeout or a Redis hiccup rather than the script, and running
    // again is what the failure message tells the operator to do.
    let touched: Vec<&CircleSpec> = settings
        .circles
        .iter()
        .filter(|c| {
            let name = worker_service_name(&c.key);
            let failed_before = record
                .circles
                .get(&c.key.to_hex())
                .is_some_and(|r| r.init.starts_with("error:"));
            applied.created.contains(&name) || applied.updated.contains(&name) || failed_before
        })
        .collect();
    let dispatcher = Dispatcher::connect(&settings.redis_url, "launcher").await?;
    if backend.kind() != BackendKind::Systemd {
        // systemd's start job ends at READY=1; elsewhere, wait for the
        // heartbeat — and undo this run's installs if it never comes.
        for c in &touched {
            if let Err(e) = wait_for_heartbeat(&dispatcher, &c.key, HEARTBEAT_WAIT).await {
                undo_apply(&backend, &plan, &applied).await;
                crate::migrate::undo(&backend, &migration.databases).await;
                installed.save(&settings.data_dir)?;
                return Err(e);
            }
        }
    }
    let mut init_failures = Vec::new();
    for (key, outcome) in
        crate::init::run_init_scripts(&dispatcher, touched, settings.init_timeout).await
    {
        let entry = record
            .circles
            .get_mut(&key.to_hex())
            .expect("merged circles are recorded");
        if let crate::init::InitOutcome::Failed(message) = &outcome {
            init_failures.push((entry.name.clone(), message.clone()));
        }
        entry.init = outcome.summary();
    }
    record.save(&settings.data_dir)?;

    let rows = gather_rows(&backend, Some(&dispatcher), &record).await?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}: {} created, {} updated, {} unchanged",
        backend.describe(),
        applied.created.len(),
        applied.updated.len(),
        applied.unchanged.len()
    );
    let _ = writeln!(out, "{}", render_table(&rows));
    Ok(LaunchReport {
        created: applied.created,
        updated: applied.updated,
        unchanged: applied.unchanged,
        init_failures,
    })
}

/// Renders the worker and server services for these settings.
/// `circle_ports` are every installed circle's own port (from the record),
/// so the one server keeps serving them all.
pub fn build_specs(
    settings: &LaunchSettings,
    circle_ports: &[(String, u16)],
    worker_binary: &Path,
    server: &Program,
) -> Result<Vec<ServiceSpec>, LaunchError> {
    let worker_hash = file_sha256(worker_binary)?;
    let server_hash = file_sha256(&server.path)?;
    // The Redis URL reaches the programs through their environment
    // (REDIS_URL), never their command line; with credentials, only through
    // a file of mode 0600.
    let mut env = BTreeMap::from([(ENV_RUST_LOG.to_string(), settings.log_level.to_string())]);
    let mut secret_env = SecretEnv::default();
    circles_deploy::redis_url_env(&settings.redis_url, &mut env, &mut secret_env);
    // What every circle service shares: logging, Redis, an unprivileged
    // account, readiness by sd_notify, the restart policy.
    let service =
        |name, template, description: String, program: &Path, args, fingerprint| ServiceSpec {
            name,
            template,
            description,
            program: program.to_path_buf(),
            args,
            env: env.clone(),
            secret_env: secret_env.clone(),
            secrets_dir: settings.data_dir.join(SECRETS_DIR),
            account: service_account(),
            state_dir: None,
            limits: ResourceLimits::default(),
            working_directory: settings.data_dir.clone(),
            read_write_paths: Vec::new(),
            log_dir: settings.log_dir(),
            notify_ready: true,
            restart: RestartPolicy::default(),
            fingerprint,
        };
    let mut specs = Vec::new();
    for c in &settings.circles {
        let ceilings = c.ceilings.or(WorkerCeilings::DEFAULT);
        specs.push(circles_deploy::worker_service_spec(
            &circles_deploy::WorkerService {
                key: c.key,
                name: c.name.clone(),
                program: worker_binary.to_path_buf(),
                leading_args: Vec::new(),
                program_sha256: worker_hash.clone(),
                redis_url: settings.redis_url.clone(),
                data_dir: settings.data_dir.clone(),
                log_dir: settings.log_dir(),
                log_level: settings.log_level.to_string(),
                init_script: c.init_script.as_ref().map(|s| s.source.clone()),
                extra_env: BTreeMap::new(),
                limits: ResourceLimits {
                    memory_max: ceilings.memory_max.and_then(Ceiling::get),
                    tasks_max: ceilings.tasks_max.and_then(Ceiling::get),
                    nofile: ceilings.limit_nofile,
                },
            },
        ));
    }
    let mut server_args = server.leading_args.clone();
    server_args.extend([
        "--host".into(),
        settings.host.clone(),
        "--port".into(),
        settings.port.to_string(),
    ]);
    // At boot Redis may come up after the server.
    server_args.push("--wait-for-redis".into());
    if settings.enable_auth {
        server_args.push("--enable-auth".into());
    }
    let mut ports: BTreeMap<String, u16> = circle_ports.iter().cloned().collect();
    ports.extend(
        settings
            .circles
            .iter()
            .filter_map(|c| Some((c.key.to_hex(), c.port?))),
    );
    for (key, port) in ports {
        server_args.extend(["--circle-port".into(), format!("{key}={port}")]);
    }
    let mut server_spec = service(
        server_service_name(),
        ServiceTemplate::WsServer,
        "circles WebSocket server".into(),
        &server.path,
        server_args,
        BTreeMap::from([("server-sha256".to_string(), server_hash)]),
    );
    server_spec.limits.nofile = Some(settings.server_nofile.unwrap_or(DEFAULT_SERVER_NOFILE));
    specs.push(server_spec);
    for spec in &specs {
        spec.validate()?;
    }
    Ok(specs)
}

/// `--server-binary`, else `server` next to the worker binary, next to the
/// launcher or on PATH, else the launcher itself (`launcher serve`).
fn resolve_server_program(
    given: Option<&Path>,
    worker_binary: &Path,
) -> Result<Program, LaunchError> {
    if given.is_none()
        && let Ok(path) = check_binary("server", &worker_binary.with_file_name("server"))
    {
        return Ok(Program {
            path,
            leading_args: Vec::new(),
        });
    }
    crate::settings::resolve_server_program(given)
}

/// Ports must be free, except those the installed server (per the record)
/// already holds while it runs.
async fn check_service_ports(
    backend: &ServiceBackend,
    settings: &LaunchSettings,
    installed: &ServiceRecord,
) -> Result<(), LaunchError> {
    let server_running = backend
        .status(&server_service_name())
        .await
        .map(|s| s.main_pid.is_some() || s.active_state == "active")
        .unwrap_or(false);
    let held = |port: u16| {
        server_running
            && (installed.port == Some(port)
                || installed.circles.values().any(|c| c.port == Some(port)))
    };
    let wanted = std::iter::once((settings.port, "the WebSocket server".to_string())).chain(
        settings
            .circles
            .iter()
            .filter_map(|c| Some((c.port?, format!("circle {}", c.name)))),
    );
    for (port, purpose) in wanted {
        if !held(port) {
            crate::settings::check_port_free(&settings.host, port, &purpose)?;
        }
    }
    Ok(())
}

/// Undoes an apply whose services never became ready (where the service
/// manager cannot tell readiness itself): removes what it created, and puts
/// back and restarts what it changed.
async fn undo_apply(
    backend: &ServiceBackend,
    plan: &Plan,
    applied: &circles_services::ApplyReport,
) {
    match backend.remove(&applied.created).await {
        Ok(removed) => tracing::warn!(
            count = removed.len(),
            "removed the services this run installed"
        ),
        Err(e) => tracing::error!("could not remove the services this run installed: {e}"),
    }
    let restore = Plan {
        items: plan
            .items
            .iter()
            .filter_map(|(rendered, action)| match action {
                PlannedAction::Update {
                    previous,
                    previous_mode,
                    previous_secret,
                } => Some((
                    circles_services::Rendered {
                        contents: previous.clone(),
                        mode: *previous_mode,
                        secret: previous_secret.clone(),
                        ..rendered.clone()
                    },
                    PlannedAction::Update {
                        previous: rendered.contents.clone(),
                        previous_mode: rendered.mode,
                        previous_secret: rendered.secret.clone(),
                    },
                )),
                _ => None,
            })
            .collect(),
    };
    if !restore.items.is_empty() {
        match backend.apply(&restore).await {
            Ok(r) => tracing::warn!(
                count = r.updated.len(),
                "restored the services this run changed"
            ),
            Err(e) => tracing::error!("could not restore the services this run changed: {e}"),
        }
    }
}

/// Prints the plan: every file with its hardening, secrets replaced by
/// their redacted form (a plist holding the Redis password shows `***`; an
/// environment file is named, never shown).
fn print_dry_run(
    backend: &ServiceBackend,
    plan: &Plan,
    migration: &crate::migrate::Migration,
    settings: &LaunchSettings,
) -> Result<(), LaunchError> {
    let redis_url = RedisUrl::new(settings.redis_url.clone());
    let mut out = std::io::stdout().lock();
    let mut w =
        |s: String| writeln!(out, "{s}").map_err(|e| LaunchError::io("writing to stdout", e));
    w(format!(
        "dry run: {} — nothing is changed\n",
        backend.describe()
    ))?;
    for line in crate::migrate::describe(migration) {
        w(line)?;
    }
    for (rendered, action) in &plan.items {
        let verb = match action {
            PlannedAction::Create => "create, enable and start",
            PlannedAction::Update { .. } => "rewrite and restart",
            PlannedAction::Unchanged => "unchanged (started if not running)",
        };
        w(format!(
            "# {}: {verb}\n# file: {} (mode {:04o})",
            rendered.name,
            rendered.path.display(),
            rendered.mode
        ))?;
        if let Some(secret) = &rendered.secret {
            w(format!(
                "# secret environment file: {} (mode 0600, not shown)",
                secret.path.display()
            ))?;
        }
        if !matches!(action, PlannedAction::Unchanged) {
            w(shown_contents(&rendered.contents, &redis_url))?;
        }
    }
    Ok(())
}

/// A rendered file as the dry run may show it: the Redis URL's password
/// replaced by `***`. A plist is redacted in its parsed strings — its text
/// holds the URL XML-escaped (`&amp;`), which a plain replace misses.
fn shown_contents(contents: &str, redis_url: &RedisUrl) -> String {
    if !redis_url.has_credentials() {
        return contents.to_string();
    }
    let (secret, shown) = (redis_url.expose_secret(), redis_url.redacted());
    circles_services::launchd::render::replace_in_strings(contents, secret, &shown)
        .unwrap_or_else(|| contents.replace(secret, &shown))
}

/// Where service mode keeps its data: `--data-dir`, else
/// [`default_data_dir`] for this backend.
pub fn data_dir(common: &CommonArgs, backend: &ServiceBackend) -> Result<PathBuf, LaunchError> {
    match &common.data_dir {
        Some(dir) => std::path::absolute(dir).map_err(|source| LaunchError::DataDir {
            path: dir.clone(),
            source,
        }),
        None => default_data_dir(backend.kind(), backend.scope()),
    }
}

/// The platform's place for a service's data, so `launcher status`,
/// `logs` and `cleanup` find it from any working directory:
/// `/var/lib/circles` for system services (systemd's `StateDirectory=`
/// root; `/Library/Application Support/tf.ourworld.circles` for launchd
/// daemons), the per-user data directory of the `directories` crate for user
/// services (`$XDG_DATA_HOME/circles`, by default `~/.local/share/circles`;
/// `~/Library/Application Support/tf.ourworld.circles` on macOS).
pub fn default_data_dir(kind: BackendKind, scope: ServiceScope) -> Result<PathBuf, LaunchError> {
    match (kind, scope) {
        (BackendKind::Launchd, ServiceScope::System) => Ok(PathBuf::from(
            "/Library/Application Support/tf.ourworld.circles",
        )),
        (_, ServiceScope::System) => Ok(PathBuf::from("/var/lib/circles")),
        (_, ServiceScope::User) => directories::ProjectDirs::from("tf", "ourworld", "circles")
            .map(|dirs| dirs.data_dir().to_path_buf())
            .ok_or_else(|| {
                LaunchError::io(
                    "finding the per-user data directory",
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no home directory (HOME is not set); pass --data-dir",
                    ),
                )
            }),
    }
}

/// systemd system services keep their databases in a `StateDirectory=`,
/// which systemd hands to each service's dynamic user: it must lie under
/// /var/lib.
fn check_data_dir(backend: &ServiceBackend, data_dir: &Path) -> Result<(), LaunchError> {
    if backend.kind() == BackendKind::Systemd
        && backend.scope() == ServiceScope::System
        && circles_services::systemd::render::state_directory(&data_dir.join("db")).is_none()
    {
        return Err(LaunchError::DataDirNotState {
            path: data_dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Makes the data directory before the services start: the directories on
/// the way to each worker's database traversable by the services' accounts
/// (0755: they hold nothing secret), `secrets/` private (0700), and the log
/// directory launchd writes to.
fn prepare_data_dir(
    backend: &ServiceBackend,
    settings: &LaunchSettings,
) -> Result<(), LaunchError> {
    use std::os::unix::fs::PermissionsExt;
    let dir_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LaunchError::DataDir { path, source }
    };
    let db_root = settings.data_dir.join("db");
    for dir in [&settings.data_dir, &db_root] {
        std::fs::create_dir_all(dir).map_err(dir_error(dir))?;
        if backend.scope() == ServiceScope::System {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(dir_error(dir))?;
        }
    }
    let secrets = settings.data_dir.join(SECRETS_DIR);
    crate::settings::create_private_dir(&secrets).map_err(dir_error(&secrets))?;
    if backend.kind() != BackendKind::Systemd {
        let logs = settings.log_dir();
        std::fs::create_dir_all(&logs).map_err(dir_error(&logs))?;
    }
    // systemd makes a system service's StateDirectory= itself (owned by its
    // dynamic user), and the launchd backend a daemon's; a user service's
    // writable directory must exist before it starts.
    if backend.scope() == ServiceScope::User {
        for c in &settings.circles {
            let db = db_dir(&settings.data_dir, &c.key);
            crate::settings::create_private_dir(&db).map_err(dir_error(&db))?;
        }
    }
    Ok(())
}

fn file_sha256(path: &Path) -> Result<String, LaunchError> {
    circles_deploy::file_sha256(path)
        .map_err(|e| LaunchError::io(format!("reading {}", path.display()), e))
}

/// Waits until the circle's worker heartbeat is in Redis.
async fn wait_for_heartbeat(
    dispatcher: &Dispatcher,
    key: &CirclePublicKey,
    timeout: Duration,
) -> Result<(), LaunchError> {
    let mut conn = dispatcher.connection();
    let start = Instant::now();
    loop {
        let beat: Option<String> = redis::cmd("GET")
            .arg(worker_heartbeat_key(key))
            .query_async(&mut conn)
            .await?;
        if beat.is_some() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(LaunchError::WorkerNotReady {
                circle: key.to_hex(),
                reason: format!(
                    "no heartbeat in Redis after {timeout:?}; see `launcher logs {key}`"
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Status rows for every installed circle service, enriched from Redis when
/// it answers; states, last exits and reasons from
/// `circles_deploy::status`, the same model direct mode and the supervisor
/// show.
async fn gather_rows(
    backend: &ServiceBackend,
    dispatcher: Option<&Dispatcher>,
    record: &ServiceRecord,
) -> Result<Vec<StatusRow>, LaunchError> {
    let names = backend.list_installed().await?;
    let mut conn = dispatcher.map(Dispatcher::connection);
    let mut rows = Vec::new();
    for name in names {
        let process = circles_deploy::status::service_status(backend, &name).await?;
        let row = match circle_of(&name) {
            Some(key) => {
                let known = record.circles.get(&key.to_hex());
                let redis = match conn.as_mut() {
                    Some(conn) => crate::status::redis_view(conn, &key).await,
                    None => crate::status::RedisView::default(),
                };
                StatusRow::circle(
                    known.map_or_else(|| crate::settings::short_name(&key), |c| c.name.clone()),
                    &key,
                    &process,
                    &redis,
                    known.map_or_else(|| "-".to_string(), |c| c.init.clone()),
                    record.ws_url(&key),
                )
            }
            // The server, the supervisor, or a kind a newer version installed.
            None => StatusRow::service(
                circles_deploy::ServiceKind::of(&name).label(&name),
                &process,
                record.ws_url_root(),
            ),
        };
        rows.push(row);
    }
    Ok(rows)
}

/// Rows for `launcher status`: every installed circle service.
pub async fn status_rows(common: &CommonArgs) -> Result<Vec<StatusRow>, LaunchError> {
    let backend = backend(common).await?;
    let record = ServiceRecord::load(&data_dir(common, &backend)?);
    let url = record.redis_url(common);
    let dispatcher = Dispatcher::connect(url.expose_secret(), "launcher-status")
        .await
        .ok();
    if dispatcher.is_none() {
        tracing::warn!("Redis unreachable at {url}: queue depth and heartbeat unknown");
    }
    gather_rows(&backend, dispatcher.as_ref(), &record).await
}

/// `launcher logs <circle|server> [-f]`: the circle named by name, key, key
/// prefix or table cell (`circles_deploy::address`), among the circles of
/// the data directory's record, the installed services and direct-mode
/// runs; shows the journal (or launchd's log files) of its service, else
/// the log file of its last direct-mode run.
pub async fn logs(common: &CommonArgs, query: &str, follow: bool) -> anyhow::Result<ExitCode> {
    // A host without a service manager can still show direct-mode logs.
    let backend = match backend(common).await {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::debug!("no service manager ({e}); looking for direct-mode logs only");
            None
        }
    };
    // Circles are named in service mode's record, and a direct run's keys
    // and logs are in --data-dir (default ./launch_data).
    let service_dir = backend.as_ref().and_then(|b| data_dir(common, b).ok());
    let direct_dir = common
        .data_dir
        .clone()
        .unwrap_or_else(|| crate::cli::DEFAULT_DATA_DIR.into());
    let direct_dir = std::path::absolute(&direct_dir).map_err(|source| LaunchError::DataDir {
        path: direct_dir.clone(),
        source,
    })?;
    let installed = match &backend {
        Some(b) => b.list_installed().await.unwrap_or_default(),
        None => Vec::new(),
    };
    let mut cmd = if matches!(query, "server" | "ws-server") {
        let backend = backend.ok_or_else(|| {
            anyhow::anyhow!("no service manager here, so no installed WebSocket server (a direct run's server logs to the launcher's own output)")
        })?;
        backend.logs_command(&server_service_name(), follow)
    } else {
        let known = known_circles(service_dir.as_deref(), &direct_dir, &installed);
        let circle = circles_deploy::address::resolve(query, &known).map_err(LaunchError::from)?;
        let service = circle.key.map(|k| worker_service_name(&k));
        let direct_log = direct_dir.join("logs").join(format!("{}.log", circle.name));
        match (backend, service) {
            (Some(backend), Some(service)) if installed.contains(&service) => {
                backend.logs_command(&service, follow)
            }
            _ if direct_log.is_file() => {
                let mut tail = std::process::Command::new("tail");
                tail.args(["-n", "100"]);
                if follow {
                    tail.arg("-F");
                }
                tail.arg(&direct_log);
                tail
            }
            _ => anyhow::bail!(
                "circle {} has no installed service and no log file at {} (launched with another --data-dir?)",
                circle.name,
                direct_log.display()
            ),
        }
    };
    let status = tokio::process::Command::from(std::mem::replace(
        &mut cmd,
        std::process::Command::new("true"),
    ))
    .status()
    .await
    .map_err(|e| anyhow::anyhow!("cannot run {:?}: {e}", cmd.get_program()))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every circle a name can refer to here: those service mode's record
/// (in `record_dir`) names, those installed as services, and those
/// direct-mode runs (in `direct_dir`) made keys or logs for.
pub fn known_circles(
    record_dir: Option<&Path>,
    direct_dir: &Path,
    installed: &[ServiceName],
) -> Vec<circles_deploy::address::KnownCircle> {
    use circles_deploy::address::KnownCircle;
    let record = record_dir.map(ServiceRecord::load).unwrap_or_default();
    let mut known: Vec<KnownCircle> = Vec::new();
    let mut add = |circle: KnownCircle| {
        let same = known
            .iter_mut()
            .find(|k| k.name == circle.name || (circle.key.is_some() && k.key == circle.key));
        match same {
            Some(k) => {
                if k.key.is_none() {
                    k.key = circle.key;
                }
            }
            None => known.push(circle),
        }
    };
    for (hex, c) in &record.circles {
        if let Ok(key) = CirclePublicKey::parse(hex) {
            add(KnownCircle::new(c.name.clone(), key));
        }
    }
    for key in installed.iter().filter_map(circle_of) {
        add(KnownCircle::new(crate::settings::short_name(&key), key));
    }
    let files = |dir: &str, ext: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(direct_dir.join(dir))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                // launchd's `<service>.out.log` and the like are not circles.
                name.strip_suffix(ext)
                    .filter(|n| !n.contains('.'))
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        names
    };
    for name in files("keys", ".json") {
        let key =
            crate::settings::read_key_file(&crate::settings::key_file(direct_dir, &name)).ok();
        add(KnownCircle { name, key });
    }
    for name in files("logs", ".log") {
        add(KnownCircle { name, key: None });
    }
    known
}

/// Removes every service named under `tf.ourworld.circles.`, with the scope
/// and templates these flags select; then, best effort, the removed circles'
/// registration in Redis (so the server stops routing them) and the record
/// of the data directory.
///
/// Circle databases and generated keys stay: removing services never
/// deletes a circle's data (the README says where it is).
pub async fn cleanup(common: &CommonArgs) -> Result<Vec<ServiceName>, LaunchError> {
    let backend = backend(common).await?;
    let removed = backend.cleanup().await?;
    let data_dir = data_dir(common, &backend)?;
    let record = ServiceRecord::load(&data_dir);
    unregister(&record.redis_url(common), &removed).await;
    ServiceRecord::remove(&data_dir);
    Ok(removed)
}

/// Takes removed circles out of `rhai_circles`; a Redis that does not answer
/// is only worth a warning (the services are gone either way).
async fn unregister(redis_url: &RedisUrl, removed: &[ServiceName]) {
    let keys: Vec<String> = removed
        .iter()
        .filter_map(circle_of)
        .map(|k| k.to_hex())
        .collect();
    if keys.is_empty() {
        return;
    }
    let result = async {
        let d = Dispatcher::connect(redis_url.expose_secret(), "launcher-cleanup").await?;
        redis::cmd("SREM")
            .arg(circles_dispatcher::protocol::CIRCLES_SET)
            .arg(&keys)
            .query_async::<()>(&mut d.connection())
            .await?;
        Ok::<_, LaunchError>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!("removed circles stay registered in Redis ({e})");
    }
}

/// Removes every circle service (default scope: system for root, user
/// otherwise): stops, disables/boots out, deletes the files, reloads,
/// resets failed state. Idempotent; never touches a service without the
/// `tf.ourworld.circles.` prefix. Returns the names removed.
pub async fn cleanup_launcher() -> Result<Vec<String>, LaunchError> {
    let removed = cleanup(&CommonArgs::default()).await?;
    Ok(removed
        .into_iter()
        .map(|n| n.as_str().to_string())
        .collect())
}

/// Prints what cleanup removed.
pub fn print_removed(removed: &[ServiceName], json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let names: Vec<&str> = removed.iter().map(ServiceName::as_str).collect();
        writeln!(out, "{}", serde_json::json!({ "removed": names }))
    } else if removed.is_empty() {
        writeln!(out, "no circle services installed; nothing to remove")
    } else {
        for name in removed {
            writeln!(out, "removed {name}")?;
        }
        writeln!(out, "{} circle service(s) removed", removed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_budget_is_a_quarter_of_the_ceiling() {
        assert_eq!(task_memory_budget_mb(1 << 30), 256, "the worker's default");
        assert_eq!(task_memory_budget_mb(96 << 20), 24);
        assert_eq!(task_memory_budget_mb(16 << 20), 4);
        assert_eq!(
            task_memory_budget_mb(1),
            1,
            "never 0, which means unlimited"
        );
    }
}
