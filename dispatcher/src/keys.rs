//! Circle identities: a circle is named by a secp256k1 public key.
//!
//! Users hand us keys in either SEC1 form (compressed `02…`/`03…`, 66 hex
//! chars, or uncompressed `04…`, 130 hex chars). Everything that turns a key
//! into a name — a Redis queue, a unit file, a database file — uses the one
//! canonical form, lowercase compressed hex, so the same circle never ends up
//! with two queues because somebody pasted the other encoding.

use std::fmt;
use std::str::FromStr;

use secp256k1::{PublicKey, SecretKey};

/// What a valid key looks like, quoted in every rejection.
pub const EXPECTED_KEY_FORM: &str = "a secp256k1 public key in hex: 66 chars starting with 02/03 (compressed) or 130 chars starting with 04 (uncompressed)";

/// Longest part of a rejected value quoted in [`InvalidKey`].
const MAX_QUOTED_KEY: usize = 140;

/// A rejected circle key, naming the value and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid public key `{value}`: {reason}; expected {EXPECTED_KEY_FORM}")]
pub struct InvalidKey {
    /// The value as the user gave it.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

/// A validated circle public key. Displays as canonical compressed lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CirclePublicKey(PublicKey);

impl CirclePublicKey {
    /// Parses and validates a key given as hex (either SEC1 encoding, any case,
    /// surrounding whitespace ignored).
    pub fn parse(value: &str) -> Result<Self, InvalidKey> {
        // Quoted back in the error: bounded, since keys come from strangers.
        let invalid = |reason: &str| InvalidKey {
            value: crate::text::clip(value, MAX_QUOTED_KEY).into_owned(),
            reason: reason.to_string(),
        };
        let hex_str = value.trim();
        let hex_str = hex_str
            .strip_prefix("0x")
            .or_else(|| hex_str.strip_prefix("0X"))
            .unwrap_or(hex_str);
        if hex_str.is_empty() {
            return Err(invalid("it is empty"));
        }
        if hex_str.len() != 66 && hex_str.len() != 130 {
            return Err(invalid(&format!("it has {} hex chars", hex_str.len())));
        }
        let bytes = hex::decode(hex_str).map_err(|_| invalid("it is not hex"))?;
        match (bytes.len(), bytes[0]) {
            (33, 0x02 | 0x03) | (65, 0x04) => {}
            (_, prefix) => {
                return Err(invalid(&format!(
                    "prefix {prefix:02x} does not match its length"
                )));
            }
        }
        PublicKey::from_slice(&bytes)
            .map(Self)
            .map_err(|_| invalid("it is not a point on the secp256k1 curve"))
    }

    /// Parses a key that must be exactly the hex of either SEC1 encoding
    /// (any case), with nothing around it: no whitespace, no `0x`. For keys
    /// in URL paths, where another spelling of the same circle would be a
    /// second name for it.
    pub fn parse_exact(value: &str) -> Result<Self, InvalidKey> {
        if !value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidKey {
                value: crate::text::clip(value, MAX_QUOTED_KEY).into_owned(),
                reason: "it must be hex digits only".to_string(),
            });
        }
        Self::parse(value)
    }

    /// The key of a secret key's public half.
    pub fn from_secret_key(secret: &SecretKey) -> Self {
        Self(PublicKey::from_secret_key(secret))
    }

    /// The underlying secp256k1 key.
    pub fn as_public_key(&self) -> &PublicKey {
        &self.0
    }

    /// Canonical form: 66 lowercase hex chars.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.serialize())
    }

    /// Uncompressed form: 130 lowercase hex chars starting with `04`.
    pub fn to_uncompressed_hex(&self) -> String {
        hex::encode(self.0.serialize_uncompressed())
    }
}

impl From<PublicKey> for CirclePublicKey {
    fn from(key: PublicKey) -> Self {
        Self(key)
    }
}

impl FromStr for CirclePublicKey {
    type Err = InvalidKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for CirclePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for CirclePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CirclePublicKey({})", self.to_hex())
    }
}

impl serde::Serialize for CirclePublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for CirclePublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A freshly generated circle identity.
#[derive(Clone)]
pub struct CircleKeypair {
    /// The secret half; only written to the data directory with mode 0600.
    pub secret: SecretKey,
    /// The circle's identity.
    pub public: CirclePublicKey,
}

impl CircleKeypair {
    /// Generates a keypair from the operating system's randomness.
    pub fn generate() -> Self {
        let (secret, public) = secp256k1::generate_keypair(&mut secp256k1::rand::rng());
        Self {
            secret,
            public: public.into(),
        }
    }

    /// Rebuilds a keypair from a stored secret key (64 hex chars).
    pub fn from_secret_hex(value: &str) -> Result<Self, InvalidKey> {
        let invalid = |reason: &str| InvalidKey {
            value: "<secret key>".to_string(),
            reason: reason.to_string(),
        };
        let bytes: [u8; 32] = hex::decode(value.trim())
            .map_err(|_| invalid("it is not hex"))?
            .try_into()
            .map_err(|_| invalid("it is not 32 bytes"))?;
        let secret =
            SecretKey::from_secret_bytes(bytes).map_err(|_| invalid("it is not a valid scalar"))?;
        Ok(Self {
            public: CirclePublicKey::from_secret_key(&secret),
            secret,
        })
    }

    /// The secret key as 64 lowercase hex chars.
    pub fn secret_hex(&self) -> String {
        hex::encode(self.secret.to_secret_bytes())
    }
}

impl fmt::Debug for CircleKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircleKeypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncompressed_and_compressed_forms_name_the_same_circle() {
        let pair = CircleKeypair::generate();
        let compressed = pair.public.to_hex();
        let uncompressed = pair.public.to_uncompressed_hex();
        assert_eq!(compressed.len(), 66);
        assert_eq!(uncompressed.len(), 130);
        let a = CirclePublicKey::parse(&compressed.to_uppercase()).unwrap();
        let b = CirclePublicKey::parse(&uncompressed).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.to_string(), compressed);
    }

    #[test]
    fn rejections_name_the_value_and_the_expected_form() {
        for bad in [
            "",
            "hello",
            "02",
            &format!("05{}", "11".repeat(32)),
            &format!("04{}", "11".repeat(32)),
            &format!("02{}", "zz".repeat(32)),
            // 33 bytes with a valid prefix but x not on the curve.
            &format!("02{}", "ff".repeat(32)),
        ] {
            let err = CirclePublicKey::parse(bad).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&format!("`{bad}`")), "{msg}");
            assert!(msg.contains("66 chars"), "{msg}");
        }
    }

    #[test]
    fn secret_roundtrip() {
        let pair = CircleKeypair::generate();
        let again = CircleKeypair::from_secret_hex(&pair.secret_hex()).unwrap();
        assert_eq!(pair.public, again.public);
    }
}
