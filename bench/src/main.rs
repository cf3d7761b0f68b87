//! `circles-bench`: prints each benchmark as a table, every figure beside a
//! baseline measured in the same run (these machines are noisy, so only
//! ratios measured together mean anything). Run it through `scripts/bench.sh`,
//! which also runs the `systemd` section inside a private systemd.

mod cost;
mod launcher;
mod process;
mod stats;
mod supervisor;
mod systemd;
mod tasks;
mod websocket;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "circles benchmarks")]
struct Cli {
    /// Which sections to run (default: all).
    #[arg(value_enum)]
    sections: Vec<Section>,
    /// Sections not to run (with the default of all).
    #[arg(long, value_enum, value_name = "SECTION")]
    skip: Vec<Section>,
    /// Seconds measured per configuration of the latency sections (tasks, websocket).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Runs per circle count of the launcher section (the median is shown).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Circle counts of the launcher section, e.g. `--launcher-circles 1000`
    /// for the (opt-in, minutes-long) 1,000-circle run.
    #[arg(long, value_delimiter = ',', default_values_t = launcher::DEFAULT_CIRCLES)]
    launcher_circles: Vec<usize>,
    /// Workers started for the memory figure of the cost section.
    #[arg(long, default_value_t = 200)]
    memory_circles: usize,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    /// Task round trip through a worker vs the raw Redis floor.
    Tasks,
    /// The worker's hardening caps on vs off.
    Caps,
    /// Cost per play and per circle: throughput vs the floor, CPU per play per process, Redis commands per task, worker memory.
    Cost,
    /// Launcher start-up (direct mode) vs bare workers and the old fixed sleeps.
    Launcher,
    /// WebSocket `play` round trip vs the dispatcher round trip.
    Websocket,
    /// Service install and cleanup vs one systemctl per action (inside scripts/systemd-sandbox only).
    Systemd,
    /// The supervisor: start-up of N runners vs the launcher, status of 50 runners, run_job vs the dispatcher.
    Supervisor,
}

impl Section {
    const ALL: [Section; 7] = [
        Section::Tasks,
        Section::Caps,
        Section::Cost,
        Section::Launcher,
        Section::Websocket,
        Section::Supervisor,
        Section::Systemd,
    ];
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "error: {}",
                circles_dispatcher::text::error_chain(err.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let sections: Vec<Section> = Section::ALL
        .into_iter()
        .filter(|s| cli.sections.is_empty() || cli.sections.contains(s))
        .filter(|s| !cli.skip.contains(s))
        .collect();
    let per_run = Duration::from_secs_f64(cli.seconds);
    for section in sections {
        match section {
            Section::Tasks => {
                println!(
                    "\n## Task round trip: `40 + 2` through dispatcher → Redis → worker → Redis\n"
                );
                println!(
                    "Floor: the worker's Redis commands driven by an in-process loop with no Rhai engine (answers \"42\"), same Redis, same run. `workers` = circles, one worker each; clients alternate between them.\n"
                );
                println!("{}", tasks::run(per_run).await?);
            }
            Section::Caps => {
                println!(
                    "\n## Hardening caps: `40 + 2` round trip with the worker's caps on (defaults) and off\n"
                );
                println!(
                    "Same worker binary, same Redis, same run; `off` = memory budget, operations, script/output/log size, value depth and string limits all disabled by flags (the counting allocator cannot be switched off and is in both). Alternating slices, three each.\n"
                );
                println!("{}", tasks::run_caps(per_run).await?);
            }
            Section::Cost => {
                println!("\n## Cost per play and per circle\n");
                println!(
                    "Real processes: `redis-server`, one `worker` per circle, the `server` binary; an independent WebSocket client (tokio-tungstenite) in the bench process, one connection per circle, one call at a time. CPU per play = utime+stime of each process (`/proc/<pid>/stat`) over the measured plays. Floor = the engine-less worker loop (on 8 circles of its own) driven by dispatcher clients, same Redis, in slices alternating with the plays (six each, of half `--seconds`); a throughput ratio is the median over neighbouring pairs of slices, their range in brackets. Commands per task = `INFO commandstats` over {} tasks (calls made inside scripts included). Memory: `RssAnon` (the worker's own memory), PSS (its share of everything it maps), and RSS (which counts the shared binary once per worker).\n",
                    2000
                );
                for table in cost::run(per_run, cli.memory_circles).await? {
                    println!("{table}\n");
                }
            }
            Section::Launcher => {
                println!(
                    "\n## Launcher start-up (direct mode): process start → every circle ready and its init script done\n"
                );
                println!(
                    "Baselines: `raw workers` = the same number of bare `worker` processes spawned at once until every heartbeat key is in Redis (measured, same run; no server, no init scripts); `original design` = the first launcher's fixed 2 s sleep before each init script (computed, N × 2 s, not measured). Medians of {} runs; fresh keys and data each run.\n",
                    cli.repeats.max(1)
                );
                println!(
                    "{}",
                    launcher::run(&cli.launcher_circles, cli.repeats).await?
                );
            }
            Section::Websocket => {
                println!(
                    "\n## WebSocket `play` round trip: `40 + 2` through client → server → Redis → worker and back\n"
                );
                println!(
                    "Baseline: the dispatcher round trip (`Dispatcher::run`, what the server calls) with the same worker in the same run, as many concurrent callers as connections; each connection makes one call at a time.\n"
                );
                println!("{}", websocket::run(per_run).await?);
            }
            Section::Supervisor => {
                println!("\n## Supervisor\n");
                for (caption, table) in supervisor::run(per_run, cli.repeats.min(3)).await? {
                    println!("{caption}\n\n{table}\n");
                }
            }
            Section::Systemd => {
                systemd::ensure_sandbox()?;
                println!(
                    "\n## systemd: installing N circles as services (N workers + 1 server, all ready) and removing them\n"
                );
                println!(
                    "Baseline: the same rendered unit files written by hand, then one `systemctl` process per action (daemon-reload once, enable + start per unit, is-active until all active; cleanup: stop, disable, rm, daemon-reload, reset-failed per unit). `launcher` = the real binary (no init scripts) and `launcher cleanup`; `ServiceBackend` = the services crate in-process (plan+apply, cleanup). One run each, inside scripts/systemd-sandbox.\n"
                );
                println!("{}", systemd::run().await?);
            }
        }
    }
    Ok(())
}
