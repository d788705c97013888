//! The same PyTorch comparisons on Burn's wgpu backend (feature `wgpu`). Without a GPU this
//! runs on Mesa's software Vulkan driver (lavapipe): correct, slow, so only a few small cases.
//! Tolerance: the same 1e-4 of the reference's max as on the CPU backends.

use resnet3d::ResNet3d;
use resnet3d::burn::tensor::{Device, DeviceKind};

use crate::common::*;

fn device() -> Device {
    Device::wgpu(DeviceKind::DefaultDevice)
}

#[test]
fn inflated_networks_match_pytorch_on_wgpu() {
    let device = device();
    let manifest = manifest();
    let wanted = ["r18_cubic_avg_c3", "r18_replicate_avg_c1_nohead", "r50_i3d_center_c4"];
    for case in manifest["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| wanted.contains(&c["name"].as_str().unwrap()))
    {
        let checkpoint = &manifest["checkpoints"][case["checkpoint"].as_str().unwrap()];
        let path = fixtures().join(checkpoint["file"].as_str().unwrap());
        let model = ResNet3d::from_imagenet(&path, &config_of(case), &device).unwrap();
        let err = check_case(case, &model, &device);
        println!("wgpu {:<34} max rel. error {err:.2e}", case["name"].as_str().unwrap());
    }
}

#[test]
fn a_fused_onnx_export_matches_pytorch_on_wgpu() {
    let device = device();
    let case = &manifest()["onnx"][0];
    let path = fixtures().join(case["files"][0]["file"].as_str().unwrap());
    let model = ResNet3d::from_imagenet(&path, &config_of(case), &device).unwrap();
    let err = check_case(case, &model, &device);
    println!("wgpu {} max rel. error {err:.2e}", path.display());
}

#[test]
fn a_medicalnet_checkpoint_matches_medicalnets_code_on_wgpu() {
    // Dilated convolutions and parameter-free shortcuts through Burn's wgpu kernels.
    let err = crate::medicalnet::check_on(&device(), "medicalnet18_w4", 18);
    println!("wgpu medicalnet18_w4 max rel. error {err:.2e}");
}
