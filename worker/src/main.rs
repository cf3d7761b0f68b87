//! `worker`: serve one circle's task queue. See the crate docs.

use std::process::ExitCode;

use circles_worker::cli::WorkerArgs;
use clap::Parser;

fn main() -> ExitCode {
    circles_worker::cli::main_with(WorkerArgs::parse())
}
