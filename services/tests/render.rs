//! Rendering and planning, without any service manager: snapshots of the
//! rendered units and plists (scratch paths filtered to `[DIR]`), systemd's
//! quoting, `systemd-analyze verify` on every rendered unit, template and
//! spec errors, and plans against files on disk.

mod util;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use circles_services::{
    BackendKind, FallbackBackend, HostEnv, LaunchdBackend, PlannedAction, ResourceLimits,
    RestartPolicy, SecretEnv, ServiceAccount, ServiceBackend, ServiceError, ServiceScope,
    ServiceSpec, ServiceTemplate, SystemdBackend, Templates,
};
use util::{ScratchDir, env_flag, name, spec, write_executable};

const KEY: &str = circles_test_support::KEY_ONE;

/// Where the launcher keeps system services' data (a StateDirectory= root).
const DATA: &str = "/var/lib/circles";

/// A Redis URL with a password, as the launcher hands it over.
const SECRET_URL: &str = "redis://:s3cret$\"pw@127.0.0.1:6379";

/// The specs the launcher will hand us, with programs under `dir`.
fn launcher_like_specs(dir: &Path) -> [ServiceSpec; 2] {
    let data = Path::new(DATA);
    let db = data.join("db").join(KEY);
    let secret_env = SecretEnv(BTreeMap::from([("REDIS_URL".into(), SECRET_URL.into())]));
    let account = ServiceAccount::Unprivileged {
        user: "nobody".into(),
        group: "nogroup".into(),
    };
    let worker = ServiceSpec {
        name: name(&format!("circle-worker-{KEY}")),
        template: ServiceTemplate::Worker,
        description: format!("circles worker for circle {KEY}"),
        program: dir.join("bin/worker"),
        args: vec![
            "--circle-public-key".into(),
            KEY.into(),
            "--db-path".into(),
            db.to_str().unwrap().into(),
            "--keep-queued-on-stop".into(),
        ],
        env: BTreeMap::from([("RUST_LOG".into(), "info".into())]),
        secret_env: secret_env.clone(),
        secrets_dir: data.join("secrets"),
        account: account.clone(),
        state_dir: Some(db.clone()),
        limits: ResourceLimits {
            memory_max: Some(1 << 30),
            tasks_max: Some(64),
            nofile: Some(1024),
        },
        working_directory: db.clone(),
        read_write_paths: Vec::new(),
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
        args: vec!["--port".into(), "8080".into()],
        env: BTreeMap::new(),
        secret_env,
        secrets_dir: data.join("secrets"),
        account,
        state_dir: None,
        limits: ResourceLimits {
            nofile: Some(65536),
            ..ResourceLimits::default()
        },
        working_directory: data.to_path_buf(),
        read_write_paths: Vec::new(),
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
    let [mut worker, mut server] = launcher_like_specs(dir.path());
    // Secret files are planned like units; see
    // `a_changed_secret_alone_updates_the_service`.
    worker.secret_env = SecretEnv::default();
    server.secret_env = SecretEnv::default();
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
        std::fs::set_permissions(&r.path, std::fs::Permissions::from_mode(0o644)).unwrap();
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
    assert_eq!(
        plan.items[0].1,
        PlannedAction::Update {
            previous,
            previous_mode: 0o644,
            previous_secret: None,
        }
    );
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

fn line_of<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter(|l| l.starts_with(&format!("{key}=")))
        .collect()
}

#[test]
fn unprivileged_system_units_get_a_dynamic_user_and_their_state_directory() {
    let dir = FixedDir(Path::new("/opt/circles"));
    let [worker, server] = launcher_like_specs(dir.path());
    let system = systemd_backend(ServiceScope::System, Path::new("/etc/systemd/system"));
    let unit = system.render(&worker).unwrap().contents;
    for line in [
        "DynamicUser=yes",
        "PrivateUsers=yes",
        "CapabilityBoundingSet=",
        &format!("StateDirectory=\"circles/db/{KEY}\""),
        "StateDirectoryMode=0700",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "MemoryMax=1073741824",
        "MemorySwapMax=0",
        "TasksMax=64",
        "LimitNOFILE=1024",
        "UMask=0077",
        "EnvironmentFile=/var/lib/circles/secrets/tf.ourworld.circles.circle-worker-0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798.env",
    ] {
        assert!(unit.lines().any(|l| l == line), "no `{line}` in\n{unit}");
    }
    // The state directory is systemd's to hand over, not a ReadWritePaths=.
    assert_eq!(line_of(&unit, "ReadWritePaths"), ["ReadWritePaths="]);
    let server_unit = system.render(&server).unwrap().contents;
    assert!(server_unit.contains("\nDynamicUser=yes\n"));
    assert!(!server_unit.contains("StateDirectory"), "{server_unit}");
    assert!(server_unit.contains("\nLimitNOFILE=65536\n"));
    assert!(server_unit.contains("\nMemoryMax=infinity\n"));

    // User units keep the user, and write their data through ReadWritePaths.
    let user = systemd_backend(ServiceScope::User, Path::new("/root/.config/systemd/user"));
    let unit = user.render(&worker).unwrap().contents;
    assert!(!unit.contains("DynamicUser"), "{unit}");
    assert!(!unit.contains("StateDirectory"), "{unit}");
    assert_eq!(
        line_of(&unit, "ReadWritePaths"),
        [format!("ReadWritePaths=\"/var/lib/circles/db/{KEY}\"").as_str()]
    );
    assert_eq!(line_of(&unit, "ProtectHome"), ["ProtectHome=read-only"]);

    // A state directory systemd cannot own is refused, naming the rule.
    let mut elsewhere = worker.clone();
    elsewhere.state_dir = Some("/srv/circles/db".into());
    let err = system.render(&elsewhere).unwrap_err();
    assert!(err.to_string().contains("must lie under /var/lib"), "{err}");
    elsewhere.state_dir = Some("/var/lib/../etc".into());
    assert!(system.render(&elsewhere).is_err());

    // A binary under a home directory stays reachable, read-only.
    let mut in_home = worker.clone();
    in_home.program = "/home/me/circles/target/release/worker".into();
    let unit = system.render(&in_home).unwrap().contents;
    assert_eq!(line_of(&unit, "ProtectHome"), ["ProtectHome=read-only"]);
    // A binary under /tmp (a CI checkout) is bound into the private /tmp
    // that DynamicUser= implies.
    let mut in_tmp = worker;
    in_tmp.program = "/tmp/ci/target/worker".into();
    let unit = system.render(&in_tmp).unwrap().contents;
    assert_eq!(
        line_of(&unit, "BindReadOnlyPaths"),
        ["BindReadOnlyPaths=\"/tmp/ci/target/worker\""]
    );
}

#[test]
fn secret_environment_stays_out_of_the_unit() {
    let dir = FixedDir(Path::new("/opt/circles"));
    let [worker, _] = launcher_like_specs(dir.path());
    let backend = systemd_backend(ServiceScope::System, Path::new("/etc/systemd/system"));
    let rendered = backend.render(&worker).unwrap();
    assert!(
        !rendered.contents.contains("s3cret"),
        "{}",
        rendered.contents
    );
    assert_eq!(rendered.mode, 0o644);
    let secret = rendered.secret.as_ref().expect("a secret file");
    assert_eq!(
        secret.path,
        Path::new(DATA).join(format!("secrets/{}.env", worker.name))
    );
    // Quoted for EnvironmentFile=: `$`, `"`, `\` and backquote escaped.
    assert!(
        secret
            .contents
            .ends_with("\nREDIS_URL=\"redis://:s3cret\\$\\\"pw@127.0.0.1:6379\"\n"),
        "{:?}",
        secret.contents
    );
    assert!(
        !format!("{rendered:?}").contains("s3cret"),
        "Debug hides it"
    );
    assert!(!format!("{worker:?}").contains("s3cret"), "Debug hides it");
    // A secret that is also plain, or spans lines, is refused.
    let mut both = worker.clone();
    both.env.insert("REDIS_URL".into(), "x".into());
    assert!(backend.render(&both).is_err());
    let mut lines = worker;
    lines
        .secret_env
        .0
        .insert("REDIS_URL".into(), "a\nExecStartPre=/bin/evil".into());
    let err = backend.render(&lines).unwrap_err();
    assert!(!err.to_string().contains("evil"), "{err}");
}

#[tokio::test]
async fn a_changed_secret_alone_updates_the_service() {
    let dir = ScratchDir::new("plan-secret");
    let backend = systemd_backend(ServiceScope::System, &dir.join("units"));
    let [mut worker, _] = launcher_like_specs(dir.path());
    worker.secrets_dir = dir.join("secrets");
    let plan = backend.plan(std::slice::from_ref(&worker)).await.unwrap();
    let (rendered, _) = &plan.items[0];
    std::fs::create_dir_all(dir.join("units")).unwrap();
    std::fs::write(&rendered.path, &rendered.contents).unwrap();
    std::fs::set_permissions(&rendered.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let secret = rendered.secret.as_ref().unwrap();
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    std::fs::write(&secret.path, &secret.contents).unwrap();
    let plan = backend.plan(std::slice::from_ref(&worker)).await.unwrap();
    assert_eq!(plan.items[0].1, PlannedAction::Unchanged);

    // A new password: same unit text, new secret file, so a restart.
    worker
        .secret_env
        .0
        .insert("REDIS_URL".into(), "redis://:new@127.0.0.1:6379".into());
    let plan = backend.plan(std::slice::from_ref(&worker)).await.unwrap();
    assert_eq!(plan.items[0].0.contents, rendered.contents);
    match &plan.items[0].1 {
        PlannedAction::Update {
            previous_secret, ..
        } => assert_eq!(previous_secret.as_ref(), Some(secret)),
        other => panic!("expected an update, got {other:?}"),
    }
}

#[test]
fn launchd_daemons_run_as_their_account_with_limits() {
    let dir = FixedDir(Path::new("/opt/circles"));
    let [worker, _] = launcher_like_specs(dir.path());
    let daemons = LaunchdBackend::with_paths(
        ServiceScope::System,
        "/Library/LaunchDaemons",
        "system",
        Templates::embedded(),
        &host(),
    );
    let rendered = daemons.render(&worker).unwrap();
    // The Redis password is in the plist (launchd has no environment file),
    // so the plist is written 0600.
    assert_eq!(rendered.mode, 0o600);
    let dict = plist::Value::from_reader_xml(rendered.contents.as_bytes())
        .unwrap()
        .into_dictionary()
        .unwrap();
    assert_eq!(dict["UserName"].as_string(), Some("nobody"));
    assert_eq!(dict["GroupName"].as_string(), Some("nogroup"));
    assert_eq!(dict["Umask"].as_signed_integer(), Some(0o077));
    for key in ["SoftResourceLimits", "HardResourceLimits"] {
        let limits = dict[key].as_dictionary().unwrap();
        assert_eq!(limits["NumberOfFiles"].as_signed_integer(), Some(1024));
        assert_eq!(limits["Core"].as_signed_integer(), Some(0));
    }
    assert_eq!(
        dict["EnvironmentVariables"].as_dictionary().unwrap()["REDIS_URL"].as_string(),
        Some(SECRET_URL)
    );
    // No password on the command line.
    assert!(
        dict["ProgramArguments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| !a.as_string().unwrap().contains("s3cret"))
    );

    // Agents run as the user: no UserName.
    let agents = LaunchdBackend::with_paths(
        ServiceScope::User,
        "/Users/me/Library/LaunchAgents",
        "gui/501",
        Templates::embedded(),
        &host(),
    );
    let mut plain = worker;
    plain.secret_env = SecretEnv::default();
    let rendered = agents.render(&plain).unwrap();
    assert_eq!(rendered.mode, 0o644);
    assert!(!rendered.contents.contains("UserName"));
}

#[test]
fn the_fallback_backend_refuses_secrets() {
    let dir = ScratchDir::new("fallback-secret");
    let backend = FallbackBackend::with_registry_dir(
        ServiceScope::System,
        service_manager::ServiceManagerKind::OpenRc,
        dir.path(),
    );
    let mut s = spec(name("fb"), "/usr/bin/worker", &[], Path::new("/srv"));
    s.secret_env
        .0
        .insert("REDIS_URL".into(), "redis://:s3cret@h".into());
    let err = backend.render(&s).unwrap_err().to_string();
    assert!(err.contains("cannot keep the secret REDIS_URL"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}
