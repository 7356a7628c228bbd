//! Rollouts with real processes (issue 18, Done-when 1): a secured hub and three `edge-agent
//! run` processes, each detecting on the street footage.
//! - A good model (the real YOLOX, registered as a new version) reaches the canary, then the
//!   rest of the group one batch at a time, each device judged by its answer and a soak of its
//!   statuses; every agent ends up running the new version, downloaded from the warehouse with
//!   signed requests, and no agent's detections stop during the swap.
//! - A deliberately broken model (the same weights with its labels shifted by one: the bus of
//!   its self-test picture comes out as a "train") stops at the canary: the canary refuses it
//!   after its self-test, keeps the model in service and keeps detecting; the rollout fails
//!   naming the canary and the reason; the rest never receive it; the canary is given its
//!   previous configuration back. `cloud-hub rollout status` shows the same.

use std::time::Duration;

use csb_test_support::agent::AgentToml;
use csb_test_support::http::eventually;
use csb_test_support::models::{manifest, model_file, register, selftest_image};
use csb_test_support::process::{bin, media, run_ok, spawn_agent, Hub, Proc};
use serde_json::{json, Value};

const DEVICES: [&str; 3] = ["gw-ro1", "gw-ro2", "gw-ro3"];

/// Detection events of `device` stored at the hub: (time, frame seq), oldest first.
async fn detections(hub: &Hub, device: &str) -> Vec<(i64, u64)> {
    let url = format!("/api/v1/events?device={device}&kind=detection&limit=1000");
    let page = hub.get_as("ops", &url).await.unwrap_or(Value::Null);
    let mut v: Vec<(i64, u64)> = page["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["ts_ms"].as_i64().unwrap_or(0),
                        e["frame"]["seq"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn rollout(hub: &Hub, id: &str) -> Value {
    hub.get_as("ops", &format!("/api/v1/rollouts/{id}"))
        .await
        .unwrap_or(Value::Null)
}

async fn wait_finished(hub: &Hub, id: &str, within: Duration) -> Value {
    let done = eventually(within, || async {
        let r = rollout(hub, id).await;
        matches!(
            r["state"].as_str(),
            Some("succeeded" | "failed" | "aborted")
        )
        .then_some(r)
    })
    .await;
    match done {
        Some(r) => r,
        None => panic!(
            "{id} did not finish within {within:?}: {:#}",
            rollout(hub, id).await
        ),
    }
}

fn start_agent(hub: &Hub, dir: &std::path::Path, device: &str) -> Proc {
    let login = format!("yuexi/{device}");
    let d = dir.join(device);
    std::fs::create_dir_all(&d).unwrap();
    let cfg = AgentToml::new(device, hub.mqtt_port)
        .mqtt("keep_alive_s = 5")
        .login(&login, &hub.secret_file(&login), Some(hub.ca_file()))
        .outbox_dir(d.join("outbox"))
        .hub(&hub.url(""))
        .model("intra_threads = 1")
        .camera(
            "cam-1",
            &media("vtest.avi").display().to_string(),
            "loop = true\npublish_detections = true\nevent_interval_ms = 200\n",
        )
        .write(&d);
    spawn_agent(&cfg, 500)
}

/// The longest stretch without a stored detection of `device` between `from` and `to` (ms).
fn longest_gap(events: &[(i64, u64)], from: i64, to: i64) -> i64 {
    let ts: Vec<i64> = events
        .iter()
        .map(|e| e.0)
        .filter(|t| (from..=to).contains(t))
        .collect();
    ts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(i64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_model_goes_canary_first_then_the_group_and_a_broken_one_stops_at_the_canary() {
    let logins: Vec<String> = DEVICES.iter().map(|d| format!("yuexi/{d}")).collect();
    let login_refs: Vec<&str> = logins.iter().map(String::as_str).collect();
    let hub = Hub::builder()
        .devices(&login_refs)
        .token("ops", "operator", None)
        .secured()
        .start();
    let dir = tempfile::tempdir().unwrap();

    // Two versions in the warehouse: the real model, and the same weights with the labels
    // shifted by one (a mistake in packaging that only the self-test catches).
    let model = std::fs::read(model_file()).unwrap();
    let image = std::fs::read(selftest_image()).unwrap();
    let good = manifest("yolox_nano", "2.0.0", &model, &image);
    let mut broken = manifest("yolox_nano", "2.0.1", &model, &image);
    broken.labels.rotate_left(1);
    register(&hub, "ops", &good, &model, &image).await;
    register(&hub, "ops", &broken, &model, &image).await;

    let mut agents: Vec<Proc> = DEVICES
        .iter()
        .map(|d| start_agent(&hub, dir.path(), d))
        .collect();
    for d in DEVICES {
        eventually(Duration::from_secs(90), || async {
            (detections(&hub, d).await.len() > 5).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{d}'s detections reach the hub"));
    }

    // --- The good model: canary gw-ro1, then batches of one.
    let started_ms = csb_wire::now_ms();
    let (status, body) = hub
        .post_as(
            "ops",
            "/api/v1/rollouts",
            &json!({
                "model": { "name": "yolox_nano", "version": "2.0.0" },
                "devices": DEVICES.iter().map(|d| format!("yuexi/{d}")).collect::<Vec<_>>(),
                "batches": [ { "count": 1 } ],
                "soak_s": 3, "device_timeout_s": 120, "silent_s": 10
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(
        body["steps"],
        json!([["yuexi/gw-ro1"], ["yuexi/gw-ro2"], ["yuexi/gw-ro3"]])
    );
    let r = wait_finished(&hub, &id, Duration::from_secs(240)).await;
    assert_eq!(r["state"], "succeeded", "{r:#}");
    // Canary first: the batch got the model only after the canary had soaked.
    let log = r["log"].as_array().unwrap();
    let at = |what: &str, device: &str| {
        log.iter()
            .find(|e| e["what"] == what && e["device"] == device)
            .and_then(|e| e["at_ms"].as_i64())
            .unwrap_or_else(|| panic!("no `{what}` for {device} in {r:#}"))
    };
    assert!(
        at("succeeded", "yuexi/gw-ro1") <= at("sent", "yuexi/gw-ro2"),
        "{r:#}"
    );
    assert!(
        at("succeeded", "yuexi/gw-ro2") <= at("sent", "yuexi/gw-ro3"),
        "{r:#}"
    );
    let fleet = hub.get_as("ops", "/api/v1/fleet/configs").await.unwrap();
    for row in fleet["devices"].as_array().unwrap() {
        assert_eq!(row["state"], "in_sync", "{fleet:#}");
        assert_eq!(row["desired_model"], "yolox_nano@2.0.0", "{fleet:#}");
        assert_eq!(row["applied_model"]["version"], "2.0.0", "{fleet:#}");
    }
    // Each agent kept detecting through its swap.
    let swapped_ms = csb_wire::now_ms();
    for d in DEVICES {
        let gap = longest_gap(&detections(&hub, d).await, started_ms, swapped_ms);
        assert!(
            gap < 5_000,
            "{d}: {gap} ms without a detection during the rollout"
        );
    }

    // --- The broken model stops at the canary.
    let (status, body) = hub
        .post_as(
            "ops",
            "/api/v1/rollouts",
            &json!({
                "model": { "name": "yolox_nano", "version": "2.0.1" },
                "devices": DEVICES.iter().map(|d| format!("yuexi/{d}")).collect::<Vec<_>>(),
                "canary": "yuexi/gw-ro2",
                "soak_s": 3, "device_timeout_s": 120, "silent_s": 10
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id2 = body["id"].as_str().unwrap().to_string();
    let r = wait_finished(&hub, &id2, Duration::from_secs(180)).await;
    assert_eq!(r["state"], "failed", "{r:#}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("canary yuexi/gw-ro2") && reason.contains("self-test failed"),
        "{reason}"
    );
    assert!(
        reason.contains("train"),
        "the agent says what it found instead: {reason}"
    );
    assert_eq!(r["devices"]["yuexi/gw-ro2"]["state"], "failed");
    assert_eq!(r["devices"]["yuexi/gw-ro1"]["state"], "skipped");
    assert_eq!(r["devices"]["yuexi/gw-ro3"]["state"], "skipped");
    let back = r["devices"]["yuexi/gw-ro2"]["rollback_version"]
        .as_u64()
        .expect("rolled back");

    // The canary converges on its previous configuration and keeps detecting with the good
    // model; the others never saw the broken one.
    let failed_at = csb_wire::now_ms();
    let canary = eventually(Duration::from_secs(60), || async {
        let c = hub
            .get_as("ops", "/api/v1/fleet/configs/yuexi/gw-ro2")
            .await?;
        (c["applied_version"].as_u64() == Some(back)).then_some(c)
    })
    .await
    .expect("the canary applies its previous configuration");
    assert_eq!(canary["desired"]["model"]["version"], "2.0.0", "{canary:#}");
    assert_eq!(canary["applied_model"]["version"], "2.0.0", "{canary:#}");
    let before = detections(&hub, "gw-ro2").await.len();
    eventually(Duration::from_secs(30), || async {
        (detections(&hub, "gw-ro2")
            .await
            .iter()
            .filter(|e| e.0 > failed_at)
            .count()
            > 5)
        .then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the canary keeps detecting after the failure ({before} before)"));
    for d in ["yuexi/gw-ro1", "yuexi/gw-ro3"] {
        let c = hub
            .get_as("ops", &format!("/api/v1/fleet/configs/{d}"))
            .await
            .unwrap();
        assert_eq!(c["desired"]["model"]["version"], "2.0.0", "{d}: {c:#}");
    }

    // The operator's view.
    let out = run_ok(
        std::process::Command::new(bin("cloud-hub"))
            .args(["rollout", "status", &id2, "--url", &hub.url("")])
            .args(["--token", hub.token_of("ops")]),
    );
    assert!(
        out.contains("failed") && out.contains("self-test failed"),
        "{out}"
    );
    assert!(out.contains("rolled_back"), "{out}");

    for a in &mut agents {
        a.terminate(Duration::from_secs(10));
    }
}
