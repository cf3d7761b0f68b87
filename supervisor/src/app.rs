//! [`SupervisorApp`]: the supervisor served — the API bound and running,
//! readiness told to systemd, a presence key in Redis, and a graceful stop
//! (the server first, then the child runners; service runners keep
//! running).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::server::ServerHandle;

use crate::error::SupervisorError;
use crate::supervisor::Supervisor;

/// How often the presence key is refreshed; it lives three times as long.
const PRESENCE_EVERY: Duration = Duration::from_secs(10);

/// A supervisor to serve.
#[derive(Debug)]
pub struct SupervisorApp {
    supervisor: Arc<Supervisor>,
}

/// A supervisor being served; [`RunningApp::stop`] ends it.
#[derive(Debug)]
pub struct RunningApp {
    handle: ServerHandle,
    local_addr: SocketAddr,
    supervisor: Arc<Supervisor>,
    presence: tokio::task::JoinHandle<()>,
}

impl SupervisorApp {
    /// Serves `supervisor` with its API settings.
    pub fn new(supervisor: Arc<Supervisor>) -> Self {
        Self { supervisor }
    }

    /// Binds (refusing a non-loopback address without secrets), starts
    /// serving, and tells systemd it is ready when run as a notify service.
    pub async fn start(self) -> Result<RunningApp, SupervisorError> {
        let api = self.supervisor.settings().api.clone();
        let bound = crate::rpc::bind(api.addr, api.secrets).await?;
        let local_addr = bound.local_addr();
        let handle = bound.start(self.supervisor.clone());
        tracing::info!(
            "supervisor API on http://{local_addr} (HTTP POST / and WebSocket), data in {}",
            self.supervisor.settings().data_dir.display()
        );
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        }
        let presence = tokio::spawn(presence(self.supervisor.clone(), local_addr));
        Ok(RunningApp {
            handle,
            local_addr,
            supervisor: self.supervisor,
            presence,
        })
    }

    /// [`Self::start`], then serves until `shutdown` resolves and stops.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), SupervisorError> {
        let app = self.start().await?;
        shutdown.await;
        app.stop().await;
        Ok(())
    }
}

impl RunningApp {
    /// Where the API listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://<addr>`
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// The supervisor served.
    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.supervisor
    }

    /// Stops serving (calls in flight finish), then the child runners.
    pub async fn stop(self) {
        tracing::info!("stopping");
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        }
        self.presence.abort();
        let _ = self.handle.stop();
        self.handle.stopped().await;
        self.supervisor.shutdown().await;
        self.supervisor.clear_presence().await;
    }
}

/// Keeps `<namespace>:supervisor:<host>` in Redis while serving, so hosts
/// sharing a Redis can see each other's supervisors.
async fn presence(supervisor: Arc<Supervisor>, addr: SocketAddr) {
    loop {
        supervisor.write_presence(addr, PRESENCE_EVERY * 3).await;
        tokio::time::sleep(PRESENCE_EVERY).await;
    }
}
