//! What every scan goes through before the network sees it, as data: a [`Preprocessing`]
//! (deterministic, cached) and, for training, an [`Augmentation`] (seeded, per epoch).

use burn::config::Config;

use super::rng::SplitMix64;
use super::scan::{ScanSlices, read_scan_slices};
use crate::error::{Error, Result};
use crate::preprocess::{Volume, Window, slices_for_window};

/// The most voxels of a whole-scan grid ([`Preprocessing::whole_grid`]): 2^28, 1 GiB as
/// `f32` (a 512 x 512 x 2000 whole-body CT of 0.7 mm resampled to 1 mm has 1.8 x 10^8).
pub const MAX_WHOLE_VOXELS: usize = 1 << 28;

/// How voxel values are scaled after windowing.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum Normalization {
    /// `(x - 0.449) / 0.226`: the scale an ImageNet stem saw (for windowed CT in `[0, 1]`;
    /// see [`Volume::normalize_imagenet_grey`]).
    ImagenetGrey,
    /// Each volume to mean 0 and standard deviation 1 over its own voxels (MRI, whose
    /// intensities have no absolute unit). A constant volume becomes all zeros.
    PerVolume,
    /// Values left as they are.
    None,
}

/// The deterministic part of the pipeline, applied once per scan and cached:
/// resample to `spacing`, crop or pad (centred, padding with `fill`) to the network's input
/// `size` (plus the random-crop margin of an [`Augmentation`] when training), apply the
/// Hounsfield `window`, then the `normalization`.
///
/// Resampling comes first, on the scanner's values, so that windowing clamps nothing the
/// interpolation needs; padding comes before windowing, so `fill` is in the scan's units
/// (HU: -1024 is air).
#[derive(Config, Debug, PartialEq)]
pub struct Preprocessing {
    /// Voxel size to resample to, in mm per axis `[depth, height, width]`; `None` keeps the
    /// scan's grid.
    pub spacing: Option<[f32; 3]>,
    /// The network's input extent `[depth, height, width]`.
    pub size: [usize; 3],
    /// Hounsfield window mapping values onto `[0, 1]`; `None` for no windowing.
    pub window: Option<Window>,
    /// Scaling after the window.
    #[config(default = "Normalization::ImagenetGrey")]
    pub normalization: Normalization,
    /// Value of padded voxels, in the scan's units.
    #[config(default = -1024.0)]
    pub fill: f32,
}

impl Preprocessing {
    /// The usual CT pipeline: isotropic `spacing` mm, `size` voxels, Hounsfield `window`,
    /// ImageNet-grey normalisation, air (-1024 HU) as padding.
    pub fn ct(spacing: f32, size: [usize; 3], window: Window) -> Self {
        Self::new(size)
            .with_spacing(Some([spacing; 3]))
            .with_window(Some(window))
    }

    /// Applies the pipeline with `margin` extra voxels on each side of each axis (for a
    /// random crop later; `[0; 3]` gives exactly [`size`](Self::size)).
    ///
    /// # Errors
    /// [`Error::InvalidVolume`] from resampling or cropping (a spacing that is not positive,
    /// a size of 0, a result too large for memory).
    pub fn apply(&self, volume: Volume, margin: [usize; 3]) -> Result<Volume> {
        let size = self.with_margin(margin)?;
        self.finish(self.resample_crop_or_pad(&volume, size)?)
    }

    /// [`size`](Self::size) with `margin` voxels more on each side of each axis; an extent
    /// past `usize` is refused (the voxel count is checked where it is allocated).
    fn with_margin(&self, margin: [usize; 3]) -> Result<[usize; 3]> {
        let mut size = [0; 3];
        for a in 0..3 {
            size[a] = margin[a]
                .checked_mul(2)
                .and_then(|m| m.checked_add(self.size[a]))
                .ok_or_else(|| Error::InvalidVolume {
                    what: format!("size {:?} with a margin of {margin:?} voxels is too large", self.size),
                })?;
        }
        Ok(size)
    }

    /// Reads the scan at `path` (a NIfTI file or a DICOM folder, as
    /// [`read_scan`](crate::data::read_scan)) and applies the pipeline with `margin`, as
    /// [`apply`](Self::apply) does to the whole scan, to the bit; but only the slices that
    /// the centred crop takes are decoded and held: from a 512 x 512 x 100 CT at 2.5 mm,
    /// 64 slices of 1.5 mm need 40 of its 100 slices. What is checked of the voxels (a
    /// non-finite value is refused, a file that ends early is corrupt) is checked on the
    /// slices read; the others are not looked at.
    ///
    /// # Errors
    /// Those of [`read_scan`](crate::data::read_scan) and [`apply`](Self::apply).
    pub fn read(&self, path: &std::path::Path, margin: [usize; 3]) -> Result<Volume> {
        Ok(self.read_centre(path, None, margin)?.0)
    }

    /// [`read`](Self::read), for the DICOM series `series` of a folder when given; with the
    /// slices the reader gave (the network's input, and where it came from).
    pub(crate) fn read_centre(
        &self,
        path: &std::path::Path,
        series: Option<&str>,
        margin: [usize; 3],
    ) -> Result<(Volume, ScanSlices)> {
        let size = self.with_margin(margin)?;
        let slices = read_scan_slices(path, series, |shape, spacing| {
            slices_for_window(shape, spacing, self.spacing, size)
        })?;
        let input = slices
            .volume
            .window_of_slices(slices.first, slices.scan_shape, self.spacing, size, self.fill)?;
        Ok((self.finish(input)?, slices))
    }

    /// The pipeline for a whole scan, as sliding-window inference
    /// ([`crate::infer`]) needs it: resampled, windowed and normalised like
    /// [`apply`](Self::apply), but not cropped; an axis shorter than [`size`](Self::size)
    /// is padded (centred, with [`fill`](Self::fill)) up to it, so that one window fits.
    ///
    /// # Errors
    /// As [`apply`](Self::apply).
    pub fn apply_whole(&self, volume: Volume) -> Result<Volume> {
        let (size, _) = self.whole_grid(volume.shape, volume.spacing)?;
        self.finish(self.resample_crop_or_pad(&volume, size)?)
    }

    /// The grid [`apply_whole`](Self::apply_whole) gives a scan of `scan_shape` voxels of
    /// `scan_spacing` mm, and the part of it that holds the scan (the resampled scan
    /// before any padding), both `[depth, height, width]`.
    ///
    /// # Errors
    /// [`Error::InvalidVolume`] for a spacing that is not positive and finite, or a grid of
    /// more than [`MAX_WHOLE_VOXELS`] (a whole-body CT at 1 mm has about 2^27; a larger grid
    /// comes from a header's spacing, and its map would take gigabytes per class).
    pub fn whole_grid(&self, scan_shape: [usize; 3], scan_spacing: [f32; 3]) -> Result<([usize; 3], [usize; 3])> {
        let resampled = match self.spacing {
            Some(target) => {
                crate::preprocess::check_spacing("scan spacing", scan_spacing)?;
                crate::preprocess::resampled_grid(scan_shape, scan_spacing, target)?.0
            }
            None => scan_shape,
        };
        let whole = [0, 1, 2].map(|a| resampled[a].max(self.size[a]));
        let voxels = whole.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n));
        if voxels.is_none_or(|v| v > MAX_WHOLE_VOXELS) {
            return Err(Error::InvalidVolume {
                what: format!(
                    "a scan of {scan_shape:?} voxels of {scan_spacing:?} mm makes a whole-scan grid of {whole:?} voxels, more than {MAX_WHOLE_VOXELS} (2^28): check the file's voxel spacing, or score it with a coarser spacing"
                ),
            });
        }
        Ok((whole, resampled))
    }

    /// Resampling and the crop or pad to `size`, in one pass where there is a resampling
    /// (only the kept voxels are interpolated).
    fn resample_crop_or_pad(&self, volume: &Volume, size: [usize; 3]) -> Result<Volume> {
        match self.spacing {
            Some(spacing) => volume.resample_crop_or_pad(spacing, size, self.fill),
            None => volume.crop_or_pad(size, self.fill),
        }
    }

    /// Window and normalisation, after the grid is settled.
    fn finish(&self, mut volume: Volume) -> Result<Volume> {
        if let Some(window) = self.window {
            volume = volume.window(window);
        }
        Ok(match self.normalization {
            Normalization::ImagenetGrey => volume.normalize_imagenet_grey(),
            Normalization::PerVolume => normalize_per_volume(volume),
            Normalization::None => volume,
        })
    }
}

impl Preprocessing {
    /// Brings `map`, a volume on the network's grid (what [`apply`](Self::apply) made of a
    /// scan of `scan_shape` voxels of `scan_spacing` mm, e.g. a heat map) or on the whole
    /// scan's ([`apply_whole`](Self::apply_whole), e.g. a sliding-window map), back onto the scan's
    /// own grid: the crop or pad undone (voxels the network did not see are 0), then the
    /// resampling undone by resampling to `scan_shape`. Written with the scan's affine, the
    /// result overlays the scan in a viewer.
    ///
    /// # Errors
    /// [`Error::InvalidVolume`] if `map` is not of this pipeline's [`size`](Self::size), or
    /// the scan's shape or spacing is not one `apply` accepts.
    pub fn to_scan_grid(&self, map: &Volume, scan_shape: [usize; 3], scan_spacing: [f32; 3]) -> Result<Volume> {
        // The resampled grid `apply` cropped from, and the one `apply_whole` padded it to.
        let (whole, resampled) = self.whole_grid(scan_shape, scan_spacing)?;
        if map.shape != self.size && map.shape != whole {
            return Err(Error::InvalidVolume {
                what: format!(
                    "a map of {:?} voxels is neither on this pipeline's grid of {:?} nor on the whole scan's {whole:?}",
                    map.shape, self.size
                ),
            });
        }
        let mut back = map.crop_or_pad(resampled, 0.0)?.resize(scan_shape)?;
        back.spacing = scan_spacing;
        Ok(back)
    }
}

/// `x -> (x - mean) / std` over the volume's own voxels (f64 sums); std 0 gives zeros.
fn normalize_per_volume(mut volume: Volume) -> Volume {
    let n = volume.data.len() as f64;
    let mean = volume.data.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = volume.data.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
    let scale = if var > 0.0 { 1.0 / var.sqrt() } else { 0.0 };
    for x in &mut volume.data {
        *x = ((f64::from(*x) - mean) * scale) as f32;
    }
    volume
}

/// Training-time changes drawn anew for every scan in every epoch, in this order: a random
/// crop of the input size out of the cached volume (which has `crop_margin` extra voxels on
/// each side), flips, quarter turns in the axial (height-width) plane, an intensity scale
/// and shift, Gaussian noise. Geometric changes move every voxel, label-bearing ones
/// included, together; none resamples (no interpolation).
///
/// Draws come from the crate's own generator keyed by `(seed, epoch, scan)`: a run repeats
/// exactly, whatever the number of loader workers, and does not change with a dependency's
/// version. Validation scans are never augmented.
#[derive(Config, Debug, PartialEq)]
pub struct Augmentation {
    /// Largest shift of the crop from the centre, in voxels per axis `[depth, height, width]`.
    #[config(default = "[2, 4, 4]")]
    pub crop_margin: [usize; 3],
    /// Whether to flip each axis `[depth, height, width]`, each with probability 1/2. The
    /// default flips left-right only: a whole scan has a fixed anatomical orientation, and
    /// other flips make bodies no scanner shows.
    #[config(default = "[false, false, true]")]
    pub flip: [bool; 3],
    /// Quarter turns in the height-width plane, `k` in 0..4 uniformly (only half turns when
    /// height and width differ, so that the shape is kept). Off by default: right for patches
    /// centred on a finding, wrong for whole scans (on the nodule phantoms of
    /// `examples/make_nodules.rs` it cut the best validation AUROC of one seed from 100% to
    /// 82%).
    #[config(default = false)]
    pub rotate: bool,
    /// Values are multiplied by `1 + u`, `u` uniform in `[-scale, scale)`.
    #[config(default = 0.1)]
    pub intensity_scale: f32,
    /// Then `v` uniform in `[-shift, shift)` is added (in normalised units).
    #[config(default = 0.1)]
    pub intensity_shift: f32,
    /// Then independent noise of this standard deviation is added to every voxel.
    #[config(default = 0.05)]
    pub noise_std: f32,
    /// Seed of every draw.
    #[config(default = 0)]
    pub seed: u64,
}

impl Augmentation {
    /// Checks the settings: the scale, shift and noise finite and not negative, the scale
    /// below 1 (so intensities never flip sign).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        let check = |field: &'static str, v: f32, max: f32| {
            if v.is_finite() && (0.0..max).contains(&v) {
                Ok(())
            } else {
                Err(Error::InvalidConfig {
                    field,
                    reason: format!("{v} must be finite, at least 0 and below {max}"),
                })
            }
        };
        if self.crop_margin.iter().any(|&m| m > crate::preprocess::MAX_VOXELS) {
            return Err(Error::InvalidConfig {
                field: "Augmentation.crop_margin",
                reason: format!("{:?} voxels: more than a volume holds", self.crop_margin),
            });
        }
        check("Augmentation.intensity_scale", self.intensity_scale, 1.0)?;
        check("Augmentation.intensity_shift", self.intensity_shift, f32::INFINITY)?;
        check("Augmentation.noise_std", self.noise_std, f32::INFINITY)
    }

    /// The augmented input of `size` for scan `item` in `epoch`, from its cached volume of
    /// `size + 2 * crop_margin` voxels.
    ///
    /// # Errors
    /// [`Error::InvalidVolume`] if `cached` does not have that shape.
    pub fn apply(&self, cached: &Volume, size: [usize; 3], epoch: u64, item: u64) -> Result<Volume> {
        let expected = [0, 1, 2].map(|a| self.crop_margin[a].checked_mul(2).and_then(|m| m.checked_add(size[a])));
        let [Some(e0), Some(e1), Some(e2)] = expected else {
            return Err(Error::InvalidConfig {
                field: "Augmentation.crop_margin",
                reason: format!("{:?} around {size:?} voxels is too large", self.crop_margin),
            });
        };
        let expected = [e0, e1, e2];
        if cached.shape != expected
            || Some(cached.data.len()) != expected.iter().try_fold(1usize, |a, &n| a.checked_mul(n))
        {
            return Err(Error::InvalidVolume {
                what: format!(
                    "augmentation expects a cached volume of {expected:?} voxels (size plus twice the crop margin), got {:?}",
                    cached.shape
                ),
            });
        }
        let mut rng = SplitMix64::keyed(&[self.seed, epoch, item]);
        let offset = self.crop_margin.map(|m| rng.below_or_equal(2 * m));
        let flip = self.flip.map(|f| f && rng.coin());
        let square = size[1] == size[2];
        let turns = match (self.rotate, square) {
            (false, _) => 0,
            (true, true) => rng.below_or_equal(3),
            (true, false) => 2 * usize::from(rng.coin()),
        };
        let scale = 1.0 + rng.symmetric(f64::from(self.intensity_scale)) as f32;
        let shift = rng.symmetric(f64::from(self.intensity_shift)) as f32;

        let [d, h, w] = size;
        let [_, ch, cw] = expected;
        let mut data = Vec::with_capacity(d * h * w);
        for z in 0..d {
            for y in 0..h {
                for x in 0..w {
                    // Output (z, y, x) after the turn and the flips reads crop position (zs, ys, xs).
                    let (mut ys, mut xs) = match turns {
                        0 => (y, x),
                        1 => (w - 1 - x, y), // square: h == w
                        2 => (h - 1 - y, w - 1 - x),
                        _ => (x, h - 1 - y),
                    };
                    let mut zs = z;
                    if flip[0] {
                        zs = d - 1 - zs;
                    }
                    if flip[1] {
                        ys = h - 1 - ys;
                    }
                    if flip[2] {
                        xs = w - 1 - xs;
                    }
                    let source = ((zs + offset[0]) * ch + ys + offset[1]) * cw + xs + offset[2];
                    data.push(cached.data[source] * scale + shift);
                }
            }
        }
        if self.noise_std > 0.0 {
            let std = f64::from(self.noise_std);
            for v in &mut data {
                *v += (std * rng.normal()) as f32;
            }
        }
        Volume::new(data, size, cached.spacing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An augmentation margin that overflows is refused by `validate` and by `apply`.
    #[test]
    fn an_overflowing_augmentation_margin_is_refused() {
        let aug = Augmentation {
            crop_margin: [usize::MAX, 0, 0],
            ..Augmentation::new()
        };
        assert!(aug.validate().is_err());
        let cached = Volume::new(vec![0.0; 8], [2, 2, 2], [1.0; 3]).unwrap();
        match aug.apply(&cached, [2, 2, 2], 0, 0) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "Augmentation.crop_margin"),
            other => panic!("{other:?}"),
        }
    }

    /// A whole-scan grid that a header's spacing blows up is refused before anything is
    /// resampled (a 1-voxel scan of 1.5 x 2^20 mm made 2^30 voxels at 1.5 mm).
    #[test]
    fn a_whole_grid_beyond_the_limit_is_refused() {
        let pipeline = Preprocessing::new([16, 32, 32]).with_spacing(Some([1.5; 3]));
        let err = pipeline
            .whole_grid([1, 1, 1], [1.5 * (1u32 << 20) as f32, 1.5, 1.5])
            .unwrap_err();
        assert!(err.to_string().contains("whole-scan grid"), "{err}");
        let (whole, _) = pipeline.whole_grid([300, 512, 512], [1.0, 0.7, 0.7]).unwrap();
        assert_eq!(
            whole,
            [200, 239, 239],
            "a whole CT of 300 x 512 x 512 at 1 x 0.7 x 0.7 mm"
        );
    }

    /// A margin whose size overflows is an error, not a wrapped size or a panic.
    #[test]
    fn an_overflowing_margin_is_refused() {
        let pipeline = Preprocessing::new([4, 4, 4]);
        let volume = Volume::new(vec![0.0; 64], [4, 4, 4], [1.0; 3]).unwrap();
        for margin in [[usize::MAX / 2, 0, 0], [0, usize::MAX, 0]] {
            let err = pipeline.apply(volume.clone(), margin).unwrap_err();
            assert!(err.to_string().contains("too large"), "{err}");
        }
        assert_eq!(pipeline.apply(volume, [1, 0, 2]).unwrap().shape, [6, 4, 8]);
    }

    #[test]
    fn a_map_goes_back_onto_the_scans_grid() {
        // A scan whose values are linear in millimetres: trilinear resampling keeps a linear
        // function exactly away from the clamped edges, so there and back must meet.
        let (shape, spacing) = ([10, 20, 30], [2.5f32, 0.7, 0.7]);
        let mut data = Vec::new();
        for d in 0..10 {
            for h in 0..20 {
                for w in 0..30 {
                    data.push(d as f32 * 2.5 + h as f32 * 0.7 * 0.3 + w as f32 * 0.7 * 0.1);
                }
            }
        }
        let scan = Volume::new(data, shape, spacing).unwrap();
        let pipeline = Preprocessing::new([12, 8, 16])
            .with_spacing(Some([1.5; 3]))
            .with_normalization(Normalization::None);
        let seen = pipeline.apply(scan.clone(), [0; 3]).unwrap();
        let back = pipeline.to_scan_grid(&seen, shape, spacing).unwrap();
        assert_eq!((back.shape, back.spacing), (shape, spacing));
        // The resampled grid is 17 x 9 x 14 (round(n s / 1.5)); the pipeline crops depth and
        // height to 12 and 8 and pads width to 16.
        let at = |v: &Volume, [d, h, w]: [usize; 3]| v.data[(d * 20 + h) * 30 + w];
        // The centre is where the network looked: values come back.
        for p in [[5, 10, 15], [4, 9, 12], [6, 11, 18]] {
            let (a, b) = (at(&scan, p), at(&back, p));
            assert!((a - b).abs() < 1e-3 * a.abs().max(1.0), "{p:?}: {a} came back as {b}");
        }
        // Depth was cropped (17 -> 12 resampled slices): the first and last scan slices were
        // not seen and come back as 0.
        assert!((0..20 * 30).all(|i| back.data[i] == 0.0 && back.data[9 * 600 + i] == 0.0));
        let wrong = Volume::new(vec![0.0; 8], [2, 2, 2], [1.0; 3]).unwrap();
        assert!(matches!(
            pipeline.to_scan_grid(&wrong, shape, spacing),
            Err(Error::InvalidVolume { .. })
        ));
    }

    fn ramp(shape: [usize; 3]) -> Volume {
        let n = shape.iter().product::<usize>();
        Volume::new((0..n).map(|i| i as f32).collect(), shape, [1.0; 3]).unwrap()
    }

    fn geometric_only() -> Augmentation {
        Augmentation::new()
            .with_intensity_scale(0.0)
            .with_intensity_shift(0.0)
            .with_noise_std(0.0)
    }

    /// Without intensity changes every output voxel is one input voxel, each used once: the
    /// geometric part is a permutation of the crop (nothing lost, nothing invented).
    #[test]
    fn geometry_permutes_the_crop() {
        let aug = geometric_only()
            .with_crop_margin([0; 3])
            .with_flip([true; 3])
            .with_rotate(true);
        let cached = ramp([3, 4, 4]);
        for epoch in 0..8 {
            let out = aug.apply(&cached, [3, 4, 4], epoch, 5).unwrap();
            let mut values = out.data.clone();
            values.sort_by(f32::total_cmp);
            assert_eq!(values, cached.data, "epoch {epoch}");
        }
    }

    /// A quarter turn of a square slice: the turned slice's corners are the input's corners
    /// moved one place round, and four turns' worth of epochs see all four orientations.
    #[test]
    fn quarter_turns_are_rotations() {
        let aug = geometric_only()
            .with_crop_margin([0; 3])
            .with_flip([false; 3])
            .with_rotate(true);
        let cached = ramp([1, 3, 3]);
        let mut seen = std::collections::BTreeSet::new();
        for epoch in 0..64 {
            let out = aug.apply(&cached, [1, 3, 3], epoch, 0).unwrap();
            let corners = [out.data[0], out.data[2], out.data[8], out.data[6]];
            // Input corners clockwise: 0, 2, 8, 6; a rotation is a cyclic shift of them.
            let input = [0.0, 2.0, 8.0, 6.0];
            let k = (0..4).find(|&k| (0..4).all(|i| corners[i] == input[(i + k) % 4]));
            assert!(k.is_some(), "corners {corners:?} are not a rotation of {input:?}");
            assert_eq!(out.data[4], 4.0, "the centre stays");
            seen.insert(k.unwrap());
        }
        assert_eq!(seen.len(), 4);
    }

    /// Same keys, same result; another epoch, another draw.
    #[test]
    fn seeded() {
        let aug = Augmentation::new().with_seed(9);
        let cached = ramp([6, 12, 12]);
        let a = aug.apply(&cached, [2, 4, 4], 3, 1).unwrap();
        assert_eq!(a, aug.apply(&cached, [2, 4, 4], 3, 1).unwrap());
        assert_ne!(a, aug.apply(&cached, [2, 4, 4], 4, 1).unwrap());
    }

    /// Per-volume normalisation: mean 0, standard deviation 1; a constant volume gives zeros.
    #[test]
    fn per_volume_normalization() {
        let v = normalize_per_volume(ramp([2, 3, 5]));
        let n = v.data.len() as f32;
        let mean = v.data.iter().sum::<f32>() / n;
        let var = v.data.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5, "{mean} {var}");
        let flat = normalize_per_volume(Volume::new(vec![3.0; 8], [2, 2, 2], [1.0; 3]).unwrap());
        assert!(flat.data.iter().all(|&x| x == 0.0));
    }
}
