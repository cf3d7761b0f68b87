//! The launcher's command line, as clap structs that do no I/O. The
//! [`crate::settings`] module turns them into validated settings.

use std::path::PathBuf;

use circles_dispatcher::protocol::{DEFAULT_REDIS_URL, DEFAULT_TASK_TIMEOUT_SECS};
use clap::{Args, Parser, Subcommand};

/// Default data directory: circle databases, generated keys, rendered
/// service files, logs.
pub const DEFAULT_DATA_DIR: &str = "launch_data";
/// Default config file when no circle is given.
pub const DEFAULT_CONFIG_FILE: &str = "circles.json";

/// Bring circles up: their workers and one WebSocket server, as child
/// processes or as systemd/launchd services.
#[derive(Parser, Debug)]
#[command(
    name = "launcher",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  launcher -c 02abc…:scripts/ourworld.rhai\n  launcher examples/circles.json\n  launcher --use-service-manager --worker-binary target/release/worker -c 02abc…\n  launcher status --json\n  launcher status --fleet\n  launcher backup 02abc… -o circle.backup\n  launcher restore circle.backup\n  launcher cleanup"
)]
pub struct Cli {
    /// What to do; without a subcommand, launch circles.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Launch options.
    #[command(flatten)]
    pub launch: LaunchArgs,
    /// Options every subcommand takes.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Options shared by launching and the subcommands.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Redis URL [default: redis://127.0.0.1:6379; for status and cleanup,
    /// the one the services were installed with].
    #[arg(long, global = true, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Data directory (databases, keys, service files, logs).
    #[arg(long, global = true, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Debug logging (same as -v).
    #[arg(short, long, global = true)]
    pub debug: bool,
    /// More logging; repeat for more (-vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Use system services (default when root).
    #[arg(long, global = true, conflicts_with = "user")]
    pub system: bool,
    /// Use per-user services (default when not root).
    #[arg(long, global = true)]
    pub user: bool,
    /// Service templates directory overriding the built-in ones.
    #[arg(long, global = true, value_name = "DIR")]
    pub templates_dir: Option<PathBuf>,
}

/// Options of the launch itself.
#[derive(Args, Debug, Clone, Default)]
pub struct LaunchArgs {
    /// A circle: `public_key[:init_script.rhai]`. Repeatable.
    #[arg(short = 'c', long = "circle", value_name = "PK[:SCRIPT]")]
    pub circles: Vec<String>,
    /// circles.json (array of {name, port, script_path}); default ./circles.json when no circle is given.
    #[arg(long = "config", value_name = "FILE", conflicts_with = "circles")]
    pub config_flag: Option<PathBuf>,
    /// circles.json given as a plain argument.
    #[arg(value_name = "CIRCLES_JSON", conflicts_with_all = ["circles", "config_flag"])]
    pub config: Option<PathBuf>,
    /// WebSocket server port [default: 8080; in service mode, the installed server's].
    #[arg(short, long)]
    pub port: Option<u16>,
    /// WebSocket server address [default: 127.0.0.1; in service mode, the installed server's].
    #[arg(long)]
    pub host: Option<String>,
    /// Require WebSocket authentication.
    #[arg(long)]
    pub enable_auth: bool,
    /// Install the circles as systemd/launchd services instead of child processes.
    #[arg(long)]
    pub use_service_manager: bool,
    /// Worker executable (required with --use-service-manager; default: `worker` next to the launcher, then on PATH, then the launcher's built-in worker).
    #[arg(long, value_name = "PATH")]
    pub worker_binary: Option<PathBuf>,
    /// WebSocket server executable for the service (default: `server` next to the worker binary or the launcher, then on PATH, then the launcher's built-in server).
    #[arg(long, value_name = "PATH")]
    pub server_binary: Option<PathBuf>,
    /// Print the service files and actions, change nothing.
    #[arg(long, requires = "use_service_manager")]
    pub dry_run: bool,
    /// Seconds to wait for each init script's result.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TASK_TIMEOUT_SECS)]
    pub init_timeout: u64,
    /// Do not start a private redis-server when nothing answers at a local Redis URL.
    #[arg(long)]
    pub no_redis_autostart: bool,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stop, disable and delete every circle service (everything named tf.ourworld.circles.*).
    Cleanup {
        /// Print what was removed as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show every installed circle service: state, PID, restarts, last exit, queue, heartbeat.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Every circle registered in Redis, on every host (from Redis alone:
        /// no data directory needed): host, live or offline since when, PID,
        /// queue, heartbeat age, tasks done, lease.
        #[arg(long)]
        fleet: bool,
    },
    /// Write a consistent backup of one circle to a file: its database (taken
    /// from its live worker on this host, or from the file when none runs),
    /// its generated key and its init script.
    Backup {
        /// The circle: public key, or name (circles.json circles).
        circle: String,
        /// The backup file (written atomically, mode 0600: it can hold the
        /// circle's secret key).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Init script to include [default: the one a restore stored in
        /// <data>/init/, if any].
        #[arg(long, value_name = "FILE")]
        init_script: Option<PathBuf>,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
        /// Seconds to wait for a live worker's snapshot.
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        timeout: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Restore a circle from a backup into the data directory, on this host.
    /// Refused while the circle is served anywhere, or if its database is
    /// already here; checks the whole file before writing anything.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show a circle's worker logs (or `server` for the WebSocket server).
    Logs {
        /// Circle public key, or `server`.
        circle: String,
        /// Keep following.
        #[arg(short, long)]
        follow: bool,
    },
    /// Print a fresh circle keypair.
    Keygen {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run a worker (the launcher's built-in worker; same options as `worker`).
    #[command(hide = true)]
    RunWorker(circles_worker::cli::WorkerArgs),
    /// Run the WebSocket server (the launcher's built-in server; same options as `server`).
    #[command(hide = true)]
    Serve(circles_server::cli::ServerArgs),
}

impl Default for CommonArgs {
    /// What the flags default to (for library callers such as
    /// [`crate::cleanup_launcher`]); the Redis URL comes from `REDIS_URL`.
    fn default() -> Self {
        Self {
            redis_url: std::env::var("REDIS_URL").ok(),
            data_dir: DEFAULT_DATA_DIR.into(),
            debug: false,
            verbose: 0,
            system: false,
            user: false,
            templates_dir: None,
        }
    }
}

impl CommonArgs {
    /// The Redis URL given, or the default.
    pub fn redis_url_or_default(&self) -> String {
        self.redis_url
            .clone()
            .unwrap_or_else(|| DEFAULT_REDIS_URL.to_string())
    }

    /// The tracing filter these flags ask for.
    pub fn log_level(&self) -> &'static str {
        match (self.verbose, self.debug) {
            (0, false) => "info",
            (0, true) | (1, _) => "debug",
            _ => "trace",
        }
    }
}
