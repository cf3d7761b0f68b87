//! The receiving side of the readiness protocol: a private `NOTIFY_SOCKET`
//! per child on which it sends `READY=1` — what systemd does for
//! `Type=notify` services, so programs (which send with the `sd-notify`
//! crate) have one readiness path for both.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::UnixDatagram;

/// Environment variable naming the socket a program sends `READY=1` to.
pub const ENV_NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A datagram socket in a fresh private directory (mode 0700, so no other
/// user can send on it); the directory is removed on drop.
#[derive(Debug)]
pub struct NotifySocket {
    dir: PathBuf,
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    /// Makes the directory under the system temp dir and binds the socket.
    /// (Socket paths are limited to ~100 bytes, so not under a long data dir.)
    pub fn bind() -> std::io::Result<Self> {
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
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&dir)?;
        let path = dir.join("notify.sock");
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
        if gone && cfg!(target_os = "linux") {
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
        for d in [&dead, &alive, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        remove_stale_dirs(&tmp);
        assert!(!dead.exists());
        assert!(alive.exists() && other.exists());
        std::fs::remove_dir_all(&tmp).unwrap();
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
