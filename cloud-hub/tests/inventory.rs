//! The 家底 inventory (`GET /api/v1/inventory`) of a hub with the sample county, fed over real
//! MQTT: registered devices with their states, unregistered ones seen on the wire, data volume
//! per source, CSV export, and a gateway whose link dies (last will) going offline and back.

mod common;

use std::time::Duration;

use common::*;
use csb_test_support::oracle::{aggregate_group, bucket_count, inventory_row as device};
use csb_wire::{CameraState, DeviceState, DeviceStatus};
use serde_json::Value;

fn status(device: &str, state: DeviceState, cameras: &[(&str, CameraState)]) -> DeviceStatus {
    cameras
        .iter()
        .fold(StatusBuilder::new(device, state).ts(T0), |b, (id, s)| {
            b.camera(id, *s)
        })
        .build()
}

/// The demo gateway's connection with the agent's last will (its offline status).
async fn gateway_link(addr: std::net::SocketAddr) -> Client {
    let will = json(&status("gw-demo-01", DeviceState::Offline, &[]));
    Client::options("inv-gw-demo")
        .will(&topic("gw-demo-01", "status"), will)
        .connect(addr)
        .await
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
    let hub = TestHub::start_county(dir.path(), port).await;
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
    let gw = gateway_link(addr).await;
    let online = status(
        "gw-demo-01",
        DeviceState::Online,
        &[
            ("cam-tiantang-01", CameraState::Running),
            ("cam-tiantang-02", CameraState::Failed),
        ],
    );
    gw.publish_retained(&topic("gw-demo-01", "status"), json(&online))
        .await;
    let p = Client::connect(addr, "inv-data").await;
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
    gw.cut().await;
    let inv = wait_inventory(&hub, 12, |v| {
        device(v, "yuexi/gw-demo-01")["status"] == "offline"
    })
    .await;
    assert_eq!(
        device(&inv, "yuexi/gw-demo-01/cam-tiantang-01")["status"],
        "offline"
    );
    // Back: online again.
    let gw = gateway_link(addr).await;
    gw.publish_retained(&topic("gw-demo-01", "status"), json(&online))
        .await;
    wait_inventory(&hub, 10, |v| {
        device(v, "yuexi/gw-demo-01")["status"] == "online"
    })
    .await;
    hub.stop().await;
}

/// A rule event of `event_type` in `zone` at `ts_ms`.
fn rule_event(
    device: &str,
    camera: &str,
    ts_ms: i64,
    event_type: &str,
    zone: &str,
    phase: csb_wire::Phase,
) -> csb_wire::Event {
    let category = if event_type == "illegal_parking" {
        "0201"
    } else {
        "0305"
    };
    EventBuilder::rule(event_type)
        .device(device)
        .camera(camera)
        .ts(ts_ms)
        .objects(&[(2, "car")])
        .category(category)
        .phase(phase)
        .zone(zone)
        .build()
}

/// (device, camera, town, event type, zone, phase, hour, minute) of a published rule event.
type Planned = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    csb_wire::Phase,
    i64,
    i64,
);

/// Event history by zone, category, phase and town, and aggregates by time bucket and
/// dimension, checked against counts the test works out itself from what it published.
#[tokio::test]
async fn event_history_filters_and_aggregates_by_bucket_type_and_town() {
    use csb_wire::Phase;
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let hub = TestHub::start_county(dir.path(), port).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    const H: i64 = 3_600_000;
    let base = (T0 / H) * H; // an hour boundary
                             // (device, camera, town, event type, zone, phase, hour, minute)
    let plan: Vec<Planned> = vec![
        (
            "gw-demo-01",
            "cam-tiantang-01",
            "tiantang",
            "illegal_parking",
            "no-parking-north",
            Phase::Start,
            0,
            5,
        ),
        (
            "gw-demo-01",
            "cam-tiantang-01",
            "tiantang",
            "illegal_parking",
            "no-parking-north",
            Phase::End,
            0,
            20,
        ),
        (
            "gw-demo-01",
            "cam-tiantang-01",
            "tiantang",
            "illegal_parking",
            "no-parking-north",
            Phase::Start,
            1,
            1,
        ),
        (
            "gw-demo-01",
            "cam-tiantang-02",
            "tiantang",
            "street_vending",
            "sidewalk-east",
            Phase::Start,
            1,
            30,
        ),
        (
            "gw-laibang-01",
            "cam-junction-01",
            "laibang",
            "illegal_parking",
            "junction",
            Phase::Start,
            2,
            59,
        ),
        (
            "gw-laibang-01",
            "cam-junction-01",
            "laibang",
            "street_vending",
            "junction",
            Phase::Start,
            2,
            0,
        ),
        (
            "gw-wenquan-01",
            "cam-parking-01",
            "wenquan",
            "illegal_parking",
            "lot",
            Phase::Start,
            3,
            10,
        ),
    ];
    let p = Client::connect(addr, "hist-data").await;
    let mut burst = Vec::new();
    for (dev, cam, _, ty, zone, phase, h, m) in &plan {
        let e = rule_event(dev, cam, base + h * H + m * 60_000, ty, zone, *phase);
        burst.push((topic(dev, "event"), json(&e)));
    }
    // Detections (no rule) in hour 0: counted only without rule filters.
    for i in 0..3 {
        let e = event("gw-demo-01", "cam-tiantang-01", base + i, &[(0, "person")]);
        burst.push((topic("gw-demo-01", "event"), json(&e)));
    }
    p.publish_burst(burst).await;
    let range = format!("from={}&to={}", base, base + 4 * H);
    let all = loop {
        let v = hub.get(&format!("/api/v1/events/aggregate?{range}")).await;
        if v["total"] == 10 {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(all["groups"][0]["total"], 10);

    // Per event type and hour, starts only.
    let v = hub
        .get(&format!(
            "/api/v1/events/aggregate?{range}&by=event_type&bucket=1h&phase=start"
        ))
        .await;
    let starts: Vec<_> = plan.iter().filter(|x| x.5 == Phase::Start).collect();
    assert_eq!(v["total"].as_u64(), Some(starts.len() as u64));
    for ty in ["illegal_parking", "street_vending"] {
        let g = aggregate_group(&v, ty);
        for h in 0..4 {
            let want = starts.iter().filter(|x| x.3 == ty && x.6 == h).count() as u64;
            let got = bucket_count(g, base + h * H);
            assert_eq!(got, want, "{ty} hour {h}");
        }
    }
    // By town, from the county model's cameras.
    let v = hub
        .get(&format!(
            "/api/v1/events/aggregate?{range}&by=town&kind=rule"
        ))
        .await;
    for town in ["tiantang", "laibang", "wenquan"] {
        let want = plan.iter().filter(|x| x.2 == town).count() as u64;
        let g = v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["key"][0] == town);
        assert_eq!(
            g.map(|g| g["total"].as_u64().unwrap()),
            Some(want),
            "{town}: {v}"
        );
    }
    // Two dimensions and a town filter.
    let v = hub
        .get(&format!(
            "/api/v1/events/aggregate?{range}&by=zone,phase&town=tiantang&kind=rule"
        ))
        .await;
    let g = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["key"] == serde_json::json!(["no-parking-north", "start"]))
        .expect("zone/start group");
    assert_eq!(g["total"], 2);
    assert_eq!(v["total"], 4);

    // History: the same filters on the events themselves.
    let range_ref = &range;
    let hub_ref = &hub;
    let count = |q: &'static str| async move {
        hub_ref
            .get(&format!("/api/v1/events?{range_ref}&{q}"))
            .await["count"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(count("zone=junction").await, 2);
    assert_eq!(count("category=0305").await, 2);
    assert_eq!(count("town=laibang").await, 2);
    assert_eq!(count("town=tiantang&phase=end").await, 1);
    assert_eq!(count("camera=cam-tiantang-01").await, 6);

    // Bad parameters are named.
    for (q, name) in [
        ("by=colour", "by"),
        ("bucket=5x", "bucket"),
        ("bucket=1s", "bucket"),
        ("town=atlantis", "town"),
        ("phase=later", "phase"),
    ] {
        let (code, body) = hub
            .get_status(&format!("/api/v1/events/aggregate?{range}&{q}"))
            .await;
        assert_eq!(code, 400, "{q}");
        assert!(body.to_string().contains(name), "{q}: {body}");
    }
    let (code, _) = hub
        .get_status("/api/v1/events/aggregate?from=0&to=9000000000000&bucket=1m")
        .await;
    assert_eq!(code, 400, "too many buckets");
    hub.stop().await;
}
