//! Shared by the integration tests: an in-process hub (broker, ingest, sled, HTTP) on real
//! sockets, a real MQTT publisher and payload builders.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cloud_hub::{serve, HubConfig, HubError};
use csb_wire::{BBox, Detection, Event, EventKind, FrameInfo, ModelRef, Telemetry};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use ulid::Ulid;

pub const T0: i64 = 1_790_000_000_000;

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub struct TestHub {
    pub mqtt: SocketAddr,
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), HubError>>,
}

/// Hub logs go through the test writer, so they show for failing tests (or `--nocapture`).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,rumqttd=warn")
        .with_test_writer()
        .try_init();
}

impl TestHub {
    pub async fn start(data_dir: &Path, mqtt_port: u16) -> TestHub {
        Self::start_with(data_dir, mqtt_port, |_| {}).await
    }

    /// Like [`TestHub::start`], with `tweak` applied to the config.
    pub async fn start_with(
        data_dir: &Path,
        mqtt_port: u16,
        tweak: impl FnOnce(&mut HubConfig),
    ) -> TestHub {
        init_logs();
        let mut config = HubConfig {
            mqtt_addr: SocketAddr::from(([127, 0, 0, 1], mqtt_port)),
            data_dir: data_dir.to_path_buf(),
            store_cache_mb: 8,
            ..HubConfig::default()
        };
        tweak(&mut config);
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", http.local_addr().unwrap());
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(config.clone(), http, async move {
            let _ = stop_rx.await;
        }));
        let mut hub = TestHub {
            mqtt: config.mqtt_addr,
            base,
            stop: Some(stop),
            task,
        };
        // The listener is bound already; requests wait until the hub serves. If start-up fails
        // the listener is dropped: report the hub's own error, not the refused request.
        let url = format!("{}/api/v1/health", hub.base);
        let health: Value = match reqwest::get(&url).await {
            Ok(r) => r.json().await.unwrap(),
            Err(e) => {
                let ended = tokio::time::timeout(Duration::from_secs(5), &mut hub.task).await;
                panic!("hub did not start: {ended:?} (GET {url}: {e})");
            }
        };
        assert_eq!(health["status"], "ok", "{health}");
        hub
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.get_status(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    pub async fn get_status(&self, path: &str) -> (u16, Value) {
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
    pub async fn wait_health(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
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

    pub async fn stop(mut self) {
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
pub struct Publisher {
    client: AsyncClient,
    acks: mpsc::Receiver<()>,
}

impl Publisher {
    pub async fn connect(addr: SocketAddr, id: &str) -> Publisher {
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
    pub async fn publish_burst(&mut self, messages: Vec<(String, Vec<u8>)>) {
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

    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
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

pub fn event(device: &str, camera: &str, ts_ms: i64, objects: &[(u32, &str)]) -> Event {
    Event {
        v: 1,
        id: Ulid::new(),
        site: "yuexi".into(),
        device: device.into(),
        camera: camera.into(),
        kind: EventKind::Detection,
        ts_ms,
        frame: Some(FrameInfo {
            seq: 1,
            pts_ms: Some(40),
            width: 768,
            height: 576,
        }),
        model: Some(ModelRef {
            name: "yolox_nano".into(),
            sha256: "695e750a5d57".into(),
        }),
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

pub fn topic(device: &str, channel: &str) -> String {
    format!("csb/v1/yuexi/{device}/{channel}")
}

pub fn json(e: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(e).unwrap()
}

pub fn ids(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}
impl TestHub {
    pub async fn events(&self, query: &str) -> Value {
        self.get(&format!("/api/v1/events?{query}")).await
    }
}

pub fn telemetry(device: &str, source: &str, ts_ms: i64, metrics: &[(&str, f64)]) -> Telemetry {
    Telemetry {
        v: 1,
        id: Ulid::new(),
        site: "yuexi".into(),
        device: device.into(),
        source: source.into(),
        ts_ms,
        metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    }
}

/// Ids of a `GET /api/v1/telemetry` answer, in order.
pub fn telemetry_ids(body: &Value) -> Vec<String> {
    body["telemetry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

impl TestHub {
    pub async fn telemetry(&self, query: &str) -> Value {
        self.get(&format!("/api/v1/telemetry?{query}")).await
    }
}

/// A client with a gateway's last will (`will` on `topic`, as the edge agent sets it) and a 5 s
/// keepalive, connected; returns it and its event loop task. Aborting the task drops the TCP
/// connection without a DISCONNECT, as a power cut would, so the broker publishes the will.
pub async fn client_with_will(
    addr: SocketAddr,
    id: &str,
    topic: String,
    will: Vec<u8>,
) -> (AsyncClient, JoinHandle<()>) {
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_last_will(rumqttc::LastWill::new(topic, will, QoS::AtLeastOnce, false));
    let (client, mut el) = AsyncClient::new(opts, 64);
    let (tx, rx) = oneshot::channel();
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
