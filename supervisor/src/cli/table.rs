//! The status table of `supervisor ctl status`, in the launcher's style: a
//! pure function of [`RunnerInfo`]s, snapshot-tested.

use circles_supervisor::RunnerInfo;
use comfy_table::{ContentArrangement, Table, presets};

/// Renders runners as a table.
pub fn render(runners: &[RunnerInfo]) -> Table {
    let mut table = Table::new();
    table.load_style(presets::UTF8_FULL_CONDENSED);
    table.set_content_arrangement(ContentArrangement::Disabled);
    table.set_header([
        "Runner",
        "Public key",
        "Manager",
        "State",
        "PID",
        "Uptime",
        "Restarts",
        "Queue",
        "Tasks",
        "Memory",
        "Heartbeat",
        "Init",
        "WebSocket URL",
    ]);
    for r in runners {
        let mut state = r.state.to_string();
        if r.state.as_str() != r.target_word() {
            // `stopped (target running)`: not where it should be.
            state = format!("{state} (target {})", r.target_word());
        }
        table.add_row([
            r.name.clone(),
            abbreviate_key(&r.circle_public_key),
            r.manager.to_string(),
            state,
            opt(r.pid),
            r.uptime_secs.map_or_else(|| "-".into(), duration),
            match r.last_exit {
                Some(exit) if r.restarts > 0 || r.state.as_str() == "failed" => {
                    format!("{} ({})", r.restarts, exit.short())
                }
                _ => r.restarts.to_string(),
            },
            opt(r.queue_depth),
            opt(r.tasks_done),
            r.memory_rss_bytes.map_or_else(|| "-".into(), mebibytes),
            r.heartbeat_at
                .as_deref()
                .map_or_else(|| "-".into(), time_of_day),
            truncate(&r.init, 30),
            r.url.clone(),
        ]);
    }
    table
}

trait TargetWord {
    fn target_word(&self) -> &'static str;
}

impl TargetWord for RunnerInfo {
    fn target_word(&self) -> &'static str {
        match self.target {
            circles_supervisor::TargetState::Running => "running",
            circles_supervisor::TargetState::Stopped => "stopped",
        }
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn time_of_day(rfc3339: &str) -> String {
    rfc3339
        .get(11..19)
        .map_or_else(|| rfc3339.to_string(), |t| format!("{t} UTC"))
}

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
    use circles_supervise::{ChildState, ExitStatus};
    use circles_supervisor::{ManagerKind, TargetState};

    fn info(name: &str, state: ChildState) -> RunnerInfo {
        RunnerInfo {
            name: name.into(),
            circle_public_key: "02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5".into(),
            manager: ManagerKind::Child,
            state,
            target: TargetState::Running,
            pid: None,
            started_at: None,
            uptime_secs: None,
            restarts: 0,
            last_exit: None,
            reason: None,
            last_log_lines: Vec::new(),
            queue_depth: Some(0),
            heartbeat_at: None,
            tasks_done: None,
            memory_rss_bytes: None,
            init: "-".into(),
            url: "ws://127.0.0.1:8080/02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5".into(),
        }
    }

    #[test]
    fn table_snapshot() {
        let mut alpha = info("alpha", ChildState::Running);
        alpha.pid = Some(4242);
        alpha.uptime_secs = Some(3725);
        alpha.restarts = 1;
        alpha.last_exit = Some(ExitStatus::Signal(9));
        alpha.tasks_done = Some(17);
        alpha.memory_rss_bytes = Some(12 * 1024 * 1024 + 300_000);
        alpha.heartbeat_at = Some("2026-12-01T16:37:17.123Z".into());
        alpha.init = "ok: seeded".into();
        let mut beta = info("beta", ChildState::Failed);
        beta.manager = ManagerKind::Systemd;
        beta.restarts = 4;
        beta.last_exit = Some(ExitStatus::Code(3));
        beta.init = "error: Runtime error: a long message that goes on and on".into();
        let mut gamma = info("gamma", ChildState::Stopped);
        gamma.target = TargetState::Stopped;
        gamma.queue_depth = None;
        insta::assert_snapshot!(render(&[alpha, beta, gamma]).to_string());
    }
}
