//! The 家底 inventory (`GET /api/v1/inventory`) of a hub with the sample county, fed over real
//! MQTT: registered devices with their states, unregistered ones seen on the wire, data volume
//! per source, CSV export, and a gateway whose link dies (last will) going offline and back.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use csb_wire::{CameraState, CameraStatus, DeviceState, DeviceStatus};
use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS};
use serde_json::Value;

const T0: i64 = 1_790_000_000_000;

fn county_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/county")
}

fn status(device: &str, state: DeviceState, cameras: &[(&str, CameraState)]) -> DeviceStatus {
    DeviceStatus {
        v: 1,
        site: "yuexi".into(),
        device: device.into(),
        ts_ms: T0,
        state,
        agent_version: Some("0.1.0".into()),
        cameras: cameras
            .iter()
            .map(|(id, s)| CameraStatus {
                id: (*id).into(),
                state: *s,
                fps: Some(10.0),
                error: None,
                health: None,
            })
            .collect(),
        sensors: vec![],
        outbox: None,
    }
}

/// A gateway's connection with the agent's last will; its event loop runs in a task whose
/// abort drops the TCP connection without a DISCONNECT, as a power cut would.
async fn gateway_link(addr: std::net::SocketAddr) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let mut opts = MqttOptions::new("inv-gw-demo", addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_last_will(LastWill::new(
        topic("gw-demo-01", "status"),
        json(&status("gw-demo-01", DeviceState::Offline, &[])),
        QoS::AtLeastOnce,
        false,
    ));
    let (client, mut el) = AsyncClient::new(opts, 64);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    if let Some(t) = tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("CONNACK within 10 s")
        .unwrap();
    (client, task)
}

fn device<'a>(inv: &'a Value, id: &str) -> &'a Value {
    inv["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("{id} is in the inventory"))
}

/// Polls the inventory until `pred` holds (at most `secs`).
async fn wait_inventory(hub: &TestHub, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..secs * 10 {
        last = hub.get("/api/v1/inventory").await;
        if pred(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("inventory never matched; last: {last:#}");
}

#[tokio::test]
async fn inventory_counts_states_unregistered_devices_and_the_last_will() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let county = county_dir();
    let hub = TestHub::start_with(dir.path(), port, |c| c.county_dir = Some(county)).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Nothing heard yet: every registered device is listed, never seen.
    let inv = hub.get("/api/v1/inventory").await;
    let s = &inv["summary"];
    let registered = s["registered"].as_u64().unwrap();
    assert!(registered >= 20, "sample county devices: {s}");
    assert_eq!(s["unregistered"], 0);
    assert_eq!(s["by_status"]["never_seen"].as_u64(), Some(registered));
    assert_eq!(inv["county"], "yuexi");
    assert_eq!(
        device(&inv, "yuexi/gw-laibang-01")["firmware"],
        "edge-agent 0.0.9"
    );

    // The demo gateway comes up with one camera running and one failed, sends events and
    // telemetry; a gateway the county never registered sends events too.
    let (gw, gw_task) = gateway_link(addr).await;
    let online = status(
        "gw-demo-01",
        DeviceState::Online,
        &[
            ("cam-tiantang-01", CameraState::Running),
            ("cam-tiantang-02", CameraState::Failed),
        ],
    );
    gw.publish(
        topic("gw-demo-01", "status"),
        QoS::AtLeastOnce,
        true,
        json(&online),
    )
    .await
    .unwrap();
    let mut p = Publisher::connect(addr, "inv-data").await;
    let mut burst = Vec::new();
    for i in 0..5 {
        let e = event("gw-demo-01", "cam-tiantang-01", T0 + i, &[(0, "person")]);
        burst.push((topic("gw-demo-01", "event"), json(&e)));
    }
    for i in 0..3 {
        let t = telemetry(
            "gw-demo-01",
            "wl-underpass-01",
            T0 + i,
            &[("water_level_cm", 12.0)],
        );
        burst.push((topic("gw-demo-01", "telemetry"), json(&t)));
    }
    for i in 0..2 {
        let e = event("gw-rogue-09", "cam-x", T0 + i, &[(2, "car")]);
        burst.push((topic("gw-rogue-09", "event"), json(&e)));
    }
    p.publish_burst(burst).await;

    let inv = wait_inventory(&hub, 20, |v| {
        v["summary"]["events"] == 7 && v["summary"]["telemetry"] == 3
    })
    .await;
    let s = &inv["summary"];
    // The rogue gateway and its camera.
    assert_eq!(s["unregistered"], 2, "{s}");
    assert_eq!(s["registered"].as_u64(), Some(registered));
    assert_eq!(s["devices"].as_u64(), Some(registered + 2));
    let rogue = device(&inv, "yuexi/gw-rogue-09");
    assert_eq!(
        (rogue["registered"].as_bool(), rogue["events"].as_u64()),
        (Some(false), Some(2))
    );
    assert_eq!(device(&inv, "yuexi/gw-rogue-09/cam-x")["kind"], "camera");
    let gw_row = device(&inv, "yuexi/gw-demo-01");
    assert_eq!(gw_row["status"], "online");
    assert_eq!(
        (gw_row["events"].as_u64(), gw_row["telemetry"].as_u64()),
        (Some(5), Some(3))
    );
    assert_eq!(
        device(&inv, "yuexi/gw-demo-01/cam-tiantang-01")["status"],
        "online"
    );
    assert_eq!(
        device(&inv, "yuexi/gw-demo-01/cam-tiantang-01")["events"],
        5
    );
    let failed = device(&inv, "yuexi/gw-demo-01/cam-tiantang-02");
    assert_eq!(failed["status"], "offline");
    assert!(
        failed["detail"].as_str().unwrap().contains("failed"),
        "{failed}"
    );
    assert_eq!(
        device(&inv, "yuexi/gw-demo-01/wl-underpass-01")["telemetry"],
        3
    );
    // Counts add up in every breakdown.
    for by in ["by_kind", "by_status", "by_town", "by_department"] {
        let sum: u64 = s[by]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(sum, s["devices"].as_u64().unwrap(), "{by}");
    }
    assert_eq!(
        s["by_status"]["online"], 2,
        "gateway and its running camera: {s}"
    );
    let sources = inv["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 3);
    assert!(sources.iter().all(|x| x["fresh"] == true));

    // CSV export: a header and one line per device; sources too.
    let c = reqwest::Client::new();
    let resp = c
        .get(format!("{}/api/v1/inventory?format=csv", hub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = resp.text().await.unwrap();
    assert_eq!(
        csv.trim_end().split("\r\n").count() as u64,
        s["devices"].as_u64().unwrap() + 1
    );
    assert!(csv.contains("yuexi/gw-rogue-09,gateway,false,"));
    let csv = c
        .get(format!(
            "{}/api/v1/inventory?format=csv&table=sources",
            hub.base
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv.contains("yuexi/gw-demo-01/wl-underpass-01,telemetry,"));
    let (code, body) = hub.get_status("/api/v1/inventory?format=xml").await;
    assert_eq!(code, 400);
    assert!(body.to_string().contains("format"), "{body}");

    // The link dies without a word: the broker's last will marks it offline, within the
    // keepalive window (5 s; rumqttd allows 1.5×), and its cameras with it.
    gw_task.abort();
    drop(gw);
    let inv = wait_inventory(&hub, 12, |v| {
        device(v, "yuexi/gw-demo-01")["status"] == "offline"
    })
    .await;
    assert_eq!(
        device(&inv, "yuexi/gw-demo-01/cam-tiantang-01")["status"],
        "offline"
    );
    // Back: online again.
    let (gw, _task) = gateway_link(addr).await;
    gw.publish(
        topic("gw-demo-01", "status"),
        QoS::AtLeastOnce,
        true,
        json(&online),
    )
    .await
    .unwrap();
    wait_inventory(&hub, 10, |v| {
        device(v, "yuexi/gw-demo-01")["status"] == "online"
    })
    .await;
    hub.stop().await;
}
