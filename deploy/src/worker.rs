//! A circle worker as a service: the one place its `ServiceSpec` is built,
//! so a worker installed by the launcher and one installed by the
//! supervisor are the same unit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use circles_dispatcher::CirclePublicKey;
use circles_dispatcher::protocol::ENV_RUST_LOG;
use circles_services::{RestartPolicy, ServiceSpec, ServiceTemplate};
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
        args: vec![
            "--redis-url".into(),
            w.redis_url.clone(),
            "--circle-public-key".into(),
            w.key.to_hex(),
            "--db-path".into(),
            w.data_dir.to_string_lossy().into_owned(),
            // A restart must not fail the tasks queued meanwhile; finished
            // tasks still expire (unlike with PRESERVE_TASKS).
            "--keep-queued-on-stop".into(),
        ],
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
