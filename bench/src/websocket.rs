//! The WebSocket `play` round trip, beside the dispatcher round trip it is
//! built on, measured in the same run against the same worker.
//!
//! The server is an in-process `circles_server::Server` on a free port; the
//! worker is a real `worker` process for one circle. Each connection makes
//! one call at a time, like a client waiting for its answer. The two are
//! measured in alternating slices (the measured time split in [`ROUNDS`]),
//! so a machine that gets busier mid-run weighs on both alike. What the
//! WebSocket adds over the baseline: the client's frame encoding, the
//! server's JSON-RPC parsing and routing, and its own dispatcher call.

use std::time::{Duration, Instant};

use circles_dispatcher::{CirclePublicKey, Dispatcher};
use circles_server::{Server, ServerConfig};
use circles_test_support::{KEY_ONE, RedisServer, WorkerProcess, ws};
use comfy_table::Table;
use tokio::sync::oneshot;

use crate::stats::{Samples, fmt_duration, ratio};
use crate::tasks::drive_with;

/// Connections (and, for the baseline, concurrent dispatcher callers).
const CONNECTIONS: [usize; 2] = [1, 8];
/// Slices each way is measured in, alternating.
const ROUNDS: u32 = 4;
/// Measured calls of a slice start after this.
const WARM_UP: Duration = Duration::from_millis(100);

/// Runs the WebSocket benchmark and returns its table.
pub async fn run(per_run: Duration) -> anyhow::Result<Table> {
    let redis = RedisServer::start();
    let circle: CirclePublicKey = KEY_ONE.parse()?;
    let data = tempfile::tempdir()?;
    let _worker = WorkerProcess::start(&redis, &circle.to_hex(), data.path(), &[], &[]);
    let server = Server::bind(ServerConfig {
        port: 0,
        redis_url: redis.url(),
        circles: vec![circle],
        ..ServerConfig::default()
    })
    .await?;
    let url = format!("ws://{}/{circle}", server.local_addr());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));

    let mut table = Table::new();
    table.load_style(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header([
        "connections",
        "p50",
        "p99",
        "plays/s",
        "dispatcher p50",
        "dispatcher p99",
        "dispatcher tasks/s",
        "p50 ÷ dispatcher",
        "plays/s ÷ dispatcher",
    ]);
    let dispatcher = Dispatcher::connect(&redis.url(), "bench").await?;
    let slice = per_run / ROUNDS;
    for connections in CONNECTIONS {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            clients.push(ws::Client::connect(&url).await);
        }
        // Alternate in short slices so drift on a noisy machine hits both.
        let (mut ws, mut base) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (samples, back) = play_loops(clients, slice).await?;
            clients = back;
            ws.push(samples);
            base.push(drive_with(&dispatcher, &[circle], connections, WARM_UP, slice).await?);
        }
        let (ws, base) = (Samples::combine(ws), Samples::combine(base));
        table.add_row([
            connections.to_string(),
            fmt_duration(ws.percentile(50.0)),
            fmt_duration(ws.percentile(99.0)),
            format!("{:.0}", ws.throughput()),
            fmt_duration(base.percentile(50.0)),
            fmt_duration(base.percentile(99.0)),
            format!("{:.0}", base.throughput()),
            ratio(
                ws.percentile(50.0).as_secs_f64(),
                base.percentile(50.0).as_secs_f64(),
            ),
            ratio(ws.throughput(), base.throughput()),
        ]);
    }
    let _ = stop_tx.send(());
    serving.await??;
    Ok(table)
}

/// Each client calls `play("40 + 2")` in a loop, one call at a time, for
/// `per_run` after a short warm-up; the clients are handed back for the
/// next slice.
async fn play_loops(
    clients: Vec<ws::Client>,
    per_run: Duration,
) -> anyhow::Result<(Samples, Vec<ws::Client>)> {
    let warm_until = Instant::now() + WARM_UP;
    let end = warm_until + per_run;
    let mut loops = Vec::new();
    for mut client in clients {
        loops.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let out = client.play("40 + 2").await;
                anyhow::ensure!(out == "42", "unexpected output {out}");
                if t0 >= warm_until {
                    lat.push(t0.elapsed());
                }
            }
            anyhow::Ok((lat, client))
        }));
    }
    let mut all = Vec::new();
    let mut clients = Vec::new();
    for l in loops {
        let (lat, client) = l.await??;
        all.extend(lat);
        clients.push(client);
    }
    Ok((Samples::new(all, per_run), clients))
}
