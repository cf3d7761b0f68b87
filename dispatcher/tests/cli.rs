//! The `dispatcher` CLI as scripts and people use it, against a real Redis
//! and a real worker.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use circles_test_support::{KEY_ONE, KEY_TWO, RedisServer, WorkerProcess, binary, free_port};

fn dispatcher(redis_url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(binary("dispatcher"))
        .args(["--redis-url", redis_url])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

#[test]
fn scripts_inline_from_a_file_and_on_stdin() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &[], &[]);
    let url = redis.url();

    let out = dispatcher(&url, &["run", "-c", KEY_ONE, "40 + 2"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "42");

    let file = db.path().join("s.rhai");
    std::fs::write(&file, "CALLER_ID").unwrap();
    let out = dispatcher(
        &url,
        &[
            "run",
            "-c",
            KEY_ONE,
            "--caller",
            "ops",
            "--file",
            file.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(text(&out.stdout), "ops");

    let out = dispatcher(&url, &["run", "-c", KEY_ONE], Some("CONTEXT_ID"));
    assert_eq!(text(&out.stdout), KEY_ONE);

    let out = dispatcher(&url, &["--json", "run", "-c", KEY_ONE, "[1, 2]"], None);
    let v: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(v, serde_json::json!({"ok": true, "output": "[1,2]"}));
}

#[test]
fn failures_have_their_own_exit_codes() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &[], &[]);
    let url = redis.url();

    let out = dispatcher(&url, &["run", "-c", KEY_ONE, r#"throw "nope""#], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("nope"), "{}", text(&out.stderr));
    let out = dispatcher(
        &url,
        &["--json", "run", "-c", KEY_ONE, r#"throw "nope""#],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(v["kind"], "script_error");
    assert!(v["task_id"].is_string());

    let out = dispatcher(&url, &["run", "-c", "02bad", "1"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid public key `02bad`"),
        "{}",
        text(&out.stderr)
    );

    // No worker serves KEY_TWO: told at once, not after the timeout
    // (regression: issue 10 item 5 waited out 30 s and said "timed out").
    let started = std::time::Instant::now();
    let out = dispatcher(&url, &["run", "-c", KEY_TWO, "1"], None);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!(
            "circle {KEY_TWO} is offline: no live worker serves it (never seen)"
        )),
        "{}",
        text(&out.stderr)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // ... and nothing was queued for a worker to run later.
    assert_eq!(redis.cli(&["LLEN", &format!("rhai_tasks:{KEY_TWO}")]), "0");
    // Asked to wait for a worker, it queues and waits out its timeout.
    let out = dispatcher(
        &url,
        &[
            "run",
            "-c",
            KEY_TWO,
            "--wait-for-worker",
            "--timeout",
            "1",
            "1",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("timed out"));

    let dead = format!("redis://127.0.0.1:{}", free_port());
    let out = dispatcher(&dead, &["run", "-c", KEY_ONE, "1"], None);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out.stderr).contains("Redis unreachable"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn submit_then_wait_then_status() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let url = redis.url();
    // Submitted before any worker runs: it waits in the queue.
    let out = dispatcher(&url, &["submit", "-c", KEY_ONE, "6 * 7"], None);
    let id = text(&out.stdout);
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let out = dispatcher(&url, &["status", &id], None);
    assert!(text(&out.stdout).contains("pending"));

    let _w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &[], &[]);
    let out = dispatcher(&url, &["wait", &id], None);
    assert_eq!(text(&out.stdout), "42");
    // The one reply was taken; a second wait learns the outcome from the
    // task hash at once instead of blocking for its whole timeout.
    let started = std::time::Instant::now();
    let out = dispatcher(&url, &["wait", &id, "--timeout", "20"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "42");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "it did not wait out the timeout"
    );

    // An id that was never submitted (or expired) is reported as such.
    let out = dispatcher(
        &url,
        &["wait", "00000000-0000-4000-8000-000000000000"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );
    let out = dispatcher(&url, &["--json", "status", &id], None);
    let v: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(v["status"], "completed");
    assert_eq!(v["context_id"], KEY_ONE);

    let out = dispatcher(&url, &["status", "not-a-uuid"], None);
    assert_eq!(out.status.code(), Some(2));
}
