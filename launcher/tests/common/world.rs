//! A test's world for the `systemd_*` tests of the launcher: a Redis, a
//! scratch directory, a data directory under /var/lib, the launcher binary
//! pointed at them, and `systemctl` to look at the units. Everything it
//! installed and wrote is removed when it is dropped.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use circles_test_support::{RedisServer, TargetScratch, binary, free_port};

/// The tests share one service manager and the one server unit name.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub const SERVER_UNIT: &str = "tf.ourworld.circles.circle-ws-server.service";

pub fn worker_unit(key: &str) -> String {
    format!("tf.ourworld.circles.circle-worker-{key}.service")
}

/// One test's world: a Redis, a scratch directory under target/ (scripts,
/// binaries), a data directory under /var/lib (system services keep their
/// databases in a StateDirectory=; inside the sandbox /var/lib is private), a
/// port, and a cleanup of every circle unit and of the data when it ends
/// (even on panic).
pub struct World {
    pub redis: RedisServer,
    pub dir: TargetScratch,
    pub data: PathBuf,
    pub port: String,
    pub env: Vec<(String, String)>,
    pub scope_flag: &'static str,
}

/// The start of every test that installs units: `None` (and a loud skip)
/// without a booted systemd, else the test's turn on the service manager
/// and its world. Bind it as `Some((_serial, w))`: bindings drop in
/// reverse, so the world is cleaned up before the next test's turn.
pub async fn serial_world(
    test: &str,
    name: &str,
) -> Option<(tokio::sync::MutexGuard<'static, ()>, World)> {
    if !circles_test_support::systemd_or_skip(test) {
        return None;
    }
    let serial = SERIAL.lock().await;
    Some((serial, World::new(name)))
}

impl World {
    pub fn new(name: &str) -> Self {
        let dir = TargetScratch::new(name);
        // The services' own users must reach the scripts and binaries here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let unique = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        Self {
            redis: RedisServer::start(),
            data: PathBuf::from(format!("/var/lib/circles-test-{unique}")),
            dir,
            port: free_port().to_string(),
            env: Vec::new(),
            scope_flag: "--system",
        }
    }

    pub fn data(&self) -> PathBuf {
        self.data.clone()
    }

    /// A private copy of the worker binary (`bin/worker` in this world), so
    /// a test can change it as an upgrade would.
    pub fn worker_copy(&self) -> PathBuf {
        let bin = self.dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let copy = bin.join("worker");
        std::fs::copy(circles_test_support::binary("worker"), &copy).unwrap();
        copy
    }

    /// `launcher ARGS…` with this world's Redis, data dir and scope.
    pub fn launcher(&self, args: &[&str]) -> (Option<i32>, String, String) {
        self.launcher_with_redis(&self.redis.url(), args)
    }

    /// [`Self::launcher`] pointed at another Redis.
    pub fn launcher_with_redis(
        &self,
        redis_url: &str,
        args: &[&str],
    ) -> (Option<i32>, String, String) {
        let mut cmd = Command::new(binary("launcher"));
        cmd.args(args)
            .args(["--redis-url", redis_url, "--data-dir"])
            .arg(self.data())
            .arg(self.scope_flag)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let out = cmd.output().expect("run launcher");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `launcher --use-service-manager --worker-binary W -p PORT -c …`, which must succeed.
    pub fn install(&self, worker: &Path, circles: &[String], extra: &[&str]) -> String {
        let mut args = vec![
            "--use-service-manager",
            "--worker-binary",
            worker.to_str().unwrap(),
            "-p",
            &self.port,
        ];
        for c in circles {
            args.extend(["-c", c]);
        }
        args.extend(extra);
        let (code, out, err) = self.launcher(&args);
        assert_eq!(
            code,
            Some(0),
            "install failed:\nstdout:\n{out}\nstderr:\n{err}"
        );
        out
    }

    /// The `launcher status --json` row of a circle.
    pub fn status_row(&self, key: &str) -> serde_json::Value {
        let (code, out, err) = self.launcher(&["status", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["public_key"] == key)
            .expect("circle in status")
            .clone()
    }

    pub fn systemctl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("systemctl");
        if self.scope_flag == "--user" {
            cmd.arg("--user");
        }
        let out = cmd
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn prop(&self, unit: &str, prop: &str) -> String {
        self.systemctl(&["show", "-p", prop, "--value", unit])
    }

    pub fn main_pid(&self, unit: &str) -> u32 {
        self.prop(unit, "MainPID").parse().unwrap()
    }

    pub fn url(&self, key: &str) -> String {
        format!("ws://127.0.0.1:{}/{key}", self.port)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.launcher(&["cleanup"]);
        let _ = std::fs::remove_dir_all(&self.data);
        let rel = self.data.strip_prefix("/var/lib").unwrap();
        let _ = std::fs::remove_dir_all(Path::new("/var/lib/private").join(rel));
    }
}

pub fn worker() -> PathBuf {
    binary("worker")
}

pub fn script(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

pub fn executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}
