//! Any bytes given to the DICOM series reader as one slice of a folder (after the 128-byte
//! preamble and `DICM`, so that every input reaches dicom-rs and the crate's checks): a typed
//! error or a volume, never a panic, an abort or an allocation beyond what the file holds.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's panic hook aborts before unwinding; the crate contains panics inside
    // dicom-rs (it catches them per file, data::dicom::guarded), so let them unwind to that
    // guard. A panic anywhere else still reaches libfuzzer-sys's own catch and aborts.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let dir = std::env::temp_dir().join(format!("resnet3d-fuzz-dicom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("the fuzzer's temp folder");
    let mut bytes = vec![0u8; 128];
    bytes.extend_from_slice(b"DICM");
    bytes.extend_from_slice(data);
    std::fs::write(dir.join("slice.dcm"), bytes).expect("the fuzzer's temp file");
    let _ = resnet3d::preprocess::Volume::from_dicom(&dir);
});
