//! A cleartext HTTP/1 client connection accepted by tollgate itself ([`super::accept`]), so that
//! an idle keep-alive connection holds its socket and little else: behind Pingora's listener it
//! would keep a task sized for a TLS handshake, a boxed `l4::Stream`, tollgate's boxed future
//! and [`Guarded`] with its timer for its whole life.
//!
//! Between requests the connection's task holds the client's address and per-IP slot, the idle
//! wait's timer and the socket, and waits for readability only. When bytes arrive it builds the
//! stream Pingora and the own codec take ([`Plain`] under [`Guarded`]) and a boxed future for the
//! request. A busy connection keeps the stream for its next request. After a second without
//! one it drops all but the socket and leaves its task too, for its service's table of idle
//! sockets (`park.rs`), and comes back here ([`resume`]) when its client speaks. The wait
//! follows `keepalive.rs`: a first request is waited for (up to `limits.keepalive_timeout`) even
//! while the server shuts down; a later one ends the connection at that timeout or at the start
//! of a shutdown, unless its bytes are already here.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pingora::apps::HttpServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::keepalive::{self, Carried, Waited, Waits};
use super::park::{Conn, Lot, Parked, PARK_AFTER};
use super::{Gate, Guarded, Serve};

/// A tokio socket with what Pingora reads of a connection (its addresses, when it was
/// accepted): the stream under [`Guarded`] while a request is served. Unbuffered: Pingora's
/// HTTP/1 code buffers reads itself and [`Guarded`] coalesces writes.
#[derive(Debug)]
pub struct Plain {
    tcp: TcpStream,
    digest: Arc<SocketDigest>,
    accepted: SystemTime,
}

impl Plain {
    /// The stream of one request on `tcp`.
    fn stream(tcp: TcpStream, peer: SocketAddr, accepted: SystemTime, head: Duration) -> Stream {
        let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
        let _ = digest.peer_addr.set(Some(peer.into()));
        let plain = Plain {
            tcp,
            digest: Arc::new(digest),
            accepted,
        };
        Box::new(Guarded::new(Box::new(plain), head, None))
    }

    /// The socket under a finished request's stream, which the next request may take as it
    /// is; `None` if it is not one of ours or still holds bytes to write (the connection then
    /// ends).
    fn socket(stream: &Stream) -> Option<&TcpStream> {
        let guarded = stream.as_any().downcast_ref::<Guarded>()?;
        let inner = guarded.inner_if_idle()?;
        inner
            .as_any()
            .downcast_ref::<Plain>()
            .map(|plain| &plain.tcp)
    }

    /// The socket back from a finished request's stream; `None` if it is not one of ours or
    /// still holds bytes to write (the connection then ends).
    fn take(stream: Stream) -> Option<TcpStream> {
        let guarded = stream.into_any().downcast::<Guarded>().ok()?;
        let inner = guarded.into_inner()?;
        inner
            .into_any()
            .downcast::<Plain>()
            .ok()
            .map(|plain| plain.tcp)
    }
}

/// Serve a cleartext HTTP/1 connection `tcp` from `peer` until either side ends it.
pub(super) async fn serve<A, S>(
    gate: Arc<Gate<A, S>>,
    lot: Arc<Lot>,
    mut tcp: TcpStream,
    mut peer: SocketAddr,
    shutdown: ShutdownWatch,
) where
    A: HttpServerApp + Send + Sync + 'static,
    S: Serve,
{
    let accepted = SystemTime::now();
    if let Some(pp) = &gate.proxy {
        // Boxed: the idle connection's future never holds the header's buffer.
        match Box::pin(pp.tcp(&mut tcp, peer)).await {
            Some(client) => peer = client,
            None => return,
        }
    }
    let slot = match gate.admit(Some(peer.ip())) {
        Ok(slot) => slot,
        Err(()) => {
            let head = gate.guards.head_timeout;
            let mut stream = Plain::stream(tcp, peer, accepted, head);
            gate.over_cap(&mut stream).await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let conn = Conn {
        peer,
        accepted,
        _slot: slot,
        carried: None,
        first: true,
    };
    let left = gate.guards.keepalive_timeout;
    run(gate, lot, tcp, conn, left, shutdown).await;
}

/// Go on serving a connection that left the lot ([`park`]) because its socket turned
/// readable.
pub(super) async fn resume<A, S>(
    gate: Arc<Gate<A, S>>,
    lot: Arc<Lot>,
    parked: Parked,
    shutdown: ShutdownWatch,
) where
    A: HttpServerApp + Send + Sync + 'static,
    S: Serve,
{
    let Ok(tcp) = TcpStream::from_std(parked.tcp) else {
        return;
    };
    let left = parked.deadline.saturating_duration_since(Instant::now());
    run(gate, lot, tcp, parked.conn, left, shutdown).await;
}

/// The connection's requests, while it is in a task: `left` is what remains of the
/// keep-alive wait for the next one.
async fn run<A, S>(
    gate: Arc<Gate<A, S>>,
    lot: Arc<Lot>,
    tcp: TcpStream,
    mut conn: Conn,
    mut left: Duration,
    shutdown: ShutdownWatch,
) where
    A: HttpServerApp + Send + Sync + 'static,
    S: Serve,
{
    // What the keep-alive waits share, for as long as the connection stays in this task.
    let timer = std::pin::pin!(keepalive::wait_timer());
    let stopping = std::pin::pin!(keepalive::stopping(shutdown.clone()));
    let mut waits = Waits::new(timer, stopping);
    let mut held = Held::Bare(tcp);
    loop {
        let wait = left.min(PARK_AFTER);
        let socket = match &held {
            Held::Bare(tcp) => Some(tcp),
            Held::Stream(stream) => Plain::socket(stream),
        };
        let Some(socket) = socket else {
            return;
        };
        match readable(socket, wait, conn.first, &mut waits).await {
            Waited::Arrived(()) => {}
            Waited::Silent if wait < left => {
                let tcp = match held {
                    Held::Bare(tcp) => tcp,
                    Held::Stream(stream) => match Plain::take(stream) {
                        Some(tcp) => tcp,
                        None => return,
                    },
                };
                let deadline = Instant::now() + (left - wait);
                if let Ok(tcp) = tcp.into_std() {
                    lot.park(Parked {
                        tcp,
                        conn,
                        deadline,
                    });
                }
                crate::alloc::trim_soon();
                return;
            }
            Waited::Silent | Waited::Ended => return,
        }
        let stream = match held {
            Held::Bare(tcp) => {
                Plain::stream(tcp, conn.peer, conn.accepted, gate.guards.head_timeout)
            }
            Held::Stream(stream) => stream,
        };
        // Boxed: the idle connection's future (this one) never holds a request's state.
        let request = Box::pin(one_request(
            &gate,
            stream,
            &mut conn.carried,
            conn.first,
            &shutdown,
            &mut waits,
        ));
        let Some(stream) = request.await else {
            return;
        };
        conn.first = false;
        left = gate.guards.keepalive_timeout;
        held = match Plain::socket(&stream) {
            // Its next head is timed as a new stream's would be, whichever engine served.
            Some(_) => {
                super::guarded::rearm(Some(&stream));
                Held::Stream(stream)
            }
            // Left with more than its socket (a frame, bytes to write): a new stream next.
            None => match Plain::take(stream) {
                Some(tcp) => Held::Bare(tcp),
                None => return,
            },
        };
    }
}

/// The connection's socket between requests: bare, or still under the last request's
/// stream, which the next request takes as it is if it comes before the connection parks.
enum Held {
    Bare(TcpStream),
    Stream(Stream),
}

/// Read the head that made the socket readable and serve its request.
async fn one_request<A, S>(
    gate: &Gate<A, S>,
    mut stream: Stream,
    carried: &mut Option<Box<Carried>>,
    first: bool,
    shutdown: &ShutdownWatch,
    waits: &mut Waits<'_>,
) -> Option<Stream>
where
    A: HttpServerApp + Send + Sync + 'static,
    S: Serve,
{
    let idle = gate.guards.keepalive_timeout;
    let head = keepalive::next_head(&mut stream, idle, first, waits).await?;
    let mut now = carried.take().and_then(|c| *c);
    let next = keepalive::serve_one(
        &gate.inner,
        (gate.own(), true),
        stream,
        head,
        &mut now,
        shutdown,
    );
    let next = next.await;
    *carried = now.is_some().then(|| Box::new(now));
    next
}

/// Wait until `tcp` has bytes (or an end) to read, by the rules of [`keepalive::idle_wait`]
/// without a buffer or a stream.
fn readable<'a, 'w>(
    tcp: &'a TcpStream,
    idle: Duration,
    first: bool,
    waits: &'a mut Waits<'w>,
) -> impl Future<Output = Waited<()>> + use<'a, 'w> {
    // Polled through the socket's own waker slot: no `Readable` future (152 bytes) in the
    // idle task. Not an `async fn`: its frame would keep a second copy of the arguments.
    let ready = std::future::poll_fn(|cx| tcp.poll_read_ready(cx).map(Result::ok));
    keepalive::idle_wait(ready, idle, first, waits)
}

impl AsyncRead for Plain {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Plain {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Plain {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(&mut self.tcp).await;
    }
}

impl UniqueID for Plain {
    fn id(&self) -> UniqueIDType {
        self.tcp.as_raw_fd()
    }
}

impl Ssl for Plain {}

impl GetTimingDigest for Plain {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        vec![Some(TimingDigest {
            established_ts: self.accepted,
            ..TimingDigest::default()
        })]
    }
}

impl GetProxyDigest for Plain {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for Plain {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(self.digest.clone())
    }
    fn set_socket_digest(&mut self, d: SocketDigest) {
        self.digest = Arc::new(d);
    }
}

// A plain listener never speaks h2c, so nothing peeks at its connections.
impl Peek for Plain {}
