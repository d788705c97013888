//! Reading only the slices a pipeline's centre crop takes (`Preprocessing::read`): the same
//! input as reading the whole scan and applying the pipeline, to the bit, for NIfTI and DICOM,
//! with and without resampling; less memory, and no reading past the last slice it needs.

use std::io::Write;
use std::path::Path;

use resnet3d::data::{Preprocessing, read_scan};
use resnet3d::preprocess::{Volume, Window};

use crate::common::fixtures;
use crate::nifti::make_nodules::{nifti_header, write_nifti_i16};
use crate::tracking::peak_during;

/// Pipelines that crop, pad, or both, along every axis, resampling or not.
fn pipelines() -> Vec<(Preprocessing, [usize; 3])> {
    let lung = Window::preset("lung").unwrap();
    vec![
        (Preprocessing::ct(1.5, [4, 8, 8], lung), [0; 3]),
        (Preprocessing::ct(1.5, [4, 8, 8], lung), [1, 2, 0]),
        (Preprocessing::new([3, 6, 9]).with_window(Some(lung)), [0; 3]),
        (
            Preprocessing::new([1, 40, 5]).with_spacing(Some([0.9, 0.4, 2.0])),
            [0; 3],
        ),
        (
            Preprocessing::new([30, 4, 4]).with_spacing(Some([0.7, 0.7, 0.7])),
            [0, 1, 1],
        ),
        (Preprocessing::ct(3.0, [64, 4, 4], lung), [0; 3]),
    ]
}

fn assert_same_bits(a: &Volume, b: &Volume, what: &str) {
    assert_eq!(a.shape, b.shape, "{what}");
    assert_eq!(a.spacing, b.spacing, "{what}");
    let differ = a
        .data
        .iter()
        .zip(&b.data)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(differ, 0, "{what}: {differ} voxels differ");
}

fn check_every_pipeline(path: &Path) {
    for (pipeline, margin) in pipelines() {
        let whole = pipeline.apply(read_scan(path).unwrap(), margin).unwrap();
        let read = pipeline.read(path, margin).unwrap();
        assert_same_bits(&read, &whole, &format!("{} {pipeline:?} {margin:?}", path.display()));
    }
}

/// Values that differ from voxel to voxel (a tap off by one shows), stored as int16.
fn phantom(dims: [usize; 3]) -> Vec<i16> {
    (0..dims.iter().product::<usize>())
        .map(|i| ((i * 7919) % 2003) as i16 - 1000)
        .collect()
}

#[test]
fn nifti_slices_give_the_whole_scans_input() {
    let dir = tempfile::tempdir().unwrap();
    let dims = [13, 11, 17]; // x, y, z
    for name in ["scan.nii", "scan.nii.gz"] {
        let path = dir.path().join(name);
        write_nifti_i16(&path, dims, [0.8, 0.9, 2.5], 1.0, -24.0, &phantom(dims)).unwrap();
        check_every_pipeline(&path);
    }
}

#[test]
fn dicom_slices_give_the_whole_series_input() {
    check_every_pipeline(&fixtures().join("dicom/ct"));
}

#[test]
fn slices_past_the_crop_are_not_read_and_the_rest_not_held() {
    // 64 x 64 x 60 int16 at 1 mm, gzipped; a crop of 8 slices at 1 mm takes slices 26..34.
    let dims = [64, 64, 60];
    let stored = phantom(dims);
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.nii.gz");
    write_nifti_i16(&full, dims, [1.0; 3], 1.0, 0.0, &stored).unwrap();
    let pipeline = Preprocessing::new([8, 32, 32]).with_spacing(Some([1.0; 3]));
    let (expected, held_whole) = peak_during(|| pipeline.apply(read_scan(&full).unwrap(), [0; 3]).unwrap());
    let (read, held_slices) = peak_during(|| pipeline.read(&full, [0; 3]).unwrap());
    assert_same_bits(&read, &expected, "slices");
    // The whole scan is 983 kB of f32; 8 of its 60 slices are 131 kB, plus the reader's
    // 64 KiB buffer and the inflater's state.
    assert!(held_whole > 983_040, "whole read held {held_whole} bytes");
    assert!(held_slices < 400_000, "reading 8 slices held {held_slices} bytes");

    // A copy whose stream ends after slice 40: the whole read is refused as truncated, the
    // slices before it are read as from the whole file.
    let cut = dir.path().join("cut.nii.gz");
    let header = nifti_header(dims, (4, 16), [1.0; 3], 1.0, 0.0);
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&cut).unwrap(), flate2::Compression::fast());
    gz.write_all(&header).unwrap();
    for v in &stored[..64 * 64 * 40] {
        gz.write_all(&v.to_le_bytes()).unwrap();
    }
    gz.finish().unwrap();
    assert!(matches!(read_scan(&cut), Err(resnet3d::Error::Corrupt { .. })));
    assert_same_bits(&pipeline.read(&cut, [0; 3]).unwrap(), &expected, "cut file");
}
