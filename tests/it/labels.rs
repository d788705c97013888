//! `data::LabelledScans`: label files, their seeded stratified split, and every kind of bad
//! file as its typed error naming the line.

use std::path::Path;

use resnet3d::Error;
use resnet3d::data::{LabelledScans, Split};

/// A folder with empty scan files `s0.nii.gz`.. `s{n-1}.nii.gz` (only their existence is
/// checked here) and `labels.csv` holding `csv`.
fn folder(n: usize, csv: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("scans")).unwrap();
    for i in 0..n {
        std::fs::write(dir.path().join("scans").join(format!("s{i}.nii.gz")), b"").unwrap();
    }
    std::fs::write(dir.path().join("labels.csv"), csv).unwrap();
    dir
}

fn csv_of(labels: &[usize]) -> String {
    let mut s = String::from("path,label\n");
    for (i, l) in labels.iter().enumerate() {
        s += &format!("scans/s{i}.nii.gz,{l}\n");
    }
    s
}

#[test]
fn a_label_file_with_splits_is_read_as_written() {
    // Columns in another order, an extra column, quoting, spaces, a blank line.
    let csv = "label, patient ,path,split\n\
               1,p1,\"scans/s0.nii.gz\",train\n\
               0,p2, scans/s1.nii.gz ,VALID\n\
               \n\
               2,p3,scans/s2.nii.gz,test\n\
               0,p4,scans/s3.nii.gz,validation\n";
    let dir = folder(4, csv);
    let scans = LabelledScans::from_csv(dir.path().join("labels.csv"), 0.2, 1).unwrap();
    assert_eq!(scans.classes(), 3);
    let got: Vec<(usize, Split, usize)> = scans.scans().iter().map(|s| (s.label, s.split, s.line)).collect();
    assert_eq!(
        got,
        [
            (1, Split::Train, 2),
            (0, Split::Valid, 3),
            (2, Split::Test, 5),
            (0, Split::Valid, 6)
        ]
    );
    assert_eq!(scans.scans()[1].path, dir.path().join("scans/s1.nii.gz"));
    assert_eq!(scans.class_counts(Split::Valid), [2, 0, 0]);
}

#[test]
fn without_a_split_column_each_class_gives_its_share_to_validation() {
    let labels: Vec<usize> = (0..16).map(|i| usize::from(i >= 10)).collect(); // 10 of 0, 6 of 1
    let dir = folder(16, &csv_of(&labels));
    let csv = dir.path().join("labels.csv");
    let a = LabelledScans::from_csv(&csv, 0.2, 42).unwrap();
    assert_eq!(a.class_counts(Split::Valid), [2, 1]); // round(0.2 * 10), round(0.2 * 6)
    assert_eq!(a.class_counts(Split::Train), [8, 5]);
    assert_eq!(a.split(Split::Test).count(), 0);
    // The same seed, the same split; the file's order is kept.
    let b = LabelledScans::from_csv(&csv, 0.2, 42).unwrap();
    assert_eq!(a.scans(), b.scans());
    assert!(a.scans().windows(2).all(|w| w[0].line < w[1].line));
    // Another seed draws other scans (these two seeds differ on this file).
    let c = LabelledScans::from_csv(&csv, 0.2, 43).unwrap();
    let valid = |s: &LabelledScans| s.split(Split::Valid).map(|x| x.line).collect::<Vec<_>>();
    assert_ne!(valid(&a), valid(&c));
    // A small class still gets one validation scan, and keeps one for training.
    let dir = folder(5, &csv_of(&[0, 0, 0, 1, 1]));
    let s = LabelledScans::from_csv(dir.path().join("labels.csv"), 0.1, 0).unwrap();
    assert_eq!(s.class_counts(Split::Valid), [1, 1]);
    assert_eq!(s.class_counts(Split::Train), [2, 1]);
}

/// The line and message of an `InvalidLabels` error.
fn invalid(csv_path: &Path, share: f64) -> (Option<usize>, String) {
    match LabelledScans::from_csv(csv_path, share, 0) {
        Err(Error::InvalidLabels { row, what, path }) => {
            assert_eq!(path, csv_path);
            (row, what)
        }
        other => panic!("expected InvalidLabels, got {other:?}"),
    }
}

#[test]
fn every_bad_label_file_is_a_typed_error_naming_the_line() {
    let cases: [(&str, Option<usize>, &str); 9] = [
        (
            "path,label\nscans/s0.nii.gz,0\nscans/missing.nii.gz,1\n",
            Some(3),
            "not found",
        ),
        (
            "path,label\nscans/s0.nii.gz,zero\nscans/s1.nii.gz,1\n",
            Some(2),
            "not a class number",
        ),
        (
            "path,label\nscans/s0.nii.gz,-1\nscans/s1.nii.gz,1\n",
            Some(2),
            "not a class number",
        ),
        ("path,label\nscans/s0.nii.gz,0\n,1\n", Some(3), "no `path` value"),
        (
            "path,label,split\nscans/s0.nii.gz,0,train\nscans/s1.nii.gz,1,holdout\n",
            Some(3),
            "none of train",
        ),
        (
            "file,class\nscans/s0.nii.gz,0\n",
            Some(1),
            "must name the columns `path` and `label`",
        ),
        ("path,label\n", None, "no scans"),
        (
            "path,label\nscans/s0.nii.gz,0\nscans/s1.nii.gz,0\n",
            None,
            "at least two classes",
        ),
        (
            "path,label\nscans/s0.nii.gz,0\nscans/s1.nii.gz,2\n",
            None,
            "no scan has label 1",
        ),
    ];
    for (csv, line, message) in cases {
        let dir = folder(2, csv);
        let (row, what) = invalid(&dir.path().join("labels.csv"), 0.2);
        assert_eq!(row, line, "{csv:?}: {what}");
        assert!(what.contains(message), "{csv:?}: {what}");
    }
    let dir = folder(2, &csv_of(&[0, 1]));
    let (row, what) = invalid(&dir.path().join("labels.csv"), 1.5);
    assert_eq!(row, None);
    assert!(what.contains("outside 0..1"), "{what}");
    let absent = dir.path().join("absent.csv");
    assert!(matches!(
        LabelledScans::from_csv(&absent, 0.2, 0),
        Err(Error::FileNotFound { path }) if path == absent
    ));
}
