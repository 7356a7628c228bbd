//! Benchmark: model downloads from the hub's warehouse into the agent's model store. A real hub
//! process; the real YOLOX file and a 64 MiB synthetic blob registered over HTTP; each
//! downloaded in full by `ModelStore::fetch` (throughput), then once more through a small TCP
//! proxy that cuts the connection after half the file — a real network cut — so the store
//! resumes with a `Range` request: bytes sent on each connection vs the file's size, total time.
//!
//!   cargo run --release -p csb-e2e --example bench_model_download

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use csb_test_support::http::client;
use csb_test_support::process::{media, root, Hub};
use csb_wire::model::{ModelManifest, PackageSelfTest};
use edge_agent::model::store::{DownloadAuth, FetchOptions, ModelStore};
use sha2::{Digest, Sha256};

fn sha(b: &[u8]) -> String {
    csb_wire::sign::hex_lower(&Sha256::digest(b))
}

fn manifest(name: &str, model: &[u8], image: &[u8]) -> ModelManifest {
    let mut m: ModelManifest = serde_json::from_value(serde_json::json!({
        "name": name, "version": "1", "decoder": "yolox",
        "labels": ["person", "bus", "car"],
        "input": {"name": "images", "width": 416, "height": 416, "layout": "nchw",
                  "channel_order": "bgr", "scale": 1.0, "pad_value": 114.0},
        "output": {"name": "output", "strides": [8, 16, 32], "nms_iou": 0.45},
        "sha256": sha(model), "bytes": model.len(),
        "selftest": {"image_sha256": "0".repeat(64), "image_bytes": 1,
                     "expect": [{"label": "bus", "min_score": 0.85, "box": [68, 110, 476, 394]}]}
    }))
    .unwrap();
    m.selftest = PackageSelfTest {
        image_sha256: sha(image),
        image_bytes: image.len() as u64,
        expect: m.selftest.expect,
    };
    m
}

async fn register(hub: &Hub, m: &ModelManifest, model: &[u8], image: &[u8]) {
    let base = format!("/api/v1/models/{}/{}", m.name, m.version);
    let r = client().put(hub.url(&base)).json(m).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    for (kind, body) in [("model", model), ("selftest", image)] {
        let r = client()
            .put(hub.url(&format!("{base}/files/{kind}")))
            .header("content-type", "application/octet-stream")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
}

/// A TCP proxy to `target`: its first connection is cut after `cut_after` bytes from the
/// server; later ones pass everything. Bytes sent to the client per connection are recorded.
struct CutProxy {
    port: u16,
    sent: Arc<Mutex<Vec<Arc<AtomicU64>>>>,
}

fn cut_proxy(target: String, cut_after: u64) -> CutProxy {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let sent: Arc<Mutex<Vec<Arc<AtomicU64>>>> = Arc::default();
    let conns = Arc::new(AtomicUsize::new(0));
    let s2 = sent.clone();
    std::thread::spawn(move || {
        for client in l.incoming() {
            let Ok(client) = client else { break };
            let n = conns.fetch_add(1, Ordering::SeqCst);
            let limit = if n == 0 { cut_after } else { u64::MAX };
            let server = TcpStream::connect(&target).unwrap();
            let counter = Arc::new(AtomicU64::new(0));
            s2.lock().unwrap().push(counter.clone());
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(k) = c_read.read(&mut buf) {
                    if k == 0 || s_write.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
                let _ = s_write.shutdown(Shutdown::Write);
            });
            let (mut s_read, mut c_write) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                loop {
                    let done = counter.load(Ordering::SeqCst);
                    if done >= limit {
                        // The cut: both directions closed mid-answer.
                        let _ = c_write.shutdown(Shutdown::Both);
                        let _ = s_read.shutdown(Shutdown::Both);
                        break;
                    }
                    let want = buf.len().min((limit - done).min(buf.len() as u64) as usize);
                    match s_read.read(&mut buf[..want]) {
                        Ok(0) | Err(_) => {
                            let _ = c_write.shutdown(Shutdown::Write);
                            break;
                        }
                        Ok(k) => {
                            if c_write.write_all(&buf[..k]).is_err() {
                                break;
                            }
                            counter.fetch_add(k as u64, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
    });
    CutProxy { port, sent }
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let hub = Hub::start();
    let image = std::fs::read(media("pexels_double_decker_bus.jpg")).unwrap();
    let yolox = std::fs::read(root().join("models/yolox_nano.onnx")).expect("run `make setup`");
    // 64 MiB of xorshift bytes: incompressible, any bytes will do (size and sha256 are checked).
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let blob: Vec<u8> = (0..64usize << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let opts = FetchOptions {
        backoff: Duration::from_millis(100),
        ..FetchOptions::default()
    };
    let stores = tempfile::tempdir().unwrap();
    println!(
        "model download benchmark: hub {}, agent store {}",
        hub.http,
        stores.path().display()
    );
    for (name, model) in [("yolox_nano", &yolox), ("synthetic_64mib", &blob)] {
        let m = manifest(name, model, &image);
        register(&hub, &m, model, &image).await;
        let total = m.bytes + m.selftest.image_bytes;

        // A full download.
        let store = ModelStore::open(&stores.path().join(format!("{name}-full")))
            .unwrap()
            .with_options(opts.clone());
        let (url, mm) = (hub.http.clone(), m.clone());
        let t = Instant::now();
        let (_, report) = tokio::task::spawn_blocking(move || {
            store.fetch_report(&url, &mm, &DownloadAuth::None, &mut |_, _| {})
        })
        .await
        .unwrap()
        .unwrap();
        let full_s = t.elapsed().as_secs_f64();
        println!(
            "{name}: full download {:.1} MB (model + self-test image) in {:.3} s = {:.0} MB/s \
             (sha256 checked, synced), {} requests",
            mb(report.received),
            full_s,
            mb(report.received) / full_s,
            report.requests
        );

        // Cut at half the model file, resumed.
        let proxy = cut_proxy(
            hub.http.trim_start_matches("http://").to_string(),
            m.bytes / 2,
        );
        let store = ModelStore::open(&stores.path().join(format!("{name}-cut")))
            .unwrap()
            .with_options(opts.clone());
        let (url, mm) = (format!("http://127.0.0.1:{}", proxy.port), m.clone());
        let t = Instant::now();
        let (dir, report) = tokio::task::spawn_blocking(move || {
            store.fetch_report(&url, &mm, &DownloadAuth::None, &mut |_, _| {})
        })
        .await
        .unwrap()
        .unwrap();
        let cut_s = t.elapsed().as_secs_f64();
        let ok = std::fs::read(dir.join("model.onnx")).unwrap() == **model;
        let per_conn: Vec<u64> = proxy
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect();
        let first = per_conn.first().copied().unwrap_or(0);
        let after: u64 = per_conn.iter().skip(1).sum();
        println!(
            "{name}: cut after {:.1} MB of {:.1} MB (connection closed by the proxy), resumed: \
             {:.1} MB on the resume connection(s) = {:.0} % of the model + image, {} requests, \
             {} restarts, total {:.3} s ({:.2}× the uncut time); file verified: {ok}",
            mb(first),
            mb(m.bytes),
            mb(after),
            100.0 * after as f64 / total as f64,
            report.requests,
            report.restarts,
            cut_s,
            cut_s / full_s
        );
        println!(
            "{name}: bytes received by the store over both connections {:.1} MB for {:.1} MB of \
             files (a restart from zero would have been {:.1} MB)",
            mb(report.received),
            mb(total),
            mb(first + total)
        );
        assert!(ok);
    }
}
