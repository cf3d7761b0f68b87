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
        sh(
            "crasher",
            &dir.0,
            "echo 'cannot start' >&2; echo 'error: port 7 is taken' >&2; exit 3",
        ),
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
    // The child's own last error line is the reason (issue 10 item 1),
    // and the message counts restarts as the status does.
    assert!(
        reason.starts_with("port 7 is taken (exited, exit status 3)"),
        "{reason}"
    );
    assert!(
        reason.contains("gave up after 2 restarts (3 failures in a row"),
        "{reason}"
    );
    let status = child.current();
    assert_eq!(status.restarts, 2, "restarted twice, then gave up");
    assert_eq!(status.pid, None);
    // It stays failed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(child.current().restarts, 2);
    let log = std::fs::read_to_string(dir.0.join("crasher.log")).unwrap();
    assert_eq!(log.matches("cannot start").count(), 3, "{log}");
    assert_eq!(
        circles_supervise::logs::tail_lines(&dir.0.join("crasher.log"), 2).unwrap(),
        ["cannot start", "error: port 7 is taken"]
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

/// This test binary started again with only `test` selected: a child that
/// runs one of the helper "tests" below (each does nothing unless its
/// environment variable is set).
fn helper_child(name: &str, dir: &Path, test: &str) -> ChildSpec {
    ChildSpec::new(
        name,
        std::env::current_exe().unwrap(),
        dir.join(format!("{name}.log")),
    )
    .args(["--exact", test, "--nocapture", "--test-threads=1"])
}

async fn must_be_ready(child: &SupervisedChild) {
    tokio::time::timeout(WAIT, child.ready())
        .await
        .unwrap_or_else(|_| panic!("not ready within {WAIT:?}: {:?}", child.current()))
        .unwrap();
}

/// Environment of [`notify_helper`]: the file it waits for before it
/// sends `READY=1`.
const HELPER_GO: &str = "SUPERVISE_TEST_NOTIFY_GO";

/// Not a test of its own: the body of a child for the readiness test,
/// which starts this test binary again with only this test selected and
/// [`HELPER_GO`] set (a `READY=1` counts only from the child's own PID, so
/// the child itself must send it). It writes `$NOTIFY_SOCKET` to
/// `<go>.socket`, waits (at most 30 s) for the go file, sends `READY=1`,
/// and sleeps until stopped (at most 60 s).
#[test]
fn notify_helper() {
    let Some(go) = std::env::var_os(HELPER_GO).map(PathBuf::from) else {
        return;
    };
    let socket = std::env::var("NOTIFY_SOCKET").expect("NOTIFY_SOCKET set");
    std::fs::write(go.with_extension("socket"), &socket).unwrap();
    for _ in 0..3000 {
        if go.exists() {
            let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
            sender.send_to(b"STATUS=almost", &socket).unwrap();
            sender.send_to(b"READY=1", &socket).unwrap();
            std::thread::sleep(Duration::from_secs(60));
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never appeared", go.display());
}

#[tokio::test]
async fn readiness_is_the_childs_own_ready_message_not_the_spawn() {
    let dir = Dir::new("ready");
    let go = dir.0.join("go");
    let spec =
        helper_child("notifier", &dir.0, "notify_helper").env(HELPER_GO, go.display().to_string());
    let child = SupervisedChild::spawn(spec, policy());
    let path = wait_for_file(&go.with_extension("socket")).await;
    // Another process (this one) saying READY=1 on the same socket: on
    // Linux the socket is shared by every child and a message counts only
    // for the PID that sent it, so it must not make this child ready.
    if cfg!(target_os = "linux") {
        let stranger = std::os::unix::net::UnixDatagram::unbound().unwrap();
        stranger.send_to(b"READY=1", &path).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        child.current().state,
        ChildState::Starting,
        "not ready before its own READY=1"
    );
    std::fs::write(&go, "").unwrap();
    must_be_ready(&child).await;
    let stopped = child.stop().await;
    assert_eq!(stopped.state, ChildState::Stopped);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn children_share_one_notify_socket_and_each_is_ready_on_its_own_message() {
    let dir = Dir::new("shared");
    let spawn = |name: &str| {
        let go = dir.0.join(name);
        let spec =
            helper_child(name, &dir.0, "notify_helper").env(HELPER_GO, go.display().to_string());
        (SupervisedChild::spawn(spec, policy()), go)
    };
    let (first, first_go) = spawn("first");
    let (second, second_go) = spawn("second");
    let first_socket = wait_for_file(&first_go.with_extension("socket")).await;
    let second_socket = wait_for_file(&second_go.with_extension("socket")).await;
    assert_eq!(first_socket, second_socket, "one socket for both");
    std::fs::write(&second_go, "").unwrap();
    must_be_ready(&second).await;
    assert_eq!(
        first.current().state,
        ChildState::Starting,
        "the second child's READY=1 is not the first's"
    );
    std::fs::write(&first_go, "").unwrap();
    must_be_ready(&first).await;
    first.stop().await;
    second.stop().await;
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

/// Environment of [`death_helper_parent`] and [`death_helper_child`]: the
/// directory they report in.
const DEATH_DIR: &str = "SUPERVISE_TEST_DEATH_DIR";
/// Set for [`death_helper_parent`]: how the child is started and whether it
/// arms the signal itself — `fork` (set between fork and exec), `spawn-arms`
/// (posix_spawn, the child arms it), `spawn-unarmed` (posix_spawn, nobody
/// does: the control that shows the test can tell).
const DEATH_MODE: &str = "SUPERVISE_TEST_DEATH_MODE";

/// Not a test of its own: a supervising process for
/// [`a_child_dies_with_its_killed_supervisor`]. It supervises
/// [`death_helper_child`], writes the child's PID to `child.pid`, then
/// sleeps until SIGKILLed (at most 60 s).
#[test]
fn death_helper_parent() {
    let (Some(dir), Ok(mode)) = (
        std::env::var_os(DEATH_DIR).map(PathBuf::from),
        std::env::var(DEATH_MODE),
    ) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let spec = helper_child("orphan-to-be", &dir, "death_helper_child")
            .env(DEATH_DIR, dir.display().to_string())
            .env("ARM", (mode == "spawn-arms").to_string())
            .arms_death_signal(mode != "fork")
            .wait_ready(false);
        let child = SupervisedChild::spawn(spec, policy());
        child.ready().await.unwrap();
        let pid = child.current().pid.unwrap();
        // The child reports once it has armed (or not) the signal.
        wait_for_file(&dir.join("child.started")).await;
        std::fs::write(dir.join("child.pid"), pid.to_string()).unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

/// Not a test of its own: the supervised child of [`death_helper_parent`];
/// it never polls for its parent, so only the kernel's signal ends it.
#[test]
fn death_helper_child() {
    let Some(dir) = std::env::var_os(DEATH_DIR).map(PathBuf::from) else {
        return;
    };
    if std::env::var("ARM").as_deref() == Ok("true") {
        assert!(circles_supervise::parent::arm_death_signal());
    }
    std::fs::write(dir.join("child.started"), "yes").unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_child_dies_with_its_killed_supervisor() {
    for mode in ["fork", "spawn-arms", "spawn-unarmed"] {
        let dir = Dir::new(&format!("death-{mode}"));
        let helper = helper_child("parent", &dir.0, "death_helper_parent");
        let parent = std::process::Command::new(&helper.program)
            .args(&helper.args)
            .env(DEATH_DIR, &dir.0)
            .env(DEATH_MODE, mode)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Whatever happens below, neither helper outlives the test.
        let mut helpers = Helpers {
            parent: Some(parent),
            child: None,
        };
        let child: u32 = wait_for_file(&dir.0.join("child.pid"))
            .await
            .display()
            .to_string()
            .parse()
            .unwrap();
        helpers.child = Some(child);
        let mut parent = helpers.parent.take().unwrap();
        parent.kill().unwrap();
        parent.wait().unwrap();
        // The signal comes at once; the control needs only to show it
        // would have been seen.
        let tries = if mode == "spawn-unarmed" { 20 } else { 100 };
        let mut gone = false;
        for _ in 0..tries {
            if !alive(child) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if mode == "spawn-unarmed" {
            assert!(!gone, "without the signal the child outlives its parent");
        } else {
            assert!(gone, "{mode}: the child outlived its SIGKILLed parent");
        }
    }
}

/// The helper processes of a test, SIGKILLed when dropped: the parent
/// through its handle (never a reaped PID), the child by PID only while it
/// is alive.
struct Helpers {
    parent: Option<std::process::Child>,
    child: Option<u32>,
}
impl Drop for Helpers {
    fn drop(&mut self) {
        if let Some(parent) = self.parent.as_mut() {
            let _ = parent.kill();
            let _ = parent.wait();
        }
        if let Some(pid) = self.child.filter(|pid| alive(*pid))
            && let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}
