//! Weights by name without the internet: a loopback HTTP server in the test serves a fixture
//! checkpoint at registry-like addresses (the endpoint replaced), whole, damaged, missing
//! (404) and cut off mid-file; then, with the server gone, the cache serves it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use resnet3d::burn::tensor::Device;
use resnet3d::{Error, Fetcher, Pretrained, PretrainedKind, ResNet3d, ResNet3dConfig, Source};
use sha2::Digest;

use crate::common::*;

/// A server on 127.0.0.1 answering `GET /models/<name>` from `files` (name, status, body,
/// declared length), one connection at a time; the number of requests it answered.
fn serve(files: Vec<(&'static str, u16, Vec<u8>, usize)>) -> (String, Arc<AtomicUsize>, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let expected = files.len();
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming().take(expected) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let found = files.iter().find(|(name, ..)| path == format!("/models/{name}"));
            let (status, body, declared) = match found {
                Some((_, status, body, declared)) => (*status, body.clone(), *declared),
                None => (404, b"not found".to_vec(), 9),
            };
            let reason = if status == 200 { "OK" } else { "Not Found" };
            let head = format!("HTTP/1.1 {status} {reason}\r\ncontent-length: {declared}\r\nconnection: close\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    (endpoint, served, handle)
}

fn entry(name: &'static str, file: &str, sha256: String) -> Pretrained {
    Pretrained {
        name,
        source: Source::Url {
            url: Box::leak(format!("https://download.pytorch.org/models/{file}").into_boxed_str()),
            sha256: Box::leak(sha256.into_boxed_str()),
        },
        kind: PretrainedKind::ImageNet,
    }
}

fn hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn weights_by_name_are_downloaded_verified_cached_and_refused_when_wrong() {
    let file = fixtures().join("checkpoints/r18_w4.pth");
    let bytes = std::fs::read(&file).unwrap();
    let digest = hex(&bytes);
    let mut damaged = bytes.clone();
    damaged[bytes.len() / 2] ^= 0xFF;
    let half = bytes[..bytes.len() / 2].to_vec();
    let (endpoint, served, server) = serve(vec![
        ("good.pth", 200, bytes.clone(), bytes.len()),
        ("damaged.pth", 200, damaged, bytes.len()),
        ("missing.pth", 404, b"not found".to_vec(), 9),
        ("cut.pth", 200, half, bytes.len()),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher {
        cache: cache.path().join("resnet3d"),
        hub_cache: cache.path().join("hub"),
        offline: false,
        endpoint: Some(endpoint.clone()),
        hub_endpoint: endpoint.clone(),
    };
    // Without a head: a fresh head is random, the rest is the file's.
    let config = ResNet3dConfig::resnet18()
        .with_width(4)
        .with_in_channels(1)
        .with_num_classes(None);
    let device = Device::flex();

    // Whole: loaded as from_imagenet loads the file, and cached under its name.
    let good = entry("test.good", "good.pth", digest.clone());
    let model = ResNet3d::from_pretrained_with(&fetcher, &good, &config, &device).unwrap();
    let reference = ResNet3d::from_imagenet(&file, &config, &device).unwrap();
    let x = pattern([1, 1, 8, 16, 16], &device);
    assert_eq!(
        values(model.forward(x.clone())).1,
        values(reference.forward(x.clone())).1
    );
    assert_eq!(std::fs::read(fetcher.path(&good)).unwrap(), bytes);

    // Damaged, missing, cut off: a typed error naming the name and the address; nothing
    // under the expected name, no partial file left.
    for (name, file, want) in [
        ("test.damaged", "damaged.pth", "SHA-256"),
        ("test.missing", "missing.pth", "404"),
        ("test.cut", "cut.pth", "bytes"),
    ] {
        let e = entry(name, file, digest.clone());
        match ResNet3d::from_pretrained_with(&fetcher, &e, &config, &device) {
            Err(err @ Error::Pretrained { .. }) => {
                let text = err.to_string();
                assert!(
                    text.contains(want) && text.contains(name) && text.contains(&endpoint),
                    "{text}"
                );
                assert!(text.contains("by hand"), "{text}");
            }
            other => panic!("{name}: {:?}", other.map(|_| ())),
        }
        assert!(!fetcher.path(&e).exists(), "{name} cached");
    }
    server.join().unwrap();
    assert_eq!(served.load(Ordering::SeqCst), 4);
    let left: Vec<_> = std::fs::read_dir(&fetcher.cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "only the good file: {left:?}");

    // The server is gone: the cached copy serves, online or offline; an uncached name
    // offline says so.
    let offline = Fetcher {
        offline: true,
        ..fetcher.clone()
    };
    for f in [&fetcher, &offline] {
        let again = ResNet3d::from_pretrained_with(f, &good, &config, &device).unwrap();
        assert_eq!(
            values(again.forward(x.clone())).1,
            values(reference.forward(x.clone())).1
        );
    }
    // A cached file changed since (or put there by hand) is hashed at use: refused, removed.
    let mut changed = bytes.clone();
    changed[0] ^= 1;
    std::fs::write(fetcher.path(&good), &changed).unwrap();
    let err = ResNet3d::from_pretrained_with(&offline, &good, &config, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("SHA-256") && err.contains("removed"), "{err}");
    assert!(!fetcher.path(&good).exists());
    let err = ResNet3d::from_pretrained_with(&offline, &entry("test.other", "other.pth", digest), &config, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("offline"), "{err}");
}

#[test]
fn an_unknown_name_lists_the_names() {
    let err = ResNet3d::from_pretrained("resnet51", &ResNet3dConfig::resnet50(), &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("resnet50.tv2_in1k") && err.contains("r2plus1d_18.kinetics400"),
        "{err}"
    );
    // The registry's plain addresses are torchvision's, their checksum prefix in the file
    // name; its Hub files are timm's `model.safetensors` (2-D) and MedicalNet's `.pth` (3-D,
    // whole digests); names are unique.
    let mut names = std::collections::HashSet::new();
    for p in resnet3d::PRETRAINED {
        assert!(names.insert(p.name), "{p:?}");
        match p.source {
            Source::Url { url, sha256 } => {
                let file = url.rsplit('/').next().unwrap();
                assert!(url.starts_with("https://download.pytorch.org/models/"), "{p:?}");
                assert!(file.contains(&format!("-{sha256}.")), "{p:?}");
            }
            Source::Hub {
                repo,
                file,
                revision,
                sha256,
            } => {
                assert_eq!(revision, "main");
                match p.kind {
                    PretrainedKind::ImageNet => {
                        assert_eq!(format!("timm/{}", repo.trim_start_matches("timm/")), p.name);
                        assert_eq!((file, sha256), ("model.safetensors", None), "{p:?}");
                    }
                    PretrainedKind::Native3d => {
                        assert!(repo.starts_with("TencentMedicalNet/MedicalNet-Resnet"), "{p:?}");
                        assert_eq!(format!("medicalnet/{}", file.trim_end_matches(".pth")), p.name);
                        assert!(sha256.is_some_and(|s| s.len() == 64), "{p:?}");
                    }
                }
            }
        }
    }
    assert_eq!(names.len(), 11 + 46 + 11);
}

/// One answer of [`hub_server`]: status, headers, body, declared length.
type Reply = (u16, Vec<(&'static str, String)>, Vec<u8>, usize);

/// A server on 127.0.0.1 answering every request with `route(path, ranged)` (`ranged`: the
/// request asked for a byte range), one connection at a time, until `/quit`; the paths it was
/// asked for.
fn hub_server(
    route: impl Fn(&str, bool) -> Reply + Send + 'static,
) -> (String, Arc<std::sync::Mutex<Vec<String>>>, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut ranged = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                ranged |= line.to_ascii_lowercase().starts_with("range:");
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            if path == "/quit" {
                break;
            }
            log.lock().unwrap().push(path.clone());
            let (status, headers, body, declared) = route(&path, ranged);
            let mut head = format!("HTTP/1.1 {status} X\r\ncontent-length: {declared}\r\nconnection: close\r\n");
            for (k, v) in headers {
                head += &format!("{k}: {v}\r\n");
            }
            let _ = stream.write_all(format!("{head}\r\n").as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (endpoint, asked, handle)
}

fn hub_entry(
    name: &'static str,
    repo: &str,
    file: &'static str,
    sha256: Option<String>,
    kind: PretrainedKind,
) -> Pretrained {
    Pretrained {
        name,
        source: Source::Hub {
            repo: Box::leak(repo.to_string().into_boxed_str()),
            file,
            revision: "main",
            sha256: sha256.map(|s| &*Box::leak(s.into_boxed_str())),
        },
        kind,
    }
}

#[test]
fn hub_files_are_fetched_into_the_hub_cache_layout_verified_and_hostile_answers_refused() {
    let file = fixtures().join("checkpoints/r18_w4.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let mn_file = fixtures().join("medicalnet/medicalnet10_w4.pth");
    let mn_bytes = std::fs::read(&mn_file).unwrap();
    let (digest, mn_digest) = (hex(&bytes), hex(&mn_bytes));
    let commit = "0123456789abcdef0123456789abcdef01234567".to_string();
    let (b, mb, d, md, c) = (
        bytes.clone(),
        mn_bytes.clone(),
        digest.clone(),
        mn_digest.clone(),
        commit.clone(),
    );
    // The Hub's answers: an LFS file redirected to storage with the commit, SHA-256 and size in
    // the headers (what huggingface.co sends), a file answered directly, and hostile ones.
    let (endpoint, asked, server) = hub_server(move |path, ranged| {
        let lfs = |sha: &str, len: usize, to: &str| {
            (
                302,
                vec![
                    ("x-repo-commit", c.clone()),
                    ("x-linked-etag", format!("\"{sha}\"")),
                    ("x-linked-size", len.to_string()),
                    ("location", to.to_string()),
                ],
                Vec::new(),
                0,
            )
        };
        let mut damaged = b.clone();
        damaged[b.len() / 2] ^= 0xFF;
        match path {
            "/timm/good/resolve/main/model.safetensors" => lfs(&d, b.len(), "/storage/good"),
            "/storage/good" => (200, vec![], b.clone(), b.len()),
            "/TencentMedicalNet/mn/resolve/main/resnet_10.pth" if !ranged => (200, vec![], mb.clone(), mb.len()),
            "/TencentMedicalNet/mn/resolve/main/resnet_10.pth" => (
                206,
                vec![
                    ("x-repo-commit", c.clone()),
                    ("etag", format!("W/\"{md}\"")),
                    ("content-range", format!("bytes 0-0/{}", mb.len())),
                ],
                mb[..1].to_vec(),
                1,
            ),
            "/timm/damaged/resolve/main/model.safetensors" => lfs(&d, b.len(), "/storage/damaged"),
            "/storage/damaged" => (200, vec![], damaged, b.len()),
            "/timm/cut/resolve/main/model.safetensors" => lfs(&d, b.len(), "/storage/cut"),
            "/storage/cut" => (200, vec![], b[..b.len() / 2].to_vec(), b.len()),
            "/timm/escape/resolve/main/model.safetensors" => lfs("../../../../escaped", b.len(), "/storage/good"),
            "/timm/commit/resolve/main/model.safetensors" => (
                302,
                vec![("x-repo-commit", "../../escaped".into()), ("x-linked-etag", d.clone())],
                vec![],
                0,
            ),
            "/timm/nolocation/resolve/main/model.safetensors" => (300, vec![], vec![], 0),
            // Three redirects before the answer with the metadata, its own, three after: seven.
            "/timm/hops/resolve/main/model.safetensors" => (307, vec![("location", "/h1".into())], vec![], 0),
            "/h1" => (307, vec![("location", "/h2".into())], vec![], 0),
            "/h2" => (307, vec![("location", "/h3".into())], vec![], 0),
            "/h3" => lfs(&d, b.len(), "/s1"),
            "/s1" => (307, vec![("location", "/s2".into())], vec![], 0),
            "/s2" => (307, vec![("location", "/s3".into())], vec![], 0),
            "/s3" => (307, vec![("location", "/storage/good".into())], vec![], 0),
            // Asked for one commit, answered for another.
            "/timm/good/resolve/1111111111111111111111111111111111111111/model.safetensors" => {
                lfs(&d, b.len(), "/storage/good")
            }
            "/timm/loop/resolve/main/model.safetensors" => (
                307,
                vec![("location", "/timm/loop/resolve/main/model.safetensors".into())],
                vec![],
                0,
            ),
            "/timm/gitfile/resolve/main/model.safetensors" => (
                200,
                vec![
                    ("x-repo-commit", c.clone()),
                    ("etag", "\"0123456789abcdef0123456789abcdef01234567\"".into()),
                ],
                vec![],
                0,
            ),
            _ => (404, vec![], b"not found".to_vec(), 9),
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher {
        cache: cache.path().join("resnet3d"),
        hub_cache: cache.path().join("hub"),
        offline: false,
        endpoint: None,
        hub_endpoint: endpoint.clone(),
    };
    let device = Device::flex();
    let config = ResNet3dConfig::resnet18()
        .with_width(4)
        .with_in_channels(1)
        .with_num_classes(None);
    let x = pattern([1, 1, 8, 16, 16], &device);
    let reference = values(
        ResNet3d::from_imagenet(&file, &config, &device)
            .unwrap()
            .forward(x.clone()),
    )
    .1;

    // A download of the good file cut off an hour ago (its process killed) left its part.
    let stale = cache
        .path()
        .join("hub/models--timm--good/blobs")
        .join(format!("{digest}.1-0-0.part"));
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, &bytes[..10]).unwrap();
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();

    // Good: loaded as from_imagenet loads the file; the cache is the Hub's layout (the stale
    // part gone).
    let good = hub_entry(
        "timm/good",
        "timm/good",
        "model.safetensors",
        None,
        PretrainedKind::ImageNet,
    );
    let model = ResNet3d::from_pretrained_with(&fetcher, &good, &config, &device).unwrap();
    assert_eq!(values(model.forward(x.clone())).1, reference);
    let folder = cache.path().join("hub/models--timm--good");
    assert_eq!(folder, fetcher.path(&good));
    assert_eq!(std::fs::read(folder.join("blobs").join(&digest)).unwrap(), bytes);
    let link = folder.join("snapshots").join(&commit).join("model.safetensors");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        std::path::Path::new("../../blobs").join(&digest)
    );
    assert_eq!(std::fs::read_to_string(folder.join("refs/main")).unwrap(), commit);
    assert!(!stale.exists());

    // A MedicalNet-like file answered directly (no redirect), its whole digest pinned: a 3-D
    // checkpoint read as from_checkpoint reads it.
    let mn_config = ResNet3dConfig::medicalnet(10).unwrap().with_width(4);
    let mn = hub_entry(
        "medicalnet/test",
        "TencentMedicalNet/mn",
        "resnet_10.pth",
        Some(mn_digest.clone()),
        PretrainedKind::Native3d,
    );
    let model = ResNet3d::from_pretrained_with(&fetcher, &mn, &mn_config, &device).unwrap();
    let mn_reference = ResNet3d::from_checkpoint(&mn_file, &mn_config, &device).unwrap();
    let y = pattern([1, 1, 8, 16, 16], &device);
    assert_eq!(
        values(model.forward(y.clone())).1,
        values(mn_reference.forward(y.clone())).1
    );

    // Failures: a typed error naming the name and the address; nothing cached under the name.
    let pinned_wrong = hub_entry(
        "timm/pinned",
        "timm/good",
        "model.safetensors",
        Some(mn_digest.clone()),
        PretrainedKind::ImageNet,
    );
    let hub =
        |name: &'static str, repo: &str| hub_entry(name, repo, "model.safetensors", None, PretrainedKind::ImageNet);
    let bad = [
        (hub("timm/damaged", "timm/damaged"), "SHA-256"),
        (hub("timm/missing", "timm/missing"), "404"),
        (hub("timm/cut", "timm/cut"), "bytes"),
        (hub("timm/escape", "timm/escape"), "etag"),
        (hub("timm/commit", "timm/commit"), "x-repo-commit"),
        (hub("timm/nolocation", "timm/nolocation"), "Location"),
        (hub("timm/loop", "timm/loop"), "redirects"),
        (hub("timm/gitfile", "timm/gitfile"), "Git LFS"),
        (hub("timm/dots", "timm/.."), "plain name"),
        (
            hub_entry(
                "timm/folder",
                "timm/x",
                "../model.safetensors",
                None,
                PretrainedKind::ImageNet,
            ),
            "plain name",
        ),
        (hub("timm/hops", "timm/hops"), "redirects"),
        // `a--b/c` and `a/b--c` would share the cache folder `models--a--b--c`.
        (hub("timm/dashes", "timm--good/x"), "plain name"),
        (hub("timm/dash", "-timm/x"), "plain name"),
        (
            Pretrained {
                name: "timm/commit-asked",
                source: Source::Hub {
                    repo: "timm/good",
                    file: "model.safetensors",
                    revision: "1111111111111111111111111111111111111111",
                    sha256: None,
                },
                kind: PretrainedKind::ImageNet,
            },
            "not the commit",
        ),
    ];
    for (entry, want) in bad.iter().chain([(pinned_wrong, "different file")].iter()) {
        let before = asked.lock().unwrap().len();
        match ResNet3d::from_pretrained_with(&fetcher, entry, &config, &device) {
            Err(err @ Error::Pretrained { .. }) => {
                let text = err.to_string();
                assert!(text.contains(want) && text.contains(entry.name), "{text}");
            }
            other => panic!("{}: {:?}", entry.name, other.map(|_| ())),
        }
        let requests = asked.lock().unwrap().len() - before;
        assert!(
            requests <= 1 + resnet3d::MAX_HOPS as usize,
            "{}: {requests} requests",
            entry.name
        );
        if !["timm/pinned", "timm/commit-asked"].contains(&entry.name) {
            let folder = fetcher.path(entry);
            let kept: Vec<_> = walk(&folder).into_iter().filter(|p| !p.is_dir()).collect();
            assert!(kept.is_empty(), "{}: {kept:?}", entry.name);
        }
    }
    // Nothing was written outside the Hub cache's repository folders (the escaping etag and
    // commit included), and the damaged and cut downloads left no partial file.
    let mut outside: Vec<_> = walk(cache.path())
        .into_iter()
        .filter(|p| !p.is_dir())
        .map(|p| p.strip_prefix(cache.path()).unwrap().to_path_buf())
        .collect();
    outside.sort();
    assert_eq!(outside.len(), 6, "{outside:?}");
    assert!(
        outside
            .iter()
            .all(|p| p.starts_with("hub/models--timm--good") || p.starts_with("hub/models--TencentMedicalNet--mn"))
    );
    let _ = std::net::TcpStream::connect(endpoint.trim_start_matches("http://"))
        .and_then(|mut s| s.write_all(b"GET /quit HTTP/1.1\r\n\r\n"));
    server.join().unwrap();

    // The server is gone: the cache serves, online or offline.
    let offline = Fetcher {
        offline: true,
        ..fetcher.clone()
    };
    for f in [&fetcher, &offline] {
        let again = ResNet3d::from_pretrained_with(f, &good, &config, &device).unwrap();
        assert_eq!(values(again.forward(x.clone())).1, reference);
    }
    // An entry pinning another file than the cached one: refused offline, the copy kept.
    let pinned_other = hub_entry(
        "timm/pinned",
        "timm/good",
        "model.safetensors",
        Some(mn_digest.clone()),
        PretrainedKind::ImageNet,
    );
    let err = ResNet3d::from_pretrained_with(&offline, &pinned_other, &config, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("another one") && err.contains(&mn_digest), "{err}");
    assert_eq!(std::fs::read(&link).unwrap(), bytes);
    // A ref that is a pipe is not waited on: not cached.
    let piped = hub("timm/pipe", "timm/pipe");
    let refs = fetcher.path(&piped).join("refs");
    std::fs::create_dir_all(&refs).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(refs.join("main"))
            .status()
            .unwrap()
            .success()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let off = offline.clone();
    std::thread::spawn(move || tx.send(off.fetch(&piped).map_err(|e| e.to_string())));
    let answer = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("a pipe in the cache was waited on");
    assert!(answer.is_err_and(|e| e.contains("not in the Hub cache")));
    // Not cached, offline: the error says how to fill the cache.
    let other = hub_entry(
        "timm/other",
        "timm/other",
        "model.safetensors",
        None,
        PretrainedKind::ImageNet,
    );
    let err = ResNet3d::from_pretrained_with(&offline, &other, &config, &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("offline") && err.contains("hf download timm/other model.safetensors --revision main"),
        "{err}"
    );
    // A blob changed in the cache is hashed at use: refused, and the link and blob removed.
    let blob = folder.join("blobs").join(&digest);
    let mut changed = bytes.clone();
    changed[0] ^= 1;
    std::fs::write(&blob, &changed).unwrap();
    let err = ResNet3d::from_pretrained_with(&offline, &good, &config, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("SHA-256") && err.contains("removed"), "{err}");
    assert!(!blob.exists() && link.symlink_metadata().is_err());
}

/// Every path under `root` (none if it does not exist).
fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            if p.symlink_metadata().unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}
