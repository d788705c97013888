//! The installed command as a process: every subcommand's help shows examples, good input
//! gives exit status 0 and its files, bad input a message that says what to change and a
//! non-zero status (1 an error, 2 a bad command line, 3 predict finished with failed scans).

use std::path::Path;
use std::process::{Command, Output};

use crate::common::fixtures;
use crate::predict::{detector_run, scan};

fn resnet3d(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet3d"))
        .args(args)
        .output()
        .unwrap()
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_subcommand_has_help_with_examples() {
    let top = resnet3d(&["--help"]);
    assert_eq!(top.status.code(), Some(0));
    let (out, _) = text(&top);
    for sub in ["inflate", "inspect", "train", "predict", "explain", "export"] {
        assert!(out.contains(sub), "--help lists {sub}");
        let help = resnet3d(&[sub, "--help"]);
        let (out, err) = text(&help);
        assert_eq!(help.status.code(), Some(0), "{sub} --help: {err}");
        assert!(
            out.contains("Examples:") && out.contains(&format!("resnet3d {sub}")),
            "{sub} --help:\n{out}"
        );
    }
    assert_eq!(resnet3d(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn inflate_writes_a_record_and_config_and_checks_the_2d_network() {
    let dir = tempfile::tempdir().unwrap();
    let weights = fixtures().join("checkpoints/r18_w4.pth");
    let out = dir.path().join("r3d");
    let run = resnet3d(&[
        "inflate",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--check",
    ]);
    let (stdout, stderr) = text(&run);
    assert_eq!(run.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("2-D equivalence check") && stdout.contains(": ok"),
        "{stdout}"
    );
    assert!(out.with_extension("bpk").is_file() && out.with_extension("json").is_file());
    // A missing file: exit 1, the path named.
    let missing = resnet3d(&["inflate", "--weights", "no/such.pth"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing).1.contains("no/such.pth"), "{}", text(&missing).1);
}

#[test]
fn inspect_says_what_a_checkpoint_is_and_how_to_load_it() {
    let imagenet = fixtures().join("checkpoints/r18_w4.pth");
    let run = resnet3d(&["inspect", imagenet.to_str().unwrap()]);
    let (out, err) = text(&run);
    assert_eq!(run.status.code(), Some(0), "{err}");
    for want in [
        "format:      PyTorch",
        "a 2-D ImageNet ResNet (2-D kernels)",
        "depth 18",
        "width:       4",
        "in channels: 3",
        "(all)",
        "ResNet3d::from_imagenet(",
        "ResNet3dConfig::resnet18().with_width(4).with_in_channels(1)",
    ] {
        assert!(out.contains(want), "`{want}` in:\n{out}");
    }
    let medicalnet = fixtures().join("medicalnet/medicalnet18_w4.pth");
    let run = resnet3d(&["inspect", medicalnet.to_str().unwrap()]);
    let (out, err) = text(&run);
    assert_eq!(run.status.code(), Some(0), "{err}");
    for want in [
        "MedicalNet (3-D kernels)",
        "ResNet3dConfig::medicalnet(18)?.with_width(4)",
        "(all)",
        "from_checkpoint(",
    ] {
        assert!(out.contains(want), "`{want}` in:\n{out}");
    }
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"not weights").unwrap();
    let run = resnet3d(&["inspect", junk.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1));
    assert!(text(&run).1.contains("not a checkpoint"), "{}", text(&run).1);
}

#[test]
fn predict_exit_codes_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    let scans = dir.path().join("scans");
    scan(&scans.join("a.nii"), [16, 32, 32], Some([8.0, 16.0, 16.0]));
    let out = dir.path().join("scores.csv");
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let ok = resnet3d(&["predict", &path(&scans), "--model", &path(&run), "--out", &path(&out)]);
    let (stdout, stderr) = text(&ok);
    assert_eq!(ok.status.code(), Some(0), "{stdout}{stderr}");
    // Without a terminal: one plain line per scan on stderr, then the summary.
    assert!(
        stderr.contains("[1/1] a.nii: ") && stderr.contains("scans/s"),
        "{stderr}"
    );
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .starts_with("path,p0,p1,predicted,error\na.nii,")
    );

    // A missing model: exit 1, the missing file named.
    let missing = resnet3d(&[
        "predict",
        &path(&scans),
        "--model",
        "no/run",
        "--out",
        &path(&dir.path().join("x.csv")),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing).1.contains("no/run: no such file"),
        "{}",
        text(&missing).1
    );
    // A shard that does not exist: a bad command line, exit 2.
    let shard = resnet3d(&[
        "predict",
        &path(&scans),
        "--model",
        &path(&run),
        "--out",
        "y.csv",
        "--shard",
        "3/2",
    ]);
    assert_eq!(shard.status.code(), Some(2));
    assert!(text(&shard).1.contains("I must be below N"), "{}", text(&shard).1);
    // An unreadable scan: the others are scored, its row carries the error, exit 3.
    std::fs::write(scans.join("b.nii"), b"not a nifti file").unwrap();
    let partial = dir.path().join("partial.csv");
    let bad = resnet3d(&[
        "predict",
        &path(&scans),
        "--model",
        &path(&run),
        "--out",
        &path(&partial),
    ]);
    assert_eq!(bad.status.code(), Some(3), "{}", text(&bad).1);
    let rows = std::fs::read_to_string(&partial).unwrap();
    assert_eq!(rows.lines().count(), 3, "{rows}");
    assert!(rows.lines().nth(2).unwrap().starts_with("b.nii,,,,"), "{rows}");
    // An existing output without --resume: exit 1, nothing overwritten.
    let again = resnet3d(&[
        "predict",
        &path(&scans),
        "--model",
        &path(&run),
        "--out",
        &path(&partial),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&partial).unwrap(), rows);
}

#[test]
fn explain_and_train_refuse_missing_files() {
    let explain = resnet3d(&["explain", "no/scan.nii.gz"]);
    assert_eq!(explain.status.code(), Some(1));
    assert!(text(&explain).1.contains("no/scan.nii.gz"), "{}", text(&explain).1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let train = resnet3d(&["train", "--labels", "no/labels.csv", "--out", out.to_str().unwrap()]);
    assert_eq!(train.status.code(), Some(1));
    assert!(text(&train).1.contains("no/labels.csv"), "{}", text(&train).1);
}

#[test]
fn a_killed_predict_resumes_to_the_uninterrupted_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = detector_run(dir.path());
    let scans = dir.path().join("scans");
    for i in 0..40 {
        scan(
            &scans.join(format!("s{i:02}.nii")),
            [16, 32, 32],
            (i % 3 == 0).then_some([8.0, 16.0, 16.0]),
        );
    }
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let whole = dir.path().join("whole.csv");
    assert_eq!(
        resnet3d(&["predict", &path(&scans), "--model", &path(&run), "--out", &path(&whole)])
            .status
            .code(),
        Some(0)
    );
    let killed = dir.path().join("killed.csv");
    let mut child = Command::new(env!("CARGO_BIN_EXE_resnet3d"))
        .args([
            "predict",
            &path(&scans),
            "--model",
            &path(&run),
            "--out",
            &path(&killed),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it (SIGKILL: no cleanup) once a few rows are out, wherever it is in the next one.
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&killed).map_or(0, |t| t.lines().count()) < 4 && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left = std::fs::read(&killed).unwrap();
    let full = std::fs::read(&whole).unwrap();
    assert!(full.starts_with(&left), "a killed run leaves a prefix of the file");
    let resumed = resnet3d(&[
        "predict",
        &path(&scans),
        "--model",
        &path(&run),
        "--out",
        &path(&killed),
        "--resume",
    ]);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed).1);
    assert_eq!(std::fs::read(&killed).unwrap(), full);
}

/// `--weights NAME`: published weights by name. Offline without them, the error names the
/// address and the place to put the file; a file put there that is not the published one
/// (its SHA-256 does not start with the digits in torchvision's name) is refused and removed.
#[test]
fn weights_by_name_come_only_from_a_verified_cache_offline() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let run = |out: &str| {
        Command::new(env!("CARGO_BIN_EXE_resnet3d"))
            .args(["inflate", "--weights", "resnet18.tv_in1k", "--out"])
            .arg(dir.path().join(out))
            .env("RESNET3D_CACHE", &cache)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let missing = run("a");
    let (_, err) = text(&missing);
    assert_eq!(missing.status.code(), Some(1), "{err}");
    let place = cache.join("resnet18-f37072fd.pth");
    assert!(
        err.contains("https://download.pytorch.org/models/resnet18-f37072fd.pth")
            && err.contains("offline")
            && err.contains(&place.display().to_string()),
        "{err}"
    );
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::copy(fixtures().join("checkpoints/r18_w4.pth"), &place).unwrap();
    let wrong = run("b");
    let (_, err) = text(&wrong);
    assert_eq!(wrong.status.code(), Some(1), "{err}");
    assert!(err.contains("SHA-256") && err.contains("removed"), "{err}");
    assert!(!place.exists() && !dir.path().join("b.bpk").exists());
}

/// `--weights timm/NAME`: a Hub file found in the Hugging Face cache as `hf download` leaves it
/// (blob named by its SHA-256, a relative link from the snapshot, the branch's ref) is used
/// offline (`HF_HUB_OFFLINE=On`: nothing is asked of a network); the same layout with a
/// blob that does not hash to its name is refused.
#[test]
fn hub_weights_by_name_come_from_the_hugging_face_cache_offline() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let hub = dir.path().join("hub");
    let bytes = std::fs::read(fixtures().join("checkpoints/r18_w4.safetensors")).unwrap();
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    let folder = hub.join("models--timm--resnet18.a1_in1k");
    std::fs::create_dir_all(folder.join("blobs")).unwrap();
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::create_dir_all(folder.join("snapshots").join(commit)).unwrap();
    std::fs::write(folder.join("blobs").join(&sha), &bytes).unwrap();
    std::fs::write(folder.join("refs/main"), commit).unwrap();
    let link = folder.join("snapshots").join(commit).join("model.safetensors");
    std::os::unix::fs::symlink(std::path::Path::new("../../blobs").join(&sha), &link).unwrap();
    let run = |out: &str| {
        Command::new(env!("CARGO_BIN_EXE_resnet3d"))
            .args(["inflate", "--weights", "timm/resnet18.a1_in1k", "--out"])
            .arg(dir.path().join(out))
            .env("HF_HUB_CACHE", &hub)
            // As huggingface_hub reads it: any case of 1, on, yes, true.
            .env("HF_HUB_OFFLINE", "On")
            .output()
            .unwrap()
    };
    let good = run("a");
    let (_, err) = text(&good);
    assert_eq!(good.status.code(), Some(0), "{err}");
    assert!(dir.path().join("a.bpk").is_file());
    let mut changed = bytes.clone();
    changed[bytes.len() / 2] ^= 1;
    std::fs::write(folder.join("blobs").join(&sha), &changed).unwrap();
    let wrong = run("b");
    let (_, err) = text(&wrong);
    assert_eq!(wrong.status.code(), Some(1), "{err}");
    assert!(
        err.contains("SHA-256") && err.contains("removed") && err.contains("timm/resnet18.a1_in1k"),
        "{err}"
    );
    assert!(link.symlink_metadata().is_err() && !dir.path().join("b.bpk").exists());
}
