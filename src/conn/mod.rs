//! Connection-level guards that Pingora's hooks cannot express, because they act before a
//! request exists: a total deadline for receiving each request head, and a cap on the open
//! connections of one client IP.
//!
//! [`Gate`] is the `ServerApp` in front of Pingora's HTTP app: it counts connections per
//! client IP (sharded counters touched on accept and close, never per request), wraps
//! every stream in [`Guarded`], and runs the HTTP/1 keep-alive loop itself.
//!
//! The stream itself, its head deadline and its tunnel idle timer, is in `guarded.rs`, its
//! write buffer in `coalesce.rs`; the keep-alive loop, which keeps idle connections small,
//! in `keepalive.rs`. Cleartext HTTP/1 listeners are accepted on by tollgate itself
//! (`accept.rs`), whose connections hold only their socket while idle (`plain.rs`), and after
//! a second idle not even a task (`park.rs`); TLS and h2c listeners stay Pingora's, and reach
//! the gate through `ServerApp::process_new`. On a `proxy_protocol` listener, each of these
//! paths reads the PROXY header first (`proxy_protocol.rs`), before the per-IP cap.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Shutdown, Stream};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

#[allow(unsafe_code)] // inherited listening sockets from their fds
mod accept;
mod coalesce;
mod frame;
mod guarded;
mod idle;
mod keepalive;
#[allow(unsafe_code)] // epoll(7)
mod park;
mod plain;
pub mod proxy_protocol;
mod screen;

pub use accept::Front;
pub use guarded::{idled, rearm, tunnel, EndOfHead, Guarded};
pub use idle::Idle;
pub use screen::Refusal;
// Test seams: what the connection layer decides of a head for Pingora's session
// (`tests/differential.rs`).
#[doc(hidden)]
pub use frame::Body as RequestBody;
#[doc(hidden)]
pub use screen::{screen, Screened};

const SHARDS: usize = 64;

/// Open connections per client IP, in shards so accepts on different threads rarely meet.
struct PerIp {
    max: u32,
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
    hasher: ahash::RandomState,
}

impl PerIp {
    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let mut h = self.hasher.build_hasher();
        ip.hash(&mut h);
        &self.shards[std::hash::Hasher::finish(&h) as usize % SHARDS]
    }

    /// Take a slot for `ip`, or `None` when it already holds `max` connections.
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut m = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            table: self.clone(),
            ip,
        })
    }
}

/// A held connection slot, given back when the connection's stream is dropped.
struct Slot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self
            .table
            .shard(&self.ip)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("Slot").field("ip", &self.ip).finish()
    }
}

/// The connection guards' settings (from the config's `limits` section).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub head_timeout: Duration,
    /// How long an HTTP/1 connection may sit between requests (`limits.keepalive_timeout`).
    pub keepalive_timeout: Duration,
    pub max_connections_per_ip: Option<u32>,
}

/// The guards' state, built once per process and shared by every service's [`Gate`], so the
/// per-IP cap counts a client's connections across all listeners.
#[derive(Clone)]
pub struct Guards {
    head_timeout: Duration,
    keepalive_timeout: Duration,
    per_ip: Option<Arc<PerIp>>,
}

impl Guards {
    pub fn new(limits: ConnLimits) -> Self {
        Guards {
            head_timeout: limits.head_timeout,
            keepalive_timeout: limits.keepalive_timeout,
            per_ip: limits.max_connections_per_ip.map(|max| {
                Arc::new(PerIp {
                    max,
                    shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                    hasher: ahash::RandomState::new(),
                })
            }),
        }
    }
}

/// A server of some HTTP/1 requests of its own, asked before Pingora's session is made
/// ([`crate::fastpath::h1::server`]), and the voice of every refusal made before there is one.
pub trait Serve: Send + Sync + 'static {
    /// Serve the request whose head is `head` (the bytes of one read), or leave it, and the
    /// connection, untouched. Owned, so a request it serves keeps its header values as
    /// slices of these very bytes, not of a copy.
    fn serve(
        &self,
        stream: &mut Stream,
        head: BytesMut,
        shutting_down: bool,
    ) -> impl Future<Output = Served> + Send;

    /// Answer a head refused before any session read it ([`screen`]); the connection ends
    /// after.
    fn refuse(&self, stream: &mut Stream, refusal: Refusal) -> impl Future<Output = ()> + Send;
}

/// What became of a request offered to a [`Serve`].
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    /// Not one it serves: Pingora gets the same bytes, handed back.
    NotMine(BytesMut),
    /// Answered; `reuse`: the connection can carry another request, whose first bytes
    /// `ahead` are when the client sent them with this one (pipelined).
    Done {
        reuse: bool,
        ahead: Option<BytesMut>,
    },
}

/// The [`Serve`] of a gate whose requests all go to Pingora, and whose refusals are silent.
pub struct PingoraOnly;

impl Serve for PingoraOnly {
    async fn serve(&self, _: &mut Stream, head: BytesMut, _: bool) -> Served {
        Served::NotMine(head)
    }

    async fn refuse(&self, _: &mut Stream, _: Refusal) {}
}

/// Pingora's HTTP app behind the connection guards, with tollgate's own HTTP/1 codec (`S`)
/// in front of it for the requests it serves.
pub struct Gate<A, S = PingoraOnly> {
    inner: Arc<A>,
    own: Option<S>,
    guards: Guards,
    /// Its listeners' connections start with a PROXY protocol header.
    proxy: Option<Arc<proxy_protocol::ProxyProtocol>>,
}

impl<A> Gate<A> {
    pub fn new(inner: A, guards: &Guards) -> Self {
        Gate {
            inner: Arc::new(inner),
            own: None,
            guards: guards.clone(),
            proxy: None,
        }
    }
}

impl<A, S> Gate<A, S> {
    /// `own` is offered every HTTP/1 request first.
    pub fn with_own(inner: A, own: S, guards: &Guards) -> Self {
        Gate {
            inner: Arc::new(inner),
            own: Some(own),
            guards: guards.clone(),
            proxy: None,
        }
    }

    /// Every connection of this gate's listeners starts with a PROXY protocol header. (Its
    /// TLS listeners read it before the handshake: [`proxy_protocol::PreTls`].)
    pub fn with_proxy_protocol(mut self, pp: Arc<proxy_protocol::ProxyProtocol>) -> Self {
        self.proxy = Some(pp);
        self
    }
}

impl<A, S> Gate<A, S> {
    /// A connection slot for a client at `ip` (none to take when there is no cap or no IP),
    /// or `Err` when it is at its cap.
    fn admit(&self, ip: Option<IpAddr>) -> Result<Option<Slot>, ()> {
        match (&self.guards.per_ip, ip) {
            (Some(table), Some(ip)) => table.acquire(ip).map(Some).ok_or(()),
            _ => Ok(None),
        }
    }

    fn own(&self) -> Option<&S> {
        self.own.as_ref()
    }
}

impl<A, S: Serve> Gate<A, S> {
    /// Refuse a connection over its address's cap, before reading anything of it: the JSON
    /// 503 (with `Retry-After`), an access-log line and a metric (the own server's voice of
    /// refusals), then close.
    async fn over_cap(&self, stream: &mut Stream) {
        match self.own() {
            Some(own) => {
                let refusal = Refusal {
                    reject: crate::error::Reject::Unavailable,
                    why: "too many open connections from your address".into(),
                    head_request: false,
                };
                own.refuse(stream, refusal).await;
            }
            None => {
                let _ = stream.write_all(&too_many()).await;
                let _ = stream.flush().await;
            }
        }
        Shutdown::shutdown(&mut **stream).await;
    }
}

/// The bytes a cleartext connection idle past `park::PARK_AFTER` keeps in its listener's
/// table of idle sockets, its entry (beside a deadline's 24 in a heap), for
/// `examples/conn_memory.rs`.
#[doc(hidden)]
pub fn parked_connection_size() -> usize {
    park::ENTRY_BYTES
}

/// The size of the future a connection of a cleartext listener (`accept.rs`) keeps in its
/// task while idle, for `examples/conn_memory.rs`.
#[doc(hidden)]
pub fn plain_connection_future_size<A, S>(
    gate: Gate<A, S>,
    tcp: tokio::net::TcpStream,
    shutdown: ShutdownWatch,
) -> usize
where
    A: HttpServerApp + Send + Sync + 'static,
    S: Serve,
{
    let peer = tcp.peer_addr().expect("peer address");
    let lot = Arc::new(park::Lot::new().expect("epoll"));
    std::mem::size_of_val(&plain::serve(Arc::new(gate), lot, tcp, peer, shutdown))
}

/// A cleartext stream of Pingora's listener after its PROXY header, whose client is now its
/// peer; `None`: refused.
async fn proxied(pp: &proxy_protocol::ProxyProtocol, stream: Stream) -> Option<Stream> {
    let mut l4 = stream.into_any().downcast::<L4Stream>().ok()?;
    pp.l4(&mut l4).await?;
    Some(l4)
}

/// The answer to a client over its connection cap, in the JSON error contract. It has sent
/// nothing we read yet, so the connection is closed right after.
fn too_many() -> Vec<u8> {
    use crate::headers::names::{GATEWAY_NAME, X_GATEWAY, X_REQUEST_ID};
    let id = crate::client::new_request_id();
    let body = crate::error::body(
        crate::error::Reject::Unavailable,
        "too many open connections from your address",
        id.to_str().unwrap_or("-"),
    );
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n",
        body.len(),
    )
    .into_bytes();
    for (name, value) in [(&X_GATEWAY, &GATEWAY_NAME), (&X_REQUEST_ID, &id)] {
        crate::headers::line(&mut out, name.as_str(), |o| {
            o.extend_from_slice(value.as_bytes())
        });
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static, S: Serve> ServerApp for Gate<A, S> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A cleartext connection of Pingora's listener (a TLS one read its header before the
        // handshake; a reused one is no longer a bare L4 stream). Boxed: an idle connection's
        // future never holds the header's buffer.
        if let Some(pp) = self
            .proxy
            .as_ref()
            .filter(|_| stream.as_any().is::<L4Stream>())
        {
            stream = Box::pin(proxied(pp, stream)).await?;
        }
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let Ok(slot) = self.admit(ip) else {
            self.over_cap(&mut stream).await;
            return None;
        };
        let mut stream: Stream = Box::new(Guarded::new(stream, self.guards.head_timeout, slot));
        let h1 = match keepalive::is_h1(&*self.inner, &stream) {
            true => Some(true),
            // An h2c listener's HTTP/1.1 connection: Pingora's session serves each request
            // (the own codec does not), in this loop, so its refusals and pipelined requests
            // are handled as everywhere else.
            false if keepalive::is_h2c(&*self.inner, &stream) => {
                keepalive::peek_h1(&mut stream).await?.then_some(false)
            }
            false => None,
        };
        if let Some(own) = h1 {
            let idle = self.guards.keepalive_timeout;
            let gate = (self.own.as_ref(), own);
            keepalive::serve_h1(&self.inner, gate, stream, idle, shutdown).await;
            return None;
        }
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
