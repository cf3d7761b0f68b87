//! Reading the end of a log file: the last lines of a crashed child for its
//! failure report, `get_runner_logs`, `logs -n`; and the error a child
//! wrote before it exited, which becomes the *reason* people see in status
//! tables ("circle … is already served by pid 4242 on host h") rather than
//! only "exit status 1".

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Never read more than this from the end of a file for one tail, whatever
/// `lines` asks for, so a huge log or a huge request cannot exhaust memory.
pub const MAX_TAIL_BYTES: u64 = 8 * 1024 * 1024;

/// The last `lines` lines of `path` (oldest first), reading backwards in
/// chunks and at most [`MAX_TAIL_BYTES`]. A missing file has no lines.
/// Bytes that are not UTF-8 are replaced.
pub fn tail_lines(path: &Path, lines: usize) -> std::io::Result<Vec<String>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if lines == 0 {
        return Ok(Vec::new());
    }
    let len = file.metadata()?.len();
    let floor = len.saturating_sub(MAX_TAIL_BYTES);
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    const CHUNK: u64 = 64 * 1024;
    // Enough newlines for `lines` complete lines (plus a trailing newline).
    while start > floor && buf.iter().filter(|b| **b == b'\n').count() <= lines {
        let from = start.saturating_sub(CHUNK).max(floor);
        let mut chunk = vec![0u8; (start - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        start = from;
    }
    let text = String::from_utf8_lossy(&buf);
    let mut all: Vec<&str> = text.lines().collect();
    // A line cut at the read floor is not a whole line.
    if start > 0 && !all.is_empty() {
        all.remove(0);
    }
    let skip = all.len().saturating_sub(lines);
    Ok(all[skip..].iter().map(|s| s.to_string()).collect())
}

/// How much of a log's end [`last_error_since`] reads, at most.
pub const MAX_REASON_SCAN: u64 = 64 * 1024;
/// Longest reason kept from a log line (a line a child wrote is not bounded).
pub const MAX_REASON_LEN: usize = 500;

/// The last error line written to `path` after byte offset `since` (the
/// log's length when the process started), as [`error_message`] reads it.
/// Reads at most [`MAX_REASON_SCAN`] bytes from the end; `None` when there
/// is no such line or the file cannot be read.
pub fn last_error_since(path: &Path, since: u64) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let from = since.max(len.saturating_sub(MAX_REASON_SCAN));
    if from >= len {
        return None;
    }
    let mut buf = Vec::with_capacity((len - from) as usize);
    file.seek(SeekFrom::Start(from)).ok()?;
    file.take(len - from).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let message = text.lines().rev().find_map(error_message)?;
    Some(clip(message, MAX_REASON_LEN))
}

/// At most `max` bytes of `text` (cut on a character boundary, marked `…`).
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The message of a log line that reports an error, without its timestamp,
/// level and target: a `tracing` line (`2026-… ERROR circles_worker::cli:
/// message`, with or without time and target) or a plain `error: message`
/// as programs print before exiting. Other lines: `None`.
pub fn error_message(line: &str) -> Option<&str> {
    let line = line.trim();
    for prefix in ["error: ", "Error: ", "fatal: "] {
        if let Some(rest) = line.strip_prefix(prefix) {
            return Some(rest.trim()).filter(|m| !m.is_empty());
        }
    }
    let rest = match line.strip_prefix("ERROR ") {
        Some(rest) => rest,
        None => {
            // `<timestamp> ERROR …`: one word (the time) before the level.
            let (time, rest) = line.split_once(" ERROR ")?;
            if time.contains(' ') {
                return None;
            }
            rest
        }
    };
    let rest = rest.trim_start();
    // A module path target (`circles_worker::cli:`) is not the message.
    let message = match rest.split_once(": ") {
        Some((target, message)) if target.contains("::") && !target.contains(' ') => message,
        _ => rest,
    };
    Some(message.trim()).filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_read_without_time_level_and_target() {
        for (line, want) in [
            (
                "2026-12-01T18:31:51.259861Z ERROR circles_worker::cli: circle 02ab is already served by pid 7 on host h",
                Some("circle 02ab is already served by pid 7 on host h"),
            ),
            (
                "2026-12-01T18:31:51Z ERROR oops: it broke",
                Some("oops: it broke"),
            ),
            ("ERROR circles_worker::run: lost", Some("lost")),
            (
                "error: invalid public key `zz`",
                Some("invalid public key `zz`"),
            ),
            (
                "2026-12-01T18:31:51Z  WARN circles_worker::run: Redis error",
                None,
            ),
            (
                "2026-12-01T18:31:51Z  INFO an ERROR in the middle of a message",
                None,
            ),
            ("error: ", None),
            ("plain output", None),
        ] {
            assert_eq!(error_message(line), want, "{line}");
        }
    }

    #[test]
    fn the_last_error_after_the_start_is_the_reason() {
        let dir = std::env::temp_dir().join(format!("supervise-reason-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.log");
        std::fs::write(&path, "Z ERROR x::y: from an earlier run\n").unwrap();
        let since = std::fs::metadata(&path).unwrap().len();
        assert_eq!(last_error_since(&path, since), None, "nothing new yet");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("Z  INFO x::y: starting\nZ ERROR x::y: first\nZ ERROR x::y: second\nZ  INFO x::y: bye\n");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(last_error_since(&path, since).as_deref(), Some("second"));
        // A huge line is clipped; only the end of a huge log is read.
        let long = format!("error: {}\n", "x".repeat(10_000));
        std::fs::write(&path, long.repeat(100)).unwrap();
        let reason = last_error_since(&path, 0).unwrap();
        assert!(reason.len() < MAX_REASON_LEN + 40, "{}", reason.len());
        assert_eq!(last_error_since(&dir.join("missing.log"), 0), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tails_across_chunks_and_handles_edges() {
        let dir = std::env::temp_dir().join(format!("supervise-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.log");
        assert!(tail_lines(&path, 5).unwrap().is_empty(), "missing file");
        let text: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        assert_eq!(
            tail_lines(&path, 3).unwrap(),
            ["line 19997", "line 19998", "line 19999"]
        );
        let many = tail_lines(&path, 15_000).unwrap();
        assert_eq!(many.len(), 15_000);
        assert_eq!(many[0], "line 5000");
        assert_eq!(tail_lines(&path, 100_000).unwrap().len(), 20_000);
        assert!(tail_lines(&path, 0).unwrap().is_empty());
        std::fs::write(&path, "no newline at end").unwrap();
        assert_eq!(tail_lines(&path, 2).unwrap(), ["no newline at end"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
