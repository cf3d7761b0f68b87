//! Helpers shared by this crate's integration tests: specs, scratch
//! directories under `target/` (never `/tmp`: inside the systemd sandbox and
//! under `PrivateTmp=` that is a different, empty directory), and the
//! "is systemd booted?" gate of the `systemd_*` tests.
#![allow(dead_code)] // each test file uses a different part of this module

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use circles_services::{
    ResourceLimits, RestartPolicy, SecretEnv, ServiceAccount, ServiceName, ServiceSpec,
    ServiceTemplate,
};

/// A directory under `target/debug/circles-services-tests/`, removed on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = circles_test_support::target_dir()
            .join("circles-services-tests")
            .join(format!("{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create scratch dir");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `tf.ourworld.circles.<suffix>`.
pub fn name(suffix: &str) -> ServiceName {
    ServiceName::new(format!("tf.ourworld.circles.{suffix}")).expect("valid test name")
}

/// A worker-template spec running `program args…` in `dir`.
pub fn spec(
    name: ServiceName,
    program: impl Into<PathBuf>,
    args: &[&str],
    dir: &Path,
) -> ServiceSpec {
    ServiceSpec {
        description: format!("circles test service {name}"),
        name,
        template: ServiceTemplate::Worker,
        program: program.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: BTreeMap::new(),
        secret_env: SecretEnv::default(),
        secrets_dir: dir.join("secrets"),
        // Test programs are shell scripts and test binaries under target/:
        // they run as the manager's account, as the supervisor's unit would.
        account: ServiceAccount::Manager,
        state_dir: None,
        limits: ResourceLimits::default(),
        working_directory: dir.to_path_buf(),
        read_write_paths: vec![dir.to_path_buf()],
        log_dir: dir.join("logs"),
        notify_ready: false,
        restart: RestartPolicy::default(),
        fingerprint: BTreeMap::new(),
    }
}

/// Writes an executable file.
pub fn write_executable(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// `true` when the variable is set to `1`.
pub fn env_flag(key: &str) -> bool {
    std::env::var(key).is_ok_and(|v| v == "1")
}

/// Whether systemd runs as PID 1 here. Otherwise prints a loud skip notice
/// and returns `false` — or panics when `CIRCLES_REQUIRE_SYSTEMD=1`, which
/// `scripts/test.sh` sets inside its systemd sandbox so that a broken sandbox
/// cannot pass by skipping.
pub fn systemd_booted(test: &str) -> bool {
    if Path::new("/run/systemd/system").is_dir() {
        return true;
    }
    assert!(
        !env_flag("CIRCLES_REQUIRE_SYSTEMD"),
        "{test}: CIRCLES_REQUIRE_SYSTEMD=1 but systemd is not running as PID 1 \
         (no /run/systemd/system)"
    );
    loud_skip(&format!(
        "{test}: systemd is not running as PID 1. Run the systemd tests inside the sandbox: \
         scripts/systemd-sandbox start target/systemd-sandbox && scripts/systemd-sandbox exec \
         target/systemd-sandbox -- env CIRCLES_REQUIRE_SYSTEMD=1 cargo test -p circles-services \
         --test 'systemd_*' (scripts/test.sh does this)"
    ));
    false
}

/// Tells the person running the tests that `what` was skipped. Written to the
/// stderr handle directly: the test harness captures `eprintln!` of passing
/// tests, and a skip nobody sees is a silent pass.
pub fn loud_skip(what: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "\n!!! SKIPPED {what} !!!\n");
}

/// Polls `check` every 50 ms until it returns `Some`, or panics naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Runs a command and returns its trimmed stdout (whatever the exit status).
pub fn run(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
