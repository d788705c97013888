//! Any bytes given to the safetensors reader: a typed error or weights, never a panic.
#![no_main]

#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = common::read(data, "safetensors");
});
