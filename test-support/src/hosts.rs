//! Several hosts on one machine, for tests of circles spread over hosts:
//! a Rust face on `scripts/netns-hosts` (network namespaces on a private
//! bridge, each host with its own host name, PIDs and /proc).
//!
//! [`Hosts`] brings hosts up and takes everything on them down when dropped,
//! even when the test panics; [`HostProcess`] is one program running on a
//! host, killed when dropped; [`in_netns`] runs a closure on a thread that
//! lives in a host's network namespace, so the test itself can talk to
//! addresses that exist only there.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{repo_root, wait_until};

/// Whether this machine can make network namespaces for a test (root, and
/// `ip`, `unshare`, `nsenter`, `redis-server`, `redis-cli` installed). When
/// not, prints a loud SKIPPED line naming `test` and returns false — unless
/// `CIRCLES_CI=1`, where it is a failure.
pub fn netns_or_skip(test: &str) -> bool {
    use std::io::Write as _;
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root".to_string());
    }
    for tool in ["ip", "unshare", "nsenter", "redis-server", "redis-cli"] {
        if !on_path(tool) {
            missing.push(tool.to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CIRCLES_CI").map_or(true, |v| v != "1"),
        "{test}: CIRCLES_CI=1 but this machine cannot make test hosts: missing {}",
        missing.join(", ")
    );
    let _ = writeln!(
        std::io::stderr(),
        "\n!!! SKIPPED {test}: needs {} (network namespaces); scripts/test.sh runs it as root !!!\n",
        missing.join(", ")
    );
    false
}

fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            std::fs::metadata(d.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Hosts made by `scripts/netns-hosts`; all taken down when dropped.
#[derive(Debug)]
pub struct Hosts {
    state: PathBuf,
}

impl Hosts {
    /// Brings up `names` with their state in `state` (a directory that
    /// should not exist yet).
    pub fn up(state: &Path, names: &[&str]) -> Self {
        let hosts = Self {
            state: state.to_path_buf(),
        };
        let out = Command::new(script())
            .arg("up")
            .arg(state)
            .args(names)
            .output()
            .expect("run scripts/netns-hosts");
        assert!(
            out.status.success(),
            "netns-hosts up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        hosts
    }

    /// The address of `host` (`10.77.0.N`).
    pub fn addr(&self, host: &str) -> String {
        self.query("addr", host)
    }

    /// The network namespace of `host` (a name under `/run/netns`).
    pub fn netns(&self, host: &str) -> String {
        self.query("netns", host)
    }

    fn query(&self, what: &str, host: &str) -> String {
        let out = Command::new(script())
            .args([what])
            .arg(&self.state)
            .arg(host)
            .output()
            .expect("run scripts/netns-hosts");
        assert!(out.status.success(), "netns-hosts {what} {host} failed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A command that runs `program args…` on `host`.
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(script());
        cmd.arg("exec")
            .arg(&self.state)
            .arg(host)
            .arg("--")
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    /// Starts `cmd` (from [`Self::command`]) as a process on a host, with its
    /// stderr kept for [`HostProcess::stderr`].
    pub fn spawn(&self, name: &str, mut cmd: Command) -> HostProcess {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stderr = capture(child.stderr.take().expect("stderr piped"));
        // The script execs nsenter, which forks the program into the host's
        // PID namespace (before that exec, the script's own children are
        // not the program). A program that ends at once (a refusal) may be
        // gone before it is seen.
        let nsenter = child.id();
        let started = |child: &mut Child| {
            let entered = std::fs::read_to_string(format!("/proc/{nsenter}/comm"))
                .is_ok_and(|c| c.trim() == "nsenter");
            match first_child(nsenter).filter(|_| entered) {
                Some(pid) => Some(Some(pid)),
                None => child.try_wait().expect("try_wait").map(|_| None),
            }
        };
        let pid = wait_until(&format!("{name} to start"), Duration::from_secs(10), || {
            started(&mut child)
        });
        HostProcess {
            name: name.to_string(),
            child,
            pid,
            stderr,
        }
    }

    /// Runs `cmd` to its end (at most `timeout`, then it is killed): exit
    /// code, stdout, stderr.
    pub fn run(&self, mut cmd: Command, timeout: Duration) -> (Option<i32>, String, String) {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a command on a host");
        let stdout = capture(child.stdout.take().expect("stdout piped"));
        let stderr = capture(child.stderr.take().expect("stderr piped"));
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if start.elapsed() > timeout {
                if let Some(pid) = first_child(child.id()) {
                    kill(pid, "KILL");
                }
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{cmd:?} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    stdout.text(),
                    stderr.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.code(), stdout.wait_text(), stderr.wait_text())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Kills every process on the hosts (their PID namespaces end with
        // their init) and removes the namespaces.
        let _ = Command::new(script())
            .arg("down")
            .arg(&self.state)
            .stdout(Stdio::null())
            .status();
    }
}

fn script() -> PathBuf {
    repo_root().join("scripts/netns-hosts")
}

/// A process on a host; SIGKILLed when dropped.
#[derive(Debug)]
pub struct HostProcess {
    name: String,
    /// `nsenter`, which waits for the program and exits as it does.
    child: Child,
    /// The program's PID as this (the root) namespace sees it; `None` when
    /// it ended before it was seen.
    pid: Option<u32>,
    stderr: Captured,
}

impl HostProcess {
    /// The program's PID seen from the test (the root PID namespace).
    pub fn pid(&self) -> u32 {
        self.pid
            .unwrap_or_else(|| panic!("{} ended before it was seen", self.name))
    }

    /// The program's PID on its host (the last `NSpid` of its status).
    pub fn host_pid(&self) -> u32 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("{} is gone: {e}", self.name));
        status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().last()?.parse().ok())
            .expect("NSpid line")
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, ...) to the program.
    pub fn signal(&self, signal: &str) {
        assert!(
            kill(self.pid(), signal),
            "kill -{signal} {} failed",
            self.name
        );
        // nsenter stops itself when its child stops (to pass job control
        // on), and only continues the child once it is continued itself:
        // left stopped, it would never see the program exit.
        if signal == "CONT" {
            kill(self.child.id(), signal);
        }
    }

    /// What the program wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Waits for the program to exit; its exit code (`None` when killed by
    /// a signal). Panics after `timeout`, showing its stderr.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader thread drain the pipe.
                let _ = self.stderr.wait_text();
                return status.code();
            }
            assert!(
                start.elapsed() < timeout,
                "{} did not exit within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            kill(pid, "KILL");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `f` on a thread that has moved into the network namespace `netns`
/// (as [`Hosts::netns`] names it), and returns its result. Sockets `f`
/// opens live in that namespace; threads it starts inherit it.
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/run/netns").join(netns);
    std::thread::spawn(move || {
        let ns =
            std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap_or_else(|e| panic!("setns into {}: {e}", path.display()));
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// `kill -SIGNAL pid`; whether it was delivered.
fn kill(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The first child of process `pid`, if it has one yet.
fn first_child(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Output of a pipe, read by a thread as it comes.
#[derive(Debug, Clone)]
struct Captured {
    text: Arc<Mutex<String>>,
    done: Arc<Mutex<bool>>,
}

fn capture(mut stream: impl Read + Send + 'static) -> Captured {
    let captured = Captured {
        text: Arc::new(Mutex::new(String::new())),
        done: Arc::new(Mutex::new(false)),
    };
    let c = captured.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => c
                    .text
                    .lock()
                    .expect("capture")
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        *c.done.lock().expect("capture") = true;
    });
    captured
}

impl Captured {
    fn text(&self) -> String {
        self.text.lock().expect("capture").clone()
    }

    /// The whole output, once the writer closed the pipe (at most 5 s).
    fn wait_text(&self) -> String {
        let start = Instant::now();
        while !*self.done.lock().expect("capture") && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.text()
    }
}
