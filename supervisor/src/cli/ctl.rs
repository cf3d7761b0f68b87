//! `supervisor ctl`: a supervisorctl-like client. It speaks JSON-RPC over
//! one WebSocket to the daemon (so `logs -f` can subscribe), sending the
//! secret from `SUPERVISOR_SECRET` as `Authorization: Bearer` on the
//! upgrade, and prints the status table (or `--json`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use circles_supervisor::{BulkResult, JobResult, ManagerKind, RunnerInfo};
use clap::{Args, Subcommand};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// Environment variable holding the secret `ctl` sends.
pub const ENV_SECRET: &str = "SUPERVISOR_SECRET";
/// How long to wait for the daemon to answer a call (starting a runner
/// waits for its readiness, so this is generous).
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// `supervisor ctl …`
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The supervisor's API.
    #[arg(long, default_value = "http://127.0.0.1:3030")]
    pub url: String,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `ctl` subcommands.
#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// Runner names.
    List,
    /// The status table: every runner, or one.
    Status {
        /// A runner.
        name: Option<String>,
    },
    /// Start a runner and wait until it runs.
    Start {
        /// The runner.
        name: String,
    },
    /// Stop a runner.
    Stop {
        /// The runner.
        name: String,
    },
    /// Restart a runner and wait until it runs again.
    Restart {
        /// The runner.
        name: String,
    },
    /// A runner's logs.
    Logs {
        /// The runner.
        name: String,
        /// Keep printing new lines (Ctrl+C ends).
        #[arg(short, long)]
        follow: bool,
        /// How many lines.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
    },
    /// Add a runner for a circle.
    Add {
        /// Its name.
        name: String,
        /// The circle's public key.
        circle_public_key: String,
        /// Init script file, sent once the worker first runs.
        #[arg(long, value_name = "FILE")]
        init: Option<PathBuf>,
        /// Process manager (default: the supervisor's).
        #[arg(long, value_parser = super::parse_manager)]
        manager: Option<ManagerKind>,
        /// Worker binary (absolute path; default: the supervisor's).
        #[arg(long, value_name = "PATH")]
        worker_binary: Option<PathBuf>,
        /// Do not start it (only install).
        #[arg(long)]
        no_start: bool,
    },
    /// Remove a runner (stop, uninstall, forget).
    Remove {
        /// The runner.
        name: String,
    },
    /// Run a script on a runner's circle and print its output.
    Run {
        /// The runner.
        name: String,
        /// The Rhai script (`-` reads it from stdin).
        script: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Start every runner.
    StartAll,
    /// Stop every runner.
    StopAll,
    /// Counts by state, Redis, uptime, version.
    Info,
}

/// A JSON-RPC error the daemon answered.
#[derive(Debug)]
struct RpcError {
    code: i64,
    message: String,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One WebSocket to the daemon.
struct Client {
    socket: Socket,
    next_id: u64,
}

impl Client {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let ws_url = if let Some(rest) = url.strip_prefix("http://") {
            format!("ws://{rest}")
        } else if let Some(rest) = url.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            url.to_string()
        };
        let mut request = ws_url
            .as_str()
            .into_client_request()
            .with_context(|| format!("invalid supervisor URL {url}"))?;
        if let Ok(secret) = std::env::var(ENV_SECRET) {
            let value = format!("Bearer {}", secret.trim())
                .parse()
                .map_err(|_| anyhow!("{ENV_SECRET} holds characters a header cannot carry"))?;
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value);
        }
        let (socket, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(request),
        )
        .await
        .map_err(|_| anyhow!("no answer from the supervisor at {url} within 10s"))?
        .with_context(|| {
            format!("cannot reach the supervisor at {url} (is it running? `supervisor` starts it)")
        })?;
        Ok(Self { socket, next_id: 1 })
    }

    /// Sends a request and waits for its response (skipping notifications).
    async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.socket.send(Message::text(request.to_string())).await?;
        let reply = tokio::time::timeout(CALL_TIMEOUT, async {
            while let Some(msg) = self.socket.next().await {
                let text = match msg? {
                    Message::Text(t) => t.to_string(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                let v: Value = serde_json::from_str(&text)?;
                if v.get("id") == Some(&json!(id)) {
                    return Ok(v);
                }
            }
            Err(anyhow!("the supervisor closed the connection"))
        })
        .await
        .map_err(|_| anyhow!("`{method}` got no answer within {CALL_TIMEOUT:?}"))??;
        if let Some(err) = reply.get("error") {
            return Err(RpcError {
                code: err["code"].as_i64().unwrap_or(0),
                message: err["message"]
                    .as_str()
                    .unwrap_or("unknown error")
                    .to_string(),
            }
            .into());
        }
        Ok(reply.get("result").cloned().unwrap_or(Value::Null))
    }

    /// The next notification's `params.result`.
    async fn next_notification(&mut self) -> anyhow::Result<Option<Value>> {
        while let Some(msg) = self.socket.next().await {
            if let Message::Text(t) = msg? {
                let v: Value = serde_json::from_str(&t)?;
                if v.get("id").is_none() {
                    return Ok(v["params"].get("result").cloned());
                }
            }
        }
        Ok(None)
    }
}

/// Runs a `ctl` command.
pub async fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&args.url).await?;
    let mut out = std::io::stdout().lock();
    let json_out = args.json;
    let print_runners =
        |out: &mut std::io::StdoutLock<'_>, runners: Vec<RunnerInfo>| -> anyhow::Result<()> {
            if json_out {
                writeln!(out, "{}", serde_json::to_string_pretty(&runners)?)?;
            } else if runners.is_empty() {
                writeln!(out, "no runners")?;
            } else {
                writeln!(out, "{}", super::table::render(&runners))?;
            }
            Ok(())
        };
    let one =
        |v: Value| -> anyhow::Result<Vec<RunnerInfo>> { Ok(vec![serde_json::from_value(v)?]) };
    match args.command {
        CtlCommand::List => {
            let names: Vec<String> =
                serde_json::from_value(c.call("list_runners", json!({})).await?)?;
            if json_out {
                writeln!(out, "{}", serde_json::to_string(&names)?)?;
            } else {
                for n in names {
                    writeln!(out, "{n}")?;
                }
            }
        }
        CtlCommand::Status { name: None } => {
            let runners =
                serde_json::from_value(c.call("get_all_runner_status", json!({})).await?)?;
            print_runners(&mut out, runners)?;
        }
        CtlCommand::Status { name: Some(name) } => {
            let r = c.call("get_runner_status", json!({"name": name})).await?;
            print_runners(&mut out, one(r)?)?;
        }
        CtlCommand::Start { name } => {
            let r = c.call("start_runner", json!({"name": name})).await?;
            print_runners(&mut out, one(r)?)?;
        }
        CtlCommand::Stop { name } => {
            let r = c.call("stop_runner", json!({"name": name})).await?;
            print_runners(&mut out, one(r)?)?;
        }
        CtlCommand::Restart { name } => {
            let r = c.call("restart_runner", json!({"name": name})).await?;
            print_runners(&mut out, one(r)?)?;
        }
        CtlCommand::Logs {
            name,
            follow,
            lines,
        } => {
            let past: Vec<String> = serde_json::from_value(
                c.call("get_runner_logs", json!({"name": name, "lines": lines}))
                    .await?,
            )?;
            for l in past {
                writeln!(out, "{l}")?;
            }
            if follow {
                c.call("subscribe_runner_logs", json!({"name": name}))
                    .await?;
                out.flush()?;
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => break,
                        line = c.next_notification() => match line? {
                            Some(Value::String(l)) => {
                                writeln!(out, "{l}")?;
                                out.flush()?;
                            }
                            Some(_) => {}
                            None => bail!("the supervisor closed the connection"),
                        },
                    }
                }
            }
        }
        CtlCommand::Add {
            name,
            circle_public_key,
            init,
            manager,
            worker_binary,
            no_start,
        } => {
            let init_script = init
                .map(|p| {
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("failed to read init script {}", p.display()))
                })
                .transpose()?;
            let worker_binary = worker_binary.map(std::path::absolute).transpose()?;
            let mut params =
                json!({"name": name, "circle_public_key": circle_public_key, "start": !no_start});
            if let Some(s) = init_script {
                params["init_script"] = json!(s);
            }
            if let Some(m) = manager {
                params["manager"] = json!(m);
            }
            if let Some(w) = worker_binary {
                params["worker_binary"] = json!(w);
            }
            let r = c.call("add_runner", params).await?;
            print_runners(&mut out, one(r)?)?;
        }
        CtlCommand::Remove { name } => {
            c.call("remove_runner", json!({"name": name})).await?;
            if json_out {
                writeln!(out, "{}", json!({"removed": name}))?;
            } else {
                writeln!(out, "removed {name}")?;
            }
        }
        CtlCommand::Run {
            name,
            script,
            timeout,
        } => {
            let script = if script == "-" {
                std::io::read_to_string(std::io::stdin())
                    .context("reading the script from stdin")?
            } else {
                script
            };
            let r: JobResult = serde_json::from_value(
                c.call(
                    "run_job",
                    json!({"runner": name, "script": script, "timeout_secs": timeout}),
                )
                .await?,
            )?;
            if json_out {
                writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
            } else if let Some(output) = &r.output {
                writeln!(out, "{output}")?;
            }
            if r.status != "completed" {
                if !json_out {
                    eprintln!("error: job {}: {}", r.job_id, r.error.unwrap_or_default());
                }
                return Ok(ExitCode::FAILURE);
            }
        }
        CtlCommand::StartAll | CtlCommand::StopAll => {
            let method = if matches!(args.command, CtlCommand::StartAll) {
                "start_all"
            } else {
                "stop_all"
            };
            let results: Vec<BulkResult> =
                serde_json::from_value(c.call(method, json!({})).await?)?;
            if json_out {
                writeln!(out, "{}", serde_json::to_string_pretty(&results)?)?;
            } else {
                for r in &results {
                    match &r.error {
                        None => writeln!(out, "{}: ok", r.name)?,
                        Some(e) => writeln!(out, "{}: {e}", r.name)?,
                    }
                }
            }
            if results.iter().any(|r| !r.ok) {
                return Ok(ExitCode::FAILURE);
            }
        }
        CtlCommand::Info => {
            let status = c.call("get_all_status", json!({})).await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
