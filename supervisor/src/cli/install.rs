//! `supervisor install` / `uninstall`: the supervisor as the service
//! `tf.ourworld.circles.supervisor` (systemd unit or launchd job, from
//! `service_templates/*/supervisor.*`), running this binary with the daemon
//! options given. `launcher cleanup` removes it too (everything under
//! `tf.ourworld.circles.`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use circles_deploy::supervisor_service_name;
use circles_services::{
    RestartPolicy, ServiceBackend, ServiceScope, ServiceSpec, ServiceTemplate, Templates,
};
use clap::Args;

use super::DaemonArgs;

/// System or user services.
#[derive(Args, Debug, Clone)]
pub struct ScopeArgs {
    /// System service (default when root).
    #[arg(long, conflicts_with = "user")]
    pub system: bool,
    /// Per-user service (default otherwise).
    #[arg(long)]
    pub user: bool,
}

impl ScopeArgs {
    fn scope(&self) -> Option<ServiceScope> {
        if self.system {
            Some(ServiceScope::System)
        } else if self.user {
            Some(ServiceScope::User)
        } else {
            None
        }
    }
}

/// `supervisor install …`
#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Where to install.
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// The daemon's options, as the service will run it.
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Print the service file, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The service spec for these daemon options; pure apart from resolving
/// paths and hashing this binary.
fn supervisor_spec(args: &InstallArgs, backend: &ServiceBackend) -> anyhow::Result<ServiceSpec> {
    let d = &args.daemon;
    let program = std::env::current_exe().context("locating the supervisor binary")?;
    let data_dir = std::path::absolute(&d.data_dir)?;
    let mut cli_args = vec![
        "--bind".to_string(),
        d.bind.to_string(),
        "--port".into(),
        d.port.to_string(),
        "--namespace".into(),
        d.namespace.clone(),
        "--data-dir".into(),
        data_dir.to_string_lossy().into_owned(),
        "--ws-url".into(),
        d.ws_url.clone(),
    ];
    if let Some(m) = d.manager {
        cli_args.extend(["--manager".into(), m.to_string()]);
    }
    if let Some(p) = &d.secrets_file {
        cli_args.extend([
            "--secrets-file".into(),
            std::path::absolute(p)?.to_string_lossy().into_owned(),
        ]);
    }
    if let Some(p) = &d.worker_binary {
        cli_args.extend([
            "--worker-binary".into(),
            std::path::absolute(p)?.to_string_lossy().into_owned(),
        ]);
    }
    let mut env = BTreeMap::from([("RUST_LOG".to_string(), "info".to_string())]);
    if let Some(url) = &d.redis_url {
        if circles_dispatcher::RedisUrl::new(url.clone()).has_credentials() {
            // A unit file is world-readable (and so is its Environment= over
            // D-Bus): a password goes in the 0600 secrets file instead.
            bail!(
                "the Redis URL carries a password, which would be readable by every user in the service file: put `redis_url = \"…\"` in the secrets file (mode 0600) and pass --secrets-file instead"
            );
        }
        env.insert("REDIS_URL".into(), url.clone());
    }
    // The data directory, and where the systemd manager writes worker units.
    let mut read_write_paths = vec![data_dir.clone()];
    if let ServiceBackend::Systemd(b) = backend
        && d.manager != Some(circles_supervisor::ManagerKind::Child)
    {
        read_write_paths.push(b.unit_dir().to_path_buf());
    }
    Ok(ServiceSpec {
        name: supervisor_service_name(),
        template: ServiceTemplate::Supervisor,
        description: "circles supervisor".into(),
        program: program.clone(),
        args: cli_args,
        env,
        // The supervisor refuses a Redis password here (above): secrets
        // come from its own 0600 secrets file.
        secret_env: circles_services::SecretEnv::default(),
        secrets_dir: data_dir.join(circles_deploy::SECRETS_DIR),
        // Root (or the user): it installs and removes units over D-Bus,
        // writes unit files and spawns `child` runners.
        account: circles_services::ServiceAccount::Manager,
        state_dir: None,
        // No memory or task ceiling: `child` runners live in its cgroup.
        limits: circles_services::ResourceLimits {
            nofile: Some(65_536),
            ..Default::default()
        },
        working_directory: data_dir.clone(),
        read_write_paths,
        log_dir: data_dir.join("logs"),
        notify_ready: true,
        restart: RestartPolicy::default(),
        fingerprint: BTreeMap::from([(
            "supervisor-sha256".to_string(),
            circles_deploy::file_sha256(&program)?,
        )]),
    })
}

/// Installs (or updates) and starts the supervisor's service.
pub async fn install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    if args.daemon.secrets_file.is_none() && !args.daemon.bind.is_loopback() {
        bail!(
            "refusing to install a supervisor listening on {} without --secrets-file",
            args.daemon.bind
        );
    }
    if let Some(p) = &args.daemon.secrets_file {
        // Fail now, not when the service starts.
        circles_supervisor::Secrets::from_file(p)?;
    }
    let backend = ServiceBackend::detect(args.scope.scope(), Templates::embedded()).await?;
    if args.daemon.secrets_file.is_none()
        && backend.scope() == circles_services::ServiceScope::System
    {
        // A system supervisor runs as root: without secrets, every local
        // user could drive it (its API is on loopback for all of them).
        bail!(
            "refusing to install a system supervisor without --secrets-file: it runs as root, and without secrets every local user could use its API"
        );
    }
    let data_dir = std::path::absolute(&args.daemon.data_dir)?;
    let spec = supervisor_spec(&args, &backend)?;
    let plan = backend.plan(std::slice::from_ref(&spec)).await?;
    let mut out = std::io::stdout().lock();
    if args.dry_run {
        for (rendered, action) in &plan.items {
            writeln!(
                out,
                "# {} ({action:?}) → {}",
                rendered.name,
                rendered.path.display()
            )?;
            writeln!(out, "{}", rendered.contents)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    for dir in [data_dir.clone(), data_dir.join("logs")] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let report = backend.apply(&plan).await?;
    let verb = if !report.created.is_empty() {
        "installed and started"
    } else if !report.updated.is_empty() {
        "updated and restarted"
    } else {
        "unchanged (running)"
    };
    writeln!(
        out,
        "{}: {} {verb}; API on http://{}:{}",
        backend.describe(),
        spec.name,
        args.daemon.bind,
        args.daemon.port
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Removes the supervisor's service; its runners stay as they are.
pub async fn uninstall(args: ScopeArgs) -> anyhow::Result<ExitCode> {
    let backend = ServiceBackend::detect(args.scope(), Templates::embedded()).await?;
    let removed = backend.remove(&[supervisor_service_name()]).await?;
    let mut out = std::io::stdout().lock();
    if removed.is_empty() {
        writeln!(out, "the supervisor service is not installed")?;
    } else {
        writeln!(out, "removed {}", supervisor_service_name())?;
    }
    Ok(ExitCode::SUCCESS)
}
