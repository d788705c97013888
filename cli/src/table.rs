//! The CSV `predict` writes, one complete line per scan, and the rows a resumed run skips.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::path::Path;

/// An output CSV open for appending rows.
#[derive(Debug)]
pub(crate) struct Table {
    writer: csv::Writer<File>,
}

impl Table {
    /// Opens `path` for rows under `header` (whose last column is `error`), with the keys
    /// (first column) of the rows it already holds.
    ///
    /// Without `resume` the file must not exist (or be empty): a finished or running job's
    /// output is never overwritten. With `resume` an existing file must have `header` exactly
    /// (the same network's classes, the same columns); a last line cut off by an interruption
    /// is dropped and its scan scored again, and so are the rows that carry an error (their
    /// scans are tried again: a file fixed or a share mounted since). `path` must be a
    /// regular file where it exists (not a pipe or a device).
    pub(crate) fn open(path: &Path, header: &[String], resume: bool) -> Result<(Table, BTreeSet<String>), String> {
        let fail = |what: String| format!("{}: {what}", path.display());
        let bytes = match existing(path)? {
            Some(_) if !resume => {
                return Err(fail(
                    "exists; pass --resume to continue it, or give another --out".into(),
                ));
            }
            Some(bytes) => bytes,
            None => Vec::new(),
        };
        // Whole lines only: an interrupted write leaves at most one partial line at the end.
        let complete = complete_lines(&bytes).len();
        if complete == 0 && !bytes.is_empty() && !header_line(header).starts_with(&bytes) {
            // Not a header cut short: some other file, which resuming would empty.
            return Err(fail(
                "does not start with this run's header line, so it is not an output of this command; it is left as it is: give another --out"
                    .into(),
            ));
        }
        let mut done = BTreeSet::new();
        let mut kept: Vec<csv::StringRecord> = Vec::new();
        let mut retried = 0;
        if complete > 0 {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .from_reader(&bytes[..complete]);
            let found: Vec<String> = reader
                .headers()
                .map_err(|e| fail(e.to_string()))?
                .iter()
                .map(str::to_string)
                .collect();
            if found != header {
                return Err(fail(format!(
                    "was written with other columns ({}), not this run's ({}): another network or other settings; give another --out",
                    found.join(","),
                    header.join(",")
                )));
            }
            for record in reader.records() {
                let record = record.map_err(|e| fail(format!("cannot be read back to resume: {e}")))?;
                if record.get(header.len() - 1).is_some_and(|error| !error.is_empty()) {
                    retried += 1;
                    continue;
                }
                done.insert(record.get(0).unwrap_or_default().to_string());
                kept.push(record);
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| fail(e.to_string()))?;
        if retried == 0 {
            // The rows as they are: cut the partial line, if any, and append.
            file.set_len(complete as u64).map_err(|e| fail(e.to_string()))?;
        } else {
            // Rows with an error are dropped: the file is rewritten beside itself under a
            // name no other file has, then renamed over it.
            let (temporary, made) = temporary_beside(path).map_err(|e| fail(e.to_string()))?;
            let mut writer = csv::Writer::from_writer(made);
            writer.write_record(header).map_err(|e| fail(e.to_string()))?;
            for record in &kept {
                writer.write_record(record).map_err(|e| fail(e.to_string()))?;
            }
            writer.flush().map_err(|e| fail(e.to_string()))?;
            drop(writer);
            if let Err(e) = std::fs::rename(&temporary, path) {
                let _ = std::fs::remove_file(&temporary);
                return Err(fail(e.to_string()));
            }
        }
        drop(file);
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| fail(e.to_string()))?;
        let mut table = Table {
            writer: csv::WriterBuilder::new().from_writer(file),
        };
        if complete == 0 {
            table.write(header).map_err(fail)?;
        }
        Ok((table, done))
    }

    /// Appends one row and hands it to the operating system at once, so that a killed run
    /// leaves complete rows (and at most one partial line, which a resumed run drops).
    /// Line breaks inside a field are written as spaces: every row is one line.
    pub(crate) fn write(&mut self, row: &[String]) -> Result<(), String> {
        let row = row.iter().map(|field| field.replace(['\n', '\r'], " "));
        self.writer.write_record(row).map_err(|e| e.to_string())?;
        self.writer.flush().map_err(|e| e.to_string())
    }
}

/// The bytes of the output `path` if it exists and is not empty; an error if it is not a
/// regular file (a pipe or a device would block or never end).
fn existing(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let fail = |what: String| format!("{}: {what}", path.display());
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err(fail("is not a regular file; give a file path for the CSV".into())),
        Ok(meta) if meta.len() == 0 => Ok(None),
        Ok(_) => Ok(Some(std::fs::read(path).map_err(|e| fail(e.to_string()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// `bytes` up to the end of its last line.
fn complete_lines(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.iter().rposition(|&c| c == b'\n').map_or(0, |last| last + 1)]
}

/// The header as the writer writes it.
fn header_line(header: &[String]) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let _ = writer.write_record(header);
    writer.into_inner().unwrap_or_default()
}

/// Whether the output `path` holds a row below its header, read as [`Table::open`] reads it
/// to resume (complete lines, the CSV reader's line ends).
pub(crate) fn has_rows(path: &Path) -> Result<bool, String> {
    let Some(bytes) = existing(path)? else {
        return Ok(false);
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(complete_lines(&bytes));
    Ok(reader.records().next().is_some())
}

/// A new file beside `path`, named after it and this process, created here (never one that
/// exists).
fn temporary_beside(path: &Path) -> std::io::Result<(std::path::PathBuf, File)> {
    let mut n = 0u32;
    loop {
        let mut name = path.file_name().unwrap_or_default().to_owned();
        name.push(format!(".resume-{}-{n}.tmp", std::process::id()));
        let candidate = path.with_file_name(name);
        match OpenOptions::new().write(true).create_new(true).open(&candidate) {
            Ok(file) => return Ok((candidate, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<String> {
        ["path", "p0", "error"].map(String::from).to_vec()
    }

    #[test]
    fn a_cut_line_is_dropped_and_the_header_checked() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("scores.csv");
        {
            let (mut table, done) = Table::open(&out, &header(), false).unwrap();
            assert!(done.is_empty());
            table.write(&["a.nii".into(), "0.25".into(), String::new()]).unwrap();
            table
                .write(&["b, \"quoted\"\nname".into(), "0.5".into(), String::new()])
                .unwrap();
        }
        // Without --resume an existing output is refused.
        assert!(Table::open(&out, &header(), false).unwrap_err().contains("--resume"));
        // An interrupted third row.
        let mut text = std::fs::read_to_string(&out).unwrap();
        text.push_str("c.nii,0.1");
        std::fs::write(&out, &text).unwrap();
        let (mut table, done) = Table::open(&out, &header(), true).unwrap();
        assert_eq!(done.into_iter().collect::<Vec<_>>(), ["a.nii", "b, \"quoted\" name"]);
        table.write(&["c.nii".into(), "0.125".into(), String::new()]).unwrap();
        drop(table);
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            text,
            "path,p0,error\na.nii,0.25,\n\"b, \"\"quoted\"\" name\",0.5,\nc.nii,0.125,\n"
        );
        // A row with an error is tried again: dropped on resume, its key not done.
        let header_e = ["path", "p0", "error"].map(String::from).to_vec();
        let out_e = dir.path().join("errors.csv");
        std::fs::write(&out_e, "path,p0,error\na.nii,0.5,\nb.nii,,cannot read\nc.nii,0.25,\n").unwrap();
        let (table, done) = Table::open(&out_e, &header_e, true).unwrap();
        drop(table);
        assert_eq!(done.into_iter().collect::<Vec<_>>(), ["a.nii", "c.nii"]);
        assert_eq!(
            std::fs::read_to_string(&out_e).unwrap(),
            "path,p0,error\na.nii,0.5,\nc.nii,0.25,\n"
        );
        // An empty file is a new one; a folder or device is refused.
        std::fs::write(&out_e, "").unwrap();
        assert!(Table::open(&out_e, &header_e, false).is_ok());
        assert!(
            Table::open(dir.path(), &header_e, true)
                .unwrap_err()
                .contains("not a regular file")
        );
        // Other columns: refused.
        let other = ["path", "p0", "p1", "error"].map(String::from).to_vec();
        assert!(Table::open(&out, &other, true).unwrap_err().contains("other columns"));
    }
}
