//! Authentication by signature, Ethereum `eth_sign` style: the client asks
//! for a nonce for its public key, signs it, and sends the signature back;
//! the server recovers the signer's key from the signature and compares it
//! with the key the client claimed.
//!
//! The signed digest is `keccak256("\x19Ethereum Signed Message:\n" +
//! len(nonce) + nonce)` (EIP-191), so that wallets and `personal_sign`
//! libraries can authenticate without custom code. The signature is 65
//! bytes `r‖s‖v`, with `v` as the raw recovery id (0/1) or Ethereum's
//! 27/28.
//!
//! Nonces live in server memory, keyed by public key, expire after a TTL
//! and can be redeemed once. A key may hold a few nonces at a time, so that
//! two connections of the same user can authenticate concurrently.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use circles_dispatcher::CirclePublicKey;
use secp256k1::Message;
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use sha3::{Digest, Keccak256};

/// How long a nonce can be redeemed unless configured otherwise (`SPEC.md`).
pub const DEFAULT_NONCE_TTL: Duration = Duration::from_secs(5 * 60);
/// The EIP-191 prefix that makes a signed text unusable as a transaction.
pub const ETH_MESSAGE_PREFIX: &str = "\x19Ethereum Signed Message:\n";
/// Unredeemed nonces kept per key; fetching more drops the oldest.
const MAX_NONCES_PER_KEY: usize = 8;
/// Nonces one client address may be issued within one nonce lifetime: one
/// address cannot fill the store (and lock everybody else out of
/// authenticating) by reconnecting to reset its per-connection allowance.
pub const MAX_NONCES_PER_ADDRESS: usize = 256;
/// Below this many keys the store never sweeps expired nonces.
const MIN_SWEEP_THRESHOLD: usize = 1024;

/// The digest a client signs for `message`:
/// `keccak256("\x19Ethereum Signed Message:\n" + len(message) + message)`,
/// with `len` the decimal byte length.
pub fn eth_message_hash(message: &[u8]) -> [u8; 32] {
    let mut hasher = Keccak256::new();
    hasher.update(ETH_MESSAGE_PREFIX.as_bytes());
    hasher.update(message.len().to_string().as_bytes());
    hasher.update(message);
    hasher.finalize().into()
}

/// Why an `authenticate` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The signature text is not 65 bytes of hex with a valid `v`: a client
    /// bug rather than a wrong credential.
    #[error("malformed signature: {0}; expected 65 bytes r‖s‖v in hex with v in 0, 1, 27 or 28")]
    MalformedSignature(String),
    /// The bytes do not form a secp256k1 signature that recovers to a key.
    #[error("the signature is not a valid secp256k1 signature over the nonce")]
    InvalidSignature,
    /// There is no unexpired, unused nonce for the key.
    #[error(
        "no valid nonce for this key (nonces are single-use and expire after {ttl_secs}s); call fetch_nonce first"
    )]
    NoValidNonce {
        /// The store's TTL, to tell the client how long it has.
        ttl_secs: u64,
    },
    /// The signature was made by another key, or over another text.
    #[error("the signature does not match the public key for any outstanding nonce")]
    SignatureMismatch,
    /// Too many nonces are outstanding (from everybody): no new one until
    /// some are redeemed or expire.
    #[error("too many outstanding nonces; try again in a moment")]
    TooManyNonces,
    /// This client address asked for too many nonces within one nonce
    /// lifetime: no new one for it until that window ends.
    #[error("too many nonces for this address; try again in a few minutes")]
    TooManyFromAddress,
}

/// A recoverable signature as sent by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthSignature(RecoverableSignature);

impl EthSignature {
    /// Parses 65 bytes `r‖s‖v` in hex, optionally `0x`-prefixed.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let text = text.trim();
        let hex_text = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .unwrap_or(text);
        let bytes = hex::decode(hex_text)
            .map_err(|e| AuthError::MalformedSignature(format!("it is not hex ({e})")))?;
        let bytes: [u8; 65] = bytes.try_into().map_err(|b: Vec<u8>| {
            AuthError::MalformedSignature(format!("it has {} bytes", b.len()))
        })?;
        let recovery_id = match bytes[64] {
            v @ (0 | 1) => v,
            v @ (27 | 28) => v - 27,
            v => {
                return Err(AuthError::MalformedSignature(format!("v is {v}")));
            }
        };
        let recovery_id = RecoveryId::try_from(i32::from(recovery_id))
            .map_err(|_| AuthError::InvalidSignature)?;
        RecoverableSignature::from_compact(&bytes[..64], recovery_id)
            .map(Self)
            .map_err(|_| AuthError::InvalidSignature)
    }

    /// The key that signed `message` (eth_sign style), if the signature
    /// recovers to one.
    pub fn recover_signer(&self, message: &str) -> Result<CirclePublicKey, AuthError> {
        let digest = Message::from_digest(eth_message_hash(message.as_bytes()));
        self.0
            .recover_ecdsa(digest)
            .map(CirclePublicKey::from)
            .map_err(|_| AuthError::InvalidSignature)
    }
}

/// A nonce handed to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedNonce {
    /// The text to sign.
    pub nonce: String,
    /// When it stops being accepted, in Unix seconds.
    pub expires_at: u64,
}

/// Who a nonce was issued to: one WebSocket connection. A nonce is
/// redeemed only by the connection that fetched it, so nobody can push a
/// user's nonces out by fetching more for the same key elsewhere.
pub type NonceHolder = u64;

/// Outstanding nonces, keyed by the public key they were issued for and the
/// connection that asked.
///
/// Bounded: at most `max_nonces` are outstanding at once (all keys
/// together); [`NonceStore::sweep`] drops expired ones and gives the memory
/// back, so a flood of `fetch_nonce` with made-up keys costs a bounded
/// amount of memory, and only for a TTL.
#[derive(Debug)]
pub struct NonceStore {
    ttl: Duration,
    max_nonces: usize,
    state: Mutex<NonceMap>,
}

#[derive(Debug)]
struct NonceMap {
    by_key: HashMap<(CirclePublicKey, NonceHolder), Vec<PendingNonce>>,
    /// Nonces in `by_key`, all keys together.
    count: usize,
    /// Per client address: when its current window began, and how many
    /// nonces it was issued in it.
    by_address: HashMap<IpAddr, (Instant, usize)>,
    /// Key count at which the next sweep of expired nonces happens. Doubling
    /// it after each sweep keeps the sweeps' cost proportional to the
    /// insertions, however many distinct keys clients make up.
    sweep_at: usize,
}

impl NonceMap {
    /// Drops expired nonces and keys left without any, then gives the
    /// memory back (a `HashMap` keeps its capacity otherwise).
    fn sweep(&mut self, now: Instant, ttl: Duration) {
        let mut count = 0;
        self.by_key.retain(|_, pending| {
            pending.retain(|p| p.expires > now);
            count += pending.len();
            !pending.is_empty()
        });
        self.count = count;
        self.by_key.shrink_to_fit();
        self.by_address
            .retain(|_, (since, _)| now.duration_since(*since) < ttl);
        self.by_address.shrink_to_fit();
        self.sweep_at = (self.by_key.len() * 2).max(MIN_SWEEP_THRESHOLD);
    }
}

/// The share of nonces is per client network: an IPv4 address, or an
/// IPv6 /64 (one host usually holds a whole /64, and could otherwise take a
/// fresh share from each of its addresses).
pub(crate) fn client_network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
        v4 => v4,
    }
}

#[derive(Debug, Clone)]
struct PendingNonce {
    nonce: String,
    expires: Instant,
}

impl NonceStore {
    /// A store whose nonces expire after `ttl`, holding at most
    /// [`crate::DEFAULT_MAX_NONCES`].
    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(ttl, crate::DEFAULT_MAX_NONCES)
    }

    /// A store whose nonces expire after `ttl`, holding at most `max_nonces`.
    pub fn with_capacity(ttl: Duration, max_nonces: usize) -> Self {
        Self {
            ttl,
            max_nonces,
            state: Mutex::new(NonceMap {
                by_key: HashMap::new(),
                by_address: HashMap::new(),
                count: 0,
                sweep_at: MIN_SWEEP_THRESHOLD,
            }),
        }
    }

    /// Drops expired nonces and shrinks the store; returns how many went.
    pub fn sweep(&self) -> usize {
        let mut map = self.state.lock().expect("nonce store poisoned");
        let before = map.count;
        map.sweep(Instant::now(), self.ttl);
        before - map.count
    }

    /// How long a nonce stays valid.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a fresh random nonce for `key` to connection `holder` of a
    /// client at `from`, unless the store is full or `from` had its share.
    pub fn issue(
        &self,
        key: CirclePublicKey,
        from: IpAddr,
        holder: NonceHolder,
    ) -> Result<IssuedNonce, AuthError> {
        let nonce = hex::encode(secp256k1::rand::random::<[u8; 32]>());
        let now = Instant::now();
        let expires_at = SystemTime::now()
            .checked_add(self.ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(u64::MAX, |d| d.as_secs());

        let mut map = self.state.lock().expect("nonce store poisoned");
        if map.by_key.len() >= map.sweep_at || map.count >= self.max_nonces {
            map.sweep(now, self.ttl);
        }
        if map.count >= self.max_nonces {
            return Err(AuthError::TooManyNonces);
        }
        let map = &mut *map;
        let window = map
            .by_address
            .entry(client_network(from))
            .or_insert((now, 0));
        if now.duration_since(window.0) >= self.ttl {
            *window = (now, 0);
        }
        if window.1 >= MAX_NONCES_PER_ADDRESS {
            return Err(AuthError::TooManyFromAddress);
        }
        window.1 += 1;
        let pending = map.by_key.entry((key, holder)).or_default();
        let before = pending.len();
        pending.retain(|p| p.expires > now);
        if pending.len() >= MAX_NONCES_PER_KEY {
            pending.remove(0);
        }
        pending.push(PendingNonce {
            nonce: nonce.clone(),
            expires: now + self.ttl,
        });
        map.count = map.count + pending.len() - before;
        Ok(IssuedNonce { nonce, expires_at })
    }

    /// Checks that `signature` proves `key` over one of the nonces issued
    /// for it to `holder`, and uses that nonce up.
    pub fn redeem(
        &self,
        key: &CirclePublicKey,
        holder: NonceHolder,
        signature: &EthSignature,
    ) -> Result<(), AuthError> {
        let now = Instant::now();
        let candidates: Vec<String> = {
            let mut map = self.state.lock().expect("nonce store poisoned");
            let map = &mut *map;
            match map.by_key.get_mut(&(*key, holder)) {
                Some(pending) => {
                    let before = pending.len();
                    pending.retain(|p| p.expires > now);
                    map.count -= before - pending.len();
                    pending.iter().map(|p| p.nonce.clone()).collect()
                }
                None => Vec::new(),
            }
        };
        if candidates.is_empty() {
            return Err(self.no_valid_nonce());
        }
        // Recovery is the expensive part: do it without holding the lock.
        let signed = candidates
            .into_iter()
            .find(|nonce| signature.recover_signer(nonce).as_ref() == Ok(key))
            .ok_or(AuthError::SignatureMismatch)?;

        // Remove it under the lock; if it is gone, a concurrent redeem (or
        // expiry) got there first, and a nonce is good for one use only.
        let mut map = self.state.lock().expect("nonce store poisoned");
        let pending = map
            .by_key
            .get_mut(&(*key, holder))
            .ok_or_else(|| self.no_valid_nonce())?;
        let position = pending
            .iter()
            .position(|p| p.nonce == signed && p.expires > Instant::now())
            .ok_or_else(|| self.no_valid_nonce())?;
        pending.remove(position);
        if pending.is_empty() {
            map.by_key.remove(&(*key, holder));
        }
        map.count -= 1;
        Ok(())
    }

    fn no_valid_nonce(&self) -> AuthError {
        AuthError::NoValidNonce {
            ttl_secs: self.ttl.as_secs(),
        }
    }

    #[cfg(test)]
    fn key_count(&self) -> usize {
        self.state.lock().unwrap().by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    use circles_dispatcher::CircleKeypair;

    /// Signs like a wallet does, with this crate's own secp256k1 (the
    /// integration tests sign with an independent implementation).
    fn eth_sign(pair: &CircleKeypair, message: &str, v_offset: u8) -> String {
        let digest = Message::from_digest(eth_message_hash(message.as_bytes()));
        let sig = RecoverableSignature::sign_ecdsa_recoverable(digest, &pair.secret);
        let (recid, rs) = sig.serialize_compact();
        let mut bytes = rs.to_vec();
        bytes.push(u8::from(recid) + v_offset);
        hex::encode(bytes)
    }

    // Published example of web3.js `web3.eth.accounts.sign('Some data',
    // privateKey)` (web3.js API docs, `sign`).
    const WEB3_SECRET: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
    const WEB3_MESSAGE: &str = "Some data";
    const WEB3_HASH: &str = "1da44b586eb0729ff70a73c326926f6ed5a25f5b056e7f47fbc6e58d86871655";
    const WEB3_SIGNATURE: &str = "0xb91467e570a6466aa9e9876cbcd013baba02900b8979d43fe208a4a4f339f5fd6007e74cd82e037b800186422fc2da167c747ef045e5d18a5f5d4300f8e1a0291c";

    #[test]
    fn published_web3_vector_hashes_and_recovers() {
        assert_eq!(
            hex::encode(eth_message_hash(WEB3_MESSAGE.as_bytes())),
            WEB3_HASH
        );
        let signer = CircleKeypair::from_secret_hex(WEB3_SECRET).unwrap().public;
        let sig = EthSignature::parse(WEB3_SIGNATURE).unwrap();
        assert_eq!(sig.recover_signer(WEB3_MESSAGE).unwrap(), signer);
        // The same signature over another text recovers some other key.
        assert_ne!(sig.recover_signer("Some data!").unwrap(), signer);
        // v = 0x1c (28) and the raw recovery id 1 are the same signature.
        let raw_v = format!("{}01", &WEB3_SIGNATURE[..WEB3_SIGNATURE.len() - 2]);
        assert_eq!(EthSignature::parse(&raw_v).unwrap(), sig);
    }

    #[test]
    fn the_length_in_the_prefix_counts_bytes() {
        // "é" is two bytes: the prefix must say 2, not 1.
        let mut expected = Keccak256::new();
        expected.update(b"\x19Ethereum Signed Message:\n2\xc3\xa9");
        let expected: [u8; 32] = expected.finalize().into();
        assert_eq!(eth_message_hash("é".as_bytes()), expected);
    }

    #[test]
    fn malformed_signatures_say_what_is_wrong() {
        let good = &WEB3_SIGNATURE[2..];
        for (text, needle) in [
            ("zz", "not hex"),
            ("abc", "not hex"),
            (&good[..128], "64 bytes"),
            (&format!("{good}00"), "66 bytes"),
            (&format!("{}02", &good[..128]), "v is 2"),
            (&format!("{}1d", &good[..128]), "v is 29"),
        ] {
            match EthSignature::parse(text) {
                Err(AuthError::MalformedSignature(reason)) => {
                    assert!(reason.contains(needle), "{text}: {reason}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // r = 0 is well-formed text but no signature.
        let zero_r = format!("{}{}1b", "00".repeat(32), &good[64..128]);
        assert_eq!(
            EthSignature::parse(&zero_r).and_then(|s| s.recover_signer("x")),
            Err(AuthError::InvalidSignature)
        );
    }

    #[test]
    fn a_nonce_is_redeemed_once_with_any_v_form() {
        let store = NonceStore::new(Duration::from_secs(60));
        let pair = CircleKeypair::generate();
        for v_offset in [0, 27] {
            let issued = store.issue(pair.public, LOCAL, 0).unwrap();
            assert_eq!(issued.nonce.len(), 64);
            let sig = EthSignature::parse(&eth_sign(&pair, &issued.nonce, v_offset)).unwrap();
            store.redeem(&pair.public, 0, &sig).unwrap();
            assert!(matches!(
                store.redeem(&pair.public, 0, &sig),
                Err(AuthError::NoValidNonce { ttl_secs: 60 })
            ));
        }
    }

    #[test]
    fn expires_at_is_ttl_from_now() {
        let store = NonceStore::new(Duration::from_secs(300));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let issued = store
            .issue(CircleKeypair::generate().public, LOCAL, 0)
            .unwrap();
        assert!((now + 299..=now + 301).contains(&issued.expires_at));
    }

    #[test]
    fn wrong_signer_wrong_text_and_expired_nonces_are_refused() {
        let store = NonceStore::new(Duration::from_secs(60));
        let pair = CircleKeypair::generate();
        let other = CircleKeypair::generate();
        let issued = store.issue(pair.public, LOCAL, 0).unwrap();

        let by_other = EthSignature::parse(&eth_sign(&other, &issued.nonce, 27)).unwrap();
        assert_eq!(
            store.redeem(&pair.public, 0, &by_other),
            Err(AuthError::SignatureMismatch)
        );
        let other_text = EthSignature::parse(&eth_sign(&pair, "not the nonce", 27)).unwrap();
        assert_eq!(
            store.redeem(&pair.public, 0, &other_text),
            Err(AuthError::SignatureMismatch)
        );
        // A signature for a key with no nonce at all.
        let for_other_key = EthSignature::parse(&eth_sign(&other, &issued.nonce, 0)).unwrap();
        assert!(matches!(
            store.redeem(&other.public, 0, &for_other_key),
            Err(AuthError::NoValidNonce { .. })
        ));
        // Failed attempts do not use the nonce up.
        let good = EthSignature::parse(&eth_sign(&pair, &issued.nonce, 0)).unwrap();
        store.redeem(&pair.public, 0, &good).unwrap();

        let expired_store = NonceStore::new(Duration::ZERO);
        let issued = expired_store.issue(pair.public, LOCAL, 0).unwrap();
        let sig = EthSignature::parse(&eth_sign(&pair, &issued.nonce, 0)).unwrap();
        assert!(matches!(
            expired_store.redeem(&pair.public, 0, &sig),
            Err(AuthError::NoValidNonce { ttl_secs: 0 })
        ));
    }

    #[test]
    fn a_key_holds_several_nonces_and_drops_the_oldest() {
        let store = NonceStore::new(Duration::from_secs(60));
        let pair = CircleKeypair::generate();
        let issued: Vec<_> = (0..MAX_NONCES_PER_KEY + 1)
            .map(|_| store.issue(pair.public, LOCAL, 0).unwrap())
            .collect();
        let oldest = EthSignature::parse(&eth_sign(&pair, &issued[0].nonce, 0)).unwrap();
        assert_eq!(
            store.redeem(&pair.public, 0, &oldest),
            Err(AuthError::SignatureMismatch)
        );
        // Any of the others works, in any order.
        for i in [3, 1, MAX_NONCES_PER_KEY] {
            let sig = EthSignature::parse(&eth_sign(&pair, &issued[i].nonce, 0)).unwrap();
            store.redeem(&pair.public, 0, &sig).unwrap();
        }
    }

    #[test]
    fn expired_nonces_of_abandoned_keys_are_swept() {
        let store = NonceStore::new(Duration::ZERO);
        for _ in 0..MIN_SWEEP_THRESHOLD * 3 {
            store
                .issue(CircleKeypair::generate().public, LOCAL, 0)
                .unwrap();
        }
        // Without sweeping there would be one entry per key.
        assert!(
            store.key_count() <= MIN_SWEEP_THRESHOLD + 1,
            "{}",
            store.key_count()
        );
    }

    #[test]
    fn one_address_gets_its_share_and_others_still_get_theirs() {
        let store = NonceStore::new(Duration::from_secs(60));
        let key = CircleKeypair::generate().public;
        let flooder = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
        for _ in 0..MAX_NONCES_PER_ADDRESS {
            store.issue(key, flooder, 0).unwrap();
        }
        assert_eq!(
            store.issue(key, flooder, 0),
            Err(AuthError::TooManyFromAddress)
        );
        // A /64 is one client: its other addresses share the count.
        let v6 =
            |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
        for _ in 0..MAX_NONCES_PER_ADDRESS {
            store.issue(key, v6(1), 0).unwrap();
        }
        assert_eq!(
            store.issue(key, v6(2), 0),
            Err(AuthError::TooManyFromAddress)
        );
        // Everybody else is unaffected.
        let pair = CircleKeypair::generate();
        let issued = store.issue(pair.public, LOCAL, 0).unwrap();
        let sig = EthSignature::parse(&eth_sign(&pair, &issued.nonce, 0)).unwrap();
        store.redeem(&pair.public, 0, &sig).unwrap();
    }

    #[test]
    fn the_store_is_bounded_and_sweeping_frees_it() {
        // Keys made up front: making them in debug builds takes long enough
        // to let nonces expire mid-test.
        let keys: Vec<_> = (0..12).map(|_| CircleKeypair::generate().public).collect();
        let store = NonceStore::with_capacity(Duration::from_millis(400), 10);
        for key in &keys[..10] {
            store.issue(*key, LOCAL, 0).unwrap();
        }
        assert_eq!(
            store.issue(keys[10], LOCAL, 0),
            Err(AuthError::TooManyNonces)
        );
        std::thread::sleep(Duration::from_millis(450));
        // Expired ones make room again, swept by `issue` itself...
        store.issue(keys[11], LOCAL, 0).unwrap();
        assert_eq!(store.key_count(), 1);
        // ... or by the periodic sweep.
        std::thread::sleep(Duration::from_millis(450));
        assert_eq!(store.sweep(), 1);
        assert_eq!(store.key_count(), 0);
    }
}
