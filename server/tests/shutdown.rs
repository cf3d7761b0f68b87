//! Stopping: the library's graceful drain, and the `server` binary's
//! signals, readiness notification, exit codes and error messages.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use circles_server::ServerConfig;
use circles_server::rpc::code;
use circles_test_support::{KEY_ONE, RedisServer, free_port, wait_for_port};
use common::{Client, RunningServer, busy_script, start_worker, test_config};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Polls until nothing accepts connections at `addr`.
async fn wait_until_refused(addr: std::net::SocketAddr) {
    let start = Instant::now();
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{addr} still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_going_away(message: Message) {
    match message {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away, "{frame:?}"),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_in_flight_gets_its_answer_and_new_connections_are_refused() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _worker = start_worker(&redis, KEY_ONE, db.path(), &["--max-operations", "0"]);
    let mut server = RunningServer::start(ServerConfig {
        circle_ports: vec![(common::circle(KEY_ONE), 0)],
        shutdown_grace: Duration::from_secs(20),
        ..test_config(&redis)
    })
    .await;
    let circle_addr = server.circle_addrs[0].1;
    let mut busy = Client::connect(&server.url(KEY_ONE)).await;
    let mut idle = Client::connect(&server.url(KEY_ONE)).await;

    busy.send_json(&json!({"jsonrpc": "2.0", "id": "slow", "method": "play",
                           "params": {"script": busy_script(2.0)}}))
        .await;
    // Let the worker take it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent_shutdown = Instant::now();
    let run = server.begin_shutdown();

    // Every listener stops accepting while the call is still running.
    wait_until_refused(server.addr).await;
    wait_until_refused(circle_addr).await;
    assert!(
        sent_shutdown.elapsed() < Duration::from_millis(1500),
        "listeners closed only after {:?}",
        sent_shutdown.elapsed()
    );
    // An idle connection is closed as "going away".
    assert_going_away(idle.recv_message().await);

    let answer = busy.recv().await;
    assert_eq!(answer["id"], "slow");
    assert_eq!(answer["result"], "done", "{answer}");
    assert_going_away(busy.recv_message().await);

    let stopped = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("run returns once connections are gone");
    stopped.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_still_running_after_the_grace_period_get_an_error() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _worker = start_worker(&redis, KEY_ONE, db.path(), &["--max-operations", "0"]);
    let mut server = RunningServer::start(ServerConfig {
        shutdown_grace: Duration::from_millis(500),
        ..test_config(&redis)
    })
    .await;
    let mut client = Client::connect(&server.url(KEY_ONE)).await;
    client
        .send_json(&json!({"jsonrpc": "2.0", "id": 1, "method": "play",
                           "params": {"script": busy_script(8.0)}}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let run = server.begin_shutdown();

    let answer = client.recv().await;
    assert_eq!(answer["id"], 1);
    assert_eq!(answer["error"]["code"], code::INTERNAL_ERROR, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shut down"),
        "{answer}"
    );
    assert_going_away(client.recv_message().await);
    run.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        started.elapsed()
    );
}

fn server_command(redis_url: &str, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_server"));
    command
        .args(["--port", &port.to_string(), "--redis-url", redis_url])
        .env("RUST_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("server did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send_signal(child: &std::process::Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_serves_notifies_readiness_and_exits_0_on_sigterm_and_sigint() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _worker = start_worker(&redis, KEY_ONE, db.path(), &[]);

    for signal in ["TERM", "INT"] {
        let notify_dir = tempfile::tempdir().unwrap();
        let notify_path = notify_dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();

        let port = free_port();
        let circle_port = free_port();
        let mut child = server_command(&redis.url(), port)
            .args(["--circle-port", &format!("{KEY_ONE}={circle_port}")])
            .env("NOTIFY_SOCKET", &notify_path)
            .spawn()
            .unwrap();
        let mut buf = [0u8; 256];
        let n =
            tokio::task::block_in_place(|| notify.recv(&mut buf)).expect("READY=1 from the server");
        assert!(
            String::from_utf8_lossy(&buf[..n]).contains("READY=1"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        // Ready means listening.
        let mut client = Client::connect(&format!("ws://127.0.0.1:{port}/{KEY_ONE}")).await;
        assert_eq!(client.play("40 + 2").await, "42");
        let mut by_port = Client::connect(&format!("ws://127.0.0.1:{circle_port}/")).await;
        assert_eq!(by_port.play("CONTEXT_ID").await, KEY_ONE);

        send_signal(&child, signal);
        let status = tokio::task::block_in_place(|| wait_exit(&mut child, Duration::from_secs(10)));
        assert_eq!(status.code(), Some(0), "SIG{signal}: {status}");
        let n = tokio::task::block_in_place(|| notify.recv(&mut buf)).expect("STOPPING=1");
        assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
        assert_going_away(client.recv_message().await);
    }
}

#[test]
fn the_binary_names_the_port_in_use_and_exits_non_zero() {
    let redis = RedisServer::start();
    let port = free_port();
    let mut first = server_command(&redis.url(), port).spawn().unwrap();
    wait_for_port(port, Duration::from_secs(10));

    let output = server_command(&redis.url(), port)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let _ = first.kill();
    let _ = first.wait();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!(
            "error: port {port} is already in use on 127.0.0.1"
        )),
        "{stderr}"
    );
}

#[test]
fn the_binary_names_an_unreachable_redis_and_bad_keys() {
    let nowhere = format!("redis://127.0.0.1:{}", free_port());
    let output = server_command(&nowhere, free_port())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("error: Redis unreachable at {nowhere}")),
        "{stderr}"
    );

    for args in [
        vec!["--circle", "hello"],
        vec!["--circle-port", "hello=9000"],
        vec!["--circle-port", KEY_ONE],
        vec!["--timeout", "0"],
    ] {
        let output = server_command(&nowhere, free_port())
            .args(&args)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        let needle = match args[1] {
            "hello" | "hello=9000" => "invalid public key `hello`",
            "0" => "--timeout",
            _ => "is not PK=PORT",
        };
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_wait_for_redis_the_binary_waits_for_redis_then_serves() {
    // Redis is not there yet (as at boot, before redis-server started).
    let mut redis = RedisServer::start();
    let redis_url = redis.url();
    redis.stop();
    let port = free_port();
    let mut child = server_command(&redis_url, port)
        .arg("--wait-for-redis")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().unwrap().is_none(),
        "it waits instead of exiting"
    );
    redis.restart();
    let db = tempfile::tempdir().unwrap();
    let _worker = start_worker(&redis, KEY_ONE, db.path(), &[]);
    wait_for_port(port, Duration::from_secs(15));
    let mut client = Client::connect(&format!("ws://127.0.0.1:{port}/{KEY_ONE}")).await;
    assert_eq!(client.play("40 + 2").await, "42");
    send_signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
}
