//! Writing a [`Volume`] as a NIfTI-1 file through the `nifti` crate's writer.

use std::path::{Path, PathBuf};

use nifti::NiftiHeader;
use nifti::writer::WriterOptions;

use super::read_header;
use crate::error::{Error, Result};
use crate::preprocess::Volume;

/// Where a volume written by [`Volume::save_nifti`] sits in the scanner.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// Like this NIfTI file: its header's sform, qform and voxel size are copied, so a volume
    /// on that file's grid (e.g. a heat map brought back with
    /// [`Preprocessing::to_scan_grid`](crate::data::Preprocessing::to_scan_grid)) overlays it.
    LikeFile(PathBuf),
    /// A voxel-to-RAS+ affine (NIfTI's sform; voxel `(i, j, k)` = (width, height, depth)
    /// index), e.g. [`DicomVolume::nifti_affine`](crate::data::DicomVolume::nifti_affine).
    /// Written as both sform and qform (code 1, scanner), with the voxel size taken from its
    /// columns.
    Affine([[f64; 4]; 4]),
}

impl Volume {
    /// Writes the volume as a NIfTI-1 file (`float32`; gzipped when `path` ends in `.gz`)
    /// placed by `placement`, with the display range set to the values' range (a heat map
    /// in `0..1` shows as such). `(width, height, depth)` become the file's `(x, y, z)`, as
    /// [`from_nifti`](Self::from_nifti) reads them.
    ///
    /// # Errors
    /// [`Error::InvalidVolume`] if the volume's fields no longer agree or an extent does not
    /// fit NIfTI-1's 16 bits, or the affine is singular or not finite; the reading errors of
    /// [`nifti_affine`](super::nifti_affine) for a reference file; [`Error::Io`] if the file cannot be written.
    pub fn save_nifti(&self, path: impl AsRef<Path>, placement: &Placement) -> Result<()> {
        let path = path.as_ref();
        let invalid = |what: String| Error::InvalidVolume { what };
        if self.data.len() != self.shape.iter().product::<usize>() {
            return Err(invalid(format!(
                "{} values for shape {:?}",
                self.data.len(),
                self.shape
            )));
        }
        if self.shape.iter().any(|&n| n == 0 || n > usize::from(i16::MAX as u16)) {
            return Err(invalid(format!(
                "shape {:?} does not fit a NIfTI-1 header (1..=32767 per axis)",
                self.shape
            )));
        }
        let mut header = match placement {
            Placement::LikeFile(reference) => read_header(reference)?,
            Placement::Affine(affine) => header_for(affine)?,
        };
        let finite = self.data.iter().copied().filter(|v| v.is_finite());
        let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        (header.cal_min, header.cal_max) = if lo <= hi { (lo, hi) } else { (0.0, 0.0) };
        header.descrip = b"resnet3d".to_vec();
        header.intent_code = 0;
        let [d, h, w] = self.shape;
        let array = ndarray::ArrayView3::from_shape((d, h, w), &self.data)
            .map_err(|err| invalid(err.to_string()))?
            .reversed_axes();
        WriterOptions::new(path)
            .reference_header(&header)
            .write_nifti(&array)
            .map_err(|err| Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(err.to_string()),
            })
    }
}

/// A header placing voxels by `affine`: sform as given, qform from its rotation (the
/// columns normalised; a left-handed affine flips the third column and sets `qfac = -1`).
fn header_for(affine: &[[f64; 4]; 4]) -> Result<NiftiHeader> {
    let invalid = |what: &str| Error::InvalidVolume {
        what: format!("affine {affine:?}: {what}"),
    };
    if affine.iter().flatten().any(|v| !v.is_finite()) {
        return Err(invalid("not finite"));
    }
    let column = |c: usize| [affine[0][c], affine[1][c], affine[2][c]];
    let size = [0, 1, 2].map(|c| column(c).iter().map(|v| v * v).sum::<f64>().sqrt());
    if size.iter().any(|&s| s < 1e-9) {
        return Err(invalid("a voxel axis has length 0"));
    }
    let mut r = [0, 1, 2].map(|c| column(c).map(|v| v / size[c]));
    let det = r[0][0] * (r[1][1] * r[2][2] - r[2][1] * r[1][2]) - r[1][0] * (r[0][1] * r[2][2] - r[2][1] * r[0][2])
        + r[2][0] * (r[0][1] * r[1][2] - r[1][1] * r[0][2]);
    let qfac = if det < 0.0 { -1.0 } else { 1.0 };
    r[2] = r[2].map(|v| v * qfac);
    // r[c] is column c; m[row][col] = r[col][row]. Quaternion from the rotation, taking the
    // largest of the four candidates for stability; a >= 0 as the standard stores it.
    let m = |row: usize, col: usize| r[col][row];
    let trace = m(0, 0) + m(1, 1) + m(2, 2);
    let quaternion = if trace > 0.0 {
        let a = 0.5 * (1.0 + trace).sqrt();
        [
            a,
            (m(2, 1) - m(1, 2)) / (4.0 * a),
            (m(0, 2) - m(2, 0)) / (4.0 * a),
            (m(1, 0) - m(0, 1)) / (4.0 * a),
        ]
    } else if m(0, 0) >= m(1, 1) && m(0, 0) >= m(2, 2) {
        let b = 0.5 * (1.0 + m(0, 0) - m(1, 1) - m(2, 2)).max(0.0).sqrt();
        [
            (m(2, 1) - m(1, 2)) / (4.0 * b),
            b,
            (m(0, 1) + m(1, 0)) / (4.0 * b),
            (m(0, 2) + m(2, 0)) / (4.0 * b),
        ]
    } else if m(1, 1) >= m(2, 2) {
        let c = 0.5 * (1.0 + m(1, 1) - m(0, 0) - m(2, 2)).max(0.0).sqrt();
        [
            (m(0, 2) - m(2, 0)) / (4.0 * c),
            (m(0, 1) + m(1, 0)) / (4.0 * c),
            c,
            (m(1, 2) + m(2, 1)) / (4.0 * c),
        ]
    } else {
        let d = 0.5 * (1.0 + m(2, 2) - m(0, 0) - m(1, 1)).max(0.0).sqrt();
        [
            (m(1, 0) - m(0, 1)) / (4.0 * d),
            (m(0, 2) + m(2, 0)) / (4.0 * d),
            (m(1, 2) + m(2, 1)) / (4.0 * d),
            d,
        ]
    };
    let sign = if quaternion[0] < 0.0 { -1.0 } else { 1.0 };
    let [_, b, c, d] = quaternion.map(|q| (q * sign) as f32);
    let mut header = NiftiHeader {
        sform_code: 1,
        qform_code: 1,
        quatern_b: b,
        quatern_c: c,
        quatern_d: d,
        quatern_x: affine[0][3] as f32,
        quatern_y: affine[1][3] as f32,
        quatern_z: affine[2][3] as f32,
        srow_x: affine[0].map(|v| v as f32),
        srow_y: affine[1].map(|v| v as f32),
        srow_z: affine[2].map(|v| v as f32),
        xyzt_units: 2, // millimetres
        ..NiftiHeader::default()
    };
    header.pixdim[0] = qfac as f32;
    for (stored, size) in header.pixdim[1..4].iter_mut().zip(size) {
        *stored = size as f32;
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti::rotation_of;

    /// An oblique, left-handed affine survives header_for: the sform as given, and the
    /// qform rebuilt from the stored quaternion gives the same matrix.
    #[test]
    fn qform_of_an_affine_gives_the_affine_back() {
        let (ca, sa) = (0.3f64.cos(), 0.3f64.sin());
        let (cb, sb) = (0.2f64.cos(), 0.2f64.sin());
        // Rotation about z by 0.3 then about x by 0.2, voxel 0.9 x 0.7 x 2.5, third axis flipped.
        let rz = [[ca, -sa, 0.0], [sa, ca, 0.0], [0.0, 0.0, 1.0]];
        let rx = [[1.0, 0.0, 0.0], [0.0, cb, -sb], [0.0, sb, cb]];
        let mut affine = [[0.0; 4]; 4];
        let scale = [0.9, 0.7, -2.5];
        for row in 0..3 {
            for col in 0..3 {
                let r: f64 = (0..3).map(|k| rx[row][k] * rz[k][col]).sum();
                affine[row][col] = r * scale[col];
            }
        }
        affine[0][3] = -30.5;
        affine[1][3] = 12.25;
        affine[2][3] = 44.0;
        affine[3][3] = 1.0;
        let header = header_for(&affine).unwrap();
        assert_eq!(header.pixdim[0], -1.0);
        let [b, c, d] = [header.quatern_b, header.quatern_c, header.quatern_d].map(f64::from);
        let rotation = rotation_of([(1.0 - (b * b + c * c + d * d)).max(0.0).sqrt(), b, c, d]);
        for row in 0..3 {
            for col in 0..3 {
                let size = f64::from(header.pixdim[col + 1]) * if col == 2 { -1.0 } else { 1.0 };
                let got = rotation[row][col] * size;
                assert!(
                    (got - affine[row][col]).abs() < 1e-5,
                    "[{row}][{col}]: {got} vs {}",
                    affine[row][col]
                );
            }
        }
        assert!(header_for(&[[0.0; 4]; 4]).is_err());
    }
}
