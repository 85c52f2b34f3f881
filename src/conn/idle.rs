//! The idle timer of an upgraded (WebSocket) client connection, run inside its stream
//! ([`super::Guarded`]), which sees every byte of the tunnel going either way.

use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::timer::Lazy;

/// The idle timer of one upgraded client connection: it expires when no byte moved in either
/// direction for `idle`. Every read and write touches it (one clock read); the timer itself
/// is only polled when the connection has nothing to do.
#[derive(Debug)]
pub struct Idle {
    idle: Duration,
    timer: Lazy,
    fired: bool,
}

impl Idle {
    pub fn new(idle: Duration) -> Self {
        Idle {
            idle,
            timer: Lazy::new(Instant::now() + idle),
            fired: false,
        }
    }

    /// Whether the timer expired (the connection is then closed).
    pub fn expired_once(&self) -> bool {
        self.fired
    }

    /// A read's outcome on the tunnel: bytes read touch the timer; a read that would wait on
    /// a connection silent for the whole timeout sees the end of the stream instead, so
    /// Pingora ends the tunnel as if the client had closed (both sides are closed, and no
    /// error is logged).
    pub fn on_read(
        &mut self,
        cx: &mut Context<'_>,
        read: bool,
        r: Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        match r {
            Poll::Ready(Ok(())) if read => self.touch(),
            Poll::Pending if self.expired(cx) => return Poll::Ready(Ok(())),
            _ => {}
        }
        r
    }

    /// A write's outcome on the tunnel: bytes written touch the timer; a write that cannot
    /// proceed (the client reads nothing) fails once the connection was silent too long.
    pub fn on_write(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) if n > 0 => self.touch(),
            Poll::Pending if self.expired(cx) => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "websocket_idle_timeout: the client reads nothing",
                )))
            }
            _ => {}
        }
        r
    }

    /// Bytes moved.
    #[inline]
    pub fn touch(&mut self) {
        self.timer.set(Instant::now() + self.idle);
    }

    /// On a pending read or write: whether the connection has been silent for the whole
    /// timeout. Otherwise the timer is registered with the task for the next possible expiry.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let due = self.timer.poll_due(cx).is_ready();
        self.fired |= due;
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expires_only_after_a_silent_timeout() {
        let mut idle = Idle::new(Duration::from_millis(100));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(!idle.expired(&mut cx));
        tokio::time::advance(Duration::from_millis(60)).await;
        idle.touch();
        tokio::time::advance(Duration::from_millis(60)).await;
        assert!(!idle.expired(&mut cx), "touched 60ms ago");
        tokio::time::advance(Duration::from_millis(41)).await;
        assert!(idle.expired(&mut cx));
    }
}
