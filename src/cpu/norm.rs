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
//! With `relu`, the output is `max(y, 0)` (NaN kept) in the same pass, and the backward pass
//! first zeroes `g` where `y <= 0`, recomputing `y` exactly as the forward pass rounded it: one
//! pass over memory fewer each way than a separate ReLU.

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

/// The normalised output `gamma * xhat + beta` with the batch statistics, then ReLU if `relu`.
pub(crate) fn forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    relu: bool,
    channels: usize,
    voxels: usize,
) -> Vec<f32> {
    let coefficients = affine(&moments(x, channels, voxels), gamma, beta, eps);
    let mut y = vec![0.0f32; x.len()];
    per_plane(&mut y, channels, voxels, |c, i, out| {
        let (scale, shift) = coefficients[c];
        let src = &x[i * voxels..][..voxels];
        if relu {
            out.iter_mut().zip(src).for_each(|(y, x)| {
                let v = x * scale + shift;
                *y = if v < 0.0 { 0.0 } else { v };
            });
        } else {
            out.iter_mut().zip(src).for_each(|(y, x)| *y = x * scale + shift);
        }
    });
    y
}

/// `(dx, dgamma, dbeta)` for the output gradient `dy`; `relu_beta` is `Some(beta)` when the
/// forward pass applied ReLU (the gradient then passes where `y > 0` or `y` is NaN).
pub(crate) fn backward(
    x: &[f32],
    gamma: &[f32],
    relu_beta: Option<&[f32]>,
    dy: &[f32],
    eps: f64,
    channels: usize,
    voxels: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let stats = moments(x, channels, voxels);
    let masked;
    let dy = match relu_beta {
        Some(beta) => {
            let coefficients = affine(&stats, gamma, beta, eps);
            let mut g = vec![0.0f32; dy.len()];
            per_plane(&mut g, channels, voxels, |c, i, out| {
                let (scale, shift) = coefficients[c];
                let (xs, gs) = (&x[i * voxels..][..voxels], &dy[i * voxels..][..voxels]);
                out.iter_mut().zip(xs.iter().zip(gs)).for_each(|(o, (x, g))| {
                    let v = x * scale + shift;
                    *o = if v > 0.0 || v.is_nan() { *g } else { 0.0 };
                });
            });
            masked = g;
            &masked[..]
        }
        None => dy,
    };
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
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forward and backward against finite differences of the definition, in f64, with and
    /// without the ReLU.
    #[test]
    fn gradients_match_finite_differences() {
        for relu in [false, true] {
            check(relu);
        }
    }

    fn check(relu: bool) {
        let (n, c, v) = (2, 3, 5);
        let x: Vec<f32> = (0..n * c * v)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 3.0 + (i % c) as f32 * 5.0)
            .collect();
        let gamma = [1.5f32, -0.5, 0.25];
        // With the ReLU, shifts that keep every pre-activation at least 0.05 from 0 while
        // leaving some of each channel's values below it.
        let beta = if relu {
            [0.5f32, 0.06, 0.04]
        } else {
            [0.1f32, 0.2, -0.3]
        };
        let w: Vec<f32> = (0..x.len()).map(|i| ((i * 11 % 7) as f32 - 3.0) / 2.0).collect();
        let eps = 1e-5;
        // loss = sum w * y
        let loss = |x: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
            forward(x, gamma, beta, eps, relu, c, v)
                .iter()
                .zip(&w)
                .map(|(y, w)| f64::from(*y) * f64::from(*w))
                .sum()
        };
        let (dx, dgamma, dbeta) = backward(&x, &gamma, relu.then_some(&beta[..]), &w, eps, c, v);
        // Away from the ReLU's kink: every pre-activation at least 0.05 from 0, so that the
        // loss is smooth at the step size.
        let pre = forward(&x, &gamma, &beta, eps, false, c, v);
        let smooth: Vec<bool> = (0..c)
            .map(|ch| !relu || planes(&pre, c, v, ch).flatten().all(|y| y.abs() > 0.05))
            .collect();
        assert!(
            smooth.iter().all(|&s| s),
            "a channel comes too close to the kink: {smooth:?}"
        );
        let h = 1e-2f32;
        for i in 0..x.len() {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (loss(&up, &gamma, &beta) - loss(&down, &gamma, &beta)) / (2.0 * f64::from(h));
            assert!(
                (fd - f64::from(dx[i])).abs() < 2e-3 * fd.abs().max(1.0),
                "dx[{i}]: {} vs {fd}",
                dx[i]
            );
        }
        for ch in 0..c {
            let (mut up, mut down) = (gamma, gamma);
            up[ch] += h;
            down[ch] -= h;
            let fd = (loss(&x, &up, &beta) - loss(&x, &down, &beta)) / (2.0 * f64::from(h));
            assert!(
                (fd - f64::from(dgamma[ch])).abs() < 2e-3 * fd.abs().max(1.0),
                "dgamma[{ch}]"
            );
            let (mut up, mut down) = (beta, beta);
            up[ch] += h;
            down[ch] -= h;
            let fd = (loss(&x, &gamma, &up) - loss(&x, &gamma, &down)) / (2.0 * f64::from(h));
            assert!(
                (fd - f64::from(dbeta[ch])).abs() < 2e-3 * fd.abs().max(1.0),
                "dbeta[{ch}]"
            );
        }
        // The output has each channel's mean beta and standard deviation |gamma|.
        let y = forward(&x, &gamma, &beta, 0.0, false, c, v);
        for ch in 0..c {
            let values: Vec<f64> = planes(&y, c, v, ch).flatten().map(|&v| f64::from(v)).collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
            assert!((mean - f64::from(beta[ch])).abs() < 1e-5 && (sd - f64::from(gamma[ch].abs())).abs() < 1e-4);
        }
    }
}
