//! DICOM series against the volumes `tests/fixtures/make_dicom.py` (pydicom 3.0.2) wrote:
//! shuffled random file names, InstanceNumber disagreeing with position, per-slice rescale,
//! anisotropic spacing, an oblique MR, RLE and deflated copies, and one folder per error;
//! and the files `make_dicom_codecs.py` had DCMTK encode (JPEG lossless, baseline, JPEG-LS).

use std::path::PathBuf;

use resnet3d::Error;
use resnet3d::data::{DicomProblem, list_series, read_series};
use resnet3d::preprocess::Volume;
use serde_json::Value;

use crate::common::{fixtures, reference};

fn dir(case: &str) -> PathBuf {
    fixtures().join("dicom").join(case)
}

fn case(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join("dicom/dicom.json")).expect("dicom.json");
    let all: Value = serde_json::from_str(&text).expect("dicom.json is JSON");
    all["cases"][name].clone()
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}

/// The volume read from `folder` equals the script's tensor `expected` voxel for voxel
/// (integers times slope plus intercept are exact in f32: tolerance 0), with its spacing
/// (1e-5 mm).
fn check(volume: &Volume, expected: &str, spacing: &Value) {
    let (shape, values) = reference(&fixtures().join("dicom/expected.safetensors"), expected);
    assert_eq!(volume.shape.to_vec(), shape, "{expected}: shape");
    let worst = volume
        .data
        .iter()
        .zip(&values)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert_eq!(worst, 0.0, "{expected}: largest voxel difference");
    for (axis, want) in floats(spacing).into_iter().enumerate() {
        assert!(
            (f64::from(volume.spacing[axis]) - want).abs() < 1e-5,
            "{expected}: spacing {:?}, expected {spacing}",
            volume.spacing
        );
    }
}

fn problem(result: resnet3d::Result<impl std::fmt::Debug>) -> DicomProblem {
    match result {
        Err(Error::Dicom { problem, .. }) => *problem,
        other => panic!("expected a DICOM error, got {other:?}"),
    }
}

#[test]
fn ct_series_sorted_by_position_in_hounsfield_units() {
    let ct = case("ct");
    // The fixture's premise: neither file names nor InstanceNumber give the position order.
    let files = ct["files_sorted"].as_array().expect("files");
    let mut by_name = files.clone();
    by_name.sort_by_key(|f| f.as_str().expect("name").to_string());
    assert_ne!(&by_name, files);
    assert_ne!(
        floats(&ct["instance_numbers_sorted"]),
        (1..=7).map(f64::from).collect::<Vec<_>>()
    );

    let series = read_series(dir("ct"), None).expect("ct series");
    check(&series.volume, "ct", &ct["spacing"]);
    assert_eq!(series.series.uid, ct["series_uid"].as_str().expect("uid"));
    assert_eq!(series.series.files, 7);
    // The first slice is the lowest along the normal, and the directions are the header's.
    assert_eq!(series.origin.to_vec(), floats(&ct["first_position"]));
    let orientation = floats(&ct["orientation"]);
    assert_eq!(series.directions[0].to_vec(), orientation[..3]);
    assert_eq!(series.directions[1].to_vec(), orientation[3..]);
    assert_eq!(series.directions[2], [0.0, 0.0, 1.0]);
    // NIfTI's RAS: x and y of DICOM's LPS negated; columns scaled by the spacing.
    let affine = series.nifti_affine();
    assert!((affine[0][0] + 0.9).abs() < 1e-6 && (affine[1][1] + 0.7).abs() < 1e-6);
    assert!((affine[2][2] - 2.5).abs() < 1e-6);
    assert!(
        (affine[0][3] - 4.2).abs() < 1e-9 && (affine[1][3] + 11.0).abs() < 1e-9 && (affine[2][3] - 16.5).abs() < 1e-9
    );
    // Volume::from_dicom is the same volume.
    assert_eq!(Volume::from_dicom(dir("ct")).expect("ct"), series.volume);
}

#[test]
fn rle_and_deflated_series_decode_to_the_same_volume() {
    for name in ["ct_rle", "ct_deflate"] {
        let spec = case(name);
        let volume = Volume::from_dicom(dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        check(&volume, "ct", &spec["spacing"]);
    }
}

fn codecs() -> Value {
    let text = std::fs::read_to_string(fixtures().join("dicom/codecs.json")).expect("codecs.json");
    serde_json::from_str(&text).expect("codecs.json is JSON")
}

/// JPEG Lossless (process 14, SV1) encoded by DCMTK 3.6.7's `dcmcjpeg`, not by the crate's
/// own tooling (make_dicom_codecs.py): the volume of the uncompressed series, exactly.
#[test]
fn a_jpeg_lossless_series_from_dcmtk_is_the_uncompressed_volume() {
    let spec = codecs();
    assert_eq!(
        spec["ct_jpeg_lossless"]["transfer_syntax_uid"],
        "1.2.840.10008.1.2.4.70"
    );
    let volume = Volume::from_dicom(dir("ct_jpeg_lossless")).expect("ct_jpeg_lossless");
    check(&volume, "ct", &case("ct")["spacing"]);
}

/// JPEG Baseline (8 bit, quality 90) from `dcmcjpeg +eb`: within DCMTK's own round-trip
/// error of the uncompressed 8-bit voxels (9 grey levels on this noisy series), and within
/// 1 level of DCMTK's own decoder (dicom-rs decodes with the jpeg-decoder crate, whose
/// inverse DCT and upsampling round differently from libijg's).
#[test]
fn a_jpeg_baseline_series_from_dcmtk_is_within_its_stated_error() {
    let spec = codecs();
    let baseline = &spec["mr8_jpeg_baseline"];
    assert_eq!(baseline["transfer_syntax_uid"], "1.2.840.10008.1.2.4.50");
    let stated = baseline["dcmtk_max_abs_error"].as_f64().expect("error") as f32;
    let tensors = fixtures().join("dicom/codecs.safetensors");
    let (shape, original) = reference(&tensors, "mr8");
    let (_, dcmtk) = reference(&tensors, "mr8_baseline_dcmtk");

    let plain = Volume::from_dicom(dir("mr8")).expect("mr8");
    assert_eq!(plain.shape.to_vec(), shape);
    assert_eq!(plain.data, original, "the uncompressed 8-bit series");
    for (axis, want) in floats(&spec["mr8"]["spacing"]).into_iter().enumerate() {
        assert!(
            (f64::from(plain.spacing[axis]) - want).abs() < 1e-5,
            "{:?}",
            plain.spacing
        );
    }

    let lossy = Volume::from_dicom(dir("mr8_jpeg_baseline")).expect("mr8_jpeg_baseline");
    assert_eq!(lossy.shape, plain.shape);
    assert_eq!(lossy.spacing, plain.spacing);
    let worst = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    let to_original = worst(&lossy.data, &original);
    let to_dcmtk = worst(&lossy.data, &dcmtk);
    println!("baseline: largest error {to_original} against the original, {to_dcmtk} against DCMTK's decoding");
    assert!(
        to_original > 0.0,
        "a lossy file decoded to the original: not baseline-decoded?"
    );
    assert!(to_original <= stated + 1.0, "{to_original} > {stated} + 1");
    assert!(to_dcmtk <= 1.0, "{to_dcmtk} grey levels from DCMTK's own decoding");
}

/// Third-party files the reader must refuse, each with its variant: JPEG-LS from DCMTK's
/// `dcmcjpls` (no pure-Rust decoder in dicom-rs), a two-frame Enhanced CT object, an RGB
/// series.
#[test]
fn jpeg_ls_multi_frame_and_rgb_are_refused_with_their_variants() {
    let spec = codecs();
    match problem(Volume::from_dicom(dir("ct_jpegls"))) {
        DicomProblem::UnsupportedTransferSyntax { uid, name, .. } => {
            assert_eq!(uid, spec["ct_jpegls"]["transfer_syntax_uid"].as_str().expect("uid"));
            assert!(name.contains("JPEG-LS"), "{name}");
        }
        other => panic!("ct_jpegls: {other:?}"),
    }
    match problem(Volume::from_dicom(dir("enhanced_ct"))) {
        DicomProblem::MultiFrame { frames, file } => {
            assert_eq!(frames, 2);
            assert!(file.ends_with("enhanced.dcm"), "{}", file.display());
        }
        other => panic!("enhanced_ct: {other:?}"),
    }
    match problem(Volume::from_dicom(dir("rgb"))) {
        DicomProblem::NotGreyscale {
            samples, photometric, ..
        } => {
            assert_eq!(samples, 3);
            assert_eq!(photometric, "RGB");
        }
        other => panic!("rgb: {other:?}"),
    }
}

#[test]
fn oblique_mr_sorted_along_its_normal() {
    let spec = case("mr_oblique");
    let series = read_series(dir("mr_oblique"), None).expect("mr series");
    check(&series.volume, "mr_oblique", &spec["spacing"]);
    let first = floats(&spec["first_position"]);
    for (got, want) in series.origin.iter().zip(&first) {
        assert!((got - want).abs() < 1e-9, "origin {:?}", series.origin);
    }
    // n = X x Y for X = (cos 30, sin 30, 0), Y = (0, 0, -1).
    let n = series.directions[2];
    assert!((n[0] + 0.5).abs() < 1e-6 && (n[1] - 3f64.sqrt() / 2.0).abs() < 1e-6 && n[2].abs() < 1e-9);
}

#[test]
fn one_slice_takes_its_depth_spacing_from_slice_thickness() {
    let spec = case("single");
    let volume = Volume::from_dicom(dir("single")).expect("single slice");
    check(&volume, "single", &spec["spacing"]);
}

#[test]
fn a_folder_with_two_series_lists_them_and_reads_the_one_named() {
    let spec = case("two_series");
    let series = spec["series"].as_array().expect("series");
    let uid = |i: usize| series[i]["series_uid"].as_str().expect("uid").to_string();

    let listed = list_series(dir("two_series")).expect("list");
    assert_eq!(
        listed.iter().map(|s| s.uid.clone()).collect::<Vec<_>>(),
        [uid(0), uid(1)]
    );
    assert_eq!(listed.iter().map(|s| s.files).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(listed[1].description, "B bone");
    assert_eq!(listed[1].number, Some(3));

    match problem(Volume::from_dicom(dir("two_series"))) {
        DicomProblem::SeveralSeries { series } => assert_eq!(series, listed),
        other => panic!("{other:?}"),
    }
    let message = Volume::from_dicom(dir("two_series"))
        .expect_err("two series")
        .to_string();
    assert!(
        message.contains(&uid(0)) && message.contains(&uid(1)) && message.contains("A soft"),
        "{message}"
    );

    for (i, expected) in [(0, "two_series_a"), (1, "two_series_b")] {
        let volume = Volume::from_dicom_series(dir("two_series"), &uid(i)).expect("named series");
        check(&volume, expected, &series[i]["spacing"]);
    }
    match problem(Volume::from_dicom_series(dir("two_series"), "1.2.3")) {
        DicomProblem::SeriesNotFound { uid: asked, available } => {
            assert_eq!(asked, "1.2.3");
            assert_eq!(available.len(), 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_slice_is_reported_where_it_is() {
    let detail = &case("gap")["error_detail"];
    match problem(Volume::from_dicom(dir("gap"))) {
        DicomProblem::MissingSlices {
            missing,
            after_mm,
            step_mm,
            spacing_mm,
        } => {
            assert_eq!(missing, 1);
            // The slice before the gap: 2.5 mm below the missing position.
            let missing_z = floats(&detail["missing_position"])[2];
            assert!((after_mm - (missing_z - 2.5)).abs() < 1e-6, "{after_mm}");
            assert!((step_mm - detail["largest_gap"].as_f64().expect("gap")).abs() < 1e-6);
            assert!((spacing_mm - 2.5).abs() < 1e-6);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_broken_series_returns_its_variant() {
    match problem(Volume::from_dicom(dir("tilt"))) {
        DicomProblem::GantryTilt { degrees } => assert!((degrees - 15.0).abs() < 0.01, "{degrees}"),
        other => panic!("tilt: {other:?}"),
    }
    match problem(Volume::from_dicom(dir("mixed_size"))) {
        DicomProblem::MixedSize { found, expected, .. } => {
            assert!(
                found.contains("8 x 9") && expected.contains("8 x 8"),
                "{found} / {expected}"
            )
        }
        other => panic!("mixed_size: {other:?}"),
    }
    let detail = &case("mixed_orientation")["error_detail"];
    match problem(Volume::from_dicom(dir("mixed_orientation"))) {
        DicomProblem::MixedOrientation { found, expected, .. } => {
            // Either slice can come first in the folder: the pair is the fixture's.
            let pair = [found.to_vec(), expected.to_vec()];
            assert!(pair.contains(&floats(&detail["odd_orientation"])), "{pair:?}");
            assert!(pair.contains(&floats(&detail["orientation"])), "{pair:?}");
        }
        other => panic!("mixed_orientation: {other:?}"),
    }
    let detail = &case("jpeg2000")["error_detail"];
    match problem(Volume::from_dicom(dir("jpeg2000"))) {
        DicomProblem::UnsupportedTransferSyntax { uid, name, .. } => {
            assert_eq!(uid, detail["transfer_syntax_uid"].as_str().expect("uid"));
            assert!(name.contains("JPEG 2000"), "{name}");
        }
        other => panic!("jpeg2000: {other:?}"),
    }
    match problem(Volume::from_dicom(dir("us"))) {
        DicomProblem::UnsupportedModality { modality } => assert_eq!(modality, "US"),
        other => panic!("us: {other:?}"),
    }
}

#[test]
fn folders_without_dicom_files_are_errors() {
    let empty = tempfile::tempdir().expect("tempdir");
    std::fs::write(empty.path().join("notes.txt"), "not a slice").expect("write");
    assert_eq!(problem(Volume::from_dicom(empty.path())), DicomProblem::NoFiles);
    assert!(matches!(
        Volume::from_dicom(empty.path().join("absent")),
        Err(Error::FileNotFound { .. })
    ));
    // A file that announces DICOM but ends after the mark is named.
    let mut bytes = vec![0u8; 128];
    bytes.extend_from_slice(b"DICM\x02\x00");
    std::fs::write(empty.path().join("cut.dcm"), bytes).expect("write");
    match problem(Volume::from_dicom(empty.path())) {
        DicomProblem::Unreadable { file, .. } => assert!(file.ends_with("cut.dcm")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_copied_series_with_one_header_damaged_names_the_file() {
    let (copy, victim) = patched_copy("ct", |bytes| bytes.truncate(300));
    match problem(Volume::from_dicom(copy.path())) {
        DicomProblem::Unreadable { file, .. } | DicomProblem::MissingAttribute { file, .. } => assert_eq!(file, victim),
        other => panic!("{other:?}"),
    }
}

#[cfg(feature = "train")]
#[test]
fn training_data_accepts_a_dicom_folder() {
    let scan = resnet3d::data::read_scan(&dir("mr_oblique")).expect("folder as scan");
    check(&scan, "mr_oblique", &case("mr_oblique")["spacing"]);
    // A label file naming DICOM folders passes the up-front check.
    let labels = tempfile::tempdir().expect("tempdir");
    let csv = labels.path().join("labels.csv");
    let row = |case: &str, label| format!("{},{label}\n", dir(case).display());
    std::fs::write(
        &csv,
        format!("path,label,split\n{}{}", row("ct", 0), row("mr_oblique", 1))
            .replace(",0\n", ",0,train\n")
            .replace(",1\n", ",1,valid\n"),
    )
    .expect("write");
    let scans = resnet3d::data::LabelledScans::from_csv(&csv, 0.5, 1).expect("labels with folders");
    assert_eq!(scans.scans().len(), 2);
}

/// A copy of fixture `case` in a temporary folder, with `patch` applied to the bytes of its
/// file at sorted index 2; the patched file's path.
fn patched_copy(case_name: &str, patch: impl Fn(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let copy = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(dir(case_name)).expect("fixture") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, copy.path().join(path.file_name().expect("name"))).expect("copy");
    }
    let victim = copy
        .path()
        .join(case(case_name)["files_sorted"][2].as_str().expect("name"));
    let mut bytes = std::fs::read(&victim).expect("read");
    patch(&mut bytes);
    std::fs::write(&victim, bytes).expect("write");
    (copy, victim)
}

/// Where `needle` starts in `bytes`.
fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("pattern in the fixture")
}

/// Every allocation is bounded by the bytes behind it, at the allocation: dicom-rs's own
/// parse runs through a decoder that refuses a value longer than what is left. The whole
/// read of each folder (3-4 slices of 1-2 KB) peaks under 1 MiB, where dicom-rs alone would
/// allocate and zero 4 GB for each of these files.
#[test]
fn lengths_past_the_end_of_a_file_are_refused_before_anything_is_allocated() {
    let huge = 0xFFFF_FFF0u32.to_le_bytes();
    // Explicit VR: PixelData (7FE0,0010) OW, 2 reserved bytes, then the 4-byte length.
    let explicit = |b: &mut Vec<u8>| {
        let at = find(b, &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W']) + 8;
        b[at..at + 4].copy_from_slice(&huge);
    };
    // Implicit VR: the tag, then the 4-byte length.
    let implicit = |b: &mut Vec<u8>| {
        let at = find(b, &[0xE0, 0x7F, 0x10, 0x00]) + 4;
        b[at..at + 4].copy_from_slice(&huge);
    };
    // RLE: the first fragment's item (FFFE,E000) after the basic offset table's.
    let fragment = |b: &mut Vec<u8>| {
        let table = find(b, &[0xFE, 0xFF, 0x00, 0xE0]);
        let at = table + 8 + 4 + 4;
        assert_eq!(b[at - 4..at], [0xFE, 0xFF, 0x00, 0xE0]);
        b[at..at + 4].copy_from_slice(&huge);
    };
    // Deflated: the data set inflates to a few KB, so a PixelData of 4 GB cannot be backed.
    // The length is patched inside the deflate stream: inflate, patch, deflate again.
    let deflated = |b: &mut Vec<u8>| {
        let start = find(b, b"1.2.840.10008.1.2.1.99") + 22;
        let start = start + b[start..].iter().take_while(|&&c| c == 0 || c == b' ').count();
        // The meta group ends where its group length says; the data set follows.
        let group = u32::from_le_bytes(b[140..144].try_into().expect("4 bytes")) as usize;
        let data = 144 + group;
        assert!(data > start, "the meta group holds the transfer syntax");
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(&b[data..]), &mut plain)
            .expect("a deflated data set");
        let at = find(&plain, &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W']) + 8;
        plain[at..at + 4].copy_from_slice(&huge);
        let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut deflate, &plain).expect("deflate");
        b.truncate(data);
        b.extend(deflate.finish().expect("deflate"));
    };
    type Patch<'a> = &'a dyn Fn(&mut Vec<u8>);
    let cases: [(&str, Patch, &str); 4] = [
        ("ct", &explicit, "element (7FE0,0010)"),
        ("mr_oblique", &implicit, "element (7FE0,0010)"),
        ("ct_rle", &fragment, "an item (FFFE,E000)"),
        ("ct_deflate", &deflated, "element (7FE0,0010)"),
    ];
    for (name, patch, element) in cases {
        let (folder, victim) = patched_copy(name, patch);
        let size = std::fs::metadata(&victim).expect("victim").len();
        let (result, peak) = crate::tracking::peak_with_rayon_here(|| Volume::from_dicom(folder.path()));
        match problem(result) {
            DicomProblem::Unreadable { file, reason } => {
                assert_eq!(file, victim, "{name}");
                assert!(
                    reason.starts_with(element) && reason.contains("declares 4294967280 bytes"),
                    "{name}: {reason}"
                );
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(
            peak < 1 << 20,
            "{name}: peak {peak} bytes for files of about {size} bytes"
        );
    }
}

#[test]
fn inputs_the_fuzzer_found_are_errors_naming_the_file() {
    // Found by the `dicom` fuzz target (each allocated hundreds of MB to GBs in dicom-rs
    // 0.10.1 before the crate bounded its reads): an RLE segment shorter than its frame, on
    // which the decoder indexes out of bounds (rle_lossless.rs:119; now refused before it
    // decodes, and a panic there is still caught per file); an element
    // with an unknown VR, read with a 4-byte length (875 MB); an RLE frame claiming
    // 4294836226 segments (16 GB of offsets); SamplesPerPixel as SL of 2 bytes, after which
    // dicom-rs parses the next header 2 bytes early (a 1.3 GB value); a meta group whose group
    // length runs into the data set (an RLE frame of 1073741826 segments, 4 GB of offsets);
    // TransferSyntaxUID with an unknown VR (775 MB); the group length as PN followed by a
    // 3.7 GB value of unknown VR; a sequence delimiter with a length (990 MB). Each is now
    // refused where dicom-rs would allocate (or by the RLE header check, or the native pixel
    // data's size), and reading it peaks under 256 KiB.
    for (name, says) in [
        (
            "dicom_rle_panic",
            "RLE segment 0 decodes to 118 bytes, fewer than the frame's 120 pixels",
        ),
        ("dicom_unknown_vr", "element (0008,0021) (UN) declares 875704370 bytes"),
        ("dicom_rle_segments", "RLE frame of 330 bytes and 4294836226 segments"),
        (
            "dicom_short_value",
            "element (0001,0028) (UN) declares 1330446348 bytes",
        ),
        ("dicom_rle_first_fragment", "1073741826 segments"),
        ("dicom_meta_vr", "meta element (0002,0010) declares 775040561 bytes"),
        (
            "dicom_group_length_vr",
            "element (2820,5300) (UN) declares 3760206080 bytes",
        ),
        (
            "dicom_delimiter_length",
            "PixelData: 0 bytes, but 10 x 12 pixels of 16 bits need 240",
        ),
    ] {
        let folder = tempfile::tempdir().expect("tempdir");
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        bytes.extend(std::fs::read(fixtures().join(format!("hostile/{name}.bin"))).expect("fixture"));
        let slice = folder.path().join("slice.dcm");
        std::fs::write(&slice, bytes).expect("write");
        let (result, peak) = crate::tracking::peak_with_rayon_here(|| Volume::from_dicom(folder.path()));
        let (file, reason) = match problem(result) {
            DicomProblem::Unreadable { file, reason } => (file, reason),
            DicomProblem::MissingAttribute {
                file,
                attribute,
                reason,
            } => (file, format!("{attribute}: {reason}")),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(file, slice, "{name}");
        assert!(reason.contains(says), "{name}: {reason}");
        assert!(peak < 256 << 10, "{name}: peak {peak} bytes");
    }
}

/// The caller's limits: a series of more voxels than `max_voxels` is refused before its pixel
/// data is read (ct: 7 slices of 10 x 12 = 840 voxels), and a deflated file may inflate to at
/// most `max_inflated_bytes` (ct_deflate's data sets inflate to about 1.1 KB each).
#[test]
fn read_limits_bound_the_volume_and_the_inflated_bytes() {
    use resnet3d::preprocess::ReadLimits;
    let small = ReadLimits::default().with_max_voxels(839);
    let (result, peak) = crate::tracking::peak_with_rayon_here(|| Volume::from_dicom_with_limits(dir("ct"), &small));
    match result.unwrap_err() {
        Error::InvalidVolume { what } => assert!(
            what.contains("7 slices of 10 x 12 pixels") && what.contains("limit of 839 voxels"),
            "{what}"
        ),
        other => panic!("{other}"),
    }
    // Seven headers read (a buffer and a parsed header each), no pixel data: under 1 MiB.
    assert!(peak < 1 << 20, "peak {peak}");
    assert_eq!(
        Volume::from_dicom_with_limits(dir("ct"), &ReadLimits::default().with_max_voxels(840))
            .unwrap()
            .shape,
        [7, 10, 12]
    );
    let tight = ReadLimits::default().with_max_inflated_bytes(200);
    match problem(Volume::from_dicom_with_limits(dir("ct_deflate"), &tight)) {
        DicomProblem::Unreadable { reason, .. } => {
            assert!(reason.contains("the deflated data set inflates to at most"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let roomy = ReadLimits::default().with_max_inflated_bytes(64 << 10);
    assert_eq!(
        Volume::from_dicom_with_limits(dir("ct_deflate"), &roomy).unwrap(),
        Volume::from_dicom(dir("ct")).unwrap()
    );
}

/// The bytes of the `single` fixture: one 6 x 6 CT slice, 16 bits, explicit VR little endian.
fn single() -> Vec<u8> {
    let file = std::fs::read_dir(dir("single"))
        .expect("fixture")
        .next()
        .expect("a file")
        .expect("entry")
        .path();
    std::fs::read(file).expect("fixture")
}

/// The `single` fixture with `extra` inserted before its PixelData.
fn single_with(extra: &[u8]) -> Vec<u8> {
    let mut bytes = single();
    let at = find(&bytes, &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W']);
    bytes.splice(at..at, extra.iter().copied());
    bytes
}

/// The `single` fixture in transfer syntax `uid` (even length) with its pixel data replaced by
/// one encapsulated `fragment` (an empty offset table first).
fn single_encapsulated(uid: &str, fragment: &[u8]) -> Vec<u8> {
    let mut bytes = single();
    // TransferSyntaxUID (0002,0010) UI: a new value, the group length (0002,0000) adjusted.
    let at = find(&bytes, &[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
    let old = usize::from(u16::from_le_bytes([bytes[at + 6], bytes[at + 7]]));
    assert_eq!(uid.len() % 2, 0);
    bytes.splice(
        at + 6..at + 8 + old,
        (uid.len() as u16).to_le_bytes().into_iter().chain(uid.bytes()),
    );
    let group = u32::from_le_bytes(bytes[140..144].try_into().expect("4 bytes")) as i64 + uid.len() as i64 - old as i64;
    bytes[140..144].copy_from_slice(&(group as u32).to_le_bytes());
    let pixels = find(&bytes, &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W']);
    bytes.truncate(pixels);
    let item = |len: usize| [0xFE, 0xFF, 0x00, 0xE0].into_iter().chain((len as u32).to_le_bytes());
    bytes.extend([0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
    bytes.extend(item(0));
    bytes.extend(item(fragment.len()));
    bytes.extend_from_slice(fragment);
    bytes.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    bytes
}

/// A baseline JPEG whose frame header declares `side` x `side` pixels of 8 bits; its
/// Huffman tables make every block "DC 0, end of block" (as the hostile review built it).
fn jpeg(side: u16) -> Vec<u8> {
    let segment = |marker: u8, body: &[u8]| {
        let mut s = vec![0xFF, marker];
        s.extend(((body.len() + 2) as u16).to_be_bytes());
        s.extend_from_slice(body);
        s
    };
    let mut sof = vec![8];
    sof.extend(side.to_be_bytes());
    sof.extend(side.to_be_bytes());
    sof.extend([1, 1, 0x11, 0]);
    let mut one = vec![1u8];
    one.extend([0u8; 15]);
    one.push(0);
    let mut dht = vec![0x00];
    dht.extend(&one);
    dht.push(0x10);
    dht.extend(&one);
    let mut out = vec![0xFF, 0xD8];
    out.extend(segment(0xDB, &[[0u8].as_slice(), &[1u8; 64]].concat()));
    out.extend(segment(0xC0, &sof));
    out.extend(segment(0xC4, &dht));
    out.extend(segment(0xDA, &[1, 1, 0x00, 0x00, 0x3F, 0x00]));
    out.extend([0x00, 0xFF, 0xD9]);
    out
}

/// Structures a hostile review built against the first bounded reader (before these fixes:
/// a stack overflow that aborted the process, 2.2 GB from a 1 KB JPEG, 272 MB from a 4 MB
/// RLE segment, 309 MB from 250,000 empty items, 105 MB from a UC value of backslashes,
/// 537 MB from a deflated 512 MiB value). Each is now refused, or read, with at most 1 MiB
/// allocated at once (rayon's work counted).
#[test]
fn hostile_structures_are_refused_or_read_within_a_mebibyte() {
    let sq = |tag: [u8; 4]| [&tag[..], b"SQ", &[0, 0, 0xFF, 0xFF, 0xFF, 0xFF]].concat();
    let item = [0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF];
    let ends = [
        [0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0],
        [0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0],
    ]
    .concat();
    let level = [sq([0x40, 0x00, 0x75, 0x02]), item.to_vec()].concat();
    let nested = [level.repeat(3000), ends.repeat(3000)].concat();
    let empty_item = [0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0];
    let items = [
        sq([0x40, 0x00, 0x75, 0x02]),
        empty_item.repeat(250_000),
        vec![0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0],
    ]
    .concat();
    let backslashes = [
        &[0x09, 0x00, 0x10, 0x10, b'U', b'C', 0, 0][..],
        &4_000_000u32.to_le_bytes(),
        &[b'\\'; 4_000_000],
    ]
    .concat();
    let mut rle = vec![0u8; 64];
    rle[0] = 2; // two segments: 16 bits
    rle[4] = 64;
    rle[8] = 66;
    rle.extend([0x81, 0x00].repeat(20_001));
    // (name, the file, Some(what the refusal says) or None for a volume read)
    let cases: [(&str, Vec<u8>, Option<&str>); 5] = [
        (
            "3000 nested sequences",
            single_with(&nested),
            Some("sequences nested more than 64 deep"),
        ),
        (
            "a JPEG frame of 32768 x 32768",
            single_encapsulated("1.2.840.10008.1.2.4.50", &jpeg(32768)),
            Some("the JPEG frame declares 32768 x 32768 pixels"),
        ),
        (
            "RLE segments of 40,000 runs",
            single_encapsulated("1.2.840.10008.1.2.5\0", &rle),
            Some("RLE segment 0 decodes to more than the frame's 36 pixels"),
        ),
        ("250,000 empty items", single_with(&items), None),
        ("4,000,000 backslashes", single_with(&backslashes), None),
    ];
    let want = Volume::from_dicom(dir("single")).expect("the fixture");
    for (name, bytes, refusal) in cases {
        let folder = tempfile::tempdir().expect("tempdir");
        std::fs::write(folder.path().join("slice.dcm"), &bytes).expect("write");
        let (result, peak) = crate::tracking::peak_with_rayon_here(|| Volume::from_dicom(folder.path()));
        match refusal {
            Some(says) => match problem(result) {
                DicomProblem::Unreadable { reason, .. } => assert!(reason.contains(says), "{name}: {reason}"),
                other => panic!("{name}: {other:?}"),
            },
            None => assert_eq!(result.expect(name), want, "{name}"),
        }
        assert!(
            peak < 1 << 20,
            "{name}: peak {peak} bytes for a file of {}",
            bytes.len()
        );
    }
}

/// A deflated data set holding an 80 MiB value (zeros: 80 KB deflated) is refused within
/// the default 64 MiB of inflated bytes per file, before the value is allocated.
#[test]
fn a_deflated_value_beyond_the_inflated_budget_is_refused() {
    let (folder, victim) = patched_copy("ct_deflate", |b| {
        let group = u32::from_le_bytes(b[140..144].try_into().expect("4 bytes")) as usize;
        let data = 144 + group;
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(&b[data..]), &mut plain)
            .expect("a deflated data set");
        let at = find(&plain, &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W']);
        let len = 80u32 << 20;
        let mut blob = vec![0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0];
        blob.extend(len.to_le_bytes());
        blob.resize(blob.len() + len as usize, 0);
        plain.splice(at..at, blob);
        let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut deflate, &plain).expect("deflate");
        b.truncate(data);
        b.extend(deflate.finish().expect("deflate"));
    });
    let (result, peak) = crate::tracking::peak_with_rayon_here(|| Volume::from_dicom(folder.path()));
    match problem(result) {
        DicomProblem::Unreadable { file, reason } => {
            assert_eq!(file, victim);
            assert!(
                reason.contains("element (0009,1010) (OB) declares 83886080 bytes")
                    && reason.contains("inflates to at most"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(peak < 4 << 20, "peak {peak}");
}

/// Found by the `dicom_series` fuzz target (2026-12-05, after 11 minutes): a BitsStored of 27
/// in a 16-bit slice made dicom-rs build a modality LUT of 2^27 entries (512 MiB) before the
/// malloc limit stopped it. BitsStored must now be 1 to BitsAllocated. The fuzzer's input
/// (a folder of slices cut at `RESNET3D-SLICE`, replayed through the target's own entry
/// point) and the `single` fixture with BitsStored 27 are refused before any pixel is
/// decoded.
#[test]
#[cfg(feature = "nifti")] // the fuzz entry points take NIfTI files too
fn bits_stored_beyond_bits_allocated_is_refused() {
    use crate::fuzz_entry as entry;
    let input = std::fs::read(fixtures().join("hostile/dicom_series_bits_stored.bin")).expect("fixture");
    let (result, peak) = crate::tracking::peak_with_rayon_here(|| entry::dicom_series(&input));
    assert!(result.is_err());
    assert!(peak < 1 << 20, "peak {peak}");
    let mut bytes = single();
    // BitsStored (0028,0101) US of 2 bytes.
    let at = find(&bytes, &[0x28, 0x00, 0x01, 0x01, b'U', b'S', 0x02, 0x00]) + 8;
    bytes[at..at + 2].copy_from_slice(&27u16.to_le_bytes());
    let folder = tempfile::tempdir().expect("tempdir");
    std::fs::write(folder.path().join("slice.dcm"), &bytes).expect("write");
    let (result, peak) = crate::tracking::peak_with_rayon_here(|| Volume::from_dicom(folder.path()));
    match problem(result) {
        DicomProblem::MissingAttribute { attribute, reason, .. } => {
            assert_eq!(attribute, "BitsStored");
            assert_eq!(reason, "27: it must be 1 to BitsAllocated (16)");
        }
        other => panic!("{other:?}"),
    }
    assert!(peak < 1 << 20, "peak {peak}");
}

/// A JPEG Lossless frame cut short after its scan header (2 bytes of coded data, then EOI):
/// dicom-rs's decoder fills the rest with zero bits and reports nothing, so the frame is
/// refused before decoding, by its length (every sample takes at least one bit; a cut that
/// leaves more than that decodes as the decoder fills it). The same frame split over
/// several fragments, as DCMTK's `+fs` writes it, is read.
#[test]
fn a_truncated_jpeg_lossless_frame_is_unreadable() {
    let source = dir("ct_jpeg_lossless");
    let folder = tempfile::tempdir().expect("tempdir");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&source).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for path in &names {
        std::fs::copy(path, folder.path().join(path.file_name().unwrap())).unwrap();
    }
    let victim = folder.path().join(names[1].file_name().unwrap());
    let bytes = std::fs::read(&victim).unwrap();
    // The fragment: its item length, then the JPEG stream from SOI.
    let pixel_data = find(&bytes, &[0xE0, 0x7F, 0x10, 0x00]);
    let soi = pixel_data + find(&bytes[pixel_data..], &[0xFF, 0xD8, 0xFF]);
    assert_eq!(
        bytes[soi - 8..soi - 4],
        [0xFE, 0xFF, 0x00, 0xE0],
        "an item before the stream"
    );
    let old_len = u32::from_le_bytes(bytes[soi - 4..soi].try_into().unwrap()) as usize;
    let sos = soi + find(&bytes[soi..], &[0xFF, 0xDA]);
    let header = u16::from_be_bytes([bytes[sos + 2], bytes[sos + 3]]) as usize;
    let mut fragment = bytes[soi..sos + 2 + header + 2].to_vec();
    fragment.extend_from_slice(&[0xFF, 0xD9]);
    if fragment.len() % 2 == 1 {
        fragment.push(0);
    }
    let mut cut = bytes[..soi - 4].to_vec();
    cut.extend_from_slice(&(fragment.len() as u32).to_le_bytes());
    cut.extend_from_slice(&fragment);
    cut.extend_from_slice(&bytes[soi + old_len..]);
    std::fs::write(&victim, &cut).unwrap();
    match problem(Volume::from_dicom(folder.path())) {
        DicomProblem::Unreadable { file, reason } => {
            assert_eq!(file, victim);
            assert!(reason.contains("truncated frame"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    // The whole frame in two fragments: the coded data goes on in the second.
    let whole = &bytes[soi..soi + old_len];
    let split = (sos + 2 + header + 2 - soi) & !1;
    let mut two = bytes[..soi - 8].to_vec();
    for part in [&whole[..split], &whole[split..]] {
        two.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        two.extend_from_slice(&(part.len() as u32).to_le_bytes());
        two.extend_from_slice(part);
    }
    two.extend_from_slice(&bytes[soi + old_len..]);
    std::fs::write(&victim, &two).unwrap();
    let read = Volume::from_dicom(folder.path()).expect("a frame in two fragments");
    assert_eq!(read.data, Volume::from_dicom(&source).unwrap().data);
}
