//! Task round trip through a real worker, beside the floor: the same Redis
//! commands driven by an in-process loop without Rhai (`TaskQueue` used
//! directly, answering "42"), measured in the same run.
//!
//! "Workers" means circles: with 2, there are two circles with one worker
//! each and the clients alternate between them (one worker per circle is the
//! design: a circle's queue has exactly one consumer).

use std::time::{Duration, Instant};

use circles_dispatcher::{CirclePublicKey, Dispatcher, TaskOutcome};
use circles_test_support::{KEY_ONE, KEY_TWO, RedisServer, WorkerProcess};
use circles_worker::queue::{Taken, TaskQueue};
use comfy_table::Table;
use tokio::sync::watch;

use crate::process::rss_kib;
use crate::stats::{Samples, fmt_duration, ratio};

/// One configuration's result, real and floor.
struct Row {
    workers: usize,
    clients: usize,
    real: Samples,
    floor: Samples,
}

/// Runs the task benchmark and returns its table.
pub async fn run(per_run: Duration) -> anyhow::Result<Table> {
    let redis = RedisServer::start();
    let circles: Vec<CirclePublicKey> = [KEY_ONE, KEY_TWO]
        .iter()
        .map(|k| k.parse().unwrap())
        .collect();
    let data = tempfile::tempdir()?;
    let mut rows = Vec::new();
    let mut rss = Vec::new();
    for workers in [1usize, 2] {
        let used = &circles[..workers];
        for clients in [1usize, 8, 32] {
            // Real workers.
            let procs: Vec<WorkerProcess> = used
                .iter()
                .map(|c| WorkerProcess::start(&redis, &c.to_hex(), data.path(), &[], &[]))
                .collect();
            if rss.is_empty() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                rss.push(rss_kib(procs[0].pid()));
            }
            let real = drive(&redis, used, clients, per_run).await?;
            drop(procs);
            // Floor: same commands, no Rhai, in this process.
            let (stop_tx, stop_rx) = watch::channel(false);
            let mut floors = Vec::new();
            for c in used {
                floors.push(tokio::spawn(floor_worker(redis.url(), *c, stop_rx.clone())));
            }
            let floor = drive(&redis, used, clients, per_run).await?;
            let _ = stop_tx.send(true);
            for f in floors {
                f.await??;
            }
            rows.push(Row {
                workers,
                clients,
                real,
                floor,
            });
        }
    }
    let mut table = Table::new();
    table.load_style(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header([
        "workers",
        "clients",
        "p50",
        "p95",
        "p99",
        "tasks/s",
        "floor p50",
        "floor p99",
        "floor tasks/s",
        "p50 ÷ floor",
        "tasks/s ÷ floor",
    ]);
    for r in &rows {
        table.add_row([
            r.workers.to_string(),
            r.clients.to_string(),
            fmt_duration(r.real.percentile(50.0)),
            fmt_duration(r.real.percentile(95.0)),
            fmt_duration(r.real.percentile(99.0)),
            format!("{:.0}", r.real.throughput()),
            fmt_duration(r.floor.percentile(50.0)),
            fmt_duration(r.floor.percentile(99.0)),
            format!("{:.0}", r.floor.throughput()),
            ratio(
                r.real.percentile(50.0).as_secs_f64(),
                r.floor.percentile(50.0).as_secs_f64(),
            ),
            ratio(r.real.throughput(), r.floor.throughput()),
        ]);
    }
    let rss = rss.first().copied().unwrap_or(0);
    println!("idle worker RSS: {:.1} MiB", rss as f64 / 1024.0);
    Ok(table)
}

/// `clients` concurrent dispatcher loops running `40 + 2` for `per_run`
/// (after a short warm-up), spread over `circles`.
async fn drive(
    redis: &RedisServer,
    circles: &[CirclePublicKey],
    clients: usize,
    per_run: Duration,
) -> anyhow::Result<Samples> {
    let dispatcher = Dispatcher::connect(&redis.url(), "bench").await?;
    drive_with(
        &dispatcher,
        circles,
        clients,
        Duration::from_millis(300),
        per_run,
    )
    .await
}

/// [`drive`] on a given dispatcher with a given warm-up.
pub async fn drive_with(
    dispatcher: &Dispatcher,
    circles: &[CirclePublicKey],
    clients: usize,
    warm_up: Duration,
    per_run: Duration,
) -> anyhow::Result<Samples> {
    let warm_until = Instant::now() + warm_up;
    let end = warm_until + per_run;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let d = dispatcher.clone();
        let circle = circles[i % circles.len()];
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let out = d.run(&circle, "40 + 2", Duration::from_secs(10)).await?;
                anyhow::ensure!(out == "42", "unexpected output {out}");
                if t0 >= warm_until {
                    lat.push(t0.elapsed());
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(Samples::new(all, per_run))
}

/// The floor: a worker loop doing the worker's Redis commands with no engine.
pub(crate) async fn floor_worker(
    url: String,
    circle: CirclePublicKey,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let cfg = redis::aio::ConnectionManagerConfig::new().set_response_timeout(None);
    let mut conn =
        redis::aio::ConnectionManager::new_with_config(client.clone(), cfg.clone()).await?;
    let mut blocking = redis::aio::ConnectionManager::new_with_config(client, cfg).await?;
    let queue = TaskQueue::new(circle, Some(Duration::from_secs(3600)));
    // A live heartbeat, as a worker keeps: submissions check it.
    let heartbeat = circles_dispatcher::protocol::worker_heartbeat_key(&circle);
    redis::cmd("SET")
        .arg(&heartbeat)
        .arg("{}")
        .arg("EX")
        .arg(3600)
        .query_async::<()>(&mut conn)
        .await?;
    // And the lease every finish is fenced by, as a worker holds it.
    let lease = circles_worker::lease::Lease::acquire(&mut conn, &circle)
        .await?
        .map_err(|held| anyhow::anyhow!("circle owned by {:?}", held.0))?;
    circles_worker::queue::load_take_script(&mut blocking).await?;
    let result = floor_loop(&queue, &lease.value(), &mut conn, &mut blocking, &mut stop).await;
    lease
        .release(&mut conn, std::slice::from_ref(&heartbeat))
        .await?;
    redis::cmd("DEL")
        .arg(&heartbeat)
        .query_async::<()>(&mut conn)
        .await?;
    result
}

async fn floor_loop(
    queue: &TaskQueue,
    lease: &str,
    conn: &mut redis::aio::ConnectionManager,
    blocking: &mut redis::aio::ConnectionManager,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // The worker's own protocol: a blocking take when the queue is empty,
    // else the next task comes with the finish of the last (one round trip
    // per task under load).
    let mut next: Option<(String, Taken)> = None;
    loop {
        let (id, taken) = match next.take() {
            Some(task) => task,
            None => {
                let taken = tokio::select! {
                    _ = stop.changed() => return Ok(()),
                    taken = queue.take_loaded(blocking, Duration::from_secs(1)) => taken?,
                };
                let Some((id, taken)) = taken else { continue };
                let taken = match taken {
                    Some(taken) => taken,
                    None => queue.load(conn, &id).await?,
                };
                (id, taken)
            }
        };
        let outcome = match taken {
            Taken::Task(_) => TaskOutcome::Completed {
                output: "42".into(),
            },
            Taken::Broken(error) => TaskOutcome::Error { error },
            Taken::Snapshot(_) => TaskOutcome::Error {
                error: "the floor loop takes no snapshots".into(),
            },
        };
        let take_next = !*stop.borrow();
        next = queue
            .finish_and_take(conn, lease, &id, &outcome, take_next)
            .await?
            .1;
    }
}

/// Worker flags that turn every per-task cap off (the counting allocator
/// stays: it is always there).
const CAPS_OFF: [&str; 14] = [
    "--max-memory-mb",
    "0",
    "--max-operations",
    "0",
    "--max-script-bytes",
    "1073741824",
    "--max-output-bytes",
    "1073741824",
    "--max-log-bytes",
    "1073741824",
    "--max-value-depth",
    "1000000",
    "--max-string-size",
    "1073741824",
];

/// The cost of the hardening caps: the same worker binary with its default
/// caps and with them turned off, measured in alternating slices (three
/// each) so that drift on a busy machine weighs on both.
pub async fn run_caps(per_run: Duration) -> anyhow::Result<Table> {
    let redis = RedisServer::start();
    let circle: CirclePublicKey = KEY_ONE.parse()?;
    let data = tempfile::tempdir()?;
    let slice = per_run / 3;
    let mut table = Table::new();
    table.load_style(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header([
        "clients",
        "caps on: p50",
        "caps on: p99",
        "caps on: tasks/s",
        "caps off: p50",
        "caps off: p99",
        "caps off: tasks/s",
        "p50 on ÷ off",
        "tasks/s on ÷ off",
    ]);
    for clients in [1usize, 8] {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            for (caps, into) in [(true, &mut on), (false, &mut off)] {
                let args: &[&str] = if caps { &[] } else { &CAPS_OFF };
                let mut worker = WorkerProcess::start(&redis, KEY_ONE, data.path(), args, &[]);
                into.push(drive(&redis, &[circle], clients, slice).await?);
                // A clean stop releases the circle's lease for the next one.
                worker.signal("TERM");
                worker.wait_exit(Duration::from_secs(10));
            }
        }
        let (on, off) = (Samples::combine(on), Samples::combine(off));
        table.add_row([
            clients.to_string(),
            fmt_duration(on.percentile(50.0)),
            fmt_duration(on.percentile(99.0)),
            format!("{:.0}", on.throughput()),
            fmt_duration(off.percentile(50.0)),
            fmt_duration(off.percentile(99.0)),
            format!("{:.0}", off.throughput()),
            ratio(
                on.percentile(50.0).as_secs_f64(),
                off.percentile(50.0).as_secs_f64(),
            ),
            ratio(on.throughput(), off.throughput()),
        ]);
    }
    Ok(table)
}
