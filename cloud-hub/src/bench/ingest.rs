//! `cloud-hub bench-ingest`: what durable ingest costs next to the broker alone, measured side
//! by side in one run with the same publishers and payloads.
//!
//! - **raw**: the embedded broker ([`crate::ingest::mqtt::broker`]) and an in-process subscriber link that
//!   only counts, fed by K real MQTT/TCP clients (rumqttc, QoS 1) publishing N valid events
//!   through the hub's MQTT front, as devices do.
//! - **raw direct**: the same, with the clients connected straight to rumqttd's loopback port
//!   (the front's own login): what the front's splice costs is raw minus raw direct.
//! - **durable**: the whole hub ([`crate::Hub`]: broker, ingest, sled store in a fresh
//!   directory, acks) fed the same way. Each publisher behaves like an edge outbox: at most
//!   `window` events unacked, the rest wait for the hub's acks (which come only after the sled
//!   flush); unacked events are resent after [`RESEND_AFTER`] without progress. Timed until the
//!   last ack arrives, then the store's event count must equal N.
//!
//! The window is also what keeps the durable run honest: without one the publishers would
//! outrun the disk, and rumqttd drops the oldest commit-log segment of a slow reader. Below
//! ~1000 per publisher the run measures ack latency rather than throughput: an ack takes ~85 ms
//! to come back over a connection with Nagle's algorithm on both ends (rumqttd 0.20 does not set
//! TCP_NODELAY on accepted sockets; a client that sets it halves that).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csb_wire::{
    Ack, BBox, Channel, Detection, Event, EventKind, FrameInfo, ModelRef, Topic, SCHEMA_VERSION,
};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use ulid::Ulid;

use crate::bench::kit::process_cpu;
use crate::bench::BenchError;
use crate::config::HubConfig;
use crate::ingest::mqtt::broker::{Broker, BrokerSettings};
use crate::storage::store::{SledStore, Store};
use crate::{Hub, HubError, INGEST_FILTER};

/// A publisher resends its unacked events when no ack arrived for this long.
pub const RESEND_AFTER: Duration = Duration::from_secs(5);
/// Give up on a phase after this long.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
/// Site of the benchmark's publishers.
const SITE: &str = "bench";
/// 2026-09-21, a plausible event time.
const T0: i64 = 1_790_000_000_000;

/// Also the `cloud-hub bench-ingest` options (field docs are its help).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Events published in each phase (N).
    #[arg(long, default_value_t = BenchOptions::default().events)]
    pub events: usize,
    /// MQTT publisher connections (K), each its own device.
    #[arg(long, default_value_t = BenchOptions::default().publishers)]
    pub publishers: usize,
    /// Unacked events per publisher in the durable phase (like an edge outbox's window).
    #[arg(long, default_value_t = BenchOptions::default().window)]
    pub window: usize,
    /// Directory for the durable phase's throw-away store (a fresh directory inside, removed
    /// afterwards; default: the system temp dir). Put it on the disk the hub will use: the
    /// disk decides the flush cost.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Rounds of raw then durable; the median round is the result, so one burst of noise from
    /// elsewhere on the machine does not decide it (on a 2-CPU VM single rounds spread by up
    /// to ±0.1 around their median ratio, mostly as the raw phase's CPU time per event swings
    /// by ±20 % from round to round; over 7 rounds the median varies by about ±0.03).
    #[arg(long, default_value_t = BenchOptions::default().rounds)]
    pub rounds: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            events: 200_000,
            publishers: 4,
            window: 2000,
            data_dir: None,
            rounds: 7,
        }
    }
}

fn phase_err(phase: &'static str, reason: impl Into<String>) -> BenchError {
    BenchError::Phase {
        phase,
        reason: reason.into(),
    }
}

/// One phase's result.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub events: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    /// CPU time of the whole process (publishers, broker, hub) per event over the phase: what
    /// each event costs whether or not the run was held up waiting.
    pub cpu_us_per_event: f64,
    /// CPUs kept busy on average (CPU time ÷ wall time): below the machine's count, the phase
    /// waited (on the disk, on acks) rather than computed.
    pub cpus_busy: f64,
}

/// Durable-phase extras.
#[derive(Debug, Clone, Serialize)]
pub struct DurableReport {
    #[serde(flatten)]
    pub phase: PhaseReport,
    /// Events in the store afterwards (must equal `events`).
    pub stored: u64,
    pub batches: u64,
    pub mean_batch: f64,
    pub acks: u64,
    /// Events published again because their ack was late.
    pub resent: u64,
}

/// One raw phase (direct to rumqttd, then through the front) and the durable phase after them.
#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    pub raw_direct: PhaseReport,
    pub raw: PhaseReport,
    pub durable: DurableReport,
    /// durable events/s ÷ raw events/s.
    pub ratio: f64,
    /// raw CPU µs per event ÷ durable CPU µs per event: the same ratio in CPU time, which
    /// waiting (on another process, say) does not move.
    pub cpu_ratio: f64,
    /// CPU µs per event the MQTT front adds (raw − raw direct): its splice and framing.
    pub front_cpu_us_per_event: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub events: usize,
    pub publishers: usize,
    pub window: usize,
    pub payload_bytes: usize,
    pub cpus: usize,
    /// Every round, in the order run.
    pub rounds: Vec<RoundReport>,
    /// The round with the median ratio.
    pub median: RoundReport,
}

impl BenchReport {
    /// Plain-text summary.
    pub fn text(&self) -> String {
        let mut out = format!(
            "hub ingest: {} events of {} B, {} MQTT publishers (QoS 1, durable window {}), {} CPUs, \
             {} rounds of raw then durable\n",
            self.events,
            self.payload_bytes,
            self.publishers,
            self.window,
            self.cpus,
            self.rounds.len(),
        );
        for (i, r) in self.rounds.iter().enumerate() {
            out += &format!(
                "round {}: raw direct {:>8.0} events/s ({:>4.1} µs CPU each), front adds {:.1} µs CPU per event\n",
                i + 1,
                r.raw_direct.events_per_s,
                r.raw_direct.cpu_us_per_event,
                r.front_cpu_us_per_event,
            );
            out += &format!(
                "round {}: raw {:>8.0} events/s ({:>4.1} µs CPU each, {:.2} CPUs busy), durable {:>8.0} \
                 events/s ({:>4.1} µs CPU each, {:.2} CPUs busy; {} batches of {:.0}, {} acks, {} resent): \
                 ratio {:.2}, CPU ratio {:.2}\n",
                i + 1,
                r.raw.events_per_s,
                r.raw.cpu_us_per_event,
                r.raw.cpus_busy,
                r.durable.phase.events_per_s,
                r.durable.phase.cpu_us_per_event,
                r.durable.phase.cpus_busy,
                r.durable.batches,
                r.durable.mean_batch,
                r.durable.acks,
                r.durable.resent,
                r.ratio,
                r.cpu_ratio,
            );
        }
        let m = &self.median;
        out += &format!(
            "median round:\n\
             raw, straight to rumqttd: {:>8.0} events/s ({:.1} µs CPU each; the front adds {:.1})\n\
             raw broker pass-through : {:>8.0} events/s\n\
             durable ingest + acks   : {:>8.0} events/s (every event stored: {})\n\
             ratio durable / raw     : {:.2} (CPU per event, raw / durable: {:.2})\n",
            m.raw_direct.events_per_s,
            m.raw_direct.cpu_us_per_event,
            m.front_cpu_us_per_event,
            m.raw.events_per_s,
            m.durable.phase.events_per_s,
            m.durable.stored,
            m.ratio,
            m.cpu_ratio,
        );
        out
    }
}

/// Runs `rounds` rounds of both phases, raw first in each.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    for (name, v) in [
        ("events", opts.events),
        ("publishers", opts.publishers),
        ("window", opts.window),
        ("rounds", opts.rounds),
    ] {
        if v == 0 {
            return Err(BenchError::Option(name));
        }
    }
    let payloads = Arc::new(make_payloads(opts.events, opts.publishers));
    let payload_bytes = payloads
        .iter()
        .flat_map(|p| p.iter())
        .map(|(_, b)| b.len())
        .max()
        .unwrap_or(0);
    let mut rounds = Vec::with_capacity(opts.rounds);
    for _ in 0..opts.rounds {
        let raw_direct = raw_phase(opts, &payloads, true).await?;
        let raw = raw_phase(opts, &payloads, false).await?;
        let durable = durable_phase(opts, &payloads).await?;
        rounds.push(RoundReport {
            front_cpu_us_per_event: raw.cpu_us_per_event - raw_direct.cpu_us_per_event,
            raw_direct,
            ratio: durable.phase.events_per_s / raw.events_per_s,
            cpu_ratio: raw.cpu_us_per_event / durable.phase.cpu_us_per_event.max(1e-9),
            raw,
            durable,
        });
    }
    let mut by_ratio: Vec<&RoundReport> = rounds.iter().collect();
    by_ratio.sort_by(|a, b| a.ratio.total_cmp(&b.ratio));
    let median = by_ratio[by_ratio.len() / 2].clone();
    Ok(BenchReport {
        events: opts.events,
        publishers: opts.publishers,
        window: opts.window,
        payload_bytes,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rounds,
        median,
    })
}

/// Per publisher: (event id, payload). Built before any clock starts.
type Payloads = Vec<Vec<(Ulid, Vec<u8>)>>;

fn device(k: usize) -> String {
    format!("bench-gw-{k:02}")
}

fn make_payloads(n: usize, publishers: usize) -> Payloads {
    let mut out: Payloads = (0..publishers).map(|_| Vec::new()).collect();
    for i in 0..n {
        let k = i % publishers;
        let mut e = bench_event(&device(k), i);
        e.id = bench_id(e.id, i / publishers);
        // Serialising our own well-formed event cannot fail.
        let bytes = serde_json::to_vec(&e).unwrap_or_default();
        out[k].push((e.id, bytes));
    }
    out
}

/// `id` with `index` (the event's place in its publisher's share) in its low 32 bits: still
/// a unique, time-ordered ULID, and the publisher finds an acked event's place without a hash
/// table (harness cost the hub does not have; it was ~2 % of the durable phase's CPU).
fn bench_id(id: Ulid, index: usize) -> Ulid {
    let random = (id.random() & !0xffff_ffff) | (index as u128 & 0xffff_ffff);
    Ulid::from_parts(id.timestamp_ms(), random)
}

/// The place in its publisher's share that [`bench_id`] put into `id`.
fn bench_index(id: Ulid) -> usize {
    (id.random() & 0xffff_ffff) as usize
}

/// A typical detection event: two objects, frame and model.
pub(crate) fn bench_event(device: &str, i: usize) -> Event {
    let det = |class_id, label: &str, x: f32| Detection {
        class_id,
        label: label.into(),
        score: 0.81,
        bbox: BBox {
            x1: x,
            y1: 180.5,
            x2: x + 40.0,
            y2: 270.25,
        },
        track_id: None,
    };
    Event {
        v: SCHEMA_VERSION,
        id: Ulid::new(),
        site: SITE.into(),
        device: device.into(),
        camera: "cam-01".into(),
        kind: EventKind::Detection,
        ts_ms: T0 + i as i64,
        frame: Some(FrameInfo {
            seq: i as u64,
            pts_ms: Some(i as u64 * 40),
            width: 768,
            height: 576,
        }),
        model: Some(ModelRef {
            name: "yolox_nano".into(),
            sha256: "695e750a5d57".into(),
        }),
        objects: vec![det(0, "person", 100.0), det(2, "car", 400.0)],
        rule: None,
    }
}

fn hub_config(port: u16, data_dir: &Path) -> HubConfig {
    HubConfig {
        mqtt_addr: SocketAddr::from(([127, 0, 0, 1], port)),
        data_dir: data_dir.to_path_buf(),
        ..HubConfig::default()
    }
}

/// Publishers through the front, or (`direct`) straight to rumqttd.
async fn raw_phase(
    opts: &BenchOptions,
    payloads: &Arc<Payloads>,
    direct: bool,
) -> Result<PhaseReport, BenchError> {
    const PHASE: &str = "raw";
    let config = hub_config(0, Path::new("unused"));
    let settings = BrokerSettings {
        listen: config.mqtt_addr,
        max_payload_bytes: config.mqtt_max_payload_bytes,
        max_devices: config.mqtt_max_connections,
        max_inflight: config.mqtt_max_inflight,
        connect_timeout_ms: config.mqtt_connect_timeout_ms,
        auth: None,
        tls: None,
        probe_interval: std::time::Duration::from_millis(config.mqtt_probe_interval_ms),
        counters: Default::default(),
    };
    let (mut broker, mut link) =
        Broker::start(&settings, "bench-counter", &[INGEST_FILTER.to_string()]).await?;
    let target = if direct {
        let (addr, login) = broker.backend();
        Target {
            addr,
            login: Some((login.username, login.password)),
        }
    } else {
        Target {
            addr: broker.addr(),
            login: None,
        }
    };
    let n = opts.events;
    let (done_tx, done_rx) = oneshot::channel::<Instant>();
    let counter = tokio::spawn(async move {
        let mut seen = 0usize;
        while seen < n {
            match link.recv_batch(crate::storage::store::MAX_BATCH).await {
                Ok(b) => seen += b.len(),
                Err(_) => return seen,
            }
            if link.release().await.is_err() {
                return seen;
            }
        }
        let _ = done_tx.send(Instant::now());
        seen
    });
    let (start, cpu0) = (Instant::now(), process_cpu());
    let mut pubs = Vec::new();
    for k in 0..opts.publishers {
        pubs.push(tokio::spawn(publish_raw(
            target.clone(),
            k,
            payloads.clone(),
        )));
    }
    let (end, cpu) = match tokio::time::timeout(PHASE_TIMEOUT, done_rx).await {
        Ok(Ok(t)) => (t, process_cpu() - cpu0),
        _ => {
            counter.abort();
            broker.stop().await;
            return Err(phase_err(
                PHASE,
                "the counter did not see every event in time",
            ));
        }
    };
    for p in pubs {
        match p.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(phase_err(PHASE, e)),
            Err(e) => return Err(phase_err(PHASE, e.to_string())),
        }
    }
    let _ = counter.await;
    broker.stop().await;
    Ok(phase_report(n, end - start, cpu))
}

fn phase_report(n: usize, elapsed: Duration, cpu: Duration) -> PhaseReport {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    PhaseReport {
        events: n as u64,
        seconds,
        events_per_s: n as f64 / seconds,
        cpu_us_per_event: cpu.as_secs_f64() * 1e6 / n.max(1) as f64,
        cpus_busy: cpu.as_secs_f64() / seconds,
    }
}

/// Where raw publishers connect, and with what login.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    login: Option<(String, String)>,
}

fn mqtt_options(addr: SocketAddr, id: String) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    // Acks of many ids are bigger than rumqttc's 10 KiB default.
    o.set_max_packet_size(1024 * 1024, 1024 * 1024);
    o.set_inflight(HubConfig::default().mqtt_max_inflight as u16);
    o
}

/// Publishes one publisher's share at QoS 1 and returns once every PUBACK arrived.
async fn publish_raw(target: Target, k: usize, payloads: Arc<Payloads>) -> Result<(), String> {
    let mut opts = mqtt_options(target.addr, format!("bench-raw-{k}"));
    if let Some((user, pass)) = &target.login {
        opts.set_credentials(user, pass);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let n = payloads[k].len();
    let topic = Topic::new(SITE, device(k), Channel::Event)
        .map_err(|e| e.to_string())?
        .to_string();
    let sender = tokio::spawn({
        let client = client.clone();
        async move {
            for (_, p) in &payloads[k] {
                if client
                    .publish(topic.as_str(), QoS::AtLeastOnce, false, p.clone())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    let mut acked = 0;
    while acked < n {
        match eventloop.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => return Err(format!("publisher {k}: {e}")),
        }
    }
    let _ = sender.await;
    let _ = client.disconnect().await;
    Ok(())
}

async fn durable_phase(
    opts: &BenchOptions,
    payloads: &Arc<Payloads>,
) -> Result<DurableReport, BenchError> {
    const PHASE: &str = "durable";
    let base = opts.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("csb-bench-ingest-{}", Ulid::new()));
    let dir_err = |cause| BenchError::Dir {
        path: dir.clone(),
        cause,
    };
    std::fs::create_dir_all(&dir).map_err(dir_err)?;
    let result = durable_in(opts, payloads, &dir).await;
    // Remove the store either way: it is only benchmark data.
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove bench data");
    }
    result.map_err(|e| match e {
        BenchError::Phase { reason, .. } => phase_err(PHASE, reason),
        other => other,
    })
}

async fn durable_in(
    opts: &BenchOptions,
    payloads: &Arc<Payloads>,
    dir: &Path,
) -> Result<DurableReport, BenchError> {
    const PHASE: &str = "durable";
    let config = hub_config(0, dir);
    let store = {
        let (d, mb) = (config.data_dir.clone(), config.store_cache_mb);
        tokio::task::spawn_blocking(move || SledStore::open(&d, mb))
            .await
            .map_err(|e| phase_err(PHASE, e.to_string()))??
    };
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(HubError::HttpListener)?;
    let hub = Hub::start_with_store(config.clone(), http, store.clone()).await?;
    let mqtt = hub.mqtt_addr();
    let metrics = hub.metrics();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let hub_task = tokio::spawn(hub.run(async move {
        let _ = stop_rx.await;
    }));

    // Subscribe every publisher to its ack topic before the clock starts.
    let mut ready = Vec::new();
    for k in 0..opts.publishers {
        ready.push(DurablePublisher::connect(mqtt, k, opts.window).await?);
    }
    let (start, cpu0) = (Instant::now(), process_cpu());
    let mut tasks = Vec::new();
    for p in ready {
        tasks.push(tokio::spawn(p.run(payloads.clone())));
    }
    let mut resent = 0;
    let mut end = start;
    for t in tasks {
        match tokio::time::timeout(PHASE_TIMEOUT, t).await {
            Ok(Ok(Ok((done, r)))) => {
                resent += r;
                end = end.max(done);
            }
            Ok(Ok(Err(e))) => return Err(phase_err(PHASE, e)),
            Ok(Err(e)) => return Err(phase_err(PHASE, e.to_string())),
            Err(_) => return Err(phase_err(PHASE, "publishers were not all acked in time")),
        }
    }
    let cpu = process_cpu() - cpu0;
    let stored = store.stats().await?.events;
    let _ = stop_tx.send(());
    match hub_task.await {
        Ok(r) => r?,
        Err(e) => return Err(phase_err(PHASE, e.to_string())),
    }
    if stored != opts.events as u64 {
        return Err(phase_err(
            PHASE,
            format!("{stored} events stored, {} published", opts.events),
        ));
    }
    let m = metrics.snapshot();
    Ok(DurableReport {
        phase: phase_report(opts.events, end - start, cpu),
        stored,
        batches: m.batches,
        mean_batch: opts.events as f64 / m.batches.max(1) as f64,
        acks: m.acks_sent,
        resent,
    })
}

/// A publisher that waits for the hub's acks, like an edge outbox.
struct DurablePublisher {
    k: usize,
    client: AsyncClient,
    acks: mpsc::Receiver<Vec<Ulid>>,
    window: usize,
    poller: tokio::task::JoinHandle<Result<(), String>>,
}

impl DurablePublisher {
    async fn connect(addr: SocketAddr, k: usize, window: usize) -> Result<Self, BenchError> {
        const PHASE: &str = "durable";
        let (client, mut eventloop) =
            AsyncClient::new(mqtt_options(addr, format!("bench-durable-{k}")), 256);
        let ack_topic = Topic::new(SITE, device(k), Channel::Ack)
            .map_err(|e| phase_err(PHASE, e.to_string()))?
            .to_string();
        client
            .subscribe(ack_topic, QoS::AtLeastOnce)
            .await
            .map_err(|e| phase_err(PHASE, e.to_string()))?;
        // Acks never outnumber unacked events, so this only fills if acks repeat; then
        // dropping one is fine (the resend timer covers it).
        let (ack_tx, acks) = mpsc::channel(window + 64);
        let (suback_tx, suback_rx) = oneshot::channel();
        let poller = tokio::spawn(async move {
            let mut suback_tx = Some(suback_tx);
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(tx) = suback_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        match csb_wire::decode::<Ack>(&p.payload) {
                            Ok(ack) => {
                                if ack_tx.try_send(ack.ids).is_err() && ack_tx.is_closed() {
                                    return Ok(());
                                }
                            }
                            Err(e) => return Err(format!("publisher {k}: bad ack: {e}")),
                        }
                    }
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("publisher {k}: {e}")),
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), suback_rx)
            .await
            .map_err(|_| phase_err(PHASE, format!("publisher {k}: no SUBACK in 10 s")))?
            .map_err(|_| phase_err(PHASE, format!("publisher {k}: connection failed")))?;
        Ok(DurablePublisher {
            k,
            client,
            acks,
            window,
            poller,
        })
    }

    /// Publishes its share keeping at most `window` unacked; returns when the last ack came,
    /// with how many events it sent again.
    async fn run(mut self, payloads: Arc<Payloads>) -> Result<(Instant, u64), String> {
        let mine = &payloads[self.k];
        let topic = Topic::new(SITE, device(self.k), Channel::Event)
            .map_err(|e| e.to_string())?
            .to_string();
        // Which of mine are sent and not yet acked: by place in `mine` (see `bench_id`).
        let mut unacked = vec![false; mine.len()];
        let (mut next, mut open, mut resent) = (0usize, 0usize, 0u64);
        loop {
            while next < mine.len() && open < self.window {
                self.send(&topic, &mine[next].1).await?;
                unacked[next] = true;
                (next, open) = (next + 1, open + 1);
            }
            if next == mine.len() && open == 0 {
                break;
            }
            match tokio::time::timeout(RESEND_AFTER, self.acks.recv()).await {
                Ok(Some(ids)) => {
                    for id in ids {
                        let i = bench_index(id);
                        // An ack repeated for a resend, or not one of ours: nothing to clear.
                        if mine.get(i).is_some_and(|(mine, _)| *mine == id) && unacked[i] {
                            unacked[i] = false;
                            open -= 1;
                        }
                    }
                }
                Ok(None) => return Err(format!("publisher {}: connection closed", self.k)),
                Err(_) => {
                    // No progress: resend what is unacked, as an edge outbox would.
                    for (_, (_, p)) in unacked.iter().zip(mine).filter(|(u, _)| **u) {
                        self.send(&topic, p).await?;
                        resent += 1;
                    }
                }
            }
        }
        let done = Instant::now();
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.poller).await;
        Ok((done, resent))
    }

    async fn send(&self, topic: &str, payload: &[u8]) -> Result<(), String> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .map_err(|e| format!("publisher {}: {e}", self.k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_valid_events_split_across_publishers() {
        let p = make_payloads(10, 3);
        assert_eq!(p.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 3, 3]);
        for (k, mine) in p.iter().enumerate() {
            for (id, bytes) in mine {
                let e: Event = csb_wire::decode(bytes).unwrap();
                assert_eq!((e.id, e.device.as_str()), (*id, device(k).as_str()));
            }
            // Each id says where it is in its publisher's share, and ids stay unique.
            for (i, (id, _)) in mine.iter().enumerate() {
                assert_eq!(bench_index(*id), i);
            }
        }
    }

    #[test]
    fn ids_stay_unique_and_time_ordered_with_their_place() {
        let p = make_payloads(1000, 4);
        let mut ids: Vec<Ulid> = p.iter().flatten().map(|(id, _)| *id).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n);
        let now = Ulid::new().timestamp_ms();
        assert!(ids
            .iter()
            .all(|id| id.timestamp_ms().abs_diff(now) < 60_000));
    }

    #[test]
    fn zero_options_are_refused() {
        let opts = BenchOptions {
            publishers: 0,
            ..BenchOptions::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(run(&opts)).unwrap_err().to_string();
        assert!(err.contains("publishers"), "{err}");
    }
}
