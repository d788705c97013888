#!/usr/bin/env python3
"""Writes a synthetic CT archive for the loader and prediction benchmarks (not committed: the
default is about 17 GB).

    /opt/torch-venv/bin/python benches/make_archive.py OUT [--count 200] [--shape 512,512,100]
        [--spacing 0.7,0.7,2.5] [--formats nifti,dicom] [--seed 0] [--jobs N]

Shape and spacing are x,y,z (columns, rows, slices; mm). --jobs is the number of worker
processes (default: the number of CPUs); the output does not depend on it.

Pinned: numpy 2.4.6, nibabel 5.4.2, pydicom 3.0.2. nibabel (MIT licence) encodes the NIfTI
headers and pydicom (MIT licence) the DICOM files at run time; none of their code is copied
here. No third-party data is used.

Each scan is a chest-like phantom, float32 HU rounded to int16 (stored value = HU + 1024):
air -1000 HU; an elliptic body cylinder of soft tissue 40 HU (semi-axes 0.42 and 0.32 of the
x and y extents, both scaled by one factor in [0.95, 1.05], centre offset by up to 3% of each
extent); two lung ellipses of -850 HU inside it; a spine disc of bone 700 HU at the back
(larger y, i.e. larger row index); Gaussian noise of std 20 HU everywhere; and in odd-indexed
scans a nodule sphere of 60 HU (radius 4-10 mm, centre placed so the whole sphere lies in one
lung when the volume is deep enough). Scan `i` draws everything from
numpy.random.default_rng([seed, i]), so any scan can be regenerated alone and the output does
not depend on --jobs.

What it writes to OUT (scan names scan_000, scan_001, ...; only the formats asked for):
- nifti/scan_NNN.nii.gz: NIfTI-1 single file, int16, (x, y, z) = shape, scl_slope 1,
  scl_inter -1024, sform and qform (codes 1) = diag(spacing x, y, z, 1) with zero offset,
  units mm. Gzipped at level 1 (nibabel's own default level) with mtime 0 and no file name,
  so reruns give byte-identical files.
- dicom/scan_NNN/0000.dcm ...: one CT series per scan, one file per slice (slice k in file
  k, InstanceNumber k + 1), Part-10 files (128-byte zero preamble, "DICM", file meta group),
  Explicit VR Little Endian, uncompressed. CT Image Storage; UIDs '2.25.<int>' from name-based
  (version 5) UUIDs of the seed and indices; ImagePositionPatient (0, 0, k * spacing z),
  ImageOrientationPatient [1, 0, 0, 0, 1, 0], PixelSpacing [spacing y, spacing x],
  SliceThickness spacing z, int16 (BitsStored 16, PixelRepresentation 1), RescaleSlope 1,
  RescaleIntercept -1024; fixed dates and names. Voxel (i, j, k) of the NIfTI file is pixel
  (row j, column i) of slice k: the same array, written in the two formats. (The two headers
  use the numbers above literally: NIfTI's world frame is RAS and DICOM's LPS, so the two
  are mirrored in x and y in world space; a reader that only uses spacing and voxel order
  sees identical volumes.)
- labels.csv (with nifti) `path,label`: `nifti/scan_000.nii.gz,0`, ..., label 1 for the
  scans with a nodule (odd indices); labels_dicom.csv (with dicom): `dicom/scan_000,0`, ...
After writing, scan 0 and (if written) scan 1 are read back with nibabel and pydicom and
compared with the regenerated phantom.

Cost, measured on a 2-CPU machine (--jobs 2): the default archive (200 scans of 512 x 512 x
100, both formats; 20,000 DICOM files) is 16.6 GB (NIfTI 6.1 GB, about 30 MB a scan; DICOM
10.5 GB) and takes about 2 CPU-seconds a scan (phantom 0.6 s, NIfTI encoding and gzip 1.3 s,
DICOM 0.35 s): 376 s wall while sharing the CPUs with a cargo build (so about 3-4 minutes
expected on idle CPUs). gzip level 6 would take ~6 s a scan for 4% smaller files, hence
level 1.

The generated data is synthetic and dedicated to the public domain under CC0-1.0
(https://creativecommons.org/publicdomain/zero/1.0/). This script is licensed like the
crate, MIT OR Apache-2.0.
"""

import argparse
import gzip
import math
import os
import sys
import time
import uuid
from io import BytesIO
from multiprocessing import Pool
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom import config, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, UID

assert np.__version__ == "2.4.6", f"pinned numpy 2.4.6, found {np.__version__}"
assert nib.__version__ == "5.4.2", f"pinned nibabel 5.4.2, found {nib.__version__}"
assert pydicom.__version__ == "3.0.2", f"pinned pydicom 3.0.2, found {pydicom.__version__}"

config.settings.writing_validation_mode = config.RAISE

HU_AIR, HU_SOFT, HU_LUNG, HU_BONE, HU_NODULE = -1000.0, 40.0, -850.0, 700.0, 60.0
NOISE_STD = 20.0
INTERCEPT = -1024  # stored = HU + 1024
GZIP_LEVEL = 1  # nibabel's default; level 6 roughly triples the NIfTI time for ~10% less disk
VOX_OFFSET = 352  # 348-byte header + 4-byte extension flag (no extensions)
DATE, TIME = "20240102", "030405"


def triple(text, kind):
    parts = [kind(v) for v in text.split(",")]
    if len(parts) != 3 or any(v <= 0 for v in parts):
        raise argparse.ArgumentTypeError(f"expected three positive numbers x,y,z, got {text!r}")
    return tuple(parts)


def uid(seed, *parts):
    """A deterministic '2.25.<int>' UID: the integer of a version-5 UUID of the seed and parts."""
    name = "/".join(["make_archive.py", str(seed), *map(str, parts)])
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}")


def ds_str(v, decimals=6):
    """A DS value string: `v` rounded to `decimals` places, at most 16 characters."""
    s = f"{round(float(v), decimals) + 0.0:.12g}"
    assert len(s) <= 16, s
    return s


def phantom(shape, spacing, seed, index):
    """Scan `index`: stored int16 values (HU + 1024) as a C-contiguous [z, y, x] array, and
    the nodule (centre in mm, radius in mm) or None."""
    nx, ny, nz = shape
    sx, sy, sz = spacing
    ex, ey, ez = nx * sx, ny * sy, nz * sz
    rng = np.random.default_rng([seed, index])

    scale = rng.uniform(0.95, 1.05)
    cx = ex / 2 + rng.uniform(-0.03, 0.03) * ex
    cy = ey / 2 + rng.uniform(-0.03, 0.03) * ey
    a, b = 0.42 * ex * scale, 0.32 * ey * scale  # body semi-axes (mm)

    # One axial cross-section [y, x] (voxel centres at index * spacing), the same for every z.
    x = (np.arange(nx, dtype=np.float32) * sx - cx)[None, :]
    y = (np.arange(ny, dtype=np.float32) * sy - cy)[:, None]
    section = np.full((ny, nx), HU_AIR, dtype=np.float32)
    section[(x / a) ** 2 + (y / b) ** 2 <= 1] = HU_SOFT
    lungs = []
    for side in (-1, 1):
        lx, ly, la, lb = side * 0.48 * a, -0.10 * b, 0.34 * a, 0.62 * b
        lungs.append((lx, ly, la, lb))
        section[((x - lx) / la) ** 2 + ((y - ly) / lb) ** 2 <= 1] = HU_LUNG
    spine_y, spine_r = 0.68 * b, 0.14 * b
    section[x**2 + (y - spine_y) ** 2 <= spine_r**2] = HU_BONE

    nodule = None
    if index % 2 == 1:
        r = rng.uniform(4.0, 10.0)
        lx, ly, la, lb = lungs[int(rng.integers(2))]
        # A centre in the lung ellipse shrunk by r keeps the sphere inside the lung.
        ia, ib = max(la - r, 0.0), max(lb - r, 0.0)
        rho, phi = math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        px, py = cx + lx + ia * rho * math.cos(phi), cy + ly + ib * rho * math.sin(phi)
        pz = rng.uniform(r, ez - r) if ez > 2 * r else ez / 2
        nodule = ((px, py, pz), r)

    vol = rng.standard_normal((nz, ny, nx), dtype=np.float32)
    vol *= NOISE_STD
    vol += section[None, :, :]
    if nodule is not None:
        (px, py, pz), r = nodule
        lo = [max(int(math.floor((p - r) / s)), 0) for p, s in ((pz, sz), (py, sy), (px, sx))]
        hi = [min(int(math.ceil((p + r) / s)) + 1, n) for p, s, n in ((pz, sz, nz), (py, sy, ny), (px, sx, nx))]
        zz = (np.arange(lo[0], hi[0], dtype=np.float32) * sz - pz)[:, None, None]
        yy = (np.arange(lo[1], hi[1], dtype=np.float32) * sy - py)[None, :, None]
        xx = (np.arange(lo[2], hi[2], dtype=np.float32) * sx - px)[None, None, :]
        inside = xx**2 + yy**2 + zz**2 <= r * r
        box = vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        box += inside * (HU_NODULE - section[None, lo[1]:hi[1], lo[2]:hi[2]])
    vol -= INTERCEPT
    np.rint(vol, out=vol)
    return vol.astype(np.int16), nodule


def nifti_bytes(stored_zyx, spacing):
    """The .nii.gz bytes: nibabel's header, the 4-byte 'no extensions' flag, voxels x-fastest."""
    nz, ny, nx = stored_zyx.shape
    affine = np.diag([*map(float, spacing), 1.0])
    hdr = nib.Nifti1Header(endianness="<")
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape((nx, ny, nz))
    hdr.set_xyzt_units("mm")
    hdr.set_zooms(tuple(map(float, spacing)))
    hdr.set_sform(affine, code=1)
    hdr.set_qform(affine, code=1)
    hdr["scl_slope"], hdr["scl_inter"] = 1.0, float(INTERCEPT)
    hdr["descrip"] = b"make_archive.py synthetic (CC0-1.0)"
    hdr["vox_offset"] = VOX_OFFSET
    buf = BytesIO()
    hdr.write_to(buf)
    assert buf.tell() == VOX_OFFSET, buf.tell()
    buf.write(stored_zyx.astype("<i2", copy=False).tobytes())  # [z, y, x] C order = x fastest
    return gzip.compress(buf.getvalue(), compresslevel=GZIP_LEVEL, mtime=0)


def write_dicom(folder, stored_zyx, spacing, seed, index, name):
    nz, ny, nx = stored_zyx.shape
    sx, sy, sz = spacing
    folder.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PYDICOM " + pydicom.__version__

    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = TIME
    ds.Modality = "CT"
    ds.SeriesDescription = "synthetic chest phantom"
    ds.PatientName = f"Synthetic^{name}"
    ds.PatientID = f"ARCHIVE-{seed}-{index:04d}"
    ds.SliceThickness = ds_str(sz)
    ds.StudyInstanceUID = uid(seed, index, "study")
    ds.SeriesInstanceUID = uid(seed, index, "series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = uid(seed, index, "frame-of-reference")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.PixelSpacing = [ds_str(sy), ds_str(sx)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = ds_str(INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    for k in range(nz):
        sop = uid(seed, index, "instance", k)
        meta.MediaStorageSOPInstanceUID = sop
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = ["0", "0", ds_str(k * sz)]
        ds.SliceLocation = ds_str(k * sz)
        ds.PixelData = stored_zyx[k].astype("<i2", copy=False).tobytes()
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)


def make_scan(job):
    out, shape, spacing, seed, index, width, formats = job
    name = f"scan_{index:0{width}d}"
    stored, nodule = phantom(shape, spacing, seed, index)
    if "nifti" in formats:
        (out / "nifti" / f"{name}.nii.gz").write_bytes(nifti_bytes(stored, spacing))
    if "dicom" in formats:
        write_dicom(out / "dicom" / name, stored, spacing, seed, index, name)
    return index, nodule


def check_scan(out, shape, spacing, seed, index, width, formats):
    """Read scan `index` back from both formats and compare with the regenerated phantom."""
    name = f"scan_{index:0{width}d}"
    stored, nodule = phantom(shape, spacing, seed, index)
    assert (nodule is not None) == (index % 2 == 1)
    hu = stored.astype(np.float32) + INTERCEPT
    if "nifti" in formats:
        img = nib.load(out / "nifti" / f"{name}.nii.gz")
        hdr = img.header
        assert img.shape == tuple(shape) and hdr.get_data_dtype() == np.int16
        assert np.allclose(hdr.get_zooms(), spacing, atol=1e-6)
        assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1
        assert np.allclose(img.affine, np.diag([*spacing, 1.0]), atol=1e-6)
        assert np.array_equal(np.asarray(img.dataobj.get_unscaled()).transpose(2, 1, 0), stored)
        assert np.array_equal(img.get_fdata(dtype=np.float32).transpose(2, 1, 0), hu)
    if "dicom" in formats:
        files = sorted((out / "dicom" / name).iterdir())
        assert len(files) == shape[2], len(files)
        for k, f in enumerate(files):
            raw = f.open("rb").read(132)
            assert raw[:128] == b"\x00" * 128 and raw[128:] == b"DICM", f
            ds = dcmread(f)
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.SOPClassUID == CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
            assert ds.SOPInstanceUID == uid(seed, index, "instance", k) == ds.file_meta.MediaStorageSOPInstanceUID
            assert ds.SeriesInstanceUID == uid(seed, index, "series") and ds.InstanceNumber == k + 1
            assert [float(v) for v in ds.ImagePositionPatient] == [0.0, 0.0, float(ds_str(k * spacing[2]))]
            assert [float(v) for v in ds.PixelSpacing] == [float(ds_str(spacing[1])), float(ds_str(spacing[0]))]
            assert (ds.Rows, ds.Columns) == (shape[1], shape[0]) and ds.PixelRepresentation == 1
            arr = ds.pixel_array
            assert arr.dtype == np.int16 and np.array_equal(arr, stored[k]), f


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--shape", type=lambda s: triple(s, int), default=(512, 512, 100))
    ap.add_argument("--spacing", type=lambda s: triple(s, float), default=(0.7, 0.7, 2.5))
    ap.add_argument("--formats", default="nifti,dicom")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or any(f not in ("nifti", "dicom") for f in formats):
        ap.error(f"--formats takes nifti and/or dicom, got {args.formats!r}")
    if args.count < 1:
        ap.error("--count must be at least 1")

    out = args.out
    for f in formats:
        (out / f).mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(args.count - 1)))
    jobs = [(out, args.shape, args.spacing, args.seed, i, width, formats) for i in range(args.count)]
    start = time.perf_counter()
    print(f"{args.count} scans of {'x'.join(map(str, args.shape))} voxels at "
          f"{'x'.join(map(str, args.spacing))} mm ({', '.join(formats)}) into {out}, {args.jobs} jobs",
          flush=True)
    nodules = {}
    done = 0
    with Pool(min(args.jobs, args.count)) as pool:
        for index, nodule in pool.imap_unordered(make_scan, jobs):
            nodules[index] = nodule
            done += 1
            if done % 10 == 0 or done == args.count:
                print(f"  {done}/{args.count} scans, {time.perf_counter() - start:.1f} s", flush=True)
    elapsed = time.perf_counter() - start

    labels = [int(nodules[i] is not None) for i in range(args.count)]
    if "nifti" in formats:
        rows = [f"nifti/scan_{i:0{width}d}.nii.gz,{lab}" for i, lab in enumerate(labels)]
        (out / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    if "dicom" in formats:
        rows = [f"dicom/scan_{i:0{width}d},{lab}" for i, lab in enumerate(labels)]
        (out / "labels_dicom.csv").write_text("path,label\n" + "\n".join(rows) + "\n")

    for i in range(min(args.count, 2)):
        check_scan(out, args.shape, args.spacing, args.seed, i, width, formats)
    sizes = {f: sum(p.stat().st_size for p in (out / f).rglob("*") if p.is_file()) for f in formats}
    print(f"wrote {args.count} scans ({sum(labels)} with a nodule) in {elapsed:.1f} s; "
          + ", ".join(f"{f} {sizes[f] / 1e9:.2f} GB" for f in formats)
          + f"; read-back check of {min(args.count, 2)} scan(s) passed")


if __name__ == "__main__":
    sys.exit(main())
