//! `resnet3d predict`: a trained network over a label CSV, a folder of NIfTI files or DICOM
//! series, or one scan; one CSV row per scan, written as each scan finishes.
//!
//! Scans are read and preprocessed by reader threads while the network runs on the scan
//! before (`--readers`, `--read-ahead`), so that decoding hides behind the network. Each scan
//! is either brought to the network's input size (the training pipeline's centre crop or
//! pad) or, with `--sliding-window`, scored whole: the network's window slides over the
//! preprocessed scan ([`resnet3d::infer`]), the per-class probability maps give the scan's
//! scores by `--aggregate`, and `--maps` writes them on the scan's grid as NIfTI.
//!
//! `--shard I/N` scores a stable share of the inputs ([`Shard`]) so that the N tasks of a
//! job array split an archive with no coordinator; `--resume` skips the rows already in
//! `--out`. A scan that cannot be read gets a row with its `error`, and the run goes on.

use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use clap::Parser;
use resnet3d::FrozenResNet3d;
use resnet3d::burn::tensor::activation::softmax;
use resnet3d::burn::tensor::{Device, Tensor, TensorData};
use resnet3d::data::Preprocessing;
use resnet3d::infer::{Aggregate, Blend, PlacedScan, PreparedScan, ProbabilityMap, SlidingWindow, TrainedRun};
use resnet3d::preprocess::{Placement, Volume};

use serde_json::{Map, Value};

use crate::inputs::{self, Input, Shard};
use crate::progress::Progress;
use crate::settings::{Sidecar, file_hash};
use crate::table::Table;

/// `resnet3d predict --help`'s examples.
const EXAMPLES: &str = "\
Examples:
  resnet3d predict test.csv --model runs/nodules --out scores.csv
  resnet3d predict scans/ --model runs/nodules --out scores.csv --resume
  resnet3d predict archive/ --model runs/nodules --sliding-window --overlap 0.5 \\
      --aggregate top1000 --maps maps/ --out scores.csv
  # a Slurm job array of 16 tasks, then: cat part-*.csv (headers once) > scores.csv
  resnet3d predict archive/ --model runs/nodules --shard $SLURM_ARRAY_TASK_ID/16 \\
      --out part-$SLURM_ARRAY_TASK_ID.csv --resume

The CSV: path, p0 .. pN (class probabilities, or with --sliding-window the aggregate of each
class's map), predicted (the top class), aggregate (with --sliding-window), error (empty, or
why the scan could not be scored). Exit status 3: finished, but some rows carry an error.";

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Score a label CSV, a folder or an archive of scans with a trained network",
    after_help = EXAMPLES
)]
pub struct Args {
    /// What to score: a label CSV (its `path` column, relative to the file; an optional
    /// `series` column names one DICOM series of a folder that holds several), a folder
    /// (every .nii/.nii.gz file and DICOM series folder below it), or one .nii/.nii.gz file.
    pub input: PathBuf,
    /// The trained network: the folder `resnet3d train` wrote, or its model.bpk (with
    /// config.json and preprocessing.json beside it).
    #[arg(long)]
    pub model: PathBuf,
    /// The CSV to write (never overwritten: see --resume).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue --out: skip the scans it already has a row for.
    #[arg(long)]
    pub resume: bool,
    /// Score only share I of N (0 <= I < N) of the inputs, e.g. $SLURM_ARRAY_TASK_ID/N or
    /// $JOB_COMPLETION_INDEX/N; the N shares are disjoint and together all the inputs.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// Slide the network's input window over the whole preprocessed scan instead of
    /// scoring its centre crop.
    #[arg(long)]
    pub sliding_window: bool,
    /// Share of a window that overlaps the next, in [0, 1).
    #[arg(long, default_value_t = 0.25)]
    pub overlap: f64,
    /// Weighting of overlapping windows: constant, gaussian or gaussian:SIGMA_SCALE.
    #[arg(long, default_value = "gaussian")]
    pub blend: Blend,
    /// Windows per network call.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub window_batch: u16,
    /// The scan's score per class from its map: max, mean or topK (the mean of the K
    /// largest voxels).
    #[arg(long, default_value = "max")]
    pub aggregate: Aggregate,
    /// Write each scan's class maps into this folder as NIfTI on the scan's grid, with its
    /// affine (`<path>.<hash>.p<class>.nii.gz`, the path's folders joined by `__`; needs
    /// --sliding-window).
    #[arg(long, requires = "sliding_window")]
    pub maps: Option<PathBuf>,
    /// Threads reading and preprocessing scans while the network runs (1 to 64).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub readers: u16,
    /// Scans each reader prepares ahead of the network (1 to 64).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub read_ahead: u16,
    /// Products in bf16 (f32 sums): faster on CPUs with AVX512_BF16, logits within about 1e-2.
    #[arg(long)]
    pub bf16: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Scans scored in this run.
    pub scored: usize,
    /// Scans whose row carries an error.
    pub failed: usize,
    /// Scans skipped because --out already had them (--resume).
    pub skipped: usize,
    /// Scans in other shards.
    pub other_shards: usize,
    /// Wall-clock time of the run.
    pub wall: Duration,
    /// Reading and preprocessing, summed over the reader threads.
    pub reading: Duration,
    /// The network (and blending), on the main thread.
    pub network: Duration,
    /// The main thread waiting for a scan to be read.
    pub waiting: Duration,
}

/// A scan read and brought onto the network's grid.
struct Prepared {
    volume: Volume,
    scan_shape: [usize; 3],
    scan_spacing: [f32; 3],
    placement: Placement,
}

/// Scores every input; see the module docs.
pub fn run(args: &Args) -> Result<Summary, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let device = Device::flex();
    let trained = TrainedRun::load(&args.model, &device)?;
    let classes = trained.classes()?;
    let in_channels = trained.config.in_channels;
    let network = if args.bf16 {
        trained.net.freeze_bf16()?
    } else {
        trained.net.freeze()?
    };
    let sliding = args.sliding_window.then(|| {
        SlidingWindow::new(trained.preprocessing.size)
            .with_overlap(args.overlap)
            .with_blend(args.blend)
            .with_batch(usize::from(args.window_batch))
    });
    if let Some(sliding) = &sliding {
        sliding.validate()?;
    }
    if args.readers == 0 || args.read_ahead == 0 || args.window_batch == 0 {
        return Err("--readers, --read-ahead and --window-batch take at least 1".into());
    }
    let all = inputs::list(&args.input)?;
    let mut summary = Summary::default();
    let listed = all.len();
    let mine: Vec<Input> = match args.shard {
        Some(shard) => all.into_iter().filter(|i| shard.contains(&i.key)).collect(),
        None => all,
    };
    summary.other_shards = listed - mine.len();
    let mut header = vec!["path".to_string()];
    header.extend((0..classes).map(|c| format!("p{c}")));
    header.push("predicted".into());
    if sliding.is_some() {
        header.push("aggregate".into());
    }
    header.push("error".into());
    // The sidecar is locked first: while another run writes --out, this one touches nothing.
    let mut sidecar = Sidecar::lock(&args.out)?;
    let opened = settings(args, &trained).and_then(|now| {
        if args.resume {
            sidecar.check_resume(&now)?;
        }
        Ok((now, Table::open(sidecar.out(), &header, args.resume)?))
    });
    let (now, (mut table, done)) = match opened {
        Ok(opened) => opened,
        Err(refused) => {
            sidecar.abandon();
            return Err(refused.into());
        }
    };
    sidecar.write(&now)?;
    let todo: Vec<Input> = mine.iter().filter(|i| !done.contains(&i.key)).cloned().collect();
    summary.skipped = mine.len() - todo.len();
    if let Some(maps) = &args.maps {
        std::fs::create_dir_all(maps).map_err(|e| format!("{}: {e}", maps.display()))?;
    }
    let mut progress = Progress::new(todo.len());
    if summary.skipped > 0 {
        progress.println(&format!(
            "{}: {} scans already scored, skipped",
            args.out.display(),
            summary.skipped
        ));
    }
    let preprocessing = &trained.preprocessing;
    let readers = usize::from(args.readers);
    std::thread::scope(|scope| -> Result<(), Box<dyn std::error::Error>> {
        // Reader r prepares inputs r, r + readers, ...; the network takes them in order.
        let mut channels = Vec::with_capacity(readers);
        for r in 0..readers {
            let (send, receive) = sync_channel(usize::from(args.read_ahead));
            channels.push(receive);
            let todo = &todo;
            let whole = sliding.is_some();
            scope.spawn(move || {
                for input in todo.iter().skip(r).step_by(readers) {
                    let started = Instant::now();
                    let prepared = prepare(input, preprocessing, whole);
                    if send.send((prepared, started.elapsed())).is_err() {
                        return; // the network side stopped
                    }
                }
            });
        }
        for (i, input) in todo.iter().enumerate() {
            let waited = Instant::now();
            let (prepared, reading) = channels[i % readers].recv()?;
            summary.waiting += waited.elapsed();
            summary.reading += reading;
            let started = Instant::now();
            let scored =
                prepared.and_then(|p| score(&p, &network, in_channels, sliding.as_ref(), args, input, preprocessing));
            let network_time = started.elapsed();
            summary.network += network_time;
            let mut row = vec![input.key.clone()];
            let line = match scored {
                Ok((scores, aggregate, map_error)) => {
                    summary.scored += 1;
                    summary.failed += usize::from(map_error.is_some());
                    let top = argmax(&scores);
                    row.extend(scores.iter().map(|s| s.to_string()));
                    row.push(top.to_string());
                    row.extend(aggregate);
                    row.push(map_error.clone().unwrap_or_default());
                    let shown: Vec<String> = scores.iter().map(|s| format!("{s:.3}")).collect();
                    format!(
                        "{}: [{}] class {top} (read {:.2} s, network {:.2} s){}",
                        input.key,
                        shown.join(", "),
                        reading.as_secs_f64(),
                        network_time.as_secs_f64(),
                        map_error.map(|e| format!("; {e}")).unwrap_or_default()
                    )
                }
                Err(err) => {
                    summary.failed += 1;
                    row.extend(std::iter::repeat_n(String::new(), classes + 1));
                    if sliding.is_some() {
                        row.push(String::new());
                    }
                    row.push(err.clone());
                    format!("{}: not scored: {err}", input.key)
                }
            };
            table.write(&row).map_err(|e| format!("{}: {e}", args.out.display()))?;
            progress.item(&line);
        }
        Ok(())
    })?;
    progress.finish();
    summary.wall = start.elapsed();
    let rate = summary.scored as f64 / summary.wall.as_secs_f64().max(1e-9);
    progress.println(&format!(
        "{} scans scored, {} not ({}), {} skipped in {:.1} s: {rate:.2} scans/s; reading and preprocessing {:.1} s \
         ({readers} reader thread{}), network {:.1} s, network waiting for scans {:.1} s",
        summary.scored,
        summary.failed,
        if summary.failed > 0 {
            "see the error column"
        } else {
            "none failed"
        },
        summary.skipped,
        summary.wall.as_secs_f64(),
        summary.reading.as_secs_f64(),
        if readers == 1 { "" } else { "s" },
        summary.network.as_secs_f64(),
        summary.waiting.as_secs_f64(),
    ));
    Ok(summary)
}

/// What the output is made with (see [`Sidecar`]): the network's record by its hash, its
/// configuration, pipeline and classes, and the settings that change the numbers.
fn settings(args: &Args, trained: &TrainedRun) -> Result<Map<String, Value>, String> {
    let mut now = Map::new();
    now.insert(
        "written_by".into(),
        format!("resnet3d {}", env!("CARGO_PKG_VERSION")).into(),
    );
    now.insert("model".into(), trained.model.display().to_string().into());
    now.insert("model_fnv1a".into(), file_hash(&trained.model)?.into());
    let classes = trained.classes().map_err(|e| e.to_string())?;
    now.insert("classes".into(), classes.into());
    let config = serde_json::to_value(&trained.config).map_err(|e| e.to_string())?;
    now.insert("config".into(), config);
    let preprocessing = serde_json::to_value(&trained.preprocessing).map_err(|e| e.to_string())?;
    now.insert("preprocessing".into(), preprocessing);
    let scoring: Value = match args.sliding_window {
        false => "centre crop".into(),
        true => serde_json::json!({
            "sliding_window": {
                "overlap": args.overlap,
                "blend": args.blend.to_string(),
                "aggregate": args.aggregate.to_string(),
            }
        }),
    };
    now.insert("scoring".into(), scoring);
    now.insert("precision".into(), (if args.bf16 { "bf16" } else { "f32" }).into());
    Ok(now)
}

/// Reads a scan and applies the pipeline: a centre crop decodes only the slices it takes;
/// sliding windows need the whole scan.
fn prepare(input: &Input, preprocessing: &Preprocessing, whole: bool) -> Result<Prepared, String> {
    if !whole {
        let scan =
            PreparedScan::read(&input.path, input.series.as_deref(), preprocessing).map_err(|e| e.to_string())?;
        return Ok(Prepared {
            volume: scan.input,
            scan_shape: scan.scan_shape,
            scan_spacing: scan.scan_spacing,
            placement: scan.placement,
        });
    }
    let scan = PlacedScan::read(&input.path, input.series.as_deref()).map_err(|e| e.to_string())?;
    let (scan_shape, scan_spacing) = (scan.volume.shape, scan.volume.spacing);
    let volume = preprocessing.apply_whole(scan.volume).map_err(|e| e.to_string())?;
    Ok(Prepared {
        volume,
        scan_shape,
        scan_spacing,
        placement: scan.placement,
    })
}

/// The scan's class scores, the aggregate's name for sliding windows, and why its maps could
/// not be written (the scores are kept).
type Scored = (Vec<f32>, Option<String>, Option<String>);

/// Scores one prepared scan; see [`Scored`].
fn score(
    prepared: &Prepared,
    network: &FrozenResNet3d,
    in_channels: usize,
    sliding: Option<&SlidingWindow>,
    args: &Args,
    input: &Input,
    preprocessing: &Preprocessing,
) -> Result<Scored, String> {
    let text = |e: resnet3d::Error| e.to_string();
    let Some(sliding) = sliding else {
        let [d, h, w] = prepared.volume.shape;
        let p = probabilities(network, &prepared.volume.data, [1, 1, d, h, w], in_channels).map_err(text)?;
        return Ok((p, None, None));
    };
    let [d, h, w] = sliding.roi;
    let map = sliding
        .classify(&prepared.volume, |windows, n| {
            probabilities(network, windows, [n, 1, d, h, w], in_channels)
        })
        .map_err(text)?;
    // Scores over the scan itself, not the padding that fitted a window onto a small scan.
    let (_, resampled) = preprocessing
        .whole_grid(prepared.scan_shape, prepared.scan_spacing)
        .map_err(text)?;
    let scores = match resampled == map.shape() {
        true => map.aggregate(args.aggregate),
        false => map.cropped(resampled).and_then(|m| m.aggregate(args.aggregate)),
    }
    .map_err(text)?;
    let map_error = args.maps.as_ref().and_then(|folder| {
        write_maps(&map, prepared, preprocessing, &folder.join(map_name(&input.key)))
            .err()
            .map(|e| format!("scored, but its maps were not written: {e}"))
    });
    Ok((scores, Some(args.aggregate.to_string()), map_error))
}

/// Softmax of the network's logits for `dims` = `[n, 1, d, h, w]` one-channel inputs
/// (repeated over the network's input channels), row-major `[n, classes]`.
fn probabilities(
    network: &FrozenResNet3d,
    data: &[f32],
    dims: [usize; 5],
    in_channels: usize,
) -> resnet3d::Result<Vec<f32>> {
    let device = Device::flex();
    let x = Tensor::<5>::from_data(TensorData::new(data.to_vec(), dims), &device).repeat_dim(1, in_channels);
    let p = softmax(network.forward(x)?, 1)
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| resnet3d::Error::InvalidInput {
            dims: dims.to_vec(),
            what: format!("the network's output could not be read: {e:?}"),
        })?;
    if let Some(bad) = p.iter().find(|v| !v.is_finite()) {
        return Err(resnet3d::Error::InvalidInput {
            dims: dims.to_vec(),
            what: format!("the network gave a probability of {bad}: the scan holds NaN or infinite voxels"),
        });
    }
    Ok(p)
}

/// Each class's map on the scan's grid, `<base>.p<class>.nii.gz`.
fn write_maps(
    map: &ProbabilityMap,
    prepared: &Prepared,
    preprocessing: &Preprocessing,
    base: &std::path::Path,
) -> resnet3d::Result<()> {
    for class in 0..map.classes() {
        let back = preprocessing.to_scan_grid(&map.class(class)?, prepared.scan_shape, prepared.scan_spacing)?;
        let mut path = base.as_os_str().to_owned();
        path.push(format!(".p{class}.nii.gz"));
        back.save_nifti(PathBuf::from(path), &prepared.placement)?;
    }
    Ok(())
}

/// A map's file name (before `.p<class>.nii.gz`) from a scan's key: folders joined by `__`,
/// the NIfTI extension dropped, at most 120 bytes, then the key's hash (8 hex digits).
pub fn map_name(key: &str) -> String {
    let flat = key.replace(['/', '\\'], "__");
    let lower = flat.to_ascii_lowercase();
    let cut = [".nii.gz", ".nii"]
        .iter()
        .find(|e| lower.ends_with(*e))
        .map_or(0, |e| e.len());
    let mut stem = &flat[..flat.len() - cut];
    // At most 120 bytes of the name (file systems allow 255), cut at a character boundary.
    while stem.len() > 120 {
        let mut end = 120;
        while !stem.is_char_boundary(end) {
            end -= 1;
        }
        stem = &stem[..end];
    }
    // The key's hash keeps names apart that flattening or cutting made equal
    // (`a/b.nii`, `a__b.nii.gz`), across runs and shards alike.
    format!("{stem}.{:08x}", inputs::key_hash(key) as u32)
}

/// The first class with the highest score.
fn argmax(scores: &[f32]) -> usize {
    (0..scores.len()).fold(0, |best, c| if scores[c] > scores[best] { c } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_names_keep_scans_apart() {
        let names = ["a/b.nii", "a__b.nii", "a__b.nii.gz", "x.nii", "x.nii.gz"].map(map_name);
        for (i, a) in names.iter().enumerate() {
            assert!(names[i + 1..].iter().all(|b| a != b), "{names:?}");
        }
        assert!(
            names[0].starts_with("a__b.") && names[0].len() == "a__b.".len() + 8,
            "{}",
            names[0]
        );
        let long = format!("{}/{}.nii", "é".repeat(100), "b".repeat(200));
        assert!(map_name(&long).len() <= 120 + 9);
    }
}
