//! `resnet3d explain` on a phantom; `--cam` and `--cam-nifti`: the PNG montage decodes, has the size the layout
//! gives and shows a map; the NIfTI map lies on the scan's grid with the scan's affine, for
//! a NIfTI input (its header copied) and a DICOM series (its position and orientation).

use std::path::Path;

use resnet3d::burn::config::Config;
use resnet3d::burn::tensor::Device;
use resnet3d::data::{Preprocessing, read_series};
use resnet3d::preprocess::{Placement, Volume, Window, nifti_affine};

use crate::common::{blob_detector, fixtures};
use resnet3d_cli::explain as example;

use crate::make_nodules;

/// explain's settings from its command line: the bundled checkpoint with a fresh
/// 3-class head, 1.5 mm, 16 x 32 x 32 voxels (unless `extra` names a `--model`), both maps
/// into `out`.
fn args(volume: &Path, out: &Path, extra: &[&str]) -> example::Args {
    let (png, nifti) = (out.join("cam.png"), out.join("cam.nii.gz"));
    let mut argv = vec![
        "explain",
        volume.to_str().unwrap(),
        "--shape=16,32,32",
        "--classes",
        "3",
    ];
    argv.extend(["--cam", png.to_str().unwrap(), "--cam-nifti", nifti.to_str().unwrap()]);
    argv.extend(extra);
    <example::Args as clap::Parser>::parse_from(argv)
}

/// The PNG's size and pixels; asserts the size of a 4 x 4 montage of 32 x 32 slices.
fn check_png(path: &Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut rgb).unwrap();
    assert_eq!(
        (info.color_type, info.bit_depth),
        (png::ColorType::Rgb, png::BitDepth::Eight)
    );
    // Tiles of 32 voxels at 8 pixels each (the largest scale within 256), 4 pixels apart and
    // around, then a 16-pixel colour bar and 24 pixels of labels.
    assert_eq!(
        (info.width, info.height),
        (4 + 4 * (256 + 4) + 16 + 24, 4 + 4 * (256 + 4))
    );
    rgb.truncate(info.buffer_size());
    rgb
}

#[test]
fn cam_png_and_nifti_from_a_nifti_scan() {
    let dir = tempfile::tempdir().unwrap();
    // A phantom scan with an oblique sform: a dark body, a bright ball off centre.
    let shape = [12, 40, 48];
    let ball = |d: usize, h: usize, w: usize| {
        (d as f32 - 7.0).powi(2) * 9.0 + (h as f32 - 14.0).powi(2) + (w as f32 - 30.0).powi(2) < 30.0
    };
    let mut hu = vec![-1000.0f32; shape.iter().product()];
    for d in 0..12 {
        for h in 0..40 {
            for w in 0..48 {
                let body = ((h as f32 - 20.0) / 16.0).powi(2) + ((w as f32 - 24.0) / 20.0).powi(2) < 1.0;
                hu[(d * 40 + h) * 48 + w] = match (ball(d, h, w), body) {
                    (true, _) => 300.0,
                    (false, true) => -850.0,
                    (false, false) => -1000.0,
                };
            }
        }
    }
    let scan = Volume::new(hu, shape, [3.0, 0.9, 0.8]).unwrap();
    let (c, s) = (0.3f64.cos(), 0.3f64.sin());
    let affine = [
        [-0.8 * c, 0.9 * s, 0.0, 40.0],
        [0.8 * s, 0.9 * c, 0.0, -12.5],
        [0.0, 0.0, 3.0, -60.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let input = dir.path().join("scan.nii.gz");
    scan.save_nifti(&input, &Placement::Affine(affine)).unwrap();
    // A reference that is not there, or an affine that places nothing, is refused.
    let nowhere = Placement::LikeFile(dir.path().join("absent.nii"));
    let refused = scan.save_nifti(dir.path().join("x.nii"), &nowhere);
    assert!(
        matches!(refused, Err(resnet3d::Error::FileNotFound { .. })),
        "{refused:?}"
    );
    let flat = Placement::Affine([[0.0; 4]; 4]);
    let refused = scan.save_nifti(dir.path().join("x.nii"), &flat);
    assert!(
        matches!(refused, Err(resnet3d::Error::InvalidVolume { .. })),
        "{refused:?}"
    );
    // The scan as written reads back as it was, placed by the affine.
    assert_eq!(Volume::from_nifti(&input).unwrap(), scan);
    let written = nifti_affine(&input).unwrap();
    for (row, want) in written.iter().zip(&affine) {
        for (a, b) in row.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{written:?}");
        }
    }

    // A network that, by construction, looks at bright voxels only (tests/it/common.rs),
    // saved as the train example saves one: its record, config and pipeline side by side.
    let device = Device::flex();
    let (detector, config) = blob_detector(&device);
    let model = dir.path().join("model.bpk");
    detector.save(&model).unwrap();
    config.save(dir.path().join("config.json")).unwrap();
    Preprocessing::ct(1.5, [16, 32, 32], Window::LUNG)
        .save(dir.path().join("preprocessing.json"))
        .unwrap();
    let settings = args(&input, dir.path(), &["--model", model.to_str().unwrap()]);
    let scores = example::classify(&settings, &device).unwrap();
    assert!(scores[1] > 0.5, "{scores:?}");

    let rgb = check_png(&dir.path().join("cam.png"));
    let mut colours: Vec<[u8; 3]> = rgb.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
    let heat = colours.iter().filter(|p| p[0] != p[1] || p[1] != p[2]).count();
    colours.sort_unstable();
    colours.dedup();
    assert!(colours.len() > 100, "{} distinct colours", colours.len());
    assert!(heat > 500, "{heat} coloured pixels");

    let map = Volume::from_nifti(dir.path().join("cam.nii.gz")).unwrap();
    assert_eq!((map.shape, map.spacing), (scan.shape, scan.spacing));
    assert!(map.data.iter().all(|v| (0.0..=1.0).contains(v)));
    // Back on the scan's grid, the map is hottest in the ball.
    let hottest = (0..map.data.len()).fold(0, |b, i| if map.data[i] > map.data[b] { i } else { b });
    assert!(
        ball(hottest / (40 * 48), hottest / 48 % 40, hottest % 48),
        "hottest voxel {hottest}"
    );
    let (mut inside, mut outside) = ((0.0, 0), (0.0, 0));
    for (i, &v) in map.data.iter().enumerate() {
        let sum = if ball(i / (40 * 48), i / 48 % 40, i % 48) {
            &mut inside
        } else {
            &mut outside
        };
        (sum.0, sum.1) = (sum.0 + v, sum.1 + 1);
    }
    let (inside, outside) = (inside.0 / inside.1 as f32, outside.0 / outside.1 as f32);
    assert!(
        inside > 5.0 * outside,
        "mean map {inside} in the ball, {outside} outside"
    );
    assert_eq!(nifti_affine(dir.path().join("cam.nii.gz")).unwrap(), written);
}

#[test]
fn cam_nifti_of_a_dicom_series_has_the_series_affine() {
    let dir = tempfile::tempdir().unwrap();
    let series = fixtures().join("dicom/ct");
    let mut settings = args(&series, dir.path(), &["--around-max"]);
    settings.shape = vec![8, 16, 16];
    example::classify(&settings, &Device::flex()).unwrap();
    let dicom = read_series(&series, None).unwrap();
    let map = Volume::from_nifti(dir.path().join("cam.nii.gz")).unwrap();
    assert_eq!(map.shape, dicom.volume.shape);
    let got = nifti_affine(dir.path().join("cam.nii.gz")).unwrap();
    for (row, want) in got.iter().zip(&dicom.nifti_affine()) {
        for (a, b) in row.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{got:?}");
        }
    }
    // The montage is of the network's 8 x 16 x 16 grid: 8 tiles of 16 voxels at 16 pixels.
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(dir.path().join("cam.png")).unwrap(),
    ));
    let info = decoder.read_info().unwrap().info().clone();
    assert_eq!(
        (info.width, info.height),
        (4 + 4 * (256 + 4) + 16 + 24, 4 + 4 * (256 + 4))
    );
}

#[test]
fn explain_scores_a_phantom_from_its_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phantom.nii.gz");
    let (dims, spacing, hu) = make_nodules::phantom(3, true, [6.0, 9.0]);
    make_nodules::write_nifti(&path, dims, spacing, &hu).unwrap();
    // `--shape d,h,w` is one comma-separated value.
    let argv = [
        "explain",
        path.to_str().unwrap(),
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
        (&vec![16, 32, 32], 1.5, 3)
    );
    let scores = example::classify(&parsed, &Device::flex()).unwrap();
    assert_eq!(scores.len(), 3);
    assert!(scores.iter().all(|s| s.is_finite() && *s > 0.0));
    assert!((scores.iter().sum::<f32>() - 1.0).abs() < 1e-5);
}
