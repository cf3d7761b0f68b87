//! `circles-bench`: prints each benchmark as a table, every figure beside a
//! baseline measured in the same run (these machines are noisy, so only
//! ratios measured together mean anything). Run it through `scripts/bench.sh`.

mod stats;
mod tasks;

use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "circles benchmarks")]
struct Cli {
    /// Which sections to run (default: all).
    #[arg(value_enum)]
    sections: Vec<Section>,
    /// Seconds measured per configuration.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    /// Task round trip through a worker vs the raw Redis floor.
    Tasks,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let all = cli.sections.is_empty();
    let per_run = Duration::from_secs_f64(cli.seconds);
    if all || cli.sections.contains(&Section::Tasks) {
        println!("\n## Task round trip: `40 + 2` through dispatcher → Redis → worker → Redis\n");
        println!("{}", tasks::run(per_run).await?);
    }
    Ok(())
}
