//! [`SlidingWindow`]: where the windows go, and the blending of their outputs into a map.

use super::blend::Blend;
use super::map::ProbabilityMap;
use crate::error::{Error, Result};
use crate::preprocess::{MAX_VOXELS, Volume};

/// Settings of a sliding-window pass; see the [module docs](crate::infer).
///
/// Window positions follow MONAI's `sliding_window_inference`: along an axis of `n` voxels
/// (after padding a shorter axis up to the window, half the difference before and the rest
/// after, with [`pad_value`](Self::pad_value)) windows of `r` voxels start every
/// `s = max(floor(r (1 - overlap)), 1)` voxels (`s = r` when `r = n`), as many as it takes to
/// reach the end, the last one moved back to end exactly at the border. Windows are visited
/// depth-major, width fastest.
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindow {
    /// The window, `[depth, height, width]` voxels: the network's input size.
    pub roi: [usize; 3],
    /// Share of a window that overlaps the next one along each axis, in `[0, 1)`.
    pub overlap: f64,
    /// How overlapping windows are weighted.
    pub blend: Blend,
    /// Windows per call of the network: more is faster up to the point where the batch's
    /// activations no longer fit the caches or memory.
    pub batch: usize,
    /// Value of the voxels padded onto an axis shorter than the window, in the units of the
    /// volume given to [`classify`](Self::classify) (after any normalisation).
    pub pad_value: f32,
}

impl SlidingWindow {
    /// Windows of `roi` voxels, overlap 0.25, Gaussian blending ([`Blend::GAUSSIAN`]), 4
    /// windows per batch, padding with 0.
    pub fn new(roi: [usize; 3]) -> Self {
        Self {
            roi,
            overlap: 0.25,
            blend: Blend::GAUSSIAN,
            batch: 4,
            pad_value: 0.0,
        }
    }

    /// With another [`overlap`](Self::overlap).
    pub fn with_overlap(mut self, overlap: f64) -> Self {
        self.overlap = overlap;
        self
    }

    /// With another [`blend`](Self::blend).
    pub fn with_blend(mut self, blend: Blend) -> Self {
        self.blend = blend;
        self
    }

    /// With another [`batch`](Self::batch).
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// With another [`pad_value`](Self::pad_value).
    pub fn with_pad_value(mut self, pad_value: f32) -> Self {
        self.pad_value = pad_value;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the setting: a window extent of 0 or a window of more
    /// than [`MAX_VOXELS`] voxels, an overlap outside `[0, 1)`, a batch of 0, a pad value or
    /// Gaussian scale that is not finite.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field: &'static str, reason: String| Err(Error::InvalidConfig { field, reason });
        let voxels = self.roi.iter().try_fold(1usize, |n, &r| n.checked_mul(r));
        if self.roi.contains(&0) || voxels.is_none_or(|n| n > MAX_VOXELS) {
            return invalid(
                "roi",
                format!(
                    "a window of {:?} voxels: every extent at least 1, at most {MAX_VOXELS} voxels",
                    self.roi
                ),
            );
        }
        if !(0.0..1.0).contains(&self.overlap) {
            return invalid(
                "overlap",
                format!("{} is not in [0, 1) (0.25 and 0.5 are usual)", self.overlap),
            );
        }
        if self.batch == 0 {
            return invalid("batch", "must be at least 1 window".into());
        }
        if !self.pad_value.is_finite() {
            return invalid("pad_value", format!("{} is not a finite value", self.pad_value));
        }
        self.blend.weights([1, 1, 1]).map(|_| ())
    }

    /// The grid the windows slide over for a volume of `shape`: each axis at least the
    /// window's.
    pub fn padded_shape(&self, shape: [usize; 3]) -> [usize; 3] {
        [0, 1, 2].map(|a| shape[a].max(self.roi[a]))
    }

    /// The windows' first voxels on the [padded grid](Self::padded_shape) of a volume of
    /// `shape`, in the order they are visited.
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub fn starts(&self, shape: [usize; 3]) -> Result<Vec<[usize; 3]>> {
        let grid = self.grid(shape)?;
        let too_many = || Error::InvalidConfig {
            field: "overlap",
            reason: format!(
                "{} windows over {shape:?} voxels do not fit in memory as a list",
                grid.len()
            ),
        };
        let mut starts = Vec::new();
        starts.try_reserve_exact(grid.len()).map_err(|_| too_many())?;
        starts.extend((0..grid.len()).map(|i| grid.start(i)));
        Ok(starts)
    }

    /// The window starts along each axis of the padded grid (each at most the axis long).
    fn grid(&self, shape: [usize; 3]) -> Result<WindowGrid> {
        self.validate()?;
        let padded = self.padded_shape(shape);
        Ok(WindowGrid {
            axes: [0, 1, 2].map(|a| axis_starts(padded[a], self.roi[a], self.overlap)),
        })
    }

    /// Runs `predict` over every window of `volume` and blends its class probabilities into
    /// a map on the volume's grid.
    ///
    /// `predict(windows, n)` receives `n` windows (at most [`batch`](Self::batch)) as one
    /// buffer of `n` one-channel windows, row-major `[n, depth, height, width]`, and returns
    /// their class probabilities, row-major `[n, classes]`, the same number of classes every
    /// call.
    ///
    /// # Errors
    /// As [`validate`](Self::validate); [`Error::InvalidVolume`] for a volume whose fields
    /// disagree or a map too large for memory; [`Error::InvalidInput`] when `predict` returns
    /// a number of values that is not `n` times the first call's classes, or a value that is
    /// not finite (a NaN is never blended into the map); `predict`'s own errors.
    pub fn classify<F>(&self, volume: &Volume, mut predict: F) -> Result<ProbabilityMap>
    where
        F: FnMut(&[f32], usize) -> Result<Vec<f32>>,
    {
        self.validate()?;
        check_volume(volume)?;
        let weights = self.blend.weights(self.roi)?;
        let shape = volume.shape;
        let padded = self.padded_shape(shape);
        // Where the volume sits in the padded grid: half the padding before.
        let before = [0, 1, 2].map(|a| (padded[a] - shape[a]) / 2);
        // Windows are made batch by batch from their index: never a list of every window
        // (an overlap near 1 gives a window per voxel).
        let grid = self.grid(shape)?;
        let roi_len: usize = self.roi.iter().product();
        let batch_len = roi_len.checked_mul(self.batch).ok_or_else(|| batch_too_large(self))?;
        let mut batch = Vec::new();
        batch.try_reserve_exact(batch_len).map_err(|_| batch_too_large(self))?;
        let mut blended: Option<Blender> = None;
        let mut chunk = Vec::with_capacity(self.batch);
        for first in (0..grid.len()).step_by(self.batch) {
            chunk.clear();
            chunk.extend((first..grid.len().min(first + self.batch)).map(|i| grid.start(i)));
            batch.clear();
            for &start in &chunk {
                gather(volume, start, before, self.roi, self.pad_value, &mut batch);
            }
            let probabilities = predict(&batch, chunk.len())?;
            let classes = match &blended {
                Some(b) => b.classes,
                None => probabilities.len() / chunk.len(),
            };
            if classes == 0 || probabilities.len() != chunk.len() * classes {
                return Err(Error::InvalidInput {
                    dims: vec![chunk.len(), 1, self.roi[0], self.roi[1], self.roi[2]],
                    what: format!(
                        "the classifier returned {} values for {} windows; it must return the same number of class probabilities for every window",
                        probabilities.len(),
                        chunk.len()
                    ),
                });
            }
            if let Some((i, p)) = probabilities.iter().enumerate().find(|(_, p)| !p.is_finite()) {
                let start = chunk[i / classes];
                return Err(Error::InvalidInput {
                    dims: vec![chunk.len(), 1, self.roi[0], self.roi[1], self.roi[2]],
                    what: format!(
                        "the window at {start:?} (padded grid) gave class {} a probability of {p}; look for NaN or infinite voxels in the scan",
                        i % classes
                    ),
                });
            }
            let blender = match &mut blended {
                Some(b) => b,
                None => blended.insert(Blender::new(classes, padded)?),
            };
            for (window, &start) in chunk.iter().enumerate() {
                blender.add(start, self.roi, &weights, &probabilities[window * classes..][..classes]);
            }
            debug_assert_eq!(batch.len(), chunk.len() * roi_len);
        }
        // A validated window over a volume of at least one voxel gives at least one window.
        let blender = blended.ok_or_else(|| Error::InvalidVolume {
            what: format!("no window fits a volume of {shape:?} voxels"),
        })?;
        blender.finish(shape, before, volume.spacing)
    }
}

/// The windows of a pass: the starts along each axis, visited depth-major, width fastest.
struct WindowGrid {
    axes: [Vec<usize>; 3],
}

impl WindowGrid {
    /// The number of windows (each axis holds at most its length of starts, and the
    /// padded grid's voxels were counted without overflow, so the product cannot overflow).
    fn len(&self) -> usize {
        self.axes.iter().fold(1usize, |n, a| n.saturating_mul(a.len()))
    }

    /// Window `i` in visiting order.
    fn start(&self, i: usize) -> [usize; 3] {
        let [d, h, w] = &self.axes;
        [d[i / (w.len() * h.len())], h[i / w.len() % h.len()], w[i % w.len()]]
    }
}

fn batch_too_large(sliding: &SlidingWindow) -> Error {
    Error::InvalidConfig {
        field: "batch",
        reason: format!(
            "{} windows of {:?} voxels do not fit in memory; use fewer windows per batch",
            sliding.batch, sliding.roi
        ),
    }
}

/// MONAI's window starts along one axis of `n >= r` voxels.
fn axis_starts(n: usize, r: usize, overlap: f64) -> Vec<usize> {
    let step = if r == n {
        r
    } else {
        ((r as f64 * (1.0 - overlap)) as usize).max(1)
    };
    // The first window index whose window reaches the end; every earlier one starts at
    // i * step, the last is moved back to end at n.
    let last = (0..n.div_ceil(step)).find(|&i| i * step + r >= n).unwrap_or(0);
    (0..=last).map(|i| (i * step).min(n - r)).collect()
}

fn check_volume(volume: &Volume) -> Result<()> {
    let expected = volume.shape.iter().try_fold(1usize, |n, &s| n.checked_mul(s));
    if volume.shape.contains(&0) || expected != Some(volume.data.len()) {
        return Err(Error::InvalidVolume {
            what: format!(
                "{} values for shape {:?}; build volumes with Volume::new",
                volume.data.len(),
                volume.shape
            ),
        });
    }
    Ok(())
}

/// Appends the window at `start` (padded grid) to `out`, reading padding as `pad`.
fn gather(volume: &Volume, start: [usize; 3], before: [usize; 3], roi: [usize; 3], pad: f32, out: &mut Vec<f32>) {
    let [_, h_in, w_in] = volume.shape;
    // Padded-grid index p reads volume index p - before when that is inside the volume.
    let source = |p: usize, a: usize| p.checked_sub(before[a]).filter(|&i| i < volume.shape[a]);
    for z in start[0]..start[0] + roi[0] {
        for y in start[1]..start[1] + roi[1] {
            let (Some(zs), Some(ys)) = (source(z, 0), source(y, 1)) else {
                out.extend(std::iter::repeat_n(pad, roi[2]));
                continue;
            };
            let row = &volume.data[(zs * h_in + ys) * w_in..][..w_in];
            out.extend((start[2]..start[2] + roi[2]).map(|x| source(x, 2).map_or(pad, |xs| row[xs])));
        }
    }
}

/// The running sums `sum_w weight * p` per class and `sum_w weight` per voxel, f32 as MONAI's.
struct Blender {
    classes: usize,
    shape: [usize; 3],
    sums: Vec<f32>,
    weight: Vec<f32>,
}

impl Blender {
    fn new(classes: usize, shape: [usize; 3]) -> Result<Self> {
        let voxels: usize = shape.iter().product();
        let too_large = || Error::InvalidVolume {
            what: format!(
                "a map of {classes} classes over {shape:?} voxels does not fit in memory; classify a smaller or coarser volume"
            ),
        };
        let len = voxels.checked_mul(classes).ok_or_else(too_large)?;
        let zeros = |n: usize| -> Result<Vec<f32>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).map_err(|_| too_large())?;
            v.resize(n, 0.0);
            Ok(v)
        };
        Ok(Self {
            classes,
            shape,
            sums: zeros(len)?,
            weight: zeros(voxels)?,
        })
    }

    fn add(&mut self, start: [usize; 3], roi: [usize; 3], weights: &[f32], p: &[f32]) {
        let [_, h, w] = self.shape;
        let voxels: usize = self.shape.iter().product();
        for dz in 0..roi[0] {
            for dy in 0..roi[1] {
                let at = ((start[0] + dz) * h + start[1] + dy) * w + start[2];
                let wrow = &weights[(dz * roi[1] + dy) * roi[2]..][..roi[2]];
                for (acc, &wt) in self.weight[at..at + roi[2]].iter_mut().zip(wrow) {
                    *acc += wt;
                }
                for (c, &pc) in p.iter().enumerate() {
                    let row = &mut self.sums[c * voxels + at..][..roi[2]];
                    for (acc, &wt) in row.iter_mut().zip(wrow) {
                        *acc += wt * pc;
                    }
                }
            }
        }
    }

    /// The blended map, the padding cut off.
    fn finish(self, shape: [usize; 3], before: [usize; 3], spacing: [f32; 3]) -> Result<ProbabilityMap> {
        let Self {
            classes,
            shape: padded,
            mut sums,
            weight,
        } = self;
        let [_, h, w] = padded;
        let voxels: usize = padded.iter().product();
        // In place: the kept voxels, class by class, move to the front of the sums. Each
        // is written at or before where it is read, in reading order, so no value is
        // overwritten before it is read, and no second map is allocated.
        let mut out = 0;
        for c in 0..classes {
            for z in before[0]..before[0] + shape[0] {
                for y in before[1]..before[1] + shape[1] {
                    let at = (z * h + y) * w + before[2];
                    for x in 0..shape[2] {
                        sums[out] = sums[c * voxels + at + x] / weight[at + x];
                        out += 1;
                    }
                }
            }
        }
        drop(weight);
        sums.truncate(out);
        sums.shrink_to_fit();
        ProbabilityMap::new(classes, shape, spacing, sums)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_cover_the_axis_and_end_at_the_border() {
        // 33 voxels, windows of 16 at overlap 0.25: step 12, starts 0, 12, then 17 (moved back).
        assert_eq!(axis_starts(33, 16, 0.25), [0, 12, 17]);
        // A window as long as the axis: one window.
        assert_eq!(axis_starts(16, 16, 0.5), [0]);
        // Overlap 0 on a multiple: no overlap at all.
        assert_eq!(axis_starts(30, 10, 0.0), [0, 10, 20]);
        // A tiny step never stalls.
        assert_eq!(axis_starts(4, 2, 0.99), [0, 1, 2]);
    }

    #[test]
    fn a_constant_classifier_gives_a_constant_map_and_padding_is_cut_off() {
        let volume = Volume::new((0..5 * 9 * 7).map(|i| i as f32).collect(), [5, 9, 7], [1.0; 3]).unwrap();
        let sliding = SlidingWindow::new([8, 4, 4]).with_batch(3);
        let map = sliding
            .classify(&volume, |w, n| {
                assert_eq!(w.len(), n * 8 * 4 * 4);
                Ok([0.25f32, 0.75].repeat(n))
            })
            .unwrap();
        assert_eq!((map.classes(), map.shape()), (2, [5, 9, 7]));
        assert!(map.class(1).unwrap().data.iter().all(|&p| (p - 0.75).abs() < 1e-6));
    }

    #[test]
    fn bad_settings_and_bad_classifiers_are_errors() {
        let volume = Volume::new(vec![0.0; 64], [4, 4, 4], [1.0; 3]).unwrap();
        for (bad, field) in [
            (SlidingWindow::new([0, 4, 4]), "roi"),
            (SlidingWindow::new([4, 4, 4]).with_overlap(1.0), "overlap"),
            (SlidingWindow::new([4, 4, 4]).with_overlap(f64::NAN), "overlap"),
            (SlidingWindow::new([4, 4, 4]).with_batch(0), "batch"),
            (SlidingWindow::new([4, 4, 4]).with_pad_value(f32::NAN), "pad_value"),
            (SlidingWindow::new([usize::MAX, 2, 2]), "roi"),
        ] {
            let err = bad.classify(&volume, |_, n| Ok(vec![0.5; n])).unwrap_err();
            assert!(
                matches!(err, Error::InvalidConfig { field: f, .. } if f == field),
                "{err}"
            );
        }
        let sliding = SlidingWindow::new([2, 2, 2]);
        let nan = sliding.classify(&volume, |_, n| Ok(vec![f32::NAN; n * 2])).unwrap_err();
        assert!(matches!(nan, Error::InvalidInput { .. }), "{nan}");
        let mut calls = 0;
        let ragged = sliding
            .classify(&volume, |_, n| {
                calls += 1;
                Ok(vec![0.5; n * if calls == 1 { 2 } else { 3 }])
            })
            .unwrap_err();
        assert!(matches!(ragged, Error::InvalidInput { .. }), "{ragged}");
    }
}
