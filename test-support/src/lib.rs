//! Test harness shared by the circles crates' integration tests.
//!
//! [`RedisServer`] starts a real `redis-server` on a free loopback port in a
//! private temporary directory and stops it when dropped, so every test talks
//! to a real Redis and no test can see another's keys. [`binary`] finds the
//! workspace's built binaries (`worker`, `server`, `launcher`, ...).
//! [`hosts`] makes several hosts on one machine (network namespaces) for
//! tests of circles spread over hosts.

pub mod hosts;
pub mod ws;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` owned by one test.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it accepts connections.
    ///
    /// Panics with an install hint when `redis-server` is missing: these tests
    /// are meant to run against the real thing, never a stand-in.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("circles-redis-")
            .tempdir()
            .expect("temp dir for redis");
        let port = free_port();
        let mut server = Self {
            child: None,
            port,
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &self.dir.path().to_string_lossy()])
            // The same server on a Unix socket too, for clients on this host.
            .args(["--unixsocket", &self.socket_path().to_string_lossy()])
            .args(["--unixsocketperm", "700"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); install it: apt-get install -y redis-server"
                )
            });
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10));
    }

    /// Its Unix socket (in its private directory).
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The URL of the same server over its Unix socket.
    pub fn unix_url(&self) -> String {
        format!("unix://{}", self.socket_path().display())
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL, data gone) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server and starts a fresh one on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs `redis-cli` against this server and returns its trimmed stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < timeout,
            "nothing listens on port {port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `check` until it returns `Some`, or panics naming `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The workspace's target profile directory (`target/debug` for tests).
pub fn target_dir() -> PathBuf {
    // Test executables live in target/<profile>/deps, binaries (such as the
    // bench) in target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("executable has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target/<profile>").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Runs `cmd` to its end and returns its stdout; panics with the command
/// and everything it printed when it cannot run or fails.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Path of a workspace binary built by `cargo build --workspace --bins`.
pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A directory for the programs the systemd tests' units run, with a copy
/// of the worker in it (returned). A unit with `DynamicUser=` sees /tmp and
/// /var/tmp privately, with only its own program bound in: a wrapper
/// script there could not `exec` the worker of a checkout under /tmp (as a
/// CI clone is). This one lies under /run — the sandbox's private tmpfs —
/// and every user may read it.
pub fn programs_for_units() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::Builder::new()
        .prefix("circles-test-programs-")
        .tempdir_in("/run")
        .expect("a directory under /run (the systemd tests run as root)");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let worker = dir.path().join("worker");
    std::fs::copy(binary("worker"), &worker).unwrap();
    (dir, worker)
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Two well-known valid circle keys (public keys of secret keys 1 and 2).
pub const KEY_ONE: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
/// See [`KEY_ONE`].
pub const KEY_TWO: &str = "02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5";

/// A `worker` process started by a test; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
    /// The circle it serves (as given).
    pub circle: String,
}

impl WorkerProcess {
    /// Starts `worker` for `circle` and waits until its heartbeat (with its
    /// own PID) is in Redis, i.e. it is ready.
    pub fn start(
        redis: &RedisServer,
        circle: &str,
        db_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Self::command(redis, circle, db_dir, extra_args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn_ready(redis, circle, cmd)
    }

    /// The command [`WorkerProcess::start`] runs, for tests that need to
    /// change it (a program in front, where its output goes).
    pub fn command(
        redis: &RedisServer,
        circle: &str,
        db_dir: &Path,
        extra_args: &[&str],
    ) -> Command {
        Self::command_with_url(&redis.url(), circle, db_dir, extra_args)
    }

    /// [`WorkerProcess::command`] for Redis at `url` (its Unix socket, say).
    pub fn command_with_url(
        url: &str,
        circle: &str,
        db_dir: &Path,
        extra_args: &[&str],
    ) -> Command {
        let mut cmd = Command::new(binary("worker"));
        cmd.args([
            "--redis-url",
            url,
            "--circle-public-key",
            circle,
            "--db-path",
        ])
        .arg(db_dir)
        .args(extra_args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
        cmd
    }

    /// Runs `worker` under a cap on its address space (`prlimit --as`), so
    /// that a test attacking its memory cannot take the test machine down
    /// even if the worker's own limits failed.
    pub fn start_capped(
        redis: &RedisServer,
        circle: &str,
        db_dir: &Path,
        extra_args: &[&str],
        address_space_bytes: u64,
    ) -> Self {
        let inner = Self::command(redis, circle, db_dir, extra_args);
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--as={address_space_bytes}"))
            .arg("--")
            .arg(inner.get_program())
            .args(inner.get_args())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        Self::spawn_ready(redis, circle, cmd)
    }

    /// Spawns `cmd` (a worker for `circle`) and waits until it is ready.
    pub fn spawn_ready(redis: &RedisServer, circle: &str, mut cmd: Command) -> Self {
        let child = cmd.spawn().expect("spawn worker");
        let worker = Self {
            child,
            circle: circle.to_string(),
        };
        worker.wait_ready(redis);
        worker
    }

    /// Resident memory of the process, from `/proc/<pid>/status`.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid())
    }

    /// Waits until the heartbeat key carries this process's PID.
    pub fn wait_ready(&self, redis: &RedisServer) {
        let key = format!("rhai_worker:{}", self.circle.to_lowercase());
        let needle = format!("\"pid\":{}", self.child.id());
        wait_until("worker heartbeat", Duration::from_secs(15), || {
            redis.cli(&["GET", &key]).contains(&needle).then_some(())
        });
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by number (`libc`-free: uses `kill`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit and returns its exit code (None if killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                start.elapsed() < timeout,
                "worker did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a booted systemd is here to test against (`/run/systemd/system`
/// exists). When not, prints a loud SKIPPED line naming `test` and returns
/// false — unless `CIRCLES_REQUIRE_SYSTEMD=1`, where a missing systemd is a
/// failure (the test command sets it inside its sandbox).
pub fn systemd_or_skip(test: &str) -> bool {
    use std::io::Write as _;
    if Path::new("/run/systemd/system").exists() {
        return true;
    }
    assert!(
        std::env::var("CIRCLES_REQUIRE_SYSTEMD").map_or(true, |v| v != "1"),
        "{test}: CIRCLES_REQUIRE_SYSTEMD=1 but no booted systemd (run inside scripts/systemd-sandbox)"
    );
    let _ = writeln!(
        std::io::stderr(),
        "\n!!! SKIPPED {test}: no booted systemd here; scripts/test.sh runs it inside scripts/systemd-sandbox !!!\n"
    );
    false
}

/// A fresh directory under the target directory, removed when dropped. Unlike
/// `/tmp`, it is visible to services run by a sandboxed systemd (whose `/tmp`
/// is private).
#[derive(Debug)]
pub struct TargetScratch(PathBuf);

impl TargetScratch {
    /// Creates `target/<profile>/scratch/<prefix>-<unique>`.
    pub fn new(prefix: &str) -> Self {
        let base = target_dir().join("scratch");
        std::fs::create_dir_all(&base).expect("scratch base");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir_in(base)
            .expect("scratch dir");
        Self(dir.keep())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TargetScratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every `--help` page of a command line, as a user sees them at 100
/// columns: the command's own, then each visible subcommand's (depth
/// first), each under a `$ prog sub --help` line; for snapshot tests, so a
/// change to any help text shows up in review.
pub fn help_pages(cmd: clap::Command) -> String {
    fn walk(cmd: &mut clap::Command, path: &str, out: &mut String) {
        out.push_str(&format!("$ {path} --help\n"));
        out.push_str(&cmd.render_long_help().to_string());
        out.push('\n');
        for sub in cmd.get_subcommands_mut().filter(|s| !s.is_hide_set()) {
            if sub.get_name() == "help" {
                continue;
            }
            let path = format!("{path} {}", sub.get_name());
            walk(sub, &path, out);
        }
    }
    let mut cmd = cmd.term_width(100);
    cmd.build();
    let mut out = String::new();
    let name = cmd.get_name().to_string();
    walk(&mut cmd, &name, &mut out);
    out
}

/// Resident memory of process `pid` in bytes (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS line")
        * 1024
}
