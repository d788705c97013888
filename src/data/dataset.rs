//! One split of a label file as a Burn [`Dataset`] of ready network inputs, and the
//! [`Batcher`] that stacks them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rayon::prelude::*;

use super::cache::VolumeCache;
use super::labels::{LabelledScan, LabelledScans, Split};
use super::pipeline::{Augmentation, Preprocessing};
use super::rng::SplitMix64;
use crate::error::{Error, Result};
use crate::preprocess::Volume;

/// A scan ready for the network, with its class.
#[derive(Debug, Clone)]
pub struct ScanItem {
    /// The preprocessed (and, when training, augmented) volume of the pipeline's size.
    pub volume: Volume,
    /// Its class.
    pub label: usize,
}

/// The scans of one split of a [`LabelledScans`], each read, preprocessed and cached, then
/// (for training) augmented: a Burn [`Dataset`] of [`ScanItem`]s for Burn's `DataLoader`
/// (whose workers then do the reading and augmenting in parallel).
///
/// Epochs are counted by the dataset itself (every `len()` items read start the next one),
/// and with [`with_shuffle`](Self::with_shuffle) it permutes its own order per epoch, keyed
/// by `(seed, epoch)`, instead of the `DataLoader`'s shuffle: the order and the augmentation
/// of epoch `e` are then the same whether the run started at epoch 1 or resumed at `e`
/// ([`starting_at_epoch`](Self::starting_at_epoch)); Burn's shuffle starts its sequence
/// afresh on resuming.
#[derive(Debug)]
pub struct ScanDataset {
    scans: Vec<LabelledScan>,
    labels_file: PathBuf,
    preprocessing: Preprocessing,
    augmentation: Option<Augmentation>,
    cache: Arc<VolumeCache>,
    shuffle: Option<u64>,
    first_epoch: u64,
    reads: AtomicU64,
    order: Mutex<(u64, Vec<usize>)>,
}

impl ScanDataset {
    /// The scans of `split` in `labels`, through `preprocessing`, cached in `cache`; no
    /// augmentation, file order.
    pub fn new(labels: &LabelledScans, split: Split, preprocessing: Preprocessing, cache: Arc<VolumeCache>) -> Self {
        Self {
            scans: labels.split(split).cloned().collect(),
            labels_file: labels.source().to_path_buf(),
            preprocessing,
            augmentation: None,
            cache,
            shuffle: None,
            first_epoch: 0,
            reads: AtomicU64::new(0),
            order: Mutex::new((u64::MAX, Vec::new())),
        }
    }

    /// Augments every item ([`Augmentation::apply`]); the cache then holds volumes larger by
    /// the crop margin.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] from [`Augmentation::validate`].
    pub fn with_augmentation(mut self, augmentation: Augmentation) -> Result<Self> {
        augmentation.validate()?;
        self.augmentation = Some(augmentation);
        Ok(self)
    }

    /// Reads the items of each epoch in an order drawn from `seed` and the epoch.
    pub fn with_shuffle(mut self, seed: u64) -> Self {
        self.shuffle = Some(seed);
        self
    }

    /// Counts epochs from `epoch` (0-based: the number of epochs already trained), for a run
    /// resumed after `epoch` epochs.
    pub fn starting_at_epoch(mut self, epoch: usize) -> Self {
        self.first_epoch = epoch as u64;
        self
    }

    /// The scans, in file order.
    pub fn scans(&self) -> &[LabelledScan] {
        &self.scans
    }

    /// The pipeline the scans go through.
    pub fn preprocessing(&self) -> &Preprocessing {
        &self.preprocessing
    }

    /// Reads and preprocesses every scan now (in parallel), filling the cache, so that a scan
    /// that cannot be read stops the run before training starts.
    ///
    /// # Errors
    /// [`Error::InvalidLabels`] naming the label file's line of the first scan (in file
    /// order) that cannot be read or preprocessed, with the reason.
    pub fn prepare(&self) -> Result<()> {
        let failures: Vec<(usize, Error)> = (0..self.scans.len())
            .into_par_iter()
            .filter_map(|i| self.cached(i).err().map(|err| (i, err)))
            .collect();
        match failures.into_iter().min_by_key(|(i, _)| *i) {
            None => Ok(()),
            Some((i, err)) => Err(self.row_error(i, err)),
        }
    }

    /// The item at position `index` of the current epoch.
    ///
    /// # Errors
    /// As [`prepare`](Self::prepare), for this scan; [`Error::InvalidVolume`] if `index` is
    /// out of range.
    pub fn item(&self, index: usize) -> Result<ScanItem> {
        let read = self.reads.fetch_add(1, Ordering::Relaxed);
        let n = self.scans.len().max(1) as u64;
        let epoch = self.first_epoch + read / n;
        let scan = self.position(epoch, index).ok_or_else(|| Error::InvalidVolume {
            what: format!("item {index} asked of a dataset of {} scans", self.scans.len()),
        })?;
        let cached = self.cached(scan).map_err(|err| self.row_error(scan, err))?;
        let volume = match &self.augmentation {
            Some(aug) => aug.apply(&cached, self.preprocessing.size, epoch, scan as u64)?,
            None => Volume::clone(&cached),
        };
        Ok(ScanItem {
            volume,
            label: self.scans[scan].label,
        })
    }

    /// The scan read at `index` in `epoch`.
    fn position(&self, epoch: u64, index: usize) -> Option<usize> {
        if index >= self.scans.len() {
            return None;
        }
        let Some(seed) = self.shuffle else {
            return Some(index);
        };
        let mut order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        if order.0 != epoch {
            let mut permutation: Vec<usize> = (0..self.scans.len()).collect();
            SplitMix64::keyed(&[seed, epoch]).shuffle(&mut permutation);
            *order = (epoch, permutation);
        }
        Some(order.1[index])
    }

    /// Scan `i` preprocessed, from the cache or made now.
    fn cached(&self, i: usize) -> Result<Arc<Volume>> {
        let scan = &self.scans[i];
        let margin = self.augmentation.as_ref().map_or([0; 3], |a| a.crop_margin);
        let key = cache_key(&scan.path, &self.preprocessing, margin)?;
        self.cache
            .get_or_make(&key, || self.preprocessing.read(&scan.path, margin))
    }

    fn row_error(&self, i: usize, err: Error) -> Error {
        let scan = &self.scans[i];
        Error::InvalidLabels {
            path: self.labels_file.clone(),
            row: Some(scan.line),
            what: format!("{}: {err}", scan.path.display()),
        }
    }
}

impl Dataset<ScanItem> for ScanDataset {
    fn get(&self, index: usize) -> std::result::Result<ScanItem, DatasetError> {
        self.item(index).map_err(DatasetError::new)
    }

    fn len(&self) -> usize {
        self.scans.len()
    }
}

/// The scan's identity (canonical path, length, modification time) and the whole pipeline.
fn cache_key(path: &Path, preprocessing: &Preprocessing, margin: [usize; 3]) -> Result<String> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let modified = |meta: &std::fs::Metadata| {
        meta.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos())
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    // A DICOM folder: its files' count, total length and latest change stand for its content.
    let (len, changed) = if meta.is_dir() {
        let mut key = (0, modified(&meta));
        for entry in std::fs::read_dir(path).map_err(io)? {
            let meta = entry.and_then(|e| e.metadata()).map_err(io)?;
            key = (key.0 + meta.len() + 1, key.1.max(modified(&meta)));
        }
        key
    } else {
        (meta.len(), modified(&meta))
    };
    let canonical = path.canonicalize().map_err(io)?;
    Ok(format!(
        "{}|{len}|{changed}|{preprocessing}|{margin:?}",
        canonical.display()
    ))
}

/// A batch of scans: the volumes `[batch, channels, depth, height, width]` and their classes.
#[derive(Debug, Clone)]
pub struct ScanBatch {
    /// The inputs.
    pub volumes: Tensor<5>,
    /// The classes, `[batch]`.
    pub targets: Tensor<1, Int>,
}

/// Stacks [`ScanItem`]s into a [`ScanBatch`], repeating the grey volume over `channels`
/// input channels (1 for a network built `with_in_channels(1)`).
#[derive(Debug, Clone, Copy)]
pub struct ScanBatcher {
    /// Input channels of the network.
    pub channels: usize,
}

impl Batcher<ScanItem, ScanBatch> for ScanBatcher {
    /// Items of one dataset all have the pipeline's size; the batch takes the first item's
    /// shape, and an item of another shape (never made by [`ScanDataset`]) is cropped or
    /// padded with zeros to it rather than stopping the loader thread.
    fn batch(&self, items: Vec<ScanItem>, device: &Device) -> ScanBatch {
        let shape = items.first().map_or([1; 3], |item| item.volume.shape);
        let voxels: usize = shape.iter().product();
        let channels = self.channels.max(1);
        let mut data = Vec::with_capacity(items.len() * channels * voxels);
        let mut targets = Vec::with_capacity(items.len());
        for item in &items {
            let fitted;
            let volume = if item.volume.shape == shape && item.volume.data.len() == voxels {
                &item.volume
            } else {
                log::warn!(
                    "batch of {shape:?} volumes: an item of {:?} was cropped or padded with zeros to fit",
                    item.volume.shape
                );
                fitted = item.volume.crop_or_pad(shape, 0.0).unwrap_or_else(|_| Volume {
                    data: vec![0.0; voxels],
                    shape,
                    spacing: [1.0; 3],
                });
                &fitted
            };
            for _ in 0..channels {
                data.extend_from_slice(&volume.data);
            }
            targets.push(item.label as i64);
        }
        let [d, h, w] = shape;
        ScanBatch {
            volumes: Tensor::from_data(TensorData::new(data, [items.len(), channels, d, h, w]), device),
            targets: Tensor::from_data(TensorData::new(targets, [items.len()]), device),
        }
    }
}
