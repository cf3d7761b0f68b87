//! Launcher start-up and shutdown in direct mode, beside two baselines:
//!
//! - measured: spawning the same number of bare `worker` processes and
//!   waiting until every heartbeat key is in Redis — the floor any launcher
//!   pays for the workers alone, without the WebSocket server, readiness
//!   bookkeeping or init scripts;
//! - computed: the original launcher design, which slept 2 s before each
//!   circle's init script instead of waiting for readiness (N × 2 s).
//!
//! The launcher is the real `target/release/launcher` binary. "Ready" is
//! when it prints its status table to stdout with every circle's init
//! script reported `ok` (it prints the table once the init scripts ran).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use circles_dispatcher::protocol::worker_heartbeat_key;
use circles_dispatcher::{CircleKeypair, CirclePublicKey};
use circles_test_support::{RedisServer, binary, free_port};
use comfy_table::Table;
use rustix::process::Signal;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::process::{
    anon_kib, children, log_tail, precise_cpu_secs, pss_kib, send_signal, wait_exit,
    wait_signal_caught,
};
use crate::stats::{fmt_duration, median, ratio};

/// Circle counts measured by default (`--launcher-circles` for others, e.g.
/// the opt-in 1,000).
pub const DEFAULT_CIRCLES: [usize; 3] = [1, 10, 50];
/// What the original launcher slept before each init script.
const ORIGINAL_SLEEP_PER_CIRCLE: Duration = Duration::from_secs(2);
/// How long a start may take before the bench gives up.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a shutdown may take before the bench gives up.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Each circle's init script: one database write, so the init really
/// reaches the circle's store.
const INIT_SCRIPT: &str = "db_set(\"bench:init\", \"done\");\n\"done\"\n";

/// Start and stop times of one run, and memory once every circle was ready.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Times {
    pub(crate) start: Duration,
    pub(crate) stop: Duration,
    /// The launcher's own memory (`RssAnon`): its in-process WebSocket
    /// server with the routing table, the supervision state. 0 for raw
    /// workers.
    pub(crate) launcher_anon_kib: u64,
    /// The workers' memory, all together (PSS: the shared binary split
    /// between them).
    pub(crate) workers_pss_kib: u64,
    /// CPU seconds the launcher process itself spent until ready (its
    /// threads; not its children). 0 for raw workers.
    pub(crate) launcher_cpu_secs: f64,
    /// CPU seconds of all workers until ready, summed.
    pub(crate) workers_cpu_secs: f64,
}

/// Runs the launcher benchmark (`repeats` runs per circle count in
/// `counts`, medians reported) and returns its table.
pub async fn run(counts: &[usize], repeats: usize) -> anyhow::Result<Table> {
    let redis = RedisServer::start();
    let launcher = binary("launcher");
    let worker = binary("worker");
    let mut table = Table::new();
    table.load_style(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header([
        "circles",
        "launcher: ready + init done",
        "raw workers: heartbeats in Redis",
        "launcher ÷ raw",
        "original design: N × 2 s sleep (computed)",
        "launcher shutdown (SIGINT → exit)",
        "raw workers shutdown (SIGTERM → all exited)",
        "launcher memory at ready (RssAnon)",
        "workers' memory at ready (PSS, all)",
        "raw workers' memory (PSS, all)",
        "launcher's own CPU to ready",
        "workers' CPU to ready (all)",
        "raw workers' CPU to ready (all)",
    ]);
    for &n in counts {
        let mut ours = Vec::new();
        let mut raw = Vec::new();
        for _ in 0..repeats.max(1) {
            // Alternate which goes first so neither always runs on a
            // machine still busy with the other's exit.
            let dir = tempfile::Builder::new()
                .prefix("circles-bench-launcher-")
                .tempdir()?;
            if raw.len() % 2 == 0 {
                ours.push(launcher_once(&launcher, &redis, n, &dir.path().join("ours")).await?);
                raw.push(raw_workers_once(&worker, &redis, n, &dir.path().join("raw")).await?);
            } else {
                raw.push(raw_workers_once(&worker, &redis, n, &dir.path().join("raw")).await?);
                ours.push(launcher_once(&launcher, &redis, n, &dir.path().join("ours")).await?);
            }
        }
        let start = median(ours.iter().map(|t| t.start).collect());
        let raw_start = median(raw.iter().map(|t| t.start).collect());
        table.add_row([
            n.to_string(),
            fmt_duration(start),
            fmt_duration(raw_start),
            ratio(start.as_secs_f64(), raw_start.as_secs_f64()),
            fmt_duration(ORIGINAL_SLEEP_PER_CIRCLE * n as u32),
            fmt_duration(median(ours.iter().map(|t| t.stop).collect())),
            fmt_duration(median(raw.iter().map(|t| t.stop).collect())),
            fmt_mib(median_of(ours.iter().map(|t| t.launcher_anon_kib))),
            fmt_mib(median_of(ours.iter().map(|t| t.workers_pss_kib))),
            fmt_mib(median_of(raw.iter().map(|t| t.workers_pss_kib))),
            fmt_cpu(median_f64(ours.iter().map(|t| t.launcher_cpu_secs))),
            fmt_cpu(median_f64(ours.iter().map(|t| t.workers_cpu_secs))),
            fmt_cpu(median_f64(raw.iter().map(|t| t.workers_cpu_secs))),
        ]);
    }
    Ok(table)
}

fn median_of(values: impl Iterator<Item = u64>) -> u64 {
    let mut v: Vec<u64> = values.collect();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn median_f64(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_unstable_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn fmt_cpu(secs: f64) -> String {
    format!("{secs:.2} s")
}

fn fmt_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn fresh_keys(n: usize) -> Vec<CirclePublicKey> {
    (0..n).map(|_| CircleKeypair::generate().public).collect()
}

/// One launcher run: start with `n` fresh circles, wait for the status
/// table with every init `ok`, SIGINT, wait for the exit.
pub(crate) async fn launcher_once(
    launcher: &Path,
    redis: &RedisServer,
    n: usize,
    dir: &Path,
) -> anyhow::Result<Times> {
    std::fs::create_dir_all(dir)?;
    let init = dir.join("init.rhai");
    std::fs::write(&init, INIT_SCRIPT)?;
    let log = dir.join("launcher.log");
    let mut cmd = Command::new(launcher);
    // The same worker binary as the baseline's: left to choose, a launcher
    // whose worker beside it is from an earlier build runs its own built-in
    // worker (a larger binary), which would measure two builds, not the
    // launcher.
    cmd.arg("--worker-binary")
        .arg(binary("worker"))
        .arg("--redis-url")
        .arg(redis.url())
        .arg("-p")
        .arg(free_port().to_string())
        .arg("--data-dir")
        .arg(dir.join("data"));
    for key in fresh_keys(n) {
        cmd.arg("-c").arg(format!("{key}:{}", init.display()));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true);

    let started = Instant::now();
    let mut child = cmd.spawn().context("starting the launcher")?;
    let stdout = child.stdout.take().context("launcher stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let table_seen = async {
        // Rows of the table being read; a new header starts a new table.
        let mut rows: Option<usize> = None;
        while let Some(line) = lines.next_line().await? {
            if line.contains("WebSocket URL") {
                rows = Some(0);
            } else if let Some(count) = rows.as_mut()
                && line.contains("ws://")
            {
                anyhow::ensure!(
                    line.contains("ok:"),
                    "a circle is not ready with its init done: {line}"
                );
                *count += 1;
                if *count == n {
                    return Ok(());
                }
            }
        }
        anyhow::bail!("the launcher closed stdout before printing its status table")
    };
    match tokio::time::timeout(START_TIMEOUT, table_seen).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.context(log_tail(&log, 20))),
        Err(_) => anyhow::bail!(
            "the launcher did not report {n} circles ready within {START_TIMEOUT:?}\n{}",
            log_tail(&log, 20)
        ),
    }
    let start = started.elapsed();
    let pid = child.id().context("the launcher has exited")?;
    let launcher_anon_kib = anon_kib(pid);
    let launcher_cpu_secs = precise_cpu_secs(pid);
    let workers = children(pid);
    let workers_cpu_secs = workers.iter().copied().map(precise_cpu_secs).sum();
    let workers_pss_kib = workers.into_iter().map(pss_kib).sum();
    // Later tables (state changes) must not block the launcher on a full pipe.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // Not yet the shutdown: the launcher may print its table before it
    // handles Ctrl+C (see `wait_signal_caught`).
    wait_signal_caught(&child, Signal::INT, STOP_TIMEOUT).await?;
    send_signal(&child, Signal::INT)?;
    let stopping = Instant::now();
    let status = wait_exit(&mut child, "the launcher", STOP_TIMEOUT).await?;
    let stop = stopping.elapsed();
    drain.abort();
    anyhow::ensure!(
        status.success(),
        "the launcher exited with {status} after SIGINT\n{}",
        log_tail(&log, 20)
    );
    Ok(Times {
        start,
        stop,
        launcher_anon_kib,
        workers_pss_kib,
        launcher_cpu_secs,
        workers_cpu_secs,
    })
}

/// The measured baseline: `n` bare worker processes, started at once, until
/// every heartbeat key is in Redis; then SIGTERM to all until all exited.
async fn raw_workers_once(
    worker: &Path,
    redis: &RedisServer,
    n: usize,
    dir: &Path,
) -> anyhow::Result<Times> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let keys = fresh_keys(n);
    let heartbeats: Vec<String> = keys.iter().map(worker_heartbeat_key).collect();
    let client = redis::Client::open(redis.url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;

    let started = Instant::now();
    let mut children: Vec<Child> = Vec::with_capacity(n);
    for (i, key) in keys.iter().enumerate() {
        let log = std::fs::File::create(logs.join(format!("{i}.log")))?;
        children.push(
            Command::new(worker)
                .arg("--redis-url")
                .arg(redis.url())
                .arg("--circle-public-key")
                .arg(key.to_hex())
                .arg("--db-path")
                .arg(dir)
                // As the launcher runs its workers: info logs to a file.
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting a worker")?,
        );
    }
    loop {
        let present: usize = redis::cmd("EXISTS")
            .arg(&heartbeats)
            .query_async(&mut conn)
            .await?;
        if present == n {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < START_TIMEOUT,
            "only {present} of {n} worker heartbeats after {START_TIMEOUT:?}\n{}",
            log_tail(&logs.join("0.log"), 10)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let start = started.elapsed();
    let workers_pss_kib = children.iter().filter_map(Child::id).map(pss_kib).sum();
    let workers_cpu_secs = children
        .iter()
        .filter_map(Child::id)
        .map(precise_cpu_secs)
        .sum();

    let stopping = Instant::now();
    for child in &children {
        send_signal(child, Signal::TERM)?;
    }
    for child in &mut children {
        let status = wait_exit(child, "a worker", STOP_TIMEOUT).await?;
        anyhow::ensure!(
            status.success(),
            "a worker exited with {status} after SIGTERM"
        );
    }
    Ok(Times {
        start,
        stop: stopping.elapsed(),
        launcher_anon_kib: 0,
        workers_pss_kib,
        launcher_cpu_secs: 0.0,
        workers_cpu_secs,
    })
}
