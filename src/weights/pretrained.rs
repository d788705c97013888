//! Weights by name: a registry of published checkpoints (torchvision's ImageNet ResNets, V1
//! and V2, and its Kinetics video ResNets) with their SHA-256 checksums, fetched into a
//! cache once and verified before they are used.
//!
//! A download goes to a temporary file of its own beside its cache entry and is renamed into
//! place only after its checksum matched, so the cache never holds a partial or wrong file
//! under the expected name; an interrupted download starts again. A cached file is hashed
//! again at every use. Offline (`HF_HUB_OFFLINE=1` or `RESNET3D_OFFLINE=1`), only the cache
//! is read.
//!
//! torchvision names its files after the first hex digits of their SHA-256
//! (`resnet50-11ad3fa6.pth`) and checks those digits only; so does this registry for its
//! files. A [`Pretrained`] entry of your own may give the whole digest.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use sha2::{Digest, Sha256};

use crate::arch::config::ResNet3dConfig;
use crate::error::{Error, Result};
use crate::model::network::ResNet3d;
use crate::weights::load::{inflate_from_2d, load_3d};
use crate::weights::tensors::Weights;

/// What a published checkpoint holds, which decides how it loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PretrainedKind {
    /// A 2-D ImageNet ResNet: inflated as the configuration says
    /// ([`ResNet3d::from_imagenet`]).
    ImageNet,
    /// A native 3-D network ([`ResNet3d::from_checkpoint`]).
    Native3d,
}

/// One published checkpoint: its name, where it is, and its SHA-256 (the whole digest or its
/// first hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pretrained {
    /// The name [`ResNet3d::from_pretrained`] takes, e.g. `resnet50.tv2_in1k`.
    pub name: &'static str,
    /// The file's address (`https://...`).
    pub url: &'static str,
    /// Lower-case hex of the file's SHA-256, or its first digits (at least 8).
    pub sha256: &'static str,
    /// How it loads.
    pub kind: PretrainedKind,
}

const TV: &str = "https://download.pytorch.org/models/";

macro_rules! tv {
    ($name:literal, $file:literal, $sha:literal, $kind:ident) => {
        Pretrained {
            name: $name,
            url: concat!("https://download.pytorch.org/models/", $file),
            sha256: $sha,
            kind: PretrainedKind::$kind,
        }
    };
}

/// The registry: torchvision's weights (`torchvision.models.ResNet*_Weights` and
/// `torchvision.models.video.*_Weights`), the SHA-256 prefix from each file's name.
pub const PRETRAINED: [Pretrained; 11] = [
    tv!("resnet18.tv_in1k", "resnet18-f37072fd.pth", "f37072fd", ImageNet),
    tv!("resnet34.tv_in1k", "resnet34-b627a593.pth", "b627a593", ImageNet),
    tv!("resnet50.tv_in1k", "resnet50-0676ba61.pth", "0676ba61", ImageNet),
    tv!("resnet50.tv2_in1k", "resnet50-11ad3fa6.pth", "11ad3fa6", ImageNet),
    tv!("resnet101.tv_in1k", "resnet101-63fe2227.pth", "63fe2227", ImageNet),
    tv!("resnet101.tv2_in1k", "resnet101-cd907fc2.pth", "cd907fc2", ImageNet),
    tv!("resnet152.tv_in1k", "resnet152-394f9c45.pth", "394f9c45", ImageNet),
    tv!("resnet152.tv2_in1k", "resnet152-f82ba261.pth", "f82ba261", ImageNet),
    tv!("r3d_18.kinetics400", "r3d_18-b3b3357e.pth", "b3b3357e", Native3d),
    tv!("mc3_18.kinetics400", "mc3_18-a90a0ba3.pth", "a90a0ba3", Native3d),
    tv!(
        "r2plus1d_18.kinetics400",
        "r2plus1d_18-91a641e6.pth",
        "91a641e6",
        Native3d
    ),
];

/// Where downloads go and whether the network may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetcher {
    /// The cache folder.
    pub cache: PathBuf,
    /// Read only the cache.
    pub offline: bool,
    /// Replaces `https://download.pytorch.org` in the registry's addresses (a mirror, or a
    /// test's server), if set.
    pub endpoint: Option<String>,
}

impl Fetcher {
    /// The cache `$RESNET3D_CACHE`, else `$XDG_CACHE_HOME/resnet3d`, else
    /// `~/.cache/resnet3d`; offline when `HF_HUB_OFFLINE` or `RESNET3D_OFFLINE` is `1` (or
    /// `true`); the endpoint `$RESNET3D_ENDPOINT` if set.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let cache = var("RESNET3D_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("resnet3d")
        });
        let on = |k: &str| var(k).is_some_and(|v| matches!(v.to_str(), Some("1" | "true" | "TRUE" | "yes")));
        Self {
            cache,
            offline: on("HF_HUB_OFFLINE") || on("RESNET3D_OFFLINE"),
            endpoint: var("RESNET3D_ENDPOINT").and_then(|v| v.into_string().ok()),
        }
    }

    /// The address `entry` is fetched from (the endpoint applied).
    pub fn url(&self, entry: &Pretrained) -> String {
        match (&self.endpoint, entry.url.strip_prefix(TV.trim_end_matches("models/"))) {
            (Some(endpoint), Some(rest)) => format!("{}/{rest}", endpoint.trim_end_matches('/')),
            _ => entry.url.to_string(),
        }
    }

    /// Where `entry` is cached: the cache folder and the address's file name.
    pub fn path(&self, entry: &Pretrained) -> PathBuf {
        self.cache.join(entry.url.rsplit('/').next().unwrap_or(entry.name))
    }

    /// The cached file of `entry`, verified by its SHA-256, downloaded first if it is not
    /// there (or does not match).
    ///
    /// # Errors
    /// [`Error::Pretrained`] naming the entry, its address and where to put the file by hand:
    /// offline without a matching cached copy, a download that failed (the status, the broken
    /// connection, a body longer than it said), or a file whose SHA-256 is not the entry's
    /// (nothing is cached then).
    pub fn fetch(&self, entry: &Pretrained) -> Result<PathBuf> {
        let path = self.path(entry);
        let url = self.url(entry);
        let fail = |reason: String| Error::Pretrained {
            name: entry.name.to_string(),
            url: url.clone(),
            reason,
            place: path.clone(),
        };
        let verified = |digest: &str| digest.starts_with(entry.sha256) && entry.sha256.len() >= 8;
        // A cached file (downloaded, or put there by hand) is hashed at every use; one that
        // does not match is removed and fetched again.
        if path.is_file() {
            let digest = sha256_of(&path).map_err(&fail)?;
            if verified(&digest) {
                return Ok(path);
            }
            std::fs::remove_file(&path)
                .map_err(|e| fail(format!("a cached file of SHA-256 {digest} could not be removed: {e}")))?;
            if self.offline {
                return Err(fail(format!(
                    "the cached file's SHA-256 is {digest}, not {}...: removed; offline, it is not fetched again",
                    entry.sha256
                )));
            }
        }
        if self.offline {
            return Err(fail(
                "offline (HF_HUB_OFFLINE or RESNET3D_OFFLINE), and not in the cache".into(),
            ));
        }
        std::fs::create_dir_all(&self.cache).map_err(|e| fail(format!("cannot make the cache folder: {e}")))?;
        // A name no other download has (this process, this call, this instant).
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut part = path.as_os_str().to_owned();
        part.push(format!(".{}-{call}-{nanos}.part", std::process::id()));
        let part = PathBuf::from(part);
        let result = download(&url, &part).and_then(|digest| match verified(&digest) {
            true => Ok(()),
            false => Err(format!(
                "the file's SHA-256 is {digest}, not {}...: a damaged or different file",
                entry.sha256
            )),
        });
        match result.and_then(|()| std::fs::rename(&part, &path).map_err(|e| e.to_string())) {
            Ok(()) => Ok(path),
            Err(reason) => {
                let _ = std::fs::remove_file(&part);
                Err(fail(reason))
            }
        }
    }
}

/// The most bytes a download may write (the largest registry file is about 240 MB).
const MAX_DOWNLOAD: u64 = 4 << 30;

/// Downloads `url` into `part` (created here), returning the SHA-256 of what was written:
/// no content encoding (a compressed body would hide its length), 30 s to connect and 60 s
/// for the response and for each read, at most its declared length and [`MAX_DOWNLOAD`].
fn download(url: &str, part: &Path) -> std::result::Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .timeout_recv_response(Some(std::time::Duration::from_secs(60)))
        .timeout_per_read(Some(std::time::Duration::from_secs(60)))
        .accept_encoding("identity")
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| format!("the download failed: {e}"))?;
    let expected = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = expected.unwrap_or(MAX_DOWNLOAD).min(MAX_DOWNLOAD);
    let mut body = response.into_body().into_reader();
    let mut file = std::fs::File::create_new(part).map_err(|e| format!("{}: {e}", part.display()))?;
    let (mut hasher, mut buf, mut written) = (Sha256::new(), vec![0u8; 1 << 16], 0u64);
    loop {
        let n = body
            .read(&mut buf)
            .map_err(|e| format!("the connection broke after {written} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        if written + n as u64 > limit {
            return Err(format!("the server sent more than the {limit} bytes it may"));
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| format!("{}: {e}", part.display()))?;
        written += n as u64;
    }
    if let Some(expected) = expected.filter(|&e| e != written) {
        return Err(format!("the connection ended after {written} of {expected} bytes"));
    }
    file.sync_all().map_err(|e| format!("{}: {e}", part.display()))?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The SHA-256 of a file's bytes, as lower-case hex.
fn sha256_of(path: &Path) -> std::result::Result<String, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (mut hasher, mut buf) = (Sha256::new(), vec![0u8; 1 << 16]);
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            return Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect());
        }
        hasher.update(&buf[..n]);
    }
}

/// The registry entry called `name`.
///
/// # Errors
/// [`Error::InvalidConfig`] listing the names there are.
pub fn pretrained(name: &str) -> Result<&'static Pretrained> {
    PRETRAINED
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| Error::InvalidConfig {
            field: "pretrained name",
            reason: format!(
                "{name:?} is not a known name; the names: {}",
                PRETRAINED.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
            ),
        })
}

impl ResNet3d {
    /// The network of `config` from the published weights called `name` (see [`PRETRAINED`]),
    /// fetched into the cache of [`Fetcher::from_env`] and verified by their SHA-256: a 2-D
    /// ImageNet ResNet is inflated as `config` says, a video network read as a checkpoint,
    /// with the same strict loading as [`from_imagenet`](Self::from_imagenet) and
    /// [`from_checkpoint`](Self::from_checkpoint).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an unknown name (the message lists the names),
    /// [`Error::Pretrained`] when the file cannot be had, and the loading errors.
    pub fn from_pretrained(name: &str, config: &ResNet3dConfig, device: &Device) -> Result<Self> {
        Self::from_pretrained_with(&Fetcher::from_env(), pretrained(name)?, config, device)
    }

    /// [`from_pretrained`](Self::from_pretrained) of any entry, through `fetcher`.
    ///
    /// # Errors
    /// As [`from_pretrained`](Self::from_pretrained).
    pub fn from_pretrained_with(
        fetcher: &Fetcher,
        entry: &Pretrained,
        config: &ResNet3dConfig,
        device: &Device,
    ) -> Result<Self> {
        let weights = Weights::from_file(fetcher.fetch(entry)?)?;
        match entry.kind {
            PretrainedKind::ImageNet => inflate_from_2d(&weights, config, device),
            PretrainedKind::Native3d => load_3d(&weights, config, device).map(|(model, _)| model),
        }
    }
}
