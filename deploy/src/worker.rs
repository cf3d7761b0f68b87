//! A circle worker, described once ([`WorkerService`]) and turned into what
//! each way of running it needs: a `ServiceSpec` for systemd/launchd
//! ([`worker_service_spec`]) or a supervised child ([`worker_child_spec`]).
//! A worker installed by the launcher and one installed by the supervisor
//! are therefore the same unit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use circles_dispatcher::CirclePublicKey;
use circles_dispatcher::protocol::{ENV_REDIS_URL, ENV_RUST_LOG};
use circles_services::{RestartPolicy, ServiceSpec, ServiceTemplate};
use circles_supervise::ChildSpec;
use sha2::{Digest, Sha256};

use crate::kinds::worker_service_name;

/// What a worker service is made of.
#[derive(Debug, Clone)]
pub struct WorkerService {
    /// The circle.
    pub key: CirclePublicKey,
    /// Its human name (for the description).
    pub name: String,
    /// Absolute path of the worker binary.
    pub program: PathBuf,
    /// Arguments before the worker's own (`run-worker` when the program is
    /// the launcher's built-in worker).
    pub leading_args: Vec<String>,
    /// SHA-256 of the binary (see [`file_sha256`]), so a new build changes
    /// the unit and the next apply restarts it.
    pub program_sha256: String,
    /// Redis URL.
    pub redis_url: String,
    /// Absolute data directory: the database lives here; the one writable
    /// place of the service.
    pub data_dir: PathBuf,
    /// Where launchd writes its logs.
    pub log_dir: PathBuf,
    /// `RUST_LOG` of the worker.
    pub log_level: String,
    /// The init script's text, if any: part of the fingerprint, so a
    /// changed script counts as a change.
    pub init_script: Option<String>,
    /// More environment (from the supervisor's `add_runner`).
    pub extra_env: BTreeMap<String, String>,
}

/// The worker's `ServiceSpec`: `tf.ourworld.circles.circle-worker-<pk>`,
/// the data directory as working directory and only writable path,
/// readiness by `READY=1`, the default restart policy, and
/// `--keep-queued-on-stop` so a restart does not fail queued tasks.
pub fn worker_service_spec(w: &WorkerService) -> ServiceSpec {
    let init_hash = w.init_script.as_ref().map_or_else(
        || "none".to_string(),
        |s| hex::encode(Sha256::digest(s.as_bytes())),
    );
    let mut env = w.extra_env.clone();
    env.insert(ENV_RUST_LOG.to_string(), w.log_level.clone());
    ServiceSpec {
        name: worker_service_name(&w.key),
        template: ServiceTemplate::Worker,
        description: format!("circles worker for {} ({})", w.name, w.key),
        program: w.program.clone(),
        args: w
            .leading_args
            .iter()
            .cloned()
            .chain(["--redis-url".into(), w.redis_url.clone()])
            .chain(worker_args(w, true))
            .collect(),
        env,
        working_directory: w.data_dir.clone(),
        read_write_paths: vec![w.data_dir.clone()],
        log_dir: w.log_dir.clone(),
        notify_ready: true,
        restart: RestartPolicy::default(),
        fingerprint: BTreeMap::from([
            ("worker-sha256".to_string(), w.program_sha256.clone()),
            ("init-script-sha256".to_string(), init_hash),
        ]),
    }
}

/// The worker's own arguments (no secrets: the Redis URL is not among them).
/// `keep_queued_on_stop`: a stop or restart leaves queued tasks for the next
/// worker instead of failing them (finished tasks still expire, unlike with
/// `PRESERVE_TASKS`) — what a supervised worker that comes back wants.
pub fn worker_args(w: &WorkerService, keep_queued_on_stop: bool) -> Vec<String> {
    let mut args = vec![
        "--circle-public-key".into(),
        w.key.to_hex(),
        "--db-path".into(),
        w.data_dir.to_string_lossy().into_owned(),
    ];
    if keep_queued_on_stop {
        args.push("--keep-queued-on-stop".into());
    }
    args
}

/// The worker as a supervised child process: its output appended to
/// `log_file`, readiness by `READY=1`, the Redis URL in `REDIS_URL` (never
/// in argv, where `ps` shows it to every user), `RUST_LOG` set to the
/// worker's level unless this process has one to pass on.
pub fn worker_child_spec(
    w: &WorkerService,
    log_file: PathBuf,
    keep_queued_on_stop: bool,
) -> ChildSpec {
    let mut spec = ChildSpec::new(w.name.clone(), w.program.clone(), log_file)
        .args(w.leading_args.iter().cloned())
        .args(worker_args(w, keep_queued_on_stop));
    spec.env = w.extra_env.clone();
    spec = spec.env(ENV_REDIS_URL, w.redis_url.clone());
    if std::env::var_os(ENV_RUST_LOG).is_none() {
        spec = spec.env(ENV_RUST_LOG, w.log_level.clone());
    }
    spec
}

/// SHA-256 of a file, hex; streamed, so a large binary costs no memory.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}
