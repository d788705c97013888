//! The crate's own seeded random numbers: SplitMix64 with a fixed definition, so that a
//! seeded split, shuffle or augmentation is the same on every machine and with every
//! version of every dependency.

/// SplitMix64 (Steele, Lea, Flood 2014): a small seeded generator with a fixed definition.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    /// A generator for one stream of several keys (a seed, an epoch, an item): the keys are
    /// mixed one after the other, so neighbouring keys give unrelated streams.
    pub(crate) fn keyed(keys: &[u64]) -> Self {
        let mut state = SplitMix64(0x5EED_0F3D_u64);
        for &key in keys {
            state = SplitMix64(state.next() ^ key);
        }
        state
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[-a, a)`.
    pub(crate) fn symmetric(&mut self, a: f64) -> f64 {
        a * (2.0 * self.uniform() - 1.0)
    }

    /// Uniform integer in `0..=n`.
    pub(crate) fn below_or_equal(&mut self, n: usize) -> usize {
        (self.next() % (n as u64 + 1)) as usize
    }

    /// A coin with probability 1/2.
    pub(crate) fn coin(&mut self) -> bool {
        self.next() >> 63 == 1
    }

    /// Standard normal, Box-Muller: `sqrt(-2 ln u1) cos(2 pi u2)` with `u1` in `(0, 1]`.
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Fisher-Yates shuffle.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below_or_equal(i);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference sequence of SplitMix64 for seed 1234567 (from the published C code).
    #[test]
    fn splitmix_is_the_published_generator() {
        let mut rng = SplitMix64(1234567);
        let got: Vec<u64> = (0..3).map(|_| rng.next()).collect();
        assert_eq!(got, [6457827717110365317, 3203168211198807973, 9817491932198370423]);
    }

    /// Mean 0 and variance 1 of the normal draws, within 4 standard errors of 20 000 draws.
    #[test]
    fn normal_has_unit_variance() {
        let mut rng = SplitMix64::keyed(&[3, 1]);
        let n = 20_000;
        let draws: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 4.0 / (n as f64).sqrt(), "mean {mean}");
        assert!((var - 1.0).abs() < 4.0 * (2.0 / n as f64).sqrt(), "variance {var}");
    }

    /// Different keys give different streams; the same keys the same one.
    #[test]
    fn keyed_streams() {
        let a = SplitMix64::keyed(&[7, 1, 2]).next();
        assert_eq!(a, SplitMix64::keyed(&[7, 1, 2]).next());
        assert_ne!(a, SplitMix64::keyed(&[7, 2, 1]).next());
        assert_ne!(a, SplitMix64::keyed(&[7, 1, 3]).next());
    }
}
