//! Reading the end of a log file: the last lines of a crashed child for its
//! failure report, `get_runner_logs`, `logs -n`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
