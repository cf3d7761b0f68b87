//! The launcher driving the launchd backend (selected with
//! `CIRCLES_SERVICE_BACKEND=launchd`, since launchd cannot run on Linux).
//! The backend's exact `launchctl` calls are tested against a recording
//! stand-in in `services/tests/launchd.rs`; here: that the launcher wires
//! it up, renders real plists and, in a dry run, changes nothing.

mod common;

use circles_test_support::{KEY_ONE, binary, free_port, stdout_of};

#[test]
fn launchd_dry_run_prints_the_plists_and_changes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let script = home.path().join("init.rhai");
    std::fs::write(&script, "1").unwrap();
    let stdout = stdout_of(
        std::process::Command::new(binary("launcher"))
            .env("CIRCLES_SERVICE_BACKEND", "launchd")
            .env("HOME", home.path())
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
            .arg(home.path().join("data")),
    );
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
