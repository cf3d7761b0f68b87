//! Direct mode: the circles' workers as child processes of the launcher and
//! the WebSocket server inside it — the development setup.
//!
//! Each worker is watched by a supervisor task. A worker is *ready* when it
//! sends `READY=1` on a notify socket the supervisor made for it — the same
//! `sd_notify` protocol systemd uses, so the worker has one readiness path.
//! A crashed worker is restarted with exponential backoff; after
//! [`MAX_FAST_FAILURES`] failures in a row, each within [`FAST_FAILURE`] of
//! its start, it is marked failed instead of looping forever.
//!
//! No orphans: workers get the kernel's parent-death signal and the
//! launcher's PID (`CIRCLES_LAUNCHER_PID`), and shutdown SIGTERMs them,
//! waits [`STOP_GRACE`], then SIGKILLs stragglers.

use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use circles_dispatcher::protocol::{ENV_LAUNCHER_PID, ENV_NOTIFY_SOCKET, ENV_RUST_LOG};
use circles_dispatcher::{CirclePublicKey, Dispatcher};
use circles_server::{Server, ServerConfig};
use tokio::net::UnixDatagram;
use tokio::process::Command;
use tokio::sync::{oneshot, watch};

use crate::error::LaunchError;
use crate::process::{die_with_parent, terminate};
use crate::redis_local::{LocalRedis, RedisCheck};
use crate::settings::{CircleSpec, LaunchSettings, Program, ResolvedCircles};
use crate::status::StatusRow;

/// A worker that exits within this long of becoming ready (or without ever
/// becoming ready) counts as a fast failure.
pub const FAST_FAILURE: Duration = Duration::from_secs(10);
/// Fast failures in a row before a worker is marked failed.
pub const MAX_FAST_FAILURES: u32 = 5;
/// How long a worker may take to send READY=1.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping worker may take before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Where a worker is in its life, as the status table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// Spawned, not yet ready.
    Starting,
    /// Sent READY=1.
    Ready,
    /// Exited; will be started again after the backoff.
    Restarting,
    /// Gave up after repeated fast failures.
    Failed(String),
    /// Stopped by shutdown.
    Stopped,
}

impl WorkerState {
    fn label(&self) -> String {
        match self {
            Self::Starting => "starting".into(),
            Self::Ready => "ready".into(),
            Self::Restarting => "restarting".into(),
            Self::Failed(_) => "failed".into(),
            Self::Stopped => "stopped".into(),
        }
    }
}

/// What the launcher knows about one worker.
#[derive(Debug, Clone)]
struct WorkerEntry {
    spec: CircleSpec,
    state: WorkerState,
    pid: Option<u32>,
    restarts: u32,
    last_exit: Option<i32>,
    init: String,
}

/// Slots shared by the supervisors and whoever renders the table; `version`
/// counts changes and wakes the table printer.
#[derive(Debug)]
struct WorkerTable {
    entries: Mutex<Vec<WorkerEntry>>,
    version: watch::Sender<u64>,
}

impl WorkerTable {
    fn update(&self, idx: usize, f: impl FnOnce(&mut WorkerEntry)) {
        f(&mut self.entries.lock().expect("table")[idx]);
        self.version.send_modify(|v| *v += 1);
    }
}

/// Circles running as child processes, with the WebSocket server in-process.
#[derive(Debug)]
pub struct DirectLaunch {
    settings: LaunchSettings,
    table: Arc<WorkerTable>,
    supervisors: Vec<tokio::task::JoinHandle<()>>,
    stop_workers: watch::Sender<bool>,
    stop_server: Option<oneshot::Sender<()>>,
    server_task: Option<tokio::task::JoinHandle<Result<(), circles_server::ServerError>>>,
    server_addr: std::net::SocketAddr,
    local_redis: Option<LocalRedis>,
    dispatcher: Dispatcher,
    /// Holds the notify sockets; removed with the launch.
    _notify_dir: tempfile::TempDir,
}

impl DirectLaunch {
    /// Brings every circle up: Redis (a private one if needed), the WebSocket
    /// server, one worker per circle (waiting for each to be ready), then the
    /// init scripts. Validation happened in [`LaunchSettings::resolve`]; the
    /// Redis check happens here, before anything is started.
    pub async fn start(
        settings: LaunchSettings,
        resolved: ResolvedCircles,
        worker: Program,
    ) -> Result<Self, LaunchError> {
        let redis_check =
            crate::redis_local::check(&settings.redis_url, settings.redis_autostart).await?;
        // Validation is over: from here on, things are created.
        let notify_dir = tempfile::Builder::new()
            .prefix("circles-notify-")
            .tempdir()
            .map_err(|e| LaunchError::io("creating the notify socket directory", e))?;

        resolved.persist_new_keys()?;
        std::fs::create_dir_all(settings.log_dir()).map_err(|source| LaunchError::DataDir {
            path: settings.log_dir(),
            source,
        })?;
        let local_redis = match redis_check {
            RedisCheck::Reachable => None,
            RedisCheck::StartLocal { port, program } => {
                let redis =
                    LocalRedis::start(&program, port, &settings.data_dir.join("redis")).await?;
                tracing::info!(port, dir = %redis.dir().display(), "nothing answered at {}; started a private redis-server for this launcher", settings.redis_url);
                Some(redis)
            }
        };
        // Everything started below is stopped again if a later step fails.
        let mut started = StartedSoFar {
            local_redis,
            server: None,
        };
        let server = Server::bind(ServerConfig {
            host: settings.host.clone(),
            port: settings.port,
            redis_url: settings.redis_url.clone(),
            circles: settings.circles.iter().map(|c| c.key).collect(),
            circle_ports: settings
                .circles
                .iter()
                .filter_map(|c| Some((c.key, c.port?)))
                .collect(),
            enable_auth: settings.enable_auth,
            ..ServerConfig::default()
        })
        .await;
        let server = match server {
            Ok(s) => s,
            Err(e) => {
                started.stop().await;
                return Err(e.into());
            }
        };
        let server_addr = server.local_addr();
        let (stop_server_tx, stop_server_rx) = oneshot::channel::<()>();
        started.server = Some(tokio::spawn(server.run(async move {
            let _ = stop_server_rx.await;
        })));
        let dispatcher = match Dispatcher::connect(&settings.redis_url, "launcher").await {
            Ok(d) => d,
            Err(e) => {
                started.stop().await;
                return Err(e.into());
            }
        };
        let table = Arc::new(WorkerTable {
            entries: Mutex::new(
                settings
                    .circles
                    .iter()
                    .map(|spec| WorkerEntry {
                        spec: spec.clone(),
                        state: WorkerState::Starting,
                        pid: None,
                        restarts: 0,
                        last_exit: None,
                        init: "-".into(),
                    })
                    .collect(),
            ),
            version: watch::channel(0).0,
        });
        let (stop_workers, stop_rx) = watch::channel(false);
        let progress = progress_bar(settings.circles.len());
        let mut supervisors = Vec::new();
        let mut first_ready = Vec::new();
        for (idx, spec) in settings.circles.iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            let sup = Supervisor {
                idx,
                spec: spec.clone(),
                program: worker.clone(),
                settings: settings.clone(),
                table: table.clone(),
                stop: stop_rx.clone(),
                socket: notify_dir.path().join(format!("{idx}.sock")),
            };
            supervisors.push(tokio::spawn(sup.run(tx)));
            first_ready.push(rx);
        }
        for rx in first_ready {
            let _ = rx.await;
            progress.inc(1);
        }
        progress.finish_and_clear();

        let launch = Self {
            server_task: started.server.take(),
            local_redis: started.local_redis.take(),
            settings,
            table,
            supervisors,
            stop_workers,
            stop_server: Some(stop_server_tx),
            server_addr,
            dispatcher,
            _notify_dir: notify_dir,
        };
        launch.run_init_scripts().await;
        Ok(launch)
    }

    /// Sends each ready circle's init script and records the outcome for
    /// the table.
    async fn run_init_scripts(&self) {
        let entries = self.table.entries.lock().expect("table").clone();
        let mut ready = Vec::new();
        for (idx, entry) in entries.iter().enumerate() {
            if entry.spec.init_script.is_none() {
                continue;
            }
            if entry.state == WorkerState::Ready {
                ready.push(&entry.spec);
            } else {
                self.table
                    .update(idx, |s| s.init = "skipped: worker not ready".into());
            }
        }
        for (key, outcome) in
            crate::init::run_init_scripts(&self.dispatcher, ready, self.settings.init_timeout).await
        {
            if let Some(idx) = entries.iter().position(|s| s.spec.key == key) {
                self.table.update(idx, |s| s.init = outcome.summary());
            }
        }
    }

    /// The address the WebSocket server listens on.
    pub fn server_addr(&self) -> std::net::SocketAddr {
        self.server_addr
    }

    /// `ws://…/<pk>` of a circle on the main listener.
    pub fn ws_url(&self, key: &CirclePublicKey) -> String {
        format!("ws://{}/{key}", self.server_addr)
    }

    /// A dispatcher on the launch's Redis.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// Current rows for the status table (queue depths read from Redis).
    pub async fn status_rows(&self) -> Vec<StatusRow> {
        let entries = self.table.entries.lock().expect("table").clone();
        let mut conn = self.dispatcher.connection();
        let mut rows = Vec::new();
        for entry in entries {
            let (queue, heartbeat) =
                crate::status::queue_and_heartbeat(&mut conn, &entry.spec.key).await;
            rows.push(StatusRow {
                name: entry.spec.name.clone(),
                public_key: entry.spec.key.to_hex(),
                state: entry.state.label(),
                pid: entry.pid,
                restarts: Some(entry.restarts),
                last_exit: entry.last_exit,
                queue,
                heartbeat,
                init: entry.init.clone(),
                url: self.ws_url(&entry.spec.key),
            });
        }
        rows
    }

    /// Runs until `shutdown` resolves, printing the status table now and
    /// again whenever a worker changes state.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>, print_tables: bool) {
        tokio::pin!(shutdown);
        let mut changes = self.table.version.subscribe();
        if print_tables {
            println!("{}", crate::status::render_table(&self.status_rows().await));
        }
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = changes.changed() => {
                    changes.mark_unchanged();
                    // Let a burst of changes settle into one table.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if print_tables {
                        println!("{}", crate::status::render_table(&self.status_rows().await));
                    }
                }
            }
        }
    }

    /// Stops the server (letting calls in flight finish), then the workers
    /// (SIGTERM, SIGKILL after the grace period), then the private Redis.
    pub async fn shutdown(mut self) {
        tracing::info!("stopping");
        if let Some(tx) = self.stop_server.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.server_task.take() {
            match task.await {
                Ok(Err(e)) => tracing::warn!("WebSocket server: {e}"),
                Err(e) => tracing::warn!("WebSocket server task: {e}"),
                Ok(Ok(())) => {}
            }
        }
        let _ = self.stop_workers.send(true);
        for s in self.supervisors.drain(..) {
            let _ = s.await;
        }
        if let Some(redis) = self.local_redis.take() {
            redis.stop().await;
        }
        tracing::info!("all circles stopped");
    }
}

/// What `start` has started so far, to be stopped if it fails.
struct StartedSoFar {
    local_redis: Option<LocalRedis>,
    server: Option<tokio::task::JoinHandle<Result<(), circles_server::ServerError>>>,
}

impl StartedSoFar {
    async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
        if let Some(r) = self.local_redis.take() {
            r.stop().await;
        }
    }
}

fn progress_bar(n: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(n as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} starting circles {pos}/{len} {wide_bar} {elapsed}",
        )
        .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Watches one worker: starts it, waits for readiness, restarts it.
struct Supervisor {
    idx: usize,
    spec: CircleSpec,
    program: Program,
    settings: LaunchSettings,
    table: Arc<WorkerTable>,
    stop: watch::Receiver<bool>,
    socket: PathBuf,
}

/// How one run of a worker process ended.
enum RunEnd {
    /// Shutdown asked for it.
    Stopped,
    /// It exited (or was killed for not becoming ready).
    Exited {
        code: Option<i32>,
        /// How long it served after READY=1; zero if it never became ready.
        served: Duration,
        reason: String,
    },
}

impl Supervisor {
    async fn run(mut self, first_ready: oneshot::Sender<()>) {
        let mut first_ready = Some(first_ready);
        let mut fast_failures = 0u32;
        let mut backoff = BACKOFF_START;
        loop {
            match self.run_once(&mut first_ready).await {
                RunEnd::Stopped => {
                    self.table.update(self.idx, |s| {
                        s.state = WorkerState::Stopped;
                        s.pid = None;
                    });
                    return;
                }
                RunEnd::Exited {
                    code,
                    served,
                    reason,
                } => {
                    if served < FAST_FAILURE {
                        fast_failures += 1;
                    } else {
                        fast_failures = 0;
                        backoff = BACKOFF_START;
                    }
                    if fast_failures >= MAX_FAST_FAILURES {
                        let why = format!(
                            "{reason} ({fast_failures} times in a row within {FAST_FAILURE:?} of starting)"
                        );
                        tracing::error!(circle = %self.spec.name, log = %self.log_path().display(), "worker failed, not restarting: {why}");
                        self.table.update(self.idx, |s| {
                            s.state = WorkerState::Failed(reason.clone());
                            s.pid = None;
                            s.last_exit = code;
                        });
                        if let Some(tx) = first_ready.take() {
                            let _ = tx.send(());
                        }
                        // Stay here until shutdown so the table keeps showing it.
                        let _ = stopped(&mut self.stop).await;
                        return;
                    }
                    tracing::warn!(circle = %self.spec.name, "worker {reason}; restarting in {backoff:?}");
                    self.table.update(self.idx, |s| {
                        s.state = WorkerState::Restarting;
                        s.pid = None;
                        s.restarts += 1;
                        s.last_exit = code;
                    });
                    tokio::select! {
                        _ = stopped(&mut self.stop) => {
                            self.table.update(self.idx, |s| s.state = WorkerState::Stopped);
                            return;
                        }
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.settings
            .log_dir()
            .join(format!("{}.log", self.spec.name))
    }

    async fn run_once(&mut self, first_ready: &mut Option<oneshot::Sender<()>>) -> RunEnd {
        let started = Instant::now();
        // Before READY=1 nothing was served: a worker that never gets there
        // counts as a fast failure however long it hung (no endless
        // "starting").
        let exited = |code: Option<i32>, reason: String| RunEnd::Exited {
            code,
            served: Duration::ZERO,
            reason,
        };
        let _ = std::fs::remove_file(&self.socket);
        let socket = match UnixDatagram::bind(&self.socket) {
            Ok(s) => s,
            Err(e) => {
                return exited(
                    None,
                    format!(
                        "could not create its notify socket {}: {e}",
                        self.socket.display()
                    ),
                );
            }
        };
        let log = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
        {
            Ok(f) => f,
            Err(e) => {
                return exited(
                    None,
                    format!("could not open its log {}: {e}", self.log_path().display()),
                );
            }
        };
        let mut cmd = Command::new(&self.program.path);
        cmd.args(&self.program.leading_args)
            .arg("--redis-url")
            .arg(&self.settings.redis_url)
            .arg("--circle-public-key")
            .arg(self.spec.key.to_hex())
            .arg("--db-path")
            .arg(&self.settings.data_dir)
            .env(ENV_NOTIFY_SOCKET, &self.socket)
            .env(ENV_LAUNCHER_PID, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .stderr(log)
            .kill_on_drop(true);
        if std::env::var_os(ENV_RUST_LOG).is_none() {
            cmd.env(ENV_RUST_LOG, self.settings.log_level);
        }
        die_with_parent(&mut cmd);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return exited(
                    None,
                    format!(
                        "could not be started ({}): {e}",
                        self.program.path.display()
                    ),
                );
            }
        };
        let pid = child.id();
        tracing::debug!(circle = %self.spec.name, ?pid, "worker spawned");
        self.table.update(self.idx, |s| {
            s.state = WorkerState::Starting;
            s.pid = pid;
        });

        // Wait for READY=1, an exit, a timeout or shutdown.
        let mut buf = vec![0u8; 4096];
        let ready = async {
            loop {
                match socket.recv(&mut buf).await {
                    Ok(n)
                        if String::from_utf8_lossy(&buf[..n])
                            .lines()
                            .any(|l| l == "READY=1") =>
                    {
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("notify socket: {e}");
                        return std::future::pending().await;
                    }
                }
            }
        };
        tokio::select! {
            _ = ready => {}
            status = child.wait() => {
                let code = status.ok().and_then(|s| s.code());
                return exited(code, format!("exited before becoming ready ({})", describe_exit(code)));
            }
            _ = tokio::time::sleep(READY_TIMEOUT) => {
                terminate(&mut child, STOP_GRACE).await;
                return exited(None, format!("was not ready within {READY_TIMEOUT:?}"));
            }
            _ = stopped(&mut self.stop) => {
                terminate(&mut child, STOP_GRACE).await;
                return RunEnd::Stopped;
            }
        }
        tracing::info!(circle = %self.spec.name, ?pid, elapsed = ?started.elapsed(), "worker ready");
        self.table
            .update(self.idx, |s| s.state = WorkerState::Ready);
        let ready_at = Instant::now();
        if let Some(tx) = first_ready.take() {
            let _ = tx.send(());
        }
        tokio::select! {
            status = child.wait() => {
                let code = status.ok().and_then(|s| s.code());
                RunEnd::Exited { code, served: ready_at.elapsed(), reason: format!("exited ({})", describe_exit(code)) }
            }
            _ = stopped(&mut self.stop) => {
                terminate(&mut child, STOP_GRACE).await;
                RunEnd::Stopped
            }
        }
    }
}

/// Resolves once shutdown is asked for. (The guard `wait_for` returns must
/// not live across an await: it is not `Send`.)
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn describe_exit(code: Option<i32>) -> String {
    code.map_or_else(
        || "killed by a signal".into(),
        |c| format!("exit status {c}"),
    )
}
