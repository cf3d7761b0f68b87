//! `launcher backup` and `launcher restore` on one host, with a real Redis
//! and real workers: live and offline backups, the round trip of values and
//! auto-increment counters, the refusals that keep a circle from being
//! served twice or overwritten, and damaged files changing nothing.
//! (Across hosts: tests/hosts_netns.rs.)

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use circles_dispatcher::{CirclePublicKey, Dispatcher};
use circles_test_support::{KEY_ONE, RedisServer, WorkerProcess, binary};
use common::run_to_end;

const T: Duration = Duration::from_secs(10);

/// Runs a script on a circle through the dispatcher.
fn play(redis: &RedisServer, key: &str, script: &str) -> String {
    let url = redis.url();
    let circle: CirclePublicKey = key.parse().unwrap();
    let script = script.to_string();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let d = Dispatcher::connect(&url, "test").await.unwrap();
            d.run(&circle, &script, T)
                .await
                .unwrap_or_else(|e| panic!("{script}: {e}"))
        })
}

fn launcher(redis: &RedisServer, data: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let url = redis.url();
    let mut all = args.to_vec();
    all.extend(["--redis-url", &url, "--data-dir", data.to_str().unwrap()]);
    run_to_end(data.parent().unwrap(), &all)
}

fn mode(path: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions()) & 0o777
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn stop(mut worker: WorkerProcess) {
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(T), Some(0));
}

#[test]
fn live_backup_restores_on_another_data_dir_and_ids_continue() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let backup = tmp.path().join("one.backup");
    let worker = WorkerProcess::start(&redis, KEY_ONE, &a, &[], &[]);
    play(
        &redis,
        KEY_ONE,
        r#"db_insert("users", #{name: "ann"}); db_insert("users", #{name: "bob"});
           db_insert("users", #{name: "cy"}); db_delete("users:3"); db_set("motto", "hé\nhó")"#,
    );

    // Live on this host: the worker takes the snapshot; its file is gone after.
    let (code, out, err) = launcher(
        &redis,
        &a,
        &["backup", KEY_ONE, "-o", backup.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("from the live worker pid {}", worker.pid())),
        "{out}"
    );
    assert!(out.contains("3 values, 1 counter"), "{out}");
    assert_eq!(mode(&backup), 0o600);
    assert!(files(&a.join("snapshots")).is_empty(), "snapshot collected");

    // An existing backup file is not replaced without --force.
    let (code, _, err) = launcher(
        &redis,
        &a,
        &["backup", KEY_ONE, "-o", backup.to_str().unwrap()],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("already exists; pass --force"), "{err}");

    // Restoring while the circle is live (anywhere) is refused, naming it.
    let (code, _, err) = launcher(&redis, &b, &["restore", backup.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    let host = circles_worker::lease::host_name();
    assert!(
        err.contains(&format!("is served by pid {} on host {host}", worker.pid())),
        "{err}"
    );
    assert!(files(&b).is_empty(), "nothing written: {:?}", files(&b));

    // Stopped: restore into b, then a second restore is refused.
    stop(worker);
    let (code, out, err) = launcher(&redis, &b, &["restore", backup.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("(3 values, 1 counter)"), "{out}");
    assert!(
        out.contains(&format!("launcher --data-dir {} -c {KEY_ONE}", b.display())),
        "{out}"
    );
    let db_file = PathBuf::from(format!("circle_db_{KEY_ONE}.redb"));
    assert_eq!(files(&b), [db_file]);
    let (code, _, err) = launcher(&redis, &b, &["restore", backup.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is already at"), "{err}");

    // Served from b: the data is there, and ids continue past the deleted 3.
    let worker = WorkerProcess::start(&redis, KEY_ONE, &b, &[], &[]);
    assert_eq!(play(&redis, KEY_ONE, r#"db_get("motto")"#), "hé\nhó");
    assert_eq!(play(&redis, KEY_ONE, r#"db_get("users:2").name"#), "bob");
    assert_eq!(
        play(&redis, KEY_ONE, r#"db_insert("users", #{name: "dee"})"#),
        "4"
    );
    stop(worker);

    // Offline: the file itself is read; the new value is in the backup.
    let second = tmp.path().join("two.backup");
    let (code, out, err) = launcher(
        &redis,
        &b,
        &["backup", KEY_ONE, "-o", second.to_str().unwrap(), "--json"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["header"]["source"], "database file");
    assert_eq!(report["records"]["values"], 4);
    assert_eq!(report["records"]["counters"], 1);
}

#[test]
fn a_named_circle_carries_its_key_file_and_init_script() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    // A circle the launcher generated a key for (as for circles.json).
    let out = std::process::Command::new(binary("launcher"))
        .args(["keygen", "--json"])
        .output()
        .unwrap();
    let pair: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pk = pair["public_key"].as_str().unwrap().to_string();
    let key_json = serde_json::json!({
        "name": "alice", "public_key": pk, "secret_key": pair["secret_key"],
    });
    std::fs::create_dir_all(a.join("keys")).unwrap();
    std::fs::write(a.join("keys/alice.json"), key_json.to_string()).unwrap();
    let init = tmp.path().join("alice-init.rhai");
    std::fs::write(&init, r#"db_set("members", 3)"#).unwrap();
    let worker = WorkerProcess::start(&redis, &pk, &a, &[], &[]);
    play(&redis, &pk, r#"db_set("members", 3)"#);
    stop(worker);

    let backup = tmp.path().join("alice.backup");
    let args = [
        "backup",
        "alice",
        "-o",
        backup.to_str().unwrap(),
        "--init-script",
        init.to_str().unwrap(),
    ];
    let (code, out, err) = launcher(&redis, &a, &args);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("backed up circle alice"), "{out}");
    assert!(
        out.contains("its key file") && out.contains("its init script"),
        "{out}"
    );
    assert_eq!(mode(&backup), 0o600, "it holds a secret key");
    let text = std::fs::read_to_string(&backup).unwrap();
    assert!(text.contains(pair["secret_key"].as_str().unwrap()));

    // A step that fails after the database was written undoes it all:
    // here `keys` is a file, so the key file cannot be written.
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("keys"), "in the way").unwrap();
    let (code, _, err) = launcher(&redis, &b, &["restore", backup.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("keys/alice.json"), "{err}");
    assert_eq!(files(&b), [PathBuf::from("keys")], "rolled back");
    std::fs::remove_file(b.join("keys")).unwrap();

    let (code, out, err) = launcher(&redis, &b, &["restore", backup.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        files(&b),
        [
            PathBuf::from(format!("circle_db_{pk}.redb")),
            PathBuf::from("init/alice.rhai"),
            PathBuf::from("keys/alice.json"),
        ]
    );
    assert_eq!(mode(&b.join("keys/alice.json")), 0o600);
    assert!(out.contains("not run again"), "{out}");
    assert!(out.contains(r#"{"name": "alice", "port": PORT}"#), "{out}");
    // The restored key file is one circles.json runs can use.
    let restored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("keys/alice.json")).unwrap()).unwrap();
    assert_eq!(restored, key_json);

    // By name, the restored init script is found again for the next backup.
    let again = tmp.path().join("again.backup");
    let (code, out, err) = launcher(
        &redis,
        &b,
        &["backup", "alice", "-o", again.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("its init script"), "{out}");

    // Names nobody knows, and keys without a database, say so.
    let (code, _, err) = launcher(&redis, &b, &["backup", "bob", "-o", "x.backup"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no circle `bob` in"), "{err}");
    let (code, _, err) = launcher(&redis, &b, &["backup", KEY_ONE, "-o", "x.backup"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("has no live worker and no database in"),
        "{err}"
    );
    assert!(!tmp.path().join("x.backup").exists());
}

#[test]
fn damaged_or_foreign_backups_are_refused_before_anything_is_written() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let worker = WorkerProcess::start(&redis, KEY_ONE, &a, &[], &[]);
    play(
        &redis,
        KEY_ONE,
        r#"db_set("a", 1); db_set("b", [1, 2]); db_insert("c", 1)"#,
    );
    stop(worker);
    let good = tmp.path().join("good.backup");
    let (code, out, err) = launcher(
        &redis,
        &a,
        &["backup", KEY_ONE, "-o", good.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let text = std::fs::read_to_string(&good).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        6,
        "header, counter, three values, end:\n{text}"
    );

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "truncated",
            lines[..5].join("\n") + "\n",
            "without its end line (truncated?)",
        ),
        (
            "altered value",
            text.replace(r#""json":"1""#, r#""json":"2""#),
            "checksum does not match",
        ),
        (
            "another circle's key in the header",
            text.replace(KEY_ONE, circles_test_support::KEY_TWO),
            "checksum does not match",
        ),
        (
            "not a backup",
            "hello\n".into(),
            "line 1: not a backup line",
        ),
        (
            "empty",
            String::new(),
            "does not start with a circles-backup header",
        ),
        (
            "from the future",
            text.replace(r#""version":1"#, r#""version":9"#),
            "version 9 is not one this launcher reads",
        ),
        (
            "something after the end",
            format!("{text}{}\n", lines[2]),
            "something after the end line",
        ),
        (
            "values out of order",
            [lines[0], lines[1], lines[3], lines[2], lines[4], lines[5]].join("\n") + "\n",
            "values out of order",
        ),
    ];
    for (what, contents, expected) in cases {
        let file = tmp.path().join("bad.backup");
        std::fs::write(&file, contents).unwrap();
        let (code, out, err) = launcher(&redis, &b, &["restore", file.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{what}: {out}");
        assert!(err.contains(expected), "{what}: {err}");
        assert!(files(&b).is_empty(), "{what}: wrote {:?}", files(&b));
    }
    let (code, _, err) = launcher(&redis, &b, &["restore", "/nonexistent.backup"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot open it"), "{err}");

    // The good one still restores.
    let (code, out, err) = launcher(&redis, &b, &["restore", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
}

/// `restore --service-mode` puts the database where service mode's worker
/// looks (`<data>/db/<pk>/`), and `backup` finds it there again.
#[test]
fn service_mode_layout_round_trip() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let (a, s) = (tmp.path().join("a"), tmp.path().join("services"));
    let worker = WorkerProcess::start(&redis, KEY_ONE, &a, &[], &[]);
    play(&redis, KEY_ONE, r#"db_insert("n", 1); db_insert("n", 2)"#);
    stop(worker);
    let first = tmp.path().join("first.backup");
    let (code, out, err) = launcher(
        &redis,
        &a,
        &["backup", KEY_ONE, "-o", first.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{out}{err}");

    let (code, out, err) = launcher(
        &redis,
        &s,
        &["restore", first.to_str().unwrap(), "--service-mode"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let db_dir = s.join("db").join(KEY_ONE);
    assert_eq!(
        files(&s),
        [PathBuf::from(format!(
            "db/{KEY_ONE}/circle_db_{KEY_ONE}.redb"
        ))]
    );
    assert!(
        out.contains(&format!(
            "launcher --use-service-manager --worker-binary PATH --data-dir {} -c {KEY_ONE}",
            s.display()
        )),
        "{out}"
    );

    // The service's worker (its --db-path is that directory) continues the ids.
    let worker = WorkerProcess::start(&redis, KEY_ONE, &db_dir, &[], &[]);
    assert_eq!(play(&redis, KEY_ONE, r#"db_insert("n", 3)"#), "3");
    stop(worker);
    let second = tmp.path().join("second.backup");
    let (code, out, err) = launcher(
        &redis,
        &s,
        &["backup", KEY_ONE, "-o", second.to_str().unwrap(), "--json"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["records"]["values"], 3);
}
