//! Starts two circles, calls `play` on each over WebSocket, prints the
//! results and cleans up — on normal exit, on error and on Ctrl+C.
//!
//!     cargo run --example circle_launcher_example              # child processes
//!     cargo run --example circle_launcher_example -- --service # systemd/launchd services
//!
//! Direct mode needs nothing prepared: it starts a private Redis when none
//! answers on 127.0.0.1:6379. Service mode needs a running Redis and the
//! `worker` binary built (`cargo build --bins`), and no circle services
//! installed yet: it removes every circle service before exiting.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use circles_dispatcher::CircleKeypair;
use circles_launcher::cli::{CommonArgs, LaunchArgs};
use circles_launcher::direct::DirectLaunch;
use circles_launcher::settings::{LaunchSettings, resolve_worker_program};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::stderr)
        .init();
    let service_mode = std::env::args().any(|a| a == "--service");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let circles = [
        ("ourworld", "scripts/ourworld.rhai"),
        ("threefold", "scripts/threefold.rhai"),
    ]
    .map(|(name, script)| {
        let key = CircleKeypair::generate().public;
        (name, key, format!("{key}:{}", repo.join(script).display()))
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut args = LaunchArgs {
        circles: circles.iter().map(|c| c.2.clone()).collect(),
        port: Some(port),
        host: Some("127.0.0.1".into()),
        init_timeout: 30,
        ..LaunchArgs::default()
    };
    let mut common = CommonArgs {
        redis_url: std::env::var("REDIS_URL").ok(),
        data_dir: Some(repo.join("launch_data/example")),
        debug: false,
        verbose: 0,
        system: false,
        user: false,
        templates_dir: None,
    };
    let urls: Vec<(&str, String)> = circles
        .iter()
        .map(|(name, key, _)| (*name, format!("ws://127.0.0.1:{port}/{key}")))
        .collect();

    if service_mode {
        args.use_service_manager = true;
        let worker = std::env::current_exe()?
            .parent()
            .and_then(|d| d.parent())
            .map(|d| d.join("worker"));
        args.worker_binary = worker.filter(|w| w.exists());
        anyhow::ensure!(
            args.worker_binary.is_some(),
            "build the worker first: cargo build --bins"
        );
        // It ends by removing every circle service, so it must not start
        // where somebody else's circles run.
        let backend = circles_launcher::service_mode::backend(&common).await?;
        let installed = backend.list_installed().await?;
        anyhow::ensure!(
            installed.is_empty(),
            "{} circle service(s) already installed here; this example removes every circle service when it ends, so it only runs where there are none",
            installed.len()
        );
        // Its data goes beside the platform's place for circles
        // (/var/lib/circles-example for system services: systemd keeps
        // service data under /var/lib), never into it.
        let data =
            circles_launcher::service_mode::default_data_dir(backend.kind(), backend.scope())?
                .with_file_name("circles-example");
        common.data_dir = Some(data.clone());
        let outcome = until_ctrl_c(async {
            circles_launcher::service_mode::launch(&args, &common).await?;
            play_each(&urls).await
        })
        .await;
        // Whatever happened, remove what we installed.
        let removed = circles_launcher::cleanup_launcher()
            .await
            .context("cleanup")?;
        let _ = std::fs::remove_dir_all(&data);
        // What systemd's DynamicUser= services wrote lives here.
        if let Ok(rel) = data.strip_prefix("/var/lib") {
            let _ = std::fs::remove_dir_all(std::path::Path::new("/var/lib/private").join(rel));
        }
        println!("cleaned up: removed {} service(s)", removed.len());
        return outcome;
    }

    let (settings, resolved) = LaunchSettings::resolve(&args, &common)?;
    let launch = DirectLaunch::start(settings, resolved, resolve_worker_program(None)?).await?;
    let outcome = until_ctrl_c(play_each(&urls)).await;
    launch.shutdown().await;
    if let Some(data) = &common.data_dir {
        let _ = std::fs::remove_dir_all(data);
    }
    println!("cleaned up: circles stopped");
    outcome
}

/// Runs `work`, or stops early on Ctrl+C (which is then not an error).
async fn until_ctrl_c(work: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted");
            Ok(())
        }
    }
}

/// One JSON-RPC `play` per circle, printing each answer.
async fn play_each(urls: &[(&str, String)]) -> anyhow::Result<()> {
    for (name, url) in urls {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let request = serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "play",
            "params": { "script": r#"`${db_get("circle:name") ?? "this circle"} says hello from ${CONTEXT_ID}`"# }
        });
        ws.send(Message::text(request.to_string())).await?;
        let answer = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no answer within 30 s")?
            .context("connection closed")??;
        let answer: serde_json::Value = serde_json::from_str(answer.to_text()?)?;
        match answer.get("result") {
            Some(result) => println!("{name}: {}", result.as_str().unwrap_or_default()),
            None => anyhow::bail!("{name}: play failed: {}", answer["error"]),
        }
    }
    Ok(())
}
