//! NIfTI-1 volumes (`.nii`, `.nii.gz`, `.hdr`/`.img` pairs) into a [`Volume`](crate::preprocess::Volume)
//! and back out, with their place in the scanner (the affine), feature `nifti` (on by default).
//!
//! Reading streams the voxels into the `f32` volume ([`read`]); headers are parsed by the
//! `nifti` crate, which also writes ([`write`]).

mod read;
pub(crate) use read::read_slices;
mod write;

use std::path::Path;

use nifti::NiftiHeader;

use crate::error::{Error, Result};

pub use write::Placement;

/// The voxel-to-RAS+ affine of a NIfTI-1 file by the standard's precedence: the sform when
/// `sform_code > 0`, else the qform (quaternion, voxel size, `qfac = pixdim[0]`) when
/// `qform_code > 0`, else the voxel size alone (the standard's "method 1"). Voxel `(i, j, k)`
/// is the file's `(x, y, z)` index, i.e. a [`Volume`](crate::preprocess::Volume)'s (width, height, depth).
///
/// # Errors
/// [`Error::FileNotFound`], [`Error::Corrupt`] for a header the reader refuses.
pub fn nifti_affine(path: impl AsRef<Path>) -> Result<[[f64; 4]; 4]> {
    let header = read_header(path.as_ref())?;
    let pixdim = |a: usize| f64::from(header.pixdim[a]);
    let mut affine = [[0.0, 0.0, 0.0, 0.0], [0.0; 4], [0.0; 4], [0.0, 0.0, 0.0, 1.0]];
    if header.sform_code > 0 {
        for (row, srow) in [header.srow_x, header.srow_y, header.srow_z].iter().enumerate() {
            affine[row] = srow.map(f64::from);
        }
    } else if header.qform_code > 0 {
        let [b, c, d] = [header.quatern_b, header.quatern_c, header.quatern_d].map(f64::from);
        let rotation = rotation_of([(1.0 - (b * b + c * c + d * d)).max(0.0).sqrt(), b, c, d]);
        let qfac = if pixdim(0) < 0.0 { -1.0 } else { 1.0 };
        let scale = [pixdim(1), pixdim(2), qfac * pixdim(3)];
        let offset = [header.quatern_x, header.quatern_y, header.quatern_z].map(f64::from);
        for row in 0..3 {
            for col in 0..3 {
                affine[row][col] = rotation[row][col] * scale[col];
            }
            affine[row][3] = offset[row];
        }
    } else {
        for (axis, row) in affine.iter_mut().take(3).enumerate() {
            row[axis] = pixdim(axis + 1);
        }
    }
    Ok(affine)
}

/// The header of a NIfTI-1 file, without its voxels.
fn read_header(path: &Path) -> Result<NiftiHeader> {
    if !path.exists() {
        return Err(Error::FileNotFound {
            path: path.to_path_buf(),
        });
    }
    NiftiHeader::from_file(path).map_err(|err| Error::Corrupt {
        path: path.to_path_buf(),
        format: "NIfTI",
        reason: err.to_string(),
    })
}

/// The rotation of unit quaternion `[a, b, c, d]` (NIfTI-1's qform formula).
fn rotation_of([a, b, c, d]: [f64; 4]) -> [[f64; 3]; 3] {
    [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ]
}
