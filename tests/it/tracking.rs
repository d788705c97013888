//! A global allocator that counts the bytes each thread holds, so that a test can bound what
//! reading a file allocates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// [`System`], counting per thread.
pub struct Tracking;

thread_local! {
    // Const-initialised and without destructors: safe to touch from inside the allocator.
    static HELD: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = HELD.try_with(|held| {
        let now = held.get() + delta;
        held.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is passed to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        new
    }
}

/// Runs `f` and returns its result with the most bytes this thread held at once during it,
/// above what it held before. Allocations made on other threads are not seen.
pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = HELD.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get) - start;
    (out, peak.max(0) as usize)
}

/// Runs `f` and returns its result with the bytes this thread still holds afterwards, above
/// what it held before (0 if it holds less).
pub fn held_after<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = HELD.with(Cell::get);
    let out = f();
    let held = HELD.with(Cell::get) - start;
    (out, held.max(0) as usize)
}

/// [`peak_during`] with rayon's parallel work counted too: `f` runs in a rayon pool of this
/// one thread (made once per test thread: rayon keeps a thread in the first pool it joins),
/// so that every allocation it makes, on any "worker", is this thread's.
pub fn peak_with_rayon_here<T: Send>(f: impl FnOnce() -> T + Send) -> (T, usize) {
    POOL.with(|pool| peak_during(|| pool.install(f)))
}

/// [`held_after`] with rayon's parallel work counted too, as [`peak_with_rayon_here`]: a
/// buffer allocated on one thread and shrunk or freed on another would otherwise count as
/// held by the first.
pub fn held_with_rayon_here<T: Send>(f: impl FnOnce() -> T + Send) -> (T, usize) {
    POOL.with(|pool| held_after(|| pool.install(f)))
}

thread_local! {
    /// A rayon pool of this one thread (made once per test thread: rayon keeps a thread in
    /// the first pool it joins).
    static POOL: rayon::ThreadPool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .use_current_thread()
        .build()
        .expect("a pool of this thread");
}
