//! The supervisor as a library: build it, serve its API, add two runners
//! (circle workers as child processes), queue a job, print every runner's
//! status, stop.
//!
//! ```sh
//! cargo build --bins                  # the `worker` binary the runners run
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p circles-supervisor --example supervisor_example
//! ```
//!
//! `SUPERVISOR_PORT` picks the API port (default 3030; 0 for any free one).

use std::time::Duration;

use circles_dispatcher::CircleKeypair;
use circles_supervisor::{AddRunner, JobRequest, ManagerKind, SupervisorApp, SupervisorBuilder};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let port: u16 = std::env::var("SUPERVISOR_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(circles_supervisor::DEFAULT_PORT);
    // A scratch data directory: state file, logs, circle databases.
    let data = tempfile::tempdir()?;

    let supervisor = SupervisorBuilder::new()
        .redis_url(&redis_url)
        .port(port)
        .data_dir(data.path())
        .manager(ManagerKind::Child)
        .build()
        .await?;
    let app = SupervisorApp::new(supervisor.clone()).start().await?;
    println!("supervisor API on {}", app.url());

    // Two runners, each a fresh circle, started at once.
    for name in ["ourworld", "threefold"] {
        let key = CircleKeypair::generate().public;
        let info = supervisor
            .add_runner(AddRunner {
                name: name.into(),
                circle_public_key: key.to_hex(),
                init_script: Some(format!("db_set(\"name\", \"{name}\"); \"{name} ready\"")),
                start: true,
                ..AddRunner::default()
            })
            .await?;
        println!(
            "added {name}: {} (pid {:?}), init {}",
            info.state, info.pid, info.init
        );
    }

    // A job, queued, then waited for through its status.
    let job = supervisor
        .queue_job(JobRequest {
            runner: "ourworld".into(),
            script: "\"hello from \" + db_get(\"name\")".into(),
            timeout_secs: Some(10),
            caller_id: None,
        })
        .await?;
    let mut status = supervisor.job_status(&job.to_string()).await?;
    for _ in 0..100 {
        if status.status == "completed" || status.status == "error" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = supervisor.job_status(&job.to_string()).await?;
    }
    println!("job {job}: {} {:?}", status.status, status.output);

    for r in supervisor.all_runner_status().await {
        println!(
            "{:<10} {:<8} pid {:<7} restarts {} queue {:?} tasks {:?} url {}",
            r.name,
            r.state,
            r.pid.map_or("-".into(), |p| p.to_string()),
            r.restarts,
            r.queue_depth,
            r.tasks_done,
            r.url
        );
    }

    // Stops the API, then the runners (child processes).
    app.stop().await;
    println!("stopped");
    Ok(())
}
