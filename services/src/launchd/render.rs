//! Rendering a [`ServiceSpec`] into a launchd property list.
//!
//! The template is parsed with the `plist` crate and the fields we own are set
//! as typed values, then the whole dictionary is serialized as XML: no string
//! is ever pasted into XML by hand, so an argument with `<`, `&` or quotes
//! cannot corrupt the file. Keys of the template we do not own
//! (`ProcessType`, `ExitTimeOut`, ...) are kept after ours.

use plist::{Dictionary, Value};

use crate::error::ServiceError;
use crate::spec::{ServiceAccount, ServiceScope, ServiceSpec};
use crate::templates::Templates;

/// Our marker key: a plist with our label but without this key was not written
/// by circles and is never overwritten. It holds the description and the
/// fingerprint, so a new binary changes the file.
pub const MANAGED_KEY: &str = "TfOurworldCirclesManaged";

/// The note stored under [`MANAGED_KEY`].
pub const MANAGED_NOTE: &str = "Managed by circles launcher — do not edit; changes are overwritten";

/// The keys the renderer owns; template values for them are replaced
/// (`SoftResourceLimits`/`HardResourceLimits` are merged: the template's
/// entries stay unless the spec sets the same limit).
pub const OWNED_KEYS: [&str; 15] = [
    "UserName",
    "GroupName",
    "SoftResourceLimits",
    "HardResourceLimits",
    "Label",
    "ProgramArguments",
    "EnvironmentVariables",
    "WorkingDirectory",
    "RunAtLoad",
    "KeepAlive",
    "ThrottleInterval",
    "StandardOutPath",
    "StandardErrorPath",
    MANAGED_KEY,
    // launchd would run `Program` instead of ProgramArguments[0].
    "Program",
];

/// Whether `contents` (an installed plist) was written by us.
pub fn is_ours(contents: &str) -> bool {
    Value::from_reader_xml(contents.as_bytes())
        .ok()
        .and_then(Value::into_dictionary)
        .is_some_and(|d| d.contains_key(MANAGED_KEY))
}

/// `contents` (a plist) with `secret` replaced by `shown` in every string
/// it holds, for showing a plist that carries a secret. The strings are
/// compared as parsed, so a secret the XML had to escape (`&`, `<`) is
/// found too. `None` when `contents` is not a plist.
pub fn replace_in_strings(contents: &str, secret: &str, shown: &str) -> Option<String> {
    fn walk(value: &mut Value, secret: &str, shown: &str) {
        match value {
            Value::String(s) if s.contains(secret) => *s = s.replace(secret, shown),
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, secret, shown)),
            Value::Dictionary(dict) => dict.values_mut().for_each(|v| walk(v, secret, shown)),
            _ => {}
        }
    }
    let mut value = Value::from_reader_xml(contents.as_bytes()).ok()?;
    walk(&mut value, secret, shown);
    let mut xml = Vec::new();
    value.to_writer_xml(&mut xml).ok()?;
    let mut xml = String::from_utf8(xml).ok()?;
    xml.push('\n');
    Some(xml)
}

/// `<log_dir>/<name>.out.log` and `.err.log`.
pub fn log_paths(spec: &ServiceSpec) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        spec.log_dir.join(format!("{}.out.log", spec.name)),
        spec.log_dir.join(format!("{}.err.log", spec.name)),
    )
}

/// Renders the plist for `spec` in `scope` from `templates`, as XML text.
pub fn render_plist(
    spec: &ServiceSpec,
    scope: ServiceScope,
    templates: &Templates,
) -> Result<String, ServiceError> {
    spec.validate()?;
    check_xml_text(spec)?;
    let template = templates.launchd(spec.template);
    let template_error = |reason: String| ServiceError::Template {
        template: template.origin.clone(),
        reason,
    };
    let parsed = Value::from_reader_xml(template.text.as_bytes())
        .map_err(|e| template_error(format!("not a valid XML plist: {e}")))?;
    let Some(template_dict) = parsed.into_dictionary() else {
        return Err(template_error("the top-level value is not a <dict>".into()));
    };

    let text = |s: &str| Value::String(s.to_string());
    let path = |p: &std::path::Path| Value::String(p.to_str().expect("validated").to_string());
    let (out_log, err_log) = log_paths(spec);

    let mut dict = Dictionary::new();
    dict.insert("Label".into(), text(spec.name.as_str()));
    let mut argv = vec![path(&spec.program)];
    argv.extend(spec.args.iter().map(|a| text(a)));
    dict.insert("ProgramArguments".into(), Value::Array(argv));
    if !spec.env.is_empty() || !spec.secret_env.is_empty() {
        // Secret values too: launchd has no environment file; the plist
        // that holds them is written 0600 (see `LaunchdBackend::render`).
        let env: Dictionary = spec
            .env
            .iter()
            .chain(spec.secret_env.0.iter())
            .map(|(k, v)| (k.clone(), text(v)))
            .collect();
        dict.insert("EnvironmentVariables".into(), Value::Dictionary(env));
    }
    // Daemons run as root unless told otherwise; agents always run as the
    // user (launchd ignores UserName there).
    let account = match (&spec.account, scope) {
        (ServiceAccount::Unprivileged { user, group }, ServiceScope::System) => {
            dict.insert("UserName".into(), text(user));
            dict.insert("GroupName".into(), text(group));
            Some((user, group))
        }
        _ => None,
    };
    dict.insert("WorkingDirectory".into(), path(&spec.working_directory));
    dict.insert("RunAtLoad".into(), Value::Boolean(true));
    dict.insert("KeepAlive".into(), Value::Boolean(true));
    dict.insert(
        "ThrottleInterval".into(),
        Value::Integer(spec.restart.restart_sec.into()),
    );
    dict.insert("StandardOutPath".into(), path(&out_log));
    dict.insert("StandardErrorPath".into(), path(&err_log));

    let mut managed = Dictionary::new();
    managed.insert("Note".into(), text(MANAGED_NOTE));
    managed.insert("Description".into(), text(&spec.description));
    let fingerprint: Dictionary = spec
        .fingerprint
        .iter()
        .map(|(k, v)| (k.clone(), text(v)))
        .collect();
    managed.insert("Fingerprint".into(), Value::Dictionary(fingerprint));
    if let Some((user, group)) = account {
        // What the backend prepares before loading: the log files and the
        // state directory, owned by the daemon's account.
        managed.insert("Account".into(), text(&format!("{user}:{group}")));
        if let Some(dir) = &spec.state_dir {
            managed.insert("StateDirectory".into(), path(dir));
        }
    }
    dict.insert(MANAGED_KEY.into(), Value::Dictionary(managed));

    // Ceilings launchd enforces (setrlimit): open files; and no core dumps,
    // which would write a process's memory — its Redis password — to disk.
    // launchd cannot cap a job's memory or its threads (see the README).
    let mut limits = Dictionary::new();
    if let Some(nofile) = spec.limits.nofile {
        limits.insert("NumberOfFiles".into(), Value::Integer(nofile.into()));
    }
    limits.insert("Core".into(), Value::Integer(0.into()));
    for key in ["SoftResourceLimits", "HardResourceLimits"] {
        let mut merged = template_dict
            .get(key)
            .and_then(Value::as_dictionary)
            .cloned()
            .unwrap_or_default();
        for (k, v) in &limits {
            merged.insert(k.clone(), v.clone());
        }
        dict.insert(key.into(), Value::Dictionary(merged));
    }

    for (key, value) in template_dict {
        if !OWNED_KEYS.contains(&key.as_str()) {
            dict.insert(key, value);
        }
    }

    to_xml(&spec.name, dict)
}

/// What a daemon with an unprivileged account needs prepared before
/// launchd loads it, as recorded in its rendered plist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DaemonFiles {
    /// `UserName`.
    pub user: String,
    /// `GroupName`.
    pub group: String,
    /// The directory it writes, if any.
    pub state_dir: Option<std::path::PathBuf>,
    /// `StandardOutPath` and `StandardErrorPath`: launchd opens them as the
    /// daemon's user.
    pub logs: Vec<std::path::PathBuf>,
}

/// The [`DaemonFiles`] of a rendered plist; `None` for agents and daemons
/// that run as root.
pub(crate) fn daemon_files(contents: &str) -> Option<DaemonFiles> {
    let dict = Value::from_reader_xml(contents.as_bytes())
        .ok()?
        .into_dictionary()?;
    let managed = dict.get(MANAGED_KEY)?.as_dictionary()?;
    let (user, group) = managed.get("Account")?.as_string()?.split_once(':')?;
    Some(DaemonFiles {
        user: user.to_string(),
        group: group.to_string(),
        state_dir: managed
            .get("StateDirectory")
            .and_then(Value::as_string)
            .map(Into::into),
        logs: ["StandardOutPath", "StandardErrorPath"]
            .iter()
            .filter_map(|k| dict.get(k)?.as_string().map(Into::into))
            .collect(),
    })
}

/// A plist dictionary as XML text with a final newline.
pub(crate) fn to_xml(
    name: &crate::name::ServiceName,
    dict: plist::Dictionary,
) -> Result<String, ServiceError> {
    let mut xml = Vec::new();
    Value::Dictionary(dict)
        .to_writer_xml(&mut xml)
        .map_err(|source| ServiceError::Plist {
            name: name.clone(),
            source,
        })?;
    let mut xml = String::from_utf8(xml).expect("the plist crate writes UTF-8");
    xml.push('\n');
    Ok(xml)
}

/// XML 1.0 cannot carry control characters other than tab, newline and
/// carriage return, not even escaped, so such text cannot go into a plist.
fn check_xml_text(spec: &ServiceSpec) -> Result<(), ServiceError> {
    let bad = |s: &str| {
        s.chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    };
    let offending = spec
        .args
        .iter()
        .map(|a| ("argument", a))
        .chain(spec.env.values().map(|v| ("environment value", v)))
        .find(|(_, s)| bad(s))
        .map(|(what, value)| format!("the {what} {value:?}"))
        .or_else(|| {
            // Named, never shown.
            spec.secret_env
                .0
                .iter()
                .find(|(_, v)| bad(v))
                .map(|(k, _)| format!("the secret environment variable {k}"))
        });
    match offending {
        Some(what) => Err(ServiceError::InvalidSpec {
            name: spec.name.clone(),
            reason: format!("{what} has control characters a plist cannot hold"),
        }),
        None => Ok(()),
    }
}
