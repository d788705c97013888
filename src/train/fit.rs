//! [`fit`]: a whole fine-tuning run on Burn's `Learner`, from two [`ScanDataset`]s to the best
//! network on disk.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::config::Config;
use burn::data::dataloader::{DataLoader, Dataset};
use burn::module::Module;
use burn::optim::OptimizerRecord;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::lr_scheduler::LrSchedulerRecord;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::{Device, Tensor};
use burn::train::checkpoint::{Checkpointer, FileCheckpointer};
use burn::train::metric::{AccuracyMetric, AurocMetric, LossMetric, Metric};
use burn::train::{ExecutionStrategy, Learner, LearnerSummary, MultiDeviceOptim, SupervisedTraining, TrainingStrategy};

use super::FusedAdamConfig;
use super::classifier::ScanClassifier;
use super::lines::EpochLines;
use super::loader::{MAX_WORKERS, OrderedLoader};
use super::schedule::WarmupCosine;
use super::select::{KeepBestAndLast, Names, StopWithoutImprovement};
use crate::arch::config::ResNet3dConfig;
use crate::data::{ScanBatch, ScanBatcher, ScanDataset};
use crate::error::{Error, Result};
use crate::model::network::ResNet3d;

/// The settings of a fine-tuning run ([`fit`]).
#[derive(Config, Debug)]
pub struct FitConfig {
    /// Epochs to train (in all, counting those of a resumed run).
    #[config(default = 20)]
    pub epochs: usize,
    /// Scans per batch.
    #[config(default = 4)]
    pub batch_size: usize,
    /// Peak learning rate of Adam ([`FusedAdam`](super::FusedAdam)).
    #[config(default = 1e-3)]
    pub learning_rate: f64,
    /// Epochs of linear warm-up from `learning_rate / 100` to `learning_rate`; then a cosine
    /// decay to 0 at the last epoch's last step.
    #[config(default = 1)]
    pub warmup_epochs: usize,
    /// L2 weight decay added to the gradient (Adam's, not AdamW's); 0 for none.
    #[config(default = 0.0)]
    pub weight_decay: f32,
    /// Weight each class in the loss by `n / (classes * n_c)` (its inverse frequency in the
    /// training split), so that a rare class counts as much as a common one.
    #[config(default = true)]
    pub balance_classes: bool,
    /// Stop when the validation AUROC has not improved for this many epochs.
    #[config(default = "Some(5)")]
    pub patience: Option<usize>,
    /// Loader threads reading and augmenting scans while the network trains (0: on the
    /// training thread; at most 256); the batches, and so the run, are the same whatever
    /// their number.
    #[config(default = 2)]
    pub workers: usize,
    /// Seed of the training order and of the new head's initialisation.
    #[config(default = 0)]
    pub seed: u64,
    /// Keep the stem and `layer1` as loaded: no gradients, BatchNorm statistics unchanged.
    #[config(default = false)]
    pub freeze_early: bool,
    /// Continue from the last complete checkpoint in the output folder, if there is one.
    #[config(default = false)]
    pub resume: bool,
    /// Burn's gradient checkpointing: the BatchNorm(+ReLU, +residual) outputs are recomputed
    /// in the backward pass instead of kept, the same gradients for less memory. ResNet3d-50
    /// on 2x1x128x192x192: peak 3.4 GB instead of 4.2 GB, steps 10% longer (README, "Training
    /// memory at whole-scan sizes").
    #[config(default = false)]
    pub gradient_checkpointing: bool,
}

/// One epoch's metrics, as Burn's `Learner` logged them (means over the epoch; AUROC over
/// all of the epoch's scans).
#[derive(Config, Debug, PartialEq)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy, in %.
    pub train_accuracy: f64,
    /// Training AUROC, in %.
    pub train_auroc: f64,
    /// Mean validation loss.
    pub valid_loss: f64,
    /// Validation accuracy, in %.
    pub valid_accuracy: f64,
    /// Validation AUROC, in %.
    pub valid_auroc: f64,
}

/// What a run did: written as `summary.json` in the output folder.
#[derive(Config, Debug)]
pub struct FitSummary {
    /// The epoch with the highest validation AUROC (ties: higher accuracy, then earlier).
    pub best_epoch: usize,
    /// Its validation AUROC, in %.
    pub best_valid_auroc: f64,
    /// Its validation accuracy, in %.
    pub best_valid_accuracy: f64,
    /// Every epoch's metrics, including those of the run this one resumed.
    pub epochs: Vec<EpochMetrics>,
    /// The epoch this run started at (1, or the one after the checkpoint it resumed from).
    pub first_epoch: usize,
    /// Whether early stopping ended the run before `FitConfig::epochs`.
    pub stopped_early: bool,
    /// Wall time of this run's epochs, in seconds.
    pub seconds: f64,
    /// The best network ([`ResNet3d::load`] with `config.json`).
    pub model: PathBuf,
    /// The best network on the held-out (`test`) scans, if measured ([`evaluate`](super::evaluate)).
    pub test: Option<super::TestMetrics>,
}

/// File names in the output folder.
const MODEL: &str = "model.bpk";
const CONFIG: &str = "config.json";
const SUMMARY: &str = "summary.json";
const PREPROCESSING: &str = "preprocessing.json";

/// Fine-tunes `net` (built from `config`, with a head of `config.num_classes` classes) on
/// `train`, measuring `valid` after every epoch, with Burn's `Learner` on `devices` (one
/// device: single-device training; several: Burn's multi-device strategy, data parallel
/// with the optimizer on the first).
///
/// In `out`: Burn's checkpoints (`checkpoint/`: the last two epochs and the best validation
/// AUROC; model, optimizer and schedule), metric logs (`train/`, `valid/`) and
/// `experiment.log`; then the best epoch's network as `model.bpk` with `config.json` and
/// the data pipeline as `preprocessing.json`, and [`FitSummary`] as `summary.json`.
/// Progress: Burn's TUI on a terminal, otherwise [`EpochLines`] (a line per split and epoch).
///
/// With `settings.resume`, training continues from the last epoch with all three checkpoint
/// files (model, optimizer and schedule state as saved; the training order and augmentation
/// of the following epochs as in an uninterrupted run, since [`ScanDataset`] keys them by
/// epoch). The early-stopping count restarts at the resumed epoch.
///
/// # Errors
/// [`Error::InvalidConfig`] for settings that cannot train (no head, fewer classes than
/// labels, an empty split, zero epochs or batch size, a learning rate outside `(0, 1]`, no
/// device); [`Error::Io`] / [`Error::Record`] for the output folder and checkpoints;
/// [`Error::Training`] when Burn's training loop stops on an error (a scan that cannot be
/// read is named with its label-file line); [`Error::InvalidLabels`] from
/// [`ScanDataset::prepare`], which runs first on both splits.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    net: ResNet3d,
    config: &ResNet3dConfig,
    train: ScanDataset,
    valid: ScanDataset,
    settings: &FitConfig,
    devices: &[Device],
    out: impl AsRef<Path>,
) -> Result<FitSummary> {
    let out = out.as_ref();
    let classes = check(config, &train, &valid, settings, devices)?;
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    // The output folder is checked before the scans are read (which may take minutes).
    let resumed = if settings.resume { last_checkpoint(out) } else { None };
    if let Some(epoch) = resumed {
        check_resumable(out, epoch, config, &devices[0])?;
    }
    let start = resumed.unwrap_or(0);
    let earlier = ["train", "valid", "checkpoint"].iter().any(|d| out.join(d).exists());
    if resumed.is_none() && earlier {
        let (what, instead) = match settings.resume {
            true => (" without a complete checkpoint to resume from", "or remove it"),
            false => ("", "or resume it"),
        };
        return Err(Error::InvalidConfig {
            field: "out",
            reason: format!(
                "{} holds an earlier run{what}: its logs would mix with this one's; use another folder {instead}",
                out.display()
            ),
        });
    }
    if start >= settings.epochs {
        return Err(Error::InvalidConfig {
            field: "FitConfig.epochs",
            reason: format!(
                "is {}, but {} already holds a checkpoint of epoch {start}: ask for more epochs to continue",
                settings.epochs,
                out.display()
            ),
        });
    }
    train.prepare()?;
    valid.prepare()?;

    let autodiff = |device: &Device| match settings.gradient_checkpointing {
        true => device.clone().autodiff().gradient_checkpointing(),
        false => device.clone().autodiff(),
    };
    let device = autodiff(&devices[0]);
    let weights = settings.balance_classes.then(|| balanced_weights(&train, classes));
    // A network built on a plain device gets autodiff (gradients for every parameter that
    // was not frozen) before it moves to the training device.
    let mut net = net.train().fork(&device);
    if settings.gradient_checkpointing {
        // `fork` keeps a tensor's own autodiff strategy (Burn 0.22.1), so the parameters
        // would stay without checkpointing while the batches come with it, and no operation
        // may mix the two: the parameters take the device's strategy here.
        net = net.map(&mut Checkpointed);
    }
    if settings.freeze_early {
        net = freeze_early(net);
    }
    let mut model = ScanClassifier::new(net);
    if let Some(weights) = weights {
        model = model.with_class_weights(weights)?;
    }
    let preprocessing = train.preprocessing().clone();
    let channels = config.in_channels;
    let steps_per_epoch = train.len().div_ceil(settings.batch_size);
    let train = train.with_shuffle(settings.seed).starting_at_epoch(start);
    // The same batches in the same order whatever the number of loader threads.
    let loader = |dataset: ScanDataset, device: Device| -> Arc<dyn DataLoader<ScanBatch>> {
        let batcher = ScanBatcher { channels };
        Arc::new(OrderedLoader::new(
            dataset,
            batcher,
            settings.batch_size,
            settings.workers,
            device,
        ))
    };
    let train_loader = loader(train, device.clone());
    let valid_loader = loader(valid, device.clone().without_autodiff());

    let schedule = schedule(settings, steps_per_epoch);
    let optimizer = FusedAdamConfig::new()
        .with_weight_decay((settings.weight_decay > 0.0).then(|| WeightDecayConfig::new(settings.weight_decay)))
        .init();

    let metrics = (AccuracyMetric::new(), LossMetric::new(), AurocMetric::default());
    let names = Names {
        accuracy: metrics.0.name(),
        loss: metrics.1.name(),
        auroc: metrics.2.name(),
    };
    let mut training = SupervisedTraining::new(out, train_loader, valid_loader)
        .metrics(metrics)
        .num_epochs(settings.epochs)
        .with_default_checkpointers()
        .with_checkpointing_strategy(KeepBestAndLast::new(names.clone()));
    if !std::io::stdout().is_terminal() {
        training = training.renderer(Box::new(EpochLines::new()));
    }
    if let Some(patience) = settings.patience {
        training = training.early_stopping(StopWithoutImprovement {
            names: names.clone(),
            patience,
            first: start + 1,
        });
    }
    if let Some(epoch) = resumed {
        training = training.checkpoint(epoch);
    }
    if settings.gradient_checkpointing {
        training = training.gradient_checkpointing();
    }
    if devices.len() > 1 {
        let devices = devices.iter().map(autodiff).collect();
        training = training.with_training_strategy(TrainingStrategy::Default(ExecutionStrategy::MultiDevice(
            devices,
            MultiDeviceOptim::OptimMainDevice,
        )));
    }

    let clock = Instant::now();
    let result = training.launch(Learner::new(model, optimizer, schedule));
    let seconds = clock.elapsed().as_secs_f64();
    if let Some(error) = result.error {
        return Err(Error::Training {
            what: error.to_string(),
        });
    }

    let epochs = read_metrics(out, &names)?;
    let best = epochs
        .iter()
        .max_by(|a, b| {
            (a.valid_auroc, a.valid_accuracy)
                .partial_cmp(&(b.valid_auroc, b.valid_accuracy))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(b.epoch.cmp(&a.epoch))
        })
        .cloned()
        .ok_or_else(|| Error::Training {
            what: format!("no validation metrics were logged in {}", out.display()),
        })?;
    export_best(out, best.epoch, config, &devices[0])?;
    let write = |name: &str, json: String| {
        let path = out.join(name);
        std::fs::write(&path, json).map_err(|source| Error::Io { path, source })
    };
    write(PREPROCESSING, preprocessing.to_string())?;
    let last = epochs.last().map_or(0, |e| e.epoch);
    let summary = FitSummary {
        best_epoch: best.epoch,
        best_valid_auroc: best.valid_auroc,
        best_valid_accuracy: best.valid_accuracy,
        first_epoch: start + 1,
        stopped_early: last < settings.epochs,
        seconds,
        model: out.join(MODEL),
        epochs,
        test: None,
    };
    write(SUMMARY, summary.to_string())?;
    Ok(summary)
}

/// The number of classes, after checking that the run can start.
fn check(
    config: &ResNet3dConfig,
    train: &ScanDataset,
    valid: &ScanDataset,
    settings: &FitConfig,
    devices: &[Device],
) -> Result<usize> {
    let invalid = |field: &'static str, reason: String| Err(Error::InvalidConfig { field, reason });
    config.validate()?;
    let Some(classes) = config.num_classes else {
        return invalid(
            "num_classes",
            "is None: a classifier needs a head (with_num_classes(Some(k)))".into(),
        );
    };
    let labels = train
        .scans()
        .iter()
        .chain(valid.scans())
        .map(|s| s.label)
        .max()
        .unwrap_or(0)
        + 1;
    if classes < labels.max(2) {
        return invalid(
            "num_classes",
            format!(
                "is {classes}, but the labels need {}: set it to the number of classes",
                labels.max(2)
            ),
        );
    }
    if settings.workers > MAX_WORKERS {
        return invalid(
            "workers",
            format!(
                "is {}: at most {MAX_WORKERS} loader threads (each reads scans ahead; a few per core is plenty)",
                settings.workers
            ),
        );
    }
    if train.len() == 0 || valid.len() == 0 {
        return invalid(
            "FitConfig",
            format!(
                "cannot train on {} training and {} validation scans: both splits need scans",
                train.len(),
                valid.len()
            ),
        );
    }
    if settings.epochs == 0 {
        return invalid("FitConfig.epochs", "is 0: train for at least one epoch".into());
    }
    if settings.batch_size == 0 {
        return invalid("FitConfig.batch_size", "is 0: a batch needs at least one scan".into());
    }
    if !(settings.learning_rate > 0.0 && settings.learning_rate <= 1.0) {
        return invalid(
            "FitConfig.learning_rate",
            format!("is {}: it must be in (0, 1]", settings.learning_rate),
        );
    }
    if devices.is_empty() {
        return invalid("devices", "is empty: give at least one device to train on".into());
    }
    Ok(classes)
}

/// Linear warm-up from `lr / 100` to `lr` over the warm-up steps, then cosine to 0 over the
/// remaining steps, one step per batch: PyTorch's `LinearLR` then `CosineAnnealingLR` at every
/// step ([`WarmupCosine`]).
fn schedule(settings: &FitConfig, steps_per_epoch: usize) -> ModuleLrScheduler {
    let total = settings.epochs * steps_per_epoch;
    ModuleLrScheduler::new(WarmupCosine::new(
        settings.learning_rate,
        settings.warmup_epochs * steps_per_epoch,
        total,
    ))
}

/// `n / (classes * n_c)` per class of the training split (1 for a class without scans).
fn balanced_weights(train: &ScanDataset, classes: usize) -> Vec<f32> {
    let labels: Vec<usize> = train.scans().iter().map(|s| s.label).collect();
    balanced_weights_of(&labels, classes)
}

/// `n / (classes * n_c)` per class of `labels` (1 for a class without any), scikit-learn's
/// "balanced" class weights.
pub(crate) fn balanced_weights_of(labels: &[usize], classes: usize) -> Vec<f32> {
    let mut counts = vec![0usize; classes];
    labels.iter().filter(|&&l| l < classes).for_each(|&l| counts[l] += 1);
    let n = labels.len() as f32;
    counts
        .iter()
        .map(|&c| if c == 0 { 1.0 } else { n / (classes as f32 * c as f32) })
        .collect()
}

impl ResNet3d {
    /// The head `fc` drawn anew from `seed`, with the distribution of PyTorch's `nn.Linear`
    /// (weight and bias uniform in `±1/sqrt(features)`), from the crate's own seeded
    /// generator rather than Burn's process-wide one: the same seed gives the same head
    /// whatever else the process draws meanwhile (other threads, other networks). Whether the
    /// head trains is kept (a frozen head stays frozen). Without a head the network is
    /// returned as it is.
    pub fn with_seeded_head(mut self, seed: u64) -> Self {
        if let Some(fc) = self.fc.take() {
            let [features, classes] = fc.weight.dims();
            let mut rng = crate::data::rng::SplitMix64::keyed(&[seed, 0x4845_4144]);
            // PyTorch's bound; 0 without features (its `nn.Linear(0, k)` has a zero bias).
            let bound = if features == 0 {
                0.0
            } else {
                1.0 / (features as f64).sqrt()
            };
            let mut draw = |n: usize| (0..n).map(|_| rng.symmetric(bound) as f32).collect::<Vec<f32>>();
            let (weight, bias) = (draw(features * classes), draw(classes));
            // `Param::map` keeps the parameter's training state (a frozen head stays frozen, a
            // head on a plain device trains once the network does).
            self.fc = Some(burn::nn::Linear {
                weight: fc.weight.map(|old| renewed(old, weight)),
                bias: fc.bias.map(|b| b.map(|old| renewed(old, bias))),
            });
        }
        self
    }
}

/// `values` in `old`'s shape and on its device, tracking gradients where `old` did.
fn renewed<const D: usize>(old: Tensor<D>, values: Vec<f32>) -> Tensor<D> {
    let t = Tensor::from_data(burn::tensor::TensorData::new(values, old.shape()), &old.device());
    if old.is_require_grad() { t.require_grad() } else { t }
}

/// Gives every float parameter Burn's balanced gradient checkpointing, keeping whether it
/// requires a gradient.
struct Checkpointed;

impl burn::module::ModuleMapper for Checkpointed {
    fn map_float<const D: usize>(&mut self, param: burn::module::Param<Tensor<D>>) -> burn::module::Param<Tensor<D>> {
        param.map(|t| {
            let grad = t.is_require_grad();
            let t = t
                .autodiff()
                .with_gradient_checkpointing_strategy(burn::tensor::GradientCheckpointingStrategy::Balanced);
            if grad { t.require_grad() } else { t }
        })
    }
}

/// Stops training the stem and `layer1`: no gradients, BatchNorm statistics kept.
fn freeze_early(mut net: ResNet3d) -> ResNet3d {
    net.conv1 = net.conv1.freeze();
    net.bn1 = net.bn1.freeze();
    net.stem_temporal = net.stem_temporal.map(Module::freeze);
    net.layer1 = net.layer1.into_iter().map(Module::freeze).collect();
    net
}

/// The last epoch for which the model, optimizer and schedule checkpoints all exist.
fn last_checkpoint(out: &Path) -> Option<usize> {
    let dir = out.join("checkpoint");
    let epochs = std::fs::read_dir(&dir).ok()?.filter_map(|entry| {
        let name = entry.ok()?.file_name().into_string().ok()?;
        name.strip_prefix("model-")?.strip_suffix(".bpk")?.parse::<usize>().ok()
    });
    let complete = |e: &usize| {
        ["model", "optim", "scheduler"].iter().all(|kind| {
            std::fs::metadata(dir.join(format!("{kind}-{e}.bpk"))).is_ok_and(|m| m.is_file() && m.len() > 0)
        })
    };
    epochs.filter(complete).max()
}

/// Every logged epoch's metrics, from Burn's metric logs in `out`.
fn read_metrics(out: &Path, names: &Names) -> Result<Vec<EpochMetrics>> {
    let (loss, accuracy, auroc) = (names.loss.as_str(), names.accuracy.as_str(), names.auroc.as_str());
    let names = [loss, accuracy, auroc];
    let summary = LearnerSummary::new(out, &names).map_err(|what| Error::Training { what })?;
    let find = |split: &[burn::train::MetricSummary], name: &str, epoch: usize| {
        split
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.entries.iter().find(|e| e.step == epoch))
            .map_or(f64::NAN, |e| e.value)
    };
    let (train, valid) = (&summary.metrics.train, &summary.metrics.valid);
    Ok((1..=summary.epochs)
        .map(|epoch| EpochMetrics {
            epoch,
            train_loss: find(train, loss, epoch),
            train_accuracy: find(train, accuracy, epoch),
            train_auroc: find(train, auroc, epoch),
            valid_loss: find(valid, loss, epoch),
            valid_accuracy: find(valid, accuracy, epoch),
            valid_auroc: find(valid, auroc, epoch),
        })
        .filter(|e| !e.valid_auroc.is_nan())
        .collect())
}

/// Writes the checkpoint of `epoch` as `model.bpk` (the network alone, as [`ResNet3d::save`]
/// writes it) with `config.json`.
fn export_best(out: &Path, epoch: usize, config: &ResNet3dConfig, device: &Device) -> Result<()> {
    let classifier = checkpointed_model(out, epoch, config, device)?;
    classifier.net.save(out.join(MODEL))?;
    config.save(out.join(CONFIG)).map_err(|source| Error::Io {
        path: out.join(CONFIG),
        source,
    })
}

/// The network of the model checkpoint of `epoch`, read strictly (Burn's own loading of a
/// checkpoint stops the program on a damaged file or another network's record).
fn checkpointed_model(out: &Path, epoch: usize, config: &ResNet3dConfig, device: &Device) -> Result<ScanClassifier> {
    let path = out.join("checkpoint").join(format!("model-{epoch}.bpk"));
    let record_error = |reason: String| Error::Record {
        path: path.clone(),
        reason,
    };
    let mut classifier = ScanClassifier::new(config.init(device));
    let mut store = BurnpackStore::from_file(&path).auto_extension(false);
    // Burn lists every mismatched tensor; the first few tell the story.
    let short = |text: String| match text.char_indices().nth(400) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    };
    let problem = match classifier.load_from(&mut store) {
        Err(err) => Some(short(err.to_string())),
        Ok(applied) if !applied.errors.is_empty() || !applied.missing.is_empty() || !applied.unused.is_empty() => {
            Some(format!(
                "{} error(s), missing {:?}, unused {:?}",
                applied.errors.len(),
                applied.missing.iter().take(5).map(|(p, _)| p).collect::<Vec<_>>(),
                applied.unused.iter().take(5).collect::<Vec<_>>()
            ))
        }
        Ok(_) => None,
    };
    if let Some(problem) = problem {
        return Err(record_error(format!(
            "the checkpoint of epoch {epoch} cannot be read or does not fit this network (another \
             --depth, width or number of classes?): {problem}"
        )));
    }
    Ok(classifier)
}

/// Checks, before Burn loads them, that the three checkpoints of `epoch` read back and that
/// the model's fits the network.
fn check_resumable(out: &Path, epoch: usize, config: &ResNet3dConfig, device: &Device) -> Result<()> {
    checkpointed_model(out, epoch, config, device)?;
    let dir = out.join("checkpoint");
    let unreadable = |kind: &str, err: String| Error::Record {
        path: dir.join(format!("{kind}-{epoch}.bpk")),
        reason: format!(
            "cannot be read ({err}); remove the checkpoints of epoch {epoch} to resume from the one before"
        ),
    };
    FileCheckpointer::new(&dir, "optim")
        .restore(epoch)
        .map(|_: OptimizerRecord| ())
        .map_err(|err| unreadable("optim", err.to_string()))?;
    FileCheckpointer::new(&dir, "scheduler")
        .restore(epoch)
        .map(|_: LrSchedulerRecord| ())
        .map_err(|err| unreadable("scheduler", err.to_string()))
}
