//! `server`: the circles WebSocket server as a program; see `circles_server::cli`.

use std::process::ExitCode;

use circles_server::cli::ServerArgs;
use clap::Parser;

fn main() -> ExitCode {
    circles_server::cli::main_with(ServerArgs::parse())
}
