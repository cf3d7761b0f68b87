//! A real headless Chromium for the console tests: Debian's `chromium`
//! driven by its `chromedriver` over WebDriver (fantoccini), nothing
//! emulated.
//!
//! - Missing browser: a loud SKIPPED line, or a failure in CI
//!   (`CIRCLES_CI=1`; `scripts/test.sh` installs both packages as root).
//! - Chromium gets the flags this machine needs (no sandbox as root, no
//!   GPU, no background networking toward hosts it cannot reach) and a
//!   fresh profile directory.
//! - chromedriver listens on a free port in a process group of its own;
//!   the group (chromedriver and the Chromium it started) is killed by id
//!   when the [`Browser`] is dropped, also when a test fails, and any
//!   process still using the test's profile after that is killed too.
//! - Every wait has a timeout; a failed wait saves a screenshot and says
//!   what the page showed and what the browser logged.
//! - Screenshots go to `target/<profile>/console-screenshots/`.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use circles_test_support::{free_port, target_dir, wait_for_port};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// Longest a page may take to show what a test waits for.
pub const UI_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a single WebDriver command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The flags Chromium needs here (see the module docs).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1360,1000",
];

fn find_program(candidates: &[&str]) -> Option<PathBuf> {
    for c in candidates {
        let p = Path::new(c);
        if p.is_absolute() {
            if p.exists() {
                return Some(p.to_path_buf());
            }
            continue;
        }
        let path = std::env::var_os("PATH")?;
        if let Some(found) = std::env::split_paths(&path)
            .map(|d| d.join(c))
            .find(|p| p.exists())
        {
            return Some(found);
        }
    }
    None
}

/// A headless Chromium session; see the module docs.
pub struct Browser {
    client: Option<Client>,
    driver: Child,
    profile: tempfile::TempDir,
    test: String,
}

impl Browser {
    /// Starts chromedriver and a Chromium session for `test`, or `None`
    /// (after a loud SKIPPED line) when they are not installed outside CI.
    pub async fn start(test: &str) -> Option<Self> {
        let chromium = find_program(&["/usr/bin/chromium", "chromium"]);
        let driver = find_program(&["/usr/bin/chromedriver", "chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let msg = format!(
                "{test}: chromium and chromedriver are needed (apt-get install chromium chromium-driver; scripts/test.sh installs them as root)"
            );
            assert!(
                std::env::var("CIRCLES_CI").map_or(true, |v| v != "1"),
                "CIRCLES_CI=1 and {msg}"
            );
            eprintln!("\n!!! SKIPPED {msg} !!!\n");
            return None;
        };
        let profile = tempfile::Builder::new()
            .prefix("circles-chromium-")
            .tempdir()
            .expect("profile dir");
        let port = free_port();
        let log = std::fs::File::create(artifacts_dir().join(format!("{test}-chromedriver.log")))
            .expect("chromedriver log");
        let mut cmd = Command::new(driver);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            // Its own group, so the group can be killed by this id with
            // the Chromium it starts.
            .process_group(0);
        let driver = cmd.spawn().expect("spawn chromedriver");
        let mut browser = Self {
            client: None,
            driver,
            profile,
            test: test.to_string(),
        };
        wait_for_port(port, Duration::from_secs(20));
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!(
            "--user-data-dir={}",
            browser.profile.path().display()
        ));
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": args,
            },
            "goog:loggingPrefs": {"browser": "ALL"},
            "timeouts": {"script": 30_000, "pageLoad": 30_000, "implicit": 0},
        });
        let caps = caps.as_object().unwrap().clone().into_iter().collect();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = tokio::time::timeout(
            COMMAND_TIMEOUT,
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .expect("a browser session within 60 s")
        .expect("a browser session");
        browser.client = Some(client);
        Some(browser)
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("open session")
    }

    /// Runs one WebDriver command with a timeout.
    async fn bounded<T, F>(&self, what: &str, f: F) -> T
    where
        F: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
    {
        match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => self.fail(&format!("{what}: {e}")).await,
            Err(_) => {
                self.fail(&format!("{what}: no answer within {COMMAND_TIMEOUT:?}"))
                    .await
            }
        }
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.bounded(&format!("opening {url}"), self.client().goto(url))
            .await
    }

    /// Reloads the page.
    pub async fn reload(&self) {
        self.bounded("reloading", self.client().refresh()).await
    }

    /// Runs `js` (a function body) in the page and returns its value.
    pub async fn js(&self, js: &str) -> Value {
        self.bounded(
            "running a script in the page",
            self.client().execute(js, vec![]),
        )
        .await
    }

    /// Waits until `js` (a function body) returns something truthy (not
    /// `null`, `false`, `""` or `0`), and returns it.
    pub async fn wait_until(&self, what: &str, js: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(js).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if start.elapsed() > UI_TIMEOUT {
                self.fail(&format!(
                    "timed out after {UI_TIMEOUT:?} waiting for {what}"
                ))
                .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.bounded(
            &format!("finding `{css}`"),
            self.client().find(Locator::Css(css)),
        )
        .await
    }

    /// Clicks the element at `css`, as a user would (it must be visible).
    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.bounded(&format!("clicking `{css}`"), e.click()).await
    }

    /// Replaces the text of the field at `css` by typing `text`.
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.bounded(&format!("clearing `{css}`"), e.clear()).await;
        self.bounded(&format!("typing into `{css}`"), e.send_keys(text))
            .await
    }

    /// Sends keys (WebDriver key codes such as `\u{E007}` for Enter) to
    /// the element at `css`, which gets the focus first.
    pub async fn keys(&self, css: &str, keys: &str) {
        let e = self.find(css).await;
        self.bounded(&format!("typing keys into `{css}`"), e.send_keys(keys))
            .await
    }

    /// Picks the option `value` of the select at `css`.
    pub async fn select(&self, css: &str, value: &str) {
        let e = self.find(css).await;
        self.bounded(
            &format!("choosing `{value}` in `{css}`"),
            e.select_by_value(value),
        )
        .await
    }

    /// The visible text of the element at `css`.
    pub async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.bounded(&format!("reading `{css}`"), e.text()).await
    }

    /// Whether the element at `css` is shown.
    pub async fn is_displayed(&self, css: &str) -> bool {
        let e = self.find(css).await;
        self.bounded(&format!("checking `{css}`"), e.is_displayed())
            .await
    }

    /// The page's visible text.
    pub async fn page_text(&self) -> String {
        self.js("return document.body.innerText")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Saves a screenshot as `<name>.png` under the artifacts directory.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .bounded("taking a screenshot", self.client().screenshot())
            .await;
        let path = artifacts_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// What the page logged to the browser console (`[level] message`).
    pub async fn console_log(&self) -> Vec<String> {
        let entries = self
            .bounded(
                "reading the browser log",
                self.client().issue_cmd(BrowserLog),
            )
            .await;
        entries
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        format!(
                            "[{}] {}",
                            e["level"].as_str().unwrap_or("?"),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Fails the test if the page logged an error (a script error, a
    /// refused policy, a failed load) since the last look.
    pub async fn assert_no_console_errors(&self) {
        let log = self.console_log().await;
        let errors: Vec<&String> = log.iter().filter(|l| l.starts_with("[SEVERE]")).collect();
        if !errors.is_empty() {
            self.fail(&format!("the browser console has errors:\n{errors:#?}"))
                .await;
        }
    }

    /// Saves a screenshot and panics with `why`, the page's text and the
    /// browser's log.
    async fn fail(&self, why: &str) -> ! {
        let client = self.client();
        let shot = match tokio::time::timeout(Duration::from_secs(10), client.screenshot()).await {
            Ok(Ok(png)) => {
                let path = artifacts_dir().join(format!("{}-failure.png", self.test));
                let _ = std::fs::write(&path, png);
                path.display().to_string()
            }
            _ => "none".into(),
        };
        let text = match tokio::time::timeout(
            Duration::from_secs(10),
            client.execute("return document.body.innerText", vec![]),
        )
        .await
        {
            Ok(Ok(v)) => v.as_str().unwrap_or_default().to_string(),
            _ => "?".into(),
        };
        let log = match tokio::time::timeout(Duration::from_secs(10), client.issue_cmd(BrowserLog))
            .await
        {
            Ok(Ok(v)) => v.to_string(),
            _ => "?".into(),
        };
        panic!("{why}\n--- screenshot: {shot}\n--- page text:\n{text}\n--- browser log:\n{log}");
    }

    /// Ends the session (Chromium quits), then chromedriver.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), client.close()).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        use rustix::process::{Pid, Signal, kill_process, kill_process_group};
        let _ = kill_process_group(Pid::from_child(&self.driver), Signal::KILL);
        let _ = self.driver.wait();
        // A Chromium process that left the group still names the profile.
        let needle = format!("--user-data-dir={}", self.profile.path().display());
        for pid in processes_with_arg(&needle) {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
    }
}

/// Processes whose command line contains `needle` as one argument.
fn processes_with_arg(needle: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|arg| arg == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// `target/<profile>/console-screenshots/`
pub fn artifacts_dir() -> PathBuf {
    let dir = target_dir().join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// chromedriver's browser log (`POST /session/{id}/se/log`), which W3C
/// WebDriver lacks: the console messages, script errors and refused loads.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or("")))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}
