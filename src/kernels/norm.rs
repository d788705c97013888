//! BatchNorm in train mode on channels-last `f32` data (rows of `C` values, one per voxel of
//! the batch): the batch statistics, the normalised output and its gradients, each pass
//! parallel over blocks of rows with per-channel partial sums.
//!
//! Per channel, over its `m = N * voxels` values: `mean`, biased `var`,
//! `xhat = (x - mean) / sqrt(var + eps)`, `y = gamma * xhat + beta`. Backward, with `g = dy`:
//! `dbeta = sum g`, `dgamma = sum g * xhat`,
//! `dx = gamma / sqrt(var + eps) * (g - dbeta / m - xhat * dgamma / m)`.
//! Sums are taken in `f64` and the statistics in two passes (mean, then squared deviations),
//! so that a channel with a large mean keeps its variance.
//!
//! What follows the normalisation can run in the same pass ([`Then`]): a ReLU, `max(y, 0)`
//! (NaN kept), or a residual added before it, `max(y + r, 0)` (the end of a residual block).
//! The backward pass then first zeroes `g` where the ReLU's input was `<= 0`, recomputing it
//! exactly as the forward pass rounded it, and that masked `g` is also the residual's
//! gradient: passes over memory fewer each way than separate add and ReLU operations.

use rayon::prelude::*;

use super::buffers::zeros;
use super::fold::fold;
use super::matmul::wide;

/// What the forward pass applies after the normalisation, in the same pass.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Then<'a> {
    /// Nothing: `y`.
    Nothing,
    /// `max(y, 0)`.
    Relu,
    /// `max(y + residual, 0)`, the residual of the output's shape.
    AddRelu(&'a [f32]),
}

/// Rows of channels-last data per parallel work item.
fn chunk_rows(channels: usize) -> usize {
    ((1usize << 15) / channels.max(1)).max(1)
}

/// Mean and biased variance of every channel, in one pass over `x`: per channel the sums of
/// `x - k` and `(x - k)^2` in f64, `k` the channel's first value (0 if it is not finite), so
/// that `var = E[(x - k)^2] - E[x - k]^2` does not cancel where the mean is large against the
/// spread; an infinity or NaN makes the mean or variance non-finite as the two-pass formula
/// does. (Two passes read a 9 MB activation twice: ResNet3d-50's layer1 on 2x32x96x96.)
pub(crate) fn moments(x: &[f32], channels: usize) -> Vec<(f64, f64)> {
    let c = channels.max(1);
    let m = (x.len() / c).max(1) as f64;
    let shift: Vec<f64> = (0..channels)
        .map(|ch| {
            x.get(ch)
                .map_or(0.0, |&v| if v.is_finite() { f64::from(v) } else { 0.0 })
        })
        .collect();
    let sums = x
        .par_chunks(chunk_rows(c) * c)
        .map(|chunk| {
            let mut sums = vec![0.0f64; 2 * c];
            let (s1, s2) = sums.split_at_mut(c);
            wide(
                #[inline(always)]
                || {
                    for row in chunk.chunks_exact(c) {
                        for (((s1, s2), &v), k) in s1.iter_mut().zip(s2.iter_mut()).zip(row).zip(&shift) {
                            let d = f64::from(v) - k;
                            *s1 += d;
                            *s2 += d * d;
                        }
                    }
                },
            );
            sums
        })
        .reduce(
            || vec![0.0f64; 2 * c],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        );
    (0..channels)
        .map(|ch| {
            let mean = sums[ch] / m;
            let var = sums[c + ch] / m - mean * mean;
            // Rounding may leave a tiny negative variance; NaN stays NaN.
            (shift[ch] + mean, if var < 0.0 { 0.0 } else { var })
        })
        .collect()
}

/// The normalised output `gamma * xhat + beta` with the batch statistics `stats` (those of
/// [`moments`]), then `then`.
pub(crate) fn forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &[(f64, f64)],
    eps: f64,
    then: Then<'_>,
    channels: usize,
) -> Vec<f32> {
    let (scale, shift) = fold(gamma, beta, stats, eps);
    let c = channels.max(1);
    let mut y = zeros(x.len());
    let step = chunk_rows(c) * c;
    y.par_chunks_mut(step).enumerate().for_each(|(i, out)| {
        wide(
            #[inline(always)]
            || forward_chunk(x, &scale, &shift, then, c, step, i, out),
        )
    });
    y
}

/// Rows `i * step..` of [`forward`]'s output (`out`), from the same rows of `x`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn forward_chunk(
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    then: Then<'_>,
    c: usize,
    step: usize,
    i: usize,
    out: &mut [f32],
) {
    let relu = |v: f32| if v < 0.0 { 0.0 } else { v };
    {
        let len = out.len();
        let src = &x[i * step..][..len];
        let rows = out.chunks_exact_mut(c).zip(src.chunks_exact(c));
        match then {
            Then::Nothing => rows.for_each(|(o, x)| {
                for (((o, x), a), b) in o.iter_mut().zip(x).zip(scale).zip(shift) {
                    *o = x * a + b;
                }
            }),
            Then::Relu => rows.for_each(|(o, x)| {
                for (((o, x), a), b) in o.iter_mut().zip(x).zip(scale).zip(shift) {
                    *o = relu(x * a + b);
                }
            }),
            Then::AddRelu(residual) => {
                let res = &residual[i * step..][..len];
                rows.zip(res.chunks_exact(c)).for_each(|((o, x), r)| {
                    for ((((o, x), a), b), r) in o.iter_mut().zip(x).zip(scale).zip(shift).zip(r) {
                        *o = relu(x * a + b + r);
                    }
                });
            }
        }
    }
}

/// The gradients of [`forward`] with the same `then` for the output gradient `dy`:
/// `(dx, dgamma, dbeta, dresidual)`, the last `Some` for [`Then::AddRelu`]. The ReLU passes
/// the gradient where its input was `> 0` or NaN.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &[(f64, f64)],
    then: Then<'_>,
    dy: &[f32],
    eps: f64,
    channels: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let c = channels.max(1);
    let step = chunk_rows(c) * c;
    let m = (x.len() / c).max(1) as f64;
    let (scale, shift) = fold(gamma, beta, stats, eps);
    let relu = !matches!(then, Then::Nothing);
    let residual = match then {
        Then::AddRelu(r) => Some(r),
        _ => None,
    };
    let coefficients = (scale.as_slice(), shift.as_slice());
    let residual_row = |row: usize| residual.map(|r| &r[row * c..][..c]);
    // One pass: per channel, sum g and sum g * x (in f64), writing the masked g where it is
    // also the residual's gradient.
    let chunk_sums = |i: usize, mut keep: Option<&mut [f32]>| {
        wide(
            #[inline(always)]
            || {
                let (mut sg, mut sgx) = (vec![0.0f64; c], vec![0.0f64; c]);
                let len = step.min(x.len() - i * step);
                let mut g = vec![0.0f32; c];
                for (r, (xs, gs)) in x[i * step..][..len]
                    .chunks_exact(c)
                    .zip(dy[i * step..][..len].chunks_exact(c))
                    .enumerate()
                {
                    masked_grad(coefficients, relu, residual_row(i * (step / c) + r), xs, gs, &mut g);
                    if let Some(out) = keep.as_deref_mut() {
                        out[r * c..(r + 1) * c].copy_from_slice(&g);
                    }
                    for (((s1, s2), &gv), &xv) in sg.iter_mut().zip(sgx.iter_mut()).zip(&g).zip(xs) {
                        let gv = f64::from(gv);
                        *s1 += gv;
                        *s2 += gv * f64::from(xv);
                    }
                }
                (sg, sgx)
            },
        )
    };
    let mut dresidual = residual.map(|_| zeros(dy.len()));
    let add = |(mut a, mut b): (Vec<f64>, Vec<f64>), (c, d): (Vec<f64>, Vec<f64>)| {
        a.iter_mut().zip(c).for_each(|(x, y)| *x += y);
        b.iter_mut().zip(d).for_each(|(x, y)| *x += y);
        (a, b)
    };
    let zero = || (vec![0.0f64; c], vec![0.0f64; c]);
    let (sg, sgx_raw) = match dresidual.as_mut() {
        Some(keep) => keep
            .par_chunks_mut(step)
            .enumerate()
            .map(|(i, out)| chunk_sums(i, Some(out)))
            .reduce(zero, add),
        None => (0..x.len().div_ceil(step))
            .into_par_iter()
            .map(|i| chunk_sums(i, None))
            .reduce(zero, add),
    };
    let inv_std: Vec<f64> = stats.iter().map(|&(_, var)| 1.0 / (var + eps).sqrt()).collect();
    // sum g * xhat = inv_std * (sum g * x - mean * sum g)
    let sgx: Vec<f64> = (0..c)
        .map(|ch| inv_std[ch] * (sgx_raw[ch] - stats[ch].0 * sg[ch]))
        .collect();
    // dx = k * (g - sg / m - (x - mean) * inv_std * sgx / m) = a * g + b * x + d
    let mut a = vec![0.0f32; c];
    let mut b = vec![0.0f32; c];
    let mut d = vec![0.0f32; c];
    for ch in 0..c {
        let k = f64::from(gamma[ch]) * inv_std[ch];
        a[ch] = k as f32;
        b[ch] = (-k * inv_std[ch] * sgx[ch] / m) as f32;
        d[ch] = (-k * sg[ch] / m + k * inv_std[ch] * sgx[ch] / m * stats[ch].0) as f32;
    }
    let mut dx = zeros(x.len());
    dx.par_chunks_mut(step).enumerate().for_each(|(i, out)| {
        wide(
            #[inline(always)]
            || {
                let len = out.len();
                let xs = &x[i * step..][..len];
                let mut g = vec![0.0f32; c];
                for (r, (o, xr)) in out.chunks_exact_mut(c).zip(xs.chunks_exact(c)).enumerate() {
                    let at = i * step + r * c;
                    let gs: &[f32] = match &dresidual {
                        Some(kept) => &kept[at..at + c],
                        None => {
                            masked_grad(coefficients, relu, residual_row(at / c), xr, &dy[at..at + c], &mut g);
                            &g
                        }
                    };
                    for ((((o, &g), &xv), &a), (&b, &d)) in o.iter_mut().zip(gs).zip(xr).zip(&a).zip(b.iter().zip(&d)) {
                        *o = a * g + b * xv + d;
                    }
                }
            },
        )
    });
    let dgamma = sgx.iter().map(|&v| v as f32).collect();
    let dbeta = sg.iter().map(|&v| v as f32).collect();
    (dx, dgamma, dbeta, dresidual)
}

/// The gradient at the normalisation's output, one row: `dy` (`gs`) where the ReLU passed it
/// (its input, recomputed from `x` (`xs`) with the folded `(scale, shift)` and the
/// `residual`'s row as the forward pass rounded it, `> 0` or NaN), else 0; `dy` itself
/// without a ReLU. Inlined into its callers' [`wide`] bodies.
#[inline(always)]
fn masked_grad(
    (scale, shift): (&[f32], &[f32]),
    relu: bool,
    residual: Option<&[f32]>,
    xs: &[f32],
    gs: &[f32],
    out: &mut [f32],
) {
    let pass = |v: f32, g: f32| if v > 0.0 || v.is_nan() { g } else { 0.0 };
    let coefficients = scale.iter().zip(shift);
    match (relu, residual) {
        (false, _) => out.copy_from_slice(gs),
        (true, None) => {
            for (((o, &x), &g), (&a, &b)) in out.iter_mut().zip(xs).zip(gs).zip(coefficients) {
                *o = pass(x * a + b, g);
            }
        }
        (true, Some(res)) => {
            for ((((o, &x), &g), (&a, &b)), &rv) in out.iter_mut().zip(xs).zip(gs).zip(coefficients).zip(res) {
                *o = pass(x * a + b + rv, g);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass moments against the two-pass definition in f64: a mean 10^4 times the
    /// spread (no cancellation), a constant channel (variance 0, not negative), a single row;
    /// an infinity makes the mean infinite and the variance NaN, NaN makes both NaN, as the
    /// definition does.
    #[test]
    fn moments_in_one_pass_are_the_two_pass_ones() {
        let c = 5;
        let rows = 3 * chunk_rows(c) + 7;
        let mut x: Vec<f32> = (0..rows * c)
            .map(|i| match i % c {
                0 => 1.0e4 + ((i as f32) * 0.37).sin(),
                1 => 2.5,
                2 => -((i as f32) * 0.11).cos(),
                _ => ((i * 7919 % 1013) as f32) / 100.0,
            })
            .collect();
        let definition = |x: &[f32]| -> Vec<(f64, f64)> {
            (0..c)
                .map(|ch| {
                    let v: Vec<f64> = x.iter().skip(ch).step_by(c).map(|&v| f64::from(v)).collect();
                    let mean = v.iter().sum::<f64>() / v.len() as f64;
                    (mean, v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64)
                })
                .collect()
        };
        for (got, want) in moments(&x, c).iter().zip(definition(&x)) {
            assert!(
                (got.0 - want.0).abs() <= 1e-12 * want.0.abs().max(1.0),
                "{got:?} {want:?}"
            );
            assert!((got.1 - want.1).abs() <= 1e-9 * want.1.max(1e-12), "{got:?} {want:?}");
        }
        assert_eq!(moments(&x, c)[1], (2.5, 0.0));
        assert_eq!(moments(&x[..c], c)[3], (f64::from(x[3]), 0.0));
        x[c + 2] = f32::INFINITY;
        x[2 * c + 3] = f32::NAN;
        x[4] = f32::NEG_INFINITY;
        let m = moments(&x, c);
        assert!(m[2].0 == f64::INFINITY && m[2].1.is_nan(), "{:?}", m[2]);
        assert!(m[3].0.is_nan() && m[3].1.is_nan(), "{:?}", m[3]);
        assert!(m[4].0 == f64::NEG_INFINITY && m[4].1.is_nan(), "{:?}", m[4]);
    }

    /// Forward and backward against finite differences of the definition, in f64: alone, with
    /// the ReLU, and with a residual added before the ReLU.
    #[test]
    fn gradients_match_finite_differences() {
        for mode in 0..3 {
            check(mode);
        }
    }

    fn check(mode: usize) {
        let (n, c, v) = (2, 3, 5);
        // Values written channels-first ([n, c, v]), laid out channels-last.
        let cl = |f: &dyn Fn(usize) -> f32| -> Vec<f32> {
            let first: Vec<f32> = (0..n * c * v).map(f).collect();
            (0..n * v * c)
                .map(|j| {
                    let (b, vv, ch) = (j / (v * c), (j / c) % v, j % c);
                    first[(b * c + ch) * v + vv]
                })
                .collect()
        };
        let x = cl(&|i| ((i * 37 % 17) as f32 - 8.0) / 3.0 + (i % c) as f32 * 5.0);
        let gamma = [1.5f32, -0.5, 0.25];
        // With the ReLU, shifts that keep every pre-activation at least 0.05 from 0 while
        // leaving some of each channel's values below it; the residual moves them by 0.02 at most.
        let beta = if mode == 0 {
            [0.1f32, 0.2, -0.3]
        } else {
            [0.5f32, 0.06, 0.04]
        };
        let residual = cl(&|i| 0.01 * (i % 3) as f32);
        fn then(mode: usize, r: &[f32]) -> Then<'_> {
            match mode {
                0 => Then::Nothing,
                1 => Then::Relu,
                _ => Then::AddRelu(r),
            }
        }
        let w = cl(&|i| ((i * 11 % 7) as f32 - 3.0) / 2.0);
        let eps = 1e-5;
        // loss = sum w * y
        let loss = |x: &[f32], gamma: &[f32], beta: &[f32], r: &[f32]| -> f64 {
            forward(x, gamma, beta, &moments(x, c), eps, then(mode, r), c)
                .iter()
                .zip(&w)
                .map(|(y, w)| f64::from(*y) * f64::from(*w))
                .sum()
        };
        let (dx, dgamma, dbeta, dr) = backward(&x, &gamma, &beta, &moments(&x, c), then(mode, &residual), &w, eps, c);
        assert_eq!(dr.is_some(), mode == 2);
        // Away from the ReLU's kink: every input of the ReLU at least 0.03 from 0, so that the
        // loss is smooth at the step size.
        let pre = forward(&x, &gamma, &beta, &moments(&x, c), eps, Then::Nothing, c);
        assert!(
            mode == 0 || pre.iter().zip(&residual).all(|(y, r)| (y + r).abs() > 0.03),
            "an input of the ReLU comes too close to the kink"
        );
        let h = 1e-2f32;
        let fd = |f: &dyn Fn(f32) -> f64| (f(h) - f(-h)) / (2.0 * f64::from(h));
        let close = |fd: f64, got: f32| (fd - f64::from(got)).abs() < 2e-3 * fd.abs().max(1.0);
        let bump = |values: &[f32], i: usize, e: f32| {
            let mut out = values.to_vec();
            out[i] += e;
            out
        };
        for i in 0..x.len() {
            let d = fd(&|e| loss(&bump(&x, i, e), &gamma, &beta, &residual));
            assert!(close(d, dx[i]), "mode {mode}: dx[{i}]: {} vs {d}", dx[i]);
            if let Some(dr) = &dr {
                let d = fd(&|e| loss(&x, &gamma, &beta, &bump(&residual, i, e)));
                assert!(close(d, dr[i]), "dresidual[{i}]: {} vs {d}", dr[i]);
            }
        }
        for ch in 0..c {
            let d = fd(&|e| loss(&x, &bump(&gamma, ch, e), &beta, &residual));
            assert!(close(d, dgamma[ch]), "mode {mode}: dgamma[{ch}]");
            let d = fd(&|e| loss(&x, &gamma, &bump(&beta, ch, e), &residual));
            assert!(close(d, dbeta[ch]), "mode {mode}: dbeta[{ch}]");
        }
        // The output has each channel's mean beta and standard deviation |gamma|.
        let y = forward(&x, &gamma, &beta, &moments(&x, c), 0.0, Then::Nothing, c);
        for ch in 0..c {
            let values: Vec<f64> = y.iter().skip(ch).step_by(c).map(|&v| f64::from(v)).collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
            assert!((mean - f64::from(beta[ch])).abs() < 1e-5 && (sd - f64::from(gamma[ch].abs())).abs() < 1e-4);
        }
    }
}
