//! A counting global allocator, for the tests and benches that count heap allocations a
//! decision.
//!
//! It counts only on a thread that turned counting on, so allocations made by other tests
//! running in parallel (or by other runtime threads) do not count; [`allocations_during`]
//! serializes measurements, because the count itself is one atomic. A test binary installs it
//! with:
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: ratelimit_tests::CountingAllocator = ratelimit_tests::CountingAllocator;
//! ```

// A global allocator is an `unsafe impl GlobalAlloc`; the workspace denies unsafe code. The impl
// only forwards to `System` and counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Forwards to the system allocator, counting allocations made on threads that asked for it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Counts on every thread (see [`allocations_everywhere_during`]).
static EVERYWHERE: AtomicBool = AtomicBool::new(false);

/// Serializes measurements: they share [`ALLOCATIONS`].
static MEASURING: Mutex<()> = Mutex::new(());

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    // `try_with`: the flag may already be gone while a thread shuts down.
    if EVERYWHERE.load(Ordering::Relaxed) || COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees hold; counting touches only an atomic and a const-initialized thread-local `Cell`,
// neither of which allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` was allocated by this allocator, that is by `System`, with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, that is by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Heap allocations made on this thread while `runtime` runs the future `decisions` builds
/// (built before counting starts). Counts only when [`CountingAllocator`] is the binary's global
/// allocator; 0 otherwise.
pub fn allocations_during<F: Future<Output = ()>>(
    runtime: &tokio::runtime::Runtime,
    decisions: impl FnOnce() -> F,
) -> u64 {
    measure(runtime, decisions, |on| COUNTING.with(|c| c.set(on)))
}

/// Heap allocations made on every thread of the process while `runtime` runs the future
/// `decisions` builds: what [`allocations_during`] counts plus the work other threads do for
/// it, such as the redis crate's connection readers on their I/O thread. Only meaningful in a process
/// where nothing else runs meanwhile (a bench's `main`, not a test binary's parallel tests).
pub fn allocations_everywhere_during<F: Future<Output = ()>>(
    runtime: &tokio::runtime::Runtime,
    decisions: impl FnOnce() -> F,
) -> u64 {
    measure(runtime, decisions, |on| {
        EVERYWHERE.store(on, Ordering::Relaxed)
    })
}

/// Counts while `counting(true)` .. `counting(false)` hold, around the future `decisions` builds.
fn measure<F: Future<Output = ()>>(
    runtime: &tokio::runtime::Runtime,
    decisions: impl FnOnce() -> F,
    counting: impl Fn(bool),
) -> u64 {
    let _serial = MEASURING.lock().unwrap_or_else(PoisonError::into_inner);
    let measured = decisions();
    runtime.block_on(async {
        ALLOCATIONS.store(0, Ordering::Relaxed);
        counting(true);
        measured.await;
        counting(false);
    });
    ALLOCATIONS.load(Ordering::Relaxed)
}
