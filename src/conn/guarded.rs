//! The [`Guarded`] stream: a total deadline for receiving each request head, and the idle timer
//! of a WebSocket tunnel.
//!
//! Pingora times a request head per read (cloudflare/pingora#447), so a client trickling bytes
//! just inside the read timeout holds a connection forever (slowloris). [`Guarded`] allows
//! `head_timeout` from a head's first byte to the blank line that ends it, scanning only the bytes
//! just read while a head is being received, then stands aside; the proxy re-arms it when a
//! request finishes ([`rearm`]). HTTP/2 passes through unharmed: the client preface contains an
//! empty line, so the scan ends within it, and [`rearm`] only ever sees HTTP/1 streams, so h2 gets
//! the deadline for its preface only (its frames are timed by h2's own settings). After a
//! WebSocket handshake ([`tunnel`]) no head is scanned, and [`super::Idle`] closes the tunnel when
//! no byte moved either way for the route's `websocket_idle_timeout` (Pingora's timeouts see one
//! direction; the stream sees both).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::coalesce::Coalesce;
use super::frame::{Body, Frame};
use super::idle::Idle;
use super::Slot;

/// Where a [`Guarded`] stream is in receiving a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// Waiting for the first byte of a head: no deadline (the keep-alive timeout applies).
    Awaiting,
    /// Receiving a head, looking for the empty line that ends it, until the deadline (set at
    /// its first byte).
    Receiving(EndOfHead, Instant),
    /// The head is complete: bodies and responses are not timed here.
    Done,
}

/// Finds the empty line that ends a head, across reads: a line feed right after a line
/// feed, with an optional carriage return between (`\r\n\r\n`, or the bare `\n\n` that
/// httparse also accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndOfHead {
    /// 0: inside a line; 1: just after a line feed; 2: after a line feed and a CR.
    state: u8,
}

impl EndOfHead {
    /// Feed the next bytes; `true` once the head's end is among them. Jumps from line feed to
    /// line feed (memchr): a head is mostly long lines, so the bytes between are never
    /// looked at one by one.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        // The common read, a whole head, ends with its empty line: no line need be looked at.
        bytes.ends_with(b"\r\n\r\n") || self.end_in(bytes).is_some()
    }

    /// As [`Self::feed`], with where the head ends: the length of the part of `bytes` that
    /// belongs to it, up to and including the line feed of its empty line.
    pub fn end_in(&mut self, bytes: &[u8]) -> Option<usize> {
        // What the current line holds so far, as far as an empty line is concerned.
        let mut state = self.state;
        let mut line_start = 0;
        for lf in memchr::memchr_iter(b'\n', bytes) {
            let line = &bytes[line_start..lf];
            let empty = match state {
                1 => line.is_empty() || line == b"\r",
                2 => line.is_empty(),
                _ => false,
            };
            if empty {
                return Some(lf + 1);
            }
            state = 1;
            line_start = lf + 1;
        }
        let rest = &bytes[line_start..];
        self.state = match (state, rest) {
            (s, []) => s,
            (1, b"\r") => 2,
            _ => 0,
        };
        None
    }
}

/// An accepted stream with a total deadline on each request head.
#[derive(Debug)]
pub struct Guarded {
    inner: Stream,
    head: Head,
    /// Set by [`rearm`] when a request finished, read by the next `poll_read`.
    rearm: AtomicBool,
    timeout: Duration,
    /// The timer for a head's deadline, made the first time a head is waited on: a head that
    /// arrives in one read (nearly all) costs no timer and no clock read.
    timer: Option<Pin<Box<Sleep>>>,
    _slot: Option<Slot>,
    /// Set by [`tunnel`]: arm the idle timer with this many ms, or [`DISARM`]; 0: no news.
    tunnel_signal: AtomicU64,
    /// The idle timer of a WebSocket tunnel (armed from the handshake on).
    tunnel: Option<Box<Idle>>,
    /// Writes not yet passed on: a response head and a small body leave in one segment, as
    /// through Pingora's own write buffer, but the buffer exists only between a response's
    /// first write and its flush, not for the whole life of an idle connection.
    out: Coalesce,
    /// The extent of the request Pingora's session is reading, while it does (`frame.rs`).
    frame: Option<Box<Frame>>,
}

const DISARM: u64 = u64::MAX;

impl Guarded {
    pub(super) fn new(inner: Stream, timeout: Duration, slot: Option<Slot>) -> Self {
        Guarded {
            inner,
            head: Head::Awaiting,
            rearm: AtomicBool::new(false),
            timeout,
            timer: None,
            _slot: slot,
            tunnel_signal: AtomicU64::new(0),
            tunnel: None,
            out: Coalesce::default(),
            frame: None,
        }
    }

    /// The stream under, once a request is done with it (the socket goes back to its idle
    /// wait, `plain.rs`); `None` while written bytes are still held here.
    pub(super) fn into_inner(self) -> Option<Stream> {
        self.out.is_empty().then_some(self.inner)
    }

    /// The stream under, while a finished request left nothing written here (it may carry
    /// the connection's next request as it is, [`rearm`]ed).
    pub(super) fn inner_if_idle(&self) -> Option<&Stream> {
        (self.out.is_empty() && self.frame.is_none()).then_some(&self.inner)
    }

    /// Apply what the proxy signalled since the last read or write (a plain load otherwise).
    #[inline]
    fn take_signals(&mut self) {
        if self.rearm.load(Ordering::Relaxed) {
            self.rearm.store(false, Ordering::Relaxed);
            self.head = Head::Awaiting;
            self.tunnel = None;
        }
        let t = self.tunnel_signal.load(Ordering::Relaxed);
        if t != 0 {
            self.tunnel_signal.store(0, Ordering::Relaxed);
            self.tunnel = (t != DISARM).then(|| Box::new(Idle::new(Duration::from_millis(t))));
        }
    }

    /// Read from the stream under, within the request's frame if one is set.
    fn read_inner(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.frame.as_mut() {
            Some(frame) => frame.poll_read(&mut self.inner, cx, buf),
            None => Pin::new(&mut self.inner).poll_read(cx, buf),
        }
    }

    /// Advance the head scan over freshly read bytes.
    fn scan(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let (mut end, deadline) = match self.head {
            Head::Done => return,
            Head::Awaiting => (EndOfHead::default(), None),
            Head::Receiving(end, deadline) => (end, Some(deadline)),
        };
        self.head = if end.feed(bytes) {
            Head::Done
        } else {
            Head::Receiving(
                end,
                deadline.unwrap_or_else(|| Instant::now() + self.timeout),
            )
        };
    }

    /// Whether the head being received is past `deadline`; waits for it from `cx` if not.
    fn head_expired(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

/// After a request on this connection finished: time the next head again.
pub fn rearm(stream: Option<&Stream>) {
    if let Some(g) = guarded(stream) {
        g.rearm.store(true, Ordering::Relaxed);
    }
}

/// Let Pingora's session read `stream` up to the end of a request whose body is `body` and no
/// further (`frame.rs`).
pub(super) fn frame(stream: Stream, body: Body) -> Stream {
    with_guarded(stream, |g| g.frame = Some(Box::new(Frame::new(body)))).0
}

/// The session is done with `stream`: the bytes the client sent past the request, if any.
pub(super) fn unframe(stream: Stream) -> (Stream, Option<bytes::BytesMut>) {
    let (stream, ahead) = with_guarded(stream, |g| g.frame.take().and_then(|f| f.into_ahead()));
    (stream, ahead.flatten())
}

/// `f` applied to the [`Guarded`] that `stream` is, if it is one.
fn with_guarded<T>(stream: Stream, f: impl FnOnce(&mut Guarded) -> T) -> (Stream, Option<T>) {
    if !stream.as_any().is::<Guarded>() {
        return (stream, None);
    }
    let Ok(mut g) = stream.into_any().downcast::<Guarded>() else {
        unreachable!("the stream was checked to be Guarded");
    };
    let t = f(&mut g);
    (g, Some(t))
}

fn guarded(stream: Option<&Stream>) -> Option<&Guarded> {
    stream.and_then(|s| s.as_any().downcast_ref::<Guarded>())
}

/// A WebSocket handshake is on its way: from now on, close the connection once no byte moved
/// in either direction for `idle` (`None`: the handshake was refused, stop timing). Reads see
/// the end of the stream when it expires, so Pingora ends the tunnel as if the client had
/// closed. `false` when the stream is not a [`Guarded`] one (nothing is timed here).
pub fn tunnel(stream: Option<&Stream>, idle: Option<Duration>) -> bool {
    let Some(g) = guarded(stream) else {
        return false;
    };
    let signal = idle.map_or(DISARM, |d| (d.as_millis() as u64).clamp(1, DISARM - 1));
    g.tunnel_signal.store(signal, Ordering::Relaxed);
    true
}

/// Whether this connection's WebSocket idle timer expired.
pub fn idled(stream: Option<&Stream>) -> bool {
    guarded(stream).is_some_and(|g| g.tunnel.as_ref().is_some_and(|t| t.expired_once()))
}

fn head_timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "request head not received within limits.head_timeout",
    )
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.take_signals();
        if let Some(idle) = this.tunnel.as_mut() {
            if idle.expired_once() {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            let r = match this.frame.as_mut() {
                Some(frame) => frame.poll_read(&mut this.inner, cx, buf),
                None => Pin::new(&mut this.inner).poll_read(cx, buf),
            };
            return idle.on_read(cx, buf.filled().len() > before, r);
        }
        let before = buf.filled().len();
        match this.read_inner(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.scan(&buf.filled()[before..]);
                if matches!(this.head, Head::Receiving(_, d) if Instant::now() >= d) {
                    return Poll::Ready(Err(head_timed_out()));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Head::Receiving(_, deadline) = this.head {
                    if this.head_expired(deadline, cx) {
                        return Poll::Ready(Err(head_timed_out()));
                    }
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl Guarded {
    fn tunnel_write(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        match self.tunnel.as_mut() {
            Some(idle) => idle.on_write(cx, r),
            None => r,
        }
    }
}

impl Guarded {
    fn poll_write_bufs(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
        len: usize,
    ) -> Poll<std::io::Result<usize>> {
        self.take_signals();
        let r = self.out.poll_write(&mut self.inner, cx, bufs, len);
        // A tunnel's idle timer sees a write that waits too: a client that reads nothing.
        self.tunnel_write(cx, r)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_bufs(cx, &[std::io::IoSlice::new(buf)], buf.len())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        ready!(this.out.poll_send(&mut this.inner, cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        ready!(this.out.poll_send(&mut this.inner, cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.poll_write_bufs(cx, bufs, len)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        // What is held back goes first (Pingora closes a connection with this, not a flush).
        let _ = std::future::poll_fn(|cx| self.out.poll_send(&mut self.inner, cx)).await;
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, d: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(d)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, d: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(d)
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::{EndOfHead, Guarded};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn ends(chunks: &[&[u8]]) -> Option<usize> {
        let mut e = EndOfHead::default();
        chunks.iter().position(|c| e.feed(c))
    }

    #[test]
    fn finds_the_empty_line_across_reads() {
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]), Some(0));
        assert_eq!(
            ends(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n", b"\r", b"\n"]),
            Some(3)
        );
        assert_eq!(ends(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some(0));
        assert_eq!(
            ends(&[b"GET / HTTP/1.1\r\n", b"Host: a\r\n", b"X: y\r\n"]),
            None
        );
        // A CR inside a line, or a lone CR line, is not the end.
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nX: a\rb\r\n\rX: c\r\n"]), None);
    }

    /// The byte-by-byte definition the memchr version must agree with.
    fn ends_bytewise(chunks: &[&[u8]]) -> Option<usize> {
        let mut state = 0u8;
        for (i, c) in chunks.iter().enumerate() {
            for &b in c.iter() {
                state = match (state, b) {
                    (1 | 2, b'\n') => return Some(i),
                    (_, b'\n') => 1,
                    (1, b'\r') => 2,
                    _ => 0,
                };
            }
        }
        None
    }

    #[test]
    fn agrees_with_the_bytewise_scan_on_every_split() {
        // Every string over {a, CR, LF} up to 7 bytes, cut into chunks at every pair of points.
        let alphabet = [b'a', b'\r', b'\n'];
        for len in 0..=7u32 {
            for n in 0..3usize.pow(len) {
                let mut text = Vec::new();
                let mut k = n;
                for _ in 0..len {
                    text.push(alphabet[k % 3]);
                    k /= 3;
                }
                for a in 0..=text.len() {
                    for b in a..=text.len() {
                        let chunks = [&text[..a], &text[a..b], &text[b..]];
                        assert_eq!(
                            ends(&chunks),
                            ends_bytewise(&chunks),
                            "{text:?} cut at {a},{b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_h2_preface_ends_the_head() {
        assert_eq!(ends(&[H2_PREFACE]), Some(0));
        assert_eq!(ends(&[&H2_PREFACE[..16], &H2_PREFACE[16..]]), Some(1));
    }

    /// After the h2 preface, a connection that stays quiet (as an idle h2 connection does)
    /// is not cut by the head deadline; before the preface is complete, it is.
    #[tokio::test]
    async fn h2_connections_are_only_timed_until_the_preface() {
        let timeout = Duration::from_millis(100);
        for (sent, cut) in [(H2_PREFACE, false), (&H2_PREFACE[..16], true)] {
            let (mut client, server) = tokio::io::duplex(1024);
            let mut g = Guarded::new(Box::new(server), timeout, None);
            client.write_all(sent).await.unwrap();
            let mut buf = vec![0; sent.len()];
            g.read_exact(&mut buf).await.unwrap();
            // Wait well past the deadline for a frame that never comes.
            let next = tokio::time::timeout(timeout * 4, g.read_u8()).await;
            match next {
                Err(_elapsed) => assert!(!cut, "a partial preface was never cut"),
                Ok(r) => {
                    assert!(cut, "an idle h2 connection was cut: {r:?}");
                    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
                }
            }
        }
    }
}
