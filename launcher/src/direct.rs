//! Direct mode: the circles' workers as child processes of the launcher and
//! the WebSocket server inside it — the development setup.
//!
//! Each worker is a [`SupervisedChild`] (the `circles-supervise` crate): it
//! is *ready* when it sends `READY=1` on the launcher's notify socket (on
//! Linux one for all workers, each heard by its PID) — the
//! same `sd_notify` protocol systemd uses, so the worker has one readiness
//! path; a crashed worker is restarted with exponential backoff, and after
//! [`MAX_FAST_FAILURES`] failures in a row, each within [`FAST_FAILURE`] of
//! its start, it is marked failed instead of looping forever.
//!
//! After start-up [`DirectLaunch::outcome`] says how it went, in the terms
//! service mode uses: every circle up; some up (the rest failed, with their
//! reasons — the launch goes on with those that are up); none up (the run
//! fails); or an init script failed (the run fails, as in service mode).
//!
//! No orphans: workers get the kernel's parent-death signal and the
//! launcher's PID (`CIRCLES_LAUNCHER_PID`), and shutdown SIGTERMs them,
//! waits [`STOP_GRACE`], then SIGKILLs stragglers. The Redis URL reaches
//! them in `REDIS_URL`, never in argv (where `ps` shows a password to
//! every user).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use circles_dispatcher::{CirclePublicKey, Dispatcher};
use circles_server::{Server, ServerConfig};
use circles_supervise::{ChildStatus, RestartPolicy, SupervisedChild};
use tokio::sync::{oneshot, watch};

use crate::error::LaunchError;
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

/// How direct mode restarts workers.
pub fn restart_policy() -> RestartPolicy {
    RestartPolicy {
        backoff_start: Duration::from_millis(200),
        backoff_max: Duration::from_secs(10),
        fast_failure: FAST_FAILURE,
        max_fast_failures: MAX_FAST_FAILURES,
        ready_timeout: READY_TIMEOUT,
        stop_grace: STOP_GRACE,
    }
}

/// What the launcher knows about one worker besides its process status.
#[derive(Debug)]
struct WorkerEntry {
    spec: CircleSpec,
    child: SupervisedChild,
    /// Where its output goes.
    log_file: std::path::PathBuf,
    init: Mutex<String>,
}

/// The workers, and a counter that wakes the table printer on any change.
#[derive(Debug)]
struct WorkerTable {
    entries: Vec<WorkerEntry>,
    version: Arc<watch::Sender<u64>>,
}

/// Circles running as child processes, with the WebSocket server in-process.
#[derive(Debug)]
pub struct DirectLaunch {
    settings: LaunchSettings,
    table: WorkerTable,
    /// Forward each worker's status changes to `table.version`.
    watchers: Vec<tokio::task::JoinHandle<()>>,
    stop_server: Option<oneshot::Sender<()>>,
    server_task: Option<tokio::task::JoinHandle<Result<(), circles_server::ServerError>>>,
    server_addr: std::net::SocketAddr,
    local_redis: Option<LocalRedis>,
    dispatcher: Dispatcher,
    /// Init scripts that failed: (circle name, error).
    init_failures: Vec<(String, String)>,
}

/// How a direct-mode start went; see [`DirectLaunch::outcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// Every circle serves.
    AllUp {
        /// How many.
        total: usize,
    },
    /// Some serve; the others failed.
    SomeUp {
        /// How many serve.
        up: usize,
        /// How many there are.
        total: usize,
        /// (circle name, why) of those that do not.
        failed: Vec<(String, String)>,
    },
    /// None serves.
    NoneUp {
        /// (circle name, why) of each.
        failed: Vec<(String, String)>,
    },
    /// An init script failed (whatever else happened).
    InitFailed {
        /// (circle name, the script's error).
        failures: Vec<(String, String)>,
    },
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
                tracing::info!(port, dir = %redis.dir().display(), "nothing answered at {}; started a private redis-server for this launcher", circles_dispatcher::RedisUrl::new(settings.redis_url.as_str()));
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
        let policy = restart_policy();
        let log_dir = settings.log_dir();
        let entries: Vec<WorkerEntry> = settings
            .circles
            .iter()
            .map(|spec| WorkerEntry {
                log_file: log_dir.join(format!("{}.log", spec.name)),
                child: SupervisedChild::spawn(
                    circles_deploy::worker_child_spec(
                        &circles_deploy::WorkerService {
                            key: spec.key,
                            name: spec.name.clone(),
                            program: worker.path.clone(),
                            leading_args: worker.leading_args.clone(),
                            // Only service files carry a fingerprint.
                            program_sha256: String::new(),
                            redis_url: settings.redis_url.clone(),
                            data_dir: settings.data_dir.clone(),
                            log_dir: log_dir.clone(),
                            log_level: settings.log_level.to_string(),
                            init_script: None,
                            extra_env: Default::default(),
                            // Ceilings are for services; a child runs as is.
                            limits: Default::default(),
                        },
                        log_dir.join(format!("{}.log", spec.name)),
                        // As before: a worker stopped with the launcher
                        // fails what is still queued, so no client waits.
                        false,
                    ),
                    policy,
                ),
                spec: spec.clone(),
                init: Mutex::new("-".into()),
            })
            .collect();
        let table = WorkerTable {
            entries,
            version: Arc::new(watch::channel(0).0),
        };
        let watchers = table
            .entries
            .iter()
            .map(|e| {
                let mut status = e.child.status();
                let version = table.version.clone();
                tokio::spawn(async move {
                    while status.changed().await.is_ok() {
                        version.send_modify(|v| *v += 1);
                    }
                })
            })
            .collect();
        let progress = crate::progress::starting_bar(settings.circles.len());
        // Ready or given up: either way the launch goes on, and the table
        // shows which.
        let ready = table.entries.iter().map(|e| {
            let progress = &progress;
            async move {
                let _ = e.child.ready().await;
                progress.inc(1);
            }
        });
        futures_util::future::join_all(ready).await;
        progress.finish_and_clear();

        let mut launch = Self {
            init_failures: Vec::new(),
            server_task: started.server.take(),
            local_redis: started.local_redis.take(),
            settings,
            table,
            watchers,
            stop_server: Some(stop_server_tx),
            server_addr,
            dispatcher,
        };
        launch.run_init_scripts().await;
        Ok(launch)
    }

    /// Sends each ready circle's init script and records the outcome for
    /// the table.
    async fn run_init_scripts(&mut self) {
        let mut ready = Vec::new();
        for entry in &self.table.entries {
            if entry.spec.init_script.is_none() {
                continue;
            }
            if entry.child.current().state == circles_supervise::ChildState::Running {
                ready.push(&entry.spec);
            } else {
                self.set_init(&entry.spec.key, "skipped: worker not ready".into());
            }
        }
        for (key, outcome) in
            crate::init::run_init_scripts(&self.dispatcher, ready, self.settings.init_timeout).await
        {
            if let crate::init::InitOutcome::Failed(message) = &outcome
                && let Some(entry) = self.table.entries.iter().find(|e| e.spec.key == key)
            {
                self.init_failures
                    .push((entry.spec.name.clone(), message.clone()));
            }
            self.set_init(&key, outcome.summary());
        }
    }

    /// How the start went: which circles serve, which do not and why,
    /// whether an init script failed. The caller decides what follows (the
    /// binary: fail the run when none serves or an init script failed).
    pub fn outcome(&self) -> StartOutcome {
        if !self.init_failures.is_empty() {
            return StartOutcome::InitFailed {
                failures: self.init_failures.clone(),
            };
        }
        let total = self.table.entries.len();
        let failed: Vec<(String, String)> = self
            .table
            .entries
            .iter()
            .filter_map(|e| {
                let status = e.child.current();
                (status.state != circles_supervise::ChildState::Running).then(|| {
                    let why = status.reason.unwrap_or_else(|| {
                        format!("{} (see {})", status.state, e.log_file.display())
                    });
                    (e.spec.name.clone(), why)
                })
            })
            .collect();
        match failed.len() {
            0 => StartOutcome::AllUp { total },
            n if n == total => StartOutcome::NoneUp { failed },
            n => StartOutcome::SomeUp {
                up: total - n,
                total,
                failed,
            },
        }
    }

    fn set_init(&self, key: &CirclePublicKey, outcome: String) {
        if let Some(entry) = self.table.entries.iter().find(|e| e.spec.key == *key) {
            *entry.init.lock().expect("init outcome") = outcome;
            self.table.version.send_modify(|v| *v += 1);
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

    /// Each worker's process status, by circle.
    pub fn worker_statuses(&self) -> Vec<(CircleSpec, ChildStatus)> {
        self.table
            .entries
            .iter()
            .map(|e| (e.spec.clone(), e.child.current()))
            .collect()
    }

    /// Current rows for the status table (queue depths and heartbeats read
    /// from Redis), decided as `launcher status` decides them.
    pub async fn status_rows(&self) -> Vec<StatusRow> {
        let mut conn = self.dispatcher.connection();
        let mut rows = Vec::new();
        for entry in &self.table.entries {
            let process = entry.child.current();
            let redis = crate::status::redis_view(&mut conn, &entry.spec.key).await;
            rows.push(StatusRow::circle(
                entry.spec.name.clone(),
                &entry.spec.key,
                &process,
                &redis,
                entry.init.lock().expect("init outcome").clone(),
                self.ws_url(&entry.spec.key),
            ));
        }
        rows
    }

    /// Runs until `shutdown` resolves, printing the status table now and
    /// again whenever what it shows changes (a state, a restart, a reason;
    /// not a heartbeat's time): never the same table twice. Besides the
    /// processes' own changes, Redis is looked at every few seconds, so a
    /// worker that runs but stopped beating (frozen, cut off) shows
    /// `offline`.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>, print_tables: bool) {
        tokio::pin!(shutdown);
        let mut changes = self.table.version.subscribe();
        let mut recheck = tokio::time::interval(HEALTH_RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        recheck.tick().await;
        let mut shown: Vec<StatusRow> = Vec::new();
        let show = |shown: &mut Vec<StatusRow>, rows: Vec<StatusRow>| {
            let same = shown.len() == rows.len()
                && shown.iter().zip(&rows).all(|(a, b)| a.same_picture(b));
            if print_tables && !same {
                println!("{}", crate::status::render_report(&rows));
            }
            *shown = rows;
        };
        show(&mut shown, self.status_rows().await);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = changes.changed() => {
                    changes.mark_unchanged();
                    // Let a burst of changes settle into one table.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ = recheck.tick() => {}
            }
            // Reading the rows asks Redis, which may hang: a stop must not
            // wait for it.
            tokio::select! {
                _ = &mut shutdown => return,
                rows = self.status_rows() => show(&mut shown, rows),
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
        for w in self.watchers.drain(..) {
            w.abort();
        }
        let stops = std::mem::take(&mut self.table.entries)
            .into_iter()
            .map(|e| e.child.stop());
        futures_util::future::join_all(stops).await;
        if let Some(redis) = self.local_redis.take() {
            redis.stop().await;
        }
        tracing::info!("all circles stopped");
    }
}

/// How often the status table looks at the workers' heartbeats in Redis
/// (a heartbeat expires 10 s after a worker's last beat).
const HEALTH_RECHECK: Duration = Duration::from_secs(3);
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
