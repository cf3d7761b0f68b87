//! Service mode against a real systemd: the launcher binary installs circles
//! as units, systemd runs and restarts them, the launcher inspects and
//! removes them. Runs inside `scripts/systemd-sandbox` (the test command
//! does that); elsewhere it skips loudly. The tests share one service
//! manager and the one `circle-ws-server` name, so they run one at a time,
//! and each removes what it installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use circles_test_support::ws::Client;
use circles_test_support::{KEY_ONE, KEY_TWO, free_port, stdout_of, systemd_or_skip, wait_until};
use common::world::{
    SERIAL, SERVER_UNIT, World, executable, script, serial_world, worker, worker_unit,
};

#[tokio::test(flavor = "multi_thread")]
async fn two_circles_run_as_services_restart_when_killed_and_show_in_status() {
    let Some((_serial, w)) = serial_world("two_circles_run_as_services", "svc-two").await else {
        return;
    };
    let s1 = script(
        w.dir.path(),
        "one.rhai",
        r#"db_set("who", "one"); "one ready""#,
    );
    let s2 = script(
        w.dir.path(),
        "two.rhai",
        r#"db_set("who", CALLER_ID); "two ready""#,
    );
    let out = w.install(
        &worker(),
        &[format!("{KEY_ONE}:{s1}"), format!("{KEY_TWO}:{s2}")],
        &[],
    );
    assert!(out.contains("3 created, 0 updated, 0 unchanged"), "{out}");
    assert!(
        out.contains("ok: one ready") && out.contains("ok: two ready"),
        "{out}"
    );

    for unit in [
        worker_unit(KEY_ONE),
        worker_unit(KEY_TWO),
        SERVER_UNIT.to_string(),
    ] {
        assert_eq!(w.prop(&unit, "ActiveState"), "active", "{unit}");
        assert_eq!(w.prop(&unit, "Restart"), "always", "{unit}");
        assert_eq!(w.prop(&unit, "Type"), "notify", "{unit}");
    }
    // The service-run server answers, and each circle has its own data.
    let mut c1 = Client::connect(&w.url(KEY_ONE)).await;
    assert_eq!(c1.play(r#"db_get("who")"#).await, "one");
    let mut c2 = Client::connect(&w.url(KEY_TWO)).await;
    assert_eq!(
        c2.play(r#"db_get("who")"#).await,
        KEY_TWO,
        "init script ran with CALLER_ID = the circle"
    );
    assert_eq!(c2.play("CONTEXT_ID").await, KEY_TWO);

    // kill -9 the worker: systemd restarts it and it serves again.
    let unit = worker_unit(KEY_ONE);
    let old = w.main_pid(&unit);
    common::kill(old, "-9");
    wait_until(
        "worker restarted by systemd",
        Duration::from_secs(30),
        || {
            let pid = w.main_pid(&unit);
            (pid != 0 && pid != old && w.prop(&unit, "ActiveState") == "active").then_some(())
        },
    );
    assert_eq!(w.prop(&unit, "NRestarts"), "1");
    let mut c1 = Client::connect(&w.url(KEY_ONE)).await;
    assert_eq!(c1.play("40 + 2").await, "42");

    let row = w.status_row(KEY_ONE);
    assert_eq!(row["restarts"], 1);
    // One state model with direct mode and the supervisor; the last exit
    // is the signal, not systemd's "status 0" of the new process (issue 10
    // item 3).
    assert_eq!(row["state"], "running", "{row}");
    assert_eq!(row["last_exit"], serde_json::json!({"signal": 9}), "{row}");
    assert_eq!(row["reason"], serde_json::Value::Null, "{row}");
    assert_eq!(row["init"], "ok: one ready");
    assert!(row["heartbeat"].is_string(), "{row}");
    assert_eq!(row["url"], w.url(KEY_ONE));
    // Finished tasks expire even though queued ones survive restarts.
    let task_key = w.redis.cli(&["--scan", "--pattern", "rhai_task_details:*"]);
    let task_key = task_key.lines().next().expect("a task hash");
    let ttl: i64 = w.redis.cli(&["TTL", task_key]).parse().unwrap();
    assert!(ttl > 0, "{task_key} has TTL {ttl}");

    // Logs come from the journal; the circle by key, name or key prefix.
    for query in [KEY_ONE, "circle-0279be66", "0279be"] {
        let (code, logs, err) = w.launcher(&["logs", query]);
        assert_eq!(code, Some(0), "logs {query}: {err}");
        assert!(logs.contains("worker ready"), "{logs}");
        assert!(logs.contains(KEY_ONE), "{logs}");
    }
    let (code, _, err) = w.launcher(&["logs", "02"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("`02` matches 2 circles"), "{err}");
    let (_, table, _) = w.launcher(&["status"]);
    assert!(
        table.contains("ws-server") && table.contains("1 (signal 9)"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reruns_restart_only_what_changed_and_dry_run_changes_nothing() {
    let Some((_serial, w)) = serial_world("reruns_restart_only_what_changed", "svc-rerun").await
    else {
        return;
    };
    // A private copy of the worker, so "the binary changed" can be tested.
    let my_worker = w.worker_copy();
    let s2 = script(w.dir.path(), "two.rhai", r#""v1""#);
    let circles = [KEY_ONE.to_string(), format!("{KEY_TWO}:{s2}")];
    w.install(&my_worker, &circles, &[]);
    let pids = |w: &World| {
        [
            worker_unit(KEY_ONE),
            worker_unit(KEY_TWO),
            SERVER_UNIT.into(),
        ]
        .map(|u| w.main_pid(&u))
    };
    let before = pids(&w);

    let out = w.install(&my_worker, &circles, &[]);
    assert!(out.contains("0 created, 0 updated, 3 unchanged"), "{out}");
    assert_eq!(pids(&w), before, "an unchanged re-run restarts nothing");

    // A changed init script restarts only that circle, and runs the script.
    std::fs::write(&s2, r#""v2""#).unwrap();
    let out = w.install(&my_worker, &circles, &[]);
    assert!(out.contains("0 created, 1 updated, 2 unchanged"), "{out}");
    assert!(out.contains("ok: v2"), "{out}");
    let after = pids(&w);
    assert_eq!(after[0], before[0], "circle one untouched");
    assert_ne!(after[1], before[1], "circle two restarted");
    assert_eq!(after[2], before[2], "server untouched");

    // A changed worker binary restarts the workers, not the server.
    // (Deployed the way builds do it: a new file renamed over the old one,
    // since the running one cannot be written.)
    let mut bytes = std::fs::read(&my_worker).unwrap();
    bytes.extend_from_slice(b"\0rebuilt");
    let fresh = my_worker.with_file_name("worker.new");
    std::fs::write(&fresh, bytes).unwrap();
    std::fs::set_permissions(&fresh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&fresh, &my_worker).unwrap();
    let out = w.install(&my_worker, &circles, &[]);
    assert!(out.contains("0 created, 2 updated, 1 unchanged"), "{out}");
    let rebuilt = pids(&w);
    assert_ne!(rebuilt[0], after[0]);
    assert_ne!(rebuilt[1], after[1]);
    assert_eq!(rebuilt[2], after[2]);

    // A later run that adds a circle keeps the one server, which serves it.
    let key3 = circles_dispatcher::CircleKeypair::generate()
        .public
        .to_hex();
    let out = w.install(&my_worker, std::slice::from_ref(&key3), &[]);
    assert!(out.contains("1 created, 0 updated, 1 unchanged"), "{out}");
    assert_eq!(w.main_pid(SERVER_UNIT), after[2]);
    let mut c = Client::connect(&w.url(&key3)).await;
    assert_eq!(c.play("CONTEXT_ID").await, key3);
    let mut c = Client::connect(&w.url(KEY_ONE)).await;
    assert_eq!(c.play("1").await, "1");

    // Leaving out -p keeps the installed server's port (from services.json)
    // instead of moving it to the default.
    let key5 = circles_dispatcher::CircleKeypair::generate()
        .public
        .to_hex();
    let (code, out, err) = w.launcher(&[
        "--use-service-manager",
        "--worker-binary",
        my_worker.to_str().unwrap(),
        "-c",
        &key5,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("1 created, 0 updated, 1 unchanged"), "{out}");
    assert_eq!(w.main_pid(SERVER_UNIT), after[2]);
    let mut c = Client::connect(&w.url(&key5)).await;
    assert_eq!(c.play("CONTEXT_ID").await, key5);

    // Another Redis than the installed services use is refused, not split.
    let (code, _, err) = w.launcher_with_redis(
        "redis://127.0.0.1:1",
        &[
            "--use-service-manager",
            "--worker-binary",
            my_worker.to_str().unwrap(),
            "-c",
            &key5,
        ],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            "the installed circle services use Redis at {}",
            w.redis.url()
        )),
        "{err}"
    );
    assert_eq!(w.main_pid(SERVER_UNIT), after[2]);

    // --dry-run prints the files and changes nothing.
    let key4 = circles_dispatcher::CircleKeypair::generate()
        .public
        .to_hex();
    let (code, out, err) = w.launcher(&[
        "--use-service-manager",
        "--dry-run",
        "--worker-binary",
        my_worker.to_str().unwrap(),
        "-p",
        &w.port,
        "-c",
        &key4,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!(
            "{}: create",
            worker_unit(&key4).trim_end_matches(".service")
        )),
        "{out}"
    );
    assert!(out.contains("ExecStart="), "{out}");
    assert!(
        !Path::new("/etc/systemd/system")
            .join(worker_unit(&key4))
            .exists()
    );
    assert_eq!(w.prop(&worker_unit(&key4), "LoadState"), "not-found");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_install_is_rolled_back() {
    let Some((_serial, w)) = serial_world("a_failing_install_is_rolled_back", "svc-rollback").await
    else {
        return;
    };
    // A worker that cannot start for circle two only.
    let (programs, worker) = circles_test_support::programs_for_units();
    let wrapper = programs.path().join("picky-worker");
    executable(
        &wrapper,
        &format!(
            "#!/bin/sh\ncase \"$*\" in *{KEY_TWO}*) echo 'circle two cannot start' >&2; exit 1;; esac\nexec '{}' \"$@\"\n",
            worker.display()
        ),
    );
    let (code, _out, err) = w.launcher(&[
        "--use-service-manager",
        "--worker-binary",
        wrapper.to_str().unwrap(),
        "-p",
        &w.port,
        "-c",
        KEY_ONE,
        "-c",
        KEY_TWO,
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&worker_unit(KEY_TWO).replace(".service", "")),
        "the error names the failed unit:\n{err}"
    );
    for unit in [
        worker_unit(KEY_ONE),
        worker_unit(KEY_TWO),
        SERVER_UNIT.to_string(),
    ] {
        assert!(
            !Path::new("/etc/systemd/system").join(&unit).exists(),
            "{unit} left on disk:\n{err}"
        );
        assert_ne!(
            w.prop(&unit, "ActiveState"),
            "active",
            "{unit} still running"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_always_failing_worker_stops_at_the_start_limit_and_status_shows_it() {
    let Some((_serial, w)) = serial_world(
        "an_always_failing_worker_stops_at_the_start_limit",
        "svc-limit",
    )
    .await
    else {
        return;
    };
    // Starts fine once (so the install succeeds), then fails on every
    // restart. The marker goes in the circle's database directory: the only
    // place the unit may write (its StateDirectory=).
    let marker = w.data().join("db").join(KEY_ONE).join("started-once");
    let (programs, worker) = circles_test_support::programs_for_units();
    let wrapper = programs.path().join("flaky-worker");
    executable(
        &wrapper,
        &format!(
            "#!/bin/sh\nif [ -e '{m}' ]; then echo 'error: broken now' >&2; exit 7; fi\ntouch '{m}'\nexec '{}' \"$@\"\n",
            worker.display(),
            m = marker.display()
        ),
    );
    w.install(&wrapper, &[KEY_ONE.to_string()], &[]);
    let unit = worker_unit(KEY_ONE);
    common::kill(w.main_pid(&unit), "-9");
    // RestartSec=2, StartLimitBurst=5 in 60 s: it gives up after ~10 s.
    wait_until("start limit hit", Duration::from_secs(60), || {
        (w.prop(&unit, "ActiveState") == "failed").then_some(())
    });
    let row = w.status_row(KEY_ONE);
    assert_eq!(row["state"], "failed", "{row}");
    // The reason is the worker's own last error, from the journal.
    assert!(
        row["reason"].as_str().unwrap().starts_with("broken now ("),
        "{row}"
    );
    // An exit code, told apart from a signal.
    assert_eq!(row["last_exit"], serde_json::json!({"code": 7}), "{row}");
    assert_eq!(row["pid"], serde_json::Value::Null);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        w.prop(&unit, "ActiveState"),
        "failed",
        "no further restarts"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_removes_exactly_our_services_and_is_idempotent() {
    let Some((_serial, w)) =
        serial_world("cleanup_removes_exactly_our_services", "svc-cleanup").await
    else {
        return;
    };
    let foreign = ["other.service", "tf.ourworld.circles-not-ours.service"];
    for unit in foreign {
        std::fs::write(
            Path::new("/etc/systemd/system").join(unit),
            "[Service]\nExecStart=/bin/sleep infinity\n",
        )
        .unwrap();
    }
    w.systemctl(&["daemon-reload"]);
    for unit in foreign {
        w.systemctl(&["start", unit]);
    }
    w.install(&worker(), &[KEY_ONE.to_string(), KEY_TWO.to_string()], &[]);

    let (code, out, err) = w.launcher(&["cleanup"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("3 circle service(s) removed"), "{out}");
    for unit in [
        worker_unit(KEY_ONE),
        worker_unit(KEY_TWO),
        SERVER_UNIT.to_string(),
    ] {
        assert!(!Path::new("/etc/systemd/system").join(&unit).exists());
        assert_eq!(w.prop(&unit, "LoadState"), "not-found", "{unit}");
    }
    for unit in foreign {
        assert_eq!(
            w.prop(unit, "ActiveState"),
            "active",
            "{unit} must survive cleanup"
        );
    }
    // Twice is fine, and the example does the same.
    let (code, out, _) = w.launcher(&["cleanup", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), r#"{"removed":[]}"#);
    w.install(&worker(), &[KEY_ONE.to_string()], &[]);
    let example = circles_test_support::target_dir().join("examples/cleanup_example");
    // cleanup_example is built by scripts/test.sh.
    let out = stdout_of(&mut Command::new(&example));
    assert!(out.contains(&worker_unit(KEY_ONE).replace(".service", "")));
    assert_eq!(w.prop(&worker_unit(KEY_ONE), "LoadState"), "not-found");

    for unit in foreign {
        w.systemctl(&["stop", unit]);
        let _ = std::fs::remove_file(Path::new("/etc/systemd/system").join(unit));
    }
    w.systemctl(&["daemon-reload"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_happen_before_anything_is_installed() {
    let Some((_serial, w)) =
        serial_world("refusals_happen_before_anything_is_installed", "svc-refuse").await
    else {
        return;
    };
    let unit_dir = Path::new("/etc/systemd/system");
    let installed = || {
        std::fs::read_dir(unit_dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("tf.ourworld.circles.")
            })
    };
    let worker = worker();
    let wb = worker.to_str().unwrap();

    // A unit with our name that we did not write.
    let foreign = unit_dir.join(worker_unit(KEY_ONE));
    std::fs::write(&foreign, "[Service]\nExecStart=/bin/true\n").unwrap();
    let (code, _, err) = w.launcher(&[
        "--use-service-manager",
        "--worker-binary",
        wb,
        "-p",
        &w.port,
        "-c",
        KEY_TWO,
        "-c",
        KEY_ONE,
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&foreign).unwrap(),
        "[Service]\nExecStart=/bin/true\n",
        "left as it was"
    );
    std::fs::remove_file(&foreign).unwrap();
    assert!(!installed(), "nothing else installed");

    // Port in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let (code, _, err) = w.launcher(&[
        "--use-service-manager",
        "--worker-binary",
        wb,
        "-p",
        &busy_port,
        "-c",
        KEY_ONE,
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("port {busy_port} is already in use")),
        "{err}"
    );
    assert!(!installed());

    // Redis unreachable: no private Redis in service mode.
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let (code, _, err) = w.launcher_with_redis(
        &dead,
        &[
            "--use-service-manager",
            "--worker-binary",
            wb,
            "-p",
            &w.port,
            "-c",
            KEY_ONE,
        ],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("Redis unreachable at {dead}")),
        "{err}"
    );
    assert!(!installed());

    // Worker binary not executable.
    let not_exec = w.dir.path().join("worker.txt");
    std::fs::write(&not_exec, "x").unwrap();
    let (code, _, err) = w.launcher(&[
        "--use-service-manager",
        "--worker-binary",
        not_exec.to_str().unwrap(),
        "-c",
        KEY_ONE,
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not executable"), "{err}");
    assert!(!installed());

    // A data directory systemd cannot hand to the services' users.
    let elsewhere = w.dir.path().join("data");
    let out = Command::new(circles_test_support::binary("launcher"))
        .args([
            "--use-service-manager",
            "--worker-binary",
            wb,
            "-c",
            KEY_ONE,
        ])
        .args(["--system", "--redis-url", &w.redis.url(), "--data-dir"])
        .arg(&elsewhere)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("must lie under /var/lib"), "{err}");
    assert!(!installed());
    assert!(!elsewhere.exists());
    assert!(!w.data().exists(), "no data directory made by refused runs");
}

#[tokio::test(flavor = "multi_thread")]
async fn user_scope_units_work_through_systemctl_user() {
    if !systemd_or_skip("user_scope_units_work") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let status = Command::new("systemctl")
        .args(["start", "user@0.service"])
        .status()
        .unwrap();
    assert!(status.success(), "user@0.service starts");
    let mut w = World::new("svc-user");
    w.scope_flag = "--user";
    w.env = vec![
        ("XDG_RUNTIME_DIR".into(), "/run/user/0".into()),
        (
            "DBUS_SESSION_BUS_ADDRESS".into(),
            "unix:path=/run/user/0/bus".into(),
        ),
    ];
    let out = w.install(&worker(), &[KEY_ONE.to_string()], &[]);
    assert!(out.contains("systemd, user scope"), "{out}");
    assert_eq!(w.systemctl(&["is-active", &worker_unit(KEY_ONE)]), "active");
    assert!(
        std::env::var("HOME")
            .map(PathBuf::from)
            .unwrap()
            .join(".config/systemd/user")
            .join(worker_unit(KEY_ONE))
            .exists()
    );
    let mut c = Client::connect(&w.url(KEY_ONE)).await;
    assert_eq!(c.play("CONTEXT_ID").await, KEY_ONE);
    let (code, out, _) = w.launcher(&["cleanup"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("2 circle service(s) removed"), "{out}");
    assert_eq!(
        w.systemctl(&["is-active", &worker_unit(KEY_ONE)]),
        "inactive"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_launcher_example_in_service_mode_removes_what_it_installed() {
    let Some((_serial, w)) =
        serial_world("the_launcher_example_in_service_mode", "svc-example").await
    else {
        return;
    };
    let example = circles_test_support::target_dir().join("examples/circle_launcher_example");
    // With somebody's circle installed, it refuses (it would remove it).
    w.install(&worker(), &[KEY_ONE.to_string()], &[]);
    let out = Command::new(&example)
        .arg("--service")
        .env("REDIS_URL", w.redis.url())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already installed here"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        w.prop(&worker_unit(KEY_ONE), "ActiveState"),
        "active",
        "left alone"
    );
    w.launcher(&["cleanup"]);

    // circle_launcher_example is built by scripts/test.sh.
    let stdout = stdout_of(
        Command::new(&example)
            .arg("--service")
            .env("REDIS_URL", w.redis.url()),
    );
    assert!(stdout.contains("ourworld: OurWorld says hello"), "{stdout}");
    assert!(
        stdout.contains("threefold: this circle says hello"),
        "{stdout}"
    );
    assert!(
        stdout.contains("cleaned up: removed 3 service(s)"),
        "{stdout}"
    );
    let left: Vec<_> = std::fs::read_dir("/etc/systemd/system")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tf.ourworld.circles."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_init_script_fails_the_run_and_leaves_the_circle_running() {
    let Some((_serial, w)) =
        serial_world("a_failing_init_script_fails_the_run", "svc-init-fails").await
    else {
        return;
    };
    // Fails until the seed is there.
    let bad = script(
        w.dir.path(),
        "bad.rhai",
        r#"if db_get("seed") == () { throw "seed data missing" } "seeded""#,
    );
    let worker = worker();
    let circle = format!("{KEY_ONE}:{bad}");
    let (code, out, err) = w.launcher(&[
        "--use-service-manager",
        "--worker-binary",
        worker.to_str().unwrap(),
        "-p",
        &w.port,
        "-c",
        &circle,
    ]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(
        err.contains("init script of circle circle-0279be66 failed")
            && err.contains("seed data missing")
            && err.contains("the services stay installed and running"),
        "{err}"
    );
    assert!(
        out.contains("error: Runtime error: seed data missing"),
        "the table shows it:\n{out}"
    );
    assert_eq!(w.prop(&worker_unit(KEY_ONE), "ActiveState"), "active");
    let mut c = Client::connect(&w.url(KEY_ONE)).await;
    assert_eq!(c.play("1 + 1").await, "2");

    // The cause fixed outside the script (here: the seed written), running
    // again as the message says runs the unchanged script again.
    c.play(r#"db_set("seed", 1)"#).await;
    let pid = w.main_pid(&worker_unit(KEY_ONE));
    let (code, out, err) = w.launcher(&[
        "--use-service-manager",
        "--worker-binary",
        worker.to_str().unwrap(),
        "-p",
        &w.port,
        "-c",
        &circle,
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("0 created, 0 updated"), "{out}");
    assert!(out.contains("ok: seeded"), "{out}");
    assert_eq!(w.main_pid(&worker_unit(KEY_ONE)), pid, "not restarted");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_cleanup_find_the_default_data_directory_from_anywhere() {
    let Some((_serial, w)) = serial_world(
        "status_and_cleanup_find_the_default_data_directory",
        "svc-default-dir",
    )
    .await
    else {
        return;
    };
    let default = Path::new("/var/lib/circles");
    assert!(
        !default.join("services.json").exists(),
        "a circles install in this sandbox already"
    );
    // Without --data-dir, from one directory…
    let init = script(w.dir.path(), "init.rhai", r#""from the default""#);
    let launcher = |cwd: &Path, args: &[&str]| {
        let out = Command::new(circles_test_support::binary("launcher"))
            .current_dir(cwd)
            .args(args)
            .args(["--redis-url", &w.redis.url(), "--system"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let worker = worker();
    let (code, out, err) = launcher(
        w.dir.path(),
        &[
            "--use-service-manager",
            "--worker-binary",
            worker.to_str().unwrap(),
            "-p",
            &w.port,
            "-c",
            &format!("{KEY_ONE}:{init}"),
        ],
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(default.join("services.json").is_file());
    assert!(
        !w.dir.path().join("launch_data").exists(),
        "not ./launch_data"
    );
    // …status and cleanup from another find what it installed.
    let (code, out, err) = launcher(Path::new("/"), &["status", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ok: from the default"), "{out}");
    let (code, out, err) = launcher(Path::new("/"), &["cleanup"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("2 circle service(s) removed"), "{out}");
    assert!(!default.join("services.json").exists());
    let _ = std::fs::remove_dir_all(default);
    let _ = std::fs::remove_dir_all("/var/lib/private/circles");
}
