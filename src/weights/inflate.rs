//! The weight arithmetic: a 2-D kernel becomes a 3-D kernel, and the stem's RGB input
//! channels become the data's channels. Plain `f32` slices in row-major order.

use crate::arch::kinds::Inflation;
use crate::error::{Error, Result};

/// Checks that `kernel` holds `shape`'s values, that no extent is 0 and that the result of
/// `out_len` values can be counted, then allocates it (zeros): the arithmetic below then
/// stays in bounds, and a size that memory cannot hold is an error, not an abort.
fn check_kernel(kernel: &[f32], shape: [usize; 4], out_len: Option<usize>, what: &str) -> Result<Vec<f32>> {
    let len = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let problem = if shape.contains(&0) {
        "a kernel needs every extent at least 1"
    } else if len != Some(kernel.len()) {
        "the slice does not hold that many values"
    } else if out_len.is_none() {
        "the result would be too large"
    } else {
        let len = out_len.unwrap_or(0);
        let mut out = Vec::new();
        if out.try_reserve_exact(len).is_ok() {
            out.resize(len, 0.0);
            return Ok(out);
        }
        "the result does not fit in memory"
    };
    Err(Error::InvalidInput {
        dims: shape.to_vec(),
        what: format!("{what} of {} values: {problem}", kernel.len()),
    })
}

/// Spreads a 2-D kernel `W2[o, i, h, w]` of `shape` over a depth of `depth`:
///
/// - [`Inflation::Average`]: `W3[o, i, t, h, w] = W2[o, i, h, w] / T` for every `t`;
/// - [`Inflation::Center`]: `W3[o, i, T/2, h, w] = W2[o, i, h, w]`, zeros elsewhere;
/// - [`Inflation::Acs`]: each output channel's kernel in the middle plane of its group's view
///   (axial: depth, coronal: height, sagittal: width at `T/2`), `T` equal to `h` and `w`.
///
/// Average and Center give `sum_t W3[.., t, ..] = W2`, so a volume constant along depth gets the 2-D
/// response away from zero-padded borders. Returns `[o, i, T, h, w]`.
///
/// # Errors
/// [`Error::InvalidInput`] if `kernel` does not hold `shape`'s values, an extent or `depth`
/// is 0, or the result's size overflows.
pub fn inflate_kernel(kernel: &[f32], shape: [usize; 4], depth: usize, rule: Inflation) -> Result<Vec<f32>> {
    let out_len = kernel.len().checked_mul(depth).filter(|_| depth > 0);
    let mut out = check_kernel(kernel, shape, out_len, "2-D kernel to inflate")?;
    let [o, i, h, w] = shape;
    let plane = h * w;
    if rule == Inflation::Acs {
        if !(h == w && depth == h) {
            return Err(Error::InvalidInput {
                dims: shape.to_vec(),
                what: format!(
                    "ACS places a {h}x{w} kernel in the planes of a cubic one; a depth of {depth} is not cubic: use depth {h}"
                ),
            });
        }
        let k = h;
        let mid = k / 2;
        let [axial, coronal, _] = Inflation::acs_split(o);
        for oc in 0..o {
            for ic in 0..i {
                let src = &kernel[(oc * i + ic) * plane..][..plane];
                let dst = &mut out[(oc * i + ic) * k * plane..][..k * plane];
                for a in 0..k {
                    for b in 0..k {
                        let v = src[a * k + b];
                        // The 2-D axes (a, b) onto (height, width), (depth, width) or
                        // (depth, height); the remaining axis at its middle tap.
                        let [t, y, x] = if oc < axial {
                            [mid, a, b]
                        } else if oc < axial + coronal {
                            [a, mid, b]
                        } else {
                            [a, b, mid]
                        };
                        dst[(t * k + y) * k + x] = v;
                    }
                }
            }
        }
        return Ok(out);
    }
    for (src, dst) in kernel.chunks_exact(plane).zip(out.chunks_exact_mut(depth * plane)) {
        if rule == Inflation::Average {
            let scale = 1.0 / depth as f32;
            for slice in dst.chunks_exact_mut(plane) {
                slice.iter_mut().zip(src).for_each(|(d, s)| *d = s * scale);
            }
        } else {
            // Center (ACS returned above).
            let t = depth / 2;
            dst[t * plane..(t + 1) * plane].copy_from_slice(src);
        }
    }
    Ok(out)
}

/// Adapts a stem kernel `W[o, c, h, w]` with `c` input channels (3 for ImageNet) to `n`:
///
/// - `n == c`: unchanged;
/// - `n == 1`: `W'[o, 0] = sum_c W[o, c]`, exactly the response to a grey image copied to
///   every channel;
/// - otherwise: `W'[o, k] = W[o, k mod c] * c / n` (timm's rule), which keeps the kernel's
///   scale; when `n` is a multiple of `c` an input equal in every channel gets exactly the
///   response it had.
///
/// Returns `[o, n, h, w]`.
///
/// # Errors
/// [`Error::InvalidInput`] if `kernel` does not hold `shape`'s values, an extent or `n` is 0,
/// or the result's size overflows.
pub fn adapt_in_channels(kernel: &[f32], shape: [usize; 4], n: usize) -> Result<Vec<f32>> {
    let [o, c, h, w] = shape;
    let plane = h * w;
    let out_len = o.checked_mul(n).and_then(|x| x.checked_mul(plane)).filter(|_| n > 0);
    if n == c {
        check_kernel(kernel, shape, Some(0), "stem kernel to adapt")?;
        return Ok(kernel.to_vec());
    }
    let mut out = check_kernel(kernel, shape, out_len, "stem kernel to adapt")?;
    for (src, dst) in kernel.chunks_exact(c * plane).zip(out.chunks_exact_mut(n * plane)) {
        if n == 1 {
            for channel in src.chunks_exact(plane) {
                dst.iter_mut().zip(channel).for_each(|(d, s)| *d += s);
            }
        } else {
            let scale = c as f32 / n as f32;
            for (k, slice) in dst.chunks_exact_mut(plane).enumerate() {
                let channel = &src[(k % c) * plane..(k % c + 1) * plane];
                slice.iter_mut().zip(channel).for_each(|(d, s)| *d = s * scale);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel whose every entry differs: 1, 2, 3, ...
    fn ramp(len: usize) -> Vec<f32> {
        (1..=len).map(|v| v as f32).collect()
    }

    fn sum_over_depth(w3: &[f32], shape: [usize; 4], depth: usize) -> Vec<f32> {
        let plane = shape[2] * shape[3];
        w3.chunks_exact(depth * plane)
            .flat_map(|taps| (0..plane).map(move |p| (0..depth).map(|t| taps[t * plane + p]).sum::<f32>()))
            .collect()
    }

    #[test]
    fn average_spreads_evenly_and_sums_back() {
        let shape = [2, 3, 3, 3];
        let w2 = ramp(54);
        let w3 = inflate_kernel(&w2, shape, 3, Inflation::Average).unwrap();
        assert_eq!(w3.len(), 162);
        // W3[o, i, t, h, w] = W2[o, i, h, w] / 3 for every t, at (o, i, h, w) = (1, 2, 0, 1).
        let at2 = |o: usize, i: usize, h: usize, w: usize| ((o * 3 + i) * 3 + h) * 3 + w;
        let at3 = |o: usize, i: usize, t: usize, h: usize, w: usize| (((o * 3 + i) * 3 + t) * 3 + h) * 3 + w;
        for t in 0..3 {
            assert_eq!(w3[at3(1, 2, t, 0, 1)], w2[at2(1, 2, 0, 1)] / 3.0);
        }
        let summed = sum_over_depth(&w3, shape, 3);
        for (a, b) in summed.iter().zip(&w2) {
            approx::assert_relative_eq!(a, b, max_relative = 1e-6);
        }
    }

    #[test]
    fn center_puts_the_kernel_in_the_middle_slice() {
        let shape = [1, 2, 2, 2];
        let w2 = ramp(8);
        let w3 = inflate_kernel(&w2, shape, 5, Inflation::Center).unwrap();
        // Per (o, i): slices 0, 1, 3, 4 are zero, slice 2 is W2.
        assert_eq!(
            &w3[..20],
            &[
                0., 0., 0., 0., 0., 0., 0., 0., 1., 2., 3., 4., 0., 0., 0., 0., 0., 0., 0., 0.
            ]
        );
        assert_eq!(sum_over_depth(&w3, shape, 5), w2);
    }

    #[test]
    fn depth_one_is_the_same_for_both_rules() {
        let w2 = ramp(18);
        let average = inflate_kernel(&w2, [2, 1, 3, 3], 1, Inflation::Average).unwrap();
        let center = inflate_kernel(&w2, [2, 1, 3, 3], 1, Inflation::Center).unwrap();
        assert_eq!(average, w2);
        assert_eq!(center, w2);
    }

    #[test]
    fn acs_places_each_group_in_its_plane() {
        assert_eq!(Inflation::acs_split(64), [22, 21, 21]);
        assert_eq!(Inflation::acs_split(4), [2, 1, 1]);
        assert_eq!(Inflation::acs_split(5), [2, 2, 1]);
        assert_eq!(Inflation::acs_split(6), [2, 2, 2]);
        // Three output channels, one per group; 3x3 kernels 0..9, 10..19, 20..29 (+1).
        let w2: Vec<f32> = (0..27).map(|v| (v + 1) as f32).collect();
        let w3 = inflate_kernel(&w2, [3, 1, 3, 3], 3, Inflation::Acs).unwrap();
        let at = |o: usize, t: usize, y: usize, x: usize| w3[((o * 3 + t) * 3 + y) * 3 + x];
        for a in 0..3 {
            for b in 0..3 {
                assert_eq!(at(0, 1, a, b), w2[a * 3 + b], "axial: depth at the middle");
                assert_eq!(at(1, a, 1, b), w2[9 + a * 3 + b], "coronal: height at the middle");
                assert_eq!(at(2, a, b, 1), w2[18 + a * 3 + b], "sagittal: width at the middle");
            }
        }
        // Nothing else: each kernel's sum is the 2-D kernel's.
        for o in 0..3 {
            let sum3: f32 = w3[o * 27..(o + 1) * 27].iter().sum();
            let sum2: f32 = w2[o * 9..(o + 1) * 9].iter().sum();
            assert_eq!(sum3, sum2);
        }
        // Not cubic: an error, not a wrong kernel.
        assert!(inflate_kernel(&w2, [3, 1, 3, 3], 1, Inflation::Acs).is_err());
    }

    #[test]
    fn one_channel_sums_the_rgb_kernels() {
        // W[o=0] = R:[1, 2], G:[10, 20], B:[100, 200] (1x2 kernels); W[o=1] = its negation.
        let w = [1., 2., 10., 20., 100., 200., -1., -2., -10., -20., -100., -200.];
        assert_eq!(
            adapt_in_channels(&w, [2, 3, 1, 2], 1).unwrap(),
            [111., 222., -111., -222.]
        );
    }

    #[test]
    fn n_channels_cycle_through_rgb_scaled_by_3_over_n() {
        let w = [1., 10., 100.]; // one output, 1x1 kernels
        let four = adapt_in_channels(&w, [1, 3, 1, 1], 4).unwrap();
        assert_eq!(four, [0.75, 7.5, 75., 0.75]);
        // With n a multiple of 3 an input equal in every channel keeps its response exactly.
        let six = adapt_in_channels(&w, [1, 3, 1, 1], 6).unwrap();
        assert_eq!(six, [0.5, 5., 50., 0.5, 5., 50.]);
        assert_eq!(six.iter().sum::<f32>(), 111.0);
        assert_eq!(adapt_in_channels(&w, [1, 3, 1, 1], 3).unwrap(), w);
    }

    #[test]
    fn empty_or_short_kernels_are_errors_not_panics() {
        // A stem kernel with 0 input channels (a crafted checkpoint) used to reach chunks_exact(0).
        let err = adapt_in_channels(&[], [64, 0, 7, 7], 1).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        assert!(err.to_string().contains("every extent at least 1"), "{err}");
        let err = inflate_kernel(&[], [2, 3, 0, 3], 3, Inflation::Average).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        assert!(matches!(
            inflate_kernel(&[1.0; 5], [1, 1, 2, 3], 3, Inflation::Center),
            Err(Error::InvalidInput { .. })
        ));
        assert!(matches!(
            inflate_kernel(&[1.0; 6], [1, 1, 2, 3], 0, Inflation::Center),
            Err(Error::InvalidInput { .. })
        ));
        assert!(matches!(
            adapt_in_channels(&[1.0; 3], [1, 3, 1, 1], 0),
            Err(Error::InvalidInput { .. })
        ));
        assert!(matches!(
            adapt_in_channels(&[1.0; 3], [1, 3, 1, 1], usize::MAX),
            Err(Error::InvalidInput { .. })
        ));
    }
}
