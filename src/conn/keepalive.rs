//! The HTTP/1 keep-alive loop, so that an idle client connection holds its stream and nothing
//! else. Pingora's own loop keeps the next request's session, its boxed future and a head buffer
//! on every idle connection; here the next head's first bytes are read into a stack buffer and
//! handed to a new session as its pipelined prefix, so a session exists only while a request does.
//!
//! The wait ends when the client closes, when `limits.keepalive_timeout` passes with nothing sent,
//! or when the server starts shutting down (as in Pingora's loop), so no connection idles through
//! a hand-over. Pipelined requests (RFC 9112 §9.3.2) are answered in order: bytes read past one
//! (by the own codec, or handed back by Pingora's framed session, `frame.rs`) start the next. This
//! loop serves HTTP/1 on Pingora's listeners (TLS, h2c without the preface); cleartext listeners
//! take [`serve_one`] and [`next_head`] from here (`plain.rs`). HTTP/2 keeps Pingora's path.

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Shutdown, Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::ReadBuf;
use tokio::time::Sleep;

use super::screen::{self, Screened};
use super::{Serve, Served};
use crate::timer::Lazy;

/// The keep-alive Pingora gives a connection's first request; `request_filter` replaces it with
/// `limits.keepalive_timeout` for every request it admits.
const FIRST_KEEPALIVE_SECS: u64 = 60;

/// The most bytes the read that ends an idle wait takes: the size Pingora's head buffer starts
/// at (`pingora_core::protocols::http::v1::common::INIT_HEADER_BUF_SIZE`), so a typical head
/// (and a small body) arrives in one read.
const FIRST_READ: usize = 4096;

/// What Pingora carries from one request of a connection to the next: `None` until it has
/// served one there, then the settings it handed back (if any).
pub(super) type Carried = Option<Option<HttpPersistentSettings>>;

/// Whether this connection takes our HTTP/1 loop rather than Pingora's (which also speaks h2).
pub(super) fn is_h1<A: HttpServerApp>(app: &A, stream: &Stream) -> bool {
    let h2c_or_custom = app
        .server_options()
        .is_some_and(|o| (o.h2c && stream.get_ssl_digest().is_none()) || o.force_custom);
    !h2c_or_custom
        && !matches!(
            stream.selected_alpn_proto(),
            Some(ALPN::H2 | ALPN::Custom(_))
        )
}

/// Whether this is a cleartext connection of an h2c listener, which speaks HTTP/2 with prior
/// knowledge or HTTP/1.1 ([`peek_h1`] tells which).
pub(super) fn is_h2c<A: HttpServerApp>(app: &A, stream: &Stream) -> bool {
    app.server_options()
        .is_some_and(|o| o.h2c && !o.force_custom && stream.get_ssl_digest().is_none())
}

/// Whether the client of an h2c listener speaks HTTP/1 (it does not start with the HTTP/2
/// preface), as Pingora's listener decides it; `None` when the connection failed.
pub(super) async fn peek_h1(stream: &mut Stream) -> Option<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let peeked = stream.try_peek(&mut buf).await.ok()?;
    Some(peeked && buf != *H2_PREFACE)
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serve HTTP/1 requests on `stream` until the client or the server ends the connection:
/// each by `own` when it serves it (and `own.1` lets it serve any), by Pingora otherwise.
pub(super) async fn serve_h1<A, S>(
    app: &Arc<A>,
    own: (Option<&S>, bool),
    mut stream: Stream,
    idle: Duration,
    shutdown: &ShutdownWatch,
) where
    A: HttpServerApp + Send + Sync + 'static,
    S: Serve,
{
    let mut carried: Carried = None;
    let mut first = true;
    let timer = std::pin::pin!(wait_timer());
    let stopping = std::pin::pin!(stopping(shutdown.clone()));
    let mut waits = Waits::new(timer, stopping);
    loop {
        let Some(head) = next_head(&mut stream, idle, first, &mut waits).await else {
            return;
        };
        first = false;
        let Some(next) = serve_one(app, own, stream, head, &mut carried, shutdown).await else {
            return;
        };
        stream = next;
    }
}

/// Serve the request whose first bytes are `head`, and every request the client sent with
/// it: each by `own.0` when it serves it (and `own.1` lets it serve any), by Pingora
/// otherwise; the stream back when the connection can carry another request. `carried` is
/// `None` until Pingora finished a request on this connection, then what it carried over.
///
/// Pingora's session is given one request only ([`screen::screen`], `frame.rs`): its head
/// is checked first, so that a head Pingora would refuse is refused by `own.0` instead, and
/// whatever the client sent past the request comes back here as the next request's bytes.
pub(super) async fn serve_one<A, S>(
    app: &Arc<A>,
    own: (Option<&S>, bool),
    mut stream: Stream,
    mut head: BytesMut,
    carried: &mut Carried,
    shutdown: &ShutdownWatch,
) -> Option<Stream>
where
    A: HttpServerApp + Send + Sync + 'static,
    S: Serve,
{
    // A per-connection request limit is Pingora's to count: then it serves every request.
    let serves = own.1
        && app
            .server_options()
            .is_none_or(|o| o.keepalive_request_limit.is_none());
    let (own, serving) = (own.0, own.0.filter(|_| serves));
    loop {
        let shutting_down = *shutdown.borrow();
        if let Some(serving) = serving {
            // Boxed, so an idle connection's future never holds a request's state.
            match boxed(|| serving.serve(&mut stream, head, shutting_down)).await {
                Served::Done { reuse: true, ahead } => {
                    super::rearm(Some(&stream));
                    match ahead {
                        Some(next) => {
                            head = next;
                            continue;
                        }
                        None => return Some(stream),
                    }
                }
                Served::Done { reuse: false, .. } => {
                    Shutdown::shutdown(&mut *stream).await;
                    return None;
                }
                Served::NotMine(back) => head = back,
            }
        }
        let (bytes, ahead, body) = match Box::pin(screen::screen(&mut stream, head)).await {
            Screened::Request { bytes, ahead, body } => (bytes, ahead, body),
            Screened::Refused(refusal) => {
                if let Some(own) = own {
                    Box::pin(own.refuse(&mut stream, refusal)).await;
                }
                Shutdown::shutdown(&mut *stream).await;
                return None;
            }
            Screened::Gone => return None,
        };
        let framed = match body {
            Some(body) => super::guarded::frame(stream, body),
            None => stream,
        };
        let served = pingora_serves(app, framed, bytes, carried, shutdown).await;
        let (next, settings) = served?.consume();
        *carried = Some(settings);
        let (next, held) = super::guarded::unframe(next);
        stream = next;
        head = match (ahead, held) {
            (None, None) => return Some(stream),
            (Some(next), None) | (None, Some(next)) => next,
            (Some(mut next), Some(more)) => {
                next.extend_from_slice(&more);
                next
            }
        };
    }
}

/// The future `make` makes, on the heap: written into its box as it is made, where
/// `Box::pin(make())` would make it on the stack and copy it (a request's future is kilobytes).
#[inline(always)]
fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// Pingora's session serves the request whose bytes so far are `bytes`.
async fn pingora_serves<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
    stream: Stream,
    bytes: BytesMut,
    carried: &mut Carried,
    shutdown: &ShutdownWatch,
) -> Option<ReusedHttpStream> {
    // Built in a block that ends before the await, so the session (680 bytes) is not also
    // kept in this future beside the boxed one that owns it.
    let request = {
        let mut session = ServerSession::new_http1(stream);
        match carried.take() {
            None => {
                session.set_keepalive((!*shutdown.borrow()).then_some(FIRST_KEEPALIVE_SECS));
                session.set_keepalive_reuses_remaining(
                    app.server_options().and_then(|o| o.keepalive_request_limit),
                );
            }
            Some(Some(settings)) => settings.apply_to_session(&mut session),
            Some(None) => {}
        }
        // Pipelining stays off (Pingora's default): the session is framed to this request,
        // so it never reads past it, and never carries bytes over to a session of its own.
        session.set_pipelined_prefix(bytes);
        app.process_new_http(session, shutdown)
    };
    request.await
}

/// Wait for the client's next bytes and take them, or `None` when the connection should end
/// (the rules of [`idle_wait`], on the connection's `waits`). While it waits, this future
/// holds a borrowed stream, nothing per request.
pub(super) async fn next_head(
    stream: &mut Stream,
    idle: Duration,
    first: bool,
    waits: &mut Waits<'_>,
) -> Option<BytesMut> {
    let read = std::future::poll_fn(|cx| {
        // On the stack only for the length of one poll: nothing is kept between polls.
        let mut space = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut buf = ReadBuf::uninit(&mut space);
        Pin::new(&mut **stream)
            .poll_read(cx, &mut buf)
            .map(|r| r.ok().filter(|()| !buf.filled().is_empty()))
            .map(|read| read.map(|()| BytesMut::from(buf.filled())))
    });
    match idle_wait(read, idle, first, waits).await {
        Waited::Arrived(head) => Some(head),
        Waited::Silent | Waited::Ended => None,
    }
}

/// A future just polled with this task's waker and found pending: its first poll by the
/// wait is answered without asking again (its wakeup is registered), later ones are its own.
struct Looked<F> {
    inner: F,
    fresh: bool,
}

impl<F: Future + Unpin> Future for Looked<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if std::mem::take(&mut self.fresh) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// What a connection's keep-alive waits keep from one to the next: one entry of tokio's timer
/// and one subscription to the server's shutdown ([`stopping`]), where a new one of each for
/// every wait was most of what a wait cost. Both live in the frame of the connection's own
/// future, so nothing of them outlives its task (a parked connection keeps no allocation).
pub(super) struct Waits<'a> {
    timer: Lazy<&'a mut Sleep>,
    stopping: Pin<&'a mut (dyn Future<Output = ()> + Send)>,
}

impl<'a> Waits<'a> {
    pub(super) fn new(
        timer: Pin<&'a mut Sleep>,
        stopping: Pin<&'a mut (dyn Future<Output = ()> + Send)>,
    ) -> Self {
        Waits {
            timer: Lazy::on(timer),
            stopping,
        }
    }
}

/// Ready once the server is shutting down (or its watch is gone).
pub(super) async fn stopping(mut watch: ShutdownWatch) {
    if !*watch.borrow_and_update() {
        let _ = watch.changed().await;
    }
}

/// A timer entry for [`Waits`], armed by its first wait.
pub(super) fn wait_timer() -> Sleep {
    tokio::time::sleep_until(tokio::time::Instant::now())
}

/// How a keep-alive wait ended.
pub(super) enum Waited<T> {
    /// The client sent bytes.
    Arrived(T),
    /// It said nothing for as long as the wait was given.
    Silent,
    /// It closed the connection or failed, or the server is shutting down.
    Ended,
}

/// A keep-alive connection's wait for its client's next bytes (`arrived`: `None` when the
/// client closed it or failed), for at most `idle`. Used by both loops, this one and
/// `plain.rs`'s.
///
/// A shutdown ends the wait, but never drops a request the client has already sent, which
/// it could not tell from one that failed: bytes already here are taken, and a connection's
/// `first` request is waited for whatever happens (it was accepted, maybe in the moment
/// before a graceful upgrade handed the listeners over, so its client has every reason to
/// expect an answer; Pingora's own loop reads it too). Bytes already here arm no timer; a
/// later request's wait is kept on the connection's `waits`, the same for all its waits.
pub(super) async fn idle_wait<T>(
    mut arrived: impl Future<Output = Option<T>> + Unpin,
    idle: Duration,
    first: bool,
    waits: &mut Waits<'_>,
) -> Waited<T> {
    let came = |v: Option<T>| v.map_or(Waited::Ended, Waited::Arrived);
    // One look with this task's waker: bytes already here arm no timer, and a look that
    // finds none has registered the wakeup, so the wait below does not look again before
    // the task parks (over TLS a look is a whole SSL_read).
    let look = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut arrived).poll(cx)));
    if let Poll::Ready(now) = look.await {
        return came(now);
    }
    let mut arrived = Looked {
        inner: arrived,
        fresh: true,
    };
    if first {
        return match tokio::time::timeout(idle, arrived).await {
            Ok(v) => came(v),
            Err(_) => Waited::Silent,
        };
    }
    let Waits { timer, stopping } = waits;
    timer.set(tokio::time::Instant::now() + idle);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = Pin::new(&mut arrived).poll(cx) {
            return Poll::Ready(came(v));
        }
        if timer.poll_due(cx).is_ready() {
            return Poll::Ready(Waited::Silent);
        }
        stopping.as_mut().poll(cx).map(|()| Waited::Ended)
    })
    .await
}
