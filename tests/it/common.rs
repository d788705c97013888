//! Fixture access and comparison helpers shared by the tests.

use std::path::{Path, PathBuf};

use resnet3d::burn::tensor::{Device, Tensor, TensorData};
use resnet3d::{BlockKind, DepthPadding, Features, FrozenResNet3d, Inflation, ResNet3d, ResNet3dConfig};
use serde_json::Value;

/// The repository's fixtures, from the library's tests or the command's (cli/).
pub fn fixtures() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = if manifest.ends_with("cli") {
        manifest.parent().unwrap_or(manifest)
    } else {
        manifest
    };
    root.join("tests/fixtures")
}

pub fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json is JSON")
}

/// The input formula of make_fixtures.py: x[i] = sin(0.61 i) + 0.5 cos(0.173 i), flat index.
pub fn pattern<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    let len: usize = shape.iter().product();
    let values: Vec<f32> = (0..len)
        .map(|i| i as f64)
        .map(|i| ((0.61 * i).sin() + 0.5 * (0.173 * i).cos()) as f32)
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// The configuration a case of cases.json describes.
pub fn config_of(case: &Value) -> ResNet3dConfig {
    let c = &case["config"];
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{k}")) as usize;
    let four = |k: &str| {
        let v: Vec<usize> = c[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        [v[0], v[1], v[2], v[3]]
    };
    let block = match c["block"].as_str().unwrap() {
        "basic" => BlockKind::Basic,
        _ => BlockKind::Bottleneck,
    };
    ResNet3dConfig::new(block, four("layers"))
        .with_width(n("width"))
        .with_in_channels(n("in_channels"))
        .with_num_classes(c["num_classes"].as_u64().map(|k| k as usize))
        .with_stem_depth_kernel(n("stem_depth_kernel"))
        .with_stem_depth_stride(n("stem_depth_stride"))
        .with_max_pool(c["max_pool"].as_bool().unwrap())
        .with_max_pool_depth_kernel(n("max_pool_depth_kernel"))
        .with_max_pool_depth_stride(n("max_pool_depth_stride"))
        .with_block_depth_kernel(n("block_depth_kernel"))
        .with_stage_depth_strides(four("stage_depth_strides"))
        .with_depth_padding(match c["depth_padding"].as_str().unwrap() {
            "Zeros" => DepthPadding::Zeros,
            _ => DepthPadding::Replicate,
        })
        .with_inflation(match c["inflation"].as_str().unwrap() {
            "Average" => Inflation::Average,
            _ => Inflation::Center,
        })
        .with_stride_in_1x1(c["stride_in_1x1"].as_bool().unwrap())
}

/// A reference tensor of a fixture file, with its shape.
pub fn reference(file: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("{name} in {}: {e}", file.display()));
    let values = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

/// `max |got - expected| / max |expected|`: the error relative to the reference's scale.
pub fn rel_error(got: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(got.len(), expected.len(), "length");
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    got.iter().zip(expected).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

pub fn values<const D: usize>(t: Tensor<D>) -> (Vec<usize>, Vec<f32>) {
    let dims = t.dims().to_vec();
    (dims, t.into_data().try_to_vec::<f32>().unwrap())
}

/// The CPU backends every integration test runs on.
#[allow(deprecated)] // burn-ndarray is deprecated in Burn 0.22 but still shipped; we support it
pub fn cpu_devices() -> Vec<(&'static str, Device)> {
    vec![("flex", Device::flex()), ("ndarray", Device::ndarray())]
}

/// The tolerance of every comparison with PyTorch: max abs error / max abs reference.
pub const TOLERANCE: f32 = 1e-4;

/// Burn's ndarray backend: its `conv3d` is Burn's own, an implementation independent of the
/// crate's kernels (which the flex model and the frozen network share).
#[allow(deprecated)] // burn-ndarray is deprecated in Burn 0.22 but still shipped; we support it
pub fn ndarray() -> Device {
    Device::ndarray()
}

/// `model` moved to [`ndarray`]: the same weights, run by Burn's own operations.
pub fn on_ndarray(model: &resnet3d::ResNet3d) -> resnet3d::ResNet3d {
    resnet3d::burn::module::Module::to_device(model.clone(), &ndarray())
}

pub fn input_shape(case: &Value) -> [usize; 5] {
    let v: Vec<usize> = case["input_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    [v[0], v[1], v[2], v[3], v[4]]
}

/// A network under test: the Burn model, or the same frozen for CPU inference.
pub trait Net {
    fn features(&self, x: Tensor<5>) -> Features;
    fn logits(&self, x: Tensor<5>) -> Tensor<2>;
}

impl Net for ResNet3d {
    fn features(&self, x: Tensor<5>) -> Features {
        ResNet3d::features(self, x)
    }
    fn logits(&self, x: Tensor<5>) -> Tensor<2> {
        self.forward(x)
    }
}

impl Net for FrozenResNet3d {
    fn features(&self, x: Tensor<5>) -> Features {
        FrozenResNet3d::features(self, x).unwrap()
    }
    fn logits(&self, x: Tensor<5>) -> Tensor<2> {
        self.forward(x).unwrap()
    }
}

/// Runs one case and returns the largest relative error over its outputs.
pub fn check_case(case: &Value, model: &impl Net, device: &Device) -> f32 {
    let name = case["name"].as_str().unwrap();
    let file = fixtures().join("cases").join(format!("{name}.safetensors"));
    let x = pattern(input_shape(case), device);
    let features = model.features(x.clone());
    let head = if case["config"]["num_classes"].is_null() {
        "features"
    } else {
        "logits"
    };
    let outputs = [
        ("stem", values(features.stem)),
        ("layer1", values(features.layer1)),
        ("layer2", values(features.layer2)),
        ("layer3", values(features.layer3)),
        ("layer4", values(features.layer4)),
        (head, values(model.logits(x))),
    ];
    let mut worst = 0f32;
    for (key, (shape, got)) in outputs {
        let (ref_shape, expected) = reference(&file, key);
        assert_eq!(shape, ref_shape, "{name}: shape of {key}");
        let err = rel_error(&got, &expected);
        assert!(err <= TOLERANCE, "{name}: {key} rel. error {err:e} > {TOLERANCE:e}");
        worst = worst.max(err);
    }
    worst
}

/// A 5-D tensor of a fixture file, on `device`.
pub fn fixture_tensor(file: &Path, name: &str, device: &Device) -> Tensor<5> {
    let (shape, values) = reference(file, name);
    let dims: [usize; 5] = shape
        .try_into()
        .unwrap_or_else(|s| panic!("{name}: shape {s:?} is not 5-D"));
    Tensor::from_data(TensorData::new(values, dims), device)
}

/// `got` against the file's tensor `name`: same shape, error within [`TOLERANCE`]; the error.
pub fn check_tensor<const D: usize>(file: &Path, name: &str, got: Tensor<D>, what: &str) -> f32 {
    let (shape, expected) = reference(file, name);
    let (dims, got) = values(got);
    assert_eq!(dims, shape, "{what} {name}");
    let err = rel_error(&got, &expected);
    assert!(err <= TOLERANCE, "{what} {name}: rel. error {err:.2e}");
    err
}

/// The stem and the four stages of `features` against the file's `stem`, `layer1` ..
/// `layer4`; the largest error.
pub fn check_stages(file: &Path, features: Features, what: &str) -> f32 {
    named_stages(features)
        .into_iter()
        .map(|(name, got)| check_tensor(file, name, got, what))
        .fold(0.0, f32::max)
}

/// The stem and the four stages with their names.
pub fn named_stages(f: Features) -> [(&'static str, Tensor<5>); 5] {
    [
        ("stem", f.stem),
        ("layer1", f.layer1),
        ("layer2", f.layer2),
        ("layer3", f.layer3),
        ("layer4", f.layer4),
    ]
}

/// Every stage of `features` has the shape `shapes[stage]` (a JSON list) gives.
pub fn assert_stage_shapes(features: Features, shapes: &Value, what: &str) {
    for (stage, got) in named_stages(features) {
        let expected: Vec<usize> = shapes[stage]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no shape of {stage}"))
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got.dims().to_vec(), expected, "{what} {stage}");
    }
}

/// A ResNet-18 (width 4) whose class-1 logit is, by construction, the mean over `layer4` of
/// `ReLU(x - 0.5)` at the stem's sampled voxels: the stem's kernel is a centre tap on channel
/// 0, its BatchNorm shifts by -0.5, every residual branch is zero (blocks pass their input
/// on), the projection shortcuts carry channel `c` to `c`, and the head reads channel 0.
/// Only voxels brighter than 0.5 (the blob) can raise the logit: the background (below 0.3)
/// cannot.
pub fn blob_detector(device: &Device) -> (ResNet3d, ResNet3dConfig) {
    let template = resnet3d::Weights::from_file(fixtures().join("checkpoints/r18_w4.pth")).unwrap();
    let mut weights = resnet3d::Weights::new();
    for (name, tensor) in template.iter() {
        let shape = tensor.shape.clone();
        let mut values = vec![0.0f32; tensor.values.len()];
        // BatchNorm as identity: scale 1 (main branch and shortcut), variance 1, shift 0.
        let is_norm = name.contains("bn") || name.contains("downsample.1.");
        if name.ends_with("running_var") || (is_norm && name.ends_with("weight")) {
            values.fill(1.0);
        }
        if name == "bn1.bias" {
            values.fill(-0.5);
        }
        if name == "conv1.weight" {
            values[3 * 7 + 3] = 1.0; // [0, 0, 3, 3]: output 0 <- input channel 0, centre.
        }
        if name.ends_with("downsample.0.weight") {
            for c in 0..shape[1] {
                values[c * shape[1] + c] = 1.0; // [c, c, 0, 0]
            }
        }
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        weights.insert(name, shape, values).unwrap();
    }
    let channels = template.get("fc.weight").unwrap().shape[1];
    let mut fc = vec![0.0f32; 2 * channels];
    fc[0] = -1.0; // class 0: against the blob
    fc[channels] = 1.0; // class 1: for it
    weights.insert("fc.weight", vec![2, channels], fc).unwrap();
    weights.insert("fc.bias", vec![2], vec![0.0, 0.0]).unwrap();
    let config = ResNet3dConfig::resnet18()
        .with_width(4)
        .with_in_channels(1)
        .with_num_classes(Some(2))
        .with_max_pool(false)
        .with_stage_strides([1; 4])
        .with_stage_depth_strides([1; 4])
        .with_inflation(resnet3d::Inflation::Center);
    (resnet3d::inflate_from_2d(&weights, &config, device).unwrap(), config)
}

/// The loss and each named gradient of the crate's op against Burn's reference within
/// [`TOLERANCE`], and no reference gradient all zero (it would prove nothing).
pub fn check_gradients(loss: (&[f32], &[f32]), names: &[&str], grads: &[Vec<f32>], expected: &[Vec<f32>]) {
    let (got, want) = loss;
    assert!(rel_error(got, want) <= TOLERANCE, "loss {got:?} vs {want:?}");
    assert_eq!((names.len(), grads.len()), (expected.len(), expected.len()));
    for ((what, got), expected) in names.iter().zip(grads).zip(expected) {
        let err = rel_error(got, expected);
        assert!(err <= TOLERANCE, "{what} gradient: rel. error {err:.2e}");
        assert!(
            expected.iter().any(|v| *v != 0.0),
            "{what}: a zero gradient proves nothing"
        );
    }
}
