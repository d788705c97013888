//! Reading a NIfTI-1 volume with memory bounded where it is allocated.
//!
//! The `nifti` crate parses the 348-byte header; the voxels are read here, not by its volume
//! reader, because that one inflates the whole data block into bytes at the length the header
//! declares and only then converts: a half-megabyte `.nii.gz` declaring 1024 x 1024 x 512
//! voxels of zeros took 2.6 GB before anything was checked. Here, before a byte of voxel data
//! is read or anything allocated:
//!
//! - the declared voxel count is checked against [`ReadLimits::max_voxels`];
//! - the declared data is checked against the most the file can hold: its length for a plain
//!   file, 1032 times its length for a gzipped one (deflate's largest ratio: a 258-byte match
//!   in two bits);
//!
//! then the `f32` volume is reserved once and filled straight from the (inflating) stream
//! through a 64 KiB buffer, scaled by `scl_slope`/`scl_inter` as it goes. Peak memory: the
//! volume plus the buffer and the inflater's window. A file that ends before its data is an
//! error that names it.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use nifti::{Endianness, NiftiHeader, NiftiType};

use crate::error::{Error, Result};
use crate::preprocess::{MAX_DEFLATE_RATIO, ReadLimits, Volume, check_spacing};

/// Bytes read from the stream at a time (a multiple of every element size).
const CHUNK: usize = 64 << 10;
/// Bytes of a NIfTI-1 header.
const HEADER_BYTES: u64 = 348;
/// Where a single-file (`n+1`) volume's data starts at the earliest: the header and the
/// 4-byte extension flag.
const FIRST_DATA_BYTE: u64 = 352;

impl Volume {
    /// Reads a 3-D NIfTI-1 file (`.nii`, `.nii.gz`, or a `.hdr` with its `.img`/`.img.gz`)
    /// with its voxel spacing, within the default [`ReadLimits`].
    ///
    /// Voxel values are rescaled by the header's `scl_slope` and `scl_inter` (CT files store
    /// Hounsfield units that way; a slope of 0 or not finite means no scaling, as nibabel
    /// reads it). NIfTI stores `x` fastest, so the file's `(x, y, z)` become the volume's
    /// `(width, height, depth)`, and `pixdim[1..4]` its spacing. The orientation
    /// (qform/sform) is not applied: axes stay as stored ([`nifti_affine`](crate::preprocess::nifti_affine)
    /// reads it). Gzip is recognised by its first bytes, not by the file name.
    ///
    /// Memory: the `f32` volume and a 64 KiB buffer; nothing is allocated before the header's
    /// declared size has passed the limits and the file's own size.
    ///
    /// # Errors
    /// [`Error::FileNotFound`]; [`Error::Io`] if the file cannot be read; [`Error::Corrupt`]
    /// for a header the reader refuses, a NIfTI-2 or Analyze file, or a file that ends before
    /// the data its header declares; [`Error::InvalidVolume`] for a volume that is not 3-D (a
    /// 4-D file with one time point is accepted), of an element type without a real value
    /// (complex, RGB), with a spacing that is not positive, or with more voxels than the
    /// limit allows.
    pub fn from_nifti(path: impl AsRef<Path>) -> Result<Volume> {
        Self::from_nifti_with_limits(path, &ReadLimits::default())
    }

    /// [`from_nifti`](Self::from_nifti) within `limits`: a header that declares more than
    /// [`ReadLimits::max_voxels`] voxels is refused before any voxel is read.
    ///
    /// # Errors
    /// As [`from_nifti`](Self::from_nifti).
    pub fn from_nifti_with_limits(path: impl AsRef<Path>, limits: &ReadLimits) -> Result<Volume> {
        read(path.as_ref(), limits)
    }
}

/// A file opened for reading, inflated when it is gzipped, with the most bytes it can give.
struct Source {
    stream: Box<dyn Read>,
    /// Upper bound on the bytes left in `stream`.
    left: u64,
    gzipped: bool,
}

impl Source {
    fn open(path: &Path) -> Result<Source> {
        let file = File::open(path).map_err(|err| io_error(path, err))?;
        let len = file.metadata().map_err(|err| io_error(path, err))?.len();
        let mut file = BufReader::with_capacity(CHUNK, file);
        let mut magic = [0u8; 2];
        let got = read_full(&mut file, &mut magic).map_err(|err| io_error(path, err))?;
        let head = std::io::Cursor::new(magic[..got].to_vec()).chain(file);
        Ok(if magic == [0x1f, 0x8b] {
            Source {
                stream: Box::new(MultiGzDecoder::new(head)),
                left: len.saturating_mul(MAX_DEFLATE_RATIO),
                gzipped: true,
            }
        } else {
            Source {
                stream: Box::new(head),
                left: len,
                gzipped: false,
            }
        })
    }

    /// Reads and drops `n` bytes; `false` if the stream ends first.
    fn skip(&mut self, n: u64) -> std::io::Result<bool> {
        let skipped = std::io::copy(&mut (&mut self.stream).take(n), &mut std::io::sink())?;
        self.left = self.left.saturating_sub(skipped);
        Ok(skipped == n)
    }
}

/// Fills `buf` as far as the stream goes; the number of bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

fn io_error(path: &Path, err: std::io::Error) -> Error {
    if err.kind() == ErrorKind::NotFound {
        Error::FileNotFound {
            path: path.to_path_buf(),
        }
    } else {
        Error::Io {
            path: path.to_path_buf(),
            source: err,
        }
    }
}

fn corrupt(path: &Path, reason: String) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        format: "NIfTI",
        reason,
    }
}

/// One element type's decoding: bytes per voxel and the conversion of whole voxels.
#[derive(Clone, Copy)]
struct Element {
    size: usize,
    datatype: NiftiType,
    little: bool,
}

impl Element {
    fn of(datatype: NiftiType, endianness: Endianness) -> Option<Element> {
        let size = match datatype {
            NiftiType::Uint8 | NiftiType::Int8 => 1,
            NiftiType::Int16 | NiftiType::Uint16 => 2,
            NiftiType::Int32 | NiftiType::Uint32 | NiftiType::Float32 => 4,
            NiftiType::Int64 | NiftiType::Uint64 | NiftiType::Float64 => 8,
            _ => return None,
        };
        Some(Element {
            size,
            datatype,
            little: matches!(endianness, Endianness::Little),
        })
    }

    /// Appends the voxels of `raw` (a whole number of elements) to `out`, each as
    /// `value * slope + inter` when `scale` is given.
    fn decode(self, raw: &[u8], scale: Option<(f32, f32)>, out: &mut Vec<f32>) {
        macro_rules! read {
            ($t:ty) => {{
                const N: usize = std::mem::size_of::<$t>();
                let values = raw.chunks_exact(N).map(|c| {
                    let bytes: [u8; N] = c.try_into().unwrap_or([0; N]);
                    (if self.little {
                        <$t>::from_le_bytes(bytes)
                    } else {
                        <$t>::from_be_bytes(bytes)
                    }) as f32
                });
                match scale {
                    Some((slope, inter)) => out.extend(values.map(|v| v * slope + inter)),
                    None => out.extend(values),
                }
            }};
        }
        match self.datatype {
            NiftiType::Uint8 => read!(u8),
            NiftiType::Int8 => read!(i8),
            NiftiType::Int16 => read!(i16),
            NiftiType::Uint16 => read!(u16),
            NiftiType::Int32 => read!(i32),
            NiftiType::Uint32 => read!(u32),
            NiftiType::Int64 => read!(i64),
            NiftiType::Uint64 => read!(u64),
            NiftiType::Float32 => read!(f32),
            NiftiType::Float64 => read!(f64),
            // `Element::of` made no other.
            _ => {}
        }
    }
}

/// The volume file of the `.hdr` at `path`: `.img` beside it, or `.img.gz` (the `.gz` form
/// first for a gzipped header). Names are changed through `Path`, so any path the system
/// allows works (non-UTF-8 ones included).
fn image_file(path: &Path) -> Result<PathBuf> {
    let is = |p: &Path, ext: &str| p.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext));
    let (header, gz_first) = if is(path, "gz") && is(&path.with_extension(""), "hdr") {
        (path.with_extension(""), true)
    } else if is(path, "hdr") {
        (path.to_path_buf(), false)
    } else {
        return Err(corrupt(
            path,
            "the header says its voxels are in a separate .img file (magic ni1), but the file is not named .hdr".into(),
        ));
    };
    let (img, img_gz) = (header.with_extension("img"), header.with_extension("img.gz"));
    let order = if gz_first { [&img_gz, &img] } else { [&img, &img_gz] };
    match order.into_iter().find(|p| p.exists()) {
        Some(found) => Ok(found.clone()),
        None => Err(Error::FileNotFound { path: img.clone() }),
    }
}

fn read(path: &Path, limits: &ReadLimits) -> Result<Volume> {
    Ok(read_slices(path, limits, |shape, _| Ok(0..shape[0]))?.0)
}

/// Reads slices `pick(shape, spacing)` of the volume at `path` (`shape` and `spacing` are the
/// whole volume's, `[depth, height, width]`): the slices before them are inflated and
/// dropped, those after them not read at all. Returns the slices as a volume, the first
/// one's index and the whole volume's shape. Every check of [`read`] on the header and on the
/// file's size applies; only the picked slices are checked for non-finite values.
pub(crate) fn read_slices(
    path: &Path,
    limits: &ReadLimits,
    pick: impl FnOnce([usize; 3], [f32; 3]) -> Result<std::ops::Range<usize>>,
) -> Result<(Volume, usize, [usize; 3])> {
    let mut source = Source::open(path)?;
    let header = NiftiHeader::from_reader(&mut source.stream).map_err(|err| corrupt(path, err.to_string()))?;
    source.left = source.left.saturating_sub(HEADER_BYTES);
    if header.sizeof_hdr != HEADER_BYTES as i32 {
        return Err(corrupt(
            path,
            format!(
                "sizeof_hdr is {} (a NIfTI-1 header has 348; NIfTI-2 files are not read: convert with nibabel or \
                 SimpleITK)",
                header.sizeof_hdr
            ),
        ));
    }
    let pair = match &header.magic {
        b"n+1\0" => false,
        b"ni1\0" => true,
        magic => {
            return Err(corrupt(
                path,
                format!(
                    "magic {:?} is neither n+1 (.nii) nor ni1 (.hdr/.img): not a NIfTI-1 file (Analyze 7.5 is not read)",
                    String::from_utf8_lossy(magic)
                ),
            ));
        }
    };
    let invalid = |what: String| Error::InvalidVolume {
        what: format!("{}: {what}", path.display()),
    };
    // The `nifti` crate reads dim as u16; the standard's fields are signed (nibabel refuses
    // a negative one).
    let dim = header.dim.map(|d| d as i16);
    let rank = usize::try_from(dim[0]).unwrap_or(0);
    if !(3..=7).contains(&rank) || dim[1..=rank].iter().any(|&d| d <= 0) || dim[4..=rank].iter().any(|&d| d != 1) {
        return Err(invalid(format!(
            "dim {:?} is not a 3-D volume (dim[0] from 3 to 7, every extent at least 1, those past the third 1)",
            &dim[..=rank.clamp(1, 7)]
        )));
    }
    let [x, y, z] = [1, 2, 3].map(|a| dim[a] as usize);
    let spacing = [header.pixdim[3], header.pixdim[2], header.pixdim[1]].map(f32::abs);
    check_spacing("pixdim", spacing).map_err(|_| {
        invalid(format!(
            "pixdim[1..4] {:?} must be finite and positive (mm per voxel)",
            &header.pixdim[1..4]
        ))
    })?;
    let datatype = header.data_type().map_err(|err| corrupt(path, err.to_string()))?;
    let element = Element::of(datatype, header.endianness)
        .ok_or_else(|| invalid(format!("element type {datatype:?} has no real value per voxel")))?;
    // dim entries are u16, so the count of three fits 48 bits.
    let count = x * y * z;
    if count > limits.max_voxels() {
        return Err(invalid(format!(
            "the header declares {x} x {y} x {z} = {count} voxels, more than the limit of {}; \
             raise ReadLimits::max_voxels if the scan is genuine",
            limits.max_voxels()
        )));
    }
    let bytes = (count * element.size) as u64;
    let scale = scaling(&header).map_err(|reason| corrupt(path, reason))?;

    let offset = header.vox_offset;
    if !(offset.is_finite() && offset >= 0.0) {
        return Err(corrupt(path, format!("vox_offset {offset} is not a byte offset")));
    }
    // Truncated as the `nifti` crate and nibabel take it; beyond u64 saturates, and is refused
    // below as more than the file holds.
    let offset = offset as u64;
    // nibabel refuses a single file's data inside its header; 0, which some writers leave,
    // is taken as "right after it" (byte 352), as the `nifti` crate reads it.
    if !pair && offset != 0 && offset < FIRST_DATA_BYTE {
        return Err(corrupt(
            path,
            format!("vox_offset {offset} puts the voxels inside the header (a .nii's start at byte 352 or later)"),
        ));
    }
    let (mut data_source, data_path, skip) = if pair {
        let image = image_file(path)?;
        (Source::open(&image)?, image, offset)
    } else {
        let skip = offset.max(FIRST_DATA_BYTE) - HEADER_BYTES;
        (source, path.to_path_buf(), skip)
    };
    let needed = skip.saturating_add(bytes);
    if needed > data_source.left {
        let holds = if data_source.gzipped {
            format!("inflates to at most {} bytes", data_source.left)
        } else {
            format!("has {} bytes", data_source.left)
        };
        return Err(corrupt(
            &data_path,
            format!(
                "the header declares {count} voxels of {datatype:?} ({bytes} bytes) after {skip} bytes, but the \
                 {} {holds}: the file is truncated or its header damaged",
                if pair { "image file" } else { "rest of the file" }
            ),
        ));
    }
    let truncated = |got: usize| {
        corrupt(
            &data_path,
            format!("the file ends after {got} of the {count} voxels its header declares"),
        )
    };
    // A stream that breaks off is a truncated file; any other failure of the inflater, a
    // damaged one; of a plain file, the operating system's.
    let gzipped = data_source.gzipped;
    let failed = |err: std::io::Error, got: usize| {
        if err.kind() == ErrorKind::UnexpectedEof {
            truncated(got)
        } else if gzipped {
            corrupt(&data_path, format!("the gzip stream is damaged: {err}"))
        } else {
            io_error(&data_path, err)
        }
    };
    let slices = pick([z, y, x], spacing)?;
    if slices.is_empty() || slices.end > z {
        return Err(invalid(format!(
            "slices {slices:?} of a volume of {z} slices were asked for"
        )));
    }
    let plane = x * y;
    let skip = skip.saturating_add((slices.start * plane * element.size) as u64);
    if !data_source.skip(skip).map_err(|err| failed(err, 0))? {
        return Err(truncated(0));
    }
    let (first, count) = (slices.start, slices.len() * plane);

    let mut data = Vec::new();
    data.try_reserve_exact(count).map_err(|err| {
        invalid(format!(
            "{x} x {y} x {z} voxels do not fit in memory ({err}); read a smaller scan or free memory"
        ))
    })?;
    let mut buf = vec![0u8; CHUNK];
    let mut held = 0; // bytes of a partial element carried to the next read
    while data.len() < count {
        let want = ((count - data.len()) * element.size).min(CHUNK);
        let got = read_full(&mut data_source.stream, &mut buf[held..want])
            .map_err(|err| failed(err, first * plane + data.len()))?;
        if got == 0 {
            return Err(truncated(first * plane + data.len()));
        }
        held += got;
        let whole = held - held % element.size;
        let start = data.len();
        element.decode(&buf[..whole], scale, &mut data);
        if let Some(at) = data[start..].iter().position(|v| !v.is_finite()) {
            let value = data[start + at];
            let at = first * plane + start + at;
            return Err(invalid(format!(
                "voxel {at} (x {}, y {}, z {}) is {} after conversion to f32{}: a network cannot use it; \
                 replace non-finite values (e.g. numpy.nan_to_num) or rescale the file",
                at % x,
                at / x % y,
                at / plane,
                value,
                if scale.is_some() {
                    " and scl_slope/scl_inter"
                } else {
                    ""
                }
            )));
        }
        buf.copy_within(whole..held, 0);
        held -= whole;
    }
    Ok((Volume::new(data, [slices.len(), y, x], spacing)?, first, [z, y, x]))
}

/// `(scl_slope, scl_inter)` to apply, `None` when the values are stored as they are: a slope
/// of 0 or not finite means no scaling (NIfTI-1 and nibabel), as does the identity.
fn scaling(header: &NiftiHeader) -> std::result::Result<Option<(f32, f32)>, String> {
    let (slope, inter) = (header.scl_slope, header.scl_inter);
    if slope == 0.0 || !slope.is_finite() {
        return Ok(None);
    }
    if !inter.is_finite() {
        return Err(format!(
            "scl_slope {slope} with scl_inter {inter}: the intercept is not a number"
        ));
    }
    Ok((slope != 1.0 || inter != 0.0).then_some((slope, inter)))
}
