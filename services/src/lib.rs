//! Service backends for circles: install, update, inspect and remove circle
//! services under systemd, launchd, or (elsewhere) the `service-manager`
//! crate.
//!
//! This crate owns everything between "here are the services I want" and the
//! OS service manager. It knows nothing of Redis, Rhai or circles beyond
//! names: the launcher builds generic [`ServiceSpec`]s, and this crate
//!
//! 1. renders them from `service_templates/` ([`Templates`]) into systemd
//!    units (quoted per systemd's rules) or launchd plists (typed `plist`
//!    values) — pure functions;
//! 2. plans against what is installed ([`ServiceBackend::plan`]): create,
//!    update or leave alone, refusing to overwrite files it did not write;
//! 3. applies a plan as one transaction ([`ServiceBackend::apply`]): one
//!    daemon reload, every start waited for (systemd readiness included), a
//!    full rollback on failure;
//! 4. lists, inspects, restarts and removes services — only ever those named
//!    under [`SERVICE_PREFIX`].
//!
//! ```no_run
//! # async fn example(specs: Vec<circles_services::ServiceSpec>) -> Result<(), circles_services::ServiceError> {
//! use circles_services::{ServiceBackend, Templates};
//! let backend = ServiceBackend::detect(None, Templates::embedded()).await?;
//! let plan = backend.plan(&specs).await?;
//! let report = backend.apply(&plan).await?;
//! println!("{}: created {:?}", backend.describe(), report.created);
//! # Ok(()) }
//! ```

mod account;
mod backend;
mod error;
pub mod fallback;
mod files;
pub mod host;
pub mod launchd;
mod name;
mod spec;
pub mod systemd;
mod templates;

pub use backend::{
    ApplyReport, CLD_DUMPED, CLD_EXITED, CLD_KILLED, PUBLIC_FILE_MODE, Plan, PlannedAction,
    Rendered, SECRET_FILE_MODE, SecretFile, ServiceBackend, ServiceStatus,
};
pub use error::{Rollback, ServiceError};
pub use fallback::FallbackBackend;
pub use host::HostEnv;
pub use launchd::LaunchdBackend;
pub use name::{MAX_NAME_LEN, SERVICE_PREFIX, ServiceName};
pub use spec::{
    BackendKind, ResourceLimits, RestartPolicy, SecretEnv, ServiceAccount, ServiceScope,
    ServiceSpec, ServiceTemplate,
};
pub use systemd::SystemdBackend;
pub use templates::{Template, Templates};
