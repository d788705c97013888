//! Reading a scan, whole or only the slices a pipeline needs: a NIfTI file or a folder of
//! DICOM slices, chosen by what the path is.

use std::ops::Range;
use std::path::Path;

use crate::error::{Error, Result};
#[cfg(any(feature = "dicom", feature = "nifti"))]
use crate::preprocess::ReadLimits;
use crate::preprocess::Volume;

/// Reads a scan: a NIfTI file (`.nii`, `.nii.gz`) or a folder holding one DICOM series.
///
/// # Errors
/// [`Error::FileNotFound`], the reader's errors, [`Error::Unsupported`] for another kind of
/// file or when the crate was built without the reader.
pub fn read_scan(path: &Path) -> Result<Volume> {
    Ok(read_scan_slices(path, None, |shape, _| Ok(0..shape[0]))?.volume)
}

/// Slices of a scan as a reader decoded them.
pub(crate) struct ScanSlices {
    /// The slices `first .. first + volume.shape[0]`, with the scan's spacing.
    pub volume: Volume,
    pub first: usize,
    /// The whole scan's `[depth, height, width]`.
    pub scan_shape: [usize; 3],
    /// For a DICOM series: its UID and the whole series' NIfTI affine (read where a map is
    /// written over the scan: `infer::PreparedScan`).
    #[cfg_attr(not(all(feature = "nifti", feature = "dicom")), allow(dead_code))]
    pub dicom: Option<(String, [[f64; 4]; 4])>,
}

/// Reads slices `pick(shape, spacing)` of the scan at `path` (a NIfTI file, or a DICOM
/// folder, `series` picking one of several by UID), given the whole scan's shape and
/// spacing: only those slices' voxels are decoded (a gzipped NIfTI file is inflated up to
/// their end), and only they are held in memory.
///
/// # Errors
/// As [`read_scan`]; [`Error::InvalidVolume`] when `pick` names no slice or one past the end.
/// A series UID picks one DICOM series of a folder: given with a file, it is refused rather
/// than ignored (a label CSV naming the same file under two UIDs would score it twice).
pub(crate) fn no_series_for_a_file(path: &Path, series: Option<&str>) -> Result<()> {
    match series {
        Some(uid) if !path.is_dir() => Err(Error::InvalidConfig {
            field: "series",
            reason: format!(
                "is {uid}, but {} is a file, not a folder of DICOM series; leave the series empty for it",
                path.display()
            ),
        }),
        _ => Ok(()),
    }
}

pub(crate) fn read_scan_slices(
    path: &Path,
    series: Option<&str>,
    #[cfg_attr(not(any(feature = "dicom", feature = "nifti")), allow(unused_variables))] pick: impl FnOnce(
        [usize; 3],
        [f32; 3],
    ) -> Result<
        Range<usize>,
    >,
) -> Result<ScanSlices> {
    if path.is_dir() {
        #[cfg(feature = "dicom")]
        {
            let limits = ReadLimits::default();
            let (dicom, first, scan_shape) = super::dicom::read_series_slices(path, series, &limits, pick)?;
            return Ok(ScanSlices {
                dicom: Some((dicom.series.uid.clone(), dicom.nifti_affine())),
                volume: dicom.volume,
                first,
                scan_shape,
            });
        }
        #[cfg(not(feature = "dicom"))]
        return Err(Error::Unsupported {
            what: format!(
                "{}: a folder is read as a DICOM series, which needs the crate's `dicom` feature",
                path.display()
            ),
        });
    }
    no_series_for_a_file(path, series)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        #[cfg(feature = "nifti")]
        {
            let limits = ReadLimits::default();
            let (volume, first, scan_shape) = crate::preprocess::read_nifti_slices(path, &limits, pick)?;
            return Ok(ScanSlices {
                volume,
                first,
                scan_shape,
                dicom: None,
            });
        }
        #[cfg(not(feature = "nifti"))]
        return Err(Error::Unsupported {
            what: format!("{}: NIfTI needs the crate's `nifti` feature", path.display()),
        });
    }
    if !path.exists() {
        return Err(Error::FileNotFound {
            path: path.to_path_buf(),
        });
    }
    Err(Error::Unsupported {
        what: format!(
            "{}: scans are read from .nii or .nii.gz files, or folders of DICOM slices",
            path.display()
        ),
    })
}
