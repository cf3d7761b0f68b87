//! Cells of the status tables the launcher and `supervisor ctl` print, so
//! that the two show a circle the same way.

/// `2026-11-26T11:16:46.049Z` → `11:16:46 UTC`: the date is today's in a
/// table of live services.
pub fn time_of_day(rfc3339: &str) -> String {
    rfc3339
        .get(11..19)
        .map_or_else(|| rfc3339.to_string(), |t| format!("{t} UTC"))
}

/// The value, or `-` for none.
pub fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The first line of `s` in at most `max` characters, ending in `…` when
/// anything was left out (a later line, or the end of a long one).
pub fn one_line(s: &str, max: usize) -> String {
    let first = s.lines().next().unwrap_or("");
    if first.chars().count() > max || s.lines().count() > 1 {
        let cut: String = first.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        first.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_one_short_line() {
        assert_eq!(time_of_day("2026-11-26T11:16:46.049Z"), "11:16:46 UTC");
        assert_eq!(time_of_day("garbage"), "garbage");
        assert_eq!(or_dash(Some(3)), "3");
        assert_eq!(or_dash(None::<u32>), "-");
        assert_eq!(one_line("short", 10), "short");
        assert_eq!(one_line("abcdefghijkl", 5), "abcd…");
        assert_eq!(one_line("first\nsecond", 40), "first…");
        assert_eq!(one_line("ééééé", 5), "ééééé");
    }
}
