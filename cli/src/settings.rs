//! What a `predict` output was made with, kept beside it in `<out>.json`: the network (a hash
//! of its record, and its configuration), the pipeline, the class count and the settings
//! that change the numbers.
//! `--resume` continues only an output made the same way, and the sidecar is locked while a
//! run writes, so that two runs (a job resubmitted while the first still runs) never write
//! one file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Fields of the sidecar that may differ between a run and the one it resumes: where the
/// model was read from (a run folder may move), and which version wrote the file.
const INFORMATIVE: [&str; 2] = ["model", "written_by"];

/// The sidecar of an output, locked for as long as this value lives (the operating system
/// releases the lock when the process ends, however it ends).
#[derive(Debug)]
pub(crate) struct Sidecar {
    file: File,
    path: PathBuf,
    /// The output CSV, its links resolved: where the rows go.
    out: PathBuf,
    /// The record it holds (`None`: the file was empty), as read when locked or last written.
    before: Option<Map<String, Value>>,
    /// Whether this run made the file (removed again if the run is refused).
    created: bool,
}

impl Sidecar {
    /// Opens and locks `<out>.json`, `out` taken with its links resolved (so that one CSV
    /// reached under two names has one lock). An existing sidecar must be one this command
    /// wrote: any other file of that name is left alone and the run refused.
    ///
    /// # Errors
    /// When another process holds the lock (it is writing `out`), `out` is a link to nothing,
    /// the sidecar is not a regular file (a link, a pipe, a device) or cannot be opened, or it
    /// exists and is not a record written by `resnet3d predict`.
    pub(crate) fn lock(out: &Path) -> Result<Sidecar, String> {
        let out = resolved(out)?;
        let mut name = out.as_os_str().to_owned();
        name.push(".json");
        let path = PathBuf::from(name);
        let fail = |what: String| format!("{}: {what}", path.display());
        let not_regular = || {
            fail(
                "is not a regular file (a link, a pipe, a folder or a device); it is left as it is: move it, or give another --out"
                    .into(),
            )
        };
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if !meta.is_file() => return Err(not_regular()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e.to_string())),
        }
        // Made here only if it does not exist (never a file another run made meanwhile).
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        let (mut file, created) = match options.clone().create_new(true).open(&path) {
            Ok(file) => (file, true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                (options.open(&path).map_err(|e| fail(e.to_string()))?, false)
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        // What was opened, not what the name showed a moment before.
        if !file.metadata().map_err(|e| fail(e.to_string()))?.is_file() {
            return Err(not_regular());
        }
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => format!(
                "{}: another resnet3d predict is writing it (it holds {}); wait for that run to end, or give another --out",
                out.display(),
                path.display()
            ),
            std::fs::TryLockError::Error(e) => fail(format!("cannot be locked: {e}")),
        })?;
        let mut bytes = Vec::new();
        (&mut file)
            .take(MAX_RECORD + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| fail(e.to_string()))?;
        // Empty: made by this command (by this run, or by one that ended before it wrote).
        let before = match bytes.is_empty() {
            true => None,
            false => Some(
                ours(&bytes)
                    .filter(|_| bytes.len() as u64 <= MAX_RECORD)
                    .ok_or_else(|| {
                        fail(
                    "exists and is not a record written by resnet3d predict (the settings an output was made with); \
                     it is left as it is: move it, or give another --out (a damaged record cannot be resumed from)"
                        .into(),
                )
                    })?,
            ),
        };
        Ok(Sidecar {
            file,
            path,
            out,
            before,
            created,
        })
    }

    /// The output CSV with its links resolved: the path every later step writes.
    pub(crate) fn out(&self) -> &Path {
        &self.out
    }

    /// Refuses to resume an output that holds scores (a row below its header, as the CSV
    /// reader that resumes it reads it) unless its record says it was made as `now` would
    /// make it, naming each field that differs; an output with scores and no record is
    /// refused too.
    pub(crate) fn check_resume(&self, now: &Map<String, Value>) -> Result<(), String> {
        let out = self.out.as_path();
        if !crate::table::has_rows(out)? {
            return Ok(());
        }
        let Some(before) = &self.before else {
            return Err(format!(
                "{} holds scores but no record of what made them ({} is missing or empty), so it cannot be resumed; \
                 give another --out, or remove it to start again",
                out.display(),
                self.path.display()
            ));
        };
        let now = canonical(now)?;
        let differ: Vec<String> = now
            .iter()
            .filter(|(key, _)| !INFORMATIVE.contains(&key.as_str()))
            .filter(|(key, value)| before.get(*key) != Some(value))
            .map(|(key, value)| {
                let was = before.get(key).map_or_else(|| "nothing".to_string(), Value::to_string);
                format!("{key}: {was} then, {value} now")
            })
            .collect();
        if differ.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} was made with other settings ({}; recorded in {}); resume with the same network and settings, or give another --out",
            out.display(),
            differ.join("; "),
            self.path.display()
        ))
    }

    /// Records `now` as the output's settings. The file is overwritten in place (never
    /// emptied first: its lock is on this file, which a rename would replace), and not
    /// at all when it already holds the same record.
    pub(crate) fn write(&mut self, now: &Map<String, Value>) -> Result<(), String> {
        let fail = |e: std::io::Error| format!("{}: {e}", self.path.display());
        let now = canonical(now)?;
        if self.before.as_ref() == Some(&now) {
            return Ok(());
        }
        let mut text = serde_json::to_string_pretty(&now).map_err(|e| e.to_string())?;
        text.push('\n');
        self.file.rewind().map_err(fail)?;
        self.file.write_all(text.as_bytes()).map_err(fail)?;
        self.file.set_len(text.len() as u64).map_err(fail)?;
        self.file.sync_data().map_err(fail)?;
        self.before = Some(now);
        Ok(())
    }

    /// Called when the run is refused before it wrote anything: a sidecar this run made is
    /// removed again.
    pub(crate) fn abandon(self) {
        if self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The most bytes a record takes (a few kB are written); anything longer is not one.
const MAX_RECORD: u64 = 1 << 20;

/// `out` with its links resolved: the file's own path if it exists, else its folder's
/// resolved path and its name. A link to nothing is refused: writing through it would put
/// the rows at its target and the record beside the link.
fn resolved(out: &Path) -> Result<PathBuf, String> {
    let fail = |e: std::io::Error| format!("{}: {e}", out.display());
    if out.exists() {
        return std::fs::canonicalize(out).map_err(fail);
    }
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(format!(
            "{} is a link to a file that does not exist; give the path of the CSV itself",
            out.display()
        ));
    }
    let name = out
        .file_name()
        .ok_or_else(|| format!("{}: give a file path for the CSV", out.display()))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok(std::fs::canonicalize(parent).map_err(fail)?.join(name))
}

/// The record in `bytes` if it is one this command wrote: a JSON object whose `written_by`
/// names resnet3d.
fn ours(bytes: &[u8]) -> Option<Map<String, Value>> {
    let record = serde_json::from_slice::<Value>(bytes).ok()?.as_object()?.clone();
    let by = record.get("written_by")?.as_str()?;
    by.starts_with("resnet3d ").then_some(record)
}

/// `now` as it reads back from its own text: the record is compared in that form, since a
/// JSON number does not always parse back to the bits it was printed from (an `f32`
/// setting such as 0.98 became another `f64` and a run could not resume itself).
fn canonical(now: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let text = serde_json::to_string(now).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// FNV-1a (64 bits) of a file's bytes, as 16 hex digits: which record a run used.
pub(crate) fn file_hash(path: &Path) -> Result<String, String> {
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = File::open(path).map_err(fail)?;
    let mut hash = crate::inputs::FNV_OFFSET;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(fail)?;
        if n == 0 {
            return Ok(format!("{hash:016x}"));
        }
        hash = crate::inputs::fnv1a_from(hash, &buf[..n]);
    }
}
