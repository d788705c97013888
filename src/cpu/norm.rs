//! BatchNorm in train mode on contiguous `[N, C, ...]` `f32` data: the batch statistics, the
//! normalised output and its gradients, one channel per work item.
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

/// The values of channel `c` of `[n, channels, voxels]` data, plane by plane.
fn planes(x: &[f32], channels: usize, voxels: usize, c: usize) -> impl Iterator<Item = &[f32]> {
    x.chunks_exact(voxels.max(1)).skip(c).step_by(channels.max(1))
}

/// Mean and biased variance of every channel.
pub(crate) fn moments(x: &[f32], channels: usize, voxels: usize) -> Vec<(f64, f64)> {
    (0..channels)
        .into_par_iter()
        .map(|c| {
            let m = (x.len() / channels.max(1)).max(1) as f64;
            let mean = planes(x, channels, voxels, c)
                .map(|p| p.iter().map(|&v| f64::from(v)).sum::<f64>())
                .sum::<f64>()
                / m;
            let var = planes(x, channels, voxels, c)
                .map(|p| p.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>())
                .sum::<f64>()
                / m;
            (mean, var)
        })
        .collect()
}

/// Writes `f(c, plane, out_plane)` for every plane of every channel, in parallel over planes.
fn per_plane(out: &mut [f32], channels: usize, voxels: usize, f: impl Fn(usize, usize, &mut [f32]) + Sync) {
    out.par_chunks_mut(voxels.max(1))
        .enumerate()
        .for_each(|(i, plane)| f(i % channels.max(1), i, plane));
}

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

/// Per channel, the `f32` scale and shift the output is computed with: `y = x * scale + shift`.
fn affine(stats: &[(f64, f64)], gamma: &[f32], beta: &[f32], eps: f64) -> Vec<(f32, f32)> {
    stats
        .iter()
        .zip(gamma.iter().zip(beta))
        .map(|(&(mean, var), (&g, &b))| {
            let scale = f64::from(g) / (var + eps).sqrt();
            (scale as f32, (f64::from(b) - mean * scale) as f32)
        })
        .collect()
}

/// The normalised output `gamma * xhat + beta` with the batch statistics `stats` (those of
/// [`moments`]), then `then`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &[(f64, f64)],
    eps: f64,
    then: Then<'_>,
    channels: usize,
    voxels: usize,
) -> Vec<f32> {
    let coefficients = affine(stats, gamma, beta, eps);
    let mut y = vec![0.0f32; x.len()];
    let relu = |v: f32| if v < 0.0 { 0.0 } else { v };
    per_plane(&mut y, channels, voxels, |c, i, out| {
        let (scale, shift) = coefficients[c];
        let src = &x[i * voxels..][..voxels];
        match then {
            Then::Nothing => out.iter_mut().zip(src).for_each(|(y, x)| *y = x * scale + shift),
            Then::Relu => out.iter_mut().zip(src).for_each(|(y, x)| *y = relu(x * scale + shift)),
            Then::AddRelu(residual) => {
                let r = &residual[i * voxels..][..voxels];
                out.iter_mut()
                    .zip(src.iter().zip(r))
                    .for_each(|(y, (x, r))| *y = relu(x * scale + shift + r));
            }
        }
    });
    y
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
    voxels: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let masked = match then {
        Then::Nothing => None,
        Then::Relu | Then::AddRelu(_) => {
            let coefficients = affine(stats, gamma, beta, eps);
            let pass = |v: f32, g: f32| if v > 0.0 || v.is_nan() { g } else { 0.0 };
            let mut g = vec![0.0f32; dy.len()];
            per_plane(&mut g, channels, voxels, |c, i, out| {
                let (scale, shift) = coefficients[c];
                let (xs, gs) = (&x[i * voxels..][..voxels], &dy[i * voxels..][..voxels]);
                match then {
                    Then::AddRelu(residual) => {
                        let r = &residual[i * voxels..][..voxels];
                        out.iter_mut()
                            .zip(xs.iter().zip(gs).zip(r))
                            .for_each(|(o, ((x, g), r))| *o = pass(x * scale + shift + r, *g));
                    }
                    _ => out
                        .iter_mut()
                        .zip(xs.iter().zip(gs))
                        .for_each(|(o, (x, g))| *o = pass(x * scale + shift, *g)),
                }
            });
            Some(g)
        }
    };
    let dy = masked.as_deref().unwrap_or(dy);
    let m = (x.len() / channels.max(1)).max(1) as f64;
    // Per channel: sum g, sum g * xhat.
    let sums: Vec<(f64, f64)> = (0..channels)
        .into_par_iter()
        .map(|c| {
            let (mean, var) = stats[c];
            let inv_std = 1.0 / (var + eps).sqrt();
            planes(x, channels, voxels, c)
                .zip(planes(dy, channels, voxels, c))
                .fold((0.0, 0.0), |(sg, sgx), (xp, gp)| {
                    let (a, b) = xp.iter().zip(gp).fold((0.0f64, 0.0f64), |(a, b), (&x, &g)| {
                        let g = f64::from(g);
                        (a + g, b + g * (f64::from(x) - mean) * inv_std)
                    });
                    (sg + a, sgx + b)
                })
        })
        .collect();
    let mut dx = vec![0.0f32; x.len()];
    per_plane(&mut dx, channels, voxels, |c, i, out| {
        let (mean, var) = stats[c];
        let inv_std = 1.0 / (var + eps).sqrt();
        let (sg, sgx) = sums[c];
        let k = f64::from(gamma[c]) * inv_std;
        // dx = k * (g - sg / m - (x - mean) * inv_std * sgx / m) = a * g + b * x + d
        let (a, b) = (k as f32, (-k * inv_std * sgx / m) as f32);
        let d = (-k * sg / m + k * inv_std * sgx / m * mean) as f32;
        let (xs, gs) = (&x[i * voxels..][..voxels], &dy[i * voxels..][..voxels]);
        out.iter_mut()
            .zip(xs.iter().zip(gs))
            .for_each(|(dx, (x, g))| *dx = a * g + b * x + d);
    });
    let dgamma = sums.iter().map(|&(_, sgx)| sgx as f32).collect();
    let dbeta = sums.iter().map(|&(sg, _)| sg as f32).collect();
    let dresidual = match then {
        Then::AddRelu(_) => masked,
        _ => None,
    };
    (dx, dgamma, dbeta, dresidual)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let x: Vec<f32> = (0..n * c * v)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 3.0 + (i % c) as f32 * 5.0)
            .collect();
        let gamma = [1.5f32, -0.5, 0.25];
        // With the ReLU, shifts that keep every pre-activation at least 0.05 from 0 while
        // leaving some of each channel's values below it; the residual moves them by 0.02 at most.
        let beta = if mode == 0 {
            [0.1f32, 0.2, -0.3]
        } else {
            [0.5f32, 0.06, 0.04]
        };
        let residual: Vec<f32> = (0..x.len()).map(|i| 0.01 * (i % 3) as f32).collect();
        fn then(mode: usize, r: &[f32]) -> Then<'_> {
            match mode {
                0 => Then::Nothing,
                1 => Then::Relu,
                _ => Then::AddRelu(r),
            }
        }
        let w: Vec<f32> = (0..x.len()).map(|i| ((i * 11 % 7) as f32 - 3.0) / 2.0).collect();
        let eps = 1e-5;
        // loss = sum w * y
        let loss = |x: &[f32], gamma: &[f32], beta: &[f32], r: &[f32]| -> f64 {
            forward(x, gamma, beta, &moments(x, c, v), eps, then(mode, r), c, v)
                .iter()
                .zip(&w)
                .map(|(y, w)| f64::from(*y) * f64::from(*w))
                .sum()
        };
        let (dx, dgamma, dbeta, dr) = backward(
            &x,
            &gamma,
            &beta,
            &moments(&x, c, v),
            then(mode, &residual),
            &w,
            eps,
            c,
            v,
        );
        assert_eq!(dr.is_some(), mode == 2);
        // Away from the ReLU's kink: every input of the ReLU at least 0.03 from 0, so that the
        // loss is smooth at the step size.
        let pre = forward(&x, &gamma, &beta, &moments(&x, c, v), eps, Then::Nothing, c, v);
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
        let y = forward(&x, &gamma, &beta, &moments(&x, c, v), 0.0, Then::Nothing, c, v);
        for ch in 0..c {
            let values: Vec<f64> = planes(&y, c, v, ch).flatten().map(|&v| f64::from(v)).collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
            assert!((mean - f64::from(beta[ch])).abs() < 1e-5 && (sd - f64::from(gamma[ch].abs())).abs() < 1e-4);
        }
    }
}
