//! What reading a scan may allocate, decided before anything is allocated.

use crate::preprocess::MAX_VOXELS;

/// The most bytes a deflate stream (gzip, zlib, DICOM's deflated syntax) inflates to per
/// byte of it: a 258-byte match coded in two bits. A compressed file can therefore back at
/// most this many times its size.
#[cfg(any(feature = "nifti", feature = "dicom"))]
pub(crate) const MAX_DEFLATE_RATIO: u64 = 1032;

/// Bounds on what reading a scan from a file may allocate. A reader checks what a header
/// declares against them before it allocates or inflates anything, and bounds every other
/// allocation by the bytes the file actually holds; the defaults let any real CT or MRI
/// through.
///
/// ```
/// use resnet3d::preprocess::ReadLimits;
///
/// // A service that takes uploads: at most 512^3 voxels (512 MiB of f32) per scan.
/// let limits = ReadLimits::default().with_max_voxels(512 * 512 * 512);
/// assert_eq!(limits.max_voxels(), 1 << 27);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    max_voxels: usize,
    max_inflated_bytes: u64,
}

impl Default for ReadLimits {
    /// [`MAX_VOXELS`] voxels (4 GiB of `f32`) and 64 MiB inflated per deflated DICOM file
    /// (a 4096 x 4096 slice of 32-bit pixels; a CT slice inflates to about 0.5 MiB).
    fn default() -> Self {
        Self {
            max_voxels: MAX_VOXELS,
            max_inflated_bytes: 64 << 20,
        }
    }
}

impl ReadLimits {
    /// The most voxels a volume read from a file may have (default [`MAX_VOXELS`]); a header
    /// that declares more is refused before its data is read. At most [`MAX_VOXELS`]: larger
    /// values are lowered to it.
    pub fn with_max_voxels(mut self, max_voxels: usize) -> Self {
        self.max_voxels = max_voxels.min(MAX_VOXELS);
        self
    }

    /// The most bytes one deflated DICOM file (transfer syntax 1.2.840.10008.1.2.1.99) may
    /// inflate to, all its elements together (default 64 MiB).
    pub fn with_max_inflated_bytes(mut self, bytes: u64) -> Self {
        self.max_inflated_bytes = bytes;
        self
    }

    /// The most voxels a volume read from a file may have.
    pub fn max_voxels(&self) -> usize {
        self.max_voxels
    }

    /// The most bytes one deflated DICOM file may inflate to.
    pub fn max_inflated_bytes(&self) -> u64 {
        self.max_inflated_bytes
    }
}
