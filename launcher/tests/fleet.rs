//! `launcher status --fleet`: every circle registered in Redis, from Redis
//! alone, run from a directory with no data directory at all.
//! (With workers on several hosts: tests/hosts_netns.rs.)

mod common;

use std::time::Duration;

use circles_test_support::{KEY_ONE, KEY_TWO, RedisServer, WorkerProcess, wait_until};
use common::run_to_end;

#[test]
fn fleet_lists_live_and_offline_circles_without_a_data_directory() {
    let redis = RedisServer::start();
    let dbs = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let one = WorkerProcess::start(&redis, KEY_ONE, &dbs.path().join("one"), &[], &[]);
    let mut two = WorkerProcess::start(&redis, KEY_TWO, &dbs.path().join("two"), &[], &[]);
    two.signal("TERM");
    assert_eq!(two.wait_exit(Duration::from_secs(10)), Some(0));
    // A member no worker would write is skipped, not fatal.
    redis.cli(&["SADD", "rhai_circles", "not-a-key"]);

    let fleet = |args: &[&str]| {
        let mut all = vec!["status", "--fleet", "--redis-url"];
        let url = redis.url();
        all.push(&url);
        all.extend_from_slice(args);
        let (code, out, err) = run_to_end(elsewhere.path(), &all);
        assert_eq!(code, Some(0), "{out}{err}");
        out
    };
    let entries: serde_json::Value = serde_json::from_str(&fleet(&["--json"])).unwrap();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{entries:#?}");
    let host = circles_worker::lease::host_name();
    let live = &entries[0];
    assert_eq!(live["circle"], KEY_ONE);
    assert_eq!(live["state"], "live");
    assert_eq!(live["host"], host.as_str());
    assert_eq!(live["pid"], one.pid());
    assert_eq!(live["owner"]["pid"], one.pid());
    assert!(live["owner"]["token"].as_u64().unwrap() >= 1, "{live}");
    assert_eq!(live["queue"], 0);
    assert_eq!(live["tasks_done"], 0);
    assert_eq!(live["version"], env!("CARGO_PKG_VERSION"));
    let age = live["heartbeat_age_ms"].as_u64().unwrap();
    assert!(age <= 10_000, "{live}");
    assert_eq!(
        live["db_dir"],
        dbs.path().join("one").to_str().unwrap(),
        "{live}"
    );
    let offline = &entries[1];
    assert_eq!(offline["circle"], KEY_TWO);
    assert_eq!(offline["state"], "offline");
    assert!(offline["host"].is_null() && offline["owner"].is_null());
    assert!(offline["last_seen"].as_str().unwrap().ends_with('Z'));

    let table = fleet(&[]);
    assert!(table.contains(&host), "{table}");
    assert!(table.contains("offline since 20"), "{table}");
    assert!(
        table.contains("2 circles on 1 host: 1 live, 1 offline"),
        "{table}"
    );

    // Tasks waiting show in the queue column, for live and offline alike.
    redis.cli(&["LPUSH", &format!("rhai_tasks:{KEY_TWO}"), "t1", "t2"]);
    wait_until("queue depth", Duration::from_secs(5), || {
        let v: serde_json::Value = serde_json::from_str(&fleet(&["--json"])).ok()?;
        (v[1]["queue"] == 2).then_some(())
    });

    // An empty Redis says so; an unreachable one is an error.
    redis.cli(&["FLUSHALL"]);
    assert!(fleet(&[]).contains("no circles registered in Redis at"));
    let (code, _, err) = run_to_end(
        elsewhere.path(),
        &["status", "--fleet", "--redis-url", "redis://127.0.0.1:1"],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("Redis unreachable at redis://127.0.0.1:1"),
        "{err}"
    );
}
