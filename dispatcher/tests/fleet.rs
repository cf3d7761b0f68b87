//! The fleet read against a real Redis holding what workers write, and what
//! a broken or foreign writer might leave instead.

use circles_dispatcher::{CircleState, Dispatcher};
use circles_test_support::{KEY_ONE, KEY_TWO, RedisServer};

const KEY_THREE: &str = "02f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9";

#[tokio::test(flavor = "multi_thread")]
async fn states_come_from_the_keys_and_unreadable_values_do_not_break_the_read() {
    let redis = RedisServer::start();
    let d = Dispatcher::connect(&redis.url(), "t").await.unwrap();
    assert!(d.fleet().await.unwrap().is_empty());

    redis.cli(&["SADD", "rhai_circles", KEY_ONE, KEY_TWO, KEY_THREE, "junk"]);
    // KEY_ONE: a heartbeat some other tool wrote, unreadable: still live.
    redis.cli(&[
        "SET",
        &format!("rhai_worker:{KEY_ONE}"),
        "{not json",
        "EX",
        "10",
    ]);
    // KEY_TWO: a lease but no heartbeat yet: starting.
    let owner = r#"{"host":"h2","pid":7,"pid_namespace":"","instance":"i","token":3,"since":"2026-01-01T00:00:00Z"}"#;
    redis.cli(&[
        "SET",
        &format!("rhai_owner:{KEY_TWO}"),
        owner,
        "PX",
        "10000",
    ]);
    // KEY_THREE: gone, last seen long ago, with work waiting and in hand.
    redis.cli(&[
        "HSET",
        "rhai_last_seen",
        KEY_THREE,
        "2026-01-01T00:00:00.000Z",
    ]);
    redis.cli(&["LPUSH", &format!("rhai_tasks:{KEY_THREE}"), "a", "b", "c"]);
    redis.cli(&["LPUSH", &format!("rhai_processing:{KEY_THREE}"), "d"]);

    let fleet = d.fleet().await.unwrap();
    assert_eq!(fleet.len(), 3, "the junk member is skipped: {fleet:#?}");
    // Sorted by host, hostless last, then key.
    assert_eq!(fleet[0].circle, KEY_TWO);
    assert_eq!(fleet[0].state, CircleState::Starting);
    assert_eq!(fleet[0].host.as_deref(), Some("h2"));
    assert_eq!(fleet[0].pid, Some(7));
    assert_eq!(fleet[0].owner.as_ref().unwrap().token, 3);
    assert_eq!(fleet[0].heartbeat_age_ms, None);

    let one = fleet.iter().find(|e| e.circle == KEY_ONE).unwrap();
    assert_eq!(one.state, CircleState::Live);
    assert_eq!((one.host.as_deref(), one.pid), (None, None));
    assert!(one.heartbeat_age_ms.unwrap() < 5_000);

    let three = fleet.iter().find(|e| e.circle == KEY_THREE).unwrap();
    assert_eq!(three.state, CircleState::Offline);
    assert_eq!((three.queue, three.in_hand), (3, 1));
    assert_eq!(three.state_text(), "offline since 2026-01-01T00:00:00.000Z");
}
