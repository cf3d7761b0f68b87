//! The server's command line, shared by the `server` binary and the
//! launcher's built-in server (`launcher serve …`): parse flags, set up
//! logging, bind, tell systemd it is ready, serve until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::time::Duration;

use crate::{DEFAULT_HOST, DEFAULT_PORT, Server, ServerConfig};
use circles_dispatcher::CirclePublicKey;
use circles_dispatcher::protocol::{DEFAULT_REDIS_URL, DEFAULT_TASK_TIMEOUT_SECS, ENV_RUST_LOG};
use tracing_subscriber::EnvFilter;

const SERVER_EXAMPLES: &str = "\
Examples:
  # Every circle whose worker registers in Redis, on ws://127.0.0.1:8080/<circle key>:
  REDIS_URL=redis://127.0.0.1:6379 server

  # Another port, signed-in clients only, and one circle also alone on its own port:
  PK=02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5
  server -p 9000 --enable-auth --circle-port $PK=9001

  # A client then sends one JSON-RPC request per text frame:
  #   {\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"play\",\"params\":{\"script\":\"40 + 2\"}}
  # and gets {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"42\"}, or -32004 at once when no
  # live worker serves the circle.";

/// Serve circles over WebSocket JSON-RPC at ws://HOST:PORT/<circle_pk>.
///
/// Circles are those given with --circle or --circle-port plus every circle
/// whose worker has registered in Redis (the set `rhai_circles`), including
/// circles added while the server runs.
#[derive(Debug, clap::Parser)]
#[command(name = "server", version, after_help = SERVER_EXAMPLES)]
pub struct ServerArgs {
    /// Host name or address to listen on.
    #[arg(long, default_value = DEFAULT_HOST)]
    pub host: String,
    /// Port of the main listener.
    #[arg(short, long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Redis with the circles' task queues.
    /// Prefer the environment: a URL with a password in argv is visible to
    /// every user of the host (`ps`).
    #[arg(long, value_name = "URL", env = "REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true)]
    pub redis_url: String,
    /// Serve this circle even before its worker registers (repeatable).
    #[arg(long = "circle", value_name = "PK")]
    pub circles: Vec<CirclePublicKey>,
    /// Also serve this circle alone on its own port, at `/` (repeatable).
    #[arg(long = "circle-port", value_name = "PK=PORT", value_parser = parse_circle_port)]
    pub circle_ports: Vec<(CirclePublicKey, u16)>,
    /// Require clients to authenticate (fetch_nonce + authenticate) before play.
    #[arg(long)]
    pub enable_auth: bool,
    /// Seconds a play call waits for the script's result.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TASK_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Connections open at once, from everybody; more are answered 503.
    #[arg(long, value_name = "N", default_value_t = crate::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Connections open at once from one IP address; more are answered 503.
    #[arg(long, value_name = "N", default_value_t = crate::DEFAULT_MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: usize,
    /// Seconds a connection may take to complete its WebSocket upgrade.
    #[arg(long, value_name = "SECS", default_value_t = crate::DEFAULT_HANDSHAKE_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub handshake_timeout: u64,
    /// Seconds a WebSocket may stay silent (not even answering pings) before it is closed.
    #[arg(long, value_name = "SECS", default_value_t = crate::DEFAULT_IDLE_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(2..))]
    pub idle_timeout: u64,
    /// Largest script a play may carry, in bytes (keep it equal to the workers' --max-script-bytes).
    #[arg(long, value_name = "BYTES", default_value_t = circles_dispatcher::protocol::DEFAULT_MAX_SCRIPT_BYTES)]
    pub max_script_bytes: usize,
    /// Seconds between sweeps of expired nonces and returns of freed memory.
    #[arg(long, value_name = "SECS", default_value_t = 30, hide = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub housekeeping_secs: u64,
    /// When Redis does not answer, wait for it (with backoff) instead of
    /// exiting; for services started at boot, possibly before Redis.
    #[arg(long)]
    pub wait_for_redis: bool,
    /// Threads serving connections: 1 (the default) runs everything on one
    /// thread, which costs about a quarter less CPU per play than handing
    /// work between threads (scripts run in the workers, not here); more
    /// for a host whose server alone would fill a core; 0 = one per core.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,
    /// More logging: -v debug, -vv trace. RUST_LOG, when set, wins.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl ServerArgs {
    /// The server configuration these flags describe.
    pub fn into_config(self) -> ServerConfig {
        ServerConfig {
            host: self.host,
            port: self.port,
            redis_url: self.redis_url,
            circles: self.circles,
            circle_ports: self.circle_ports,
            enable_auth: self.enable_auth,
            play_timeout: Duration::from_secs(self.timeout),
            connections: crate::ConnectionLimits {
                max_connections: self.max_connections.max(1),
                max_per_ip: self.max_connections_per_ip.max(1),
                handshake_timeout: Duration::from_secs(self.handshake_timeout),
            },
            idle_timeout: Duration::from_secs(self.idle_timeout),
            max_script_bytes: self.max_script_bytes,
            housekeeping_interval: Duration::from_secs(self.housekeeping_secs),
            ..ServerConfig::default()
        }
    }
}

fn parse_circle_port(value: &str) -> Result<(CirclePublicKey, u16), String> {
    let (key, port) = value
        .rsplit_once('=')
        .ok_or_else(|| format!("`{value}` is not PK=PORT"))?;
    let key = CirclePublicKey::parse(key).map_err(|e| e.to_string())?;
    let port = port
        .parse::<u16>()
        .map_err(|e| format!("invalid port `{port}` in `{value}`: {e}"))?;
    Ok((key, port))
}

fn init_logging(verbose: u8) {
    let filter = match std::env::var(ENV_RUST_LOG) {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::new(match verbose {
            0 => "warn,circles_server=info,circles_dispatcher=info",
            1 => "info,circles_server=debug,circles_dispatcher=debug",
            _ => "debug,circles_server=trace,circles_dispatcher=trace",
        }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The runtime `--threads` asks for.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder.enable_all().build()
}

/// Runs the server with these flags until SIGTERM/SIGINT; exit code 1 when
/// it cannot start or fails.
pub fn main_with(args: ServerArgs) -> ExitCode {
    init_logging(args.verbose);
    let runtime = match runtime(args.threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: ServerArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Listen for signals before announcing readiness: a stop request that
    // arrives right after READY=1 must drain, not kill the process.
    let mut stop = Box::pin(stop_signal()?);
    let wait_for_redis = args.wait_for_redis;
    let config = args.into_config();
    // Under a service manager Redis may come up after us (at boot, say):
    // wait for it with backoff rather than exit and use up the restart budget.
    let mut backoff = std::time::Duration::from_millis(100);
    let server = loop {
        match Server::bind(config.clone()).await {
            Ok(server) => break server,
            Err(crate::ServerError::RedisUnreachable { url, source }) if wait_for_redis => {
                tracing::warn!(%url, error = %source, retry_in = ?backoff, "Redis unreachable; waiting for it");
                tokio::select! {
                    () = &mut stop => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    };
    // Outside systemd (no NOTIFY_SOCKET) this does nothing.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot notify the service manager of readiness");
    }
    server.run(stop).await?;
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT, telling systemd we are stopping.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    })
}

#[cfg(test)]
mod help_tests {
    use super::*;

    #[test]
    fn help_snapshot() {
        // What `server --help` prints (issue 10: it teaches with an example).
        let help =
            circles_test_support::help_pages(<ServerArgs as clap::CommandFactory>::command());
        assert!(help.contains("Examples:"), "{help}");
        insta::assert_snapshot!(help);
    }
}
