//! Any bytes given to the safetensors reader (`entry.rs`): a typed error or a result, never a
//! panic, an abort, a hang or an allocation beyond the limits and what the file holds.
#![no_main]

#[path = "entry.rs"]
mod entry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = entry::weight_file(data, "safetensors");
});
