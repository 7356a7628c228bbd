//! `cloud-hub bench-fleet`: a county's fleet of gateways against a real `cloud-hub serve`
//! process on its defaults: every device its own MQTT connection, publishing events at a
//! steady rate, dropping and reconnecting at random, as gateways do all day (power cuts, 4G
//! handovers).
//!
//! The devices are raw MQTT 3.1.1 clients in this process (rumqttc's packet codec, no client
//! event loop), each behaving like an edge outbox: events stay until the hub's application ack
//! names them, are resent after a reconnect or when no ack came for [`RESEND_AFTER`], and the
//! hub must store each exactly once. A dropping device does one of three things, in turn: closes
//! its socket without DISCONNECT (its will is published), goes half-open (the old socket stays
//! open and silent while it reconnects with the same client id: a takeover), or says DISCONNECT.
//!
//! Reported: connects and refusals; events published, stored, lost, duplicated (checked id by
//! id in the hub's store after it stopped); publish → PUBACK and publish → application ack
//! p50/p99/max; the hub's RSS per connected device and its growth after the first minute
//! (sampled from /proc), with the part the event store's in-memory index accounts for shown
//! apart; the hub's and this generator's CPU.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use csb_wire::{Ack, Channel, DeviceState, DeviceStatus, Topic, SCHEMA_VERSION};
use rumqttc::mqttbytes::v4::{Connect, LastWill, Packet, PubAck, Publish, Subscribe};
use rumqttc::mqttbytes::QoS;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ulid::Ulid;

use crate::bench::kit::{percentile, proc_stats, process_cpu, HubProcess, XorShift};
use crate::bench::BenchError;
use crate::storage::store::{SledStore, Store};

/// A device resends what is unacked after this long without its ack.
pub const RESEND_AFTER: Duration = Duration::from_secs(10);
/// Site of the fleet's devices.
const SITE: &str = "bench";
/// How long the fleet may take to have every event acked after publishing stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);
/// Between samples of the hub's RSS and CPU.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Largest packet a device reads (an ack of 256 ids is ~7.5 KB).
const MAX_PACKET: usize = 64 * 1024;
/// Client keep-alive (s): a half-open session the hub would only notice after 1.5× this.
const KEEP_ALIVE_S: u16 = 60;

/// Also the `cloud-hub bench-fleet` options (field docs are its help).
#[derive(Debug, Clone, clap::Args)]
pub struct FleetOptions {
    /// Devices, each its own MQTT connection.
    #[arg(long, default_value_t = FleetOptions::default().devices)]
    pub devices: usize,
    /// Seconds of steady publishing after the connect ramp.
    #[arg(long, default_value_t = FleetOptions::default().seconds)]
    pub seconds: u64,
    /// Events per second per device.
    #[arg(long, default_value_t = FleetOptions::default().rate)]
    pub rate: f64,
    /// Percent of devices dropping their connection per minute (then reconnecting after
    /// 0.5–3 s).
    #[arg(long, default_value_t = FleetOptions::default().drop_percent_per_min)]
    pub drop_percent_per_min: f64,
    /// The hub's `mqtt_max_connections` (default: `devices`, or the hub's default of 1000 if
    /// that is larger).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// The `cloud-hub` binary to start (default: this one).
    #[arg(long)]
    pub hub: Option<PathBuf>,
    /// Directory for the hub's throw-away data (a fresh folder inside, removed afterwards;
    /// default: the system temp dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            devices: 1000,
            seconds: 300,
            rate: 1.0,
            drop_percent_per_min: 1.0,
            max_connections: None,
            hub: None,
            data_dir: None,
        }
    }
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Millis {
    pub samples: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Millis {
    fn of(mut us: Vec<u32>) -> Millis {
        us.sort_unstable();
        let ms: Vec<f64> = us.iter().map(|u| f64::from(*u) / 1000.0).collect();
        Millis {
            samples: ms.len(),
            p50: percentile(&ms, 0.5),
            p99: percentile(&ms, 0.99),
            max: ms.last().copied().unwrap_or(0.0),
        }
    }
}

/// One sample of the hub process.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub rss_bytes: u64,
    pub connected: i64,
    /// Events the hub stores, and the bytes its in-memory indexes hold (its health).
    pub stored_events: u64,
    pub index_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub devices: usize,
    pub max_connections: usize,
    pub seconds: u64,
    pub rate: f64,
    pub drop_percent_per_min: f64,
    pub cpus: usize,
    /// Devices connected at once, at most.
    pub peak_connected: i64,
    pub connects: u64,
    /// CONNACK return codes other than 0, by code, and connections closed before one.
    pub refused_by_code: HashMap<u8, u64>,
    pub closed_before_connack: u64,
    pub drops_abrupt: u64,
    pub drops_half_open: u64,
    pub drops_clean: u64,
    /// The hub's own counters at the end (takeovers, wills, refusals).
    pub hub_mqtt: serde_json::Value,
    pub published: u64,
    pub resent: u64,
    pub stored: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub puback: Millis,
    pub app_ack: Millis,
    pub idle_rss_bytes: u64,
    /// RSS one minute after the last device connected, and at the end of publishing.
    pub rss_at_1min_bytes: u64,
    pub rss_end_bytes: u64,
    pub peak_rss_bytes: u64,
    /// (RSS at 1 min − idle RSS) ÷ devices connected then.
    pub rss_per_device_bytes: f64,
    /// RSS growth from 1 min to the end, as a fraction of the 1-min RSS.
    pub rss_growth: f64,
    /// The same with the growth of the store's in-memory indexes (as the hub reports them)
    /// taken out: what the broker and everything else grew by.
    pub rss_growth_without_index: f64,
    /// The indexes' bytes per stored event at the end.
    pub index_bytes_per_event: f64,
    /// CPU as a percentage of one core over the publishing phase.
    pub hub_cpu_percent: f64,
    pub generator_cpu_percent: f64,
    pub samples: Vec<Sample>,
}

impl FleetReport {
    pub fn text(&self) -> String {
        let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut refused: Vec<_> = self.refused_by_code.iter().collect();
        refused.sort();
        let goal = |ok: bool| if ok { "met" } else { "NOT met" };
        format!(
            "fleet: {} devices × {} event/s for {} s, {} % dropping per minute; mqtt_max_connections {}; {} CPUs\n\
             connections: peak {} connected; {} connects; refused {:?}; {} closed before CONNACK\n\
             drops: {} abrupt, {} half-open (taken over), {} clean; hub: {}\n\
             events: published {} ({} resends), stored {}, lost {}, duplicated {}\n\
             publish → PUBACK : p50 {:.2} ms  p99 {:.2} ms  max {:.1} ms  ({} samples)\n\
             publish → app ack: p50 {:.2} ms  p99 {:.2} ms  max {:.1} ms  ({} samples)\n\
             hub RSS: idle {:.1} MiB, 1 min after connect {:.1} MiB, end {:.1} MiB, peak {:.1} MiB\n\
             per connected device: {:.1} KB; growth after the first minute {:+.1} % ({:+.1} % without the \
             event index at {:.0} B/event)\n\
             CPU: hub {:.1} % of one core, generator {:.1} %\n\
             goals: 0 lost {}, 0 duplicated {}, app-ack p99 ≤ 10 ms {}, ≤ 100 KB per device {}, \
             RSS growth ≤ 10 % {}\n",
            self.devices,
            self.rate,
            self.seconds,
            self.drop_percent_per_min,
            self.max_connections,
            self.cpus,
            self.peak_connected,
            self.connects,
            refused,
            self.closed_before_connack,
            self.drops_abrupt,
            self.drops_half_open,
            self.drops_clean,
            serde_json::json!({
                "takeovers": self.hub_mqtt["takeovers"],
                "wills_published": self.hub_mqtt["wills_published"],
                "refused": self.hub_mqtt["refused"],
            }),
            self.published,
            self.resent,
            self.stored,
            self.lost,
            self.duplicated,
            self.puback.p50,
            self.puback.p99,
            self.puback.max,
            self.puback.samples,
            self.app_ack.p50,
            self.app_ack.p99,
            self.app_ack.max,
            self.app_ack.samples,
            mb(self.idle_rss_bytes),
            mb(self.rss_at_1min_bytes),
            mb(self.rss_end_bytes),
            mb(self.peak_rss_bytes),
            self.rss_per_device_bytes / 1000.0,
            self.rss_growth * 100.0,
            self.rss_growth_without_index * 100.0,
            self.index_bytes_per_event,
            self.hub_cpu_percent,
            self.generator_cpu_percent,
            goal(self.lost == 0),
            goal(self.duplicated == 0),
            goal(self.app_ack.p99 <= 10.0),
            goal(self.rss_per_device_bytes <= 100_000.0),
            goal(self.rss_growth <= 0.10),
        )
    }
}

fn err(reason: impl Into<String>) -> BenchError {
    BenchError::Phase {
        phase: "fleet",
        reason: reason.into(),
    }
}

async fn hub_health(http: &str) -> Option<serde_json::Value> {
    let r = reqwest::get(format!("{http}/api/v1/health")).await.ok()?;
    r.json().await.ok()
}

/// What all devices share.
struct Fleet {
    addr: SocketAddr,
    rate: f64,
    drop_per_tick: f64,
    /// Publishing stops when set; devices then drain and leave.
    stop: AtomicBool,
    connected: AtomicI64,
    peak_connected: AtomicI64,
    connects: AtomicU64,
    refused: Mutex<HashMap<u8, u64>>,
    closed_before_connack: AtomicU64,
    drops: [AtomicU64; 3],
    resent: AtomicU64,
}

/// One device's results.
#[derive(Default)]
struct DeviceResult {
    published: Vec<Ulid>,
    puback_us: Vec<u32>,
    app_ack_us: Vec<u32>,
    /// Events never acked (the drain timed out).
    unacked: usize,
}

/// An event waiting for its ack, as an outbox keeps it.
struct Pending {
    payload: Vec<u8>,
    /// When it was last sent (or queued, while away).
    at: Instant,
    /// Sent at least once.
    sent: bool,
    /// Its ack latency counts: it was sent once, on a live connection, not resent.
    counts: bool,
}

/// One device's connection.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

struct Device {
    k: usize,
    client_id: String,
    event_topic: String,
    ack_topic: String,
    status_topic: String,
    /// Events not acked yet.
    unacked: HashMap<Ulid, Pending>,
    /// PUBACK waits of first sends: packet id → sent at.
    pubacks: HashMap<u16, Instant>,
    next_pkid: u16,
    seq: u64,
    rng: XorShift,
    result: DeviceResult,
}

fn encode(p: Packet, out: &mut Vec<u8>) {
    let mut b = BytesMut::new();
    // Our own packets are far below the limit.
    let _ = p.write(&mut b, MAX_PACKET);
    out.extend_from_slice(&b);
}

impl Device {
    fn new(k: usize) -> Result<Device, BenchError> {
        let device = format!("fleet-{k:05}");
        let topic = |c| {
            Topic::new(SITE, &device, c)
                .map(|t| t.to_string())
                .map_err(|e| err(e.to_string()))
        };
        Ok(Device {
            k,
            client_id: format!("edge-{device}"),
            event_topic: topic(Channel::Event)?,
            ack_topic: topic(Channel::Ack)?,
            status_topic: topic(Channel::Status)?,
            unacked: HashMap::new(),
            pubacks: HashMap::new(),
            next_pkid: 1,
            seq: 0,
            rng: XorShift(0x9e37_79b9_7f4a_7c15 ^ (k as u64 + 1).wrapping_mul(0x2545_f491)),
            result: DeviceResult::default(),
        })
    }

    fn device(&self) -> String {
        format!("fleet-{:05}", self.k)
    }

    fn status(&self, state: DeviceState) -> Vec<u8> {
        let s = DeviceStatus {
            v: SCHEMA_VERSION,
            site: SITE.into(),
            device: self.device(),
            ts_ms: csb_wire::now_ms(),
            state,
            agent_version: Some("bench-fleet".into()),
            cameras: vec![],
            sensors: vec![],
            outbox: None,
            config_version: None,
            model: None,
        };
        serde_json::to_vec(&s).unwrap_or_default()
    }

    fn pkid(&mut self) -> u16 {
        let p = self.next_pkid;
        self.next_pkid = if p == u16::MAX { 1 } else { p + 1 };
        p
    }

    /// CONNECT (with the offline will), CONNACK, SUBSCRIBE to acks, SUBACK, online status.
    async fn connect(&mut self, fleet: &Fleet) -> Result<Conn, Option<u8>> {
        let mut stream = TcpStream::connect(fleet.addr).await.map_err(|_| None)?;
        let _ = stream.set_nodelay(true);
        let mut c = Connect::new(self.client_id.clone());
        c.keep_alive = KEEP_ALIVE_S;
        c.last_will = Some(LastWill::new(
            self.status_topic.clone(),
            self.status(DeviceState::Offline),
            QoS::AtLeastOnce,
            true,
        ));
        let mut out = Vec::with_capacity(512);
        encode(Packet::Connect(c), &mut out);
        let mut sub = Subscribe::new(self.ack_topic.clone(), QoS::AtLeastOnce);
        sub.pkid = self.pkid();
        encode(Packet::Subscribe(sub), &mut out);
        stream.write_all(&out).await.map_err(|_| None)?;
        let mut conn = Conn {
            stream,
            buf: BytesMut::with_capacity(4096),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut connacked = false;
        loop {
            let p = match read_packet(&mut conn, deadline).await {
                Some(p) => p,
                None if connacked => return Err(Some(255)),
                None => {
                    fleet.closed_before_connack.fetch_add(1, Relaxed);
                    return Err(None);
                }
            };
            match p {
                Packet::ConnAck(a) => {
                    let code = connack_code(a.code);
                    if code != 0 {
                        *fleet
                            .refused
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(code)
                            .or_default() += 1;
                        return Err(Some(code));
                    }
                    connacked = true;
                }
                Packet::SubAck(_) => break,
                _ => {}
            }
        }
        fleet.connects.fetch_add(1, Relaxed);
        let mut online = Publish::new(
            self.status_topic.clone(),
            QoS::AtLeastOnce,
            self.status(DeviceState::Online),
        );
        online.retain = true;
        online.pkid = self.pkid();
        let mut out = Vec::new();
        encode(Packet::Publish(online), &mut out);
        conn.stream.write_all(&out).await.map_err(|_| None)?;
        Ok(conn)
    }

    fn new_event(&mut self) -> (Ulid, Vec<u8>) {
        self.seq += 1;
        let mut e = crate::bench::ingest::bench_event(&self.device(), self.seq as usize);
        e.site = SITE.into();
        e.ts_ms = csb_wire::now_ms();
        let id = e.id;
        (id, serde_json::to_vec(&e).unwrap_or_default())
    }

    /// Publishes a new event at QoS 1 and keeps it until acked.
    fn publish_new(&mut self, id: Ulid, payload: Vec<u8>, out: &mut Vec<u8>) {
        let pkid = self.pkid();
        encode_publish(&self.event_topic, pkid, &payload, false, out);
        let at = Instant::now();
        self.pubacks.insert(pkid, at);
        self.unacked.insert(
            id,
            Pending {
                payload,
                at,
                sent: true,
                counts: true,
            },
        );
    }

    /// Keeps a new event while away; it goes out on reconnect.
    fn queue_new(&mut self, id: Ulid, payload: Vec<u8>) {
        let p = Pending {
            payload,
            at: Instant::now(),
            sent: false,
            counts: false,
        };
        self.unacked.insert(id, p);
    }

    /// Sends every unacked event (after a reconnect, or when acks stopped coming): what was
    /// queued while away for the first time (its latency counts from now), the rest again.
    fn send_unacked(&mut self, fleet: &Fleet, out: &mut Vec<u8>) {
        let now = Instant::now();
        let mut pkid = self.next_pkid;
        for p in self.unacked.values_mut() {
            if p.sent {
                fleet.resent.fetch_add(1, Relaxed);
                p.counts = false;
            } else {
                p.counts = true;
            }
            encode_publish(&self.event_topic, pkid, &p.payload, p.sent, out);
            pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
            p.sent = true;
            p.at = now;
        }
        self.next_pkid = pkid;
    }

    /// Handles what the hub sent; returns bytes to send back (PUBACKs of ack messages).
    fn on_packet(&mut self, p: Packet, out: &mut Vec<u8>) {
        let now = Instant::now();
        match p {
            Packet::PubAck(a) => {
                if let Some(at) = self.pubacks.remove(&a.pkid) {
                    self.result.puback_us.push(micros(now - at));
                }
            }
            Packet::Publish(p) => {
                if p.qos != QoS::AtMostOnce {
                    encode(Packet::PubAck(PubAck::new(p.pkid)), out);
                }
                if p.topic != self.ack_topic {
                    return;
                }
                if let Ok(ack) = csb_wire::decode::<Ack>(&p.payload) {
                    for id in ack.ids {
                        if let Some(p) = self.unacked.remove(&id) {
                            if p.counts {
                                self.result.app_ack_us.push(micros(now - p.at));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

fn encode_publish(topic: &str, pkid: u16, payload: &[u8], dup: bool, out: &mut Vec<u8>) {
    let mut p = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
    p.pkid = pkid;
    p.dup = dup;
    encode(Packet::Publish(p), out);
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

fn connack_code(c: rumqttc::ConnectReturnCode) -> u8 {
    use rumqttc::ConnectReturnCode as C;
    match c {
        C::Success => 0,
        C::RefusedProtocolVersion => 1,
        C::BadClientId => 2,
        C::ServiceUnavailable => 3,
        C::BadUserNamePassword => 4,
        C::NotAuthorized => 5,
    }
}

/// The next packet, `None` when the connection closed or the deadline passed.
async fn read_packet(c: &mut Conn, deadline: tokio::time::Instant) -> Option<Packet> {
    loop {
        match Packet::read(&mut c.buf, MAX_PACKET) {
            Ok(p) => return Some(p),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(_) => return None,
        }
        match tokio::time::timeout_at(deadline, c.stream.read_buf(&mut c.buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// How a device leaves on a drop.
#[derive(Clone, Copy)]
enum Drop_ {
    Abrupt = 0,
    HalfOpen = 1,
    Clean = 2,
}

/// One device: connect, publish every tick, drop now and then, drain when told to stop.
async fn run_device(k: usize, fleet: Arc<Fleet>, start_after: Duration) -> DeviceResult {
    let Ok(mut d) = Device::new(k) else {
        return DeviceResult::default();
    };
    tokio::time::sleep(start_after).await;
    let tick = Duration::from_secs_f64(1.0 / fleet.rate);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut half_open: Vec<TcpStream> = Vec::new();
    let mut drops = 0u64;
    let mut drain_deadline = None::<Instant>;
    'session: loop {
        let mut conn = match d.connect(&fleet).await {
            Ok(c) => c,
            Err(_) => {
                if fleet.stop.load(Relaxed) && d.unacked.is_empty() {
                    break;
                }
                let wait = d.rng.uniform(1.0, 3.0);
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                continue;
            }
        };
        // The takeover closed the old half-open socket by now.
        half_open.clear();
        let now = fleet.connected.fetch_add(1, Relaxed) + 1;
        fleet.peak_connected.fetch_max(now, Relaxed);
        let mut out = Vec::with_capacity(4096);
        d.send_unacked(&fleet, &mut out);
        let mut alive = conn.stream.write_all(&out).await.is_ok();
        while alive {
            out.clear();
            tokio::select! {
                r = conn.stream.read_buf(&mut conn.buf) => {
                    match r {
                        Ok(n) if n > 0 => {
                            loop {
                                match Packet::read(&mut conn.buf, MAX_PACKET) {
                                    Ok(p) => d.on_packet(p, &mut out),
                                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                                    Err(_) => { alive = false; break; }
                                }
                            }
                        }
                        _ => alive = false,
                    }
                }
                _ = ticker.tick() => {
                    let stopping = fleet.stop.load(Relaxed);
                    if stopping {
                        let deadline = *drain_deadline.get_or_insert(Instant::now() + DRAIN_TIMEOUT);
                        if d.unacked.is_empty() || Instant::now() > deadline {
                            let mut bye = Vec::new();
                            encode(Packet::Disconnect, &mut bye);
                            let _ = conn.stream.write_all(&bye).await;
                            fleet.connected.fetch_sub(1, Relaxed);
                            break 'session;
                        }
                    } else {
                        let (id, payload) = d.new_event();
                        d.result.published.push(id);
                        d.publish_new(id, payload, &mut out);
                    }
                    // No ack for a while: resend, as an outbox would.
                    if d.unacked.values().any(|p| p.at.elapsed() > RESEND_AFTER) {
                        d.send_unacked(&fleet, &mut out);
                    }
                    if !stopping && d.rng.uniform(0.0, 1.0) < fleet.drop_per_tick {
                        let how = [Drop_::Abrupt, Drop_::HalfOpen, Drop_::Clean][(k as u64 + drops) as usize % 3];
                        drops += 1;
                        fleet.drops[how as usize].fetch_add(1, Relaxed);
                        let _ = conn.stream.write_all(&out).await;
                        match how {
                            Drop_::Abrupt => drop(conn),
                            Drop_::HalfOpen => half_open.push(conn.stream),
                            Drop_::Clean => {
                                let mut bye = Vec::new();
                                encode(Packet::Disconnect, &mut bye);
                                let _ = conn.stream.write_all(&bye).await;
                            }
                        }
                        fleet.connected.fetch_sub(1, Relaxed);
                        // Events keep coming while away: they wait in the "outbox".
                        let away = Duration::from_secs_f64(d.rng.uniform(0.5, 3.0));
                        let back = tokio::time::Instant::now() + away;
                        while tokio::time::Instant::now() < back {
                            tokio::select! {
                                _ = tokio::time::sleep_until(back) => {}
                                _ = ticker.tick() => {
                                    let (id, payload) = d.new_event();
                                    d.result.published.push(id);
                                    d.queue_new(id, payload);
                                }
                            }
                        }
                        continue 'session;
                    }
                }
            }
            if !out.is_empty() && conn.stream.write_all(&out).await.is_err() {
                alive = false;
            }
        }
        fleet.connected.fetch_sub(1, Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    d.result.unacked = d.unacked.len();
    d.result
}

/// Runs the fleet against a hub it starts, then checks every event in the hub's store.
pub async fn run(opts: &FleetOptions) -> Result<FleetReport, BenchError> {
    if opts.devices == 0 || opts.seconds == 0 || opts.rate <= 0.0 {
        return Err(BenchError::Option("devices, seconds and rate"));
    }
    let max_connections = opts.max_connections.unwrap_or(
        opts.devices
            .max(crate::HubConfig::default().mqtt_max_connections),
    );
    let exe = match &opts.hub {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| err(format!("own executable: {e}")))?,
    };
    let base = opts.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("csb-bench-fleet-{}", Ulid::new()));
    std::fs::create_dir_all(&dir).map_err(|cause| BenchError::Dir {
        path: dir.clone(),
        cause,
    })?;
    let result = run_in(opts, &exe, &dir, max_connections).await;
    if result.is_ok() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove bench data");
        }
    } else {
        eprintln!(
            "bench-fleet: the hub's data and log stay in {}",
            dir.display()
        );
    }
    result
}

async fn run_in(
    opts: &FleetOptions,
    exe: &Path,
    dir: &Path,
    max_connections: usize,
) -> Result<FleetReport, BenchError> {
    let hub = HubProcess::start(
        exe,
        dir,
        &dir.join("data"),
        &format!("mqtt_max_connections = {max_connections}\n"),
    )?;
    let pid = hub.pid();
    // Idle RSS: the hub started, nobody connected.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_rss, _) = proc_stats(pid).ok_or_else(|| err("cannot read the hub's /proc"))?;

    let tick_s = 1.0 / opts.rate;
    let fleet = Arc::new(Fleet {
        addr: hub.mqtt,
        rate: opts.rate,
        drop_per_tick: opts.drop_percent_per_min / 100.0 * tick_s / 60.0,
        stop: AtomicBool::new(false),
        connected: AtomicI64::new(0),
        peak_connected: AtomicI64::new(0),
        connects: AtomicU64::new(0),
        refused: Mutex::new(HashMap::new()),
        closed_before_connack: AtomicU64::new(0),
        drops: Default::default(),
        resent: AtomicU64::new(0),
    });
    // Connect ramp: ~200 devices a second, as after a hub restart with jittered back-off.
    let ramp = Duration::from_secs_f64((opts.devices as f64 / 200.0).max(1.0));
    let mut tasks = Vec::with_capacity(opts.devices);
    let mut rng = XorShift(42);
    for k in 0..opts.devices {
        let after = ramp.mul_f64(k as f64 / opts.devices as f64)
            + Duration::from_secs_f64(rng.uniform(0.0, tick_s));
        tasks.push(tokio::spawn(run_device(k, fleet.clone(), after)));
    }
    tokio::time::sleep(ramp + Duration::from_secs(2)).await;

    let started = Instant::now();
    let (_, hub_cpu0) = proc_stats(pid).ok_or_else(|| err("hub /proc"))?;
    let own_cpu0 = process_cpu();
    let mut samples = Vec::new();
    let total = Duration::from_secs(opts.seconds);
    while started.elapsed() < total {
        tokio::time::sleep(SAMPLE_EVERY.min(total.saturating_sub(started.elapsed()))).await;
        let (rss, _) = proc_stats(pid).ok_or_else(|| err("the hub went away"))?;
        let storage = hub_health(&hub.http)
            .await
            .map(|h| h["storage"].clone())
            .unwrap_or_default();
        samples.push(Sample {
            t_s: started.elapsed().as_secs_f64(),
            rss_bytes: rss,
            connected: fleet.connected.load(Relaxed),
            stored_events: storage["events"].as_u64().unwrap_or(0),
            index_bytes: storage["index_bytes"].as_u64().unwrap_or(0),
        });
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (_, hub_cpu1) = proc_stats(pid).ok_or_else(|| err("hub /proc"))?;
    let own_cpu1 = process_cpu();
    let hub_mqtt = hub_health(&hub.http)
        .await
        .map(|h| h["mqtt"].clone())
        .unwrap_or_default();

    fleet.stop.store(true, Relaxed);
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(
            t.await
                .map_err(|e| err(format!("a device task failed: {e}")))?,
        );
    }
    let stored_by_health = hub_health(&hub.http)
        .await
        .and_then(|h| h["storage"]["events"].as_u64());
    hub.stop()?;

    // Every published id, looked up in the hub's store.
    let store = {
        let d = dir.join("data");
        tokio::task::spawn_blocking(move || SledStore::open(&d, 64))
            .await
            .map_err(|e| err(e.to_string()))??
    };
    let published: Vec<Ulid> = results
        .iter()
        .flat_map(|r| r.published.iter().copied())
        .collect();
    let mut lost = 0u64;
    for id in &published {
        if store.event(*id).await?.is_none() {
            lost += 1;
        }
    }
    let stored = store.stats().await?.events;
    let unique = published.len() as u64;
    let duplicated = stored.saturating_sub(unique - lost);
    tracing::debug!(?stored_by_health, stored, "events stored");

    // RSS: one minute in, and at the end; the index's share from its bytes per event.
    let at = |t: f64| {
        samples
            .iter()
            .find(|s| s.t_s >= t)
            .or(samples.last())
            .cloned()
    };
    let one_min = at(60.0).ok_or_else(|| err("no RSS samples"))?;
    let end = samples
        .last()
        .cloned()
        .ok_or_else(|| err("no RSS samples"))?;
    let index_per_event = 90.0;
    let grown = end.rss_bytes as f64 - one_min.rss_bytes as f64;
    let index_grown =
        (end.stored_events.saturating_sub(one_min.stored_events)) as f64 * index_per_event;
    let mut puback = Vec::new();
    let mut app_ack = Vec::new();
    for r in &mut results {
        puback.append(&mut r.puback_us);
        app_ack.append(&mut r.app_ack_us);
    }
    let refused = fleet
        .refused
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(FleetReport {
        devices: opts.devices,
        max_connections,
        seconds: opts.seconds,
        rate: opts.rate,
        drop_percent_per_min: opts.drop_percent_per_min,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        peak_connected: fleet.peak_connected.load(Relaxed),
        connects: fleet.connects.load(Relaxed),
        refused_by_code: refused,
        closed_before_connack: fleet.closed_before_connack.load(Relaxed),
        drops_abrupt: fleet.drops[0].load(Relaxed),
        drops_half_open: fleet.drops[1].load(Relaxed),
        drops_clean: fleet.drops[2].load(Relaxed),
        hub_mqtt,
        published: unique,
        resent: fleet.resent.load(Relaxed),
        stored,
        lost,
        duplicated,
        puback: Millis::of(puback),
        app_ack: Millis::of(app_ack),
        idle_rss_bytes: idle_rss,
        rss_at_1min_bytes: one_min.rss_bytes,
        rss_end_bytes: end.rss_bytes,
        peak_rss_bytes: samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0),
        rss_per_device_bytes: (one_min.rss_bytes as f64 - idle_rss as f64)
            / one_min.connected.max(1) as f64,
        rss_growth: grown / one_min.rss_bytes.max(1) as f64,
        rss_growth_without_index: (grown - index_grown) / one_min.rss_bytes.max(1) as f64,
        index_bytes_per_event: index_per_event,
        hub_cpu_percent: (hub_cpu1 - hub_cpu0).as_secs_f64() / elapsed * 100.0,
        generator_cpu_percent: (own_cpu1 - own_cpu0).as_secs_f64() / elapsed * 100.0,
        samples,
    })
}
