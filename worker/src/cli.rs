//! The worker's command line, shared by the `worker` binary and the
//! launcher's built-in worker (`launcher run-worker …`), so a launcher built
//! alone can still run circles.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use circles_dispatcher::CirclePublicKey;
use circles_dispatcher::protocol::{
    DEFAULT_REDIS_URL, DEFAULT_TASK_RETENTION_SECS, ENV_PRESERVE_TASKS, env_flag,
};
use clap::Parser;

use crate::{Limits, WorkerConfig};

const MIB: usize = 1024 * 1024;
/// `worker --version`: the version and the code's fingerprint, which the
/// launcher reads to tell whether a `worker` binary runs its own code.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (source ",
    env!("CIRCLES_WORKER_SOURCE_ID"),
    ")"
);
/// A day: longer would be a mistake, and a huge value would not fit a timer.
const MAX_WALL_TIME_SECS: f64 = 86_400.0;

const WORKER_EXAMPLES: &str = "\
Examples:
  # Serve a circle (a key from `launcher keygen`); its database goes to ./launch_data:
  PK=02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5
  REDIS_URL=redis://127.0.0.1:6379 worker --circle-public-key $PK

  # Then, from another shell, run a script on it:
  dispatcher run -c $PK '40 + 2'

Usually the launcher starts workers (`launcher -c PK`, or as services). A worker
exits 0 on SIGTERM/SIGINT once the task in hand is done, 1 when it cannot serve
(the circle is already served elsewhere: it names the owner's pid and host), 2
on bad arguments.";

#[derive(Parser, Debug)]
#[command(
    name = "worker",
    version,
    long_version = LONG_VERSION,
    about = "Run Rhai scripts from one circle's Redis queue against its own database",
    after_help = WORKER_EXAMPLES
)]
pub struct WorkerArgs {
    /// Redis URL. Prefer the environment: a URL with a password in argv is
    /// visible to every user of the host (`ps`).
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true)]
    pub redis_url: String,
    /// The circle's secp256k1 public key (hex, compressed or uncompressed).
    #[arg(long)]
    pub circle_public_key: String,
    /// Directory of the circle database (`circle_db_<pk>.redb`).
    #[arg(long, default_value = "launch_data")]
    pub db_path: PathBuf,
    /// Rhai operations allowed per task (0 = unlimited).
    #[arg(long, default_value_t = Limits::default().max_operations)]
    pub max_operations: u64,
    /// Nested function calls allowed.
    #[arg(long, default_value_t = Limits::default().max_call_levels)]
    pub max_call_levels: usize,
    /// Largest string a script may build, in bytes.
    #[arg(long, default_value_t = Limits::default().max_string_size)]
    pub max_string_size: usize,
    /// Largest array a script may build.
    #[arg(long, default_value_t = Limits::default().max_array_size)]
    pub max_array_size: usize,
    /// Largest object map a script may build.
    #[arg(long, default_value_t = Limits::default().max_map_size)]
    pub max_map_size: usize,
    /// Wall time per task in seconds (a task's own timeout may lower it).
    #[arg(long, default_value_t = Limits::default().max_wall_time.as_secs_f64())]
    pub max_wall_time_secs: f64,
    /// Heap a task may use, in MiB (0 = unlimited). A script over it is
    /// stopped with "script exceeded the memory limit".
    #[arg(long, default_value_t = Limits::default().max_memory / MIB)]
    pub max_memory_mb: usize,
    /// Largest script a task may carry, in bytes.
    #[arg(long, default_value_t = Limits::default().max_script_size)]
    pub max_script_bytes: usize,
    /// Largest output a task may return, in bytes.
    #[arg(long, default_value_t = Limits::default().max_output_size)]
    pub max_output_bytes: usize,
    /// Bytes of print/debug output a task may write to the log; the rest is dropped.
    #[arg(long, default_value_t = Limits::default().max_log_output)]
    pub max_log_bytes: usize,
    /// How deeply arrays and maps may nest in stored or returned values.
    #[arg(long, default_value_t = Limits::default().max_value_depth)]
    pub max_value_depth: usize,
    /// Size the circle database may grow to, in MiB (0 = unlimited).
    #[arg(long, default_value_t = Limits::default().max_db_bytes / MIB as u64)]
    pub max_db_mb: u64,
    /// How long finished tasks are kept in Redis, in seconds (ignored with PRESERVE_TASKS).
    #[arg(long, default_value_t = DEFAULT_TASK_RETENTION_SECS)]
    pub task_retention_secs: u64,
    /// On SIGTERM leave queued tasks for the next worker (as PRESERVE_TASKS
    /// does) while finished tasks still expire; for supervised workers.
    #[arg(long)]
    pub keep_queued_on_stop: bool,
    /// Seconds between heartbeat refreshes.
    #[arg(long, default_value_t = 2.0)]
    pub heartbeat_interval_secs: f64,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Runs a worker with these arguments until SIGTERM/SIGINT; the exit code
/// says how it ended (2: bad arguments, 1: could not run).
pub fn main_with(cli: WorkerArgs) -> ExitCode {
    // Before anything else: a supervisor may have started us without
    // setting the parent-death signal (see `ChildSpec::arms_death_signal`).
    if !circles_supervise::parent::arm_death_signal() {
        eprintln!("error: the process that started this worker is gone");
        return ExitCode::FAILURE;
    }
    crate::memory::use_one_arena();
    init_logging(cli.verbose);
    let circle = match CirclePublicKey::parse(&cli.circle_public_key) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // The heartbeat also renews the circle's lease: beating less often than
    // half its life would let it lapse and another worker take a live circle.
    let max_interval = circles_dispatcher::protocol::HEARTBEAT_TTL_SECS as f64 / 2.0;
    if !(cli.heartbeat_interval_secs > 0.0 && cli.heartbeat_interval_secs <= max_interval) {
        eprintln!(
            "error: --heartbeat-interval-secs must be above 0 and at most {max_interval} (half the heartbeat's {}s life)",
            circles_dispatcher::protocol::HEARTBEAT_TTL_SECS
        );
        return ExitCode::from(2);
    }
    if !(cli.max_wall_time_secs > 0.0 && cli.max_wall_time_secs <= MAX_WALL_TIME_SECS) {
        eprintln!("error: --max-wall-time-secs must be above 0 and at most {MAX_WALL_TIME_SECS}");
        return ExitCode::from(2);
    }
    let preserve_tasks = env_flag(ENV_PRESERVE_TASKS);
    let config = WorkerConfig {
        redis_url: cli.redis_url,
        circle,
        db_dir: cli.db_path,
        limits: Limits {
            max_operations: cli.max_operations,
            max_call_levels: cli.max_call_levels,
            max_string_size: cli.max_string_size,
            max_array_size: cli.max_array_size,
            max_map_size: cli.max_map_size,
            max_wall_time: Duration::from_secs_f64(cli.max_wall_time_secs),
            max_memory: cli.max_memory_mb.saturating_mul(MIB),
            max_script_size: cli.max_script_bytes,
            max_output_size: cli.max_output_bytes,
            max_log_output: cli.max_log_bytes,
            max_value_depth: cli.max_value_depth.max(1),
            max_db_bytes: cli.max_db_mb.saturating_mul(MIB as u64),
        },
        retention: (!preserve_tasks).then(|| Duration::from_secs(cli.task_retention_secs)),
        keep_queued_on_stop: preserve_tasks || cli.keep_queued_on_stop,
        heartbeat_interval: Duration::from_secs_f64(cli.heartbeat_interval_secs),
        stop_requested: Arc::new(AtomicBool::new(false)),
    };
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, config.stop_requested.clone()) {
            tracing::warn!(error = %e, "cannot watch for stop signals");
        }
    }
    // One thread: tasks run one at a time; the heartbeat has its own thread.
    // It is not the main thread but one with a large stack: Rhai checks
    // and drops nested arrays and maps recursively, and a script can nest
    // them thousands of levels deep within its time limit, which would
    // overflow the main thread's 8 MiB and abort the worker. The stack is
    // reserved address space; only what recursion touches becomes memory.
    let worker = std::thread::Builder::new()
        .name("worker".into())
        .stack_size(SCRIPT_THREAD_STACK)
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(crate::run(config, shutdown_signal()))
        })
        .expect("spawn the worker thread");
    match worker.join() {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            // Logged once (stderr is the log), not printed again.
            tracing::error!("{}", circles_dispatcher::text::error_chain(&e));
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("error: the worker thread panicked");
            ExitCode::FAILURE
        }
    }
}

/// Stack of the thread that runs scripts; see `main_with`.
const SCRIPT_THREAD_STACK: usize = 512 * 1024 * 1024;

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Resolves on SIGTERM, SIGINT, or when the launcher that spawned us is gone
/// (its PID is in `CIRCLES_LAUNCHER_PID` and we were reparented).
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = circles_supervise::parent::orphaned() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_snapshot() {
        // What `worker --help` prints (issue 10: it teaches with an example).
        let help =
            circles_test_support::help_pages(<WorkerArgs as clap::CommandFactory>::command());
        assert!(help.contains("Examples:"), "{help}");
        insta::assert_snapshot!(help);
    }
}
