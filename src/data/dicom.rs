//! DICOM series (a folder of slices) into a [`Volume`], on dicom-rs (feature `dicom`).
//!
//! dicom-rs parses the files, decodes the pixel data (native, deflated, RLE, JPEG baseline
//! and lossless; pure Rust) and applies the modality LUT (`RescaleSlope`/`RescaleIntercept`,
//! per file, so per slice). What it does not do, and this file does, is turn a folder into a
//! volume:
//!
//! 1. every file's header is read (up to, not including, the pixel data) and the files are
//!    grouped by `SeriesInstanceUID`; a folder with several series is an error that lists
//!    them, unless one is named;
//! 2. the series is checked whole before any pixel is decoded: modality, transfer syntax
//!    (named when dicom-rs cannot decode it), one frame per file, one grey sample per pixel,
//!    equal `Rows`/`Columns`, `PixelSpacing` and `ImageOrientationPatient`;
//! 3. slices are sorted by the distance of their `ImagePositionPatient` along the slice normal
//!    `n = X x Y` (the two `ImageOrientationPatient` directions), never by file name or
//!    `InstanceNumber`; positions off the normal's line are a gantry tilt, uneven steps are
//!    missing slices;
//! 4. the depth spacing is the mean step between positions (`SliceThickness` only for a
//!    series of one slice), the in-plane spacing `PixelSpacing`.
//!
//! The volume's axes are `[slice, row, column]`: depth runs along `n`, height along the
//! column direction `Y` (down the rows), width along the row direction `X`. Pixel `(i, j)` of
//! slice `k` sits at `P_k + j * PixelSpacing[1] * X + i * PixelSpacing[0] * Y`.

use std::path::Path;

use dicom_pixeldata::{ConvertOptions, PixelDecoder};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use rayon::prelude::*;

use crate::data::dicom_header::{Header, fragments, group, guarded, read_headers};
use crate::data::dicom_problem::{DicomProblem, SeriesInfo};
use crate::data::{dicom_frames, dicom_read};
use crate::error::{Error, Result};
use crate::preprocess::{ReadLimits, Volume};

/// Modalities whose series are volumes a 3-D network can read; others (ultrasound,
/// radiographs, secondary captures, structured reports) are refused by name.
pub const VOLUME_MODALITIES: [&str; 4] = ["CT", "MR", "PT", "NM"];

/// Positions whose steps differ by more than this share of the median step are uneven.
const UNEVEN_STEP: f64 = 0.1;
/// A step at least this many median steps long is a gap of missing slices.
const GAP_STEP: f64 = 1.5;
/// Distance off the normal's line allowed per mm along it (tan 0.57 degrees), plus an absolute
/// 0.01 mm for positions rounded in the header; more is a gantry tilt.
const TILT_SLOPE: f64 = 0.01;
/// Largest number of rows or columns of a slice (CT and MR have 256 to 1024; larger headers
/// are damaged, and the decoder would allocate for them).
const MAX_SIDE: usize = 16384;
/// Largest difference of direction cosines (or relative pixel spacing) still taken as equal.
const SAME_DIRECTION: f64 = 1e-3;

/// A series read by [`read_series`]: the volume and where it sits in the patient.
#[derive(Debug, Clone)]
pub struct DicomVolume {
    /// Voxels in the output units of the modality LUT (Hounsfield units for CT), with spacing.
    pub volume: Volume,
    /// The series the volume came from.
    pub series: SeriesInfo,
    /// `ImagePositionPatient` of the first slice (depth index 0), in mm, patient coordinates
    /// (DICOM's LPS: x to the patient's left, y to the back, z to the head).
    pub origin: [f64; 3],
    /// Unit directions of the volume's `[width, height, depth]` axes in patient coordinates:
    /// the row direction `X`, the column direction `Y` and the slice normal `n = X x Y`.
    pub directions: [[f64; 3]; 3],
}

impl DicomVolume {
    /// The NIfTI affine (sform) of the volume: voxel `(i, j, k) = (column, row, slice)` to
    /// RAS+ mm, DICOM's LPS with x and y negated. Write a NIfTI file with it (or a map on the
    /// same grid) and 3D Slicer or ITK-SNAP place it where the scan is.
    pub fn nifti_affine(&self) -> [[f64; 4]; 4] {
        let spacing = [self.volume.spacing[2], self.volume.spacing[1], self.volume.spacing[0]];
        let mut affine = [[0.0; 4]; 4];
        for (row, sign) in [(0, -1.0), (1, -1.0), (2, 1.0)] {
            for axis in 0..3 {
                affine[row][axis] = sign * self.directions[axis][row] * f64::from(spacing[axis]);
            }
            affine[row][3] = sign * self.origin[row];
        }
        affine[3][3] = 1.0;
        affine
    }
}

impl Volume {
    /// Reads the one DICOM series in folder `dir` (files directly in it; sub-folders are not
    /// searched) into a volume in the modality's units (Hounsfield units for CT), with its
    /// spacing. See [the module](crate::data) and [`read_series`] for what is checked.
    ///
    /// # Errors
    /// [`Error::FileNotFound`] / [`Error::Io`] for the folder, [`Error::Dicom`] with the
    /// [`DicomProblem`] (several series: the list of them; missing slices, tilt, mixed sizes
    /// or orientations, an undecodable transfer syntax, ...), [`Error::InvalidVolume`] for a
    /// volume too large for memory.
    pub fn from_dicom(dir: impl AsRef<Path>) -> Result<Volume> {
        Ok(read_series(dir, None)?.volume)
    }

    /// [`from_dicom`](Self::from_dicom) within `limits` (see [`read_series_with_limits`]).
    ///
    /// # Errors
    /// As [`from_dicom`](Self::from_dicom); [`Error::InvalidVolume`] for a series of more
    /// voxels than [`ReadLimits::max_voxels`].
    pub fn from_dicom_with_limits(dir: impl AsRef<Path>, limits: &ReadLimits) -> Result<Volume> {
        Ok(read_series_with_limits(dir, None, limits)?.volume)
    }

    /// Like [`from_dicom`](Self::from_dicom), for the series `uid` (`SeriesInstanceUID`) of a
    /// folder that holds several.
    ///
    /// # Errors
    /// As [`from_dicom`](Self::from_dicom); [`DicomProblem::SeriesNotFound`] when no file has
    /// that UID.
    pub fn from_dicom_series(dir: impl AsRef<Path>, uid: &str) -> Result<Volume> {
        Ok(read_series(dir, Some(uid))?.volume)
    }
}

/// The series in folder `dir`, from the headers only (no pixel data is decoded), ordered by
/// `SeriesNumber`.
///
/// # Errors
/// [`Error::FileNotFound`] / [`Error::Io`] for the folder; [`Error::Dicom`] for a file that
/// announces DICOM but cannot be parsed, or a folder without DICOM files.
pub fn list_series(dir: impl AsRef<Path>) -> Result<Vec<SeriesInfo>> {
    let dir = dir.as_ref();
    let headers = read_headers(dir, &ReadLimits::default())?;
    Ok(group(&headers).into_iter().map(|(info, _)| info).collect())
}

/// Reads one series of folder `dir` (the only one, or the one named `uid`) with its position
/// in the patient.
///
/// Every header is read and the series checked before any pixel data is decoded; the
/// decoding (dicom-rs, modality LUT per file) runs in parallel.
///
/// # Errors
/// As [`Volume::from_dicom`].
pub fn read_series(dir: impl AsRef<Path>, uid: Option<&str>) -> Result<DicomVolume> {
    read_series_with_limits(dir, uid, &ReadLimits::default())
}

/// [`read_series`] within `limits`: a series of more than [`ReadLimits::max_voxels`] voxels
/// is refused before its pixel data is read, and a deflated file may inflate to at most
/// [`ReadLimits::max_inflated_bytes`]. Whatever the limits, no value a file declares is
/// allocated before the file is seen to hold it.
///
/// # Errors
/// As [`Volume::from_dicom`].
pub fn read_series_with_limits(dir: impl AsRef<Path>, uid: Option<&str>, limits: &ReadLimits) -> Result<DicomVolume> {
    Ok(read_series_slices(dir.as_ref(), uid, limits, |shape, _| Ok(0..shape[0]))?.0)
}

/// Reads slices `pick(shape, spacing)` of the series (`shape` and `spacing` are the whole
/// series', `[depth, height, width]`, depth in the order of positions along the normal):
/// every header is read and the whole series checked, but only the picked slices' pixel
/// data is decoded. Returns them as the volume of a [`DicomVolume`] whose placement is the
/// whole series' (its origin is slice 0's), with the first picked slice's index and the
/// whole series' shape.
pub(crate) fn read_series_slices(
    dir: &Path,
    uid: Option<&str>,
    limits: &ReadLimits,
    pick: impl FnOnce([usize; 3], [f32; 3]) -> Result<std::ops::Range<usize>>,
) -> Result<(DicomVolume, usize, [usize; 3])> {
    let fail = |problem| Error::Dicom {
        dir: dir.to_path_buf(),
        problem: Box::new(problem),
    };
    let headers = read_headers(dir, limits)?;
    let mut groups = group(&headers);
    let (info, slices) = match uid {
        Some(uid) => {
            let at = groups.iter().position(|(info, _)| info.uid == uid).ok_or_else(|| {
                fail(DicomProblem::SeriesNotFound {
                    uid: uid.to_string(),
                    available: groups.iter().map(|(info, _)| info.clone()).collect(),
                })
            })?;
            groups.swap_remove(at)
        }
        None if groups.len() == 1 => groups.remove(0),
        None => {
            return Err(fail(DicomProblem::SeveralSeries {
                series: groups.into_iter().map(|(info, _)| info).collect(),
            }));
        }
    };
    if !VOLUME_MODALITIES.contains(&info.modality.as_str()) {
        return Err(fail(DicomProblem::UnsupportedModality {
            modality: info.modality,
        }));
    }
    let geometry = Geometry::of(&slices).map_err(fail)?;
    // Every compressed frame fits its header before the volume is allocated for them.
    if let Some((slice, Err(why))) = slices.iter().map(|s| (s, &s.frame)).find(|(_, f)| f.is_err()) {
        return Err(fail(DicomProblem::Unreadable {
            file: slice.file.clone(),
            reason: why.clone(),
        }));
    }

    let [rows, columns] = geometry.size;
    let plane = rows * columns;
    // The whole series within the limit, whichever slices are decoded.
    plane
        .checked_mul(slices.len())
        .filter(|&n| n <= limits.max_voxels())
        .ok_or_else(|| Error::InvalidVolume {
            what: format!(
                "{} slices of {rows} x {columns} pixels: more than the limit of {} voxels; raise \
                 ReadLimits::max_voxels if the series is genuine",
                slices.len(),
                limits.max_voxels()
            ),
        })?;
    let spacing = [
        geometry.depth_spacing as f32,
        geometry.pixel_spacing[0] as f32,
        geometry.pixel_spacing[1] as f32,
    ];
    let shape = [slices.len(), rows, columns];
    let picked = pick(shape, spacing)?;
    let Some(order) = geometry.order.get(picked.clone()).filter(|o| !o.is_empty()) else {
        return Err(Error::InvalidVolume {
            what: format!(
                "slices {picked:?} of a series of {} slices were asked for",
                slices.len()
            ),
        });
    };
    let mut data = Vec::new();
    data.try_reserve_exact(plane * order.len())
        .map_err(|err| Error::InvalidVolume {
            what: format!("{} slices of {rows} x {columns} pixels: {err}", order.len()),
        })?;
    data.resize(plane * order.len(), 0.0);
    data.par_chunks_mut(plane)
        .zip(order.par_iter())
        .try_for_each(|(out, &slice)| decode(&slices[slice], limits, out))
        .map_err(fail)?;
    if let Some(at) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::InvalidVolume {
            what: format!(
                "{}: slice {} holds a non-finite value after the rescale (slope/intercept)",
                slices[order[at / plane]].file.display(),
                picked.start + at / plane
            ),
        });
    }
    let volume = Volume::new(data, [order.len(), rows, columns], spacing)?;
    let dicom = DicomVolume {
        volume,
        series: info,
        origin: slices[geometry.order[0]].position,
        directions: [geometry.row, geometry.column, geometry.normal],
    };
    Ok((dicom, picked.start, shape))
}

/// A checked series' grid: slice order, spacing and directions.
#[derive(Debug)]
struct Geometry {
    /// Indices into the series' headers, by ascending position along the normal.
    order: Vec<usize>,
    /// `[Rows, Columns]`.
    size: [usize; 2],
    pixel_spacing: [f64; 2],
    depth_spacing: f64,
    row: [f64; 3],
    column: [f64; 3],
    normal: [f64; 3],
}

impl Geometry {
    /// Checks that `slices` form one regular stack (everything but the pixel data) and sorts
    /// them along the slice normal.
    fn of(slices: &[Header]) -> Result<Geometry, DicomProblem> {
        let first = &slices[0];
        for slice in slices {
            let registry = TransferSyntaxRegistry;
            let syntax = registry.get(&slice.transfer_syntax);
            if !syntax.is_some_and(|ts| ts.can_decode_all()) {
                return Err(DicomProblem::UnsupportedTransferSyntax {
                    file: slice.file.clone(),
                    uid: slice.transfer_syntax.clone(),
                    name: syntax.map_or_else(|| "unknown to dicom-rs".to_string(), |ts| ts.name().to_string()),
                });
            }
            if slice.frames != 1 {
                return Err(DicomProblem::MultiFrame {
                    file: slice.file.clone(),
                    frames: slice.frames,
                });
            }
            if ![8, 16, 32, 64].contains(&slice.bits) {
                return Err(DicomProblem::MissingAttribute {
                    file: slice.file.clone(),
                    attribute: "BitsAllocated",
                    reason: format!("{}: a greyscale volume has 8, 16, 32 or 64 bits per pixel", slice.bits),
                });
            }
            // dicom-rs's modality LUT has 2^BitsStored entries: the standard's bound
            // (BitsStored <= BitsAllocated) keeps it at most 2^16 for the 16-bit pixels it
            // uses one for (a header's 27 asked for 512 MiB).
            if let Some(stored) = slice.stored_bits.filter(|&b| !(1..=slice.bits).contains(&b)) {
                return Err(DicomProblem::MissingAttribute {
                    file: slice.file.clone(),
                    attribute: "BitsStored",
                    reason: format!("{stored}: it must be 1 to BitsAllocated ({})", slice.bits),
                });
            }
            if slice.samples != 1 {
                return Err(DicomProblem::NotGreyscale {
                    file: slice.file.clone(),
                    samples: slice.samples,
                    photometric: slice.photometric.clone(),
                });
            }
            // A pixel takes at least 1/64 byte in any syntax read here (RLE's longest run: 128
            // bytes in 2), so a header claiming more pixels than that is damaged; checked
            // before the volume is allocated for them.
            let pixels = slice.rows as u64 * slice.columns as u64;
            if pixels > 64 * slice.bytes {
                return Err(DicomProblem::MissingAttribute {
                    file: slice.file.clone(),
                    attribute: "Rows",
                    reason: format!(
                        "{} x {} pixels cannot be held by a file of {} bytes",
                        slice.rows, slice.columns, slice.bytes
                    ),
                });
            }
            // Native pixel data must hold every pixel the header declares (8 bits or more each).
            let needed = pixels * (slice.bits.max(8) as u64 / 8);
            if let Some(held) = slice.pixel_bytes.filter(|&held| u64::from(held) < needed) {
                return Err(DicomProblem::MissingAttribute {
                    file: slice.file.clone(),
                    attribute: "PixelData",
                    reason: format!(
                        "{held} bytes, but {} x {} pixels of {} bits need {needed}",
                        slice.rows, slice.columns, slice.bits
                    ),
                });
            }
            if [slice.rows, slice.columns] != [first.rows, first.columns] {
                return Err(DicomProblem::MixedSize {
                    file: slice.file.clone(),
                    found: format!("{} x {} pixels", slice.rows, slice.columns),
                    expected: format!("{} x {}", first.rows, first.columns),
                });
            }
            let relative = |a: f64, b: f64| (a - b).abs() / a.abs().max(b.abs());
            if (0..2).any(|a| relative(slice.pixel_spacing[a], first.pixel_spacing[a]) > SAME_DIRECTION) {
                return Err(DicomProblem::MixedSize {
                    file: slice.file.clone(),
                    found: format!("PixelSpacing {:?}", slice.pixel_spacing),
                    expected: format!("{:?}", first.pixel_spacing),
                });
            }
            if (0..6).any(|a| (slice.orientation[a] - first.orientation[a]).abs() > SAME_DIRECTION) {
                return Err(DicomProblem::MixedOrientation {
                    file: slice.file.clone(),
                    found: slice.orientation,
                    expected: first.orientation,
                });
            }
        }
        if first.rows == 0 || first.columns == 0 || first.rows.max(first.columns) > MAX_SIDE {
            return Err(DicomProblem::MissingAttribute {
                file: first.file.clone(),
                attribute: "Rows",
                reason: format!(
                    "{} x {} pixels: a slice has 1 to {MAX_SIDE} pixels per side",
                    first.rows, first.columns
                ),
            });
        }
        let unit = |v: [f64; 3], attribute| {
            let norm = dot(v, v).sqrt();
            if norm < 0.5 {
                return Err(DicomProblem::MissingAttribute {
                    file: first.file.clone(),
                    attribute,
                    reason: format!("direction {v:?} is not a unit vector"),
                });
            }
            Ok(v.map(|x| x / norm))
        };
        let o = first.orientation;
        let row = unit([o[0], o[1], o[2]], "ImageOrientationPatient")?;
        let column = unit([o[3], o[4], o[5]], "ImageOrientationPatient")?;
        let normal = unit(cross(row, column), "ImageOrientationPatient")?;

        // Distance of each position along the normal; the order of the slices.
        let along: Vec<f64> = slices.iter().map(|s| dot(s.position, normal)).collect();
        let mut order: Vec<usize> = (0..slices.len()).collect();
        order.sort_by(|&a, &b| along[a].total_cmp(&along[b]));

        // Positions off the normal's line through the first slice: a tilted gantry.
        let start = slices[order[0]].position;
        let tilt = order
            .iter()
            .map(|&s| {
                let offset = sub(slices[s].position, start);
                let on = dot(offset, normal);
                let off = sub(offset, normal.map(|n| n * on));
                (dot(off, off).sqrt(), on)
            })
            .find(|&(off, on)| off > TILT_SLOPE * on.abs() + 0.01);
        if let Some((off, on)) = tilt {
            return Err(DicomProblem::GantryTilt {
                degrees: off.atan2(on).to_degrees(),
            });
        }

        let depth_spacing = if slices.len() == 1 {
            first.thickness.ok_or_else(|| DicomProblem::MissingAttribute {
                file: first.file.clone(),
                attribute: "SliceThickness",
                reason: "absent, and a series of one slice has no positions to take the spacing from".to_string(),
            })?
        } else {
            let steps: Vec<f64> = order.windows(2).map(|w| along[w[1]] - along[w[0]]).collect();
            if let Some(at) = steps.iter().position(|&s| s < 1e-3) {
                return Err(DicomProblem::DuplicatePositions {
                    first: slices[order[at]].file.clone(),
                    second: slices[order[at + 1]].file.clone(),
                });
            }
            let mut sorted = steps.clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[sorted.len() / 2];
            if let Some(at) = steps.iter().position(|&s| s >= GAP_STEP * median) {
                return Err(DicomProblem::MissingSlices {
                    missing: ((steps[at] / median).round() as usize).saturating_sub(1).max(1),
                    after_mm: along[order[at]],
                    step_mm: steps[at],
                    spacing_mm: median,
                });
            }
            let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
            if max - min > UNEVEN_STEP * median {
                return Err(DicomProblem::UnevenSpacing {
                    min_mm: min,
                    max_mm: max,
                });
            }
            (along[order[order.len() - 1]] - along[order[0]]) / (slices.len() - 1) as f64
        };
        Ok(Geometry {
            order,
            size: [first.rows, first.columns],
            pixel_spacing: first.pixel_spacing,
            depth_spacing,
            row,
            column,
            normal,
        })
    }
}

/// Decodes one slice's pixels with the modality LUT (rescale slope and intercept of that
/// file) into `out` (`Rows * Columns` values, row-major). The compressed frame is checked
/// against the slice's header first (`dicom_frames`): dicom-rs's decoders size their output
/// by the frame's own header.
fn decode(slice: &Header, limits: &ReadLimits, out: &mut [f32]) -> Result<(), DicomProblem> {
    let file = &slice.file;
    guarded(file, || {
        let unreadable = |reason: String| DicomProblem::Unreadable {
            file: file.to_path_buf(),
            reason,
        };
        // The image pixel module (group 0028: sizes, bits, rescale, LUTs) and the pixels.
        let object = dicom_read::read_whole(file, limits, |tag| tag.group() == 0x0028).map_err(unreadable)?;
        // Checked again: the file may have changed since its header was read.
        if let Some(fragments) = fragments(&object) {
            dicom_frames::check(&slice.transfer_syntax, fragments, &slice.frame_shape()).map_err(unreadable)?;
        }
        let pixels = object.decode_pixel_data().map_err(|err| unreadable(err.to_string()))?;
        let values: Vec<f32> = pixels
            .to_vec_with_options(&ConvertOptions::new())
            .map_err(|err| unreadable(err.to_string()))?;
        if values.len() != out.len() {
            return Err(unreadable(format!(
                "{} pixel values decoded, Rows x Columns is {}",
                values.len(),
                out.len()
            )));
        }
        out.copy_from_slice(&values);
        Ok(())
    })
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn slice(position: [f64; 3]) -> Header {
        Header {
            file: PathBuf::from(format!("{position:?}")),
            bytes: 1 << 20,
            pixel_bytes: Some(32),
            frame: Ok(()),
            series: "1.2".to_string(),
            number: Some(1),
            description: String::new(),
            modality: "CT".to_string(),
            transfer_syntax: "1.2.840.10008.1.2.1".to_string(),
            frames: 1,
            samples: 1,
            photometric: "MONOCHROME2".to_string(),
            bits: 16,
            stored_bits: Some(12),
            rows: 4,
            columns: 4,
            position,
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            pixel_spacing: [0.5, 0.5],
            thickness: Some(1.0),
        }
    }

    #[test]
    fn uneven_steps_without_a_gap_are_refused() {
        let slices: Vec<Header> = [0.0, 1.0, 2.3, 3.3].map(|z| slice([0.0, 0.0, z])).into();
        assert!(matches!(
            Geometry::of(&slices),
            Err(DicomProblem::UnevenSpacing { min_mm, max_mm }) if (min_mm - 1.0).abs() < 1e-9 && (max_mm - 1.3).abs() < 1e-9
        ));
    }

    #[test]
    fn slices_of_implausible_size_are_refused_before_decoding() {
        let mut slices: Vec<Header> = [0.0, 1.0].map(|z| slice([0.0, 0.0, z])).into();
        for s in &mut slices {
            (s.rows, s.columns) = (65535, 65535);
        }
        assert!(matches!(
            Geometry::of(&slices),
            Err(DicomProblem::MissingAttribute { attribute: "Rows", .. })
        ));
    }

    #[test]
    fn duplicate_positions_are_refused() {
        let slices: Vec<Header> = [0.0, 1.0, 1.0, 2.0].map(|z| slice([0.0, 0.0, z])).into();
        assert!(matches!(
            Geometry::of(&slices),
            Err(DicomProblem::DuplicatePositions { .. })
        ));
    }

    #[test]
    fn a_gap_of_two_slices_is_counted() {
        let slices: Vec<Header> = [0.0, 1.0, 2.0, 5.0, 6.0].map(|z| slice([0.0, 0.0, z])).into();
        assert!(matches!(
            Geometry::of(&slices),
            Err(DicomProblem::MissingSlices { missing: 2, after_mm, .. }) if (after_mm - 2.0).abs() < 1e-9
        ));
    }

    #[test]
    fn positions_rounded_in_the_header_are_not_a_tilt() {
        // 0.004 mm of rounding noise across the series.
        let slices: Vec<Header> = (0..5)
            .map(|k| slice([0.004 * f64::from(k % 2), 0.0, 0.625 * f64::from(k)]))
            .collect();
        let geometry = Geometry::of(&slices).expect("a regular stack");
        assert!((geometry.depth_spacing - 0.625).abs() < 1e-9);
    }

    #[test]
    fn nifti_affine_flips_lps_to_ras() {
        let volume = DicomVolume {
            volume: Volume::new(vec![0.0; 8], [2, 2, 2], [3.0, 2.0, 1.0]).expect("volume"),
            series: SeriesInfo {
                uid: "1".into(),
                number: None,
                description: String::new(),
                modality: "CT".into(),
                files: 2,
            },
            origin: [10.0, 20.0, 30.0],
            directions: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        };
        let a = volume.nifti_affine();
        assert_eq!(a[0], [-1.0, 0.0, 0.0, -10.0]);
        assert_eq!(a[1], [0.0, -2.0, 0.0, -20.0]);
        assert_eq!(a[2], [0.0, 0.0, 3.0, 30.0]);
        assert_eq!(a[3], [0.0, 0.0, 0.0, 1.0]);
    }
}
