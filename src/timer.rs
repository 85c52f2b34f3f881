//! One entry of tokio's timer for a deadline that keeps moving, mostly later: a keep-alive
//! connection's wait for its next request, an upstream connection's reads, a WebSocket
//! tunnel's idle time. Registering a fresh entry for each wait and cancelling it when the wait
//! ends early (as it nearly always does) is most of what such a timeout costs; kept on one
//! entry that is moved only when it goes off early, a wait costs a clock read.

use std::future::Future;
use std::ops::DerefMut;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::time::{Instant, Sleep};

/// A deadline kept on one entry of tokio's timer, re-armed lazily: moving the deadline later
/// only writes it down; the entry is moved when it goes off before the deadline, or when the
/// deadline comes sooner than it. The entry is boxed, or pinned where its owner lives
/// (`Lazy<&mut Sleep>`).
#[derive(Debug)]
pub struct Lazy<P = Box<Sleep>> {
    timer: Pin<P>,
    due: Instant,
}

impl Lazy {
    pub fn new(due: Instant) -> Self {
        Lazy::on(Box::pin(tokio::time::sleep_until(due)))
    }

    /// `timer` set to `due`, made on its first use.
    pub fn arm(timer: &mut Option<Lazy>, due: Instant) -> &mut Lazy {
        let t = timer.get_or_insert_with(|| Lazy::new(due));
        t.set(due);
        t
    }
}

impl<P: DerefMut<Target = Sleep>> Lazy<P> {
    /// Kept on `timer`, due when it is.
    pub fn on(timer: Pin<P>) -> Self {
        let due = timer.deadline();
        Lazy { timer, due }
    }

    /// Expire at `due` instead.
    #[inline]
    pub fn set(&mut self, due: Instant) {
        if due < self.timer.deadline() {
            self.timer.as_mut().reset(due);
        }
        self.due = due;
    }

    /// Let go of the waker of the task that last waited: an owner that sits idle (a pooled
    /// connection) would otherwise keep that task's memory alive after it ended.
    pub fn detach(&mut self) {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let _ = self.timer.as_mut().poll(&mut cx);
    }

    /// Ready once the deadline has passed; until then the task is woken at it (and maybe once
    /// before, at an older deadline, which re-arms the entry).
    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            if Instant::now() >= self.due {
                return Poll::Ready(());
            }
            self.timer.as_mut().reset(self.due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A deadline moved later is kept to, not the entry's older one; one moved sooner is
    /// kept to as well; after it passed, a later one is waited for again.
    #[tokio::test(start_paused = true)]
    async fn a_lazy_deadline_is_the_last_one_set() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let ms = Duration::from_millis;
        let mut timer = None;
        let start = Instant::now();
        Lazy::arm(&mut timer, start + ms(100));
        let t = Lazy::arm(&mut timer, start + ms(300));
        tokio::time::advance(ms(150)).await;
        assert!(
            t.poll_due(&mut cx).is_pending(),
            "the older deadline went off"
        );
        t.set(start + ms(200));
        tokio::time::advance(ms(49)).await;
        assert!(t.poll_due(&mut cx).is_pending());
        tokio::time::advance(ms(2)).await;
        assert!(t.poll_due(&mut cx).is_ready(), "moved sooner, to 200ms");
        t.set(Instant::now() + ms(100));
        assert!(t.poll_due(&mut cx).is_pending(), "past, then set later");
        tokio::time::advance(ms(101)).await;
        assert!(t.poll_due(&mut cx).is_ready());
    }

    /// A detached timer holds no task's waker: a pooled connection's keeps no ended task's
    /// memory alive.
    #[tokio::test(start_paused = true)]
    async fn a_detached_timer_holds_no_waker() {
        struct Task;
        impl futures::task::ArcWake for Task {
            fn wake_by_ref(_: &std::sync::Arc<Self>) {}
        }
        let task = std::sync::Arc::new(Task);
        let waker = futures::task::waker(task.clone());
        let mut timer = Lazy::new(Instant::now() + Duration::from_secs(1));
        assert!(timer
            .poll_due(&mut Context::from_waker(&waker))
            .is_pending());
        drop(waker);
        assert_eq!(
            std::sync::Arc::strong_count(&task),
            2,
            "the entry holds the waker"
        );
        timer.detach();
        assert_eq!(std::sync::Arc::strong_count(&task), 1);
    }
}
