//! Sliding-window inference against MONAI 1.6's own `sliding_window_inference`
//! (tests/fixtures/make_sliding.py): the same window positions, the same blending weights,
//! the same per-class map within 1e-5, for constant and Gaussian blending, overlaps 0 to
//! 0.6, a volume shorter than the window (padded) and a window as large as the volume.

use resnet3d::infer::{Blend, SlidingWindow};
use resnet3d::preprocess::Volume;
use serde_json::Value;

use crate::common::fixtures;

/// The fixture's volume: sin(0.37 z + 0.11 y) + 0.5 cos(0.23 x - 0.05 z) + 0.01 ((7x + 3y + 5z) mod 11).
fn volume(shape: [usize; 3]) -> Volume {
    let [d, h, w] = shape;
    let mut data = Vec::with_capacity(d * h * w);
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let (zf, yf, xf) = (z as f64, y as f64, x as f64);
                let v = (0.37 * zf + 0.11 * yf).sin()
                    + 0.5 * (0.23 * xf - 0.05 * zf).cos()
                    + 0.01 * ((7 * x + 3 * y + 5 * z) % 11) as f64;
                data.push(v as f32);
            }
        }
    }
    Volume::new(data, shape, [1.0; 3]).unwrap()
}

/// The fixture's classifier: a = mean, b = max - min of the window; softmax of [3a, b - 1, -a].
fn classify(windows: &[f32], n: usize) -> resnet3d::Result<Vec<f32>> {
    let len = windows.len() / n;
    Ok(windows
        .chunks(len)
        .flat_map(|w| {
            let a = (w.iter().map(|&v| f64::from(v)).sum::<f64>() / len as f64) as f32;
            let (lo, hi) = w.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
            let logits = [3.0 * a, (hi - lo) - 1.0, -a];
            let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e = logits.map(|l| (l - top).exp());
            let sum: f32 = e.iter().sum();
            e.map(|x| x / sum)
        })
        .collect())
}

fn tensor(file: &safetensors::SafeTensors, name: &str) -> (Vec<usize>, Vec<u8>) {
    let view = file.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    (view.shape().to_vec(), view.data().to_vec())
}

#[test]
fn maps_equal_monais_sliding_window_inference() {
    let bytes = std::fs::read(fixtures().join("sliding/cases.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let cases: Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["cases"]).unwrap();
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 6);
    let three = |v: &Value| -> [usize; 3] { [0, 1, 2].map(|i| v[i].as_u64().unwrap() as usize) };
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (shape, roi) = (three(&case["shape"]), three(&case["roi"]));
        let blend = match case["mode"].as_str().unwrap() {
            "constant" => Blend::Constant,
            "gaussian" => Blend::Gaussian {
                sigma_scale: case["sigma_scale"].as_f64().unwrap(),
            },
            other => panic!("mode {other}"),
        };
        let sliding = SlidingWindow::new(roi)
            .with_overlap(case["overlap"].as_f64().unwrap())
            .with_blend(blend)
            .with_batch(case["sw_batch_size"].as_u64().unwrap() as usize)
            .with_pad_value(case["cval"].as_f64().unwrap() as f32);

        // The windows MONAI visits, in its order.
        let (dims, raw) = tensor(&file, &format!("{name}.starts"));
        let expected: Vec<[usize; 3]> = raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize)
            .collect::<Vec<_>>()
            .chunks_exact(3)
            .map(|s| [s[0], s[1], s[2]])
            .collect();
        assert_eq!(dims[0], expected.len());
        assert_eq!(sliding.starts(shape).unwrap(), expected, "{name}: window starts");

        // Its blending weights: exp() may differ by an ulp between torch and Rust.
        let (_, raw) = tensor(&file, &format!("{name}.importance"));
        let importance: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let ours = blend.weights(roi).unwrap();
        let worst = ours
            .iter()
            .zip(&importance)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6, "{name}: importance map differs by {worst:e}");

        // The blended map.
        let (dims, raw) = tensor(&file, &format!("{name}.map"));
        let expected: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(dims, [3, shape[0], shape[1], shape[2]]);
        let map = sliding.classify(&volume(shape), classify).unwrap();
        assert_eq!((map.classes(), map.shape()), (3, shape));
        let got: Vec<f32> = (0..3).flat_map(|c| map.values(c).unwrap().to_vec()).collect();
        let worst = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-5,
            "{name}: map differs from MONAI's by {worst:e} (tolerance 1e-5)"
        );
    }
}
