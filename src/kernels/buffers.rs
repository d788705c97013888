//! Memory for the kernels: activation buffers kept between layers and calls, zeroed
//! allocations that do not fault pages twice, and channels-last activations.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rayon::prelude::*;

/// The default budget of kept activation buffers: 256 MiB, enough to keep every activation
/// buffer of a ResNet3d-50 on a `1x1x64x128x128` volume between calls.
pub(crate) const DEFAULT_BUDGET: usize = 256 << 20;

/// Activation buffers kept between layers and between calls, so that their pages are not
/// faulted in (and zeroed by the kernel) again for every layer; at most `budget` bytes are
/// kept, the least recently returned buffers going first.
pub(crate) struct Buffers {
    kept: Arc<Mutex<Kept>>,
    /// A call's pool ([`Buffers::for_call`]): the network's pool, which it takes from too.
    parent: Option<Arc<Mutex<Kept>>>,
}

#[derive(Debug)]
struct Kept {
    /// Buffers with the time they were returned.
    buffers: Vec<(u64, Vec<f32>)>,
    clock: u64,
    /// Bytes of capacity held in `buffers`.
    bytes: usize,
    budget: usize,
    /// A call's pool ([`Buffers::for_call`]): the budget grows to twice the largest buffer
    /// given.
    per_call: bool,
    /// Bytes above which a kept buffer is handed to any smaller request (shrunk to it): in a
    /// call's pool, the budget of its network's pool when the call began (a larger buffer is
    /// freed at the call's end anyway); none elsewhere.
    shrink_above: usize,
}

impl Kept {
    /// Frees the least recently returned buffers until the rest fits the budget.
    fn fit_budget(&mut self) {
        self.free_oldest_until(self.budget);
    }

    /// Frees the least recently returned buffers until at most `bytes` are kept.
    fn free_oldest_until(&mut self, bytes: usize) {
        while self.bytes > bytes {
            let Some(oldest) = (0..self.buffers.len()).min_by_key(|&i| self.buffers[i].0) else {
                break;
            };
            let (_, evicted) = self.buffers.swap_remove(oldest);
            self.bytes -= evicted.capacity() * size_of::<f32>();
        }
    }

    /// Removes and returns the smallest kept buffer of at least `len` values and at most
    /// twice that (a larger one would pin memory a small request does not need, and is kept
    /// for a request of its size, in this call or the next), or any larger one above
    /// `shrink_above` bytes, which [`Buffers::try_take`] shrinks to the request: a buffer too
    /// large to be kept after the call that the call no longer asks for in its size (a whole
    /// scan's 600 MB stem output once the next layers write over their shortcuts) would
    /// otherwise stay resident to the call's end while the call allocates afresh.
    fn fitting(&mut self, len: usize) -> Option<Vec<f32>> {
        let best = (0..self.buffers.len())
            .filter(|&i| {
                let capacity = self.buffers[i].1.capacity();
                capacity >= len
                    && (capacity <= 2 * len.max(1024) || capacity.saturating_mul(size_of::<f32>()) > self.shrink_above)
            })
            .min_by_key(|&i| self.buffers[i].1.capacity())?;
        let (_, buffer) = self.buffers.swap_remove(best);
        self.bytes -= buffer.capacity() * size_of::<f32>();
        Some(buffer)
    }
}

/// `kept`, locked. A panic while the lock was held leaves the list consistent (every change is
/// one push or remove), so a poisoned lock is still usable.
fn lock(kept: &Mutex<Kept>) -> MutexGuard<'_, Kept> {
    kept.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Buffers {
    fn default() -> Self {
        Self::with_budget(DEFAULT_BUDGET)
    }
}

impl Buffers {
    pub(crate) fn with_budget(budget: usize) -> Self {
        Self::pool(budget, None)
    }

    /// An empty pool of `budget` bytes; a call's pool ([`for_call`](Self::for_call)) if it
    /// has a `parent`.
    fn pool(budget: usize, parent: Option<Arc<Mutex<Kept>>>) -> Self {
        Self {
            kept: Arc::new(Mutex::new(Kept {
                buffers: Vec::new(),
                clock: 0,
                bytes: 0,
                budget,
                per_call: parent.is_some(),
                shrink_above: match parent {
                    Some(_) => budget,
                    None => usize::MAX,
                },
            })),
            parent,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        lock(&self.kept)
    }

    /// `len` values, whatever a reused buffer held: the caller writes all of them. A kept
    /// buffer is reused when it fits and is at most twice too large (a larger one would pin
    /// memory a small request does not need); otherwise a new one is allocated.
    /// `None` if a new buffer of `len` values cannot be allocated.
    pub(crate) fn take(&self, len: usize) -> Option<Vec<f32>> {
        self.try_take(len).or_else(|| {
            // A call about to allocate first frees as much of its network's kept memory that no
            // request of its has fitted (the least recently returned first): the call's memory
            // then grows no more than if it had been handed every kept buffer at its start.
            if let Some(parent) = &self.parent {
                let mut kept = lock(parent);
                let keep = kept.bytes.saturating_sub(len * size_of::<f32>());
                kept.free_oldest_until(keep);
            }
            try_zeros(len)
        })
    }

    /// [`take`](Self::take) from the kept buffers only (a call's own, then its network's):
    /// `None` if none fits.
    pub(crate) fn try_take(&self, len: usize) -> Option<Vec<f32>> {
        let own = self.lock().fitting(len);
        let mut buffer = own.or_else(|| self.parent.as_deref().and_then(|parent| lock(parent).fitting(len)))?;
        buffer.truncate(len);
        buffer.resize(len, 0.0);
        // The pages past `len` go back to the system (a large block shrinks in place): a
        // reused buffer holds no more resident memory than a fresh one.
        if buffer.capacity() - len > 1 << 16 {
            buffer.shrink_to(len);
        }
        Some(buffer)
    }

    /// Keeps `buffer` for a later [`take`](Self::take), within the budget: a buffer larger
    /// than the whole budget is freed at once, and the least recently returned ones are freed
    /// until the rest fits.
    pub(crate) fn give(&self, buffer: Vec<f32>) {
        let size = buffer.capacity() * size_of::<f32>();
        let mut kept = self.lock();
        if kept.per_call {
            kept.budget = kept.budget.max(2 * size);
        }
        if size > kept.budget || size == 0 {
            return;
        }
        kept.clock += 1;
        let now = kept.clock;
        kept.buffers.push((now, buffer));
        kept.bytes += size;
        kept.fit_budget();
    }

    /// A pool for one call, which takes from this one as it needs (calls running meanwhile
    /// share it, as they did before calls had pools; a hostile review found that handing the
    /// first call everything made the others allocate afresh and the kept memory ratchet up
    /// to the budget four times faster) and keeps what the call gives back, with a budget of
    /// at least twice the largest buffer given: a call whose activations are larger than the
    /// budget (a whole scan: 600 MB per layer output) reuses the last two or so from layer to
    /// layer instead of faulting in fresh pages for each (15% of a ResNet3d-50 forward on
    /// 192x320x320 was the kernel's page faults). [`end_call`](Self::end_call) hands them
    /// back here within the budget.
    pub(crate) fn for_call(&self) -> Self {
        let budget = self.lock().budget;
        Self::pool(budget, Some(Arc::clone(&self.kept)))
    }

    /// Takes back the buffers of a call's pool ([`for_call`](Self::for_call)), the most
    /// recently returned last, freeing what does not fit the budget.
    pub(crate) fn end_call(&self, call: Self) {
        let mut buffers = std::mem::take(&mut call.lock().buffers);
        buffers.sort_by_key(|(time, _)| *time);
        for (_, buffer) in buffers {
            self.give(buffer);
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Frees every kept buffer, keeping the budget.
    pub(crate) fn release(&self) {
        let mut kept = self.lock();
        kept.buffers.clear();
        kept.bytes = 0;
    }

    pub(crate) fn set_budget(&self, budget: usize) {
        let mut kept = self.lock();
        kept.budget = budget;
        kept.fit_budget();
    }
}

impl Clone for Buffers {
    /// A clone keeps the budget, not the buffers.
    fn clone(&self) -> Self {
        Self::with_budget(self.lock().budget)
    }
}

impl std::fmt::Debug for Buffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.lock();
        write!(
            f,
            "Buffers({} kept, {} of {} bytes)",
            kept.buffers.len(),
            kept.bytes,
            kept.budget
        )
    }
}

/// Activations channels-last: `[n, d, h, w, c]`.
#[derive(Debug, Clone)]
pub(crate) struct Act {
    pub data: Vec<f32>,
    pub dims: [usize; 5],
}

/// A channels-last activation borrowed: `dims.iter().product()` values of `[n, d, h, w, c]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub dims: [usize; 5],
}

impl Act {
    pub(crate) fn view(&self) -> View<'_> {
        View {
            data: &self.data,
            dims: self.dims,
        }
    }
}

/// `len` zeros, written (in parallel) rather than allocated zeroed: the products below add
/// into their output, and a zeroed allocation large enough to be fresh pages from the kernel
/// would first be read (mapping the shared zero page) and then written (a copy-on-write fault
/// and a TLB flush on every core, per page). On ResNet3d-18's `layer4` weight gradient (28 MB)
/// that made the pass ten times slower (53 ms instead of 5) whenever the allocator had no
/// such block to reuse.
///
/// # Panics
/// If the allocation fails (a panic, not the allocator's abort): the sizes here are those of
/// tensors that exist already, or outputs the model checked it can allocate
/// (`model::conv::output_fits`).
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    match try_zeros_written(len) {
        Some(v) => v,
        None => panic!("cannot allocate {len} values ({} MiB)", len / (1 << 18)),
    }
}

/// Buffers the size of weight gradients, handed back by [`FusedAdam`](crate::train::FusedAdam)
/// once it has applied them, for the next step's weight gradients: those are hundreds of MB
/// per step (46 M values for ResNet3d-50), and fresh pages from the kernel cost a page fault
/// each. Kept up to 1 GiB; only training with `FusedAdam` fills it.
#[cfg(feature = "flex")]
pub(crate) static RECYCLED: std::sync::LazyLock<Buffers> = std::sync::LazyLock::new(|| Buffers::with_budget(1 << 30));

/// `len` zeros, in a recycled buffer where one fits (else [`zeros`]).
#[cfg(feature = "flex")]
pub(crate) fn recycled_zeros(len: usize) -> Vec<f32> {
    match RECYCLED.try_take(len) {
        Some(mut v) => {
            v.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
            v
        }
        None => zeros(len),
    }
}

/// `len` values for an output the caller writes whole: a recycled buffer as it is (its old
/// values, each to be written over), else [`zeros`]. Saves the pass that zeroes a weight
/// gradient's buffer (28 MB for a 512-channel 3x3x3 kernel) before it is written.
#[cfg(feature = "flex")]
pub(crate) fn recycled_to_write(len: usize) -> Vec<f32> {
    RECYCLED.try_take(len).unwrap_or_else(|| zeros(len))
}

/// Element types whose all-zero bytes are the value zero: what [`try_zeros`] may hand out.
pub(crate) trait ZeroBits: Copy {}
impl ZeroBits for f32 {}
impl ZeroBits for u16 {}

/// `len` zeros, or `None` where the allocation fails (a size an input chose: an error, not an
/// abort). Zeroed by the allocator (fresh pages are mapped zero on first touch), as
/// `vec![0.0; len]` is.
pub(crate) fn try_zeros<T: ZeroBits>(len: usize) -> Option<Vec<T>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(len).ok()?;
    if layout.size() == 0 {
        return Some(Vec::new());
    }
    // SAFETY: the layout's size is not zero (checked above).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return None;
    }
    advise_huge_pages(ptr.cast(), layout.size());
    // SAFETY: `ptr` comes from the global allocator with the layout of `len` values of `T`
    // (their alignment and size), every byte zero, which `ZeroBits` says is a valid `T`;
    // length and capacity are `len`.
    Some(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

/// [`zeros`], or `None` where the allocation fails: for buffers a kernel writes whole right
/// after, where zeroing them on the threads first (rather than a memset on one thread for a
/// block the allocator reuses) is what [`zeros`] found faster.
pub(crate) fn try_zeros_written(len: usize) -> Option<Vec<f32>> {
    let mut v: Vec<f32> = Vec::new();
    v.try_reserve_exact(len).ok()?;
    advise_huge_pages(v.as_mut_ptr().cast(), v.capacity() * size_of::<f32>());
    v.spare_capacity_mut()
        .par_chunks_mut(1 << 16)
        .for_each(|chunk| chunk.fill(std::mem::MaybeUninit::new(0.0)));
    // SAFETY: the capacity is at least `len`, and every one of its values was written just
    // above.
    unsafe { v.set_len(len) };
    Some(v)
}

/// The smallest block [`advise_huge_pages`] advises: 32 MiB.
const HUGE_PAGE_ADVICE: usize = 32 << 20;

/// Asks Linux to back the 2 MiB-aligned part of a fresh allocation of `bytes` bytes at `ptr`
/// with transparent huge pages (`madvise(MADV_HUGEPAGE)`), before its first touch, where the
/// block is [`HUGE_PAGE_ADVICE`] bytes or more: the first touch of a 4 KiB page is a page
/// fault, and an activation of a whole scan is 600 MB (150,000 faults; 600-870 ms to touch
/// 600 MB on this machine's VM, 120-210 ms in huge pages). It matters where the system's THP
/// setting is `madvise` (as here); with `always` the kernel does this unasked. Advice only:
/// the contents and the allocation are unchanged, and a refusal (THP `never`, another OS)
/// leaves 4 KiB pages.
///
/// The advice belongs to the address range, not to the allocation: a range the allocator
/// later hands to other objects keeps it (a hostile review: an 8 MiB `Vec<u8>` placed where an
/// advised 24 MiB buffer had been took 6 MiB resident for four bytes written, 40 KiB without).
/// Hence the threshold: glibc serves blocks of 32 MiB or more (its largest mmap threshold) by
/// their own mapping, which goes back to the system when freed, so the advice leaves with it;
/// only a free block that large inside the heap (rare) would keep it.
fn advise_huge_pages(ptr: *mut u8, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        if bytes < HUGE_PAGE_ADVICE {
            return;
        }
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + bytes) / HUGE * HUGE;
        if end > start {
            // SAFETY: `[start, end)` lies inside the caller's live allocation of `bytes` bytes
            // at `ptr` (rounded inwards to whole huge pages); MADV_HUGEPAGE changes how the
            // kernel backs those pages, never their contents or the mapping's extent, so no
            // Rust reference to the block is affected. Its result is ignored: advice.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call reuses a buffer larger than the shared budget from layer to layer, takes the
    /// shared buffers as it needs them (two calls at once each find theirs), and hands back
    /// only what fits the budget.
    #[test]
    fn a_call_reuses_buffers_beyond_the_budget_and_keeps_the_budget_after() {
        let shared = Buffers::with_budget(1 << 20);
        let (a, b) = (vec![0.0; 1000], vec![0.0; 2000]);
        let (at_a, at_b) = (a.as_ptr(), b.as_ptr());
        shared.give(a);
        shared.give(b);
        let (call, other) = (shared.for_call(), shared.for_call());
        assert_eq!((shared.bytes(), call.bytes()), (12000, 0));
        let (got_a, got_b) = (call.take(1000).unwrap(), other.take(2000).unwrap());
        assert_eq!((got_a.as_ptr(), got_b.as_ptr()), (at_a, at_b));
        assert_eq!(shared.bytes(), 0);
        call.give(got_a);
        other.give(got_b);
        shared.end_call(other);
        // 4 MiB: four times the shared budget.
        assert_eq!(shared.bytes(), 8000);
        let big = call.take(1 << 20).unwrap();
        assert_eq!(
            shared.bytes(),
            0,
            "a fresh allocation first frees the network's unused buffers"
        );
        let at = big.as_ptr();
        call.give(big);
        let again = call.take(1 << 20).unwrap();
        assert_eq!(again.as_ptr(), at, "the same buffer, not a fresh one");
        call.give(again);
        assert_eq!(call.bytes(), 4000 + (4 << 20));
        shared.end_call(call);
        assert_eq!(shared.bytes(), 4000, "the 4 MiB buffer does not fit the budget");
        // Outside a call the budget holds: a buffer larger than it is freed at once.
        shared.give(vec![0.0; 1 << 20]);
        assert_eq!(shared.bytes(), 4000);
    }

    /// A fresh buffer of 32 MiB is advised for huge pages: the kernel's mapping that holds it
    /// carries the flag (`hg` in /proc/self/smaps) over its aligned part.
    #[cfg(target_os = "linux")]
    #[test]
    fn large_fresh_buffers_ask_for_huge_pages() {
        let flags_at = |address: usize| -> String {
            let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
            let mut inside = false;
            for line in smaps.lines() {
                let range = line.split_whitespace().next().unwrap_or("");
                if let Some((lo, hi)) = range.split_once('-')
                    && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&address);
                } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                    return flags.to_string();
                }
            }
            panic!("no mapping holds {address:#x}")
        };
        let huge = |flags: &str| flags.split_whitespace().any(|f| f == "hg");
        for v in [try_zeros::<f32>(8 << 20).unwrap(), try_zeros_written(8 << 20).unwrap()] {
            let aligned = (v.as_ptr() as usize).next_multiple_of(2 << 20);
            assert!(huge(&flags_at(aligned)), "{:?}", flags_at(aligned));
        }
    }

    /// Within a call, a small request takes a kept buffer larger than the network's budget
    /// (which the call's end would free anyway) and shrinks it; a buffer within the budget
    /// more than twice the request's size stays kept for a request of its size, in the call
    /// and after it, as it does between calls.
    #[test]
    fn a_call_shrinks_a_buffer_beyond_the_budget_to_a_small_request() {
        for (budget, shrunk) in [(1 << 20, true), (64 << 20, false)] {
            let shared = Buffers::with_budget(budget);
            let call = shared.for_call();
            let big = vec![1.0f32; 1 << 20];
            let at = big.as_ptr();
            call.give(big);
            let small = call.take(100_000).unwrap();
            assert_eq!(small.as_ptr() == at, shrunk, "budget {budget}");
            assert_eq!((small.len(), small.capacity()), (100_000, 100_000));
            assert_eq!(call.bytes(), if shrunk { 0 } else { 4 << 20 });
            shared.end_call(call);
            assert_eq!(shared.bytes(), if shrunk { 0 } else { 4 << 20 });
        }
        let shared = Buffers::with_budget(1 << 30);
        shared.give(vec![1.0f32; 1 << 20]);
        let fresh = shared.take(100_000).unwrap();
        assert_eq!(fresh.len(), 100_000);
        assert_eq!(shared.bytes(), 4 << 20, "between calls the large buffer stays kept");
    }

    /// A kept buffer reused for a smaller request gives its tail back.
    #[test]
    fn a_reused_larger_buffer_keeps_only_what_is_asked() {
        let buffers = Buffers::with_budget(1 << 30);
        buffers.give(vec![1.0; 1 << 20]);
        let v = buffers.take(600_000).unwrap();
        assert_eq!((v.len(), v.capacity()), (600_000, 600_000));
        assert_eq!(buffers.bytes(), 0);
    }
}
