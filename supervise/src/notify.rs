//! The receiving side of the readiness protocol: children send `READY=1`
//! on the socket named in `NOTIFY_SOCKET` — what systemd does for
//! `Type=notify` services, so programs (which send with the `sd-notify`
//! crate) have one readiness path for both.
//!
//! On Linux every child of a process reports on one socket
//! ([`SharedNotify`]), as systemd's own children do: the kernel attaches
//! the sender's PID to each datagram, so a `READY=1` counts for the child
//! that sent it and for no other (what systemd calls `NotifyAccess=main`).
//! A socket per child would cost a directory, a socket file and a
//! descriptor for each — measured at 1,000 circles, creating those inodes
//! and closing the inherited descriptors in every new child took a third of
//! the launcher's start-up CPU. Where the kernel does not say who sent a
//! datagram, each child gets its own [`NotifySocket`]; [`ReadyListener`]
//! picks.

#[cfg(target_os = "linux")]
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(target_os = "linux")]
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UnixDatagram;
#[cfg(target_os = "linux")]
use tokio::sync::oneshot;

/// Environment variable naming the socket a program sends `READY=1` to.
pub const ENV_NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Where the children of one supervision report readiness, and how it is
/// heard: the process's [`SharedNotify`] on Linux, a socket of the child's
/// own elsewhere.
#[derive(Debug)]
pub enum ReadyListener {
    /// One socket for every child of the process, routed by sender PID.
    #[cfg(target_os = "linux")]
    Shared(Arc<SharedNotify>),
    /// A socket for this child alone.
    Own(NotifySocket),
}

impl ReadyListener {
    /// The listener for one more child.
    pub fn new() -> std::io::Result<Self> {
        #[cfg(target_os = "linux")]
        return SharedNotify::get().map(Self::Shared);
        #[cfg(not(target_os = "linux"))]
        return NotifySocket::bind().map(Self::Own);
    }

    /// The socket's path, for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        match self {
            #[cfg(target_os = "linux")]
            Self::Shared(shared) => shared.path(),
            Self::Own(own) => own.path(),
        }
    }

    /// Call right before spawning; pass what it returns to [`Self::ready`].
    /// Messages of earlier processes do not count after it: a socket of the
    /// child's own is emptied, the shared one compares times.
    pub fn before_spawn(&self) -> Instant {
        match self {
            #[cfg(target_os = "linux")]
            Self::Shared(_) => {}
            Self::Own(own) => own.drain(),
        }
        Instant::now()
    }

    /// Resolves once the process `pid`, spawned after `spawned`
    /// ([`Self::before_spawn`]), has sent `READY=1`. Never resolves if the
    /// socket fails: the caller's timeout decides.
    pub async fn ready(&self, pid: u32, spawned: Instant) {
        match self {
            #[cfg(target_os = "linux")]
            Self::Shared(shared) => shared.ready(pid, spawned).await,
            Self::Own(own) => {
                let _ = (pid, spawned);
                own.ready().await
            }
        }
    }
}

/// A fresh private directory under the system temp dir (mode 0700, so no
/// other user can reach a socket in it). Socket paths are limited to ~100
/// bytes, so not under a long data dir.
fn private_dir() -> std::io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(|| remove_stale_dirs(&std::env::temp_dir()));
    let dir = std::env::temp_dir().join(format!(
        "{DIR_PREFIX}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    // A leftover from a process that had our PID before.
    let _ = std::fs::remove_dir_all(&dir);
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&dir)?;
    Ok(dir)
}

/// The name of the socket in its private directory.
const SOCKET_NAME: &str = "notify.sock";

/// A datagram socket in a fresh private directory (mode 0700, so no other
/// user can send on it); the directory is removed on drop.
#[derive(Debug)]
pub struct NotifySocket {
    dir: PathBuf,
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    /// Makes the directory and binds the socket.
    pub fn bind() -> std::io::Result<Self> {
        let dir = private_dir()?;
        let path = dir.join(SOCKET_NAME);
        match UnixDatagram::bind(&path) {
            Ok(socket) => Ok(Self { dir, path, socket }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// The socket's path, for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Drops messages left from an earlier process.
    pub fn drain(&self) {
        let mut buf = [0u8; 4096];
        while self.socket.try_recv(&mut buf).is_ok() {}
    }

    /// Resolves when a datagram with a `READY=1` line arrives. Other
    /// messages (`STATUS=…`, `MAINPID=…`) are read and ignored. A socket
    /// error never resolves it: the caller's timeout decides.
    pub async fn ready(&self) {
        let mut buf = vec![0u8; 4096];
        loop {
            match self.socket.recv(&mut buf).await {
                Ok(n) if is_ready_message(&buf[..n]) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(socket = %self.path.display(), "notify socket: {e}");
                    return std::future::pending().await;
                }
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The one notify socket of this process (Linux): every supervised child
/// sends to it, and a thread of its own reads it and hands each `READY=1` to
/// whoever waits for the PID that sent it. A thread, not a task: children
/// are supervised from whatever tokio runtime spawned them, and the socket
/// must outlive any one of them. It lives while some supervision holds it;
/// the last one to let go removes the directory and ends the thread.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct SharedNotify {
    dir: PathBuf,
    path: PathBuf,
    routes: Arc<Mutex<Routes>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The socket the thread reads, to shut it down (which wakes the thread)
    /// when the last holder lets go.
    socket: std::os::unix::net::UnixDatagram,
    /// Held locked while the directory is in use, so the sweep of another
    /// process — one that cannot see our PID, in another PID namespace
    /// sharing the temp dir — leaves the directory alone.
    _lock: std::fs::File,
}

/// `READY=1`s heard from PIDs nobody waits for yet, kept at most: a child
/// may report before its supervisor has registered its PID. Beyond this the
/// oldest are forgotten (only this user's processes can send here).
#[cfg(target_os = "linux")]
const MAX_EARLY: usize = 1024;

/// Who waits for which PID, and what came before anyone waited.
#[cfg(target_os = "linux")]
#[derive(Debug, Default)]
struct Routes {
    /// PID → (registration number, waiter).
    waiting: HashMap<u32, (u64, oneshot::Sender<()>)>,
    early: VecDeque<(u32, Instant)>,
    registrations: u64,
}

#[cfg(target_os = "linux")]
impl Routes {
    fn heard_ready(&mut self, pid: u32, at: Instant) {
        if let Some((_, waiter)) = self.waiting.remove(&pid) {
            let _ = waiter.send(());
            return;
        }
        if self.early.len() == MAX_EARLY {
            self.early.pop_front();
        }
        self.early.push_back((pid, at));
    }

    /// A receiver that resolves on `pid`'s `READY=1`, and the number of this
    /// registration (for [`Self::forget`]); one already heard counts if it
    /// came after `since` (before it, it was an earlier process's that had
    /// the same PID).
    fn expect(&mut self, pid: u32, since: Instant) -> (u64, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        self.registrations += 1;
        match self
            .early
            .iter()
            .position(|&(p, at)| p == pid && at >= since)
        {
            Some(i) => {
                self.early.remove(i);
                let _ = tx.send(());
            }
            None => {
                self.waiting.insert(pid, (self.registrations, tx));
            }
        }
        (self.registrations, rx)
    }

    /// Stops waiting for `pid` — if the waiter is still registration
    /// `number`, not a later child's that got the same PID.
    fn forget(&mut self, pid: u32, number: u64) {
        if self.waiting.get(&pid).is_some_and(|(n, _)| *n == number) {
            self.waiting.remove(&pid);
        }
    }
}

#[cfg(target_os = "linux")]
impl SharedNotify {
    /// The process's shared socket, bound on first use.
    pub fn get() -> std::io::Result<Arc<Self>> {
        static CURRENT: Mutex<std::sync::Weak<SharedNotify>> = Mutex::new(std::sync::Weak::new());
        let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = current.upgrade() {
            return Ok(shared);
        }
        let shared = Arc::new(Self::bind()?);
        *current = Arc::downgrade(&shared);
        Ok(shared)
    }

    fn bind() -> std::io::Result<Self> {
        let dir = private_dir()?;
        let cleanup = |e: std::io::Error| {
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        let lock = lock_dir(&dir).map_err(cleanup)?;
        let path = dir.join(SOCKET_NAME);
        let socket = std::os::unix::net::UnixDatagram::bind(&path).map_err(cleanup)?;
        // The kernel then attaches the sender's credentials to every
        // datagram, whether or not the sender sends them.
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::PassCred, &true)
            .map_err(|e| cleanup(e.into()))?;
        let reader = socket.try_clone().map_err(cleanup)?;
        let routes = Arc::new(Mutex::new(Routes::default()));
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (thread_routes, thread_stopping) = (routes.clone(), stopping.clone());
        std::thread::Builder::new()
            .name("notify".into())
            .spawn(move || receive(&reader, &thread_routes, &thread_stopping))
            .map_err(cleanup)?;
        Ok(Self {
            dir,
            path,
            routes,
            stopping,
            socket,
            _lock: lock,
        })
    }

    /// The socket's path, for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolves once process `pid`, spawned after `since`, sent `READY=1`.
    pub async fn ready(&self, pid: u32, since: Instant) {
        let (number, heard) = self.lock().expect(pid, since);
        // Deregisters when the caller stops waiting (timeout, exit, stop).
        struct Waiting<'a>(&'a SharedNotify, u32, u64);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.lock().forget(self.1, self.2);
            }
        }
        let _waiting = Waiting(self, pid, number);
        if heard.await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(target_os = "linux")]
impl Drop for SharedNotify {
    fn drop(&mut self) {
        // Shutting the socket down wakes the thread, which sees `stopping`.
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Name of the lock file in a shared socket's directory.
const LOCK_NAME: &str = "lock";

/// Opens and locks `dir`'s lock file (see [`SharedNotify::_lock`]).
#[cfg(target_os = "linux")]
fn lock_dir(dir: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::File::create(dir.join(LOCK_NAME))?;
    file.try_lock()
        .map_err(|e| std::io::Error::other(format!("cannot lock {}: {e}", dir.display())))?;
    Ok(file)
}

/// Whether another process holds `dir`'s lock file (a directory without one
/// is a per-child socket's, or an older version's: not held).
fn held_by_another(dir: &Path) -> bool {
    match std::fs::File::open(dir.join(LOCK_NAME)) {
        Ok(file) => matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// The shared socket's thread: reads datagrams until told to stop. A read
/// error is logged (once) and the reading goes on after a pause: a thread
/// that gave up would leave every later child of the process unready.
#[cfg(target_os = "linux")]
fn receive(
    socket: &std::os::unix::net::UnixDatagram,
    routes: &Mutex<Routes>,
    stopping: &std::sync::atomic::AtomicBool,
) {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; 4096];
    let mut control = nix::cmsg_space!(libc::ucred);
    let mut warned = false;
    loop {
        let received = {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            recvmsg::<()>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut control),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map(|msg| {
                let sender = msg.cmsgs().ok().and_then(|mut cmsgs| {
                    cmsgs.find_map(|cmsg| match cmsg {
                        ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
                        _ => None,
                    })
                });
                (msg.bytes, sender)
            })
        };
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        match received {
            // PID 0: a sender in a PID namespace we cannot see.
            Ok((bytes, Some(pid))) if pid > 0 => {
                if is_ready_message(&buf[..bytes.min(buf.len())]) {
                    routes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .heard_ready(pid as u32, Instant::now());
                }
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                if !warned {
                    tracing::warn!("notify socket: {e}; reading on");
                    warned = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// Notify directories are `<tmp>/circles-notify-<pid>-<n>`.
const DIR_PREFIX: &str = "circles-notify-";

/// Removes the notify directories of processes that are gone: a supervisor
/// killed by SIGKILL cannot remove its own.
fn remove_stale_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest
            .split_once('-')
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let gone = !Path::new(&format!("/proc/{pid}")).exists();
        if gone && cfg!(target_os = "linux") && !held_by_another(&entry.path()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether an `sd_notify` datagram says `READY=1` (one assignment per line).
pub fn is_ready_message(datagram: &[u8]) -> bool {
    String::from_utf8_lossy(datagram)
        .lines()
        .any(|l| l == "READY=1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_ready_line_counts() {
        assert!(is_ready_message(b"READY=1"));
        assert!(is_ready_message(b"STATUS=serving\nREADY=1\nMAINPID=4"));
        assert!(!is_ready_message(b"READY=0"));
        assert!(!is_ready_message(b"STATUS=READY=1"));
        assert!(!is_ready_message(b"STOPPING=1"));
    }

    #[test]
    fn directories_of_dead_processes_are_swept() {
        let tmp = std::env::temp_dir().join(format!("notify-sweep-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        // PID 4194304 is above Linux's maximum: never alive.
        let dead = tmp.join(format!("{DIR_PREFIX}4194304-0"));
        let alive = tmp.join(format!("{DIR_PREFIX}{}-0", std::process::id()));
        let other = tmp.join("circles-notify-AbCdEf");
        // A PID we cannot see (another PID namespace) whose owner holds the
        // directory's lock: in use, kept.
        let locked = tmp.join(format!("{DIR_PREFIX}4194303-0"));
        for d in [&dead, &alive, &other, &locked] {
            std::fs::create_dir_all(d).unwrap();
        }
        let lock = std::fs::File::create(locked.join("lock")).unwrap();
        lock.lock().unwrap();
        remove_stale_dirs(&tmp);
        assert!(!dead.exists());
        assert!(alive.exists() && other.exists());
        assert!(locked.exists(), "a held lock keeps the directory");
        drop(lock);
        remove_stale_dirs(&tmp);
        assert!(!locked.exists(), "once let go it is swept");
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_ready_heard_before_anyone_waits_counts_only_if_it_came_after_the_spawn() {
        let mut routes = Routes::default();
        let before = Instant::now();
        routes.heard_ready(42, Instant::now());
        let (stale_number, mut stale) = routes.expect(42, Instant::now());
        assert!(stale.try_recv().is_err(), "heard before this spawn");
        routes.forget(42, stale_number);
        let (_, mut early) = routes.expect(42, before);
        assert!(early.try_recv().is_ok(), "heard after the spawn");
        assert!(routes.early.is_empty(), "claimed once");
        let (_, mut waiting) = routes.expect(7, Instant::now());
        routes.heard_ready(8, Instant::now());
        assert!(waiting.try_recv().is_err(), "another PID's message");
        routes.heard_ready(7, Instant::now());
        assert!(waiting.try_recv().is_ok());
        for pid in 0..(MAX_EARLY as u32 + 10) {
            routes.heard_ready(1000 + pid, Instant::now());
        }
        assert_eq!(routes.early.len(), MAX_EARLY, "bounded");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_old_waiter_does_not_unregister_a_new_child_with_its_pid() {
        let mut routes = Routes::default();
        let (old, _old_rx) = routes.expect(42, Instant::now());
        // The old child is gone and its PID reused before its wait ended.
        let (_new, mut new_rx) = routes.expect(42, Instant::now());
        routes.forget(42, old);
        routes.heard_ready(42, Instant::now());
        assert!(new_rx.try_recv().is_ok(), "the new child is still heard");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_shared_socket_is_one_while_held_and_gone_when_let_go() {
        let first = SharedNotify::get().unwrap();
        let second = SharedNotify::get().unwrap();
        assert_eq!(first.path(), second.path());
        let dir = first.path().parent().unwrap().to_path_buf();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&dir).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
        // Our own READY=1 is heard as ours.
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let since = Instant::now();
        sender.send_to(b"READY=1", first.path()).unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            first.ready(std::process::id(), since),
        )
        .await
        .expect("READY=1 from this PID heard");
        drop((first, second));
        assert!(!dir.exists(), "removed with the last holder");
        let notify_threads = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "notify")
                })
                .count()
        };
        for _ in 0..100 {
            if notify_threads() == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(notify_threads(), 0, "the reading thread has ended");
        let again = SharedNotify::get().unwrap();
        assert_ne!(again.path().parent().unwrap(), dir);
    }

    #[tokio::test]
    async fn ready_resolves_on_ready_and_the_directory_is_private_and_removed() {
        let socket = NotifySocket::bind().unwrap();
        let dir = socket.path().parent().unwrap().to_path_buf();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&dir).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        sender.send_to(b"STATUS=x", socket.path()).unwrap();
        sender.send_to(b"READY=1", socket.path()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), socket.ready())
            .await
            .expect("READY=1 seen");
        drop(socket);
        assert!(!dir.exists());
    }
}
