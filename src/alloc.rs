//! Keeping RSS to what is used: no transparent huge pages, and freed memory given back to the
//! OS once a burst of connections has gone idle.
//!
//! mimalloc reserves its memory in one large arena. Where the kernel backs anonymous memory
//! with transparent huge pages (`/sys/kernel/mm/transparent_hugepage/enabled` is `always`,
//! Debian's default), each 2 MiB of that arena the process touches at all becomes 2 MiB of
//! RSS: a fresh tollgate held 8 MiB of it for a few hundred KiB of heap, a third of its RSS.
//! A proxy's working set is small and its allocations scattered, so huge pages buy it little
//! TLB reach and cost it memory; [`no_huge_pages`] turns them off for the process (as Redis
//! and most databases advise), before the heap grows.
//!
//! tollgate's allocator is mimalloc (`src/main.rs`). Like most allocators it keeps the pages
//! it has freed for the next allocation, and returns them to the OS only lazily, from within
//! later allocation calls on the same thread. A worker thread that has just moved thousands
//! of idle connections out of their tasks (`conn/park.rs`) makes no such calls: the tasks'
//! memory stayed resident, and RSS stayed at the burst's peak (1.5 KiB per connection
//! instead of 0.3). So a thread that parked a connection collects its heap shortly after,
//! once per [`SETTLE`] however many it parked. It costs a walk of that thread's heap, only
//! after connections went idle, never per request.

use std::cell::Cell;
use std::time::Duration;

/// How long after a connection parks its thread collects: the rest of a burst parks first.
const SETTLE: Duration = Duration::from_millis(200);

thread_local! {
    static PENDING: Cell<bool> = const { Cell::new(false) };
}

/// No transparent huge pages for this process from now on (`PR_SET_THP_DISABLE`; inherited
/// by the process a graceful upgrade starts). Where that fails (a kernel before 3.15) the
/// kernel's setting stands, which costs memory, not correctness.
pub fn no_huge_pages() {
    // SAFETY: plain syscall with integer arguments.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Have this thread give its freed memory back to the OS in [`SETTLE`], unless it already
/// will. Must be called from within a tokio runtime.
pub fn trim_soon() {
    if PENDING.with(|p| p.replace(true)) {
        return;
    }
    // On this thread with tollgate's default runtimes (one current-thread runtime per worker,
    // `work_stealing: false`): where the memory was freed, the heap mimalloc collects. With
    // work stealing it may run on another worker, and collect that one's.
    tokio::spawn(async {
        tokio::time::sleep(SETTLE).await;
        PENDING.with(|p| p.set(false));
        // SAFETY: no preconditions; `force` also returns the pages of empty segments.
        unsafe { libmimalloc_sys::mi_collect(true) };
    });
}
