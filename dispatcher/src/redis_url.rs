//! A Redis URL that never shows its password.
//!
//! Redis URLs carry credentials (`redis://user:password@host:6379/0`, or
//! `?pass=…` on unix-socket URLs). A [`RedisUrl`] keeps the whole text for
//! connecting, but its `Display` and `Debug` print the redacted form
//! (`redis://user:***@host:6379/0`), so an error message, a log line or a
//! status table that formats one cannot leak the secret. The full text is
//! only reachable through [`RedisUrl::expose_secret`], whose name makes every
//! use stand out in review.

use std::fmt;

/// What redacted credentials are replaced with.
const REDACTED: &str = "***";

/// A Redis URL whose `Display`/`Debug` hide the password; see the module docs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RedisUrl {
    full: String,
}

impl RedisUrl {
    /// Wraps `url` as given. Parsing is left to the Redis client, so a bad
    /// URL is reported where it is dialled — with this type, redacted.
    pub fn new(url: impl Into<String>) -> Self {
        Self { full: url.into() }
    }

    /// The URL with its password: for the Redis client, an environment
    /// variable or a 0600 file — never for argv, logs or messages.
    pub fn expose_secret(&self) -> &str {
        &self.full
    }

    /// Whether the URL carries a password (or a user name), i.e. whether it
    /// must be kept out of world-readable places.
    pub fn has_credentials(&self) -> bool {
        self.redacted() != self.full
    }

    /// The URL with every credential replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.full)
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({:?})", self.redacted())
    }
}

impl From<&str> for RedisUrl {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl From<String> for RedisUrl {
    fn from(url: String) -> Self {
        Self::new(url)
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

impl serde::Serialize for RedisUrl {
    /// Serialises the *redacted* form: a struct that is written out (a JSON
    /// status, a record file) never carries the secret by accident.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Replaces the user-info part (`user:password@`, or a lone `password@`) and
/// any `pass`/`password` query parameter with `***`. Works on text, not on a
/// parsed URL, so that even a URL the parser rejects is redacted.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    // Everything before the last '@' is user info, even when the password
    // itself holds '/', '?' or '#' (unencoded, as generated passwords often
    // do). A '@' further on (in a query) only makes us hide more.
    let (authority, tail) = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let after = &rest[at + 1..];
            let host_end = after.find(['/', '?', '#']).unwrap_or(after.len());
            let (host, tail) = after.split_at(host_end);
            let shown = match userinfo.split_once(':') {
                // `redis://:password@host` and `redis://user:password@host`
                Some((user, _password)) if !user.contains(['/', '?', '#']) => {
                    format!("{user}:{REDACTED}@{host}")
                }
                // `redis://password@host`: a lone word is taken as the
                // password by Redis clients that accept it.
                _ => format!("{REDACTED}@{host}"),
            };
            (shown, tail)
        }
        None => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            (rest[..end].to_string(), &rest[end..])
        }
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if is_secret_param(k) => format!("{k}={REDACTED}"),
                    _ => pair.to_string(),
                })
                .collect();
            let mut t = format!("{path}?{}", query.join("&"));
            if let Some(f) = fragment {
                t.push('#');
                t.push_str(f);
            }
            t
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

fn is_secret_param(key: &str) -> bool {
    matches!(
        key.to_ascii_lowercase().as_str(),
        "pass" | "password" | "passwd" | "secret" | "token"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://alice:s3cret@h:6379", "redis://alice:***@h:6379"),
            ("rediss://alice:p@ss@w:rd@h/2", "rediss://alice:***@h/2"),
            ("redis://s3cret@h", "redis://***@h"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=s3cret",
                "redis+unix:///run/redis.sock?db=1&pass=***",
            ),
            (
                "unix:///r.sock?PASSWORD=x#f",
                "unix:///r.sock?PASSWORD=***#f",
            ),
            ("not a url :s3cret@x", "not a url :***@x"),
            // Passwords with '/', '?' or '#' in them, unencoded.
            ("redis://:Zm9v/s3cret@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://u:a?s3cret#x@h/1", "redis://u:***@h/1"),
            ("redis://u:s3cret@@h", "redis://u:***@h"),
        ] {
            let u = RedisUrl::new(url);
            assert_eq!(u.to_string(), shown, "{url}");
            assert!(!format!("{u:?}").contains("s3cret"), "{url}");
            assert_eq!(u.expose_secret(), url);
            assert_eq!(u.has_credentials(), url != shown, "{url}");
            assert_eq!(
                serde_json::to_string(&u).unwrap(),
                serde_json::to_string(shown).unwrap()
            );
        }
    }
}
