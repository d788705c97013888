//! Work split between the threads of rayon's pool.

use std::ops::Range;

/// An output's base pointer, shared by work items that write disjoint parts of it.
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: the pointer is only written through inside parallel loops, each work item to values
// no other item touches (stated at each use), while the buffer it points into outlives the
// loop.
unsafe impl Sync for SendPtr {}
// SAFETY: as for `Sync`.
unsafe impl Send for SendPtr {}

/// Work items `(tile, panels)` for `tiles` tiles of output rows and `panels` column panels:
/// every tile whole where there are enough of them to keep the threads busy, else each split
/// into groups of panels, about two items per thread.
pub(crate) fn work_items(tiles: usize, panels: usize) -> Vec<(usize, Range<usize>)> {
    let threads = rayon::current_num_threads().max(1);
    let groups = (2 * threads).div_ceil(tiles.max(1)).clamp(1, panels.max(1));
    let per_group = panels.div_ceil(groups);
    (0..tiles)
        .flat_map(|t| {
            (0..groups)
                .map(move |g| (t, g * per_group..((g + 1) * per_group).min(panels)))
                .filter(|(_, p)| !p.is_empty())
        })
        .collect()
}

/// `f` run on a thread of rayon's pool: the caller's thread when it is one, else a worker
/// of the global pool while the caller waits once. A walk over the network forks once per
/// layer; from outside the pool each fork would put the caller to sleep and wake it again.
pub(crate) fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From a thread outside the pool the work runs on one of the pool's threads; inside the
    /// pool it runs where it is called.
    #[test]
    fn work_runs_on_a_pool_thread() {
        assert_eq!(rayon::current_thread_index(), None, "the test thread is not the pool's");
        let outside = on_pool(rayon::current_thread_index);
        assert!(outside.is_some(), "ran on {outside:?}");
        let (caller, inner) = on_pool(|| (rayon::current_thread_index(), on_pool(rayon::current_thread_index)));
        assert_eq!(caller, inner);
    }
}
