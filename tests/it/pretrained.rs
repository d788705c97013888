//! Weights by name without the internet: a loopback HTTP server in the test serves a fixture
//! checkpoint at registry-like addresses (the endpoint replaced), whole, damaged, missing
//! (404) and cut off mid-file; then, with the server gone, the cache serves it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use resnet3d::burn::tensor::Device;
use resnet3d::{Error, Fetcher, Pretrained, PretrainedKind, ResNet3d, ResNet3dConfig, Source};
use sha2::Digest;

use crate::common::*;

/// What the test server answers at a path: status, body, the length it declares, and extra
/// headers.
type Route = (String, u16, Vec<u8>, usize, Vec<(&'static str, String)>);

/// A server on 127.0.0.1 answering GET requests from `routes` (404 elsewhere), honouring
/// `Range: bytes=N-M` (206) as the Hub's clients use it, until the returned flag is set; the
/// number of requests it answered.
fn serve(routes: Vec<Route>) -> (String, Arc<AtomicUsize>, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (served, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let (count, stopped) = (served.clone(), stop.clone());
    let handle = std::thread::spawn(move || {
        while !stopped.load(Ordering::SeqCst) {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            let mut stream = stream;
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = value.trim().split_once('-').unwrap();
                    range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().ok()));
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let (status, body, declared, headers) = match routes.iter().find(|r| r.0 == path) {
                Some((_, status, body, declared, headers)) => (*status, body.clone(), *declared, headers.clone()),
                None => (404, b"not found".to_vec(), 9, vec![]),
            };
            let mut head = String::new();
            let (status, body, length) = match range {
                Some((a, b)) if status == 200 => {
                    let end = b.map_or(declared, |b| b + 1).min(declared);
                    head.push_str(&format!("content-range: bytes {a}-{}/{declared}\r\n", end - 1));
                    (
                        206,
                        body.get(a..end.min(body.len())).unwrap_or_default().to_vec(),
                        end - a,
                    )
                }
                _ => (status, body, declared),
            };
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            let reason = match status {
                200 => "OK",
                206 => "Partial Content",
                _ => "Not Found",
            };
            let head =
                format!("HTTP/1.1 {status} {reason}\r\ncontent-length: {length}\r\nconnection: close\r\n{head}\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    (endpoint, served, stop, handle)
}

fn plain(name: &str, status: u16, body: Vec<u8>, declared: usize) -> Route {
    (format!("/models/{name}"), status, body, declared, vec![])
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

fn fetcher(cache: &std::path::Path, endpoint: &str) -> Fetcher {
    Fetcher {
        cache: cache.join("resnet3d"),
        offline: false,
        endpoint: Some(endpoint.to_string()),
        hub_cache: cache.join("huggingface/hub"),
        hub_endpoint: endpoint.to_string(),
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
    let (endpoint, served, stop, server) = serve(vec![
        plain("good.pth", 200, bytes.clone(), bytes.len()),
        plain("damaged.pth", 200, damaged, bytes.len()),
        plain("missing.pth", 404, b"not found".to_vec(), 9),
        plain("cut.pth", 200, half, bytes.len()),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path(), &endpoint);
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
    stop.store(true, Ordering::SeqCst);
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
    // The registry's addresses are torchvision's, their checksum prefix in the file name.
    for p in resnet3d::PRETRAINED {
        match p.source {
            Source::Url { url, sha256 } => {
                let file = url.rsplit('/').next().unwrap();
                assert!(file.contains(&format!("-{sha256}.")), "{p:?}");
            }
            Source::Hub { repo, file } => {
                assert_eq!((repo, file), (format!("timm/{}", p.name).as_str(), "model.safetensors"))
            }
        }
    }
}

/// Hub files: hf-hub's protocol (a ranged request for the commit and the SHA-256 the Hub
/// names the blob by, then the bytes) and cache layout, against the test server; every use
/// hashes the file against that SHA-256, so a damaged download is removed, not used.
#[test]
fn hub_files_are_verified_against_the_hubs_sha256_and_cached() {
    let file = fixtures().join("checkpoints/r18_w4.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let digest = hex(&bytes);
    let mut damaged = bytes.clone();
    damaged[bytes.len() / 2] ^= 0xFF;
    let headers = vec![
        ("x-repo-commit", "0123456789abcdef0123456789abcdef01234567".to_string()),
        ("etag", format!("\"{digest}\"")),
    ];
    let route = |repo: &str, body: Vec<u8>| -> Route {
        (
            format!("/{repo}/resolve/main/model.safetensors"),
            200,
            body,
            bytes.len(),
            headers.clone(),
        )
    };
    let half = bytes[..bytes.len() / 2].to_vec();
    let (endpoint, _, stop, server) = serve(vec![
        route("test/good", bytes.clone()),
        route("test/damaged", damaged),
        route("test/cut", half),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path(), &endpoint);
    let hub = |name: &'static str, repo: &'static str| Pretrained {
        name,
        source: Source::Hub {
            repo,
            file: "model.safetensors",
        },
        kind: PretrainedKind::ImageNet,
    };
    let config = ResNet3dConfig::resnet18()
        .with_width(4)
        .with_in_channels(1)
        .with_num_classes(None);
    let device = Device::flex();
    let reference = ResNet3d::from_imagenet(&file, &config, &device).unwrap();
    let x = pattern([1, 1, 8, 16, 16], &device);
    let good = hub("hub.good", "test/good");
    let model = ResNet3d::from_pretrained_with(&fetcher, &good, &config, &device).unwrap();
    assert_eq!(
        values(model.forward(x.clone())).1,
        values(reference.forward(x.clone())).1
    );
    let blob = fetcher.path(&good).join("blobs").join(&digest);
    assert_eq!(std::fs::read(&blob).unwrap(), bytes, "the Hugging Face cache layout");

    for (name, repo, want) in [
        ("hub.damaged", "test/damaged", "SHA-256"),
        ("hub.missing", "test/missing", "404"),
        ("hub.cut", "test/cut", "download failed"),
    ] {
        let e = hub(name, repo);
        let err = ResNet3d::from_pretrained_with(&fetcher, &e, &config, &device).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, Error::Pretrained { .. }) && text.contains(want),
            "{name}: {text}"
        );
        let blob = fetcher.path(&e).join("blobs").join(&digest);
        assert!(!blob.exists(), "{name}: a damaged blob is not kept");
    }
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();

    // The server is gone: the cached, verified file serves; a file changed in the cache
    // since is refused and removed.
    let offline = Fetcher {
        offline: true,
        ..fetcher.clone()
    };
    let again = ResNet3d::from_pretrained_with(&offline, &good, &config, &device).unwrap();
    assert_eq!(values(again.forward(x.clone())).1, values(reference.forward(x)).1);
    let mut changed = bytes.clone();
    changed[0] ^= 1;
    std::fs::write(&blob, &changed).unwrap();
    let err = ResNet3d::from_pretrained_with(&offline, &good, &config, &device).unwrap_err();
    assert!(err.to_string().contains("SHA-256"), "{err}");
    assert!(!blob.exists());
}
