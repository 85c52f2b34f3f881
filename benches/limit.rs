//! The local limiter check at 1, 10k and 1M active keys (ns/op), and the memory it holds per
//! key (printed once per size, measured with a counting allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tollgate::policy::limit::local::{Gcra, LocalStore};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SEC: u64 = 1_000_000_000;

fn key(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn bench(c: &mut Criterion) {
    // Generous enough that the benchmark itself is never denied.
    let g = Gcra::new(1_000_000, SEC, 1_000_000);
    let mut group = c.benchmark_group("limit_check");
    for n in [1u64, 10_000, 1_000_000] {
        let before = LIVE.load(Ordering::Relaxed);
        let store = LocalStore::default();
        for i in 0..n {
            store.check(&g, key(i), 0);
        }
        let bytes = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "limit_check/{n}: {} keys, {bytes} bytes, {:.1} bytes/key",
            store.len(),
            bytes as f64 / n as f64
        );
        let mut i = 0u64;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                i = (i + 1) % n;
                black_box(store.check(&g, key(i), 1))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
