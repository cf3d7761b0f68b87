//! The launcher in direct mode, as a user runs it: the real binary, real
//! worker processes, a real Redis, a WebSocket client.

mod common;

use std::time::Duration;

use circles_test_support::ws::Client;
use circles_test_support::{KEY_ONE, KEY_TWO, RedisServer, free_port, repo_root, wait_until};
use common::{Launcher, alive, run_to_end, worker_pid};

const UP: Duration = Duration::from_secs(60);

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_circles_answer_on_their_paths_and_init_scripts_ran() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let init1 = write(
        tmp.path(),
        "one.rhai",
        r#"db_set("who", "one:" + CALLER_ID); "seeded one""#,
    );
    let init2 = write(
        tmp.path(),
        "two.rhai",
        r#"db_set("who", "two"); "seeded two""#,
    );
    let port = free_port().to_string();
    let mut l = Launcher::spawn(
        tmp.path(),
        &[
            "--redis-url",
            &redis.url(),
            "-p",
            &port,
            "-c",
            &format!("{KEY_ONE}:{init1}"),
            "-c",
            &format!("{KEY_TWO}:{init2}"),
        ],
    );
    l.wait_stdout("ok: seeded two", UP);
    let table = l.stdout();
    assert!(table.contains("ok: seeded one"), "{table}");
    assert!(
        table.contains(&format!("ws://127.0.0.1:{port}/{KEY_ONE}")),
        "{table}"
    );

    for (key, who) in [
        (KEY_ONE, format!("one:{KEY_ONE}")),
        (KEY_TWO, "two".to_string()),
    ] {
        let mut c = Client::connect(&format!("ws://127.0.0.1:{port}/{key}")).await;
        assert_eq!(c.play("CONTEXT_ID").await, key);
        // The init script's write is in this circle's own database.
        assert_eq!(c.play(r#"db_get("who")"#).await, who);
    }
    // Data lives in the data directory, one database per circle.
    assert!(
        tmp.path()
            .join(format!("launch_data/circle_db_{KEY_ONE}.redb"))
            .exists()
    );

    l.signal("INT");
    assert_eq!(l.wait_exit(Duration::from_secs(20)), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn circles_json_keys_are_generated_once_and_each_circle_has_its_own_port() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    write(tmp.path(), "a.rhai", r#"db_set("n", 1); "a ready""#);
    write(
        tmp.path(),
        "circles.json",
        &format!(
            r#"[{{"name":"alpha","port":{pa},"script_path":"a.rhai"}},{{"name":"beta","port":{pb}}}]"#
        ),
    );
    let main_port = free_port().to_string();
    let args = [
        "--redis-url",
        &redis.url(),
        "-p",
        &main_port,
        "circles.json",
    ];
    let mut keys = Vec::new();
    for round in 0..2 {
        let mut l = Launcher::spawn(tmp.path(), &args);
        l.wait_stdout("ok: a ready", UP);
        let alpha: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join("launch_data/keys/alpha.json")).unwrap(),
        )
        .unwrap();
        let alpha_key = alpha["public_key"].as_str().unwrap().to_string();
        // Each circle answers on its own port at `/`, and on the main port by path.
        let mut c = Client::connect(&format!("ws://127.0.0.1:{pa}/")).await;
        assert_eq!(c.play("CONTEXT_ID").await, alpha_key, "round {round}");
        let mut c = Client::connect(&format!("ws://127.0.0.1:{main_port}/{alpha_key}")).await;
        assert_eq!(c.play("CONTEXT_ID").await, alpha_key);
        let mut b = Client::connect(&format!("ws://127.0.0.1:{pb}/")).await;
        assert_ne!(b.play("CONTEXT_ID").await, alpha_key);
        keys.push(alpha_key);
        l.signal("TERM");
        assert_eq!(l.wait_exit(Duration::from_secs(20)), Some(0));
    }
    assert_eq!(keys[0], keys[1], "same identity on the next start");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_is_restarted_and_serves_again() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let mut l = Launcher::spawn(
        tmp.path(),
        &["--redis-url", &redis.url(), "-p", &port, "-c", KEY_ONE],
    );
    l.wait_stdout("running", UP);
    let first = worker_pid(&redis, KEY_ONE);
    // The Redis URL (which may carry a password) is in the worker's
    // environment, not in its argv where `ps` shows it to every user.
    let cmdline = std::fs::read(format!("/proc/{first}/cmdline")).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(&redis.url()),
        "{cmdline:?}"
    );
    let environ = std::fs::read(format!("/proc/{first}/environ")).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains(&format!("REDIS_URL={}", redis.url())));
    std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    let second = wait_until("a new worker", UP, || {
        let pid = worker_pid(&redis, KEY_ONE);
        (pid != first && alive(pid)).then_some(pid)
    });
    assert!(!alive(first));
    let mut c = Client::connect(&format!("ws://127.0.0.1:{port}/{KEY_ONE}")).await;
    assert_eq!(c.play("6 * 7").await, "42");
    // The last exit is the signal, not an exit code.
    l.wait_stderr("exited (killed by signal 9 (SIGKILL)); restarting in", UP);
    l.signal("INT");
    assert_eq!(l.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(!alive(second), "worker stopped with the launcher");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_exits_at_once_is_marked_failed_not_restarted_forever() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let bad = write(
        tmp.path(),
        "bad-worker",
        "#!/bin/sh\necho 'cannot start' >&2\nexit 3\n",
    );
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let port = free_port().to_string();
    let mut l = Launcher::spawn(
        tmp.path(),
        &[
            "--redis-url",
            &redis.url(),
            "-p",
            &port,
            "--worker-binary",
            &bad,
            "-c",
            KEY_ONE,
        ],
    );
    l.wait_stdout("failed", UP);
    let out = l.stdout();
    assert!(
        out.contains("4 (exit 3)"),
        "restarted 4 times, then gave up:\n{out}"
    );
    assert!(l.stderr().contains("not restarting"), "{}", l.stderr());
    // It stays failed: no further restarts.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        l.child.try_wait().unwrap().is_none(),
        "launcher keeps running"
    );
    assert!(!l.stdout().contains("5 (exit 3)"));
    assert!(
        std::fs::read_to_string(tmp.path().join("launch_data/logs/circle-0279be66.log"))
            .unwrap()
            .contains("cannot start")
    );
    l.signal("INT");
    assert_eq!(l.wait_exit(Duration::from_secs(20)), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_and_sigkill_leave_no_process_behind() {
    let tmp = tempfile::tempdir().unwrap();
    // Nothing listens here: the launcher starts its own private Redis.
    let redis_port = free_port();
    let url = format!("redis://127.0.0.1:{redis_port}");
    let port = free_port().to_string();
    let args = [
        "--redis-url",
        &url,
        "-p",
        &port,
        "-c",
        KEY_ONE,
        "-c",
        KEY_TWO,
    ];

    for how in ["INT", "KILL"] {
        let mut l = Launcher::spawn(tmp.path(), &args);
        l.wait_stdout("running", UP);
        assert!(
            l.stderr().contains("started a private redis-server"),
            "{}",
            l.stderr()
        );
        let redis_cli = |a: &[&str]| {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &redis_port.to_string()])
                .args(a)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let pids: Vec<u32> = [KEY_ONE, KEY_TWO]
            .iter()
            .map(|k| {
                let beat = redis_cli(&["GET", &format!("rhai_worker:{k}")]);
                serde_json::from_str::<serde_json::Value>(&beat).unwrap()["pid"]
                    .as_u64()
                    .unwrap() as u32
            })
            .collect();
        l.signal(how);
        let code = l.wait_exit(Duration::from_secs(20));
        if how == "INT" {
            assert_eq!(code, Some(0));
        }
        for pid in &pids {
            wait_until(
                &format!("worker {pid} gone after SIG{how}"),
                Duration::from_secs(15),
                || (!alive(*pid)).then_some(()),
            );
        }
        wait_until("private redis gone", Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", redis_port))
                .is_err()
                .then_some(())
        });
    }
    // The private Redis kept its data under the data directory.
    assert!(tmp.path().join("launch_data/redis").is_dir());
}

#[test]
fn every_launcher_error_is_clear_and_changes_nothing() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let free = free_port().to_string();
    let url = redis.url();
    let dead_url = format!("redis://127.0.0.1:{}", free_port());
    let missing_script = format!("{KEY_ONE}:missing.rhai");
    let port_in_use = format!("port {busy_port} is already in use");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-c", "02xyz"], "invalid public key `02xyz`"),
        (
            vec!["-c", &KEY_ONE[..40]],
            "expected a secp256k1 public key in hex",
        ),
        (
            vec!["--use-service-manager", "-c", KEY_ONE],
            "worker binary path required",
        ),
        (
            vec!["-c", &missing_script],
            "failed to read init script missing.rhai",
        ),
        (
            vec!["-c", KEY_ONE, "-c", KEY_ONE],
            "is given more than once",
        ),
        (vec!["-p", &busy_port, "-c", KEY_ONE], &port_in_use),
        (
            vec!["--worker-binary", "/nonexistent/worker", "-c", KEY_ONE],
            "worker binary /nonexistent/worker does not exist",
        ),
        (vec![], "no circles given"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["--redis-url", &url, "-p", &free];
        if extra.contains(&"-p") {
            args.truncate(2);
        }
        args.extend(extra.iter().copied());
        let (code, _out, err) = run_to_end(tmp.path(), &args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in:\n{err}"
        );
        assert!(
            !tmp.path().join("launch_data").exists(),
            "{args:?} created the data directory"
        );
    }
    // Redis unreachable, with autostart off (or not local).
    let (code, _, err) = run_to_end(
        tmp.path(),
        &[
            "--redis-url",
            &dead_url,
            "--no-redis-autostart",
            "-p",
            &free,
            "-c",
            KEY_ONE,
        ],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("Redis unreachable at {dead_url}")),
        "{err}"
    );
    assert!(!tmp.path().join("launch_data").exists());
    // Nothing reached Redis from any of the failed runs.
    assert_eq!(redis.cli(&["DBSIZE"]), "0");
    drop(busy);
}

#[test]
fn keygen_prints_a_valid_pair() {
    let (code, out, _) = run_to_end(&repo_root(), &["keygen", "--json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pk = v["public_key"].as_str().unwrap();
    assert!(circles_dispatcher::CirclePublicKey::parse(pk).is_ok());
    let pair =
        circles_dispatcher::CircleKeypair::from_secret_hex(v["secret_key"].as_str().unwrap())
            .unwrap();
    assert_eq!(pair.public.to_hex(), pk);
}

#[test]
fn the_launcher_example_plays_on_two_circles_and_cleans_up() {
    let redis = RedisServer::start();
    let example = circles_test_support::target_dir().join("examples/circle_launcher_example");
    let out = std::process::Command::new(&example)
        .env("REDIS_URL", redis.url())
        .output()
        .expect("circle_launcher_example is built by scripts/test.sh (cargo build --examples)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ourworld: OurWorld says hello from 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("threefold: this circle says hello from 0"),
        "{stdout}"
    );
    assert!(stdout.contains("cleaned up"), "{stdout}");
    // Its workers are gone: no heartbeat is refreshed any more.
    assert_eq!(redis.cli(&["KEYS", "rhai_worker:*"]), "");
}
