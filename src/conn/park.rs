//! Where a cleartext keep-alive connection waits once it has been idle for [`PARK_AFTER`]: not
//! in a task of its own but as an entry in its service's lot, a table of sockets behind one epoll
//! instance, so that a long-idle connection holds only its entry and its deadline, and the memory
//! its task held goes back to the OS (`crate::alloc`).
//!
//! A connection silent that long is unlikely to speak within microseconds, so it gives up its
//! task and its tokio registration: its socket moves to the lot's epoll set (level-triggered,
//! one-shot). The lot's one task watches that set through one tokio registration; a socket that
//! turns readable (a request, or its client closing) is taken out and served by a fresh task on a
//! random worker (`plain.rs`). Parking and leaving cost a few syscalls once per idle period, never
//! per request, so one mutex over the table, shared by the workers, is enough. The wait's rules
//! hold (`keepalive::idle_wait`): a parked connection is closed at its keep-alive deadline, and
//! on shutdown all are closed but those still waiting for a first request, kept to their deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pingora::apps::HttpServerApp;
use pingora::server::ShutdownWatch;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

use super::keepalive::Carried;
use super::{Gate, Serve, Slot};

/// How long a connection waits for its next request in its own task before it is parked.
/// Well above the gap between the requests of a busy client, even under a closed-loop load
/// of hundreds of connections on one core, so only connections that are really idle pay the
/// syscalls of parking.
pub(super) const PARK_AFTER: Duration = Duration::from_secs(1);

/// Most readiness events taken from the epoll set in one call.
const EVENTS: usize = 256;

/// What a connection keeps between requests besides its socket.
#[derive(Debug)]
pub(super) struct Conn {
    pub peer: SocketAddr,
    pub accepted: SystemTime,
    /// Its client's per-IP slot, held until the connection ends.
    pub _slot: Option<Slot>,
    /// Boxed, and only once Pingora served a request here: most never carry anything.
    pub carried: Option<Box<Carried>>,
    /// No request has been served yet.
    pub first: bool,
}

/// A connection in the lot.
#[derive(Debug)]
pub(super) struct Parked {
    pub tcp: std::net::TcpStream,
    pub conn: Conn,
    /// When its keep-alive timeout ends it.
    pub deadline: Instant,
}

/// One service's parked connections.
pub(super) struct Lot {
    epoll: AsyncFd<OwnedFd>,
    state: Mutex<State>,
    /// Rung when a connection parks with an earlier deadline than any the task sleeps to.
    sooner: Notify,
}

#[derive(Default)]
struct State {
    /// Indexed by the low half of an entry's key; the high half is the number of its
    /// connection's park (counted from 0, for the whole lot), so an event or a deadline of a
    /// connection that has left never reaches the next one there.
    /// In chunks of [`CHUNK`], so the table grows without copying itself or keeping a
    /// doubling's slack (a `Vec` of 10,000 entries would hold room for 16,384).
    chunks: Vec<Box<[Entry]>>,
    free: Vec<u32>,
    live: usize,
    parks: u32,
    /// Deadlines of parked connections, and of some that have left (dropped when popped,
    /// or all at once when they outnumber the live ones).
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    closing: bool,
}

const CHUNK: usize = 256;

/// The bytes of the lot's table one parked connection takes, for `examples/conn_memory.rs`.
pub(super) const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

#[derive(Default)]
struct Entry {
    generation: u32,
    parked: Option<Parked>,
}

impl Entry {
    /// The key of this entry's connection, at `index` in the table.
    fn key(&self, index: u32) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(index)
    }
}

impl State {
    fn entry(&self, index: u32) -> Option<&Entry> {
        let index = index as usize;
        self.chunks.get(index / CHUNK).map(|c| &c[index % CHUNK])
    }

    fn entry_mut(&mut self, index: u32) -> Option<&mut Entry> {
        let index = index as usize;
        self.chunks
            .get_mut(index / CHUNK)
            .map(|c| &mut c[index % CHUNK])
    }

    /// Whether `key` is a connection still parked.
    fn holds(&self, key: u64) -> bool {
        self.entry(key as u32)
            .is_some_and(|e| e.key(key as u32) == key && e.parked.is_some())
    }

    fn insert(&mut self, parked: Parked) -> u64 {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let first = (self.chunks.len() * CHUNK) as u32;
                self.chunks
                    .push((0..CHUNK).map(|_| Entry::default()).collect());
                self.free.extend((first + 1..first + CHUNK as u32).rev());
                first
            }
        };
        let chunk = &mut self.chunks[index as usize / CHUNK];
        let entry = &mut chunk[index as usize % CHUNK];
        entry.parked = Some(parked);
        entry.generation = self.parks;
        self.parks = self.parks.wrapping_add(1);
        self.live += 1;
        entry.key(index)
    }

    fn remove(&mut self, key: u64) -> Option<Parked> {
        let index = key as u32;
        let entry = self.entry_mut(index)?;
        if entry.key(index) != key {
            return None;
        }
        let parked = entry.parked.take()?;
        self.free.push(index);
        self.live -= 1;
        if self.live == 0 {
            // After a burst, the table is given back whole (the deadlines left are all of
            // connections that left).
            self.chunks = Vec::new();
            self.free = Vec::new();
            self.deadlines = BinaryHeap::new();
        }
        Some(parked)
    }
}

impl Lot {
    /// A lot whose epoll set is watched by the current runtime's reactor.
    pub(super) fn new() -> io::Result<Lot> {
        // SAFETY: plain syscall; the fd it returns is owned by nothing else.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the `OwnedFd` keeps `fd` open, and the `AsyncFd` owns it for its life.
        let epoll = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
        Ok(Lot {
            epoll,
            state: Mutex::default(),
            sooner: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leave `parked` here until its client speaks, closes, or its deadline passes. Once the
    /// server is shutting down only a connection waiting for its first request is kept; any
    /// other is closed, as its own task would have closed it.
    pub(super) fn park(&self, parked: Parked) {
        let deadline = parked.deadline;
        let fd = parked.tcp.as_raw_fd();
        let mut state = self.state();
        if state.closing && !parked.conn.first {
            return;
        }
        let key = state.insert(parked);
        // Added under the lock: until then nothing (a deadline passing) can close the socket
        // and free its fd number for another.
        let events = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32;
        if epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, events, key).is_err() {
            // Out of kernel memory for the set: the connection ends, as at its deadline.
            drop(state.remove(key));
            return;
        }
        let sooner = state
            .deadlines
            .peek()
            .is_none_or(|Reverse((first, _))| deadline < *first);
        state.deadlines.push(Reverse((deadline, key)));
        if state.deadlines.len() > 2 * state.live + 64 {
            let mut deadlines = std::mem::take(&mut state.deadlines);
            deadlines.retain(|Reverse((_, key))| state.holds(*key));
            state.deadlines = deadlines;
        }
        drop(state);
        if sooner {
            self.sooner.notify_one();
        }
    }

    /// The connection of `key`, out of the set; `None` if it has left already.
    fn take(&self, key: u64) -> Option<Parked> {
        let parked = self.state().remove(key)?;
        let fd = parked.tcp.as_raw_fd();
        let _ = epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, 0, 0);
        Some(parked)
    }

    /// Close the connections whose deadline is `now` or past; the next deadline.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut ended = Vec::new();
        let mut state = self.state();
        while let Some(&Reverse((deadline, key))) = state.deadlines.peek() {
            if deadline > now {
                break;
            }
            state.deadlines.pop();
            ended.extend(state.remove(key));
        }
        let next = state.deadlines.peek().map(|Reverse((d, _))| *d);
        drop(state);
        // Closed outside the lock: each gives back its per-IP slot.
        drop(ended);
        next
    }

    /// The server is shutting down: close every connection but those awaiting their first
    /// request, and refuse such others from now on.
    fn close(&self) {
        let mut state = self.state();
        state.closing = true;
        let mut ended = Vec::new();
        for index in 0..(state.chunks.len() * CHUNK) as u32 {
            let Some(entry) = state.entry(index) else {
                break;
            };
            if entry.parked.as_ref().is_some_and(|p| !p.conn.first) {
                let key = entry.key(index);
                ended.extend(state.remove(key));
            }
        }
        drop(state);
        drop(ended);
    }
}

/// Watch `lot` for the life of the service: hand each connection whose socket turns
/// readable to a new task ([`super::plain::resume`]), close those past their deadline, and
/// the idle ones when the server starts shutting down.
pub(super) async fn watch<A, S>(lot: Arc<Lot>, gate: Arc<Gate<A, S>>, mut shutdown: ShutdownWatch)
where
    A: HttpServerApp + Send + Sync + 'static,
    S: Serve,
{
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    let mut next: Option<Instant> = None;
    let mut closing = false;
    loop {
        let at = next;
        let sleep = async move {
            match at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        // Unbiased: a stream of wake-ups does not hold back deadlines or the shutdown.
        tokio::select! {
            ready = lot.epoll.readable() => {
                let mut guard = match ready {
                    Ok(guard) => guard,
                    Err(e) => {
                        log::error!("idle connections: their epoll set failed: {e}");
                        return;
                    }
                };
                let fd = lot.epoll.as_raw_fd();
                let n = match guard.try_io(|_| epoll_wait(fd, &mut events)) {
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Ok(Err(e)) => {
                        log::error!("idle connections: epoll_wait failed: {e}");
                        return;
                    }
                    Err(_would_block) => continue,
                };
                for event in &events[..n] {
                    let Some(parked) = lot.take(event.u64) else { continue };
                    let conn = super::plain::resume(gate.clone(), lot.clone(), parked, shutdown.clone());
                    // On a random worker, as a new connection is (`accept.rs`).
                    pingora_runtime::current_handle().spawn(conn);
                }
            }
            () = sleep => next = lot.expire(Instant::now()),
            () = lot.sooner.notified() => next = lot.expire(Instant::now()),
            changed = shutdown.changed(), if !closing => {
                if changed.is_err() || *shutdown.borrow() {
                    closing = true;
                    lot.close();
                }
            }
        }
    }
}

fn epoll_ctl(epoll: RawFd, op: libc::c_int, fd: RawFd, events: u32, key: u64) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: key };
    // SAFETY: `event` outlives the call; the kernel only reads it.
    if unsafe { libc::epoll_ctl(epoll, op, fd, &mut event) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The events ready now, without blocking; `WouldBlock` when there are none, so tokio
/// clears the set's readiness.
fn epoll_wait(epoll: RawFd, events: &mut [libc::epoll_event]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `events.len()` entries into `events`.
    let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 0) };
    match n {
        n if n < 0 => Err(io::Error::last_os_error()),
        0 => Err(io::ErrorKind::WouldBlock.into()),
        n => Ok(n as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parked connection on a copy of `tcp`'s socket.
    fn parked(tcp: &std::net::TcpStream, first: bool) -> Parked {
        Parked {
            conn: Conn {
                peer: tcp.local_addr().unwrap(),
                accepted: SystemTime::now(),
                _slot: None,
                carried: None,
                first,
            },
            tcp: tcp.try_clone().unwrap(),
            deadline: Instant::now(),
        }
    }

    fn socket() -> (std::net::TcpListener, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener, tcp)
    }

    #[test]
    fn a_key_of_a_connection_that_left_never_reaches_the_next_one_in_its_place() {
        let (_listener, tcp) = socket();
        let mut state = State::default();
        let old = state.insert(parked(&tcp, true));
        assert!(state.holds(old));
        assert!(state.remove(old).is_some_and(|p| p.conn.first));
        assert!(!state.holds(old) && state.remove(old).is_none());
        let new = state.insert(parked(&tcp, false));
        assert_eq!(new as u32, old as u32, "the entry is reused");
        assert!(state.remove(old).is_none(), "a stale event or deadline");
        assert!(state.remove(new).is_some_and(|p| !p.conn.first));
        assert_eq!(state.live, 0);
    }

    #[test]
    fn the_table_grows_a_chunk_at_a_time_and_reuses_what_is_freed() {
        let (_listener, tcp) = socket();
        let mut state = State::default();
        let keys: Vec<u64> = (0..CHUNK + 1)
            .map(|_| state.insert(parked(&tcp, false)))
            .collect();
        assert_eq!(state.chunks.len(), 2);
        let mut indices: Vec<u32> = keys.iter().map(|k| *k as u32).collect();
        indices.sort_unstable();
        indices.dedup();
        assert_eq!(indices.len(), CHUNK + 1, "each connection its own entry");
        let last = keys.len() - 1;
        for k in &keys[..last] {
            assert!(state.remove(*k).is_some());
        }
        for _ in 0..CHUNK {
            state.insert(parked(&tcp, false));
        }
        assert_eq!(
            state.chunks.len(),
            2,
            "freed entries are used before a new chunk"
        );
        assert_eq!(state.live, CHUNK + 1);
        let all: Vec<u64> = (0..(2 * CHUNK) as u32)
            .filter_map(|i| {
                let e = state.entry(i)?;
                e.parked.as_ref()?;
                Some(e.key(i))
            })
            .collect();
        for k in all {
            assert!(state.remove(k).is_some());
        }
        assert!(state.chunks.is_empty(), "an empty table is given back");
        assert!(!state.holds(keys[0]) && state.remove(keys[last]).is_none());
        let again = state.insert(parked(&tcp, false));
        assert_ne!(again, keys[0], "a key is never handed out twice");
    }
}
