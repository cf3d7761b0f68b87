//! The status table people read, and its JSON twin for scripts.
//!
//! A row is decided in one place ([`StatusRow::circle`]) from the one state
//! model of `circles-supervise` — a direct-mode child's [`ChildStatus`], or
//! a service's mapped onto it by `circles_deploy::status` — and what Redis
//! says, so the direct-mode table and `launcher status [--json]` show the
//! same words for the same situation (and `supervisor ctl status` too).
//! Rendering is a pure function of rows, snapshot-tested; gathering what
//! Redis knows is [`redis_view`].
//!
//! The fleet table ([`render_fleet_table`]) is the same kind of view over
//! every circle registered in Redis, on every host
//! ([`circles_dispatcher::fleet`]).

use circles_deploy::cells::{one_line, or_dash, time_of_day};
use circles_dispatcher::{CircleState, FleetEntry, WorkerHeartbeat};
use circles_supervise::{ChildStatus, ExitStatus};
use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

/// The longest reason a table cell shows; longer ones are cut there and
/// printed whole under the table ([`render_reasons`]).
pub const REASON_CELL: usize = 70;

/// One circle (or the WebSocket server) in the status table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusRow {
    /// Circle name, or `ws-server`.
    pub name: String,
    /// Circle key (canonical hex); empty for the server.
    pub public_key: String,
    /// `starting`, `running`, `backoff`, `stopping`, `stopped`, `exited`,
    /// `failed`, `unknown` — or `offline`: running, but Redis has no live
    /// heartbeat of it.
    pub state: String,
    /// Process id, when running.
    pub pid: Option<u32>,
    /// How many times it was restarted after an exit.
    pub restarts: Option<u32>,
    /// How the last run ended: `{"code": n}` or `{"signal": n}`.
    pub last_exit: Option<ExitStatus>,
    /// Why it is not running (the worker's own last error where known).
    pub reason: Option<String>,
    /// Task ids waiting in the circle's queue.
    pub queue: Option<u64>,
    /// When this circle's worker last refreshed its heartbeat (RFC 3339).
    pub heartbeat: Option<String>,
    /// Outcome of the init script: `ok: …`, `error: …`, or `-`.
    pub init: String,
    /// WebSocket URL.
    pub url: String,
}

/// What Redis says about a circle; `None` fields when it did not answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisView {
    /// Redis answered.
    pub answered: bool,
    /// Task ids waiting in its queue.
    pub queue: Option<u64>,
    /// The live heartbeat of whichever worker serves it, if any.
    pub heartbeat: Option<WorkerHeartbeat>,
}

impl StatusRow {
    /// The row of a circle whose process is in `process`: its state word
    /// (`offline` for a running process without a live heartbeat), the
    /// heartbeat only if it is this process's own — another worker's
    /// (another host's, or one that holds the circle while this one
    /// cannot start) is never shown as this circle's, but named in the
    /// reason when nothing else explains it.
    pub fn circle(
        name: String,
        key: &circles_dispatcher::CirclePublicKey,
        process: &ChildStatus,
        redis: &RedisView,
        init: String,
        url: String,
    ) -> Self {
        let health = circles_deploy::status::circle_health(
            process,
            redis.answered,
            redis.heartbeat.clone(),
            &circles_deploy::status::this_host(),
        );
        Self {
            name,
            public_key: key.to_hex(),
            state: health.state.to_string(),
            pid: process.pid,
            restarts: Some(process.restarts),
            last_exit: process.last_exit,
            reason: health.reason,
            queue: redis.queue,
            heartbeat: health.heartbeat.map(|b| b.beat_at),
            init,
            url,
        }
    }

    /// The row of a service that is not a circle (the WebSocket server, the
    /// supervisor): no Redis side.
    pub fn service(name: String, process: &ChildStatus, url: String) -> Self {
        Self {
            name,
            public_key: String::new(),
            state: process.state.as_str().to_string(),
            pid: process.pid,
            restarts: Some(process.restarts),
            last_exit: process.last_exit,
            reason: process.reason.clone(),
            queue: None,
            heartbeat: None,
            init: "-".into(),
            url,
        }
    }

    /// Whether this is a circle that is serving.
    pub fn is_up(&self) -> bool {
        self.state == "running"
    }

    /// What a person would call a change: everything but the heartbeat's
    /// time and the queue depth, which move all the time.
    pub fn same_picture(&self, other: &Self) -> bool {
        (
            &self.name,
            &self.state,
            self.pid,
            self.restarts,
            self.last_exit,
        ) == (
            &other.name,
            &other.state,
            other.pid,
            other.restarts,
            other.last_exit,
        ) && (&self.reason, &self.init, self.heartbeat.is_some())
            == (&other.reason, &other.init, other.heartbeat.is_some())
    }
}

/// Queue depth and heartbeat of a circle from Redis.
pub async fn redis_view(
    conn: &mut redis::aio::ConnectionManager,
    key: &circles_dispatcher::CirclePublicKey,
) -> RedisView {
    use circles_dispatcher::protocol::{task_queue_key, worker_heartbeat_key};
    let queue: Option<u64> = redis::cmd("LLEN")
        .arg(task_queue_key(key))
        .query_async(conn)
        .await
        .ok();
    let beat: Option<Option<String>> = redis::cmd("GET")
        .arg(worker_heartbeat_key(key))
        .query_async(conn)
        .await
        .ok();
    RedisView {
        answered: queue.is_some() && beat.is_some(),
        queue,
        heartbeat: beat
            .flatten()
            .and_then(|b| serde_json::from_str::<WorkerHeartbeat>(&b).ok()),
    }
}

/// Renders rows as a table (UTF-8 borders). A Reason column appears when
/// any row has a reason.
pub fn render_table(rows: &[StatusRow]) -> Table {
    let with_reason = rows.iter().any(|r| r.reason.is_some());
    let mut table = Table::new();
    table.load_style(presets::UTF8_FULL_CONDENSED);
    table.set_content_arrangement(ContentArrangement::Disabled);
    let mut header = vec![
        "Circle",
        "Public key",
        "State",
        "PID",
        "Restarts",
        "Queue",
        "Heartbeat",
        "Init",
    ];
    if with_reason {
        header.push("Reason");
    }
    header.push("WebSocket URL");
    table.set_header(header);
    for r in rows {
        let mut cells = vec![
            r.name.clone(),
            circles_deploy::address::abbreviate_key(&r.public_key),
            r.state.clone(),
            or_dash(r.pid),
            match (r.restarts, r.last_exit) {
                (Some(n), Some(exit)) if n > 0 || r.state != "running" => {
                    format!("{n} ({})", exit.short())
                }
                (Some(n), _) => n.to_string(),
                (None, _) => "-".into(),
            },
            or_dash(r.queue),
            r.heartbeat
                .as_deref()
                .map_or_else(|| "-".into(), time_of_day),
            one_line(&r.init, 40),
        ];
        if with_reason {
            cells.push(r.reason.as_deref().map_or_else(
                || "-".into(),
                |s| one_line(&abbreviate_keys_in(s), REASON_CELL),
            ));
        }
        cells.push(r.url.clone());
        table.add_row(cells);
    }
    table
}

/// The reasons the table had to cut, whole: `  name: reason` lines (empty
/// when every reason fit).
pub fn render_reasons(rows: &[StatusRow]) -> String {
    rows.iter()
        .filter_map(|r| {
            let reason = r.reason.as_deref()?;
            let cell = one_line(&abbreviate_keys_in(reason), REASON_CELL);
            (cell.ends_with('…')).then(|| format!("  {}: {reason}\n", r.name))
        })
        .collect()
}

/// Circle keys inside a message shortened as the Public key column shows
/// them, so a table cell keeps room for the words.
fn abbreviate_keys_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() == 66 || run.len() == 130 {
            out.push_str(&circles_deploy::address::abbreviate_key(run));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// The table, and under it the reasons it cut.
pub fn render_report(rows: &[StatusRow]) -> String {
    let reasons = render_reasons(rows);
    if reasons.is_empty() {
        render_table(rows).to_string()
    } else {
        format!("{}\nwhy:\n{}", render_table(rows), reasons.trim_end())
    }
}

/// Renders the fleet (every circle in Redis) as a table.
pub fn render_fleet_table(entries: &[FleetEntry]) -> Table {
    let mut table = Table::new();
    table.load_style(presets::UTF8_FULL_CONDENSED);
    table.set_content_arrangement(ContentArrangement::Disabled);
    table.set_header([
        "Public key",
        "Host",
        "State",
        "PID",
        "Queue",
        "Heartbeat",
        "Tasks done",
        "Lease",
    ]);
    for e in entries {
        let state = match (e.state, &e.last_seen) {
            (CircleState::Offline, Some(at)) => format!("offline since {}", date_time(at)),
            _ => e.state_text(),
        };
        table.add_row([
            circles_deploy::address::abbreviate_key(&e.circle),
            e.host.clone().unwrap_or_else(|| "-".into()),
            state,
            or_dash(e.pid),
            match e.in_hand {
                0 => e.queue.to_string(),
                n => format!("{} (+{n} running)", e.queue),
            },
            e.heartbeat_age_ms.map_or_else(
                || "-".into(),
                |ms| format!("{:.1}s ago", ms as f64 / 1000.0),
            ),
            or_dash(e.tasks_done),
            e.owner
                .as_ref()
                .map_or_else(|| "-".into(), |o| format!("#{}", o.token)),
        ]);
    }
    table
}

/// One line under the fleet table: `3 circles: 2 live, 1 offline`.
pub fn fleet_summary(entries: &[FleetEntry]) -> String {
    let count = |state| entries.iter().filter(|e| e.state == state).count();
    let mut parts = vec![format!("{} live", count(CircleState::Live))];
    for state in [CircleState::Starting, CircleState::Offline] {
        let n = count(state);
        if n > 0 {
            parts.push(format!("{n} {}", state.as_str()));
        }
    }
    let hosts: std::collections::BTreeSet<&str> =
        entries.iter().filter_map(|e| e.host.as_deref()).collect();
    format!(
        "{} circle{} on {} host{}: {}",
        entries.len(),
        if entries.len() == 1 { "" } else { "s" },
        hosts.len(),
        if hosts.len() == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

/// `2026-11-26T11:16:46.049Z` → `2026-11-26 11:16:46 UTC`.
fn date_time(rfc3339: &str) -> String {
    match (rfc3339.get(0..10), rfc3339.get(11..19)) {
        (Some(d), Some(t)) => format!("{d} {t} UTC"),
        _ => rfc3339.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use circles_supervise::ChildState;

    const ALICE: &str = "02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5";
    const BOB: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";

    fn url(key: &str) -> String {
        format!("ws://127.0.0.1:8080/{key}")
    }

    fn process(state: ChildState, pid: Option<u32>) -> ChildStatus {
        ChildStatus {
            state,
            pid,
            ..ChildStatus::starting()
        }
    }

    fn beat(pid: u32, host: &str) -> WorkerHeartbeat {
        WorkerHeartbeat {
            pid,
            host: host.into(),
            db_dir: "/data".into(),
            started_at: "2026-11-26T11:10:00.000Z".into(),
            beat_at: "2026-11-26T11:16:46.049Z".into(),
            tasks_done: 0,
            version: "0.1.0".into(),
        }
    }

    fn view(b: Option<WorkerHeartbeat>) -> RedisView {
        RedisView {
            answered: true,
            queue: Some(0),
            heartbeat: b,
        }
    }

    #[test]
    fn table_snapshot() {
        let here = circles_deploy::status::this_host();
        let alice = StatusRow::circle(
            "alice".into(),
            &ALICE.parse().unwrap(),
            &process(ChildState::Running, Some(4242)),
            &view(Some(beat(4242, &here))),
            "ok: 3 members".into(),
            url(ALICE),
        );
        assert_eq!(alice.heartbeat.as_deref(), Some("2026-11-26T11:16:46.049Z"));
        insta::assert_snapshot!(render_table(&[alice]).to_string());
    }

    #[test]
    fn failure_table_snapshot() {
        // The table of issue 10 item 1: one circle up, one whose worker
        // cannot start because another serves it, one killed by a signal
        // and waiting to restart.
        let here = circles_deploy::status::this_host();
        let alice = StatusRow::circle(
            "alice".into(),
            &ALICE.parse().unwrap(),
            &process(ChildState::Running, Some(4242)),
            &view(Some(beat(4242, &here))),
            "ok: 3 members".into(),
            url(ALICE),
        );
        let mut failed = process(ChildState::Failed, None);
        failed.restarts = 4;
        failed.last_exit = Some(ExitStatus::Code(1));
        failed.reason = Some(format!(
            "circle {BOB} is already served by pid 19967 on host other (since 2026-11-26T11:10:00.000Z); stop that worker first (exited before becoming ready, exit status 1); gave up after 4 restarts (5 failures in a row within 10s of starting)"
        ));
        let bob = StatusRow::circle(
            "bob".into(),
            &BOB.parse().unwrap(),
            &failed,
            // The other worker's heartbeat: not bob's to show.
            &view(Some(beat(19967, "other"))),
            "skipped: worker not ready".into(),
            url(BOB),
        );
        assert_eq!(bob.heartbeat, None, "another worker's heartbeat");
        let mut killed = process(ChildState::Backoff, None);
        killed.restarts = 1;
        killed.last_exit = Some(ExitStatus::Signal(9));
        killed.reason = Some("exited, killed by signal 9 (SIGKILL)".into());
        let carol = StatusRow::service("ws-server".into(), &killed, "ws://127.0.0.1:8080/".into());
        let rows = [alice, bob, carol];
        insta::assert_snapshot!(render_report(&rows));
        let json = serde_json::to_value(&rows[1]).unwrap();
        assert_eq!(json["state"], "failed");
        assert_eq!(json["last_exit"], serde_json::json!({"code": 1}));
        assert!(
            json["reason"]
                .as_str()
                .unwrap()
                .contains("already served by pid 19967")
        );
        assert_eq!(
            serde_json::to_value(&rows[2]).unwrap()["last_exit"],
            serde_json::json!({"signal": 9})
        );
    }

    #[test]
    fn a_running_worker_without_its_heartbeat_is_offline_and_says_why() {
        let here = circles_deploy::status::this_host();
        let key = ALICE.parse().unwrap();
        let running = process(ChildState::Running, Some(7));
        let row = |b, answered| {
            StatusRow::circle(
                "a".into(),
                &key,
                &running,
                &RedisView {
                    answered,
                    queue: None,
                    heartbeat: b,
                },
                "-".into(),
                url(ALICE),
            )
        };
        assert_eq!(row(Some(beat(7, &here)), true).state, "running");
        let offline = row(None, true);
        assert_eq!(offline.state, "offline");
        assert!(offline.reason.unwrap().contains("no live heartbeat"));
        // A heartbeat of another process does not make this one live.
        assert_eq!(row(Some(beat(8, &here)), true).state, "offline");
        // Redis silent: nothing is claimed either way.
        assert_eq!(row(None, false).state, "running");
        // Not running, served elsewhere: said in the reason.
        let stopped = StatusRow::circle(
            "a".into(),
            &key,
            &process(ChildState::Stopped, None),
            &view(Some(beat(9, "elsewhere"))),
            "-".into(),
            url(ALICE),
        );
        assert_eq!(stopped.heartbeat, None);
        assert!(
            stopped
                .reason
                .unwrap()
                .contains("served by pid 9 on host elsewhere")
        );
    }

    #[test]
    fn heartbeat_and_queue_changes_are_not_a_new_picture() {
        let here = circles_deploy::status::this_host();
        let key = ALICE.parse().unwrap();
        let running = process(ChildState::Running, Some(7));
        let a = StatusRow::circle(
            "a".into(),
            &key,
            &running,
            &view(Some(beat(7, &here))),
            "-".into(),
            url(ALICE),
        );
        let mut b = a.clone();
        b.heartbeat = Some("2026-11-26T11:16:48.049Z".into());
        b.queue = Some(3);
        assert!(a.same_picture(&b));
        b.restarts = Some(1);
        assert!(!a.same_picture(&b));
    }

    #[test]
    fn fleet_table_snapshot() {
        use circles_dispatcher::CircleOwner;
        let live = FleetEntry {
            circle: "02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5".into(),
            state: CircleState::Live,
            host: Some("bravo".into()),
            pid: Some(4242),
            db_dir: Some("/var/lib/circles".into()),
            queue: 3,
            in_hand: 1,
            heartbeat_age_ms: Some(1234),
            beat_at: Some("2026-11-26T11:16:46.049Z".into()),
            started_at: Some("2026-11-26T10:00:00.000Z".into()),
            tasks_done: Some(17),
            version: Some("0.1.0".into()),
            last_seen: Some("2026-11-26T11:16:46.049Z".into()),
            owner: Some(CircleOwner {
                host: "bravo".into(),
                pid: 4242,
                pid_namespace: "pid:[4026531836]".into(),
                instance: "i".into(),
                token: 7,
                since: "2026-11-26T10:00:00.000Z".into(),
            }),
        };
        let offline = FleetEntry {
            circle: "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798".into(),
            state: CircleState::Offline,
            host: None,
            pid: None,
            db_dir: None,
            queue: 0,
            in_hand: 0,
            heartbeat_age_ms: None,
            beat_at: None,
            started_at: None,
            tasks_done: None,
            version: None,
            last_seen: Some("2026-11-25T09:05:00.000Z".into()),
            owner: None,
        };
        let never = FleetEntry {
            circle: "03ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff".into(),
            last_seen: None,
            ..offline.clone()
        };
        let entries = [live, offline, never];
        insta::assert_snapshot!(format!(
            "{}\n{}",
            render_fleet_table(&entries),
            fleet_summary(&entries)
        ));
    }
}
