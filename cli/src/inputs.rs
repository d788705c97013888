//! What `predict` scores: the scans named by a label CSV, found in a folder, or one scan; and
//! a job array's share of them ([`Shard`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// One scan to score.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Input {
    /// The scan as the output names it: the path as a label CSV writes it, or the path
    /// below the input folder with `/` between parts. The same on every machine that mounts
    /// the archive, wherever it mounts it.
    pub key: String,
    /// Where it is read from.
    pub path: PathBuf,
    /// The DICOM series to read from the folder `path` (a label CSV's `series` column);
    /// `None`: the folder's one series, or a NIfTI file.
    pub series: Option<String>,
}

/// Folders below the input that are searched at most.
const MAX_DEPTH: usize = 32;

/// The scans of `input`, sorted by [`key`](Input::key) (bytewise), each once.
///
/// - a `.csv` file: the rows of its `path` column, relative to the file's folder, and of its
///   `series` column if it has one (a `SeriesInstanceUID` picking one series of a folder
///   that holds several; the key is then `path#UID`); other columns, e.g. `label` and
///   `split`, are ignored;
/// - a `.nii`/`.nii.gz` file: that scan;
/// - a folder: every `.nii`/`.nii.gz` file below it, and every folder below it (or itself)
///   whose files include a DICOM file (`DICM` at byte 128, or a `.dcm` name), as one series.
///   Folder links are not followed (no cycles); file links are.
pub fn list(input: &Path) -> Result<Vec<Input>, String> {
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mut inputs = if input.is_dir() {
        let mut found = Vec::new();
        walk(input, input, 0, &mut found)?;
        found
    } else if name.ends_with(".csv") {
        from_csv(input)?
    } else if is_nifti(&name) {
        vec![Input {
            key: input
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: input.to_path_buf(),
            series: None,
        }]
    } else if !input.exists() {
        return Err(format!("{}: no such file or folder", input.display()));
    } else {
        return Err(format!(
            "{}: give a label CSV (a `path` column), a .nii/.nii.gz file or a folder of scans",
            input.display()
        ));
    };
    // Every row is one line of the output: line breaks in a key are written as spaces, so
    // they are spaces in the key that resuming compares too.
    for input in &mut inputs {
        input.key = input.key.replace(['\n', '\r'], " ");
    }
    inputs.sort();
    // The same scan listed twice is scored once; two scans under one key (names that are
    // not UTF-8, or differ only in line breaks) cannot be told apart in the output.
    inputs.dedup_by(|a, b| a.key == b.key && a.path == b.path);
    if let Some(pair) = inputs.windows(2).find(|p| p[0].key == p[1].key) {
        return Err(format!(
            "{} and {} would both be written as `{}`; rename one (names must be UTF-8 without line breaks to be told apart)",
            pair[0].path.display(),
            pair[1].path.display(),
            pair[0].key
        ));
    }
    if inputs.is_empty() {
        return Err(format!(
            "{}: no scans found (NIfTI files .nii/.nii.gz, or folders of DICOM files)",
            input.display()
        ));
    }
    Ok(inputs)
}

fn is_nifti(lower_name: &str) -> bool {
    lower_name.ends_with(".nii") || lower_name.ends_with(".nii.gz")
}

fn from_csv(path: &Path) -> Result<Vec<Input>, String> {
    let fail = |what: String| format!("{}: {what}", path.display());
    let mut reader = csv::Reader::from_path(path).map_err(|e| fail(e.to_string()))?;
    let headers = reader.headers().map_err(|e| fail(e.to_string()))?.clone();
    let column = headers.iter().position(|h| h.trim() == "path").ok_or_else(|| {
        fail(format!(
            "no `path` column (the header is `{}`)",
            headers.iter().collect::<Vec<_>>().join(",")
        ))
    })?;
    let series_column = headers.iter().position(|h| h.trim() == "series");
    let base = path.parent().unwrap_or(Path::new("."));
    let mut inputs = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.map_err(|e| fail(format!("line {}: {e}", row + 2)))?;
        let file = record.get(column).unwrap_or("").trim();
        if file.is_empty() {
            return Err(fail(format!("line {}: the path is empty", row + 2)));
        }
        let series = series_column
            .and_then(|c| record.get(c))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        inputs.push(Input {
            key: match &series {
                Some(uid) => format!("{file}#{uid}"),
                None => file.to_string(),
            },
            path: base.join(file),
            series,
        });
    }
    Ok(inputs)
}

fn walk(root: &Path, dir: &Path, depth: usize, found: &mut Vec<Input>) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "{}: more than {MAX_DEPTH} folders deep; give a folder nearer the scans",
            dir.display()
        ));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut entries: Vec<_> = entries
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    let key = |path: &Path| {
        let relative = path.strip_prefix(root).unwrap_or(path);
        let parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        match parts.is_empty() {
            // The input folder itself is a series: named by its own name.
            true => root
                .file_name()
                .map_or_else(|| ".".into(), |n| n.to_string_lossy().into_owned()),
            false => parts.join("/"),
        }
    };
    let mut series = false;
    for entry in &entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_ascii_lowercase();
        if name.starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(|e| format!("{}: {e}", path.display()))?;
        if kind.is_dir() {
            walk(root, &path, depth + 1, found)?;
        } else if is_nifti(&name) && path.is_file() {
            found.push(Input {
                key: key(&path),
                path,
                series: None,
            });
        } else if !series && path.is_file() && (name.ends_with(".dcm") || has_dicom_magic(&path)) {
            series = true;
        }
    }
    if series {
        found.push(Input {
            key: key(dir),
            path: dir.to_path_buf(),
            series: None,
        });
    }
    Ok(())
}

/// `DICM` at byte 128: the DICOM file preamble.
fn has_dicom_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head[128..] == b"DICM")
}

/// Share `index` of `count` of the inputs (`--shard I/N`, `0 <= I < N`): the inputs whose
/// key's FNV-1a hash (64 bits, over its UTF-8 bytes) is `I` modulo `N`. The shares of
/// `0/N .. N-1/N` are disjoint and together exactly the inputs; a scan's share depends on
/// its key alone, not on the order a folder lists, the machine, or which other scans
/// are there (adding scans to an archive moves none between shards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This share, from 0.
    pub index: u64,
    /// The number of shares.
    pub count: u64,
}

impl Shard {
    /// Whether `key` is in this share.
    pub fn contains(&self, key: &str) -> bool {
        fnv1a(key.as_bytes()) % self.count == self.index
    }
}

/// The hash shards and map names use: FNV-1a of the key's UTF-8 bytes.
pub fn key_hash(key: &str) -> u64 {
    fnv1a(key.as_bytes())
}

/// FNV-1a's 64-bit offset basis.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bits: offset basis 0xcbf29ce484222325, prime 0x100000001b3.
fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(FNV_OFFSET, bytes)
}

/// FNV-1a continued from `hash` over `bytes` (a file hashed in pieces).
pub(crate) fn fnv1a_from(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("shard `{s}`: {why}; write I/N with 0 <= I < N, e.g. 0/4 .. 3/4");
        let (i, n) = s.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let index: u64 = i.trim().parse().map_err(|_| bad("I is not a whole number"))?;
        let count: u64 = n.trim().parse().map_err(|_| bad("N is not a whole number"))?;
        if count == 0 {
            return Err(bad("N must be at least 1"));
        }
        if index >= count {
            return Err(bad("I must be below N (shards count from 0)"));
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_the_published_function() {
        // The reference values of the FNV test suite (Fowler, Noll, Vo).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shards_partition_the_keys() {
        let keys: Vec<String> = (0..1000).map(|i| format!("patient{i:04}/ct.nii.gz")).collect();
        for n in [1u64, 2, 3, 7] {
            let mut owner = vec![None; keys.len()];
            for i in 0..n {
                let shard = Shard { index: i, count: n };
                for (k, key) in keys.iter().enumerate() {
                    if shard.contains(key) {
                        assert!(owner[k].is_none(), "{key} in two shards");
                        owner[k] = Some(i);
                    }
                }
            }
            assert!(owner.iter().all(Option::is_some), "every key in a shard of {n}");
            // Balanced within a few standard deviations.
            for i in 0..n {
                let size = owner.iter().filter(|&&o| o == Some(i)).count() as f64;
                let expect = 1000.0 / n as f64;
                assert!(
                    (size - expect).abs() < 4.0 * expect.sqrt() + 1.0,
                    "shard {i}/{n}: {size}"
                );
            }
        }
    }

    #[test]
    fn shard_syntax() {
        assert_eq!("2/4".parse::<Shard>().unwrap(), Shard { index: 2, count: 4 });
        for bad in ["3/2", "2/2", "1/0", "a/2", "1", "-1/2", "1/2/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
