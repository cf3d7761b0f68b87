//! Running the real `launcher` binary in tests and reading what it prints.

#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use circles_test_support::{RedisServer, binary, wait_until};

pub mod world;

/// A launcher process with its output captured; SIGKILLed when dropped.
pub struct Launcher {
    pub child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn capture(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let out = buf.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut b = out.lock().unwrap();
            b.push_str(&line);
            b.push('\n');
        }
    });
    buf
}

impl Launcher {
    /// Starts `launcher ARGS…` in `cwd`.
    pub fn spawn(cwd: &Path, args: &[&str]) -> Self {
        let child = Command::new(binary("launcher"))
            .current_dir(cwd)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn launcher");
        Self::from_child(child)
    }

    /// Takes over a launcher started otherwise (through `scripts/run.sh`,
    /// which `exec`s it), with piped stdout and stderr.
    pub fn from_child(mut child: Child) -> Self {
        let stdout = capture(child.stdout.take().unwrap());
        let stderr = capture(child.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stdout contains `needle`, showing the output on timeout.
    pub fn wait_stdout(&mut self, needle: &str, timeout: Duration) {
        self.wait_output(needle, timeout, false);
    }

    /// Waits until the log (stderr) contains `needle`.
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) {
        self.wait_output(needle, timeout, true);
    }

    fn wait_output(&mut self, needle: &str, timeout: Duration, stderr: bool) {
        let start = std::time::Instant::now();
        while !(if stderr { self.stderr() } else { self.stdout() }).contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "launcher exited ({status}) before printing {needle:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "launcher did not print {needle:?} within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Waits for exit; returns the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let status = wait_until("launcher to exit", timeout, || {
            self.child.try_wait().unwrap()
        });
        // Let the reader threads drain the pipes.
        std::thread::sleep(Duration::from_millis(100));
        status.code()
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the launcher to completion; returns (exit code, stdout, stderr).
pub fn run_to_end(cwd: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary("launcher"))
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("run launcher");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// PID in a circle's worker heartbeat, once there is one.
pub fn worker_pid(redis: &RedisServer, key: &str) -> u32 {
    wait_until("worker heartbeat", Duration::from_secs(20), || {
        let beat = redis.cli(&["GET", &format!("rhai_worker:{key}")]);
        let v: serde_json::Value = serde_json::from_str(&beat).ok()?;
        v["pid"].as_u64().map(|p| p as u32)
    })
}

/// `kill SIGNAL PID`, e.g. `kill(pid, "-9")`.
pub fn kill(pid: u32, signal: &str) {
    Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
}

/// Whether a process exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// A fresh data directory path (not created).
pub fn data_dir(tmp: &Path) -> PathBuf {
    tmp.join("launch_data")
}
