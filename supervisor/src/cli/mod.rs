//! The command line: flags as clap structs (no I/O), resolved into the
//! library's builder; `ctl`, `install` and `uninstall` in their modules.

mod ctl;
mod install;
mod table;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use circles_supervisor::{
    DEFAULT_DATA_DIR, DEFAULT_NAMESPACE, DEFAULT_PORT, DEFAULT_WS_URL, ManagerKind, Secrets,
    SupervisorApp, SupervisorBuilder,
};
use clap::{Args, Parser, Subcommand};

/// The circles supervisor: owns this host's runners (circle workers) and
/// serves an OpenRPC JSON-RPC API (HTTP POST / and WebSocket).
#[derive(Parser, Debug)]
#[command(
    name = "supervisor",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  supervisor --redis-url redis://127.0.0.1:6379\n  supervisor ctl add alpha 02abc… --start\n  supervisor ctl status\n  supervisor install --worker-binary /usr/local/bin/worker"
)]
pub struct Cli {
    /// What to do; without a subcommand, run the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Daemon options.
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// How the daemon runs.
#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Address of the API. Anything but loopback needs secrets.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Port of the API.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Redis URL. Prefer the environment (REDIS_URL) or `redis_url` in the
    /// secrets file: a password in argv is visible to every user (`ps`).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of the supervisor's own Redis keys.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Data directory: state, logs, circle databases.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Process manager of runners added without one [default: systemd when root on a booted systemd, else child].
    #[arg(long, value_parser = parse_manager)]
    pub manager: Option<ManagerKind>,
    /// Secrets file (TOML or JSON, mode 0600): admin = ["…"], user = ["…"], redis_url = "…".
    #[arg(long, value_name = "FILE")]
    pub secrets_file: Option<PathBuf>,
    /// Worker binary of runners added without one [default: `worker` next to the supervisor, else on PATH].
    #[arg(long, value_name = "PATH")]
    pub worker_binary: Option<PathBuf>,
    /// The WebSocket server's ws://host:port, for runner URLs.
    #[arg(long, default_value = DEFAULT_WS_URL)]
    pub ws_url: String,
}

fn parse_manager(s: &str) -> Result<ManagerKind, String> {
    s.parse::<ManagerKind>().map_err(|e| e.to_string())
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Talk to a running supervisor (secret from SUPERVISOR_SECRET).
    Ctl(ctl::CtlArgs),
    /// Install the supervisor as the service `tf.ourworld.circles.supervisor`
    /// (systemd or launchd) with these daemon options; `launcher cleanup`
    /// or `supervisor uninstall` removes it.
    Install(install::InstallArgs),
    /// Remove the supervisor's service (its runners stay).
    Uninstall(install::ScopeArgs),
}

/// Runs the command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Ctl(args)) => ctl::run(args).await,
        Some(Command::Install(args)) => install::install(args).await,
        Some(Command::Uninstall(args)) => install::uninstall(args).await,
        None => daemon(cli.daemon).await,
    }
}

/// Secrets and the Redis URL from the secrets file (if given), else the
/// environment.
fn resolve_secrets(args: &DaemonArgs) -> anyhow::Result<(Secrets, Option<String>)> {
    if let Some(path) = &args.secrets_file {
        let file = Secrets::from_file(path)?;
        return Ok((file.secrets, file.redis_url));
    }
    Ok((Secrets::from_env()?.unwrap_or_else(Secrets::none), None))
}

async fn daemon(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    let (secrets, file_redis_url) = resolve_secrets(&args)?;
    let redis_url = args
        .redis_url
        .clone()
        .or(file_redis_url)
        .unwrap_or_else(|| circles_dispatcher::protocol::DEFAULT_REDIS_URL.to_string());
    let mut builder = SupervisorBuilder::new()
        .redis_url(redis_url)
        .namespace(&args.namespace)
        .secrets(secrets)
        .bind(args.bind)
        .port(args.port)
        .data_dir(&args.data_dir)
        .ws_url(&args.ws_url);
    if let Some(m) = args.manager {
        builder = builder.manager(m);
    }
    if let Some(w) = &args.worker_binary {
        builder = builder.worker_binary(w);
    }
    let supervisor = builder.build().await.context("starting the supervisor")?;
    let app = SupervisorApp::new(supervisor)
        .start()
        .await
        .context("starting the API")?;
    shutdown_signal().await;
    app.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// Ctrl+C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl+C received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
