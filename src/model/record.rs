//! Saving and reloading a [`ResNet3d`] in Burn's own record format (burnpack).

use std::path::Path;

use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::Device;

use crate::arch::config::ResNet3dConfig;
use crate::error::{Error, Result};
use crate::model::network::ResNet3d;

impl ResNet3d {
    /// Writes every parameter and running statistic to `path` (Burn's burnpack format;
    /// `.bpk` is the usual extension), replacing an existing file. The configuration is not
    /// part of the record: keep it (it is a `Config`, so `config.save(path)` writes it as JSON).
    ///
    /// # Errors
    /// [`Error::Record`] if the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut store = BurnpackStore::from_file(path).auto_extension(false).overwrite(true);
        self.save_into(&mut store).map_err(|err| Error::Record {
            path: path.to_path_buf(),
            reason: err.to_string(),
        })
    }

    /// Reads a network written by [`save`](Self::save); `config` must be the one it was built
    /// with. Strict: every tensor of the record is used and every parameter filled.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`], [`Error::FileNotFound`], [`Error::Record`] when the record
    /// is damaged or belongs to another configuration.
    pub fn load(path: impl AsRef<Path>, config: &ResNet3dConfig, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        config.validate()?;
        if !path.exists() {
            return Err(Error::FileNotFound {
                path: path.to_path_buf(),
            });
        }
        let record_error = |reason: String| Error::Record {
            path: path.to_path_buf(),
            reason,
        };
        let mut model = config.init(device);
        let mut store = BurnpackStore::from_file(path).auto_extension(false);
        let applied = model
            .load_from(&mut store)
            .map_err(|err| record_error(err.to_string()))?;
        if !applied.errors.is_empty() || !applied.missing.is_empty() || !applied.unused.is_empty() {
            return Err(record_error(format!(
                "does not fit this configuration: {} error(s) {:?}, missing {:?}, unused {:?}",
                applied.errors.len(),
                applied.errors.iter().take(3).map(|e| e.to_string()).collect::<Vec<_>>(),
                applied.missing.iter().take(5).map(|(path, _)| path).collect::<Vec<_>>(),
                applied.unused.iter().take(5).collect::<Vec<_>>(),
            )));
        }
        Ok(model)
    }
}
