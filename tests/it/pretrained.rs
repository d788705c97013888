//! Weights by name without the internet: a loopback HTTP server in the test serves a fixture
//! checkpoint at registry-like addresses (the endpoint replaced), whole, damaged, missing
//! (404) and cut off mid-file; then, with the server gone, the cache serves it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use resnet3d::burn::tensor::Device;
use resnet3d::{Error, Fetcher, Pretrained, PretrainedKind, ResNet3d, ResNet3dConfig};
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
        url: Box::leak(format!("https://download.pytorch.org/models/{file}").into_boxed_str()),
        sha256: Box::leak(sha256.into_boxed_str()),
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
        offline: false,
        endpoint: Some(endpoint.clone()),
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
    // The registry's addresses are torchvision's, their checksum prefix in the file name.
    for p in resnet3d::PRETRAINED {
        let file = p.url.rsplit('/').next().unwrap();
        assert!(file.contains(&format!("-{}.", p.sha256)), "{p:?}");
    }
}
