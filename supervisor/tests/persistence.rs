//! Child runners across failures: a SIGKILLed worker is restarted and
//! counted; a crash loop ends `failed` with its last exit and log lines;
//! a SIGKILLed supervisor takes its children along (parent-death signal)
//! and, restarted, brings back each runner in its target state. Also the
//! `ctl` client's table and JSON against the real daemon.

mod common;

use std::time::Duration;

use circles_test_support::{KEY_ONE, KEY_TWO, RedisServer, wait_until};
use common::{Daemon, UP, alive, script};
use serde_json::{Value, json};

/// A third valid circle key (the public key of secret key 3).
const KEY_THREE: &str = "02f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9";

fn status(d: &Daemon, name: &str) -> Value {
    d.http().ok("get_runner_status", json!({"name": name}))
}

fn wait_status(d: &Daemon, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_until(what, UP, || {
        let s = status(d, name);
        f(&s).then_some(s)
    })
}

#[test]
fn kill_9_of_a_runner_a_crash_loop_and_kill_9_of_the_supervisor() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let bad = script(
        tmp.path(),
        "bad-worker",
        "#!/bin/sh\necho \"cannot start: missing config ($0)\" >&2\nexit 3\n",
    );
    let port = circles_test_support::free_port();
    let mut d = Daemon::start_on(port, tmp.path(), &redis.url(), &[], &[]);
    let h = d.http();
    h.ok(
        "add_runner",
        json!({"name": "keeper", "circle_public_key": KEY_ONE, "start": true}),
    );
    h.ok(
        "add_runner",
        json!({"name": "resting", "circle_public_key": KEY_TWO}),
    );
    h.ok(
        "add_runner",
        json!({"name": "crashy", "circle_public_key": KEY_THREE, "worker_binary": bad}),
    );

    // kill -9 of a worker: restarted, counted, the signal shown.
    let first = status(&d, "keeper")["pid"].as_u64().unwrap() as u32;
    std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    let s = wait_status(&d, "keeper", "a restarted worker", |s| {
        s["state"] == "running" && s["pid"].as_u64().is_some_and(|p| p as u32 != first)
    });
    assert_eq!(s["restarts"], 1, "{s}");
    assert_eq!(s["last_exit"], json!({"signal": 9}), "{s}");
    assert!(!alive(first));
    let done = h.ok("run_job", json!({"runner": "keeper", "script": "6 * 7"}));
    assert_eq!(done["output"], "42");

    // A crash loop: start_runner fails, the runner is `failed` with the
    // last exit and the last log lines; it is not restarted any more.
    let r = h.call("start_runner", json!({"name": "crashy"}));
    assert_eq!(common::error_code(&r), -32013, "{r}");
    let s = status(&d, "crashy");
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(s["last_exit"], json!({"code": 3}));
    assert!(
        s["reason"].as_str().unwrap().contains("failures in a row"),
        "{s}"
    );
    assert!(
        s["last_log_lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("cannot start: missing config")),
        "{s}"
    );
    let restarts = s["restarts"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(&d, "crashy")["restarts"].as_u64().unwrap(), restarts);
    // The ctl table shows it as people read it.
    let out = std::process::Command::new(circles_test_support::binary("supervisor"))
        .args([
            "ctl",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "status",
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("crashy") && table.contains("failed") && table.contains("(exit 3)"),
        "{table}"
    );
    assert!(
        table.contains("keeper") && table.contains("1 (signal 9)"),
        "{table}"
    );
    assert!(
        table.contains("resting") && table.contains("stopped"),
        "{table}"
    );
    // Why the crash loop failed, in a Reason column (issue 10).
    assert!(
        table.contains("Reason")
            && table.contains("why:\n  crashy: exited before becoming ready, exit status 3; gave up after 4 restarts (5 failures in a row"),
        "{table}"
    );

    // A runner is addressed as `launcher` addresses a circle: by name, by
    // its circle's key prefix or the table's shortened key; an ambiguous
    // prefix is an error listing the matches.
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(circles_test_support::binary("supervisor"))
            .args(["ctl", "--url", &format!("http://127.0.0.1:{port}")])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let shortened = format!("{}…{}", &KEY_ONE[..8], &KEY_ONE[KEY_ONE.len() - 6..]);
    for query in ["keeper", &KEY_ONE[..6], &shortened, KEY_ONE] {
        let (code, out, err) = ctl(&["--json", "status", query]);
        assert_eq!(code, Some(0), "{query}: {err}");
        let rows: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(rows[0]["name"], "keeper", "{query}: {out}");
    }
    let (code, _, err) = ctl(&["status", "02"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("`02` matches 3 circles"), "{err}");
    let (code, _, err) = ctl(&["status", "nobody"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no circle `nobody` here: known circles are crashy (02f9308a…e036f9), keeper"),
        "{err}"
    );

    // kill -9 of the supervisor: its child workers die with it.
    let worker = status(&d, "keeper")["pid"].as_u64().unwrap() as u32;
    d.signal("KILL");
    d.wait_exit(Duration::from_secs(10));
    wait_until(
        "the worker to die with the supervisor",
        Duration::from_secs(15),
        || (!alive(worker)).then_some(()),
    );

    // Restarted: same runners, same target states.
    let d = Daemon::start_on(port, tmp.path(), &redis.url(), &[], &[]);
    assert_eq!(
        d.http().ok("list_runners", json!({})),
        json!(["crashy", "keeper", "resting"])
    );
    let s = wait_status(&d, "keeper", "keeper running again", |s| {
        s["state"] == "running"
    });
    assert_ne!(s["pid"].as_u64().unwrap() as u32, worker);
    assert_eq!(s["target"], "running");
    let done = d.http().ok(
        "run_job",
        json!({"runner": "keeper", "script": "CONTEXT_ID"}),
    );
    assert_eq!(done["output"], KEY_ONE);
    let s = status(&d, "resting");
    assert_eq!(
        (s["state"].as_str(), s["target"].as_str()),
        (Some("stopped"), Some("stopped"))
    );
    // Its target was `running`: it is tried again, and fails again.
    wait_status(&d, "crashy", "crashy failed again", |s| {
        s["state"] == "failed"
    });

    // A graceful stop (SIGTERM) stops the workers too and exits 0.
    let worker = status(&d, "keeper")["pid"].as_u64().unwrap() as u32;
    let mut d = d;
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(!alive(worker));
}

/// A hostile review (stop 18): an `add_runner` still installing was written
/// to the state file by any other operation's save meanwhile, so a runner
/// whose add then failed ("nothing kept") came back at the next start.
#[test]
fn a_failed_add_never_reaches_the_state_file() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    // Up for two seconds, never ready, then gone: the add fails.
    let slow = script(tmp.path(), "slow-worker", "#!/bin/sh\nsleep 2\nexit 1\n");
    let d = Daemon::start(tmp.path(), &redis.url(), &[], &[]);
    let h = d.http();
    h.ok(
        "add_runner",
        json!({"name": "other", "circle_public_key": KEY_ONE}),
    );
    let adding = {
        let h = d.http();
        std::thread::spawn(move || {
            h.call(
                "add_runner",
                json!({"name": "doomed", "circle_public_key": KEY_TWO, "worker_binary": slow, "start": true}),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    // Another runner's change saves the state while the add is running.
    h.ok("remove_runner", json!({"name": "other"}));
    let added = adding.join().unwrap();
    assert!(added.get("error").is_some(), "{added}");
    let state = std::fs::read_to_string(tmp.path().join("supervisor.json")).unwrap();
    assert!(!state.contains("doomed"), "{state}");
    let runners = h.ok("list_runners", json!({}));
    assert!(!runners.to_string().contains("doomed"), "{runners}");
}
