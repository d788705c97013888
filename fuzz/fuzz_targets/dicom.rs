//! Any bytes given to the DICOM series reader as the one slice of a folder (`entry.rs`): a
//! typed error or a result, never a panic, an abort, a hang or an allocation beyond the limits
//! and what the file holds.
#![no_main]

#[path = "entry.rs"]
mod entry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's panic hook aborts before unwinding; the crate catches panics inside
    // dicom-rs per file (data::dicom::guarded), so let them unwind to that guard. A panic
    // anywhere else still reaches libfuzzer-sys's own catch and aborts.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let _ = entry::dicom(data);
});
