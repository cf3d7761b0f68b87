//! Backups of circles run as least-privilege systemd services (issue 9):
//! a live worker under its own dynamic user writes the snapshot into its
//! state directory, the launcher (root) collects it; a restore for service
//! mode puts the database where the service looks, and the service — its
//! dynamic user handed the root-written directory by systemd — serves it
//! with its ids continuing. Runs inside `scripts/systemd-sandbox` (the test
//! command does that); elsewhere it skips loudly.

mod common;

use std::path::PathBuf;

use circles_test_support::KEY_ONE;
use circles_test_support::ws::Client;
use common::world::{script, serial_world, worker, worker_unit};

#[tokio::test(flavor = "multi_thread")]
async fn a_live_service_is_backed_up_and_restored_for_service_mode() {
    let Some((_serial, w)) = serial_world(
        "a_live_service_is_backed_up_and_restored_for_service_mode",
        "svc-backup",
    )
    .await
    else {
        return;
    };
    let init = script(w.dir.path(), "init.rhai", r#"db_insert("n", "init")"#);
    w.install(&worker(), &[format!("{KEY_ONE}:{init}")], &[]);
    let mut c = Client::connect(&w.url(KEY_ONE)).await;
    assert_eq!(c.play(r#"db_insert("n", "live")"#).await, "2");

    // Live: the service's worker writes the snapshot, the launcher collects it.
    let backup = w.dir.path().join("one.backup");
    let (code, out, err) = w.launcher(&["backup", KEY_ONE, "-o", backup.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let pid = w.main_pid(&worker_unit(KEY_ONE));
    assert!(
        out.contains(&format!("from the live worker pid {pid}")),
        "{out}"
    );
    let snapshots = w.data().join("db").join(KEY_ONE).join("snapshots");
    assert_eq!(
        std::fs::read_dir(&snapshots).unwrap().count(),
        0,
        "snapshot collected"
    );
    let (code, _, err) = w.launcher(&["restore", backup.to_str().unwrap(), "--service-mode"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is served by pid"), "{err}");

    // "Another host": the services and the database are gone; restore for
    // service mode, install again (no init script: it is in the data).
    let (code, _, err) = w.launcher(&["cleanup"]);
    assert_eq!(code, Some(0), "{err}");
    std::fs::remove_dir_all(w.data()).unwrap();
    let rel = w.data().strip_prefix("/var/lib").unwrap().to_path_buf();
    let _ = std::fs::remove_dir_all(PathBuf::from("/var/lib/private").join(rel));
    let (code, out, err) = w.launcher(&["restore", backup.to_str().unwrap(), "--service-mode"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("--use-service-manager"), "{out}");
    w.install(&worker(), &[KEY_ONE.to_string()], &[]);
    let mut c = Client::connect(&w.url(KEY_ONE)).await;
    assert_eq!(c.play(r#"db_get("n:1")"#).await, "init");
    assert_eq!(c.play(r#"db_insert("n", "moved")"#).await, "3");
}
