//! Supervising real processes (`/bin/sh` scripts): readiness, restarts,
//! crash loops, stop, drop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use circles_supervise::{ChildSpec, ChildState, ExitStatus, RestartPolicy, SupervisedChild};

const WAIT: Duration = Duration::from_secs(20);

fn policy() -> RestartPolicy {
    RestartPolicy {
        backoff_start: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        fast_failure: Duration::from_secs(2),
        max_fast_failures: 3,
        ready_timeout: Duration::from_secs(10),
        stop_grace: Duration::from_millis(500),
    }
}

struct Dir(PathBuf);
impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("supervise-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sh(name: &str, dir: &Path, script: &str) -> ChildSpec {
    ChildSpec::new(name, "/bin/sh", dir.join(format!("{name}.log")))
        .args(["-c", script])
        .wait_ready(false)
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

async fn wait_state(
    child: &SupervisedChild,
    what: &str,
    f: impl Fn(&circles_supervise::ChildStatus) -> bool,
) -> circles_supervise::ChildStatus {
    let mut rx = child.status();
    tokio::time::timeout(WAIT, rx.wait_for(|s| f(s)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}; status {:?}", child.current()))
        .expect("status channel open")
        .clone()
}

#[tokio::test]
async fn a_crash_loop_ends_failed_with_its_exit_code_and_reason() {
    let dir = Dir::new("crash");
    let child = SupervisedChild::spawn(
        sh("crasher", &dir.0, "echo 'cannot start' >&2; exit 3"),
        policy(),
    );
    // Without readiness a child counts as running once spawned; wait for
    // the crash loop to play out.
    let status = wait_state(&child, "failed", |s| s.state == ChildState::Failed).await;
    let err = child.ready().await.unwrap_err();
    assert_eq!(err.state, ChildState::Failed);
    assert_eq!(err.last_exit, Some(ExitStatus::Code(3)));
    assert_eq!(status.last_exit, err.last_exit);
    let reason = err.reason.unwrap();
    assert!(reason.contains("exit status 3"), "{reason}");
    assert!(reason.contains("3 times in a row"), "{reason}");
    let status = child.current();
    assert_eq!(status.restarts, 2, "restarted twice, then gave up");
    assert_eq!(status.pid, None);
    // It stays failed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(child.current().restarts, 2);
    let log = std::fs::read_to_string(dir.0.join("crasher.log")).unwrap();
    assert_eq!(log.matches("cannot start").count(), 3, "{log}");
    assert_eq!(
        circles_supervise::logs::tail_lines(&dir.0.join("crasher.log"), 1).unwrap(),
        ["cannot start"]
    );
    // A restart asked for tries again with a fresh count.
    child.restart();
    wait_state(&child, "failed again", |s| {
        s.state == ChildState::Failed && s.restarts == 4
    })
    .await;
}

#[tokio::test]
async fn a_sigkilled_child_is_restarted_and_its_exit_shows_the_signal() {
    let dir = Dir::new("kill");
    let child = SupervisedChild::spawn(sh("sleeper", &dir.0, "exec sleep 60"), policy());
    child.ready().await.unwrap();
    let first = child.current().pid.unwrap();
    assert!(child.current().uptime().is_some());
    std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    let status = wait_state(&child, "a new process", |s| {
        s.state == ChildState::Running && s.pid.is_some_and(|p| p != first)
    })
    .await;
    assert_eq!(status.restarts, 1);
    assert_eq!(status.last_exit, Some(ExitStatus::Signal(9)));
    let second = status.pid.unwrap();
    let stopped = child.stop().await;
    assert_eq!(stopped.state, ChildState::Stopped);
    assert_eq!(
        stopped.last_exit,
        Some(ExitStatus::Signal(15)),
        "stopped by SIGTERM"
    );
    assert!(!alive(second));
}

#[tokio::test]
async fn readiness_is_the_ready_message_not_the_spawn() {
    let dir = Dir::new("ready");
    let socket_file = dir.0.join("socket-path");
    let script = format!(
        "printf %s \"$NOTIFY_SOCKET\" > '{}'; exec sleep 60",
        socket_file.display()
    );
    let child = SupervisedChild::spawn(sh("notifier", &dir.0, &script).wait_ready(true), policy());
    let path = wait_for_file(&socket_file).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        child.current().state,
        ChildState::Starting,
        "not ready before READY=1"
    );
    let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
    sender.send_to(b"STATUS=almost", &path).unwrap();
    sender.send_to(b"READY=1", &path).unwrap();
    tokio::time::timeout(WAIT, child.ready())
        .await
        .unwrap()
        .unwrap();
    drop(child);
}

async fn wait_for_file(path: &Path) -> PathBuf {
    for _ in 0..1000 {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.is_empty()
        {
            return PathBuf::from(text);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never written", path.display());
}

#[tokio::test]
async fn a_child_that_is_never_ready_is_killed_and_counts_as_failing() {
    let dir = Dir::new("never");
    let child = SupervisedChild::spawn(
        sh("silent", &dir.0, "exec sleep 60").wait_ready(true),
        RestartPolicy {
            ready_timeout: Duration::from_millis(200),
            max_fast_failures: 2,
            ..policy()
        },
    );
    let err = child.ready().await.unwrap_err();
    assert_eq!(err.state, ChildState::Failed);
    assert!(err.reason.unwrap().contains("was not ready within 200ms"));
    assert_eq!(err.last_exit, Some(ExitStatus::Signal(15)));
}

#[tokio::test]
async fn stop_kills_a_child_that_ignores_sigterm_and_drop_stops_too() {
    let dir = Dir::new("stubborn");
    let child = SupervisedChild::spawn(
        sh(
            "stubborn",
            &dir.0,
            &format!(
                "trap '' TERM; echo trapped > '{}'; while :; do sleep 0.05; done",
                dir.0.join("trapped").display()
            ),
        ),
        policy(),
    );
    child.ready().await.unwrap();
    wait_for_file(&dir.0.join("trapped")).await;
    let pid = child.current().pid.unwrap();
    let started = std::time::Instant::now();
    let status = child.stop().await;
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "grace period honoured"
    );
    assert_eq!(status.last_exit, Some(ExitStatus::Signal(9)));
    assert!(!alive(pid));

    let dropped = SupervisedChild::spawn(sh("dropped", &dir.0, "exec sleep 60"), policy());
    dropped.ready().await.unwrap();
    let pid = dropped.current().pid.unwrap();
    drop(dropped);
    for _ in 0..200 {
        if !alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("a dropped handle left {pid} running");
}

#[tokio::test]
async fn restart_asked_for_replaces_the_process_without_counting_a_failure() {
    let dir = Dir::new("restart");
    let child = SupervisedChild::spawn(sh("r", &dir.0, "exec sleep 60"), policy());
    child.ready().await.unwrap();
    let first = child.current().pid.unwrap();
    child.restart();
    let status = wait_state(&child, "replaced", |s| {
        s.state == ChildState::Running && s.pid.is_some_and(|p| p != first)
    })
    .await;
    assert_eq!(status.restarts, 0);
    assert!(!alive(first));
}

#[tokio::test]
async fn a_missing_program_fails_with_the_path_in_the_reason_and_env_reaches_the_child() {
    let dir = Dir::new("missing");
    let child = SupervisedChild::spawn(
        ChildSpec::new("ghost", "/nonexistent/worker", dir.0.join("ghost.log")).wait_ready(false),
        policy(),
    );
    let err = child.ready().await.unwrap_err();
    assert!(
        err.reason
            .as_deref()
            .unwrap()
            .contains("/nonexistent/worker"),
        "{err}"
    );
    assert!(err.to_string().starts_with("ghost is failed"), "{err}");

    let out = dir.0.join("env");
    let spec = sh(
        "env",
        &dir.0,
        &format!(
            "echo \"$SECRET_URL $CIRCLES_LAUNCHER_PID\" > '{}'; exec sleep 60",
            out.display()
        ),
    )
    .env("SECRET_URL", "redis://:pw@h");
    let child = SupervisedChild::spawn(spec, policy());
    child.ready().await.unwrap();
    let text = wait_for_file(&out).await;
    assert_eq!(
        text.to_string_lossy().trim(),
        format!("redis://:pw@h {}", std::process::id())
    );
}
