//! The readers take paths: each input is written to a per-process file with the extension
//! the reader expects, then read back.

use std::path::PathBuf;

pub fn read(data: &[u8], extension: &str) -> Result<resnet3d::Weights, resnet3d::Error> {
    let path = PathBuf::from(std::env::temp_dir()).join(format!("resnet3d-fuzz-{}.{extension}", std::process::id()));
    std::fs::write(&path, data).expect("the fuzzer's temp file");
    resnet3d::Weights::from_file(&path)
}
