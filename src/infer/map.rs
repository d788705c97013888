//! [`ProbabilityMap`]: per-class probabilities over a scan, and [`Aggregate`]s of them.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::preprocess::Volume;

/// Class probabilities per voxel: what [`SlidingWindow::classify`](super::SlidingWindow::classify)
/// blends from its windows. At every voxel the classes' values are a weighted mean of the
/// probabilities of the windows that cover it, so they sum to 1 when each window's do.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbabilityMap {
    classes: usize,
    shape: [usize; 3],
    spacing: [f32; 3],
    /// Row-major `[class, depth, height, width]`.
    data: Vec<f32>,
}

/// How a map becomes one score per class for the whole scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// The largest value: "somewhere in the scan" (a finding in one place is enough).
    Max,
    /// The mean over every voxel: how much of the scan speaks for the class.
    Mean,
    /// The mean of the `k` largest values (all of them when the map has fewer): a maximum
    /// that one stray window cannot make.
    TopKMean(usize),
}

impl ProbabilityMap {
    pub(crate) fn new(classes: usize, shape: [usize; 3], spacing: [f32; 3], data: Vec<f32>) -> Result<Self> {
        if classes == 0 || data.len() != classes * shape.iter().product::<usize>() {
            return Err(Error::InvalidVolume {
                what: format!("{} values for {classes} classes over {shape:?} voxels", data.len()),
            });
        }
        Ok(Self {
            classes,
            shape,
            spacing,
            data,
        })
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The grid `[depth, height, width]`: the classified volume's.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// The values of one class, row-major `[depth, height, width]`.
    pub fn values(&self, class: usize) -> Option<&[f32]> {
        let voxels: usize = self.shape.iter().product();
        (class < self.classes).then(|| &self.data[class * voxels..][..voxels])
    }

    /// One class's map as a volume with the classified volume's spacing, e.g. to bring back
    /// to the scan's grid with [`Preprocessing::to_scan_grid`](crate::data::Preprocessing::to_scan_grid)
    /// and save as NIfTI.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `class` is not one of the map's.
    pub fn class(&self, class: usize) -> Result<Volume> {
        let values = self.values(class).ok_or_else(|| Error::InvalidInput {
            dims: vec![self.classes],
            what: format!("class {class} asked of a map of {} classes", self.classes),
        })?;
        Volume::new(values.to_vec(), self.shape, self.spacing)
    }

    /// The map cropped (centred, as [`Volume::crop_or_pad`]) to `shape`, e.g. to drop the
    /// padding a pipeline added around a scan smaller than the window.
    ///
    /// # Errors
    /// [`Error::InvalidVolume`] if `shape` is not within the map's grid or has an extent of 0.
    pub fn cropped(&self, shape: [usize; 3]) -> Result<ProbabilityMap> {
        if (0..3).any(|a| shape[a] == 0 || shape[a] > self.shape[a]) {
            return Err(Error::InvalidVolume {
                what: format!("cannot crop a map of {:?} voxels to {shape:?}", self.shape),
            });
        }
        let mut data = Vec::with_capacity(self.classes * shape.iter().product::<usize>());
        for class in 0..self.classes {
            data.extend(self.class(class)?.crop_or_pad(shape, 0.0)?.data);
        }
        Self::new(self.classes, shape, self.spacing, data)
    }

    /// One score per class for the whole map.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for [`Aggregate::TopKMean`] with `k = 0`.
    pub fn aggregate(&self, aggregate: Aggregate) -> Result<Vec<f32>> {
        if aggregate == Aggregate::TopKMean(0) {
            return Err(Error::InvalidConfig {
                field: "aggregate",
                reason: "the mean of the top 0 voxels is not defined: use k >= 1".into(),
            });
        }
        let per_class = |values: &[f32]| -> f32 {
            match aggregate {
                Aggregate::Max => values.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                Aggregate::Mean => (values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64) as f32,
                Aggregate::TopKMean(k) => {
                    let k = k.min(values.len());
                    let mut copy = values.to_vec();
                    // The k largest to the front (the maps hold no NaN: classify refuses them).
                    copy.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
                    (copy[..k].iter().map(|&v| f64::from(v)).sum::<f64>() / k as f64) as f32
                }
            }
        };
        Ok((0..self.classes)
            .filter_map(|c| self.values(c))
            .map(per_class)
            .collect())
    }
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Aggregate::Max => f.write_str("max"),
            Aggregate::Mean => f.write_str("mean"),
            Aggregate::TopKMean(k) => write!(f, "top{k}"),
        }
    }
}

impl FromStr for Aggregate {
    type Err = Error;

    /// `max`, `mean` or `topK` (e.g. `top1000`: the mean of the 1000 largest values).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "max" => Ok(Aggregate::Max),
            "mean" => Ok(Aggregate::Mean),
            _ => match s.strip_prefix("top").and_then(|k| k.parse::<usize>().ok()) {
                Some(k) if k > 0 => Ok(Aggregate::TopKMean(k)),
                _ => Err(Error::InvalidConfig {
                    field: "aggregate",
                    reason: format!("`{s}`: use max, mean or topK with K >= 1 voxels (e.g. top1000)"),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_of_a_known_map() {
        // Class 0: 0..8 / 8; class 1: its complement.
        let c0: Vec<f32> = (0..8).map(|i| i as f32 / 8.0).collect();
        let c1: Vec<f32> = c0.iter().map(|p| 1.0 - p).collect();
        let map = ProbabilityMap::new(2, [2, 2, 2], [1.0; 3], [c0, c1].concat()).unwrap();
        assert_eq!(map.aggregate(Aggregate::Max).unwrap(), [0.875, 1.0]);
        assert_eq!(map.aggregate(Aggregate::Mean).unwrap(), [0.4375, 0.5625]);
        // Top 3 of class 0: (7 + 6 + 5) / 8 / 3 = 0.75; of class 1: (8 + 7 + 6) / 8 / 3.
        assert_eq!(map.aggregate(Aggregate::TopKMean(3)).unwrap(), [0.75, 0.875]);
        // k beyond the map: every voxel, i.e. the mean.
        assert_eq!(map.aggregate(Aggregate::TopKMean(100)).unwrap(), [0.4375, 0.5625]);
        assert!(map.aggregate(Aggregate::TopKMean(0)).is_err());
        let cropped = map.cropped([1, 2, 2]).unwrap();
        assert_eq!(cropped.values(0).unwrap(), [0.0, 0.125, 0.25, 0.375]);
        assert!(map.cropped([3, 2, 2]).is_err());
        assert!(map.class(2).is_err());
    }

    #[test]
    fn names_round_trip() {
        for a in [Aggregate::Max, Aggregate::Mean, Aggregate::TopKMean(1000)] {
            assert_eq!(a.to_string().parse::<Aggregate>().unwrap(), a);
        }
        for bad in ["top0", "top", "median", "top-3"] {
            assert!(bad.parse::<Aggregate>().is_err(), "{bad}");
        }
    }
}
