//! The HTTP/1 keep-alive loop, so that an idle client connection costs its stream and little
//! else.
//!
//! Pingora's own loop (`ServerApp for HttpServerApp`) builds the next request's session and
//! calls `process_new_http` as soon as a response is done: the per-request future (10.6 KiB with
//! tollgate's hooks, boxed by async-trait) and, once it reads, a 4 KiB head buffer sit on every
//! idle connection until the client speaks again (`examples/conn_memory.rs`). At 10,000 idle
//! connections that was 28 KiB each. Here a connection waits for the first bytes of its next
//! head holding only its stream; those bytes are read through a stack buffer and handed to the
//! new session as its pipelined prefix (which Pingora parses before reading the stream again),
//! so a session, its future and its buffer exist only while a request does.
//!
//! The wait ends the connection when the client closes, when `limits.keepalive_timeout` passes
//! with nothing sent, or when the server starts shutting down (as Pingora's loop does on a
//! graceful upgrade), so no connection sits idle through a hand-over.
//!
//! This loop serves the connections of Pingora's listeners (TLS, h2c). Those of tollgate's own
//! cleartext listeners wait between requests holding less still, their bare socket
//! (`plain.rs`), and take [`serve_one`] and [`next_head`] from here for each request.
//!
//! HTTP/2 (ALPN `h2`, and every connection of an h2c listener, whose preface Pingora peeks at)
//! keeps Pingora's path: an h2 connection multiplexes requests and has no such loop.

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Shutdown, Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::ReadBuf;

use super::{Serve, Served};

/// The keep-alive Pingora gives a connection's first request; `request_filter` replaces it with
/// `limits.keepalive_timeout` for every request it admits.
const FIRST_KEEPALIVE_SECS: u64 = 60;

/// The most bytes the read that ends an idle wait takes: Pingora's head buffer starts at
/// 4 KiB too, so a typical head (and a small body) arrives in one read, as before.
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

/// Serve HTTP/1 requests on `stream` until the client or the server ends the connection:
/// each by `own` when it serves it, by Pingora otherwise.
pub(super) async fn serve_h1<A, S>(
    app: &Arc<A>,
    own: Option<&S>,
    mut stream: Stream,
    idle: Duration,
    shutdown: &ShutdownWatch,
) where
    A: HttpServerApp + Send + Sync + 'static,
    S: Serve,
{
    let mut carried: Carried = None;
    let mut first = true;
    let mut watch = shutdown.clone();
    loop {
        let Some(head) = next_head(&mut stream, idle, &mut watch, first).await else {
            return;
        };
        first = false;
        let Some(next) = serve_one(app, own, stream, head, &mut carried, shutdown).await else {
            return;
        };
        stream = next;
    }
}

/// Serve the request whose first bytes are `head`, by `own` when it serves it, by Pingora
/// otherwise; the stream back when the connection can carry another request. `carried` is
/// `None` until Pingora finished a request on this connection, then what it carried over.
pub(super) async fn serve_one<A, S>(
    app: &Arc<A>,
    own: Option<&S>,
    mut stream: Stream,
    head: BytesMut,
    carried: &mut Carried,
    shutdown: &ShutdownWatch,
) -> Option<Stream>
where
    A: HttpServerApp + Send + Sync + 'static,
    S: Serve,
{
    // A per-connection request limit is Pingora's to count: then it serves every request.
    let own = own.filter(|_| {
        app.server_options()
            .is_none_or(|o| o.keepalive_request_limit.is_none())
    });
    let shutting_down = *shutdown.borrow();
    let head = match own {
        // Boxed, so an idle connection's future never holds a request's state.
        Some(own) => match Box::pin(own.serve(&mut stream, head, shutting_down)).await {
            Served::Done { reuse: true } => {
                super::rearm(Some(&stream));
                return Some(stream);
            }
            Served::Done { reuse: false } => {
                Shutdown::shutdown(&mut *stream).await;
                return None;
            }
            Served::NotMine(head) => head,
        },
        None => head,
    };
    // Built in a block that ends before the await, so the session (680 bytes) is not also
    // kept in this future, which every idle connection holds, beside the boxed one that
    // owns it.
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
        // Pipelining stays off (Pingora's default), so `reuse` never carries a prefix of its
        // own over: a request that overreads ends its connection instead.
        session.set_pipelined_prefix(head);
        app.process_new_http(session, shutdown)
    };
    let reused = request.await?;
    let (next, settings) = reused.consume();
    *carried = Some(settings);
    Some(next)
}

/// Wait for the client's next bytes and take them, or `None` when the connection should end
/// (the rules of [`idle_wait`]). While it waits, this future holds a clock entry and a
/// borrowed stream, nothing per request.
pub(super) async fn next_head(
    stream: &mut Stream,
    idle: Duration,
    shutdown: &mut ShutdownWatch,
    first: bool,
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
    match idle_wait(read, idle, shutdown, first).await {
        Waited::Arrived(head) => Some(head),
        Waited::Silent | Waited::Ended => None,
    }
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
/// expect an answer; Pingora's own loop reads it too). Bytes already here arm no timer.
pub(super) async fn idle_wait<T>(
    mut arrived: impl Future<Output = Option<T>> + Unpin,
    idle: Duration,
    shutdown: &mut ShutdownWatch,
    first: bool,
) -> Waited<T> {
    let came = |v: Option<T>| v.map_or(Waited::Ended, Waited::Arrived);
    // `Unpin`, so the wait below holds the future itself, not the future and a pin of it.
    if let Some(now) = futures::FutureExt::now_or_never(&mut arrived) {
        return came(now);
    }
    if first {
        return match tokio::time::timeout(idle, arrived).await {
            Ok(v) => came(v),
            Err(_) => Waited::Silent,
        };
    }
    if *shutdown.borrow_and_update() {
        return Waited::Ended;
    }
    tokio::select! {
        biased;
        v = arrived => came(v),
        _ = tokio::time::sleep(idle) => Waited::Silent,
        _ = shutdown.changed() => Waited::Ended,
    }
}
