//! The supervisor as a user runs it — the real binary, real workers, a real
//! Redis — and two clients that share no code with the server: raw HTTP/1.1
//! over a `TcpStream`, and a raw WebSocket (tokio-tungstenite).

#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use circles_test_support::{binary, free_port, wait_until};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

pub const UP: Duration = Duration::from_secs(60);

/// A `supervisor` daemon process; SIGKILLed when dropped.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `supervisor --port <free> --data-dir DIR --manager child
    /// --worker-binary <worker> ARGS…` with `REDIS_URL` in the environment,
    /// and waits until its API answers.
    pub fn start(data_dir: &Path, redis_url: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_on(free_port(), data_dir, redis_url, args, env)
    }

    /// [`Daemon::start`] requiring the secrets of [`secrets_file`] (written
    /// 0600 into `data_dir`).
    pub fn start_with_secrets(data_dir: &Path, redis_url: &str) -> Self {
        let file = secrets_file(data_dir, 0o600);
        Self::start(
            data_dir,
            redis_url,
            &["--secrets-file", file.to_str().unwrap()],
            &[],
        )
    }

    /// [`Daemon::start`] on a given port (to restart one where it was).
    pub fn start_on(
        port: u16,
        data_dir: &Path,
        redis_url: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut d = Self::spawn(port, data_dir, redis_url, args, env);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("supervisor exited ({status}):\n{}", d.stderr());
            }
            assert!(
                start.elapsed() < UP,
                "supervisor API not up:\n{}",
                d.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Spawns without waiting (for tests of refusals).
    pub fn spawn(
        port: u16,
        data_dir: &Path,
        redis_url: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(binary("supervisor"));
        cmd.args(["--port", &port.to_string(), "--data-dir"])
            .arg(data_dir)
            .arg("--worker-binary")
            .arg(binary("worker"));
        if !args.contains(&"--manager") {
            cmd.args(["--manager", "child"]);
        }
        cmd.args(args)
            .env("REDIS_URL", redis_url)
            .env("RUST_LOG", "info")
            .env_remove("SUPERVISOR_ADMIN_SECRETS")
            .env_remove("SUPERVISOR_USER_SECRETS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn supervisor");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self {
            child,
            port,
            data_dir: data_dir.to_path_buf(),
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn http(&self) -> Http {
        Http {
            port: self.port,
            secret: None,
        }
    }

    pub async fn ws(&self) -> Ws {
        Ws::connect(self.port, None).await
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Waits for exit; the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let status = wait_until("supervisor to exit", timeout, || {
            self.child.try_wait().unwrap()
        });
        std::thread::sleep(Duration::from_millis(100));
        status.code()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JSON-RPC client over raw HTTP/1.1: one connection per call, the
/// request written by hand, the response read to its end.
#[derive(Debug, Clone)]
pub struct Http {
    pub port: u16,
    pub secret: Option<String>,
}

impl Http {
    pub fn with_secret(mut self, secret: &str) -> Self {
        self.secret = Some(secret.to_string());
        self
    }

    /// POSTs `body` to `/`; returns (status code, body).
    pub fn post(&self, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let auth = self
            .secret
            .as_ref()
            .map(|s| format!("Authorization: Bearer {s}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "POST / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        (status, body)
    }

    /// Calls `method`; returns the whole response object.
    pub fn call(&self, method: &str, params: Value) -> Value {
        let body =
            json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
        let (status, body) = self.post(&body);
        assert_eq!(status, 200, "{method}: HTTP {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method}: not JSON ({e}): {body}"))
    }

    /// The result of `method`, failing the test on an error.
    pub fn ok(&self, method: &str, params: Value) -> Value {
        let r = self.call(method, params);
        assert!(r.get("error").is_none(), "{method} failed: {r}");
        r["result"].clone()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// A JSON-RPC client over a raw WebSocket.
pub struct Ws {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    /// Notifications read while waiting for responses.
    pub notifications: Vec<Value>,
}

impl Ws {
    pub async fn connect(port: u16, secret: Option<&str>) -> Self {
        let mut req = format!("ws://127.0.0.1:{port}/")
            .into_client_request()
            .unwrap();
        if let Some(s) = secret {
            req.headers_mut()
                .insert("Authorization", format!("Bearer {s}").parse().unwrap());
        }
        let (socket, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("ws connect");
        Self {
            socket,
            next_id: 1,
            notifications: Vec::new(),
        }
    }

    /// Connects with extra upgrade headers (`Origin`, `Sec-WebSocket-Protocol`,
    /// …); the handshake's answer, or why it failed.
    pub async fn connect_with(
        port: u16,
        headers: &[(&str, &str)],
    ) -> Result<
        (
            Self,
            tokio_tungstenite::tungstenite::handshake::client::Response,
        ),
        tokio_tungstenite::tungstenite::Error,
    > {
        let mut req = format!("ws://127.0.0.1:{port}/")
            .into_client_request()
            .unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (socket, response) = tokio_tungstenite::connect_async(req).await?;
        Ok((
            Self {
                socket,
                next_id: 1,
                notifications: Vec::new(),
            },
            response,
        ))
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text.to_string()))
            .await
            .unwrap();
    }

    /// The next text message as JSON.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(120), self.socket.next())
                .await
                .expect("a message within 120s")
                .expect("socket open")
                .expect("no socket error");
            if let Message::Text(t) = msg {
                return serde_json::from_str(&t).unwrap();
            }
        }
    }

    /// Calls `method`; returns the whole response object.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string(),
        )
        .await;
        loop {
            let v = self.recv().await;
            if v.get("id") == Some(&json!(id)) {
                return v;
            }
            self.notifications.push(v);
        }
    }

    pub async fn ok(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params).await;
        assert!(r.get("error").is_none(), "{method} failed: {r}");
        r["result"].clone()
    }

    /// The next notification (one already read first).
    pub async fn notification(&mut self, timeout: Duration) -> Option<Value> {
        if !self.notifications.is_empty() {
            return Some(self.notifications.remove(0));
        }
        tokio::time::timeout(timeout, async {
            loop {
                let v = self.recv().await;
                if v.get("id").is_none() {
                    return v;
                }
            }
        })
        .await
        .ok()
    }
}

/// The error code of a response, or a panic showing it.
pub fn error_code(r: &Value) -> i64 {
    r["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error, got {r}"))
}

/// The error message of a response.
pub fn error_message(r: &Value) -> String {
    r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Writes an executable shell script.
pub fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&p).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

/// The admin secret of [`secrets_file`].
pub const ADMIN: &str = "admin-3f9c1e7a5b2d4c6e8f0a1b3c5d7e9f10";
/// The user secret of [`secrets_file`].
pub const USER: &str = "user-8a6b4c2d0e1f3a5b7c9d1e3f5a7b9c11";

/// `dir/secrets.toml` with [`ADMIN`] and [`USER`], in file mode `mode`.
pub fn secrets_file(dir: &Path, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("secrets.toml");
    std::fs::write(
        &path,
        format!("admin = [\"{ADMIN}\"]\nuser = [\"{USER}\"]\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}
