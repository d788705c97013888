//! `resnet3d predict` in process: folders, label CSVs and DICOM series found and scored;
//! sliding windows over a whole scan; unreadable scans reported; shards that partition the
//! inputs whatever the folder's order; `--resume` from every state an interruption can leave.

use std::path::{Path, PathBuf};

use clap::Parser;
use resnet3d::burn::config::Config;
use resnet3d::burn::tensor::Device;
use resnet3d::data::Preprocessing;
use resnet3d::preprocess::{Placement, Volume, Window};
use resnet3d_cli::predict;

use crate::common::{blob_detector, fixtures};

/// A run folder as `resnet3d train` writes one, holding a network that, by construction,
/// answers class 1 for bright voxels (tests/it/common.rs), on 16 x 32 x 32 inputs at 1.5 mm.
pub fn detector_run(dir: &Path) -> PathBuf {
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let (detector, config) = blob_detector(&Device::flex());
    detector.save(run.join("model.bpk")).unwrap();
    config.save(run.join("config.json")).unwrap();
    Preprocessing::ct(1.5, [16, 32, 32], Window::LUNG)
        .save(run.join("preprocessing.json"))
        .unwrap();
    run
}

/// A body of -850 HU in air, `shape` voxels of 1.5 mm, with a 300 HU ball of radius 4 voxels
/// at `ball` (if any), written as NIfTI.
pub fn scan(path: &Path, shape: [usize; 3], ball: Option<[f32; 3]>) {
    let [d, h, w] = shape;
    let mut hu = vec![-850.0f32; d * h * w];
    if let Some([bz, by, bx]) = ball {
        for (i, v) in hu.iter_mut().enumerate() {
            let (z, y, x) = ((i / (h * w)) as f32, (i / w % h) as f32, (i % w) as f32);
            if (z - bz).powi(2) + (y - by).powi(2) + (x - bx).powi(2) < 16.0 {
                *v = 300.0;
            }
        }
    }
    let affine = [
        [1.5, 0.0, 0.0, 0.0],
        [0.0, 1.5, 0.0, 0.0],
        [0.0, 0.0, 1.5, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    Volume::new(hu, shape, [1.5; 3])
        .unwrap()
        .save_nifti(path, &Placement::Affine(affine))
        .unwrap();
}

fn args(input: &Path, run: &Path, out: &Path, extra: &[&str]) -> predict::Args {
    let mut argv = vec![
        "predict".to_string(),
        input.display().to_string(),
        "--model".into(),
        run.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    predict::Args::parse_from(argv)
}

/// The CSV's rows as (path, the other fields).
fn rows(out: &Path) -> Vec<Vec<String>> {
    let mut reader = csv::Reader::from_path(out).unwrap();
    reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}

/// A folder of scans: three with a ball, three without, one in a subfolder, a DICOM series.
fn archive(dir: &Path) -> PathBuf {
    let root = dir.join("archive");
    for i in 0..6 {
        let ball = (i % 2 == 1).then_some([8.0, 16.0, 16.0]);
        let name = if i == 5 {
            format!("sub/deeper/scan{i}.nii.gz")
        } else {
            format!("scan{i}.nii")
        };
        scan(&root.join(name), [16, 32, 32], ball);
    }
    let series = root.join("patient7/ct");
    std::fs::create_dir_all(&series).unwrap();
    for entry in std::fs::read_dir(fixtures().join("dicom/ct")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), series.join(entry.file_name())).unwrap();
    }
    std::fs::write(root.join("notes.txt"), "not a scan").unwrap();
    root
}

#[test]
fn a_folder_and_a_label_file_are_scored_alike() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    let root = archive(dir.path());
    let out = dir.path().join("scores.csv");
    let summary = predict::run(&args(&root, &run, &out, &[])).unwrap();
    assert_eq!((summary.scored, summary.failed, summary.skipped), (7, 0, 0));
    let header = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(header, "path,p0,p1,predicted,error");
    let rows = rows(&out);
    let keys: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    // Sorted bytewise by the path below the folder; the DICOM series is one scan.
    assert_eq!(
        keys,
        [
            "patient7/ct",
            "scan0.nii",
            "scan1.nii",
            "scan2.nii",
            "scan3.nii",
            "scan4.nii",
            "sub/deeper/scan5.nii.gz"
        ]
    );
    for row in &rows[1..] {
        let ball = ["scan1.nii", "scan3.nii", "sub/deeper/scan5.nii.gz"].contains(&row[0].as_str());
        let (p0, p1): (f32, f32) = (row[1].parse().unwrap(), row[2].parse().unwrap());
        assert!((p0 + p1 - 1.0).abs() < 1e-5, "{row:?}");
        assert_eq!(row[3], if ball { "1" } else { "0" }, "{row:?}");
        assert!(row[4].is_empty());
    }

    // The same scans through a label CSV (paths relative to it, other columns ignored).
    let labels = root.join("labels.csv");
    let listed: Vec<String> = rows.iter().map(|r| format!("1,{}", r[0])).collect();
    std::fs::write(&labels, format!("label,path\n{}\n", listed.join("\n"))).unwrap();
    let again = dir.path().join("again.csv");
    predict::run(&args(&labels, &run, &again, &[])).unwrap();
    assert_eq!(
        std::fs::read_to_string(&again).unwrap(),
        std::fs::read_to_string(&out).unwrap()
    );
}

#[test]
fn an_unreadable_scan_gets_its_error_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    let root = dir.path().join("scans");
    scan(&root.join("a.nii"), [16, 32, 32], None);
    std::fs::write(root.join("b.nii.gz"), b"this is not gzip").unwrap();
    scan(&root.join("c.nii"), [16, 32, 32], Some([8.0, 16.0, 16.0]));
    let out = dir.path().join("scores.csv");
    let summary = predict::run(&args(&root, &run, &out, &["--readers", "2"])).unwrap();
    assert_eq!((summary.scored, summary.failed), (2, 1));
    let rows = rows(&out);
    assert_eq!(rows[1][0], "b.nii.gz");
    assert!(rows[1][1..4].iter().all(String::is_empty), "{:?}", rows[1]);
    assert!(
        rows[1][4].contains("b.nii.gz"),
        "the error names the file: {}",
        rows[1][4]
    );
    assert_eq!((rows[0][3].as_str(), rows[2][3].as_str()), ("0", "1"));
}

#[test]
fn sliding_windows_find_what_the_centre_crop_misses_and_map_it_on_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    let root = dir.path().join("scans");
    // 40 x 80 x 80 voxels; the ball far from the centre 16 x 32 x 32 crop.
    let ball = [30.0, 12.0, 66.0];
    scan(&root.join("big.nii.gz"), [40, 80, 80], Some(ball));
    let out = dir.path().join("crop.csv");
    predict::run(&args(&root, &run, &out, &[])).unwrap();
    assert_eq!(rows(&out)[0][3], "0", "the centre crop does not see the ball");

    let maps = dir.path().join("maps");
    let out = dir.path().join("sliding.csv");
    let extra = [
        "--sliding-window",
        "--overlap",
        "0.5",
        "--aggregate",
        "max",
        "--maps",
        maps.to_str().unwrap(),
    ];
    predict::run(&args(&root, &run, &out, &extra)).unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("path,p0,p1,predicted,aggregate,error\n"), "{text}");
    let row = &rows(&out)[0];
    assert_eq!((row[3].as_str(), row[4].as_str()), ("1", "max"), "{row:?}");
    // The map of class 1 on the scan's grid, with its affine, hottest at the ball.
    let name = predict::map_name("big.nii.gz");
    let map = Volume::from_nifti(maps.join(format!("{name}.p1.nii.gz"))).unwrap();
    assert_eq!((map.shape, map.spacing), ([40, 80, 80], [1.5; 3]));
    let hottest = (0..map.data.len()).fold(0, |b, i| if map.data[i] > map.data[b] { i } else { b });
    let at = [hottest / 6400, hottest / 80 % 80, hottest % 80].map(|v| v as f32);
    let distance = (0..3).map(|a| (at[a] - ball[a]).powi(2)).sum::<f32>().sqrt();
    assert!(distance < 20.0, "hottest voxel {at:?}, ball at {ball:?}");
    // The maps of the classes sum to 1 at every voxel.
    let other = Volume::from_nifti(maps.join(format!("{name}.p0.nii.gz"))).unwrap();
    assert!(
        map.data
            .iter()
            .zip(&other.data)
            .all(|(a, b)| (a + b - 1.0).abs() < 1e-4)
    );
}

#[test]
fn shards_partition_the_inputs_whatever_the_folder_order() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    // The same twelve scans written in two different orders into two folders.
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    let names: Vec<String> = (0..12).map(|i| format!("p{:02}/scan.nii", (i * 7) % 12)).collect();
    for name in &names {
        scan(&first.join(name), [16, 32, 32], None);
    }
    for name in names.iter().rev() {
        scan(&second.join(name), [16, 32, 32], Some([8.0, 16.0, 16.0]));
    }
    let whole = dir.path().join("whole.csv");
    predict::run(&args(&first, &run, &whole, &[])).unwrap();
    let whole_rows = rows(&whole);
    let mut union = Vec::new();
    for i in 0..3 {
        let part = dir.path().join(format!("part{i}.csv"));
        let summary = predict::run(&args(&first, &run, &part, &["--shard", &format!("{i}/3")])).unwrap();
        assert_eq!(summary.scored + summary.other_shards, 12);
        let other = dir.path().join(format!("other{i}.csv"));
        predict::run(&args(&second, &run, &other, &["--shard", &format!("{i}/3")])).unwrap();
        // The same scans in the same shard, whichever order the folder was written in.
        let keys = |rows: Vec<Vec<String>>| rows.into_iter().map(|r| r[0].clone()).collect::<Vec<_>>();
        assert_eq!(keys(rows(&part)), keys(rows(&other)));
        union.extend(rows(&part));
    }
    // Concatenated, the shards are the whole run's rows: each once.
    union.sort();
    assert_eq!(union, whole_rows);
}

#[test]
fn resuming_from_any_interruption_gives_the_uninterrupted_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    let root = dir.path().join("scans");
    for i in 0..4 {
        scan(
            &root.join(format!("s{i}.nii")),
            [16, 32, 32],
            (i == 2).then_some([8.0, 16.0, 16.0]),
        );
    }
    let whole = dir.path().join("whole.csv");
    predict::run(&args(&root, &run, &whole, &[])).unwrap();
    let full = std::fs::read(&whole).unwrap();
    // A killed run leaves a prefix of the file (each row is written at once) and its record;
    // resume from prefixes ending at every line boundary, and inside lines.
    let mut cuts: Vec<usize> = (0..full.len()).step_by(17).collect();
    cuts.extend(
        full.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i + 1),
    );
    for cut in cuts {
        let out = dir.path().join(format!("cut{cut}.csv"));
        std::fs::write(&out, &full[..cut]).unwrap();
        // ... and the record of its settings, written before its first row.
        std::fs::copy(
            dir.path().join("whole.csv.json"),
            dir.path().join(format!("cut{cut}.csv.json")),
        )
        .unwrap();
        let summary = predict::run(&args(&root, &run, &out, &["--resume"])).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), full, "resumed from {cut} bytes");
        assert_eq!(summary.scored + summary.skipped, 4);
    }
    // Without --resume an existing output is never overwritten.
    let err = predict::run(&args(&root, &run, &whole, &[])).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
}

#[test]
fn resume_scores_again_the_scans_that_failed() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    let root = dir.path().join("scans");
    scan(&root.join("a.nii"), [16, 32, 32], None);
    std::fs::write(root.join("b.nii"), b"not yet copied").unwrap();
    let out = dir.path().join("scores.csv");
    let first = predict::run(&args(&root, &run, &out, &[])).unwrap();
    assert_eq!((first.scored, first.failed), (1, 1));
    // The scan arrives; a resumed run scores it and keeps a's row.
    scan(&root.join("b.nii"), [16, 32, 32], Some([8.0, 16.0, 16.0]));
    let second = predict::run(&args(&root, &run, &out, &["--resume"])).unwrap();
    assert_eq!((second.scored, second.failed, second.skipped), (1, 0, 1));
    let rows = rows(&out);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0][0].as_str(), rows[1][0].as_str(), rows[1][3].as_str()),
        ("a.nii", "b.nii", "1")
    );
    assert!(rows.iter().all(|r| r[4].is_empty()), "{rows:?}");
}

#[test]
fn keys_that_cannot_be_told_apart_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("scans");
    std::fs::create_dir_all(&root).unwrap();
    // Two rows naming the same file: one scan. Line breaks in a key: written as spaces.
    std::fs::write(root.join("labels.csv"), "path\na.nii\na.nii\n\"b\nc.nii\"\n").unwrap();
    let listed = resnet3d_cli::inputs::list(&root.join("labels.csv")).unwrap();
    let keys: Vec<&str> = listed.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["a.nii", "b c.nii"]);
    // Two different files under one key: refused, both named.
    std::fs::write(root.join("labels.csv"), "path\n\"x\ny.nii\"\n\"x\ry.nii\"\n").unwrap();
    let err = resnet3d_cli::inputs::list(&root.join("labels.csv")).unwrap_err();
    assert!(err.contains("would both be written as `x y.nii`"), "{err}");
}

#[test]
fn resuming_with_other_settings_is_refused_and_the_settings_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    let root = dir.path().join("scans");
    scan(&root.join("a.nii"), [16, 32, 32], None);
    let out = dir.path().join("scores.csv");
    let sliding = ["--sliding-window", "--aggregate", "max"];
    predict::run(&args(&root, &run, &out, &sliding)).unwrap();
    let sidecar = dir.path().join("scores.csv.json");
    let recorded: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&sidecar).unwrap()).unwrap();
    assert_eq!(recorded["classes"], 2);
    assert_eq!(recorded["precision"], "f32");
    assert_eq!(recorded["scoring"]["sliding_window"]["aggregate"], "max");
    assert_eq!(recorded["model_fnv1a"].as_str().map(str::len), Some(16));
    assert_eq!(recorded["preprocessing"]["size"], serde_json::json!([16, 32, 32]));
    // Same columns, other numbers: refused, each difference named, nothing written.
    let before = std::fs::read(&out).unwrap();
    let other = [
        "--sliding-window",
        "--aggregate",
        "mean",
        "--overlap",
        "0.5",
        "--resume",
    ];
    let err = predict::run(&args(&root, &run, &out, &other)).unwrap_err().to_string();
    assert!(
        err.contains("scoring:") && err.contains("\"mean\"") && err.contains("other settings"),
        "{err}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // The same settings from a moved run folder: resumed.
    let moved = dir.path().join("moved");
    std::fs::rename(&run, &moved).unwrap();
    let resumed = predict::run(&args(&root, &moved, &out, &["--sliding-window", "--resume"])).unwrap();
    assert_eq!((resumed.scored, resumed.skipped), (0, 1));
    // The record is named by its FNV-1a hash; an output made by another record is refused.
    let bytes = std::fs::read(moved.join("model.bpk")).unwrap();
    let fnv = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    assert_eq!(recorded["model_fnv1a"], format!("{fnv:016x}"));
    let mut edited = recorded.clone();
    edited["model_fnv1a"] = "0123456789abcdef".into();
    std::fs::write(&sidecar, edited.to_string()).unwrap();
    let err = predict::run(&args(&root, &moved, &out, &["--sliding-window", "--resume"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("model_fnv1a: \"0123456789abcdef\" then"), "{err}");
}

#[test]
fn an_output_another_run_is_writing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    let root = dir.path().join("scans");
    scan(&root.join("a.nii"), [16, 32, 32], None);
    let out = dir.path().join("scores.csv");
    // The lock another `resnet3d predict` would hold on the sidecar.
    let held = std::fs::File::create(dir.path().join("scores.csv.json")).unwrap();
    held.lock().unwrap();
    let err = predict::run(&args(&root, &run, &out, &["--resume"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("another resnet3d predict is writing it"), "{err}");
    assert!(!out.exists());
    drop(held);
    let summary = predict::run(&args(&root, &run, &out, &["--resume"])).unwrap();
    assert_eq!(summary.scored, 1);
    // A run refused for an existing output leaves no sidecar it made.
    let fresh = dir.path().join("other.csv");
    std::fs::copy(&out, &fresh).unwrap();
    assert!(predict::run(&args(&root, &run, &fresh, &[])).is_err());
    assert!(!dir.path().join("other.csv.json").exists());
}

#[test]
fn a_series_column_scores_each_series_of_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    let study = dir.path().join("study");
    std::fs::create_dir_all(&study).unwrap();
    for entry in std::fs::read_dir(fixtures().join("dicom/two_series")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), study.join(entry.file_name())).unwrap();
    }
    let uids: Vec<String> = resnet3d::data::list_series(&study)
        .unwrap()
        .into_iter()
        .map(|s| s.uid)
        .collect();
    assert_eq!(uids.len(), 2);
    // The folder alone: one row, an error that lists the series and says what to do.
    let out = dir.path().join("folder.csv");
    let summary = predict::run(&args(&study, &run, &out, &[])).unwrap();
    assert_eq!((summary.scored, summary.failed), (0, 1));
    let error = rows(&out)[0].last().unwrap().clone();
    assert!(
        error.contains("2 series") && error.contains("`series` column"),
        "{error}"
    );
    // A label CSV naming each series: a row for each, keyed `path#UID`.
    let labels = dir.path().join("labels.csv");
    std::fs::write(&labels, format!("path,series\nstudy,{}\nstudy,{}\n", uids[1], uids[0])).unwrap();
    let out = dir.path().join("series.csv");
    let summary = predict::run(&args(&labels, &run, &out, &[])).unwrap();
    assert_eq!((summary.scored, summary.failed), (2, 0));
    let keys: Vec<String> = rows(&out).into_iter().map(|r| r[0].clone()).collect();
    let mut expected: Vec<String> = uids.iter().map(|u| format!("study#{u}")).collect();
    expected.sort();
    assert_eq!(keys, expected);
}

/// The record is compared as it reads back: a spacing of 0.98 mm (an `f32` that does not
/// survive JSON as the same `f64`) resumes its own output; the record holds the network's
/// configuration, so a run folder whose config.json changed is refused.
#[test]
fn an_output_resumes_with_its_own_settings_and_not_with_another_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    Preprocessing::ct(1.5, [16, 32, 32], Window::LUNG)
        .with_spacing(Some([1.5, 0.98, 0.98]))
        .save(run.join("preprocessing.json"))
        .unwrap();
    let root = dir.path().join("scans");
    scan(&root.join("a.nii"), [16, 32, 32], None);
    let out = dir.path().join("scores.csv");
    predict::run(&args(&root, &run, &out, &[])).unwrap();
    scan(&root.join("b.nii"), [16, 32, 32], None);
    let resumed = predict::run(&args(&root, &run, &out, &["--resume"])).unwrap();
    assert_eq!((resumed.scored, resumed.skipped), (1, 1));
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("scores.csv.json")).unwrap()).unwrap();
    assert_eq!(recorded["config"]["max_pool"], false);

    let config = resnet3d::ResNet3dConfig::load(run.join("config.json")).unwrap();
    config.with_max_pool(true).save(run.join("config.json")).unwrap();
    scan(&root.join("c.nii"), [16, 32, 32], None);
    let before = std::fs::read(&out).unwrap();
    let err = predict::run(&args(&root, &run, &out, &["--resume"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("config:") && err.contains("other settings"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

/// `<out>.json` that this command did not write (notes, another output named `x.csv.json`)
/// is left as it is and the run refused; an output with scores and no record (missing or
/// empty) cannot be resumed; a header-only output with an empty record (a run stopped before
/// its first scan) can.
#[test]
fn a_record_name_taken_by_another_file_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    let root = dir.path().join("scans");
    scan(&root.join("a.nii"), [16, 32, 32], None);
    let at = |name: &str| dir.path().join(name);

    std::fs::write(at("scores.json"), "{\"my\": \"notes\"}\n").unwrap();
    let err = predict::run(&args(&root, &run, &at("scores"), &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a record written by resnet3d predict"), "{err}");
    assert_eq!(
        std::fs::read_to_string(at("scores.json")).unwrap(),
        "{\"my\": \"notes\"}\n"
    );
    assert!(!at("scores").exists());

    predict::run(&args(&root, &run, &at("x.csv.json"), &[])).unwrap();
    let other = std::fs::read(at("x.csv.json")).unwrap();
    assert!(predict::run(&args(&root, &run, &at("x.csv"), &[])).is_err());
    assert_eq!(std::fs::read(at("x.csv.json")).unwrap(), other);

    predict::run(&args(&root, &run, &at("s.csv"), &[])).unwrap();
    for record in [Some(""), None] {
        match record {
            Some(text) => std::fs::write(at("s.csv.json"), text).unwrap(),
            None => std::fs::remove_file(at("s.csv.json")).unwrap(),
        }
        let err = predict::run(&args(&root, &run, &at("s.csv"), &["--resume"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no record of what made them"), "{record:?}: {err}");
    }

    let header = std::fs::read_to_string(at("s.csv"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    std::fs::write(at("h.csv"), format!("{header}\n")).unwrap();
    std::fs::write(at("h.csv.json"), "").unwrap();
    let resumed = predict::run(&args(&root, &run, &at("h.csv"), &["--resume"])).unwrap();
    assert_eq!(resumed.scored, 1);
}

/// The lock belongs to the file, not to the name it is given: an output another run is
/// writing is refused when reached through a symbolic link too.
#[test]
fn an_output_reached_through_a_link_is_locked_too() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    let root = dir.path().join("scans");
    scan(&root.join("a.nii"), [16, 32, 32], None);
    let out = dir.path().join("scores.csv");
    std::fs::write(&out, "").unwrap();
    let link = dir.path().join("link.csv");
    std::os::unix::fs::symlink(&out, &link).unwrap();
    let held = std::fs::File::create(dir.path().join("scores.csv.json")).unwrap();
    held.lock().unwrap();
    let err = predict::run(&args(&root, &run, &link, &["--resume"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("another resnet3d predict is writing it"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"");
    assert!(!dir.path().join("link.csv.json").exists());
}

/// A series UID names one series of a DICOM folder: on a row naming a NIfTI file it is that
/// row's error, not ignored.
#[test]
fn a_series_uid_on_a_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    scan(&dir.path().join("a.nii"), [16, 32, 32], None);
    scan(&dir.path().join("b.nii"), [16, 32, 32], None);
    let labels = dir.path().join("labels.csv");
    std::fs::write(&labels, "path,series\na.nii,1.2.3\nb.nii,\n").unwrap();
    let out = dir.path().join("scores.csv");
    for extra in [&[][..], &["--sliding-window"][..]] {
        let _ = std::fs::remove_file(&out);
        let summary = predict::run(&args(&labels, &run, &out, extra)).unwrap();
        assert_eq!((summary.scored, summary.failed), (1, 1), "{extra:?}");
        let rows = rows(&out);
        assert_eq!(rows[0][0], "a.nii#1.2.3");
        assert!(rows[0].last().unwrap().contains("is a file"), "{:?}", rows[0]);
    }
}

/// Names that are not plain files are never written through: an `--out` link to nothing (the
/// rows would go to its target, the record beside the link, and a later resume of the target
/// would mix two settings), a record name that is a link, a folder or a device, and an
/// output that is a pipe (which would block).
#[test]
fn links_pipes_and_devices_are_refused_and_left_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    let root = dir.path().join("scans");
    scan(&root.join("a.nii"), [16, 32, 32], None);
    let at = |name: &str| dir.path().join(name);

    std::os::unix::fs::symlink(at("target.csv"), at("latest.csv")).unwrap();
    let err = predict::run(&args(&root, &run, &at("latest.csv"), &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a link to a file that does not exist"), "{err}");
    assert!(!at("target.csv").exists() && !at("latest.csv.json").exists());

    std::fs::create_dir(at("elsewhere")).unwrap();
    std::os::unix::fs::symlink(at("elsewhere/target.json"), at("d.csv.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", at("z.csv.json")).unwrap();
    std::fs::create_dir(at("f.csv.json")).unwrap();
    for out in ["d.csv", "z.csv", "f.csv"] {
        let err = predict::run(&args(&root, &run, &at(out), &["--resume"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a regular file"), "{out}: {err}");
        assert!(!at(out).exists(), "{out}");
    }
    assert!(
        std::fs::symlink_metadata(at("d.csv.json"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!at("elsewhere/target.json").exists());

    let fifo = at("p.csv");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let err = predict::run(&args(&root, &run, &fifo, &["--resume"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a regular file"), "{err}");
}

/// `--resume` never empties a file that is not an output of this command: one without a
/// line end (a header cut short is the only such output), or one whose first line is not
/// the header.
#[test]
fn resume_leaves_a_file_that_is_not_an_output_alone() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    let root = dir.path().join("scans");
    scan(&root.join("a.nii"), [16, 32, 32], None);
    let notes = dir.path().join("notes.txt");
    for text in ["my thesis notes, no line end", "my thesis notes\nsecond line\n"] {
        std::fs::write(&notes, text).unwrap();
        let err = predict::run(&args(&root, &run, &notes, &["--resume"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("header") || err.contains("no record"), "{text:?}: {err}");
        assert_eq!(std::fs::read_to_string(&notes).unwrap(), text);
    }
    // A header cut short by an interruption is resumed.
    let cut = dir.path().join("cut.csv");
    std::fs::write(&cut, "path,p").unwrap();
    let resumed = predict::run(&args(&root, &run, &cut, &["--resume"])).unwrap();
    assert_eq!(resumed.scored, 1);
    assert_eq!(rows(&cut).len(), 1);
}

/// An output whose lines end in CR alone holds rows for the CSV reader that resumes it: its
/// record is checked like any other's, so other settings are refused.
#[test]
fn an_output_with_other_line_ends_is_checked_like_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    let root = dir.path().join("scans");
    scan(&root.join("a.nii"), [16, 32, 32], None);
    let out = dir.path().join("cr.csv");
    predict::run(&args(&root, &run, &out, &["--sliding-window", "--aggregate", "max"])).unwrap();
    let text = std::fs::read_to_string(&out).unwrap().replace('\n', "\r") + "\n";
    std::fs::write(&out, &text).unwrap();
    let other = ["--sliding-window", "--aggregate", "mean", "--resume"];
    let err = predict::run(&args(&root, &run, &out, &other)).unwrap_err().to_string();
    assert!(err.contains("other settings"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
}

/// Rows with errors are dropped on resume by rewriting the file under a name of its own: a
/// file of the old fixed name (`<out>.resume-tmp`) beside it is not touched, and none is left.
#[test]
fn a_resume_rewrite_touches_no_other_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    let root = dir.path().join("scans");
    scan(&root.join("a.nii"), [16, 32, 32], None);
    std::fs::write(root.join("b.nii"), b"not a scan").unwrap();
    let out = dir.path().join("r.csv");
    predict::run(&args(&root, &run, &out, &[])).unwrap();
    assert!(rows(&out).iter().any(|r| !r.last().unwrap().is_empty()), "b.nii fails");
    let mine = dir.path().join("r.resume-tmp");
    std::fs::write(&mine, "my own data").unwrap();
    predict::run(&args(&root, &run, &out, &["--resume"])).unwrap();
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "my own data");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}
