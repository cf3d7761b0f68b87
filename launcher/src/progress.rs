//! The terminal while circles start: a progress bar on stderr that log
//! lines never tear.
//!
//! Log lines and the bar share stderr. A line written while the bar is
//! drawn lands in the middle of it and leaves a stale bar on the screen, so
//! the launcher's log writer ([`LogWriter`]) hides every bar of the one
//! [`MultiProgress`] while it writes a line (indicatif's `suspend`), and
//! bars are cleared when they finish. Off a terminal the bar draws nothing.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Every progress bar of this process.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// A bar counting `n` circles up to ready; clear it with
/// `finish_and_clear` when done.
pub fn starting_bar(n: usize) -> ProgressBar {
    let bar = bars().add(ProgressBar::new(n as u64));
    bar.set_style(
        ProgressStyle::with_template("{spinner} starting circles {pos}/{len} {wide_bar} {elapsed}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Writes log lines to stderr with the progress bars hidden meanwhile.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // tracing's formatter hands over one whole line per call.
        bars().suspend(|| std::io::stderr().lock().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

/// Logging for the launcher binary: `RUST_LOG`, else `level`; on stderr
/// through [`LogWriter`]; colours on a terminal only.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
