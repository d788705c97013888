//! [`TrainedRun`]: a network saved by a training run, with its input pipeline.

use std::path::{Path, PathBuf};

use burn::config::Config;
use burn::tensor::Device;

use crate::arch::config::ResNet3dConfig;
use crate::data::Preprocessing;
use crate::error::{Error, Result};
use crate::model::network::ResNet3d;

/// A trained network and everything needed to feed it: what
/// [`train::fit`](crate::train::fit) (and `resnet3d train`) leaves in its output folder as
/// `model.bpk`, `config.json` and `preprocessing.json`.
#[derive(Debug)]
pub struct TrainedRun {
    /// The network, in eval mode on the device it was loaded to.
    pub net: ResNet3d,
    /// Its configuration.
    pub config: ResNet3dConfig,
    /// The pipeline its training scans went through.
    pub preprocessing: Preprocessing,
    /// The record file it was read from.
    pub model: PathBuf,
}

impl TrainedRun {
    /// Reads a run: `path` is its folder or the `model.bpk` in it (`config.json` and
    /// `preprocessing.json` are read from beside the record).
    ///
    /// # Errors
    /// [`Error::FileNotFound`] naming the missing file, [`Error::Corrupt`] for a configuration
    /// or pipeline file that is not one, [`Error::InvalidConfig`], and the errors of
    /// [`ResNet3d::load`].
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let (dir, model) = if path.is_dir() {
            (path.to_path_buf(), path.join("model.bpk"))
        } else {
            (
                path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                path.to_path_buf(),
            )
        };
        for file in [&model, &dir.join("config.json"), &dir.join("preprocessing.json")] {
            if !file.is_file() {
                return Err(Error::FileNotFound { path: file.clone() });
            }
        }
        let corrupt = |file: &str, err: burn::config::ConfigError| Error::Corrupt {
            path: dir.join(file),
            format: "resnet3d run",
            reason: format!("{err}; it should be the file `resnet3d train` wrote"),
        };
        let config = ResNet3dConfig::load(dir.join("config.json")).map_err(|e| corrupt("config.json", e))?;
        config.validate()?;
        let preprocessing =
            Preprocessing::load(dir.join("preprocessing.json")).map_err(|e| corrupt("preprocessing.json", e))?;
        if preprocessing.size.contains(&0)
            || preprocessing
                .spacing
                .is_some_and(|s| s.iter().any(|&v| !(v.is_finite() && v > 0.0)))
        {
            return Err(Error::InvalidConfig {
                field: "preprocessing",
                reason: format!(
                    "{}: size {:?} and spacing {:?} must be positive (and finite); it should be the file `resnet3d train` wrote",
                    dir.join("preprocessing.json").display(),
                    preprocessing.size,
                    preprocessing.spacing
                ),
            });
        }
        let net = ResNet3d::load(&model, &config, device)?;
        Ok(Self {
            net,
            config,
            preprocessing,
            model,
        })
    }

    /// The number of classes of the network's head.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a headless network (it gives features, not classes).
    pub fn classes(&self) -> Result<usize> {
        self.config.num_classes.ok_or_else(|| Error::InvalidConfig {
            field: "num_classes",
            reason: "is None: the network has no head and gives features; a classifier needs one".into(),
        })
    }
}
