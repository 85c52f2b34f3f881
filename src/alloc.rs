//! tollgate's allocator, and keeping RSS to what is used: no transparent huge pages, and freed
//! memory given back to the OS once a burst of connections has gone idle.
//!
//! [`Mimalloc`] is mimalloc asked as the C `malloc` is: a request whose alignment every block
//! of its size already has goes to `mi_malloc`, only the rest to `mi_malloc_aligned`. (The
//! `mimalloc` crate sends every request to `mi_malloc_aligned`, whose fast path in mimalloc 3
//! covers only blocks up to 1 KiB with a free block at hand; otherwise it over-allocates a
//! block of a larger size class and marks its page as holding aligned blocks, which slows
//! every free there. A request's futures and header maps are such allocations.)
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

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::c_void;
use std::time::Duration;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block of at least this many bytes has (`MI_MAX_ALIGN_SIZE`:
/// its size classes are multiples of 16 bytes from 16 up, and 8-byte blocks are 8-aligned).
const NATURAL_ALIGN: usize = 16;

/// mimalloc as the global allocator (`#[global_allocator]` in `src/main.rs`).
pub struct Mimalloc;

/// Whether `mi_malloc(size)` already returns an address aligned as `layout` asks.
#[inline(always)]
fn natural(align: usize, size: usize) -> bool {
    align <= NATURAL_ALIGN && align <= size
}

/// A new block for `layout`, zeroed if `zero`.
///
/// # Safety
/// As [`GlobalAlloc::alloc`]: `layout` has a non-zero size.
#[inline(always)]
unsafe fn block(layout: Layout, zero: bool) -> *mut u8 {
    let (size, align) = (layout.size(), layout.align());
    // SAFETY: FFI with a size and a power-of-two alignment (`Layout` guarantees it).
    let p = unsafe {
        match (natural(align, size), zero) {
            (true, false) => mi::mi_malloc(size),
            (true, true) => mi::mi_zalloc(size),
            (false, false) => mi::mi_malloc_aligned(size, align),
            (false, true) => mi::mi_zalloc_aligned(size, align),
        }
    };
    p.cast()
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` takes blocks of both
// kinds); `mi_malloc` serves only layouts whose alignment its blocks of that size have
// (`natural`), `mi_malloc_aligned` the rest; a null return is passed on as an allocation failure.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `block`'s.
        unsafe { block(layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe { block(layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (the caller's contract); the
        // new block is aligned as `layout` asks, by `natural` or by `mi_realloc_aligned`.
        unsafe {
            if natural(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout gets a block aligned as asked, zeroed where asked, and a reallocation keeps
    /// the bytes and the alignment, across both branches of `natural`.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let a = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 3, 8, 12, 16, 24, 40, 100, 864, 1025, 3520, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; every block is freed with its layout below.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc({size}, {align})");
                    std::ptr::write_bytes(p, 0xA5, size);
                    let grown = size * 3 + 5;
                    let q = a.realloc(p, layout, grown);
                    assert_eq!(q as usize % align, 0, "realloc({size} -> {grown}, {align})");
                    assert!(std::slice::from_raw_parts(q, size)
                        .iter()
                        .all(|&b| b == 0xA5));
                    a.dealloc(q, Layout::from_size_align(grown, align).unwrap());

                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "alloc_zeroed({size}, {align})");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }

    /// Shrinking below the alignment moves a block to the aligned path and keeps what fits.
    #[test]
    fn shrinking_below_the_alignment_stays_aligned() {
        let a = Mimalloc;
        let layout = Layout::from_size_align(64, 16).unwrap();
        // SAFETY: as above.
        unsafe {
            let p = a.alloc(layout);
            std::ptr::write_bytes(p, 7, 64);
            let q = a.realloc(p, layout, 8);
            assert_eq!(q as usize % 16, 0);
            assert!(std::slice::from_raw_parts(q, 8).iter().all(|&b| b == 7));
            a.dealloc(q, Layout::from_size_align(8, 16).unwrap());
        }
    }
}
