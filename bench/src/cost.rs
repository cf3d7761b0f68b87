//! What a play and a circle cost, each figure beside its baseline from the
//! same run: WebSocket plays/s against the engine-less floor loop, the CPU
//! each process spends per play (from `/proc/<pid>/stat`), Redis commands per
//! task (`INFO commandstats`), and worker memory per circle, idle and after
//! load (anonymous memory and PSS: the binary's pages are shared by every
//! worker, so plain RSS counts them once per worker).
//!
//! Every process is a real one — `redis-server`, `worker`s, the `server`
//! binary — so that CPU time can be told apart per process.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use circles_dispatcher::{CircleKeypair, CirclePublicKey, Dispatcher};
use circles_test_support::{RedisServer, WorkerProcess, free_port, wait_for_port, ws};
use comfy_table::Table;
use tokio::sync::watch;

use crate::process::{anon_kib, process_cpu_secs, pss_kib, rss_kib};
use crate::stats::{PairedRatios, Samples, fmt_duration, ratio};
use crate::tasks::{drive_with, floor_worker};

/// Circles, and connections (one per circle), of the throughput figures.
const CIRCLES: usize = 8;
/// Alternating slices each of the floor and of the plays, each half the
/// `--seconds` asked for. Ratios are taken per pair of neighbouring slices
/// and their median shown with their range: on this VM the same run's
/// throughput can drift by half between one second and the next, and a
/// ratio of totals hides which way.
const SLICES: u32 = 6;
/// Tasks run to count Redis commands.
const COUNTED_TASKS: usize = 2000;

/// Runs the section and returns its tables.
pub async fn run(per_run: Duration, memory_circles: usize) -> anyhow::Result<Vec<Table>> {
    let redis = RedisServer::start();
    let redis_pid = redis.pid().unwrap_or(0);
    let circles: Vec<CirclePublicKey> = (0..CIRCLES)
        .map(|_| CircleKeypair::generate().public)
        .collect();

    // The floor serves circles of its own (it holds their leases), so it
    // can stay up beside the real workers: the two are measured in
    // alternating slices, and this VM's noise falls on both alike.
    let floor_circles: Vec<CirclePublicKey> = (0..CIRCLES)
        .map(|_| CircleKeypair::generate().public)
        .collect();
    let (stop_floor, stop_rx) = watch::channel(false);
    let floors: Vec<_> = floor_circles
        .iter()
        .map(|c| tokio::spawn(floor_worker(redis.url(), *c, stop_rx.clone())))
        .collect();
    let floor_dispatcher = Dispatcher::connect(&redis.url(), "bench").await?;

    let data = tempfile::tempdir()?;
    let mut tcp = Stack::start(&redis, redis.url(), &circles, data.path()).await?;
    let idle_anon = tcp.workers.iter().map(|w| anon_kib(w.pid())).sum::<u64>() / CIRCLES as u64;
    // The same over Redis's Unix socket, on circles of their own.
    let socket_circles: Vec<CirclePublicKey> = (0..CIRCLES)
        .map(|_| CircleKeypair::generate().public)
        .collect();
    let mut unix = Stack::start(&redis, redis.unix_url(), &socket_circles, data.path()).await?;

    let slice = per_run / 2;
    let mut floor_parts = Vec::new();
    // Redis's CPU seconds during the floor's slices: the same protocol
    // without the server and the engine, so its CPU per task is the
    // baseline of Redis's CPU per play.
    let mut floor_redis_cpu = 0.0;
    let mut direct_parts = Vec::new();
    // Dispatcher clients, one per circle, as the floor is driven.
    let drive = |circles| {
        drive_with(
            &floor_dispatcher,
            circles,
            CIRCLES,
            Duration::from_millis(100),
            slice,
        )
    };
    for _ in 0..SLICES {
        let before = process_cpu_secs(redis_pid);
        floor_parts.push(drive(&floor_circles).await?);
        floor_redis_cpu += process_cpu_secs(redis_pid) - before;
        // The same eight workers without the server: tells the server's
        // share of the gap to the floor from the workers'.
        direct_parts.push(drive(&circles).await?);
        tcp.measure(slice, redis_pid).await?;
        unix.measure(slice, redis_pid).await?;
    }
    let _ = stop_floor.send(true);
    for f in floors {
        f.await??;
    }
    let paired = PairedRatios::of_throughputs(&tcp.plays, &floor_parts);
    let direct_paired = PairedRatios::of_throughputs(&direct_parts, &floor_parts);
    let plays_over_direct = PairedRatios::of_throughputs(&tcp.plays, &direct_parts);
    let unix_paired = PairedRatios::of_throughputs(&unix.plays, &tcp.plays);
    let floor = Samples::combine(floor_parts);
    let floor_redis_per_task = floor_redis_cpu * 1e6 / floor.count() as f64;
    let plays = Samples::combine(std::mem::take(&mut tcp.plays));
    let per_play = |i: usize| tcp.cpu[i] * 1e6 / plays.count() as f64;
    let unix_plays = Samples::combine(std::mem::take(&mut unix.plays));
    let unix_per_play = unix.cpu.iter().sum::<f64>() * 1e6 / unix_plays.count() as f64;
    drop(unix);
    let workers = std::mem::take(&mut tcp.workers);
    let after_load_anon = workers.iter().map(|w| anon_kib(w.pid())).sum::<u64>() / CIRCLES as u64;
    let pss = workers.iter().map(|w| pss_kib(w.pid())).sum::<u64>() / CIRCLES as u64;

    let mut throughput = Table::new();
    throughput.load_style(comfy_table::presets::ASCII_MARKDOWN);
    throughput.set_header([
        "figure",
        "measured",
        "baseline (same run)",
        "baseline",
        "ratio",
    ]);
    throughput.add_row([
        format!("WebSocket plays/s, {CIRCLES} connections over {CIRCLES} circles"),
        format!("{:.0}", plays.throughput()),
        format!("floor loop: {CIRCLES} dispatcher clients, {CIRCLES} engine-less workers, tasks/s"),
        format!("{:.0}", floor.throughput()),
        paired.to_string(),
    ]);
    let direct = Samples::combine(direct_parts);
    throughput.add_row([
        format!("the same {CIRCLES} workers without the server: dispatcher tasks/s"),
        format!("{:.0}", direct.throughput()),
        "floor loop (above)".to_string(),
        format!("{:.0}", floor.throughput()),
        direct_paired.to_string(),
    ]);
    throughput.add_row([
        "WebSocket plays/s (first row)".to_string(),
        format!("{:.0}", plays.throughput()),
        format!("the same {CIRCLES} workers without the server (above)"),
        format!("{:.0}", direct.throughput()),
        plays_over_direct.to_string(),
    ]);
    throughput.add_row([
        "play p50 at that load".to_string(),
        fmt_duration(plays.percentile(50.0)),
        "floor p50".to_string(),
        fmt_duration(floor.percentile(50.0)),
        ratio(
            plays.percentile(50.0).as_secs_f64(),
            floor.percentile(50.0).as_secs_f64(),
        ),
    ]);
    let total = per_play(0) + per_play(1) + per_play(2);
    throughput.add_row([
        "over Redis's Unix socket: plays/s".to_string(),
        format!("{:.0}", unix_plays.throughput()),
        "over loopback TCP (above)".to_string(),
        format!("{:.0}", plays.throughput()),
        unix_paired.to_string(),
    ]);
    throughput.add_row([
        "over Redis's Unix socket: CPU per play, all three".to_string(),
        format!("{unix_per_play:.0} µs"),
        "over loopback TCP (below)".to_string(),
        format!("{total:.0} µs"),
        ratio(unix_per_play, total),
    ]);
    throughput.add_row([
        "CPU per play: Redis".to_string(),
        format!("{:.0} µs", per_play(1)),
        "Redis's CPU per floor task (same protocol, no server, no engine)".to_string(),
        format!("{floor_redis_per_task:.0} µs"),
        ratio(per_play(1), floor_redis_per_task),
    ]);
    for (what, value) in [
        ("CPU per play: server", per_play(0)),
        ("CPU per play: workers", per_play(2)),
        ("CPU per play: all three", total),
    ] {
        throughput.add_row([
            what.to_string(),
            format!("{value:.0} µs"),
            "—".to_string(),
            "—".to_string(),
            "—".to_string(),
        ]);
    }
    drop(tcp);

    // Redis commands per task, one client, then eight.
    let mut commands = Table::new();
    commands.load_style(comfy_table::presets::ASCII_MARKDOWN);
    commands.set_header([
        "clients → circles",
        "commands per task (all, incl. inside scripts)",
        "by command",
        "requests per task (EVAL, EVALSHA, BLPOP, BLMOVE: all the protocol sends)",
        "worker round trips per task (BLMOVE + load pipelined; finish)",
    ]);
    // One client; one per circle; all on one circle (its queue is never
    // empty, so each finish brings the next task).
    for (clients, over) in [(1usize, CIRCLES), (CIRCLES, CIRCLES), (CIRCLES, 1)] {
        let d = Dispatcher::connect(&redis.url(), "bench").await?;
        redis.cli(&["CONFIG", "RESETSTAT"]);
        count_tasks(&d, &circles[..over], clients, COUNTED_TASKS).await?;
        let stats = commandstats(&redis);
        let per = |name: &str| stats.get(name).copied().unwrap_or(0) as f64 / COUNTED_TASKS as f64;
        let all: u64 = stats
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "info" | "config|resetstat" | "config"))
            .map(|(_, v)| v)
            .sum();
        let by: Vec<String> = stats
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "info" | "config|resetstat" | "config"))
            .filter(|(_, v)| **v as f64 / COUNTED_TASKS as f64 >= 0.05)
            .map(|(k, v)| format!("{k} {:.2}", *v as f64 / COUNTED_TASKS as f64))
            .collect();
        commands.add_row([
            format!("{clients} → {}", clients.min(over)),
            format!("{:.2}", all as f64 / COUNTED_TASKS as f64),
            by.join(", "),
            format!(
                "{:.2}",
                per("eval") + per("evalsha") + per("blpop") + per("blmove")
            ),
            // A take is a BLMOVE with its load (an EVALSHA) behind it, needed
            // only when no finish brought the next task; every other EVALSHA
            // is a finish.
            format!("{:.2}", per("evalsha")),
        ]);
    }

    // Memory per worker: the eight above, then `memory_circles` more.
    let mut memory = Table::new();
    memory.load_style(comfy_table::presets::ASCII_MARKDOWN);
    memory.set_header([
        "workers",
        "anonymous memory per worker, idle",
        "after load",
        "PSS per worker",
        "RSS per worker (counts shared pages once per worker)",
    ]);
    memory.add_row([
        CIRCLES.to_string(),
        format!("{idle_anon} KiB"),
        format!("{after_load_anon} KiB"),
        format!("{pss} KiB"),
        format!(
            "{} KiB",
            workers.iter().map(|w| rss_kib(w.pid())).sum::<u64>() / CIRCLES as u64
        ),
    ]);
    drop(workers);
    if memory_circles > 0 {
        let many: Vec<CirclePublicKey> = (0..memory_circles)
            .map(|_| CircleKeypair::generate().public)
            .collect();
        let workers: Vec<WorkerProcess> = tokio::task::block_in_place(|| {
            many.iter()
                .map(|c| WorkerProcess::start(&redis, &c.to_hex(), data.path(), &[], &[]))
                .collect()
        });
        let idle = workers.iter().map(|w| anon_kib(w.pid())).sum::<u64>() / memory_circles as u64;
        let d = Dispatcher::connect(&redis.url(), "bench").await?;
        count_tasks(&d, &many, 16, memory_circles * 20).await?;
        let loaded = workers.iter().map(|w| anon_kib(w.pid())).sum::<u64>() / memory_circles as u64;
        let pss = workers.iter().map(|w| pss_kib(w.pid())).sum::<u64>() / memory_circles as u64;
        let rss = workers.iter().map(|w| rss_kib(w.pid())).sum::<u64>() / memory_circles as u64;
        memory.add_row([
            memory_circles.to_string(),
            format!("{idle} KiB"),
            format!("{loaded} KiB"),
            format!("{pss} KiB"),
            format!("{rss} KiB"),
        ]);
    }
    Ok(vec![throughput, commands, memory])
}

/// `n` tasks of `40 + 2`, from `clients` concurrent callers over `circles`.
async fn count_tasks(
    d: &Dispatcher,
    circles: &[CirclePublicKey],
    clients: usize,
    n: usize,
) -> anyhow::Result<()> {
    let per_client = n / clients;
    let mut loops = Vec::new();
    for i in 0..clients {
        let (d, c) = (d.clone(), circles[i % circles.len()]);
        loops.push(tokio::spawn(async move {
            for _ in 0..per_client {
                anyhow::ensure!(d.run(&c, "40 + 2", Duration::from_secs(10)).await? == "42");
            }
            anyhow::Ok(())
        }));
    }
    for l in loops {
        l.await??;
    }
    Ok(())
}

/// Each client plays `40 + 2` in a loop, one call at a time, for `time`.
async fn play_loops(
    clients: Vec<ws::Client>,
    time: Duration,
) -> anyhow::Result<(Samples, Vec<ws::Client>)> {
    let end = Instant::now() + time;
    let mut loops = Vec::new();
    for mut client in clients {
        loops.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let t0 = Instant::now();
                let out = client.play("40 + 2").await;
                anyhow::ensure!(out == "42", "unexpected output {out}");
                lat.push(t0.elapsed());
            }
            anyhow::Ok((lat, client))
        }));
    }
    let (mut all, mut back) = (Vec::new(), Vec::new());
    for l in loops {
        let (lat, client) = l.await??;
        all.extend(lat);
        back.push(client);
    }
    Ok((Samples::new(all, time), back))
}

/// CPU seconds so far of three groups of processes: `[a, b, c]`.
fn cpu_ticks(a: &[u32], b: &[u32], c: &[u32]) -> [f64; 3] {
    let ticks = |pids: &[u32]| pids.iter().map(|p| process_cpu_secs(*p)).sum::<f64>();
    [ticks(a), ticks(b), ticks(c)]
}

/// `INFO commandstats` as command → calls.
fn commandstats(redis: &RedisServer) -> BTreeMap<String, u64> {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_string(), calls.parse().ok()?))
        })
        .collect()
}

/// Workers, the server binary and one WebSocket client per circle, all
/// reaching Redis at one URL; the plays measured and the CPU they cost.
struct Stack {
    workers: Vec<WorkerProcess>,
    server: tokio::process::Child,
    clients: Vec<ws::Client>,
    plays: Vec<Samples>,
    /// CPU seconds spent during the measured plays: server, Redis, workers.
    cpu: [f64; 3],
}

impl Stack {
    async fn start(
        redis: &RedisServer,
        url: String,
        circles: &[CirclePublicKey],
        data: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let workers: Vec<WorkerProcess> = circles
            .iter()
            .map(|c| {
                let cmd = WorkerProcess::command_with_url(&url, &c.to_hex(), data, &[]);
                WorkerProcess::spawn_ready(redis, &c.to_hex(), cmd)
            })
            .collect();
        // The server binary as a process of its own, circles learnt from Redis.
        let port = free_port();
        let server = tokio::process::Command::new(circles_test_support::binary("server"))
            .args(["--port", &port.to_string()])
            .env("REDIS_URL", &url)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()?;
        tokio::task::block_in_place(|| wait_for_port(port, Duration::from_secs(10)));
        let mut clients = Vec::new();
        for c in circles {
            clients.push(ws::Client::connect(&format!("ws://127.0.0.1:{port}/{c}")).await);
        }
        // Warm up.
        let (_, clients) = play_loops(clients, Duration::from_millis(300)).await?;
        Ok(Self {
            workers,
            server,
            clients,
            plays: Vec::new(),
            cpu: [0.0; 3],
        })
    }

    /// One slice of plays, with the CPU each process group spent on it.
    async fn measure(&mut self, slice: Duration, redis_pid: u32) -> anyhow::Result<()> {
        let server = [self.server.id().unwrap_or(0)];
        let workers: Vec<u32> = self.workers.iter().map(WorkerProcess::pid).collect();
        let before = cpu_ticks(&server, &[redis_pid], &workers);
        let (plays, clients) = play_loops(std::mem::take(&mut self.clients), slice).await?;
        let after = cpu_ticks(&server, &[redis_pid], &workers);
        self.clients = clients;
        self.plays.push(plays);
        for (spent, (a, b)) in self.cpu.iter_mut().zip(after.iter().zip(before)) {
            *spent += a - b;
        }
        Ok(())
    }
}
