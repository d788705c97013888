//! The header pass of a DICOM folder: every file's attributes that grouping and checking
//! need, read before any pixel data is decoded (in parallel), and the series they form.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use rayon::prelude::*;

use crate::data::dicom_problem::{DicomProblem, SeriesInfo};
use crate::data::{dicom_frames, dicom_read};
use crate::error::{Error, Result};
use crate::preprocess::ReadLimits;

/// The attributes the header pass keeps (every other element is read, bounded, and dropped).
const HEADER_TAGS: [Tag; 15] = [
    tags::SERIES_INSTANCE_UID,
    tags::SERIES_NUMBER,
    tags::SERIES_DESCRIPTION,
    tags::MODALITY,
    tags::NUMBER_OF_FRAMES,
    tags::SAMPLES_PER_PIXEL,
    tags::PHOTOMETRIC_INTERPRETATION,
    tags::BITS_ALLOCATED,
    tags::BITS_STORED,
    tags::ROWS,
    tags::COLUMNS,
    tags::IMAGE_POSITION_PATIENT,
    tags::IMAGE_ORIENTATION_PATIENT,
    tags::PIXEL_SPACING,
    tags::SLICE_THICKNESS,
];

/// The attributes of one file that grouping and checking need.
#[derive(Debug, Clone)]
pub(super) struct Header {
    pub(super) file: PathBuf,
    /// The file's length in bytes.
    pub(super) bytes: u64,
    /// The declared length of a native PixelData (`None` when encapsulated or absent).
    pub(super) pixel_bytes: Option<u32>,
    /// Why an encapsulated frame does not fit the header (`dicom_frames`), reported once the
    /// series' transfer syntax is known to be decodable.
    pub(super) frame: Result<(), String>,
    pub(super) series: String,
    pub(super) number: Option<i64>,
    pub(super) description: String,
    pub(super) modality: String,
    pub(super) transfer_syntax: String,
    pub(super) frames: i64,
    pub(super) samples: i64,
    pub(super) photometric: String,
    /// `BitsAllocated` (16 when absent: the decoder then reports what it finds).
    pub(super) bits: i64,
    /// `BitsStored`, when present.
    pub(super) stored_bits: Option<i64>,
    pub(super) rows: usize,
    pub(super) columns: usize,
    pub(super) position: [f64; 3],
    pub(super) orientation: [f64; 6],
    pub(super) pixel_spacing: [f64; 2],
    pub(super) thickness: Option<f64>,
}

/// The header of every DICOM file directly in `dir` (in parallel); files without the `DICM`
/// mark are skipped, files with it that do not parse are errors.
pub(super) fn read_headers(dir: &Path, limits: &ReadLimits) -> Result<Vec<Header>> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        return Err(Error::FileNotFound {
            path: dir.to_path_buf(),
        });
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.file_type().map_err(io)?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    let fail = |problem| Error::Dicom {
        dir: dir.to_path_buf(),
        problem: Box::new(problem),
    };
    let headers: Vec<Option<Header>> = files
        .par_iter()
        .map(|file| {
            if is_dicom(file) {
                header(file, limits).map(Some)
            } else {
                Ok(None)
            }
        })
        .collect::<Result<_, DicomProblem>>()
        .map_err(fail)?;
    let headers: Vec<Header> = headers.into_iter().flatten().collect();
    if headers.is_empty() {
        return Err(fail(DicomProblem::NoFiles));
    }
    Ok(headers)
}

/// Whether the file starts like a DICOM Part-10 file. A DICOMDIR is an index, not a slice.
fn is_dicom(file: &Path) -> bool {
    if file.file_name().is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR")) {
        return false;
    }
    let mut start = [0u8; 132];
    std::fs::File::open(file)
        .and_then(|mut f| f.read_exact(&mut start))
        .is_ok_and(|()| &start[128..] == b"DICM")
}

/// Runs a dicom-rs call on a user's file, turning a panic inside it into an error: the crate
/// never panics on a user's file, and a third-party parser's panic on hostile bytes must not
/// break that.
pub(super) fn guarded<T>(file: &Path, read: impl FnOnce() -> Result<T, DicomProblem>) -> Result<T, DicomProblem> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|_| {
        Err(DicomProblem::Unreadable {
            file: file.to_path_buf(),
            reason: "the DICOM parser failed on this file (dicom-rs panicked; the file is damaged)".to_string(),
        })
    })
}

fn header(file: &Path, limits: &ReadLimits) -> Result<Header, DicomProblem> {
    guarded(file, || {
        let (object, pixel_bytes) =
            dicom_read::read_header(file, limits, |tag| HEADER_TAGS.contains(&tag)).map_err(|reason| {
                DicomProblem::Unreadable {
                    file: file.to_path_buf(),
                    reason,
                }
            })?;
        let attributes = Attributes { file, object: &object };
        let size = |tag, name| {
            attributes
                .int(tag, name)
                .and_then(|v| usize::try_from(v).map_err(|_| attributes.malformed(name, format!("{v} is not a size"))))
        };
        let position = attributes.floats::<3>(tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient")?;
        let orientation = attributes.floats::<6>(tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient")?;
        let pixel_spacing = attributes.floats::<2>(tags::PIXEL_SPACING, "PixelSpacing")?;
        if pixel_spacing.iter().any(|&s| s <= 0.0) {
            return Err(attributes.malformed("PixelSpacing", format!("{pixel_spacing:?} is not positive")));
        }
        let mut header = Header {
            file: file.to_path_buf(),
            bytes: std::fs::metadata(file).map_or(0, |m| m.len()),
            pixel_bytes,
            frame: Ok(()),
            series: attributes.text(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
            number: attributes
                .optional(tags::SERIES_NUMBER)
                .and_then(|e| e.to_int::<i64>().ok()),
            description: attributes
                .optional(tags::SERIES_DESCRIPTION)
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            modality: attributes.text(tags::MODALITY, "Modality")?,
            transfer_syntax: object
                .meta()
                .transfer_syntax()
                .trim_end_matches(['\0', ' '])
                .to_string(),
            frames: attributes
                .optional_int(tags::NUMBER_OF_FRAMES, "NumberOfFrames")?
                .unwrap_or(1),
            samples: attributes
                .optional_int(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?
                .unwrap_or(1),
            photometric: attributes
                .optional(tags::PHOTOMETRIC_INTERPRETATION)
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            bits: attributes
                .optional_int(tags::BITS_ALLOCATED, "BitsAllocated")?
                .unwrap_or(16),
            stored_bits: attributes.optional_int(tags::BITS_STORED, "BitsStored")?,
            rows: size(tags::ROWS, "Rows")?,
            columns: size(tags::COLUMNS, "Columns")?,
            position,
            orientation,
            pixel_spacing,
            thickness: attributes
                .optional(tags::SLICE_THICKNESS)
                .and_then(|e| e.to_float64().ok())
                .filter(|t| t.is_finite() && *t > 0.0),
        };
        header.frame = fragments(&object).map_or(Ok(()), |fragments| {
            dicom_frames::check(&header.transfer_syntax, fragments, &header.frame_shape())
        });
        Ok(header)
    })
}

/// The fragments of the object's encapsulated pixel data, if it has one.
pub(super) fn fragments(object: &DefaultDicomObject) -> Option<&[Vec<u8>]> {
    object
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .and_then(|pixels| pixels.value().fragments())
}

impl Header {
    /// What the header says of its one frame.
    pub(super) fn frame_shape(&self) -> dicom_frames::Frame {
        dicom_frames::Frame {
            rows: self.rows,
            columns: self.columns,
            bits: self.bits,
            samples: self.samples,
        }
    }
}

/// Typed reads of one object's attributes, with errors naming the file and attribute.
struct Attributes<'a> {
    file: &'a Path,
    object: &'a DefaultDicomObject,
}

type Element = dicom_object::mem::InMemElement;

impl Attributes<'_> {
    fn malformed(&self, attribute: &'static str, reason: String) -> DicomProblem {
        DicomProblem::MissingAttribute {
            file: self.file.to_path_buf(),
            attribute,
            reason,
        }
    }

    fn optional(&self, tag: Tag) -> Option<&Element> {
        self.object.element_opt(tag).ok().flatten()
    }

    fn required(&self, tag: Tag, name: &'static str) -> Result<&Element, DicomProblem> {
        self.optional(tag)
            .ok_or_else(|| self.malformed(name, "absent".to_string()))
    }

    fn text(&self, tag: Tag, name: &'static str) -> Result<String, DicomProblem> {
        let value = self.required(tag, name)?;
        let text = value.to_str().map_err(|err| self.malformed(name, err.to_string()))?;
        let text = text.trim_end_matches(['\0', ' ']).trim();
        if text.is_empty() {
            return Err(self.malformed(name, "empty".to_string()));
        }
        Ok(text.to_string())
    }

    fn int(&self, tag: Tag, name: &'static str) -> Result<i64, DicomProblem> {
        self.required(tag, name)?
            .to_int::<i64>()
            .map_err(|err| self.malformed(name, err.to_string()))
    }

    /// An integer attribute that may be absent (`None`), an error when present but not one.
    fn optional_int(&self, tag: Tag, name: &'static str) -> Result<Option<i64>, DicomProblem> {
        self.optional(tag).map(|_| self.int(tag, name)).transpose()
    }

    fn floats<const N: usize>(&self, tag: Tag, name: &'static str) -> Result<[f64; N], DicomProblem> {
        let values = self
            .required(tag, name)?
            .to_multi_float64()
            .map_err(|err| self.malformed(name, err.to_string()))?;
        let values: [f64; N] = values
            .try_into()
            .map_err(|v: Vec<f64>| self.malformed(name, format!("{} values, expected {N}", v.len())))?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(self.malformed(name, format!("{values:?} is not finite")));
        }
        Ok(values)
    }
}

/// Headers grouped by series, each group's summary first, ordered by `SeriesNumber` then UID.
pub(super) fn group(headers: &[Header]) -> Vec<(SeriesInfo, Vec<Header>)> {
    let mut by_uid: BTreeMap<&str, Vec<Header>> = BTreeMap::new();
    for header in headers {
        by_uid.entry(&header.series).or_default().push(header.clone());
    }
    let mut groups: Vec<(SeriesInfo, Vec<Header>)> = by_uid
        .into_iter()
        .map(|(uid, slices)| {
            let first = &slices[0];
            let info = SeriesInfo {
                uid: uid.to_string(),
                number: first.number,
                description: first.description.clone(),
                modality: first.modality.clone(),
                files: slices.len(),
            };
            (info, slices)
        })
        .collect();
    groups.sort_by(|a, b| (a.0.number, &a.0.uid).cmp(&(b.0.number, &b.0.uid)));
    groups
}
