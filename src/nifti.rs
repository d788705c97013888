//! NIfTI-1 volumes (`.nii`, `.nii.gz`) into a [`Volume`], through the `nifti` crate
//! (feature `nifti`, on by default).

use std::path::Path;

use nifti::{Endianness, NiftiObject, NiftiType, ReaderOptions};

use crate::error::{Error, Result};
use crate::preprocess::Volume;

impl Volume {
    /// Reads a 3-D NIfTI-1 file, gzipped or not, with its voxel spacing.
    ///
    /// Voxel values are rescaled by the header's `scl_slope` and `scl_inter` (CT files store
    /// Hounsfield units that way). NIfTI stores `x` fastest, so the file's `(x, y, z)` become
    /// the volume's `(width, height, depth)`, and `pixdim[1..4]` its spacing. The orientation
    /// (qform/sform) is not applied: axes stay as stored.
    ///
    /// # Errors
    /// [`Error::FileNotFound`], [`Error::Corrupt`] for a file the reader refuses,
    /// [`Error::InvalidVolume`] for a volume that is not 3-D (a 4-D file with one time point is
    /// accepted), of an element type without a real value (complex, RGB), or with a spacing
    /// that is not positive.
    pub fn from_nifti(path: impl AsRef<Path>) -> Result<Volume> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::FileNotFound {
                path: path.to_path_buf(),
            });
        }
        let corrupt = |reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            format: "NIfTI",
            reason,
        };
        let object = ReaderOptions::new()
            .read_file(path)
            .map_err(|err| corrupt(err.to_string()))?;
        let header = object.header().clone();
        let invalid = |what: String| Error::InvalidVolume {
            what: format!("{}: {what}", path.display()),
        };
        let rank = usize::from(header.dim[0]);
        let extra: usize = header.dim[4..=rank.clamp(3, 7)]
            .iter()
            .map(|&d| usize::from(d.max(1)))
            .product();
        if !(3..=7).contains(&rank) || extra != 1 {
            return Err(invalid(format!(
                "dim {:?} is not a 3-D volume",
                &header.dim[..=rank.min(7)]
            )));
        }
        let [x, y, z] = [1, 2, 3].map(|a| usize::from(header.dim[a]));
        let spacing = [header.pixdim[3], header.pixdim[2], header.pixdim[1]].map(f32::abs);
        let datatype = header.data_type().map_err(|err| corrupt(err.to_string()))?;
        let raw = object.into_volume().into_raw_data();
        let mut data = decode(&raw, datatype, header.endianness)
            .ok_or_else(|| invalid(format!("element type {datatype:?} has no real value per voxel")))?;
        // NIfTI: a slope of 0 means the values are stored as they are.
        if header.scl_slope != 0.0 && (header.scl_slope != 1.0 || header.scl_inter != 0.0) {
            data.iter_mut()
                .for_each(|v| *v = *v * header.scl_slope + header.scl_inter);
        }
        Volume::new(data, [z, y, x], spacing)
    }
}

/// Voxel bytes of `datatype` to `f32`; `None` for element types without one real value.
fn decode(raw: &[u8], datatype: NiftiType, endianness: Endianness) -> Option<Vec<f32>> {
    let little = matches!(endianness, Endianness::Little);
    macro_rules! read {
        ($t:ty) => {{
            const N: usize = std::mem::size_of::<$t>();
            raw.chunks_exact(N)
                .map(|c| {
                    let mut bytes = [0u8; N];
                    bytes.copy_from_slice(c);
                    (if little {
                        <$t>::from_le_bytes(bytes)
                    } else {
                        <$t>::from_be_bytes(bytes)
                    }) as f32
                })
                .collect()
        }};
    }
    Some(match datatype {
        NiftiType::Uint8 => raw.iter().map(|&b| b as f32).collect(),
        NiftiType::Int8 => raw.iter().map(|&b| b as i8 as f32).collect(),
        NiftiType::Int16 => read!(i16),
        NiftiType::Uint16 => read!(u16),
        NiftiType::Int32 => read!(i32),
        NiftiType::Uint32 => read!(u32),
        NiftiType::Int64 => read!(i64),
        NiftiType::Uint64 => read!(u64),
        NiftiType::Float32 => read!(f32),
        NiftiType::Float64 => read!(f64),
        _ => return None,
    })
}
