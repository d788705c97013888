//! BatchNorm folded into the convolution before it, in one place and one precision: the
//! frozen network, the eval-mode operation on `flex` and the train-mode BatchNorm kernels (with
//! the batch's statistics) all compute `y = x * scale + shift` with the values made here.
//!
//! `scale = gamma / sqrt(var + eps)`, `shift = beta - mean * scale`, per channel, in `f64`,
//! rounded to `f32` once (torch's `fuse_conv_bn_weights` and candle's `absorb_bn` fold the
//! same way).

/// A BatchNorm's parameters and running statistics, one value per channel each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchNormValues<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub mean: &'a [f32],
    pub var: &'a [f32],
    pub epsilon: f64,
}

/// `(scale, shift)` per channel for the statistics `stats` (`(mean, variance)` per channel).
/// The slices have one value per channel (the callers' check; extra values are ignored).
pub(crate) fn fold(gamma: &[f32], beta: &[f32], stats: &[(f64, f64)], eps: f64) -> (Vec<f32>, Vec<f32>) {
    stats
        .iter()
        .zip(gamma.iter().zip(beta))
        .map(|(&(mean, var), (&g, &b))| {
            let scale = f64::from(g) / (var + eps).sqrt();
            (scale as f32, (f64::from(b) - mean * scale) as f32)
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The folded affine map equals the BatchNorm it replaces, computed in f64, to the f32
    /// rounding of its two terms (a large mean times a large scale cancels in the sum: the
    /// rounding is relative to the terms, as in every folded network).
    #[test]
    fn the_fold_is_the_batch_norm() {
        let (gamma, beta) = ([1.5f32, -0.25, 3.0], [0.5f32, 2.0, -1.0]);
        let stats = [(0.3, 0.04), (-2.0, 9.0), (1e4, 1e-6)];
        let eps = 1e-5;
        let (scale, shift) = fold(&gamma, &beta, &stats, eps);
        for c in 0..3 {
            for x in [-3.0f64, 0.0, 0.7, 1e4] {
                let (mean, var) = stats[c];
                let want = f64::from(gamma[c]) * (x - mean) / (var + eps).sqrt() + f64::from(beta[c]);
                let (a, b) = (x * f64::from(scale[c]), f64::from(shift[c]));
                let got = a + b;
                let rounding = 2f64.powi(-23) * (a.abs() + b.abs() + want.abs());
                assert!((got - want).abs() <= 2.0 * rounding, "{c} {x}: {got} vs {want}");
            }
        }
    }
}
