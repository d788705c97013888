//! [`Blend`]: how overlapping windows are weighted, as MONAI's `compute_importance_map`.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// How the windows' outputs are weighted where windows overlap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Blend {
    /// Every voxel of a window counts the same: the map is the plain mean of the windows
    /// that cover a voxel (MONAI's `mode="constant"`).
    Constant,
    /// A window counts most at its centre: weight
    /// `w(x) = prod_a exp(-(x_a - (n_a - 1) / 2)^2 / (2 (sigma_scale n_a)^2))` over the
    /// window's axes of `n_a` voxels, floored at `max(min w, 1e-3)` so that no voxel is
    /// left without weight (MONAI's `mode="gaussian"`, whose `sigma_scale` is 0.125 by
    /// default). Softens the seams between windows.
    Gaussian {
        /// The Gaussian's standard deviation as a share of the window's extent per axis.
        sigma_scale: f64,
    },
}

impl Blend {
    /// MONAI's default Gaussian: `sigma_scale` 0.125.
    pub const GAUSSIAN: Blend = Blend::Gaussian { sigma_scale: 0.125 };

    /// The weight of each voxel of a window of `roi` voxels, row-major `[depth, height,
    /// width]`, every weight positive.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a `sigma_scale` that is not positive and finite.
    pub fn weights(&self, roi: [usize; 3]) -> Result<Vec<f32>> {
        let len: usize = roi.iter().product();
        let sigma_scale = match *self {
            Blend::Constant => return Ok(vec![1.0; len]),
            Blend::Gaussian { sigma_scale } => sigma_scale,
        };
        if !(sigma_scale.is_finite() && sigma_scale > 0.0) {
            return Err(Error::InvalidConfig {
                field: "blend",
                reason: format!("a Gaussian's sigma_scale must be positive and finite, not {sigma_scale}"),
            });
        }
        // One axis: exp(-x^2 / (2 sigma^2)) at x = i - (n - 1) / 2, in f32 as MONAI computes it.
        let axis = |n: usize| -> Vec<f32> {
            let sigma = (n as f64 * sigma_scale) as f32;
            (0..n)
                .map(|i| {
                    let x = i as f32 - (n as f32 - 1.0) / 2.0;
                    (x * x / (-2.0 * sigma * sigma)).exp()
                })
                .collect()
        };
        let [gd, gh, gw] = roi.map(axis);
        let mut weights = Vec::with_capacity(len);
        for &d in &gd {
            for &h in &gh {
                weights.extend(gw.iter().map(|&w| d * h * w));
            }
        }
        // A scale so small that sigma^2 underflows gives 0/0 at the centre: refused, never
        // blended (MONAI computes NaN weights there).
        if weights.iter().any(|w| !w.is_finite()) {
            return Err(Error::InvalidConfig {
                field: "blend",
                reason: format!(
                    "a Gaussian's sigma_scale of {sigma_scale} is too small for a window of {roi:?} voxels (its weights are not finite); use 0.125 or a value near it"
                ),
            });
        }
        let floor = weights.iter().copied().fold(f32::INFINITY, f32::min).max(1e-3);
        for w in &mut weights {
            *w = w.max(floor);
        }
        Ok(weights)
    }
}

impl fmt::Display for Blend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blend::Constant => f.write_str("constant"),
            Blend::Gaussian { sigma_scale } if *sigma_scale == 0.125 => f.write_str("gaussian"),
            Blend::Gaussian { sigma_scale } => write!(f, "gaussian:{sigma_scale}"),
        }
    }
}

impl FromStr for Blend {
    type Err = Error;

    /// `constant`, `gaussian` (sigma_scale 0.125) or `gaussian:S`.
    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::InvalidConfig {
            field: "blend",
            reason: format!("`{s}`: use constant, gaussian or gaussian:SIGMA_SCALE (e.g. gaussian:0.125)"),
        };
        match s {
            "constant" => Ok(Blend::Constant),
            "gaussian" => Ok(Blend::GAUSSIAN),
            _ => {
                let scale: f64 = s
                    .strip_prefix("gaussian:")
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(invalid)?;
                let blend = Blend::Gaussian { sigma_scale: scale };
                blend.weights([1, 1, 1]).map_err(|_| invalid())?;
                Ok(blend)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_weights_peak_at_the_centre_and_are_symmetric() {
        let w = Blend::GAUSSIAN.weights([3, 4, 5]).unwrap();
        let at = |d: usize, h: usize, x: usize| w[(d * 4 + h) * 5 + x];
        // Odd axes peak at their middle voxel; the even axis at its two middle voxels.
        assert_eq!(at(1, 1, 2), at(1, 2, 2));
        assert!(at(1, 1, 2) > at(0, 1, 2) && at(1, 1, 2) > at(1, 1, 1));
        assert_eq!(at(0, 0, 0), at(2, 3, 4));
        // sigma = 0.375 voxels along depth: the neighbour weighs exp(-1 / (2 * 0.375^2)).
        let ratio = f64::from(at(0, 1, 2) / at(1, 1, 2));
        assert!((ratio - (-1.0f64 / (2.0 * 0.375 * 0.375)).exp()).abs() < 1e-6);
        // Floored at 1e-3, never 0.
        assert!(w.iter().all(|&x| x >= 1e-3));
    }

    #[test]
    fn names_round_trip_and_bad_ones_are_refused() {
        for blend in [Blend::Constant, Blend::GAUSSIAN, Blend::Gaussian { sigma_scale: 0.25 }] {
            assert_eq!(blend.to_string().parse::<Blend>().unwrap(), blend);
        }
        // sigma^2 underflows in f32: 0/0 at a window's centre.
        assert!(Blend::Gaussian { sigma_scale: 1e-30 }.weights([1, 32, 32]).is_err());
        for bad in ["gauss", "gaussian:0", "gaussian:-1", "gaussian:nan", "gaussian:"] {
            assert!(
                matches!(bad.parse::<Blend>(), Err(Error::InvalidConfig { field: "blend", .. })),
                "{bad}"
            );
        }
    }
}
