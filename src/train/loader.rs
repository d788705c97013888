//! [`OrderedLoader`]: Burn's `DataLoader` over a [`ScanDataset`] whose batches are the same,
//! in the same order, whatever the number of loader threads.
//!
//! Burn 0.22's multi-threaded loader splits the dataset into one contiguous share per thread
//! and hands batches on in the order the threads finish them: with 2 workers a run's batches
//! differ from run to run (and from a run with 0 workers), and so do its weights. Here batch
//! `k` is always items `k * batch .. (k + 1) * batch` of the dataset (the last one shorter),
//! delivered in order of `k`; the threads only read, preprocess and augment items ahead of the
//! training thread (a bounded number of batches ahead), and the batch becomes a tensor on the
//! thread that asked for it. With 0 threads the batches are those of Burn's single-threaded
//! loader.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderIterator, Dataset, Progress};
use burn::data::dataset::DatasetError;
use burn::tensor::Device;

use crate::data::{ScanBatch, ScanBatcher, ScanDataset, ScanItem};

/// Batches in flight per thread: read ahead of the training thread, at most.
const AHEAD_PER_WORKER: usize = 2;
/// The most reading threads (`fit` refuses more; a loader made with more uses this many).
pub(crate) const MAX_WORKERS: usize = 256;

/// See [the module](self).
#[derive(Clone)]
pub(crate) struct OrderedLoader {
    dataset: Arc<ScanDataset>,
    batcher: ScanBatcher,
    batch_size: usize,
    workers: usize,
    device: Device,
    /// The items `start .. end` of the dataset (a slice for one of several devices).
    start: usize,
    end: usize,
}

impl OrderedLoader {
    /// Batches of `batch_size` (at least 1) items of `dataset`, read by `workers` threads (0:
    /// on the training thread), as tensors on `device`.
    pub(crate) fn new(
        dataset: ScanDataset,
        batcher: ScanBatcher,
        batch_size: usize,
        workers: usize,
        device: Device,
    ) -> Self {
        let end = dataset.len();
        Self {
            dataset: Arc::new(dataset),
            batcher,
            batch_size: batch_size.max(1),
            workers,
            device,
            start: 0,
            end,
        }
    }

    fn batches(&self) -> usize {
        (self.end - self.start).div_ceil(self.batch_size)
    }

    /// The items of batch `k`.
    fn items(&self, k: usize) -> Result<Vec<ScanItem>, DatasetError> {
        let first = self.start + k * self.batch_size;
        (first..(first + self.batch_size).min(self.end))
            .map(|i| self.dataset.get(i))
            .collect()
    }
}

impl DataLoader<ScanBatch> for OrderedLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<ScanBatch> + 'a> {
        Box::new(OrderedIter::start(self))
    }

    fn num_items(&self) -> usize {
        self.end - self.start
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<ScanBatch>> {
        Arc::new(Self {
            device: device.clone(),
            ..self.clone()
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<ScanBatch>> {
        let end = (self.start + end).min(self.end);
        Arc::new(Self {
            start: (self.start + start).min(end),
            end,
            ..self.clone()
        })
    }
}

/// What the reading threads and the training thread share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// The next batch a thread takes.
    taken: usize,
    /// Batches handed to the training thread.
    delivered: usize,
    /// Items of batches read and not yet delivered, by batch.
    ready: BTreeMap<usize, Result<Vec<ScanItem>, DatasetError>>,
    /// The iterator is gone: threads stop.
    stop: bool,
}

struct OrderedIter<'a> {
    loader: &'a OrderedLoader,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    next: usize,
}

impl<'a> OrderedIter<'a> {
    fn start(loader: &'a OrderedLoader) -> Self {
        let shared = Arc::new(Shared::default());
        let batches = loader.batches();
        let workers = loader.workers.min(MAX_WORKERS);
        let ahead = AHEAD_PER_WORKER * workers;
        let threads = (0..workers.min(batches))
            .map(|_| {
                let (shared, loader) = (shared.clone(), loader.clone());
                std::thread::spawn(move || read_ahead(&loader, &shared, batches, ahead))
            })
            .collect();
        Self {
            loader,
            shared,
            threads,
            next: 0,
        }
    }
}

/// A reading thread: takes the next batch not yet taken, while fewer than `ahead` batches
/// wait for the training thread, and reads its items.
fn read_ahead(loader: &OrderedLoader, shared: &Shared, batches: usize, ahead: usize) {
    loop {
        let k = {
            let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            while !state.stop && state.taken < batches && state.taken >= state.delivered.saturating_add(ahead) {
                state = shared.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            if state.stop || state.taken >= batches {
                return;
            }
            state.taken += 1;
            state.taken - 1
        };
        // A panic while reading is the batch's error, not a training thread waiting forever.
        let items = std::panic::catch_unwind(AssertUnwindSafe(|| loader.items(k))).unwrap_or_else(|_| {
            Err(DatasetError::new(crate::error::Error::Training {
                what: format!("reading the scans of batch {k} panicked"),
            }))
        });
        let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.ready.insert(k, items);
        shared.changed.notify_all();
    }
}

impl Iterator for OrderedIter<'_> {
    type Item = Result<ScanBatch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        let k = self.next;
        if k >= self.loader.batches() {
            return None;
        }
        self.next += 1;
        let items = if self.threads.is_empty() {
            self.loader.items(k)
        } else {
            let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(items) = state.ready.remove(&k) {
                    state.delivered += 1;
                    self.shared.changed.notify_all();
                    break items;
                }
                state = self.shared.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
        };
        Some(items.map(|items| self.loader.batcher.batch(items, &self.loader.device)))
    }
}

impl DataLoaderIterator<ScanBatch> for OrderedIter<'_> {
    fn progress(&self) -> Progress {
        let total = self.loader.num_items();
        Progress::new(
            (self.next * self.loader.batch_size).min(total),
            total,
            Some("items".into()),
        )
    }
}

impl Drop for OrderedIter<'_> {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        self.shared.changed.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
