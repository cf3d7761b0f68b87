//! Rendering a [`ServiceSpec`] into a systemd unit: pure text in, text out.
//!
//! Every value goes through the escaping its directive needs (see
//! `systemd.syntax(7)`, `systemd.service(5)` "Command lines", and
//! `systemd.exec(5)`), because a path with a space or an argument with `%` or
//! `$` must reach the program unchanged:
//!
//! | directive            | parsing systemd applies                     | what we do                                  |
//! |----------------------|---------------------------------------------|---------------------------------------------|
//! | `ExecStart=` program | unquote, C-unescape, specifiers             | quote; `\` `"` escaped, `%`→`%%`            |
//! | `ExecStart=` args    | … and `$VAR` substitution                   | as above and `$`→`$$`                       |
//! | `Environment=`       | unquote, C-unescape, specifiers             | `"K=V"`; `\` `"` escaped, `%`→`%%`          |
//! | `ReadWritePaths=`    | unquote (space-separated list), specifiers  | each path quoted; `\` `"` escaped, `%`→`%%` |
//! | `WorkingDirectory=`, `Description=` | specifiers only              | `%`→`%%`                                    |
//!
//! Control characters in arguments and environment values become C escapes
//! (`\n`, `\x1b`); paths and descriptions with control characters were
//! already rejected by [`ServiceSpec::validate`].

use std::fmt::Write as _;

use crate::error::ServiceError;
use crate::spec::{ServiceScope, ServiceSpec};
use crate::templates::Templates;

/// First line of every unit we write; a unit file without it is not ours and
/// is never overwritten.
pub const MARKER: &str = "# Managed by circles launcher — do not edit; changes are overwritten";

/// Prefix of the fingerprint comment lines under the marker.
pub const FINGERPRINT_PREFIX: &str = "# Fingerprint: ";

/// Whether `contents` (an installed unit file) was written by us.
pub fn is_ours(contents: &str) -> bool {
    contents.lines().next().map(str::trim_end) == Some(MARKER)
}

/// Renders the unit for `spec` in `scope` from `templates`.
pub fn render_unit(
    spec: &ServiceSpec,
    scope: ServiceScope,
    templates: &Templates,
) -> Result<String, ServiceError> {
    spec.validate()?;
    let program = path_text(&spec.program);
    if program.contains(['"', '\'', '\\', '\x7f']) {
        // systemd refuses such an ExecStart= ("Executable name contains
        // special characters"), however it is quoted.
        return Err(ServiceError::InvalidSpec {
            name: spec.name.clone(),
            reason: format!(
                "systemd cannot run a program whose path contains quotes or backslashes: {program:?}"
            ),
        });
    }
    let template = templates.systemd(spec.template);
    let template_error = |reason: String| ServiceError::Template {
        template: template.origin.clone(),
        reason,
    };

    let exec_start = std::iter::once(quote_word(program, false))
        .chain(spec.args.iter().map(|a| quote_word(a, true)))
        .collect::<Vec<_>>()
        .join(" ");
    let read_write_paths = spec
        .read_write_paths
        .iter()
        .map(|p| quote_word(path_text(p), false))
        .collect::<Vec<_>>()
        .join(" ");
    // A private /tmp would hide a binary or data that lives in the host's
    // /tmp or /var/tmp (the unit would fail with 226/NAMESPACE): keep the
    // hardening only where it breaks nothing.
    let in_tmp = |p: &std::path::Path| p.starts_with("/tmp") || p.starts_with("/var/tmp");
    let private_tmp = !(in_tmp(&spec.program)
        || in_tmp(&spec.working_directory)
        || spec.read_write_paths.iter().any(|p| in_tmp(p)));
    let values: [(&str, String); 10] = [
        (
            "private_tmp",
            if private_tmp { "yes" } else { "no" }.to_string(),
        ),
        ("description", escape_specifiers(&spec.description)),
        (
            "start_limit_interval_sec",
            spec.restart.start_limit_interval_sec.to_string(),
        ),
        (
            "start_limit_burst",
            spec.restart.start_limit_burst.to_string(),
        ),
        (
            "service_type",
            if spec.notify_ready { "notify" } else { "exec" }.to_string(),
        ),
        ("exec_start", exec_start),
        (
            "working_directory",
            escape_specifiers(path_text(&spec.working_directory)),
        ),
        ("restart_sec", spec.restart.restart_sec.to_string()),
        ("read_write_paths", read_write_paths),
        (
            "wanted_by",
            match scope {
                ServiceScope::System => "multi-user.target",
                ServiceScope::User => "default.target",
            }
            .to_string(),
        ),
    ];

    let mut out = String::new();
    out.push_str(MARKER);
    out.push('\n');
    for (key, value) in &spec.fingerprint {
        let _ = writeln!(out, "{FINGERPRINT_PREFIX}{key}={value}");
    }

    let mut saw_exec_start = false;
    // The template's own header comment documents the template, not the unit.
    let body = template
        .text
        .lines()
        .skip_while(|line| line.trim_start().starts_with('#'));
    for line in body {
        if line.trim() == "{{environment}}" {
            for (key, value) in &spec.env {
                let _ = writeln!(out, "Environment={}", quote_env(key, value));
            }
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| template_error(format!("unclosed `{{{{` in line {line:?}")))?;
            let key = after[..end].trim();
            if key == "environment" {
                return Err(template_error(
                    "{{environment}} must stand alone on its line".into(),
                ));
            }
            let value = values
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v)
                .ok_or_else(|| template_error(format!("unknown placeholder {{{{{key}}}}}")))?;
            saw_exec_start |= key == "exec_start";
            out.push_str(value);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    if !saw_exec_start {
        return Err(template_error(
            "it has no {{exec_start}} placeholder, so the unit would run nothing".into(),
        ));
    }
    Ok(out)
}

/// Paths were checked to be UTF-8 by [`ServiceSpec::validate`].
fn path_text(path: &std::path::Path) -> &str {
    path.to_str().expect("validated paths are UTF-8")
}

/// `%` starts a specifier (`%n`, `%h`) in nearly every directive.
pub fn escape_specifiers(text: &str) -> String {
    text.replace('%', "%%")
}

/// One double-quoted word for `ExecStart=` or a path list. `dollar` escapes
/// `$` as `$$`, which argument words need (systemd substitutes `$VAR` and
/// `${VAR}` in arguments) and the program word must not have (systemd uses
/// the program path as written, so `$$` would stay two dollars).
pub fn quote_word(word: &str, dollar: bool) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        match c {
            '$' if dollar => out.push_str("$$"),
            _ => push_escaped(&mut out, c),
        }
    }
    out.push('"');
    out
}

/// `"KEY=value"` for `Environment=`; no `$` substitution happens there.
pub fn quote_env(key: &str, value: &str) -> String {
    let mut out = String::with_capacity(key.len() + value.len() + 3);
    out.push('"');
    out.push_str(key);
    out.push('=');
    for c in value.chars() {
        push_escaped(&mut out, c);
    }
    out.push('"');
    out
}

/// Escapes one character inside a double-quoted, C-unescaped word.
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '"' => out.push_str("\\\""),
        '%' => out.push_str("%%"),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        c if c.is_ascii_control() => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_words_escape_quotes_backslashes_specifiers_and_dollars() {
        assert_eq!(quote_word("plain", true), r#""plain""#);
        assert_eq!(quote_word("a b", true), r#""a b""#);
        assert_eq!(quote_word(r#"say "hi""#, true), r#""say \"hi\"""#);
        assert_eq!(quote_word(r"C:\dir", true), r#""C:\\dir""#);
        assert_eq!(quote_word("100%", true), r#""100%%""#);
        assert_eq!(quote_word("$HOME ${X}", true), r#""$$HOME $${X}""#);
        assert_eq!(quote_word("", true), r#""""#);
        assert_eq!(quote_word("line\nnext\x1b", true), r#""line\nnext\x1b""#);
        assert_eq!(quote_word(";", true), r#"";""#);
        assert_eq!(quote_word("it's", true), r#""it's""#);
    }

    #[test]
    fn the_program_word_keeps_dollars() {
        assert_eq!(
            quote_word("/opt/my $app/100%/bin", false),
            r#""/opt/my $app/100%%/bin""#
        );
    }

    #[test]
    fn environment_values_escape_but_keep_dollars() {
        assert_eq!(
            quote_env("RUST_LOG", r#"a "b" \c 5% $D"#),
            r#""RUST_LOG=a \"b\" \\c 5%% $D""#
        );
    }

    #[test]
    fn recognises_our_marker_only_on_the_first_line() {
        assert!(is_ours(&format!("{MARKER}\n[Unit]\n")));
        assert!(!is_ours("[Unit]\nDescription=x\n"));
        assert!(!is_ours(&format!("[Unit]\n{MARKER}\n")));
        assert!(!is_ours(""));
    }
}
