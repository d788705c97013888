//! Any file that reads as weights, mapped onto a small ResNet-18 (width 2, as the fixtures):
//! inflation must give a model or a typed error, never a panic. The first byte picks the
//! format, the rest is the file.
#![no_main]

#[path = "common.rs"]
mod common;

use resnet3d::burn::tensor::Device;
use resnet3d::{ResNet3dConfig, inflate_from_2d};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&kind, file)) = data.split_first() else {
        return;
    };
    let extension = ["pth", "safetensors", "onnx"][usize::from(kind) % 3];
    if let Ok(weights) = common::read(file, extension) {
        let config = ResNet3dConfig::resnet18()
            .with_width(2)
            .with_in_channels(1 + usize::from(kind) % 4);
        let _ = inflate_from_2d(&weights, &config, &Device::flex());
    }
});
