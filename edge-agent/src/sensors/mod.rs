//! Field sensors (water level, manhole tilt, air quality): readings arrive from a local MQTT
//! broker (topic + JSON field mapping) or from the built-in simulator, go through the
//! `sensor_threshold` rules (start/update/end events, like camera rules) and go up to the hub as
//! downsampled telemetry. Sensor health (reporting, silent, bad payloads) is in the device status.
//!
//! Tasks: one MQTT client for all `mqtt` sensors, one timer per `simulated` sensor, and one
//! processor that owns all state (rules, windows, counters); sources hand it messages through a
//! bounded channel and never wait on it.

pub mod config;
pub mod decode;
pub mod downsample;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csb_wire::{Event, EventKind, SensorState, SensorStatus, Telemetry, SCHEMA_VERSION};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use ulid::Ulid;

use crate::config::AgentConfig;
use crate::jitter::{Backoff, Rng};
use crate::rules::{RuleEngine, RuleKind, RuleOutput, RulesConfig, RulesConfigError};
use crate::uplink::{Uplink, UplinkError};
pub use config::{FieldMap, SensorConfig, SensorKind, SensorMqttConfig, Stat, Waveform};
pub use decode::{decode, Decoded, Reading};
pub use downsample::{Summary, Window};

#[derive(Debug, Error)]
pub enum SensorError {
    #[error("sensor_mqtt.broker: {0}")]
    Broker(String),
    #[error("sensor_rules.{0}")]
    Rules(#[from] RulesConfigError),
}

/// Messages from sources to the processor; bounded, sources drop (and count) when it is full.
const CHANNEL: usize = 4096;
/// A window is sent this long after its end, for readings still in flight.
const WINDOW_GRACE_MS: i64 = 1000;
/// At most one warning per sensor this often; the rest are counted.
const WARN_EVERY: Duration = Duration::from_secs(30);

enum Msg {
    Reading(Reading),
    /// A message of sensor `sensor` had problems (`reading` of the same message, if any, is
    /// sent separately).
    Problems {
        sensor: usize,
        problems: Vec<String>,
    },
}

/// The running sensor tasks. Dropping it leaves them running: call [`Sensors::stop`].
pub struct Sensors {
    stop: watch::Sender<bool>,
    sources: Vec<JoinHandle<()>>,
    processor: JoinHandle<()>,
}

impl Sensors {
    /// Starts the enabled sensors of `cfg` (None when there are none). Inside a tokio runtime.
    pub fn start(cfg: &AgentConfig, uplink: Arc<Uplink>) -> Result<Option<Self>, SensorError> {
        let sensors: Vec<SensorConfig> =
            cfg.sensors.iter().filter(|s| s.enabled).cloned().collect();
        if sensors.is_empty() {
            return Ok(None);
        }
        let engine = RuleEngine::new(RulesConfig {
            rules: cfg.sensor_rules.clone(),
            ..RulesConfig::default()
        })?;
        let rule_sensor: HashMap<String, String> = cfg
            .sensor_rules
            .iter()
            .filter_map(|r| match &r.kind {
                RuleKind::SensorThreshold(s) => Some((r.id.clone(), s.sensor.clone())),
                _ => None,
            })
            .collect();
        let (tx, rx) = mpsc::channel(CHANNEL);
        let (stop, stop_rx) = watch::channel(false);
        let dropped = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut sources = Vec::new();

        let mqtt: Vec<(usize, SensorConfig)> = sensors
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind == SensorKind::Mqtt)
            .map(|(i, s)| (i, s.clone()))
            .collect();
        if !mqtt.is_empty() {
            let (host, port) = cfg.sensor_mqtt.host_port().map_err(SensorError::Broker)?;
            let mut opts = MqttOptions::new(
                cfg.sensor_mqtt
                    .client_id
                    .clone()
                    .unwrap_or_else(|| format!("{}-sensors", cfg.agent.device)),
                host,
                port,
            );
            opts.set_keep_alive(Duration::from_secs(cfg.sensor_mqtt.keep_alive_s.max(5)));
            // Oversized messages are refused in `decode`; a bigger limit here keeps one broken
            // device from making the client drop its connection.
            opts.set_max_packet_size(1024 * 1024, 64 * 1024);
            if let (Some(u), Some(p)) = (&cfg.sensor_mqtt.username, &cfg.sensor_mqtt.password) {
                opts.set_credentials(u, p);
            }
            let src = MqttSource {
                broker: cfg.sensor_mqtt.broker.clone(),
                sensors: mqtt,
                tx: tx.clone(),
                dropped: dropped.clone(),
            };
            sources.push(tokio::spawn(src.run(opts, stop_rx.clone())));
        }
        for (i, s) in sensors.iter().enumerate() {
            if s.kind == SensorKind::Simulated {
                sources.push(tokio::spawn(simulate(
                    i,
                    s.clone(),
                    started,
                    tx.clone(),
                    dropped.clone(),
                    stop_rx.clone(),
                )));
            }
        }
        drop(tx);
        tracing::info!(
            sensors = sensors.len(),
            rules = cfg.sensor_rules.len(),
            "sensors started"
        );
        let p = Processor {
            site: cfg.agent.site.clone(),
            device: cfg.agent.device.clone(),
            sensors: sensors.into_iter().map(SensorRt::new).collect(),
            engine,
            rule_sensor,
            uplink,
            dropped,
            status_every: crate::pipeline::health_interval(),
        };
        let processor = tokio::spawn(p.run(rx, stop_rx));
        Ok(Some(Sensors {
            stop,
            sources,
            processor,
        }))
    }

    /// Stops the sources, then lets the processor end open problems, send the last telemetry
    /// windows and status (bounded).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for s in self.sources {
            let _ = tokio::time::timeout(Duration::from_secs(2), s).await;
        }
        if tokio::time::timeout(Duration::from_secs(15), self.processor)
            .await
            .is_err()
        {
            tracing::warn!("sensor processor did not finish within 15 s");
        }
    }
}

/// Hands a message to the processor without waiting; counts it when the channel is full.
fn offer(tx: &mpsc::Sender<Msg>, msg: Msg, dropped: &AtomicU64) {
    if tx.try_send(msg).is_err() {
        let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!("sensor processor is behind: {n} sensor messages dropped so far");
        }
    }
}

struct MqttSource {
    broker: String,
    sensors: Vec<(usize, SensorConfig)>,
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl MqttSource {
    async fn run(self, opts: MqttOptions, mut stop: watch::Receiver<bool>) {
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let mut filters: Vec<String> = self
            .sensors
            .iter()
            .filter_map(|(_, s)| s.topic.clone())
            .collect();
        filters.sort();
        filters.dedup();
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), 77);
        let mut connected = false;
        let mut failures = 0u64;
        loop {
            let polled = tokio::select! {
                r = eventloop.poll() => r,
                _ = stop.changed() => break,
            };
            match polled {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    failures = 0;
                    backoff.reset();
                    tracing::info!(broker = %self.broker, topics = ?filters, "sensor MQTT connected");
                    // Clean session: subscribe again on every connect. Never wait inside the
                    // loop that drains the client's queue.
                    let subs = filters.iter().map(|f| rumqttc::SubscribeFilter {
                        path: f.clone(),
                        qos: QoS::AtLeastOnce,
                    });
                    if let Err(e) = client.try_subscribe_many(subs) {
                        tracing::warn!(broker = %self.broker, "cannot subscribe sensor topics: {e}");
                    }
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    let now = csb_wire::now_ms();
                    for (idx, cfg) in &self.sensors {
                        let matches = cfg
                            .topic
                            .as_deref()
                            .is_some_and(|f| rumqttc::matches(&p.topic, f));
                        if !matches {
                            continue;
                        }
                        let d = decode(*idx, cfg, &p.topic, &p.payload, now);
                        if !d.problems.is_empty() {
                            let msg = Msg::Problems {
                                sensor: *idx,
                                problems: d.problems,
                            };
                            offer(&self.tx, msg, &self.dropped);
                        }
                        if let Some(r) = d.reading {
                            offer(&self.tx, Msg::Reading(r), &self.dropped);
                        }
                    }
                }
                Ok(MqttEvent::Incoming(Packet::SubAck(a))) => {
                    let refused = a
                        .return_codes
                        .iter()
                        .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                        .count();
                    if refused > 0 {
                        tracing::error!(broker = %self.broker,
                            "sensor MQTT broker refused {refused} of the sensor topic subscriptions");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    failures += 1;
                    if connected || failures == 1 {
                        tracing::warn!(broker = %self.broker,
                            "sensor MQTT connection lost or refused: {e}; retrying with back-off");
                    }
                    connected = false;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), client.disconnect()).await;
    }
}

/// Stable per-sensor seed (FNV-1a of the id): the same demo curve every run.
fn seed(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

async fn simulate(
    idx: usize,
    cfg: SensorConfig,
    started: Instant,
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = Rng::seeded(seed(&cfg.id));
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let t = started.elapsed().as_secs_f64();
        let values = cfg
            .simulate
            .iter()
            .map(|(m, w)| (m.clone(), w.clean(t) + w.noise * (2.0 * rng.unit() - 1.0)))
            .collect();
        let r = Reading {
            sensor: idx,
            ts_ms: csb_wire::now_ms(),
            values,
        };
        offer(&tx, Msg::Reading(r), &dropped);
    }
}

struct SensorRt {
    cfg: SensorConfig,
    window: Window,
    readings: u64,
    errors: u64,
    last_error: Option<String>,
    last_reading: Option<Instant>,
    last_warn: Option<Instant>,
    suppressed: u64,
}

impl SensorRt {
    fn new(cfg: SensorConfig) -> Self {
        SensorRt {
            window: Window::new(
                (cfg.telemetry_interval_s * 1000.0).round() as i64,
                &cfg.telemetry_stats,
            ),
            cfg,
            readings: 0,
            errors: 0,
            last_error: None,
            last_reading: None,
            last_warn: None,
            suppressed: 0,
        }
    }

    fn status(&self) -> SensorStatus {
        let age = self.last_reading.map(|t| t.elapsed());
        let state = match age {
            None => SensorState::Waiting,
            Some(a) if a.as_secs_f64() > self.cfg.silent_after_s => SensorState::Silent,
            Some(_) => SensorState::Reporting,
        };
        SensorStatus {
            id: self.cfg.id.clone(),
            state,
            last_reading_age_ms: age.map(|a| a.as_millis() as u64),
            readings_total: self.readings,
            errors_total: self.errors,
            last_error: self.last_error.clone(),
        }
    }

    /// Records a bad message; logs at most once per `WARN_EVERY` per sensor.
    fn problems(&mut self, problems: Vec<String>) {
        self.errors += 1;
        let text = problems.join("; ");
        if self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            if self.suppressed > 0 {
                tracing::warn!("{text} (and {} more bad messages)", self.suppressed);
            } else {
                tracing::warn!("{text}");
            }
            self.last_warn = Some(Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        self.last_error = Some(text);
    }
}

struct Processor {
    site: String,
    device: String,
    sensors: Vec<SensorRt>,
    engine: RuleEngine,
    /// Rule id → the sensor it watches (the source of its events).
    rule_sensor: HashMap<String, String>,
    uplink: Arc<Uplink>,
    dropped: Arc<AtomicU64>,
    status_every: Duration,
}

impl Processor {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, stop: watch::Receiver<bool>) {
        let mut stop_changed = stop.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_status: Option<Instant> = None;
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => self.handle(m, &stop).await,
                    None => break,
                },
                _ = tick.tick() => {
                    let now = csb_wire::now_ms();
                    let due: Vec<(usize, Summary)> = self
                        .sensors
                        .iter_mut()
                        .enumerate()
                        .filter_map(|(i, s)| s.window.close_if_due(now, WINDOW_GRACE_MS).map(|w| (i, w)))
                        .collect();
                    for (i, w) in due {
                        self.send_telemetry(i, w, &stop).await;
                    }
                    if last_status.is_none_or(|t| t.elapsed() >= self.status_every) {
                        self.send_status().await;
                        last_status = Some(Instant::now());
                    }
                }
                _ = stop_changed.changed() => break,
            }
        }
        // Readings already received still count; then end what is open, like cameras do.
        while let Ok(m) = rx.try_recv() {
            self.handle(m, &stop).await;
        }
        let ends = self.engine.finish(csb_wire::now_ms());
        self.send_rule_events(ends, &stop).await;
        for i in 0..self.sensors.len() {
            if let Some(w) = self.sensors[i].window.take() {
                self.send_telemetry(i, w, &stop).await;
            }
        }
        self.send_status().await;
    }

    async fn handle(&mut self, m: Msg, stop: &watch::Receiver<bool>) {
        match m {
            Msg::Problems { sensor, problems } => {
                if let Some(s) = self.sensors.get_mut(sensor) {
                    s.problems(problems);
                }
            }
            Msg::Reading(r) => {
                let Some(s) = self.sensors.get_mut(r.sensor) else {
                    return;
                };
                s.readings += 1;
                s.last_reading = Some(Instant::now());
                let closed = s.window.add(r.ts_ms, &r.values);
                let id = s.cfg.id.clone();
                let mut outputs = Vec::new();
                for (metric, v) in &r.values {
                    outputs.extend(self.engine.on_sensor(&id, metric, r.ts_ms, *v));
                }
                self.send_rule_events(outputs, stop).await;
                if let Some(w) = closed {
                    self.send_telemetry(r.sensor, w, stop).await;
                }
            }
        }
    }

    async fn send_rule_events(&self, outputs: Vec<RuleOutput>, stop: &watch::Receiver<bool>) {
        for o in outputs {
            let Some(sensor) = self.rule_sensor.get(&o.info.rule) else {
                continue;
            };
            let ev = Event {
                v: SCHEMA_VERSION,
                id: Ulid::new(),
                site: self.site.clone(),
                device: self.device.clone(),
                camera: sensor.clone(),
                kind: EventKind::Rule,
                ts_ms: o.info.started_ms + o.info.duration_ms,
                frame: None,
                model: None,
                objects: o.objects,
                rule: Some(o.info),
            };
            tracing::info!(sensor = %sensor, rule = ?ev.rule.as_ref().map(|r| (&r.rule, r.phase, r.value)),
                "sensor rule event");
            deliver("sensor event", || self.uplink.publish_event(&ev), stop).await;
        }
    }

    async fn send_telemetry(&self, i: usize, w: Summary, stop: &watch::Receiver<bool>) {
        let t = Telemetry {
            v: SCHEMA_VERSION,
            id: Ulid::new(),
            site: self.site.clone(),
            device: self.device.clone(),
            source: self.sensors[i].cfg.id.clone(),
            ts_ms: w.ts_ms,
            metrics: w.metrics,
        };
        deliver(
            "sensor telemetry",
            || self.uplink.publish_telemetry(&t),
            stop,
        )
        .await;
    }

    /// Sensor health into the retained status; a snapshot, so skipped while the uplink is full.
    async fn send_status(&self) {
        let statuses = self.sensors.iter().map(SensorRt::status).collect();
        let res =
            tokio::time::timeout(Duration::from_secs(1), self.uplink.set_sensors(statuses)).await;
        if !matches!(res, Ok(Ok(()))) {
            tracing::debug!("sensor status skipped: uplink busy or closed");
        }
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            let t = Telemetry {
                v: SCHEMA_VERSION,
                id: Ulid::new(),
                site: self.site.clone(),
                device: self.device.clone(),
                source: "agent".into(),
                ts_ms: csb_wire::now_ms(),
                metrics: BTreeMap::from([("sensors.dropped_total".into(), dropped as f64)]),
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), self.uplink.publish_telemetry(&t))
                .await;
        }
    }
}

/// Queues one message on the uplink. While its queue is full (broker unreachable) this waits in
/// 1 s steps — back-pressure reaches the sources, which then drop and count — but gives up once
/// the agent is stopping, logging the loss (until the durable outbox keeps it).
async fn deliver<F, Fut>(what: &str, mut publish: F, stop: &watch::Receiver<bool>) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), UplinkError>>,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(1), publish()).await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => {
                tracing::error!("{what} not delivered: {e}");
                return false;
            }
            Err(_) if *stop.borrow() => {
                tracing::error!("uplink unavailable while stopping: {what} not delivered");
                return false;
            }
            Err(_) => {}
        }
    }
}
