//! `launcher`: parse flags, set up logging, hand over to the library.

use std::io::Write;
use std::process::ExitCode;

use std::time::Duration;

use circles_dispatcher::{CircleKeypair, Dispatcher};
use circles_launcher::LaunchError;
use circles_launcher::backup::{self, BackupRequest, DbLayout, RestoreRequest};
use circles_launcher::cli::{Cli, Command, CommonArgs};
use circles_launcher::direct::{DirectLaunch, StartOutcome};
use circles_launcher::settings::{LaunchSettings, resolve_worker_program};
use circles_launcher::{service_mode, status};

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    // The built-in worker sets up its own logging and runtime.
    match cli.command {
        Some(Command::RunWorker(args)) => return circles_worker::cli::main_with(args),
        Some(Command::Serve(args)) => return circles_server::cli::main_with(args),
        _ => {}
    }
    let common = cli.common();
    circles_launcher::progress::init_logging(common.log_level());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli, common)) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!(
                "error: {}",
                circles_dispatcher::text::error_chain(err.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, common: CommonArgs) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Keygen { json }) => {
            let pair = CircleKeypair::generate();
            let mut out = std::io::stdout().lock();
            if json {
                let v = serde_json::json!({"public_key": pair.public.to_hex(), "secret_key": pair.secret_hex()});
                writeln!(out, "{v}")?;
            } else {
                writeln!(
                    out,
                    "public key: {}\nsecret key: {}",
                    pair.public,
                    pair.secret_hex()
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Cleanup { json, .. }) => {
            let removed = service_mode::cleanup(&common).await?;
            service_mode::print_removed(&removed, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Status {
            json, fleet: true, ..
        }) => {
            // The Redis of this host's services, unless told otherwise.
            let url = backup::redis_url(&common, &backup::restore_data_dir(&common, true)?);
            let dispatcher = Dispatcher::connect(&url, "launcher-status").await?;
            let entries = dispatcher.fleet().await?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&entries)?)?;
            } else if entries.is_empty() {
                writeln!(
                    out,
                    "no circles registered in Redis at {}",
                    dispatcher.redis_url()
                )?;
            } else {
                writeln!(out, "{}", status::render_fleet_table(&entries))?;
                writeln!(out, "{}", status::fleet_summary(&entries))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Backup {
            circle,
            output,
            init_script,
            force,
            timeout,
            json,
            ..
        }) => {
            let data_dirs = backup::backup_data_dirs(&common)?;
            let request = BackupRequest {
                circle,
                output,
                force,
                init_script,
                redis_url: backup::redis_url(&common, &data_dirs[0]),
                data_dirs,
                timeout: Duration::from_secs(timeout.max(1)),
            };
            let report = backup::backup(&request).await?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                writeln!(out, "{}", report.summary())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Restore {
            file,
            service_mode,
            json,
            ..
        }) => {
            let data_dir = backup::restore_data_dir(&common, service_mode)?;
            let request = RestoreRequest {
                file,
                redis_url: backup::redis_url(&common, &data_dir),
                data_dir,
                layout: if service_mode {
                    DbLayout::Service
                } else {
                    DbLayout::Direct
                },
            };
            let report = backup::restore(&request).await?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                write!(out, "{}", report.summary())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Status {
            json, fleet: false, ..
        }) => {
            let rows = service_mode::status_rows(&common).await?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else if rows.is_empty() {
                writeln!(out, "no circle services installed")?;
            } else {
                writeln!(out, "{}", status::render_report(&rows))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Logs(args)) => service_mode::logs(&common, &args.circle, args.follow).await,
        Some(Command::RunWorker(_) | Command::Serve(_)) => {
            unreachable!("handled before the runtime starts")
        }
        None if cli.launch.use_service_manager => {
            let report = service_mode::launch(&cli.launch, &common).await?;
            // The services stay installed and running; a failed init script
            // still makes the run fail, as in direct mode, so scripts notice.
            if report.init_failures.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(LaunchError::InitFailed {
                    failures: report.init_failures,
                    services_kept: true,
                }
                .into())
            }
        }
        None => {
            let (settings, resolved) = LaunchSettings::resolve(&cli.launch, &common)?;
            let worker = resolve_worker_program(cli.launch.worker_binary.as_deref())?;
            let shutdown = shutdown_signal();
            tokio::pin!(shutdown);
            // A signal during startup stops it: dropping `start` drops what it
            // started (children are killed with it, and die with us anyway).
            let launch = tokio::select! {
                launch = DirectLaunch::start(settings, resolved, worker) => launch?,
                () = &mut shutdown => {
                    eprintln!("interrupted during startup; nothing left running");
                    return Ok(ExitCode::from(130));
                }
            };
            let failure = match launch.outcome() {
                StartOutcome::AllUp { total } => {
                    tracing::info!(
                        "{} up; Ctrl+C stops {}",
                        plural(total, "circle"),
                        if total == 1 { "it" } else { "them" }
                    );
                    None
                }
                StartOutcome::SomeUp { up, total, failed } => {
                    let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
                    tracing::warn!(
                        "{up} of {total} circles up; not serving: {} (see the Reason column); Ctrl+C stops the rest",
                        names.join(", ")
                    );
                    None
                }
                StartOutcome::NoneUp { failed } => {
                    Some(LaunchError::NothingServed { failures: failed })
                }
                StartOutcome::InitFailed { failures } => Some(LaunchError::InitFailed {
                    failures,
                    services_kept: false,
                }),
            };
            if let Some(failure) = failure {
                // The table first, so the failure is seen in context (the
                // error below gives the reasons whole).
                println!("{}", status::render_table(&launch.status_rows().await));
                launch.shutdown().await;
                return Err(failure.into());
            }
            launch.run_until(shutdown, true).await;
            launch.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `1 circle`, `3 circles`.
fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `launcher status | head` must stay quiet when head closes the pipe.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Ctrl+C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl+C received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
