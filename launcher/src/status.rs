//! The status table people read, and its JSON twin for scripts.
//!
//! Rendering is a pure function of [`StatusRow`]s so the table can be
//! snapshot-tested; gathering the rows is the caller's business, with
//! [`queue_and_heartbeat`] for the part Redis knows.
//!
//! The fleet table ([`render_fleet_table`]) is the same kind of view over
//! every circle registered in Redis, on every host
//! ([`circles_dispatcher::fleet`]).

use circles_dispatcher::{CircleState, FleetEntry};
use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

/// One circle (or the WebSocket server) in the status table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusRow {
    /// Circle name, or `ws-server`.
    pub name: String,
    /// Circle key (canonical hex); empty for the server.
    pub public_key: String,
    /// Worker or service state, e.g. `ready`, `restarting`, `failed`, `active (running)`.
    pub state: String,
    /// Process id, when running.
    pub pid: Option<u32>,
    /// How many times it was restarted.
    pub restarts: Option<u32>,
    /// How the last run ended (exit code or signal), when known.
    pub last_exit: Option<circles_supervise::ExitStatus>,
    /// Task ids waiting in the circle's queue.
    pub queue: Option<u64>,
    /// When the worker's heartbeat was last refreshed (RFC 3339), if alive.
    pub heartbeat: Option<String>,
    /// Outcome of the init script: `ok: …`, `error: …`, or `-`.
    pub init: String,
    /// WebSocket URL.
    pub url: String,
}

/// How a service's last main process ended, in the one state model.
pub fn service_last_exit(
    status: &circles_services::ServiceStatus,
) -> Option<circles_supervise::ExitStatus> {
    status.last_exit().map(|(signal, n)| {
        if signal {
            circles_supervise::ExitStatus::Signal(n)
        } else {
            circles_supervise::ExitStatus::Code(n)
        }
    })
}

/// The Redis side of a circle's row: queue depth and last heartbeat (RFC
/// 3339), each `None` when Redis does not say.
pub async fn queue_and_heartbeat(
    conn: &mut redis::aio::ConnectionManager,
    key: &circles_dispatcher::CirclePublicKey,
) -> (Option<u64>, Option<String>) {
    use circles_dispatcher::protocol::{task_queue_key, worker_heartbeat_key};
    let queue = redis::cmd("LLEN")
        .arg(task_queue_key(key))
        .query_async(conn)
        .await
        .ok();
    let beat: Option<String> = redis::cmd("GET")
        .arg(worker_heartbeat_key(key))
        .query_async(conn)
        .await
        .ok()
        .flatten();
    let heartbeat = beat
        .and_then(|b| serde_json::from_str::<circles_dispatcher::WorkerHeartbeat>(&b).ok())
        .map(|b| b.beat_at);
    (queue, heartbeat)
}

/// Renders rows as a table (UTF-8 borders on a terminal, ASCII otherwise).
pub fn render_table(rows: &[StatusRow]) -> Table {
    let mut table = Table::new();
    table.load_style(presets::UTF8_FULL_CONDENSED);
    table.set_content_arrangement(ContentArrangement::Disabled);
    table.set_header([
        "Circle",
        "Public key",
        "State",
        "PID",
        "Restarts",
        "Queue",
        "Heartbeat",
        "Init",
        "WebSocket URL",
    ]);
    for r in rows {
        table.add_row([
            r.name.clone(),
            abbreviate_key(&r.public_key),
            r.state.clone(),
            opt(r.pid),
            match (r.restarts, r.last_exit) {
                (Some(n), Some(exit)) if n > 0 => format!("{n} ({})", exit.short()),
                (Some(n), _) => n.to_string(),
                (None, _) => "-".into(),
            },
            opt(r.queue),
            r.heartbeat
                .as_deref()
                .map_or_else(|| "-".into(), time_of_day),
            truncate(&r.init, 40),
            r.url.clone(),
        ]);
    }
    table
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
            abbreviate_key(&e.circle),
            e.host.clone().unwrap_or_else(|| "-".into()),
            state,
            opt(e.pid),
            match e.in_hand {
                0 => e.queue.to_string(),
                n => format!("{} (+{n} running)", e.queue),
            },
            e.heartbeat_age_ms.map_or_else(
                || "-".into(),
                |ms| format!("{:.1}s ago", ms as f64 / 1000.0),
            ),
            opt(e.tasks_done),
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

/// `2026-11-26T11:16:46.049Z` → `11:16:46 UTC`: the date is today's in a
/// table of live services.
fn time_of_day(rfc3339: &str) -> String {
    rfc3339
        .get(11..19)
        .map_or_else(|| rfc3339.to_string(), |t| format!("{t} UTC"))
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// `02c6047f…709ee5`: enough to recognise a key; the URL carries it whole.
fn abbreviate_key(key: &str) -> String {
    if key.len() > 16 {
        format!("{}…{}", &key[..8], &key[key.len() - 6..])
    } else {
        key.to_string()
    }
}

fn truncate(s: &str, max: usize) -> String {
    let one_line = s.lines().next().unwrap_or("");
    if one_line.chars().count() > max || s.lines().count() > 1 {
        let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        one_line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_snapshot() {
        let rows = vec![
            StatusRow {
                name: "alice".into(),
                public_key: "02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5".into(),
                state: "ready".into(),
                pid: Some(4242),
                restarts: Some(0),
                last_exit: None,
                queue: Some(0),
                heartbeat: Some("2026-11-26T11:16:46.049Z".into()),
                init: "ok: 3 members".into(),
                url: "ws://127.0.0.1:8080/02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5".into(),
            },
            StatusRow {
                name: "bob".into(),
                public_key: "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798".into(),
                state: "failed".into(),
                pid: None,
                restarts: Some(5),
                last_exit: Some(circles_supervise::ExitStatus::Code(3)),
                queue: Some(2),
                heartbeat: None,
                init: "error: Runtime error: something quite long went wrong (line 1)\nmore".into(),
                url: "ws://127.0.0.1:8080/0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798".into(),
            },
        ];
        insta::assert_snapshot!(render_table(&rows).to_string());
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
