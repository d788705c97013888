//! Weights by name: the registry's checkpoints ([`PRETRAINED`](crate::PRETRAINED)) fetched
//! into a cache once and verified by their SHA-256 before every use.
//!
//! Plain addresses are cached under their file names in the crate's cache folder; Hugging Face
//! Hub files in the Hub's own cache layout (`models--owner--name/blobs/<sha256>`,
//! `snapshots/<commit>/<file>` linking to the blob, `refs/<revision>` naming the commit), so
//! that a file the Hub's Python client has fetched serves here and the other way round. The
//! Hub's answers are read here, not by a Hub client crate: the commit and the file's SHA-256
//! that the Hub reports become file names only after they are checked to be 40 and 64 hex
//! digits, redirects are followed at most [`MAX_HOPS`] times, and nothing is written before.
//!
//! A download goes to a temporary file of its own and is renamed into place only after its
//! SHA-256 matched, so the cache never holds a partial or wrong file under the expected name;
//! an interrupted download starts again. Offline (`HF_HUB_OFFLINE=1` or `RESNET3D_OFFLINE=1`),
//! only the caches are read.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use sha2::{Digest, Sha256};

use crate::arch::config::ResNet3dConfig;
use crate::error::{Error, Result};
use crate::model::network::ResNet3d;
use crate::weights::load::{inflate_from_2d, load_3d};
use crate::weights::registry::{PRETRAINED, Pretrained, PretrainedKind, Source};
use crate::weights::tensors::Weights;

const TV: &str = "https://download.pytorch.org/";
const HUB: &str = "https://huggingface.co";

/// The most redirects a request follows.
pub const MAX_HOPS: u32 = 5;

/// The slowest average a download may keep after its first minute, in bytes per second.
const MIN_RATE: u64 = 10 * 1024;

/// The most bytes a download may write (the largest registry file is about 500 MB).
const MAX_DOWNLOAD: u64 = 4 << 30;

/// Where downloads go and whether the network may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetcher {
    /// The cache folder of plain addresses.
    pub cache: PathBuf,
    /// The Hugging Face Hub cache folder (the one holding `models--owner--name`).
    pub hub_cache: PathBuf,
    /// Read only the caches.
    pub offline: bool,
    /// Replaces `https://download.pytorch.org` in the registry's addresses (a mirror, or a
    /// test's server), if set.
    pub endpoint: Option<String>,
    /// The Hub's address, `https://huggingface.co` unless replaced.
    pub hub_endpoint: String,
}

/// What a cached copy turned out to be.
enum Cached {
    Verified(PathBuf),
    Missing,
    /// A copy whose SHA-256 did not match, removed (what was found).
    Removed(String),
    /// An intact copy of another file than the pinned one (its SHA-256), left in place.
    Other(String),
}

impl Fetcher {
    /// The caches and endpoints the environment names:
    /// - plain addresses: `$RESNET3D_CACHE`, else `$XDG_CACHE_HOME/resnet3d`, else
    ///   `~/.cache/resnet3d`; `$RESNET3D_ENDPOINT` replaces `https://download.pytorch.org`;
    /// - the Hub, as its own clients read them: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    ///   `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; `$HF_ENDPOINT`;
    /// - offline when `HF_HUB_OFFLINE` or `RESNET3D_OFFLINE` is `1`, `on`, `yes` or `true` (in
    ///   any case, as huggingface_hub reads it).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let cache_home = var("XDG_CACHE_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"));
        let on = |k: &str| {
            var(k)
                .and_then(|v| v.to_str().map(str::to_ascii_uppercase))
                .is_some_and(|v| matches!(v.trim(), "1" | "ON" | "YES" | "TRUE"))
        };
        let text = |k: &str| var(k).and_then(|v| v.into_os_string().into_string().ok());
        Self {
            cache: var("RESNET3D_CACHE").unwrap_or_else(|| cache_home.join("resnet3d")),
            hub_cache: var("HF_HUB_CACHE")
                .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
                .unwrap_or_else(|| cache_home.join("huggingface").join("hub")),
            offline: on("HF_HUB_OFFLINE") || on("RESNET3D_OFFLINE"),
            endpoint: text("RESNET3D_ENDPOINT"),
            hub_endpoint: text("HF_ENDPOINT").unwrap_or_else(|| HUB.to_string()),
        }
    }

    /// The address `entry` is fetched from (the endpoints applied).
    pub fn url(&self, entry: &Pretrained) -> String {
        match entry.source {
            Source::Url { url, .. } => match (&self.endpoint, url.strip_prefix(TV)) {
                (Some(endpoint), Some(rest)) => format!("{}/{rest}", endpoint.trim_end_matches('/')),
                _ => url.to_string(),
            },
            Source::Hub {
                repo, file, revision, ..
            } => format!(
                "{}/{repo}/resolve/{revision}/{file}",
                self.hub_endpoint.trim_end_matches('/')
            ),
        }
    }

    /// Where `entry` is cached: for a plain address the cache folder and the address's file
    /// name, for a Hub file its repository's folder in the Hub cache.
    pub fn path(&self, entry: &Pretrained) -> PathBuf {
        match entry.source {
            Source::Url { url, .. } => self.cache.join(url.rsplit('/').next().unwrap_or(entry.name)),
            Source::Hub { repo, .. } => self.hub_cache.join(format!("models--{}", repo.replace('/', "--"))),
        }
    }

    /// How to place `entry`'s file by hand, without a network here.
    fn hint(&self, entry: &Pretrained) -> String {
        match entry.source {
            Source::Url { .. } => format!(
                "without a network, download that address by hand and put the file at {}",
                self.path(entry).display()
            ),
            Source::Hub {
                repo, file, revision, ..
            } => format!(
                "without a network, `HF_HUB_CACHE={} hf download {repo} {file} --revision {revision}` \
                 (huggingface_hub) on a machine that has one fills the Hub cache to copy here",
                self.hub_cache.display()
            ),
        }
    }

    /// The cached file of `entry`, verified by its SHA-256, downloaded first if it is not
    /// there (or does not match).
    ///
    /// # Errors
    /// [`Error::Pretrained`] naming the entry, its address and where the file belongs:
    /// offline without a matching cached copy, a download that failed (the status, the broken
    /// connection, a body longer than it said), an answer of the Hub without a commit or a
    /// SHA-256 (or with ones that are not hex digits), more than [`MAX_HOPS`] redirects, or a
    /// file whose SHA-256 is not the entry's (nothing is cached then).
    pub fn fetch(&self, entry: &Pretrained) -> Result<PathBuf> {
        let fail = |reason: String| Error::Pretrained {
            name: entry.name.to_string(),
            url: self.url(entry),
            reason,
            hint: self.hint(entry),
        };
        match entry.source {
            Source::Url { sha256, .. } => self.fetch_url(entry, sha256).map_err(fail),
            Source::Hub {
                repo,
                file,
                revision,
                sha256,
            } => self.fetch_hub(entry, repo, file, revision, sha256).map_err(fail),
        }
    }

    fn fetch_url(&self, entry: &Pretrained, sha256: &str) -> std::result::Result<PathBuf, String> {
        let path = self.path(entry);
        let verified = |digest: &str| digest.starts_with(sha256) && sha256.len() >= 8;
        // A cached file (downloaded, or put there by hand) is hashed at every use; one that
        // does not match is removed and fetched again.
        if path.is_file() {
            let digest = sha256_of(&path)?;
            if verified(&digest) {
                return Ok(path);
            }
            std::fs::remove_file(&path)
                .map_err(|e| format!("a cached file of SHA-256 {digest} could not be removed: {e}"))?;
            if self.offline {
                return Err(format!(
                    "the cached file's SHA-256 is {digest}, not {sha256}...: removed; offline, it is not fetched again"
                ));
            }
        }
        if self.offline {
            return Err("offline (HF_HUB_OFFLINE or RESNET3D_OFFLINE), and not in the cache".into());
        }
        std::fs::create_dir_all(&self.cache).map_err(|e| format!("cannot make the cache folder: {e}"))?;
        remove_stale_parts(&path);
        let part = part_name(&path);
        let result =
            download(&self.url(entry), &part, MAX_DOWNLOAD, MAX_HOPS).and_then(|digest| match verified(&digest) {
                true => Ok(()),
                false => Err(format!(
                    "the file's SHA-256 is {digest}, not {sha256}...: a damaged or different file"
                )),
            });
        finish(result, &part, &path).map(|()| path)
    }

    fn fetch_hub(
        &self,
        entry: &Pretrained,
        repo: &str,
        file: &str,
        revision: &str,
        pinned: Option<&str>,
    ) -> std::result::Result<PathBuf, String> {
        check_hub_names(repo, file, revision)?;
        if let Some(p) = pinned.filter(|p| !is_hex(p, 64)) {
            return Err(format!("the entry's SHA-256 {p:?} is not 64 lower-case hex digits"));
        }
        let folder = self.path(entry);
        let removed = match cached_hub(&folder, file, revision, pinned)? {
            Cached::Verified(path) => return Ok(path),
            Cached::Missing => None,
            Cached::Removed(what) => Some(format!("{what}: removed")),
            Cached::Other(digest) => Some(format!(
                "the cached file is another one (SHA-256 {digest}) than the registry's ({})",
                pinned.unwrap_or_default()
            )),
        };
        if self.offline {
            return Err(match removed {
                Some(what) => format!("{what}; offline, it is not fetched again"),
                None => "offline (HF_HUB_OFFLINE or RESNET3D_OFFLINE), and not in the Hub cache \
                         (or pass the file's own path)"
                    .to_string(),
            });
        }
        let meta = hub_metadata(&self.url(entry))?;
        if is_hex(revision, 40) && meta.commit != revision {
            return Err(format!(
                "the Hub answered for commit {}, not the commit {revision} asked for",
                meta.commit
            ));
        }
        if let Some(p) = pinned.filter(|&p| p != meta.sha256) {
            return Err(format!(
                "the Hub names the file by SHA-256 {}, the registry by {p}: a different file",
                meta.sha256
            ));
        }
        let blobs = folder.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(|e| format!("cannot make {}: {e}", blobs.display()))?;
        let blob = blobs.join(&meta.sha256);
        if !(blob.is_file() && sha256_of(&blob)? == meta.sha256) {
            let part = part_name(&blob);
            remove_stale_parts(&blob);
            let result = download(&meta.url, &part, meta.size.min(MAX_DOWNLOAD), meta.hops_left).and_then(|digest| {
                match digest == meta.sha256 {
                    true => Ok(()),
                    false => Err(format!(
                        "the file's SHA-256 is {digest}, not {}, the Hub's name for it: a damaged or different file",
                        meta.sha256
                    )),
                }
            });
            finish(result, &part, &blob)?;
        }
        let snapshot = folder.join("snapshots").join(&meta.commit);
        std::fs::create_dir_all(&snapshot).map_err(|e| format!("cannot make {}: {e}", snapshot.display()))?;
        let path = snapshot.join(file);
        place_link(&blob, &meta.sha256, &path)?;
        if revision != meta.commit {
            let refs = folder.join("refs");
            std::fs::create_dir_all(&refs).map_err(|e| format!("cannot make {}: {e}", refs.display()))?;
            let reference = refs.join(revision);
            let part = part_name(&reference);
            let written = std::fs::write(&part, &meta.commit).map_err(|e| format!("{}: {e}", part.display()));
            finish(written, &part, &reference)?;
        }
        Ok(path)
    }
}

/// A temporary name beside `path` that no other download has (this process, this call,
/// this instant).
fn part_name(path: &Path) -> PathBuf {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut part = path.as_os_str().to_owned();
    part.push(format!(".{}-{call}-{nanos}.part", std::process::id()));
    PathBuf::from(part)
}

/// Removes the temporary files of downloads of `path` that were cut off (a killed process):
/// those untouched for 10 minutes (a live download writes at least every minute or fails).
fn remove_stale_parts(path: &Path) {
    let (Some(folder), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        let ours = file
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('.') && rest.ends_with(".part"));
        let stale = entry
            .metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() >= 600);
        if ours && stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Renames `part` to `path` when `result` is good; removes `part` otherwise.
fn finish(result: std::result::Result<(), String>, part: &Path, path: &Path) -> std::result::Result<(), String> {
    match result.and_then(|()| std::fs::rename(part, path).map_err(|e| format!("{}: {e}", path.display()))) {
        Ok(()) => Ok(()),
        Err(reason) => {
            let _ = std::fs::remove_file(part);
            Err(reason)
        }
    }
}

/// Whether `text` is `len` lower-case hex digits.
fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Repository, file and revision names that stay inside the cache as path parts: an
/// `owner/name` of letters, digits, `-`, `_` and `.` (no `..`), each part at most 96 long,
/// without `--` (the cache's separator: `a--b/c` and `a/b--c` would share a folder) and not
/// starting or ending with `-` or `.`, as the Hub's own clients require; a file name and a
/// revision of the same letters.
fn check_hub_names(repo: &str, file: &str, revision: &str) -> std::result::Result<(), String> {
    let plain = |part: &str| {
        !part.is_empty()
            && part != "."
            && !part.contains("..")
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    let repo_part = |part: &str| {
        plain(part)
            && part.len() <= 96
            && !part.contains("--")
            && !part.starts_with(['-', '.'])
            && !part.ends_with(['-', '.'])
    };
    match repo.split_once('/') {
        Some((owner, name)) if repo_part(owner) && repo_part(name) && plain(file) && plain(revision) => Ok(()),
        _ => Err(format!(
            "the repository {repo:?}, file {file:?} or revision {revision:?} is not a plain name \
             (owner/name, a file without folders; letters, digits, '-', '_', '.'; no '--')"
        )),
    }
}

/// The Hub cache's copy of `file` at `revision` in `folder`, hashed: against `pinned`, else
/// against the blob name its snapshot entry links to. One that does not match is removed.
fn cached_hub(folder: &Path, file: &str, revision: &str, pinned: Option<&str>) -> std::result::Result<Cached, String> {
    let commit = if is_hex(revision, 40) {
        revision.to_string()
    } else {
        let mut text = String::new();
        let Some(reference) = open_regular(&folder.join("refs").join(revision)) else {
            return Ok(Cached::Missing);
        };
        if reference.take(128).read_to_string(&mut text).is_err() {
            return Ok(Cached::Missing);
        }
        text.trim().to_string()
    };
    if !is_hex(&commit, 40) {
        return Ok(Cached::Missing);
    }
    let path = folder.join("snapshots").join(&commit).join(file);
    let Ok(meta) = path.symlink_metadata() else {
        return Ok(Cached::Missing);
    };
    // The SHA-256 the copy names itself by: the blob's name it links to, or for a copy that
    // is not a link (where links cannot be made) its digest when that blob is there too.
    let target = std::fs::read_link(&path).ok();
    let named = target
        .as_ref()
        .and_then(|t| t.file_name())
        .and_then(|n| n.to_str())
        .filter(|n| is_hex(n, 64));
    // Only a plain file is read (a link to a pipe or a device would never end).
    let digest = sha256_of(&path).ok();
    let copied = digest
        .clone()
        .filter(|d| !meta.is_symlink() && folder.join("blobs").join(d).is_file());
    let own = named.map(str::to_string).or(copied);
    match (own, digest) {
        // Intact, and the pinned file (or nothing is pinned).
        (Some(own), Some(digest)) if digest == own && pinned.is_none_or(|p| p == digest) => Ok(Cached::Verified(path)),
        // Intact but another file than the pinned one: left for whoever wants it.
        (Some(own), Some(digest)) if digest == own => Ok(Cached::Other(digest)),
        // Changed since it was stored: the link and its blob removed.
        (Some(own), Some(digest)) => {
            let _ = std::fs::remove_file(&path);
            // The blob too, where the link is the cache's own (not one to a file elsewhere
            // that happens to carry a blob's name).
            let blob = folder.join("blobs").join(&own);
            if target.as_deref() == Some(Path::new("../../blobs").join(&own).as_path()) && blob.is_file() {
                let _ = std::fs::remove_file(&blob);
            }
            Ok(Cached::Removed(format!(
                "the cached file's SHA-256 is {digest}, not {own}, the name it is stored under"
            )))
        }
        // A plain copy with no blob to name it: good only when it is the pinned file.
        (None, Some(digest)) if pinned == Some(digest.as_str()) => Ok(Cached::Verified(path)),
        // A broken link, or a copy with nothing to check it against: fetched again.
        _ => {
            std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(Cached::Missing)
        }
    }
}

/// Points `path` at the blob `sha256` (`../../blobs/<sha256>`, as the Hub's clients link it),
/// replacing what was there in one rename; a copy of the blob where links cannot be made.
fn place_link(blob: &Path, sha256: &str, path: &Path) -> std::result::Result<(), String> {
    let part = part_name(path);
    #[cfg(unix)]
    let made = std::os::unix::fs::symlink(Path::new("../../blobs").join(sha256), &part);
    #[cfg(not(unix))]
    let made = std::fs::copy(blob, &part).map(|_| ());
    let _ = blob;
    finish(made.map_err(|e| format!("{}: {e}", part.display())), &part, path)
}

/// What the Hub says about a file.
struct HubFile {
    /// The commit the revision resolved to (40 hex digits).
    commit: String,
    /// The file's SHA-256 (its Git LFS object id, 64 hex digits).
    sha256: String,
    /// Its length.
    size: u64,
    /// Where its bytes are (the Hub's redirect to its storage, or the address itself).
    url: String,
    /// Redirects the download may still follow ([`MAX_HOPS`] in all).
    hops_left: u32,
}

/// An HTTP agent: 30 s to connect, 60 s for the response and for each read (and `whole` for
/// everything), asking for no content encoding (a compressed body would hide its length; one
/// a server compresses anyway is decoded, and the download's limit bounds what it decodes
/// to), statuses as answers, at most `hops` redirects followed.
fn agent(hops: u32, whole: Option<std::time::Duration>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(whole)
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .timeout_recv_response(Some(std::time::Duration::from_secs(60)))
        .timeout_per_read(Some(std::time::Duration::from_secs(60)))
        .accept_encoding("identity")
        .http_status_as_error(false)
        .max_redirects(hops)
        .build()
        .into()
}

/// Asks the Hub about the file at `url` (one byte of it, as the Hub's clients do), following
/// redirects until an answer names the commit and the file's SHA-256; each request within
/// 90 s.
fn hub_metadata(url: &str) -> std::result::Result<HubFile, String> {
    let agent = agent(0, Some(std::time::Duration::from_secs(90)));
    let mut url = url.to_string();
    for hops in 0..=MAX_HOPS {
        let response = agent
            .get(&url)
            .header("Range", "bytes=0-0")
            .call()
            .map_err(|e| format!("the Hub could not be asked: {e}"))?;
        let status = response.status().as_u16();
        let header = |k: &str| response.headers().get(k).and_then(|v| v.to_str().ok()).map(str::trim);
        let location = header("location").map(|l| resolve(&url, l));
        let redirect = (300..400).contains(&status);
        if let Some(commit) = header("x-repo-commit").filter(|_| redirect || (200..300).contains(&status)) {
            if !is_hex(commit, 40) {
                return Err(format!("the Hub's x-repo-commit {commit:?} is not a 40-digit commit"));
            }
            let etag = header("x-linked-etag").or_else(|| header("etag")).unwrap_or("");
            let sha256 = etag.trim_start_matches("W/").trim_matches('"');
            if !is_hex(sha256, 64) {
                return Err(format!(
                    "the Hub's etag {etag:?} is not a SHA-256 (64 hex digits): not a Git LFS file, which the Hub names by its SHA-256"
                ));
            }
            let size = header("x-linked-size")
                .or_else(|| header("content-range").and_then(|r| r.rsplit('/').next()))
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(MAX_DOWNLOAD);
            let url = match redirect {
                true => location.ok_or("the Hub redirected without a Location")??,
                false => url,
            };
            return Ok(HubFile {
                commit: commit.to_string(),
                sha256: sha256.to_string(),
                size,
                url,
                hops_left: MAX_HOPS
                    .checked_sub(hops + u32::from(redirect))
                    .ok_or_else(|| format!("more than {MAX_HOPS} redirects"))?,
            });
        }
        url = match (status, location) {
            (300..=399, Some(next)) => next?,
            (300..=399, None) => return Err(format!("the Hub answered {status} without a Location")),
            (401 | 403, _) => {
                return Err(format!(
                    "the Hub answered {status}: a gated or private repository (no token is sent)"
                ));
            }
            (404, _) => return Err("the Hub answered 404: no such repository, revision or file".into()),
            _ => {
                return Err(format!(
                    "the Hub answered {status} without the commit and SHA-256 of the file"
                ));
            }
        };
    }
    Err(format!("more than {MAX_HOPS} redirects"))
}

/// `location` as an absolute address: itself when it is one (http or https), else joined to
/// the scheme and host of `base`.
fn resolve(base: &str, location: &str) -> std::result::Result<String, String> {
    if location.starts_with("https://") || location.starts_with("http://") {
        return Ok(location.to_string());
    }
    let origin = base.match_indices('/').nth(2).map(|(i, _)| &base[..i]);
    match (location.starts_with('/'), origin) {
        (true, Some(origin)) => Ok(format!("{origin}{location}")),
        _ => Err(format!("a redirect to {location:?}, which is not an address")),
    }
}

/// Downloads `url` into `part` (created here), returning the SHA-256 of what was written:
/// at most its declared length and `limit`, `hops` redirects, the timeouts of [`agent`], and
/// after its first minute no slower than [`MIN_RATE`] on average (a server trickling a byte
/// a minute would otherwise hold the call for ever).
fn download(url: &str, part: &Path, limit: u64, hops: u32) -> std::result::Result<String, String> {
    let start = std::time::Instant::now();
    let response = agent(hops, None)
        .get(url)
        .call()
        .map_err(|e| format!("the download failed: {e}"))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(format!("the download failed: the server answered {status}"));
    }
    let expected = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = expected.unwrap_or(limit).min(limit);
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
        let seconds = start.elapsed().as_secs();
        if seconds >= 60 && written < seconds * MIN_RATE {
            return Err(format!(
                "the download slowed below {} KiB/s ({written} bytes in {seconds} s)",
                MIN_RATE / 1024
            ));
        }
    }
    if let Some(expected) = expected.filter(|&e| e != written) {
        return Err(format!("the connection ended after {written} of {expected} bytes"));
    }
    file.sync_all().map_err(|e| format!("{}: {e}", part.display()))?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `path` opened for reading when it is a plain file (links followed); `None` for nothing
/// there, a folder, a pipe or a device. Opened without waiting (opening a pipe would wait for
/// a writer), and its type checked on the open file: nothing swapped in between is read.
fn open_regular(path: &Path) -> Option<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path).ok()?;
    file.metadata().ok().filter(std::fs::Metadata::is_file)?;
    Some(file)
}

/// The SHA-256 of a plain file's bytes, as lower-case hex.
fn sha256_of(path: &Path) -> std::result::Result<String, String> {
    let mut file =
        open_regular(path).ok_or_else(|| format!("{}: not a plain file that can be read", path.display()))?;
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
    /// The network of `config` from the published weights called `name` (see
    /// [`PRETRAINED`](crate::PRETRAINED)), fetched into the caches of
    /// [`Fetcher::from_env`] and verified by their SHA-256: a 2-D ImageNet ResNet is inflated
    /// as `config` says, a 3-D network read as a checkpoint, with the same strict loading as
    /// [`from_imagenet`](Self::from_imagenet) and [`from_checkpoint`](Self::from_checkpoint).
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
