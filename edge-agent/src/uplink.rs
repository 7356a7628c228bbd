//! The MQTT uplink to the hub (rumqttc): events at QoS 1, retained online/offline status with a
//! last will, and telemetry. rumqttc reconnects by itself when its event loop is polled again;
//! this module keeps polling with a bounded back-off and logs each state change once.
//!
//! With an outbox (the agent always has one; benchmarks may run without), events and telemetry
//! are written to it durably and a sender task publishes them from there; the hub's `Ack`s
//! (`csb/v1/{site}/{device}/ack`) delete them. Unacked messages are sent again after a
//! reconnect or an ack timeout, the backlog at `replay_per_s` behind live traffic
//! (docs/outbox.md).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use csb_wire::sign::SigningKey;
use csb_wire::{
    Ack, CameraStatus, Channel, DeviceState, DeviceStatus, Event, OutboxStatus, SensorStatus,
    Telemetry, Topic, SCHEMA_VERSION,
};
use rumqttc::{AsyncClient, Event as MqttEvent, LastWill, MqttOptions, Outgoing, Packet, QoS};
use thiserror::Error;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use ulid::Ulid;

use crate::commands::CommandDesk;
use crate::config::MqttConfig;
use crate::outbox::{Class, Outbox, OutboxConfig, OutboxError, Record};

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
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("mqtt.{field} {path}: {message}")]
    File {
        field: &'static str,
        path: String,
        message: String,
    },
}

/// Reads the device secret and CA of `cfg`, if configured.
pub(crate) fn security(cfg: &MqttConfig) -> Result<(Option<String>, Option<Vec<u8>>), UplinkError> {
    let read = |field: &'static str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| UplinkError::File {
            field,
            path: p.display().to_string(),
            message: e.to_string(),
        })
    };
    let secret = match &cfg.secret_file {
        Some(p) => {
            let s = String::from_utf8(read("secret_file", p)?).map_err(|_| UplinkError::File {
                field: "secret_file",
                path: p.display().to_string(),
                message: "not UTF-8 text".into(),
            })?;
            let s = s.trim().to_string();
            if s.len() < 16 {
                return Err(UplinkError::File {
                    field: "secret_file",
                    path: p.display().to_string(),
                    message: "holds no secret (fewer than 16 characters)".into(),
                });
            }
            Some(s)
        }
        None => None,
    };
    let ca = match &cfg.ca_file {
        Some(p) => Some(read("ca_file", p)?),
        None => None,
    };
    Ok((secret, ca))
}

/// Counters shared with the event loop task.
#[derive(Debug, Default)]
pub struct UplinkStats {
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub connects: AtomicU64,
    pub connected: AtomicBool,
    /// Application-level acks received from the hub, and ids they named.
    pub hub_acks: AtomicU64,
    pub hub_acked_ids: AtomicU64,
    /// Acks that could not be read or were for another device.
    pub bad_acks: AtomicU64,
    /// Failed reads of the outbox (a failing disk): nothing is skipped, the read is retried.
    pub outbox_read_errors: AtomicU64,
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
    outbox: Option<Arc<Outbox>>,
    /// Signs every payload (from the device secret), when the device has one.
    key: Option<SigningKey>,
    /// Wakes the sender when something was enqueued or acked.
    wake: Arc<Notify>,
    sender: Option<JoinHandle<()>>,
    /// The hub's commands: verified and deduplicated here, run by the camera pipeline.
    desk: Arc<CommandDesk>,
    commands: Mutex<Option<tokio::sync::mpsc::Receiver<csb_wire::Command>>>,
    /// When this uplink started, for the local status file.
    started_ms: i64,
}

/// Sent, not yet acked: by id (for acks) and by sequence number (for timeouts).
#[derive(Default)]
struct Flight {
    by_id: HashMap<Ulid, (Class, u64)>,
    by_seq: BTreeMap<u64, (Ulid, Class, Instant)>,
}

impl Flight {
    fn insert(&mut self, id: Ulid, class: Class, seq: u64) {
        self.by_id.insert(id, (class, seq));
        self.by_seq.insert(seq, (id, class, Instant::now()));
    }
    fn clear(&mut self) {
        self.by_id.clear();
        self.by_seq.clear();
    }
}

/// Signs `json` for `channel` of this device when it has a key (docs/wire.md, "Signatures").
fn sign_for(
    site: &str,
    device: &str,
    channel: Channel,
    json: Vec<u8>,
    key: Option<&SigningKey>,
) -> Result<Vec<u8>, UplinkError> {
    let Some(key) = key else { return Ok(json) };
    let topic = Topic::new(site, device, channel)?.to_string();
    csb_wire::sign::sign(&topic, &json, key).map_err(|e| UplinkError::Closed {
        broker: String::new(),
        message: format!("cannot sign a {channel} payload: {e}"),
    })
}

/// What the retained status reports besides the device state; camera and sensor health are
/// updated by different loops.
#[derive(Debug, Clone, Default)]
struct StatusParts {
    cameras: Vec<CameraStatus>,
    sensors: Vec<SensorStatus>,
    outbox: Option<OutboxStatus>,
    config_version: Option<u64>,
    model: Option<csb_wire::model::ModelVersion>,
}

fn status_payload(
    site: &str,
    device: &str,
    state: DeviceState,
    parts: StatusParts,
    key: Option<&SigningKey>,
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
        outbox: parts.outbox,
        config_version: parts.config_version,
        model: parts.model,
    };
    let json = serde_json::to_vec(&s).map_err(|source| UplinkError::Encode {
        what: "status",
        source,
    })?;
    sign_for(site, device, Channel::Status, json, key)
}

impl Uplink {
    /// Starts the client without an outbox: events leave from memory (benchmarks, tools).
    /// Must be called inside a tokio runtime.
    pub fn start(cfg: &MqttConfig, site: &str, device: &str) -> Result<Self, UplinkError> {
        Self::start_inner(cfg, site, device, None)
    }

    /// Starts the client with a durable outbox: what the agent runs.
    pub fn start_with_outbox(
        cfg: &MqttConfig,
        site: &str,
        device: &str,
        outbox: Arc<Outbox>,
        ocfg: &OutboxConfig,
    ) -> Result<Self, UplinkError> {
        Self::start_inner(cfg, site, device, Some((outbox, ocfg.clone())))
    }

    fn start_inner(
        cfg: &MqttConfig,
        site: &str,
        device: &str,
        outbox: Option<(Arc<Outbox>, OutboxConfig)>,
    ) -> Result<Self, UplinkError> {
        let (host, port) = cfg.host_port().map_err(UplinkError::Broker)?;
        let client_id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("edge-{device}"));
        let status_topic = Topic::new(site, device, Channel::Status)?.to_string();
        let ack_topic = Topic::new(site, device, Channel::Ack)?.to_string();
        let (secret, ca) = security(cfg)?;
        let key = secret.as_deref().map(csb_wire::sign::signing_key);
        let mut opts = MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_s.max(5)));
        opts.set_max_packet_size(1024 * 1024, 1024 * 1024);
        opts.set_last_will(LastWill::new(
            &status_topic,
            status_payload(
                site,
                device,
                DeviceState::Offline,
                StatusParts::default(),
                key.as_ref(),
            )?,
            QoS::AtLeastOnce,
            true,
        ));
        if let (Some(user), Some(secret)) = (&cfg.username, &secret) {
            opts.set_credentials(user, secret);
        }
        if let Some(ca) = ca {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Simple {
                    ca,
                    alpn: None,
                    client_auth: None,
                },
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(opts, cfg.queue);
        // Events are small and latency-bound (the hub acks after a flush): no Nagle delay.
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(10);
        eventloop.set_network_options(net);
        let stats = Arc::new(UplinkStats::default());
        let parts = Arc::new(Mutex::new(StatusParts::default()));
        let (stop, mut stop_rx) = watch::channel(false);
        // Connection generation: bumped on every ConnAck, 0 while disconnected.
        let (conn_tx, conn_rx) = watch::channel(0u64);
        let wake = Arc::new(Notify::new());
        let flight = Arc::new(Mutex::new(Flight::default()));
        let (desk, commands) = CommandDesk::new(site, device, key, client.clone())?;
        let desk = Arc::new(desk);

        let task = {
            let desk = desk.clone();
            let (stats, client, parts) = (stats.clone(), client.clone(), parts.clone());
            let (site, device, broker) = (site.to_string(), device.to_string(), cfg.broker.clone());
            let (wake, flight) = (wake.clone(), flight.clone());
            let ob = outbox.as_ref().map(|(o, _)| o.clone());
            let ack_key = key;
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
                            let n = stats.connects.fetch_add(1, Ordering::Relaxed) + 1;
                            stats.connected.store(true, Ordering::Relaxed);
                            tracing::info!(%broker, "connected to MQTT broker");
                            let now = parts.lock().map(|p| p.clone()).unwrap_or_default();
                            // Never wait inside the loop that drains the queue.
                            match status_payload(
                                &site,
                                &device,
                                DeviceState::Online,
                                now,
                                key.as_ref(),
                            ) {
                                Ok(p) => match client.try_publish(
                                    &status_topic,
                                    QoS::AtLeastOnce,
                                    true,
                                    p,
                                ) {
                                    Ok(()) => {
                                        stats.published.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(e) => tracing::warn!("cannot queue online status: {e}"),
                                },
                                Err(e) => tracing::warn!("{e}"),
                            }
                            if ob.is_some() {
                                // Clean session: subscribe again on every connect.
                                if let Err(e) = client.try_subscribe(&ack_topic, QoS::AtLeastOnce) {
                                    tracing::warn!("cannot subscribe to hub acks: {e}");
                                }
                                // A SUBSCRIBE of its own: the hub's MQTT front serves one
                                // naming only the ack topic itself.
                                if let Err(e) = client.try_subscribe(desk.topic(), QoS::AtLeastOnce)
                                {
                                    tracing::warn!("cannot subscribe to hub commands: {e}");
                                }
                            }
                            let _ = conn_tx.send(n);
                        }
                        Ok(MqttEvent::Incoming(Packet::PubAck(_))) => {
                            stats.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(MqttEvent::Incoming(Packet::Publish(p))) if p.topic == ack_topic => {
                            if let Some(ob) = &ob {
                                let from = AckSource {
                                    topic: &ack_topic,
                                    site: &site,
                                    device: &device,
                                    key: ack_key.as_ref(),
                                };
                                on_hub_ack(&p.payload, &from, ob, &flight, &stats);
                                wake.notify_one();
                            }
                        }
                        Ok(MqttEvent::Incoming(Packet::Publish(p))) if p.topic == desk.topic() => {
                            desk.on_publish(&p.payload);
                        }
                        // We asked to leave: the broker closing the socket next is no error.
                        Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => {
                            stats.connected.store(false, Ordering::Relaxed);
                            let _ = conn_tx.send(0);
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let _ = conn_tx.send(0);
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
        let sender = outbox.as_ref().map(|(ob, ocfg)| {
            let s = Sender {
                ob: ob.clone(),
                client: client.clone(),
                flight,
                wake: wake.clone(),
                topics: [
                    Topic::new(site, device, Channel::Event)
                        .map(|t| t.to_string())
                        .unwrap_or_default(),
                    Topic::new(site, device, Channel::Telemetry)
                        .map(|t| t.to_string())
                        .unwrap_or_default(),
                ],
                ack_timeout: Duration::from_secs_f64(ocfg.ack_timeout_s),
                replay_per_s: f64::from(ocfg.replay_per_s),
                max_inflight: ocfg.max_inflight,
                stats: stats.clone(),
            };
            tokio::spawn(s.run(conn_rx, stop.subscribe()))
        });
        Ok(Uplink {
            client,
            broker: cfg.broker.clone(),
            site: site.to_string(),
            device: device.to_string(),
            stats,
            parts,
            stop,
            task,
            outbox: outbox.map(|(o, _)| o),
            key,
            wake,
            sender,
            desk,
            commands: Mutex::new(Some(commands)),
            started_ms: csb_wire::now_ms(),
        })
    }

    /// The hub's commands, for the one camera pipeline that runs them (`None` once taken), and
    /// where their replies go.
    pub fn take_commands(
        &self,
    ) -> Option<(
        tokio::sync::mpsc::Receiver<csb_wire::Command>,
        Arc<CommandDesk>,
    )> {
        let rx = self.commands.lock().ok()?.take()?;
        self.desk.set_served();
        Some((rx, self.desk.clone()))
    }

    /// The command desk (its counters).
    pub fn commands(&self) -> &CommandDesk {
        &self.desk
    }

    pub fn outbox(&self) -> Option<&Arc<Outbox>> {
        self.outbox.as_ref()
    }

    /// The device's signing key (from `mqtt.secret_file`), for other uploads to the hub.
    pub fn signing_key(&self) -> Option<SigningKey> {
        self.key
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

    /// With an outbox: returns once the event is on disk (the sender takes it from there).
    /// Without: once it is in the MQTT client's queue.
    pub async fn publish_event(&self, event: &Event) -> Result<(), UplinkError> {
        let payload = serde_json::to_vec(event).map_err(|source| UplinkError::Encode {
            what: "event",
            source,
        })?;
        self.send(Class::Event, event.id, payload).await
    }

    /// Several events, sharing one outbox flush.
    pub async fn publish_events(&self, events: &[Event]) -> Result<(), UplinkError> {
        let Some(ob) = &self.outbox else {
            for e in events {
                self.publish_event(e).await?;
            }
            return Ok(());
        };
        let mut items = Vec::with_capacity(events.len());
        for e in events {
            let payload = serde_json::to_vec(e).map_err(|source| UplinkError::Encode {
                what: "event",
                source,
            })?;
            let payload = sign_for(
                &self.site,
                &self.device,
                Channel::Event,
                payload,
                self.key.as_ref(),
            )?;
            items.push((Class::Event, e.id, payload));
        }
        let results = ob.enqueue_many(items.clone()).await;
        self.wake.notify_one();
        for ((_, id, payload), r) in items.into_iter().zip(results) {
            if let Err(e) = r {
                tracing::error!(%id, "{e}; sending this event without durability");
                self.publish(Channel::Event, false, payload).await?;
            }
        }
        Ok(())
    }

    pub async fn publish_telemetry(&self, t: &Telemetry) -> Result<(), UplinkError> {
        let payload = serde_json::to_vec(t).map_err(|source| UplinkError::Encode {
            what: "telemetry",
            source,
        })?;
        self.send(Class::Telemetry, t.id, payload).await
    }

    async fn send(&self, class: Class, id: Ulid, payload: Vec<u8>) -> Result<(), UplinkError> {
        let channel = class.channel();
        // Signed before it is stored: the outbox holds exactly what goes on the wire.
        let payload = sign_for(
            &self.site,
            &self.device,
            channel,
            payload,
            self.key.as_ref(),
        )?;
        let Some(ob) = &self.outbox else {
            return self.publish(channel, false, payload).await;
        };
        match ob.enqueue(class, id, payload.clone()).await {
            Ok(_) => {
                self.wake.notify_one();
                Ok(())
            }
            Err(e) => {
                // Not durable, but not dropped either: send it once from memory (counted as a
                // write error in the outbox's stats).
                tracing::error!(%id, "{e}; sending this {} without durability", class.as_str());
                self.publish(channel, false, payload).await
            }
        }
    }

    /// Waits (bounded) until the hub has acked everything in the outbox.
    pub async fn wait_drained(&self, timeout: Duration) -> bool {
        let Some(ob) = &self.outbox else {
            return self.flush(timeout).await;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        while ob.pending() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Records camera states and health and republishes the retained status (every health
    /// tick, so the status always carries current counters).
    pub async fn set_cameras(&self, cams: Vec<CameraStatus>) -> Result<(), UplinkError> {
        self.update_status(|p| p.cameras = cams).await
    }

    /// Records the managed configuration version now running and republishes the status.
    pub async fn set_config_version(&self, v: Option<u64>) -> Result<(), UplinkError> {
        self.update_status(|p| p.config_version = v).await
    }

    /// Records the detection model in service and republishes the retained status.
    pub async fn set_model(
        &self,
        m: Option<csb_wire::model::ModelVersion>,
    ) -> Result<(), UplinkError> {
        self.update_status(|p| p.model = m).await
    }

    /// Records sensor states and republishes the retained status.
    pub async fn set_sensors(&self, sensors: Vec<SensorStatus>) -> Result<(), UplinkError> {
        self.update_status(|p| p.sensors = sensors).await
    }

    async fn update_status(&self, f: impl FnOnce(&mut StatusParts)) -> Result<(), UplinkError> {
        let outbox = self.outbox.as_ref().map(|o| outbox_status(o));
        // Kept for the online status the event loop sends on every (re)connect.
        let now = match self.parts.lock() {
            Ok(mut p) => {
                f(&mut p);
                p.outbox = outbox;
                p.clone()
            }
            Err(_) => return Ok(()),
        };
        self.write_local_status(&now, true);
        if self.stats.connected.load(Ordering::Relaxed) {
            let p = status_payload(
                &self.site,
                &self.device,
                DeviceState::Online,
                now,
                self.key.as_ref(),
            )?;
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

    /// The local status file (`edge-agent status`), beside the outbox. A failure to write it
    /// is logged, never fatal: it is for the technician, not for delivery.
    fn write_local_status(&self, parts: &StatusParts, running: bool) {
        let Some(ob) = &self.outbox else { return };
        let s = crate::localstatus::LocalStatus {
            pid: std::process::id(),
            site: self.site.clone(),
            device: self.device.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            started_ms: self.started_ms,
            updated_ms: csb_wire::now_ms(),
            interval_ms: crate::localstatus::health_interval().as_millis() as u64,
            running,
            broker: self.broker.clone(),
            connected: self.stats.connected.load(Ordering::Relaxed),
            connects: self.stats.connects.load(Ordering::Relaxed),
            hub_acks: self.stats.hub_acks.load(Ordering::Relaxed),
            cameras: parts.cameras.clone(),
            sensors: parts.sensors.clone(),
            outbox: parts.outbox.clone().or_else(|| Some(outbox_status(ob))),
            config_version: parts.config_version,
            model: parts.model.clone(),
        };
        if let Err(e) = crate::localstatus::write(ob.dir(), &s) {
            tracing::warn!(dir = %ob.dir().display(), "cannot write the local status file: {e}");
        }
    }

    /// Publishes the offline status, disconnects cleanly and stops the event loop (bounded).
    pub async fn shutdown(self) {
        let last = self.parts.lock().map(|p| p.clone()).unwrap_or_default();
        self.write_local_status(&last, false);
        if self.stats.connected.load(Ordering::Relaxed) {
            if let Ok(p) = status_payload(
                &self.site,
                &self.device,
                DeviceState::Offline,
                StatusParts::default(),
                self.key.as_ref(),
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
        if let Some(s) = self.sender {
            let _ = tokio::time::timeout(Duration::from_secs(2), s).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
        if let Some(ob) = self.outbox {
            let pending = ob.pending();
            let dir = ob.dir().display().to_string();
            let _ = tokio::task::spawn_blocking(move || ob.close()).await;
            if pending > 0 {
                tracing::info!(pending, outbox = %dir, "messages kept in the outbox for the next start");
            }
        }
    }
}

/// The outbox's counters as the device status reports them.
pub fn outbox_status(ob: &Outbox) -> OutboxStatus {
    let s = ob.snapshot();
    OutboxStatus {
        pending: s.pending,
        pending_events: s.pending_events,
        bytes: s.bytes,
        oldest_age_ms: s.oldest_age_ms,
        dropped_total: s.dropped_total,
        dropped_events: s.dropped_events,
        write_errors: s.write_errors,
        resent_total: s.resent,
    }
}

/// Where acks must come from: this device's ack topic, signed with its key when it has one.
struct AckSource<'a> {
    topic: &'a str,
    site: &'a str,
    device: &'a str,
    key: Option<&'a csb_wire::sign::SigningKey>,
}

/// Applies one hub ack: forgets the named messages that are in flight.
fn on_hub_ack(
    payload: &[u8],
    from: &AckSource,
    ob: &Outbox,
    flight: &Mutex<Flight>,
    stats: &UplinkStats,
) {
    // Any client of the broker can publish on our ack topic (rumqttd has no topic ACLs), and a
    // forged ack would make us drop events the hub never stored. A hub that knows our key
    // signs its acks with it; with a key of our own we accept nothing else.
    if let Some(key) = from.key {
        if let Err(e) = csb_wire::sign::verify(from.topic, payload, key) {
            let n = stats.bad_acks.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(100) {
                tracing::warn!(
                    bad_acks = n + 1,
                    "ack ignored: {e}; acks must be signed by the hub with this device's key \
                     (does the hub have `[auth] devices = \"required\"` and this device's \
                     credentials?)"
                );
            }
            return;
        }
    }
    let (site, device) = (from.site, from.device);
    let ack = match csb_wire::decode::<Ack>(payload) {
        Ok(a) if a.site == site && a.device == device => a,
        Ok(a) => {
            stats.bad_acks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "ack for {}/{} on this device's topic; ignored",
                a.site,
                a.device
            );
            return;
        }
        Err(e) => {
            stats.bad_acks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("unreadable ack from the hub: {e}");
            return;
        }
    };
    stats.hub_acks.fetch_add(1, Ordering::Relaxed);
    stats
        .hub_acked_ids
        .fetch_add(ack.ids.len() as u64, Ordering::Relaxed);
    let done: Vec<(Class, u64)> = match flight.lock() {
        Ok(mut f) => ack
            .ids
            .iter()
            .filter_map(|id| {
                let (c, seq) = f.by_id.remove(id)?;
                f.by_seq.remove(&seq);
                Some((c, seq))
            })
            .collect(),
        Err(_) => return,
    };
    // Ids not in flight (acked twice, or sent before a reconnect) are simply sent again and
    // acked again: the hub stores each once.
    if let Err(e) = ob.ack(&done) {
        tracing::error!("{e}");
    }
}

/// Publishes from the outbox: live records first, the backlog behind at `replay_per_s`, and
/// resends of records whose ack is overdue.
struct Sender {
    ob: Arc<Outbox>,
    client: AsyncClient,
    flight: Arc<Mutex<Flight>>,
    wake: Arc<Notify>,
    /// Event and telemetry topics.
    topics: [String; 2],
    ack_timeout: Duration,
    replay_per_s: f64,
    max_inflight: usize,
    stats: Arc<UplinkStats>,
}

/// Most records read from the outbox per step.
const STEP: usize = 256;

impl Sender {
    /// Reads records `[from, to)` from the outbox; on error logs (at most every 10 s), counts
    /// and returns `None`, and the caller tries again on its next round without moving on.
    fn read(&self, from: u64, to: u64, n: usize) -> Option<Vec<crate::outbox::Record>> {
        match self.ob.range(from, to, n) {
            Ok(r) => Some(r),
            Err(e) => {
                self.read_failed(&e);
                None
            }
        }
    }

    fn read_failed(&self, e: &crate::outbox::OutboxError) {
        let count = self
            .stats
            .outbox_read_errors
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        // The sender retries every 50 ms: one line per ~200 failures.
        if count == 1 || count.is_multiple_of(200) {
            tracing::error!(read_errors = count, "cannot read the outbox: {e}; retrying");
        }
    }

    async fn run(self, mut conn: watch::Receiver<u64>, mut stop: watch::Receiver<bool>) {
        let mut generation = 0u64;
        // Records from `live_from` on were enqueued during this connection.
        let (mut live_from, mut live_next, mut backlog_next) = (0u64, 0u64, 0u64);
        let mut tokens = 0f64;
        let mut refilled = Instant::now();
        loop {
            if *stop.borrow() {
                break;
            }
            let g = *conn.borrow_and_update();
            if g == 0 {
                tokio::select! {
                    _ = conn.changed() => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            if g != generation {
                // A new connection: whatever was in flight may be lost with the old one.
                generation = g;
                if let Ok(mut f) = self.flight.lock() {
                    f.clear();
                }
                live_from = self.ob.durable_next();
                live_next = live_from;
                backlog_next = 0;
                tokens = 0.0;
                refilled = Instant::now();
            }
            let mut progressed = false;
            let room = |s: &Self| {
                s.max_inflight
                    .saturating_sub(s.flight.lock().map(|f| f.by_seq.len()).unwrap_or(0))
            };
            // 1. Live records, as soon as they are durable.
            let n = room(&self).min(STEP);
            if n > 0 {
                let recs = self
                    .read(live_next, self.ob.durable_next(), n)
                    .unwrap_or_default();
                for r in recs {
                    live_next = r.seq + 1;
                    if !self.publish(&r, false).await {
                        break;
                    }
                    progressed = true;
                }
            }
            // 2. Resends of overdue records.
            let overdue: Vec<(u64, Class)> = self
                .flight
                .lock()
                .map(|f| {
                    f.by_seq
                        .iter()
                        .filter(|(_, (_, _, t))| t.elapsed() >= self.ack_timeout)
                        .take(STEP)
                        .map(|(s, (_, c, _))| (*s, *c))
                        .collect()
                })
                .unwrap_or_default();
            for (seq, c) in overdue {
                match self.ob.get(c, seq) {
                    // Stays in flight, overdue: tried again next round.
                    Err(e) => {
                        self.read_failed(&e);
                        break;
                    }
                    Ok(Some(r)) => {
                        self.ob.stats().resent.fetch_add(1, Ordering::Relaxed);
                        if !self.publish(&r, true).await {
                            break;
                        }
                        progressed = true;
                    }
                    Ok(None) => {
                        if let Ok(mut f) = self.flight.lock() {
                            if let Some((id, _, _)) = f.by_seq.remove(&seq) {
                                f.by_id.remove(&id);
                            }
                        }
                    }
                }
            }
            // 3. The backlog, rate-limited.
            tokens = (tokens + refilled.elapsed().as_secs_f64() * self.replay_per_s)
                .min(self.replay_per_s.max(1.0));
            refilled = Instant::now();
            let n = room(&self).min(STEP).min(tokens as usize);
            // A failed read (None) must not count as "backlog done": it would skip the backlog
            // until the next reconnect.
            let backlog = match n > 0 && backlog_next < live_from {
                true => self.read(backlog_next, live_from, n),
                false => None,
            };
            if let Some(recs) = backlog {
                if recs.is_empty() {
                    backlog_next = live_from;
                }
                for r in recs {
                    backlog_next = r.seq + 1;
                    tokens -= 1.0;
                    if !self.publish(&r, false).await {
                        break;
                    }
                    progressed = true;
                }
            }
            if !progressed {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = conn.changed() => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }

    /// Hands one record to the MQTT client; false when the client is gone.
    async fn publish(&self, r: &Record, resend: bool) -> bool {
        if let Ok(mut f) = self.flight.lock() {
            if resend {
                if let Some(e) = f.by_seq.get_mut(&r.seq) {
                    e.2 = Instant::now();
                }
            } else {
                f.insert(r.id, r.class, r.seq);
            }
        }
        // `range` yields only events and telemetry; evidence goes over HTTP.
        let topic = match r.class {
            Class::Telemetry => &self.topics[1],
            Class::Event | Class::Evidence => &self.topics[0],
        };
        match self
            .client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, r.payload.clone())
            .await
        {
            Ok(()) => {
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::warn!("outbox sender: MQTT client closed: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csb_wire::sign::{sign, signing_key};

    fn ack_json(id: Ulid) -> Vec<u8> {
        serde_json::to_vec(&Ack {
            v: csb_wire::SCHEMA_VERSION,
            site: "yuexi".into(),
            device: "gw-b".into(),
            ts_ms: 1_795_000_000_000,
            ids: vec![id],
        })
        .unwrap()
    }

    #[test]
    fn only_acks_signed_with_our_key_release_messages() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), &crate::outbox::OutboxConfig::default()).unwrap();
        let flight = Mutex::new(Flight::default());
        let stats = UplinkStats::default();
        let id = Ulid::new();
        flight.lock().unwrap().insert(id, Class::Event, 7);
        let topic = "csb/v1/yuexi/gw-b/ack";
        let ours = signing_key("secret-of-gw-b-0123456789");
        let from = AckSource {
            topic,
            site: "yuexi",
            device: "gw-b",
            key: Some(&ours),
        };
        let in_flight = || flight.lock().unwrap().by_id.contains_key(&id);

        // Unsigned, signed by another device, or moved from another topic: ignored, counted.
        on_hub_ack(&ack_json(id), &from, &ob, &flight, &stats);
        let other = signing_key("secret-of-gw-a-0123456789");
        let forged = sign(topic, &ack_json(id), &other).unwrap();
        on_hub_ack(&forged, &from, &ob, &flight, &stats);
        let moved = sign("csb/v1/yuexi/gw-a/ack", &ack_json(id), &ours).unwrap();
        on_hub_ack(&moved, &from, &ob, &flight, &stats);
        assert!(in_flight(), "a forged ack must not release the message");
        assert_eq!(stats.bad_acks.load(Ordering::Relaxed), 3);
        assert_eq!(stats.hub_acks.load(Ordering::Relaxed), 0);

        // The hub's ack, signed with our key: released.
        let genuine = sign(topic, &ack_json(id), &ours).unwrap();
        on_hub_ack(&genuine, &from, &ob, &flight, &stats);
        assert!(!in_flight());
        assert_eq!(stats.hub_acks.load(Ordering::Relaxed), 1);

        // Without a key of our own (hub auth off) plain acks are taken as before.
        let id2 = Ulid::new();
        flight.lock().unwrap().insert(id2, Class::Event, 8);
        let open = AckSource { key: None, ..from };
        on_hub_ack(&ack_json(id2), &open, &ob, &flight, &stats);
        assert!(!flight.lock().unwrap().by_id.contains_key(&id2));
        ob.close();
    }
}
