//! Trilinear upsampling of a `[D, H, W]` map, as PyTorch's
//! `interpolate(mode="trilinear", align_corners=False)`: separable linear interpolation along
//! each axis, source coordinate `(i + 0.5) * in / out - 0.5` clamped at 0.

/// For each output index along one axis: the two source indices and the weight of the second.
fn taps(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let x = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
            let lo = (x.floor() as usize).min(input - 1);
            let hi = (lo + 1).min(input - 1);
            (lo, hi, x - lo as f32)
        })
        .collect()
}

/// `map` (`[d, h, w]` row-major) resized to `size`.
pub(super) fn trilinear(map: &[f32], [d, h, w]: [usize; 3], size: [usize; 3]) -> Vec<f32> {
    if [d, h, w].contains(&0) || size.contains(&0) {
        return vec![0.0; size.iter().product()];
    }
    let [od, oh, ow] = size;
    // Along width, then height, then depth.
    let tw = taps(w, ow);
    let mut x1 = vec![0.0f32; d * h * ow];
    for (row, out) in map.chunks_exact(w).zip(x1.chunks_exact_mut(ow)) {
        for (o, &(lo, hi, f)) in out.iter_mut().zip(&tw) {
            *o = row[lo] * (1.0 - f) + row[hi] * f;
        }
    }
    let th = taps(h, oh);
    let mut x2 = vec![0.0f32; d * oh * ow];
    for z in 0..d {
        for (y, &(lo, hi, f)) in th.iter().enumerate() {
            for x in 0..ow {
                x2[(z * oh + y) * ow + x] = x1[(z * h + lo) * ow + x] * (1.0 - f) + x1[(z * h + hi) * ow + x] * f;
            }
        }
    }
    let td = taps(d, od);
    let plane = oh * ow;
    let mut out = vec![0.0f32; od * plane];
    for (z, &(lo, hi, f)) in td.iter().enumerate() {
        for v in 0..plane {
            out[z * plane + v] = x2[lo * plane + v] * (1.0 - f) + x2[hi * plane + v] * f;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch 2.15: `F.interpolate(torch.tensor([0., 1., 3.]).view(1, 1, 1, 1, 3),
    /// size=(1, 1, 6), mode="trilinear", align_corners=False)` gives
    /// `[0, 0.25, 0.75, 1.5, 2.5, 3]`.
    #[test]
    fn matches_pytorchs_trilinear() {
        let got = trilinear(&[0.0, 1.0, 3.0], [1, 1, 3], [1, 1, 6]);
        let expected = [0.0, 0.25, 0.75, 1.5, 2.5, 3.0];
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{got:?}");
        }
        // A constant map stays constant along every axis.
        let got = trilinear(&[2.0; 8], [2, 2, 2], [3, 5, 4]);
        assert!(got.iter().all(|&v| (v - 2.0).abs() < 1e-6));
    }
}
