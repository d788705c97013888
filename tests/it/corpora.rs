//! CI's smoke run of every fuzz target: the committed corpora (`fuzz/corpus/<target>/`, the
//! seeds and what the fuzz runs kept, minimised) replayed through the targets' own entry
//! points (`fuzz/fuzz_targets/entry.rs`, the same functions the fuzz binaries call), each input
//! ending in a result or a typed error, never a panic, within a memory bound.

use std::path::PathBuf;

use resnet3d::Error;

use crate::fuzz_entry as entry;
use crate::tracking::peak_with_rayon_here;

type Target = fn(&[u8]) -> Result<(), Error>;

/// Every target, with the least number of its corpus inputs that must read without error
/// (the seeds that are valid files).
const TARGETS: [(&str, Target, usize); 9] = [
    ("pth", |d| entry::weight_file(d, "pth"), 1),
    ("safetensors", |d| entry::weight_file(d, "safetensors"), 1),
    ("onnx", |d| entry::weight_file(d, "onnx"), 1),
    ("mapping", entry::mapping, 1),
    ("dicom", entry::dicom, 1),
    ("dicom_series", entry::dicom_series, 1),
    ("nifti", entry::nifti, 3),
    ("nifti_gz", entry::nifti_gz, 3),
    ("labels", entry::labels, 2),
];

/// Every input of every corpus: a result or a typed error, and at most 64 MiB plus 64 times
/// its size allocated at once while reading it (rayon's work counted).
#[test]
fn every_corpus_input_is_read_or_refused_within_memory() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target, readable) in TARGETS {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .map(|entry| entry.expect("entry").path())
            .collect();
        files.sort();
        assert!(files.len() >= 2, "{name}: {} inputs", files.len());
        let mut read = 0;
        for file in &files {
            let data = std::fs::read(file).expect("corpus file");
            let (result, peak) = peak_with_rayon_here(|| target(&data));
            read += usize::from(result.is_ok());
            let bound = (64 << 20) + 64 * data.len();
            assert!(peak <= bound, "{name} {}: peak {peak} bytes", file.display());
        }
        assert!(read >= readable, "{name}: {read} of {} inputs read", files.len());
    }
}
