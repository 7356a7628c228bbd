//! `edge-agent detect` against reference detections.
//!
//! The reference boxes come from YOLOX's own Python pipeline (cv2 letterbox, onnxruntime 1.31.1,
//! YOLOX demo_postprocess + multiclass NMS): tests/reference/yolox_reference.py. Scores are those
//! of ../shared/models/README.md. Our pipeline resizes in GStreamer instead of cv2, so boxes may
//! differ slightly: 10 px is the tolerance the issue allows.

use std::process::Command;

use csb_test_support::process::{bin, media, run_ok};
use serde_json::Value;

struct Ref {
    label: &'static str,
    min_score: f64,
    bbox: [f64; 4],
}

fn detect_lines(file: &std::path::Path, extra: &[&str]) -> Vec<Value> {
    run_ok(
        Command::new(bin("edge-agent"))
            .arg("detect")
            .arg(file)
            .arg("--json")
            .args(extra)
            .current_dir(std::env::temp_dir()), // must find model and runtime without the repo as cwd
    )
    .lines()
    .map(|l| serde_json::from_str(l).expect("each line is JSON"))
    .collect()
}

fn assert_matches(objects: &[Value], refs: &[Ref]) {
    let mut used = vec![false; objects.len()];
    for r in refs {
        let found = objects.iter().enumerate().find(|(i, o)| {
            let b = &o["box"];
            let d = [
                b["x1"].as_f64().unwrap(),
                b["y1"].as_f64().unwrap(),
                b["x2"].as_f64().unwrap(),
                b["y2"].as_f64().unwrap(),
            ];
            !used[*i]
                && o["label"] == r.label
                && o["score"].as_f64().unwrap() >= r.min_score
                && d.iter().zip(r.bbox).all(|(a, b)| (a - b).abs() <= 10.0)
        });
        match found {
            Some((i, _)) => used[i] = true,
            None => panic!(
                "no {} ≥ {} within 10 px of {:?} in {}",
                r.label,
                r.min_score,
                r.bbox,
                serde_json::to_string_pretty(objects).unwrap()
            ),
        }
    }
}

#[test]
fn bus_image_matches_reference() {
    let lines = detect_lines(&media("pexels_double_decker_bus.jpg"), &[]);
    assert_eq!(lines.len(), 1, "a still image is one frame");
    let f = &lines[0];
    assert_eq!(
        (f["width"].as_u64(), f["height"].as_u64()),
        (Some(546), Some(413))
    );
    let objects = f["objects"].as_array().unwrap();
    assert_matches(
        objects,
        &[
            Ref {
                label: "bus",
                min_score: 0.9,
                bbox: [68.2, 110.1, 475.7, 394.1],
            },
            Ref {
                label: "car",
                min_score: 0.75,
                bbox: [458.7, 279.4, 545.8, 388.6],
            },
            Ref {
                label: "car",
                min_score: 0.75,
                bbox: [7.4, 287.6, 65.3, 328.5],
            },
            Ref {
                label: "person",
                min_score: 0.6,
                bbox: [517.3, 283.7, 537.9, 317.6],
            },
        ],
    );
}

#[test]
fn street_video_frame_100_matches_reference() {
    // Frame 100 (0-based) of vtest.avi is the 101st line.
    let lines = detect_lines(&media("vtest.avi"), &["--max-frames", "101"]);
    assert_eq!(lines.len(), 101);
    let f = &lines[100];
    assert_eq!(f["frame"], 101);
    let objects = f["objects"].as_array().unwrap();
    let persons = objects.iter().filter(|o| o["label"] == "person").count();
    assert!(
        (6..=9).contains(&persons),
        "{persons} persons (reference: 7)"
    );
    assert_matches(
        objects,
        &[
            Ref {
                label: "person",
                min_score: 0.7,
                bbox: [346.1, 197.3, 379.2, 274.7],
            },
            Ref {
                label: "person",
                min_score: 0.7,
                bbox: [587.9, 154.0, 619.7, 236.5],
            },
            Ref {
                label: "person",
                min_score: 0.7,
                bbox: [494.1, 147.5, 517.4, 218.1],
            },
            Ref {
                label: "person",
                min_score: 0.7,
                bbox: [376.6, 177.6, 408.0, 256.1],
            },
            Ref {
                label: "car",
                min_score: 0.7,
                bbox: [732.0, 51.3, 767.1, 94.2],
            },
            Ref {
                label: "truck",
                min_score: 0.7,
                bbox: [651.4, 42.0, 724.9, 99.4],
            },
        ],
    );
}

#[test]
fn detect_on_a_missing_file_says_which_file() {
    let out = Command::new(bin("edge-agent"))
        .args(["detect", "/no/such/clip.mp4", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/clip.mp4"), "{err}");
}
