//! Authentication end to end. Signatures are made with RustCrypto's `k256`,
//! an implementation independent of the `secp256k1` (libsecp256k1) the
//! server verifies with, so that a mistake shared by signer and verifier
//! cannot hide.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use circles_server::rpc::code;
use circles_server::{ANONYMOUS_CALLER_ID, ServerConfig};
use circles_test_support::{KEY_ONE, RedisServer};
use common::{Client, RunningServer, start_worker, test_config};
use k256::ecdsa::SigningKey;
use serde_json::{Value, json};
use sha3::{Digest, Keccak256};

/// A client-side key pair that signs like an Ethereum wallet.
struct Wallet {
    key: SigningKey,
}

impl Wallet {
    fn from_seed(seed: u8) -> Self {
        Self {
            key: SigningKey::from_slice(&[seed; 32]).expect("valid scalar"),
        }
    }

    /// Lowercase compressed hex: the canonical form the server reports.
    fn compressed(&self) -> String {
        hex::encode(self.key.verifying_key().to_sec1_point(true).as_bytes())
    }

    fn uncompressed(&self) -> String {
        hex::encode(self.key.verifying_key().to_sec1_point(false).as_bytes())
    }

    /// `personal_sign`: keccak256 over the EIP-191 prefixed text, signed
    /// with a recoverable signature, as `r‖s‖v` hex; `v_base` 27 gives
    /// Ethereum's 27/28, 0 the raw recovery id.
    fn eth_sign(&self, message: &str, v_base: u8) -> String {
        let mut prefixed = format!("\x19Ethereum Signed Message:\n{}", message.len()).into_bytes();
        prefixed.extend_from_slice(message.as_bytes());
        let digest = Keccak256::digest(&prefixed);
        let (signature, recovery_id) = self.key.sign_prehash_recoverable(&digest);
        let mut bytes = signature.to_bytes().to_vec();
        bytes.push(recovery_id.to_byte() + v_base);
        hex::encode(bytes)
    }
}

async fn fetch_nonce(client: &mut Client, pubkey: &str) -> String {
    let answer = client
        .call("fetch_nonce", json!({ "pubkey": pubkey }))
        .await;
    let result = &answer["result"];
    let nonce = result["nonce"]
        .as_str()
        .unwrap_or_else(|| panic!("no nonce: {answer}"));
    assert!(!nonce.is_empty());
    nonce.to_string()
}

async fn authenticate(client: &mut Client, pubkey: &str, signature: &str) -> Value {
    client
        .call(
            "authenticate",
            json!({ "pubkey": pubkey, "signature": signature }),
        )
        .await
}

fn error_code(answer: &Value) -> i64 {
    answer["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error: {answer}"))
}

async fn auth_server(redis: &RedisServer, nonce_ttl: Duration) -> RunningServer {
    RunningServer::start(ServerConfig {
        enable_auth: true,
        nonce_ttl,
        // Served even in the tests that start no worker.
        circles: vec![common::circle(KEY_ONE)],
        ..test_config(redis)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn play_needs_a_valid_signature_and_runs_as_the_signer() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _worker = start_worker(&redis, KEY_ONE, db.path(), &[]);
    let server = auth_server(&redis, Duration::from_secs(300)).await;
    let alice = Wallet::from_seed(0x11);
    let mallory = Wallet::from_seed(0x22);
    let mut client = Client::connect(&server.url(KEY_ONE)).await;

    let error = client.call_err("play", json!({"script": "1"})).await;
    assert_eq!(error["code"], code::AUTHENTICATION_REQUIRED, "{error}");

    // The nonce and its expiry, five minutes out.
    let answer = client
        .call("fetch_nonce", json!({ "pubkey": alice.compressed() }))
        .await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expires_at = answer["result"]["expires_at"].as_u64().expect("expires_at");
    assert!((now + 295..=now + 305).contains(&expires_at), "{answer}");
    let nonce = answer["result"]["nonce"].as_str().unwrap().to_string();

    // Signed by someone else, or over another text: invalid credentials.
    let answer = authenticate(
        &mut client,
        &alice.compressed(),
        &mallory.eth_sign(&nonce, 27),
    )
    .await;
    assert_eq!(error_code(&answer), code::INVALID_CREDENTIALS);
    let answer = authenticate(
        &mut client,
        &alice.compressed(),
        &alice.eth_sign(&format!("{nonce}x"), 27),
    )
    .await;
    assert_eq!(error_code(&answer), code::INVALID_CREDENTIALS);
    let error = client.call_err("play", json!({"script": "1"})).await;
    assert_eq!(error["code"], code::AUTHENTICATION_REQUIRED);

    // The real thing, then a play sent right behind it without waiting:
    // requests on a connection are taken in order.
    let signature = format!("0x{}", alice.eth_sign(&nonce, 27));
    client
        .send_json(
            &json!({"jsonrpc": "2.0", "id": "auth", "method": "authenticate",
                           "params": {"pubkey": alice.compressed(), "signature": signature}}),
        )
        .await;
    client
        .send_json(&json!({"jsonrpc": "2.0", "id": "who", "method": "play",
                           "params": {"script": "CALLER_ID"}}))
        .await;
    let auth = client.recv().await;
    assert_eq!(auth["id"], "auth");
    assert_eq!(auth["result"], json!({"authenticated": true}), "{auth}");
    let who = client.recv().await;
    assert_eq!(who["id"], "who");
    assert_eq!(who["result"], json!(alice.compressed()), "{who}");

    // The nonce is used up, on this connection and any other.
    let answer = authenticate(&mut client, &alice.compressed(), &signature).await;
    assert_eq!(error_code(&answer), code::INVALID_CREDENTIALS);
    let mut other = Client::connect(&server.url(KEY_ONE)).await;
    let answer = authenticate(&mut other, &alice.compressed(), &signature).await;
    assert_eq!(error_code(&answer), code::INVALID_CREDENTIALS);
    // Authentication belongs to the connection that made it.
    let error = other.call_err("play", json!({"script": "1"})).await;
    assert_eq!(error["code"], code::AUTHENTICATION_REQUIRED);
    // The failures did not undo the first connection's authentication.
    assert_eq!(client.play("CALLER_ID").await, alice.compressed());
}

#[tokio::test(flavor = "multi_thread")]
async fn uncompressed_keys_and_raw_recovery_ids_are_accepted() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _worker = start_worker(&redis, KEY_ONE, db.path(), &[]);
    let server = auth_server(&redis, Duration::from_secs(300)).await;

    // Several keys, so both recovery ids (v = 0 and v = 1) come up.
    let mut seen_recovery_ids = std::collections::HashSet::new();
    for seed in 1..=8u8 {
        let wallet = Wallet::from_seed(seed);
        for (fetch_as, auth_as, v_base) in [
            (wallet.uncompressed(), wallet.uncompressed(), 0),
            (wallet.uncompressed(), wallet.compressed(), 27),
            (wallet.compressed(), wallet.uncompressed(), 0),
        ] {
            let mut client = Client::connect(&server.url(KEY_ONE)).await;
            let nonce = fetch_nonce(&mut client, &fetch_as).await;
            let signature = wallet.eth_sign(&nonce, v_base);
            seen_recovery_ids.insert(hex::decode(&signature).unwrap()[64] - v_base);
            let answer = authenticate(&mut client, &auth_as, &signature).await;
            assert_eq!(answer["result"]["authenticated"], true, "{answer}");
            // The caller id is the canonical (compressed) key either way.
            assert_eq!(client.play("CALLER_ID").await, wallet.compressed());
        }
    }
    assert_eq!(seen_recovery_ids.len(), 2, "{seen_recovery_ids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_nonce_is_refused() {
    let redis = RedisServer::start();
    let server = auth_server(&redis, Duration::from_secs(1)).await;
    let alice = Wallet::from_seed(0x33);
    // No worker needed: authentication never reaches a circle.
    let mut client = Client::connect(&server.url(KEY_ONE)).await;
    let nonce = fetch_nonce(&mut client, &alice.compressed()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answer = authenticate(
        &mut client,
        &alice.compressed(),
        &alice.eth_sign(&nonce, 27),
    )
    .await;
    assert_eq!(error_code(&answer), code::INVALID_CREDENTIALS, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expire"),
        "{answer}"
    );
    // A fresh nonce, used at once, works.
    let nonce = fetch_nonce(&mut client, &alice.compressed()).await;
    let answer = authenticate(
        &mut client,
        &alice.compressed(),
        &alice.eth_sign(&nonce, 27),
    )
    .await;
    assert_eq!(answer["result"]["authenticated"], true, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_credentials_are_invalid_params() {
    let redis = RedisServer::start();
    let server = auth_server(&redis, Duration::from_secs(300)).await;
    let alice = Wallet::from_seed(0x44);
    let mut client = Client::connect(&server.url(KEY_ONE)).await;

    let error = client
        .call_err("fetch_nonce", json!({"pubkey": "not-a-key"}))
        .await;
    assert_eq!(error["code"], code::INVALID_PARAMS, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("`not-a-key`"),
        "{error}"
    );

    let nonce = fetch_nonce(&mut client, &alice.compressed()).await;
    let good = alice.eth_sign(&nonce, 27);
    for bad in [
        "xyz".to_string(),
        good[..128].to_string(),       // no v
        format!("{}05", &good[..128]), // v out of range
    ] {
        let answer = authenticate(&mut client, &alice.compressed(), &bad).await;
        assert_eq!(error_code(&answer), code::INVALID_PARAMS, "{bad}: {answer}");
    }
    let error = client
        .call_err("authenticate", json!({"pubkey": alice.compressed()}))
        .await;
    assert_eq!(error["code"], code::INVALID_PARAMS, "{error}");
    // The malformed attempts did not use the nonce up.
    let answer = authenticate(&mut client, &alice.compressed(), &good).await;
    assert_eq!(answer["result"]["authenticated"], true, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_auth_play_runs_as_anonymous_unless_the_client_authenticates() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _worker = start_worker(&redis, KEY_ONE, db.path(), &[]);
    let server = RunningServer::start(test_config(&redis)).await;
    let alice = Wallet::from_seed(0x55);
    let mut client = Client::connect(&server.url(KEY_ONE)).await;

    assert_eq!(client.play("CALLER_ID").await, ANONYMOUS_CALLER_ID);
    let nonce = fetch_nonce(&mut client, &alice.compressed()).await;
    let answer = authenticate(&mut client, &alice.compressed(), &alice.eth_sign(&nonce, 0)).await;
    assert_eq!(answer["result"]["authenticated"], true, "{answer}");
    assert_eq!(client.play("CALLER_ID").await, alice.compressed());
}

/// A hostile review (stop 18): nonces were kept per key (eight), so anyone
/// who knew a user's public key could fetch eight more on another
/// connection while the user signed, and the user's valid signature was
/// refused as "signature does not match". A nonce now belongs to the
/// connection that fetched it.
#[tokio::test(flavor = "multi_thread")]
async fn nonces_fetched_elsewhere_for_the_same_key_do_not_push_out_the_users() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let _worker = start_worker(&redis, KEY_ONE, db.path(), &[]);
    let server = auth_server(&redis, Duration::from_secs(300)).await;
    let alice = Wallet::from_seed(0x11);
    let mut client = Client::connect(&server.url(KEY_ONE)).await;
    let nonce = fetch_nonce(&mut client, &alice.compressed()).await;
    // While alice signs: two connections fetch eight each for her key.
    for _ in 0..2 {
        let mut other = Client::connect(&server.url(KEY_ONE)).await;
        for _ in 0..8 {
            fetch_nonce(&mut other, &alice.compressed()).await;
        }
    }
    let answer = authenticate(
        &mut client,
        &alice.compressed(),
        &alice.eth_sign(&nonce, 27),
    )
    .await;
    assert_eq!(answer["result"], json!({"authenticated": true}), "{answer}");
    assert_eq!(client.play("CALLER_ID").await, alice.compressed());
}
