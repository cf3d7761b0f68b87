//! Service names: the one identifier a circle service has in every backend.
//!
//! A [`ServiceName`] is the systemd unit name without `.service`, the launchd
//! label, and the file stem of both. Validation happens once, here, so the
//! renderers and backends can put a name into a path, a unit file or a
//! `launchctl` argument without quoting it, and so cleanup can rely on the
//! [`SERVICE_PREFIX`] being present on everything it touches.

use std::fmt;

use crate::error::ServiceError;

/// Every service circles installs is named `tf.ourworld.circles.<something>`.
///
/// Cleanup removes exactly the services whose name starts with this prefix
/// (including the final dot), and nothing else: `tf.ourworld.circles-x` is not
/// ours.
pub const SERVICE_PREFIX: &str = "tf.ourworld.circles.";

/// The longest name we accept: systemd limits unit names to 255 bytes, and
/// the name gets a `.service` suffix there.
pub const MAX_NAME_LEN: usize = 255 - ".service".len();

/// A validated service name such as `tf.ourworld.circles.circle-ws-server`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName(String);

impl ServiceName {
    /// Validates `name`: it must start with [`SERVICE_PREFIX`], have something
    /// after it, use only `[A-Za-z0-9._@-]`, and not end in `@` (that would be
    /// a systemd template, which cannot be started).
    pub fn new(name: impl Into<String>) -> Result<Self, ServiceError> {
        let name = name.into();
        let invalid = |reason: &'static str| ServiceError::InvalidName {
            name: name.clone(),
            reason,
        };
        if !name.starts_with(SERVICE_PREFIX) {
            return Err(invalid("it must start with `tf.ourworld.circles.`"));
        }
        if name.len() == SERVICE_PREFIX.len() {
            return Err(invalid("nothing follows the prefix `tf.ourworld.circles.`"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid("it is longer than 247 characters"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
        {
            return Err(invalid(
                "only letters, digits and `.`, `_`, `@`, `-` are allowed",
            ));
        }
        if name.ends_with('@') {
            return Err(invalid("a name ending in `@` is a systemd template"));
        }
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The systemd unit name: `<name>.service`.
    pub fn unit_name(&self) -> String {
        format!("{}.service", self.0)
    }

    /// Recognises one of our names in a file or unit name that ends in
    /// `suffix` (`.service`, `.plist`): `None` for anything else, including
    /// near misses such as `tf.ourworld.circles-not-ours.service`.
    pub fn from_file_name(file_name: &str, suffix: &str) -> Option<Self> {
        file_name
            .strip_suffix(suffix)
            .and_then(|stem| Self::new(stem).ok())
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ServiceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ServiceName {
    type Err = ServiceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for ServiceName {
    type Error = ServiceError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_names_the_launcher_uses() {
        let worker = format!("{SERVICE_PREFIX}circle-worker-{}", "02".repeat(33));
        assert_eq!(ServiceName::new(worker.clone()).unwrap().as_str(), worker);
        let server = ServiceName::new("tf.ourworld.circles.circle-ws-server").unwrap();
        assert_eq!(server.to_string(), "tf.ourworld.circles.circle-ws-server");
        assert_eq!(
            server.unit_name(),
            "tf.ourworld.circles.circle-ws-server.service"
        );
    }

    #[test]
    fn rejects_names_outside_the_prefix_or_alphabet() {
        for bad in [
            "",
            "other",
            "tf.ourworld.circles",
            "tf.ourworld.circles.",
            "tf.ourworld.circles-not-ours",
            "TF.ourworld.circles.x",
            "tf.ourworld.circles.a b",
            "tf.ourworld.circles.a/b",
            "tf.ourworld.circles.a\nb",
            "tf.ourworld.circles.x@",
        ] {
            let err = ServiceName::new(bad).unwrap_err();
            assert!(
                err.to_string().contains(&format!("`{bad}`")),
                "error names the bad value: {err}"
            );
        }
        let long = format!("{SERVICE_PREFIX}{}", "a".repeat(MAX_NAME_LEN));
        assert!(ServiceName::new(long).is_err());
    }

    #[test]
    fn recognises_only_our_file_names() {
        assert_eq!(
            ServiceName::from_file_name("tf.ourworld.circles.w.service", ".service")
                .unwrap()
                .as_str(),
            "tf.ourworld.circles.w"
        );
        assert!(
            ServiceName::from_file_name("tf.ourworld.circles-not-ours.service", ".service")
                .is_none()
        );
        assert!(ServiceName::from_file_name("other.service", ".service").is_none());
        assert!(ServiceName::from_file_name("tf.ourworld.circles.w.plist", ".service").is_none());
    }
}
