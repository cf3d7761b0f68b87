//! A circle worker, described once ([`WorkerService`]) and turned into what
//! each way of running it needs: a `ServiceSpec` for systemd/launchd
//! ([`worker_service_spec`]) or a supervised child ([`worker_child_spec`]).
//! A worker installed by the launcher and one installed by the supervisor
//! are therefore the same unit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use circles_dispatcher::protocol::{ENV_REDIS_URL, ENV_RUST_LOG};
use circles_dispatcher::{CirclePublicKey, RedisUrl};
use circles_services::{
    ResourceLimits, RestartPolicy, SecretEnv, ServiceAccount, ServiceSpec, ServiceTemplate,
};
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
    /// More environment (from the supervisor's `add_runner`); treated as
    /// secret in a service (kept in 0600 files only).
    pub extra_env: BTreeMap<String, String>,
    /// OS-enforced ceilings of its service (not of a supervised child);
    /// [`DEFAULT_WORKER_LIMITS`] unless chosen.
    pub limits: ResourceLimits,
}

/// The ceilings a worker service gets unless chosen: 1 GiB of memory (well
/// above the worker's own per-task budget, see [`task_memory_budget_mb`]),
/// 64 tasks (it runs one script at a time on a handful of threads), 1024
/// open files (a few Redis connections and one database file).
pub const DEFAULT_WORKER_LIMITS: ResourceLimits = ResourceLimits {
    memory_max: Some(1 << 30),
    tasks_max: Some(64),
    nofile: Some(1024),
};

/// Where service files keep their secrets under a data directory: the
/// 0600 environment files (and the launcher's full Redis URL).
pub const SECRETS_DIR: &str = "secrets";

/// `<data>/db/<pk>`: the directory of a circle's database when its worker is
/// a service — the one place that service may write (systemd: its
/// `StateDirectory=`, owned by the service's dynamic user).
pub fn db_dir(data_dir: &Path, key: &CirclePublicKey) -> PathBuf {
    data_dir.join("db").join(key.to_hex())
}

/// The account worker (and server) services run as when they are system
/// services: systemd gives each a dynamic user of its own, so the names only
/// matter to launchd daemons (`UserName`/`GroupName`), which run as macOS's
/// `nobody`. (launchd reached on Linux, by tests, uses Debian's `nogroup`.)
pub fn service_account() -> ServiceAccount {
    ServiceAccount::Unprivileged {
        user: "nobody".into(),
        group: if cfg!(target_os = "macos") {
            "nobody"
        } else {
            "nogroup"
        }
        .into(),
    }
}

/// The worker's own per-task memory budget (`--max-memory-mb`) under a
/// service memory ceiling of `memory_max` bytes: a quarter of it, so a
/// script that grows step by step is stopped by the worker (which serves
/// the next task) long before the kernel's ceiling; the ceiling only
/// catches one operation that leaps past the budget. The default ceiling,
/// 1 GiB, gives the worker's own default, 256 MiB.
pub fn task_memory_budget_mb(memory_max: u64) -> u64 {
    (memory_max / 4 / (1 << 20)).max(1)
}

/// `REDIS_URL` for a service: in its plain environment, or — when the URL
/// carries credentials — in the secret environment that only a 0600 file
/// holds. Never on the command line.
pub fn redis_url_env(
    redis_url: &str,
    env: &mut BTreeMap<String, String>,
    secret_env: &mut SecretEnv,
) {
    let url = RedisUrl::new(redis_url);
    if url.has_credentials() {
        secret_env
            .0
            .insert(ENV_REDIS_URL.to_string(), url.expose_secret().into());
    } else {
        env.insert(ENV_REDIS_URL.to_string(), url.expose_secret().into());
    }
}

/// The worker's `ServiceSpec`: `tf.ourworld.circles.circle-worker-<pk>`,
/// run unprivileged ([`service_account`]) with its database directory
/// ([`db_dir`]) as working directory and only writable place, the Redis URL
/// through its environment ([`redis_url_env`]), its ceilings and a per-task
/// memory budget under them, readiness by `READY=1`, the default restart
/// policy, and `--keep-queued-on-stop` so a restart does not fail queued
/// tasks.
pub fn worker_service_spec(w: &WorkerService) -> ServiceSpec {
    let init_hash = w.init_script.as_ref().map_or_else(
        || "none".to_string(),
        |s| hex::encode(Sha256::digest(s.as_bytes())),
    );
    let mut env = BTreeMap::from([(ENV_RUST_LOG.to_string(), w.log_level.clone())]);
    // A runner's own environment may hold secrets (the supervisor keeps it
    // in a 0600 file): into a 0600 file here too, never into the unit or
    // plist that every user may read (or `systemctl show`).
    let mut secret_env = SecretEnv(w.extra_env.clone());
    redis_url_env(&w.redis_url, &mut env, &mut secret_env);
    let db = db_dir(&w.data_dir, &w.key);
    let mut args: Vec<String> = w.leading_args.clone();
    args.extend([
        "--circle-public-key".into(),
        w.key.to_hex(),
        "--db-path".into(),
        db.to_string_lossy().into_owned(),
        "--keep-queued-on-stop".into(),
    ]);
    if let Some(memory_max) = w.limits.memory_max {
        args.extend([
            "--max-memory-mb".into(),
            task_memory_budget_mb(memory_max).to_string(),
        ]);
    }
    ServiceSpec {
        name: worker_service_name(&w.key),
        template: ServiceTemplate::Worker,
        description: format!("circles worker for {} ({})", w.name, w.key),
        program: w.program.clone(),
        args,
        env,
        secret_env,
        secrets_dir: w.data_dir.join(SECRETS_DIR),
        account: service_account(),
        state_dir: Some(db.clone()),
        limits: w.limits,
        working_directory: db,
        read_write_paths: Vec::new(),
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
/// The database lies flat in the data directory here (a child process runs
/// as the one who started it); a service keeps it in [`db_dir`].
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
        .args(worker_args(w, keep_queued_on_stop))
        // The worker arms it first thing (a worker too old to do so still
        // stops within half a second of being orphaned: it polls its parent).
        .arms_death_signal(true);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runners_own_environment_goes_only_into_the_secret_files() {
        // A hostile review (stop 18): `add_runner`'s env reached the 0644
        // unit/plist, readable by every user of the host.
        let w = WorkerService {
            key: "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
                .parse()
                .unwrap(),
            name: "w".into(),
            program: "/usr/bin/worker".into(),
            leading_args: Vec::new(),
            program_sha256: String::new(),
            redis_url: "redis://127.0.0.1:6379".into(),
            data_dir: "/var/lib/circles".into(),
            log_dir: "/var/log/circles".into(),
            log_level: "info".into(),
            init_script: None,
            extra_env: BTreeMap::from([("API_TOKEN".into(), "tok-SECRET-123".into())]),
            limits: DEFAULT_WORKER_LIMITS,
        };
        let spec = worker_service_spec(&w);
        assert!(!spec.env.contains_key("API_TOKEN"), "{:?}", spec.env);
        assert_eq!(spec.secret_env.0["API_TOKEN"], "tok-SECRET-123");
        assert!(spec.env.contains_key(ENV_RUST_LOG));
    }
}
