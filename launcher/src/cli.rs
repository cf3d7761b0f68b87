//! The launcher's command line, as clap structs that do no I/O. The
//! [`crate::settings`] module turns them into validated settings.
//!
//! Each subcommand takes only the options that apply to it (`keygen
//! --help` lists `--json` and nothing else); the launch itself takes them
//! all.

use std::path::PathBuf;

use circles_dispatcher::protocol::{DEFAULT_REDIS_URL, DEFAULT_TASK_TIMEOUT_SECS};
use clap::{Args, CommandFactory, Parser, Subcommand};

/// Default data directory of direct mode: circle databases, generated keys,
/// logs. Service mode defaults to the platform's place instead (see
/// [`crate::service_mode::default_data_dir`]).
pub const DEFAULT_DATA_DIR: &str = "launch_data";
/// Default config file when no circle is given.
pub const DEFAULT_CONFIG_FILE: &str = "circles.json";
/// Longest `--init-timeout`: a day (the value also caps the init script's
/// wall time, and an unbounded one overflowed the deadline).
pub const MAX_INIT_TIMEOUT_SECS: u64 = 24 * 60 * 60;

/// Bring circles up: their workers and one WebSocket server, as child
/// processes (development) or as systemd/launchd services (production).
#[derive(Parser, Debug)]
#[command(
    name = "launcher",
    version,
    args_conflicts_with_subcommands = true,
    after_help = LAUNCHER_EXAMPLES
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

const LAUNCHER_EXAMPLES: &str = "\
Examples:
  # The demo circles as child processes, with their init scripts
  # (a private redis-server is started if none answers):
  launcher examples/circles.json

  # A circle by key, with an init script (keys from `launcher keygen`):
  PK=02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5
  launcher -c $PK:scripts/ourworld.rhai

  # As systemd/launchd services that stay up after the launcher exits:
  launcher --use-service-manager --worker-binary target/release/worker examples/circles.json
  launcher status                # state, restarts, last exit, reason
  launcher logs ourworld -f      # a circle by name, key or key prefix
  launcher cleanup               # remove every circle service

  # Every circle in the shared Redis, on every host; backups:
  launcher status --fleet
  launcher backup ourworld -o ourworld.backup
  launcher restore ourworld.backup

Exit status: 0 when the circles came up (direct mode: at Ctrl+C, having
named any it could not serve) or the subcommand succeeded; 1 when no
circle could be served, an init script failed or an install failed (the
reasons are printed); 2 for a command-line mistake.";

impl Cli {
    /// Parses the process's arguments, exiting with clap's message (and
    /// status 2) on a mistake — including a mistyped subcommand, which clap
    /// alone would take for the name of a circles.json (`launcher stauts`).
    pub fn parse_args() -> Self {
        Self::try_parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// [`Self::parse_args`] over given arguments (the first is the program).
    pub fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Self::try_parse_from(args)?;
        if cli.command.is_none()
            && let Some(word) = &cli.launch.config
        {
            check_not_a_mistyped_subcommand(word)?;
        }
        Ok(cli)
    }

    /// The shared options of whatever runs: the launch's, or the
    /// subcommand's own.
    pub fn common(&self) -> CommonArgs {
        match &self.command {
            Some(
                Command::Cleanup { common, .. }
                | Command::Status { common, .. }
                | Command::Backup { common, .. }
                | Command::Restore { common, .. },
            ) => common.common(),
            Some(Command::Logs(logs)) => logs.common(),
            Some(Command::Keygen { .. } | Command::RunWorker(_) | Command::Serve(_)) | None => {
                self.common.clone()
            }
        }
    }
}

/// A config path that does not exist, looks like a word rather than a file
/// name, and is close to a subcommand's name is a mistyped subcommand:
/// answer as clap does for one (`unrecognized subcommand 'stauts'`, `tip:
/// a similar subcommand exists: 'status'`) rather than "cannot read
/// stauts".
fn check_not_a_mistyped_subcommand(word: &std::path::Path) -> Result<(), clap::Error> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let Some(text) = word.to_str() else {
        return Ok(());
    };
    let looks_like_a_word =
        !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !looks_like_a_word || word.exists() {
        return Ok(());
    }
    let mut cmd = Cli::command();
    // clap's own measure and threshold for "did you mean".
    let best = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .map(|name| (strsim::jaro(text, &name), name))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let Some((_, suggestion)) = best else {
        return Ok(());
    };
    let usage = cmd.render_usage();
    let mut err = clap::Error::new(ErrorKind::InvalidSubcommand).with_cmd(&cmd);
    err.insert(
        ContextKind::InvalidSubcommand,
        ContextValue::String(text.to_string()),
    );
    err.insert(
        ContextKind::SuggestedSubcommand,
        ContextValue::String(suggestion),
    );
    err.insert(ContextKind::Usage, ContextValue::StyledStr(usage));
    Err(err)
}

/// Options of the launch (subcommands take their own: [`InstalledArgs`],
/// [`LogsArgs`]).
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Redis URL [default: redis://127.0.0.1:6379; in service mode, the one
    /// the services were installed with].
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Data directory (databases, keys, logs) [default: ./launch_data for
    /// child processes; with services /var/lib/circles (system), the XDG
    /// data dir (user), ~/Library/Application Support (macOS)].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Debug logging (same as -v).
    #[arg(short, long)]
    pub debug: bool,
    /// More logging; repeat for more (-vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// With --use-service-manager: system services (default when root).
    #[arg(long, conflicts_with = "user")]
    pub system: bool,
    /// With --use-service-manager: per-user services (default when not root).
    #[arg(long)]
    pub user: bool,
    /// With --use-service-manager: templates overriding the built-in ones.
    #[arg(long, value_name = "DIR")]
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
    /// Memory ceiling of each worker service of this run, enforced by the
    /// kernel (systemd MemoryMax=): 512M, 2G, or `infinity` [default: 1G;
    /// in service mode, what the circle was installed with].
    #[arg(long, value_name = "SIZE", value_parser = parse_ceiling_bytes)]
    pub memory_max: Option<Ceiling>,
    /// Processes and threads each worker service of this run may have
    /// (systemd TasksMax=), or `infinity` [default: 64].
    #[arg(long, value_name = "N", value_parser = parse_ceiling_count)]
    pub tasks_max: Option<Ceiling>,
    /// Open files each worker service of this run may have (systemd
    /// LimitNOFILE=, launchd NumberOfFiles) [default: 1024].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(16..))]
    pub limit_nofile: Option<u64>,
    /// Open files the WebSocket server service may have; every connection
    /// holds one [default: 65536].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(64..))]
    pub server_limit_nofile: Option<u64>,
    /// Seconds to wait for each init script's result (at most a day).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TASK_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_INIT_TIMEOUT_SECS))]
    pub init_timeout: u64,
    /// Do not start a private redis-server when nothing answers at a local Redis URL.
    #[arg(long)]
    pub no_redis_autostart: bool,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stop, disable and delete every circle service (everything named tf.ourworld.circles.*).
    #[command(after_help = "Examples:\n  launcher cleanup\n  launcher cleanup --json --user")]
    Cleanup {
        /// Print what was removed as JSON.
        #[arg(long)]
        json: bool,
        /// Where and how.
        #[command(flatten)]
        common: InstalledArgs,
    },
    /// Show every installed circle service: state, PID, restarts, last exit,
    /// queue, heartbeat, init outcome, and why whatever is not running is not.
    #[command(
        after_help = "Examples:\n  launcher status\n  launcher status --json | jq '.[] | select(.state != \"running\")'\n  launcher status --fleet\n\nStates: starting, running, backoff (restarting after an exit), stopping, stopped,\nexited, failed (gave up restarting), offline (running, but no live heartbeat in\nRedis: frozen or cut off), unknown."
    )]
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Where and how.
        #[command(flatten)]
        common: InstalledArgs,
        /// Every circle registered in Redis, on every host (from Redis alone:
        /// no data directory needed): host, live or offline since when, PID,
        /// queue, heartbeat age, tasks done, lease.
        #[arg(long)]
        fleet: bool,
    },
    /// Write a consistent backup of one circle to a file: its database (taken
    /// from its live worker on this host, or from the file when none runs),
    /// its generated key and its init script.
    #[command(
        after_help = "Examples:\n  launcher backup ourworld -o ourworld.backup\n  launcher backup 02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5 -o c.backup --json"
    )]
    Backup {
        /// The circle: public key, or name (circles.json circles).
        circle: String,
        /// The backup file (written atomically, mode 0600: it can hold the
        /// circle's secret key).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Init script to include [default: the one a restore stored in
        /// <data>/init/, if any]. Without --data-dir the circle is looked
        /// for in service mode's data directory, then ./launch_data.
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
        /// Where and how.
        #[command(flatten)]
        common: InstalledArgs,
    },
    /// Restore a circle from a backup into the data directory, on this host.
    /// Refused while the circle is served anywhere, or if its database is
    /// already here; checks the whole file before writing anything.
    #[command(
        after_help = "Examples:\n  launcher restore ourworld.backup                  # for direct mode (./launch_data)\n  launcher restore ourworld.backup --service-mode   # where services look"
    )]
    Restore {
        /// The backup file.
        file: PathBuf,
        /// For service mode: into its data directory (default the
        /// platform's place) at `db/<pk>/`, where its services look;
        /// without it, for direct mode (default ./launch_data).
        #[arg(long)]
        service_mode: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Where and how.
        #[command(flatten)]
        common: InstalledArgs,
    },
    /// Show a circle's worker log: the journal of its service, or its log
    /// file from a direct run (`server` for the WebSocket server).
    #[command(
        after_help = "Examples:\n  launcher logs ourworld          # by name\n  launcher logs 02c6 -f           # by key prefix, following\n  launcher logs 02c6047f…709ee5   # as the status table shows it\n  launcher logs server"
    )]
    Logs(LogsArgs),
    /// Print a fresh circle keypair.
    #[command(after_help = "Examples:\n  launcher keygen\n  launcher keygen --json")]
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

/// What `status`, `cleanup`, `backup` and `restore` take: the installed
/// services' scope, their data directory and Redis (no templates: nothing
/// is rendered).
#[derive(Args, Debug, Clone)]
pub struct InstalledArgs {
    /// Redis URL [default: the one the services were installed with, else
    /// redis://127.0.0.1:6379].
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Data directory [default: service mode's (/var/lib/circles for system
    /// services, the XDG data dir for user services, ~/Library/Application
    /// Support on macOS); backup also looks in ./launch_data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub scope: ScopeArgs,
}

impl InstalledArgs {
    /// The shared options these flags amount to.
    pub fn common(&self) -> CommonArgs {
        self.scope.common(&self.redis_url, &self.data_dir)
    }
}

/// The scope and logging flags of every subcommand.
#[derive(Args, Debug, Clone)]
pub struct ScopeArgs {
    /// System services (default when root).
    #[arg(long, conflicts_with = "user")]
    pub system: bool,
    /// Per-user services (default when not root).
    #[arg(long)]
    pub user: bool,
    /// Debug logging (same as -v).
    #[arg(short, long)]
    pub debug: bool,
    /// More logging; repeat for more (-vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl ScopeArgs {
    /// The shared options these flags amount to, with a subcommand's Redis
    /// URL and data directory.
    fn common(&self, redis_url: &Option<String>, data_dir: &Option<PathBuf>) -> CommonArgs {
        CommonArgs {
            redis_url: redis_url.clone(),
            data_dir: data_dir.clone(),
            debug: self.debug,
            verbose: self.verbose,
            system: self.system,
            user: self.user,
            templates_dir: None,
        }
    }
}

/// `launcher logs`.
#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// The circle: its name, full key, a key prefix, or the shortened key of
    /// the status table; `server` for the WebSocket server.
    pub circle: String,
    /// Keep following.
    #[arg(short, long)]
    pub follow: bool,
    /// Data directory of a direct run's log files and circle names
    /// [default: ./launch_data, and service mode's for installed circles].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Accepted for scripts that pass the same options to every
    /// subcommand; logs do not need Redis.
    #[arg(long, env = "REDIS_URL", hide = true)]
    pub redis_url: Option<String>,
}

impl LogsArgs {
    /// The shared options these flags amount to.
    pub fn common(&self) -> CommonArgs {
        self.scope.common(&self.redis_url, &self.data_dir)
    }
}

/// A resource ceiling: a number, or no ceiling at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Ceiling {
    /// This many (bytes, tasks).
    Limit(u64),
    /// `infinity`: no ceiling.
    #[serde(with = "infinity")]
    Infinity,
}

impl Ceiling {
    /// The number, `None` for no ceiling.
    pub fn get(self) -> Option<u64> {
        match self {
            Ceiling::Limit(n) => Some(n),
            Ceiling::Infinity => None,
        }
    }
}

/// `infinity` as the JSON string it is written as.
mod infinity {
    pub fn serialize<S: serde::Serializer>(s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("infinity")
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        if text == "infinity" {
            Ok(())
        } else {
            Err(serde::de::Error::custom(format!(
                "expected a number or \"infinity\", not {text:?}"
            )))
        }
    }
}

/// `512M`, `2G`, `1048576`, `infinity` (K, M, G, T are powers of 1024, as
/// systemd reads them). At least 16 MiB: less cannot even start a worker.
pub fn parse_ceiling_bytes(text: &str) -> Result<Ceiling, String> {
    if text == "infinity" {
        return Ok(Ceiling::Infinity);
    }
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(format!("`{text}` is not a size like 512M, 2G or infinity")),
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("`{text}` is not a size like 512M, 2G or infinity"))?;
    if bytes < 16 << 20 {
        return Err(format!("`{text}` is below 16M, too little for a worker"));
    }
    Ok(Ceiling::Limit(bytes))
}

/// A count of at least 8, or `infinity`.
pub fn parse_ceiling_count(text: &str) -> Result<Ceiling, String> {
    if text == "infinity" {
        return Ok(Ceiling::Infinity);
    }
    match text.parse::<u64>() {
        Ok(n) if n >= 8 => Ok(Ceiling::Limit(n)),
        Ok(_) => Err(format!("`{text}` is below 8, too few for a worker")),
        Err(_) => Err(format!("`{text}` is not a number or infinity")),
    }
}

impl Default for CommonArgs {
    /// What the flags default to (for library callers such as
    /// [`crate::cleanup_launcher`]); the Redis URL comes from `REDIS_URL`.
    fn default() -> Self {
        Self {
            redis_url: std::env::var("REDIS_URL").ok(),
            data_dir: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_snapshot() {
        // Every `launcher … --help` (issue 10): each subcommand lists only
        // the options that apply to it, and each teaches with an example.
        let help = circles_test_support::help_pages(Cli::command());
        insta::assert_snapshot!(help);
        let keygen = help.split("$ launcher keygen --help").nth(1).unwrap();
        let keygen = keygen.split("$ launcher").next().unwrap();
        assert!(
            keygen.contains("--json") && keygen.contains("Examples:"),
            "{keygen}"
        );
        for absent in ["--redis-url", "--data-dir", "--system", "--templates-dir"] {
            assert!(
                !keygen.contains(absent),
                "keygen --help lists {absent}:\n{keygen}"
            );
        }
        // A Redis URL may carry a password: its value is never shown.
        assert!(!help.contains("[env: REDIS_URL="), "{help}");
    }

    #[test]
    fn a_mistyped_subcommand_is_not_a_config_file() {
        let err = Cli::try_parse_args(["launcher", "stauts"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidSubcommand);
        let text = err.to_string();
        assert!(
            text.contains("a similar subcommand exists: 'status'"),
            "{text}"
        );
        // Paths and words far from any subcommand stay config paths.
        for word in ["circles.json", "mycircles", "./status"] {
            let cli = Cli::try_parse_args(["launcher", word]).unwrap();
            assert_eq!(
                cli.launch.config.as_deref(),
                Some(std::path::Path::new(word))
            );
        }
    }

    #[test]
    fn an_init_timeout_out_of_range_is_refused_before_anything_starts() {
        // Unbounded, 2^64-1 seconds overflowed the init deadline and
        // panicked after the workers were up.
        for bad in ["0", "86401", "18446744073709551615"] {
            let err = Cli::try_parse_args([
                "launcher",
                "-c",
                circles_test_support::KEY_ONE,
                "--init-timeout",
                bad,
            ])
            .expect_err(bad);
            assert!(err.to_string().contains("--init-timeout"), "{err}");
        }
        assert!(
            Cli::try_parse_args([
                "launcher",
                "-c",
                circles_test_support::KEY_ONE,
                "--init-timeout",
                "86400"
            ])
            .is_ok()
        );
    }

    #[test]
    fn ceilings_parse_like_systemd_sizes() {
        assert_eq!(parse_ceiling_bytes("512M"), Ok(Ceiling::Limit(512 << 20)));
        assert_eq!(parse_ceiling_bytes("2G"), Ok(Ceiling::Limit(2 << 30)));
        assert_eq!(parse_ceiling_bytes("infinity"), Ok(Ceiling::Infinity));
        assert_eq!(
            parse_ceiling_bytes("33554432"),
            Ok(Ceiling::Limit(32 << 20))
        );
        for bad in ["", "1X", "-1G", "1.5G", "1M", "99999999999999999999G", "G"] {
            assert!(parse_ceiling_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_ceiling_count("64"), Ok(Ceiling::Limit(64)));
        assert!(parse_ceiling_count("2").is_err());
        assert_eq!(
            serde_json::from_str::<Ceiling>("\"infinity\"").unwrap(),
            Ceiling::Infinity
        );
        assert_eq!(
            serde_json::from_str::<Ceiling>("1024").unwrap(),
            Ceiling::Limit(1024)
        );
        assert!(serde_json::from_str::<Ceiling>("\"lots\"").is_err());
        assert_eq!(
            serde_json::to_string(&Ceiling::Infinity).unwrap(),
            "\"infinity\""
        );
    }
}
