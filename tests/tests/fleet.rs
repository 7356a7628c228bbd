//! Fleet configuration with real processes (issue 18, Done-when 2): a hub (TLS, device logins,
//! tokens) and an `edge-agent run` with two cameras on the street footage.
//! - A zone change pushed through the API reaches the running agent and takes effect (a rule
//!   on the new zone fires), with no gap in either camera's event stream and no restart of
//!   either camera (frame sequence numbers never go back), and the hub shows it applied.
//! - A configuration the hub's validator accepts but the agent cannot run (a class its model
//!   does not know) is refused by the agent, and the hub shows the agent's reason; one the
//!   validator refuses never leaves the hub (422 naming the field).
//! - A push while the agent is down converges when it comes back; the applied version
//!   survives the restart (kept beside the outbox).

use std::time::{Duration, Instant};

use csb_test_support::agent::AgentToml;
use csb_test_support::http::eventually;
use csb_test_support::process::{media, spawn_agent, Hub};
use serde_json::{json, Value};

const LOGIN: &str = "yuexi/gw-fleet";
const PATH: &str = "/api/v1/fleet/configs/yuexi/gw-fleet";

async fn record(hub: &Hub) -> Value {
    hub.get_as("ops", PATH).await.unwrap_or(Value::Null)
}

async fn wait_state(hub: &Hub, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    match eventually(Duration::from_secs(60), || async {
        let r = record(hub).await;
        pred(&r).then_some(r)
    })
    .await
    {
        Some(r) => r,
        None => panic!("{what}: not within 60 s: {:#}", record(hub).await),
    }
}

/// Every detection event of `camera` the hub stored: (time, frame seq), oldest first.
async fn detections(hub: &Hub, camera: &str) -> Vec<(i64, u64)> {
    let url = format!("/api/v1/events?device=gw-fleet&camera={camera}&kind=detection&limit=1000");
    let page = hub.get_as("ops", &url).await.unwrap_or(Value::Null);
    let mut v: Vec<(i64, u64)> = page["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["ts_ms"].as_i64().unwrap(),
                        e["frame"]["seq"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The zone `kerb` as `polygon`, with a crowd rule on it that fires on one person.
fn settings(polygon: Value, classes: Value) -> Value {
    json!({ "cameras": [ {
        "id": "cam-a",
        "classes": classes,
        "analytics": {
            "zones": [ { "id": "kerb", "polygon": polygon } ],
            "rules": [ { "id": "pushed-crowd", "event_type": "crowd_pushed",
                          "kind": { "crowd": { "zone": "kerb", "classes": ["person"], "min_count": 1, "min_duration_s": 0.5 } } } ]
        }
    } ] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_zone_reaches_a_running_agent_without_a_gap_and_an_offline_one_catches_up() {
    let hub = Hub::builder()
        .devices(&[LOGIN])
        .token("ops", "operator", None)
        .token("watcher", "viewer", None)
        .secured()
        .start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let video = media("vtest.avi");
    let cam = |id: &str| {
        format!(
            "[[cameras]]\nid = \"{id}\"\nuri = {:?}\nloop = true\npublish_detections = true\nevent_interval_ms = 200\n",
            video.display().to_string()
        )
    };
    let outbox = d.join("outbox");
    let cfg = AgentToml::new("gw-fleet", hub.mqtt_port)
        .mqtt("keep_alive_s = 5")
        .login(LOGIN, &hub.secret_file(LOGIN), Some(hub.ca_file()))
        .outbox_dir(&outbox)
        .model("intra_threads = 1")
        .table(&format!(
            "{}[[cameras.analytics.zones]]\nid = \"kerb\"\npolygon = [[0.0, 0.0], [0.05, 0.0], [0.05, 0.05]]\n{}",
            cam("cam-a"),
            cam("cam-b")
        ))
        .write(d);
    let mut agent = spawn_agent(&cfg, 1000);
    eventually(Duration::from_secs(60), || async {
        (detections(&hub, "cam-a").await.len() > 5 && detections(&hub, "cam-b").await.len() > 5)
            .then_some(())
    })
    .await
    .expect("both cameras' detections reach the hub");

    // Nothing set yet.
    assert_eq!(
        hub.get_as("ops", "/api/v1/fleet/configs").await.unwrap()["count"],
        0
    );

    // A viewer may read but not set; the validator's refusals never leave the hub.
    let whole = json!([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]);
    let (status, _) = hub
        .put_as("watcher", PATH, &settings(whole.clone(), json!([])))
        .await;
    assert_eq!(status, 403);
    let (status, body) = hub
        .put_as(
            "ops",
            PATH,
            &settings(json!([[0.0, 0.0], [1.0, 0.0]]), json!([])),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string()
            .contains("cameras[0].analytics.zones[0].polygon"),
        "{body}"
    );

    // Version 1: the zone covers the picture now, and a rule on it counts people.
    let pushed_at = csb_wire::now_ms();
    let (status, body) = hub
        .put_as("ops", PATH, &settings(whole.clone(), json!([])))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["desired"]["version"], 1);
    let r = wait_state(&hub, "version 1 applied", |r| r["state"] == "in_sync").await;
    assert_eq!(r["applied_version"], 1);
    let applied_ms = r["applied_ms"].as_i64().unwrap();
    eprintln!(
        "version 1 applied {} ms after the PUT",
        applied_ms - pushed_at
    );
    // It took effect: the pushed rule fires on the street's people.
    eventually(Duration::from_secs(30), || async {
        let p = hub
            .get_as(
                "ops",
                "/api/v1/events?device=gw-fleet&camera=cam-a&kind=rule&limit=10",
            )
            .await?;
        p["events"]
            .as_array()?
            .iter()
            .any(|e| e["rule"]["rule"] == "pushed-crowd")
            .then_some(())
    })
    .await
    .expect("a rule event of the pushed rule");
    // Keep streaming a little past the change, then check both streams across it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for camera in ["cam-a", "cam-b"] {
        let ev = detections(&hub, camera).await;
        let around: Vec<&(i64, u64)> = ev
            .iter()
            .filter(|(t, _)| *t >= pushed_at - 5_000 && *t <= applied_ms + 3_000)
            .collect();
        assert!(
            around.len() >= 5,
            "{camera}: events around the change: {around:?}"
        );
        for w in ev.windows(2) {
            assert!(
                w[1].1 > w[0].1,
                "{camera}: frame seq went back ({:?} → {:?}): the camera restarted",
                w[0],
                w[1]
            );
        }
        let gap = around
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .max()
            .unwrap_or(0);
        assert!(
            gap <= 3_000,
            "{camera}: a {gap} ms gap in its events around the change"
        );
    }
    // The agent reports the version it runs (retained status, and its local status file).
    let status = std::fs::read_to_string(outbox.join("agent-status.json")).unwrap();
    assert!(
        serde_json::from_str::<Value>(&status).unwrap()["config_version"] == 1,
        "{status}"
    );

    // Version 2: valid for the hub, but the agent's model has no `elephant2`: refused, with
    // the agent's reason shown at the hub; the agent keeps running version 1.
    let (status, _) = hub
        .put_as(
            "ops",
            PATH,
            &settings(whole.clone(), json!(["person", "elephant2"])),
        )
        .await;
    assert_eq!(status, 202);
    let r = wait_state(&hub, "version 2 refused", |r| r["state"] == "rejected").await;
    let reason = r["rejected"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("elephant2") && reason.contains("cameras[0].classes[1]"),
        "{reason}"
    );
    assert_eq!(r["applied_version"], 1);
    let list = hub.get_as("ops", "/api/v1/fleet/configs").await.unwrap();
    assert_eq!(
        (list["count"].as_u64(), list["rejected"].as_u64()),
        (Some(1), Some(1)),
        "{list}"
    );
    assert!(list["devices"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("elephant2"));

    // Version 3 while the agent is down: pending, then applied once it is back.
    agent
        .terminate(Duration::from_secs(20))
        .expect("agent stops");
    let small = json!([[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]);
    let (status, _) = hub.put_as("ops", PATH, &settings(small, json!([]))).await;
    assert_eq!(status, 202);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let r = record(&hub).await;
    assert_eq!(r["state"], "pending", "{r:#}");
    assert!(
        r["sends"].as_u64().unwrap() >= 2,
        "sent again while the agent is away: {r:#}"
    );
    let back = Instant::now();
    let _agent = spawn_agent(&cfg, 1000);
    let r = wait_state(&hub, "version 3 applied after the restart", |r| {
        r["applied_version"] == 3
    })
    .await;
    eprintln!(
        "version 3 applied {} ms after the agent came back",
        back.elapsed().as_millis()
    );
    assert_eq!(r["state"], "in_sync");
    let kept: Value =
        serde_json::from_str(&std::fs::read_to_string(outbox.join("managed-config.json")).unwrap())
            .unwrap();
    assert_eq!(kept["version"], 3);
    // The inventory shows desired and applied side by side (applied: from the agent's status).
    eventually(Duration::from_secs(30), || async {
        let inv = hub.get_as("ops", "/api/v1/inventory").await?;
        let gw = inv["devices"]
            .as_array()?
            .iter()
            .find(|d| d["id"] == LOGIN)?
            .clone();
        (gw["config_desired"] == 3 && gw["config_applied"] == 3).then_some(())
    })
    .await
    .expect("the inventory shows version 3 desired and applied");
    let whats: Vec<String> = r["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["what"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        whats,
        ["set", "sent", "applied", "set", "sent", "refused", "set", "sent", "applied"],
        "{r:#}"
    );
}
