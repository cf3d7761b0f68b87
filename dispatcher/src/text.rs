//! Bounding text that strangers control before it is echoed back.
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

#[cfg(test)]
mod tests {
    use super::*;

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
