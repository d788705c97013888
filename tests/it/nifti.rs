//! NIfTI reading on synthetic phantoms.

use std::path::Path;

use resnet3d::Error;
use resnet3d::preprocess::Volume;

#[path = "../../examples/make_nodules.rs"]
#[allow(dead_code)]
pub(crate) mod make_nodules;

/// A NIfTI-1 file written by hand (the phantom example's writer), `x` fastest.
fn write_nifti(path: &Path, dims: [u16; 3], pixdim: [f32; 3], slope: f32, inter: f32, voxels: &[i16]) {
    make_nodules::write_nifti_i16(path, dims.map(usize::from), pixdim, slope, inter, voxels).unwrap();
}

#[test]
fn nifti_volumes_are_read_with_spacing_and_rescaling() {
    let dir = tempfile::tempdir().unwrap();
    let dims = [5u16, 4, 3]; // x, y, z
    let voxels: Vec<i16> = (0..60).collect();
    for name in ["small.nii", "small.nii.gz"] {
        let path = dir.path().join(name);
        write_nifti(&path, dims, [0.7, 0.8, 2.5], 2.0, -1024.0, &voxels);
        let volume = Volume::from_nifti(&path).unwrap();
        assert_eq!(volume.shape, [3, 4, 5], "{name}: [depth, height, width] = [z, y, x]");
        assert_eq!(volume.spacing, [2.5, 0.8, 0.7], "{name}");
        // Voxel (x, y, z) = (1, 2, 2) is stored at 1 + 5 * (2 + 4 * 2) = 51: 51 * 2 - 1024.
        assert_eq!(volume.data[(2 * 4 + 2) * 5 + 1], 51.0 * 2.0 - 1024.0, "{name}");
    }
    let err = Volume::from_nifti(dir.path().join("absent.nii")).unwrap_err();
    assert!(matches!(err, Error::FileNotFound { .. }), "{err}");
    let junk = dir.path().join("junk.nii");
    std::fs::write(&junk, b"not a nifti file at all").unwrap();
    let err = Volume::from_nifti(&junk).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

#[test]
fn a_header_spacing_that_asks_for_too_many_voxels_is_an_error() {
    // 2 x 2 x 2 voxels of 10 m: resampled to 1.5 mm that would be 1.8e12 voxels.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge_pixdim.nii");
    write_nifti(&path, [2, 2, 2], [1e4, 1e4, 1e4], 1.0, 0.0, &[0; 8]);
    let volume = Volume::from_nifti(&path).unwrap();
    let err = volume.resample([1.5; 3]).unwrap_err();
    assert!(matches!(err, Error::InvalidVolume { .. }), "{err}");
    assert!(err.to_string().contains("too many voxels"), "{err}");
}

/// The affine by the NIfTI-1 standard's precedence (sform, else qform with qfac, else the
/// voxel size) and the scaled voxels, against nibabel 5.4.2 on files `make_nifti.py` wrote:
/// an oblique sform with a different qform beside it (a reader preferring the qform is
/// caught), a left-handed qform alone, and no transform at all. Tolerance 1e-9 (both sides
/// compute in f64 from the same stored f32 numbers); voxels exact.
#[test]
fn affines_and_voxels_agree_with_nibabel() {
    use resnet3d::preprocess::nifti_affine;
    let folder = crate::common::fixtures().join("nifti");
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("nifti.json")).unwrap()).unwrap();
    let mut checked = 0;
    for entry in spec["files"].as_array().unwrap() {
        let file = entry["file"].as_str().unwrap();
        let want: Vec<Vec<f64>> = serde_json::from_value(entry["affine"].clone()).unwrap();
        let got = nifti_affine(folder.join(file)).unwrap();
        for (row, want_row) in got.iter().zip(&want) {
            for (a, b) in row.iter().zip(want_row) {
                assert!((a - b).abs() < 1e-9, "{file}: {got:?} vs {want:?}");
            }
        }
        let name = entry["expected"]["tensor"].as_str().unwrap();
        let (shape, values) = crate::common::reference(&folder.join("expected.safetensors"), name);
        let volume = Volume::from_nifti(folder.join(file)).unwrap();
        assert_eq!(volume.shape.to_vec(), shape, "{file}");
        assert_eq!(volume.data, values, "{file}");
        checked += 1;
    }
    assert_eq!(checked, 3);
}
