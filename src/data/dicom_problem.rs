//! What can be wrong with a DICOM folder or series ([`DicomProblem`]), and the series a folder
//! holds ([`SeriesInfo`]).

use std::fmt;
use std::path::PathBuf;

/// One series found in a folder: what [`list_series`](crate::data::list_series) returns and what a
/// [`DicomProblem::SeveralSeries`] error lists.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesInfo {
    /// `SeriesInstanceUID`: the name to pass to [`Volume::from_dicom_series`](crate::preprocess::Volume::from_dicom_series).
    pub uid: String,
    /// `SeriesNumber`, if the files have one.
    pub number: Option<i64>,
    /// `SeriesDescription` (empty if absent).
    pub description: String,
    /// `Modality` (`CT`, `MR`, ...).
    pub modality: String,
    /// How many files of the folder belong to the series.
    pub files: usize,
}

impl fmt::Display for SeriesInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.uid, self.modality)?;
        if let Some(number) = self.number {
            write!(f, ", #{number}")?;
        }
        if !self.description.is_empty() {
            write!(f, ", \"{}\"", self.description)?;
        }
        write!(f, ", {} files)", self.files)
    }
}

/// What is wrong with a DICOM folder or series; carried by [`Error::Dicom`](crate::Error::Dicom).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DicomProblem {
    /// No file in the folder starts like a DICOM file (128 bytes, then `DICM`).
    #[error("no DICOM files (Part 10: 128-byte preamble, then DICM); give the folder that holds the slices")]
    NoFiles,

    /// A file announces DICOM but dicom-rs cannot parse or decode it.
    #[error("{}: cannot be read: {reason}", file.display())]
    Unreadable {
        /// The file.
        file: PathBuf,
        /// What dicom-rs reported.
        reason: String,
    },

    /// A file lacks an attribute the volume needs, or has one of the wrong form.
    #[error("{}: {attribute} is missing or malformed ({reason}); the series cannot be placed in space without it", file.display())]
    MissingAttribute {
        /// The file.
        file: PathBuf,
        /// The attribute's keyword, e.g. `ImagePositionPatient`.
        attribute: &'static str,
        /// What was found.
        reason: String,
    },

    /// The folder holds more than one series and none was named.
    #[error("the folder holds {} series: {}; name one with Volume::from_dicom_series (resnet3d explain: --series UID; resnet3d predict: a label CSV whose `series` column names one per row)", series.len(), list(series))]
    SeveralSeries {
        /// The series found, by `SeriesNumber`.
        series: Vec<SeriesInfo>,
    },

    /// The named series is not in the folder.
    #[error("no series {uid} in the folder; it holds {}", list(available))]
    SeriesNotFound {
        /// The `SeriesInstanceUID` asked for.
        uid: String,
        /// The series the folder does hold.
        available: Vec<SeriesInfo>,
    },

    /// The series is not a volume modality (see [`VOLUME_MODALITIES`](crate::data::VOLUME_MODALITIES)).
    #[error("modality {modality} is not a volume; resnet3d reads CT, MR, PT and NM series")]
    UnsupportedModality {
        /// The series' `Modality`.
        modality: String,
    },

    /// The pixel data is in a transfer syntax dicom-rs cannot decode in pure Rust (JPEG 2000,
    /// JPEG-LS, JPEG XL, ...). Nothing was decoded.
    #[error("{}: transfer syntax {name} ({uid}) cannot be decoded without native libraries; convert the series first (e.g. `dcmdjpeg`/`gdcmconv --raw`)", file.display())]
    UnsupportedTransferSyntax {
        /// The first file of the series in that syntax.
        file: PathBuf,
        /// The transfer syntax UID.
        uid: String,
        /// Its name.
        name: String,
    },

    /// A file holds several frames (an enhanced multi-frame object); this reader takes one
    /// slice per file.
    #[error("{}: {frames} frames in one file; enhanced multi-frame objects are not read, only one slice per file", file.display())]
    MultiFrame {
        /// The file.
        file: PathBuf,
        /// Its `NumberOfFrames`.
        frames: i64,
    },

    /// Pixels with more than one sample (RGB, palette) have no single value.
    #[error("{}: {samples} samples per pixel ({photometric}); only greyscale (MONOCHROME1/2) series are volumes", file.display())]
    NotGreyscale {
        /// The file.
        file: PathBuf,
        /// `SamplesPerPixel`.
        samples: i64,
        /// `PhotometricInterpretation`.
        photometric: String,
    },

    /// Slices of different `Rows` x `Columns` or `PixelSpacing` in one series.
    #[error("{}: {found}, the series' first slice has {expected}; a series must be one grid", file.display())]
    MixedSize {
        /// The slice that differs.
        file: PathBuf,
        /// Its size or pixel spacing.
        found: String,
        /// The first slice's.
        expected: String,
    },

    /// Slices with different `ImageOrientationPatient` in one series (e.g. a localiser mixed
    /// in).
    #[error("{}: ImageOrientationPatient {found:?} differs from the first slice's {expected:?}; a series must be one stack of parallel slices", file.display())]
    MixedOrientation {
        /// The slice that differs.
        file: PathBuf,
        /// Its orientation.
        found: [f64; 6],
        /// The first slice's.
        expected: [f64; 6],
    },

    /// The slice positions are not on the line of the slice normal: the gantry was tilted
    /// (or the series is sheared). Resampling onto a regular grid is not done here.
    #[error(
        "gantry tilt of {degrees:.2} degrees: slice positions step off the slice normal; correct the tilt (e.g. 3D Slicer's or dcm2niix's tilt correction) first"
    )]
    GantryTilt {
        /// Angle between the slice normal and the line through the positions.
        degrees: f64,
    },

    /// Two slices at the same position (a duplicate file, or two acquisitions in one series).
    #[error("{} and {} are at the same position along the slice normal; remove the duplicate", first.display(), second.display())]
    DuplicatePositions {
        /// One slice.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },

    /// A step between neighbouring slices is a multiple of the usual step: slices are
    /// missing.
    #[error(
        "{missing} slice(s) missing after position {after_mm:.3} mm along the normal: a step of {step_mm:.3} mm where the series steps {spacing_mm:.3} mm; copy the whole series"
    )]
    MissingSlices {
        /// How many slices fit in the gap.
        missing: usize,
        /// Position (along the normal) of the slice before the gap.
        after_mm: f64,
        /// The gap's step.
        step_mm: f64,
        /// The series' usual (median) step.
        spacing_mm: f64,
    },

    /// Steps between slices vary without a clear gap.
    #[error(
        "slice steps vary from {min_mm:.3} to {max_mm:.3} mm; a volume needs even spacing (resample the series first)"
    )]
    UnevenSpacing {
        /// Smallest step.
        min_mm: f64,
        /// Largest step.
        max_mm: f64,
    },
}

fn list(series: &[SeriesInfo]) -> String {
    series.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
