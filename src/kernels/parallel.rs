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
