//! The web console (issue 12): served by the real `supervisor` binary on
//! its API port, next to `POST /` and the WebSocket; its way of sending a
//! secret from a browser, scoped exactly like the header; the refusal of
//! cross-origin and rebound requests; `generate_keypair`; and the page
//! itself in a real headless Chromium (see `browser/`) against real
//! workers and a real Redis.

mod browser;
mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use base64::Engine as _;
use browser::Browser;
use circles_test_support::{KEY_ONE, KEY_TWO, RedisServer, wait_until};
use common::{ADMIN, Daemon, USER, Ws, alive, error_code, error_message};
use serde_json::json;

/// One Chromium at a time: the machine has two cores.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A raw HTTP/1.1 request; (status, lower-cased head, body).
fn raw_http(port: u16, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn get(port: u16, path: &str, host: &str) -> (u16, String, String) {
    raw_http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
}

fn bearer_protocol(secret: &str) -> String {
    format!(
        "circles.jsonrpc, circles.bearer.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shares_the_port_with_the_api_and_sends_security_headers() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(tmp.path(), &redis.url(), &[], &[]);
    let port = daemon.port;
    let host = format!("127.0.0.1:{port}");

    let (status, head, body) = get(port, "/", &host);
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    let csp = head
        .lines()
        .find_map(|l| l.strip_prefix("content-security-policy: "))
        .expect("a CSP header");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(head.contains("x-frame-options: deny"), "{head}");
    assert!(body.contains("<title>circles supervisor</title>"), "{body}");
    for (path, kind) in [
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        let (status, head, body) = get(port, path, &host);
        assert_eq!(status, 200, "{path}: {head}");
        assert!(head.contains(&format!("content-type: {kind}")), "{head}");
        assert!(!body.is_empty());
    }
    let (status, _, _) = get(port, "/console/nope.js", &host);
    assert_ne!(status, 200, "only the console's files are served");

    // The API on the same port: POST / and the WebSocket upgrade on /.
    let http = daemon.http();
    assert_eq!(http.ok("list_runners", json!({})), json!([]));
    let mut ws = daemon.ws().await;
    let who = ws.ok("whoami", json!({})).await;
    assert_eq!(who, json!({"scope": "admin", "secrets_configured": false}));

    // A page of another site cannot open the WebSocket (browsers send its
    // Origin), nor reach the API through a name rebound to 127.0.0.1.
    let cross = Ws::connect_with(port, &[("Origin", "http://evil.example")]).await;
    match cross {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        Err(e) => panic!("expected HTTP 403, got {e}"),
        Ok(_) => panic!("a cross-origin WebSocket was accepted"),
    }
    let (_, same) = Ws::connect_with(port, &[("Origin", &format!("http://{host}"))])
        .await
        .expect("the console's own origin is accepted");
    assert_eq!(same.status(), 101);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"list_runners"}"#;
    let (status, _, text) = raw_http(
        port,
        &format!(
            "POST / HTTP/1.1\r\nHost: rebound.example:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("not a loopback name"), "{text}");
    let (status, _, _) = get(port, "/", &format!("localhost:{port}"));
    assert_eq!(status, 200, "localhost is loopback");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_in_the_websocket_subprotocol_is_scoped_like_the_header() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_secrets(tmp.path(), &redis.url());
    let port = daemon.port;
    let add = json!({"name": "alpha", "circle_public_key": KEY_ONE});

    // A user secret: read-only and jobs, as with the header; the server
    // answers with the API's subprotocol, never the secret's.
    let (mut user, response) =
        Ws::connect_with(port, &[("Sec-WebSocket-Protocol", &bearer_protocol(USER))])
            .await
            .unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "circles.jsonrpc"
    );
    assert_eq!(
        user.ok("whoami", json!({})).await,
        json!({"scope": "user", "secrets_configured": true})
    );
    assert_eq!(user.ok("list_runners", json!({})).await, json!([]));
    let r = user.call("add_runner", add.clone()).await;
    assert_eq!(error_code(&r), -32014, "{r}");
    assert!(error_message(&r).contains("needs an admin secret"), "{r}");

    // Wrong, undecodable and missing secrets: connected, but every call
    // refused.
    for protocol in [
        bearer_protocol("admin-7c1e9a3b5d2f4e6a8c0b1d3f5e7a9c1X"),
        "circles.jsonrpc, circles.bearer.%%%".to_string(),
        "circles.jsonrpc".to_string(),
    ] {
        let (mut ws, _) = Ws::connect_with(port, &[("Sec-WebSocket-Protocol", &protocol)])
            .await
            .unwrap();
        for method in ["whoami", "list_runners", "get_all_runner_status"] {
            let r = ws.call(method, json!({})).await;
            assert_eq!(error_code(&r), -32014, "{protocol}: {method}: {r}");
        }
    }

    // An admin secret may do everything.
    let (mut admin, _) =
        Ws::connect_with(port, &[("Sec-WebSocket-Protocol", &bearer_protocol(ADMIN))])
            .await
            .unwrap();
    let info = admin.ok("add_runner", add).await;
    assert_eq!(info["name"], "alpha");

    // The header wins over the subprotocol.
    let (mut both, _) = Ws::connect_with(
        port,
        &[
            ("Authorization", &format!("Bearer {USER}")),
            ("Sec-WebSocket-Protocol", &bearer_protocol(ADMIN)),
        ],
    )
    .await
    .unwrap();
    assert_eq!(both.ok("whoami", json!({})).await["scope"], "user");

    // Never in the supervisor's log.
    let log = daemon.stderr();
    assert!(!log.contains(ADMIN) && !log.contains(USER), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn generate_keypair_returns_the_public_key_and_keeps_the_secret_on_disk() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_secrets(tmp.path(), &redis.url());
    let r = daemon
        .http()
        .with_secret(USER)
        .call("generate_keypair", json!({}));
    assert_eq!(error_code(&r), -32014, "admin only: {r}");
    let admin = daemon.http().with_secret(ADMIN);
    let key = admin.ok("generate_keypair", json!({}));
    let public = key["circle_public_key"].as_str().unwrap().to_string();
    circles_dispatcher::CirclePublicKey::parse(&public).expect("a valid circle key");
    assert_eq!(public.len(), 66);
    let path = std::path::PathBuf::from(key["secret_key_file"].as_str().unwrap());
    assert_eq!(path, tmp.path().join("keys").join(format!("{public}.json")));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let secret = stored["secret_key"].as_str().unwrap();
    let pair = circles_dispatcher::CircleKeypair::from_secret_hex(secret).unwrap();
    assert_eq!(
        pair.public.to_hex(),
        public,
        "the stored secret is the key's"
    );
    assert!(!key.to_string().contains(secret), "the secret is not sent");
    assert!(!daemon.stderr().contains(secret), "nor logged");
    let other = admin.ok("generate_keypair", json!([]));
    assert_ne!(other["circle_public_key"], key["circle_public_key"]);
    // It names a circle add_runner takes.
    let info = admin.ok(
        "add_runner",
        json!({"name": "fresh", "circle_public_key": public}),
    );
    assert_eq!(info["circle_public_key"], public.as_str());
}

/// The issue's scenario: two running runners, one stopped from the page,
/// a script, a followed log, a runner added with a generated key, the
/// chart — and no console error.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_and_drives_runners_in_a_real_browser() {
    let _one = ONE_BROWSER.lock().await;
    let Some(browser) = Browser::start("console_drives_runners").await else {
        return;
    };
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(tmp.path(), &redis.url(), &[], &[]);
    let http = daemon.http();
    for (name, key) in [("alpha", KEY_ONE), ("beta", KEY_TWO)] {
        let info = http.ok(
            "add_runner",
            json!({"name": name, "circle_public_key": key, "start": true}),
        );
        assert_eq!(info["state"], "running", "{info}");
    }
    let alpha_pid = http.ok("get_runner_status", json!({"name": "alpha"}))["pid"]
        .as_u64()
        .unwrap() as u32;
    assert!(alive(alpha_pid));

    browser
        .goto(&format!("http://127.0.0.1:{}/", daemon.port))
        .await;
    browser
        .wait_until(
            "both runners shown as running",
            r#"return ['alpha', 'beta'].every(n =>
                 document.querySelector(`#runners tr[data-runner="${n}"] .state`)?.textContent === 'running')"#,
        )
        .await;
    assert_eq!(
        browser
            .text(r#"tr[data-runner="alpha"] td[data-field="pid"]"#)
            .await,
        alpha_pid.to_string()
    );
    browser
        .wait_until(
            "a heartbeat age and memory",
            r#"return document.querySelector('tr[data-runner="beta"] td[data-field="heartbeat"]').textContent.endsWith('s ago')
                 && document.querySelector('tr[data-runner="beta"] td[data-field="memory"]').textContent.endsWith('MiB')"#,
        )
        .await;
    browser.screenshot("console-runners").await;

    // Stop alpha from its row, through the confirmation dialog.
    browser
        .click(r#"tr[data-runner="alpha"] button[data-action="stop"]"#)
        .await;
    browser
        .wait_until(
            "the confirmation dialog",
            "return document.getElementById('confirm').open",
        )
        .await;
    assert!(
        browser
            .text("#confirm-text")
            .await
            .starts_with("Stop runner alpha?")
    );
    browser.click("#confirm-ok").await;
    browser
        .wait_until(
            "alpha shown as stopped",
            r#"return document.querySelector('tr[data-runner="alpha"] .state').textContent === 'stopped'"#,
        )
        .await;
    wait_until("alpha's worker to exit", Duration::from_secs(15), || {
        (!alive(alpha_pid)).then_some(())
    });
    assert_eq!(
        browser
            .text(r#"tr[data-runner="alpha"] td[data-field="pid"]"#)
            .await,
        "—"
    );
    assert_eq!(
        http.ok("get_runner_status", json!({"name": "alpha"}))["state"],
        "stopped"
    );
    assert_eq!(
        browser.text(r#"tr[data-runner="beta"] .state"#).await,
        "running"
    );

    // By keyboard: Enter on beta's Restart opens the question, Escape
    // answers no, and nothing happens to beta.
    let beta_pid = browser
        .text(r#"tr[data-runner="beta"] td[data-field="pid"]"#)
        .await;
    browser
        .keys(
            r#"tr[data-runner="beta"] button[data-action="restart"]"#,
            "\u{E007}",
        )
        .await;
    browser
        .wait_until(
            "the question, by keyboard",
            "return document.getElementById('confirm').open \
               && document.activeElement.id === 'confirm-ok'",
        )
        .await;
    browser.keys("#confirm-ok", "\u{E00C}").await;
    browser
        .wait_until(
            "the question closed by Escape",
            "return !document.getElementById('confirm').open",
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        browser
            .text(r#"tr[data-runner="beta"] td[data-field="pid"]"#)
            .await,
        beta_pid,
        "Escape restarted nothing"
    );
    assert_eq!(
        http.ok("get_runner_status", json!({"name": "beta"}))["pid"].to_string(),
        beta_pid
    );

    // A script on beta.
    browser.select("#script-runner", "beta").await;
    browser.fill("#script-text", "40 + 2").await;
    browser.click("#script-run").await;
    browser
        .wait_until(
            "the script's result",
            "return document.getElementById('script-output').dataset.status === 'completed'",
        )
        .await;
    assert_eq!(browser.text("#script-output").await, "42");
    let meta = browser.text("#script-meta").await;
    assert!(
        meta.starts_with("completed in ") && meta.contains(" ms"),
        "{meta}"
    );

    // A script error is shown as one.
    browser.fill("#script-text", "throw \"no luck\"").await;
    browser.click("#script-run").await;
    browser
        .wait_until(
            "the script's error",
            "return document.getElementById('script-output').dataset.status === 'error'",
        )
        .await;
    assert!(
        browser.text("#script-output").await.contains("no luck"),
        "the error text"
    );

    // Follow beta's log; a line the script prints shows up.
    browser.select("#log-runner", "beta").await;
    browser
        .wait_until(
            "the log panel following beta",
            "return document.getElementById('log-status').textContent === 'following beta'",
        )
        .await;
    let marker = format!("console-test-{}", uuid::Uuid::new_v4());
    browser
        .fill("#script-text", &format!("print(\"{marker}\"); 7"))
        .await;
    browser.click("#script-run").await;
    browser
        .wait_until(
            "the print script's result",
            "return document.getElementById('script-output').textContent === '7'",
        )
        .await;
    browser
        .wait_until(
            "the printed line in the log panel",
            &format!("return document.getElementById('log').textContent.includes('{marker}')"),
        )
        .await;

    // Add a runner with a generated key and an init script.
    browser.fill("#add-name", "gamma").await;
    browser
        .fill("#add-init", "db_set(\"greeting\", \"hi\"); \"seeded\"")
        .await;
    browser.click("#add-generate").await;
    let key = browser
        .wait_until(
            "a generated key",
            "const v = document.getElementById('add-key').value; return v.length === 66 ? v : null",
        )
        .await;
    let key = key.as_str().unwrap().to_string();
    browser.click("#add-submit").await;
    browser
        .wait_until(
            "gamma shown as running",
            r#"return document.querySelector('tr[data-runner="gamma"] .state')?.textContent === 'running'"#,
        )
        .await;
    let gamma = http.ok("get_runner_status", json!({"name": "gamma"}));
    assert_eq!(gamma["circle_public_key"], key.as_str());
    assert_eq!(gamma["init"], "ok: seeded", "{gamma}");
    assert!(tmp.path().join("keys").join(format!("{key}.json")).exists());

    // The chart draws a line per runner, and tasks per second from the
    // workers' heartbeats: 300 jobs on beta lift its scale to 10/s or more.
    browser
        .wait_until(
            "chart lines",
            r#"return document.querySelectorAll('#chart-rate polyline').length >= 2
                 && document.querySelector('#chart-queue polyline[data-runner="beta"]') !== null"#,
        )
        .await;
    let mut ws = daemon.ws().await;
    for i in 0..300 {
        ws.ok(
            "queue_job_to_runner",
            json!({"runner": "beta", "script": format!("{i} * 2")}),
        )
        .await;
    }
    browser
        .wait_until(
            "beta's task rate on the chart",
            "return parseFloat(document.querySelector('#chart-rate .axis-label').textContent) >= 10",
        )
        .await;
    // Keyboard: the row's buttons are reachable and named.
    let label = browser
        .js(r#"return document.querySelector('tr[data-runner="beta"] button[data-action="restart"]').getAttribute('aria-label')"#)
        .await;
    assert_eq!(label, "Restart beta");

    // The picture in the README: a clean log and no notes over the page.
    browser.click("#log-clear").await;
    browser
        .fill("#script-text", "print(\"hello from the console\");\n40 + 2")
        .await;
    browser.click("#script-run").await;
    browser
        .wait_until(
            "the hello line",
            "return document.getElementById('log').textContent.includes('hello from the console')\
               && document.getElementById('script-output').textContent === '42'",
        )
        .await;
    browser
        .js("document.getElementById('toast').replaceChildren(); document.activeElement.blur()")
        .await;
    browser.screenshot("console").await;
    browser.assert_no_console_errors().await;
    browser.close().await;
}

/// With secrets: nothing before a secret, a wrong one refused, a user
/// secret read-only (but jobs allowed), kept for the tab, signed out, an
/// admin secret with every control — and no console error.
#[tokio::test(flavor = "multi_thread")]
async fn with_secrets_the_console_shows_nothing_before_a_secret_and_user_secrets_read_only() {
    let _one = ONE_BROWSER.lock().await;
    let Some(browser) = Browser::start("console_secrets").await else {
        return;
    };
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_secrets(tmp.path(), &redis.url());
    daemon.http().with_secret(ADMIN).ok(
        "add_runner",
        json!({"name": "alpha", "circle_public_key": KEY_ONE, "start": true}),
    );

    browser
        .goto(&format!("http://127.0.0.1:{}/", daemon.port))
        .await;
    browser
        .wait_until(
            "the secret prompt",
            "return !document.getElementById('login').hidden",
        )
        .await;
    let no_data = |text: &str| {
        assert!(
            !text.contains("alpha") && !text.contains(&KEY_ONE[..8]) && !text.contains("running"),
            "data shown before a valid secret:\n{text}"
        );
    };
    no_data(&browser.page_text().await);
    assert_eq!(
        browser
            .js("return document.querySelectorAll('#runners tbody tr').length")
            .await,
        0
    );
    browser.screenshot("console-secret-prompt").await;

    // A wrong secret.
    browser.fill("#secret", "not-the-secret-at-all-000").await;
    browser.click("#login-form button[type=submit]").await;
    browser
        .wait_until(
            "the refusal",
            "return document.getElementById('login-error').textContent.includes('not accepted')",
        )
        .await;
    no_data(&browser.page_text().await);

    // A user secret: the data, no admin controls, jobs allowed.
    browser.fill("#secret", USER).await;
    browser.click("#login-form button[type=submit]").await;
    browser
        .wait_until(
            "alpha shown as running",
            r#"return document.querySelector('tr[data-runner="alpha"] .state')?.textContent === 'running'"#,
        )
        .await;
    assert_eq!(browser.text("#scope-badge").await, "user: read-only");
    assert!(
        !browser
            .is_displayed(r#"tr[data-runner="alpha"] button[data-action="stop"]"#)
            .await
    );
    assert!(!browser.is_displayed("#add-form").await);
    browser.select("#script-runner", "alpha").await;
    browser.fill("#script-text", "6 * 7").await;
    browser.click("#script-run").await;
    browser
        .wait_until(
            "the script's result",
            "return document.getElementById('script-output').textContent === '42'",
        )
        .await;

    // Kept for the tab: a reload needs no secret.
    browser.reload().await;
    browser
        .wait_until(
            "alpha after a reload",
            r#"return document.querySelector('tr[data-runner="alpha"] .state')?.textContent === 'running'"#,
        )
        .await;
    // Signed out: the data goes with the secret.
    browser.click("#sign-out").await;
    browser
        .wait_until(
            "the secret prompt again",
            "return !document.getElementById('login').hidden",
        )
        .await;
    no_data(&browser.page_text().await);
    assert_eq!(browser.js("return sessionStorage.length").await, 0);

    // An admin secret: every control.
    browser.fill("#secret", ADMIN).await;
    browser.click("#login-form button[type=submit]").await;
    browser
        .wait_until(
            "alpha's stop button",
            r#"const b = document.querySelector('tr[data-runner="alpha"] button[data-action="stop"]');
               return b !== null && b.offsetParent !== null"#,
        )
        .await;
    assert!(browser.is_displayed("#add-form").await);
    assert_eq!(browser.text("#scope-badge").await, "admin");
    browser.screenshot("console-admin").await;
    browser.assert_no_console_errors().await;
    browser.close().await;
}
