//! Issue 9 with real hosts: network namespaces on a private bridge, each
//! with its own host name and PIDs (`scripts/netns-hosts`). Redis and the
//! WebSocket gateway run on host alpha; workers on bravo and charlie reach
//! them at alpha's address; the test talks to the gateway and Redis from a
//! fourth host, client. Nothing is configured outside the namespaces, and
//! everything on the hosts is killed and the namespaces removed when the
//! test ends, however it ends.
//!
//! Needs root and iproute2; skips loudly without them, and fails instead
//! when `CIRCLES_CI=1`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use circles_dispatcher::{CirclePublicKey, Dispatcher, TaskId};
use circles_test_support::hosts::{HostProcess, Hosts, in_netns, netns_or_skip};
use circles_test_support::{KEY_ONE, KEY_TWO, TargetScratch, binary, wait_until, ws};
use serde_json::Value;

/// A third circle: the one that moves from bravo to charlie.
const KEY_THREE: &str = "02f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9";
const REDIS_PORT: u16 = 6379;
const GATEWAY_PORT: u16 = 9080;
/// Longest any single step may take (the lease expiry wait has its own).
const STEP: Duration = Duration::from_secs(20);

/// The hosts, their Redis and gateway, and how the test reaches them.
struct Cluster {
    hosts: Hosts,
    scratch: PathBuf,
    alpha: String,
    client_netns: String,
    _redis: HostProcess,
    _gateway: HostProcess,
}

impl Cluster {
    fn redis_url(&self) -> String {
        format!("redis://{}:{REDIS_PORT}", self.alpha)
    }

    /// `redis-cli ARGS…` from the client host.
    fn redis(&self, args: &[&str]) -> String {
        let mut cmd = self.hosts.command("client", "redis-cli");
        cmd.args(["-h", &self.alpha, "-p", &REDIS_PORT.to_string()])
            .args(args);
        let (code, out, err) = self.hosts.run(cmd, STEP);
        assert_eq!(code, Some(0), "redis-cli {args:?}: {err}");
        out.trim().to_string()
    }

    /// The data directory of a host (each host has its own disk).
    fn data(&self, host: &str) -> PathBuf {
        self.scratch.join(host).join("data")
    }

    /// Starts a worker for `key` on `host`.
    fn worker(&self, host: &str, key: &str) -> HostProcess {
        let mut cmd = self.hosts.command(host, binary("worker"));
        cmd.args(["--circle-public-key", key, "--db-path"])
            .arg(self.data(host))
            .env("REDIS_URL", self.redis_url())
            .env("RUST_LOG", "warn");
        self.hosts.spawn(&format!("worker {key:.8} on {host}"), cmd)
    }

    /// Starts a worker and waits until its heartbeat names it (its host and
    /// its PID there).
    fn ready_worker(&self, host: &str, key: &str) -> HostProcess {
        let mut worker = self.worker(host, key);
        let pid = worker.host_pid();
        let start = Instant::now();
        loop {
            let beat = self.redis(&["GET", &format!("rhai_worker:{key}")]);
            if serde_json::from_str::<Value>(&beat)
                .is_ok_and(|b| b["host"] == host && b["pid"] == pid)
            {
                return worker;
            }
            assert!(
                worker.running() && start.elapsed() < STEP,
                "worker of {key:.8} on {host} not ready (heartbeat: {beat}); its log:\n{}",
                worker.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `launcher ARGS…` on `host` with its data directory and the shared Redis.
    fn launcher(&self, host: &str, args: &[&str]) -> (Option<i32>, String, String) {
        let mut cmd = self.hosts.command(host, binary("launcher"));
        cmd.args(args)
            .arg("--data-dir")
            .arg(self.data(host))
            .args(["--redis-url", &self.redis_url()]);
        self.hosts.run(cmd, STEP)
    }

    /// `play` through the gateway, from the client host.
    fn play(&self, key: &str, script: &str) -> String {
        let url = format!("ws://{}:{GATEWAY_PORT}/{key}", self.alpha);
        let script = script.to_string();
        in_netns(&self.client_netns, move || {
            runtime().block_on(async move { ws::Client::connect(&url).await.play(&script).await })
        })
    }

    /// Queues a script for `key` (no waiting), from the client host.
    fn submit(&self, key: &str, script: &str) -> TaskId {
        let (url, circle, script) = (self.redis_url(), circle(key), script.to_string());
        in_netns(&self.client_netns, move || {
            runtime().block_on(async move {
                let d = Dispatcher::connect(&url, "hosts-test").await.unwrap();
                d.submit(&circle, &script, Duration::from_secs(60))
                    .await
                    .unwrap()
            })
        })
    }

    /// A task's hash field.
    fn task_field(&self, task: &TaskId, field: &str) -> String {
        self.redis(&["HGET", &format!("rhai_task_details:{task}"), field])
    }

    fn wait_status(&self, task: &TaskId, status: &str) {
        wait_until(&format!("task {task} {status}"), STEP, || {
            (self.task_field(task, "status") == status).then_some(())
        });
    }

    /// `launcher status --fleet --json` from the client host, by circle.
    fn fleet(&self) -> std::collections::HashMap<String, Value> {
        let (code, out, err) = self.launcher("client", &["status", "--fleet", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        let entries: Vec<Value> = serde_json::from_str(&out).expect(&out);
        entries
            .into_iter()
            .map(|e| (e["circle"].as_str().unwrap().to_string(), e))
            .collect()
    }
}

fn circle(key: &str) -> CirclePublicKey {
    key.parse().unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A script that keeps its worker busy for `secs` seconds.
fn slow(secs: f64) -> String {
    format!("let t = timestamp(); while t.elapsed < {secs} {{ }} \"slept\"")
}

fn start_cluster(scratch: &Path) -> Cluster {
    let hosts = Hosts::up(
        &scratch.join("hosts"),
        &["alpha", "bravo", "charlie", "client"],
    );
    let alpha = hosts.addr("alpha");
    let client_netns = hosts.netns("client");
    let redis_dir = scratch.join("alpha").join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let mut cmd = hosts.command("alpha", "redis-server");
    cmd.args([
        "--bind",
        &alpha,
        "127.0.0.1",
        "--port",
        &REDIS_PORT.to_string(),
    ])
    // Reachable from the other hosts without a password: the bridge
    // lives in a namespace of this test, nothing else is on it.
    .args(["--protected-mode", "no", "--save", "", "--appendonly", "no"])
    .arg("--dir")
    .arg(&redis_dir);
    let redis = hosts.spawn("redis on alpha", cmd);
    let mut cmd = hosts.command("alpha", binary("server"));
    cmd.args(["--host", &alpha, "--port", &GATEWAY_PORT.to_string()])
        .args(["--redis-url", &format!("redis://127.0.0.1:{REDIS_PORT}")])
        .arg("--wait-for-redis")
        .env("RUST_LOG", "warn");
    let gateway = hosts.spawn("gateway on alpha", cmd);
    let cluster = Cluster {
        hosts,
        scratch: scratch.to_path_buf(),
        alpha,
        client_netns,
        _redis: redis,
        _gateway: gateway,
    };
    wait_until("Redis on alpha", STEP, || {
        let mut cmd = cluster.hosts.command("client", "redis-cli");
        cmd.args(["-h", &cluster.alpha, "-p", &REDIS_PORT.to_string(), "PING"]);
        (cluster.hosts.run(cmd, STEP).1.trim() == "PONG").then_some(())
    });
    let gateway_addr = format!("{}:{GATEWAY_PORT}", cluster.alpha);
    let start = Instant::now();
    while !in_netns(&cluster.client_netns, {
        let addr = gateway_addr.clone();
        move || {
            std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(1))
                .is_ok()
        }
    }) {
        assert!(
            start.elapsed() < STEP,
            "the gateway on alpha does not answer; its log:\n{}",
            cluster._gateway.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster
}

#[test]
fn circles_on_several_hosts_have_one_owner_each_and_move_between_hosts() {
    if !netns_or_skip("circles_on_several_hosts_have_one_owner_each_and_move_between_hosts") {
        return;
    }
    let scratch = TargetScratch::new("hosts");
    let c = start_cluster(scratch.path());
    let host_of = |key: &str| c.fleet()[key]["host"].as_str().map(str::to_string);

    // Circles on two hosts, both reached through the one gateway.
    let mut one_on_bravo = c.ready_worker("bravo", KEY_ONE);
    let _two_on_charlie = c.ready_worker("charlie", KEY_TWO);
    assert_eq!(c.play(KEY_ONE, r#"db_set("home", "bravo"); 40 + 2"#), "42");
    assert_eq!(c.play(KEY_TWO, "CONTEXT_ID"), KEY_TWO);
    let fleet = c.fleet();
    assert_eq!(fleet[KEY_ONE]["host"], "bravo");
    assert_eq!(fleet[KEY_ONE]["pid"], one_on_bravo.host_pid());
    assert_eq!(fleet[KEY_ONE]["state"], "live");
    assert_eq!(fleet[KEY_TWO]["host"], "charlie");

    // A second worker for KEY_ONE on charlie, while bravo's runs a task:
    // refused, naming bravo and its pid there; the task is not touched.
    let busy = c.submit(KEY_ONE, &slow(3.0));
    c.wait_status(&busy, "processing");
    let mut intruder = c.worker("charlie", KEY_ONE);
    assert_eq!(intruder.wait_exit(STEP), Some(1));
    let refusal = intruder.stderr();
    let expected = format!(
        "circle {KEY_ONE} is already served by pid {} on host bravo",
        one_on_bravo.host_pid()
    );
    assert!(refusal.contains(&expected), "{refusal}");
    assert!(
        !c.data("charlie")
            .join(format!("circle_db_{KEY_ONE}.redb"))
            .exists(),
        "a refusing worker leaves no database"
    );
    c.wait_status(&busy, "completed");
    assert_eq!(c.task_field(&busy, "output"), "slept");
    assert_eq!(c.task_field(&busy, "error"), "", "never ended early");

    // bravo's worker freezes mid-task: its lease runs out, a successor on
    // charlie takes the circle and ends the frozen task; thawed, the old
    // owner cannot write its result and stops with lost ownership.
    let frozen_task = c.submit(KEY_ONE, &slow(2.0));
    c.wait_status(&frozen_task, "processing");
    one_on_bravo.signal("STOP");
    let frozen_at = Instant::now();
    let owner_key = format!("rhai_owner:{KEY_ONE}");
    wait_until(
        "the frozen owner's lease to expire",
        Duration::from_secs(30),
        || c.redis(&["EXISTS", &owner_key]).eq("0").then_some(()),
    );
    assert!(
        frozen_at.elapsed() > Duration::from_secs(5),
        "the lease outlived the heartbeat interval ({:?})",
        frozen_at.elapsed()
    );
    let one_on_charlie = c.ready_worker("charlie", KEY_ONE);
    c.wait_status(&frozen_task, "error");
    let ended = c.task_field(&frozen_task, "error");
    assert!(ended.contains("worker stopped unexpectedly"), "{ended}");
    assert_eq!(
        c.play(KEY_ONE, r#"db_get("home")"#),
        "",
        "charlie's own database"
    );
    assert_eq!(host_of(KEY_ONE).as_deref(), Some("charlie"));
    one_on_bravo.signal("CONT");
    assert_eq!(one_on_bravo.wait_exit(STEP), Some(1));
    let lost = one_on_bravo.stderr();
    let expected = format!(
        "lost circle {KEY_ONE} to pid {} on host charlie",
        one_on_charlie.host_pid()
    );
    assert!(lost.contains(&expected), "{lost}");
    assert_eq!(c.task_field(&frozen_task, "status"), "error");
    assert_eq!(c.task_field(&frozen_task, "output"), "", "no late result");
    assert_eq!(
        c.redis(&["LLEN", &format!("rhai_reply:{frozen_task}")]),
        "1",
        "exactly one reply"
    );
    assert_eq!(c.play(KEY_ONE, "1 + 1"), "2", "charlie still serves");

    // KEY_THREE moves from bravo to charlie: stop, back up, restore, start.
    let mut three_on_bravo = c.ready_worker("bravo", KEY_THREE);
    assert_eq!(c.play(KEY_THREE, r#"db_insert("items", "a")"#), "1");
    assert_eq!(c.play(KEY_THREE, r#"db_insert("items", "b")"#), "2");
    c.play(KEY_THREE, r#"db_set("note", "packed on bravo")"#);
    let live_backup = c.scratch.join("three-live.backup");
    let (code, out, err) = c.launcher(
        "bravo",
        &["backup", KEY_THREE, "-o", live_backup.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!(
            "from the live worker pid {} on bravo",
            three_on_bravo.host_pid()
        )),
        "{out}"
    );
    // Not from charlie: the database is on bravo; not restored while live.
    let refused = c.scratch.join("refused.backup");
    let (code, _, err) = c.launcher(
        "charlie",
        &["backup", KEY_THREE, "-o", refused.to_str().unwrap()],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("on host bravo: run `launcher backup` on that host"),
        "{err}"
    );
    assert!(!refused.exists());
    let (code, _, err) = c.launcher("charlie", &["restore", live_backup.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            "circle {KEY_THREE} is served by pid {} on host bravo",
            three_on_bravo.host_pid()
        )),
        "{err}"
    );
    three_on_bravo.signal("TERM");
    assert_eq!(three_on_bravo.wait_exit(STEP), Some(0));
    let backup = c.scratch.join("three.backup");
    let (code, out, err) = c.launcher(
        "bravo",
        &["backup", KEY_THREE, "-o", backup.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("from the database file on bravo"), "{out}");
    let (code, out, err) = c.launcher("charlie", &["restore", backup.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("backed up on bravo"), "{out}");
    let _three_on_charlie = c.ready_worker("charlie", KEY_THREE);
    assert_eq!(c.play(KEY_THREE, r#"db_get("note")"#), "packed on bravo");
    assert_eq!(c.play(KEY_THREE, r#"db_insert("items", "c")"#), "3");
    assert_eq!(c.play(KEY_THREE, r#"db_keys("items:").len()"#), "3");

    let fleet = c.fleet();
    for key in [KEY_ONE, KEY_TWO, KEY_THREE] {
        assert_eq!(fleet[key]["host"], "charlie", "{key}: {}", fleet[key]);
        assert_eq!(fleet[key]["state"], "live");
    }
    let (code, table, _) = c.launcher("client", &["status", "--fleet"]);
    assert_eq!(code, Some(0));
    assert!(table.contains("3 circles on 1 host: 3 live"), "{table}");
}

/// The helper itself: `up` is idempotent (same hosts, same addresses),
/// hosts have their own names and PIDs, refuses bad names before making
/// anything, and `down` kills what runs on the hosts and removes every
/// namespace, twice without harm.
#[test]
fn netns_hosts_up_is_idempotent_and_down_leaves_nothing() {
    if !netns_or_skip("netns_hosts_up_is_idempotent_and_down_leaves_nothing") {
        return;
    }
    let scratch = TargetScratch::new("netns-hosts");
    let state = scratch.path().join("state");
    let script = circles_test_support::repo_root().join("scripts/netns-hosts");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&script)
            .args(&args[..1])
            .arg(&state)
            .args(&args[1..])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let namespaces = || {
        let out = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect::<Vec<_>>()
    };

    let (ok, _, err) = run(&["up", "Bad_Name"]);
    assert!(!ok && err.contains("must be 1 to 12 lower-case"), "{err}");
    assert!(!state.exists(), "nothing made for a bad name");

    let (ok, first, err) = run(&["up", "one", "two"]);
    assert!(ok, "{err}");
    assert_eq!(first, "one 10.77.0.1\ntwo 10.77.0.2\n");
    let (ok, again, _) = run(&["up", "one", "two"]);
    assert!(ok);
    assert_eq!(again, first, "idempotent");
    let (_, netns, _) = run(&["netns", "one"]);
    let prefix = netns.trim().trim_end_matches("-one").to_string();
    let ours: Vec<String> = namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    assert_eq!(ours.len(), 3, "two hosts and the switch: {ours:?}");

    // Each host has its name and its own PID 1; a process left running on
    // a host is gone after `down`.
    let hosts = Hosts::up(&state, &["one", "two"]);
    let (code, out, _) = hosts.run(
        {
            let mut cmd = hosts.command("two", "sh");
            cmd.args(["-c", "hostname; cat /proc/1/comm"]);
            cmd
        },
        STEP,
    );
    assert_eq!((code, out.as_str()), (Some(0), "two\nsleep\n"));
    let left = hosts.spawn("sleeper", {
        let mut cmd = hosts.command("one", "sleep");
        cmd.arg("600");
        cmd
    });
    let pid = left.pid();
    std::mem::forget(left);
    drop(hosts);
    wait_until("the sleeper to be gone", STEP, || {
        (!Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")))
        .then_some(())
    });
    assert!(
        namespaces()
            .iter()
            .all(|n| !n.starts_with(&format!("{prefix}-"))),
        "{:?}",
        namespaces()
    );
    let (ok, out, _) = run(&["down"]);
    assert!(ok && out.trim() == "down", "down twice is fine");
}
