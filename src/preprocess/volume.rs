//! [`Volume`] and its steps: windows, normalisation, resampling, crop or pad.

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};

/// Mean for a 1-channel input to an ImageNet stem: the average of ImageNet's RGB means
/// `(0.485 + 0.456 + 0.406) / 3`. See [`Volume::normalize_imagenet_grey`] for why.
pub const IMAGENET_GREY_MEAN: f32 = 0.449;

/// Standard deviation for a 1-channel input to an ImageNet stem: the average of ImageNet's RGB
/// standard deviations `(0.229 + 0.224 + 0.225) / 3`. See [`Volume::normalize_imagenet_grey`].
pub const IMAGENET_GREY_STD: f32 = 0.226;

/// A scalar volume: voxel values with their grid shape and physical voxel size.
///
/// Build it with [`Volume::new`], which checks that the three fields agree. The fields are
/// public for reading and for element-wise edits; if you change `shape` or the length of
/// `data` yourself, keep `data.len() == depth * height * width` (the methods that return a
/// [`Result`], [`Volume::to_tensor`] among them, check it again).
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Voxel values in row-major `[depth, height, width]` order: voxel `(d, h, w)` is
    /// `data[(d * height + h) * width + w]`.
    pub data: Vec<f32>,
    /// Extent `[depth, height, width]` in voxels.
    pub shape: [usize; 3],
    /// Voxel size in mm along `[depth, height, width]`: for DICOM, the slice spacing, then
    /// `PixelSpacing` (row spacing, column spacing).
    pub spacing: [f32; 3],
}

/// A Hounsfield window: the range `[level - width / 2, level + width / 2]` mapped onto `[0, 1]`.
///
/// The presets are the usual radiology ones; [`Window::new`] makes any other.
#[derive(Debug, Clone, Copy, PartialEq, burn::serde::Serialize, burn::serde::Deserialize)]
#[serde(crate = "burn::serde")]
pub struct Window {
    /// Centre of the window, in HU.
    pub level: f32,
    /// Width of the window, in HU. A width of 0 or less (or NaN) makes the window a threshold
    /// at `level`.
    pub width: f32,
}

impl Window {
    /// Lung parenchyma: level -600, width 1500 (-1350 to 150 HU).
    pub const LUNG: Window = Window::new(-600.0, 1500.0);
    /// Mediastinum and soft tissue: level 50, width 350 (-125 to 225 HU).
    pub const MEDIASTINUM: Window = Window::new(50.0, 350.0);
    /// Bone: level 400, width 1800 (-500 to 1300 HU).
    pub const BONE: Window = Window::new(400.0, 1800.0);
    /// Brain: level 40, width 80 (0 to 80 HU).
    pub const BRAIN: Window = Window::new(40.0, 80.0);

    /// A window centred on `level` HU, `width` HU wide.
    pub const fn new(level: f32, width: f32) -> Self {
        Self { level, width }
    }

    /// The preset called `name` (`lung`, `mediastinum`, `bone`, `brain`; any case), for
    /// command lines and configuration files.
    ///
    /// ```
    /// use resnet3d::preprocess::Window;
    /// assert_eq!(Window::preset("Lung"), Some(Window::LUNG));
    /// assert_eq!(Window::preset("liver"), None);
    /// ```
    pub fn preset(name: &str) -> Option<Window> {
        match name.to_ascii_lowercase().as_str() {
            "lung" => Some(Window::LUNG),
            "mediastinum" => Some(Window::MEDIASTINUM),
            "bone" => Some(Window::BONE),
            "brain" => Some(Window::BRAIN),
            _ => None,
        }
    }

    /// Maps one value in HU onto `[0, 1]`.
    ///
    /// `y = clamp((hu - (level - width / 2)) / width, 0, 1)`: the bottom of the window gives
    /// 0, the level 0.5, the top 1, values outside are clamped. A window of width 0 or less
    /// gives `hu >= level` as 1 or 0. NaN stays NaN.
    pub fn apply(&self, hu: f32) -> f32 {
        if hu.is_nan() {
            return hu;
        }
        if self.width.is_nan() || self.width <= 0.0 {
            return if hu >= self.level { 1.0 } else { 0.0 };
        }
        let lower = self.level - self.width / 2.0;
        ((hu - lower) / self.width).clamp(0.0, 1.0)
    }
}

impl Volume {
    /// A volume of `data` on a grid of `shape` (`[depth, height, width]`) voxels of `spacing`
    /// mm.
    ///
    /// # Errors
    /// [`Error::InvalidVolume`] if an extent is 0, `data.len()` is not the product of the
    /// extents, or a spacing is not finite and positive.
    pub fn new(data: Vec<f32>, shape: [usize; 3], spacing: [f32; 3]) -> Result<Self> {
        let volume = Self { data, shape, spacing };
        volume.check()?;
        Ok(volume)
    }

    /// Number of voxels, `depth * height * width`.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the volume has no voxels (never, for a volume built by [`Volume::new`]).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Applies a Hounsfield window to every voxel ([`Window::apply`]), in place; the volume is
    /// taken and given back so that steps chain.
    pub fn window(mut self, window: Window) -> Self {
        for x in &mut self.data {
            *x = window.apply(*x);
        }
        self
    }

    /// Normalises every voxel as an ImageNet network expects a grey image, in place:
    /// `x -> (x - 0.449) / 0.226` ([`IMAGENET_GREY_MEAN`], [`IMAGENET_GREY_STD`]). Expects
    /// values in `[0, 1]`, as [`Volume::window`] makes them.
    ///
    /// # Why these numbers
    /// ImageNet networks were trained on RGB in `[0, 1]` normalised per channel with means
    /// `m = (0.485, 0.456, 0.406)` and standard deviations `s = (0.229, 0.224, 0.225)`. Our
    /// 1-channel stem kernel is the sum of the RGB kernels, `W = W_r + W_g + W_b`. A grey value
    /// `g` copied to RGB and normalised per channel gives the 2-D network
    /// `sum_c W_c (g - m_c) / s_c`; our stem gives `sum_c W_c x`. So the 1-channel input `x`
    /// must be on the scale the network saw in each channel, not a new scale of its own.
    ///
    /// If the three kernels respond alike (`W_c = W / 3`), the two agree for
    /// `x = (1/3) sum_c (g - m_c) / s_c`, which is `(g - 0.4488) / 0.22598`; the averages
    /// `0.449` and `0.226` differ from that by at most 0.0012 on `[0, 1]`. The real cost of a
    /// single mean and std is that assumption: with unlike kernels the exact input would be
    /// different for every output channel of the stem, so one `(mean, std)` is an
    /// approximation, exact only when the per-channel means and stds are equal.
    pub fn normalize_imagenet_grey(mut self) -> Self {
        for x in &mut self.data {
            *x = (*x - IMAGENET_GREY_MEAN) / IMAGENET_GREY_STD;
        }
        self
    }

    /// Resamples to voxels of `target_spacing` mm with trilinear interpolation.
    ///
    /// Per axis, with `n` voxels of `s` mm becoming voxels of about `t` mm:
    ///
    /// - new extent `n' = max(1, round(n * s / t))`, so the field of view is kept;
    /// - new spacing `n * s / n'` (the one actually obtained after rounding, so it may differ
    ///   slightly from `t`);
    /// - "align centres" (PyTorch's `align_corners=False`): output voxel `i` sits at input
    ///   coordinate `x = (i + 0.5) * n / n' - 0.5`, clamped to `[0, n - 1]`, so the grids'
    ///   outer edges line up and edge voxels repeat rather than extrapolate;
    /// - the value is the trilinear blend of the 8 input voxels around `x`.
    ///
    /// The same spacing gives the same values. Cost: 8 reads per output voxel, with each
    /// axis's indices and weights computed once.
    ///
    /// # Errors
    /// [`Error::InvalidVolume`] if a target spacing is not finite and positive, if the result
    /// would have more than [`MAX_VOXELS`] voxels or cannot be allocated, or if the volume's
    /// fields no longer agree.
    pub fn resample(&self, target_spacing: [f32; 3]) -> Result<Volume> {
        self.check()?;
        let (shape, spacing) = resampled_grid(self.shape, self.spacing, target_spacing)?;
        let mut volume = self.resize(shape)?;
        volume.spacing = spacing;
        Ok(volume)
    }

    /// Resamples to exactly `shape` voxels with trilinear interpolation, as
    /// [`resample`](Self::resample) does (align centres, edges repeat); the spacing becomes
    /// the one that keeps the field of view, `n * s / n'` per axis. This is how a map made on
    /// a resampled grid goes back onto the scan's own grid.
    ///
    /// # Errors
    /// [`Error::InvalidVolume`] if an extent is 0, the result would have more than
    /// [`MAX_VOXELS`] voxels or cannot be allocated, or the volume's fields no longer agree.
    pub fn resize(&self, shape: [usize; 3]) -> Result<Volume> {
        self.check()?;
        let total = checked_total(shape, "resize to")?;
        let spacing = [0, 1, 2].map(|a| (self.shape[a] as f64 * f64::from(self.spacing[a]) / shape[a] as f64) as f32);
        let slab = Slab {
            first: 0,
            scan_shape: self.shape,
        };
        let mut volume = self.interpolate(slab, shape, [0; 3], shape, 0.0, total)?;
        volume.spacing = spacing;
        Ok(volume)
    }

    /// [`resample`](Self::resample) to `target_spacing`, then
    /// [`crop_or_pad`](Self::crop_or_pad) to `shape` with `fill`, in one pass: only the
    /// voxels that are kept are interpolated (a centre crop of 64 x 128 x 128 from a
    /// 512 x 512 x 100 CT resampled to 1.5 mm computes 1 M voxels instead of 9.5 M), and the
    /// values are the two steps' to the bit.
    ///
    /// # Errors
    /// As [`resample`](Self::resample) and [`crop_or_pad`](Self::crop_or_pad).
    pub fn resample_crop_or_pad(&self, target_spacing: [f32; 3], shape: [usize; 3], fill: f32) -> Result<Volume> {
        self.check()?;
        self.window_of_slices(0, self.shape, Some(target_spacing), shape, fill)
    }

    /// This volume as slices `first ..` of a scan of `scan_shape` voxels (same height, width
    /// and spacing), resampled to `target` (or kept on the scan's grid for `None`) and
    /// cropped or padded to `shape` around the centre of the whole scan's grid: the voxels
    /// [`resample_crop_or_pad`](Self::resample_crop_or_pad) gives the whole scan, from the
    /// slices [`slices_for_window`] names.
    pub(crate) fn window_of_slices(
        &self,
        first: usize,
        scan_shape: [usize; 3],
        target: Option<[f32; 3]>,
        shape: [usize; 3],
        fill: f32,
    ) -> Result<Volume> {
        self.check()?;
        let (grid, offset, spacing) = centre_window(scan_shape, self.spacing, target, shape)?;
        let total = checked_total(shape, "crop/pad target shape")?;
        let slab = Slab { first, scan_shape };
        let mut volume = self.interpolate(slab, grid, offset, shape, fill, total)?;
        volume.spacing = spacing;
        Ok(volume)
    }

    /// The trilinear resampling of `slab`'s scan onto `grid` voxels (align centres, edges
    /// repeat), seen through a window of `shape` voxels whose index `i` is grid index
    /// `i + offset` per axis, from this volume's voxels (the slab's slices); window voxels
    /// outside the grid are `fill`. Each grid voxel's taps are those of the whole grid, so a
    /// window gives exactly the voxels a full resampling would. The spacing is left as this
    /// volume's; callers set it.
    fn interpolate(
        &self,
        slab: Slab,
        grid: [usize; 3],
        offset: [isize; 3],
        shape: [usize; 3],
        fill: f32,
        total: usize,
    ) -> Result<Volume> {
        let end = slab.first.checked_add(self.shape[0]);
        if slab.scan_shape[1..] != self.shape[1..] || end.is_none_or(|end| end > slab.scan_shape[0]) {
            return Err(Error::InvalidVolume {
                what: format!(
                    "{:?} voxels cannot be slices {}.. of a scan of {:?}",
                    self.shape, slab.first, slab.scan_shape
                ),
            });
        }
        let axis = |a: usize| window_taps(slab.scan_shape[a], grid[a], offset[a], shape[a]);
        let mut taps_d = axis(0)?;
        // Depth taps index the slab's slices; each one the window needs must be there.
        for tap in taps_d.taps.iter_mut() {
            let inside = |i: usize| i.checked_sub(slab.first).filter(|&i| i < self.shape[0]);
            match (inside(tap.0), inside(tap.1)) {
                (Some(d0), Some(d1)) => (tap.0, tap.1) = (d0, d1),
                _ => {
                    return Err(Error::InvalidVolume {
                        what: format!(
                            "slices {}..{} do not hold slices {} and {} that the window needs",
                            slab.first,
                            slab.first + self.shape[0],
                            tap.0,
                            tap.1
                        ),
                    });
                }
            }
        }
        let (taps_h, taps_w) = (axis(1)?, axis(2)?);
        let (w_first, run) = (taps_w.first, &taps_w.taps);
        let [_, h_in, w_in] = self.shape;
        let [_, h_out, w_out] = shape;
        let mut data = reserve(total)?;
        data.resize(total, fill);
        for (d, &(d0, d1, td)) in (taps_d.first..).zip(&taps_d.taps) {
            for (h, &(h0, h1, th)) in (taps_h.first..).zip(&taps_h.taps) {
                // The four input rows around (d, h); the inner loop blends along width.
                let row = |d: usize, h: usize| &self.data[(d * h_in + h) * w_in..][..w_in];
                let (r00, r01, r10, r11) = (row(d0, h0), row(d0, h1), row(d1, h0), row(d1, h1));
                let out = &mut data[(d * h_out + h) * w_out + w_first..][..run.len()];
                for (value, &(w0, w1, tw)) in out.iter_mut().zip(run) {
                    let c00 = lerp(r00[w0], r00[w1], tw);
                    let c01 = lerp(r01[w0], r01[w1], tw);
                    let c10 = lerp(r10[w0], r10[w1], tw);
                    let c11 = lerp(r11[w0], r11[w1], tw);
                    *value = lerp(lerp(c00, c01, th), lerp(c10, c11, th), td);
                }
            }
        }
        Ok(Volume {
            data,
            shape,
            spacing: self.spacing,
        })
    }

    /// Crops or pads to `shape` voxels, keeping the centre; spacing is unchanged.
    ///
    /// Per axis, from `n` to `n'` voxels: if `n > n'`, keeps voxels `start .. start + n'` with
    /// `start = (n - n') / 2`; if `n < n'`, puts `before = (n' - n) / 2` voxels of `fill` in
    /// front and the rest behind (the extra voxel of an odd difference goes to the end on
    /// both counts). Axes may crop and pad at once.
    ///
    /// # Errors
    /// [`Error::InvalidVolume`] if a target extent is 0, the target has more than
    /// [`MAX_VOXELS`] voxels or cannot be allocated, or the volume's fields no longer agree.
    pub fn crop_or_pad(&self, shape: [usize; 3], fill: f32) -> Result<Volume> {
        self.check()?;
        let total = checked_total(shape, "crop/pad target shape")?;
        // Output index i reads input index i + offset, when that lies inside the input;
        // offset = start (crop) or -before (pad), i.e. (n - n') / 2 rounded towards zero.
        let offset = |a: usize| -> isize {
            let (n, m) = (self.shape[a] as isize, shape[a] as isize);
            (n - m) / 2
        };
        let (od, oh, ow) = (offset(0), offset(1), offset(2));
        let [d_in, h_in, w_in] = self.shape;
        let [d_out, h_out, w_out] = shape;
        let source = |i: usize, off: isize, n: usize| -> Option<usize> {
            let j = i as isize + off;
            (0..n as isize).contains(&j).then_some(j as usize)
        };
        // Output width positions that read the input: one contiguous run.
        let w_first = (-ow).max(0) as usize;
        let w_last = ((w_in as isize - ow).min(w_out as isize)).max(w_first as isize) as usize;
        let mut data = reserve(total)?;
        data.resize(total, fill);
        for d in 0..d_out {
            let Some(ds) = source(d, od, d_in) else { continue };
            for h in 0..h_out {
                let Some(hs) = source(h, oh, h_in) else { continue };
                let out = &mut data[(d * h_out + h) * w_out..][..w_out];
                let start = (ds * h_in + hs) * w_in;
                let from = (start as isize + w_first as isize + ow) as usize;
                out[w_first..w_last].copy_from_slice(&self.data[from..from + (w_last - w_first)]);
            }
        }
        Ok(Volume {
            data,
            shape,
            spacing: self.spacing,
        })
    }

    /// The volume as a network input on `device`.
    ///
    /// # Shapes
    /// - output: `[1, 1, depth, height, width]` (batch of one, one channel)
    ///
    /// # Errors
    /// [`Error::InvalidVolume`] if the public fields were edited so that `data.len()` is no
    /// longer the product of `shape` ([`Volume::new`] makes that impossible otherwise).
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor<5>> {
        self.check()?;
        let [d, h, w] = self.shape;
        Ok(Tensor::<5>::from_data(
            TensorData::new(self.data.clone(), [1, 1, d, h, w]),
            device,
        ))
    }

    /// The invariants [`Volume::new`] establishes.
    fn check(&self) -> Result<()> {
        if self.shape.contains(&0) {
            return Err(Error::InvalidVolume {
                what: format!(
                    "shape {:?} has an extent of 0; every axis needs at least 1 voxel",
                    self.shape
                ),
            });
        }
        if voxel_count(self.shape) != Some(self.data.len()) {
            return Err(Error::InvalidVolume {
                what: format!(
                    "{} values do not fill shape {:?}; data must hold depth * height * width values",
                    self.data.len(),
                    self.shape
                ),
            });
        }
        check_spacing("spacing", self.spacing)
    }
}

/// The most voxels [`Volume::resample`] and [`Volume::crop_or_pad`] make: 2^30 (a 1024^3
/// grid, 4 GiB of `f32`), far beyond a CT volume at its native resolution (512 x 512 x 2000
/// is half of it). A spacing read from a file's header (NIfTI `pixdim`) cannot then ask for
/// more memory than that.
pub const MAX_VOXELS: usize = 1 << 30;

/// An empty vector with room for `len` values, or an error if the memory cannot be had
/// (instead of the abort of a failed `Vec::with_capacity`).
fn reserve(len: usize) -> Result<Vec<f32>> {
    let mut data = Vec::new();
    data.try_reserve_exact(len).map_err(|err| Error::InvalidVolume {
        what: format!("{len} voxels do not fit in memory ({err})"),
    })?;
    Ok(data)
}

/// `depth * height * width`, or `None` on overflow.
/// The voxel count of `shape`, refused (naming `what`) when an extent is 0 or the total is
/// over [`MAX_VOXELS`].
fn checked_total(shape: [usize; 3], what: &str) -> Result<usize> {
    voxel_count(shape)
        .filter(|&t| t > 0 && t <= MAX_VOXELS)
        .ok_or_else(|| Error::InvalidVolume {
            what: format!("{what} {shape:?}: every extent must be at least 1, the total at most {MAX_VOXELS} voxels"),
        })
}

fn voxel_count(shape: [usize; 3]) -> Option<usize> {
    shape[0].checked_mul(shape[1])?.checked_mul(shape[2])
}

/// Every spacing must be a positive length in mm.
pub(crate) fn check_spacing(name: &str, spacing: [f32; 3]) -> Result<()> {
    if spacing.iter().all(|&s| s.is_finite() && s > 0.0) {
        Ok(())
    } else {
        Err(Error::InvalidVolume {
            what: format!("{name} {spacing:?} must be finite and positive (mm per voxel)"),
        })
    }
}

/// The error for a resampling whose result would not fit in memory.
fn too_large(target_spacing: [f32; 3]) -> Error {
    Error::InvalidVolume {
        what: format!("resampling to spacing {target_spacing:?} mm gives too many voxels; use a larger spacing"),
    }
}

/// For output position `i` of `n_out` along an axis of `n_in` inputs: the two input indices
/// around it and the weight of the second, with `x = (i + 0.5) * n_in / n_out - 0.5` clamped
/// to `[0, n_in - 1]`, `i0 = floor(x)`, `i1 = min(i0 + 1, n_in - 1)`, `t = x - i0`. Computed
/// per index (never a table of the whole grid, which a hostile spacing makes huge);
/// `i0` and `i1` do not decrease as `i` grows.
fn tap(n_in: usize, n_out: usize, i: usize) -> (usize, usize, f32) {
    let scale = n_in as f64 / n_out as f64;
    let last = (n_in - 1) as f64;
    let x = ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, last);
    let i0 = x.floor() as usize;
    // An exact hit reads one voxel (the blend is the same: `lerp(a, b, 0) = a`), so a window
    // of slices need not hold the next one.
    let i1 = if x == i0 as f64 { i0 } else { (i0 + 1).min(n_in - 1) };
    (i0, i1, (x - i0 as f64) as f32)
}

/// Slices `first ..` of a scan of `scan_shape` voxels, as [`Volume::window_of_slices`] reads
/// them.
#[derive(Clone, Copy)]
struct Slab {
    first: usize,
    scan_shape: [usize; 3],
}

/// The taps of the window indices `first .. first + taps.len()` along an axis: those whose
/// grid voxel `i + offset` lies inside the grid (one contiguous run); the others are fill.
struct AxisTaps {
    first: usize,
    taps: Vec<(usize, usize, f32)>,
}

/// Along an axis of `n_in` voxels resampled to `grid`, seen through a window of `len` voxels
/// whose index `i` is grid index `i + offset`: the taps of the window voxels inside the grid.
/// As many entries as the window and the grid overlap (not one per window voxel: a huge
/// window over a small grid costs its output, not 24 bytes a voxel more); memory that cannot
/// be had is an error.
fn window_taps(n_in: usize, grid: usize, offset: isize, len: usize) -> Result<AxisTaps> {
    // Window indices i with 0 <= i + offset < grid, within 0..len (extents are at most
    // MAX_VOXELS, so these fit an isize).
    let first = (-offset).clamp(0, len as isize) as usize;
    let end = (grid as isize - offset).clamp(first as isize, len as isize) as usize;
    let mut taps = Vec::new();
    taps.try_reserve_exact(end - first)
        .map_err(|err| Error::InvalidVolume {
            what: format!("{} taps along an axis do not fit in memory ({err})", end - first),
        })?;
    taps.extend((first..end).map(|i| tap(n_in, grid, (i as isize + offset) as usize)));
    Ok(AxisTaps { first, taps })
}

/// The grid (the scan resampled to `target`, or its own for `None`), the offset of a
/// centred window of `shape` voxels in it (as [`Volume::crop_or_pad`] centres), and the
/// grid's spacing.
fn centre_window(
    scan_shape: [usize; 3],
    scan_spacing: [f32; 3],
    target: Option<[f32; 3]>,
    shape: [usize; 3],
) -> Result<([usize; 3], [isize; 3], [f32; 3])> {
    // The window, the scan and the grid hold at least 1 and at most MAX_VOXELS (2^30)
    // voxels, so each extent and their differences fit an isize, and no axis is empty.
    checked_total(shape, "crop/pad target shape")?;
    checked_total(scan_shape, "scan shape")?;
    let (grid, spacing) = match target {
        Some(target) => resampled_grid(scan_shape, scan_spacing, target)?,
        None => (scan_shape, scan_spacing),
    };
    let offset = [0, 1, 2].map(|a| (grid[a] as isize - shape[a] as isize) / 2);
    Ok((grid, offset, spacing))
}

/// The slices of a scan of `scan_shape` voxels of `scan_spacing` mm that a centred window of
/// `shape` voxels on the grid of `target` (the scan's own for `None`) reads: what
/// [`Volume::window_of_slices`] needs.
///
/// # Errors
/// [`Error::InvalidVolume`] for a spacing that is not positive and finite, a grid too large
/// for memory, or an extent of 0.
pub(crate) fn slices_for_window(
    scan_shape: [usize; 3],
    scan_spacing: [f32; 3],
    target: Option<[f32; 3]>,
    shape: [usize; 3],
) -> Result<std::ops::Range<usize>> {
    check_spacing("scan spacing", scan_spacing)?;
    checked_total(shape, "crop/pad target shape")?;
    let (grid, offset, _) = centre_window(scan_shape, scan_spacing, target, shape)?;
    // The window's grid indices inside the grid are one run; taps do not decrease along it,
    // so its first and last index give the first and last slice.
    let (len, grid_d) = (shape[0] as isize, grid[0] as isize);
    let (lo, hi) = (offset[0].max(0), (offset[0] + len).min(grid_d) - 1);
    if lo > hi {
        return Err(Error::InvalidVolume {
            what: format!("a scan of {scan_shape:?} voxels has no slice in a window of {shape:?}"),
        });
    }
    let first = tap(scan_shape[0], grid[0], lo as usize).0;
    let last = tap(scan_shape[0], grid[0], hi as usize).1;
    Ok(first..last + 1)
}

/// The extents and spacing [`Volume::resample`] gives `shape` voxels of `spacing` mm at
/// `target` mm: per axis `n' = max(1, round(n * s / t))` (f64, so that large extents round
/// as written) and `n * s / n'`.
pub(crate) fn resampled_grid(shape: [usize; 3], spacing: [f32; 3], target: [f32; 3]) -> Result<([usize; 3], [f32; 3])> {
    check_spacing("target spacing", target)?;
    let mut out = ([0usize; 3], [0f32; 3]);
    for a in 0..3 {
        let n = shape[a] as f64;
        let extent = (n * f64::from(spacing[a]) / f64::from(target[a])).round();
        if !(extent.is_finite() && extent <= MAX_VOXELS as f64) {
            return Err(too_large(target));
        }
        out.0[a] = (extent as usize).max(1);
        out.1[a] = (n * f64::from(spacing[a]) / out.0[a] as f64) as f32;
    }
    voxel_count(out.0)
        .filter(|&t| t <= MAX_VOXELS)
        .ok_or_else(|| too_large(target))?;
    Ok(out)
}

/// `a` blended towards `b` by `t`: `a (1 - t) + b t`, exactly `a` at `t = 0` and `b` at `t = 1`.
fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a * (1.0 - t) + b * t
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    fn volume(data: Vec<f32>, shape: [usize; 3]) -> Volume {
        Volume::new(data, shape, [1.0; 3]).unwrap()
    }

    /// A spacing that makes one axis of the grid 2^30 voxels long while the window takes 4
    /// of them: only the window's taps are computed (a table of the grid's, 24 GiB, aborted
    /// the process), and the values are those of the input's middle.
    #[test]
    fn a_huge_grid_costs_only_its_window() {
        let scan = volume(vec![0.0, 10.0, 20.0, 30.0], [1, 1, 4]);
        let fine = 4.0 / (1u64 << 30) as f32;
        let out = scan.resample_crop_or_pad([1.0, 1.0, fine], [1, 1, 4], -1.0).unwrap();
        assert_eq!(out.shape, [1, 1, 4]);
        for v in &out.data {
            assert!((14.99..=15.01).contains(v), "{:?}", out.data);
        }
        assert_eq!(
            slices_for_window([4, 1, 1], [1.0; 3], Some([fine, 1.0, 1.0]), [2, 1, 1]).unwrap(),
            1..3
        );
    }

    /// Window and scan extents past what a volume may hold are errors, not overflows.
    #[test]
    fn huge_window_extents_are_refused() {
        for shape in [[usize::MAX, 1, 1], [1, usize::MAX / 2, 3], [1 << 31, 1, 1]] {
            let err = slices_for_window([4, 4, 4], [1.0; 3], None, shape).unwrap_err();
            assert!(err.to_string().contains("at most"), "{err}");
            let err = slices_for_window(shape, [1.0; 3], None, [2, 2, 2]).unwrap_err();
            assert!(err.to_string().contains("at most"), "{err}");
        }
        let scan = volume(vec![0.0; 8], [2, 2, 2]);
        assert!(scan.resample_crop_or_pad([1.0; 3], [usize::MAX, 1, 1], 0.0).is_err());
    }

    #[test]
    fn window_presets() {
        // LUNG: lower = -600 - 1500/2 = -1350, upper = 150.
        // -1350 -> 0; -600 -> 750/1500 = 0.5; 150 -> 1500/1500 = 1; -2000 -> -650/1500 -> clamp 0;
        // 1000 -> 2350/1500 -> clamp 1; -975 -> 375/1500 = 0.25.
        let w = Window::LUNG;
        assert_eq!(w.apply(-1350.0), 0.0);
        assert_eq!(w.apply(-600.0), 0.5);
        assert_eq!(w.apply(150.0), 1.0);
        assert_eq!(w.apply(-2000.0), 0.0);
        assert_eq!(w.apply(1000.0), 1.0);
        assert_eq!(w.apply(-975.0), 0.25);
        // MEDIASTINUM: lower = 50 - 175 = -125; 50 -> 0.5; -125 -> 0; 225 -> 1.
        assert_eq!(Window::MEDIASTINUM.apply(50.0), 0.5);
        assert_eq!(Window::MEDIASTINUM.apply(-125.0), 0.0);
        assert_eq!(Window::MEDIASTINUM.apply(225.0), 1.0);
        // BONE: lower = 400 - 900 = -500; 400 -> 0.5; -50 -> 450/1800 = 0.25; 1300 -> 1.
        assert_eq!(Window::BONE.apply(400.0), 0.5);
        assert_eq!(Window::BONE.apply(-50.0), 0.25);
        assert_eq!(Window::BONE.apply(1300.0), 1.0);
        // BRAIN: lower = 40 - 40 = 0; 0 -> 0; 20 -> 20/80 = 0.25; 80 -> 1; -1000 (air) -> 0.
        assert_eq!(Window::BRAIN.apply(0.0), 0.0);
        assert_eq!(Window::BRAIN.apply(20.0), 0.25);
        assert_eq!(Window::BRAIN.apply(80.0), 1.0);
        assert_eq!(Window::BRAIN.apply(-1000.0), 0.0);
    }

    #[test]
    fn custom_and_degenerate_windows() {
        // level 0, width 200: lower -100; 50 -> 150/200 = 0.75.
        assert_eq!(Window::new(0.0, 200.0).apply(50.0), 0.75);
        // Width 0 is a threshold at the level: 9 -> 0, 10 -> 1, 11 -> 1.
        let t = Window::new(10.0, 0.0);
        assert_eq!([t.apply(9.0), t.apply(10.0), t.apply(11.0)], [0.0, 1.0, 1.0]);
        assert!(Window::LUNG.apply(f32::NAN).is_nan());
    }

    #[test]
    fn window_maps_every_voxel() {
        // LUNG on [-1350, -600, 150] -> [0, 0.5, 1]; shape and spacing kept.
        let v = Volume::new(vec![-1350.0, -600.0, 150.0], [1, 1, 3], [2.0, 1.0, 1.0]).unwrap();
        let w = v.window(Window::LUNG);
        assert_eq!(w.data, [0.0, 0.5, 1.0]);
        assert_eq!((w.shape, w.spacing), ([1, 1, 3], [2.0, 1.0, 1.0]));
    }

    #[test]
    fn imagenet_grey_normalisation() {
        // (0.449 - 0.449) / 0.226 = 0; (0.675 - 0.449) / 0.226 = 0.226 / 0.226 = 1;
        // (0 - 0.449) / 0.226 = -1.98673.
        let v = volume(vec![0.449, 0.675, 0.0], [1, 1, 3]).normalize_imagenet_grey();
        assert_relative_eq!(v.data[0], 0.0);
        assert_relative_eq!(v.data[1], 1.0, epsilon = 1e-6);
        assert_relative_eq!(v.data[2], -1.986_726, epsilon = 1e-5);
    }

    #[test]
    fn grey_constants_are_the_channel_averages() {
        // (0.485 + 0.456 + 0.406) / 3 = 1.347 / 3 = 0.449; (0.229 + 0.224 + 0.225) / 3 = 0.678 / 3 = 0.226.
        assert_relative_eq!(IMAGENET_GREY_MEAN, (0.485 + 0.456 + 0.406) / 3.0, epsilon = 1e-6);
        assert_relative_eq!(IMAGENET_GREY_STD, (0.229 + 0.224 + 0.225) / 3.0, epsilon = 1e-6);
    }

    #[test]
    fn resample_halves_a_row() {
        // Width 4 voxels of 1 mm -> 2 mm: n' = round(4 * 1 / 2) = 2, scale n / n' = 2.
        // i = 0: x = 0.5 * 2 - 0.5 = 0.5 -> between 1 and 2 -> 1.5.
        // i = 1: x = 1.5 * 2 - 0.5 = 2.5 -> between 3 and 4 -> 3.5.
        // Depth and height: n' = max(1, round(1 * 1 / 2 = 0.5 -> 1)) = 1, so their spacing stays
        // 1 * 1 / 1 = 1, not the 2 asked for.
        let v = volume(vec![1.0, 2.0, 3.0, 4.0], [1, 1, 4]);
        let r = v.resample([2.0, 2.0, 2.0]).unwrap();
        assert_eq!(r.shape, [1, 1, 2]);
        assert_eq!(r.data, [1.5, 3.5]);
        assert_eq!(r.spacing, [1.0, 1.0, 2.0]);
    }

    #[test]
    fn resample_stores_the_spacing_obtained() {
        // 5 voxels of 1 mm -> 2 mm: n' = round(2.5) = 3 (half away from zero), spacing 5 / 3.
        let v = volume(vec![0.0; 5], [1, 1, 5]);
        let r = v.resample([1.0, 1.0, 2.0]).unwrap();
        assert_eq!(r.shape, [1, 1, 3]);
        assert_relative_eq!(r.spacing[2], 5.0 / 3.0);
    }

    #[test]
    fn resample_to_the_same_spacing_is_the_identity() {
        // n' = n, x = (i + 0.5) * 1 - 0.5 = i, t = 0: each voxel reads itself.
        let data: Vec<f32> = (0..2 * 3 * 4).map(|i| (i as f32 * 0.37).sin()).collect();
        let v = Volume::new(data, [2, 3, 4], [2.5, 0.7, 0.7]).unwrap();
        assert_eq!(v.resample([2.5, 0.7, 0.7]).unwrap(), v);
    }

    #[test]
    fn resample_doubles_a_cube() {
        // 2x2x2 voxels of 2 mm -> 1 mm: n' = 4 per axis, scale 2 / 4 = 0.5, so output i reads
        // x = (i + 0.5) * 0.5 - 0.5: i = 0 -> -0.25 -> clamp 0; 1 -> 0.25; 2 -> 0.75; 3 -> 1.25 -> clamp 1.
        // Values v(d, h, w) = 4d + 2h + w (0..7) are linear, so trilinear gives 4x_d + 2x_h + x_w:
        // (0,0,0) -> 0; (3,3,3) -> 7; (1,1,1) -> 7 * 0.25 = 1.75; (2,2,2) -> 7 * 0.75 = 5.25;
        // (1,2,3) -> 4 * 0.25 + 2 * 0.75 + 1 = 3.5, the centre value.
        let v = Volume::new((0..8).map(|i| i as f32).collect(), [2, 2, 2], [2.0; 3]).unwrap();
        let r = v.resample([1.0; 3]).unwrap();
        assert_eq!((r.shape, r.spacing), ([4, 4, 4], [1.0; 3]));
        let at = |d: usize, h: usize, w: usize| r.data[(d * 4 + h) * 4 + w];
        assert_eq!(at(0, 0, 0), 0.0);
        assert_eq!(at(3, 3, 3), 7.0);
        assert_eq!(at(1, 1, 1), 1.75);
        assert_eq!(at(2, 2, 2), 5.25);
        assert_eq!(at(1, 2, 3), 3.5);

        // One bright corner checks the product of the weights: at (1,1,1) voxel (0,0,0) weighs
        // (1 - 0.25)^3 = 0.421875; at (2,1,0) it weighs (1 - 0.75) * 0.75 * 1 = 0.1875.
        let mut corner = vec![0.0; 8];
        corner[0] = 1.0;
        let r = Volume::new(corner, [2, 2, 2], [2.0; 3])
            .unwrap()
            .resample([1.0; 3])
            .unwrap();
        assert_eq!(r.data[(4 + 1) * 4 + 1], 0.421_875);
        assert_eq!(r.data[(2 * 4 + 1) * 4], 0.1875);
    }

    #[test]
    fn resampling_a_window_is_resampling_then_cropping() {
        // Values that differ everywhere, so a tap off by one voxel shows.
        let shape = [7, 9, 11];
        let data = (0..7 * 9 * 11)
            .map(|i| ((i * 7919) % 1009) as f32 * 0.37 - 150.0)
            .collect();
        let scan = Volume::new(data, shape, [2.5, 0.7, 0.9]).unwrap();
        for (target, window) in [
            ([1.5, 1.5, 1.5], [4, 3, 5]),   // crop on every axis
            ([1.0, 0.5, 2.0], [30, 20, 3]), // pad depth and height, crop width
            ([3.0, 0.7, 0.45], [2, 9, 22]), // grid equal to the window on one axis
            ([1.5, 1.5, 1.5], [1, 1, 1]),
        ] {
            let two_steps = scan.resample(target).unwrap().crop_or_pad(window, -1024.0).unwrap();
            let one_pass = scan.resample_crop_or_pad(target, window, -1024.0).unwrap();
            assert_eq!(one_pass.shape, two_steps.shape);
            assert_eq!(one_pass.spacing, two_steps.spacing);
            let (a, b) = (&one_pass.data, &two_steps.data);
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{target:?} {window:?}"
            );
        }
        assert!(scan.resample_crop_or_pad([1.0; 3], [0, 4, 4], 0.0).is_err());
        assert!(scan.resample_crop_or_pad([0.0, 1.0, 1.0], [4, 4, 4], 0.0).is_err());
    }

    #[test]
    fn resample_rejects_bad_target_spacing() {
        let v = volume(vec![0.0; 4], [1, 1, 4]);
        for bad in [
            [1.0, 0.0, 1.0],
            [1.0, 1.0, -2.0],
            [f32::NAN, 1.0, 1.0],
            [1.0, f32::INFINITY, 1.0],
        ] {
            assert!(matches!(v.resample(bad), Err(Error::InvalidVolume { .. })), "{bad:?}");
        }
        // 1 mm -> 1e-30 mm would be 4e30 voxels.
        assert!(matches!(
            v.resample([1.0, 1.0, 1e-30]),
            Err(Error::InvalidVolume { .. })
        ));
    }

    #[test]
    fn crop_keeps_the_centre() {
        // Width 5 -> 3: start = (5 - 3) / 2 = 1, keeps [1, 2, 3].
        // Width 6 -> 3: start = (6 - 3) / 2 = 1, keeps [1, 2, 3] (the extra voxel goes from the end).
        let v = volume(vec![0.0, 1.0, 2.0, 3.0, 4.0], [1, 1, 5]);
        assert_eq!(v.crop_or_pad([1, 1, 3], 0.0).unwrap().data, [1.0, 2.0, 3.0]);
        let v = volume(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [1, 1, 6]);
        assert_eq!(v.crop_or_pad([1, 1, 3], 0.0).unwrap().data, [1.0, 2.0, 3.0]);
    }

    #[test]
    fn pad_centres_with_fill() {
        // Width 2 -> 5, fill -1: before = (5 - 2) / 2 = 1, after = 2: [-1, 7, 8, -1, -1].
        let v = Volume::new(vec![7.0, 8.0], [1, 1, 2], [3.0, 2.0, 1.0]).unwrap();
        let p = v.crop_or_pad([1, 1, 5], -1.0).unwrap();
        assert_eq!(p.data, [-1.0, 7.0, 8.0, -1.0, -1.0]);
        assert_eq!((p.shape, p.spacing), ([1, 1, 5], [3.0, 2.0, 1.0]));
    }

    #[test]
    fn crop_and_pad_at_once() {
        // Shape [1, 3, 2] rows [0 1] [2 3] [4 5] -> [2, 2, 4], fill 9:
        // depth 1 -> 2: before = 0, one slice of 9s after;
        // height 3 -> 2: start = (3 - 2) / 2 = 0, keeps rows 0 and 1;
        // width 2 -> 4: before = 1, after = 1.
        let v = volume((0..6).map(|i| i as f32).collect(), [1, 3, 2]);
        let p = v.crop_or_pad([2, 2, 4], 9.0).unwrap();
        #[rustfmt::skip]
        let expected = [
            9.0, 0.0, 1.0, 9.0,
            9.0, 2.0, 3.0, 9.0,
            9.0, 9.0, 9.0, 9.0,
            9.0, 9.0, 9.0, 9.0,
        ];
        assert_eq!(p.data, expected);
        assert_eq!(v.crop_or_pad([1, 3, 2], 9.0).unwrap(), v);
    }

    #[test]
    fn crop_or_pad_rejects_zero_extent() {
        let v = volume(vec![0.0; 4], [1, 1, 4]);
        assert!(matches!(
            v.crop_or_pad([1, 0, 4], 0.0),
            Err(Error::InvalidVolume { .. })
        ));
    }

    #[test]
    fn new_checks_its_fields() {
        // 7 values cannot fill 1 * 2 * 4 = 8 voxels.
        let err = Volume::new(vec![0.0; 7], [1, 2, 4], [1.0; 3]);
        assert!(matches!(err, Err(Error::InvalidVolume { .. })));
        assert!(matches!(
            Volume::new(vec![], [0, 2, 4], [1.0; 3]),
            Err(Error::InvalidVolume { .. })
        ));
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let err = Volume::new(vec![0.0; 8], [1, 2, 4], [1.0, bad, 1.0]);
            assert!(matches!(err, Err(Error::InvalidVolume { .. })), "{bad}");
        }
        // Overflowing shapes are refused, not wrapped.
        let err = Volume::new(vec![0.0; 8], [usize::MAX, 2, 4], [1.0; 3]);
        assert!(matches!(err, Err(Error::InvalidVolume { .. })));
        assert_eq!(Volume::new(vec![0.0; 8], [1, 2, 4], [1.0; 3]).unwrap().len(), 8);
    }

    #[test]
    fn to_tensor_is_batch_one_channel_one() {
        use burn::tensor::Device;
        // Voxel (d, h, w) = (1, 0, 2) of a [2, 3, 4] volume is data[(1 * 3 + 0) * 4 + 2] = data[14] = 14.
        let v = volume((0..24).map(|i| i as f32).collect(), [2, 3, 4]);
        let x = v.to_tensor(&Device::flex()).unwrap();
        assert_eq!(x.dims(), [1, 1, 2, 3, 4]);
        let values = x.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(values, v.data);
        assert_eq!(values[14], 14.0);
    }
}
