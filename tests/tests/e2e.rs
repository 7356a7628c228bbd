//! End-to-end: real `cloud-hub` and `edge-agent` processes, real GStreamer decoding of real
//! footage, the real YOLOX-Nano model, MQTT over TCP and the hub's HTTP API.

use std::process::Command;
use std::time::Duration;

use csb_test_support::agent::AgentToml;
use csb_test_support::http::{eventually, get_json};
use csb_test_support::mqtt::Client;
use csb_test_support::process::{bin, media, spawn_agent, Hub, Proc};
use serde_json::Value;

/// Status and telemetry every second instead of every 10 s.
fn start_agent(config: &std::path::Path) -> Proc {
    spawn_agent(config, 1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_detections_travel_from_footage_to_the_api() {
    let hub = Hub::start();
    let dir = tempfile::tempdir().unwrap();
    let config = AgentToml::new("gw-e2e-01", hub.mqtt_port)
        .model("intra_threads = 2\nscore_threshold = 0.3")
        .camera(
            "cam-e2e",
            &media("vtest.avi").display().to_string(),
            "loop = true\nevent_interval_ms = 0",
        )
        .write(dir.path());
    let mut agent = start_agent(&config);

    let url = hub.url("/api/v1/events?class=person&limit=50");
    let events = eventually(Duration::from_secs(120), || async {
        let v = get_json(&url).await?;
        let evs = v["events"].as_array()?.clone();
        (evs.len() >= 5).then_some(evs)
    })
    .await
    .expect("at least 5 person events reached the hub within 120 s");

    let mut persons = 0;
    let mut last_ts = i64::MAX;
    for e in &events {
        assert_eq!(e["site"], "yuexi");
        assert_eq!(e["device"], "gw-e2e-01");
        assert_eq!(e["camera"], "cam-e2e");
        assert_eq!(e["model"]["name"], "yolox_nano");
        let (w, h) = (
            e["frame"]["width"].as_f64().unwrap(),
            e["frame"]["height"].as_f64().unwrap(),
        );
        assert_eq!((w, h), (768.0, 576.0), "vtest.avi is 768x576");
        let ts = e["ts_ms"].as_i64().unwrap();
        assert!(ts <= last_ts, "events must come newest first");
        last_ts = ts;
        for o in e["objects"].as_array().unwrap() {
            let b = &o["box"];
            let (x1, y1, x2, y2) = (
                b["x1"].as_f64().unwrap(),
                b["y1"].as_f64().unwrap(),
                b["x2"].as_f64().unwrap(),
                b["y2"].as_f64().unwrap(),
            );
            assert!(0.0 <= x1 && x1 < x2 && x2 <= w, "box x inside frame: {b}");
            assert!(0.0 <= y1 && y1 < y2 && y2 <= h, "box y inside frame: {b}");
            let score = o["score"].as_f64().unwrap();
            assert!((0.3..=1.0).contains(&score), "score {score}");
            if o["label"] == "person" {
                persons += 1;
                // Pedestrians in this clip are upright: taller than wide.
                assert!(y2 - y1 > x2 - x1, "person box is upright: {b}");
            }
        }
    }
    // The campus road has several pedestrians in every frame.
    assert!(
        persons >= events.len() * 2,
        "{persons} persons in {} events",
        events.len()
    );

    // Filters are applied by the hub, not ignored.
    let none = get_json(&hub.url("/api/v1/events?camera=no-such-camera"))
        .await
        .unwrap();
    assert_eq!(none["events"].as_array().unwrap().len(), 0);
    let one = get_json(&hub.url("/api/v1/events?device=gw-e2e-01&limit=1"))
        .await
        .unwrap();
    assert_eq!(one["events"].as_array().unwrap().len(), 1);

    // The agent stops cleanly on SIGTERM.
    let status = agent
        .terminate(Duration::from_secs(15))
        .expect("agent exits within 15 s");
    assert!(status.success(), "agent exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_rejected_counted_and_the_hub_keeps_serving() {
    let hub = Hub::start();
    let client = Client::options("e2e-bad-client")
        .keep_alive(10)
        .connect(hub.mqtt)
        .await;

    let topic = "csb/v1/yuexi/gw-bad/event";
    let before = get_json(&hub.url("/api/v1/health")).await.expect("health");
    let rejected_before = before["ingest"]["rejected"].as_u64().unwrap();

    // Truncated JSON, and well-formed JSON with an impossible score.
    client.publish(topic, b"{\"v\":1,".to_vec()).await;
    let mut ev = serde_json::json!({
        "v": 1, "id": ulid::Ulid::new().to_string(), "site": "yuexi", "device": "gw-bad",
        "camera": "cam-1", "kind": "detection", "ts_ms": csb_wire::now_ms(),
        "frame": {"seq": 1, "width": 640, "height": 480},
        "model": {"name": "yolox_nano", "sha256": "695e750a5d57"},
        "objects": [{"class_id": 0, "label": "person", "score": 7.5,
                     "box": {"x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 90.0}}]
    });
    client.publish(topic, ev.to_string()).await;

    let health = eventually(Duration::from_secs(20), || async {
        let h = get_json(&hub.url("/api/v1/health")).await?;
        (h["ingest"]["rejected"].as_u64()? >= rejected_before + 2).then_some(h)
    })
    .await
    .expect("both malformed payloads counted as rejected");
    assert_eq!(health["status"], "ok");
    let reasons = health["ingest"]["rejected_by_reason"].as_object().unwrap();
    assert!(
        reasons.values().filter_map(Value::as_u64).sum::<u64>() >= 2,
        "{reasons:?}"
    );

    // The hub still ingests: the corrected event is stored and served.
    ev["objects"][0]["score"] = serde_json::json!(0.75);
    let id = ulid::Ulid::new().to_string();
    ev["id"] = serde_json::json!(id);
    client.publish(topic, ev.to_string()).await;
    let stored = eventually(Duration::from_secs(20), || async {
        let v = get_json(&hub.url("/api/v1/events?device=gw-bad")).await?;
        v["events"]
            .as_array()?
            .iter()
            .find(|e| e["id"] == id.as_str())
            .cloned()
    })
    .await
    .expect("valid event after the bad ones is stored");
    assert_eq!(stored["objects"][0]["score"], 0.75);
    let none_bad = get_json(&hub.url("/api/v1/events?device=gw-bad"))
        .await
        .unwrap();
    assert_eq!(
        none_bad["events"].as_array().unwrap().len(),
        1,
        "rejected payloads are not stored"
    );
}

#[test]
fn agent_refuses_a_bad_config_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[agent]\nsite = \"yuexi\"\ndevice = \"gw 1\"\n[[cameras]]\nid = \"c\"\nuri = \"x.avi\"\n",
    )
    .unwrap();
    let out = Command::new(bin("edge-agent"))
        .args(["run", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agent.device") && err.contains("bad.toml"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parking_case_reaches_the_hub_with_its_evidence_snapshot() {
    // With every safeguard on, as in production: MQTT over TLS, device credentials and
    // signatures (events and the evidence upload), HTTP tokens.
    let sec = Hub::builder()
        .devices(&["yuexi/gw-e2e-rules"])
        .secured()
        .start();
    let hub = &sec;
    let dir = tempfile::tempdir().unwrap();
    let id = "yuexi/gw-e2e-rules";
    let p = AgentToml::new("gw-e2e-rules", hub.mqtt_port)
        .login(id, &sec.secret_file(id), Some(sec.ca_file()))
        .hub(&hub.http)
        .camera(
            "cam-rules",
            &media("vtest.avi").display().to_string(),
            r#"
loop = true
publish_detections = false
[[cameras.analytics.zones]]
id = "no-parking-north"
polygon = [[0.80, 0.03], [1.0, 0.03], [1.0, 0.22], [0.80, 0.22]]
[[cameras.analytics.rules]]
id = "park"
event_type = "illegal_parking"
[cameras.analytics.rules.kind.dwell]
zone = "no-parking-north"
classes = ["car", "truck"]
min_dwell_s = 3
"#,
        )
        .write(dir.path());
    let _agent = start_agent(&p);

    let url = hub.url("/api/v1/events?kind=rule&event_type=illegal_parking");
    let start = eventually(Duration::from_secs(90), || async {
        let v = sec.get_json(&url).await?;
        v["events"]
            .as_array()?
            .iter()
            .find(|e| e["rule"]["phase"] == "start")
            .cloned()
    })
    .await
    .expect("an illegal-parking start event within 90 s");
    assert_eq!(start["kind"], "rule");
    assert!(
        start["objects"][0]["track_id"].as_u64().is_some(),
        "rule objects carry track ids"
    );

    let snap_url = hub.url(&format!(
        "/api/v1/events/{}/snapshot",
        start["id"].as_str().unwrap()
    ));
    let jpeg = eventually(Duration::from_secs(30), || async {
        let r = reqwest::Client::new()
            .get(&snap_url)
            .bearer_auth(sec.token())
            .send()
            .await
            .ok()?;
        let ok = r.status().is_success()
            && r.headers()
                .get("content-type")
                .is_some_and(|v| v == "image/jpeg");
        if !ok {
            return None;
        }
        r.bytes().await.ok()
    })
    .await
    .expect("the evidence snapshot is served by the hub");
    assert_eq!(&jpeg[..3], &[0xFF, 0xD8, 0xFF]);
    assert!(
        jpeg.len() > 20_000,
        "full-resolution evidence, got {} bytes",
        jpeg.len()
    );
    // Evidence only with a token; the agent's signed uploads were all taken.
    assert_eq!(reqwest::get(&snap_url).await.unwrap().status(), 401);
    let health = get_json(&hub.url("/api/v1/health")).await.unwrap();
    assert!(
        health["evidence"]["uploads_stored"].as_u64() >= Some(1),
        "{health:#}"
    );
    let refused = &health["http_auth"];
    for reason in [
        "upload_unsigned",
        "upload_unknown_device",
        "upload_bad_signature",
    ] {
        assert_eq!(refused["refused_by_reason"][reason], 0, "{health:#}");
    }
}
