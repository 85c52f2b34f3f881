//! The data plane's Pingora service: tollgate accepts on its cleartext HTTP/1 listeners
//! itself, and leaves TLS listeners (and every listener of an h2c service) to Pingora's.
//!
//! Why: Pingora's listener spawns one task per connection whose future is sized for a TLS
//! handshake and lives as long as the connection, and hands the app a boxed `l4::Stream`
//! built at accept; an idle keep-alive connection kept all of it (`examples/conn_memory.rs`).
//! Our accept loop spawns a task that holds only the socket between requests.
//!
//! The listening sockets keep Pingora's contract for graceful upgrades: each is looked up by
//! its address string in the fd table Pingora hands every service (filled from the old
//! process on `--upgrade`), or bound as Pingora binds (SO_REUSEADDR, backlog 65,535, retried
//! while the address is in use) and entered in that table, so a SIGQUIT hands it to the next
//! process with Pingora's own. On shutdown the accept loops stop and close their sockets;
//! connections then end as `plain.rs` says.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::Stream;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::listening::Service as Listening;
use pingora::services::Service;
use tokio::net::{TcpListener, TcpSocket};

use super::park::Lot;
use super::{Gate, Serve};

/// What Pingora passes `listen(2)` (`pingora_core::listeners::l4::LISTENER_BACKLOG`); the
/// kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 65535;
/// How long Pingora keeps trying a bind whose address is in use (a previous process still
/// closing), one try a second.
const BIND_TRIES: usize = 30;

/// One data-plane service: `gate` serves the connections of its own listeners (`plain`)
/// and of Pingora's (`pingora`).
pub struct Front<A, S> {
    name: String,
    gate: Arc<Gate<A, S>>,
    plain: Vec<String>,
    pingora: Option<Listening<Shared<A, S>>>,
}

impl<A, S> Front<A, S> {
    pub fn new(name: &str, gate: Gate<A, S>) -> Self {
        Front {
            name: name.to_owned(),
            gate: Arc::new(gate),
            plain: Vec::new(),
            pingora: None,
        }
    }

    /// Accept on `addr` (`IP:port`, as the config writes it) in tollgate's loop.
    pub fn add_plain(&mut self, addr: &str) {
        self.plain.push(addr.to_owned());
    }

    /// Pingora's listening service, for the listeners tollgate does not accept on itself.
    pub fn pingora(&mut self) -> &mut Listening<Shared<A, S>> {
        let gate = self.gate.clone();
        let name = self.name.clone();
        self.pingora
            .get_or_insert_with(|| Listening::new(name, Shared(gate)))
    }
}

/// The [`Gate`] as Pingora's listening service holds it: shared with our accept loops.
pub struct Shared<A, S>(Arc<Gate<A, S>>);

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static, S: Serve> ServerApp for Shared<A, S> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.0.process_new(stream, shutdown).await
    }

    // `Front` cleans up once, after both kinds of listener stopped.
    async fn cleanup(&self) {}
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static, S: Serve> Service for Front<A, S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let mut loops = Vec::new();
        if !self.plain.is_empty() {
            // Where this service's long-idle cleartext connections wait (`park.rs`).
            let lot = match super::park::Lot::new() {
                Ok(lot) => Arc::new(lot),
                Err(e) => {
                    panic!("Failed to build listeners: no epoll set for idle connections: {e}")
                }
            };
            tokio::spawn(super::park::watch(
                lot.clone(),
                self.gate.clone(),
                shutdown.clone(),
            ));
            for addr in &self.plain {
                let listener = match listen(addr, fds.as_ref()).await {
                    Ok(l) => Arc::new(l),
                    // What Pingora's listening service does with a listener it cannot build.
                    Err(e) => panic!("Failed to build listeners: cannot listen on {addr}: {e}"),
                };
                for _ in 0..listeners_per_fd.max(1) {
                    let (gate, lot, shutdown) = (self.gate.clone(), lot.clone(), shutdown.clone());
                    let (listener, addr) = (listener.clone(), addr.clone());
                    let accepting = accept_loop(listener, addr, gate, lot, shutdown);
                    loops.push(tokio::spawn(accepting));
                }
            }
        }
        let pingora = async {
            if let Some(p) = self.pingora.as_mut() {
                p.start_service(fds, shutdown.clone(), listeners_per_fd)
                    .await;
            }
        };
        futures::join!(futures::future::join_all(loops), pingora);
        self.gate.cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        let mut all = self.plain.clone();
        if let Some(p) = &self.pingora {
            all.extend(p.listen_addresses()?);
        }
        Some(all)
    }
}

/// The socket inherited for `addr` from the previous process, else a new one (entered in
/// the table for the next).
async fn listen(addr: &str, fds: Option<&ListenFds>) -> std::io::Result<TcpListener> {
    let Some(fds) = fds else {
        return bind(addr).await;
    };
    let inherited = fds.lock().get(addr).copied();
    if let Some(fd) = inherited {
        // SAFETY: the fd table hands each inherited listening socket to the one service
        // whose listener has its address; nothing else owns or closes it.
        let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        return TcpSocket::from_std_stream(std).listen(BACKLOG);
    }
    let listener = bind(addr).await?;
    fds.lock().add(addr.to_owned(), listener.as_raw_fd());
    Ok(listener)
}

async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut tries = 0;
    loop {
        let socket = match sa {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(sa) {
            Ok(()) => return socket.listen(BACKLOG),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries + 1 < BIND_TRIES => {
                tries += 1;
                log::warn!("{addr} is in use, will try again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Accept until the server shuts down, one task per connection ([`super::plain::serve`]).
async fn accept_loop<A, S>(
    listener: Arc<TcpListener>,
    addr: String,
    gate: Arc<Gate<A, S>>,
    lot: Arc<Lot>,
    mut shutdown: ShutdownWatch,
) where
    A: HttpServerApp + Send + Sync + 'static,
    S: Serve,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = shutdown.changed() => match changed {
                // The initial value, not a shutdown.
                Ok(()) if !*shutdown.borrow() => continue,
                _ => break,
            },
        };
        match accepted {
            Ok((tcp, peer)) => {
                let conn =
                    super::plain::serve(gate.clone(), lot.clone(), tcp, peer, shutdown.clone());
                // On a random worker thread, as Pingora's listener does: with tollgate's
                // default one runtime per thread (no work stealing), `tokio::spawn` would keep
                // every connection on the thread that accepted it.
                pingora_runtime::current_handle().spawn(conn);
            }
            Err(e) => {
                log::error!("Accept() failed {e}");
                // Out of file descriptors: accept() fails at once until some close, so wait
                // instead of spinning (as Pingora does).
                if e.raw_os_error() == Some(libc::EMFILE) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    log::info!("Shutting down {addr}");
}
