//! The status table of `supervisor ctl status`, in the launcher's style and
//! words: a pure function of [`RunnerInfo`]s, snapshot-tested. The state
//! cell is `circles_deploy::status::state_word` (`offline` for a running
//! worker without its heartbeat), and a Reason column appears when any
//! runner has one — as in `launcher status`.

use circles_deploy::cells::{one_line, or_dash, time_of_day};
use circles_supervisor::RunnerInfo;
use comfy_table::{ContentArrangement, Table, presets};

/// The longest reason a cell shows.
const REASON_CELL: usize = 60;

/// Renders runners as a table.
pub fn render(runners: &[RunnerInfo]) -> Table {
    let with_reason = runners.iter().any(|r| r.reason.is_some());
    let mut table = Table::new();
    table.load_style(presets::UTF8_FULL_CONDENSED);
    table.set_content_arrangement(ContentArrangement::Disabled);
    let mut header = vec![
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
    ];
    if with_reason {
        header.push("Reason");
    }
    header.push("WebSocket URL");
    table.set_header(header);
    for r in runners {
        let live = r.queue_depth.is_some().then_some(r.heartbeat_at.is_some());
        let mut state = circles_deploy::status::state_word(&r.state, live).to_string();
        if r.state.as_str() != r.target_word() {
            // `stopped (target running)`: not where it should be.
            state = format!("{state} (target {})", r.target_word());
        }
        let mut cells = vec![
            r.name.clone(),
            circles_deploy::address::abbreviate_key(&r.circle_public_key),
            r.manager.to_string(),
            state,
            or_dash(r.pid),
            r.uptime_secs.map_or_else(|| "-".into(), duration),
            match r.last_exit {
                Some(exit) if r.restarts > 0 || r.state.as_str() == "failed" => {
                    format!("{} ({})", r.restarts, exit.short())
                }
                _ => r.restarts.to_string(),
            },
            or_dash(r.queue_depth),
            or_dash(r.tasks_done),
            r.memory_rss_bytes.map_or_else(|| "-".into(), mebibytes),
            r.heartbeat_at
                .as_deref()
                .map_or_else(|| "-".into(), time_of_day),
            one_line(&r.init, 30),
        ];
        if with_reason {
            cells.push(
                r.reason
                    .as_deref()
                    .map_or_else(|| "-".into(), |s| one_line(s, REASON_CELL)),
            );
        }
        cells.push(r.url.clone());
        table.add_row(cells);
    }
    table
}

/// The table, and under it the reasons its cells cut, whole.
pub fn render_report(runners: &[RunnerInfo]) -> String {
    let cut: String = runners
        .iter()
        .filter_map(|r| {
            let reason = r.reason.as_deref()?;
            one_line(reason, REASON_CELL)
                .ends_with('…')
                .then(|| format!("\n  {}: {reason}", r.name))
        })
        .collect();
    if cut.is_empty() {
        render(runners).to_string()
    } else {
        format!("{}\nwhy:{cut}", render(runners))
    }
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
        beta.reason = Some("circle 02c6047f…709ee5 is already served by pid 7 on host h (exited before becoming ready, exit status 3)".into());
        let mut gamma = info("gamma", ChildState::Stopped);
        gamma.target = TargetState::Stopped;
        gamma.queue_depth = None;
        insta::assert_snapshot!(render(&[alpha, beta, gamma]).to_string());
    }
}
