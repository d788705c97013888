//! Weights by name: a registry of published checkpoints (torchvision's ImageNet ResNets, V1
//! and V2, and its Kinetics video ResNets; timm's ResNets on the Hugging Face Hub), fetched
//! into a cache once and verified by their SHA-256 before they are used.
//!
//! Plain addresses: a download goes to a temporary file beside its cache entry
//! (`<file>.<pid>.part`) and is renamed into place only after its checksum matched, so the
//! cache never holds a partial or wrong file under the expected name; an interrupted download
//! starts again. torchvision names its files after the first hex digits of their SHA-256
//! (`resnet50-11ad3fa6.pth`) and checks those digits only; so does this registry. A
//! [`Pretrained`] entry of your own may give the whole digest.
//!
//! Hub files go through `hf-hub` into the Hugging Face cache (`$HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; endpoint `$HF_ENDPOINT`), shared with
//! Python's `huggingface_hub`. The Hub names each large file's blob by its SHA-256 (its
//! etag); every time such a file is used, cached or just downloaded, its bytes are hashed and
//! compared with that name, and a file that differs is removed. (No digest is pinned here for
//! Hub files: none could be read from this registry's build machine, which has no network.)
//!
//! Offline (`HF_HUB_OFFLINE=1` or `RESNET3D_OFFLINE=1`), only the caches are read.

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

/// Where a published checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A plain address (`https://...`) and lower-case hex of the file's SHA-256, or its first
    /// digits (at least 8).
    Url {
        /// The address.
        url: &'static str,
        /// The digest or its first digits.
        sha256: &'static str,
    },
    /// A file of a model repository on the Hugging Face Hub, at its `main` revision.
    Hub {
        /// `owner/name`, e.g. `timm/resnet50.a1_in1k`.
        repo: &'static str,
        /// The file, e.g. `model.safetensors`.
        file: &'static str,
    },
}

/// One published checkpoint: its name, where it is, and how it loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pretrained {
    /// The name [`ResNet3d::from_pretrained`] takes, e.g. `resnet50.tv2_in1k`.
    pub name: &'static str,
    /// Where it is.
    pub source: Source,
    /// How it loads.
    pub kind: PretrainedKind,
}

const TV: &str = "https://download.pytorch.org/models/";

macro_rules! tv {
    ($name:literal, $file:literal, $sha:literal, $kind:ident) => {
        Pretrained {
            name: $name,
            source: Source::Url {
                url: concat!("https://download.pytorch.org/models/", $file),
                sha256: $sha,
            },
            kind: PretrainedKind::$kind,
        }
    };
}

macro_rules! timm {
    ($name:literal) => {
        Pretrained {
            name: $name,
            source: Source::Hub {
                repo: concat!("timm/", $name),
                file: "model.safetensors",
            },
            kind: PretrainedKind::ImageNet,
        }
    };
}

/// The registry: torchvision's weights (`torchvision.models.ResNet*_Weights` and
/// `torchvision.models.video.*_Weights`, the SHA-256 prefix from each file's name), and
/// timm's torchvision-layout ResNets on the Hub (`timm/<name>`, `model.safetensors`).
pub const PRETRAINED: [Pretrained; 21] = [
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
    timm!("resnet18.a1_in1k"),
    timm!("resnet34.a1_in1k"),
    timm!("resnet50.a1_in1k"),
    timm!("resnet50.a1h_in1k"),
    timm!("resnet50.b1k_in1k"),
    timm!("resnet50.c1_in1k"),
    timm!("resnet50.ram_in1k"),
    timm!("resnet101.a1h_in1k"),
    timm!("resnet152.a1h_in1k"),
    timm!("resnet50.fb_ssl_yfcc100m_ft_in1k"),
];

/// Where downloads go and whether the network may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetcher {
    /// The cache folder of plain addresses.
    pub cache: PathBuf,
    /// Read only the caches.
    pub offline: bool,
    /// Replaces `https://download.pytorch.org` in the registry's addresses (a mirror, or a
    /// test's server), if set.
    pub endpoint: Option<String>,
    /// The Hugging Face cache (`hub` folder).
    pub hub_cache: PathBuf,
    /// The Hub's address.
    pub hub_endpoint: String,
}

impl Fetcher {
    /// The cache `$RESNET3D_CACHE`, else `$XDG_CACHE_HOME/resnet3d`, else
    /// `~/.cache/resnet3d`; offline when `HF_HUB_OFFLINE` or `RESNET3D_OFFLINE` is `1` (or
    /// `true`); the endpoint `$RESNET3D_ENDPOINT` if set; the Hub's cache and address as
    /// Python's `huggingface_hub` takes them (`HF_HUB_CACHE`, `HF_HOME`, `HF_ENDPOINT`).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let home_cache = || {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
        };
        let cache = var("RESNET3D_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home_cache().join("resnet3d"));
        let hub_cache = var("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            var("HF_HOME")
                .map(|h| PathBuf::from(h).join("hub"))
                .unwrap_or_else(|| home_cache().join("huggingface").join("hub"))
        });
        let on = |k: &str| var(k).is_some_and(|v| matches!(v.to_str(), Some("1" | "true" | "TRUE" | "yes")));
        Self {
            cache,
            offline: on("HF_HUB_OFFLINE") || on("RESNET3D_OFFLINE"),
            endpoint: var("RESNET3D_ENDPOINT").and_then(|v| v.into_string().ok()),
            hub_cache,
            hub_endpoint: var("HF_ENDPOINT")
                .and_then(|v| v.into_string().ok())
                .unwrap_or_else(|| "https://huggingface.co".into()),
        }
    }

    /// The address `entry` is fetched from (the endpoint applied).
    pub fn url(&self, entry: &Pretrained) -> String {
        match entry.source {
            Source::Url { url, .. } => match (&self.endpoint, url.strip_prefix(TV.trim_end_matches("models/"))) {
                (Some(endpoint), Some(rest)) => format!("{}/{rest}", endpoint.trim_end_matches('/')),
                _ => url.to_string(),
            },
            Source::Hub { repo, file } => {
                format!("{}/{repo}/resolve/main/{file}", self.hub_endpoint.trim_end_matches('/'))
            }
        }
    }

    /// Where `entry` is cached: for a plain address the cache folder and the address's file
    /// name; for a Hub file its repository's folder in the Hugging Face cache.
    pub fn path(&self, entry: &Pretrained) -> PathBuf {
        match entry.source {
            Source::Url { url, .. } => self.cache.join(url.rsplit('/').next().unwrap_or(entry.name)),
            Source::Hub { repo, .. } => self.hub_cache.join(format!("models--{}", repo.replace('/', "--"))),
        }
    }

    /// The cached file of `entry`, downloaded and verified first if it is not there.
    ///
    /// # Errors
    /// [`Error::Pretrained`] naming the entry, its address and where to put the file by hand:
    /// offline without a cached copy, a download that failed (the status or the broken
    /// connection), or a file whose SHA-256 is not the entry's (nothing is cached then).
    pub fn fetch(&self, entry: &Pretrained) -> Result<PathBuf> {
        let path = self.path(entry);
        let url = self.url(entry);
        let fail = |reason: String| Error::Pretrained {
            name: entry.name.to_string(),
            url: url.clone(),
            reason,
            place: path.clone(),
        };
        let sha256 = match entry.source {
            Source::Url { sha256, .. } => sha256,
            Source::Hub { repo, file } => return self.fetch_hub(repo, file).map_err(fail),
        };
        if path.is_file() {
            return Ok(path);
        }
        if self.offline {
            return Err(fail(
                "offline (HF_HUB_OFFLINE or RESNET3D_OFFLINE), and not in the cache".into(),
            ));
        }
        std::fs::create_dir_all(&self.cache).map_err(|e| fail(format!("cannot make the cache folder: {e}")))?;
        let mut part = path.as_os_str().to_owned();
        part.push(format!(".{}.part", std::process::id()));
        let part = PathBuf::from(part);
        let result = download(&url, &part).and_then(|digest| {
            if digest.starts_with(sha256) && sha256.len() >= 8 {
                Ok(())
            } else {
                Err(format!(
                    "the file's SHA-256 is {digest}, not {sha256}...: a damaged or different file"
                ))
            }
        });
        match result.and_then(|()| std::fs::rename(&part, &path).map_err(|e| e.to_string())) {
            Ok(()) => Ok(path),
            Err(reason) => {
                let _ = std::fs::remove_file(&part);
                Err(fail(reason))
            }
        }
    }

    /// A Hub file through hf-hub's cache (downloaded unless cached or offline), its bytes
    /// hashed against the SHA-256 the Hub named its blob by; a file that differs is removed.
    fn fetch_hub(&self, repo: &str, file: &str) -> std::result::Result<PathBuf, String> {
        let cached = hf_hub::Cache::new(self.hub_cache.clone())
            .model(repo.to_string())
            .get(file);
        let pointer = match cached {
            Some(pointer) => pointer,
            None if self.offline => {
                return Err("offline (HF_HUB_OFFLINE or RESNET3D_OFFLINE), and not in the Hugging Face cache".into());
            }
            None => hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(self.hub_cache.clone()))
                .with_endpoint(self.hub_endpoint.clone())
                .with_progress(false)
                .build()
                .map_err(|e| format!("the Hub client could not start: {e}"))?
                .model(repo.to_string())
                .download(file)
                .map_err(|e| format!("the download failed: {e}"))?,
        };
        let blob = std::fs::canonicalize(&pointer).map_err(|e| format!("{}: {e}", pointer.display()))?;
        let named = blob
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if named.len() != 64 || !named.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "the Hub gave no SHA-256 for it (its blob is {named:?}), so it cannot be verified"
            ));
        }
        let digest = sha256_of(&blob)?;
        if digest != named.to_ascii_lowercase() {
            let _ = std::fs::remove_file(&pointer);
            let _ = std::fs::remove_file(&blob);
            return Err(format!(
                "the file's SHA-256 is {digest}, not the Hub's {named}: a damaged or cut download (removed from the cache)"
            ));
        }
        Ok(pointer)
    }
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

/// Downloads `url` into `part` (created here), returning the SHA-256 of what was written.
fn download(url: &str, part: &Path) -> std::result::Result<String, String> {
    let response = ureq::get(url).call().map_err(|e| format!("the download failed: {e}"))?;
    let expected = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
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
