//! Least privilege and secrets for the installed services, against a real
//! systemd (inside `scripts/systemd-sandbox`; elsewhere these skip loudly):
//! the units score at most 2.0 with `systemd-analyze security`, the worker
//! and server run as non-root users, a circle's database survives restarts,
//! kill -9 and a new worker binary, a script that blows through the memory
//! ceiling takes down only its own worker, a Redis password reaches no
//! world-readable place, and data that an earlier (root) install left is
//! taken over.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use circles_test_support::ws::Client;
use circles_test_support::{KEY_ONE, binary, stdout_of, wait_until};
use common::world::{SERVER_UNIT, World, script, serial_world, worker, worker_unit};

/// What the issue asks of both units.
const MAX_EXPOSURE: f64 = 2.0;

/// The overall exposure `systemd-analyze security` gives `unit`, from its
/// last line: `→ Overall exposure level for X.service: 1.1 OK 🙂`.
fn exposure(unit: &str) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--no-pager", unit])
        .output()
        .expect("run systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for"))
        .unwrap_or_else(|| panic!("no overall exposure for {unit}:\n{text}"));
    let value = line
        .rsplit_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"));
    // Shown when the test runs with --nocapture: the figures for the report.
    println!("{unit}: overall exposure {value}");
    value
}

/// Real, effective, saved and file-system uid of a process.
fn uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace()
        .skip(1)
        .map(|u| u.parse().unwrap())
        .collect()
}

fn assert_unprivileged(w: &World, unit: &str) -> u32 {
    let pid = w.main_pid(unit);
    assert_ne!(pid, 0, "{unit} runs");
    let ids = uids(pid);
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(ids.iter().all(|&u| u != 0), "{unit} runs as root: {ids:?}");
    ids[0]
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Where systemd keeps a DynamicUser= service's StateDirectory= for real.
fn private_db_file(w: &World, key: &str) -> PathBuf {
    let rel = w.data.strip_prefix("/var/lib").unwrap();
    Path::new("/var/lib/private")
        .join(rel)
        .join("db")
        .join(key)
        .join(format!("circle_db_{key}.redb"))
}

#[tokio::test(flavor = "multi_thread")]
async fn units_score_at_most_2_run_unprivileged_and_keep_their_data() {
    let Some((_serial, w)) =
        serial_world("units_score_at_most_2_run_unprivileged", "lp-hardened").await
    else {
        return;
    };
    // A private copy of the worker, so an upgrade can be deployed.
    let my_worker = w.worker_copy();
    let init = script(
        w.dir.path(),
        "init.rhai",
        r#"db_set("who", "init"); "seeded""#,
    );
    let circles = [format!("{KEY_ONE}:{init}")];
    let out = w.install(&my_worker, &circles, &[]);
    assert!(out.contains("ok: seeded"), "{out}");

    let wunit = worker_unit(KEY_ONE);
    for unit in [wunit.as_str(), SERVER_UNIT] {
        let score = exposure(unit);
        assert!(score <= MAX_EXPOSURE, "{unit} scores {score}");
        assert_unprivileged(&w, unit);
    }
    let worker_uid = assert_unprivileged(&w, &wunit);
    let server_uid = assert_unprivileged(&w, SERVER_UNIT);
    assert_ne!(worker_uid, server_uid, "each service has a user of its own");
    assert_eq!(w.prop(&wunit, "MemoryMax"), (1u64 << 30).to_string());
    assert_eq!(w.prop(&wunit, "TasksMax"), "64");
    assert_eq!(w.prop(&wunit, "LimitNOFILE"), "1024");
    assert_eq!(w.prop(SERVER_UNIT, "LimitNOFILE"), "65536");

    // A play that writes the database works; the file is the worker's own.
    let mut c = Client::connect(&w.url(KEY_ONE)).await;
    assert_eq!(c.play(r#"db_set("k", "v1"); db_get("who")"#).await, "init");
    let db = private_db_file(&w, KEY_ONE);
    let meta = std::fs::metadata(&db).unwrap();
    assert_eq!(meta.uid(), worker_uid, "{}", db.display());
    assert_eq!(mode(&db) & 0o077, 0, "UMask=0077: {:o}", mode(&db));
    assert_eq!(mode(db.parent().unwrap()), 0o700);

    // Restart: the data stays.
    w.systemctl(&["restart", &wunit]);
    let mut c = Client::connect(&w.url(KEY_ONE)).await;
    assert_eq!(c.play(r#"db_get("k")"#).await, "v1");

    // A new worker binary (renamed over the old one, as deploys do): the
    // worker is restarted, the data stays, still unprivileged.
    let mut bytes = std::fs::read(&my_worker).unwrap();
    bytes.extend_from_slice(b"\0upgraded");
    let fresh = my_worker.with_file_name("worker.new");
    std::fs::write(&fresh, bytes).unwrap();
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&fresh, &my_worker).unwrap();
    let out = w.install(&my_worker, &[KEY_ONE.to_string()], &[]);
    assert!(out.contains("0 created, 1 updated, 1 unchanged"), "{out}");
    assert_unprivileged(&w, &wunit);
    let mut c = Client::connect(&w.url(KEY_ONE)).await;
    assert_eq!(c.play(r#"db_get("k")"#).await, "v1");

    // kill -9: systemd restarts it, the data stays.
    let old = w.main_pid(&wunit);
    common::kill(old, "-9");
    wait_until("worker restarted", Duration::from_secs(30), || {
        let pid = w.main_pid(&wunit);
        (pid != 0 && pid != old && w.prop(&wunit, "ActiveState") == "active").then_some(())
    });
    let mut c = Client::connect(&w.url(KEY_ONE)).await;
    assert_eq!(c.play(r#"db_get("k")"#).await, "v1");

    // Cleanup removes every service; the circle's data stays.
    let (code, out, err) = w.launcher(&["cleanup"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("2 circle service(s) removed"), "{out}");
    for unit in [wunit.as_str(), SERVER_UNIT] {
        assert_eq!(w.prop(unit, "LoadState"), "not-found", "{unit}");
        assert!(!Path::new("/etc/systemd/system").join(unit).exists());
    }
    assert!(db.exists(), "cleanup never deletes a circle's data");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_over_its_memory_budget_is_stopped_and_the_worker_stays_up() {
    let Some((_serial, w)) = serial_world("a_script_over_its_memory_budget", "lp-memory").await
    else {
        return;
    };
    // A small ceiling: the kernel stops the script long before it hurts
    // the test host.
    w.install(&worker(), &[KEY_ONE.to_string()], &["--memory-max", "96M"]);
    let unit = worker_unit(KEY_ONE);
    assert_eq!(w.prop(&unit, "MemoryMax"), (96u64 << 20).to_string());
    // The worker's own per-task budget sits well below the ceiling.
    assert!(
        w.prop(&unit, "ExecStart").contains("--max-memory-mb 24 "),
        "{}",
        w.prop(&unit, "ExecStart")
    );

    let mut c = Client::connect(&w.url(KEY_ONE)).await;
    // Every value is within the string limit, and index assignment into a
    // map is not size-checked by the engine: together they are gigabytes.
    let hog = r#"let s = "x"; while s.len() < 500000 { s += s; }
                 let m = #{}; let i = 0; loop { m["k" + i] = s + i; i += 1; }"#;
    let answer = tokio::time::timeout(
        Duration::from_secs(60),
        c.call("play", serde_json::json!({ "script": hog })),
    )
    .await
    .expect("an answer within 60 s");
    assert!(
        answer.get("result").is_none() && answer["error"].is_object(),
        "the script is stopped: {answer}"
    );
    // Stopped by the worker's budget, which trips before the kernel's
    // ceiling: the worker itself survives. (That the ceiling stops what gets
    // past it is `systemd_backend`'s `a_service_over_its_memory_ceiling_*`.)
    let restarts: u32 = w.prop(&unit, "NRestarts").parse().unwrap();
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    println!("memory hog: {answer}; worker restarts: {restarts}");
    assert!(
        message.contains("memory limit (24 MiB)"),
        "not stopped by the memory budget: {answer}"
    );
    assert_eq!(restarts, 0, "the worker survived");
    // The unit stays up (restarted by systemd if the kernel killed the
    // worker) and serves the next script.
    wait_until("worker active again", Duration::from_secs(30), || {
        (w.prop(&unit, "ActiveState") == "active" && w.main_pid(&unit) != 0).then_some(())
    });
    let mut c = Client::connect(&w.url(KEY_ONE)).await;
    assert_eq!(c.play("40 + 2").await, "42");
    assert_eq!(w.prop(SERVER_UNIT, "ActiveState"), "active");
}

/// A password with a `$`: systemd would expand `$HOME` in an unquoted
/// `Environment=`, the env file must carry it as it is.
const PASSWORD: &str = "s3cret$HOME-pw";

/// `redis-cli -p PORT -a PASSWORD ARGS…`
fn redis_cli_auth(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--no-auth-warning", "-a", PASSWORD])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The launcher with `REDIS_URL` in its environment (how a password should
/// be handed to it), `--data-dir` and `--system`.
fn launcher_env(
    w: &World,
    redis_url: Option<&str>,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(binary("launcher"));
    cmd.args(args)
        .arg("--data-dir")
        .arg(w.data())
        .arg("--system")
        .env_remove("REDIS_URL");
    if let Some(url) = redis_url {
        cmd.env("REDIS_URL", url);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_password_reaches_no_world_readable_place() {
    let Some((_serial, w)) = serial_world(
        "a_redis_password_reaches_no_world_readable_place",
        "lp-secret",
    )
    .await
    else {
        return;
    };
    let port = w.redis.port();
    w.redis.cli(&["CONFIG", "SET", "requirepass", PASSWORD]);
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}");
    let init = script(
        w.dir.path(),
        "init.rhai",
        r#"db_set("who", "init"); "seeded""#,
    );
    let worker = worker();
    let install = [
        "--use-service-manager",
        "--worker-binary",
        worker.to_str().unwrap(),
        "-p",
        &w.port,
        "-c",
        &format!("{KEY_ONE}:{init}"),
    ];

    // The dry run shows the hardening and hides the password.
    let (code, out, err) = launcher_env(&w, Some(&url), &[&install[..], &["--dry-run"]].concat());
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("DynamicUser=yes") && out.contains("EnvironmentFile="),
        "{out}"
    );
    assert!(
        !out.contains(PASSWORD) && !err.contains(PASSWORD),
        "{out}{err}"
    );

    let (code, out, err) = launcher_env(&w, Some(&url), &install);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("ok: seeded"), "{out}");
    assert!(
        !out.contains(PASSWORD) && !err.contains(PASSWORD),
        "{out}{err}"
    );

    // End to end through the password-protected Redis.
    let mut c = Client::connect(&w.url(KEY_ONE)).await;
    assert_eq!(c.play(r#"db_get("who")"#).await, "init");
    assert_eq!(
        redis_cli_auth(port, &["SISMEMBER", "rhai_circles", KEY_ONE]),
        "1"
    );

    let units = [worker_unit(KEY_ONE), SERVER_UNIT.to_string()];
    for unit in &units {
        // Not in the unit file, not in what systemd shows every user.
        let file = std::fs::read_to_string(Path::new("/etc/systemd/system").join(unit)).unwrap();
        assert!(!file.contains(PASSWORD), "{unit}:\n{file}");
        for prop in ["Environment", "ExecStart"] {
            assert!(!w.prop(unit, prop).contains(PASSWORD), "{unit} {prop}");
        }
        // Not in the process's command line, but in its environment.
        let pid = w.main_pid(unit);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(PASSWORD),
            "{unit} argv"
        );
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            String::from_utf8_lossy(&environ).contains(&format!("REDIS_URL={url}")),
            "{unit} gets REDIS_URL from its environment file, unchanged"
        );
        // The environment file: 0600, root's, in a 0700 directory.
        let env_file = w
            .data()
            .join("secrets")
            .join(unit.replace(".service", ".env"));
        assert_eq!(mode(&env_file), 0o600, "{}", env_file.display());
        assert_eq!(std::fs::metadata(&env_file).unwrap().uid(), 0);
        // (`$` escaped for EnvironmentFile=; the environ check above shows
        // it arrives unescaped.)
        assert!(
            std::fs::read_to_string(&env_file)
                .unwrap()
                .contains(&PASSWORD.replace('$', "\\$"))
        );
    }
    assert_eq!(mode(&w.data().join("secrets")), 0o700);

    // services.json is world-readable and holds only the redacted URL; the
    // full one is in a 0600 file beside the environment files.
    let record = std::fs::read_to_string(w.data().join("services.json")).unwrap();
    assert!(!record.contains(PASSWORD), "{record}");
    assert!(
        record.contains(&format!("redis://:***@127.0.0.1:{port}")),
        "{record}"
    );
    let url_file = w.data().join("secrets/redis-url");
    assert_eq!(mode(&url_file), 0o600);
    assert_eq!(std::fs::read_to_string(&url_file).unwrap(), url);

    // Status without REDIS_URL: the launcher reads the password from its
    // 0600 file and reaches Redis (the heartbeat shows), printing none.
    let (code, out, err) = launcher_env(&w, None, &["status", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        !out.contains(PASSWORD) && !err.contains(PASSWORD),
        "{out}{err}"
    );
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["public_key"] == KEY_ONE)
        .unwrap();
    assert!(row["heartbeat"].is_string(), "{row}");

    // Errors name the URL redacted: another password is refused as another
    // Redis, and neither password is shown.
    let wrong = format!("redis://:not-the-{PASSWORD}@127.0.0.1:{port}");
    let (code, out, err) = launcher_env(&w, Some(&wrong), &install);
    assert_eq!(code, Some(1), "{out}");
    assert!(err.contains("redis://:***@127.0.0.1"), "{err}");
    assert!(!err.contains(PASSWORD) && !out.contains(PASSWORD), "{err}");

    // The journal of both services, and of the launcher's runs, has none.
    let journal = Command::new("journalctl")
        .args(["--no-pager", "-o", "cat", "-u", &units[0], "-u", &units[1]])
        .output()
        .unwrap();
    let journal = String::from_utf8_lossy(&journal.stdout);
    assert!(journal.contains("worker ready"), "{journal}");
    assert!(!journal.contains(PASSWORD), "{journal}");

    // Cleanup (again without REDIS_URL) removes the secrets with the units.
    let (code, _, err) = launcher_env(&w, None, &["cleanup"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!url_file.exists());
    let left: Vec<_> = std::fs::read_dir(w.data().join("secrets"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        redis_cli_auth(port, &["SISMEMBER", "rhai_circles", KEY_ONE]),
        "0",
        "cleanup reached the password-protected Redis"
    );
}

/// The worker unit the launcher wrote before services ran unprivileged
/// (launcher at 9d2973b): root, `--redis-url` in argv, the database flat in
/// the data directory.
fn legacy_worker_unit(worker: &Path, redis: &str, key: &str, data: &Path) -> String {
    // As the earlier renderer did: no private /tmp when the binary or the
    // data live in /tmp (a CI checkout), which it would hide.
    let in_tmp = |p: &Path| p.starts_with("/tmp") || p.starts_with("/var/tmp");
    let private_tmp = if in_tmp(worker) || in_tmp(data) {
        "no"
    } else {
        "yes"
    };
    let (worker, data) = (worker.display(), data.display());
    format!(
        "# Managed by circles launcher — do not edit; changes are overwritten
# Fingerprint: init-script-sha256=none
# Fingerprint: worker-sha256=0
[Unit]
Description=circles worker for circle-{short} ({key})
After=network.target redis-server.service redis.service
StartLimitIntervalSec=60
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
ExecStart=\"{worker}\" \"--redis-url\" \"{redis}\" \"--circle-public-key\" \"{key}\" \"--db-path\" \"{data}\" \"--keep-queued-on-stop\"
WorkingDirectory={data}
Environment=\"RUST_LOG=info\"
Restart=always
RestartSec=2
TimeoutStopSec=60
StandardOutput=journal
StandardError=journal
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=\"{data}\"
PrivateTmp={private_tmp}

[Install]
WantedBy=multi-user.target
",
        short = &key[..8]
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn root_owned_data_of_an_earlier_install_is_migrated() {
    let Some((_serial, w)) = serial_world(
        "root_owned_data_of_an_earlier_install_is_migrated",
        "lp-migrate",
    )
    .await
    else {
        return;
    };
    // The earlier install: its data directory under target/ (the old
    // default was ./launch_data, wherever the launcher ran), a worker unit
    // running as root, and its record.
    let old_data = w.dir.path().join("launch_data");
    std::fs::create_dir_all(&old_data).unwrap();
    let unit = worker_unit(KEY_ONE);
    let unit_file = Path::new("/etc/systemd/system").join(&unit);
    std::fs::write(
        &unit_file,
        legacy_worker_unit(&worker(), &w.redis.url(), KEY_ONE, &old_data),
    )
    .unwrap();
    std::fs::write(
        old_data.join("services.json"),
        serde_json::json!({
            "host": "127.0.0.1",
            "port": w.port.parse::<u16>().unwrap(),
            "redis_url": w.redis.url(),
            "enable_auth": false,
            "circles": {KEY_ONE: {"name": "legacy-one", "port": null, "init": "ok: legacy"}}
        })
        .to_string(),
    )
    .unwrap();
    w.systemctl(&["daemon-reload"]);
    w.systemctl(&["start", &unit]);
    assert_eq!(w.prop(&unit, "ActiveState"), "active");
    assert_eq!(
        uids(w.main_pid(&unit))[0],
        0,
        "the earlier worker ran as root"
    );
    stdout_of(
        Command::new(binary("dispatcher"))
            .args(["--redis-url", &w.redis.url(), "run", "--circle", KEY_ONE])
            .arg(r#"db_set("k", "from before"); "stored""#),
    );
    let old_db = old_data.join(format!("circle_db_{KEY_ONE}.redb"));
    assert_eq!(std::fs::metadata(&old_db).unwrap().uid(), 0);

    // The next run: new data directory, no -p (the earlier record's port
    // is taken over).
    let worker = worker();
    let (code, out, err) = w.launcher(&[
        "--use-service-manager",
        "--worker-binary",
        worker.to_str().unwrap(),
        "-c",
        KEY_ONE,
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("1 created, 1 updated, 0 unchanged"), "{out}");
    assert!(err.contains("now keeps its database in"), "{err}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.data().join("services.json")).unwrap())
            .unwrap();
    assert_eq!(
        record["port"].to_string(),
        w.port,
        "the earlier record's port"
    );

    let uid = assert_unprivileged(&w, &unit);
    let mut c = Client::connect(&w.url(KEY_ONE)).await;
    assert_eq!(c.play(r#"db_get("k")"#).await, "from before");
    assert_eq!(
        c.play(r#"db_set("k", "after"); db_get("k")"#).await,
        "after"
    );
    let new_db = private_db_file(&w, KEY_ONE);
    assert_eq!(std::fs::metadata(&new_db).unwrap().uid(), uid);
    assert!(old_db.exists(), "the earlier file is left in place");
    let unit_text = std::fs::read_to_string(&unit_file).unwrap();
    assert!(!unit_text.contains("--redis-url"), "{unit_text}");

    // A second run has nothing more to migrate.
    let (code, out, err) = w.launcher(&[
        "--use-service-manager",
        "--worker-binary",
        worker.to_str().unwrap(),
        "-c",
        KEY_ONE,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("0 created, 0 updated, 2 unchanged"), "{out}");
    assert!(!err.contains("now keeps its database"), "{err}");
}

/// A redis-server listening only on a unix socket, killed when dropped.
struct SocketRedis(std::process::Child);

impl Drop for SocketRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn services_reach_a_redis_on_a_unix_socket() {
    let Some((_serial, w)) =
        serial_world("services_reach_a_redis_on_a_unix_socket", "lp-socket").await
    else {
        return;
    };
    // The socket where the services' own users may connect (mode 0777 on the
    // socket, a world-searchable directory), as an operator would set
    // `unixsocketperm` for them. Under /run, where Redis keeps it: units get
    // a private /tmp, so a socket in /tmp (where a CI checkout may live) is
    // out of their sight — the README says so.
    let socket_dir = tempfile::Builder::new()
        .prefix("circles-lp-socket-")
        .tempdir_in("/run")
        .unwrap();
    std::fs::set_permissions(
        socket_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let socket = socket_dir.path().join("redis.sock");
    let _redis = SocketRedis(
        Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--unixsocketperm", "777"])
            .arg("--dir")
            .arg(w.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("redis socket", Duration::from_secs(10), || {
        socket.exists().then_some(())
    });
    let url = format!("redis+unix://{}", socket.display());
    let worker = worker();
    let (code, out, err) = w.launcher_with_redis(
        &url,
        &[
            "--use-service-manager",
            "--worker-binary",
            worker.to_str().unwrap(),
            "-p",
            &w.port,
            "-c",
            KEY_ONE,
        ],
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_unprivileged(&w, &worker_unit(KEY_ONE));
    let mut c = Client::connect(&w.url(KEY_ONE)).await;
    assert_eq!(c.play(r#"db_set("k", 1); db_get("k") + 1"#).await, "2");
    let (code, _, err) = w.launcher_with_redis(&url, &["cleanup"]);
    assert_eq!(code, Some(0), "{err}");
}
