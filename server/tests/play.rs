//! `play` end to end: a real Redis, real workers, the server on free ports,
//! a tokio-tungstenite client. Routing by path and by per-circle port,
//! circles that appear while the server runs, JSON-RPC error handling,
//! timeouts and many concurrent calls.

mod common;

use std::time::Duration;

use circles_dispatcher::Dispatcher;
use circles_server::rpc::code;
use circles_server::{ANONYMOUS_CALLER_ID, ServerConfig};
use circles_test_support::{KEY_ONE, KEY_TWO, RedisServer};
use common::{
    Client, RunningServer, busy_script, circle, refused_upgrade, start_worker, test_config,
};
use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread")]
async fn play_runs_on_the_circle_named_by_the_path() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _one = start_worker(&redis, KEY_ONE, db.path(), &[]);
    let _two = start_worker(&redis, KEY_TWO, db.path(), &[]);
    // No circles configured: both are known through Redis only.
    let server = RunningServer::start(test_config(&redis)).await;

    let mut one = Client::connect(&server.url(KEY_ONE)).await;
    assert_eq!(one.play("40 + 2").await, "42");
    assert_eq!(one.play("CONTEXT_ID").await, KEY_ONE);
    assert_eq!(one.play("CALLER_ID").await, ANONYMOUS_CALLER_ID);

    let mut two = Client::connect(&server.url(KEY_TWO)).await;
    assert_eq!(two.play("CONTEXT_ID").await, KEY_TWO);

    // The uncompressed form and upper case name the same circle.
    let uncompressed = circle(KEY_TWO).to_uncompressed_hex();
    let mut two_again = Client::connect(&server.url(&uncompressed)).await;
    assert_eq!(two_again.play("CONTEXT_ID").await, KEY_TWO);
    let mut one_upper = Client::connect(&server.url(&KEY_ONE.to_uppercase())).await;
    assert_eq!(one_upper.play("CONTEXT_ID").await, KEY_ONE);

    // A script error is -32000 with the worker's text in message and data.
    let error = one
        .call_err("play", json!({"script": r#"throw "no such thing""#}))
        .await;
    assert_eq!(error["code"], code::EXECUTION_ERROR);
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("no such thing"), "{error}");
    assert_eq!(error["data"], error["message"]);
    // ... and the connection goes on.
    assert_eq!(one.play("1 + 1").await, "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_malformed_keys_get_a_404_before_any_upgrade() {
    let redis = RedisServer::start();
    let configured = circles_dispatcher::CircleKeypair::generate().public;
    let server = RunningServer::start(ServerConfig {
        circles: vec![configured],
        ..test_config(&redis)
    })
    .await;

    let (status, body) = refused_upgrade(&server.url(KEY_ONE)).await;
    assert_eq!(status, 404);
    assert!(
        body.contains("unknown circle") && body.contains(KEY_ONE),
        "{body}"
    );

    let (status, body) = refused_upgrade(&server.url("hello")).await;
    assert_eq!(status, 404);
    assert!(body.contains("`hello`"), "{body}");
    // A key of the right length whose point is not on the curve.
    let off_curve = format!("02{}", "ff".repeat(32));
    assert_eq!(refused_upgrade(&server.url(&off_curve)).await.0, 404);
    assert_eq!(refused_upgrade(&server.url("")).await.0, 404);
    assert_eq!(
        refused_upgrade(&server.url(&format!("{configured}/more")))
            .await
            .0,
        404
    );

    // A configured circle is served before any worker registers it.
    let mut client = Client::connect(&server.url(&configured.to_string())).await;
    let error = client
        .call_err("fetch_nonce", json!({"pubkey": "bad"}))
        .await;
    assert_eq!(error["code"], code::INVALID_PARAMS);

    // A key that appears in `rhai_circles` is served from then on.
    redis.cli(&["SADD", "rhai_circles", KEY_ONE]);
    Client::connect(&server.url(KEY_ONE)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_circle_whose_worker_starts_later_is_reachable_without_restart() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _one = start_worker(&redis, KEY_ONE, db.path(), &[]);
    let server = RunningServer::start(test_config(&redis)).await;

    assert_eq!(refused_upgrade(&server.url(KEY_TWO)).await.0, 404);
    let _two = start_worker(&redis, KEY_TWO, db.path(), &[]);
    let mut two = Client::connect(&server.url(KEY_TWO)).await;
    assert_eq!(two.play("CONTEXT_ID").await, KEY_TWO);
    let mut one = Client::connect(&server.url(KEY_ONE)).await;
    assert_eq!(one.play("CONTEXT_ID").await, KEY_ONE);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_get_errors_and_leave_connections_working() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _one = start_worker(&redis, KEY_ONE, db.path(), &[]);
    let server = RunningServer::start(test_config(&redis)).await;
    let mut client = Client::connect(&server.url(KEY_ONE)).await;
    let mut bystander = Client::connect(&server.url(KEY_ONE)).await;

    // Not JSON: -32700 with a null id.
    client.send_text("{this is not json").await;
    let answer = client.recv().await;
    assert_eq!(answer["error"]["code"], code::PARSE_ERROR, "{answer}");
    assert_eq!(answer["id"], Value::Null);
    assert_eq!(answer["jsonrpc"], "2.0");
    assert_eq!(client.play("40 + 2").await, "42");
    assert_eq!(bystander.play("41 + 1").await, "42");

    // Invalid requests: -32600, with the id when it could be read.
    client
        .send_json(&json!({"id": 5, "method": "play", "params": {"script": "1"}}))
        .await;
    let answer = client.recv().await;
    assert_eq!(answer["error"]["code"], code::INVALID_REQUEST, "{answer}");
    assert_eq!(answer["id"], 5);
    client
        .send_json(
            &json!([{"jsonrpc": "2.0", "id": 6, "method": "play", "params": {"script": "1"}}]),
        )
        .await;
    let answer = client.recv().await;
    assert_eq!(answer["error"]["code"], code::INVALID_REQUEST, "{answer}");
    assert_eq!(answer["id"], Value::Null);
    client
        .send_message(Message::binary(b"{\"jsonrpc\":\"2.0\"}".to_vec()))
        .await;
    let answer = client.recv().await;
    assert_eq!(answer["error"]["code"], code::INVALID_REQUEST, "{answer}");

    // Unknown method, wrong params.
    let error = client.call_err("run", json!({"script": "1"})).await;
    assert_eq!(error["code"], code::METHOD_NOT_FOUND, "{error}");
    let error = client.call_err("play", json!({"code": "1"})).await;
    assert_eq!(error["code"], code::INVALID_PARAMS, "{error}");
    let error = client.call_err("play", json!({"script": 42})).await;
    assert_eq!(error["code"], code::INVALID_PARAMS, "{error}");
    let error = client.call_err("play", json!({"script": "  "})).await;
    assert_eq!(error["code"], code::INVALID_PARAMS, "{error}");
    // Positional params work too.
    let answer = client.call("play", json!(["6 * 7"])).await;
    assert_eq!(answer["result"], "42");

    // A notification is carried out but not answered: the next answer is
    // the next request's.
    client
        .send_json(&json!({"jsonrpc": "2.0", "method": "play", "params": {"script": "1"}}))
        .await;
    client
        .send_json(
            &json!({"jsonrpc": "2.0", "id": "after", "method": "play", "params": {"script": "2"}}),
        )
        .await;
    let answer = client.recv().await;
    assert_eq!(answer["id"], "after", "{answer}");
    assert_eq!(answer["result"], "2");

    assert_eq!(client.play("CONTEXT_ID").await, KEY_ONE);
    assert_eq!(bystander.play("CONTEXT_ID").await, KEY_ONE);
}

#[tokio::test(flavor = "multi_thread")]
async fn play_times_out_with_32003() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _one = start_worker(&redis, KEY_ONE, db.path(), &["--max-operations", "0"]);
    // KEY_TWO is configured but has no worker: nothing will ever answer.
    let server = RunningServer::start(ServerConfig {
        circles: vec![circle(KEY_TWO)],
        play_timeout: Duration::from_secs(1),
        ..test_config(&redis)
    })
    .await;

    // A circle without a live worker is told at once, not after the
    // timeout (issue 7 item 10), and nothing is queued for later.
    let mut unserved = Client::connect(&server.url(KEY_TWO)).await;
    let started = std::time::Instant::now();
    let error = unserved.call_err("play", json!({"script": "1"})).await;
    assert_eq!(error["code"], code::CIRCLE_OFFLINE, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("offline"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(redis.cli(&["LLEN", &format!("rhai_tasks:{KEY_TWO}")]), "0");

    // A script that takes longer than the play timeout: the worker is kept
    // busy (by a task submitted past the server) for longer than the play
    // timeout, so the play's script cannot finish in time.
    let dispatcher = Dispatcher::connect(&redis.url(), "test").await.unwrap();
    let busy = tokio::spawn(async move {
        dispatcher
            .run(&circle(KEY_ONE), &busy_script(3.0), Duration::from_secs(20))
            .await
    });
    let mut client = Client::connect(&server.url(KEY_ONE)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let error = client
        .call_err("play", json!({"script": busy_script(0.2)}))
        .await;
    assert_eq!(error["code"], code::TIMEOUT, "{error}");
    assert_eq!(busy.await.unwrap().unwrap(), "done");
    // The connection is still good.
    assert_eq!(client.play("40 + 2").await, "42");
}

#[tokio::test(flavor = "multi_thread")]
async fn many_connections_with_many_calls_in_flight_get_their_own_answers() {
    const CONNECTIONS: usize = 50;
    const CALLS_PER_CONNECTION: usize = 4;
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _one = start_worker(&redis, KEY_ONE, db.path(), &[]);
    let _two = start_worker(&redis, KEY_TWO, db.path(), &[]);
    let server = RunningServer::start(ServerConfig {
        play_timeout: Duration::from_secs(30),
        ..test_config(&redis)
    })
    .await;

    let sessions = (0..CONNECTIONS).map(|c| {
        let key = if c % 2 == 0 { KEY_ONE } else { KEY_TWO };
        let url = server.url(key);
        async move {
            let mut client = Client::connect(&url).await;
            // Send every request before reading any answer.
            for n in 0..CALLS_PER_CONNECTION {
                let id = format!("c{c}-n{n}");
                let script = format!(r#"CONTEXT_ID + ":" + ({c} * 1000 + {n})"#);
                client
                    .send_json(&json!({"jsonrpc": "2.0", "id": id, "method": "play", "params": {"script": script}}))
                    .await;
            }
            let mut answers = Vec::new();
            for _ in 0..CALLS_PER_CONNECTION {
                answers.push(client.recv().await);
            }
            (c, key, answers)
        }
    });
    for (c, key, answers) in join_all(sessions).await {
        let mut seen: Vec<String> = Vec::new();
        for answer in answers {
            let id = answer["id"].as_str().expect("string id").to_string();
            let n: usize = id
                .strip_prefix(&format!("c{c}-n"))
                .unwrap_or_else(|| panic!("connection {c} got {answer}"))
                .parse()
                .unwrap();
            assert_eq!(
                answer["result"],
                json!(format!("{key}:{}", c * 1000 + n)),
                "{answer}"
            );
            seen.push(id);
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), CALLS_PER_CONNECTION, "connection {c}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_circle_port_serves_its_circle_at_the_root() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _one = start_worker(&redis, KEY_ONE, db.path(), &[]);
    let _two = start_worker(&redis, KEY_TWO, db.path(), &[]);
    let server = RunningServer::start(ServerConfig {
        circle_ports: vec![(circle(KEY_TWO), 0)],
        ..test_config(&redis)
    })
    .await;
    let [(bound, addr)] = server.circle_addrs[..] else {
        panic!("one circle listener expected: {:?}", server.circle_addrs);
    };
    assert_eq!(bound, circle(KEY_TWO));
    assert_ne!(addr, server.addr);

    let mut at_root = Client::connect(&format!("ws://{addr}/")).await;
    assert_eq!(at_root.play("CONTEXT_ID").await, KEY_TWO);
    let mut by_key = Client::connect(&format!("ws://{addr}/{KEY_TWO}")).await;
    assert_eq!(by_key.play("CONTEXT_ID").await, KEY_TWO);
    // That port is for that circle only, though KEY_ONE is known.
    let (status, body) = refused_upgrade(&format!("ws://{addr}/{KEY_ONE}")).await;
    assert_eq!(status, 404, "{body}");
    // The main listener still routes by path, and has nothing at the root.
    let mut main = Client::connect(&server.url(KEY_TWO)).await;
    assert_eq!(main.play("CONTEXT_ID").await, KEY_TWO);
    assert_eq!(refused_upgrade(&server.url("")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn bind_names_the_port_in_use_and_the_unreachable_redis() {
    let redis = RedisServer::start();
    let server = RunningServer::start(test_config(&redis)).await;
    let taken = server.addr.port();

    let error = circles_server::Server::bind(ServerConfig {
        port: taken,
        ..test_config(&redis)
    })
    .await
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("port {taken} is already in use on 127.0.0.1")
    );
    // A per-circle port too.
    let error = circles_server::Server::bind(ServerConfig {
        circle_ports: vec![(circle(KEY_ONE), taken)],
        ..test_config(&redis)
    })
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains(&format!("port {taken} ")),
        "{error}"
    );

    let nowhere = format!("redis://127.0.0.1:{}", circles_test_support::free_port());
    let error = circles_server::Server::bind(ServerConfig {
        redis_url: nowhere.clone(),
        ..test_config(&redis)
    })
    .await
    .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with(&format!("Redis unreachable at {nowhere}")),
        "{error}"
    );
}

/// Plays on `client` until one succeeds; the failures in between must be
/// internal errors (the server noticing the broken connection), not hangs.
async fn play_until_redis_is_back(client: &mut Client) {
    let started = std::time::Instant::now();
    loop {
        let answer = client.call("play", json!({"script": "1 + 1"})).await;
        if answer["result"] == "2" {
            return;
        }
        assert_eq!(answer["error"]["code"], code::INTERNAL_ERROR, "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still failing: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects until the upgrade succeeds; refusals in between must be 503
/// (Redis unavailable), not 404.
async fn connect_when_redis_is_back(url: &str) -> Client {
    let started = std::time::Instant::now();
    loop {
        match tokio_tungstenite::connect_async(url).await {
            Ok(_) => return Client::connect(url).await,
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 503, "{response:?}");
            }
            Err(other) => panic!("{other}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_recovers_when_redis_restarts() {
    let mut redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let worker = start_worker(&redis, KEY_ONE, db.path(), &[]);
    let server = RunningServer::start(test_config(&redis)).await;
    let mut client = Client::connect(&server.url(KEY_ONE)).await;
    assert_eq!(client.play("40 + 2").await, "42");
    // Restarts keep the port and lose the data; the worker reconnects.
    let restart_redis = |redis: &mut RedisServer| {
        tokio::task::block_in_place(|| {
            redis.restart();
            worker.wait_ready(redis);
        })
    };

    // First noticed by a play on an open WebSocket.
    restart_redis(&mut redis);
    play_until_redis_is_back(&mut client).await;

    // First noticed by an upgrade's circle lookup. (KEY_TWO is registered by
    // hand: it has no worker, and the lookup is what is under test.)
    restart_redis(&mut redis);
    redis.cli(&["SADD", "rhai_circles", KEY_TWO]);
    connect_when_redis_is_back(&server.url(KEY_TWO)).await;
    play_until_redis_is_back(&mut client).await;
    assert_eq!(client.play("CONTEXT_ID").await, KEY_ONE);
}
