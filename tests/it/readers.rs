//! What reading a user's file may allocate: hostile NIfTI files (bombs, lying headers,
//! truncation) measured with the tracking allocator, and the label file's class count.

use std::io::Write;
use std::path::Path;

use resnet3d::Error;
use resnet3d::preprocess::{ReadLimits, Volume};

use crate::tracking::peak_during;

/// NIfTI-1 datatype codes (nifti1.h) with their bits per voxel.
const UINT8: (i16, i16) = (2, 8);
const INT16: (i16, i16) = (4, 16);

/// A NIfTI-1 header for `dims` = (x, y, z) voxels of `datatype`, 0.8 x 0.8 x 2.0 mm, scaled by
/// `slope`, `inter` (the phantom example's writer).
fn header(dims: [u16; 3], datatype: (i16, i16), slope: f32, inter: f32) -> Vec<u8> {
    crate::nifti::make_nodules::nifti_header(dims.map(usize::from), datatype, [0.8, 0.8, 2.0], slope, inter)
}

/// Writes `header` then `voxels` bytes given slice by slice (`slice(z)` for z in 0..depth)
/// through gzip (fast level, as scanners' exporters do; `best` for a bomb) to `path`.
fn write_gz(path: &Path, header: &[u8], depth: usize, mut slice: impl FnMut(usize) -> Vec<u8>) {
    write_gz_at(path, flate2::Compression::fast(), header, depth, &mut slice);
}

fn write_gz_at(
    path: &Path,
    level: flate2::Compression,
    header: &[u8],
    depth: usize,
    slice: &mut dyn FnMut(usize) -> Vec<u8>,
) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut gz = flate2::write::GzEncoder::new(file, level);
    gz.write_all(header).unwrap();
    for z in 0..depth {
        gz.write_all(&slice(z)).unwrap();
    }
    gz.finish().unwrap().flush().unwrap();
}

/// The bomb: 1024 x 1024 x 512 voxels of uint8 zeros (512 MiB) in about half a
/// megabyte. Within a caller's limit of 2^24 voxels it is refused from its header: nothing
/// is inflated or allocated for it (the old reader took 2.6 GB).
#[test]
fn a_nifti_bomb_is_refused_from_its_header_within_a_callers_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.nii.gz");
    let zeros = vec![0u8; 1024 * 1024];
    let bomb = header([1024, 1024, 512], UINT8, 1.0, 0.0);
    write_gz_at(&path, flate2::Compression::best(), &bomb, 512, &mut |_| zeros.clone());
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 1 << 20, "the bomb is {size} bytes");
    let limits = ReadLimits::default().with_max_voxels(1 << 24);
    let (result, peak) = peak_during(|| Volume::from_nifti_with_limits(&path, &limits));
    match result.unwrap_err() {
        Error::InvalidVolume { what } => {
            assert!(what.contains("536870912 voxels") && what.contains("16777216"), "{what}")
        }
        other => panic!("{other}"),
    }
    // The file buffer, the inflater's window and state, the header: well under 1 MiB.
    assert!(peak < 1 << 20, "peak {peak} bytes");
}

/// The same bomb scaled to 256^3 voxels and read within the default limits: the peak is the
/// f32 volume plus a bounded buffer (207 KiB on 2026-12-06: the 64 KiB read buffer and the
/// inflater's state; the README states the bound asserted here, 512 KiB) (the old reader held the raw bytes and the f32 copy at
/// once: 1.25x the volume for uint8, 2.5 GiB for the full-size bomb).
#[test]
fn a_bomb_within_the_limits_reads_within_its_f32_volume_and_a_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.nii.gz");
    let zeros = vec![0u8; 256 * 256];
    write_gz(&path, &header([256, 256, 256], UINT8, 1.0, 0.0), 256, |_| zeros.clone());
    let (volume, peak) = peak_during(|| Volume::from_nifti(&path).unwrap());
    let f32_bytes = 256 * 256 * 256 * 4;
    assert_eq!(volume.shape, [256, 256, 256]);
    assert!(volume.data.iter().all(|&v| v == 0.0));
    println!(
        "256^3 bomb: peak {} bytes above the f32 volume",
        peak as isize - f32_bytes as isize
    );
    assert!(
        peak <= f32_bytes + (512 << 10),
        "peak {peak} bytes for a {f32_bytes}-byte volume"
    );
}

/// An honest CT: 512 x 512 x 300 int16 (the stored values + 1024, scl_inter -1024), gzipped.
/// The peak of reading it is at most 1.01x its f32 volume, as the README says (1.0007x on
/// 2026-12-06; the old reader: the int16 bytes and the f32 volume at once, 1.5x).
#[test]
fn an_honest_ct_reads_within_1_01x_its_f32_volume() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ct.nii.gz");
    let [nx, ny, nz] = [512usize, 512, 300];
    // A body of water (1024 stored) in air (24 stored) with a bone ring, changing with z.
    let stored = |x: usize, y: usize, z: usize| -> i16 {
        let (u, v) = (x as f32 / nx as f32 - 0.5, y as f32 / ny as f32 - 0.5);
        let r = u * u + v * v;
        if r > 0.16 {
            24
        } else if r > 0.14 {
            2024 + (z % 7) as i16
        } else {
            1024 + (z % 5) as i16
        }
    };
    write_gz(
        &path,
        &header([nx as u16, ny as u16, nz as u16], INT16, 1.0, -1024.0),
        nz,
        |z| {
            let mut out = Vec::with_capacity(nx * ny * 2);
            for y in 0..ny {
                for x in 0..nx {
                    out.extend_from_slice(&stored(x, y, z).to_le_bytes());
                }
            }
            out
        },
    );
    let (volume, peak) = peak_during(|| Volume::from_nifti(&path).unwrap());
    let f32_bytes = nx * ny * nz * 4;
    assert_eq!(volume.shape, [nz, ny, nx]);
    assert_eq!(volume.spacing, [2.0, 0.8, 0.8]);
    for (x, y, z) in [(0, 0, 0), (256, 256, 3), (256, 256 + 195, 299), (511, 300, 150)] {
        let want = f32::from(stored(x, y, z)) - 1024.0;
        assert_eq!(volume.data[(z * ny + y) * nx + x], want, "voxel ({x}, {y}, {z})");
    }
    let ratio = peak as f64 / f32_bytes as f64;
    println!("512 x 512 x 300 CT: peak {peak} bytes = {ratio:.4}x the f32 volume");
    assert!(ratio <= 1.01, "peak {peak} bytes = {ratio:.4}x the f32 volume");
}

/// Headers that declare more data than their file holds are refused before anything is
/// allocated for it, naming the file: a plain file by its length, a gzipped one by
/// deflate's largest ratio (1032:1); a file cut inside its data names how far it got.
#[test]
fn declared_data_beyond_the_file_is_refused_before_it_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    // 10^9 uint8 voxels (4 GB of f32) declared by a 400-byte .nii and a 1 KB .nii.gz.
    let liar = header([1000, 1000, 1000], UINT8, 1.0, 0.0);
    let plain = dir.path().join("liar.nii");
    let mut bytes = liar.clone();
    bytes.extend_from_slice(&[7u8; 48]);
    std::fs::write(&plain, &bytes).unwrap();
    let gz = dir.path().join("liar.nii.gz");
    write_gz(&gz, &liar, 1, |_| vec![7u8; 600]);
    for path in [&plain, &gz] {
        let (result, peak) = peak_during(|| Volume::from_nifti(path));
        match result.unwrap_err() {
            Error::Corrupt {
                path: named, reason, ..
            } => {
                assert_eq!(&named, path);
                assert!(
                    reason.contains("1000000000 voxels") && reason.contains("truncated"),
                    "{reason}"
                );
            }
            other => panic!("{}: {other}", path.display()),
        }
        assert!(peak < 1 << 20, "{}: peak {peak} bytes", path.display());
    }
    // Within what the gzip stream could hold, but cut short: 64^3 int16 declared, 10 slices
    // of 64 x 64 given. The error says how many voxels were read.
    let short = dir.path().join("short.nii.gz");
    // Noise, so that the stream is long enough to hold the declared data by deflate's ratio.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut noise = |_| {
        (0..64 * 64 * 2)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    write_gz(&short, &header([64, 64, 64], INT16, 1.0, 0.0), 10, &mut noise);
    match Volume::from_nifti(&short).unwrap_err() {
        Error::Corrupt { path, reason, .. } => {
            assert_eq!(path, short);
            assert!(reason.contains("after 40960 of the 262144 voxels"), "{reason}");
        }
        other => panic!("{other}"),
    }
    // A gzip stream cut in the middle: a damaged or truncated file, never a panic.
    let mut cut = std::fs::read(&short).unwrap();
    cut.truncate(cut.len() / 2);
    let cut_path = dir.path().join("cut.nii.gz");
    std::fs::write(&cut_path, cut).unwrap();
    let err = Volume::from_nifti(&cut_path).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
}

/// nibabel's reading of `scl_slope`/`scl_inter`: a slope of 0 or not finite leaves values as
/// stored; a finite slope with an intercept that is not a number is a damaged header (nibabel
/// raises HeaderDataError); big-endian files and `.hdr`/`.img` pairs read the same voxels.
#[test]
fn scaling_byte_order_and_pairs_as_nibabel_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let voxels: Vec<i16> = (0..24).map(|v| v * 3 - 20).collect();
    let data: Vec<u8> = voxels.iter().flat_map(|v| v.to_le_bytes()).collect();
    let write = |name: &str, slope: f32, inter: f32| {
        let path = dir.path().join(name);
        let mut bytes = header([4, 3, 2], INT16, slope, inter);
        bytes.extend_from_slice(&data);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let stored: Vec<f32> = voxels.iter().map(|&v| f32::from(v)).collect();
    for slope in [0.0, f32::NAN, f32::INFINITY] {
        let volume = Volume::from_nifti(write("unscaled.nii", slope, 5.0)).unwrap();
        assert_eq!(volume.data, stored, "slope {slope}");
    }
    let scaled = Volume::from_nifti(write("scaled.nii", 0.5, 3.0)).unwrap();
    let want: Vec<f32> = stored.iter().map(|v| v * 0.5 + 3.0).collect();
    assert_eq!(scaled.data, want);
    let err = Volume::from_nifti(write("nan_inter.nii", 2.0, f32::NAN)).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { reason, .. } if reason.contains("intercept")),
        "{err}"
    );

    // Big-endian: every header field and voxel byte-swapped.
    let mut be = header([4, 3, 2], INT16, 0.5, 3.0);
    let swap = |b: &mut [u8], at: usize, n: usize| b[at..at + n].reverse();
    swap(&mut be, 0, 4);
    for i in 0..8 {
        swap(&mut be, 40 + 2 * i, 2);
    }
    swap(&mut be, 70, 2);
    swap(&mut be, 72, 2);
    for at in [76, 80, 84, 88, 92, 96, 100, 104, 108, 112, 116] {
        swap(&mut be, at, 4);
    }
    be.extend(voxels.iter().flat_map(|v| v.to_be_bytes()));
    let path = dir.path().join("big.nii");
    std::fs::write(&path, be).unwrap();
    assert_eq!(Volume::from_nifti(&path).unwrap().data, want);

    // A .hdr/.img pair: magic ni1, the voxels at vox_offset 0 of the .img.
    let mut hdr = header([4, 3, 2], INT16, 0.5, 3.0);
    hdr.truncate(348);
    hdr[108..112].copy_from_slice(&0f32.to_le_bytes());
    hdr[344..348].copy_from_slice(b"ni1\0");
    std::fs::write(dir.path().join("pair.hdr"), &hdr).unwrap();
    std::fs::write(dir.path().join("pair.img"), &data).unwrap();
    assert_eq!(Volume::from_nifti(dir.path().join("pair.hdr")).unwrap().data, want);
    std::fs::remove_file(dir.path().join("pair.img")).unwrap();
    let err = Volume::from_nifti(dir.path().join("pair.hdr")).unwrap_err();
    assert!(matches!(err, Error::FileNotFound { .. }), "{err}");
}

/// A label file whose class numbers leave a class without scans is refused without sizing
/// anything by a label: a label near usize::MAX overflowed `max + 1` (release builds then
/// indexed out of bounds), 10^15 asked for 8 PB of counts.
#[test]
fn a_label_beyond_the_scans_is_refused_without_allocating_for_it() {
    let dir = tempfile::tempdir().unwrap();
    for scan in ["a.nii.gz", "b.nii.gz"] {
        std::fs::write(dir.path().join(scan), b"").unwrap();
    }
    let csv = dir.path().join("labels.csv");
    for label in [usize::MAX.to_string(), "1000000000000000".to_string(), "2".to_string()] {
        std::fs::write(&csv, format!("path,label\na.nii.gz,0\nb.nii.gz,{label}\n")).unwrap();
        let (result, peak) = peak_during(|| resnet3d::data::LabelledScans::from_csv(&csv, 0.5, 1));
        match result.unwrap_err() {
            Error::InvalidLabels { row, what, .. } => {
                assert_eq!(row, None, "{what}");
                assert!(
                    what.contains(&format!("no scan has label 1, though labels go up to {label}")),
                    "{what}"
                );
            }
            other => panic!("{label}: {other}"),
        }
        assert!(peak < 1 << 20, "peak {peak}");
    }
}

/// What a hostile review found the first streaming reader accepted or refused wrongly, each
/// now as nibabel reads it or a typed error: a negative extent (read as 65535 through the
/// `nifti` crate's u16), an empty fourth axis, values that are not finite after conversion
/// (float64 1e39, NaN, an int16 scaled past f32), a single file's data inside its header
/// (vox_offset 348; 0 is taken as 352), and a `.hdr`/`.img` pair under a non-UTF-8 path.
#[test]
fn headers_and_values_nibabel_refuses_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, header: Vec<u8>, data: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, [header, data.to_vec()].concat()).unwrap();
        path
    };
    let invalid = |path: &Path, says: &str| match Volume::from_nifti(path).unwrap_err() {
        Error::InvalidVolume { what } => assert!(what.contains(says), "{}: {what}", path.display()),
        other => panic!("{}: {other}", path.display()),
    };
    // dim = [3, 1, 1, -1].
    let mut negative = header([1, 1, 1], UINT8, 1.0, 0.0);
    negative[46..48].copy_from_slice(&(-1i16).to_le_bytes());
    invalid(
        &file("negative.nii", negative, &[0; 64]),
        "dim [3, 1, 1, -1] is not a 3-D volume",
    );
    // dim = [4, 2, 2, 2, 0].
    let mut empty_t = header([2, 2, 2], UINT8, 1.0, 0.0);
    empty_t[40..42].copy_from_slice(&4i16.to_le_bytes());
    empty_t[48..50].copy_from_slice(&0i16.to_le_bytes());
    invalid(
        &file("empty_t.nii", empty_t, &[1; 8]),
        "dim [4, 2, 2, 2, 0] is not a 3-D volume",
    );
    // float64 1e39 (beyond f32), then NaN.
    let float64 = (64i16, 64i16);
    let values: Vec<u8> = [0.5f64, 1e39].iter().flat_map(|v| v.to_le_bytes()).collect();
    invalid(
        &file("big.nii", header([2, 1, 1], float64, 1.0, 0.0), &values),
        "voxel 1 (x 1, y 0, z 0) is inf",
    );
    let values: Vec<u8> = [f64::NAN, 0.5].iter().flat_map(|v| v.to_le_bytes()).collect();
    invalid(
        &file("nan.nii", header([2, 1, 1], float64, 1.0, 0.0), &values),
        "voxel 0 (x 0, y 0, z 0) is NaN",
    );
    invalid(
        &file(
            "scaled.nii",
            header([1, 1, 1], INT16, 1e36, 0.0),
            &1000i16.to_le_bytes(),
        ),
        "is inf after conversion to f32 and scl_slope/scl_inter",
    );
    // vox_offset 348: inside the header; 0: right after it.
    let mut inside = header([2, 1, 1], UINT8, 1.0, 0.0);
    inside[108..112].copy_from_slice(&348f32.to_le_bytes());
    let path = file("inside.nii", inside, &[7, 9]);
    assert!(
        matches!(Volume::from_nifti(&path).unwrap_err(), Error::Corrupt { reason, .. } if reason.contains("vox_offset 348"))
    );
    let mut zero = header([2, 1, 1], UINT8, 1.0, 0.0);
    zero[108..112].copy_from_slice(&0f32.to_le_bytes());
    assert_eq!(
        Volume::from_nifti(file("zero.nii", zero, &[7, 9])).unwrap().data,
        [7.0, 9.0]
    );
    // A pair in a folder whose name is not UTF-8.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let folder = dir.path().join(std::ffi::OsStr::from_bytes(b"scan\xff"));
        std::fs::create_dir(&folder).unwrap();
        let mut hdr = header([2, 1, 1], UINT8, 1.0, 0.0);
        hdr.truncate(348);
        hdr[108..112].copy_from_slice(&0f32.to_le_bytes());
        hdr[344..348].copy_from_slice(b"ni1\0");
        std::fs::write(folder.join("a.hdr"), hdr).unwrap();
        std::fs::write(folder.join("a.img"), [3u8, 4]).unwrap();
        assert_eq!(Volume::from_nifti(folder.join("a.hdr")).unwrap().data, [3.0, 4.0]);
    }
}

/// A window far larger than the resampled scan costs its output, not more: the taps are
/// kept only where the window and the grid overlap (a window of 2^26 voxels along depth
/// over a 2-voxel scan held 24 bytes of taps per window voxel, 1.5 GiB beside a 256 MiB
/// output).
#[test]
fn a_huge_window_over_a_small_scan_costs_its_output() {
    let scan = Volume {
        data: vec![1.0, 3.0],
        shape: [2, 1, 1],
        spacing: [1.0; 3],
    };
    let len = 1usize << 26;
    let (out, peak) = peak_during(|| scan.resample_crop_or_pad([1.0; 3], [len, 1, 1], -5.0).unwrap());
    assert_eq!(out.shape, [len, 1, 1]);
    let middle = len / 2 - 1;
    assert_eq!(&out.data[middle..middle + 2], &[1.0, 3.0]);
    assert_eq!((out.data[0], out.data[len - 1]), (-5.0, -5.0));
    let output = len * 4;
    assert!(
        peak <= output + (1 << 20),
        "peak {peak} bytes for a {output}-byte output"
    );
}
