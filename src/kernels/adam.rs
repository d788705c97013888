//! Adam's update of one parameter in a single pass over its four arrays (parameter, gradient,
//! first and second moment), parallel over threads: what [`FusedAdam`](crate::train::FusedAdam)
//! runs on `flex` (through the operation in `ops/adam.rs`).
//!
//! Burn's own Adam builds the same update from about a dozen element-wise tensor operations,
//! each a pass over memory on one thread; on ResNet3d-18's 33 M parameters that was 140 ms of a
//! 790 ms fine-tuning step (benches/train.rs).

use rayon::prelude::*;

/// The scalars of one Adam step (PyTorch's and Burn's Adam, which agree):
///
/// ```text
/// g' = g + weight_decay * p
/// m  = beta_1 * m + (1 - beta_1) * g'
/// v  = beta_2 * v + (1 - beta_2) * g'^2
/// p  = p - lr * (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)
/// ```
///
/// `t` counts from 1; the moments start at zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AdamStep {
    pub lr: f64,
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    pub time: i32,
}

/// Elements per parallel work item: large enough that scheduling is noise.
const CHUNK: usize = 1 << 15;

/// One step of [`AdamStep`] on `p`, `m` and `v` in place. The slices have one length (checked
/// by the caller, the `flex` operation); `zip` stops at the shortest anyway.
pub(crate) fn step(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamStep) {
    // Burn's arrangement of the bias corrections: the update is
    // m * c / (sqrt(v) + epsilon * sqrt(1 - beta_2^t)) with c = sqrt(1 - beta_2^t) / (1 - beta_1^t),
    // algebraically PyTorch's formula above.
    let bc2_sqrt = (1.0 - s.beta_2.powi(s.time)).sqrt();
    let factor = (s.lr as f32) * bc2_sqrt / (1.0 - s.beta_1.powi(s.time));
    let eps = s.epsilon * bc2_sqrt;
    let (b1, b2, wd) = (s.beta_1, s.beta_2, s.weight_decay);
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = g + wd * *p;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * (g * g);
                *p -= factor * *m / (v.sqrt() + eps);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The formula of [`AdamStep`] written out in f64, for one element.
    fn reference(p: f64, g: &[f64], s: &AdamStep) -> f64 {
        let (b1, b2) = (f64::from(s.beta_1), f64::from(s.beta_2));
        let (mut p, mut m, mut v) = (p, 0.0, 0.0);
        for (t, &g) in g.iter().enumerate() {
            let t = t as i32 + 1;
            let g = g + f64::from(s.weight_decay) * p;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            p -= s.lr * (m / (1.0 - b1.powi(t))) / ((v / (1.0 - b2.powi(t))).sqrt() + f64::from(s.epsilon));
        }
        p
    }

    #[test]
    fn three_steps_follow_the_formula() {
        let n = 3 * CHUNK + 17;
        let mut p: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin()).collect();
        let p0 = p.clone();
        let grads: Vec<Vec<f32>> = (0..3)
            .map(|t| (0..n).map(|i| ((i * 7 + t * 13) as f32 * 0.11).cos() * 0.1).collect())
            .collect();
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let mut s = AdamStep {
            lr: 1e-2,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-5,
            weight_decay: 1e-2,
            time: 0,
        };
        for g in &grads {
            s.time += 1;
            step(&mut p, g, &mut m, &mut v, &s);
        }
        for i in [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 5, n - 1] {
            let g: Vec<f64> = grads.iter().map(|g| f64::from(g[i])).collect();
            let want = reference(f64::from(p0[i]), &g, &s);
            assert!(
                (f64::from(p[i]) - want).abs() <= 1e-6,
                "element {i}: {} vs {want}",
                p[i]
            );
        }
    }
}
