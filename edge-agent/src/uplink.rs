//! The MQTT uplink to the hub (rumqttc): events at QoS 1, retained online/offline status with a
//! last will, and telemetry. rumqttc reconnects by itself when its event loop is polled again;
//! this module keeps polling with a bounded back-off and logs each state change once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use csb_wire::{
    CameraStatus, Channel, DeviceState, DeviceStatus, Event, SensorStatus, Telemetry, Topic,
    SCHEMA_VERSION,
};
use rumqttc::{AsyncClient, Event as MqttEvent, LastWill, MqttOptions, Outgoing, Packet, QoS};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::MqttConfig;

#[derive(Debug, Error)]
pub enum UplinkError {
    #[error("mqtt.broker: {0}")]
    Broker(String),
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("MQTT client to {broker} has stopped: {message}")]
    Closed { broker: String, message: String },
    #[error("no connection to the MQTT broker at {broker} within {secs} s (is the hub running?)")]
    NotConnected { broker: String, secs: u64 },
    #[error(transparent)]
    Topic(#[from] csb_wire::TopicError),
}

/// Counters shared with the event loop task.
#[derive(Debug, Default)]
pub struct UplinkStats {
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub connects: AtomicU64,
    pub connected: AtomicBool,
}

pub struct Uplink {
    client: AsyncClient,
    broker: String,
    site: String,
    device: String,
    stats: Arc<UplinkStats>,
    parts: Arc<Mutex<StatusParts>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What the retained status reports besides the device state; camera and sensor health are
/// updated by different loops.
#[derive(Debug, Clone, Default)]
struct StatusParts {
    cameras: Vec<CameraStatus>,
    sensors: Vec<SensorStatus>,
}

fn status_payload(
    site: &str,
    device: &str,
    state: DeviceState,
    parts: StatusParts,
) -> Result<Vec<u8>, UplinkError> {
    let s = DeviceStatus {
        v: SCHEMA_VERSION,
        site: site.to_string(),
        device: device.to_string(),
        ts_ms: csb_wire::now_ms(),
        state,
        agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        cameras: parts.cameras,
        sensors: parts.sensors,
    };
    serde_json::to_vec(&s).map_err(|source| UplinkError::Encode {
        what: "status",
        source,
    })
}

impl Uplink {
    /// Starts the client; it connects (and reconnects) in the background. Must be called inside
    /// a tokio runtime.
    pub fn start(cfg: &MqttConfig, site: &str, device: &str) -> Result<Self, UplinkError> {
        let (host, port) = cfg.host_port().map_err(UplinkError::Broker)?;
        let client_id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("edge-{device}"));
        let status_topic = Topic::new(site, device, Channel::Status)?.to_string();
        let mut opts = MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_s.max(5)));
        opts.set_max_packet_size(256 * 1024, 256 * 1024);
        opts.set_last_will(LastWill::new(
            &status_topic,
            status_payload(site, device, DeviceState::Offline, StatusParts::default())?,
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut eventloop) = AsyncClient::new(opts, cfg.queue);
        let stats = Arc::new(UplinkStats::default());
        let parts = Arc::new(Mutex::new(StatusParts::default()));
        let (stop, mut stop_rx) = watch::channel(false);

        let task = {
            let (stats, client, parts) = (stats.clone(), client.clone(), parts.clone());
            let (site, device, broker) = (site.to_string(), device.to_string(), cfg.broker.clone());
            tokio::spawn(async move {
                let mut backoff = Duration::from_millis(500);
                loop {
                    let polled = tokio::select! {
                        r = eventloop.poll() => r,
                        _ = stop_rx.changed() => break,
                    };
                    match polled {
                        Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                            backoff = Duration::from_millis(500);
                            stats.connects.fetch_add(1, Ordering::Relaxed);
                            stats.connected.store(true, Ordering::Relaxed);
                            tracing::info!(%broker, "connected to MQTT broker");
                            let now = parts.lock().map(|p| p.clone()).unwrap_or_default();
                            match status_payload(&site, &device, DeviceState::Online, now) {
                                Ok(p) => {
                                    // Never wait inside the loop that drains the queue.
                                    match client.try_publish(
                                        &status_topic,
                                        QoS::AtLeastOnce,
                                        true,
                                        p,
                                    ) {
                                        Ok(()) => {
                                            stats.published.fetch_add(1, Ordering::Relaxed);
                                        }
                                        Err(e) => tracing::warn!("cannot queue online status: {e}"),
                                    }
                                }
                                Err(e) => tracing::warn!("{e}"),
                            }
                        }
                        Ok(MqttEvent::Incoming(Packet::PubAck(_))) => {
                            stats.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        // We asked to leave: the broker closing the socket next is no error.
                        Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => {
                            stats.connected.store(false, Ordering::Relaxed);
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if stats.connected.swap(false, Ordering::Relaxed)
                                || stats.connects.load(Ordering::Relaxed) == 0
                                    && backoff == Duration::from_millis(500)
                            {
                                tracing::warn!(%broker, "MQTT connection lost or refused: {e}; retrying");
                            }
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = stop_rx.changed() => break,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            })
        };
        Ok(Uplink {
            client,
            broker: cfg.broker.clone(),
            site: site.to_string(),
            device: device.to_string(),
            stats,
            parts,
            stop,
            task,
        })
    }

    pub fn stats(&self) -> &UplinkStats {
        &self.stats
    }

    pub fn broker(&self) -> &str {
        &self.broker
    }

    /// Waits until the broker has accepted the connection.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), UplinkError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.stats.connected.load(Ordering::Relaxed) {
            if tokio::time::Instant::now() >= deadline {
                return Err(UplinkError::NotConnected {
                    broker: self.broker.clone(),
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn publish(
        &self,
        channel: Channel,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), UplinkError> {
        let topic = Topic::new(&self.site, &self.device, channel)?.to_string();
        // Waits while the bounded queue is full: back-pressure reaches the detector, which then
        // drops camera frames instead of growing memory.
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .map_err(|e| UplinkError::Closed {
                broker: self.broker.clone(),
                message: e.to_string(),
            })?;
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub async fn publish_event(&self, event: &Event) -> Result<(), UplinkError> {
        let payload = serde_json::to_vec(event).map_err(|source| UplinkError::Encode {
            what: "event",
            source,
        })?;
        self.publish(Channel::Event, false, payload).await
    }

    pub async fn publish_telemetry(&self, t: &Telemetry) -> Result<(), UplinkError> {
        let payload = serde_json::to_vec(t).map_err(|source| UplinkError::Encode {
            what: "telemetry",
            source,
        })?;
        self.publish(Channel::Telemetry, false, payload).await
    }

    /// Records camera states and health and republishes the retained status (every health
    /// tick, so the status always carries current counters).
    pub async fn set_cameras(&self, cams: Vec<CameraStatus>) -> Result<(), UplinkError> {
        self.update_status(|p| p.cameras = cams).await
    }

    /// Records sensor states and republishes the retained status.
    pub async fn set_sensors(&self, sensors: Vec<SensorStatus>) -> Result<(), UplinkError> {
        self.update_status(|p| p.sensors = sensors).await
    }

    async fn update_status(&self, f: impl FnOnce(&mut StatusParts)) -> Result<(), UplinkError> {
        // Kept for the online status the event loop sends on every (re)connect.
        let now = match self.parts.lock() {
            Ok(mut p) => {
                f(&mut p);
                p.clone()
            }
            Err(_) => return Ok(()),
        };
        if self.stats.connected.load(Ordering::Relaxed) {
            let p = status_payload(&self.site, &self.device, DeviceState::Online, now)?;
            self.publish(Channel::Status, true, p).await?;
        }
        Ok(())
    }

    /// Waits (bounded) until every publish so far is acknowledged by the broker.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let want = self.stats.published.load(Ordering::Relaxed);
            if self.stats.acked.load(Ordering::Relaxed) >= want {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Publishes the offline status, disconnects cleanly and stops the event loop (bounded).
    pub async fn shutdown(self) {
        if self.stats.connected.load(Ordering::Relaxed) {
            if let Ok(p) = status_payload(
                &self.site,
                &self.device,
                DeviceState::Offline,
                StatusParts::default(),
            ) {
                // Bounded: a full queue on a dying link must not hold up the exit.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    self.publish(Channel::Status, true, p),
                )
                .await;
            }
            self.flush(Duration::from_secs(3)).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), self.client.disconnect()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}
