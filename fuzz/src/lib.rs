//! Randomized, time-bounded testing of everything that parses or renders
//! input a stranger controls: JSON-RPC frames ([`Target::Rpc`]), circle keys
//! ([`Target::Key`]), circles.json ([`Target::Config`]) and unit/plist
//! rendering ([`Target::Render`]).
//!
//! cargo-fuzz needs a nightly toolchain, which these machines cannot fetch;
//! instead each target is a proptest strategy (structured values, their
//! near-misses, and raw noise) run in batches until a time budget is spent.
//! Every target checks properties, not just "no panic":
//!
//! - **rpc**: every frame gets an answer that is valid JSON; a numeric id is
//!   echoed byte for byte; error messages stay short whatever the frame.
//! - **key**: a key that parses round-trips through both encodings to the
//!   same key; rejections name the value in bounded space.
//! - **config**: validation never writes anything; what it accepts has valid,
//!   unique names and non-zero ports.
//! - **render**: a rendered unit's `ExecStart=` and `Environment=`, read back
//!   by an independent implementation of systemd's unquoting, are exactly the
//!   spec's program, arguments and environment; no value adds a line or a
//!   section; a rendered plist parses back to the same arguments.
//!
//! `circles-fuzz --secs 600` is the long run; the test in `tests/` runs every
//! target for a few seconds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// What to fuzz.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The server's JSON-RPC request parser and responses.
    Rpc,
    /// Circle public key parsing.
    Key,
    /// circles.json validation.
    Config,
    /// systemd unit and launchd plist rendering.
    Render,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 4] = [Target::Rpc, Target::Key, Target::Config, Target::Render];
}

/// How a run went: cases tried per target.
#[derive(Debug, Default)]
pub struct Report {
    /// `(target, cases)`
    pub cases: Vec<(Target, u64)>,
}

/// Runs `target` until `budget` is spent. A failing case is shrunk and
/// returned as the error, with the minimal input.
pub fn run(target: Target, budget: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + budget;
    let batch = 64;
    let config = Config {
        cases: batch,
        failure_persistence: None,
        max_shrink_time: 30_000,
        ..Config::default()
    };
    // A runner counts its successes for good and runs nothing once it has
    // `cases` of them: each batch gets a fresh one, its randomness drawn
    // from this one so that batches differ.
    let mut seeds = TestRunner::new(config.clone());
    // Cases really checked (shrinking included), not batches times size.
    let cases = std::cell::Cell::new(0u64);
    while Instant::now() < deadline {
        let mut runner = TestRunner::new_with_rng(config.clone(), seeds.new_rng());
        let r = &mut runner;
        match target {
            Target::Rpc => one_batch(r, &cases, rpc::frame(), rpc::check),
            Target::Key => one_batch(r, &cases, key::text(), key::check),
            Target::Config => one_batch(r, &cases, config::file(), config::check),
            Target::Render => one_batch(r, &cases, render::spec(), render::check),
        }
        .map_err(|failure| format!("{target:?}: {failure}"))?;
    }
    Ok(cases.get())
}

/// Runs one batch of cases, counting each in `cases`; a failure comes back
/// shrunk, with its input.
fn one_batch<S: Strategy>(
    runner: &mut TestRunner,
    cases: &std::cell::Cell<u64>,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> Result<(), String>
where
    S::Value: std::fmt::Debug,
{
    let counted = |value| {
        cases.set(cases.get() + 1);
        check(value)
    };
    match runner.run(&strategy, counted) {
        Ok(()) => Ok(()),
        Err(TestError::Fail(why, input)) => Err(format!("{why}\nminimal input: {input:#?}")),
        Err(TestError::Abort(why)) => Err(format!("aborted: {why}")),
    }
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if condition {
        Ok(())
    } else {
        Err(TestCaseError::fail(message()))
    }
}

/// Text a client could send: anything, with the characters that matter to
/// parsers and quoting over-represented.
fn nasty_text(max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        any::<char>().prop_map(String::from),
        prop::sample::select(vec![
            "\"",
            "\\",
            "%",
            "$",
            "${X}",
            "\n",
            "\r",
            "\t",
            "\0",
            "\u{7f}",
            "'",
            ";",
            " ",
            "=",
            "[Service]",
            "#",
            "<",
            "&",
            "]]>",
            "%n",
            "\\x00",
            "\u{2028}",
            "{{",
            "}}",
            "é",
        ])
        .prop_map(String::from),
        "[a-z0-9]{1,8}",
    ];
    prop::collection::vec(piece, 0..max).prop_map(|parts| parts.concat())
}

mod rpc {
    use super::*;
    use circles_server::rpc::{Call, RequestId, Response, RpcError, parse_request};
    use serde_json::{Value, json};

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            nasty_text(12).prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Raw JSON text for an id, including numbers serde would round.
    fn raw_id() -> impl Strategy<Value = String> {
        prop_oneof![
            "-?[0-9]{1,40}",
            "-?[0-9]{1,5}\\.[0-9]{1,20}([eE][-+]?[0-9]{1,3})?",
            nasty_text(8).prop_map(|s| Value::String(s).to_string()),
            Just("null".to_string()),
            json_value().prop_map(|v| v.to_string()),
        ]
    }

    pub(super) fn frame() -> impl Strategy<Value = String> {
        let method = prop_oneof![
            prop::sample::select(vec!["play", "fetch_nonce", "authenticate"])
                .prop_map(String::from),
            nasty_text(10),
        ];
        let envelope = (
            prop::option::of(raw_id()),
            prop::option::of(prop_oneof![Just(json!("2.0")), json_value()]),
            prop::option::of(method),
            prop::option::of(json_value()),
        )
            .prop_map(|(id, version, method, params)| {
                let mut fields = Vec::new();
                if let Some(id) = id {
                    fields.push(format!(r#""id":{id}"#));
                }
                if let Some(v) = version {
                    fields.push(format!(r#""jsonrpc":{v}"#));
                }
                if let Some(m) = method {
                    fields.push(format!(r#""method":{}"#, Value::String(m)));
                }
                if let Some(p) = params {
                    fields.push(format!(r#""params":{p}"#));
                }
                format!("{{{}}}", fields.join(","))
            })
            .boxed();
        prop_oneof![
            4 => envelope.clone(),
            // Near misses: a valid-looking frame cut or spliced.
            2 => (envelope, any::<prop::sample::Index>(), nasty_text(4)).prop_map(|(f, at, junk)| {
                let mut cut = at.index(f.len() + 1);
                while !f.is_char_boundary(cut) {
                    cut -= 1;
                }
                format!("{}{}{}", &f[..cut], junk, &f[cut..])
            }),
            1 => nasty_text(40),
            1 => json_value().prop_map(|v| v.to_string()),
        ]
    }

    pub(super) fn check(frame: String) -> Result<(), TestCaseError> {
        let response = match parse_request(&frame) {
            Ok(request) => {
                if let Some(RequestId::Number(text)) = &request.id {
                    ensure(frame.contains(text.as_str()), || {
                        format!("id {text} is not the client's text")
                    })?;
                }
                let id = request.id.clone().unwrap_or(RequestId::Null);
                let outcome = Call::from_request(&request.method, request.params)
                    .map(|_| Value::Null)
                    .map_err(|e: RpcError| e);
                if let Err(e) = &outcome {
                    ensure(e.message.len() < 2048, || {
                        format!("{} bytes of error message", e.message.len())
                    })?;
                }
                Response::from_outcome(id, outcome)
            }
            Err(rejected) => {
                ensure(rejected.error.message.len() < 2048, || {
                    format!("{} bytes of error message", rejected.error.message.len())
                })?;
                rejected.into_response()
            }
        };
        let text = response.to_json();
        let parsed: Value = serde_json::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("answer is not JSON ({e}): {text}")))?;
        ensure(parsed["jsonrpc"] == "2.0", || format!("no version: {text}"))?;
        Ok(())
    }
}

mod key {
    use super::*;
    use circles_dispatcher::CirclePublicKey;

    pub(super) fn text() -> impl Strategy<Value = String> {
        let valid = prop::array::uniform32(any::<u8>()).prop_filter_map("a secret key", |bytes| {
            let secret = secp256k1::SecretKey::from_secret_bytes(bytes).ok()?;
            Some(CirclePublicKey::from_secret_key(&secret))
        });
        prop_oneof![
            // Valid keys in both encodings, either case, with decorations.
            3 => (valid, any::<bool>(), any::<bool>(), prop::sample::select(vec!["", " ", "0x", "0X", "\t", "%20"]))
                .prop_map(|(k, long, upper, deco)| {
                    let hex = if long { k.to_uncompressed_hex() } else { k.to_hex() };
                    let hex = if upper { hex.to_uppercase() } else { hex };
                    format!("{deco}{hex}")
                }),
            2 => "(02|03|04|0x|)[0-9a-fA-F]{60,132}",
            1 => nasty_text(80),
        ]
    }

    pub(super) fn check(text: String) -> Result<(), TestCaseError> {
        match CirclePublicKey::parse(&text) {
            Ok(key) => {
                let again = CirclePublicKey::parse(&key.to_hex()).expect("canonical form parses");
                let long = CirclePublicKey::parse(&key.to_uncompressed_hex())
                    .expect("uncompressed form parses");
                ensure(again == key && long == key, || {
                    format!("{text} does not round-trip")
                })?;
                ensure(key.to_hex().len() == 66, || {
                    "canonical form is 66 chars".into()
                })?;
                // The exact parser takes only bare hex.
                let exact = CirclePublicKey::parse_exact(&text);
                let bare = text.bytes().all(|b| b.is_ascii_hexdigit());
                ensure(exact.is_ok() == bare, || {
                    format!("parse_exact({text:?}) = {exact:?}")
                })
            }
            Err(e) => {
                let message = e.to_string();
                ensure(message.len() < 600, || {
                    format!("{} bytes of error", message.len())
                })?;
                ensure(CirclePublicKey::parse_exact(&text).is_err(), || {
                    format!("parse_exact accepts {text:?}, parse does not")
                })
            }
        }
    }
}

mod config {
    use super::*;
    use serde_json::{Value, json};

    pub(super) fn file() -> impl Strategy<Value = String> {
        let name = prop_oneof![3 => "[a-z][a-z0-9_-]{0,10}", 1 => nasty_text(10), 1 => Just("x".repeat(70))];
        let port = prop_oneof![
            3 => (1u16..).prop_map(|p| json!(p)),
            1 => Just(json!(0)),
            1 => any::<i64>().prop_map(|n| json!(n)),
            1 => nasty_text(4).prop_map(Value::String),
        ];
        let script = prop::option::of(prop_oneof![
            nasty_text(12),
            Just("/etc/hostname".to_string()),
            Just("../../../../etc/hostname".to_string()),
        ]);
        let entry = (name, port, script, any::<bool>()).prop_map(|(name, port, script, extra)| {
            let mut o = serde_json::Map::new();
            o.insert("name".into(), Value::String(name));
            o.insert("port".into(), port);
            if let Some(s) = script {
                o.insert("script_path".into(), Value::String(s));
            }
            if extra {
                o.insert("unknown".into(), json!(1));
            }
            Value::Object(o)
        });
        prop_oneof![
            4 => prop::collection::vec(entry, 0..5).prop_map(|v| Value::Array(v).to_string()),
            1 => nasty_text(30),
        ]
    }

    pub(super) fn check(text: String) -> Result<(), TestCaseError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("circles.json");
        std::fs::write(&path, &text).expect("write config");
        let data = dir.path().join("data");
        let result = circles_launcher::settings::load_config(&path, &data, None);
        // Validation writes nothing, whatever the input.
        ensure(!data.exists(), || {
            "validation created the data directory".into()
        })?;
        if let Ok(resolved) = result {
            let mut seen = std::collections::BTreeSet::new();
            for c in &resolved.circles {
                ensure(
                    !c.name.is_empty()
                        && c.name.len() <= 64
                        && c.name
                            .chars()
                            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'),
                    || format!("accepted name {:?}", c.name),
                )?;
                ensure(seen.insert(c.name.clone()), || {
                    format!("duplicate {}", c.name)
                })?;
                ensure(c.port.is_some_and(|p| p != 0), || {
                    format!("port {:?}", c.port)
                })?;
            }
        } else if let Err(e) = result {
            let message = e.to_string();
            ensure(message.len() < 2048, || {
                format!("{} bytes of error", message.len())
            })?;
        }
        Ok(())
    }
}

mod render {
    use super::*;
    use circles_services::systemd::render::render_unit;
    use circles_services::{
        ResourceLimits, RestartPolicy, SecretEnv, ServiceAccount, ServiceName, ServiceScope,
        ServiceSpec, ServiceTemplate, Templates,
    };

    fn path() -> impl Strategy<Value = PathBuf> {
        prop::collection::vec(
            prop_oneof![3 => "[a-z0-9._-]{1,8}", 1 => nasty_text(4).prop_filter("not empty", |s| !s.is_empty() && !s.contains('/'))],
            1..4,
        )
        .prop_map(|parts| PathBuf::from(format!("/{}", parts.join("/"))))
    }

    pub(super) fn spec() -> impl Strategy<Value = ServiceSpec> {
        (
            any::<bool>(),
            nasty_text(12),
            path(),
            prop::collection::vec(nasty_text(10), 0..5),
            prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,6}", nasty_text(10), 0..3),
            path(),
            nasty_text(12),
        )
            .prop_map(|(worker, description, program, args, env, data, secret)| {
                ServiceSpec {
                    name: ServiceName::new("tf.ourworld.circles.fuzz").expect("valid name"),
                    template: if worker {
                        ServiceTemplate::Worker
                    } else {
                        ServiceTemplate::WsServer
                    },
                    description,
                    program,
                    args,
                    env,
                    // Env keys are at most 7 characters: never REDIS_URL.
                    secret_env: SecretEnv(BTreeMap::from([("REDIS_URL".to_string(), secret)])),
                    secrets_dir: data.join("secrets"),
                    // Workers as the launcher installs them: a dynamic user
                    // with the (fuzzed) database directory under /var/lib.
                    account: if worker {
                        ServiceAccount::Unprivileged {
                            user: "nobody".into(),
                            group: "nogroup".into(),
                        }
                    } else {
                        ServiceAccount::Manager
                    },
                    state_dir: worker.then(|| {
                        PathBuf::from("/var/lib/circles/db")
                            .join(data.strip_prefix("/").unwrap_or(&data))
                    }),
                    limits: ResourceLimits::default(),
                    working_directory: data.clone(),
                    read_write_paths: vec![data.clone()],
                    log_dir: data.join("logs"),
                    notify_ready: true,
                    restart: RestartPolicy::default(),
                    fingerprint: BTreeMap::from([("k".to_string(), "v".to_string())]),
                }
            })
    }

    pub(super) fn check(spec: ServiceSpec) -> Result<(), TestCaseError> {
        let templates = Templates::embedded();
        if let Ok(unit) = render_unit(&spec, ServiceScope::System, &templates) {
            check_unit(&spec, &unit)?;
        }
        if let Ok(xml) =
            circles_services::launchd::render::render_plist(&spec, ServiceScope::System, &templates)
        {
            let value = plist::Value::from_reader_xml(xml.as_bytes())
                .map_err(|e| TestCaseError::fail(format!("plist does not parse: {e}\n{xml}")))?;
            let dict = value.as_dictionary().expect("a dict");
            let argv: Vec<String> = dict["ProgramArguments"]
                .as_array()
                .expect("an array")
                .iter()
                .map(|v| v.as_string().expect("strings").to_string())
                .collect();
            let mut expected = vec![spec.program.to_str().expect("utf-8").to_string()];
            expected.extend(spec.args.iter().cloned());
            ensure(argv == expected, || {
                format!("plist argv {argv:?} != {expected:?}")
            })?;
        }
        Ok(())
    }

    fn check_unit(spec: &ServiceSpec, unit: &str) -> Result<(), TestCaseError> {
        let exec = unit
            .lines()
            .filter_map(|l| l.strip_prefix("ExecStart="))
            .collect::<Vec<_>>();
        ensure(exec.len() == 1, || {
            format!("{} ExecStart lines:\n{unit}", exec.len())
        })?;
        let words = unquote_words(exec[0], 1).ok_or_else(|| {
            TestCaseError::fail(format!("ExecStart does not unquote: {}", exec[0]))
        })?;
        let mut expected = vec![spec.program.to_str().expect("utf-8").to_string()];
        expected.extend(spec.args.iter().cloned());
        ensure(words == expected, || {
            format!("ExecStart {words:?} != {expected:?}")
        })?;

        let env: BTreeMap<String, String> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("Environment="))
            .filter_map(|l| unquote_words(l, usize::MAX)?.into_iter().next())
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        for (k, v) in &spec.env {
            ensure(env.get(k) == Some(v), || {
                format!("Environment {k}={:?} != {v:?}", env.get(k))
            })?;
        }
        // The secret is only named (EnvironmentFile=), never written into
        // the unit; its file reads back to the value.
        ensure(
            unit.lines()
                .filter(|l| l.starts_with("EnvironmentFile="))
                .count()
                == 1
                && !unit.contains("REDIS_URL"),
            || format!("the secret is not kept apart:\n{unit}"),
        )?;
        let file = circles_services::systemd::render::render_secret_env(spec);
        let value = file
            .lines()
            .find_map(|l| l.strip_prefix("REDIS_URL="))
            .and_then(unquote_env_value);
        ensure(value.as_ref() == spec.secret_env.0.get("REDIS_URL"), || {
            format!("secret file reads back as {value:?}:\n{file}")
        })?;
        // Nothing a value holds may start a section of its own.
        let sections: Vec<&str> = unit.lines().filter(|l| l.starts_with('[')).collect();
        ensure(sections == ["[Unit]", "[Service]", "[Install]"], || {
            format!("sections {sections:?}")
        })
    }

    /// A double-quoted value of an environment file as systemd reads it
    /// (`EnvironmentFile=`): a backslash before `"`, `\\`, `` ` `` or `$`
    /// stands for that character, any other backslash for itself.
    fn unquote_env_value(text: &str) -> Option<String> {
        let inner = text.strip_prefix('"')?.strip_suffix('"')?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    e @ ('"' | '\\' | '`' | '$') => out.push(e),
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                },
                '"' => return None,
                c => out.push(c),
            }
        }
        Some(out)
    }

    /// Splits a line of double-quoted words as systemd reads them
    /// (systemd.syntax(7)): C escapes inside quotes, `%%` for `%`, and in
    /// the arguments of a command line (words from `dollar_from` on) `$$`
    /// for `$`, a lone `$` being a variable. Written from the documentation,
    /// not from the renderer, so the two check each other. `None` when the
    /// text is not such a line (an unquoted word, an unknown escape, a lone
    /// `%` or `$`).
    pub(crate) fn unquote_words(line: &str, dollar_from: usize) -> Option<Vec<String>> {
        let mut words = Vec::new();
        let mut chars = line.chars().peekable();
        loop {
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            match chars.next() {
                None => return Some(words),
                Some('"') => {}
                Some(_) => return None,
            }
            let mut word = String::new();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        '\\' => word.push('\\'),
                        '"' => word.push('"'),
                        'n' => word.push('\n'),
                        't' => word.push('\t'),
                        'r' => word.push('\r'),
                        'x' => {
                            let hex: String = [chars.next()?, chars.next()?].iter().collect();
                            word.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
                        }
                        _ => return None,
                    },
                    '%' => match chars.next()? {
                        '%' => word.push('%'),
                        _ => return None,
                    },
                    '$' if words.len() >= dollar_from => match chars.next()? {
                        '$' => word.push('$'),
                        _ => return None,
                    },
                    c => word.push(c),
                }
            }
            words.push(word);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reference_unquoter_reads_what_the_docs_say() {
        let unquote = super::render::unquote_words;
        let words = unquote(r#""/bin/$x" "a b" "100%%" "$$HOME" "q\"\\" "\x1b""#, 1).unwrap();
        assert_eq!(
            words,
            ["/bin/$x", "a b", "100%", "$HOME", "q\"\\", "\u{1b}"]
        );
        assert_eq!(unquote("unquoted", 1), None);
        assert_eq!(unquote(r#""50%""#, 1), None);
        assert_eq!(unquote(r#""/bin/x" "$HOME""#, 1), None);
    }
}
