//! The launcher driving the launchd backend (selected with
//! `CIRCLES_SERVICE_BACKEND=launchd`, since launchd cannot run on Linux).
//! The backend's exact `launchctl` calls are tested against a recording
//! stand-in in `services/tests/launchd.rs`; here: that the launcher wires
//! it up, renders real plists and, in a dry run, changes nothing.

mod common;

use circles_test_support::{KEY_ONE, binary, free_port, stdout_of};

/// `launcher --use-service-manager --dry-run --user` of one circle with an
/// init script on the launchd backend, `HOME` in `home`; its stdout.
fn launchd_dry_run(home: &std::path::Path, extra: &[&str]) -> String {
    let script = home.join("init.rhai");
    std::fs::write(&script, "1").unwrap();
    stdout_of(
        std::process::Command::new(binary("launcher"))
            .env("CIRCLES_SERVICE_BACKEND", "launchd")
            .env("HOME", home)
            .args([
                "--use-service-manager",
                "--dry-run",
                "--user",
                "--worker-binary",
            ])
            .arg(binary("worker"))
            .args([
                "-p",
                &free_port().to_string(),
                "-c",
                &format!("{KEY_ONE}:{}", script.display()),
            ])
            .arg("--data-dir")
            .arg(home.join("data"))
            .args(extra),
    )
}

#[test]
fn launchd_dry_run_prints_the_plists_and_changes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let stdout = launchd_dry_run(home.path(), &[]);
    assert!(stdout.contains("dry run: launchd"), "{stdout}");
    let agents = home.path().join("Library/LaunchAgents");
    let worker_plist = agents.join(format!("tf.ourworld.circles.circle-worker-{KEY_ONE}.plist"));
    assert!(
        stdout.contains(&format!("# file: {}", worker_plist.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "<string>tf.ourworld.circles.circle-worker-{KEY_ONE}</string>"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("<key>KeepAlive</key>") && stdout.contains("<key>ProgramArguments</key>"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("<string>{}</string>", binary("worker").display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("tf.ourworld.circles.circle-ws-server.plist"),
        "{stdout}"
    );
    assert!(!agents.exists(), "a dry run writes no plist");
    assert!(
        !home.path().join("data").exists(),
        "a dry run makes no data directory"
    );
}

#[test]
fn a_dry_run_never_shows_the_redis_password_even_where_xml_escapes_it() {
    // The plists carry the Redis URL (mode 0600); the dry run shows them
    // with the password as `***`. A password with `&`, `<`, `>` or quotes
    // is escaped in the XML text, where a plain text replace missed it.
    let home = tempfile::tempdir().unwrap();
    let url = "redis://:s3cr&t<pw>\"'x@127.0.0.1:6399";
    let stdout = launchd_dry_run(home.path(), &["--redis-url", url]);
    for leak in ["s3cr", "&amp;t", "t&lt;pw"] {
        assert!(!stdout.contains(leak), "{leak} shown:\n{stdout}");
    }
    assert!(
        stdout.contains("<string>redis://:***@127.0.0.1:6399</string>"),
        "{stdout}"
    );
}
