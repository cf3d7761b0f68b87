//! Secrets: -32014 for a missing or wrong secret and for a user secret on
//! an admin method, over raw HTTP and a raw WebSocket; the secrets file's
//! mode; the bind policy; secrets never shown.

mod common;

use circles_test_support::{KEY_ONE, RedisServer, free_port};
use common::{ADMIN, Daemon, USER, Ws, error_code, error_message, secrets_file};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn wrong_missing_and_user_on_admin_are_refused_over_http_and_websocket() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_secrets(tmp.path(), &redis.url());
    let add = json!({"name": "alpha", "circle_public_key": KEY_ONE});

    // HTTP.
    let none = daemon.http();
    let wrong = daemon
        .http()
        .with_secret("admin-3f9c1e7a5b2d4c6e8f0a1b3c5d7e9f1X");
    let user = daemon.http().with_secret(USER);
    let admin = daemon.http().with_secret(ADMIN);
    for (who, client) in [("missing", &none), ("wrong", &wrong)] {
        for method in ["list_runners", "rpc.discover", "add_runner"] {
            let r = client.call(
                method,
                if method == "add_runner" {
                    add.clone()
                } else {
                    json!({})
                },
            );
            assert_eq!(error_code(&r), -32014, "{who} secret, {method}: {r}");
        }
    }
    assert!(error_message(&none.call("list_runners", json!({}))).contains("Authorization: Bearer"));
    let r = user.call("add_runner", add.clone());
    assert_eq!(error_code(&r), -32014, "{r}");
    assert!(error_message(&r).contains("needs an admin secret"), "{r}");
    assert_eq!(
        user.ok("list_runners", json!({})),
        json!([]),
        "user may read"
    );
    admin.ok("add_runner", add.clone());
    assert_eq!(user.ok("list_runners", json!({})), json!(["alpha"]));
    let r = user.call("remove_runner", json!({"name": "alpha"}));
    assert_eq!(error_code(&r), -32014);
    // The job methods are the user's too (a stopped runner: refused by state,
    // not by scope).
    let r = user.call("run_job", json!({"runner": "alpha", "script": "1"}));
    assert_eq!(error_code(&r), -32004, "{r}");

    // WebSocket: the secret goes on the upgrade.
    for (who, secret) in [
        ("missing", None),
        ("wrong", Some("nope-nope-nope-nope-nope")),
    ] {
        let mut ws = Ws::connect(daemon.port, secret).await;
        let r = ws.call("get_all_runner_status", json!({})).await;
        assert_eq!(error_code(&r), -32014, "{who}: {r}");
        let r = ws
            .call("subscribe_runner_logs", json!({"name": "alpha"}))
            .await;
        assert_eq!(error_code(&r), -32014, "{who}: {r}");
    }
    let mut ws_user = Ws::connect(daemon.port, Some(USER)).await;
    assert_eq!(
        ws_user.ok("list_runners", json!({})).await,
        json!(["alpha"])
    );
    let r = ws_user.call("stop_all", json!({})).await;
    assert_eq!(error_code(&r), -32014, "{r}");
    let mut ws_admin = Ws::connect(daemon.port, Some(ADMIN)).await;
    ws_admin.ok("remove_runner", json!({"name": "alpha"})).await;

    // No secret ever appears in what the supervisor wrote.
    let log = daemon.stderr();
    assert!(!log.contains(ADMIN) && !log.contains(USER), "{log}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", daemon.child.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(ADMIN));
}

#[test]
fn an_open_secrets_file_and_an_open_bind_without_secrets_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("redis://127.0.0.1:{}", free_port());
    let open = secrets_file(tmp.path(), 0o644);
    let mut d = Daemon::spawn(
        free_port(),
        tmp.path(),
        &url,
        &["--secrets-file", open.to_str().unwrap()],
        &[],
    );
    assert_eq!(d.wait_exit(std::time::Duration::from_secs(20)), Some(1));
    let err = d.stderr();
    assert!(
        err.contains("has mode 0644") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!err.contains(ADMIN));

    // 0.0.0.0 without secrets: refused before listening.
    let port = free_port();
    let mut d = Daemon::spawn(port, tmp.path(), &url, &["--bind", "0.0.0.0"], &[]);
    assert_eq!(d.wait_exit(std::time::Duration::from_secs(20)), Some(1));
    let err = d.stderr();
    assert!(err.contains("refusing to listen on 0.0.0.0"), "{err}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

    // Secrets from the environment; too short is refused.
    let mut d = Daemon::spawn(
        free_port(),
        tmp.path(),
        &url,
        &[],
        &[("SUPERVISOR_ADMIN_SECRETS", "short")],
    );
    assert_eq!(d.wait_exit(std::time::Duration::from_secs(20)), Some(1));
    assert!(
        d.stderr().contains("shorter than 16 characters"),
        "{}",
        d.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_from_the_environment_and_ctl_reads_supervisor_secret() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        tmp.path(),
        &redis.url(),
        &[],
        &[
            ("SUPERVISOR_ADMIN_SECRETS", ADMIN),
            ("SUPERVISOR_USER_SECRETS", USER),
        ],
    );
    assert_eq!(
        error_code(&daemon.http().call("list_runners", json!({}))),
        -32014
    );
    let url = format!("http://127.0.0.1:{}", daemon.port);
    let ctl = |secret: Option<&str>, args: &[&str]| {
        let mut cmd = std::process::Command::new(circles_test_support::binary("supervisor"));
        cmd.args(["ctl", "--url", &url])
            .args(args)
            .env_remove("SUPERVISOR_SECRET");
        if let Some(s) = secret {
            cmd.env("SUPERVISOR_SECRET", s);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = ctl(None, &["list"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("code -32014"), "{err}");
    let (code, _, err) = ctl(Some(USER), &["add", "alpha", KEY_ONE, "--no-start"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("needs an admin secret"), "{err}");
    let (code, out, err) = ctl(Some(ADMIN), &["add", "alpha", KEY_ONE, "--no-start"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("alpha") && out.contains("stopped"), "{out}");
    let (code, out, _) = ctl(Some(USER), &["--json", "list"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), r#"["alpha"]"#);
}
