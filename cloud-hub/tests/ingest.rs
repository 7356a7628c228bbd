//! In-process end-to-end: a real hub (broker, ingest, sled, HTTP) driven by a real MQTT client
//! over TCP and a real HTTP client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cloud_hub::{serve, HubConfig, HubError};
use csb_wire::{
    BBox, Detection, DeviceState, DeviceStatus, Event, EventKind, FrameInfo, ModelRef, Telemetry,
};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use ulid::Ulid;

const T0: i64 = 1_790_000_000_000;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct TestHub {
    mqtt: SocketAddr,
    base: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), HubError>>,
}

/// Hub logs go through the test writer, so they show for failing tests (or `--nocapture`).
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,rumqttd=warn")
        .with_test_writer()
        .try_init();
}

impl TestHub {
    async fn start(data_dir: &Path, mqtt_port: u16) -> TestHub {
        init_logs();
        let config = HubConfig {
            mqtt_addr: SocketAddr::from(([127, 0, 0, 1], mqtt_port)),
            data_dir: data_dir.to_path_buf(),
            store_cache_mb: 8,
            ..HubConfig::default()
        };
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", http.local_addr().unwrap());
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(config.clone(), http, async move {
            let _ = stop_rx.await;
        }));
        let hub = TestHub {
            mqtt: config.mqtt_addr,
            base,
            stop: Some(stop),
            task,
        };
        // The listener is bound already; requests wait until the hub serves.
        let health = hub.get("/api/v1/health").await;
        assert_eq!(health["status"], "ok", "{health}");
        hub
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.get_status(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn get_status(&self, path: &str) -> (u16, Value) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let resp = client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// Polls health until `pred` holds (bounded), returning the last health body.
    async fn wait_health(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..100 {
            last = self.get("/api/v1/health").await;
            if pred(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}; last health: {last:#}");
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("hub stops within 20 s")
            .unwrap()
            .expect("hub returns Ok on shutdown");
    }
}

/// A real MQTT client; `publish` returns once the broker has acknowledged (QoS 1).
struct Publisher {
    client: AsyncClient,
    acks: mpsc::Receiver<()>,
}

impl Publisher {
    async fn connect(addr: SocketAddr, id: &str) -> Publisher {
        let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        let (tx, acks) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        if tx.send(()).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        if tx.is_closed() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Publisher { client, acks }
    }

    /// Sends all, then waits for every PUBACK: keeps many messages in flight at once.
    async fn publish_burst(&mut self, messages: Vec<(String, Vec<u8>)>) {
        let n = messages.len();
        let client = self.client.clone();
        let sender = tokio::spawn(async move {
            for (topic, payload) in messages {
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
            }
        });
        for i in 0..n {
            tokio::time::timeout(Duration::from_secs(30), self.acks.recv())
                .await
                .unwrap_or_else(|_| panic!("PUBACK {i} of {n} within 30 s"))
                .expect("event loop alive");
        }
        sender.await.unwrap();
    }

    async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.acks.recv())
            .await
            .expect("PUBACK within 10 s")
            .expect("event loop alive");
    }
}

fn event(device: &str, camera: &str, ts_ms: i64, objects: &[(u32, &str)]) -> Event {
    Event {
        v: 1,
        id: Ulid::new(),
        site: "yuexi".into(),
        device: device.into(),
        camera: camera.into(),
        kind: EventKind::Detection,
        ts_ms,
        frame: FrameInfo {
            seq: 1,
            pts_ms: Some(40),
            width: 768,
            height: 576,
        },
        model: ModelRef {
            name: "yolox_nano".into(),
            sha256: "695e750a5d57".into(),
        },
        objects: objects
            .iter()
            .map(|(class_id, label)| Detection {
                class_id: *class_id,
                label: (*label).into(),
                score: 0.8,
                bbox: BBox {
                    x1: 10.0,
                    y1: 20.0,
                    x2: 50.0,
                    y2: 120.0,
                },
                track_id: None,
            })
            .collect(),
        rule: None,
    }
}

fn topic(device: &str, channel: &str) -> String {
    format!("csb/v1/yuexi/{device}/{channel}")
}

fn json(e: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(e).unwrap()
}

fn ids(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_query_reject_dedup_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt_port = free_port();
    let hub = TestHub::start(dir.path(), mqtt_port).await;
    let mut p = Publisher::connect(hub.mqtt, "test-gw").await;

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
    let tel = Telemetry {
        v: 1,
        id: Ulid::new(),
        site: "yuexi".into(),
        device: "gw-01".into(),
        source: "agent".into(),
        ts_ms: T0,
        metrics: BTreeMap::from([("cpu_load".to_string(), 0.4)]),
    };
    p.publish(&topic("gw-01", "telemetry"), json(&tel)).await;
    let status = DeviceStatus {
        v: 1,
        site: "yuexi".into(),
        device: "gw-01".into(),
        ts_ms: T0,
        state: DeviceState::Online,
        agent_version: Some("0.1.0".into()),
        cameras: vec![],
    };
    p.publish(&topic("gw-01", "status"), json(&status)).await;

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
    assert_eq!(by_reason["json"], 1, "{health:#}");
    assert_eq!(by_reason["field"], 1, "{health:#}");
    assert_eq!(by_reason["topic_mismatch"], 1, "{health:#}");
    assert_eq!(by_reason["topic"], 1, "{health:#}");
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
    let metrics = reqwest::get(format!("{}/metrics", hub.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("csb_hub_rejected_total{reason=\"topic_mismatch\"} 1\n"),
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
    let mut p = Publisher::connect(hub.mqtt, "test-gw-2").await;
    p.publish(&topic("gw-01", "event"), json(&e1)).await;
    hub.wait_health("duplicate after restart", |h| {
        h["ingest"]["events_duplicate"] == 1
    })
    .await;
    assert_eq!(hub.get("/api/v1/health").await["storage"]["events"], 3);
    drop(p);
    hub.stop().await;
}

impl TestHub {
    async fn events(&self, query: &str) -> Value {
        self.get(&format!("/api/v1/events?{query}")).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_mqtt_port_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = squatter.local_addr().unwrap();
    let config = HubConfig {
        mqtt_addr: addr,
        data_dir: dir.path().to_path_buf(),
        store_cache_mb: 8,
        ..HubConfig::default()
    };
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
    let config = HubConfig {
        mqtt_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
        data_dir: dir.path().to_path_buf(),
        store_cache_mb: 8,
        ..HubConfig::default()
    };
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
    let mut p = Publisher::connect(hub.mqtt, "burst-gw").await;
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
