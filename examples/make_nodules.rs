//! Writes a small labelled CT dataset to try `resnet3d train` on: chest-like phantoms as
//! NIfTI files (int16 with `scl_inter = -1024`, like scanner exports), half of them with a
//! small dense nodule in a lung, and `labels.csv` (`path,label`; 1 = nodule).
//!
//! ```text
//! cargo run --release --example make_nodules -- scans/ --count 48
//! resnet3d train --labels scans/labels.csv --out runs/nodules
//! ```
//!
//! Every scan has its own grid (18-26 slices of 2.0-3.0 mm, 44-60 rows and columns of
//! 0.9-1.3 mm), so the training pipeline's resampling and cropping do real work. Values in
//! Hounsfield units: air -1000, lungs about -850, soft tissue about 40, the nodule 60, with
//! Gaussian noise of 25 HU. Released under the crate's licence (MIT OR Apache-2.0): the
//! generated files are synthetic and free to use.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Write a phantom CT dataset with nodules for `resnet3d train`")]
pub struct Args {
    /// Folder to write the scans and labels.csv into (created).
    pub dir: PathBuf,
    /// Number of scans (half with a nodule).
    #[arg(long, default_value_t = 48)]
    pub count: usize,
    /// Seed of the phantoms.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Smallest and largest nodule radius, in mm.
    #[arg(long, default_value = "3,5", value_delimiter = ',')]
    pub radius: Vec<f32>,
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let [lo, hi] = <[f32; 2]>::try_from(args.radius.as_slice()).map_err(|_| "--radius takes min,max")?;
    let csv = make_dataset(&args.dir, args.count, args.seed, [lo, hi])?;
    println!("wrote {} scans and {}", args.count, csv.display());
    Ok(())
}

/// Writes `count` phantoms `scan_000.nii.gz`, ... and `labels.csv` into `dir`; returns the
/// CSV's path. Scan `i` has a nodule when `i` is odd.
pub fn make_dataset(dir: &Path, count: usize, seed: u64, radius: [f32; 2]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut csv = String::from("path,label\n");
    for i in 0..count {
        let label = i % 2;
        let name = format!("scan_{i:03}.nii.gz");
        let (dims, spacing, hu) = phantom(seed.wrapping_mul(1000).wrapping_add(i as u64), label == 1, radius);
        write_nifti(&dir.join(&name), dims, spacing, &hu)?;
        csv.push_str(&format!("{name},{label}\n"));
    }
    let path = dir.join("labels.csv");
    std::fs::write(&path, csv)?;
    Ok(path)
}

/// A small xorshift generator (the phantoms need only variety, not quality).
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    /// Approximately normal: the sum of four uniforms, scaled to unit variance.
    fn normal(&mut self) -> f32 {
        (self.uniform() + self.uniform() + self.uniform() + self.uniform() - 2.0) * 3f32.sqrt()
    }
}

/// One phantom: its extent `(x, y, z)` in voxels, spacing in mm and HU values (`x` fastest).
pub fn phantom(seed: u64, nodule: bool, radius: [f32; 2]) -> ([usize; 3], [f32; 3], Vec<f32>) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let nz = 18 + (rng.uniform() * 9.0) as usize;
    let nxy = 44 + (rng.uniform() * 17.0) as usize;
    let spacing = [rng.range(0.9, 1.3), 0.0, rng.range(2.0, 3.0)];
    let spacing = [spacing[0], spacing[0], spacing[2]];
    // Millimetre coordinates centred on the volume.
    let extent = [nxy as f32 * spacing[0], nxy as f32 * spacing[1], nz as f32 * spacing[2]];
    let body = [0.42 * extent[0], 0.36 * extent[1]];
    let lung_r = 0.22 * extent[0].min(extent[1]);
    let lungs = [[-0.2 * extent[0], 0.0], [0.2 * extent[0], 0.0]];
    // The nodule: inside one lung, away from its wall.
    let side = lungs[(rng.uniform() * 2.0) as usize % 2];
    let radius = rng.range(radius[0], radius[1]);
    let angle = rng.range(0.0, std::f32::consts::TAU);
    let off = rng.range(0.0, (lung_r - radius - 2.0).max(0.0));
    let centre = [
        side[0] + off * angle.cos(),
        side[1] + off * angle.sin(),
        rng.range(-0.3, 0.3) * extent[2],
    ];
    let mut hu = Vec::with_capacity(nxy * nxy * nz);
    for z in 0..nz {
        for y in 0..nxy {
            for x in 0..nxy {
                let p = [
                    (x as f32 + 0.5) * spacing[0] - extent[0] / 2.0,
                    (y as f32 + 0.5) * spacing[1] - extent[1] / 2.0,
                    (z as f32 + 0.5) * spacing[2] - extent[2] / 2.0,
                ];
                let in_body = (p[0] / body[0]).powi(2) + (p[1] / body[1]).powi(2) <= 1.0;
                let in_lung = lungs
                    .iter()
                    .any(|l| (p[0] - l[0]).powi(2) + (p[1] - l[1]).powi(2) <= lung_r * lung_r);
                let d2: f32 = (0..3).map(|a| (p[a] - centre[a]).powi(2)).sum();
                let value = if nodule && in_lung && d2 <= radius * radius {
                    60.0
                } else if in_lung {
                    -850.0
                } else if in_body {
                    40.0
                } else {
                    -1000.0
                };
                hu.push(value + 25.0 * rng.normal());
            }
        }
    }
    ([nxy, nxy, nz], spacing, hu)
}

/// A NIfTI-1 file (348-byte header, 4 empty extension bytes), int16 voxels storing
/// `HU + 1024` with `scl_slope = 1`, `scl_inter = -1024`; gzipped when the name ends in `.gz`.
pub fn write_nifti(path: &Path, dims: [usize; 3], pixdim: [f32; 3], hu: &[f32]) -> std::io::Result<()> {
    let stored: Vec<i16> = hu
        .iter()
        .map(|v| (v + 1024.0).round().clamp(i16::MIN as f32, i16::MAX as f32) as i16)
        .collect();
    write_nifti_i16(path, dims, pixdim, 1.0, -1024.0, &stored)
}

/// A little-endian NIfTI-1 single-file header (`n+1`, data at byte 352, no extensions) for
/// `dims` = (x, y, z) voxels of `(datatype, bitpix)` (nifti1.h codes: (2, 8) uint8, (4, 16)
/// int16, (16, 32) float32, (64, 64) float64), `pixdim` mm, scaled by `slope`, `inter`.
pub fn nifti_header(
    dims: [usize; 3],
    (datatype, bitpix): (i16, i16),
    pixdim: [f32; 3],
    slope: f32,
    inter: f32,
) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    let dim = [3, dims[0], dims[1], dims[2], 1, 1, 1, 1];
    for (i, d) in dim.iter().enumerate() {
        h[40 + 2 * i..42 + 2 * i].copy_from_slice(&(*d as i16).to_le_bytes());
    }
    h[70..72].copy_from_slice(&datatype.to_le_bytes());
    h[72..74].copy_from_slice(&bitpix.to_le_bytes());
    let pix = [1.0, pixdim[0], pixdim[1], pixdim[2], 0.0, 0.0, 0.0, 0.0];
    for (i, p) in pix.iter().enumerate() {
        h[76 + 4 * i..80 + 4 * i].copy_from_slice(&p.to_le_bytes());
    }
    h[108..112].copy_from_slice(&352f32.to_le_bytes()); // vox_offset
    h[112..116].copy_from_slice(&slope.to_le_bytes()); // scl_slope
    h[116..120].copy_from_slice(&inter.to_le_bytes()); // scl_inter
    h[344..348].copy_from_slice(b"n+1\0");
    h
}

/// A NIfTI-1 file of int16 `stored` values (`x` fastest) read back as
/// `stored * slope + inter`; gzipped when the name ends in `.gz`.
pub fn write_nifti_i16(
    path: &Path,
    dims: [usize; 3],
    pixdim: [f32; 3],
    slope: f32,
    inter: f32,
    stored: &[i16],
) -> std::io::Result<()> {
    let mut h = nifti_header(dims, (4, 16), pixdim, slope, inter); // int16
    for v in stored {
        h.extend_from_slice(&v.to_le_bytes());
    }
    let file = std::fs::File::create(path)?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        gz.write_all(&h)?;
        gz.finish()?;
    } else {
        std::io::BufWriter::new(file).write_all(&h)?;
    }
    Ok(())
}
