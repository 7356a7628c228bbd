//! Raw telemetry history and device sensor status, end to end: published over real MQTT to an
//! in-process hub, read back over HTTP.

mod common;

use common::*;
use csb_wire::{DeviceState, SensorState, SensorStatus, Telemetry};
use serde_json::Value;

/// What the API should answer for a message: its JSON as published.
fn as_json(t: &Telemetry) -> Value {
    serde_json::to_value(t).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_history_filters_and_device_sensors() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), free_port()).await;
    let p = Client::connect(hub.mqtt, "test-gw-tel").await;

    let agent = telemetry(
        "gw-01",
        "agent",
        T0,
        &[("cpu_load", 0.4), ("mem_mb", 812.0)],
    );
    let wl1 = telemetry("gw-01", "wl-01", T0 + 1000, &[("water_level_cm", 12.5)]);
    let cam = telemetry("gw-01", "cam-01", T0 + 1500, &[("cam-01.fps", 9.8)]);
    let wl2 = telemetry(
        "gw-01",
        "wl-01",
        T0 + 2000,
        &[("water_level_cm", 13.25), ("battery_v", 3.6)],
    );
    // Same source and metric on another device.
    let other = telemetry("gw-02", "wl-01", T0 + 2500, &[("water_level_cm", 40.0)]);
    // Same device and source, without the metric.
    let batt = telemetry("gw-01", "wl-01", T0 + 3000, &[("battery_v", 3.5)]);
    for t in [&wl2, &agent, &batt, &cam, &other, &wl1] {
        p.publish(&topic(&t.device, "telemetry"), json(t)).await;
    }
    let status = StatusBuilder::new("gw-01", DeviceState::Online)
        .ts(T0 + 3000)
        .sensor(SensorStatus {
            last_reading_age_ms: Some(800),
            readings_total: 3,
            errors_total: 1,
            last_error: Some("csb/field/wl-01: field `level` is not a number".into()),
            ..sensor_status("wl-01", SensorState::Reporting)
        })
        .sensor(sensor_status("tilt-01", SensorState::Waiting))
        .build();
    p.publish(&topic("gw-01", "status"), json(&status)).await;
    hub.wait_health("telemetry and status to be stored", |h| {
        h["ingest"]["telemetry_accepted"] == 6 && h["ingest"]["status_accepted"] == 1
    })
    .await;

    // Everything, newest first, with the same envelope as events.
    let all = hub.get("/api/v1/telemetry").await;
    assert_eq!(
        telemetry_ids(&all),
        [&batt, &other, &wl2, &cam, &wl1, &agent]
            .map(|t| t.id.to_string())
            .to_vec()
    );
    assert_eq!(all["count"], 6, "{all}");
    assert_eq!(all["truncated"], false, "{all}");

    // Device + source + metric: only gw-01's wl-01 messages holding water_level_cm (not the
    // battery-only one, not gw-02's), each with its whole metrics map.
    let body = hub
        .telemetry("device=gw-01&source=wl-01&metric=water_level_cm")
        .await;
    assert_eq!(body["count"], 2, "{body}");
    assert_eq!(body["telemetry"][0], as_json(&wl2));
    assert_eq!(body["telemetry"][1], as_json(&wl1));
    assert_eq!(body["telemetry"][0]["metrics"]["battery_v"], 3.6);

    // Metric names with dots, sources that are cameras or the agent.
    let ids = |q: &'static str| {
        let hub = &hub;
        async move { telemetry_ids(&hub.telemetry(q).await) }
    };
    assert_eq!(ids("metric=cam-01.fps").await, vec![cam.id.to_string()]);
    assert_eq!(ids("source=agent").await, vec![agent.id.to_string()]);
    assert_eq!(
        ids("metric=battery_v").await,
        vec![batt.id.to_string(), wl2.id.to_string()]
    );
    assert_eq!(ids("device=gw-02").await, vec![other.id.to_string()]);
    assert_eq!(ids("site=elsewhere").await, Vec::<String>::new());
    assert_eq!(
        ids("limit=2").await,
        vec![batt.id.to_string(), other.id.to_string()]
    );

    // Time range: `from` inclusive, `to` exclusive, Unix ms or RFC 3339
    // (T0 = 2026-09-21T14:13:20Z).
    let range = hub
        .telemetry(&format!(
            "device=gw-01&source=wl-01&metric=water_level_cm&from={}&to={}",
            T0 + 1000,
            T0 + 2000
        ))
        .await;
    assert_eq!(telemetry_ids(&range), vec![wl1.id.to_string()]);
    assert_eq!(
        ids("from=2026-09-21T14:13:21.500Z&to=2026-09-21T14:13:23Z").await,
        vec![other.id.to_string(), wl2.id.to_string(), cam.id.to_string()]
    );
    assert_eq!(
        ids("source=wl-01&from=2026-09-21T14:13:22Z").await,
        vec![
            batt.id.to_string(),
            other.id.to_string(),
            wl2.id.to_string()
        ]
    );

    // Bad parameters: 400 naming the parameter.
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("from=yesterday", "from"),
        ("to=2026-02-30T00:00:00Z", "to"),
        ("source=a%20b", "source"),
        ("device=a%2Fb", "device"),
        ("metric=", "metric"),
        ("camera=cam-01", "camera"),
        ("from=2000&to=1000", "from"),
        ("source=a&source=b", "source"),
    ] {
        let (code, body) = hub.get_status(&format!("/api/v1/telemetry?{query}")).await;
        assert_eq!(code, 400, "{query}: {body}");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains(&format!("`{param}`")), "{query}: {msg}");
    }

    // The device list keeps the status's sensors as published.
    let devices = hub.get("/api/v1/devices").await;
    assert_eq!(devices["count"], 1, "{devices}");
    let dev = &devices["devices"][0];
    assert_eq!(dev["device"], "gw-01");
    assert_eq!(
        dev["sensors"],
        serde_json::to_value(&status.sensors).unwrap()
    );
    assert_eq!(dev["sensors"][0]["state"], "reporting");
    assert_eq!(dev["sensors"][1]["id"], "tilt-01");
    assert!(dev["received_ms"].is_i64(), "{dev}");

    drop(p);
    hub.stop().await;
}
