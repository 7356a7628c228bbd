//! The model warehouse end to end: a real hub process takes the real YOLOX model and its
//! self-test image over HTTP (register, upload, list, describe, retire; a wrong file refused),
//! serves it with byte ranges, to viewers and to devices that sign the request; the agent's
//! model store downloads it (resuming a cut download, refetching a corrupted one), and the
//! downloaded folder loads in the detector and passes the self-test unchanged.

use std::path::PathBuf;

use csb_test_support::http::client;
use csb_test_support::models::{manifest, model_file, sha};
use csb_test_support::process::{media, Hub};
use csb_wire::model::ModelManifest;
use edge_agent::model::store::{DownloadAuth, FetchOptions, ModelStore, StoreError};
use serde_json::json;

fn fast() -> FetchOptions {
    FetchOptions {
        retries: 3,
        backoff: std::time::Duration::from_millis(50),
        ..FetchOptions::default()
    }
}

async fn put_file(
    hub: &Hub,
    token: Option<&str>,
    path: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let mut req = client()
        .put(hub.url(path))
        .header("content-type", "application/octet-stream")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(serde_json::Value::Null))
        }
        // The hub may answer a refused upload (413 from its Content-Length) and close before
        // the client has written the whole body: the client sees the pipe broken instead.
        Err(e) => (0, serde_json::Value::String(e.to_string())),
    }
}

async fn get_raw(
    hub: &Hub,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = client().get(hub.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let (status, h) = (r.status().as_u16(), r.headers().clone());
    (status, h, r.bytes().await.unwrap().to_vec())
}

/// Runs the blocking store call off the test's runtime.
async fn fetch(
    store: ModelStore,
    url: String,
    m: ModelManifest,
    auth: DownloadAuth,
) -> Result<(PathBuf, edge_agent::model::store::FetchReport), StoreError> {
    tokio::task::spawn_blocking(move || store.fetch_report(&url, &m, &auth, &mut |_, _| {}))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_model_goes_through_the_warehouse_into_the_detector() {
    let hub = Hub::start();
    let model = std::fs::read(model_file()).unwrap();
    let image = std::fs::read(media("pexels_double_decker_bus.jpg")).unwrap();
    let m = manifest("yolox_nano", "2026.1.0", &model, &image);
    let base = "/api/v1/models/yolox_nano/2026.1.0";
    let body = serde_json::to_value(&m).unwrap();

    // Register: 201, the same again 200, a different manifest 409, a wrong path 422/400.
    let r = client()
        .put(hub.url(base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(r.headers()["location"], base);
    let r = client()
        .put(hub.url(base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut other = body.clone();
    other["labels"][0] = json!("human");
    let r = client()
        .put(hub.url(base))
        .json(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let r = client()
        .put(hub.url("/api/v1/models/yolox_nano/other"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        422,
        "body version differs from the path"
    );
    let mut bad = body.clone();
    bad["selftest"]["expect"][0]["label"] = json!("unicorn");
    let r = client().put(hub.url(base)).json(&bad).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 422, "checked before anything else");
    let err: serde_json::Value = r.json().await.unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("selftest.expect[0].label"),
        "{err}"
    );

    let list = hub.get_json(&hub.url("/api/v1/models")).await.unwrap();
    assert_eq!(list["count"], 1);
    assert_eq!(list["models"][0]["state"], "awaiting_files");

    // A model file with one byte changed: 422 naming both hashes; nothing kept.
    let mut wrong = model.clone();
    wrong[1000] ^= 0xFF;
    let (status, err) = put_file(&hub, None, &format!("{base}/files/model"), wrong.clone()).await;
    assert_eq!(status, 422, "{err}");
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains(&m.sha256) && msg.contains(&sha(&wrong)),
        "{msg}"
    );
    let (status, _) = put_file(
        &hub,
        None,
        &format!("{base}/files/model"),
        [model.clone(), vec![0]].concat(),
    )
    .await;
    assert!(status == 413 || status == 0, "refused: {status}");
    let (status, _, _) = get_raw(&hub, &format!("{base}/files/model"), &[]).await;
    assert_eq!(status, 404, "nothing kept");

    let (status, rec) = put_file(&hub, None, &format!("{base}/files/model"), model.clone()).await;
    assert_eq!(
        (status, rec["state"].as_str()),
        (200, Some("awaiting_files"))
    );
    let (status, rec) =
        put_file(&hub, None, &format!("{base}/files/selftest"), image.clone()).await;
    assert_eq!(
        (status, rec["state"].as_str()),
        (200, Some("ready")),
        "{rec}"
    );
    let one = hub.get_json(&hub.url(base)).await.unwrap();
    assert_eq!(one["state"], "ready");
    assert_eq!(one["manifest"]["sha256"], m.sha256.as_str());

    // Ranges.
    let file = format!("{base}/files/model");
    let etag = format!("\"{}\"", m.sha256);
    let (s, h, b) = get_raw(&hub, &file, &[]).await;
    assert_eq!((s, b.len()), (200, model.len()));
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["etag"], etag.as_str());
    let (s, h, b) = get_raw(&hub, &file, &[("range", "bytes=100-199")]).await;
    assert_eq!(s, 206);
    assert_eq!(b, &model[100..200]);
    assert_eq!(
        h["content-range"],
        format!("bytes 100-199/{}", model.len()).as_str()
    );
    let (s, _, b) = get_raw(&hub, &file, &[("range", "bytes=-10")]).await;
    assert_eq!((s, b.as_slice()), (206, &model[model.len() - 10..]));
    let (s, _, b) = get_raw(&hub, &file, &[("range", "bytes=3000000-")]).await;
    assert_eq!((s, b.as_slice()), (206, &model[3_000_000..]));
    let past = format!("bytes={}-", model.len());
    let (s, h, _) = get_raw(&hub, &file, &[("range", &past)]).await;
    assert_eq!(s, 416);
    assert_eq!(
        h["content-range"],
        format!("bytes */{}", model.len()).as_str()
    );
    // If-Range with another ETag: the whole file.
    let (s, _, b) = get_raw(
        &hub,
        &file,
        &[("range", "bytes=0-9"), ("if-range", "\"other\"")],
    )
    .await;
    assert_eq!((s, b.len()), (200, model.len()));
    let (s, _, b) = get_raw(&hub, &file, &[("range", "bytes=0-9"), ("if-range", &etag)]).await;
    assert_eq!((s, b.len()), (206, 10));

    // The agent's store: download, load, self-test.
    let stores = tempfile::tempdir().unwrap();
    let store = ModelStore::open(&stores.path().join("a"))
        .unwrap()
        .with_options(fast());
    let (dir, report) = fetch(
        store.clone(),
        hub.http.clone(),
        m.clone(),
        DownloadAuth::None,
    )
    .await
    .unwrap();
    assert_eq!(report.received, m.bytes + m.selftest.image_bytes);
    assert_eq!(std::fs::read(dir.join("model.onnx")).unwrap(), model);
    assert!(store.is_complete(&m));
    // Complete: a second fetch transfers nothing.
    let (_, again) = fetch(
        store.clone(),
        hub.http.clone(),
        m.clone(),
        DownloadAuth::None,
    )
    .await
    .unwrap();
    assert_eq!((again.received, again.requests), (0, 0));
    let d = dir.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut det = edge_agent::model::Detector::load(&edge_agent::model::DetectorOptions {
            name: "yolox_nano".into(),
            models_dir: Some(d),
            ..Default::default()
        })
        .expect("the downloaded model loads");
        edge_agent::selftest::run(&mut det).expect("self-test runs")
    })
    .await
    .unwrap();
    assert!(outcome.passed(), "missing: {:?}", outcome.missing);
    assert!(
        outcome.image.starts_with(&dir),
        "{}",
        outcome.image.display()
    );

    // A cut download (the first half already in the part file): resumed with a range.
    let store = ModelStore::open(&stores.path().join("b"))
        .unwrap()
        .with_options(fast());
    let vdir = store.version_dir(&m.name, &m.version).unwrap();
    std::fs::create_dir_all(&vdir).unwrap();
    let half = model.len() / 2;
    std::fs::write(vdir.join("model.onnx.part"), &model[..half]).unwrap();
    let (dir, report) = fetch(
        store.clone(),
        hub.http.clone(),
        m.clone(),
        DownloadAuth::None,
    )
    .await
    .unwrap();
    assert_eq!(
        report.received,
        (model.len() - half) as u64 + m.selftest.image_bytes,
        "only the missing half of the model was transferred"
    );
    assert_eq!(report.restarts, 0);
    assert_eq!(std::fs::read(dir.join("model.onnx")).unwrap(), model);
    assert!(!vdir.join("model.onnx.part").exists());

    // A corrupted part file: the checksum catches it, the file is fetched again from zero.
    let store = ModelStore::open(&stores.path().join("c"))
        .unwrap()
        .with_options(fast());
    let vdir = store.version_dir(&m.name, &m.version).unwrap();
    std::fs::create_dir_all(&vdir).unwrap();
    let mut junk = model[..half].to_vec();
    junk[10] ^= 0x55;
    std::fs::write(vdir.join("model.onnx.part"), &junk).unwrap();
    let (dir, report) = fetch(
        store.clone(),
        hub.http.clone(),
        m.clone(),
        DownloadAuth::None,
    )
    .await
    .unwrap();
    assert_eq!(report.restarts, 1);
    assert_eq!(std::fs::read(dir.join("model.onnx")).unwrap(), model);

    // A manifest whose sha256 is not the served file's (a broken hub): an error naming both.
    let mut lying = m.clone();
    lying.sha256 = sha(b"something else");
    let store = ModelStore::open(&stores.path().join("d"))
        .unwrap()
        .with_options(fast());
    let e = fetch(store, hub.http.clone(), lying.clone(), DownloadAuth::None)
        .await
        .unwrap_err();
    match &e {
        StoreError::Checksum { expected, got, .. } => {
            assert_eq!(expected, &lying.sha256);
            assert_eq!(got, &m.sha256);
        }
        other => panic!("{other}"),
    }

    // Retire: still described and served, marked retired; uploads refused.
    let r = client()
        .post(hub.url(&format!("{base}/retire")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let one = hub.get_json(&hub.url(base)).await.unwrap();
    assert_eq!(one["state"], "retired");
    assert!(one["retired_ms"].is_i64());
    let (s, _, _) = get_raw(&hub, &file, &[("range", "bytes=0-0")]).await;
    assert_eq!(s, 206);
    let (status, _) = put_file(&hub, None, &file, model.clone()).await;
    assert!(status == 409 || status == 0, "refused: {status}");
    let one = hub.get_json(&hub.url(base)).await.unwrap();
    assert_eq!(one["state"], "retired", "unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_required_devices_sign_downloads_and_viewers_use_tokens() {
    let hub = Hub::builder()
        .devices(&["yuexi/gw-01"])
        .token("op", "operator", None)
        .token("viewer", "viewer", None)
        .config("[auth]\nhttp = \"required\"\n")
        .start();
    // Any bytes: the warehouse checks size and sha256 only.
    let model: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let image = std::fs::read(media("pexels_double_decker_bus.jpg")).unwrap();
    let m = manifest("synthetic", "1", &model, &image);
    let base = "/api/v1/models/synthetic/1";
    let (s, _) = hub
        .put_as("viewer", base, &serde_json::to_value(&m).unwrap())
        .await;
    assert_eq!(s, 403, "a viewer may not register");
    let (s, _) = hub
        .put_as("op", base, &serde_json::to_value(&m).unwrap())
        .await;
    assert_eq!(s, 201);
    let (s, _) = put_file(
        &hub,
        Some(hub.token_of("viewer")),
        &format!("{base}/files/model"),
        // Small bodies: refused before the body is read, a large one could meet a closed pipe.
        model[..1000].to_vec(),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = put_file(
        &hub,
        None,
        &format!("{base}/files/model"),
        model[..1000].to_vec(),
    )
    .await;
    assert_eq!(s, 401);
    for (kind, bytes) in [("model", &model), ("selftest", &image)] {
        let (s, rec) = put_file(
            &hub,
            Some(hub.token_of("op")),
            &format!("{base}/files/{kind}"),
            bytes.clone(),
        )
        .await;
        assert_eq!(s, 200, "{rec}");
    }
    let file = format!("{base}/files/model");
    // No credentials: 401; a viewer's token: served.
    let (s, _, _) = get_raw(&hub, &file, &[]).await;
    assert_eq!(s, 401);
    let auth = format!("Bearer {}", hub.token_of("viewer"));
    let (s, _, b) = get_raw(&hub, &file, &[("authorization", &auth)]).await;
    assert_eq!((s, b.len()), (200, model.len()));

    // The device's signature: served.
    let secret = &hub.secrets["yuexi/gw-01"];
    let key = csb_wire::sign::signing_key(secret);
    let stores = tempfile::tempdir().unwrap();
    let store = ModelStore::open(stores.path())
        .unwrap()
        .with_options(fast());
    let device = DownloadAuth::Device {
        site: "yuexi".into(),
        device: "gw-01".into(),
        key,
    };
    let (dir, _) = fetch(store.clone(), hub.http.clone(), m.clone(), device)
        .await
        .unwrap();
    assert_eq!(std::fs::read(dir.join("model.onnx")).unwrap(), model);

    // Another key, another device, a stale timestamp: refused (401), said so.
    let other = ModelStore::open(&stores.path().join("x"))
        .unwrap()
        .with_options(fast());
    let wrong = DownloadAuth::Device {
        site: "yuexi".into(),
        device: "gw-01".into(),
        key: csb_wire::sign::signing_key("not the secret"),
    };
    match fetch(other.clone(), hub.http.clone(), m.clone(), wrong).await {
        Err(StoreError::Http {
            status: 401,
            message,
            ..
        }) => {
            assert!(message.contains("X-Csb-Signature"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let unknown = DownloadAuth::Device {
        site: "yuexi".into(),
        device: "gw-99".into(),
        key,
    };
    match fetch(other, hub.http.clone(), m.clone(), unknown).await {
        Err(StoreError::Http {
            status: 401,
            message,
            ..
        }) => {
            assert!(message.contains("no credentials"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let stale = (csb_wire::now_ms() - 10 * 60 * 1000).to_string();
    let sig = csb_wire::sign::sign_download(&key, &file, "yuexi/gw-01", &stale);
    let (s, _, b) = get_raw(
        &hub,
        &file,
        &[
            ("x-csb-device", "yuexi/gw-01"),
            ("x-csb-timestamp", &stale),
            ("x-csb-signature", &sig),
        ],
    )
    .await;
    assert_eq!(s, 401, "{}", String::from_utf8_lossy(&b));
    assert!(String::from_utf8_lossy(&b).contains("clock"));
    // The signature covers the path: the self-test image's path with the model's signature.
    let now = csb_wire::now_ms().to_string();
    let sig = csb_wire::sign::sign_download(&key, &file, "yuexi/gw-01", &now);
    let (s, _, _) = get_raw(
        &hub,
        &format!("{base}/files/selftest"),
        &[
            ("x-csb-device", "yuexi/gw-01"),
            ("x-csb-timestamp", &now),
            ("x-csb-signature", &sig),
        ],
    )
    .await;
    assert_eq!(s, 401);
    // A signature does not open anything else.
    let (s, _, _) = get_raw(
        &hub,
        base,
        &[
            ("x-csb-device", "yuexi/gw-01"),
            ("x-csb-timestamp", &now),
            ("x-csb-signature", &sig),
        ],
    )
    .await;
    assert_eq!(s, 401);
    let h = hub.get_as("viewer", "/api/v1/health").await.unwrap();
    assert!(
        h["http_auth"]["refused_by_reason"]["download_signature"].as_u64() >= Some(3),
        "{}",
        h["http_auth"]
    );
}
