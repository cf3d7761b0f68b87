//! Who gets a connection: the server's caps on open connections, overall
//! and per client address, and the deadline for the HTTP handshake.
//!
//! Without them a stranger holds the server with sockets that never speak
//! (or drip their headers a byte at a time): every one is a file descriptor,
//! and once the process runs out, `accept` fails for everybody. So the
//! listener is wrapped ([`GuardedListener`]):
//!
//! - a connection over a cap is answered `503 Service Unavailable` at once,
//!   with a single non-blocking write, and closed — it costs no task, no
//!   buffer and no time; the caps sit well below the descriptor limit, so
//!   `accept` itself keeps working;
//! - every admitted connection carries a [`Permit`] that gives its place
//!   back when the socket is dropped, however the connection ends;
//! - until it has upgraded to a WebSocket, a connection must finish within
//!   the handshake timeout: reads after the deadline fail, and hyper closes
//!   it. Once upgraded, the WebSocket's own ping/idle timeout takes over
//!   (see `connection.rs`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// The answer to a connection over a cap; short enough for one write into
/// an empty socket buffer.
const OVER_CAPACITY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 38\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections; try again later\n";

/// Caps on open connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once, from everybody.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_per_ip: usize,
    /// Time from accept to a completed WebSocket upgrade.
    pub handshake_timeout: Duration,
}

/// Counts open connections against [`ConnectionLimits`].
#[derive(Debug)]
pub(crate) struct Admission {
    limits: ConnectionLimits,
    open: Mutex<OpenConnections>,
    /// Connections closed since [`Admission::take_closed_count`] last ran.
    closed: AtomicUsize,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Admission {
    pub(crate) fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::new(OpenConnections::default()),
            closed: AtomicUsize::new(0),
        })
    }

    /// A place for a connection from `ip`, or `None` when a cap is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let mut open = self.open.lock().expect("admission lock");
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        if open.total >= self.limits.max_connections || from_ip >= self.limits.max_per_ip {
            return None;
        }
        open.total += 1;
        open.per_ip.insert(ip, from_ip + 1);
        Some(Permit {
            admission: Arc::clone(self),
            ip,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    pub(crate) fn open_connections(&self) -> usize {
        self.open.lock().expect("admission lock").total
    }

    /// Connections closed since the last call.
    pub(crate) fn take_closed_count(&self) -> usize {
        self.closed.swap(0, Ordering::Relaxed)
    }
}

/// One admitted connection's place; given back on drop.
#[derive(Debug)]
pub(crate) struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.closed.fetch_add(1, Ordering::Relaxed);
        let mut open = self.admission.open.lock().expect("admission lock");
        open.total -= 1;
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

/// `play` calls one client network (an IPv4 address, an IPv6 /64) may have
/// in flight over all its connections. Each waiting play holds one of the
/// dispatcher's blocking waits (1,000 for the whole server), so without a
/// share one address with many connections took them all and stalled the
/// plays of every other circle and client. A quarter of them: a batch
/// client may well run a few hundred plays at once.
pub(crate) const MAX_PLAYS_PER_NETWORK: usize = 256;
/// Plays in flight per client network.
#[derive(Debug, Default)]
pub(crate) struct PlayShares(Mutex<HashMap<IpAddr, usize>>);

/// One play counted against its client network's share, given back when
/// dropped (the play ended, or was aborted with its connection).
pub(crate) struct PlayShare {
    shares: Arc<PlayShares>,
    network: IpAddr,
}

impl PlayShare {
    /// Counts a play of a client at `ip`, unless its network has
    /// [`MAX_PLAYS_PER_NETWORK`] in flight already.
    pub(crate) fn take(shares: &Arc<PlayShares>, ip: IpAddr) -> Option<Self> {
        let network = crate::auth::client_network(ip);
        let mut counts = shares.0.lock().expect("play shares");
        let count = counts.entry(network).or_insert(0);
        if *count >= MAX_PLAYS_PER_NETWORK {
            return None;
        }
        *count += 1;
        Some(Self {
            shares: Arc::clone(shares),
            network,
        })
    }
}

impl Drop for PlayShare {
    fn drop(&mut self) {
        let mut counts = self.shares.0.lock().expect("play shares");
        if let Some(count) = counts.get_mut(&self.network) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.network);
            }
        }
    }
}

/// A TCP listener that applies [`Admission`]; see the module docs.
#[derive(Debug)]
pub(crate) struct GuardedListener {
    listener: TcpListener,
    admission: Arc<Admission>,
}

impl GuardedListener {
    pub(crate) fn new(listener: TcpListener, admission: Arc<Admission>) -> Self {
        Self {
            listener,
            admission,
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or memory: the caps should prevent
                    // it; if not, do not spin on it.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(permit) = self.admission.admit(addr.ip()) else {
                tracing::debug!(peer = %addr, "connection refused: too many open connections");
                // Best effort, never waiting: a full buffer just means no
                // explanation before the close.
                let _ = stream.try_write(OVER_CAPACITY_RESPONSE);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let io = GuardedStream {
                stream,
                _permit: permit,
                handshake_deadline: Some(Box::pin(tokio::time::sleep(
                    self.admission.limits.handshake_timeout,
                ))),
                upgraded: Arc::new(AtomicBool::new(false)),
            };
            return (io, addr);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// An admitted connection: the socket, its place, and its handshake deadline.
#[derive(Debug)]
pub(crate) struct GuardedStream {
    stream: TcpStream,
    _permit: Permit,
    /// Until the upgrade; `None` once upgraded.
    handshake_deadline: Option<Pin<Box<Sleep>>>,
    /// Raised by the upgrade handler (through [`ClientInfo`]).
    upgraded: Arc<AtomicBool>,
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.upgraded.load(Ordering::Relaxed) {
            self.handshake_deadline = None;
        }
        if let Some(deadline) = self.handshake_deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no WebSocket upgrade within the handshake timeout",
            )));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// What a handler knows of its client: the address, and the switch that
/// lifts the handshake deadline once the connection is a WebSocket.
#[derive(Debug, Clone)]
pub(crate) struct ClientInfo {
    pub(crate) addr: SocketAddr,
    upgraded: Arc<AtomicBool>,
}

impl ClientInfo {
    /// Lifts the handshake deadline: the connection is a WebSocket now.
    pub(crate) fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }
}

impl Connected<IncomingStream<'_, GuardedListener>> for ClientInfo {
    fn connect_info(stream: IncomingStream<'_, GuardedListener>) -> Self {
        Self {
            addr: *stream.remote_addr(),
            upgraded: Arc::clone(&stream.io().upgraded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_overall_and_per_address_and_permits_give_places_back() {
        let admission = Admission::new(ConnectionLimits {
            max_connections: 3,
            max_per_ip: 2,
            handshake_timeout: Duration::from_secs(1),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = admission.admit(a).unwrap();
        let _a2 = admission.admit(a).unwrap();
        assert!(admission.admit(a).is_none(), "per-address cap");
        let b1 = admission.admit(b).unwrap();
        assert!(admission.admit(b).is_none(), "overall cap");
        assert_eq!(admission.open_connections(), 3);
        drop(b1);
        drop(a1);
        assert_eq!(admission.open_connections(), 1);
        let _a3 = admission.admit(a).unwrap();
        let _b2 = admission.admit(b).unwrap();
    }

    #[test]
    fn the_refusal_is_a_well_formed_http_response() {
        let text = std::str::from_utf8(OVER_CAPACITY_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );
    }
}
