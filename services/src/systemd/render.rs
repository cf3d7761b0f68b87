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

use std::path::{Path, PathBuf};

use crate::error::ServiceError;
use crate::spec::{ServiceAccount, ServiceScope, ServiceSpec};
use crate::templates::Templates;

/// Where `StateDirectory=` paths are relative to (system services).
pub const STATE_ROOT: &str = "/var/lib";

/// systemd's own default hard limit of open files (since v240), used when a
/// spec sets no `nofile` ceiling: `infinity` would fail at exec time.
const DEFAULT_NOFILE: u64 = 524_288;

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
    let unprivileged_system = scope == ServiceScope::System
        && matches!(spec.account, ServiceAccount::Unprivileged { .. });
    let mut writable: Vec<&Path> = spec.read_write_paths.iter().map(PathBuf::as_path).collect();
    if !unprivileged_system && let Some(dir) = &spec.state_dir {
        writable.push(dir);
    }
    let read_write_paths = writable
        .iter()
        .map(|p| quote_word(path_text(p), false))
        .collect::<Vec<_>>()
        .join(" ");
    let in_tmp = |p: &Path| p.starts_with("/tmp") || p.starts_with("/var/tmp");
    // `DynamicUser=yes` implies a private /tmp; elsewhere a private /tmp
    // would hide a binary or data in the host's /tmp or /var/tmp (the unit
    // would fail with 226/NAMESPACE): keep the hardening where it breaks
    // nothing.
    let private_tmp = unprivileged_system
        || !(in_tmp(&spec.program)
            || in_tmp(&spec.working_directory)
            || writable.iter().any(|p| in_tmp(p)));
    // ProtectHome=yes hides /home, /root and /run/user entirely; a service
    // whose binary or files live there can still get them read-only (and
    // its writable paths writable, by ReadWritePaths=).
    let in_home = |p: &Path| {
        ["/home", "/root", "/run/user"]
            .iter()
            .any(|h| p.starts_with(h))
    };
    let protect_home = if scope == ServiceScope::User
        || in_home(&spec.program)
        || in_home(&spec.working_directory)
        || writable.iter().any(|p| in_home(p))
    {
        "read-only"
    } else {
        "yes"
    };
    let account = account_lines(
        spec,
        unprivileged_system,
        private_tmp && in_tmp(&spec.program),
    )?;
    let limit = |v: Option<u64>| v.map_or_else(|| "infinity".to_string(), |v| v.to_string());
    let values: [(&str, String); 15] = [
        (
            "private_tmp",
            if private_tmp { "yes" } else { "no" }.to_string(),
        ),
        ("protect_home", protect_home.to_string()),
        ("memory_max", limit(spec.limits.memory_max)),
        (
            "memory_swap_max",
            if spec.limits.memory_max.is_some() {
                "0"
            } else {
                "infinity"
            }
            .to_string(),
        ),
        ("tasks_max", limit(spec.limits.tasks_max)),
        (
            "limit_nofile",
            spec.limits.nofile.unwrap_or(DEFAULT_NOFILE).to_string(),
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
            if !spec.secret_env.is_empty() {
                let file = secret_env_path(spec);
                let _ = writeln!(
                    out,
                    "EnvironmentFile={}",
                    escape_specifiers(path_text(&file))
                );
            }
            continue;
        }
        if line.trim() == "{{account}}" {
            out.push_str(&account);
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
            if key == "environment" || key == "account" {
                return Err(template_error(format!(
                    "{{{{{key}}}}} must stand alone on its line"
                )));
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

/// The lines `{{account}}` stands for: who the service runs as and what
/// it may write. An unprivileged system service gets a dynamic user of its
/// own (no entry in /etc/passwd, gone when the service stops), no
/// capabilities, and its state directory owned by that user; everything
/// else runs as the manager's account, writing only `ReadWritePaths=`.
fn account_lines(
    spec: &ServiceSpec,
    unprivileged_system: bool,
    bind_program: bool,
) -> Result<String, ServiceError> {
    let mut out = String::new();
    if !unprivileged_system {
        return Ok(out);
    }
    out.push_str(
        "DynamicUser=yes\nPrivateUsers=yes\nCapabilityBoundingSet=\nAmbientCapabilities=\n",
    );
    if let Some(dir) = &spec.state_dir {
        let rel = state_directory(dir).ok_or_else(|| ServiceError::InvalidSpec {
            name: spec.name.clone(),
            reason: format!(
                "the state directory {} of an unprivileged system service must lie under \
                 {STATE_ROOT} (systemd's StateDirectory=, owned by the service's dynamic user)",
                dir.display()
            ),
        })?;
        let _ = writeln!(out, "StateDirectory={}", quote_word(&rel, false));
        out.push_str("StateDirectoryMode=0700\n");
    }
    if bind_program {
        // The private /tmp that DynamicUser= implies would hide it.
        let _ = writeln!(
            out,
            "BindReadOnlyPaths={}",
            quote_word(path_text(&spec.program), false)
        );
    }
    Ok(out)
}

/// `dir` relative to [`STATE_ROOT`], when it lies strictly below it without
/// `.` or `..` components.
pub fn state_directory(dir: &Path) -> Option<String> {
    let rel = dir.strip_prefix(STATE_ROOT).ok()?;
    let plain = rel
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    (plain && !rel.as_os_str().is_empty()).then(|| rel.to_str().map(str::to_string))?
}

/// `<secrets_dir>/<name>.env`: the 0600 `EnvironmentFile=` of a service with
/// secret environment values.
pub fn secret_env_path(spec: &ServiceSpec) -> PathBuf {
    spec.secrets_dir.join(format!("{}.env", spec.name))
}

/// The text of the environment file for `spec`'s secret values, in the
/// syntax `EnvironmentFile=` reads: double quotes, with `\`, `"`, `` ` ``
/// and `$` escaped (see `systemd.exec(5)`, "EnvironmentFile=").
pub fn render_secret_env(spec: &ServiceSpec) -> String {
    let mut out = String::new();
    out.push_str(MARKER);
    out.push('\n');
    for (key, value) in &spec.secret_env.0 {
        let _ = write!(out, "{key}=\"");
        for c in value.chars() {
            if matches!(c, '\\' | '"' | '`' | '$') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push_str("\"\n");
    }
    out
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
