//! `edge-agent replay` over the whole street clip with configs/examples/vtest-street.toml: one
//! illegal-parking problem per parked vehicle (not one per frame), line crossings both ways,
//! and evidence snapshots of the real frame.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use csb_test_support::process::{bin, media, root, run_ok};
use serde_json::Value;

/// The van and the car parked at the top right of vtest.avi (reference boxes from YOLOX's own
/// pipeline on frame 100, tests/reference/yolox_reference.py).
const VAN: [f64; 4] = [651.4, 42.0, 724.9, 99.4];
const CAR: [f64; 4] = [732.0, 51.3, 767.1, 94.2];

fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let i = w * h;
    i / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - i)
}

fn bbox(o: &Value) -> [f64; 4] {
    let b = &o["box"];
    ["x1", "y1", "x2", "y2"].map(|k| b[k].as_f64().unwrap())
}

#[test]
fn street_clip_gives_one_parking_case_per_vehicle_and_counts_both_directions() {
    let snaps = tempfile::tempdir().unwrap();
    let out = run_ok(
        Command::new(bin("edge-agent"))
            .arg("replay")
            .arg(media("vtest.avi"))
            .arg("--config")
            .arg(root().join("configs/examples/vtest-street.toml"))
            .arg("--json")
            .arg("--snapshots")
            .arg(snaps.path()),
    );
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let (summary, events) = lines.split_last().expect("at least the summary");
    let summary = &summary["summary"];
    assert_eq!(summary["frames"], 795, "the whole clip");

    let rule = |e: &Value, id: &str| e["rule"]["rule"] == id;
    let parking: Vec<&Value> = events
        .iter()
        .filter(|e| rule(e, "illegal-parking-north"))
        .collect();
    let starts: Vec<&Value> = parking
        .iter()
        .copied()
        .filter(|e| e["rule"]["phase"] == "start")
        .collect();
    assert_eq!(
        starts.len(),
        2,
        "one illegal-parking start per parked vehicle: {starts:#?}"
    );

    // Each start is one of the two vehicles, with its own track and problem.
    let mut matched = BTreeSet::new();
    for s in &starts {
        let obj = &s["objects"][0];
        let b = bbox(obj);
        let which = if iou(b, VAN) > 0.6 {
            "van"
        } else if iou(b, CAR) > 0.6 {
            "car"
        } else {
            panic!("start box {b:?} is neither vehicle")
        };
        matched.insert(which);
        assert_eq!(s["rule"]["event_type"], "illegal_parking");
        assert_eq!(s["rule"]["category"], "0505");
        assert_eq!(s["rule"]["zone"], "no-parking-north");
        assert!(
            s["rule"]["duration_ms"].as_i64().unwrap() >= 10_000,
            "dwell ≥ min_dwell_s"
        );
        assert!(
            s["rule"]["snapshot"].is_string(),
            "a start carries evidence"
        );
    }
    assert_eq!(
        matched.len(),
        2,
        "the van and the car, not one of them twice"
    );

    // Every problem has exactly one start and one end, updates in between; no per-frame flood.
    let mut by_problem: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &parking {
        by_problem
            .entry(e["rule"]["problem_id"].as_str().unwrap().to_string())
            .or_default()
            .push(e["rule"]["phase"].as_str().unwrap().to_string());
    }
    assert_eq!(by_problem.len(), 2);
    for phases in by_problem.values() {
        assert_eq!(phases.first().map(String::as_str), Some("start"));
        assert_eq!(phases.last().map(String::as_str), Some("end"));
        assert!(
            phases.iter().filter(|p| *p == "update").count() <= 3,
            "{phases:?}"
        );
    }

    // Line crossings: events in both directions, matching the summary's counters.
    let crossings: Vec<&Value> = events
        .iter()
        .filter(|e| rule(e, "flow-road-east"))
        .collect();
    let count = |dir: &str| {
        crossings
            .iter()
            .filter(|e| e["rule"]["direction"] == dir)
            .count() as u64
    };
    let persons = &summary["line_counts"]["road-east"]["person"];
    let (cin, cout) = (
        persons["in"].as_u64().unwrap_or(0),
        persons["out"].as_u64().unwrap_or(0),
    );
    assert!(
        cin >= 5 && cout >= 5,
        "pedestrians walk both ways along the road: in {cin}, out {cout}"
    );
    assert_eq!(
        (count("in"), count("out")),
        (cin, cout),
        "one crossing event per counted crossing"
    );
    for c in &crossings {
        assert_eq!(c["rule"]["phase"], "instant");
        assert_eq!(c["objects"].as_array().unwrap().len(), 1);
    }

    // Evidence: one full-resolution JPEG per start, named by the event's snapshot id.
    for s in &starts {
        let p = snaps
            .path()
            .join(format!("{}.jpg", s["rule"]["snapshot"].as_str().unwrap()));
        let jpeg = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(&jpeg[..3], &[0xFF, 0xD8, 0xFF], "JPEG magic");
        assert!(
            jpeg.len() > 20_000,
            "a real 768x576 picture, got {} bytes",
            jpeg.len()
        );
    }
    assert_eq!(
        std::fs::read_dir(snaps.path()).unwrap().count(),
        starts.len() + count_other_starts(events)
    );
}

/// Starts of rules other than parking also carry snapshots (crowd, if it fired).
fn count_other_starts(events: &[Value]) -> usize {
    events
        .iter()
        .filter(|e| e["rule"]["phase"] == "start" && e["rule"]["rule"] != "illegal-parking-north")
        .count()
}
