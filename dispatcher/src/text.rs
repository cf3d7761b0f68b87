//! Text for people: bounding what strangers control before it is echoed
//! back, and printing an error chain once.
//!
//! Error messages quote what was wrong (a key, a path, a name), and those
//! values come from clients: a 20 MB "key" must not come back as a 20 MB
//! error, nor fill a log.

use std::borrow::Cow;

/// `text` cut to at most `max` bytes (on a character boundary), with a note
/// of its full length when it was cut.
pub fn clip(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes in all)", &text[..end], text.len()))
}

/// An error and its causes on one line, `outer: cause: root`, each cause
/// written once. Many errors (ours with `{source}` in the message, redis's,
/// reqwest's) already quote their cause, so printing the whole chain as
/// anyhow's `{:#}` does would say "Connection refused (os error 111)" two or
/// three times; a cause whose text is already in the line is left out.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{what}: {source}")]
    struct Quoting {
        what: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("reading the config")]
    struct Silent {
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_printed_once() {
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        // A message that quotes its cause: the cause is not repeated.
        let e = Quoting {
            what: "Redis unreachable",
            source: refused(),
        };
        let line = error_chain(&e);
        assert_eq!(line.matches("refused").count(), 1, "{line}");
        // A message that does not: the cause is added.
        let e = Silent { source: refused() };
        assert_eq!(
            error_chain(&e),
            format!("reading the config: {}", refused())
        );
        // Through anyhow's context layers as well.
        let e = anyhow::Error::new(Quoting {
            what: "failed to read init script x.rhai",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
        .context("loading circles");
        let line = error_chain(e.as_ref());
        assert!(
            line.starts_with("loading circles: failed to read init script x.rhai: "),
            "{line}"
        );
        assert_eq!(line.matches("not found").count(), 1, "{line}");
    }

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_on_a_char_boundary() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "abc… (4 bytes in all)");
        // 'é' is two bytes: a cut inside it backs off to before it.
        assert_eq!(clip("aéb", 2), "a… (4 bytes in all)");
        assert_eq!(
            clip(&"x".repeat(20_000_000), 10).len(),
            10 + "… (20000000 bytes in all)".len()
        );
    }
}
