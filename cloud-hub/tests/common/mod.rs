//! Shared by the integration tests: an in-process hub (broker, ingest, sled, HTTP) on real
//! sockets — what needs the hub's library. Payload builders, the MQTT clients, HTTP helpers and
//! oracles are csb-test-support's (re-exported here, so a test says `use common::*`).

#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cloud_hub::{serve, HubConfig, HubError};
pub use csb_test_support::http::{client, enc, form, get_text};
pub use csb_test_support::mqtt::{acked_ids, Client};
pub use csb_test_support::payloads::*;
pub use csb_test_support::process::{county_dir, free_port};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The config of a test hub: MQTT on `mqtt_addr`, data in `data_dir`, a small sled cache.
pub fn hub_config(data_dir: &Path, mqtt_addr: SocketAddr) -> HubConfig {
    HubConfig {
        mqtt_addr,
        data_dir: data_dir.to_path_buf(),
        store_cache_mb: 8,
        ..HubConfig::default()
    }
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

    /// Like [`TestHub::start`], with the sample county loaded.
    pub async fn start_county(data_dir: &Path, mqtt_port: u16) -> TestHub {
        Self::start_with(data_dir, mqtt_port, |c| c.county_dir = Some(county_dir())).await
    }

    /// Like [`TestHub::start`], with `tweak` applied to the config.
    pub async fn start_with(
        data_dir: &Path,
        mqtt_port: u16,
        tweak: impl FnOnce(&mut HubConfig),
    ) -> TestHub {
        init_logs();
        let mut config = hub_config(data_dir, SocketAddr::from(([127, 0, 0, 1], mqtt_port)));
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
        let resp = client()
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

    pub async fn events(&self, query: &str) -> Value {
        self.get(&format!("/api/v1/events?{query}")).await
    }

    pub async fn telemetry(&self, query: &str) -> Value {
        self.get(&format!("/api/v1/telemetry?{query}")).await
    }

    /// An MQTT client `id` (an edge) listening on `device`'s ack topic.
    pub async fn edge(&self, id: &str, device: &str) -> Client {
        Client::options(id)
            .subscribe(&topic(device, "ack"))
            .connect(self.mqtt)
            .await
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> String {
        get_text(&format!("{}/metrics", self.base)).await
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

/// The `id`s of the records under `key` in an answer (`events`, `telemetry`), in order.
fn ids_in(body: &Value, key: &str) -> Vec<String> {
    body[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {body}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// Ids of a `GET /api/v1/events` answer, in order.
pub fn ids(body: &Value) -> Vec<String> {
    ids_in(body, "events")
}

/// Ids of a `GET /api/v1/telemetry` answer, in order.
pub fn telemetry_ids(body: &Value) -> Vec<String> {
    ids_in(body, "telemetry")
}
