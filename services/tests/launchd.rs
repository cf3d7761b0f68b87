//! The launchd backend on any platform: plists checked with the `plist` crate
//! and with `plistutil` (libplist, an independent parser), and the exact
//! `launchctl` calls of install, restart, update, rollback and cleanup.
//!
//! launchd itself cannot run on Linux, so the calls go to a stand-in
//! `launchctl`: a shell script this test writes and puts first on `PATH`. It
//! appends every argv to a log and keeps just enough state (which labels are
//! loaded) to answer `print` and `bootout` the way launchctl does. It is the
//! only stand-in these tests accept; everything else is the real thing.

mod util;

use std::path::{Path, PathBuf};

use circles_services::{
    BackendKind, HostEnv, PlannedAction, ServiceBackend, ServiceError, ServiceScope, ServiceSpec,
    Templates,
};
use plist::Value;
use util::{ScratchDir, env_flag, name, spec, write_executable};

/// A recording `launchctl` in `<dir>/bin`, its log and its state.
struct FakeLaunchctl {
    dir: ScratchDir,
}

const FAKE_LAUNCHCTL: &str = r#"#!/bin/sh
# Recording stand-in for launchctl (see tests/launchd.rs).
state="@STATE@"
printf '%s\n' "$*" >> "$state/calls.log"
label_of() { basename "${1#*/*/}" .plist; }
case "$1" in
  enable) exit 0 ;;
  bootstrap)
    label=$(basename "$3" .plist)
    if [ -e "$state/fail-bootstrap-$label" ]; then
      echo "Bootstrap failed: 5: Input/output error" >&2; exit 5
    fi
    touch "$state/loaded/$label"; exit 0 ;;
  bootout)
    label=${2##*/}
    if [ -e "$state/loaded/$label" ]; then rm "$state/loaded/$label"; exit 0; fi
    echo "Boot-out failed: 3: No such process" >&2; exit 3 ;;
  kickstart)
    label=${3##*/}
    [ -e "$state/loaded/$label" ] && exit 0
    echo "Could not find service \"$label\" in domain" >&2; exit 113 ;;
  print)
    case "$2" in
      */*/*)
        label=${2##*/}
        if [ -e "$state/loaded/$label" ]; then
          printf '%s = {\n\tpath = %s\n\tstate = running\n\truns = 1\n\tpid = 4242\n\tlast exit code = (never exited)\n}\n' "$2" "$label"
          exit 0
        fi
        echo "Could not find service \"$label\" in domain" >&2; exit 113 ;;
      *)
        printf '%s = {\n\tservices = {\n' "$2"
        for f in "$state"/loaded/*; do [ -e "$f" ] && printf '\t\t4242\t0\t%s\n' "${f##*/}"; done
        printf '\t}\n}\n'; exit 0 ;;
    esac ;;
esac
echo "unexpected launchctl call: $*" >&2; exit 64
"#;

impl FakeLaunchctl {
    fn new(label: &str) -> Self {
        let dir = ScratchDir::new(label);
        std::fs::create_dir_all(dir.join("state/loaded")).unwrap();
        std::fs::create_dir_all(dir.join("home")).unwrap();
        let script = FAKE_LAUNCHCTL.replace("@STATE@", dir.join("state").to_str().unwrap());
        write_executable(&dir.join("bin/launchctl"), &script);
        Self { dir }
    }

    fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// `PATH` with the stand-in first.
    fn path(&self) -> std::ffi::OsString {
        let mut dirs = vec![self.dir.join("bin")];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        std::env::join_paths(dirs).unwrap()
    }

    fn host(&self) -> HostEnv {
        HostEnv {
            backend_override: Some("launchd".into()),
            home: Some(self.home()),
            path: Some(self.path()),
            ..HostEnv::from_process()
        }
    }

    /// The calls since the last `take_calls`, with the scratch path shortened.
    fn take_calls(&self) -> Vec<String> {
        let log = self.dir.join("state/calls.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        let home = self.home();
        text.lines()
            .map(|l| l.replace(home.to_str().unwrap(), "~"))
            .collect()
    }

    fn fail_bootstrap(&self, label: &str) {
        std::fs::write(self.dir.join(format!("state/fail-bootstrap-{label}")), "").unwrap();
    }

    fn is_loaded(&self, label: &str) -> bool {
        self.dir.join(format!("state/loaded/{label}")).exists()
    }
}

fn agent(home: &Path, label: &str) -> PathBuf {
    home.join(format!("Library/LaunchAgents/{label}.plist"))
}

async fn user_backend(fake: &FakeLaunchctl) -> ServiceBackend {
    // User scope explicitly: as root, the default would be /Library/LaunchDaemons.
    let backend = ServiceBackend::detect_in(
        &fake.host(),
        Some(ServiceScope::User),
        Templates::embedded(),
    )
    .await
    .unwrap();
    assert_eq!(backend.kind(), BackendKind::Launchd);
    backend
}

fn test_spec(suffix: &str, home: &Path) -> ServiceSpec {
    let mut s = spec(
        name(suffix),
        "/usr/local/bin/worker",
        &["--redis-url", "redis://127.0.0.1:6379", "two words & <xml>"],
        home,
    );
    s.log_dir = home.join("logs dir");
    s.env.insert("RUST_LOG".into(), "info".into());
    s
}

#[tokio::test]
async fn launchctl_sees_exactly_the_expected_calls() {
    let fake = FakeLaunchctl::new("launchctl-calls");
    let backend = user_backend(&fake).await;
    let home = fake.home();
    let uid = HostEnv::from_process().euid;
    let (a, b) = (name("launchd-a"), name("launchd-b"));
    let mut specs = vec![test_spec("launchd-a", &home), test_spec("launchd-b", &home)];

    // Install: enable before bootstrap (a disabled job cannot be bootstrapped);
    // RunAtLoad starts the job, so no kickstart.
    let report = backend
        .apply(&backend.plan(&specs).await.unwrap())
        .await
        .unwrap();
    assert_eq!(report.created, [a.clone(), b.clone()]);
    assert_eq!(
        fake.take_calls(),
        [
            format!("enable gui/{uid}/{a}"),
            format!("bootstrap gui/{uid} ~/Library/LaunchAgents/{a}.plist"),
            format!("enable gui/{uid}/{b}"),
            format!("bootstrap gui/{uid} ~/Library/LaunchAgents/{b}.plist"),
        ]
    );
    assert!(agent(&home, a.as_str()).exists() && agent(&home, b.as_str()).exists());
    assert!(
        home.join("logs dir").is_dir(),
        "launchd does not create the log directory itself"
    );

    let st = backend.status(&a).await.unwrap();
    assert_eq!(fake.take_calls(), [format!("print gui/{uid}/{a}")]);
    assert!(st.loaded);
    assert_eq!(
        (st.active_state.as_str(), st.sub_state.as_str()),
        ("active", "running")
    );
    assert_eq!(
        (st.main_pid, st.n_restarts, st.exec_main_status),
        (Some(4242), Some(0), None)
    );

    backend.restart(std::slice::from_ref(&a)).await.unwrap();
    assert_eq!(fake.take_calls(), [format!("kickstart -k gui/{uid}/{a}")]);

    // Unchanged: only a check that each job is loaded.
    let report = backend
        .apply(&backend.plan(&specs).await.unwrap())
        .await
        .unwrap();
    assert_eq!(report.unchanged, [a.clone(), b.clone()]);
    assert_eq!(
        fake.take_calls(),
        [
            format!("print gui/{uid}/{a}"),
            format!("print gui/{uid}/{b}")
        ]
    );

    // Changed: launchd keeps the plist it loaded, so bootout and bootstrap again.
    specs[1]
        .fingerprint
        .insert("worker-sha256".into(), "new".into());
    let plan = backend.plan(&specs).await.unwrap();
    assert!(matches!(plan.items[1].1, PlannedAction::Update { .. }));
    let report = backend.apply(&plan).await.unwrap();
    assert_eq!(report.updated, vec![b.clone()]);
    assert_eq!(
        fake.take_calls(),
        [
            format!("bootout gui/{uid}/{b}"),
            format!("enable gui/{uid}/{b}"),
            format!("bootstrap gui/{uid} ~/Library/LaunchAgents/{b}.plist"),
            format!("print gui/{uid}/{a}"),
        ]
    );

    // Cleanup: list (files and the domain's loaded jobs), then bootout each.
    std::fs::write(agent(&home, "other"), "<plist/>").unwrap();
    std::fs::write(agent(&home, "tf.ourworld.circles-not-ours"), "<plist/>").unwrap();
    assert_eq!(backend.cleanup().await.unwrap(), [a.clone(), b.clone()]);
    assert_eq!(
        fake.take_calls(),
        [
            format!("print gui/{uid}"),
            format!("bootout gui/{uid}/{a}"),
            format!("bootout gui/{uid}/{b}"),
        ]
    );
    assert!(!agent(&home, a.as_str()).exists() && !agent(&home, b.as_str()).exists());
    assert!(!fake.is_loaded(a.as_str()) && !fake.is_loaded(b.as_str()));
    assert!(agent(&home, "other").exists());
    assert!(agent(&home, "tf.ourworld.circles-not-ours").exists());

    // Nothing left: the second cleanup only lists.
    assert!(backend.cleanup().await.unwrap().is_empty());
    assert_eq!(fake.take_calls(), [format!("print gui/{uid}")]);

    let logs = backend.logs_command(&a, true);
    assert_eq!(logs.get_program(), "tail");
}

#[tokio::test]
async fn a_failed_bootstrap_rolls_the_batch_back() {
    let fake = FakeLaunchctl::new("launchctl-rollback");
    let backend = user_backend(&fake).await;
    let home = fake.home();
    let uid = HostEnv::from_process().euid;
    let (a, b) = (name("launchd-ok"), name("launchd-bad"));
    fake.fail_bootstrap(b.as_str());

    let specs = [
        test_spec("launchd-ok", &home),
        test_spec("launchd-bad", &home),
    ];
    let err = backend
        .apply(&backend.plan(&specs).await.unwrap())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&format!("loading `{b}`")), "{message}");
    assert!(
        message.contains("Bootstrap failed: 5: Input/output error"),
        "{message}"
    );
    let ServiceError::Apply { rollback, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(rollback.removed, [a.clone(), b.clone()]);
    assert!(rollback.failures.is_empty(), "{message}");
    assert_eq!(
        fake.take_calls(),
        [
            format!("enable gui/{uid}/{a}"),
            format!("bootstrap gui/{uid} ~/Library/LaunchAgents/{a}.plist"),
            format!("enable gui/{uid}/{b}"),
            format!("bootstrap gui/{uid} ~/Library/LaunchAgents/{b}.plist"),
            format!("bootout gui/{uid}/{a}"),
            format!("bootout gui/{uid}/{b}"),
        ]
    );
    assert!(!agent(&home, a.as_str()).exists() && !agent(&home, b.as_str()).exists());
    assert!(!fake.is_loaded(a.as_str()));
}

#[tokio::test]
async fn a_foreign_plist_with_our_name_is_never_overwritten() {
    let fake = FakeLaunchctl::new("launchctl-foreign");
    let backend = user_backend(&fake).await;
    let home = fake.home();
    let s = test_spec("launchd-foreign", &home);
    let path = agent(&home, s.name.as_str());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let foreign = "<?xml version=\"1.0\"?>\n<plist version=\"1.0\"><dict><key>Label</key><string>x</string></dict></plist>\n";
    std::fs::write(&path, foreign).unwrap();
    let err = backend.plan(std::slice::from_ref(&s)).await.unwrap_err();
    assert!(matches!(err, ServiceError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), foreign);
    assert!(fake.take_calls().is_empty());
}

#[tokio::test]
async fn rendered_plists_parse_back_with_typed_values() {
    let fake = FakeLaunchctl::new("plist-parse");
    let backend = user_backend(&fake).await;
    let home = fake.home();
    let mut s = test_spec("plist-types", &home);
    s.restart.restart_sec = 7;
    s.fingerprint.insert("worker-sha256".into(), "abc".into());
    let rendered = backend.render(&s).unwrap();
    let dict = Value::from_reader_xml(rendered.contents.as_bytes())
        .unwrap()
        .into_dictionary()
        .unwrap();
    let string = |k: &str| dict.get(k).and_then(Value::as_string).map(str::to_string);
    assert_eq!(string("Label").as_deref(), Some(s.name.as_str()));
    let argv: Vec<&str> = dict["ProgramArguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_string().unwrap())
        .collect();
    assert_eq!(
        argv,
        [
            "/usr/local/bin/worker",
            "--redis-url",
            "redis://127.0.0.1:6379",
            "two words & <xml>"
        ]
    );
    assert_eq!(
        dict["EnvironmentVariables"].as_dictionary().unwrap()["RUST_LOG"].as_string(),
        Some("info")
    );
    assert_eq!(dict["RunAtLoad"].as_boolean(), Some(true));
    assert_eq!(dict["KeepAlive"].as_boolean(), Some(true));
    assert_eq!(dict["ThrottleInterval"].as_signed_integer(), Some(7));
    assert_eq!(
        string("StandardOutPath").unwrap(),
        home.join(format!("logs dir/{}.out.log", s.name))
            .to_str()
            .unwrap()
    );
    assert_eq!(
        string("StandardErrorPath").unwrap(),
        home.join(format!("logs dir/{}.err.log", s.name))
            .to_str()
            .unwrap()
    );
    let managed = dict["TfOurworldCirclesManaged"].as_dictionary().unwrap();
    assert_eq!(
        managed["Fingerprint"].as_dictionary().unwrap()["worker-sha256"].as_string(),
        Some("abc")
    );
    // Kept from the template.
    assert_eq!(string("ProcessType").as_deref(), Some("Background"));

    // Text a plist cannot hold is refused, not written.
    s.args.push("bell\u{7}".into());
    let err = backend.render(&s).unwrap_err();
    assert!(err.to_string().contains("control characters"), "{err}");
}

/// libplist's `plistutil` reads our XML, converts it to a binary plist and
/// back, and the result is the same value.
#[tokio::test]
async fn plistutil_reads_the_rendered_plists() {
    let plistutil = HostEnv::from_process().find_program("plistutil");
    let Some(plistutil) = plistutil else {
        assert!(
            !env_flag("CIRCLES_REQUIRE_PLISTUTIL") && !env_flag("CIRCLES_CI"),
            "plistutil is required: apt-get install libplist-utils"
        );
        eprintln!(
            "\n!!! SKIPPED plistutil_reads_the_rendered_plists: plistutil not installed (apt-get install libplist-utils) !!!\n"
        );
        return;
    };
    let fake = FakeLaunchctl::new("plistutil");
    let backend = user_backend(&fake).await;
    let home = fake.home();
    let mut worker = test_spec("plistutil-worker", &home);
    worker.args.push(r#"quotes " ' and \ backslash"#.into());
    let mut server = test_spec("plistutil-server", &home);
    server.template = circles_services::ServiceTemplate::WsServer;
    for s in [worker, server] {
        let rendered = backend.render(&s).unwrap();
        let xml = fake.dir.join(format!("{}.xml.plist", s.name));
        let bin = fake.dir.join(format!("{}.bin.plist", s.name));
        let back = fake.dir.join(format!("{}.back.plist", s.name));
        std::fs::write(&xml, &rendered.contents).unwrap();
        for (from, to, format) in [(&xml, &bin, "bin"), (&bin, &back, "xml")] {
            let out = std::process::Command::new(&plistutil)
                .arg("-i")
                .arg(from)
                .arg("-o")
                .arg(to)
                .args(["-f", format])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "plistutil failed on {}: {}",
                from.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(std::fs::read(&bin).unwrap().starts_with(b"bplist00"));
        let original = Value::from_reader_xml(rendered.contents.as_bytes()).unwrap();
        assert_eq!(
            Value::from_file(&bin).unwrap(),
            original,
            "binary form of {}",
            s.name
        );
        assert_eq!(
            Value::from_file(&back).unwrap(),
            original,
            "round trip of {}",
            s.name
        );
    }
}

/// The real entry point, `ServiceBackend::detect`, reads the process
/// environment: run this test binary again with `CIRCLES_SERVICE_BACKEND`,
/// `HOME` and `PATH` set, as a user would.
#[test]
fn detect_reads_the_backend_home_and_path_from_the_environment() {
    let fake = FakeLaunchctl::new("detect-env");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "detect_child", "--ignored", "--nocapture"])
        .env("CIRCLES_TEST_DETECT_CHILD", "1")
        .env("CIRCLES_SERVICE_BACKEND", "launchd")
        .env("HOME", fake.home())
        .env("PATH", fake.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uid = HostEnv::from_process().euid;
    let label = name("detect-env");
    assert_eq!(
        fake.take_calls(),
        [
            format!("enable gui/{uid}/{label}"),
            format!("bootstrap gui/{uid} ~/Library/LaunchAgents/{label}.plist"),
            format!("print gui/{uid}"),
            format!("bootout gui/{uid}/{label}"),
        ]
    );
}

/// Runs in the child process of the test above.
#[tokio::test]
#[ignore = "run by detect_reads_the_backend_home_and_path_from_the_environment"]
async fn detect_child() {
    assert_eq!(
        std::env::var("CIRCLES_TEST_DETECT_CHILD").as_deref(),
        Ok("1")
    );
    let backend = ServiceBackend::detect(Some(ServiceScope::User), Templates::embedded())
        .await
        .unwrap();
    let home = PathBuf::from(std::env::var_os("HOME").unwrap());
    assert_eq!(backend.kind(), BackendKind::Launchd);
    assert!(
        backend
            .describe()
            .contains(home.join("Library/LaunchAgents").to_str().unwrap())
    );
    let s = test_spec("detect-env", &home);
    backend
        .apply(&backend.plan(&[s]).await.unwrap())
        .await
        .unwrap();
    assert_eq!(backend.cleanup().await.unwrap().len(), 1);
}

/// A daemon (system domain) with an unprivileged account and a secret: its
/// plist is 0600 with `UserName`/`GroupName`, and before launchd loads it
/// its state directory exists, owned by that account, mode 0700 — also a
/// database an earlier root-run install left there.
#[tokio::test]
async fn daemons_get_their_account_and_their_state_directory() {
    if !rustix::process::geteuid().is_root() {
        util::loud_skip("daemons_get_their_account: changing owners needs root");
        return;
    }
    let fake = FakeLaunchctl::new("launchctl-daemon");
    let daemons = fake.dir.join("LaunchDaemons");
    let backend = circles_services::LaunchdBackend::with_paths(
        ServiceScope::System,
        &daemons,
        "system",
        Templates::embedded(),
        &fake.host(),
    );
    let home = fake.home();
    let state = home.join("data/db/circle");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("circle_db.redb"), "root's data").unwrap();
    let mut s = test_spec("launchd-daemon", &home);
    s.account = circles_services::ServiceAccount::Unprivileged {
        user: "nobody".into(),
        group: "nogroup".into(),
    };
    s.state_dir = Some(state.clone());
    s.secret_env
        .0
        .insert("REDIS_URL".into(), "redis://:s3cret@127.0.0.1:6379".into());

    let plan = backend.plan(std::slice::from_ref(&s)).await.unwrap();
    backend.apply(&plan).await.unwrap();
    let plist = daemons.join("tf.ourworld.circles.launchd-daemon.plist");
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    assert_eq!(
        std::fs::metadata(&plist).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let dict = Value::from_file(&plist).unwrap().into_dictionary().unwrap();
    assert_eq!(dict["UserName"].as_string(), Some("nobody"));
    assert_eq!(dict["GroupName"].as_string(), Some("nogroup"));
    let nobody = uid_of("nobody");
    for path in [state.clone(), state.join("circle_db.redb")] {
        assert_eq!(std::fs::metadata(&path).unwrap().uid(), nobody, "{path:?}");
    }
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // launchd opens the log files as the daemon's user: they are its own.
    for key in ["StandardOutPath", "StandardErrorPath"] {
        let log = dict[key].as_string().unwrap();
        assert_eq!(std::fs::metadata(log).unwrap().uid(), nobody, "{log}");
    }
    assert_eq!(
        fake.take_calls(),
        [
            "enable system/tf.ourworld.circles.launchd-daemon".to_string(),
            format!("bootstrap system {}", plist.display()),
        ]
    );
    // An account that does not exist is an error naming it, before launchd
    // is asked anything.
    let mut other = test_spec("launchd-daemon-2", &home);
    other.account = circles_services::ServiceAccount::Unprivileged {
        user: "no-such-circles-user".into(),
        group: "nogroup".into(),
    };
    other.state_dir = Some(home.join("data/db/other"));
    let err = backend
        .apply(&backend.plan(std::slice::from_ref(&other)).await.unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no-such-circles-user"), "{err}");
    assert!(fake.take_calls().is_empty());
    backend.remove(&[s.name.clone()]).await.unwrap();
}

/// The uid of a user, from `id -u`.
fn uid_of(user: &str) -> u32 {
    let out = std::process::Command::new("id")
        .args(["-u", user])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
