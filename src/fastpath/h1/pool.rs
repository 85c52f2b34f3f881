//! The idle connections of tollgate's own HTTP/1 client (`client.rs`): one pool per worker thread,
//! by backend address, and one sweeper task per pool that closes connections past their
//! upstream's `timeouts.idle`, whether or not their backend is used again.
//!
//! Pingora's pool spawns an idle-watch task for every connection it takes back; here checkout and
//! release cost a lock nobody else holds and a comparison. A connection the backend closed (or
//! wrote to unasked) is readable in tokio's readiness, which costs no system call, and is dropped
//! at checkout. The release that finds no sweeper armed arms one: it sleeps until the first idle
//! deadline, closes what is past its own, and ends when its pool is empty, so a backend that gets
//! no more traffic (one DNS discovery dropped) still has its sockets closed in time. The sweeper
//! holds its pool, not the thread-local: with one runtime per worker (`work_stealing: false`, the
//! default) it runs on the pool's thread, but a work-stealing runtime may move it to another
//! worker, hence the lock.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Context;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::timer::Lazy;

thread_local! {
    /// This thread's pool: its streams are checked out and released by the requests running
    /// on the thread, so its lock is uncontended but for the sweeper's rare visits.
    static POOL: Arc<Shared> = Arc::default();
}

#[derive(Default)]
struct Shared {
    pool: Mutex<Pool>,
    /// A connection was released with a deadline before the sweeper's next wake (an upstream
    /// with a shorter `timeouts.idle` on the same thread).
    sooner: Notify,
}

#[derive(Default)]
struct Pool {
    /// Idle connections by backend, oldest first: checkout takes the newest (the one least
    /// likely to have been closed), release drops stale ones from the old end.
    idle: HashMap<SocketAddr, VecDeque<Idle>, ahash::RandomState>,
    /// When the sweeper wakes next; `None`: none is armed.
    wake: Option<Instant>,
}

struct Idle {
    stream: TcpStream,
    /// The connection's read timer, which its requests share (`client.rs`).
    timer: Option<Lazy>,
    until: Instant,
}

impl Idle {
    /// Whether it can take a request: within its idle time and still quiet (neither closed nor
    /// written to).
    fn usable(&self, now: Instant) -> bool {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        self.until > now && self.stream.poll_read_ready(&mut cx).is_pending()
    }
}

/// An idle connection to `addr` from this thread's pool, if one is usable, with its timer.
pub fn checkout(addr: SocketAddr) -> Option<(TcpStream, Option<Lazy>)> {
    let now = Instant::now();
    POOL.with(|shared| {
        let mut p = shared.pool.lock();
        let idle = p.idle.get_mut(&addr)?;
        while let Some(i) = idle.pop_back() {
            if i.usable(now) {
                return Some((i.stream, i.timer));
            }
        }
        None
    })
}

/// Keep `stream` to `addr` (and its `timer`) in this thread's pool for `idle` (at most `cap`
/// per backend).
pub fn release(
    addr: SocketAddr,
    stream: TcpStream,
    timer: Option<Lazy>,
    idle: Duration,
    cap: usize,
) {
    let now = Instant::now();
    let until = now + idle;
    let wake = POOL.with(|shared| {
        let mut p = shared.pool.lock();
        let kept = p.idle.entry(addr).or_default();
        // The oldest may have expired or been closed meanwhile: those go first (only from the
        // old end, so a release costs O(1) whatever the pool holds).
        while kept.front().is_some_and(|i| !i.usable(now)) {
            kept.pop_front();
        }
        if kept.len() >= cap {
            return None;
        }
        kept.push_back(Idle {
            stream,
            timer,
            until,
        });
        match p.wake {
            Some(at) if at <= until => None,
            armed => {
                p.wake = Some(until);
                Some((shared.clone(), armed.is_none()))
            }
        }
    });
    match wake {
        None => {}
        Some((shared, false)) => shared.sooner.notify_one(),
        Some((shared, true)) => drop(tokio::spawn(sweep(shared))),
    }
}

impl Pool {
    /// Take out every connection past its deadline or closed by its backend (into `gone`, to
    /// be dropped outside the lock), forget backends left with none, and say when the next one
    /// expires.
    fn sweep(&mut self, now: Instant, gone: &mut Vec<Idle>) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        self.idle.retain(|_, q| {
            for _ in 0..q.len() {
                let Some(i) = q.pop_front() else { break };
                if i.usable(now) {
                    next = Some(next.map_or(i.until, |n| n.min(i.until)));
                    q.push_back(i);
                } else {
                    gone.push(i);
                }
            }
            !q.is_empty()
        });
        next
    }
}

/// The sweeper of one pool, until it is empty.
async fn sweep(shared: Arc<Shared>) {
    /// Disarms the pool if the task is dropped unfinished (its runtime shut down), so that a
    /// later release arms a new one.
    struct Armed(Arc<Shared>, bool);
    impl Drop for Armed {
        fn drop(&mut self) {
            if self.1 {
                self.0.pool.lock().wake = None;
            }
        }
    }
    let mut armed = Armed(shared, true);
    let mut gone = Vec::new();
    loop {
        let next = {
            let mut p = armed.0.pool.lock();
            p.wake = p.sweep(Instant::now(), &mut gone);
            p.wake
        };
        gone.clear();
        let Some(at) = next else {
            armed.1 = false;
            return;
        };
        let sooner = armed.0.sooner.notified();
        let _ = tokio::time::timeout_at(at.into(), sooner).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connection to a fresh listener, released into this thread's pool for `idle`; the
    /// backend's end of it.
    async fn pooled(idle: Duration) -> (SocketAddr, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let ours = TcpStream::connect(addr).await.unwrap();
        let (theirs, _) = l.accept().await.unwrap();
        release(addr, ours, None, idle, 8);
        (addr, theirs)
    }

    /// How long until the gateway's end closes (`None`: not within `limit`).
    async fn closed_within(theirs: &mut TcpStream, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut buf = [0u8; 1];
        match tokio::time::timeout(limit, theirs.read(&mut buf)).await {
            Ok(Ok(0)) => Some(start.elapsed()),
            _ => None,
        }
    }

    fn armed() -> bool {
        POOL.with(|s| s.pool.lock().wake.is_some())
    }

    fn backends() -> usize {
        POOL.with(|s| s.pool.lock().idle.len())
    }

    async fn a_shorter_idle_time_released_later_is_kept_to() {
        let (_, mut long) = pooled(Duration::from_secs(60)).await;
        let (_, mut short) = pooled(Duration::from_millis(100)).await;
        let closed = closed_within(&mut short, Duration::from_secs(2)).await;
        assert!(closed.is_some(), "the 100ms connection is still open");
        assert!(closed_within(&mut long, Duration::from_millis(200))
            .await
            .is_none());
        assert_eq!(backends(), 1, "the emptied backend is forgotten");
    }

    async fn the_sweeper_ends_with_its_pool_and_is_armed_again() {
        for round in 0..2 {
            let (addr, mut theirs) = pooled(Duration::from_millis(50)).await;
            assert!(armed(), "round {round}");
            let closed = closed_within(&mut theirs, Duration::from_secs(2)).await;
            assert!(closed.is_some(), "round {round}");
            assert!(checkout(addr).is_none());
            // The sweeper saw its pool empty and ends: the next release arms a new one.
            let deadline = Instant::now() + Duration::from_secs(2);
            while armed() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(!armed(), "round {round}");
        }
    }

    async fn a_pooled_connection_is_reused_within_its_idle_time() {
        let (addr, mut theirs) = pooled(Duration::from_secs(60)).await;
        let (again, _) = checkout(addr).expect("the idle connection");
        assert!(checkout(addr).is_none(), "taken out of the pool");
        release(addr, again, None, Duration::from_secs(60), 8);
        let held = checkout(addr);
        assert!(held.is_some(), "back in the pool");
        assert!(closed_within(&mut theirs, Duration::from_millis(50))
            .await
            .is_none());
    }

    /// `body` on a fresh thread with a runtime of its own (tollgate's default layout), so that
    /// it starts with an empty pool whatever ran on the test's thread before.
    fn on_own_thread<F: std::future::Future<Output = ()> + 'static>(body: fn() -> F) {
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(body())
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_shorter_idle_time_released_later_is_kept_to_by_one_runtime_per_thread() {
        on_own_thread(a_shorter_idle_time_released_later_is_kept_to);
    }

    #[test]
    fn the_sweeper_ends_with_its_pool_and_is_armed_again_by_the_next_release() {
        on_own_thread(the_sweeper_ends_with_its_pool_and_is_armed_again);
    }

    #[test]
    fn a_pooled_connection_is_reused_within_its_idle_time_not_closed() {
        on_own_thread(a_pooled_connection_is_reused_within_its_idle_time);
    }

    /// A work-stealing runtime: a task releases into the pool of the worker it runs on at the
    /// time, and that pool's sweeper may run on another worker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_closed_in_time_by_a_work_stealing_runtime() {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                tokio::spawn(async move {
                    let idle = Duration::from_millis(if i % 2 == 0 { 60_000 } else { 100 });
                    let (_, mut theirs) = pooled(idle).await;
                    let closed = closed_within(&mut theirs, Duration::from_secs(2)).await;
                    assert_eq!(
                        closed.is_some(),
                        i % 2 == 1,
                        "connection {i} ({idle:?} idle)"
                    );
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
}
