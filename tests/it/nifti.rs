//! NIfTI reading and the classify_ct example's whole path on a synthetic phantom.

use std::io::Write;
use std::path::Path;

use resnet3d::Error;
use resnet3d::burn::tensor::Device;
use resnet3d::preprocess::Volume;

#[path = "../../examples/classify_ct.rs"]
#[allow(dead_code)]
pub(crate) mod example;

/// A NIfTI-1 file written by hand (348-byte header, 4 empty extension bytes, int16 voxels
/// with `scl_slope`/`scl_inter`), `x` fastest. Gzipped if the name ends in `.gz`.
fn write_nifti(path: &Path, dims: [u16; 3], pixdim: [f32; 3], slope: f32, inter: f32, voxels: &[i16]) {
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    let dim = [3, dims[0], dims[1], dims[2], 1, 1, 1, 1];
    for (i, d) in dim.iter().enumerate() {
        h[40 + 2 * i..42 + 2 * i].copy_from_slice(&(*d as i16).to_le_bytes());
    }
    h[70..72].copy_from_slice(&4i16.to_le_bytes()); // datatype: int16
    h[72..74].copy_from_slice(&16i16.to_le_bytes()); // bitpix
    let pix = [1.0, pixdim[0], pixdim[1], pixdim[2], 0.0, 0.0, 0.0, 0.0];
    for (i, p) in pix.iter().enumerate() {
        h[76 + 4 * i..80 + 4 * i].copy_from_slice(&p.to_le_bytes());
    }
    h[108..112].copy_from_slice(&352f32.to_le_bytes()); // vox_offset
    h[112..116].copy_from_slice(&slope.to_le_bytes());
    h[116..120].copy_from_slice(&inter.to_le_bytes());
    h[344..348].copy_from_slice(b"n+1\0");
    for v in voxels {
        h.extend_from_slice(&v.to_le_bytes());
    }
    let file = std::fs::File::create(path).unwrap();
    if path.extension().is_some_and(|e| e == "gz") {
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        gz.write_all(&h).unwrap();
        gz.finish().unwrap();
    } else {
        std::io::BufWriter::new(file).write_all(&h).unwrap();
    }
}

/// A chest-like phantom in stored units (HU + 1024): air around a water body with a lung.
fn phantom(dims: [u16; 3]) -> Vec<i16> {
    let [nx, ny, nz] = dims.map(usize::from);
    let mut out = Vec::with_capacity(nx * ny * nz);
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let (u, v) = (x as f32 / nx as f32 - 0.5, y as f32 / ny as f32 - 0.5);
                let hu = if u * u + v * v > 0.16 {
                    -1000
                } else if (u - 0.15).powi(2) + v * v < 0.01 {
                    -800
                } else {
                    40 + (z % 3) as i16
                };
                out.push(hu + 1024);
            }
        }
    }
    out
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
fn classify_ct_runs_on_a_phantom() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phantom.nii.gz");
    let dims = [48, 40, 12];
    write_nifti(&path, dims, [0.9, 0.9, 3.0], 1.0, -1024.0, &phantom(dims));
    let args = example::Args {
        volume: path,
        weights: None,
        window: example::Preset::Lung,
        spacing: 1.5,
        shape: vec![16, 32, 32],
        classes: 3,
        model: None,
    };
    let scores = example::classify(&args, &Device::flex()).unwrap();
    assert_eq!(scores.len(), 3);
    assert!(scores.iter().all(|s| s.is_finite() && *s > 0.0));
    assert!((scores.iter().sum::<f32>() - 1.0).abs() < 1e-5);
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
