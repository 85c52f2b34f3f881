//! systemd's service notifications (`sd_notify(3)`, `Type=notify`): `READY=1` once the
//! listeners are bound and the first health-check round has run, `RELOADING=1` when an upgrade
//! hand-over begins, `STOPPING=1` on SIGTERM / SIGINT, `MAINPID=` from the process that took
//! over, and `WATCHDOG=1` at half of `WATCHDOG_USEC`.
//!
//! The protocol is a datagram of `KEY=VALUE` lines to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Without that variable
//! nothing here runs: no service is added, no signal handler changes, no socket is made.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{
    ShutdownSignal, ShutdownSignalWatch, ShutdownWatch, UnixShutdownSignalWatch,
};
use pingora::services::background::BackgroundService;

use crate::upstream::health::FirstRound;

/// Where notifications go: the service manager's socket, from `$NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct Notifier {
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` names, or `None` when unset, empty or unusable (then
    /// the process is not supervised this way and sends nothing).
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        let name = name.to_str()?;
        Notifier::at(name)
            .map_err(|e| log::warn!("NOTIFY_SOCKET={name:?} is unusable ({e}): not notifying"))
            .ok()
    }

    /// A notifier for the socket `name`: a filesystem path, or `@name` for an abstract one.
    pub fn at(name: &str) -> io::Result<Notifier> {
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes())?
            }
            None if name.starts_with('/') => SocketAddr::from_pathname(Path::new(name))?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "neither an absolute path nor @abstract",
                ))
            }
        };
        Ok(Notifier { addr })
    }

    /// Send one message (`KEY=VALUE` lines). A fresh unbound socket each time: messages are
    /// rare, and no descriptor is held across Pingora's daemonizing fork.
    pub fn send(&self, message: &str) -> io::Result<()> {
        UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &self.addr)?;
        Ok(())
    }

    /// Send, logging (not failing) when the manager cannot be reached.
    pub fn tell(&self, message: &str) {
        if let Err(e) = self.send(message) {
            log::warn!(
                "cannot notify the service manager ({:?}): {e}",
                first_line(message)
            );
        }
    }

    /// `READY=1`, with this process's pid as `MAINPID` (after an upgrade, the pid systemd must
    /// follow; otherwise the one it started).
    pub fn ready(&self) {
        self.tell(&format!(
            "MAINPID={}\nREADY=1\nSTATUS=serving",
            std::process::id()
        ));
    }

    /// `RELOADING=1` with the CLOCK_MONOTONIC time the reload began.
    pub fn reloading(&self) {
        self.tell(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=handing over to the new process",
            crate::clock::mono_nanos() / 1000
        ));
    }

    pub fn stopping(&self) {
        self.tell("STOPPING=1\nSTATUS=draining");
    }
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or_default()
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when set for this process
/// (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str()?.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Pingora's own signal handling (SIGQUIT upgrade, SIGTERM drain, SIGINT quit), telling the
/// service manager first. The old process of an upgrade says `RELOADING=1` and never
/// `STOPPING=1`: under `NotifyAccess=all` systemd reads `STOPPING=1` from any process of the
/// unit as the whole service stopping, which would stop the new process too.
pub struct Announcing(pub Arc<Notifier>);

#[async_trait]
impl ShutdownSignalWatch for Announcing {
    async fn recv(&self) -> ShutdownSignal {
        let signal = UnixShutdownSignalWatch.recv().await;
        match signal {
            ShutdownSignal::GracefulUpgrade => self.0.reloading(),
            ShutdownSignal::GracefulTerminate | ShutdownSignal::FastShutdown => self.0.stopping(),
        }
        signal
    }
}

/// The background service that says `MAINPID=` at once and `READY=1` once this process serves:
/// every listening address is bound by this process (or was handed over to it), and every
/// upstream with a `health_check` has been probed once. It keeps the watchdog fed from the
/// start until shutdown begins.
pub struct Readiness {
    pub notifier: Arc<Notifier>,
    /// `IP:port` of every listener, the admin one included.
    pub listen: Vec<String>,
    pub health: Option<FirstRound>,
    pub watchdog: Option<Duration>,
}

/// How often the listening sockets are looked for while the services bind them.
const BIND_POLL: Duration = Duration::from_millis(10);

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // At once: after an upgrade this process holds the sockets already, and systemd must
        // follow it before the old one exits, however long the first health checks take.
        self.notifier
            .tell(&format!("MAINPID={}", std::process::id()));
        if let Some(every) = self.watchdog {
            let (notifier, mut shutdown) = (self.notifier.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    notifier.tell("WATCHDOG=1");
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            });
        }
        let ports: Vec<u16> = self
            .listen
            .iter()
            .filter_map(|a| a.rsplit(':').next()?.parse().ok())
            .collect();
        let ready = async {
            while !listening_on_all(&ports) {
                tokio::time::sleep(BIND_POLL).await;
            }
            if let Some(first) = &self.health {
                first.wait().await;
            }
        };
        tokio::select! {
            _ = ready => self.notifier.ready(),
            _ = shutdown.changed() => {}
        }
    }
}

/// Whether this process holds a listening TCP socket on each of `ports`: its socket inodes
/// against the LISTEN entries of /proc/net/tcp and tcp6. Without a readable /proc it cannot
/// tell, and says yes rather than hold `READY=1` back until systemd's start timeout.
pub fn listening_on_all(ports: &[u16]) -> bool {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return true;
    };
    let ours: Vec<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?;
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut found = Vec::new();
    let tables: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .collect();
    if tables.is_empty() {
        return true;
    }
    for text in &tables {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local address (hex IP:port), state (0A: LISTEN), inode
            if f.len() > 9 && f[3] == "0A" && ours.iter().any(|i| i == f[9]) {
                if let Some(port) = f[1].rsplit(':').next() {
                    if let Ok(p) = u16::from_str_radix(port, 16) {
                        found.push(p);
                    }
                }
            }
        }
    }
    ports.iter().all(|p| found.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        Notifier::at(path.to_str().unwrap())
            .unwrap()
            .send("READY=1")
            .unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("tollgate-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        Notifier::at(&format!("@{name}"))
            .unwrap()
            .send("STOPPING=1")
            .unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn refuses_a_relative_name() {
        assert!(Notifier::at("notify.sock").is_err());
        assert!(Notifier::at("").is_err());
    }

    #[test]
    fn sees_its_own_listener_and_not_a_free_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening_on_all(&[port]));
        drop(l);
        assert!(!listening_on_all(&[port]));
    }
}
