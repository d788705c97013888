//! The label file of a training run: which scans, which class, which split.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::rng::SplitMix64;
use crate::error::{Error, Result};

/// Which part of the data a scan belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// Trained on.
    Train,
    /// Measured after each epoch (early stopping, the best checkpoint).
    Valid,
    /// Held out: measured once, at the end.
    Test,
}

impl Split {
    fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "train" | "training" => Some(Split::Train),
            "valid" | "validation" | "val" => Some(Split::Valid),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
}

/// One row of a label file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledScan {
    /// The scan: a NIfTI file (`.nii`, `.nii.gz`) or a folder of one DICOM series, resolved
    /// against the CSV's folder.
    pub path: PathBuf,
    /// Its class, `0..classes`.
    pub label: usize,
    /// Its split: the CSV's, or the seeded one.
    pub split: Split,
    /// Its line in the CSV (1 is the header), for messages.
    pub line: usize,
}

/// The scans of a label file, every row checked.
///
/// The file is a CSV with a header naming at least `path` and `label` (any order, any other
/// columns ignored) and optionally `split`. Paths are relative to the CSV's folder (or
/// absolute); labels are integers `0..classes`, every class with at least one scan, at least
/// two classes. Without a `split` column, [`from_csv`](Self::from_csv) draws a validation set
/// of the given share from each class (at least one scan of each class with two or more),
/// with a seeded shuffle that does not depend on any other crate's random numbers: the same
/// file and seed give the same split on every machine and release.
///
/// ```
/// # use resnet3d::data::{LabelledScans, Split};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// for name in ["a.nii.gz", "b.nii.gz", "c.nii.gz", "d.nii.gz"] {
///     std::fs::write(dir.path().join(name), b"")?;
/// }
/// let csv = dir.path().join("labels.csv");
/// std::fs::write(&csv, "path,label\na.nii.gz,0\nb.nii.gz,0\nc.nii.gz,1\nd.nii.gz,1\n")?;
/// let scans = LabelledScans::from_csv(&csv, 0.5, 7)?;
/// assert_eq!(scans.classes(), 2);
/// assert_eq!(scans.split(Split::Valid).count(), 2); // one of each class
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LabelledScans {
    scans: Vec<LabelledScan>,
    classes: usize,
    source: PathBuf,
}

impl LabelledScans {
    /// Reads and checks the label file at `path`. Without a `split` column, a share
    /// `valid_share` (in `0..1`) of each class goes to validation, drawn with `seed`.
    ///
    /// # Errors
    /// [`Error::FileNotFound`] / [`Error::Io`] for the file itself; [`Error::InvalidLabels`]
    /// naming the line for a row that is not `path,label[,split]` as described, a scan that
    /// does not exist, a label that is not an integer, a split that is not train/valid/test;
    /// and naming the file for a missing header column, no rows, a single class, a class
    /// without scans, or a `valid_share` outside `0..1`.
    pub fn from_csv(path: impl AsRef<Path>, valid_share: f64, seed: u64) -> Result<Self> {
        let path = path.as_ref();
        let invalid = |row: Option<usize>, what: String| Error::InvalidLabels {
            path: path.to_path_buf(),
            row,
            what,
        };
        if !(0.0..1.0).contains(&valid_share) {
            return Err(invalid(None, format!("validation share {valid_share} is outside 0..1")));
        }
        let text = std::fs::read(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => Error::FileNotFound {
                path: path.to_path_buf(),
            },
            _ => Error::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let folder = path.parent().unwrap_or(Path::new("."));
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .flexible(true)
            .from_reader(text.as_slice());
        let header = reader
            .headers()
            .map_err(|e| invalid(Some(1), format!("the header cannot be read: {e}")))?
            .clone();
        let column = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
        let (Some(path_col), Some(label_col)) = (column("path"), column("label")) else {
            return Err(invalid(
                Some(1),
                format!(
                    "the header must name the columns `path` and `label` (and optionally `split`); it is `{}`",
                    header.iter().collect::<Vec<_>>().join(",")
                ),
            ));
        };
        let split_col = column("split");
        let mut scans = Vec::new();
        // The file's own line numbers: the reader skips blank lines, and reports a record that
        // follows one as starting on it, so lines are counted here from the record's bytes.
        let (mut counted, mut lines_before) = (0usize, 0usize);
        let mut line_at = |byte: usize| {
            let start = byte + text[byte..].iter().take_while(|&&b| b == b'\n' || b == b'\r').count();
            lines_before += text[counted..start].iter().filter(|&&b| b == b'\n').count();
            counted = start;
            lines_before + 1
        };
        for record in reader.records() {
            let record = record.map_err(|e| {
                let line = e.position().map(|p| p.line() as usize);
                invalid(line, format!("not a CSV row: {e}"))
            })?;
            let Some(position) = record.position() else {
                return Err(invalid(None, "the CSV reader lost its place".into()));
            };
            let line = line_at(position.byte() as usize);
            if record.iter().all(str::is_empty) {
                continue;
            }
            let field = |col: usize, name: &str| {
                record
                    .get(col)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| invalid(Some(line), format!("no `{name}` value")))
            };
            let scan = folder.join(field(path_col, "path")?);
            if !scan.is_file() && !scan.is_dir() {
                return Err(invalid(
                    Some(line),
                    format!(
                        "scan {} not found (paths are relative to the CSV's folder)",
                        scan.display()
                    ),
                ));
            }
            let text = field(label_col, "label")?;
            let label = text.parse::<usize>().map_err(|_| {
                invalid(
                    Some(line),
                    format!("label `{text}` is not a class number (an integer from 0)"),
                )
            })?;
            let split = match split_col {
                Some(col) => {
                    let text = field(col, "split")?;
                    Split::parse(text)
                        .ok_or_else(|| invalid(Some(line), format!("split `{text}` is none of train, valid, test")))?
                }
                None => Split::Train,
            };
            scans.push(LabelledScan {
                path: scan,
                label,
                split,
                line,
            });
        }
        if scans.is_empty() {
            return Err(invalid(None, "no scans: the file has a header but no rows".into()));
        }
        // Classes from the labels present (sorted, distinct): the first gap is a class
        // without scans. Nothing is sized by a label's value, which a file chooses (a label
        // near usize::MAX overflowed `max + 1`, 10^15 asked for 8 PB of counts).
        let mut present: Vec<usize> = scans.iter().map(|s| s.label).collect();
        present.sort_unstable();
        present.dedup();
        if let Some(empty) = present.iter().enumerate().position(|(i, &label)| label != i) {
            let top = present[present.len() - 1];
            return Err(invalid(
                None,
                format!(
                    "no scan has label {empty}, though labels go up to {top}: number the classes 0..{} without gaps",
                    present.len()
                ),
            ));
        }
        let classes = present.len();
        if classes < 2 {
            return Err(invalid(
                None,
                "every scan has label 0: a classifier needs at least two classes".into(),
            ));
        }
        if split_col.is_none() {
            stratified_split(&mut scans, classes, valid_share, seed);
        }
        Ok(Self {
            scans,
            classes,
            source: path.to_path_buf(),
        })
    }

    /// The label file they were read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Every scan, in the file's order.
    pub fn scans(&self) -> &[LabelledScan] {
        &self.scans
    }

    /// The scans of one split, in the file's order.
    pub fn split(&self, split: Split) -> impl Iterator<Item = &LabelledScan> {
        self.scans.iter().filter(move |s| s.split == split)
    }

    /// The number of classes (the largest label plus one).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Scans per class in one split.
    pub fn class_counts(&self, split: Split) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        self.split(split).for_each(|s| counts[s.label] += 1);
        counts
    }
}

/// Puts `round(share * n)` scans of each class of `n` into validation (at least one where
/// the class has two or more and the share is not 0), chosen by a seeded shuffle.
fn stratified_split(scans: &mut [LabelledScan], classes: usize, share: f64, seed: u64) {
    let mut by_class: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, s) in scans.iter().enumerate() {
        by_class.entry(s.label).or_default().push(i);
    }
    let mut rng = SplitMix64(seed);
    for class in 0..classes {
        let Some(members) = by_class.get_mut(&class) else {
            continue;
        };
        // Fisher-Yates with SplitMix64: fixed here, so the split never changes with a
        // dependency's version.
        rng.shuffle(members);
        let n = members.len();
        let mut valid = (share * n as f64).round() as usize;
        if share > 0.0 && n >= 2 {
            valid = valid.clamp(1, n - 1);
        }
        for &i in &members[..valid.min(n)] {
            scans[i].split = Split::Valid;
        }
    }
}
