//! The method table of the API: every method's name, the scope a caller
//! needs, and its parameter names in positional order. Registration,
//! authorization, positional parameters and the OpenRPC check all read it,
//! so a method cannot be served without being listed here.

use crate::secrets::Scope;

/// One method of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSpec {
    /// Its JSON-RPC name.
    pub name: &'static str,
    /// The scope a caller needs.
    pub scope: Scope,
    /// Parameter names, in the order a positional array gives them.
    pub params: &'static [&'static str],
}

const fn m(name: &'static str, scope: Scope, params: &'static [&'static str]) -> MethodSpec {
    MethodSpec {
        name,
        scope,
        params,
    }
}

const NAME: &[&str] = &["name"];
const JOB: &[&str] = &["runner", "script", "timeout_secs", "caller_id"];

/// `rpc.discover`
pub const DISCOVER: &str = "rpc.discover";
/// The subscription method; notifications come as [`LOG_NOTIFICATION`]
/// and [`UNSUBSCRIBE_LOGS`] ends it.
pub const SUBSCRIBE_LOGS: &str = "subscribe_runner_logs";
/// Notification method of log subscriptions.
pub const LOG_NOTIFICATION: &str = "runner_log";
/// Ends a log subscription.
pub const UNSUBSCRIBE_LOGS: &str = "unsubscribe_runner_logs";

/// Every method: SPEC's, then `whoami` (the caller's scope, so a client
/// such as the console knows which controls to offer) and
/// `generate_keypair` (a new circle identity for `add_runner`).
pub const METHODS: &[MethodSpec] = &[
    m(DISCOVER, Scope::User, &[]),
    m(
        "add_runner",
        Scope::Admin,
        &[
            "name",
            "circle_public_key",
            "init_script",
            "worker_binary",
            "env",
            "manager",
            "start",
        ],
    ),
    m("remove_runner", Scope::Admin, NAME),
    m("list_runners", Scope::User, &[]),
    m("start_runner", Scope::Admin, NAME),
    m("stop_runner", Scope::Admin, NAME),
    m("restart_runner", Scope::Admin, NAME),
    m("get_runner_status", Scope::User, NAME),
    m("get_runner_logs", Scope::User, &["name", "lines", "since"]),
    m("queue_job_to_runner", Scope::User, JOB),
    m("run_job", Scope::User, JOB),
    m("get_job_status", Scope::User, &["job_id"]),
    m("get_all_runner_status", Scope::User, &[]),
    m("start_all", Scope::Admin, &[]),
    m("stop_all", Scope::Admin, &[]),
    m("get_all_status", Scope::User, &[]),
    m("get_fleet", Scope::User, &[]),
    m(SUBSCRIBE_LOGS, Scope::User, NAME),
    m("whoami", Scope::User, &[]),
    m("generate_keypair", Scope::Admin, &[]),
];

/// The entry for `name`.
pub fn method(name: &str) -> Option<&'static MethodSpec> {
    METHODS.iter().find(|m| m.name == name)
}
