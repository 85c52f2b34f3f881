//! The write buffer of a client connection, which exists only while a response is written.
//!
//! Pingora writes a response head and its body separately and flushes at the end; without a
//! buffer each write would be its own segment and syscall. Pingora's own buffer sits under every
//! accepted stream from accept to close; this one is allocated at a response's first write and
//! freed once its bytes are passed on, so an idle connection holds none, at the cost of one
//! allocation per response. Same rules as tokio's `BufWriter`: bytes are held while they fit, and
//! a write as large as the buffer goes straight on after what is held.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

/// The most bytes held back: one TCP segment, Pingora's own default.
pub const WRITE_BUFFER: usize = pingora::protocols::l4::stream::DEFAULT_L4_WRITE_BUFFER_SIZE;

/// Bytes written and not yet passed on to the stream under.
#[derive(Debug, Default)]
pub struct Coalesce {
    buf: Vec<u8>,
    /// How much of `buf` the stream under has taken.
    sent: usize,
}

impl Coalesce {
    /// Nothing is held.
    pub fn is_empty(&self) -> bool {
        self.sent == self.buf.len()
    }

    /// Pass the held bytes on to `w`; once all are, free the buffer.
    pub fn poll_send<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            match ready!(Pin::new(&mut *w).poll_write(cx, &self.buf[self.sent..])) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the connection takes no more bytes",
                    )))
                }
                Ok(n) => self.sent += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        *self = Coalesce::default();
        Poll::Ready(Ok(()))
    }

    /// Write `bufs` (`len` bytes in all): held when they fit beside what is held already,
    /// else, once that is passed on, held if smaller than the buffer or written straight on.
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
        len: usize,
    ) -> Poll<io::Result<usize>> {
        if len == 0 {
            // Nothing to hold: no reason to allocate the buffer.
            return Poll::Ready(Ok(0));
        }
        if self.buf.len() + len > WRITE_BUFFER {
            ready!(self.poll_send(w, cx))?;
        }
        if len >= WRITE_BUFFER {
            return Pin::new(w).poll_write_vectored(cx, bufs);
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(WRITE_BUFFER);
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        (self.buf.len() - self.sent, self.buf.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream under: records each write it takes, and takes at most `per_write` bytes
    /// at a time, after saying "not now" once when `stall` is set.
    #[derive(Default)]
    struct Sink {
        writes: Vec<Vec<u8>>,
        per_write: Option<usize>,
        stall: bool,
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if std::mem::take(&mut self.stall) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = self.per_write.map_or(buf.len(), |p| p.min(buf.len()));
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write(c: &mut Coalesce, w: &mut Sink, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        c.poll_write(w, &mut cx, &[IoSlice::new(bytes)], bytes.len())
    }

    fn send(c: &mut Coalesce, w: &mut Sink) -> Poll<io::Result<()>> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        c.poll_send(w, &mut cx)
    }

    #[test]
    fn head_and_small_body_leave_in_one_write_and_the_buffer_is_freed() {
        let (mut c, mut w) = (Coalesce::default(), Sink::default());
        assert_eq!(c.held(), (0, 0), "nothing allocated before a response");
        assert!(matches!(write(&mut c, &mut w, b""), Poll::Ready(Ok(0))));
        assert_eq!(c.held(), (0, 0), "nor for an empty write");
        assert!(matches!(
            write(&mut c, &mut w, b"HTTP/1.1 200 OK\r\n\r\n"),
            Poll::Ready(Ok(19))
        ));
        assert!(matches!(write(&mut c, &mut w, b"body"), Poll::Ready(Ok(4))));
        assert!(w.writes.is_empty(), "held until the flush");
        assert!(matches!(send(&mut c, &mut w), Poll::Ready(Ok(()))));
        assert_eq!(w.writes, vec![b"HTTP/1.1 200 OK\r\n\r\nbody".to_vec()]);
        assert_eq!(c.held(), (0, 0), "freed once passed on");
    }

    #[test]
    fn a_large_write_goes_straight_on_after_what_is_held() {
        let (mut c, mut w) = (Coalesce::default(), Sink::default());
        let big = vec![b'x'; WRITE_BUFFER * 3];
        assert!(matches!(write(&mut c, &mut w, b"head"), Poll::Ready(Ok(4))));
        assert!(matches!(write(&mut c, &mut w, &big), Poll::Ready(Ok(n)) if n == big.len()));
        assert_eq!(w.writes, vec![b"head".to_vec(), big]);
        assert_eq!(c.held(), (0, 0));
    }

    #[test]
    fn bytes_that_overflow_the_buffer_send_it_first() {
        let (mut c, mut w) = (Coalesce::default(), Sink::default());
        let a = vec![b'a'; WRITE_BUFFER - 10];
        let b = vec![b'b'; 20];
        assert!(write(&mut c, &mut w, &a).is_ready());
        assert!(write(&mut c, &mut w, &b).is_ready());
        assert_eq!(w.writes, vec![a], "the held bytes went first");
        assert_eq!(c.held().0, 20, "the new ones are held");
    }

    #[test]
    fn partial_and_stalled_writes_lose_and_repeat_nothing() {
        let mut c = Coalesce::default();
        let mut w = Sink {
            per_write: Some(3),
            stall: true,
            ..Sink::default()
        };
        assert!(write(&mut c, &mut w, b"0123456789").is_ready());
        assert!(
            send(&mut c, &mut w).is_pending(),
            "the stream under is not ready"
        );
        assert_eq!(c.held().0, 10);
        assert!(matches!(send(&mut c, &mut w), Poll::Ready(Ok(()))));
        assert_eq!(w.writes.concat(), b"0123456789");
        assert_eq!(w.writes.len(), 4, "3 + 3 + 3 + 1");
    }

    #[test]
    fn a_stream_that_takes_nothing_is_an_error() {
        let mut c = Coalesce::default();
        let mut w = Sink {
            per_write: Some(0),
            ..Sink::default()
        };
        assert!(write(&mut c, &mut w, b"x").is_ready());
        match send(&mut c, &mut w) {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::WriteZero),
            other => panic!("{other:?}"),
        }
    }
}
