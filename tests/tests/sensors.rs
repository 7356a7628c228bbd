//! End-to-end for field sensors: a real `edge-agent` (sensors only, no camera, no model) reads
//! a water-level sensor from a local MQTT broker (the hub's broker doubles as the gateway's
//! local one here) and a simulated sensor; threshold events and downsampled telemetry reach a
//! real `cloud-hub` over MQTT and come back from its HTTP API.

use std::time::Duration;

use csb_test_support::agent::{AgentToml, Wave};
use csb_test_support::http::{eventually, get_json};
use csb_test_support::mqtt::Client;
use csb_test_support::process::{spawn_agent, Hub};
use serde_json::{json, Value};

const DEVICE: &str = "gw-sensor-e2e";

fn config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    AgentToml::new(DEVICE, port)
        .table(&format!("[sensor_mqtt]\nbroker = \"127.0.0.1:{port}\""))
        .sensor(
            "wl-07",
            r#"kind = "mqtt"
topic = "field/+/wl-07"
ts_field = "ts"
fields = { water_level_cm = "data.level", battery_v = { path = "bat_mv", scale = 0.001 } }"#,
        )
        .simulated_sensor("wl-sim", 100, Wave::new(0.0, 60.0, 6.0).noise(0.5))
        .table(
            r#"
[[sensor_rules]]
id = "waterlogging-wl-07"
event_type = "waterlogging"
category = "0501"
cooldown_s = 0
update_interval_s = 3600
[sensor_rules.kind.sensor_threshold]
sensor = "wl-07"
metric = "water_level_cm"
above = 30.0
hysteresis = 5.0

[[sensor_rules]]
id = "waterlogging-sim"
event_type = "waterlogging"
cooldown_s = 0
update_interval_s = 3600
[sensor_rules.kind.sensor_threshold]
sensor = "wl-sim"
metric = "water_level_cm"
above = 40.0
hysteresis = 5.0
"#,
        )
        .write_as(dir, "sensors.toml")
}

async fn events(hub: &Hub, source: &str) -> Vec<Value> {
    let url = hub.url(&format!(
        "/api/v1/events?device={DEVICE}&camera={source}&kind=rule&limit=100"
    ));
    let mut list = get_json(&url).await.map_or(Vec::new(), |v| {
        v["events"].as_array().cloned().unwrap_or_default()
    });
    list.sort_by_key(|e| e["ts_ms"].as_i64());
    list
}

async fn sensor_status(hub: &Hub, id: &str) -> Option<Value> {
    let d = get_json(&hub.url("/api/v1/devices")).await?;
    let dev = d["devices"]
        .as_array()?
        .iter()
        .find(|d| d["device"] == DEVICE)?
        .clone();
    let status = if dev["status"].is_object() {
        &dev["status"]
    } else {
        &dev
    };
    status["sensors"]
        .as_array()?
        .iter()
        .find(|s| s["id"] == id)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_thresholds_and_telemetry_reach_the_hub() {
    let hub = Hub::start();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = spawn_agent(&config(dir.path(), hub.mqtt_port), 500);

    // A field device publishing on the local broker.
    let client = Client::options("lora-bridge")
        .keep_alive(10)
        .connect(hub.mqtt)
        .await;
    let topic = "field/up/wl-07";
    let mut ts = csb_wire::now_ms();
    let mut send = |level: Value| {
        ts += 10;
        let body = json!({ "ts": ts, "data": { "level": level }, "bat_mv": 3612 });
        client.publish(topic, body.to_string())
    };

    // Dry: repeat until the agent has subscribed and counted a reading.
    let first = eventually(Duration::from_secs(30), || {
        let s = send(json!(10.0));
        async {
            s.await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            sensor_status(&hub, "wl-07")
                .await
                .filter(|s| s["readings_total"].as_u64() >= Some(1))
        }
    })
    .await;
    assert!(first.is_some(), "agent never reported a wl-07 reading");

    // Rising water, noise around the threshold, then dry again. Values are numbers or
    // numeric strings, as vendors send them.
    for level in [
        json!(20.0),
        json!("35.5"),
        json!(33.0),
        json!(28.0),
        json!(24.0),
    ] {
        send(level).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Broken messages: counted and reported, never fatal.
    client.publish(topic, "{not json").await;
    send(json!("high")).await;

    let evs = eventually(Duration::from_secs(20), || async {
        let e = events(&hub, "wl-07").await;
        (e.iter().any(|e| e["rule"]["phase"] == "end")).then_some(e)
    })
    .await
    .expect("a start and an end event for wl-07");
    let phases: Vec<&str> = evs
        .iter()
        .map(|e| e["rule"]["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        ["start", "end"],
        "one problem, hysteresis held at 33 and 28: {evs:#?}"
    );
    let (start, end) = (&evs[0]["rule"], &evs[1]["rule"]);
    assert_eq!(start["problem_id"], end["problem_id"]);
    assert_eq!(start["rule_type"], "sensor_threshold");
    assert_eq!(start["event_type"], "waterlogging");
    assert_eq!(start["category"], "0501");
    assert_eq!(start["metric"], "water_level_cm");
    assert_eq!(start["direction"], "above");
    assert_eq!(start["value"], 35.5);
    assert_eq!(end["value"], 24.0);
    assert!(evs[0].get("frame").is_none() && evs[0]["objects"] == json!([]));

    // Telemetry: per-second windows of mean/min/max/last/count, scaled battery voltage. Wait
    // until the windows hold every valid reading (≥ 6: the dry ones and the five levels).
    let count = |list: &[Value]| -> f64 {
        list.iter()
            .filter_map(|t| t["metrics"]["water_level_cm.count"].as_f64())
            .sum()
    };
    let tel = eventually(Duration::from_secs(15), || async {
        let url = hub.url(&format!(
            "/api/v1/telemetry?device={DEVICE}&source=wl-07&metric=water_level_cm.max&limit=100"
        ));
        let list = get_json(&url).await?["telemetry"].as_array()?.clone();
        let peak = list
            .iter()
            .filter_map(|t| t["metrics"]["water_level_cm.max"].as_f64())
            .fold(f64::MIN, f64::max);
        (peak >= 35.5 && count(&list) >= 6.0).then_some(list)
    })
    .await
    .expect("telemetry windows with the peak water level and every reading");
    let m = &tel[0]["metrics"];
    for k in [
        "water_level_cm",
        "water_level_cm.min",
        "water_level_cm.last",
        "water_level_cm.count",
    ] {
        assert!(m[k].is_number(), "{k} in {m}");
    }
    assert!(
        (m["battery_v"].as_f64().unwrap() - 3.612).abs() < 1e-9,
        "{m}"
    );
    let readings = count(&tel);
    assert!(
        tel.len() < readings as usize,
        "readings were aggregated, not sent one by one"
    );

    // The simulated sensor rises above 40 within its 6 s period and falls again.
    let sim = eventually(Duration::from_secs(20), || async {
        let e = events(&hub, "wl-sim").await;
        (e.iter().any(|e| e["rule"]["phase"] == "end")).then_some(e)
    })
    .await
    .expect("simulated waterlogging start and end");
    assert_eq!(sim[0]["rule"]["phase"], "start");
    assert!(sim[0]["rule"]["value"].as_f64().unwrap() > 40.0);

    // Health in the retained device status.
    let st = eventually(Duration::from_secs(10), || async {
        sensor_status(&hub, "wl-07")
            .await
            .filter(|s| s["errors_total"].as_u64() >= Some(2))
    })
    .await
    .expect("bad messages counted in the device status");
    assert_eq!(st["state"], "reporting");
    assert!(st["readings_total"].as_u64().unwrap() >= 6, "{st}");
    assert!(
        st["last_error"].as_str().unwrap().contains("data.level"),
        "{st}"
    );

    let code = agent.terminate(Duration::from_secs(15));
    assert!(
        code.is_some_and(|c| c.success()),
        "agent exits cleanly: {code:?}"
    );
}
