//! A hostile client against the server: each test attacks the way issue 7
//! found it worked — sockets that never speak, dripped headers, idle
//! WebSockets, oversized frames, nonce floods, other spellings of a key, a
//! frozen worker, a Redis restart — and checks what a user would notice.
//! Every loop here is bounded in count and time; traffic stays on loopback.

mod common;

use std::time::{Duration, Instant};

use circles_server::rpc::code;
use circles_server::{ConnectionLimits, ServerConfig};
use circles_test_support::{KEY_ONE, RedisServer, binary, rss_bytes, wait_until};
use common::{Client, RunningServer, circle, refused_upgrade, start_worker, test_config};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn limits(max_connections: usize, max_per_ip: usize, handshake: Duration) -> ConnectionLimits {
    ConnectionLimits {
        max_connections,
        max_per_ip,
        handshake_timeout: handshake,
    }
}

/// A TCP connection to `addr` from the loopback address `from` (Linux
/// routes all of 127.0.0.0/8 to loopback, so tests can be several clients).
async fn connect_from(from: &str, addr: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A WebSocket to `/<KEY_ONE>` over `stream`.
async fn ws_over(
    stream: TcpStream,
    server: &RunningServer,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    tokio_tungstenite::client_async(server.url(KEY_ONE), stream)
        .await
        .map(|(ws, _)| ws)
}

/// What the server writes before closing a connection it will not serve.
async fn first_bytes(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the server answers or closes")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Issue 7, item 4: ~20,000 silent sockets exhausted the descriptors and
/// locked everybody out. Now: over the caps, 503 at once; places come back.
#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_caps_get_503_and_places_come_back() {
    let redis = RedisServer::start();
    let server = RunningServer::start(ServerConfig {
        circles: vec![circle(KEY_ONE)],
        connections: limits(6, 4, Duration::from_secs(30)),
        ..test_config(&redis)
    })
    .await;

    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            ws_over(connect_from("127.0.0.1", server.addr).await, &server)
                .await
                .unwrap(),
        );
    }
    // The fifth from the same address: refused by the per-address cap.
    let mut fifth = connect_from("127.0.0.1", server.addr).await;
    assert!(first_bytes(&mut fifth).await.starts_with("HTTP/1.1 503 "));
    // Another address still gets in, until the overall cap.
    held.push(
        ws_over(connect_from("127.0.0.2", server.addr).await, &server)
            .await
            .unwrap(),
    );
    held.push(
        ws_over(connect_from("127.0.0.3", server.addr).await, &server)
            .await
            .unwrap(),
    );
    let mut over = connect_from("127.0.0.4", server.addr).await;
    let answer = first_bytes(&mut over).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");

    // A closed connection gives its place back.
    let mut closing = held.remove(0);
    closing.close(None).await.unwrap();
    while closing.next().await.is_some() {}
    drop(closing);
    let mut again = None;
    for _ in 0..50 {
        if let Ok(ws) = ws_over(connect_from("127.0.0.1", server.addr).await, &server).await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the freed place was not given back");
}

/// Issue 7, item 4: silent sockets and dripped headers stayed open forever.
#[tokio::test(flavor = "multi_thread")]
async fn silent_and_dripping_connections_are_closed_after_the_handshake_timeout() {
    let redis = RedisServer::start();
    let server = RunningServer::start(ServerConfig {
        circles: vec![circle(KEY_ONE)],
        connections: limits(20, 20, Duration::from_secs(1)),
        ..test_config(&redis)
    })
    .await;

    // A socket that never says anything.
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("closed within the timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close it");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A request dripped a header line at a time (bounded: 25 lines).
    let started = Instant::now();
    let mut drip = TcpStream::connect(server.addr).await.unwrap();
    let mut closed_after = None;
    drip.write_all(format!("GET /{KEY_ONE} HTTP/1.1\r\n").as_bytes())
        .await
        .unwrap();
    for i in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if drip
            .write_all(format!("X-Drip-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut probe = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(1), drip.read(&mut probe)).await
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the dripping connection was never closed");
    assert!(closed_after < Duration::from_secs(3), "{closed_after:?}");

    // Sockets that fill every place are gone after the timeout, and a real
    // client gets in again.
    let mut silent_ones = Vec::new();
    for _ in 0..20 {
        silent_ones.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut locked_out = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        first_bytes(&mut locked_out)
            .await
            .starts_with("HTTP/1.1 503 ")
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut client = Client::connect(&server.url(KEY_ONE)).await;
    let nonce = client.call("fetch_nonce", json!({"pubkey": KEY_ONE})).await;
    assert!(nonce["result"]["nonce"].is_string(), "{nonce}");
}

/// An upgraded WebSocket that answers nothing (not even pings) is closed
/// after the idle timeout; one that answers pings stays.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_websocket_is_closed_and_a_live_one_stays() {
    let redis = RedisServer::start();
    let server = RunningServer::start(ServerConfig {
        circles: vec![circle(KEY_ONE)],
        idle_timeout: Duration::from_secs(2),
        ..test_config(&redis)
    })
    .await;
    let (mut silent, _) = tokio_tungstenite::connect_async(server.url(KEY_ONE))
        .await
        .unwrap();
    let mut live = Client::connect(&server.url(KEY_ONE)).await;
    // The live client keeps reading (tungstenite answers pings as it reads).
    assert!(live.nothing_within(Duration::from_millis(3500)).await);

    // Reading now, the silent client finds the server's pings, then its
    // close frame (1008) — or, when its late pong raced the server's close,
    // just the end of the connection. Either way the connection is over.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ended = false;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), silent.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                let frame = frame.expect("a close frame with a code");
                assert_eq!(frame.code, CloseCode::Policy);
                assert_eq!(frame.reason.as_str(), "idle timeout");
                ended = true;
                break;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => {
                ended = true;
                break;
            }
            Err(_) => break,
        }
    }
    assert!(ended, "the silent WebSocket was not closed");
    let nonce = live.call("fetch_nonce", json!({"pubkey": KEY_ONE})).await;
    assert!(nonce["result"]["nonce"].is_string(), "{nonce}");
}

/// Issue 7, item 3: a 50 MB frame closed the socket with no status; scripts
/// of any size were taken.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_frames_and_scripts_are_refused_clearly() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _w = start_worker(&redis, KEY_ONE, db.path(), &[]);
    let server = RunningServer::start(test_config(&redis)).await;

    // A script over the 1 MiB limit in a frame under the frame limit:
    // -32602, and the connection goes on.
    let mut client = Client::connect(&server.url(KEY_ONE)).await;
    let script = format!("\"{}\"", "a".repeat(1_100_000));
    let error = client.call_err("play", json!({ "script": script })).await;
    assert_eq!(error["code"], code::INVALID_PARAMS, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("over the limit of 1048576 bytes"),
        "{error}"
    );
    assert_eq!(client.play("40 + 2").await, "42");

    // A 50 MB frame: a JSON-RPC error, then close code 1009.
    let (ws, _) = tokio_tungstenite::connect_async(server.url(KEY_ONE))
        .await
        .unwrap();
    let (mut sink, mut stream) = ws.split();
    let frame = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"play","params":{{"script":"{}"}}}}"#,
        "b".repeat(50 * 1024 * 1024)
    );
    // The server stops reading part-way: the send may fail, that is fine.
    let sending = tokio::spawn(async move {
        let _ = sink.send(Message::text(frame)).await;
        sink
    });
    let mut error = None;
    let mut close = None;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(10), stream.next()).await
    {
        match message {
            Message::Text(text) => {
                error = Some(serde_json::from_str::<serde_json::Value>(&text).unwrap())
            }
            Message::Close(frame) => {
                close = frame;
                break;
            }
            _ => {}
        }
    }
    let _ = sending.await;
    let error = error.expect("a JSON-RPC error before the close");
    assert_eq!(error["error"]["code"], code::INVALID_REQUEST, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("message too big")
    );
    assert_eq!(close.expect("a close frame").code, CloseCode::Size);
}

/// Issue 7, item 11: `/%20<pk>` and `/0x<pk>` upgraded.
#[tokio::test(flavor = "multi_thread")]
async fn only_the_exact_spelling_of_a_key_is_a_path() {
    let redis = RedisServer::start();
    let server = RunningServer::start(ServerConfig {
        circles: vec![circle(KEY_ONE)],
        ..test_config(&redis)
    })
    .await;
    for path in [
        format!("%20{KEY_ONE}"),
        format!("0x{KEY_ONE}"),
        format!("{KEY_ONE}%20"),
        format!("+{KEY_ONE}"),
    ] {
        let (status, body) = refused_upgrade(&server.url(&path)).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    // A huge path is answered, and not echoed whole.
    let (status, body) = refused_upgrade(&server.url(&"z".repeat(60_000))).await;
    assert!(status == 404 || status == 414 || status == 431, "{status}");
    assert!(body.len() < 1000, "{} bytes echoed", body.len());
    Client::connect(&server.url(KEY_ONE)).await;
}

/// Issue 7, item 5: 1.4M `fetch_nonce` with made-up keys held 515 MB.
#[tokio::test(flavor = "multi_thread")]
async fn nonces_are_rate_limited_and_bounded() {
    let redis = RedisServer::start();
    let server = RunningServer::start(ServerConfig {
        circles: vec![circle(KEY_ONE)],
        max_nonces: 20,
        nonce_ttl: Duration::from_secs(1),
        housekeeping_interval: Duration::from_millis(200),
        ..test_config(&redis)
    })
    .await;
    let key = |_| {
        circles_dispatcher::CircleKeypair::generate()
            .public
            .to_hex()
    };

    // One connection: a burst of 8, then refused.
    let mut one = Client::connect(&server.url(KEY_ONE)).await;
    let mut codes = Vec::new();
    for i in 0..12 {
        let answer = one.call("fetch_nonce", json!({"pubkey": key(i)})).await;
        codes.push(answer["error"]["code"].as_i64().unwrap_or(0));
    }
    assert_eq!(codes[..8], [0; 8]);
    assert!(
        codes[8..].iter().all(|c| *c == code::RATE_LIMITED),
        "{codes:?}"
    );

    // Many connections: the store holds at most 20.
    let mut issued = 8;
    let mut refused = 0;
    for _ in 0..3 {
        let mut c = Client::connect(&server.url(KEY_ONE)).await;
        for i in 0..8 {
            let answer = c.call("fetch_nonce", json!({"pubkey": key(i)})).await;
            match answer["error"]["code"].as_i64() {
                None => issued += 1,
                Some(code) => {
                    assert_eq!(code, code::RATE_LIMITED, "{answer}");
                    assert!(
                        answer["error"]["message"]
                            .as_str()
                            .unwrap()
                            .contains("outstanding")
                    );
                    refused += 1;
                }
            }
        }
    }
    assert_eq!((issued, refused), (20, 12));
    // Once they expire they are swept, and nonces are issued again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut fresh = Client::connect(&server.url(KEY_ONE)).await;
    let answer = fresh.call("fetch_nonce", json!({"pubkey": KEY_ONE})).await;
    assert!(answer["result"]["nonce"].is_string(), "{answer}");
}

/// Issue 7, item 10: with the worker frozen, `play` waited 30 s and the
/// task ran later anyway.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_workers_circle_is_offline_at_once() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let worker = start_worker(&redis, KEY_ONE, db.path(), &[]);
    let server = RunningServer::start(test_config(&redis)).await;
    let mut client = Client::connect(&server.url(KEY_ONE)).await;
    assert_eq!(client.play("40 + 2").await, "42");

    worker.signal("STOP");
    // Its heartbeat runs out (as it would after its 10 s TTL).
    redis.cli(&["DEL", &format!("rhai_worker:{KEY_ONE}")]);
    let started = Instant::now();
    let error = client
        .call_err("play", json!({"script": r#"db_set("late", 1)"#}))
        .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(error["code"], code::CIRCLE_OFFLINE, "{error}");
    assert!(error["data"]["last_seen"].is_string(), "{error}");
    assert_eq!(redis.cli(&["LLEN", &format!("rhai_tasks:{KEY_ONE}")]), "0");

    worker.signal("CONT");
    wait_until("heartbeat back", Duration::from_secs(10), || {
        (redis.cli(&["EXISTS", &format!("rhai_worker:{KEY_ONE}")]) == "1").then_some(())
    });
    assert_eq!(client.play(r#"db_get("late") == ()"#).await, "true");
}

/// Issue 7, item 9: the first upgrade after a Redis restart got 503 and
/// the first play on an open connection -32603 "broken pipe".
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restart_is_invisible_to_clients() {
    let mut redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _w = start_worker(&redis, KEY_ONE, db.path(), &[]);
    let server = RunningServer::start(test_config(&redis)).await;
    let mut open = Client::connect(&server.url(KEY_ONE)).await;
    assert_eq!(open.play("1").await, "1");

    redis.restart();
    // The worker comes back on its own (it registers again within its
    // heartbeat interval).
    wait_until("worker registered again", Duration::from_secs(20), || {
        (redis.cli(&["EXISTS", &format!("rhai_worker:{KEY_ONE}")]) == "1").then_some(())
    });
    let mut fresh = Client::connect(&server.url(KEY_ONE)).await;
    assert_eq!(fresh.play("2").await, "2");
    assert_eq!(open.play("3").await, "3");
}

/// Issue 7, item 5: each idle WebSocket cost ~130 kB, not returned after
/// close. Measured on the `server` binary, whose memory is its own.
#[tokio::test(flavor = "multi_thread")]
async fn memory_of_idle_connections_is_small_and_returned() {
    const CONNECTIONS: usize = 2000;
    raise_open_file_limit(CONNECTIONS as u64 * 2 + 256);
    let redis = RedisServer::start();
    let port = circles_test_support::free_port();
    let mut child = std::process::Command::new(binary("server"))
        .args(["--port", &port.to_string(), "--redis-url", &redis.url()])
        .args(["--circle", KEY_ONE, "--max-connections-per-ip", "5000"])
        .args(["--housekeeping-secs", "1"])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let pid = child.id();
    tokio::task::block_in_place(|| {
        circles_test_support::wait_for_port(port, Duration::from_secs(10))
    });
    let url = format!("ws://127.0.0.1:{port}/{KEY_ONE}");
    // Warm up the runtime's threads and buffers before the baseline.
    for _ in 0..20 {
        drop(Client::connect(&url).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let baseline = rss_bytes(pid);

    let mut sockets = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        sockets.push(tokio_tungstenite::connect_async(&url).await.unwrap().0);
    }
    let with_connections = rss_bytes(pid);
    for mut s in sockets.drain(..) {
        let _ = s.close(None).await;
    }
    drop(sockets);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let after = rss_bytes(pid);
    let _ = child.kill();
    let _ = child.wait();

    let per_connection = (with_connections.saturating_sub(baseline)) / CONNECTIONS as u64;
    eprintln!(
        "server RSS: baseline {} KiB, with {CONNECTIONS} idle connections {} KiB ({per_connection} B each), after close {} KiB",
        baseline >> 10,
        with_connections >> 10,
        after >> 10
    );
    assert!(
        per_connection < 40 * 1024,
        "{per_connection} bytes per idle connection"
    );
    assert!(
        after < baseline + 16 * 1024 * 1024,
        "RSS after close {} KiB, baseline {} KiB",
        after >> 10,
        baseline >> 10
    );
}

fn raise_open_file_limit(wanted: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= wanted,
        "the hard open-file limit ({hard}) is below {wanted}"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(wanted.max(limit.current.unwrap_or(0))),
            maximum: limit.maximum,
        },
    )
    .unwrap();
}

/// A hostile review (stop 18): a client that sends plays with megabyte
/// answers and never reads held ~140 MiB of the server and its connection
/// for good (the writer waited on it for ever, and with it the idle
/// check). Now the writer gives up after the idle timeout without
/// progress and the connection ends, its place given back.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_is_let_go() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _w = start_worker(&redis, KEY_ONE, db.path(), &[]);
    let server = RunningServer::start(ServerConfig {
        circles: vec![circle(KEY_ONE)],
        idle_timeout: Duration::from_secs(2),
        connections: limits(1, 1, Duration::from_secs(30)),
        ..test_config(&redis)
    })
    .await;
    // A small receive buffer, so the server's writes stall at once.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let mut reader_never = ws_over(stream, &server).await.unwrap();
    let big = r#"let s = "x"; while s.len() < 1000000 { s += s; } s"#;
    // More than its plays in flight (32) and the answers the writer
    // queues (64): with every slot held, the old server stopped reading,
    // pinging and checking for idleness.
    for id in 0..120 {
        let play = json!({"jsonrpc": "2.0", "id": id, "method": "play", "params": {"script": big}});
        reader_never
            .send(Message::text(play.to_string()))
            .await
            .unwrap();
    }
    // The one place is held, then given back once the server let go.
    let started = Instant::now();
    let mut again = None;
    while again.is_none() && started.elapsed() < Duration::from_secs(20) {
        if let Ok(ws) = ws_over(connect_from("127.0.0.1", server.addr).await, &server).await {
            again = Some(ws);
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        again.is_some(),
        "the non-reading client still holds its connection after {:?}",
        started.elapsed()
    );
    drop(reader_never);
}

/// A hostile review (stop 18): the server's 1,000 blocking waits were shared
/// by everyone, so one address with 64 connections of 32 plays each took
/// them all and plays on every other circle stalled for the play timeout.
/// Now a client network has at most 256 plays in flight; the rest are
/// refused at once (-32005, nothing queued) and others are served.
#[tokio::test(flavor = "multi_thread")]
async fn one_address_cannot_take_every_play_slot() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _busy = start_worker(&redis, KEY_ONE, db.path(), &["--max-operations", "0"]);
    let _other = start_worker(&redis, circles_test_support::KEY_TWO, db.path(), &[]);
    let server = RunningServer::start(test_config(&redis)).await;
    // The first holds the worker (until the play timeout, 10 s: no
    // operations limit); the rest queue, so no play is answered before.
    let hold = "let i = 0; while i < 1000000000 { i += 1; } i";
    let mut flooders = Vec::new();
    for _ in 0..9 {
        let mut c = Client::connect(&server.url(KEY_ONE)).await;
        for id in 0..32 {
            c.send_json(
                &json!({"jsonrpc": "2.0", "id": id, "method": "play", "params": {"script": hold}}),
            )
            .await;
        }
        flooders.push(c);
    }
    // Answered at once: exactly those past the address's 256.
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(7);
    while refused < 9 * 32 - 256 && Instant::now() < deadline {
        for c in &mut flooders {
            while let Ok(answer) = tokio::time::timeout(Duration::from_millis(50), c.recv()).await {
                assert_eq!(answer["error"]["code"], code::RATE_LIMITED, "{answer}");
                let message = answer["error"]["message"].as_str().unwrap();
                assert!(message.contains("nothing was queued"), "{message}");
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 9 * 32 - 256);
    // And no more than that.
    for c in &mut flooders {
        assert!(c.nothing_within(Duration::from_millis(200)).await);
    }
    // Another address is served meanwhile, on another circle.
    let stream = connect_from("127.0.0.2", server.addr).await;
    let (socket, _) =
        tokio_tungstenite::client_async(server.url(circles_test_support::KEY_TWO), stream)
            .await
            .unwrap();
    let mut other = socket;
    other
        .send(Message::text(
            json!({"jsonrpc": "2.0", "id": 1, "method": "play", "params": {"script": "40 + 2"}})
                .to_string(),
        ))
        .await
        .unwrap();
    let answer = loop {
        match tokio::time::timeout(Duration::from_secs(5), other.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => break text.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no answer for the other address: {other:?}"),
        }
    };
    assert!(answer.contains("\"result\":\"42\""), "{answer}");
}
