//! `circles-fuzz`: run the randomized targets for a time budget.
//!
//! ```text
//! cargo run --release -p circles-fuzz -- --secs 600            # every target, 10 minutes in all
//! cargo run --release -p circles-fuzz -- --secs 60 --target rpc
//! ```

use std::process::ExitCode;
use std::time::Duration;

use circles_fuzz::Target;
use clap::Parser;

/// Randomized testing of the parsers and renderers that strangers feed.
#[derive(Parser, Debug)]
#[command(name = "circles-fuzz", version)]
struct Args {
    /// Total time budget in seconds, shared by the targets.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Only this target (repeatable); default all.
    #[arg(long, value_enum)]
    target: Vec<Target>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let targets = if args.target.is_empty() {
        Target::ALL.to_vec()
    } else {
        args.target
    };
    let each = Duration::from_secs(args.secs) / targets.len() as u32;
    for target in targets {
        match circles_fuzz::run(target, each) {
            Ok(cases) => println!("{target:?}: {cases} cases in {each:?}, no failure"),
            Err(failure) => {
                eprintln!("FAILED {failure}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
