//! NIfTI reading and the classify_ct example's whole path on a synthetic phantom.

use std::path::Path;

use resnet3d::Error;
use resnet3d::burn::tensor::Device;
use resnet3d::preprocess::Volume;

#[path = "../../examples/make_nodules.rs"]
#[allow(dead_code)]
pub(crate) mod make_nodules;

#[path = "../../examples/classify_ct.rs"]
#[allow(dead_code)]
pub(crate) mod example;

/// A NIfTI-1 file written by hand (the phantom example's writer), `x` fastest.
fn write_nifti(path: &Path, dims: [u16; 3], pixdim: [f32; 3], slope: f32, inter: f32, voxels: &[i16]) {
    make_nodules::write_nifti_i16(path, dims.map(usize::from), pixdim, slope, inter, voxels).unwrap();
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
        window: "lung".into(),
        spacing: 1.5,
        shape: vec![16, 32, 32],
        classes: 3,
        model: None,
        series: None,
        cam: None,
        cam_nifti: None,
        class: None,
        stage: "layer4".into(),
        around_max: false,
    };
    let scores = example::classify(&args, &Device::flex()).unwrap();
    assert_eq!(scores.len(), 3);
    // The same settings from a command line (`--shape d,h,w` is one comma-separated value).
    let path = args.volume.to_str().unwrap();
    let argv = [
        "classify_ct",
        path,
        "--shape",
        "16,32,32",
        "--spacing",
        "1.5",
        "--classes",
        "3",
    ];
    let parsed = <example::Args as clap::Parser>::parse_from(argv);
    assert_eq!(
        (&parsed.shape, parsed.spacing, parsed.classes),
        (&args.shape, args.spacing, args.classes)
    );
    assert_eq!(example::classify(&parsed, &Device::flex()).unwrap().len(), 3);
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
