//! The worker against a real Redis, as its users see it: through the
//! dispatcher, the task hashes and signals.

use std::time::Duration;

use circles_dispatcher::{CirclePublicKey, DispatchError, Dispatcher, TaskStatus};
use circles_test_support::{KEY_ONE, KEY_TWO, RedisServer, WorkerProcess, binary, wait_until};

const T: Duration = Duration::from_secs(10);

fn circle(key: &str) -> CirclePublicKey {
    key.parse().unwrap()
}

async fn dispatcher(redis: &RedisServer) -> Dispatcher {
    Dispatcher::connect(&redis.url(), "tester").await.unwrap()
}

fn script_error(r: Result<String, DispatchError>) -> String {
    match r {
        Err(DispatchError::ScriptError { message, .. }) => message,
        other => panic!("expected a script error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_errors_and_identity_constants() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &[], &[]);
    let d = dispatcher(&redis).await;
    let c = circle(KEY_ONE);

    assert_eq!(d.run(&c, "40 + 2", T).await.unwrap(), "42");
    let msg = script_error(d.run(&c, r#"throw "no such thing""#, T).await);
    assert!(msg.contains("no such thing"), "{msg}");
    assert_eq!(d.run(&c, "CONTEXT_ID", T).await.unwrap(), KEY_ONE);
    assert_eq!(
        d.run_as(&c, "CALLER_ID", T, "alice").await.unwrap(),
        "alice"
    );

    // The hash tells the same story, with the SPEC's fields.
    let id = d.submit(&c, "1 + 1", T).await.unwrap();
    assert_eq!(d.await_result(&id, T).await.unwrap(), "2");
    let rec = d.status(&id).await.unwrap();
    assert_eq!(rec.status, Some(TaskStatus::Completed));
    assert_eq!(rec.output.as_deref(), Some("2"));
    assert_eq!(rec.context_id.as_deref(), Some(KEY_ONE));
    assert_eq!(rec.caller_id.as_deref(), Some("tester"));
    assert!(rec.created_at.is_some() && rec.updated_at.is_some());
    // Finished tasks expire after the retention period.
    let ttl: i64 = redis
        .cli(&["TTL", &format!("rhai_task_details:{id}")])
        .parse()
        .unwrap();
    assert!(ttl > 0, "finished task should have a TTL, got {ttl}");

    // An uncompressed key names the same circle.
    let unc = c.to_uncompressed_hex();
    assert_eq!(
        d.run(&CirclePublicKey::parse(&unc).unwrap(), "CONTEXT_ID", T)
            .await
            .unwrap(),
        KEY_ONE
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn database_persists_across_tasks_and_restarts() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let c = circle(KEY_ONE);
    {
        let _w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &[], &[]);
        let d = dispatcher(&redis).await;
        d.run(&c, r#"db_set("greeting", #{text: "hello", n: 1})"#, T)
            .await
            .unwrap();
        assert_eq!(
            d.run(&c, r#"db_get("greeting").text"#, T).await.unwrap(),
            "hello"
        );
        assert_eq!(
            d.run(&c, r#"db_insert("notes", "a")"#, T).await.unwrap(),
            "1"
        );
        assert_eq!(
            d.run(&c, r#"db_insert("notes", "b")"#, T).await.unwrap(),
            "2"
        );
    }
    // A new worker process on the same data directory sees it all.
    let _w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &[], &[]);
    let d = dispatcher(&redis).await;
    assert_eq!(d.run(&c, r#"db_get("greeting").n"#, T).await.unwrap(), "1");
    assert_eq!(
        d.run(&c, r#"db_insert("notes", "c")"#, T).await.unwrap(),
        "3"
    );
    assert_eq!(
        d.run(&c, r#"db_keys("notes:")"#, T).await.unwrap(),
        r#"["notes:1","notes:2","notes:3"]"#
    );
    // Circles do not share databases.
    let _w2 = WorkerProcess::start(&redis, KEY_TWO, db.path(), &[], &[]);
    assert_eq!(
        d.run(&circle(KEY_TWO), r#"db_get("greeting")"#, T)
            .await
            .unwrap(),
        ""
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_end_runaway_scripts_and_the_worker_keeps_serving() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _w = WorkerProcess::start(
        &redis,
        KEY_ONE,
        db.path(),
        &["--max-operations", "200000", "--max-string-size", "10000"],
        &[],
    );
    let d = dispatcher(&redis).await;
    let c = circle(KEY_ONE);
    let msg = script_error(d.run(&c, "loop { }", T).await);
    assert!(msg.contains("operations limit"), "{msg}");
    let msg = script_error(d.run(&c, r#"let s = "ab"; loop { s += s; }"#, T).await);
    assert!(msg.contains("string size limit"), "{msg}");
    assert_eq!(d.run(&c, "6 * 7", T).await.unwrap(), "42");
}

#[tokio::test(flavor = "multi_thread")]
async fn wall_time_limit_comes_from_the_task_timeout() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &["--max-operations", "0"], &[]);
    let d = dispatcher(&redis).await;
    let c = circle(KEY_ONE);
    // The client waits 1 s; the script is stopped at 1 s, so the client gets
    // the error (it waits a little longer than the task's own timeout).
    let id = d
        .submit(&c, "loop { }", Duration::from_secs(1))
        .await
        .unwrap();
    let msg = script_error(d.await_result(&id, T).await);
    assert!(msg.contains("wall time limit (1.0s)"), "{msg}");
    assert_eq!(d.run(&c, "1", T).await.unwrap(), "1");
}

/// Waits until the worker has taken `task` (its status is `processing`).
fn wait_taken(redis: &RedisServer, task: &circles_dispatcher::TaskId) {
    wait_until("task taken", T, || {
        (redis.cli(&["HGET", &format!("rhai_task_details:{task}"), "status"]) == "processing")
            .then_some(())
    });
}

/// A script that keeps the worker busy for `secs` seconds.
fn slow_script(secs: f64) -> String {
    format!("let t = timestamp(); while t.elapsed < {secs} {{ }} \"slept\"")
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_mid_task_the_task_ends_as_error_and_the_queue_survives() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let args = ["--max-operations", "0"];
    let w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &args, &[]);
    let d = dispatcher(&redis).await;
    let c = circle(KEY_ONE);

    let slow = d.submit(&c, &slow_script(30.0), T).await.unwrap();
    let behind: Vec<_> = submit_numbers(&d, &c, 3).await;
    wait_taken(&redis, &slow);
    // Marked processing by Redis's clock in the take's round trip: after
    // it was created, not after now, in the same format.
    let rec = d.status(&slow).await.unwrap();
    let (created, updated) = (rec.created_at.unwrap(), rec.updated_at.unwrap());
    assert_eq!(updated.len(), created.len(), "{updated} vs {created}");
    assert!(created <= updated, "{created} > {updated}");
    assert!(
        updated <= circles_dispatcher::task::now_rfc3339(),
        "{updated}"
    );
    let waiter = {
        let d = d.clone();
        tokio::spawn(async move { d.await_result(&slow, Duration::from_secs(30)).await })
    };
    w.signal("KILL");
    drop(w);

    let _w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &args, &[]);
    let msg = script_error(waiter.await.unwrap());
    assert!(msg.contains("killed or crashed"), "{msg}");
    assert_eq!(
        d.status(&slow).await.unwrap().status,
        Some(TaskStatus::Error)
    );
    for (i, id) in behind.iter().enumerate() {
        assert_eq!(d.await_result(id, T).await.unwrap(), i.to_string());
    }
    assert_eq!(
        redis.cli(&["LLEN", &format!("rhai_processing:{KEY_ONE}")]),
        "0"
    );
}

async fn submit_numbers(
    d: &Dispatcher,
    c: &CirclePublicKey,
    n: usize,
) -> Vec<circles_dispatcher::TaskId> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(d.submit(c, &i.to_string(), T).await.unwrap());
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnects_after_redis_restarts() {
    let mut redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &[], &[]);
    let c = circle(KEY_ONE);
    assert_eq!(dispatcher(&redis).await.run(&c, "1", T).await.unwrap(), "1");

    redis.restart();
    // Same process, fresh Redis: it comes back on its own (heartbeat again).
    w.wait_ready(&redis);
    let d = dispatcher(&redis).await;
    assert_eq!(d.run(&c, "2 + 2", T).await.unwrap(), "4");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_or_answered_and_the_worker_keeps_going() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();

    // An invalid key: non-zero exit, the message names the value.
    let out = std::process::Command::new(binary("worker"))
        .args([
            "--redis-url",
            &redis.url(),
            "--circle-public-key",
            "02nothex",
            "--db-path",
        ])
        .arg(db.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`02nothex`") && err.contains("66"), "{err}");

    let _w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &[], &[]);
    let d = dispatcher(&redis).await;
    let c = circle(KEY_ONE);
    let queue = format!("rhai_tasks:{KEY_ONE}");

    // A hash without a script.
    let id = uuid_like(1);
    redis.cli(&[
        "HSET",
        &format!("rhai_task_details:{id}"),
        "status",
        "pending",
    ]);
    redis.cli(&["LPUSH", &queue, &id]);
    let reply = redis.cli(&["BLPOP", &format!("rhai_reply:{id}"), "10"]);
    assert!(reply.contains("has no script"), "{reply}");
    assert_eq!(
        redis.cli(&["HGET", &format!("rhai_task_details:{id}"), "status"]),
        "error"
    );

    // A queued id with no hash at all, and one that is not a UUID.
    let ghost = uuid_like(2);
    redis.cli(&["LPUSH", &queue, &ghost]);
    assert!(
        redis
            .cli(&["BLPOP", &format!("rhai_reply:{ghost}"), "10"])
            .contains("no details hash")
    );
    redis.cli(&["LPUSH", &queue, "not-a-uuid"]);
    assert!(
        redis
            .cli(&["BLPOP", "rhai_reply:not-a-uuid", "10"])
            .contains("not a UUID")
    );

    // Garbage bytes in every field.
    let junk = uuid_like(3);
    let key = format!("rhai_task_details:{junk}");
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'HSET {key} script \"\\xff\\xfe\" timeout_secs abc caller_id \"\\xc3\\x28\"\\r\\nLPUSH {queue} {junk}\\r\\n' | redis-cli -p {}",
            redis.port()
        ))
        .status()
        .unwrap();
    let reply = redis.cli(&["BLPOP", &format!("rhai_reply:{junk}"), "10"]);
    assert!(reply.contains("error"), "{reply}");

    // Timeouts past what a date can hold (10^13 s overflowed the expiry
    // check, i64::MAX the duration: each a panic that killed the worker).
    for (n, timeout) in [(4, "10000000000000"), (5, "9223372036854775807")] {
        let id = write_task(
            &redis,
            n,
            &[
                "created_at",
                "2026-12-01T00:00:00Z",
                "timeout_secs",
                timeout,
            ],
        );
        redis.cli(&["LPUSH", &queue, &id]);
        let reply = redis.cli(&["BLPOP", &format!("rhai_reply:{id}"), "10"]);
        assert!(reply.contains("42"), "timeout {timeout}: {reply}");
    }

    assert_eq!(d.run(&c, "\"still here\"", T).await.unwrap(), "still here");
}

fn uuid_like(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_task_in_hand_and_ends_queued_ones() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let mut w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &["--max-operations", "0"], &[]);
    let d = dispatcher(&redis).await;
    let c = circle(KEY_ONE);

    let slow = d.submit(&c, &slow_script(1.5), T).await.unwrap();
    let queued = submit_numbers(&d, &c, 2).await;
    wait_taken(&redis, &slow);
    w.signal("TERM");
    assert_eq!(d.await_result(&slow, T).await.unwrap(), "slept");
    assert_eq!(w.wait_exit(T), Some(0));
    for id in &queued {
        let msg = script_error(d.await_result(id, T).await);
        assert!(msg.contains("worker shut down"), "{msg}");
    }
    assert_eq!(
        redis.cli(&["EXISTS", &format!("rhai_worker:{KEY_ONE}")]),
        "0",
        "heartbeat removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_preserve_tasks_keeps_queued_tasks_for_the_next_worker() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let env = [("PRESERVE_TASKS", "1")];
    let args = ["--max-operations", "0"];
    let mut w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &args, &env);
    let d = dispatcher(&redis).await;
    let c = circle(KEY_ONE);

    let slow = d.submit(&c, &slow_script(1.0), T).await.unwrap();
    let queued = submit_numbers(&d, &c, 2).await;
    wait_taken(&redis, &slow);
    w.signal("INT");
    assert_eq!(d.await_result(&slow, T).await.unwrap(), "slept");
    assert_eq!(w.wait_exit(T), Some(0));
    assert_eq!(redis.cli(&["LLEN", &format!("rhai_tasks:{KEY_ONE}")]), "2");
    for id in &queued {
        assert_eq!(
            d.status(id).await.unwrap().status,
            Some(TaskStatus::Pending)
        );
    }
    // With PRESERVE_TASKS finished tasks do not expire.
    assert_eq!(
        redis.cli(&["TTL", &format!("rhai_task_details:{slow}")]),
        "-1"
    );

    let _w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &args, &env);
    for (i, id) in queued.iter().enumerate() {
        assert_eq!(d.await_result(id, T).await.unwrap(), i.to_string());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_queued_on_stop_keeps_the_queue_but_finished_tasks_still_expire() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let args = ["--max-operations", "0", "--keep-queued-on-stop"];
    let mut w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &args, &[]);
    let d = dispatcher(&redis).await;
    let c = circle(KEY_ONE);
    assert_eq!(d.run(&c, "1", T).await.unwrap(), "1");
    let slow = d.submit(&c, &slow_script(1.0), T).await.unwrap();
    let queued = submit_numbers(&d, &c, 2).await;
    wait_taken(&redis, &slow);
    w.signal("TERM");
    assert_eq!(d.await_result(&slow, T).await.unwrap(), "slept");
    assert_eq!(w.wait_exit(T), Some(0));
    assert_eq!(redis.cli(&["LLEN", &format!("rhai_tasks:{KEY_ONE}")]), "2");
    let ttl: i64 = redis
        .cli(&["TTL", &format!("rhai_task_details:{slow}")])
        .parse()
        .unwrap();
    assert!(ttl > 0, "finished tasks keep expiring, got TTL {ttl}");
    let _w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &args, &[]);
    for (i, id) in queued.iter().enumerate() {
        assert_eq!(d.await_result(id, T).await.unwrap(), i.to_string());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_worker_for_a_live_circle_refuses_without_touching_its_tasks() {
    let redis = RedisServer::start();
    let (db1, db2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = WorkerProcess::start(&redis, KEY_ONE, db1.path(), &["--max-operations", "0"], &[]);
    let d = dispatcher(&redis).await;
    let c = circle(KEY_ONE);
    // The first worker is busy with a task when the second one starts.
    let slow = d.submit(&c, &slow_script(1.0), T).await.unwrap();
    wait_taken(&redis, &slow);
    let out = std::process::Command::new(binary("worker"))
        .args([
            "--redis-url",
            &redis.url(),
            "--circle-public-key",
            KEY_ONE,
            "--db-path",
        ])
        .arg(db2.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "circle {KEY_ONE} is already served by pid {} on host {}",
            first.pid(),
            circles_worker::lease::host_name()
        )),
        "{err}"
    );
    // The first worker's task was not ended as abandoned: it completes.
    assert_eq!(d.await_result(&slow, T).await.unwrap(), "slept");
    assert_eq!(d.run(&c, "1", T).await.unwrap(), "1");
}

#[test]
fn two_workers_of_a_circle_on_one_data_directory_say_who_holds_it() {
    // Two Redis servers, so the circle's lease cannot tell the workers
    // apart: the database lock is what stops the second (issue 10 item 6).
    let (redis_a, redis_b) = (RedisServer::start(), RedisServer::start());
    let db = tempfile::tempdir().unwrap();
    let first = WorkerProcess::start(&redis_a, KEY_ONE, db.path(), &[], &[]);
    let out = WorkerProcess::command(&redis_b, KEY_ONE, db.path(), &[])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let holder = format!(
        "is in use by pid {} (worker --circle-public-key {KEY_ONE})",
        first.pid()
    );
    assert!(err.contains(&holder), "{err}");
    // Nothing else of the holder's command line: it may carry a secret.
    assert!(!err.contains(&redis_a.url()), "{err}");
    assert!(!err.contains("Cannot acquire lock"), "{err}");
    assert_eq!(err.matches(" ERROR ").count(), 1, "said once: {err}");
}

#[test]
fn with_redis_down_the_worker_says_so_at_once_and_stops_at_once() {
    // Issue 10 item 7: silent for ~9.5 s, then 4 s to exit on SIGTERM.
    use std::io::BufRead;
    let db = tempfile::tempdir().unwrap();
    let nobody = format!("redis://127.0.0.1:{}", circles_test_support::free_port());
    let mut child = std::process::Command::new(binary("worker"))
        .args([
            "--redis-url",
            &nobody,
            "--circle-public-key",
            KEY_ONE,
            "--db-path",
        ])
        .arg(db.path())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(3))
        .expect("a log line within 3 s of starting with Redis down");
    assert!(first.contains("Redis error while connecting"), "{first}");
    assert!(first.contains("Connection refused"), "{first}");
    let logged_after = started.elapsed();
    let stop = std::time::Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = wait_until("the worker to exit", Duration::from_secs(10), || {
        child.try_wait().unwrap()
    });
    let stopped_after = stop.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        stopped_after < Duration::from_millis(1500),
        "SIGTERM took {stopped_after:?} (first log after {logged_after:?})"
    );
    // Nothing was created for a circle it never served.
    assert_eq!(std::fs::read_dir(db.path()).unwrap().count(), 0);
}

/// A worker whose lease another worker took (it was paused or cut off past
/// the lease's life) must not finish what it holds: it gives the tasks back
/// to the queue for the owner, leaves the owner's heartbeat alone, and stops
/// naming the owner. Nothing is ended as an error, nothing is stuck in the
/// processing list, and the owner runs everything once.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_lost_its_circle_gives_its_tasks_back_and_stops() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let args = ["--max-operations", "0"];
    let mut a = WorkerProcess::start(&redis, KEY_ONE, db.path(), &args, &[]);
    let d = dispatcher(&redis).await;
    let c = circle(KEY_ONE);
    let slow = d.submit(&c, &slow_script(1.5), T).await.unwrap();
    let queued = submit_numbers(&d, &c, 2).await;
    wait_taken(&redis, &slow);

    // Another host takes the circle over while A runs the slow task.
    let owner_key = format!("rhai_owner:{KEY_ONE}");
    let other = r#"{"host":"elsewhere","pid":4242,"pid_namespace":"pid:[1]","instance":"other","token":99,"since":"2026-12-01T00:00:00.000Z"}"#;
    redis.cli(&["SET", &owner_key, other, "PX", "60000"]);

    let code = tokio::task::block_in_place(|| a.wait_exit(T));
    assert_eq!(
        code,
        Some(1),
        "the worker that lost its circle stops with an error"
    );
    let processing = redis.cli(&["LLEN", &format!("rhai_processing:{KEY_ONE}")]);
    assert_eq!(
        processing,
        "0",
        "left in the processing list: {}",
        redis.cli(&["LRANGE", &format!("rhai_processing:{KEY_ONE}"), "0", "-1"])
    );
    assert_eq!(redis.cli(&["LLEN", &format!("rhai_tasks:{KEY_ONE}")]), "3");
    for id in std::iter::once(&slow).chain(&queued) {
        let status = redis.cli(&["HGET", &format!("rhai_task_details:{id}"), "status"]);
        assert_ne!(status, "error", "task {id} was ended as an error");
        assert_ne!(
            status, "completed",
            "task {id} was finished by a worker without the lease"
        );
    }
    // The owner's lease is untouched.
    assert_eq!(redis.cli(&["GET", &owner_key]), other);

    // The owner (here: the lease freed, a new worker) runs them all.
    redis.cli(&["DEL", &owner_key]);
    let _b = WorkerProcess::start(&redis, KEY_ONE, db.path(), &args, &[]);
    let all: Vec<_> = std::iter::once(slow)
        .chain(queued.iter().copied())
        .collect();
    wait_until("all tasks completed", T, || {
        all.iter()
            .all(|id| {
                redis.cli(&["HGET", &format!("rhai_task_details:{id}"), "status"]) == "completed"
            })
            .then_some(())
    });
    // Exactly one reply each: the worker that lost the circle pushed none.
    for id in &all {
        assert_eq!(redis.cli(&["LLEN", &format!("rhai_reply:{id}")]), "1");
    }
    assert_eq!(d.await_result(&slow, T).await.unwrap(), "slept");
    for (i, id) in queued.iter().enumerate() {
        assert_eq!(d.await_result(id, T).await.unwrap(), i.to_string());
    }
}

/// Issue 9 (backups of live circles): a snapshot task writes the whole
/// database, read in one transaction, to a private file under the worker's
/// own `snapshots/` directory and says where; an unknown task kind is
/// refused without running the task's script.
#[tokio::test(flavor = "multi_thread")]
async fn snapshot_tasks_write_the_database_where_the_worker_chooses() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &[], &[]);
    let d = dispatcher(&redis).await;
    let c = circle(KEY_ONE);
    d.run(
        &c,
        r#"db_insert("n", 1); db_insert("n", 2); db_set("k", "v")"#,
        T,
    )
    .await
    .unwrap();

    let report = d.snapshot(&c, T).await.unwrap();
    assert_eq!((report.values, report.counters), (3, 1));
    let file = std::path::PathBuf::from(&report.file);
    assert_eq!(file.parent().unwrap(), db.path().join("snapshots"));
    assert_eq!(report.host, circles_worker::lease::host_name());
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(
        text.contains(r#"{"t":"counter","collection":"n","last_id":2}"#),
        "{text}"
    );
    assert!(text.contains(r#""key":"k","json":"\"v\"""#), "{text}");

    // A kind this worker does not know: refused, and the script is not run.
    let id = uuid_like(9);
    redis.cli(&[
        "HSET",
        &format!("rhai_task_details:{id}"),
        "kind",
        "format-disk",
        "script",
        r#"db_set("ran", true)"#,
        "status",
        "pending",
    ]);
    redis.cli(&["LPUSH", &format!("rhai_tasks:{KEY_ONE}"), &id]);
    let reply = redis.cli(&["BLPOP", &format!("rhai_reply:{id}"), "10"]);
    assert!(reply.contains("unknown task kind `format-disk`"), "{reply}");
    assert_eq!(d.run(&c, r#"db_get("ran")"#, T).await.unwrap(), "");

    // Offline circles get no snapshot request queued.
    let err = d.snapshot(&circle(KEY_TWO), T).await.unwrap_err();
    assert!(matches!(err, DispatchError::CircleOffline { .. }), "{err}");
    assert_eq!(redis.cli(&["LLEN", &format!("rhai_tasks:{KEY_TWO}")]), "0");
}

/// A take whose answer a broken connection swallowed (Redis moved the id,
/// the worker never heard of it) is found in the processing list once the
/// worker reconnects, and run — not left until the next worker starts.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_taken_by_a_lost_answer_is_still_run() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &[], &[]);
    let d = dispatcher(&redis).await;
    let c = circle(KEY_ONE);
    assert_eq!(d.run(&c, "1", T).await.unwrap(), "1");

    let id = plant_stray(&redis, 7);
    // Break the worker's connections: its BLMOVE fails.
    redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);

    let reply = redis.cli(&["BLPOP", &format!("rhai_reply:{id}"), "10"]);
    assert!(
        reply.contains("42"),
        "no answer for the stray task: {reply:?}"
    );
    assert_eq!(
        redis.cli(&["HGET", &format!("rhai_task_details:{id}"), "status"]),
        "completed"
    );
    // And the worker still serves.
    assert_eq!(d.run(&c, "2", T).await.unwrap(), "2");
}

/// What a lost `BLMOVE` answer leaves: task `n` (`6 * 7`) in circle one's
/// processing list, taken by nobody that knows it. Returns its id.
fn plant_stray(redis: &RedisServer, n: u32) -> String {
    let id = write_task(redis, n, &[]);
    redis.cli(&["LPUSH", &format!("rhai_processing:{KEY_ONE}"), &id]);
    id
}

/// Writes task `n`'s hash by hand (`6 * 7`, pending, plus `fields`), as
/// another Redis client could; returns its id.
fn write_task(redis: &RedisServer, n: u32, fields: &[&str]) -> String {
    let id = uuid_like(n);
    let key = format!("rhai_task_details:{id}");
    let mut args = vec!["HSET", &key, "script", "6 * 7", "status", "pending"];
    args.extend_from_slice(fields);
    redis.cli(&args);
    id
}

/// A stop that comes while the worker backs off from a failed take: the id
/// that take may have moved was never run, so it goes back to the queue —
/// with `--keep-queued-on-stop` the next worker runs it, instead of ending
/// it as "killed or crashed".
#[tokio::test(flavor = "multi_thread")]
async fn a_stray_of_a_failed_take_goes_back_to_the_queue_when_stopped_in_backoff() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let args = ["--keep-queued-on-stop"];
    let mut w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &args, &[]);
    let d = dispatcher(&redis).await;
    let c = circle(KEY_ONE);
    assert_eq!(d.run(&c, "1", T).await.unwrap(), "1");

    let id = plant_stray(&redis, 9);
    let processing = format!("rhai_processing:{KEY_ONE}");
    // Every take, and every look for what a take left, now fails: the
    // worker backs off, again and again.
    assert_eq!(
        redis.cli(&["ACL", "SETUSER", "default", "-blmove", "-evalsha", "-eval"]),
        "OK"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Frozen in its backoff, Redis mended, the stop sent, thawed: the stop
    // is there when it wakes, whichever of its timer and the signal the
    // runtime sees first.
    w.signal("STOP");
    assert_eq!(redis.cli(&["ACL", "SETUSER", "default", "+@all"]), "OK");
    w.signal("TERM");
    w.signal("CONT");
    assert_eq!(w.wait_exit(T), Some(0));
    assert_eq!(redis.cli(&["LLEN", &processing]), "0", "not left taken");
    assert_eq!(
        redis.cli(&["LRANGE", &format!("rhai_tasks:{KEY_ONE}"), "0", "-1"]),
        id,
        "back in the queue"
    );

    // The next worker runs it.
    let _next = WorkerProcess::start(&redis, KEY_ONE, db.path(), &args, &[]);
    let reply = redis.cli(&["BLPOP", &format!("rhai_reply:{id}"), "10"]);
    assert!(
        reply.contains("42"),
        "not run by the next worker: {reply:?}"
    );
    assert_eq!(
        redis.cli(&["HGET", &format!("rhai_task_details:{id}"), "status"]),
        "completed"
    );
}

/// A `SCRIPT FLUSH` (Redis forgets the scripts the worker sends by hash)
/// costs one failed take: the worker loads its take script again, and every
/// task is still answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_script_flush_loses_no_task_and_the_take_script_comes_back() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _w = WorkerProcess::start(&redis, KEY_ONE, db.path(), &[], &[]);
    let d = dispatcher(&redis).await;
    let c = circle(KEY_ONE);
    let take_script = circles_worker::queue::take_script_sha1();
    assert_eq!(d.run(&c, "1", T).await.unwrap(), "1");
    assert_eq!(redis.cli(&["SCRIPT", "EXISTS", take_script]), "1");
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    assert_eq!(redis.cli(&["SCRIPT", "EXISTS", take_script]), "0");
    for i in 2..6 {
        assert_eq!(d.run(&c, &i.to_string(), T).await.unwrap(), i.to_string());
    }
    assert_eq!(redis.cli(&["SCRIPT", "EXISTS", take_script]), "1");
}
