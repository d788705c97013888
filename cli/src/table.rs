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
    /// Opens `path` for rows under `header`, with the keys (first column) of the rows it
    /// already holds.
    ///
    /// Without `resume` the file must not exist: a finished or running job's output is never
    /// overwritten. With `resume` an existing file must have `header` exactly (the same
    /// network's classes, the same columns); a last line cut off by an interruption is
    /// dropped, and its scan scored again.
    pub(crate) fn open(path: &Path, header: &[String], resume: bool) -> Result<(Table, BTreeSet<String>), String> {
        let fail = |what: String| format!("{}: {what}", path.display());
        let existing = match std::fs::read(path) {
            Ok(_) if !resume => {
                return Err(fail(
                    "exists; pass --resume to continue it, or give another --out".into(),
                ));
            }
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(fail(e.to_string())),
        };
        // Whole lines only: an interrupted write leaves at most one partial line at the end.
        let complete = existing
            .as_deref()
            .and_then(|b| b.iter().rposition(|&c| c == b'\n'))
            .map_or(0, |last| last + 1);
        let mut done = BTreeSet::new();
        if complete > 0 {
            let bytes = existing.as_deref().unwrap_or_default();
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
                done.insert(record.get(0).unwrap_or_default().to_string());
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| fail(e.to_string()))?;
        file.set_len(complete as u64).map_err(|e| fail(e.to_string()))?;
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
        ["path", "p0", "p1"].map(String::from).to_vec()
    }

    #[test]
    fn a_cut_line_is_dropped_and_the_header_checked() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("scores.csv");
        {
            let (mut table, done) = Table::open(&out, &header(), false).unwrap();
            assert!(done.is_empty());
            table.write(&["a.nii".into(), "0.25".into(), "0.75".into()]).unwrap();
            table
                .write(&["b, \"quoted\"\nname".into(), "0.5".into(), "0.5".into()])
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
        table.write(&["c.nii".into(), "0.125".into(), "0.875".into()]).unwrap();
        drop(table);
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            text,
            "path,p0,p1\na.nii,0.25,0.75\n\"b, \"\"quoted\"\" name\",0.5,0.5\nc.nii,0.125,0.875\n"
        );
        // Other columns: refused.
        let other = ["path", "p0", "p1", "p2"].map(String::from).to_vec();
        assert!(Table::open(&out, &other, true).unwrap_err().contains("other columns"));
    }
}
