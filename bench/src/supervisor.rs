//! The supervisor, beside baselines measured in the same run:
//!
//! - `add_runner` + `start_all` of N runners (child processes, init
//!   scripts sent) against the launcher bringing the same N circles up in
//!   direct mode (`launcher_once`, the launcher section's measurement);
//! - `get_all_runner_status` with 50 runners against `list_runners` on
//!   the same connection (the API's floor: same transport and framing, no
//!   status gathered);
//! - `run_job` (`40 + 2`, over the API, waiting for the result) against
//!   `Dispatcher::run` on the same worker, in alternating slices.
//!
//! The supervisor is the real `target/release/supervisor` binary with the
//! `child` manager; calls go over one WebSocket, one at a time.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use circles_dispatcher::{CircleKeypair, CirclePublicKey, Dispatcher};
use circles_test_support::{RedisServer, binary, free_port};
use comfy_table::Table;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::process::log_tail;
use crate::stats::{Samples, fmt_duration, median, ratio};

/// Runner counts of the start-up table.
const RUNNERS: [usize; 3] = [1, 10, 50];
/// Runners present while `get_all_runner_status` is measured.
const STATUS_RUNNERS: usize = 50;
/// Calls measured per method for the status table.
const STATUS_CALLS: usize = 400;
/// Slices each way the job round trip is measured in, alternating.
const ROUNDS: u32 = 4;
/// How long a start may take before the bench gives up.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Each runner's init script, as in the launcher section.
const INIT_SCRIPT: &str = "db_set(\"bench:init\", \"done\");\n\"done\"\n";

/// A `supervisor` process and a WebSocket to it.
struct Daemon {
    _child: Child,
    ws: Ws,
    port: u16,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// JSON-RPC over one WebSocket, one call at a time.
struct Ws {
    socket: Socket,
    next_id: u64,
}

impl Ws {
    async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.socket.send(Message::text(req.to_string())).await?;
        while let Some(msg) = self.socket.next().await {
            if let Message::Text(t) = msg? {
                let v: Value = serde_json::from_str(&t)?;
                if v["id"] == json!(id) {
                    if let Some(e) = v.get("error") {
                        bail!("{method}: {e}");
                    }
                    return Ok(v["result"].clone());
                }
            }
        }
        bail!("the supervisor closed the connection")
    }
}

/// JSON-RPC over one kept-alive HTTP/1.1 connection, written by hand.
struct KeepAlive {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
    port: u16,
}

impl KeepAlive {
    async fn connect(port: u16) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: tokio::io::BufReader::new(stream),
            port,
        })
    }

    async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
        let body =
            json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
        let request = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut length = None;
        loop {
            let mut line = String::new();
            anyhow::ensure!(
                self.stream.read_line(&mut line).await? > 0,
                "connection closed"
            );
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = Some(v.trim().parse::<usize>()?);
            }
        }
        let mut buf = vec![0u8; length.context("no content-length")?];
        self.stream.read_exact(&mut buf).await?;
        let v: Value = serde_json::from_slice(&buf)?;
        if let Some(e) = v.get("error") {
            bail!("{method}: {e}");
        }
        Ok(v["result"].clone())
    }
}

async fn start_daemon(redis: &RedisServer, dir: &Path) -> anyhow::Result<Daemon> {
    std::fs::create_dir_all(dir)?;
    let port = free_port();
    let log = dir.join("supervisor.log");
    let child = Command::new(binary("supervisor"))
        .args([
            "--port",
            &port.to_string(),
            "--manager",
            "child",
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .arg("--worker-binary")
        .arg(binary("worker"))
        .env("REDIS_URL", redis.url())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()
        .context("starting the supervisor")?;
    let started = Instant::now();
    let socket = loop {
        match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/")).await {
            Ok((s, _)) => break s,
            Err(_) if started.elapsed() < START_TIMEOUT => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => bail!(
                "the supervisor API never came up ({e})\n{}",
                log_tail(&log, 20)
            ),
        }
    };
    Ok(Daemon {
        _child: child,
        ws: Ws { socket, next_id: 0 },
        port,
    })
}

/// Adds `n` runners with init scripts, then `start_all`; returns the time
/// from the first `add_runner` until every runner runs with its init done.
async fn supervisor_start_once(
    redis: &RedisServer,
    n: usize,
    dir: &Path,
) -> anyhow::Result<(Duration, Daemon, Vec<CirclePublicKey>)> {
    let mut d = start_daemon(redis, dir).await?;
    let keys: Vec<CirclePublicKey> = (0..n).map(|_| CircleKeypair::generate().public).collect();
    let started = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        d.ws
            .call(
                "add_runner",
                json!({"name": format!("r{i}"), "circle_public_key": key.to_hex(), "init_script": INIT_SCRIPT}),
            )
            .await?;
    }
    let results = d.ws.call("start_all", json!({})).await?;
    let elapsed = started.elapsed();
    let failed: Vec<&Value> = results
        .as_array()
        .context("start_all result")?
        .iter()
        .filter(|r| r["ok"] != json!(true))
        .collect();
    anyhow::ensure!(failed.is_empty(), "runners did not start: {failed:?}");
    let all = d.ws.call("get_all_runner_status", json!({})).await?;
    for r in all.as_array().context("statuses")? {
        anyhow::ensure!(
            r["state"] == "running" && r["init"] == "ok: done",
            "not running with its init done: {r}"
        );
    }
    Ok((elapsed, d, keys))
}

/// Runs the supervisor benchmark and returns its tables.
pub async fn run(per_run: Duration, repeats: usize) -> anyhow::Result<Vec<(String, Table)>> {
    let redis = RedisServer::start();
    let launcher = binary("launcher");
    let mut startup = Table::new();
    startup.load_style(comfy_table::presets::ASCII_MARKDOWN);
    startup.set_header([
        "runners",
        "supervisor: add_runner ×N + start_all (init done)",
        "launcher: start-up with N circles (init done)",
        "supervisor ÷ launcher",
    ]);
    let repeats = repeats.max(1);
    for n in RUNNERS {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for round in 0..repeats {
            let dir = tempfile::Builder::new()
                .prefix("circles-bench-supervisor-")
                .tempdir()?;
            let launcher_dir = dir.path().join("launcher");
            let launcher_run =
                || crate::launcher::launcher_once(&launcher, &redis, n, &launcher_dir);
            if round % 2 == 1 {
                theirs.push(launcher_run().await?.start);
            }
            let (t, daemon, _) =
                supervisor_start_once(&redis, n, &dir.path().join("supervisor")).await?;
            ours.push(t);
            drop(daemon);
            if round % 2 == 0 {
                theirs.push(launcher_run().await?.start);
            }
        }
        let (a, b) = (median(ours), median(theirs));
        startup.add_row([
            n.to_string(),
            fmt_duration(a),
            fmt_duration(b),
            ratio(a.as_secs_f64(), b.as_secs_f64()),
        ]);
    }

    // 50 runners up; measure the status call and the job round trip.
    let dir = tempfile::Builder::new()
        .prefix("circles-bench-supervisor-")
        .tempdir()?;
    let (_, mut d, keys) = supervisor_start_once(&redis, STATUS_RUNNERS, dir.path()).await?;
    let mut status = Vec::with_capacity(STATUS_CALLS);
    let mut floor = Vec::with_capacity(STATUS_CALLS);
    let started = Instant::now();
    for _ in 0..STATUS_CALLS {
        let t = Instant::now();
        let all = d.ws.call("get_all_runner_status", json!({})).await?;
        status.push(t.elapsed());
        anyhow::ensure!(all.as_array().map(Vec::len) == Some(STATUS_RUNNERS));
        let t = Instant::now();
        d.ws.call("list_runners", json!({})).await?;
        floor.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    let (status, floor) = (Samples::new(status, elapsed), Samples::new(floor, elapsed));
    let mut status_table = Table::new();
    status_table.load_style(comfy_table::presets::ASCII_MARKDOWN);
    status_table.set_header([
        "runners",
        "get_all_runner_status p50",
        "p95",
        "p99",
        "list_runners p50 (floor)",
        "p50 ÷ floor",
    ]);
    status_table.add_row([
        STATUS_RUNNERS.to_string(),
        fmt_duration(status.percentile(50.0)),
        fmt_duration(status.percentile(95.0)),
        fmt_duration(status.percentile(99.0)),
        fmt_duration(floor.percentile(50.0)),
        ratio(
            status.percentile(50.0).as_secs_f64(),
            floor.percentile(50.0).as_secs_f64(),
        ),
    ]);

    // run_job vs Dispatcher::run on the same worker, alternating slices.
    let dispatcher = Dispatcher::connect(&redis.url(), "bench").await?;
    let circle = keys[0];
    let slice = per_run / ROUNDS;
    let mut http = KeepAlive::connect(d.port).await?;
    let mut over_ws = Vec::new();
    let mut over_http = Vec::new();
    let mut direct = Vec::new();
    let (mut ws_time, mut http_time, mut direct_time) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let job = json!({"runner": "r0", "script": "40 + 2"});
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        while t0.elapsed() < slice {
            let t = Instant::now();
            let r = d.ws.call("run_job", job.clone()).await?;
            over_ws.push(t.elapsed());
            anyhow::ensure!(r["output"] == "42", "run_job: {r}");
        }
        ws_time += t0.elapsed();
        let t0 = Instant::now();
        while t0.elapsed() < slice {
            let t = Instant::now();
            let r = http.call("run_job", job.clone()).await?;
            over_http.push(t.elapsed());
            anyhow::ensure!(r["output"] == "42", "run_job: {r}");
        }
        http_time += t0.elapsed();
        let t0 = Instant::now();
        while t0.elapsed() < slice {
            let t = Instant::now();
            let out = dispatcher
                .run(&circle, "40 + 2", Duration::from_secs(10))
                .await?;
            direct.push(t.elapsed());
            anyhow::ensure!(out == "42");
        }
        direct_time += t0.elapsed();
    }
    let direct = Samples::new(direct, direct_time);
    let mut jobs = Table::new();
    jobs.load_style(comfy_table::presets::ASCII_MARKDOWN);
    jobs.set_header([
        "transport",
        "run_job p50",
        "p99",
        "jobs/s",
        "Dispatcher::run p50",
        "p99",
        "tasks/s",
        "p50 ÷ dispatcher",
    ]);
    for (transport, samples, time) in [
        ("HTTP (kept alive)", over_http, http_time),
        ("WebSocket", over_ws, ws_time),
    ] {
        let api = Samples::new(samples, time);
        jobs.add_row([
            transport.to_string(),
            fmt_duration(api.percentile(50.0)),
            fmt_duration(api.percentile(99.0)),
            format!("{:.0}", api.throughput()),
            fmt_duration(direct.percentile(50.0)),
            fmt_duration(direct.percentile(99.0)),
            format!("{:.0}", direct.throughput()),
            ratio(
                api.percentile(50.0).as_secs_f64(),
                direct.percentile(50.0).as_secs_f64(),
            ),
        ]);
    }
    drop(d);
    Ok(vec![
        (
            "Start-up of N runners: the supervisor (daemon already up; `add_runner` ×N then `start_all`, init scripts done) vs the launcher (direct mode, process start → table with every init `ok`). Medians of the repeats.".into(),
            startup,
        ),
        (
            format!("`get_all_runner_status` with {STATUS_RUNNERS} running child runners, {STATUS_CALLS} calls on one WebSocket; floor: `list_runners` interleaved on the same connection."),
            status_table,
        ),
        (
            "`run_job` (`40 + 2`, over the API, waiting for the result) vs `Dispatcher::run` (what the supervisor calls) on the same worker, alternating slices.".into(),
            jobs,
        ),
    ])
}
