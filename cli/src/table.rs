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
        let existing = match std::fs::metadata(path) {
            Ok(meta) if !meta.is_file() => {
                return Err(fail("is not a regular file; give a file path for the CSV".into()));
            }
            Ok(meta) if meta.len() == 0 => None,
            Ok(_) if !resume => {
                return Err(fail(
                    "exists; pass --resume to continue it, or give another --out".into(),
                ));
            }
            Ok(_) => Some(std::fs::read(path).map_err(|e| fail(e.to_string()))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(fail(e.to_string())),
        };
        // Whole lines only: an interrupted write leaves at most one partial line at the end.
        let bytes = existing.unwrap_or_default();
        let complete = bytes.iter().rposition(|&c| c == b'\n').map_or(0, |last| last + 1);
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
            // Rows with an error are dropped: the file is rewritten beside itself, then renamed.
            let temporary = path.with_extension("resume-tmp");
            let mut writer = csv::Writer::from_path(&temporary).map_err(|e| fail(e.to_string()))?;
            writer.write_record(header).map_err(|e| fail(e.to_string()))?;
            for record in &kept {
                writer.write_record(record).map_err(|e| fail(e.to_string()))?;
            }
            writer.flush().map_err(|e| fail(e.to_string()))?;
            drop(writer);
            std::fs::rename(&temporary, path).map_err(|e| fail(e.to_string()))?;
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
