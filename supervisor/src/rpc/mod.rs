//! The JSON-RPC 2.0 API over HTTP `POST /` and WebSocket on one port
//! (jsonrpsee), every method of [`methods::METHODS`] with named or
//! positional parameters, `rpc.discover` answering the OpenRPC document
//! kept in the repository (`supervisor/openrpc.json`), and log
//! subscriptions over WebSocket.
//!
//! Authorization: an HTTP layer ([`AuthLayer`], in [`auth`]) turns the
//! request's `Authorization` header — or, on a WebSocket upgrade from a
//! browser, its bearer subprotocol — into a [`Caller`] in the request's
//! extensions (for a WebSocket, the upgrade request's, which every call on
//! the connection inherits), and refuses cross-origin and rebound browser
//! requests; each method checks the caller against its scope before
//! anything else, answering -32014 when it falls short. In front of the
//! API, [`crate::console`] serves the web console's files on `GET`.

pub mod auth;
pub mod methods;
pub mod params;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use jsonrpsee::server::{RpcModule, Server, ServerHandle, SubscriptionMessage};
use jsonrpsee::types::ErrorObjectOwned;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::console::ConsoleLayer;
use crate::error::SupervisorError;
use crate::secrets::{Caller, Scope, Secrets};
use crate::supervisor::{AddRunner, JobRequest, Supervisor};
pub use auth::{AuthLayer, AuthService};
use methods::{LOG_NOTIFICATION, MethodSpec, SUBSCRIBE_LOGS, UNSUBSCRIBE_LOGS, method};
use params::parse;

/// The OpenRPC document served by `rpc.discover`.
pub const OPENRPC_DOCUMENT: &str = include_str!("../../openrpc.json");

/// Largest request body: a job script of 1 MiB, escaped, fits.
const MAX_REQUEST_BODY: u32 = 4 * 1024 * 1024;
/// Most concurrent connections.
const MAX_CONNECTIONS: u32 = 256;
/// Log lines returned when `lines` is not given.
const DEFAULT_LOG_LINES: usize = 100;

/// What every method handler gets.
#[derive(Debug)]
struct RpcContext {
    supervisor: Arc<Supervisor>,
    openrpc: serde_json::Value,
}

/// A supervisor error as a JSON-RPC error: its code, its message, and data
/// a program can use (the job id of a timed-out job).
pub fn to_rpc_error(e: SupervisorError) -> ErrorObjectOwned {
    let data = match &e {
        SupervisorError::JobTimedOut(id, _) => {
            Some(serde_json::json!({ "job_id": id.to_string() }))
        }
        SupervisorError::NotStarted { last_lines, .. } => {
            Some(serde_json::json!({ "last_log_lines": last_lines }))
        }
        _ => None,
    };
    ErrorObjectOwned::owned(e.code(), e.to_string(), data)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogParams {
    name: String,
    #[serde(default)]
    lines: Option<usize>,
    #[serde(default)]
    since: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobIdParams {
    job_id: String,
}

/// `whoami`'s result.
#[derive(Debug, Clone, Serialize)]
struct Whoami {
    /// `admin` or `user`.
    scope: &'static str,
    /// Whether the API asks for secrets at all.
    secrets_configured: bool,
}

fn caller(ext: &http::Extensions) -> Caller {
    ext.get::<Caller>().copied().unwrap_or(Caller::Missing)
}

/// Registers `name` (which must be in the method table): authorize, parse
/// the params as `T`, call `f`, serialise its result.
fn register<T, R, F, Fut>(module: &mut RpcModule<RpcContext>, name: &'static str, f: F)
where
    T: DeserializeOwned + Send + 'static,
    R: Serialize + 'static,
    F: Fn(Arc<RpcContext>, T) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R, SupervisorError>> + Send + 'static,
{
    let spec: &'static MethodSpec = method(name).expect("every registered method is in the table");
    module
        .register_async_method(name, move |params, ctx, ext| {
            let f = f.clone();
            async move {
                caller(&ext)
                    .allow(spec.scope, spec.name)
                    .map_err(to_rpc_error)?;
                let args: T = parse(&params, spec)?;
                let result = f(ctx, args).await.map_err(|e| {
                    tracing::debug!(method = spec.name, "{e}");
                    to_rpc_error(e)
                })?;
                serde_json::to_value(result).map_err(|e| {
                    ErrorObjectOwned::owned(
                        -32603,
                        format!("cannot serialise the result: {e}"),
                        None::<()>,
                    )
                })
            }
        })
        .expect("method names are unique");
}

/// The module with every method of the table.
fn module(supervisor: Arc<Supervisor>) -> RpcModule<RpcContext> {
    let openrpc = serde_json::from_str(OPENRPC_DOCUMENT).expect("openrpc.json is JSON");
    let mut m = RpcModule::new(RpcContext {
        supervisor,
        openrpc,
    });
    register(&mut m, methods::DISCOVER, |ctx, NoParams {}| async move {
        Ok(ctx.openrpc.clone())
    });
    register(&mut m, "add_runner", |ctx, req: AddRunner| async move {
        ctx.supervisor.add_runner(req).await
    });
    register(&mut m, "remove_runner", |ctx, p: NameParams| async move {
        ctx.supervisor.remove_runner(&p.name).await
    });
    register(&mut m, "list_runners", |ctx, NoParams {}| async move {
        Ok(ctx.supervisor.list_runners())
    });
    register(&mut m, "start_runner", |ctx, p: NameParams| async move {
        ctx.supervisor.start_runner(&p.name).await
    });
    register(&mut m, "stop_runner", |ctx, p: NameParams| async move {
        ctx.supervisor.stop_runner(&p.name).await
    });
    register(&mut m, "restart_runner", |ctx, p: NameParams| async move {
        ctx.supervisor.restart_runner(&p.name).await
    });
    register(
        &mut m,
        "get_runner_status",
        |ctx, p: NameParams| async move { ctx.supervisor.runner_status(&p.name).await },
    );
    register(&mut m, "get_runner_logs", |ctx, p: LogParams| async move {
        let since = p
            .since
            .as_deref()
            .map(crate::manager::logs::parse_since)
            .transpose()?;
        ctx.supervisor
            .runner_logs(&p.name, p.lines.unwrap_or(DEFAULT_LOG_LINES), since)
            .await
    });
    register(
        &mut m,
        "queue_job_to_runner",
        |ctx, req: JobRequest| async move {
            ctx.supervisor.queue_job(req).await.map(|id| id.to_string())
        },
    );
    register(&mut m, "run_job", |ctx, req: JobRequest| async move {
        ctx.supervisor.run_job(req).await
    });
    register(&mut m, "get_job_status", |ctx, p: JobIdParams| async move {
        ctx.supervisor.job_status(&p.job_id).await
    });
    register(
        &mut m,
        "get_all_runner_status",
        |ctx, NoParams {}| async move { Ok(ctx.supervisor.all_runner_status().await) },
    );
    register(&mut m, "start_all", |ctx, NoParams {}| async move {
        Ok(ctx.supervisor.start_all().await)
    });
    register(&mut m, "stop_all", |ctx, NoParams {}| async move {
        Ok(ctx.supervisor.stop_all().await)
    });
    register(&mut m, "get_all_status", |ctx, NoParams {}| async move {
        Ok(ctx.supervisor.status().await)
    });
    register(&mut m, "get_fleet", |ctx, NoParams {}| async move {
        ctx.supervisor.fleet().await
    });
    register(&mut m, "generate_keypair", |ctx, NoParams {}| async move {
        ctx.supervisor.generate_keypair().await
    });
    // `whoami` needs the caller, which `register` keeps to itself.
    let spec: &'static MethodSpec = method("whoami").expect("listed");
    m.register_method(spec.name, move |params, _ctx, ext| {
        let caller = caller(ext);
        caller.allow(spec.scope, spec.name).map_err(to_rpc_error)?;
        let NoParams {} = parse(&params, spec)?;
        Ok::<_, ErrorObjectOwned>(Whoami {
            scope: caller.scope().map_or("none", Scope::as_str),
            secrets_configured: caller != Caller::Open,
        })
    })
    .expect("method names are unique");
    let spec: &'static MethodSpec = method(SUBSCRIBE_LOGS).expect("listed");
    m.register_subscription(
        SUBSCRIBE_LOGS,
        LOG_NOTIFICATION,
        UNSUBSCRIBE_LOGS,
        move |params, pending, ctx, ext| async move {
            if let Err(e) = caller(&ext).allow(spec.scope, spec.name) {
                pending.reject(to_rpc_error(e)).await;
                return Ok(());
            }
            let p: NameParams = match parse(&params, spec) {
                Ok(p) => p,
                Err(e) => {
                    pending.reject(e).await;
                    return Ok(());
                }
            };
            let mut lines = match ctx.supervisor.follow_runner_logs(&p.name).await {
                Ok(rx) => rx,
                Err(e) => {
                    pending.reject(to_rpc_error(e)).await;
                    return Ok(());
                }
            };
            let sink = pending.accept().await?;
            loop {
                tokio::select! {
                    _ = sink.closed() => break,
                    line = lines.recv() => {
                        let Some(line) = line else { break };
                        let msg: SubscriptionMessage = serde_json::value::to_raw_value(&line)?.into();
                        if sink.send(msg).await.is_err() {
                            break;
                        }
                    }
                }
            }
            Ok(())
        },
    )
    .expect("subscription names are unique");
    m
}

/// The HTTP layers in front of the API, outermost first: who is calling
/// and from where ([`AuthLayer`]), then the console's files
/// ([`ConsoleLayer`]).
type HttpLayers = tower::layer::util::Stack<
    ConsoleLayer,
    tower::layer::util::Stack<AuthLayer, tower::layer::util::Identity>,
>;

/// A bound, not yet serving, API server.
#[derive(Debug)]
pub struct BoundServer {
    server: Server<HttpLayers>,
    local_addr: SocketAddr,
}

/// Checks the bind policy and binds: with no secrets only a loopback
/// address is allowed (anyone who reaches the port would be admin).
pub async fn bind(addr: SocketAddr, secrets: Secrets) -> Result<BoundServer, SupervisorError> {
    if secrets.is_empty() {
        if !addr.ip().is_loopback() {
            return Err(SupervisorError::Config(format!(
                "refusing to listen on {addr} without secrets: anyone who reaches it could run scripts on every circle; configure secrets (--secrets-file, or SUPERVISOR_ADMIN_SECRETS) or bind 127.0.0.1"
            )));
        }
        tracing::warn!(
            "no secrets configured: every caller is admin; listening on loopback ({addr}) only"
        );
    }
    let middleware = tower::ServiceBuilder::new()
        .layer(AuthLayer::new(secrets))
        .layer(ConsoleLayer);
    let config = jsonrpsee::server::ServerConfig::builder()
        .max_request_body_size(MAX_REQUEST_BODY)
        .max_connections(MAX_CONNECTIONS)
        .build();
    let server = Server::builder()
        .set_config(config)
        .set_http_middleware(middleware)
        .build(addr)
        .await
        .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                " (is another supervisor running? pick another --port)"
            } else {
                ""
            };
            SupervisorError::Config(format!("cannot listen on {addr}: {e}{hint}"))
        })?;
    let local_addr = server
        .local_addr()
        .map_err(|e| SupervisorError::io("reading the bound address", e))?;
    Ok(BoundServer { server, local_addr })
}

impl BoundServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts serving `supervisor`.
    pub fn start(self, supervisor: Arc<Supervisor>) -> ServerHandle {
        self.server.start(module(supervisor))
    }
}

/// The method names the server registers for `supervisor`, as jsonrpsee
/// knows them (the table's, plus the unsubscribe method), for the check
/// against the OpenRPC document.
pub fn served_method_names(supervisor: Arc<Supervisor>) -> Vec<String> {
    module(supervisor)
        .method_names()
        .map(str::to_string)
        .collect()
}
