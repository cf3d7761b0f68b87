//! [`Supervisor`]: every operation on a host's runners, usable without the
//! server. It owns the process managers, the runner store and the one
//! dispatcher (Redis connection) of the process.
//!
//! Each operation validates everything before its first side effect, and
//! undoes what it did when a later step fails, so a failed call changes
//! nothing. Operations on one runner are serialised (a per-runner lock);
//! operations on different runners run side by side.

use circles_dispatcher::text::clip;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use circles_deploy::WorkerService;
use circles_dispatcher::protocol::{CIRCLES_SET, task_queue_key, worker_heartbeat_key};
use circles_dispatcher::{CirclePublicKey, DispatchError, Dispatcher, TaskId, WorkerHeartbeat};
use circles_supervise::{ChildState, RestartPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::error::SupervisorError;
use crate::manager::{ChildManager, ManagedStatus, Managers};
use crate::runner::{
    ManagerKind, RunnerConfig, RunnerInfo, TargetState, validate_env, validate_init_script,
    validate_name,
};
use crate::store::RunnerStore;

/// Largest job script accepted, in bytes.
pub const MAX_SCRIPT: usize = 1024 * 1024;
/// Longest job timeout accepted, in seconds.
pub const MAX_JOB_TIMEOUT_SECS: u64 = 3600;
/// Lines of a failed runner's log shown in its `RunnerInfo`.
const FAILED_LOG_LINES: usize = 10;
/// How long the Redis side of a status may take before it is left out.
const REDIS_STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long connecting to Redis may take.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The supervisor's settings, resolved and validated (see
/// [`crate::SupervisorBuilder`]).
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// Redis of the runners' circles (reaches workers in `REDIS_URL`).
    pub redis_url: String,
    /// Prefix of the supervisor's own Redis keys.
    pub namespace: String,
    /// Absolute data directory: state file, logs, circle databases.
    pub data_dir: PathBuf,
    /// Manager of runners added without one.
    pub default_manager: ManagerKind,
    /// Worker binary of runners added without one.
    pub worker_binary: Option<PathBuf>,
    /// `ws://host:port` of the WebSocket server, for runner URLs.
    pub ws_url: String,
    /// `RUST_LOG` of workers.
    pub worker_log_level: String,
    /// How child runners are restarted.
    pub restart_policy: RestartPolicy,
    /// How long an init script may take.
    pub init_timeout: Duration,
    /// Where the API listens, and its secrets.
    pub api: crate::builder::ApiSettings,
}

/// One runner's stored config and its operation lock.
#[derive(Debug)]
struct RunnerSlot {
    config: Mutex<RunnerConfig>,
    /// Held for the whole of an operation on this runner.
    op: tokio::sync::Mutex<()>,
    /// Whether the state file may record it: not while `add_runner` is
    /// still installing it (another operation's save would make a runner
    /// whose add then failed come back at the next start).
    saved: AtomicBool,
}

impl RunnerSlot {
    fn config(&self) -> RunnerConfig {
        self.config.lock().expect("runner config").clone()
    }
}

/// What `add_runner` takes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRunner {
    /// Unique name.
    pub name: String,
    /// The circle's key (hex).
    pub circle_public_key: String,
    /// Init script text, sent once the worker first runs.
    #[serde(default)]
    pub init_script: Option<String>,
    /// Worker binary (absolute path) instead of the supervisor's default.
    #[serde(default)]
    pub worker_binary: Option<PathBuf>,
    /// Extra environment of the worker.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Process manager instead of the supervisor's default.
    #[serde(default)]
    pub manager: Option<ManagerKind>,
    /// Start it now (default: only install).
    #[serde(default)]
    pub start: bool,
}

/// What the job methods take.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The runner whose circle runs it.
    pub runner: String,
    /// The Rhai script.
    pub script: String,
    /// Seconds to wait for it (also its wall-time cap); default 30.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Recorded as the task's `caller_id` (`CALLER_ID` in the script).
    #[serde(default)]
    pub caller_id: Option<String>,
}

/// `run_job`'s result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The task id.
    pub job_id: String,
    /// `completed` or `error`.
    pub status: String,
    /// The script's output, when completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Why it failed, when error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `get_job_status`'s result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The task id.
    pub job_id: String,
    /// `pending`, `processing`, `completed`, `error`.
    pub status: String,
    /// The output, when completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The error, when failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was queued (RFC 3339).
    pub created_at: Option<String>,
    /// When it last changed (RFC 3339).
    pub updated_at: Option<String>,
}

/// `generate_keypair`'s result: the new circle's public key, and where its
/// secret key is kept (never sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratedKey {
    /// The public key (canonical hex): give it to `add_runner`.
    pub circle_public_key: String,
    /// The file holding the secret key, mode 0600, on the supervisor's host.
    pub secret_key_file: PathBuf,
}

/// Most generated keys kept in `<data>/keys`; past it, generating is
/// refused until unused ones are removed (a bound on what a caller can make
/// the supervisor write).
pub const MAX_GENERATED_KEYS: usize = 1000;

/// One runner's outcome in `start_all`/`stop_all`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkResult {
    /// The runner.
    pub name: String,
    /// Whether it reached the state.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `get_all_status`'s result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorStatus {
    /// Runner counts: `total` and one per state.
    pub runners: BTreeMap<String, usize>,
    /// `ok`, or why Redis does not answer.
    pub redis: String,
    /// Seconds since the supervisor started.
    pub uptime_secs: u64,
    /// The supervisor's version.
    pub version: String,
    /// Its Redis key prefix.
    pub namespace: String,
    /// Manager of runners added without one.
    pub default_manager: ManagerKind,
}

/// See the module docs.
#[derive(Debug)]
pub struct Supervisor {
    settings: SupervisorSettings,
    managers: Managers,
    runners: RwLock<BTreeMap<String, Arc<RunnerSlot>>>,
    store: RunnerStore,
    /// Serialises writes of the store file.
    store_write: Mutex<()>,
    dispatcher: OnceCell<Dispatcher>,
    started: Instant,
}

impl Supervisor {
    /// Opens the supervisor on `settings`: loads the stored runners and
    /// brings each to its target state in the background (child runners
    /// with target `running` are started; systemd/launchd runners are
    /// adopted as they run). Redis is connected on first use.
    pub async fn open(settings: SupervisorSettings) -> Result<Arc<Self>, SupervisorError> {
        let log_dir = settings.data_dir.join("logs");
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| SupervisorError::io(format!("creating {}", log_dir.display()), e))?;
        let store = RunnerStore::new(&settings.data_dir);
        let stored = store.load()?;
        let runners = stored
            .into_iter()
            .map(|c| {
                (
                    c.name.clone(),
                    Arc::new(RunnerSlot {
                        saved: AtomicBool::new(true),
                        config: Mutex::new(c),
                        op: tokio::sync::Mutex::new(()),
                    }),
                )
            })
            .collect();
        let supervisor = Arc::new(Self {
            managers: Managers::new(ChildManager::new(settings.restart_policy, log_dir)),
            settings,
            runners: RwLock::new(runners),
            store,
            store_write: Mutex::new(()),
            dispatcher: OnceCell::new(),
            started: Instant::now(),
        });
        tokio::spawn(watch_service_runners(Arc::downgrade(&supervisor)));
        let count = supervisor.list_runners().len();
        if count > 0 {
            tracing::info!(runners = count, state = %supervisor.store.path().display(), "restoring runners");
            let me = supervisor.clone();
            tokio::spawn(async move { me.reconcile().await });
        }
        Ok(supervisor)
    }

    /// The settings.
    pub fn settings(&self) -> &SupervisorSettings {
        &self.settings
    }

    /// Brings every runner to its target state.
    async fn reconcile(self: Arc<Self>) {
        let slots: Vec<Arc<RunnerSlot>> = self.slots();
        let work = slots.into_iter().map(|slot| {
            let me = self.clone();
            async move {
                let _op = slot.op.lock().await;
                let config = slot.config();
                let result = async {
                    let manager = me.managers.get(config.manager).await?;
                    let w = me.worker_for(&config, manager.kind()).await?;
                    let status = manager.status(&w).await;
                    match config.target {
                        TargetState::Running if status.state != ChildState::Running => {
                            check_executable(&me.worker_binary(&config)?)?;
                            manager.start(&w).await?;
                            me.send_init_if_pending(&slot).await;
                        }
                        TargetState::Stopped
                            if matches!(status.state, ChildState::Running | ChildState::Starting | ChildState::Backoff) =>
                        {
                            manager.stop(&w).await?;
                        }
                        _ => {}
                    }
                    Ok::<_, SupervisorError>(())
                }
                .await;
                if let Err(e) = result {
                    tracing::error!(runner = %config.name, "could not restore its target state ({:?}): {e}", config.target);
                }
            }
        });
        futures_util::future::join_all(work).await;
    }

    fn slots(&self) -> Vec<Arc<RunnerSlot>> {
        self.runners
            .read()
            .expect("runner table")
            .values()
            .cloned()
            .collect()
    }

    fn slot(&self, name: &str) -> Result<Arc<RunnerSlot>, SupervisorError> {
        self.runners
            .read()
            .expect("runner table")
            .get(name)
            .cloned()
            .ok_or_else(|| SupervisorError::RunnerNotFound(clip(name, 80).into_owned()))
    }

    fn save(&self) -> Result<(), SupervisorError> {
        let _write = self.store_write.lock().expect("store lock");
        let configs: Vec<RunnerConfig> = self
            .slots()
            .iter()
            .filter(|s| s.saved.load(Ordering::SeqCst))
            .map(|s| s.config())
            .collect();
        self.store.save(&configs)
    }

    /// The worker binary of `config`: its own, else the supervisor's.
    fn worker_binary(&self, config: &RunnerConfig) -> Result<PathBuf, SupervisorError> {
        config
            .worker_binary
            .clone()
            .or_else(|| self.settings.worker_binary.clone())
            .ok_or_else(|| {
                SupervisorError::InvalidInput(
                    "no worker binary: give `worker_binary` (absolute path), or start the supervisor with one (--worker-binary, or `worker` next to the supervisor or on PATH)".into(),
                )
            })
    }

    /// The worker of `config` as the deploy crate describes it, without
    /// the binary's hash (see [`Self::worker_for`]).
    fn worker(&self, config: &RunnerConfig) -> Result<WorkerService, SupervisorError> {
        let program = self.worker_binary(config)?;
        let program_sha256 = String::new();
        Ok(WorkerService {
            key: config.circle_public_key,
            name: config.name.clone(),
            program,
            leading_args: Vec::new(),
            program_sha256,
            redis_url: self.settings.redis_url.clone(),
            data_dir: self.settings.data_dir.clone(),
            log_dir: self.settings.data_dir.join("logs"),
            log_level: self.settings.worker_log_level.clone(),
            init_script: config.init_script.clone(),
            extra_env: config.env.clone(),
            limits: circles_deploy::DEFAULT_WORKER_LIMITS,
        })
    }

    /// The worker of `config` for `manager`: with the binary's hash when a
    /// service file needs it, hashed off the runtime's thread (a binary is
    /// tens of MiB).
    async fn worker_for(
        &self,
        config: &RunnerConfig,
        manager: ManagerKind,
    ) -> Result<WorkerService, SupervisorError> {
        let mut w = self.worker(config)?;
        if manager != ManagerKind::Child {
            let program = w.program.clone();
            w.program_sha256 = tokio::task::spawn_blocking(move || {
                circles_deploy::file_sha256(&program).map_err(|e| {
                    SupervisorError::io(
                        format!("reading the worker binary {}", program.display()),
                        e,
                    )
                })
            })
            .await
            .map_err(|e| {
                SupervisorError::io("hashing the worker binary", std::io::Error::other(e))
            })??;
        }
        Ok(w)
    }

    /// The dispatcher, connecting on first use.
    async fn dispatcher(&self) -> Result<&Dispatcher, SupervisorError> {
        self.dispatcher
            .get_or_try_init(|| async {
                let url = circles_dispatcher::RedisUrl::new(self.settings.redis_url.clone());
                match tokio::time::timeout(
                    REDIS_CONNECT_TIMEOUT,
                    Dispatcher::connect(
                        &self.settings.redis_url,
                        format!("{}-supervisor", self.settings.namespace),
                    ),
                )
                .await
                {
                    Ok(Ok(d)) => Ok(d),
                    Ok(Err(e)) => Err(SupervisorError::from_dispatch(e, 0)),
                    Err(_) => Err(SupervisorError::Redis {
                        url,
                        message: format!("no answer within {REDIS_CONNECT_TIMEOUT:?}"),
                    }),
                }
            })
            .await
    }

    // ----- runners ---------------------------------------------------------

    /// Makes a new circle identity: a secp256k1 keypair whose secret key is
    /// written to `<data>/keys/<public key>.json` (mode 0600, the shape of
    /// the launcher's generated keys) and never returned or logged.
    pub async fn generate_keypair(&self) -> Result<GeneratedKey, SupervisorError> {
        let dir = self.settings.data_dir.join("keys");
        tokio::task::spawn_blocking(move || {
            let io = |what: String, e| SupervisorError::io(what, e);
            std::fs::create_dir_all(&dir)
                .map_err(|e| io(format!("creating {}", dir.display()), e))?;
            let kept = std::fs::read_dir(&dir)
                .map_err(|e| io(format!("reading {}", dir.display()), e))?
                .count();
            if kept >= MAX_GENERATED_KEYS {
                return Err(SupervisorError::InvalidInput(format!(
                    "{kept} generated keys are kept in {}; remove the unused ones before generating more",
                    dir.display()
                )));
            }
            let pair = circles_dispatcher::CircleKeypair::generate();
            let public = pair.public.to_hex();
            let path = dir.join(format!("{public}.json"));
            let stored = serde_json::json!({
                "public_key": public,
                "secret_key": pair.secret_hex(),
            });
            circles_deploy::fs::write_atomically(&path, stored.to_string().as_bytes(), 0o600)
                .map_err(|e| io(format!("writing {}", path.display()), e))?;
            tracing::info!(circle = %public, file = %path.display(), "generated a circle keypair");
            Ok(GeneratedKey {
                circle_public_key: public,
                secret_key_file: path,
            })
        })
        .await
        .map_err(|e| SupervisorError::io("generating a keypair", std::io::Error::other(e)))?
    }

    /// Adds a runner: validates everything, installs it with its manager
    /// (starting it when asked), records it. On any failure nothing stays
    /// installed or recorded.
    pub async fn add_runner(&self, req: AddRunner) -> Result<RunnerInfo, SupervisorError> {
        validate_name(&req.name)?;
        let key = CirclePublicKey::parse(&req.circle_public_key)?;
        validate_env(&req.env)?;
        if let Some(script) = &req.init_script {
            validate_init_script(script)?;
        }
        let manager_kind = req.manager.unwrap_or(self.settings.default_manager);
        let config = RunnerConfig {
            name: req.name.clone(),
            circle_public_key: key,
            init_script: req.init_script.clone(),
            worker_binary: req.worker_binary.clone(),
            env: req.env.clone(),
            manager: manager_kind,
            target: if req.start {
                TargetState::Running
            } else {
                TargetState::Stopped
            },
            init: "-".into(),
            init_pending: req.init_script.is_some(),
        };
        let program = self.worker_binary(&config)?;
        check_executable(&program)?;
        // Reserve the name (and the circle) before anything is installed, so
        // a concurrent add of the same one is refused.
        let slot = Arc::new(RunnerSlot {
            saved: AtomicBool::new(false),
            config: Mutex::new(config.clone()),
            op: tokio::sync::Mutex::new(()),
        });
        let _op = slot.op.lock().await;
        {
            let mut runners = self.runners.write().expect("runner table");
            if runners.contains_key(&req.name) {
                return Err(SupervisorError::RunnerExists(req.name));
            }
            if let Some(other) = runners
                .values()
                .map(|s| s.config())
                .find(|c| c.circle_public_key == key)
            {
                return Err(SupervisorError::CircleTaken {
                    key: key.to_hex(),
                    runner: other.name,
                });
            }
            runners.insert(req.name.clone(), slot.clone());
        }
        let result = async {
            let manager = self.managers.get(manager_kind).await?;
            let w = self.worker_for(&config, manager_kind).await?;
            manager.install(&w, req.start).await?;
            if req.start
                && let Err(e) = manager.start(&w).await
            {
                let _ = manager.remove(&w).await;
                return Err(e);
            }
            slot.saved.store(true, Ordering::SeqCst);
            if let Err(e) = self.save() {
                let _ = manager.remove(&w).await;
                return Err(e);
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            slot.saved.store(false, Ordering::SeqCst);
            self.runners
                .write()
                .expect("runner table")
                .remove(&req.name);
            // A save that failed half-way may have recorded it.
            if let Err(e) = self.save() {
                tracing::error!("could not update the state file after a failed add: {e}");
            }
            tracing::warn!(runner = %req.name, "add_runner failed, nothing kept: {e}");
            return Err(e);
        }
        tracing::info!(runner = %req.name, circle = %key, manager = %manager_kind, started = req.start, "runner added");
        if req.start {
            self.send_init_if_pending(&slot).await;
        }
        drop(_op);
        self.runner_status(&req.name).await
    }

    /// Sends the runner's init script if it has not been sent yet, and
    /// records the outcome.
    async fn send_init_if_pending(&self, slot: &RunnerSlot) {
        if self.send_init_unsaved(slot).await
            && let Err(e) = self.save()
        {
            tracing::error!("could not record the init outcome: {e}");
        }
    }

    /// [`Self::send_init_if_pending`] without saving; whether the outcome
    /// changed the config.
    async fn send_init_unsaved(&self, slot: &RunnerSlot) -> bool {
        let config = slot.config();
        let (Some(script), true) = (&config.init_script, config.init_pending) else {
            return false;
        };
        let outcome = match self.dispatcher().await {
            Ok(d) => match d
                .run_as(
                    &config.circle_public_key,
                    script,
                    self.settings.init_timeout,
                    &config.circle_public_key.to_hex(),
                )
                .await
            {
                Ok(output) => format!("ok: {output}"),
                Err(DispatchError::ScriptError { message, .. }) => format!("error: {message}"),
                Err(e) => format!("error: {e}"),
            },
            Err(e) => format!("error: {e}"),
        };
        tracing::info!(runner = %config.name, "init script: {outcome}");
        let mut c = slot.config.lock().expect("runner config");
        c.init = outcome;
        c.init_pending = false;
        true
    }

    /// Stops and uninstalls a runner and forgets it (its circle's database
    /// stays in the data directory).
    pub async fn remove_runner(&self, name: &str) -> Result<(), SupervisorError> {
        let slot = self.slot(name)?;
        let _op = slot.op.lock().await;
        let config = slot.config();
        let manager = self.managers.get(config.manager).await?;
        let w = self
            .worker(&config)
            .or_else(|_| self.placeholder_worker(&config))?;
        manager.remove(&w).await?;
        self.runners.write().expect("runner table").remove(name);
        self.save()?;
        // The server stops routing the circle (best effort, as `launcher
        // cleanup` does).
        if let Ok(d) = self.dispatcher().await {
            let _: Result<(), _> = redis::cmd("SREM")
                .arg(CIRCLES_SET)
                .arg(config.circle_public_key.to_hex())
                .query_async(&mut d.connection())
                .await;
        }
        tracing::info!(runner = %name, "runner removed");
        Ok(())
    }

    /// A worker description for operations that need only names (status,
    /// remove) when the binary is unknown.
    fn placeholder_worker(&self, config: &RunnerConfig) -> Result<WorkerService, SupervisorError> {
        let mut with_binary = config.clone();
        with_binary.worker_binary = Some(PathBuf::from("/nonexistent/worker"));
        self.worker(&with_binary)
    }

    /// Runner names, in order.
    pub fn list_runners(&self) -> Vec<String> {
        self.runners
            .read()
            .expect("runner table")
            .keys()
            .cloned()
            .collect()
    }

    /// Starts a runner (target `running`) and waits until it runs.
    pub async fn start_runner(&self, name: &str) -> Result<RunnerInfo, SupervisorError> {
        let slot = self.slot(name)?;
        self.start_slot(&slot, true).await?;
        self.runner_status(name).await
    }

    /// Starts one runner under its lock; with `persist`, records the target
    /// and the init outcome (bulk calls record once for all).
    async fn start_slot(&self, slot: &RunnerSlot, persist: bool) -> Result<(), SupervisorError> {
        let _op = slot.op.lock().await;
        if persist {
            self.set_target(slot, TargetState::Running)?;
        }
        let config = slot.config();
        // Checked again at every start: the file may have changed since.
        check_executable(&self.worker_binary(&config)?)?;
        let manager = self.managers.get(config.manager).await?;
        let w = self.worker_for(&config, manager.kind()).await?;
        manager.start(&w).await?;
        if persist {
            self.send_init_if_pending(slot).await;
        } else {
            self.send_init_unsaved(slot).await;
        }
        Ok(())
    }

    /// Stops one runner under its lock; with `persist`, records the target.
    async fn stop_slot(&self, slot: &RunnerSlot, persist: bool) -> Result<(), SupervisorError> {
        let _op = slot.op.lock().await;
        if persist {
            self.set_target(slot, TargetState::Stopped)?;
        }
        let config = slot.config();
        let manager = self.managers.get(config.manager).await?;
        let w = self
            .worker(&config)
            .or_else(|_| self.placeholder_worker(&config))?;
        manager.stop(&w).await
    }

    /// Stops a runner (target `stopped`) and waits until it has stopped.
    pub async fn stop_runner(&self, name: &str) -> Result<RunnerInfo, SupervisorError> {
        let slot = self.slot(name)?;
        self.stop_slot(&slot, true).await?;
        self.runner_status(name).await
    }

    /// Restarts a runner (target `running`) and waits until it runs again.
    pub async fn restart_runner(&self, name: &str) -> Result<RunnerInfo, SupervisorError> {
        let slot = self.slot(name)?;
        {
            let _op = slot.op.lock().await;
            let config = slot.config();
            check_executable(&self.worker_binary(&config)?)?;
            self.set_target(&slot, TargetState::Running)?;
            let manager = self.managers.get(config.manager).await?;
            let w = self.worker_for(&config, manager.kind()).await?;
            manager.restart(&w).await?;
            self.send_init_if_pending(&slot).await;
        }
        self.runner_status(name).await
    }

    fn set_target(&self, slot: &RunnerSlot, target: TargetState) -> Result<(), SupervisorError> {
        let changed = {
            let mut c = slot.config.lock().expect("runner config");
            let changed = c.target != target;
            c.target = target;
            changed
        };
        if changed {
            self.save()?;
        }
        Ok(())
    }

    /// Starts every runner (all at once); one result per runner. The
    /// targets, then the init outcomes, are recorded once for all.
    pub async fn start_all(&self) -> Vec<BulkResult> {
        self.bulk(TargetState::Running).await
    }

    /// Stops every runner (all at once); one result per runner.
    pub async fn stop_all(&self) -> Vec<BulkResult> {
        self.bulk(TargetState::Stopped).await
    }

    async fn bulk(&self, target: TargetState) -> Vec<BulkResult> {
        let slots: Vec<(String, Arc<RunnerSlot>)> = self
            .runners
            .read()
            .expect("runner table")
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        for (_, slot) in &slots {
            slot.config.lock().expect("runner config").target = target;
        }
        let saved = self.save();
        let results = futures_util::future::join_all(slots.iter().map(|(_, slot)| async move {
            match target {
                TargetState::Running => self.start_slot(slot, false).await,
                TargetState::Stopped => self.stop_slot(slot, false).await,
            }
        }))
        .await;
        if target == TargetState::Running
            && let Err(e) = self.save()
        {
            tracing::error!("could not record the init outcomes: {e}");
        }
        slots
            .into_iter()
            .zip(results)
            .map(|((name, _), r)| {
                let r = r.and(saved.as_ref().map(drop).map_err(|e| {
                    SupervisorError::io(
                        "recording the target state",
                        std::io::Error::other(e.to_string()),
                    )
                }));
                BulkResult {
                    name,
                    ok: r.is_ok(),
                    error: r.err().map(|e| e.to_string()),
                }
            })
            .collect()
    }

    // ----- status ----------------------------------------------------------

    /// One runner's [`RunnerInfo`].
    pub async fn runner_status(&self, name: &str) -> Result<RunnerInfo, SupervisorError> {
        let slot = self.slot(name)?;
        let mut infos = self.infos(vec![slot.config()]).await;
        Ok(infos.remove(0))
    }

    /// Every runner's [`RunnerInfo`], in name order.
    pub async fn all_runner_status(&self) -> Vec<RunnerInfo> {
        let configs: Vec<RunnerConfig> = self.slots().iter().map(|s| s.config()).collect();
        self.infos(configs).await
    }

    async fn infos(&self, configs: Vec<RunnerConfig>) -> Vec<RunnerInfo> {
        let keys: Vec<CirclePublicKey> = configs.iter().map(|c| c.circle_public_key).collect();
        let (statuses, redis) = tokio::join!(
            futures_util::future::join_all(configs.iter().map(|c| self.managed_status(c))),
            self.redis_side(&keys)
        );
        let here = circles_deploy::status::this_host();
        let mut infos = Vec::with_capacity(configs.len());
        for ((config, status), (queue_depth, beat)) in configs.into_iter().zip(statuses).zip(redis)
        {
            let last_log_lines = if status.state == ChildState::Failed {
                self.runner_logs_of(&config, FAILED_LOG_LINES, None)
                    .await
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            // A service runner only added, never started, has no unit yet:
            // that is `stopped`, not `unknown`.
            let mut status = status;
            if status.state == ChildState::Unknown
                && config.target == TargetState::Stopped
                && config.manager != ManagerKind::Child
                && status
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.contains("is not installed"))
            {
                status.state = ChildState::Stopped;
            }
            // The heartbeat (and its task count) only of this runner's own
            // process, and the reason as `launcher status` gives it: one
            // reading for every tool (circles_deploy::status).
            let health = circles_deploy::status::circle_health(
                &circles_supervise::ChildStatus {
                    state: status.state.clone(),
                    pid: status.pid,
                    started_at: status.started_at,
                    restarts: status.restarts,
                    last_exit: status.last_exit,
                    reason: status.reason.clone(),
                },
                queue_depth.is_some(),
                beat,
                &here,
            );
            let beat = health.heartbeat;
            status.reason = health.reason;
            infos.push(RunnerInfo {
                name: config.name.clone(),
                circle_public_key: config.circle_public_key.to_hex(),
                manager: config.manager,
                state: status.state,
                target: config.target,
                pid: status.pid,
                started_at: status.started_at.map(rfc3339),
                uptime_secs: status
                    .started_at
                    .and_then(|t| t.elapsed().ok())
                    .map(|d| d.as_secs()),
                restarts: status.restarts,
                last_exit: status.last_exit,
                reason: status.reason,
                last_log_lines,
                queue_depth,
                heartbeat_at: beat.as_ref().map(|b| b.beat_at.clone()),
                tasks_done: beat.as_ref().map(|b| b.tasks_done),
                memory_rss_bytes: status.pid.and_then(crate::procfs::rss_bytes),
                init: config.init.clone(),
                url: format!(
                    "{}/{}",
                    self.settings.ws_url.trim_end_matches('/'),
                    config.circle_public_key
                ),
            });
        }
        infos
    }

    async fn managed_status(&self, config: &RunnerConfig) -> ManagedStatus {
        let manager = match self.managers.get(config.manager).await {
            Ok(m) => m,
            Err(e) => return ManagedStatus::unknown(e.to_string()),
        };
        match self
            .worker(config)
            .or_else(|_| self.placeholder_worker(config))
        {
            Ok(w) => manager.status(&w).await,
            Err(e) => ManagedStatus::unknown(e.to_string()),
        }
    }

    /// Queue depth and heartbeat of each circle, in one pipelined round
    /// trip; `(None, None)` for all when Redis does not answer in time.
    async fn redis_side(
        &self,
        keys: &[CirclePublicKey],
    ) -> Vec<(Option<u64>, Option<WorkerHeartbeat>)> {
        let none = || vec![(None, None); keys.len()];
        if keys.is_empty() {
            return Vec::new();
        }
        let Ok(Ok(d)) = tokio::time::timeout(REDIS_STATUS_TIMEOUT, self.dispatcher()).await else {
            return none();
        };
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("LLEN").arg(task_queue_key(key));
            pipe.cmd("GET").arg(worker_heartbeat_key(key));
        }
        let mut conn = d.connection();
        let query = pipe.query_async::<Vec<redis::Value>>(&mut conn);
        let Ok(Ok(values)) = tokio::time::timeout(REDIS_STATUS_TIMEOUT, query).await else {
            return none();
        };
        values
            .chunks(2)
            .map(|pair| {
                let depth = redis::from_redis_value::<u64>(pair[0].clone()).ok();
                let beat = redis::from_redis_value::<Option<String>>(pair[1].clone())
                    .ok()
                    .flatten()
                    .and_then(|b| serde_json::from_str::<WorkerHeartbeat>(&b).ok());
                (depth, beat)
            })
            .collect()
    }

    /// Counts by state, Redis health, uptime, version.
    pub async fn status(&self) -> SupervisorStatus {
        let mut runners: BTreeMap<String, usize> = ChildState::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect();
        let configs: Vec<RunnerConfig> = self.slots().iter().map(|s| s.config()).collect();
        runners.insert("total".into(), configs.len());
        for status in
            futures_util::future::join_all(configs.iter().map(|c| self.managed_status(c))).await
        {
            *runners
                .entry(status.state.as_str().to_string())
                .or_default() += 1;
        }
        let redis = match self.ping().await {
            Ok(()) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        SupervisorStatus {
            runners,
            redis,
            uptime_secs: self.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            namespace: self.settings.namespace.clone(),
            default_manager: self.settings.default_manager,
        }
    }

    /// Every circle registered in the Redis this supervisor uses, on every
    /// host sharing it — the view of `launcher status --fleet`, read the
    /// same way ([`circles_dispatcher::fleet`]).
    pub async fn fleet(&self) -> Result<Vec<circles_dispatcher::FleetEntry>, SupervisorError> {
        let d = self.dispatcher().await?;
        d.fleet().await.map_err(SupervisorError::Dispatch)
    }

    async fn ping(&self) -> Result<(), SupervisorError> {
        let d = self.dispatcher().await?;
        let url = d.redis_url().clone();
        let pong = tokio::time::timeout(
            REDIS_STATUS_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut d.connection()),
        )
        .await;
        match pong {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(SupervisorError::Redis {
                url,
                message: e.to_string(),
            }),
            Err(_) => Err(SupervisorError::Redis {
                url,
                message: format!("no answer within {REDIS_STATUS_TIMEOUT:?}"),
            }),
        }
    }

    // ----- logs ------------------------------------------------------------

    /// The last `lines` (at most 10 000) log lines of a runner, oldest
    /// first, at or after `since`.
    pub async fn runner_logs(
        &self,
        name: &str,
        lines: usize,
        since: Option<SystemTime>,
    ) -> Result<Vec<String>, SupervisorError> {
        let config = self.slot(name)?.config();
        self.runner_logs_of(&config, lines, since).await
    }

    async fn runner_logs_of(
        &self,
        config: &RunnerConfig,
        lines: usize,
        since: Option<SystemTime>,
    ) -> Result<Vec<String>, SupervisorError> {
        let manager = self.managers.get(config.manager).await?;
        let w = self
            .worker(config)
            .or_else(|_| self.placeholder_worker(config))?;
        manager.logs(&w, lines, since).await
    }

    /// New log lines of a runner as they are written, until the receiver is
    /// dropped.
    pub async fn follow_runner_logs(
        &self,
        name: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<String>, SupervisorError> {
        let config = self.slot(name)?.config();
        let manager = self.managers.get(config.manager).await?;
        let w = self
            .worker(&config)
            .or_else(|_| self.placeholder_worker(&config))?;
        manager.follow_logs(&w)
    }

    // ----- jobs ------------------------------------------------------------

    fn check_job(
        &self,
        req: &JobRequest,
    ) -> Result<(CirclePublicKey, Duration, String), SupervisorError> {
        let config = self.slot(&req.runner)?.config();
        if req.script.len() > MAX_SCRIPT {
            return Err(SupervisorError::InvalidInput(format!(
                "the script is {} bytes; at most {MAX_SCRIPT}",
                req.script.len()
            )));
        }
        if req.script.trim().is_empty() {
            return Err(SupervisorError::InvalidInput("the script is empty".into()));
        }
        let secs = req
            .timeout_secs
            .unwrap_or(circles_dispatcher::protocol::DEFAULT_TASK_TIMEOUT_SECS);
        if !(1..=MAX_JOB_TIMEOUT_SECS).contains(&secs) {
            return Err(SupervisorError::InvalidInput(format!(
                "timeout_secs {secs} is out of range 1..={MAX_JOB_TIMEOUT_SECS}"
            )));
        }
        let caller = req
            .caller_id
            .clone()
            .unwrap_or_else(|| format!("{}-supervisor", self.settings.namespace));
        if caller.len() > 256 || caller.chars().any(char::is_control) {
            return Err(SupervisorError::InvalidInput(
                "caller_id must be at most 256 characters without control characters".into(),
            ));
        }
        Ok((config.circle_public_key, Duration::from_secs(secs), caller))
    }

    /// Queues a script for the runner's circle; returns the job (task) id.
    pub async fn queue_job(&self, req: JobRequest) -> Result<TaskId, SupervisorError> {
        let (key, timeout, caller) = self.check_job(&req)?;
        let d = self.dispatcher().await?;
        d.submit_as(&key, &req.script, timeout, &caller)
            .await
            .map_err(|e| SupervisorError::from_dispatch(e, timeout.as_secs()))
    }

    /// Queues a script and waits (up to its timeout) for its outcome.
    pub async fn run_job(&self, req: JobRequest) -> Result<JobResult, SupervisorError> {
        let (key, timeout, caller) = self.check_job(&req)?;
        // The manager's view only (no Redis round trip): this is on the
        // path of every job.
        let state = self
            .managed_status(&self.slot(&req.runner)?.config())
            .await
            .state;
        if !matches!(
            state,
            ChildState::Running | ChildState::Starting | ChildState::Backoff
        ) {
            return Err(SupervisorError::RunnerNotRunning {
                runner: req.runner.clone(),
                state: state.to_string(),
            });
        }
        let d = self.dispatcher().await?;
        let id = TaskId::new();
        match d.run_task(id, &key, &req.script, timeout, &caller).await {
            Ok(output) => Ok(JobResult {
                job_id: id.to_string(),
                status: "completed".into(),
                output: Some(output),
                error: None,
            }),
            Err(DispatchError::ScriptError { message, .. }) => Ok(JobResult {
                job_id: id.to_string(),
                status: "error".into(),
                output: None,
                error: Some(message),
            }),
            Err(e) => Err(SupervisorError::from_dispatch(e, timeout.as_secs())),
        }
    }

    /// A job's state as its task hash says.
    pub async fn job_status(&self, job_id: &str) -> Result<JobStatus, SupervisorError> {
        let id: TaskId = job_id.trim().parse().map_err(|_| {
            SupervisorError::InvalidInput(format!(
                "job id {:?} is not a job id (a UUID as queue_job_to_runner returns)",
                clip(job_id, 60)
            ))
        })?;
        let d = self.dispatcher().await?;
        let record = d
            .status(&id)
            .await
            .map_err(|e| SupervisorError::from_dispatch(e, 0))?;
        Ok(JobStatus {
            job_id: id.to_string(),
            status: record
                .status
                .map_or_else(|| "unknown".to_string(), |s| s.as_str().to_string()),
            output: record.output,
            error: record.error,
            created_at: record.created_at,
            updated_at: record.updated_at,
        })
    }

    // ----- presence --------------------------------------------------------

    /// `<namespace>:supervisor:<host>`
    pub fn presence_key(&self) -> String {
        format!("{}:supervisor:{}", self.settings.namespace, hostname())
    }

    /// Writes the presence key (pid, version, API address, runner names)
    /// with a TTL; a Redis that does not answer is only logged.
    pub(crate) async fn write_presence(&self, addr: std::net::SocketAddr, ttl: Duration) {
        let value = serde_json::json!({
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "api": format!("http://{addr}"),
            "runners": self.list_runners(),
            "updated_at": rfc3339(SystemTime::now()),
        });
        let result = async {
            let d = self.dispatcher().await?;
            redis::cmd("SET")
                .arg(self.presence_key())
                .arg(value.to_string())
                .arg("EX")
                .arg(ttl.as_secs().max(1))
                .query_async::<()>(&mut d.connection())
                .await
                .map_err(|e| SupervisorError::Redis {
                    url: d.redis_url().clone(),
                    message: e.to_string(),
                })
        }
        .await;
        if let Err(e) = result {
            tracing::debug!("presence key not written: {e}");
        }
    }

    /// Deletes the presence key (on a graceful stop).
    pub(crate) async fn clear_presence(&self) {
        if let Some(d) = self.dispatcher.get() {
            let _: Result<(), _> = tokio::time::timeout(
                REDIS_STATUS_TIMEOUT,
                redis::cmd("DEL")
                    .arg(self.presence_key())
                    .query_async::<()>(&mut d.connection()),
            )
            .await
            .unwrap_or(Ok(()));
        }
    }

    // ----- shutdown --------------------------------------------------------

    /// Stops the child runners (they come back with the supervisor: their
    /// target state is kept); systemd/launchd runners keep running.
    pub async fn shutdown(&self) {
        self.managers.child.stop_all().await;
    }
}

/// How often the states of systemd/launchd runners are read in the
/// background: often enough to see how a process ended before the manager
/// restarts it (systemd `RestartSec=2`) and forgets.
const SERVICE_POLL: Duration = Duration::from_secs(1);

/// Reads the status of every service runner now and then, until the
/// supervisor is gone.
async fn watch_service_runners(supervisor: std::sync::Weak<Supervisor>) {
    loop {
        tokio::time::sleep(SERVICE_POLL).await;
        let Some(s) = supervisor.upgrade() else {
            return;
        };
        let configs: Vec<RunnerConfig> = s
            .slots()
            .iter()
            .map(|slot| slot.config())
            .filter(|c| c.manager != ManagerKind::Child)
            .collect();
        for c in configs {
            let _ = s.managed_status(&c).await;
        }
    }
}

fn check_executable(path: &std::path::Path) -> Result<(), SupervisorError> {
    use std::os::unix::fs::PermissionsExt;
    if !path.is_absolute() {
        return Err(SupervisorError::InvalidInput(format!(
            "worker binary {} must be an absolute path",
            path.display()
        )));
    }
    let meta = std::fs::metadata(path).map_err(|_| {
        SupervisorError::InvalidInput(format!("worker binary {} does not exist", path.display()))
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(SupervisorError::InvalidInput(format!(
            "worker binary {} is not an executable file",
            path.display()
        )));
    }
    // A supervisor running as root runs runners as root (`child`): it only
    // runs a binary that no one but root could have put there or could
    // swap later — the file and every directory above it owned by root and
    // not writable by group or others (a sticky directory such as /tmp is
    // fine: only an entry's owner may rename it there).
    if rustix::process::geteuid().is_root() {
        use std::os::unix::fs::MetadataExt;
        let refuse = |what: &std::path::Path| {
            Err(SupervisorError::InvalidInput(format!(
                "worker binary {}: {} must be owned by root and not writable by group or others, since the supervisor runs as root",
                path.display(),
                what.display()
            )))
        };
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return refuse(path);
        }
        // The directories of the path as given (where a symlink could be
        // swapped) and of the one it resolves to (a symlink on the way
        // would hide the directories behind it).
        let real = std::fs::canonicalize(path).map_err(|_| {
            SupervisorError::InvalidInput(format!(
                "worker binary {} cannot be resolved",
                path.display()
            ))
        })?;
        for dir in path.ancestors().skip(1).chain(real.ancestors().skip(1)) {
            let Ok(m) = std::fs::metadata(dir) else {
                return refuse(dir);
            };
            let sticky = m.mode() & 0o1000 != 0;
            if m.uid() != 0 || (m.mode() & 0o022 != 0 && !sticky) {
                return refuse(dir);
            }
        }
    }
    Ok(())
}

/// This host's name.
fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// `2026-12-01T16:37:17Z`
pub(crate) fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
