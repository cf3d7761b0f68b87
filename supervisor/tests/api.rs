//! Every API method end to end, over raw HTTP and over a raw WebSocket,
//! against the real `supervisor` binary with child runners (real `worker`
//! processes) on a real Redis; then every kind of bad input.

mod common;

use std::time::Duration;

use circles_test_support::{KEY_ONE, KEY_TWO, RedisServer, stdout_of, wait_until};
use common::{Daemon, Http, UP, Ws, alive, error_code, error_message, script};
use serde_json::{Value, json};

/// One client, either transport.
enum Client {
    Http(Http),
    Ws(Box<Ws>),
}

impl Client {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        match self {
            Client::Http(h) => {
                let h = h.clone();
                let method = method.to_string();
                tokio::task::spawn_blocking(move || h.call(&method, params))
                    .await
                    .unwrap()
            }
            Client::Ws(w) => w.call(method, params).await,
        }
    }

    async fn ok(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params).await;
        assert!(r.get("error").is_none(), "{method} failed: {r}");
        r["result"].clone()
    }
}

/// The whole life of a runner through the API, on one transport.
async fn lifecycle(c: &mut Client, name: &str, key: &str, data_dir: &std::path::Path) {
    // rpc.discover answers the document in the repository.
    let doc = c.ok("rpc.discover", json!([])).await;
    let file: Value = serde_json::from_str(include_str!("../openrpc.json")).expect("openrpc.json");
    assert_eq!(doc, file);

    // add_runner (installed, not started), then start_runner.
    let info = c
        .ok(
            "add_runner",
            json!({"name": name, "circle_public_key": key,
                   "init_script": "db_set(\"seeded\", CALLER_ID); \"seeded\"",
                   "env": {"CIRCLES_TEST_MARK": name}}),
        )
        .await;
    assert_eq!(info["state"], "stopped", "{info}");
    assert_eq!(info["target"], "stopped");
    assert_eq!(info["manager"], "child");
    assert_eq!(info["init"], "-");
    assert!(
        c.ok("list_runners", json!({}))
            .await
            .as_array()
            .unwrap()
            .contains(&json!(name))
    );

    let info = c.ok("start_runner", json!({"name": name})).await;
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(
        info["init"], "ok: seeded",
        "the init script ran on the first start"
    );
    let pid = info["pid"].as_u64().unwrap() as u32;
    assert!(alive(pid));
    // The worker got its environment, and the Redis URL not in argv.
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
        .into_owned();
    assert!(environ.contains(&format!("CIRCLES_TEST_MARK={name}")));
    assert!(environ.contains("REDIS_URL=redis://"));
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .into_owned();
    assert!(!cmdline.contains("redis://"), "{cmdline}");
    assert!(
        data_dir.join(format!("circle_db_{key}.redb")).exists() || data_dir.join("logs").exists()
    );

    // Real numbers: uptime, memory, queue, heartbeat from the worker.
    let info = wait_for(c, name, "a heartbeat", |i| !i["heartbeat_at"].is_null()).await;
    assert!(
        info["memory_rss_bytes"].as_u64().unwrap() > 1_000_000,
        "{info}"
    );
    assert_eq!(info["queue_depth"], 0);
    assert!(info["started_at"].is_string());
    assert!(info["uptime_secs"].is_u64());
    assert_eq!(info["url"], format!("ws://127.0.0.1:8080/{key}"));
    // Positional params mean the same.
    let positional = c.ok("get_runner_status", json!([name])).await;
    assert_eq!(positional["pid"], info["pid"]);

    // Jobs through the dispatcher.
    let done = c
        .ok("run_job", json!({"runner": name, "script": "40 + 2"}))
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"], "42");
    let seeded = c
        .ok(
            "run_job",
            json!({"runner": name, "script": "db_get(\"seeded\")", "caller_id": "me"}),
        )
        .await;
    assert_eq!(seeded["output"], key, "the init script ran as the circle");
    let who = c
        .ok("run_job", json!([name, "CALLER_ID", 5, "someone"]))
        .await;
    assert_eq!(who["output"], "someone");
    let failed = c
        .ok(
            "run_job",
            json!({"runner": name, "script": "throw \"boom\""}),
        )
        .await;
    assert_eq!(failed["status"], "error");
    assert!(
        failed["error"].as_str().unwrap().contains("boom"),
        "{failed}"
    );
    let job_id = c
        .ok(
            "queue_job_to_runner",
            json!({"runner": name, "script": "6 * 7"}),
        )
        .await;
    let job_id = job_id.as_str().unwrap().to_string();
    let mut status = Value::Null;
    for _ in 0..200 {
        status = c.ok("get_job_status", json!({"job_id": job_id})).await;
        if status["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["output"], "42");
    assert!(status["created_at"].is_string() && status["updated_at"].is_string());
    // The init script and five jobs.
    let info = wait_for(c, name, "tasks counted", |i| {
        i["tasks_done"].as_u64() >= Some(6)
    })
    .await;
    assert_eq!(info["tasks_done"], 6, "{info}");

    // Logs: the worker's own lines, oldest first, bounded by `lines`.
    let logs = c
        .ok("get_runner_logs", json!({"name": name, "lines": 200}))
        .await;
    let logs: Vec<String> = serde_json::from_value(logs).unwrap();
    assert!(logs.iter().any(|l| l.contains("worker ready")), "{logs:?}");
    let two = c
        .ok("get_runner_logs", json!({"name": name, "lines": 2}))
        .await;
    assert_eq!(two.as_array().unwrap().len(), 2);
    let future = c
        .ok(
            "get_runner_logs",
            json!({"name": name, "since": "2099-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(future, json!([]));

    // stop / start / restart, each answered once the state is reached.
    let stopped = c.ok("stop_runner", json!({"name": name})).await;
    assert_eq!(stopped["state"], "stopped");
    assert_eq!(stopped["pid"], Value::Null);
    assert_eq!(stopped["target"], "stopped");
    assert!(!alive(pid), "worker {pid} stopped");
    let started = c.ok("start_runner", json!({"name": name})).await;
    assert_eq!(started["state"], "running");
    let second = started["pid"].as_u64().unwrap();
    let restarted = c.ok("restart_runner", json!({"name": name})).await;
    assert_eq!(restarted["state"], "running");
    assert_ne!(restarted["pid"].as_u64().unwrap(), second, "a new process");
    assert_eq!(
        restarted["restarts"], 0,
        "a restart asked for is not a crash"
    );
}

/// Polls `get_runner_status` until `f` holds.
async fn wait_for(c: &mut Client, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        let info = c.ok("get_runner_status", json!({"name": name})).await;
        if f(&info) {
            return info;
        }
        assert!(start.elapsed() < UP, "timed out waiting for {what}: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_method_over_raw_http_and_a_raw_websocket() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(tmp.path(), &redis.url(), &[], &[]);

    let mut http = Client::Http(daemon.http());
    lifecycle(&mut http, "over-http", KEY_ONE, tmp.path()).await;
    let mut ws = Client::Ws(Box::new(daemon.ws().await));
    lifecycle(&mut ws, "over-ws", KEY_TWO, tmp.path()).await;

    // Both runners are there, seen from either transport.
    let all = http.ok("get_all_runner_status", json!({})).await;
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["over-http", "over-ws"]);
    let status = ws.ok("get_all_status", json!({})).await;
    assert_eq!(status["runners"]["total"], 2);
    assert_eq!(status["runners"]["running"], 2);
    assert_eq!(status["redis"], "ok");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));

    // The fleet: every circle in Redis with its host (issue 9), as
    // `launcher status --fleet` shows it.
    let fleet = http.ok("get_fleet", json!({})).await;
    let fleet = fleet.as_array().unwrap();
    assert_eq!(fleet.len(), 2, "{fleet:?}");
    for (entry, name) in fleet.iter().zip(["over-http", "over-ws"]) {
        let info = ws.ok("get_runner_status", json!({ "name": name })).await;
        assert_eq!(entry["circle"], info["circle_public_key"], "{entry}");
        assert_eq!(entry["state"], "live", "{entry}");
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(entry["host"], host.trim());
        assert_eq!(entry["pid"], info["pid"], "{entry}");
        assert!(entry["owner"]["token"].as_u64().unwrap() >= 1, "{entry}");
    }

    // Log subscription over the WebSocket: a restart writes new lines.
    let Client::Ws(w) = &mut ws else {
        unreachable!()
    };
    let sub = w
        .ok("subscribe_runner_logs", json!({"name": "over-http"}))
        .await;
    assert!(sub.is_string() || sub.is_number(), "{sub}");
    http.ok("restart_runner", json!({"name": "over-http"}))
        .await;
    let mut seen = Vec::new();
    while let Some(n) = w.notification(Duration::from_secs(20)).await {
        assert_eq!(n["method"], "runner_log", "{n}");
        let line = n["params"]["result"].as_str().unwrap().to_string();
        let done = line.contains("worker ready");
        seen.push(line);
        if done {
            break;
        }
    }
    assert!(seen.iter().any(|l| l.contains("worker ready")), "{seen:?}");
    // Over HTTP a subscription is refused, not hung.
    let r = daemon
        .http()
        .call("subscribe_runner_logs", json!({"name": "over-http"}));
    assert!(r.get("error").is_some(), "{r}");

    // Bulk calls answer per runner.
    let stopped = ws.ok("stop_all", json!([])).await;
    assert_eq!(
        stopped,
        json!([{"name": "over-http", "ok": true}, {"name": "over-ws", "ok": true}])
    );
    let counts = http.ok("get_all_status", json!({})).await;
    assert_eq!(counts["runners"]["stopped"], 2);
    let started = http.ok("start_all", json!({})).await;
    assert_eq!(
        started,
        json!([{"name": "over-http", "ok": true}, {"name": "over-ws", "ok": true}])
    );

    // The seed's curl, verbatim but for the port (3030 is not ours to take).
    if let Ok(out) = std::process::Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"jsonrpc":"2.0","method":"list_runners","id":1}"#,
            &format!("http://127.0.0.1:{}", daemon.port),
        ])
        .output()
    {
        let v: Value = serde_json::from_slice(&out.stdout).expect("curl got JSON");
        assert_eq!(v["result"], json!(["over-http", "over-ws"]), "{v}");
    }

    // remove_runner: process gone, name gone, data kept.
    let pid = http
        .ok("get_runner_status", json!({"name": "over-ws"}))
        .await["pid"]
        .as_u64()
        .unwrap() as u32;
    assert_eq!(
        ws.ok("remove_runner", json!({"name": "over-ws"})).await,
        Value::Null
    );
    assert!(!alive(pid));
    assert_eq!(
        http.ok("list_runners", json!({})).await,
        json!(["over-http"])
    );
    assert_eq!(redis.cli(&["SISMEMBER", "rhai_circles", KEY_TWO]), "0");
    // The state file records what is left, readable by its owner only.
    let state = tmp.path().join("supervisor.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&state).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert!(!std::fs::read_to_string(&state).unwrap().contains("over-ws"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let mut redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let bad_worker = script(
        tmp.path(),
        "bad-worker",
        "#!/bin/sh\necho 'cannot start: config broken' >&2\nexit 3\n",
    );
    let daemon = Daemon::start(tmp.path(), &redis.url(), &[], &[]);
    let h = daemon.http();
    h.ok(
        "add_runner",
        json!({"name": "alpha", "circle_public_key": KEY_ONE, "start": true}),
    );

    // A worker binary someone else could swap: its own directory is fine,
    // but the one above is world-writable (not sticky), so anybody could
    // rename `bin` and put another in its place. Refused when the
    // supervisor runs as root.
    let open_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        open_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::fs::create_dir(open_dir.path().join("bin")).unwrap();
    let swappable = open_dir.path().join("bin/worker");
    std::fs::copy(circles_test_support::binary("worker"), &swappable).unwrap();
    let mut cases: Vec<(&str, Value, i64, &str)> = Vec::new();
    if rustix::process::geteuid().is_root() {
        cases.push((
            "add_runner",
            json!({"name": "beta", "circle_public_key": KEY_TWO, "worker_binary": swappable}),
            -32602,
            "must be owned by root and not writable by group or others",
        ));
    }
    cases.extend([
        (
            "get_runner_status",
            json!({"name": "ghost"}),
            -32010,
            "runner `ghost` not found",
        ),
        ("start_runner", json!(["ghost"]), -32010, "not found"),
        (
            "remove_runner",
            json!({"name": "ghost"}),
            -32010,
            "not found",
        ),
        (
            "get_runner_logs",
            json!({"name": "ghost"}),
            -32010,
            "not found",
        ),
        (
            "queue_job_to_runner",
            json!({"runner": "ghost", "script": "1"}),
            -32010,
            "not found",
        ),
        (
            "add_runner",
            json!({"name": "alpha", "circle_public_key": KEY_TWO}),
            -32011,
            "runner `alpha` already exists",
        ),
        (
            "add_runner",
            json!({"name": "beta", "circle_public_key": KEY_ONE}),
            -32011,
            "already has runner `alpha`",
        ),
        (
            "add_runner",
            json!({"name": "beta", "circle_public_key": "02xyz"}),
            -32012,
            "invalid public key `02xyz`",
        ),
        (
            "add_runner",
            json!({"name": "beta", "circle_public_key": &KEY_TWO[..40]}),
            -32012,
            "expected a secp256k1 public key",
        ),
        (
            "add_runner",
            json!({"name": "../etc", "circle_public_key": KEY_TWO}),
            -32602,
            "invalid runner name",
        ),
        (
            "add_runner",
            json!({"name": "beta", "circle_public_key": KEY_TWO, "worker_binary": "/nonexistent/worker"}),
            -32602,
            "worker binary /nonexistent/worker does not exist",
        ),
        (
            "add_runner",
            json!({"name": "beta", "circle_public_key": KEY_TWO, "env": {"REDIS_URL": "x"}}),
            -32602,
            "set by the supervisor",
        ),
        (
            "add_runner",
            json!({"name": "beta", "circle_public_key": KEY_TWO, "manager": "docker"}),
            -32602,
            "unknown variant `docker`",
        ),
        (
            "add_runner",
            json!({"name": "beta", "circle_pubkey": KEY_TWO}),
            -32602,
            "unknown field `circle_pubkey`",
        ),
        (
            "get_runner_status",
            json!([]),
            -32602,
            "missing field `name`",
        ),
        (
            "list_runners",
            json!(["extra"]),
            -32602,
            "at most 0 positional",
        ),
        (
            "get_job_status",
            json!({"job_id": "not-a-uuid"}),
            -32602,
            "is not a job id",
        ),
        (
            "get_job_status",
            json!({"job_id": "7d3c2d8e-6a57-4c55-9e7e-2f7f8f0b1a11"}),
            -32015,
            "not found",
        ),
        (
            "run_job",
            json!({"runner": "alpha", "script": "   "}),
            -32602,
            "the script is empty",
        ),
        (
            "run_job",
            json!({"runner": "alpha", "script": "1", "timeout_secs": 0}),
            -32602,
            "out of range",
        ),
        (
            "get_runner_logs",
            json!({"name": "alpha", "since": "yesterday"}),
            -32602,
            "RFC 3339",
        ),
        ("no_such_method", json!({}), -32601, ""),
    ]);
    for (method, params, code, needle) in &cases {
        let r = h.call(method, params.clone());
        assert_eq!(error_code(&r), *code, "{method} {params}: {r}");
        assert!(error_message(&r).contains(needle), "{method} {params}: {r}");
    }
    // Malformed JSON and a wrong envelope.
    let (status, body) = h.post("{\"jsonrpc\": \"2.0\", \"method\": ");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("HTTP {status}: {body}"));
    assert_eq!(error_code(&v), -32700, "{v}");
    let (_, body) = h.post("[]");
    assert!(body.contains("error"), "{body}");
    let mut ws = daemon.ws().await;
    ws.send_text("this is not json").await;
    assert_eq!(error_code(&ws.recv().await), -32700);

    // A worker that crashes at once: add_runner with start fails with the
    // reason and its last log lines, and leaves nothing behind.
    let r = h.call(
        "add_runner",
        json!({"name": "crashy", "circle_public_key": KEY_TWO, "start": true,
               "worker_binary": bad_worker}),
    );
    assert_eq!(error_code(&r), -32013, "{r}");
    let msg = error_message(&r);
    assert!(msg.contains("runner `crashy` did not start"), "{msg}");
    assert!(msg.contains("exit status 3"), "{msg}");
    assert!(
        msg.contains("cannot start: config broken"),
        "last log lines: {msg}"
    );
    assert_eq!(
        r["error"]["data"]["last_log_lines"][0],
        "cannot start: config broken"
    );
    assert_eq!(h.ok("list_runners", json!({})), json!(["alpha"]));
    assert!(
        !std::fs::read_to_string(tmp.path().join("supervisor.json"))
            .unwrap()
            .contains("crashy")
    );

    // A runner that is stopped takes no run_job (nothing queued).
    h.ok(
        "add_runner",
        json!({"name": "idle", "circle_public_key": KEY_TWO}),
    );
    let r = h.call("run_job", json!({"runner": "idle", "script": "1"}));
    assert_eq!(error_code(&r), -32004, "{r}");
    assert!(
        error_message(&r).contains("runner `idle` is stopped: start it first"),
        "{r}"
    );
    assert_eq!(redis.cli(&["LLEN", &format!("rhai_tasks:{KEY_TWO}")]), "0");

    // A job that outlives its timeout: -32016 naming the job, which can
    // still be looked up. (A long job ahead of it holds the worker.)
    h.ok(
        "queue_job_to_runner",
        json!({"runner": "alpha", "script": "let x = 0; loop { x += 1; }", "timeout_secs": 3}),
    );
    let r = h.call(
        "run_job",
        json!({"runner": "alpha", "script": "1", "timeout_secs": 1}),
    );
    assert_eq!(error_code(&r), -32016, "{r}");
    let job = r["error"]["data"]["job_id"].as_str().unwrap().to_string();
    assert!(error_message(&r).contains(&job));
    let status = h.ok("get_job_status", json!({"job_id": job}));
    assert!(["pending", "processing", "completed"].contains(&status["status"].as_str().unwrap()));

    // Redis down: job calls say so, status still answers (without Redis
    // numbers), and the supervisor keeps running.
    redis.stop();
    let r = h.call("run_job", json!({"runner": "alpha", "script": "1"}));
    assert_eq!(error_code(&r), -32000, "{r}");
    assert!(error_message(&r).contains("Redis"), "{r}");
    let started = std::time::Instant::now();
    let info = h.ok("get_runner_status", json!({"name": "alpha"}));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(info["queue_depth"], Value::Null);
    assert_ne!(h.ok("get_all_status", json!({}))["redis"], "ok");
    redis.restart();
    wait_until("Redis back for jobs", UP, || {
        let r = h.call(
            "run_job",
            json!({"runner": "alpha", "script": "2 + 2", "timeout_secs": 10}),
        );
        (r["result"]["output"] == "4").then_some(())
    });
    assert!(
        daemon.stderr().contains("supervisor API on"),
        "{}",
        daemon.stderr()
    );
}

#[test]
fn the_supervisor_example_adds_two_runners_runs_a_job_and_stops() {
    let redis = RedisServer::start();
    let example = circles_test_support::target_dir().join("examples/supervisor_example");
    // supervisor_example is built by scripts/test.sh (cargo build --examples).
    let stdout = stdout_of(
        std::process::Command::new(&example)
            .env("REDIS_URL", redis.url())
            .env("SUPERVISOR_PORT", "0"),
    );
    assert!(stdout.contains("added ourworld: running"), "{stdout}");
    assert!(stdout.contains("init ok: threefold ready"), "{stdout}");
    assert!(
        stdout.contains("completed Some(\"hello from ourworld\")"),
        "{stdout}"
    );
    assert!(stdout.contains("stopped"), "{stdout}");
    // Its workers are gone: no heartbeat is refreshed any more.
    wait_until("heartbeats to go", UP, || {
        redis
            .cli(&["KEYS", "rhai_worker:*"])
            .is_empty()
            .then_some(())
    });
}
