//! Rendering and planning, without any service manager: snapshots of the
//! rendered units and plists (scratch paths filtered to `[DIR]`), systemd's
//! quoting, `systemd-analyze verify` on every rendered unit, template and
//! spec errors, and plans against files on disk.

mod util;

use std::collections::BTreeMap;
use std::path::Path;

use circles_services::{
    BackendKind, FallbackBackend, HostEnv, LaunchdBackend, PlannedAction, RestartPolicy,
    ServiceBackend, ServiceError, ServiceScope, ServiceSpec, ServiceTemplate, SystemdBackend,
    Templates,
};
use util::{ScratchDir, env_flag, name, spec, write_executable};

const KEY: &str = circles_test_support::KEY_ONE;

/// The specs the launcher will hand us, rooted at `dir`.
fn launcher_like_specs(dir: &Path) -> [ServiceSpec; 2] {
    let data = dir.join("launch_data");
    let worker = ServiceSpec {
        name: name(&format!("circle-worker-{KEY}")),
        template: ServiceTemplate::Worker,
        description: format!("circles worker for circle {KEY}"),
        program: dir.join("bin/worker"),
        args: vec![
            "--redis-url".into(),
            "redis://127.0.0.1:6379".into(),
            "--circle-public-key".into(),
            KEY.into(),
            "--db-path".into(),
            data.to_str().unwrap().into(),
            "--keep-queued-on-stop".into(),
        ],
        env: BTreeMap::from([("RUST_LOG".into(), "info".into())]),
        working_directory: data.clone(),
        read_write_paths: vec![data.clone()],
        log_dir: data.join("logs"),
        notify_ready: true,
        restart: RestartPolicy::default(),
        fingerprint: BTreeMap::from([
            (
                "worker-sha256".into(),
                "9f86d081884c7d659a2feaa0c55ad015".into(),
            ),
            (
                "init-script-sha256".into(),
                "60303ae22b998861bce3b28f33eec1be".into(),
            ),
        ]),
    };
    let server = ServiceSpec {
        name: name("circle-ws-server"),
        template: ServiceTemplate::WsServer,
        description: "circles WebSocket server".into(),
        program: dir.join("bin/server"),
        args: vec![
            "--port".into(),
            "8080".into(),
            "--redis-url".into(),
            "redis://127.0.0.1:6379".into(),
        ],
        env: BTreeMap::new(),
        working_directory: data.clone(),
        read_write_paths: vec![data.clone()],
        log_dir: data.join("logs"),
        notify_ready: true,
        restart: RestartPolicy::default(),
        fingerprint: BTreeMap::from([(
            "server-sha256".into(),
            "2c26b46b68ffc68ff99b453c1d304134".into(),
        )]),
    };
    [worker, server]
}

/// Escapes `text` for a regex (insta filters are regexes).
fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$#&-~".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

fn host() -> HostEnv {
    HostEnv::from_process()
}

fn systemd_backend(scope: ServiceScope, unit_dir: &Path) -> SystemdBackend {
    SystemdBackend::with_unit_dir(scope, unit_dir, Templates::embedded(), &host())
}

#[test]
fn rendered_units_and_plists_match_the_snapshots() {
    // Rendering touches no disk; a fixed path keeps the snapshots the same
    // wherever the checkout is (under /tmp, units render PrivateTmp=no).
    let dir = FixedDir(Path::new("/opt/circles-snapshot"));
    let specs = launcher_like_specs(dir.path());
    let system = systemd_backend(ServiceScope::System, &dir.join("units"));
    let user = systemd_backend(ServiceScope::User, &dir.join("user-units"));
    let launchd = LaunchdBackend::with_paths(
        ServiceScope::User,
        dir.join("LaunchAgents"),
        "gui/501",
        Templates::embedded(),
        &host(),
    );
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(&regex_escape(dir.path().to_str().unwrap()), "[DIR]");
    settings.bind(|| {
        for (spec, kind) in specs.iter().zip(["worker", "ws-server"]) {
            let unit = system.render(spec).unwrap();
            assert_eq!(
                unit.path,
                dir.join("units").join(format!("{}.service", spec.name))
            );
            insta::assert_snapshot!(format!("systemd-system-{kind}"), unit.contents);
            let plist = launchd.render(spec).unwrap();
            assert_eq!(
                plist.path,
                dir.join("LaunchAgents")
                    .join(format!("{}.plist", spec.name))
            );
            insta::assert_snapshot!(format!("launchd-{kind}"), plist.contents);
        }
        let user_unit = user.render(&specs[1]).unwrap();
        insta::assert_snapshot!("systemd-user-ws-server", user_unit.contents);
    });
}

/// A directory path that is never created.
struct FixedDir(&'static Path);

impl FixedDir {
    fn path(&self) -> &Path {
        self.0
    }

    fn join(&self, p: &str) -> std::path::PathBuf {
        self.0.join(p)
    }
}

#[test]
fn systemd_quoting_of_every_directive() {
    let dir = Path::new("/opt/my circles");
    let mut s = spec(
        name("quoting"),
        "/opt/my circles/bin/$worker 100%",
        &[
            "two words",
            r#"say "hi""#,
            r"C:\temp",
            "50%",
            "$HOME",
            "",
            "a\nb",
        ],
        &dir.join("work %i"),
    );
    s.env = BTreeMap::from([("TRICKY".into(), r#"a "b" \c 5% $D"#.into())]);
    s.read_write_paths = vec![dir.join("data"), dir.join(r#"odd "dir" %n"#)];
    s.description = "100% tested".into();
    let unit = systemd_backend(ServiceScope::System, Path::new("/etc/systemd/system"))
        .render(&s)
        .unwrap()
        .contents;
    let line = |key: &str| {
        unit.lines()
            .find(|l| l.starts_with(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in\n{unit}"))
            .to_string()
    };
    assert_eq!(
        line("ExecStart"),
        r#"ExecStart="/opt/my circles/bin/$worker 100%%" "two words" "say \"hi\"" "C:\\temp" "50%%" "$$HOME" "" "a\nb""#
    );
    assert_eq!(
        line("Environment"),
        r#"Environment="TRICKY=a \"b\" \\c 5%% $D""#
    );
    assert_eq!(
        line("ReadWritePaths"),
        r#"ReadWritePaths="/opt/my circles/data" "/opt/my circles/odd \"dir\" %%n""#
    );
    assert_eq!(
        line("WorkingDirectory"),
        "WorkingDirectory=/opt/my circles/work %%i"
    );
    assert_eq!(line("Description"), "Description=100%% tested");
    assert_eq!(line("Type"), "Type=exec");
    assert_eq!(line("WantedBy"), "WantedBy=multi-user.target");
    // The template's own header comment is not copied.
    assert!(!unit.contains("Template for"), "{unit}");
    assert!(
        unit.starts_with("# Managed by circles launcher — do not edit; changes are overwritten\n")
    );
}

#[test]
fn systemd_refuses_a_program_path_it_cannot_exec() {
    let s = spec(
        name("bad-program"),
        r#"/opt/it's "here"/worker"#,
        &[],
        Path::new("/opt"),
    );
    let err = systemd_backend(ServiceScope::System, Path::new("/etc/systemd/system"))
        .render(&s)
        .unwrap_err();
    assert!(matches!(err, ServiceError::InvalidSpec { .. }), "{err:?}");
    assert!(err.to_string().contains("quotes or backslashes"), "{err}");
}

#[test]
fn private_tmp_is_kept_only_where_it_hides_nothing() {
    let backend = systemd_backend(ServiceScope::System, Path::new("/etc/systemd/system"));
    let elsewhere = spec(
        name("elsewhere"),
        "/opt/circles/worker",
        &[],
        Path::new("/srv/data"),
    );
    assert!(
        backend
            .render(&elsewhere)
            .unwrap()
            .contents
            .contains("\nPrivateTmp=yes\n")
    );
    // A CI checkout in /tmp: a private /tmp would hide the binary and data.
    let in_tmp = spec(
        name("in-tmp"),
        "/tmp/ci/target/worker",
        &[],
        Path::new("/tmp/ci/data"),
    );
    assert!(
        backend
            .render(&in_tmp)
            .unwrap()
            .contents
            .contains("\nPrivateTmp=no\n")
    );
}

/// `systemd-analyze verify` (works without a booted systemd) accepts every
/// unit we render, including one whose program path has spaces, `%` and `$`.
#[test]
fn systemd_analyze_verify_accepts_every_rendered_unit() {
    if !Path::new("/usr/bin/systemd-analyze").exists()
        && !Path::new("/bin/systemd-analyze").exists()
    {
        assert!(
            !env_flag("CIRCLES_REQUIRE_SYSTEMD") && !env_flag("CIRCLES_CI"),
            "systemd-analyze is required (apt-get install systemd)"
        );
        util::loud_skip(
            "systemd_analyze_verify: systemd-analyze is not installed (apt-get install systemd)",
        );
        return;
    }
    let dir = ScratchDir::new("verify");
    let units = dir.join("units");
    let mut specs = launcher_like_specs(dir.path()).to_vec();
    for s in &specs {
        write_executable(&s.program, "#!/bin/sh\nexit 0\n");
    }
    let tricky_program = dir.join("bin dir %n $X/the worker 100%");
    write_executable(&tricky_program, "#!/bin/sh\nexit 0\n");
    let mut tricky = spec(
        name("verify-tricky"),
        &tricky_program,
        &["two words", "100%", "$HOME", r#"q"uote"#],
        &dir.join(r#"work dir "x" %h"#),
    );
    tricky.read_write_paths = vec![dir.join("rw dir %n"), dir.join(r#"rw 'q' "dq""#)];
    tricky.env = BTreeMap::from([("X".into(), r#"a "b" \c %d"#.into())]);
    specs.push(tricky);

    for scope in [ServiceScope::System, ServiceScope::User] {
        let backend = systemd_backend(scope, &units);
        for s in &specs {
            let rendered = backend.render(s).unwrap();
            std::fs::create_dir_all(&units).unwrap();
            std::fs::write(&rendered.path, &rendered.contents).unwrap();
            let out = std::process::Command::new("systemd-analyze")
                .args(["verify", "--man=no"])
                .arg(&rendered.path)
                .output()
                .expect("run systemd-analyze");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stderr.trim().is_empty(),
                "systemd-analyze verify rejected {} ({scope} scope): {stderr}\n{}",
                s.name,
                rendered.contents
            );
            std::fs::remove_file(&rendered.path).unwrap();
        }
    }
}

#[tokio::test]
async fn plan_compares_with_the_files_on_disk() {
    let dir = ScratchDir::new("plan");
    let backend = systemd_backend(ServiceScope::System, &dir.join("units"));
    let [worker, server] = launcher_like_specs(dir.path());
    let specs = vec![worker.clone(), server.clone()];

    let plan = backend.plan(&specs).await.unwrap();
    assert_eq!(
        plan.items
            .iter()
            .map(|(_, a)| a.clone())
            .collect::<Vec<_>>(),
        [PlannedAction::Create, PlannedAction::Create]
    );
    assert!(plan.changes_files());
    // As apply would leave them.
    std::fs::create_dir_all(dir.join("units")).unwrap();
    for (r, _) in &plan.items {
        std::fs::write(&r.path, &r.contents).unwrap();
    }
    let plan = backend.plan(&specs).await.unwrap();
    assert!(
        plan.items
            .iter()
            .all(|(_, a)| *a == PlannedAction::Unchanged)
    );
    assert!(!plan.changes_files());

    // A new worker binary: only the worker changes, and the plan keeps the
    // installed text for the rollback.
    let previous = std::fs::read_to_string(&plan.items[0].0.path).unwrap();
    let mut new_worker = worker.clone();
    new_worker
        .fingerprint
        .insert("worker-sha256".into(), "a new hash".into());
    let plan = backend.plan(&[new_worker, server.clone()]).await.unwrap();
    assert_eq!(plan.items[0].1, PlannedAction::Update { previous });
    assert_eq!(plan.items[1].1, PlannedAction::Unchanged);

    // A file with our name that we did not write.
    std::fs::write(&plan.items[1].0.path, "[Service]\nExecStart=/bin/true\n").unwrap();
    let err = backend.plan(&specs).await.unwrap_err();
    assert!(matches!(&err, ServiceError::AlreadyExists { name, .. } if *name == server.name));
    assert_eq!(
        err.to_string(),
        format!(
            "service `{}` already exists at {} and was not installed by circles",
            server.name,
            plan.items[1].0.path.display()
        )
    );

    let err = backend.plan(&[worker.clone(), worker]).await.unwrap_err();
    assert!(matches!(err, ServiceError::Duplicate { .. }), "{err:?}");
}

#[test]
fn template_errors_name_the_template() {
    let dir = ScratchDir::new("templates");
    let s = spec(name("tpl"), "/bin/true", &[], Path::new("/"));
    let cases = [
        (
            "[Service]\nExecStart={{exec_start}}\nUser={{user}}\n",
            "unknown placeholder {{user}}",
        ),
        (
            "[Service]\nExecStart=/bin/true\n",
            "no {{exec_start}} placeholder",
        ),
        (
            "[Service]\nExecStart={{exec_start}} {{environment}}\n",
            "must stand alone",
        ),
        ("[Service]\nExecStart={{exec_start\n", "unclosed"),
    ];
    for (text, expected) in cases {
        std::fs::create_dir_all(dir.join("systemd")).unwrap();
        std::fs::write(dir.join("systemd/circle-worker.service"), text).unwrap();
        let templates = Templates::from_dir(dir.path()).unwrap();
        let err = SystemdBackend::with_unit_dir(ServiceScope::System, "/x", templates, &host())
            .render(&s)
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains(expected), "{message}");
        assert!(
            message.contains("systemd/circle-worker.service"),
            "{message}"
        );
    }
    std::fs::create_dir_all(dir.join("launchd")).unwrap();
    for (text, expected) in [
        ("<plist version=\"1.0\"><array/></plist>", "not a <dict>"),
        ("not xml", "not a valid XML plist"),
    ] {
        std::fs::write(dir.join("launchd/circle-worker.plist"), text).unwrap();
        let templates = Templates::from_dir(dir.path()).unwrap();
        let err = LaunchdBackend::with_paths(ServiceScope::User, "/x", "gui/1", templates, &host())
            .render(&s)
            .unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
    }
}

#[test]
fn a_template_directory_changes_the_rendered_unit() {
    let dir = ScratchDir::new("custom-template");
    std::fs::create_dir_all(dir.join("systemd")).unwrap();
    std::fs::write(
        dir.join("systemd/circle-ws-server.service"),
        "# operator's template\n[Service]\nExecStart={{exec_start}}\nMemoryMax=1G\n",
    )
    .unwrap();
    let templates = Templates::from_dir(dir.path()).unwrap();
    let backend = SystemdBackend::with_unit_dir(ServiceScope::System, "/x", templates, &host());
    let mut s = spec(name("custom"), "/bin/true", &["a"], Path::new("/"));
    s.template = ServiceTemplate::WsServer;
    assert_eq!(
        backend.render(&s).unwrap().contents,
        "# Managed by circles launcher — do not edit; changes are overwritten\n\
         [Service]\nExecStart=\"/bin/true\" \"a\"\nMemoryMax=1G\n"
    );
    // The worker template was not overridden.
    s.template = ServiceTemplate::Worker;
    assert!(
        backend
            .render(&s)
            .unwrap()
            .contents
            .contains("ProtectSystem=strict")
    );
}

#[test]
fn invalid_specs_are_refused_before_rendering() {
    let base = spec(name("invalid"), "/bin/true", &[], Path::new("/srv"));
    type Change = Box<dyn Fn(&mut ServiceSpec)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|s| s.program = "bin/worker".into()),
            "not an absolute path",
        ),
        (
            Box::new(|s| s.working_directory = "data".into()),
            "not an absolute path",
        ),
        (
            Box::new(|s| s.read_write_paths.push("/srv/a\nb".into())),
            "control characters",
        ),
        (Box::new(|s| s.log_dir = "/srv/logs/".into()), ""),
        (
            Box::new(|s| s.description = "two\nlines".into()),
            "one line",
        ),
        (Box::new(|s| s.description = " ".into()), "empty"),
        (Box::new(|s| s.args.push("nul\0".into())), "NUL"),
        (
            Box::new(|s| {
                s.env.insert("1BAD".into(), "x".into());
            }),
            "environment variable name",
        ),
        (
            Box::new(|s| {
                s.env.insert("A-B".into(), "x".into());
            }),
            "environment variable name",
        ),
        (
            Box::new(|s| {
                s.fingerprint.insert("a b".into(), "x".into());
            }),
            "fingerprint key",
        ),
        (
            Box::new(|s| {
                s.fingerprint.insert("k".into(), "x\ny".into());
            }),
            "one line",
        ),
        (
            Box::new(|s| s.restart.start_limit_burst = 0),
            "start_limit_burst",
        ),
        (
            Box::new(|s| s.program = "/srv/ends-with-space ".into()),
            "ends in whitespace",
        ),
    ];
    let backend = systemd_backend(ServiceScope::System, Path::new("/etc/systemd/system"));
    for (change, expected) in cases {
        let mut s = base.clone();
        change(&mut s);
        let result = backend.render(&s);
        if expected.is_empty() {
            // A trailing slash is fine.
            result.unwrap();
            continue;
        }
        let err = result.unwrap_err();
        assert!(matches!(err, ServiceError::InvalidSpec { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(expected), "{message}");
        assert!(message.contains("tf.ourworld.circles.invalid"), "{message}");
    }
}

#[test]
fn the_fallback_backend_refuses_what_it_cannot_quote() {
    let dir = ScratchDir::new("fallback-render");
    let backend = FallbackBackend::with_registry_dir(
        ServiceScope::System,
        service_manager::ServiceManagerKind::OpenRc,
        dir.path(),
    );
    let ok = spec(
        name("fb"),
        "/usr/bin/worker",
        &["--port", "8080"],
        Path::new("/srv"),
    );
    let rendered = backend.render(&ok).unwrap();
    assert_eq!(rendered.path, dir.join("tf.ourworld.circles.fb.plist"));
    for bad in ["two words", "$HOME", "it's", "a;b", ""] {
        let s = spec(name("fb"), "/usr/bin/worker", &[bad], Path::new("/srv"));
        let err = backend.render(&s).unwrap_err();
        assert!(err.to_string().contains("cannot quote"), "{bad:?}: {err}");
    }
    assert!(!backend.unavailable_features().is_empty());
}

#[tokio::test]
async fn detect_honours_the_backend_override() {
    let dir = ScratchDir::new("detect");
    let host = HostEnv {
        backend_override: Some("launchd".into()),
        home: Some(dir.path().to_path_buf()),
        euid: 501,
        ..HostEnv::from_process()
    };
    let backend = ServiceBackend::detect_in(&host, None, Templates::embedded())
        .await
        .unwrap();
    assert_eq!(backend.kind(), BackendKind::Launchd);
    assert_eq!(backend.scope(), ServiceScope::User, "not root: user scope");
    assert_eq!(
        backend.describe(),
        format!(
            "launchd, user scope ({}/Library/LaunchAgents, domain gui/501)",
            dir.path().display()
        )
    );
    assert!(!backend.unavailable_features().is_empty());

    let root = HostEnv {
        euid: 0,
        ..host.clone()
    };
    let backend = ServiceBackend::detect_in(&root, None, Templates::embedded())
        .await
        .unwrap();
    assert_eq!(backend.scope(), ServiceScope::System);
    assert!(
        backend
            .describe()
            .contains("/Library/LaunchDaemons, domain system")
    );

    let bogus = HostEnv {
        backend_override: Some("upstart".into()),
        ..host
    };
    let err = ServiceBackend::detect_in(&bogus, None, Templates::embedded())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"upstart\""), "{err}");

    // Linux without a running systemd and without OpenRC: a clear refusal,
    // not service-manager's systemctl calls that cannot work.
    if cfg!(target_os = "linux") {
        let bare = HostEnv {
            backend_override: None,
            systemd_booted: false,
            path: Some(std::env::join_paths([dir.path()]).unwrap()),
            ..HostEnv::from_process()
        };
        let err = ServiceBackend::detect_in(&bare, None, Templates::embedded())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("systemd is not running"), "{err}");
    }
}
