//! AI 核查 end to end, with every safeguard on (MQTT over TLS, device credentials, signed
//! events, commands, replies and uploads, HTTP tokens): real `cloud-hub` and `edge-agent`
//! processes, real GStreamer decoding of the street footage and the real YOLOX-Nano model.
//!
//! The van parked in the no-parking zone opens an illegal-parking case with its snapshot,
//! dispatched by the routing table (no county model here: illegal parking outside the county
//! seat goes to 城管, urban-mgmt), and its repeats merge into it. Then:
//! 1. the handler reports it handled → the hub commands the agent → the van is still there →
//!    返工 to the same department, with the fresh snapshot as evidence;
//! 2. the agent is down when the handler reports it handled again → no answer by the deadline
//!    → an inspector verifies on site and closes it;
//! 3. a new case from the same camera; the agent restarted with the zone moved to a stretch of
//!    road with no vehicle (the scene "cleared") → the re-check finds nothing → 结案 with the
//!    before and after snapshots.

use std::time::Duration;

use csb_test_support::agent::AgentToml;
use csb_test_support::http::{client, eventually, get_text_with};
use csb_test_support::process::{governance_copy, media, patch_governance, spawn_agent, Hub, Proc};
use serde_json::{json, Value};

const DEVICE: &str = "gw-e2e-recheck";
const ID: &str = "yuexi/gw-e2e-recheck";
const CAMERA: &str = "yuexi/gw-e2e-recheck/cam-street";
/// Around the parked van and car (as configs/examples/vtest-street.toml).
const AT_THE_VAN: &str = "[[0.80, 0.03], [1.0, 0.03], [1.0, 0.22], [0.80, 0.22]]";
/// The top-left stretch, where no vehicle is in the whole clip (checked with `edge-agent
/// replay` and a presence rule there).
const CLEAR: &str = "[[0.0, 0.0], [0.25, 0.0], [0.25, 0.2], [0.0, 0.2]]";

fn agent(hub: &Hub, dir: &std::path::Path, zone: &str) -> Proc {
    let p = AgentToml::new(DEVICE, hub.mqtt_port)
        .login(ID, &hub.secret_file(ID), Some(hub.ca_file()))
        .hub(&hub.http)
        .camera(
            "cam-street",
            &media("vtest.avi").display().to_string(),
            &format!(
                r#"
loop = true
publish_detections = false
classes = ["person", "car", "truck", "bus", "motorbike"]
[[cameras.analytics.zones]]
id = "no-parking-north"
polygon = {zone}
classes = ["car", "truck", "bus", "motorbike"]
[[cameras.analytics.rules]]
id = "park"
event_type = "illegal_parking"
category = "0505"
update_interval_s = 2
[cameras.analytics.rules.kind.dwell]
zone = "no-parking-north"
classes = ["car", "truck", "bus", "motorbike"]
min_dwell_s = 3
"#
            ),
        )
        .write(dir);
    spawn_agent(&p, 1000)
}

async fn case(hub: &Hub, id: &str) -> Value {
    hub.get_as("ops", &format!("/api/v1/cases/{id}"))
        .await
        .unwrap_or_else(|| panic!("case {id} readable"))
}

async fn act(hub: &Hub, who: &str, id: &str, body: Value) -> Value {
    let (status, v) = hub
        .post_as(who, &format!("/api/v1/cases/{id}/actions"), &body)
        .await;
    assert_eq!(status, 200, "{who} {body}: {v:#}");
    v
}

/// The JPEG the hub serves as `snapshot`, once the agent's upload has arrived (30 s at most).
async fn served_jpeg(hub: &Hub, snapshot: &str) -> Vec<u8> {
    let b = eventually(Duration::from_secs(30), || async {
        let r = client()
            .get(hub.url(&format!("/api/v1/snapshots/{snapshot}")))
            .bearer_auth(hub.token())
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())?;
        Some(r.bytes().await.ok()?.to_vec())
    })
    .await
    .unwrap_or_else(|| panic!("snapshot {snapshot} reaches the hub"));
    assert_eq!(
        &b[..3],
        &[0xFF, 0xD8, 0xFF],
        "snapshot {snapshot} is a JPEG"
    );
    b
}

/// The open case of the camera once it is dispatched, with a snapshot uploaded.
async fn dispatched_case(hub: &Hub) -> Value {
    eventually(Duration::from_secs(120), || async {
        let list = hub.get_as("ops", "/api/v1/cases?open=true").await?;
        let c = list["cases"]
            .as_array()?
            .iter()
            .find(|c| c["camera"] == CAMERA && c["state"] == "dispatched")?
            .clone();
        c["sightings"]["latest_snapshot"].as_str()?;
        Some(c)
    })
    .await
    .expect("a dispatched illegal-parking case within 120 s")
}

fn count(case: &Value, action: &str) -> usize {
    case["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_camera_verifies_a_handled_case_and_an_inspector_covers_for_it_when_offline() {
    let scratch = tempfile::tempdir().unwrap();
    let gov = governance_copy(scratch.path());
    // Registered at once (the shipped table waits for 2 minutes of parking); short re-checks.
    patch_governance(
        &gov,
        "categories.toml",
        Some("illegal-parking"),
        "min_duration_s = 120",
        "min_duration_s = 0",
    );
    for (from, to) in [
        ("watch_s = 10", "watch_s = 4"),
        ("wait_s = 600", "wait_s = 20"),
        ("resend_every_s = 30", "resend_every_s = 5"),
    ] {
        patch_governance(&gov, "stages.toml", None, from, to);
    }
    let hub = Hub::builder()
        .devices(&[ID])
        .secured()
        .config(&format!(
            "governance_dir = {:?}\ncase_sweep_ms = 250\n",
            gov.display().to_string()
        ))
        .token("ops", "operator", None)
        .token("police", "handler", Some("urban-mgmt"))
        .token("insp", "inspector", None)
        .start();
    let dir = tempfile::tempdir().unwrap();
    let mut edge = agent(&hub, dir.path(), AT_THE_VAN);

    // Opened, registered and dispatched by itself, with the van's snapshot.
    let first = dispatched_case(&hub).await;
    let id = first["id"].as_str().unwrap().to_string();
    assert_eq!(first["source"], "video_ai");
    assert_eq!(first["category"], "illegal-parking");
    assert_eq!(first["department"], "urban-mgmt", "{first:#}");
    // The evidence at opening: the event, then its snapshot.
    let before = first["evidence"][1]
        .as_str()
        .expect("the opening sighting's snapshot in the evidence")
        .to_string();
    let before_jpeg = served_jpeg(&hub, &before).await;

    // Repeats (updates every 2 s, the second parked vehicle) merge into it: one case.
    let merged = eventually(Duration::from_secs(60), || async {
        let c = case(&hub, &id).await;
        (c["sightings"]["events"].as_u64()? >= 3).then_some(c)
    })
    .await
    .expect("repeats merge into the open case");
    assert!(merged["state"] == "dispatched", "{merged:#}");
    let all = hub.get_as("ops", "/api/v1/cases").await.unwrap();
    let of_camera = all["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["camera"] == CAMERA)
        .count();
    assert_eq!(of_camera, 1, "one case, not one per sighting: {all:#}");

    // 1. Reported handled while the van is still there → 返工 to the same department.
    act(&hub, "police", &id, json!({"action": "accept"})).await;
    let v = act(
        &hub,
        "police",
        &id,
        json!({"action": "report_handled", "note": "owner told to move"}),
    )
    .await;
    assert_eq!(v["case"]["state"], "verifying", "{v:#}");
    assert_eq!(v["case"]["recheck"]["outcome"], "waiting", "{v:#}");
    let reworked = eventually(Duration::from_secs(60), || async {
        let c = case(&hub, &id).await;
        (c["recheck"]["outcome"] != "waiting").then_some(c)
    })
    .await
    .expect("the agent answers the re-check");
    let r = &reworked["recheck"];
    assert_eq!(r["outcome"], "present", "{reworked:#}");
    assert_eq!(reworked["state"], "dispatched", "{reworked:#}");
    assert_eq!(
        reworked["dispatches"],
        json!(["urban-mgmt", "urban-mgmt"]),
        "返工 goes back to the same department"
    );
    let frames = r["result"]["frames"].as_u64().unwrap();
    let seen = r["result"]["frames_seen"].as_u64().unwrap();
    assert!(frames >= 4 && seen * 2 >= frames, "{r:#}");
    assert!(
        r["result"]["counts"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k == "car" || k == "truck"),
        "{r:#}"
    );
    let after = r["result"]["snapshot"].as_str().unwrap().to_string();
    assert!(reworked["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == after.as_str()));
    let after_jpeg = served_jpeg(&hub, &after).await;
    assert_ne!(after_jpeg, before_jpeg, "a fresh picture");
    let done = reworked["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "recheck_done")
        .unwrap()
        .clone();
    assert_eq!(done["present"], true);
    assert_eq!(done["actor"]["id"], format!("agent:{ID}"));
    assert_eq!(
        (done["from"].as_str(), done["to"].as_str()),
        (Some("verifying"), Some("dispatched"))
    );

    // 2. The agent is down: no answer by the deadline → on-site verification by an inspector.
    edge.terminate(Duration::from_secs(10));
    act(&hub, "police", &id, json!({"action": "report_handled"})).await;
    let waited = eventually(Duration::from_secs(60), || async {
        let c = case(&hub, &id).await;
        (c["recheck"]["outcome"] == "no_answer").then_some(c)
    })
    .await
    .expect("the re-check gives up at its deadline");
    assert_eq!(waited["state"], "verifying", "{waited:#}");
    assert!(
        waited["recheck"]["sent"].as_u64() >= Some(2),
        "sent again while unanswered: {waited:#}"
    );
    assert_eq!(count(&waited, "recheck_unanswered"), 1);
    assert_eq!(count(&waited, "recheck_requested"), 2);
    let v = act(
        &hub,
        "insp",
        &id,
        json!({"action": "close", "note": "checked on site: the road is clear"}),
    )
    .await;
    assert_eq!(v["case"]["state"], "closed", "{v:#}");

    // 3. A new case from the same camera; then the scene clears before the re-check.
    let mut edge = agent(&hub, dir.path(), AT_THE_VAN);
    let second = eventually(Duration::from_secs(120), || async {
        let list = hub.get_as("ops", "/api/v1/cases?open=true").await?;
        let c = list["cases"]
            .as_array()?
            .iter()
            .find(|c| {
                c["camera"] == CAMERA && c["id"] != id.as_str() && c["state"] == "dispatched"
            })?
            .clone();
        c["sightings"]["latest_snapshot"].as_str()?;
        Some(c)
    })
    .await
    .expect("a new case once the first is closed");
    let id2 = second["id"].as_str().unwrap().to_string();
    edge.terminate(Duration::from_secs(10));
    let _edge = agent(&hub, dir.path(), CLEAR);
    act(
        &hub,
        "police",
        &id2,
        json!({"action": "report_handled", "note": "towed"}),
    )
    .await;
    let closed = eventually(Duration::from_secs(90), || async {
        let c = case(&hub, &id2).await;
        (c["state"] == "closed").then_some(c)
    })
    .await
    .expect("the re-check closes the case");
    let r = &closed["recheck"];
    assert_eq!(r["outcome"], "absent", "{closed:#}");
    assert_eq!(r["result"]["present"], false);
    assert_eq!(r["result"]["frames_seen"], 0, "{r:#}");
    assert!(r["result"]["frames"].as_u64() >= Some(4), "{r:#}");
    let last = closed["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["action"], "recheck_done");
    assert_eq!(last["present"], false);
    // Before and after, both served.
    let before2 = second["evidence"][1].as_str().unwrap();
    let after2 = r["result"]["snapshot"].as_str().unwrap();
    let evidence = closed["evidence"].as_array().unwrap();
    assert!(evidence.iter().any(|e| e == before2) && evidence.iter().any(|e| e == after2));
    let b = served_jpeg(&hub, before2).await;
    let a = served_jpeg(&hub, after2).await;
    assert_ne!(a, b);

    // Counted, and the device's traffic was all signed.
    let metrics = get_text_with(&hub.url("/metrics"), Some(hub.token())).await;
    for (name, at_least) in [
        ("csb_hub_case_recheck_present_total", 1),
        ("csb_hub_case_recheck_absent_total", 1),
        ("csb_hub_case_recheck_unanswered_total", 1),
        ("csb_hub_command_replies_total", 2),
    ] {
        let v: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in /metrics"))
            .trim()
            .parse()
            .unwrap();
        assert!(v >= at_least, "{name} = {v}");
    }
    assert!(
        metrics.contains("csb_hub_rejected_total{reason=\"spoofed\"} 0\n"),
        "nothing refused as unsigned or forged"
    );
}
