//! Runner logs: the tail of a log file (child runners, launchd jobs) or of
//! the journal (systemd units), filtered by time, and following new lines.

use circles_dispatcher::text::clip;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncSeekExt as _};
use tokio::sync::mpsc;

use crate::error::SupervisorError;

/// Most lines one call returns, whatever it asks for.
pub const MAX_LINES: usize = 10_000;
/// Longest a log command (journalctl) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a followed file is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Longest line sent to a follower; longer ones are cut.
const MAX_LINE: usize = 16 * 1024;

/// The last `lines` lines of `path`, oldest first, keeping only those at or
/// after `since` (see [`line_time`]).
pub async fn file_tail(
    path: &Path,
    lines: usize,
    since: Option<SystemTime>,
) -> Result<Vec<String>, SupervisorError> {
    let path = path.to_path_buf();
    let lines = lines.min(MAX_LINES);
    let all = tokio::task::spawn_blocking(move || {
        // With `since`, read more and filter: the lines after `since` are
        // the newest ones, so the tail holds them if there are few enough.
        let want = if since.is_some() { MAX_LINES } else { lines };
        circles_supervise::logs::tail_lines(&path, want)
            .map_err(|e| SupervisorError::io(format!("reading {}", path.display()), e))
    })
    .await
    .map_err(|e| SupervisorError::io("reading a log", std::io::Error::other(e)))??;
    Ok(keep_since(all, since, lines))
}

/// Lines at or after `since` (a line without a time of its own belongs to
/// the one before it), then the last `lines` of those.
pub fn keep_since(all: Vec<String>, since: Option<SystemTime>, lines: usize) -> Vec<String> {
    let mut kept = match since {
        None => all,
        Some(since) => {
            let mut keep = false;
            all.into_iter()
                .filter(|l| {
                    if let Some(t) = line_time(l) {
                        keep = t >= since;
                    }
                    keep
                })
                .collect()
        }
    };
    let skip = kept.len().saturating_sub(lines);
    kept.drain(..skip);
    kept
}

/// The time a log line starts with: an RFC 3339 timestamp, as the worker's
/// logs (tracing) and `journalctl -o short-iso` write them.
pub fn line_time(line: &str) -> Option<SystemTime> {
    let word = line.split_whitespace().next()?;
    let t = chrono::DateTime::parse_from_rfc3339(word).ok()?;
    let secs = t.timestamp();
    let nanos = t.timestamp_subsec_nanos();
    (secs >= 0).then(|| SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

/// Parses `since` as given in the API: RFC 3339, or Unix seconds.
pub fn parse_since(text: &str) -> Result<SystemTime, SupervisorError> {
    if let Ok(secs) = text.trim().parse::<u64>() {
        // Checked: a caller's 2^64-1 would overflow `SystemTime` and panic.
        return SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .ok_or_else(|| {
                SupervisorError::InvalidInput(format!(
                    "since {secs} is too far in the future for Unix seconds"
                ))
            });
    }
    line_time(text.trim()).ok_or_else(|| {
        SupervisorError::InvalidInput(format!(
            "since {:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor Unix seconds",
            clip(text, 60)
        ))
    })
}

/// Runs a log command (journalctl) and returns its stdout lines.
pub async fn command_lines(
    mut cmd: tokio::process::Command,
    what: &str,
) -> Result<Vec<String>, SupervisorError> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
        .await
        .map_err(|_| {
            SupervisorError::manager(
                "systemd",
                format!("reading {what}"),
                "journalctl took too long",
            )
        })?
        .map_err(|e| {
            SupervisorError::manager("systemd", format!("running journalctl for {what}"), e)
        })?;
    if !output.status.success() {
        return Err(SupervisorError::manager(
            "systemd",
            format!("reading {what}"),
            String::from_utf8_lossy(&output.stderr).trim(),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// Follows `files` (from their current end): each new line is sent on the
/// returned channel until its receiver is dropped. A file that does not
/// exist yet, or is truncated, is read from its start when it (re)appears.
pub fn follow_files(files: Vec<PathBuf>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut offsets: Vec<u64> = Vec::new();
        for f in &files {
            offsets.push(tokio::fs::metadata(f).await.map(|m| m.len()).unwrap_or(0));
        }
        let mut partial: Vec<Vec<u8>> = vec![Vec::new(); files.len()];
        loop {
            for (i, path) in files.iter().enumerate() {
                let Ok(meta) = tokio::fs::metadata(path).await else {
                    continue;
                };
                if meta.len() < offsets[i] {
                    offsets[i] = 0;
                }
                if meta.len() == offsets[i] {
                    continue;
                }
                let Ok(mut file) = tokio::fs::File::open(path).await else {
                    continue;
                };
                if file
                    .seek(std::io::SeekFrom::Start(offsets[i]))
                    .await
                    .is_err()
                {
                    continue;
                }
                let mut buf = Vec::new();
                let Ok(n) = (&mut file).take(1 << 20).read_to_end(&mut buf).await else {
                    continue;
                };
                offsets[i] += n as u64;
                partial[i].extend_from_slice(&buf);
                while let Some(pos) = partial[i].iter().position(|b| *b == b'\n') {
                    let mut line: Vec<u8> = partial[i].drain(..=pos).collect();
                    line.pop();
                    line.truncate(MAX_LINE);
                    if tx
                        .send(String::from_utf8_lossy(&line).into_owned())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if partial[i].len() > MAX_LINE {
                    partial[i].clear();
                }
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
            }
        }
    });
    rx
}

/// Follows a command's stdout (`journalctl -f`), line by line, until the
/// receiver is dropped; the command is killed then.
pub fn follow_command(
    mut cmd: tokio::process::Command,
) -> Result<mpsc::Receiver<String>, std::io::Error> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                line = lines.next_line() => match line {
                    Ok(Some(mut line)) => {
                        line.truncate(MAX_LINE);
                        if tx.send(line).await.is_err() {
                            break;
                        }
                    }
                    _ => break,
                },
            }
        }
        let _ = child.kill().await;
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_keeps_timed_lines_and_their_continuations() {
        let lines: Vec<String> = [
            "2026-01-01T10:00:00.000000Z  INFO old",
            "  continuation of old",
            "2026-01-01T11:00:00Z  INFO new",
            "  continuation of new",
            "2026-01-01T12:00:00+00:00  WARN newer",
        ]
        .map(String::from)
        .to_vec();
        let since = parse_since("2026-01-01T10:30:00Z").unwrap();
        let kept = keep_since(lines.clone(), Some(since), 100);
        assert_eq!(kept.len(), 3);
        assert!(kept[0].ends_with("INFO new"));
        assert_eq!(keep_since(lines.clone(), None, 2).len(), 2);
        assert_eq!(
            keep_since(lines, Some(since), 1),
            ["2026-01-01T12:00:00+00:00  WARN newer"]
        );
        assert_eq!(
            parse_since("1767225600").unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
        );
        assert!(
            parse_since("18446744073709551615")
                .unwrap_err()
                .to_string()
                .contains("too far in the future")
        );
        assert!(
            parse_since("yesterday")
                .unwrap_err()
                .to_string()
                .contains("RFC 3339")
        );
    }
}
