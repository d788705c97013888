//! Files from strangers: code-running pickles, truncated and bit-flipped files. Every one
//! gives a typed error or a model, never a panic, and nothing in a file is ever run.

use std::path::Path;

use resnet3d::{Error, Weights};

use crate::common::*;

#[test]
fn pickles_that_would_run_code_are_refused_and_run_nothing() {
    let hostile = &manifest()["hostile"];
    for kind in ["os_system", "eval"] {
        let marker = Path::new(hostile[kind]["marker"].as_str().unwrap());
        let _ = std::fs::remove_file(marker);
        let result = Weights::from_file(fixtures().join(hostile[kind]["file"].as_str().unwrap()));
        assert!(!marker.exists(), "{kind}: the pickle ran code");
        let err = result.expect_err(kind);
        assert!(
            matches!(err, Error::Corrupt { .. } | Error::Unsupported { .. }),
            "{kind}: {err}"
        );
    }
}

/// A few deterministic pseudo-random numbers (xorshift), so that failures reproduce.
fn numbers(seed: u64, n: usize) -> Vec<u64> {
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        })
        .collect()
}

const SAMPLES: [&str; 4] = [
    "checkpoints/r18_w2.pth",
    "checkpoints/r34_w2.safetensors",
    "onnx/r18_ts_fold.onnx",
    "onnx/r18_dynamo_noopt.onnx",
];

#[test]
fn truncated_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    for sample in SAMPLES {
        let bytes = std::fs::read(fixtures().join(sample)).unwrap();
        let name = Path::new(sample).file_name().unwrap();
        let path = dir.path().join(name);
        let mut cuts: Vec<usize> = vec![0, 1, 4, 8, 9, 16, 64, 100, 512, 4096, bytes.len() - 1];
        cuts.extend(
            numbers(bytes.len() as u64, 40)
                .iter()
                .map(|r| (*r as usize) % bytes.len()),
        );
        for cut in cuts.into_iter().filter(|&c| c < bytes.len()) {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            match Weights::from_file(&path) {
                Err(Error::Corrupt { .. } | Error::UnknownFormat { .. } | Error::Unsupported { .. }) => {}
                Err(other) => panic!("{sample} cut at {cut}: unexpected error kind: {other}"),
                Ok(_) => panic!("{sample} cut at {cut} of {}: loaded", bytes.len()),
            }
        }
    }
}

#[test]
fn flipped_bytes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (mut loaded, mut refused) = (0, 0);
    for sample in SAMPLES {
        let original = std::fs::read(fixtures().join(sample)).unwrap();
        let path = dir.path().join(Path::new(sample).file_name().unwrap());
        for (k, r) in numbers(original.len() as u64 + 7, 60).into_iter().enumerate() {
            let mut bytes = original.clone();
            // Half the flips land in the first 1 KiB, where the headers and the pickle are.
            let at = if k % 2 == 0 {
                (r as usize) % bytes.len().min(1024)
            } else {
                (r as usize) % bytes.len()
            };
            bytes[at] ^= 1 << (r % 8);
            std::fs::write(&path, &bytes).unwrap();
            // A flipped weight is still a valid file; a flipped header must be a typed error.
            match Weights::from_file(&path) {
                Ok(_) => loaded += 1,
                Err(_) => refused += 1,
            }
        }
    }
    println!("bit flips: {loaded} still valid, {refused} refused");
    assert!(refused > 0 && loaded > 0);
}

#[test]
fn a_safetensors_header_declaring_more_than_the_file_holds_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.safetensors");
    let header = br#"{"conv1.weight":{"dtype":"F32","shape":[1099511627776,1],"data_offsets":[0,16]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 16]);
    std::fs::write(&path, &bytes).unwrap();
    let err = Weights::from_file(&path).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

#[test]
fn grouped_and_wide_state_dicts_are_unsupported_with_what_was_found() {
    use resnet3d::burn::tensor::Device;
    use resnet3d::{ResNet3dConfig, inflate_from_2d};
    let config = ResNet3dConfig::resnet50().with_width(4).with_num_classes(Some(10));
    let base = Weights::from_file(fixtures().join("checkpoints/r50_w4.pth")).unwrap();

    // ResNeXt: the 3x3 of a bottleneck sees 4 / 2 input channels per output (2 groups).
    let mut grouped = base.clone();
    grouped
        .insert("layer1.0.conv2.weight", vec![4, 2, 3, 3], vec![0.1; 72])
        .unwrap();
    let err = inflate_from_2d(&grouped, &config, &Device::flex()).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(
        err.to_string().contains("grouped convolution") && err.to_string().contains("2 groups"),
        "{err}"
    );

    // Wide ResNet: the bottleneck's first 1x1 has twice the channels.
    let mut wide = base;
    wide.insert("layer1.0.conv1.weight", vec![8, 4, 1, 1], vec![0.1; 32])
        .unwrap();
    let err = inflate_from_2d(&wide, &config, &Device::flex()).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("wide bottleneck"), "{err}");
}

#[test]
fn allocation_bombs_are_refused_within_a_bound_of_the_file_size() {
    // The tracker sees the reader's allocations: a real checkpoint costs at least its size.
    let real = fixtures().join("checkpoints/r50_w4.pth");
    let real_len = std::fs::metadata(&real).unwrap().len() as usize;
    let (weights, peak) = crate::tracking::peak_during(|| Weights::from_file(&real));
    weights.unwrap();
    assert!(
        peak >= real_len / 2,
        "tracked {peak} bytes reading a {real_len}-byte file"
    );

    // Each declares a 256 MiB tensor (or a 96 MiB pickle) in a file of at most 262 kB. The
    // bound: 8 times the file plus 1 MiB (what the reader accepts), plus 1 MiB of bookkeeping.
    for name in ["zip_bomb_storage", "zip_bomb_pickle", "expanded_view"] {
        let path = fixtures().join(format!("hostile/{name}.pth"));
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        let (result, peak) = crate::tracking::peak_during(|| Weights::from_file(&path));
        let err = result.expect_err(name);
        assert!(matches!(err, Error::Corrupt { .. }), "{name}: {err}");
        let bound = 8 * len + (2 << 20);
        assert!(
            peak <= bound,
            "{name}: {peak} bytes allocated for a {len}-byte file (bound {bound})"
        );
        eprintln!("{name}: {len}-byte file refused after {peak} bytes allocated: {err}");
    }
}

#[test]
fn variants_of_other_layouts_are_unsupported_with_what_was_found() {
    use resnet3d::burn::tensor::Device;
    use resnet3d::{ResNet3dConfig, inflate_from_2d};
    let config = ResNet3dConfig::resnet18().with_width(4).with_num_classes(Some(10));
    let base = Weights::from_file(fixtures().join("checkpoints/r18_w4.pth")).unwrap();
    let edit = |change: &dyn Fn(&mut Weights)| {
        let mut weights = base.clone();
        change(&mut weights);
        inflate_from_2d(&weights, &config, &Device::flex())
            .map(|_| ())
            .unwrap_err()
    };
    let deep_stem = edit(&|w| {
        let stem = w.remove("conv1.weight").unwrap();
        w.insert("conv1.0.weight", vec![2, 3, 3, 3], vec![0.1; 54]).unwrap();
        w.insert("conv1.3.weight", stem.shape, stem.values).unwrap();
    });
    let squeeze_excite = edit(&|w| {
        w.insert("layer2.1.se.fc1.weight", vec![2, 8, 1, 1], vec![0.1; 16])
            .unwrap()
    });
    let attention = edit(&|w| {
        w.insert("layer3.0.attn.qkv.weight", vec![48, 16], vec![0.1; 768])
            .unwrap()
    });
    let resnet_d = edit(&|w| {
        for stage in 2..=4 {
            // The shortcut's BatchNorm moves from 1 to 2 before its conv moves from 0 to 1.
            for part in ["1.weight", "1.bias", "1.running_mean", "1.running_var", "0.weight"] {
                let old = format!("layer{stage}.0.downsample.{part}");
                let (module, param) = part.split_once('.').unwrap();
                let new = format!(
                    "layer{stage}.0.downsample.{}.{param}",
                    module.parse::<usize>().unwrap() + 1
                );
                if let Some(t) = w.remove(&old) {
                    w.insert(new, t.shape, t.values).unwrap();
                }
            }
        }
    });
    let shortcut_a = edit(&|w| {
        let names: Vec<String> = w
            .names()
            .filter(|n| n.contains(".downsample."))
            .map(String::from)
            .collect();
        for name in names {
            w.remove(&name);
        }
    });
    for (err, found) in [
        (deep_stem, "deep stem: `conv1.0.weight`"),
        (
            squeeze_excite,
            "squeeze-and-excitation modules in the blocks (`layer2.1.se.fc1.weight`)",
        ),
        (
            attention,
            "attention modules in the blocks (`layer3.0.attn.qkv.weight`)",
        ),
        (resnet_d, "average-pool shortcut (ResNet-D"),
    ] {
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.starts_with("unsupported: ") && message.contains(found),
            "{message}"
        );
    }
    // Parameter-free shortcuts are a setting: the error says which.
    match shortcut_a {
        Error::InvalidConfig {
            field: "shortcut",
            reason,
        } => assert!(reason.contains("Shortcut::ZeroPad"), "{reason}"),
        other => panic!("expected InvalidConfig on shortcut, got {other}"),
    }
}

/// A file whose shapes (not its bytes) ask for the memory: a typed error naming what was
/// wrong, after allocating at most a bound of the file's size.
fn refused_within_bound(path: &Path, kind: fn(&Error) -> bool, says: &str) {
    let len = std::fs::metadata(path).unwrap().len() as usize;
    let (result, peak) = crate::tracking::peak_during(|| Weights::from_file(path));
    let err = result.expect_err(says);
    let bound = 8 * len + (2 << 20);
    eprintln!("{}: {err} ({peak} bytes allocated)", path.display());
    assert!(kind(&err), "{}: {err}", path.display());
    assert!(err.to_string().contains(says), "{err}");
    assert!(peak <= bound, "{}: {peak} bytes for a {len}-byte file", path.display());
}

#[test]
fn sizes_written_in_an_onnx_graph_are_typed_errors() {
    let hostile = fixtures().join("hostile");
    // A kernel [2^40, 0, 7, 7]: no values, 2^40 claimed channels (a fused BatchNorm of that width).
    refused_within_bound(
        &hostile.join("onnx_zero_kernel.onnx"),
        |e| matches!(e, Error::Corrupt { .. }),
        "kernel of shape [1099511627776, 0, 7, 7]",
    );
    // A bias Expand()ed to 2^40 values.
    refused_within_bound(
        &hostile.join("onnx_large_expand.onnx"),
        |e| matches!(e, Error::Corrupt { .. }),
        "cannot broadcast to [1099511627776]",
    );
    // To 2^20 x 2^20 x 2^20 (a product that overflows): onnx-ir's type inference refuses a
    // bias of rank 3 before the mapper sees it.
    refused_within_bound(
        &hostile.join("onnx_huge_expand.onnx"),
        |e| matches!(e, Error::Corrupt { .. }),
        "bias tensor of rank 1",
    );
    // A MatMul head of shape [features, 0].
    refused_within_bound(
        &hostile.join("onnx_empty_head.onnx"),
        |e| matches!(e, Error::Corrupt { .. }),
        "fc: weight of shape [16, 0]",
    );
}

#[test]
fn a_deep_chain_of_constant_nodes_is_refused_without_exhausting_the_stack() {
    use std::io::Read;
    // 30,000 Cast nodes in front of a bias (gzipped in the repository).
    let gz = std::fs::File::open(fixtures().join("hostile/onnx_cast_chain.onnx.gz")).unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.onnx");
    std::fs::write(&path, bytes).unwrap();
    let err = Weights::from_file(&path).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("more than 32 nested nodes"), "{err}");
}

#[test]
fn a_stem_kernel_with_no_input_channels_is_a_wrong_shape_in_every_format() {
    use resnet3d::burn::tensor::Device;
    use resnet3d::{ResNet3d, ResNet3dConfig};
    for file in ["zero_in_stem.pth", "zero_in_stem.safetensors"] {
        for in_channels in [1, 3, 4] {
            let config = ResNet3dConfig::resnet18()
                .with_width(2)
                .with_in_channels(in_channels)
                .with_num_classes(Some(10));
            let path = fixtures().join("hostile").join(file);
            let err = ResNet3d::from_imagenet(&path, &config, &Device::flex()).unwrap_err();
            assert!(
                matches!(&err, Error::WrongShape { name, found, .. } if name == "conv1.weight" && found == &[2, 0, 7, 7]),
                "{file}, {in_channels} channel(s): {err}"
            );
        }
    }
}

#[test]
fn a_spacing_that_asks_for_too_many_voxels_is_refused() {
    use resnet3d::preprocess::{MAX_VOXELS, Volume};
    // 10^12 voxels: one voxel of 10 m resampled to 1 mm.
    let volume = Volume::new(vec![0.0], [1, 1, 1], [1e4; 3]).unwrap();
    let (result, peak) = crate::tracking::peak_during(|| volume.resample([1.0; 3]));
    let err = result.unwrap_err();
    assert!(matches!(err, Error::InvalidVolume { .. }), "{err}");
    assert!(peak < 1 << 20, "{peak} bytes allocated before the error");
    // Just past the stated maximum, and just within it (without running it).
    let edge = Volume::new(vec![0.0], [1, 1, 1], [1024.0, 1024.0, 1025.0]).unwrap();
    assert!(matches!(edge.resample([1.0; 3]), Err(Error::InvalidVolume { .. })));
    assert_eq!(MAX_VOXELS, 1024 * 1024 * 1024);
    let err = volume.crop_or_pad([1 << 20, 1 << 20, 1], 0.0).unwrap_err();
    assert!(matches!(err, Error::InvalidVolume { .. }), "{err}");
}
