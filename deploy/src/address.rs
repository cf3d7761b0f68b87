//! Addressing a circle the way the status tables show it: by name, by full
//! key, by an unambiguous key prefix, or by the shortened key of a table
//! cell (`02c6047f…709ee5`). The launcher (`launcher logs`) and the
//! supervisor (`supervisor ctl`) resolve what people type with the one
//! [`resolve`], so a circle is called the same everywhere.
//!
//! Rules, first match wins:
//! 1. a name, exactly;
//! 2. a full key (any accepted spelling), exactly — also a key nobody
//!    listed, so a circle installed by another tool can still be named;
//! 3. a shortened key `prefix…suffix` (also `prefix...suffix`);
//! 4. a key prefix (hex), which must match one circle only.
//!
//! Ambiguity is an error that lists the matches; no match is an error that
//! lists what is known.

use circles_dispatcher::CirclePublicKey;

/// Most circles an error lists before saying how many more there are.
const MAX_LISTED: usize = 10;
/// Longest part of the query an error quotes.
const MAX_QUOTED: usize = 80;

/// A circle that can be addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownCircle {
    /// Its name (circles.json name, runner name, or `circle-<8 hex>`).
    pub name: String,
    /// Its key, where known.
    pub key: Option<CirclePublicKey>,
}

impl KnownCircle {
    /// A circle with a name and a key.
    pub fn new(name: impl Into<String>, key: CirclePublicKey) -> Self {
        Self {
            name: name.into(),
            key: Some(key),
        }
    }

    /// The hex a key prefix is matched against: the key, or, for a circle
    /// known only by a derived name (`circle-02abcdef`), the hex in it.
    fn hex(&self) -> Option<String> {
        match &self.key {
            Some(key) => Some(key.to_hex()),
            None => self
                .name
                .strip_prefix("circle-")
                .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
                .map(str::to_ascii_lowercase),
        }
    }

    /// `name (02c6047f…709ee5)`, for messages.
    fn describe(&self) -> String {
        match &self.key {
            Some(key) => format!("{} ({})", self.name, abbreviate_key(&key.to_hex())),
            None => self.name.clone(),
        }
    }
}

/// Why a query names no circle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing matches.
    #[error("no circle `{query}` here{}", known_list(known))]
    NotFound {
        /// What was asked for (clipped).
        query: String,
        /// What is known, as `name (key)`.
        known: Vec<String>,
    },
    /// More than one matches.
    #[error("`{query}` matches {} circles: {}; give more of the key, or the name", matches.len(), list(matches))]
    Ambiguous {
        /// What was asked for (clipped).
        query: String,
        /// The matches, as `name (key)`.
        matches: Vec<String>,
    },
}

fn list(items: &[String]) -> String {
    let mut text = items
        .iter()
        .take(MAX_LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > MAX_LISTED {
        text.push_str(&format!(" and {} more", items.len() - MAX_LISTED));
    }
    text
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "; no circles are known (none installed, none launched with this data directory)"
            .to_string()
    } else {
        format!(
            ": known circles are {}; give a name, a full key or a key prefix",
            list(known)
        )
    }
}

/// The circle `query` names among `known`; see the module docs.
pub fn resolve(query: &str, known: &[KnownCircle]) -> Result<KnownCircle, AddressError> {
    let query = query.trim();
    let quoted = circles_dispatcher::text::clip(query, MAX_QUOTED).into_owned();
    if let Some(found) = known.iter().find(|c| c.name == query) {
        return Ok(found.clone());
    }
    if let Ok(key) = CirclePublicKey::parse(query) {
        let by_key = known.iter().find(|c| c.key == Some(key)).cloned();
        // A full key is unambiguous even when nobody listed it.
        return Ok(by_key.unwrap_or_else(|| KnownCircle::new(crate::short_name(&key), key)));
    }
    let lower = query.to_ascii_lowercase();
    let shortened = lower
        .split_once('…')
        .or_else(|| lower.split_once("..."))
        .filter(|(p, s)| is_hex(p) && is_hex(s));
    let matches: Vec<&KnownCircle> = match shortened {
        Some((prefix, suffix)) => known
            .iter()
            .filter(|c| {
                c.key.is_some_and(|k| {
                    let hex = k.to_hex();
                    hex.starts_with(prefix) && hex.ends_with(suffix)
                })
            })
            .collect(),
        None if is_hex(&lower) => known
            .iter()
            .filter(|c| {
                c.hex().is_some_and(|hex| {
                    // A derived name holds only the first 8 hex digits.
                    hex.starts_with(&lower) || (c.key.is_none() && lower.starts_with(&hex))
                })
            })
            .collect(),
        None => Vec::new(),
    };
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(AddressError::NotFound {
            query: quoted,
            known: known.iter().map(KnownCircle::describe).collect(),
        }),
        many => Err(AddressError::Ambiguous {
            query: quoted,
            matches: many.iter().map(|c| c.describe()).collect(),
        }),
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// `02c6047f…709ee5`: how tables shorten a key (the URL carries it whole).
pub fn abbreviate_key(key: &str) -> String {
    if key.len() > 16 && key.is_ascii() {
        format!("{}…{}", &key[..8], &key[key.len() - 6..])
    } else {
        key.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5";
    const B: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
    const C: &str = "02f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9";

    fn known() -> Vec<KnownCircle> {
        vec![
            KnownCircle::new("ourworld", A.parse().unwrap()),
            KnownCircle::new("threefold", B.parse().unwrap()),
            KnownCircle::new("gamma", C.parse().unwrap()),
            KnownCircle {
                name: "circle-03aabbcc".into(),
                key: None,
            },
        ]
    }

    fn name(q: &str) -> Result<String, String> {
        resolve(q, &known())
            .map(|c| c.name)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn names_keys_prefixes_and_table_cells_address_a_circle() {
        for (query, want) in [
            ("ourworld", "ourworld"),
            (A, "ourworld"),
            (&A.to_uppercase(), "ourworld"),
            ("02c6", "ourworld"),
            ("0279BE", "threefold"),
            ("02c6047f…709ee5", "ourworld"),
            ("0279be66...f81798", "threefold"),
            ("03aa", "circle-03aabbcc"),
            ("03aabbcc00", "circle-03aabbcc"),
            ("  gamma ", "gamma"),
        ] {
            assert_eq!(name(query).as_deref(), Ok(want), "{query}");
        }
        // A full key nobody listed still names its circle.
        let key = circles_dispatcher::CircleKeypair::generate().public;
        let c = resolve(&key.to_hex(), &known()).unwrap();
        assert_eq!(c.key, Some(key));
        assert_eq!(c.name, crate::short_name(&key));
    }

    #[test]
    fn ambiguity_and_unknown_names_are_errors_that_list_circles() {
        let err = name("02").unwrap_err();
        assert!(err.starts_with("`02` matches 3 circles: "), "{err}");
        for n in ["ourworld (02c6047f…709ee5)", "threefold", "gamma"] {
            assert!(err.contains(n), "{err}");
        }
        let err = name("ourwrld").unwrap_err();
        assert!(
            err.starts_with(
                "no circle `ourwrld` here: known circles are ourworld (02c6047f…709ee5), threefold"
            ),
            "{err}"
        );
        let err = resolve("x", &[]).unwrap_err().to_string();
        assert!(err.contains("no circles are known"), "{err}");
        // A hostile query is quoted clipped.
        let err = name(&"z".repeat(100_000)).unwrap_err();
        assert!(err.len() < 1_000, "{}", err.len());
        // Prefix and suffix must both match.
        assert!(name("02c6047f…000000").is_err());
    }
}
