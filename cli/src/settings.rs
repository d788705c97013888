//! What a `predict` output was made with, kept beside it in `<out>.json`: the network (a hash
//! of its record), the pipeline, the class count and the settings that change the numbers.
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
    /// What it held when it was locked (`None`: nothing readable).
    before: Option<Map<String, Value>>,
    /// Whether this run made the file (removed again if the run is refused).
    created: bool,
}

impl Sidecar {
    /// Opens and locks `<out>.json`.
    ///
    /// # Errors
    /// When another process holds the lock (it is writing `out`), or the file cannot be
    /// opened.
    pub(crate) fn lock(out: &Path) -> Result<Sidecar, String> {
        let mut name = out.as_os_str().to_owned();
        name.push(".json");
        let path = PathBuf::from(name);
        let fail = |what: String| format!("{}: {what}", path.display());
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| fail(e.to_string()))?;
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => format!(
                "{}: another resnet3d predict is writing it (it holds {}); wait for that run to end, or give another --out",
                out.display(),
                path.display()
            ),
            std::fs::TryLockError::Error(e) => fail(format!("cannot be locked: {e}")),
        })?;
        let mut text = String::new();
        // Unreadable or not JSON: as if absent (the output is then checked by its columns).
        let before = file
            .read_to_string(&mut text)
            .ok()
            .and_then(|_| serde_json::from_str::<Value>(&text).ok())
            .and_then(|v| v.as_object().cloned());
        Ok(Sidecar {
            file,
            path,
            before,
            created,
        })
    }

    /// Refuses to resume an output whose recorded settings differ from `now` in a field
    /// that changes the numbers, naming each such field.
    pub(crate) fn check_resume(&self, out: &Path, now: &Map<String, Value>) -> Result<(), String> {
        let Some(before) = &self.before else { return Ok(()) };
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

    /// Records `now` as the output's settings.
    pub(crate) fn write(&mut self, now: &Map<String, Value>) -> Result<(), String> {
        let fail = |e: std::io::Error| format!("{}: {e}", self.path.display());
        let text = serde_json::to_string_pretty(now).map_err(|e| e.to_string())?;
        self.file.set_len(0).map_err(fail)?;
        self.file.rewind().map_err(fail)?;
        self.file.write_all(text.as_bytes()).map_err(fail)?;
        self.file.write_all(b"\n").map_err(fail)?;
        self.file.sync_data().map_err(fail)
    }

    /// Called when the run is refused before it wrote anything: a sidecar this run made is
    /// removed again.
    pub(crate) fn abandon(self) {
        if self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }
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
