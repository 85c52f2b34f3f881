//! Keeping RSS to what is used: no transparent huge pages, and freed memory given back to the OS
//! once a burst of connections has gone idle.
//!
//! mimalloc, tollgate's allocator (`src/main.rs`), reserves its memory in one large arena. Where
//! the kernel backs anonymous memory with transparent huge pages
//! (`/sys/kernel/mm/transparent_hugepage/enabled` is `always`, Debian's default), each huge page
//! of it the process touches at all is resident whole. A proxy's working set is small and its
//! allocations scattered, so huge pages buy it little and cost it memory: [`no_huge_pages`] turns
//! them off for the process (as Redis and most databases advise), before the heap grows.
//!
//! mimalloc returns freed pages to the OS only lazily, from later allocation calls on the same
//! thread, which a thread that has just parked thousands of idle connections (`conn/park.rs`)
//! does not make. So a thread that parked a connection collects its heap once per [`SETTLE`],
//! however many it parked: a walk of its heap, only after connections went idle, never per request.

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
