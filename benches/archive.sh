#!/usr/bin/env bash
# `resnet3d predict` over an archive (issue 24): scans per second on 200 generated scans of
# 512 x 512 x 100 voxels (0.7 x 0.7 x 2.5 mm; NIfTI .nii.gz and DICOM series), the share of
# time spent reading and preprocessing against the network, the frozen network's own speed,
# and the peak memory and time of a sliding-window pass over a 512 x 512 x 300 CT at
# 0.7 x 0.7 x 1 mm (ResNet3d-18, 64 x 128 x 128 windows at 1 mm).
#
#   bash benches/archive.sh            # about 15 minutes on 2 cores, 17 GB of generated scans
#
# Scans come from benches/make_archive.py (the venv of tests/fixtures/make_fixtures.py, with
# nibabel and pydicom), into $ARCHIVE and $WHOLE unless they are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/resnet3d-ci-target}"
PYTHON="${PYTHON:-/opt/torch-venv/bin/python}"
ARCHIVE="${ARCHIVE:-/var/tmp/archive}"
WHOLE="${WHOLE:-/var/tmp/whole}"
WORK="${WORK:-/var/tmp/predict-bench}"

cargo build --release -p resnet3d-cli --bin resnet3d --example make_run
BIN="$CARGO_TARGET_DIR/release/resnet3d"
MAKE_RUN="$CARGO_TARGET_DIR/release/examples/make_run"
[ -d "$ARCHIVE/nifti" ] || "$PYTHON" benches/make_archive.py "$ARCHIVE"
[ -d "$WHOLE/nifti" ] || "$PYTHON" benches/make_archive.py "$WHOLE" --count 1 --shape 512,512,300 --spacing 0.7,0.7,1.0 --seed 7
rm -rf "$WORK" && mkdir -p "$WORK"
lscpu | grep -E "Model name|^CPU\(s\)"

# The network alone (no reading): ResNet3d-18 on one 64 x 128 x 128 input.
"$MAKE_RUN" "$WORK/run18" --depth 18 --size 64,128,128 --spacing 1.5

measure() { # name, then the predict arguments
    local name=$1; shift
    /usr/bin/time -v "$BIN" predict "$@" 2> "$WORK/$name.log" || true
    grep -E "scans scored" "$WORK/$name.log"
    grep -E "Maximum resident set size|Elapsed \(wall" "$WORK/$name.log" | sed 's/^\s*/    /'
}
for format in nifti dicom; do
    echo "== $format: 200 scans, centre crop, 1 reader thread"
    measure "$format" "$ARCHIVE/$format" --model "$WORK/run18" --out "$WORK/$format.csv"
done

echo "== whole scan: 512 x 512 x 300 at 0.7 x 0.7 x 1 mm, sliding windows of 64 x 128 x 128 at 1 mm"
"$MAKE_RUN" "$WORK/run18_1mm" --depth 18 --size 64,128,128 --spacing 1.0 --repeat 3
measure whole "$WHOLE/nifti/scan_000.nii.gz" --model "$WORK/run18_1mm" --out "$WORK/whole.csv" \
    --sliding-window --window-batch 2
measure whole_maps "$WHOLE/nifti/scan_000.nii.gz" --model "$WORK/run18_1mm" --out "$WORK/whole_maps.csv" \
    --sliding-window --window-batch 2 --maps "$WORK/maps"
measure whole_dicom "$WHOLE/dicom/scan_000" --model "$WORK/run18_1mm" --out "$WORK/whole_dicom.csv" \
    --sliding-window --window-batch 2
