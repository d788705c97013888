//! Preprocessed volumes kept between epochs: in memory up to a budget, then on disk.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, Result};
use crate::preprocess::Volume;

/// Where decoded and preprocessed volumes are kept so that the second epoch neither
/// decompresses nor resamples again.
///
/// Volumes stay in memory until `memory_budget` bytes are used; the rest goes to files in the
/// cache folder, if there is one (else they are made again each time they are asked for).
/// An entry is keyed by the scan's path, size and modification time and by the whole
/// preprocessing, so a changed file or setting is never served stale; a cache file that
/// does not read back whole and with its own key is ignored and rewritten.
///
/// ```
/// use resnet3d::data::VolumeCache;
/// let cache = VolumeCache::in_memory(8 << 30); // up to 8 GiB
/// assert_eq!(cache.stats().made, 0);
/// ```
#[derive(Debug)]
pub struct VolumeCache {
    memory_budget: usize,
    dir: Option<PathBuf>,
    memory: Mutex<Memory>,
    made: AtomicU64,
    from_memory: AtomicU64,
    from_disk: AtomicU64,
}

#[derive(Debug, Default)]
struct Memory {
    volumes: HashMap<String, Arc<Volume>>,
    bytes: usize,
}

/// How a [`VolumeCache`] served its requests so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Volumes decoded and preprocessed (cache misses).
    pub made: u64,
    /// Served from memory.
    pub from_memory: u64,
    /// Served from the cache folder.
    pub from_disk: u64,
    /// Bytes held in memory.
    pub memory_bytes: usize,
}

/// First bytes of a cache file (version 1 of the layout below).
const MAGIC: &[u8; 8] = b"R3DVOL1\n";

impl VolumeCache {
    /// A cache in memory only, up to `memory_budget` bytes of voxels.
    pub fn in_memory(memory_budget: usize) -> Self {
        Self {
            memory_budget,
            dir: None,
            memory: Mutex::default(),
            made: AtomicU64::new(0),
            from_memory: AtomicU64::new(0),
            from_disk: AtomicU64::new(0),
        }
    }

    /// A cache in memory up to `memory_budget` bytes, then in files under `dir` (created if
    /// missing).
    ///
    /// # Errors
    /// [`Error::Io`] if `dir` cannot be created.
    pub fn with_disk(memory_budget: usize, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: Some(dir.to_path_buf()),
            ..Self::in_memory(memory_budget)
        })
    }

    /// What the cache has done so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            made: self.made.load(Ordering::Relaxed),
            from_memory: self.from_memory.load(Ordering::Relaxed),
            from_disk: self.from_disk.load(Ordering::Relaxed),
            memory_bytes: self.memory.lock().unwrap_or_else(PoisonError::into_inner).bytes,
        }
    }

    /// The volume of `key`, made by `make` if the cache does not hold it.
    ///
    /// Two workers asking for the same missing key at once may both make it; the result is
    /// the same, and the second insertion is dropped.
    pub(crate) fn get_or_make(&self, key: &str, make: impl FnOnce() -> Result<Volume>) -> Result<Arc<Volume>> {
        if let Some(volume) = self.lock().volumes.get(key) {
            self.from_memory.fetch_add(1, Ordering::Relaxed);
            return Ok(volume.clone());
        }
        let file = self
            .dir
            .as_ref()
            .map(|dir| dir.join(format!("{:016x}.vol", fnv1a(key.as_bytes()))));
        if let Some(volume) = file.as_deref().and_then(|f| read_file(f, key)) {
            self.from_disk.fetch_add(1, Ordering::Relaxed);
            return Ok(self.keep(key, volume));
        }
        let volume = make()?;
        self.made.fetch_add(1, Ordering::Relaxed);
        let volume = self.keep(key, volume);
        if Arc::strong_count(&volume) == 1
            && let Some(file) = file
        {
            // Not kept in memory: keep it on disk. A failed write only costs time later.
            if let Err(err) = write_file(&file, key, &volume) {
                log::warn!("volume cache: cannot write {}: {err}", file.display());
            }
        }
        Ok(volume)
    }

    /// Keeps `volume` in memory if the budget allows; returns it shared.
    fn keep(&self, key: &str, volume: Volume) -> Arc<Volume> {
        let bytes = volume.data.len() * size_of::<f32>();
        let volume = Arc::new(volume);
        let mut memory = self.lock();
        if memory.bytes + bytes <= self.memory_budget && !memory.volumes.contains_key(key) {
            memory.bytes += bytes;
            memory.volumes.insert(key.to_string(), volume.clone());
        }
        volume
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        // A worker that panicked while holding the lock left a consistent map (every update
        // is a single insert), so the poison is ignored.
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// FNV-1a, 64 bits: a stable file name for a key (the key itself is stored in the file and
/// compared, so a collision only costs a rebuild).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Layout: MAGIC, key length (u32 LE), key, shape (3 x u64 LE), spacing (3 x f32 LE),
/// voxels (f32 LE).
fn write_file(path: &Path, key: &str, volume: &Volume) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(64 + key.len() + 4 * volume.data.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(key.len() as u32).to_le_bytes());
    bytes.extend_from_slice(key.as_bytes());
    volume
        .shape
        .iter()
        .for_each(|&n| bytes.extend_from_slice(&(n as u64).to_le_bytes()));
    volume
        .spacing
        .iter()
        .for_each(|s| bytes.extend_from_slice(&s.to_le_bytes()));
    volume
        .data
        .iter()
        .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    // Written whole under a temporary name, then renamed: a reader never sees half a file.
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&bytes)?;
    drop(file);
    std::fs::rename(&temporary, path)
}

/// The volume in `path` if it is a whole cache file of `key`.
fn read_file(path: &Path, key: &str) -> Option<Volume> {
    let mut bytes = Vec::new();
    std::fs::File::open(path).ok()?.read_to_end(&mut bytes).ok()?;
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let (len, rest) = rest.split_at_checked(4)?;
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    let (stored, rest) = rest.split_at_checked(len)?;
    if stored != key.as_bytes() {
        return None;
    }
    let (shape, rest) = rest.split_at_checked(24)?;
    let shape: [usize; 3] =
        std::array::from_fn(|i| u64::from_le_bytes(shape[8 * i..8 * i + 8].try_into().unwrap_or_default()) as usize);
    let (spacing, voxels) = rest.split_at_checked(12)?;
    let spacing: [f32; 3] =
        std::array::from_fn(|i| f32::from_le_bytes(spacing[4 * i..4 * i + 4].try_into().unwrap_or_default()));
    let count = shape.iter().try_fold(1usize, |n, &e| n.checked_mul(e))?;
    if voxels.len() != count.checked_mul(4)? {
        return None;
    }
    let data = voxels
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Volume::new(data, shape, spacing).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(v: f32) -> Volume {
        Volume::new(vec![v; 8], [2, 2, 2], [1.0, 0.5, 0.5]).unwrap()
    }

    /// Memory up to the budget, then disk; a second cache on the same folder reads the file;
    /// a damaged file is made again.
    #[test]
    fn memory_then_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VolumeCache::with_disk(32, dir.path()).unwrap(); // one volume of 8 f32
        let a = cache.get_or_make("a", || Ok(volume(1.0))).unwrap();
        let b = cache.get_or_make("b", || Ok(volume(2.0))).unwrap();
        assert_eq!((a.data[0], b.data[0]), (1.0, 2.0));
        cache.get_or_make("a", || panic!("a is in memory")).unwrap();
        let b2 = cache.get_or_make("b", || panic!("b is on disk")).unwrap();
        assert_eq!(*b2, volume(2.0));
        assert_eq!(
            cache.stats(),
            CacheStats {
                made: 2,
                from_memory: 1,
                from_disk: 1,
                memory_bytes: 32
            }
        );

        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let bytes = std::fs::read(&files[0]).unwrap();
        std::fs::write(&files[0], &bytes[..bytes.len() - 1]).unwrap();
        let again = VolumeCache::with_disk(0, dir.path()).unwrap();
        assert_eq!(again.get_or_make("b", || Ok(volume(3.0))).unwrap().data[0], 3.0);
        assert_eq!(again.stats().made, 1);
    }
}
