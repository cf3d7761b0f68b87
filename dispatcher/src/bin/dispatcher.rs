//! `dispatcher`: run a Rhai script on a circle from the command line.
//!
//! Exit codes: 0 ok, 1 the script failed, 2 bad usage or input, 3 timed out,
//! 4 Redis trouble, 5 the circle is offline (no live worker).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use circles_dispatcher::protocol::{DEFAULT_REDIS_URL, DEFAULT_TASK_TIMEOUT_SECS};
use circles_dispatcher::{CirclePublicKey, DispatchError, Dispatcher, TaskId};
use clap::{Args, Parser, Subcommand};

const DISPATCHER_EXAMPLES: &str = "\
Examples:
  # A circle with a live worker (`launcher -c $PK`, or `worker --circle-public-key $PK`):
  PK=02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5
  dispatcher run -c $PK '40 + 2'                                  # prints 42
  dispatcher run -c $PK --file seed.rhai --timeout 10 --json
  echo 'CONTEXT_ID' | dispatcher run -c $PK                       # the script on stdin
  id=$(dispatcher submit -c $PK 'db_get(\"x\")') && dispatcher wait $id

Exit status: 0 done, 1 the script failed, 2 bad input, 3 timed out, 4 Redis
unreachable, 5 the circle is offline (no live worker; nothing was queued:
--wait-for-worker queues and waits instead).";

#[derive(Parser, Debug)]
#[command(
    name = "dispatcher",
    version,
    about = "Submit Rhai scripts to circles and wait for their results",
    after_help = DISPATCHER_EXAMPLES
)]
struct Cli {
    /// Redis URL.
    #[arg(long, global = true, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true)]
    redis_url: String,
    /// Print machine-readable JSON instead of plain text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a script on a circle and print its output.
    Run(RunArgs),
    /// Queue a script and print its task id without waiting.
    Submit(RunArgs),
    /// Wait for a submitted task and print its output.
    Wait {
        /// The task id printed by `submit`.
        task_id: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = DEFAULT_TASK_TIMEOUT_SECS)]
        timeout: u64,
    },
    /// Show a task's stored state.
    Status {
        /// The task id.
        task_id: String,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The circle's public key (hex).
    #[arg(short, long = "circle")]
    circle: String,
    /// The script; `-` or nothing reads standard input.
    script: Option<String>,
    /// Read the script from this file.
    #[arg(short, long, conflicts_with = "script")]
    file: Option<PathBuf>,
    /// Seconds to wait for the result (also the script's wall-time cap).
    #[arg(long, default_value_t = DEFAULT_TASK_TIMEOUT_SECS)]
    timeout: u64,
    /// Caller id recorded on the task (the script sees it as CALLER_ID).
    #[arg(long, default_value = "dispatcher-cli")]
    caller: String,
    /// `run`: queue the script even when no worker serves the circle, and
    /// wait (up to --timeout) for one to start, instead of failing at once.
    #[arg(long)]
    wait_for_worker: bool,
}

impl RunArgs {
    fn script(&self) -> anyhow::Result<String> {
        if let Some(path) = &self.file {
            return std::fs::read_to_string(path)
                .with_context(|| format!("failed to read script file {}", path.display()));
        }
        match self.script.as_deref() {
            Some("-") | None => {
                if std::io::stdin().is_terminal() {
                    anyhow::bail!(
                        "no script given: pass it as an argument, with --file, or on standard input"
                    );
                }
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("failed to read standard input")?;
                Ok(s)
            }
            Some(s) => Ok(s.to_string()),
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let message = circles_dispatcher::text::error_chain(err.as_ref());
            let (code, kind) = match err.downcast_ref::<DispatchError>() {
                Some(DispatchError::ScriptError { .. }) => (1, "script_error"),
                // A URL that does not parse is bad input, not a Redis outage.
                Some(DispatchError::InvalidRedisUrl { .. }) => (2, "invalid_input"),
                Some(DispatchError::Timeout { .. }) => (3, "timeout"),
                Some(DispatchError::Busy { .. }) => (3, "busy"),
                Some(DispatchError::CircleOffline { .. }) => (5, "offline"),
                Some(e) if e.is_redis() => (4, "redis"),
                _ => (2, "invalid_input"),
            };
            if json {
                let task_id = match err.downcast_ref::<DispatchError>() {
                    Some(
                        DispatchError::ScriptError { task_id, .. }
                        | DispatchError::Timeout { task_id, .. },
                    ) => Some(task_id.to_string()),
                    _ => None,
                };
                let v = serde_json::json!({"ok": false, "kind": kind, "error": message, "task_id": task_id});
                println!("{v}");
            } else {
                eprintln!("error: {message}");
            }
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Run(args) | Command::Submit(args) => {
            let circle = CirclePublicKey::parse(&args.circle)?;
            let script = args.script()?;
            let timeout = Duration::from_secs(args.timeout.max(1));
            let dispatcher = Dispatcher::connect(&cli.redis_url, &args.caller)
                .await?
                .wait_for_worker(args.wait_for_worker);
            if matches!(cli.command, Command::Submit(_)) {
                let task_id = dispatcher.submit(&circle, &script, timeout).await?;
                print_out(
                    cli.json,
                    &serde_json::json!({"ok": true, "task_id": task_id}),
                    &task_id.to_string(),
                );
            } else {
                let output = dispatcher.run(&circle, &script, timeout).await?;
                print_out(
                    cli.json,
                    &serde_json::json!({"ok": true, "output": output}),
                    &output,
                );
            }
        }
        Command::Wait { task_id, timeout } => {
            let task_id = parse_task_id(task_id)?;
            let dispatcher = Dispatcher::connect(&cli.redis_url, "dispatcher-cli").await?;
            let output = dispatcher
                .await_result(&task_id, Duration::from_secs((*timeout).max(1)))
                .await?;
            print_out(
                cli.json,
                &serde_json::json!({"ok": true, "output": output}),
                &output,
            );
        }
        Command::Status { task_id } => {
            let task_id = parse_task_id(task_id)?;
            let dispatcher = Dispatcher::connect(&cli.redis_url, "dispatcher-cli").await?;
            let record = dispatcher.status(&task_id).await?;
            let status = record.status.map_or("unknown", |s| s.as_str());
            let mut text = format!("task {task_id}: {status}");
            if let Some(out) = &record.output {
                text.push_str(&format!("\noutput: {out}"));
            }
            if let Some(e) = &record.error {
                text.push_str(&format!("\nerror: {e}"));
            }
            print_out(cli.json, &serde_json::to_value(&record)?, &text);
        }
    }
    Ok(())
}

fn parse_task_id(value: &str) -> anyhow::Result<TaskId> {
    value
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid task id `{value}`: expected a UUID"))
}

fn print_out(json: bool, value: &serde_json::Value, text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`dispatcher … | head -0`) is not an error worth a message.
    let _ = if json {
        writeln!(out, "{value}")
    } else {
        writeln!(out, "{text}")
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_snapshot() {
        // What `dispatcher --help` and each subcommand's print (issue 10:
        // they teach with an example; the exit codes are listed).
        let help = circles_test_support::help_pages(<Cli as clap::CommandFactory>::command());
        assert!(
            help.contains("Examples:") && help.contains("5 the circle is offline"),
            "{help}"
        );
        insta::assert_snapshot!(help);
    }
}
