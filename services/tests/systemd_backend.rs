//! The systemd backend against a real, booted systemd.
//!
//! These tests need systemd as PID 1; `scripts/test.sh` runs them inside
//! `scripts/systemd-sandbox` (private PID and mount namespaces, so the units
//! they install never reach the host). Elsewhere they skip loudly, or fail
//! with `CIRCLES_REQUIRE_SYSTEMD=1`. They share one service manager, so they
//! run one at a time (`SERIAL`), and every unit they install is removed by a
//! guard even when an assertion fails.
//!
//! Services that must signal readiness run this very test binary as their
//! program (see [`notify_helper_process`]): it is a real `Type=notify` main
//! process that sends `READY=1` from its own PID, which a `systemd-notify`
//! child could not do reliably.

mod util;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use circles_services::{
    HostEnv, PlannedAction, ServiceBackend, ServiceError, ServiceName, ServiceScope, ServiceSpec,
    ServiceStatus, SystemdBackend, Templates,
};
use util::{ScratchDir, eventually, name, run, spec, systemd_booted, write_executable};

/// One test at a time: they share PID 1, and `cleanup` removes every service
/// under the prefix.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HELPER_ENV: &str = "CIRCLES_TEST_NOTIFY_HELPER";

/// Not a test: the program of the `Type=notify` test services. Started by
/// systemd as `<this binary> --exact notify_helper_process --ignored`, with
/// `CIRCLES_TEST_NOTIFY_HELPER=ready` it sends `READY=1` and sleeps until it is
/// stopped. Without that variable (e.g. `cargo test -- --ignored`) it returns.
#[test]
#[ignore = "helper process for the Type=notify services, started by systemd"]
fn notify_helper_process() {
    if std::env::var(HELPER_ENV).as_deref() != Ok("ready") {
        return;
    }
    sd_notify::notify(&[sd_notify::NotifyState::Ready]).expect("send READY=1");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A spec whose program is [`notify_helper_process`].
fn notify_spec(name: ServiceName, dir: &ScratchDir) -> ServiceSpec {
    let exe = std::env::current_exe().expect("test binary path");
    let mut s = spec(
        name,
        exe,
        &[
            "--exact",
            "notify_helper_process",
            "--ignored",
            "--nocapture",
        ],
        dir.path(),
    );
    s.env.insert(HELPER_ENV.into(), "ready".into());
    s.notify_ready = true;
    s.restart.restart_sec = 1;
    s
}

fn host() -> HostEnv {
    HostEnv::from_process()
}

async fn system_backend() -> ServiceBackend {
    let backend = ServiceBackend::detect(Some(ServiceScope::System), Templates::embedded())
        .await
        .expect("connect to systemd");
    assert!(
        matches!(backend, ServiceBackend::Systemd(_)),
        "{}",
        backend.describe()
    );
    backend
}

/// Removes the named units when dropped (even on a failed assertion), with
/// its own runtime because `Drop` cannot await.
struct Uninstall {
    scope: ServiceScope,
    names: Vec<ServiceName>,
}

impl Drop for Uninstall {
    fn drop(&mut self) {
        let (scope, names) = (self.scope, std::mem::take(&mut self.names));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let backend = SystemdBackend::new(scope, Templates::embedded(), &host()).unwrap();
                if let Err(e) = backend.remove(&names).await {
                    eprintln!("cleanup of {names:?} failed: {e}");
                }
            });
        })
        .join()
        .unwrap();
    }
}

async fn status(backend: &ServiceBackend, name: &ServiceName) -> ServiceStatus {
    backend.status(name).await.expect("status")
}

#[tokio::test]
async fn apply_starts_notify_services_restarts_killed_ones_and_updates_only_changes() {
    if !systemd_booted("apply_starts_notify_services_restarts_killed_ones_and_updates_only_changes")
    {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = ScratchDir::new("apply");
    let backend = system_backend().await;
    let (a, b) = (name("test-apply-a"), name("test-apply-b"));
    let _guard = Uninstall {
        scope: ServiceScope::System,
        names: vec![a.clone(), b.clone()],
    };
    let mut specs = vec![notify_spec(a.clone(), &dir), notify_spec(b.clone(), &dir)];

    let plan = backend.plan(&specs).await.unwrap();
    assert!(
        plan.items
            .iter()
            .all(|(_, action)| *action == PlannedAction::Create)
    );
    let report = backend.apply(&plan).await.unwrap();
    assert_eq!(report.created, [a.clone(), b.clone()]);

    // Type=notify: apply returned after READY=1, so both are up right now.
    for n in [&a, &b] {
        let st = status(&backend, n).await;
        assert!(st.loaded, "{st:?}");
        assert_eq!(
            (st.active_state.as_str(), st.sub_state.as_str()),
            ("active", "running"),
            "{st:?}"
        );
        assert_eq!(st.n_restarts, Some(0));
        assert!(st.main_pid.is_some());
        let unit = std::fs::read_to_string(st.unit_path.as_ref().unwrap()).unwrap();
        assert!(unit.contains("\nRestart=always\n"), "{unit}");
        assert!(unit.contains("\nType=notify\n"), "{unit}");
    }
    assert_eq!(run("systemctl", &["is-enabled", &a.unit_name()]), "enabled");

    // systemd restarts a killed service by itself.
    let first_pid = status(&backend, &a).await.main_pid.unwrap();
    run("kill", &["-9", &first_pid.to_string()]);
    let restarted = eventually(
        "systemd to restart the killed service",
        Duration::from_secs(20),
        || async {
            let st = status(&backend, &a).await;
            (st.n_restarts == Some(1)
                && st.active_state == "active"
                && st.main_pid.is_some_and(|p| p != first_pid))
            .then_some(st)
        },
    )
    .await;
    let pid_a = restarted.main_pid.unwrap();
    let pid_b = status(&backend, &b).await.main_pid.unwrap();

    // Same specs again: nothing changes, nothing restarts.
    let plan = backend.plan(&specs).await.unwrap();
    assert!(
        plan.items
            .iter()
            .all(|(_, action)| *action == PlannedAction::Unchanged)
    );
    assert!(!plan.changes_files());
    let report = backend.apply(&plan).await.unwrap();
    assert_eq!(report.unchanged, [a.clone(), b.clone()]);
    assert!(report.created.is_empty() && report.updated.is_empty());
    assert_eq!(status(&backend, &a).await.main_pid, Some(pid_a));
    assert_eq!(status(&backend, &b).await.main_pid, Some(pid_b));

    // A new fingerprint for b (say, a new binary): only b restarts.
    specs[1]
        .fingerprint
        .insert("worker-sha256".into(), "0123abcd".into());
    let plan = backend.plan(&specs).await.unwrap();
    assert_eq!(plan.items[0].1, PlannedAction::Unchanged);
    assert!(matches!(plan.items[1].1, PlannedAction::Update { .. }));
    let report = backend.apply(&plan).await.unwrap();
    assert_eq!(report.updated, vec![b.clone()]);
    assert_eq!(report.unchanged, vec![a.clone()]);
    assert_eq!(status(&backend, &a).await.main_pid, Some(pid_a));
    let new_b = status(&backend, &b).await;
    assert_eq!(new_b.active_state, "active");
    assert_ne!(new_b.main_pid, Some(pid_b));
    let unit = std::fs::read_to_string(new_b.unit_path.unwrap()).unwrap();
    assert!(
        unit.contains("# Fingerprint: worker-sha256=0123abcd"),
        "{unit}"
    );

    // An explicit restart gives a new process.
    backend.restart(std::slice::from_ref(&a)).await.unwrap();
    let after = status(&backend, &a).await;
    assert_eq!(after.active_state, "active");
    assert_ne!(after.main_pid, Some(pid_a));

    // A stopped service is started again by an unchanged apply.
    run("systemctl", &["stop", &a.unit_name()]);
    assert_eq!(status(&backend, &a).await.active_state, "inactive");
    let report = backend
        .apply(&backend.plan(&specs).await.unwrap())
        .await
        .unwrap();
    assert_eq!(report.unchanged.len(), 2);
    assert_eq!(status(&backend, &a).await.active_state, "active");

    let removed = backend.remove(&[a.clone(), b.clone()]).await.unwrap();
    assert_eq!(removed, [a.clone(), b.clone()]);
    for n in [&a, &b] {
        let st = status(&backend, n).await;
        assert!(!st.loaded, "{st:?}");
        assert_eq!(st.unit_path, None);
    }
    assert!(
        backend.remove(&[a, b]).await.unwrap().is_empty(),
        "remove is idempotent"
    );
}

#[tokio::test]
async fn a_failing_service_rolls_back_everything_the_apply_did() {
    if !systemd_booted("a_failing_service_rolls_back_everything_the_apply_did") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = ScratchDir::new("rollback");
    let backend = system_backend().await;
    let existing = name("test-rollback-existing");
    let (first, bad, last) = (
        name("test-rollback-first"),
        name("test-rollback-bad"),
        name("test-rollback-last"),
    );
    let _guard = Uninstall {
        scope: ServiceScope::System,
        names: vec![existing.clone(), first.clone(), bad.clone(), last.clone()],
    };

    // A service installed by an earlier run, about to be updated — its
    // secret environment file too.
    let secret = |value: &str| {
        circles_services::SecretEnv(std::collections::BTreeMap::from([(
            "CIRCLES_TEST_SECRET".to_string(),
            value.to_string(),
        )]))
    };
    let mut existing_spec = notify_spec(existing.clone(), &dir);
    existing_spec.secret_env = secret("old");
    let secret_file = |n: &ServiceName| dir.join("secrets").join(format!("{n}.env"));
    backend
        .apply(
            &backend
                .plan(std::slice::from_ref(&existing_spec))
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    let existing_path = status(&backend, &existing).await.unit_path.unwrap();
    let previous_unit = std::fs::read_to_string(&existing_path).unwrap();

    // Exits 1 before it is ready: the start job fails.
    let mut bad_spec = spec(bad.clone(), "/bin/false", &[], dir.path());
    bad_spec.notify_ready = true;
    existing_spec
        .fingerprint
        .insert("worker-sha256".into(), "new-binary".into());
    existing_spec.secret_env = secret("new");
    let mut first_spec = notify_spec(first.clone(), &dir);
    first_spec.secret_env = secret("first");
    let specs = vec![
        first_spec,
        existing_spec,
        bad_spec,
        notify_spec(last.clone(), &dir),
    ];
    let plan = backend.plan(&specs).await.unwrap();
    assert!(matches!(plan.items[1].1, PlannedAction::Update { .. }));

    let err = backend.apply(&plan).await.unwrap_err();
    let message = err.to_string();
    let ServiceError::Apply {
        step,
        source,
        rollback,
    } = &err
    else {
        panic!("expected an apply error, got {err:?}");
    };
    assert_eq!(step, &format!("starting `{bad}`"), "{message}");
    assert!(
        matches!(&**source, ServiceError::JobFailed { name, result, .. } if *name == bad && result == "failed"),
        "{source:?}"
    );
    assert!(
        message.contains("ExecMainStatus=1"),
        "the error shows the unit's state: {message}"
    );
    assert!(rollback.failures.is_empty(), "{message}");
    assert_eq!(rollback.removed, [first.clone(), bad.clone(), last.clone()]);
    assert_eq!(rollback.restored, vec![existing.clone()]);

    // Everything created is gone, from disk and from systemd.
    for n in [&first, &bad, &last] {
        let st = status(&backend, n).await;
        assert!(!st.loaded && st.unit_path.is_none(), "{st:?}");
        assert_eq!(
            run("systemctl", &["is-enabled", &n.unit_name()]),
            "",
            "{n} still has an install link"
        );
    }
    // The updated one runs its previous unit again.
    assert_eq!(
        std::fs::read_to_string(&existing_path).unwrap(),
        previous_unit
    );
    assert_eq!(status(&backend, &existing).await.active_state, "active");
    assert_eq!(
        backend.list_installed().await.unwrap(),
        vec![existing.clone()],
        "only the service from before the failed apply is installed"
    );
    // Secret files too: the created one is gone, the changed one is back,
    // still 0600, and the running service has the old value.
    assert!(!secret_file(&first).exists());
    let restored = secret_file(&existing);
    assert!(
        std::fs::read_to_string(&restored)
            .unwrap()
            .ends_with("CIRCLES_TEST_SECRET=\"old\"\n")
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&restored).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pid = status(&backend, &existing).await.main_pid.unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains("CIRCLES_TEST_SECRET=old"));
    // Without secrets now (a Redis URL without a password): the stale
    // secret file goes once the new unit runs.
    let plain = notify_spec(existing.clone(), &dir);
    backend
        .apply(&backend.plan(std::slice::from_ref(&plain)).await.unwrap())
        .await
        .unwrap();
    assert!(!restored.exists());
    // Removing the service removes its secret file.
    let mut secret_again = plain;
    secret_again.secret_env = secret("again");
    backend
        .apply(
            &backend
                .plan(std::slice::from_ref(&secret_again))
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(restored.exists());
    backend
        .remove(std::slice::from_ref(&existing))
        .await
        .unwrap();
    assert!(!restored.exists());
}

#[tokio::test]
async fn cleanup_removes_exactly_our_prefix() {
    if !systemd_booted("cleanup_removes_exactly_our_prefix") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = ScratchDir::new("cleanup");
    let backend = system_backend().await;
    assert_eq!(
        backend.describe(),
        "systemd, system scope (/etc/systemd/system)"
    );
    let ours = name("test-cleanup-ours");
    let handmade = name("test-cleanup-handmade");
    let _guard = Uninstall {
        scope: ServiceScope::System,
        names: vec![ours.clone(), handmade.clone()],
    };
    const FOREIGN: [&str; 2] = ["other.service", "tf.ourworld.circles-not-ours.service"];
    let foreign = FOREIGN;
    struct Foreign(&'static [&'static str]);
    impl Drop for Foreign {
        fn drop(&mut self) {
            for unit in self.0 {
                run("systemctl", &["stop", unit]);
                let _ = std::fs::remove_file(format!("/etc/systemd/system/{unit}"));
            }
            run("systemctl", &["daemon-reload"]);
        }
    }
    let _foreign_guard = Foreign(&FOREIGN);
    for unit in foreign.iter().chain([&handmade.unit_name().as_str()]) {
        std::fs::write(
            format!("/etc/systemd/system/{unit}"),
            "[Service]\nExecStart=/bin/sleep infinity\n",
        )
        .unwrap();
    }
    run("systemctl", &["daemon-reload"]);
    for unit in foreign {
        run("systemctl", &["start", unit]);
        assert_eq!(run("systemctl", &["is-active", unit]), "active");
    }

    // A unit with our name that we did not write is never overwritten...
    let err = backend
        .plan(&[spec(
            handmade.clone(),
            "/bin/sleep",
            &["infinity"],
            dir.path(),
        )])
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::AlreadyExists { .. }), "{err:?}");
    assert!(
        err.to_string().contains("was not installed by circles"),
        "{err}"
    );

    backend
        .apply(
            &backend
                .plan(&[spec(ours.clone(), "/bin/sleep", &["infinity"], dir.path())])
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        backend.list_installed().await.unwrap(),
        [handmade.clone(), ours.clone()]
    );

    // ...but it carries our prefix, so cleanup removes it with ours.
    let removed = backend.cleanup().await.unwrap();
    assert_eq!(removed, [handmade.clone(), ours.clone()]);
    assert!(backend.list_installed().await.unwrap().is_empty());
    assert!(!status(&backend, &ours).await.loaded);
    for unit in foreign {
        assert_eq!(
            run("systemctl", &["is-active", unit]),
            "active",
            "{unit} must survive cleanup"
        );
        assert!(PathBuf::from(format!("/etc/systemd/system/{unit}")).exists());
    }
    assert!(
        backend.cleanup().await.unwrap().is_empty(),
        "a second cleanup finds nothing"
    );
}

#[tokio::test]
async fn an_always_failing_service_ends_failed_at_the_start_limit() {
    if !systemd_booted("an_always_failing_service_ends_failed_at_the_start_limit") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = ScratchDir::new("start-limit");
    let backend = system_backend().await;
    let failing = name("test-start-limit");
    let _guard = Uninstall {
        scope: ServiceScope::System,
        names: vec![failing.clone()],
    };
    // Not Type=notify: the start itself succeeds (exec worked, and the
    // program lives a moment), then the program keeps exiting 1 and systemd
    // keeps restarting it until the start limit stops it for good.
    let mut s = spec(
        failing.clone(),
        "/bin/sh",
        &["-c", "sleep 0.2; exit 1"],
        dir.path(),
    );
    s.restart.restart_sec = 0;
    s.restart.start_limit_burst = 3;
    let report = backend
        .apply(&backend.plan(&[s]).await.unwrap())
        .await
        .unwrap();
    assert_eq!(report.created, vec![failing.clone()]);
    eventually("the start limit", Duration::from_secs(20), || async {
        let st = status(&backend, &failing).await;
        (st.active_state == "failed").then_some(())
    })
    .await;
    // Read again once failed: the properties of one status() are several
    // D-Bus reads, and the first of them may have seen the last restart
    // under way (ExecMainStatus is reset to 0 when a process starts).
    let st = status(&backend, &failing).await;
    assert_eq!(st.sub_state, "failed");
    assert_eq!(st.exec_main_status, Some(1));
    assert_eq!(st.main_pid, None);
    // Three starts, then the restart the limit refused (systemd counts it).
    assert_eq!(st.n_restarts, Some(3));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let later = status(&backend, &failing).await;
    assert_eq!(
        (later.active_state.as_str(), later.n_restarts),
        ("failed", Some(3)),
        "no more restarts"
    );
    assert_eq!(
        backend
            .remove(std::slice::from_ref(&failing))
            .await
            .unwrap(),
        vec![failing.clone()]
    );
    assert!(
        !status(&backend, &failing).await.loaded,
        "reset-failed unloads it"
    );
}

#[tokio::test]
async fn paths_and_arguments_reach_the_program_intact() {
    if !systemd_booted("paths_and_arguments_reach_the_program_intact") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = ScratchDir::new("quoting");
    let backend = system_backend().await;
    let svc = name("test-quoting");
    let _guard = Uninstall {
        scope: ServiceScope::System,
        names: vec![svc.clone()],
    };
    // Spaces, quotes, %, $ and backslashes in the program's path (systemd
    // refuses quotes and backslashes there, see the render tests), its working
    // directory and its writable directory.
    let program = dir.join("bin dir %n $HOME/prog 100% ${X}.sh");
    let work = dir.join(r#"work dir %h $PATH 'q' "dq" \b"#);
    let out_dir = dir.join(r#"out dir %% "x" 'y' \z"#);
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&out_dir).unwrap();
    write_executable(
        &program,
        "#!/bin/sh\n\
         out=\"$OUT_DIR/args\"\n\
         { printf '%s\\0' \"$0\" \"$PWD\" \"$TRICKY\"; printf '%s\\0' \"$@\"; } > \"$out.tmp\"\n\
         mv \"$out.tmp\" \"$out\"\n\
         exec sleep infinity\n",
    );
    let args = [
        "plain",
        "two words",
        r#"double "quoted""#,
        "single 'quoted'",
        r"back\slash \n not a newline",
        "100% %n %%",
        "$HOME ${PATH} $$",
        ";",
        "",
        "line one\nline two\ttab",
        "ünïcødé ✓",
    ];
    let tricky = r#"a "b" \c 5% $D ${E} 'f'"#;
    let mut s = spec(svc.clone(), &program, &args, &work);
    s.read_write_paths = vec![out_dir.clone()];
    s.env = BTreeMap::from([
        ("OUT_DIR".to_string(), out_dir.to_str().unwrap().to_string()),
        ("TRICKY".to_string(), tricky.to_string()),
    ]);
    s.description = "quoting test: 100% $HOME".into();
    backend
        .apply(&backend.plan(&[s]).await.unwrap())
        .await
        .unwrap();

    let out = out_dir.join("args");
    let written = eventually(
        "the program to write its arguments",
        Duration::from_secs(10),
        || async { std::fs::read(&out).ok() },
    )
    .await;
    let fields: Vec<String> = written
        .split(|b| *b == 0)
        .map(|f| String::from_utf8(f.to_vec()).unwrap())
        .collect();
    let mut expected = vec![
        program.to_str().unwrap().to_string(),
        work.to_str().unwrap().to_string(),
        tricky.to_string(),
    ];
    expected.extend(args.iter().map(|a| a.to_string()));
    expected.push(String::new()); // after the final NUL
    assert_eq!(fields, expected);
    assert_eq!(
        run(
            "systemctl",
            &["show", "-P", "Description", &svc.unit_name()]
        ),
        "quoting test: 100% $HOME"
    );
}

#[tokio::test]
async fn user_scope_services_run_under_the_user_manager() {
    if !systemd_booted("user_scope_services_run_under_the_user_manager") {
        return;
    }
    let _serial = SERIAL.lock().await;
    // What `scripts/systemd-sandbox user` does; harmless when already running.
    let started = std::process::Command::new("systemctl")
        .args(["start", "user@0.service"])
        .status()
        .unwrap();
    assert!(started.success(), "systemctl start user@0.service");
    let dir = ScratchDir::new("user");
    let host = HostEnv {
        xdg_runtime_dir: Some("/run/user/0".into()),
        ..HostEnv::from_process()
    };
    let backend = ServiceBackend::detect_in(&host, Some(ServiceScope::User), Templates::embedded())
        .await
        .expect("connect to the user manager");
    assert!(
        backend.describe().starts_with("systemd, user scope ("),
        "{}",
        backend.describe()
    );
    let svc = name("test-user-scope");
    let _guard = Uninstall {
        scope: ServiceScope::User,
        names: vec![svc.clone()],
    };
    let report = backend
        .apply(
            &backend
                .plan(&[notify_spec(svc.clone(), &dir)])
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(report.created, vec![svc.clone()]);
    let st = status(&backend, &svc).await;
    assert_eq!(st.active_state, "active");
    let unit_path = st.unit_path.unwrap();
    assert!(
        unit_path.ends_with(".config/systemd/user/tf.ourworld.circles.test-user-scope.service"),
        "{unit_path:?}"
    );
    assert!(
        std::fs::read_to_string(&unit_path)
            .unwrap()
            .contains("WantedBy=default.target")
    );

    let user_systemctl = |args: &[&str]| {
        let out = std::process::Command::new("systemctl")
            .arg("--user")
            .args(args)
            .env("XDG_RUNTIME_DIR", "/run/user/0")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(user_systemctl(&["is-active", &svc.unit_name()]), "active");
    assert_eq!(user_systemctl(&["is-enabled", &svc.unit_name()]), "enabled");
    assert_eq!(
        user_systemctl(&["show", "-P", "MainPID", &svc.unit_name()]),
        st.main_pid.unwrap().to_string()
    );
    assert_eq!(backend.cleanup().await.unwrap(), vec![svc.clone()]);
    assert_eq!(user_systemctl(&["is-active", &svc.unit_name()]), "inactive");
    assert!(!unit_path.exists());
}

/// The fallback backend, pointed at systemd: what a platform without our own
/// backend gets from the `service-manager` crate.
#[tokio::test]
async fn the_fallback_backend_installs_and_removes_through_service_manager() {
    if !systemd_booted("the_fallback_backend_installs_and_removes_through_service_manager") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = ScratchDir::new("fallback");
    let svc = name("test-fallback");
    let _guard = Uninstall {
        scope: ServiceScope::System,
        names: vec![svc.clone()],
    };
    let backend = ServiceBackend::Fallback(circles_services::FallbackBackend::with_registry_dir(
        ServiceScope::System,
        service_manager::ServiceManagerKind::Systemd,
        dir.join("registry"),
    ));
    assert!(
        backend
            .unavailable_features()
            .iter()
            .any(|f| f.starts_with("readiness")),
        "{:?}",
        backend.unavailable_features()
    );
    let mut s = spec(svc.clone(), "/bin/sleep", &["1000"], dir.path());
    s.env.insert("RUST_LOG".into(), "info".into());
    let plan = backend.plan(std::slice::from_ref(&s)).await.unwrap();
    assert_eq!(plan.items[0].1, PlannedAction::Create);
    let report = backend.apply(&plan).await.unwrap();
    assert_eq!(report.created, vec![svc.clone()]);

    // The unit is service-manager's own, under exactly our name.
    assert_eq!(run("systemctl", &["is-active", &svc.unit_name()]), "active");
    assert_eq!(
        run("systemctl", &["is-enabled", &svc.unit_name()]),
        "enabled"
    );
    let st = backend.status(&svc).await.unwrap();
    assert_eq!((st.loaded, st.active_state.as_str()), (true, "active"));
    assert_eq!(backend.list_installed().await.unwrap(), vec![svc.clone()]);

    // Unchanged on a second plan; a change reinstalls.
    let plan = backend.plan(std::slice::from_ref(&s)).await.unwrap();
    assert_eq!(plan.items[0].1, PlannedAction::Unchanged);
    s.args = vec!["2000".into()];
    let report = backend
        .apply(&backend.plan(std::slice::from_ref(&s)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(report.updated, vec![svc.clone()]);
    assert_eq!(run("systemctl", &["is-active", &svc.unit_name()]), "active");
    assert!(
        run("systemctl", &["show", "-P", "ExecStart", &svc.unit_name()]).contains("2000"),
        "the new arguments are installed"
    );

    assert_eq!(backend.cleanup().await.unwrap(), vec![svc.clone()]);
    assert_ne!(run("systemctl", &["is-active", &svc.unit_name()]), "active");
    assert!(!PathBuf::from(format!("/etc/systemd/system/{}", svc.unit_name())).exists());
    assert!(backend.list_installed().await.unwrap().is_empty());
    assert!(backend.cleanup().await.unwrap().is_empty());
}

/// The kernel enforces the rendered ceilings: a service that outgrows
/// `MemoryMax=` is killed (and restarted, `Restart=always`) while a
/// sibling with room keeps running; `TasksMax=`/`LimitNOFILE=` reach the
/// unit as given.
#[tokio::test]
async fn a_service_over_its_memory_ceiling_is_killed_and_restarted() {
    if !systemd_booted("a_service_over_its_memory_ceiling_is_killed_and_restarted") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = ScratchDir::new("ceiling");
    let backend = system_backend().await;
    let (hog, calm) = (name("test-ceiling-hog"), name("test-ceiling-calm"));
    let _guard = Uninstall {
        scope: ServiceScope::System,
        names: vec![hog.clone(), calm.clone()],
    };
    let limits = circles_services::ResourceLimits {
        memory_max: Some(48 << 20),
        tasks_max: Some(16),
        nofile: Some(256),
    };
    // 200 MB held by the shell, then a long sleep: only the ceiling stops it.
    let mut hog_spec = spec(
        hog.clone(),
        "/bin/bash",
        &[
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); sleep 1000",
        ],
        dir.path(),
    );
    hog_spec.limits = limits;
    let mut calm_spec = spec(calm.clone(), "/bin/sleep", &["1000"], dir.path());
    calm_spec.limits = limits;
    backend
        .apply(&backend.plan(&[hog_spec, calm_spec]).await.unwrap())
        .await
        .unwrap();
    let unit = hog.unit_name();
    assert_eq!(
        run("systemctl", &["show", "-p", "MemoryMax", "--value", &unit]),
        (48u64 << 20).to_string()
    );
    assert_eq!(
        run("systemctl", &["show", "-p", "TasksMax", "--value", &unit]),
        "16"
    );
    assert_eq!(
        run(
            "systemctl",
            &["show", "-p", "LimitNOFILE", "--value", &unit]
        ),
        "256"
    );
    util::eventually(
        "the hog killed by the kernel and restarted",
        Duration::from_secs(30),
        || async {
            let restarts = status(&backend, &hog).await.n_restarts.unwrap_or(0);
            (restarts >= 1).then_some(())
        },
    )
    .await;
    let calm_status = status(&backend, &calm).await;
    assert_eq!(calm_status.active_state, "active");
    assert_eq!(calm_status.n_restarts, Some(0));
}
