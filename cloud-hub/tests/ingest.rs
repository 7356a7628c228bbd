//! In-process end-to-end: a real hub (broker, ingest, sled, HTTP) driven by a real MQTT client
//! over TCP and a real HTTP client.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use cloud_hub::serve;
use common::*;
use csb_wire::{DeviceState, Event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_query_reject_dedup_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt_port = free_port();
    let hub = TestHub::start(dir.path(), mqtt_port).await;
    let p = Client::connect(hub.mqtt, "test-gw").await;

    let e1 = event("gw-01", "cam-01", T0, &[(0, "person")]);
    let e2 = event("gw-01", "cam-02", T0 + 1000, &[(2, "car")]);
    let e3 = event("gw-02", "cam-01", T0 + 2000, &[(0, "person"), (2, "car")]);
    p.publish(&topic("gw-01", "event"), json(&e1)).await;

    // The first event becomes visible through the API.
    let mut found = false;
    for _ in 0..100 {
        let body = hub.get("/api/v1/events").await;
        if ids(&body) == vec![e1.id.to_string()] {
            assert_eq!(body["count"], 1);
            // Through JSON text: the API writes f32 in short form, `to_value` would widen to f64.
            assert_eq!(
                body["events"][0],
                serde_json::from_str::<serde_json::Value>(&serde_json::to_string(&e1).unwrap())
                    .unwrap()
            );
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "event never showed up in /api/v1/events");

    p.publish(&topic("gw-01", "event"), json(&e2)).await;
    p.publish(&topic("gw-02", "event"), json(&e3)).await;
    // Malformed JSON, a bad score, a payload claiming another device, a bad topic level.
    p.publish(&topic("gw-01", "event"), b"{\"v\":1,".to_vec())
        .await;
    let mut bad = event("gw-01", "cam-01", T0 + 3000, &[(0, "person")]);
    bad.objects[0].score = 1.5;
    p.publish(&topic("gw-01", "event"), json(&bad)).await;
    let spoof = event("gw-09", "cam-01", T0 + 3000, &[(0, "person")]);
    p.publish(&topic("gw-01", "event"), json(&spoof)).await;
    p.publish("csb/v1/yu exi/gw-01/event", json(&e1)).await;
    // A resend of e1 (same id): counted as duplicate, not stored twice.
    p.publish(&topic("gw-01", "event"), json(&e1)).await;
    // Telemetry and status.
    let tel = telemetry("gw-01", "agent", T0, &[("cpu_load", 0.4)]);
    p.publish(&topic("gw-01", "telemetry"), json(&tel)).await;
    let status = StatusBuilder::new("gw-01", DeviceState::Online).ts(T0);
    p.publish(&topic("gw-01", "status"), status.json()).await;

    let health = hub
        .wait_health("all messages to be ingested", |h| {
            let i = &h["ingest"];
            i["events_accepted"] == 3
                && i["events_duplicate"] == 1
                && i["rejected"] == 4
                && i["telemetry_accepted"] == 1
                && i["status_accepted"] == 1
        })
        .await;
    let by_reason = &health["ingest"]["rejected_by_reason"];
    assert_eq!(by_reason["not_json"], 1, "{health:#}");
    assert_eq!(by_reason["schema"], 1, "{health:#}");
    assert_eq!(by_reason["device_mismatch"], 1, "{health:#}");
    assert_eq!(by_reason["bad_topic"], 1, "{health:#}");
    assert_eq!(by_reason["version"], 0, "{health:#}");
    assert_eq!(health["storage"]["events"], 3, "{health:#}");
    assert_eq!(health["mqtt_addr"], hub.mqtt.to_string());
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["uptime_s"].is_u64());

    // Newest first; the duplicate is stored once.
    let all = hub.get("/api/v1/events").await;
    let (i1, i2, i3) = (e1.id.to_string(), e2.id.to_string(), e3.id.to_string());
    assert_eq!(ids(&all), vec![i3.clone(), i2.clone(), i1.clone()]);
    assert_eq!(all["count"], 3);

    // Filters.
    assert_eq!(
        ids(&hub.events("device=gw-01").await),
        vec![i2.clone(), i1.clone()]
    );
    assert_eq!(
        ids(&hub.events("camera=cam-01").await),
        vec![i3.clone(), i1.clone()]
    );
    assert_eq!(
        ids(&hub.events("class=car").await),
        vec![i3.clone(), i2.clone()]
    );
    assert_eq!(
        ids(&hub.events("class=0").await),
        vec![i3.clone(), i1.clone()]
    );
    assert_eq!(ids(&hub.events("limit=1").await), vec![i3.clone()]);
    assert_eq!(
        ids(&hub
            .events(&format!("from={}&to={}", T0 + 1000, T0 + 2000))
            .await),
        vec![i2.clone()]
    );
    // T0 = 2026-09-21T14:13:20Z; RFC 3339 works too (`to` is exclusive).
    assert_eq!(
        ids(&hub
            .events("from=2026-09-21T14:13:20Z&to=2026-09-21T14:13:21.500Z")
            .await),
        vec![i2.clone(), i1.clone()]
    );
    assert_eq!(
        ids(&hub.events("device=gw-01&class=person").await),
        vec![i1.clone()]
    );

    // Bad parameters: 400 with the parameter named.
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("from=yesterday", "from"),
        ("to=2026-02-30T00:00:00Z", "to"),
        ("device=a%20b", "device"),
        ("bogus=1", "bogus"),
    ] {
        let (status, body) = hub.get_status(&format!("/api/v1/events?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains(&format!("`{param}`")), "{query}: {msg}");
    }
    let (status, body) = hub.get_status("/api/v1/nope").await;
    assert_eq!(status, 404, "{body}");

    // Devices and metrics.
    let devices = hub.get("/api/v1/devices").await;
    assert_eq!(devices["count"], 1, "{devices}");
    assert_eq!(devices["devices"][0]["device"], "gw-01");
    assert_eq!(devices["devices"][0]["state"], "online");
    let metrics = hub.metrics().await;
    assert!(
        metrics.contains("csb_hub_rejected_total{reason=\"device_mismatch\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("csb_hub_events_accepted_total 3\n"),
        "{metrics}"
    );

    // Graceful stop, then a restart on the same MQTT port and data: the port was released and
    // the events are durable.
    drop(p);
    hub.stop().await;
    let hub = TestHub::start(dir.path(), mqtt_port).await;
    let all = hub.get("/api/v1/events").await;
    assert_eq!(ids(&all), vec![i3.clone(), i2, i1.clone()]);
    let health = hub.get("/api/v1/health").await;
    assert_eq!(health["storage"]["events"], 3);
    assert_eq!(health["ingest"]["events_accepted"], 0);
    // Dedup survives the restart.
    let p = Client::connect(hub.mqtt, "test-gw-2").await;
    p.publish(&topic("gw-01", "event"), json(&e1)).await;
    hub.wait_health("duplicate after restart", |h| {
        h["ingest"]["events_duplicate"] == 1
    })
    .await;
    assert_eq!(hub.get("/api/v1/health").await["storage"]["events"], 3);
    drop(p);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_mqtt_port_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = squatter.local_addr().unwrap();
    let config = hub_config(dir.path(), addr);
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        serve(config, http, std::future::pending()),
    )
    .await
    .expect("serve fails fast instead of hanging");
    let err = r.unwrap_err().to_string();
    assert!(err.contains(&addr.to_string()), "{err}");
    assert!(err.contains("MQTT"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_data_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), free_port()).await;
    let config = hub_config(dir.path(), SocketAddr::from(([127, 0, 0, 1], free_port())));
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        serve(config, http, std::future::pending()),
    )
    .await
    .expect("serve fails fast")
    .unwrap_err()
    .to_string();
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert!(err.contains("another cloud-hub"), "{err}");
    hub.stop().await;
}

/// More messages than the broker hands the ingest link at once (~200): ingest must wake the
/// router after each batch or it stalls. Every event must arrive, in time order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_beyond_link_buffer_is_fully_ingested() {
    const N: usize = 1500;
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), free_port()).await;
    let p = Client::connect(hub.mqtt, "burst-gw").await;
    let events: Vec<Event> = (0..N)
        .map(|i| event("gw-01", "cam-01", T0 + i as i64, &[(0, "person")]))
        .collect();
    let messages = events
        .iter()
        .map(|e| (topic("gw-01", "event"), json(e)))
        .collect();
    p.publish_burst(messages).await;
    hub.wait_health("burst to be stored", |h| {
        h["ingest"]["events_accepted"] == N as u64
    })
    .await;
    let body = hub.events("limit=1000").await;
    let got = ids(&body);
    assert_eq!(got.len(), 1000);
    let want: Vec<String> = events
        .iter()
        .rev()
        .take(1000)
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(got, want);
    drop(p);
    hub.stop().await;
}
