//! The launcher in direct mode, as a user runs it: the real binary, real
//! worker processes, a real Redis, a WebSocket client.

mod common;

use std::time::Duration;

use circles_test_support::ws::Client;
use circles_test_support::{
    KEY_ONE, KEY_TWO, RedisServer, WorkerProcess, free_port, repo_root, stdout_of, wait_until,
};
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

    // Issue 10 item 4: a circle is addressed as the table shows it — by
    // name, key prefix or shortened key — here from its direct-mode log.
    let alpha = &keys[0];
    let shortened = format!("{}…{}", &alpha[..8], &alpha[alpha.len() - 6..]);
    for query in ["alpha", &alpha[..6], &shortened, alpha.as_str()] {
        let (code, out, err) = run_to_end(tmp.path(), &["logs", query]);
        assert_eq!(code, Some(0), "logs {query}: {err}");
        assert!(out.contains("worker ready"), "logs {query}:\n{out}");
        assert!(out.contains(alpha.as_str()), "alpha's own log: {out}");
    }
    let (code, _, err) = run_to_end(tmp.path(), &["logs", "gamma"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no circle `gamma` here: known circles are alpha (") && err.contains("beta ("),
        "{err}"
    );
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
    common::kill(first, "-9");
    let second = wait_until("a new worker", UP, || {
        let pid = worker_pid(&redis, KEY_ONE);
        (pid != first && alive(pid)).then_some(pid)
    });
    assert!(!alive(first));
    let mut c = Client::connect(&format!("ws://127.0.0.1:{port}/{KEY_ONE}")).await;
    assert_eq!(c.play("6 * 7").await, "42");
    // The last exit is the signal, not an exit code.
    l.wait_stderr("exited, killed by signal 9 (SIGKILL); restarting in", UP);
    // Tidy logs (issue 10 item 6): a pid is a number, not `Some(…)`.
    let log = l.stderr();
    assert!(log.contains(&format!("pid={first}")), "{log}");
    assert!(!log.contains("Some("), "{log}");
    l.signal("INT");
    assert_eq!(l.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(!alive(second), "worker stopped with the launcher");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_circle_served_elsewhere_fails_with_its_reason_and_the_rest_keep_serving() {
    // Issue 10 item 1: KEY_ONE already has a worker (another data
    // directory, same Redis), so the launcher's own worker for it refuses.
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = WorkerProcess::start(&redis, KEY_ONE, other_dir.path(), &[], &[]);
    let port = free_port().to_string();
    let mut l = Launcher::spawn(
        tmp.path(),
        &[
            "--redis-url",
            &redis.url(),
            "-p",
            &port,
            "-c",
            KEY_ONE,
            "-c",
            KEY_TWO,
        ],
    );
    l.wait_stderr("1 of 2 circles up; not serving: circle-0279be66", UP);
    // The reason printed whole under the table ends what stdout shows
    // (another pipe, read by another thread).
    let reason = format!("is already served by pid {} on host", other.pid());
    l.wait_stdout(&reason, UP);
    let out = l.stdout();
    let err = l.stderr();
    // Never "circles are up" while one is not.
    assert!(!err.contains("circles are up"), "{err}");
    let row = out
        .lines()
        .find(|line| line.contains("circle-0279be66"))
        .expect("a row for the failed circle");
    // The restart count and the message agree; the reason is the worker's
    // own; the heartbeat shown is not the other worker's.
    assert!(row.contains("failed"), "{row}");
    assert!(row.contains("4 (exit 1)"), "{row}");
    assert!(
        err.contains("gave up after 4 restarts (5 failures in a row"),
        "{err}"
    );
    assert!(row.contains("already served by pid"), "{row}");
    assert!(
        out.contains(&reason),
        "whole reason under the table:\n{out}"
    );
    let cells: Vec<&str> = row.split('┆').map(str::trim).collect();
    assert_eq!(cells[6], "-", "heartbeat of another worker shown: {row}");
    // The same reason is said once per cause in the log: not at every
    // restart.
    assert_eq!(err.matches("exited again, same reason").count(), 3, "{err}");
    // The table is not printed twice for the same picture.
    let tables = out.matches("┌").count();
    assert_eq!(tables, 1, "{out}");
    // The other circle serves.
    let mut c = Client::connect(&format!("ws://127.0.0.1:{port}/{KEY_TWO}")).await;
    assert_eq!(c.play("6 * 7").await, "42");
    l.signal("INT");
    assert_eq!(l.wait_exit(Duration::from_secs(20)), Some(0));
}

#[test]
fn when_no_circle_can_be_served_the_launcher_fails_with_the_reasons() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let bad = write(
        tmp.path(),
        "bad-worker",
        "#!/bin/sh\necho 'starting' >&2\necho 'error: cannot start: no config' >&2\nexit 3\n",
    );
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let port = free_port().to_string();
    let started = std::time::Instant::now();
    let (code, out, err) = run_to_end(
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
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(started.elapsed() < UP);
    assert!(
        err.contains("error: no circle could be served; stopped everything this run started:\n  circle-0279be66: cannot start: no config (exited before becoming ready, exit status 3); gave up after 4 restarts"),
        "{err}"
    );
    assert!(
        !err.contains("circles are up") && !err.contains("circles up"),
        "{err}"
    );
    // The failure table was shown, with the reason column.
    assert!(
        out.contains("Reason") && out.contains("4 (exit 3)"),
        "{out}"
    );
    assert!(
        std::fs::read_to_string(tmp.path().join("launch_data/logs/circle-0279be66.log"))
            .unwrap()
            .contains("cannot start")
    );
    // Nothing is left listening.
    assert!(std::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap())).is_ok());
}

#[test]
fn an_init_script_that_fails_fails_the_direct_run_and_stops_what_it_started() {
    // Issue 10 item 2: as in service mode, the run fails (exit 1); direct
    // mode leaves nothing running.
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let init = write(tmp.path(), "bad.rhai", "let x = ;");
    let port = free_port().to_string();
    let (code, out, err) = run_to_end(
        tmp.path(),
        &[
            "--redis-url",
            &redis.url(),
            "-p",
            &port,
            "-c",
            &format!("{KEY_ONE}:{init}"),
        ],
    );
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(
        err.contains("error: init script of circle circle-0279be66 failed: syntax error: Unexpected ';' (line 1, position 9)\nstopped everything this run started"),
        "{err}"
    );
    assert!(
        out.contains("error: syntax error"),
        "the table shows it too: {out}"
    );
    // The worker is gone: its heartbeat was removed on its way out.
    assert_eq!(
        redis.cli(&["EXISTS", &format!("rhai_worker:{KEY_ONE}")]),
        "0"
    );
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

    // First with the private Redis's directory deleted under it: told to
    // stop, Redis saves first, and by default refuses to exit when it
    // cannot — it must go all the same.
    for (how, data_gone) in [("KILL", true), ("INT", false), ("KILL", false)] {
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
        if data_gone {
            std::fs::remove_dir_all(tmp.path().join("launch_data/redis")).unwrap();
        }
        // How each worker was told to stop, from its log: SIGTERM (from the
        // launcher, or from the kernel's parent-death signal when the
        // launcher was SIGKILLed), never by noticing later that its parent
        // is gone.
        let worker_log = |k: &str| {
            std::fs::read_to_string(
                tmp.path()
                    .join(format!("launch_data/logs/circle-{}.log", &k[..8])),
            )
            .unwrap_or_default()
        };
        let sigterms = |k: &str| worker_log(k).matches("SIGTERM received").count();
        let before: Vec<usize> = [KEY_ONE, KEY_TWO].iter().map(|k| sigterms(k)).collect();
        l.signal(how);
        let code = l.wait_exit(Duration::from_secs(20));
        if how == "INT" {
            assert_eq!(code, Some(0));
        }
        for pid in &pids {
            wait_until(
                &format!("worker {pid} gone after SIG{how} (data gone: {data_gone})"),
                Duration::from_secs(15),
                || (!alive(*pid)).then_some(()),
            );
        }
        for (k, before) in [KEY_ONE, KEY_TWO].iter().zip(before) {
            assert_eq!(
                sigterms(k),
                before + 1,
                "worker {k} after SIG{how}: {}",
                worker_log(k)
            );
            assert!(!worker_log(k).contains("supervising process is gone"));
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
        (
            vec!["--redis-url", "http://x", "-c", KEY_ONE],
            "invalid Redis URL `http://x`",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["--redis-url", &url, "-p", &free];
        if extra.contains(&"-p") {
            args.truncate(2);
        }
        if extra.contains(&"--redis-url") {
            args.drain(..2);
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
        // Issue 10 item 6: a cause is said once, never "No such file or
        // directory (os error 2): No such file or directory (os error 2)".
        assert!(err.matches("(os error").count() <= 1, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line:\n{err}");
    }
    // A mistyped subcommand is a mistyped subcommand, not a config file
    // (issue 10 item 6): clap's usage error and suggestion.
    for (typo, meant) in [
        ("stauts", "status"),
        ("clenup", "cleanup"),
        ("keygn", "keygen"),
    ] {
        let (code, _, err) = run_to_end(tmp.path(), &[typo]);
        assert_eq!(code, Some(2), "{typo}: {err}");
        assert!(
            err.contains(&format!("unrecognized subcommand '{typo}'")),
            "{err}"
        );
        assert!(
            err.contains(&format!("a similar subcommand exists: '{meant}'")),
            "{err}"
        );
    }
    // A word far from every subcommand is still read as a config path.
    let (code, _, err) = run_to_end(tmp.path(), &["--redis-url", &url, "mycircles"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("circles config mycircles: cannot read it"),
        "{err}"
    );
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
    // circle_launcher_example is built by scripts/test.sh (cargo build --examples).
    let stdout = stdout_of(std::process::Command::new(&example).env("REDIS_URL", redis.url()));
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

/// A directory of links to every program on `PATH` except `redis-server`:
/// the PATH of a machine where it is not installed (issue 10 item 9).
fn path_without_redis_server(dir: &std::path::Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in std::env::split_paths(&std::env::var_os("PATH").unwrap()) {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("redis-server") {
                continue;
            }
            let link = bin.join(&name);
            if !link.exists() {
                let _ = std::os::unix::fs::symlink(entry.path(), link);
            }
        }
    }
    bin.to_string_lossy().into_owned()
}

#[test]
fn the_run_script_asks_for_redis_server_when_it_is_missing() {
    // redis-server hidden from PATH, nothing answering at the URL, and
    // installing disabled (as for a user who is not root): the exact hint,
    // exit 1, and nothing built or started. (As root without
    // CIRCLES_NO_INSTALL the script runs `apt-get install -y redis-server`
    // instead, the same step scripts/test.sh takes; not run here, where it
    // would change the machine.)
    let tmp = tempfile::tempdir().unwrap();
    let path = path_without_redis_server(tmp.path());
    let nobody = format!("redis://127.0.0.1:{}", free_port());
    let out = std::process::Command::new(repo_root().join("scripts/run.sh"))
        .env("PATH", &path)
        .env("REDIS_URL", &nobody)
        .env("CIRCLES_NO_INSTALL", "1")
        // Were it to get that far, it would run this instead of building.
        .env("CIRCLES_LAUNCHER", "/nonexistent/launcher")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "error: nothing answers at {nobody} and redis-server is not installed."
        )) && err.contains("Debian/Ubuntu:  sudo apt-get install -y redis-server")
            && err.contains("macOS:          brew install redis"),
        "{err}"
    );
    assert!(!err.contains("launching"), "{err}");

    // A Redis elsewhere needs no local redis-server: straight to the
    // launcher (here `echo`, which shows the arguments it would get); the
    // demo's circles.json only when the options name no circles.
    let remote = |args: &[&str]| {
        stdout_of(
            std::process::Command::new(repo_root().join("scripts/run.sh"))
                .args(args)
                .env("PATH", &path)
                .env("REDIS_URL", "redis://db.example:6379")
                .env("CIRCLES_NO_INSTALL", "1")
                .env("CIRCLES_LAUNCHER", "/bin/echo"),
        )
        .trim()
        .to_string()
    };
    assert_eq!(remote(&["-p", "9000"]), "-p 9000 examples/circles.json");
    assert_eq!(remote(&["-c", KEY_ONE]), format!("-c {KEY_ONE}"));
    // --redis-url among the options counts as REDIS_URL does.
    stdout_of(
        std::process::Command::new(repo_root().join("scripts/run.sh"))
            .args(["--redis-url", "redis://db.example:6379", "-p", "9000"])
            .env("PATH", &path)
            .env("REDIS_URL", &nobody)
            .env("CIRCLES_NO_INSTALL", "1")
            .env("CIRCLES_LAUNCHER", "/bin/echo"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_run_script_brings_the_demo_circles_up() {
    // The README's run command with the real redis-server: nothing answers
    // at the URL, so the launcher starts a private one; both demo circles
    // come up with their init scripts. (CIRCLES_LAUNCHER: the launcher this
    // test run built — a nested `cargo build` would wait on the lock of the
    // `cargo test` running this.)
    let tmp = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let scripts = repo_root().join("scripts");
    let config = tmp.path().join("circles.json");
    std::fs::write(
        &config,
        serde_json::json!([
            {"name": "ourworld", "port": p1, "script_path": scripts.join("ourworld.rhai")},
            {"name": "threefold", "port": p2, "script_path": scripts.join("threefold.rhai")},
        ])
        .to_string(),
    )
    .unwrap();
    let redis_port = free_port();
    let port = free_port().to_string();
    let data = tmp.path().join("data");
    let child = std::process::Command::new(repo_root().join("scripts/run.sh"))
        .args(["-p", &port, "--data-dir"])
        .arg(&data)
        .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
        .env("CIRCLES_CONFIG", &config)
        .env("CIRCLES_LAUNCHER", circles_test_support::binary("launcher"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut l = Launcher::from_child(child);
    l.wait_stderr("2 circles up; Ctrl+C stops them", UP);
    // stdout is another pipe, read by another thread: waited for, not
    // assumed to be there as soon as stderr says the circles are up.
    l.wait_stdout("ok: OurWorld: 3 members", UP);
    l.wait_stdout("ok: threefold ready", UP);
    assert!(
        l.stderr().contains("started a private redis-server"),
        "{}",
        l.stderr()
    );
    let mut c = Client::connect(&format!("ws://127.0.0.1:{p1}/")).await;
    assert_eq!(c.play(r#"db_get("circle:name")"#).await, "OurWorld");
    l.signal("INT");
    assert_eq!(l.wait_exit(Duration::from_secs(20)), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_worker_shows_offline_and_running_again_once_it_beats() {
    // The process runs, but a frozen worker beats no more: after its
    // heartbeat expires (10 s) the table says `offline` without any
    // process event, and `running` once it beats again.
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let mut l = Launcher::spawn(
        tmp.path(),
        &["--redis-url", &redis.url(), "-p", &port, "-c", KEY_ONE],
    );
    l.wait_stdout("running", UP);
    let pid = worker_pid(&redis, KEY_ONE);
    common::kill(pid, "-STOP");
    l.wait_stdout("┆ offline ", Duration::from_secs(30));
    common::kill(pid, "-CONT");
    wait_until("running again", Duration::from_secs(30), || {
        let out = l.stdout();
        let after = &out[out.rfind("┆ offline ")?..];
        after.contains("┆ running ").then_some(())
    });
    l.signal("INT");
    assert_eq!(l.wait_exit(Duration::from_secs(20)), Some(0));
}
