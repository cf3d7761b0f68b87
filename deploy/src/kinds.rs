//! The kinds of service circles installs, and their names. Status tables
//! and cleanup read a name's kind from here instead of guessing.

use circles_dispatcher::CirclePublicKey;
use circles_services::{SERVICE_PREFIX, ServiceName, ServiceTemplate};

/// Name prefix of worker services; the circle key follows.
pub const WORKER_SERVICE_PREFIX: &str = "tf.ourworld.circles.circle-worker-";
/// Name of the one WebSocket server service.
pub const SERVER_SERVICE_NAME: &str = "tf.ourworld.circles.circle-ws-server";
/// Name of the supervisor's own service.
pub const SUPERVISOR_SERVICE_NAME: &str = "tf.ourworld.circles.supervisor";

/// What a service under [`SERVICE_PREFIX`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// A circle's worker (the key is in the name).
    Worker(CirclePublicKey),
    /// The WebSocket server.
    WsServer,
    /// The supervisor daemon.
    Supervisor,
    /// Ours by prefix, but no kind this version knows (a newer version's).
    Other,
}

impl ServiceKind {
    /// The kind of `name`.
    pub fn of(name: &ServiceName) -> Self {
        if let Some(key) = circle_of(name) {
            Self::Worker(key)
        } else if name.as_str() == SERVER_SERVICE_NAME {
            Self::WsServer
        } else if name.as_str() == SUPERVISOR_SERVICE_NAME {
            Self::Supervisor
        } else {
            Self::Other
        }
    }

    /// The template it is rendered from, where it has one.
    pub fn template(self) -> Option<ServiceTemplate> {
        match self {
            Self::Worker(_) => Some(ServiceTemplate::Worker),
            Self::WsServer => Some(ServiceTemplate::WsServer),
            Self::Supervisor => Some(ServiceTemplate::Supervisor),
            Self::Other => None,
        }
    }

    /// A short label for tables: `ws-server`, `supervisor`, the name without
    /// the prefix for others; workers are labelled by their circle.
    pub fn label(self, name: &ServiceName) -> String {
        match self {
            Self::WsServer => "ws-server".into(),
            Self::Supervisor => "supervisor".into(),
            Self::Worker(_) | Self::Other => {
                name.as_str().trim_start_matches(SERVICE_PREFIX).to_string()
            }
        }
    }
}

/// `tf.ourworld.circles.circle-worker-<pk>`
pub fn worker_service_name(key: &CirclePublicKey) -> ServiceName {
    ServiceName::new(format!("{WORKER_SERVICE_PREFIX}{key}"))
        .expect("a canonical key makes a valid name")
}

/// `tf.ourworld.circles.circle-ws-server`
pub fn server_service_name() -> ServiceName {
    ServiceName::new(SERVER_SERVICE_NAME).expect("valid name")
}

/// `tf.ourworld.circles.supervisor`
pub fn supervisor_service_name() -> ServiceName {
    ServiceName::new(SUPERVISOR_SERVICE_NAME).expect("valid name")
}

/// The circle key of a worker service name, if it is one.
pub fn circle_of(name: &ServiceName) -> Option<CirclePublicKey> {
    name.as_str()
        .strip_prefix(WORKER_SERVICE_PREFIX)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";

    #[test]
    fn every_kind_is_told_apart_by_name() {
        let key: CirclePublicKey = KEY.parse().unwrap();
        let worker = worker_service_name(&key);
        assert_eq!(
            worker.as_str(),
            format!("tf.ourworld.circles.circle-worker-{KEY}")
        );
        assert_eq!(ServiceKind::of(&worker), ServiceKind::Worker(key));
        assert_eq!(
            ServiceKind::of(&server_service_name()),
            ServiceKind::WsServer
        );
        assert_eq!(
            ServiceKind::of(&supervisor_service_name()),
            ServiceKind::Supervisor
        );
        let other = ServiceName::new("tf.ourworld.circles.something-else").unwrap();
        assert_eq!(ServiceKind::of(&other), ServiceKind::Other);
        assert_eq!(ServiceKind::Other.label(&other), "something-else");
        // A worker name with a key that does not parse is not a worker.
        let bad = ServiceName::new("tf.ourworld.circles.circle-worker-02zz").unwrap();
        assert_eq!(ServiceKind::of(&bad), ServiceKind::Other);
    }
}
