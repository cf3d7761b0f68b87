//! The supervisor's `systemd` manager against a real systemd: runners are
//! the launcher's units, systemd restarts them, the supervisor reports
//! systemd's numbers, survives its own kill -9 without taking them along,
//! adopts them when it comes back, and `launcher cleanup` removes its
//! runners and its own service. Runs inside `scripts/systemd-sandbox` (the
//! test command does that); elsewhere it skips loudly.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use circles_test_support::{
    KEY_ONE, KEY_TWO, RedisServer, TargetScratch, binary, free_port, stdout_of, systemd_or_skip,
    wait_until,
};
use common::{Daemon, UP, alive, error_code, error_message, script};
use serde_json::{Value, json};

fn unit(key: &str) -> String {
    format!("tf.ourworld.circles.circle-worker-{key}.service")
}

fn systemctl(args: &[&str]) -> String {
    let out = Command::new("systemctl").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn prop(unit: &str, prop: &str) -> String {
    systemctl(&["show", "-p", prop, "--value", unit])
}

fn launcher(data: &Path, redis: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary("launcher"))
        .args(args)
        .args(["--redis-url", redis, "--system", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status(d: &Daemon, name: &str) -> Value {
    d.http().ok("get_runner_status", json!({"name": name}))
}

fn wait_status(d: &Daemon, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_until(what, UP, || {
        let s = status(d, name);
        f(&s).then_some(s)
    })
}

/// Removes every circle unit when the test ends, even on panic.
struct Cleanup<'a>(&'a Path, String);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = launcher(self.0, &self.1, &["cleanup"]);
        let _ = std::fs::remove_dir_all(self.0);
        if let Ok(rel) = self.0.strip_prefix("/var/lib") {
            let _ = std::fs::remove_dir_all(Path::new("/var/lib/private").join(rel));
        }
    }
}

#[test]
fn systemd_runners_outlive_the_supervisor_and_the_launcher_sees_and_removes_them() {
    if !systemd_or_skip(
        "systemd_runners_outlive_the_supervisor_and_the_launcher_sees_and_removes_them",
    ) {
        return;
    }
    let redis = RedisServer::start();
    // Under target/: the sandbox's /tmp is private, units could not see it;
    // searchable, since the workers' own users run the scripts here.
    let scratch = TargetScratch::new("supervisor-systemd");
    std::fs::set_permissions(
        scratch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // Worker services keep their databases in a StateDirectory=, under
    // /var/lib (a private overlay inside the sandbox).
    let unique = scratch.path().file_name().unwrap().to_string_lossy();
    let data = PathBuf::from(format!("/var/lib/circles-test-{unique}"));
    let _cleanup = Cleanup(&data, redis.url());
    let port = free_port();
    let args = ["--manager", "systemd"];
    let mut d = Daemon::start_on(port, &data, &redis.url(), &args, &[]);

    // add_runner installs the launcher's unit and returns once it is ready.
    let info = d.http().ok(
        "add_runner",
        json!({"name": "alpha", "circle_public_key": KEY_ONE, "start": true,
               "init_script": "\"seeded by the supervisor\""}),
    );
    assert_eq!(info["manager"], "systemd");
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["init"], "ok: seeded by the supervisor");
    let pid = info["pid"].as_u64().unwrap() as u32;
    assert_eq!(prop(&unit(KEY_ONE), "MainPID"), pid.to_string());
    assert!(Path::new(&format!("/etc/systemd/system/{}", unit(KEY_ONE))).exists());
    let done = d
        .http()
        .ok("run_job", json!({"runner": "alpha", "script": "40 + 2"}));
    assert_eq!(done["output"], "42");

    // The launcher sees it.
    let (code, out, err) = launcher(&data, &redis.url(), &["status", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["public_key"] == KEY_ONE)
        .expect("runner in launcher status");
    assert_eq!(row["pid"], pid);

    // kill -9 of the worker: systemd restarts it; the supervisor shows
    // systemd's count and the signal.
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let s = wait_status(&d, "alpha", "systemd to restart the worker", |s| {
        s["state"] == "running" && s["pid"].as_u64().is_some_and(|p| p as u32 != pid)
    });
    assert_eq!(s["restarts"], 1, "{s}");
    assert_eq!(s["last_exit"], json!({"signal": 9}), "{s}");
    let logs: Vec<String> = serde_json::from_value(
        d.http()
            .ok("get_runner_logs", json!({"name": "alpha", "lines": 500})),
    )
    .unwrap();
    assert!(
        logs.iter().any(|l| l.contains("worker ready")),
        "journal: {logs:?}"
    );

    // kill -9 of the supervisor leaves the unit running; a new supervisor
    // adopts it as it is.
    let pid = s["pid"].as_u64().unwrap() as u32;
    d.signal("KILL");
    d.wait_exit(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(pid), "the worker outlives the supervisor");
    assert_eq!(systemctl(&["is-active", &unit(KEY_ONE)]), "active");
    let d = Daemon::start_on(port, &data, &redis.url(), &args, &[]);
    let s = status(&d, "alpha");
    assert_eq!(
        (s["state"].as_str(), s["pid"].as_u64()),
        (Some("running"), Some(pid as u64)),
        "{s}"
    );

    // stop keeps the unit installed; start brings it back.
    let s = d.http().ok("stop_runner", json!({"name": "alpha"}));
    assert_eq!(s["state"], "stopped", "{s}");
    assert_eq!(systemctl(&["is-active", &unit(KEY_ONE)]), "inactive");
    assert!(Path::new(&format!("/etc/systemd/system/{}", unit(KEY_ONE))).exists());
    let s = d.http().ok("start_runner", json!({"name": "alpha"}));
    assert_eq!(s["state"], "running", "{s}");

    // A worker that fails at once: add_runner rolls back, nothing installed.
    let bad = script(
        scratch.path(),
        "bad-worker",
        "#!/bin/sh\necho 'cannot start: broken' >&2\nexit 3\n",
    );
    let r = d.http().call(
        "add_runner",
        json!({"name": "crashy", "circle_public_key": KEY_TWO, "start": true, "worker_binary": bad}),
    );
    assert_eq!(error_code(&r), -32013, "{r}");
    assert!(
        error_message(&r).contains(&format!(
            "installing `tf.ourworld.circles.circle-worker-{KEY_TWO}`"
        )),
        "{r}"
    );
    assert!(!Path::new(&format!("/etc/systemd/system/{}", unit(KEY_TWO))).exists());
    assert_eq!(d.http().ok("list_runners", json!({})), json!(["alpha"]));

    // A worker that serves, then crash-loops after a kill: systemd gives up
    // (start limit) and the runner shows `failed` with the exit code and the
    // journal's last lines.
    let (programs, worker) = circles_test_support::programs_for_units();
    let broken = programs.path().join("broken");
    let flaky = script(
        programs.path(),
        "flaky-worker",
        &format!(
            "#!/bin/sh\nif [ -e '{}' ]; then echo 'cannot start: broken' >&2; exit 3; fi\nexec '{}' \"$@\"\n",
            broken.display(),
            worker.display()
        ),
    );
    let s = d.http().ok(
        "add_runner",
        json!({"name": "crashy", "circle_public_key": KEY_TWO, "worker_binary": flaky}),
    );
    assert_eq!(s["state"], "stopped", "only added: {s}");
    assert!(!Path::new(&format!("/etc/systemd/system/{}", unit(KEY_TWO))).exists());
    let s = d.http().ok("start_runner", json!({"name": "crashy"}));
    assert_eq!(s["state"], "running", "{s}");
    std::fs::write(&broken, "").unwrap();
    Command::new("kill")
        .args(["-9", &s["pid"].as_u64().unwrap().to_string()])
        .status()
        .unwrap();
    let s = wait_status(&d, "crashy", "systemd to give up", |s| {
        s["state"] == "failed"
    });
    assert_eq!(s["last_exit"], json!({"code": 3}), "{s}");
    assert!(s["restarts"].as_u64().unwrap() >= 4, "{s}");
    assert!(
        s["last_log_lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("cannot start: broken")),
        "{s}"
    );

    // The supervisor installed as a service, beside its runners. A system
    // supervisor runs as root: it is refused without secrets.
    let api_port = free_port();
    let refused = Command::new(binary("supervisor"))
        .args(["install", "--system", "--port", &api_port.to_string()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("without --secrets-file"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let secrets_file = common::secrets_file(scratch.path(), 0o600);
    stdout_of(
        Command::new(binary("supervisor"))
            .args([
                "install",
                "--system",
                "--port",
                &api_port.to_string(),
                "--manager",
                "child",
                "--data-dir",
            ])
            .arg(scratch.path().join("service-data"))
            .arg("--secrets-file")
            .arg(&secrets_file)
            .arg("--worker-binary")
            .arg(binary("worker"))
            .env("REDIS_URL", redis.url()),
    );
    assert_eq!(
        systemctl(&["is-active", "tf.ourworld.circles.supervisor.service"]),
        "active"
    );
    let service = common::Http {
        port: api_port,
        secret: Some(common::ADMIN.to_string()),
    };
    assert_eq!(service.ok("list_runners", json!({})), json!([]));

    // `launcher cleanup` removes the supervisor's runners and the
    // supervisor's own service, and nothing else.
    let (code, out, err) = launcher(&data, &redis.url(), &["cleanup", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let removed: Value = serde_json::from_str(&out).unwrap();
    let removed: Vec<&str> = removed["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for name in [
        format!("tf.ourworld.circles.circle-worker-{KEY_ONE}"),
        format!("tf.ourworld.circles.circle-worker-{KEY_TWO}"),
        "tf.ourworld.circles.supervisor".to_string(),
    ] {
        assert!(
            removed.contains(&name.as_str()),
            "{name} not in {removed:?}"
        );
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", api_port)).is_err());
    // The supervisor notices, and reinstalls on start.
    let s = status(&d, "alpha");
    assert_eq!(s["state"], "unknown", "{s}");
    assert!(
        s["reason"].as_str().unwrap().contains("not installed"),
        "{s}"
    );
    let s = d.http().ok("start_runner", json!({"name": "alpha"}));
    assert_eq!(s["state"], "running", "{s}");
    d.http().ok("remove_runner", json!({"name": "alpha"}));
    d.http().ok("remove_runner", json!({"name": "crashy"}));
    assert!(!Path::new(&format!("/etc/systemd/system/{}", unit(KEY_ONE))).exists());
}
