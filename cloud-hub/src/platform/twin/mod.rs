//! The digital twin: one entity per object of the county model (towns, road segments,
//! intersections, zones, gateways, cameras, sensors), each with its geometry, static properties
//! and relationships from the model, and live attributes (each with `observedAt`) that ingested
//! data keeps up to date. Served in NGSI-LD form by [`crate::http::ngsi`]; see `docs/twin.md`.
//!
//! Data flow: ingest writes a batch durably, then offers it to the twin through a bounded
//! channel ([`Feed::offer`], `try_send`: ingest never waits; a full channel drops the batch for
//! the twin and counts it). One task ([`run`]) applies batches to the in-memory state
//! ([`update`]), publishes the changes on a bounded broadcast channel (the SSE change stream)
//! and writes them, in batches, to the twin's own sled database (`{data_dir}/twin`:
//! [`history`]), which the temporal API reads and which restores the live state on restart.
//!
//! Open cases (governance) are not entities yet: when the case workflow exists, a `Case` type
//! slots in as another [`EntityType`] built from the case store, with a `refZone`/`refCamera`
//! relationship, its changes going through the same stream and history path as
//! [`Twin::apply`]'s.

mod build;
pub mod history;
mod update;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use thiserror::Error;
use tokio::sync::mpsc;
use ulid::Ulid;

use crate::ingest::pipeline::DurableSink;
use crate::platform::county::County;
use crate::platform::geo::Geometry;
use crate::storage::store::{WriteBatch, WriteOutcome};
use crate::support::feed::{self, Numbered};
use crate::support::loglimit::LogLimiter;

pub use history::{History, HistoryError, Instance};

/// Batches waiting for the twin task. Each holds one ingest batch (≤ 2048 messages); the task
/// only updates memory, so it keeps up unless starved: a full channel means it is far behind.
pub const FEED_CAPACITY: usize = 16;
/// Payload bytes of the batches waiting for the twin at most: what bounds the feed's memory
/// (batches hold their payloads); beyond it batches are dropped for the twin like on a full
/// channel. One batch alone always fits.
pub const FEED_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Changes kept for SSE clients that fall behind or resume with `Last-Event-ID`.
pub const STREAM_CAPACITY: usize = 1024;
/// Recent changes a resuming SSE client can be replayed from.
pub const RECENT_CAPACITY: usize = 4096;
/// History records written per sled batch at most; also the size that triggers a write.
const HISTORY_BATCH: usize = 2048;
/// How often pending history is written even when the batch is not full.
const HISTORY_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often history older than the retention is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Live attributes per entity at most (sensor metrics are open-ended).
pub const MAX_LIVE_ATTRS: usize = 48;

#[derive(Debug, Error)]
pub enum TwinError {
    #[error("twin history database {path}: {cause}")]
    Open { path: String, cause: sled::Error },
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// The entity types of the twin, in the order listings use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityType {
    Town,
    RoadSegment,
    Intersection,
    Zone,
    Gateway,
    Camera,
    Sensor,
}

impl EntityType {
    pub const ALL: [EntityType; 7] = [
        EntityType::Town,
        EntityType::RoadSegment,
        EntityType::Intersection,
        EntityType::Zone,
        EntityType::Gateway,
        EntityType::Camera,
        EntityType::Sensor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntityType::Town => "Town",
            EntityType::RoadSegment => "RoadSegment",
            EntityType::Intersection => "Intersection",
            EntityType::Zone => "Zone",
            EntityType::Gateway => "Gateway",
            EntityType::Camera => "Camera",
            EntityType::Sensor => "Sensor",
        }
    }

    pub fn parse(s: &str) -> Option<EntityType> {
        EntityType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// One observed value of a live attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub value: Value,
    /// When it was observed (the edge's clock for events and telemetry, the hub's receive time
    /// for device status), Unix ms.
    pub observed_ms: i64,
}

/// A live attribute: its current value, and when an instance was last recorded (for
/// [`Policy::Sampled`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub current: Observed,
    recorded_ms: i64,
}

impl Live {
    pub fn new(current: Observed) -> Live {
        Live {
            recorded_ms: current.observed_ms,
            current,
        }
    }
}

/// The object(s) of a Relationship.
#[derive(Debug, Clone, PartialEq)]
pub enum Rel {
    One(String),
    Many(Vec<String>),
}

impl Rel {
    pub fn to_json(&self) -> Value {
        match self {
            Rel::One(s) => Value::String(s.clone()),
            Rel::Many(v) => Value::from(v.clone()),
        }
    }
}

/// One twin entity.
#[derive(Debug, Clone)]
pub struct Entity {
    /// `urn:ngsi-ld:{Type}:{…}` (see [`build`]).
    pub id: String,
    pub kind: EntityType,
    pub location: Option<Geometry>,
    /// Static properties from the county model.
    pub props: BTreeMap<String, Value>,
    /// Relationships to other entities.
    pub rels: BTreeMap<String, Rel>,
    /// Live attributes from ingested data.
    pub live: BTreeMap<String, Live>,
}

/// What an attribute's value is, for queries (`q`) and `attrs` selection.
pub enum AttrRef<'a> {
    Static(&'a Value),
    Live(&'a Observed),
    Rel(&'a Rel),
    Location(&'a Geometry),
}

impl Entity {
    pub fn attr(&self, name: &str) -> Option<AttrRef<'_>> {
        if name == "location" {
            return self.location.as_ref().map(AttrRef::Location);
        }
        if let Some(l) = self.live.get(name) {
            return Some(AttrRef::Live(&l.current));
        }
        if let Some(v) = self.props.get(name) {
            return Some(AttrRef::Static(v));
        }
        self.rels.get(name).map(AttrRef::Rel)
    }

    /// Every attribute name the entity has, sorted.
    pub fn attr_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .props
            .keys()
            .chain(self.rels.keys())
            .chain(self.live.keys())
            .cloned()
            .collect();
        if self.location.is_some() {
            v.push("location".into());
        }
        v.sort();
        v.dedup();
        v
    }
}

/// How often a live attribute's observations become history instances and stream events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Every observation (sensor readings, traffic windows, zone events).
    Always,
    /// Only when the value differs from the current one (status, states); an unchanged value
    /// just refreshes `observedAt`.
    OnChange,
    /// A changed value at most once per this many ms (fps: status every 10 s would flood the
    /// history with jitter); the current value is always updated.
    Sampled(i64),
}

/// The changed attributes of one entity, as streamed and recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Stream position: increasing, unique across restarts (starts at the boot time in µs).
    pub seq: u64,
    pub entity: String,
    pub kind: EntityType,
    pub attrs: Vec<(String, Observed)>,
}

impl Numbered for Change {
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// [`TwinCounters`] at one moment, as `/api/v1/health` shows them (`twin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct CountersSnapshot {
    /// Durable batches the twin could not take (its queue was full); ingest never waits.
    pub feed_dropped: u64,
    pub batches_applied: u64,
    /// Entity changes published on the change stream.
    pub changes: u64,
    pub history_written: u64,
    pub history_failed: u64,
    pub history_pruned: u64,
    /// Changes change-stream clients missed because they fell behind.
    pub stream_lagged: u64,
}

/// Twin counters for `/api/v1/health` (`twin`) and `/metrics`.
#[derive(Debug, Default)]
pub struct TwinCounters {
    pub feed_dropped: AtomicU64,
    pub batches_applied: AtomicU64,
    pub changes: AtomicU64,
    pub history_written: AtomicU64,
    pub history_failed: AtomicU64,
    pub history_pruned: AtomicU64,
    pub stream_lagged: AtomicU64,
}

impl TwinCounters {
    fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            feed_dropped: Self::get(&self.feed_dropped),
            batches_applied: Self::get(&self.batches_applied),
            changes: Self::get(&self.changes),
            history_written: Self::get(&self.history_written),
            history_failed: Self::get(&self.history_failed),
            history_pruned: Self::get(&self.history_pruned),
            stream_lagged: Self::get(&self.stream_lagged),
        }
    }

    /// Prometheus text, appended to `/metrics`.
    pub fn render_prometheus(&self) -> String {
        let rows: [(&str, &str, &AtomicU64); 7] = [
            (
                "csb_hub_twin_feed_dropped_total",
                "Ingest batches the twin could not take (channel full); the twin missed them.",
                &self.feed_dropped,
            ),
            (
                "csb_hub_twin_batches_applied_total",
                "Ingest batches applied to the twin.",
                &self.batches_applied,
            ),
            (
                "csb_hub_twin_changes_total",
                "Entity changes (history instances and stream events) made by the twin.",
                &self.changes,
            ),
            (
                "csb_hub_twin_history_written_total",
                "Attribute instances written to the twin history.",
                &self.history_written,
            ),
            (
                "csb_hub_twin_history_failed_total",
                "Attribute instances lost because a twin history write failed.",
                &self.history_failed,
            ),
            (
                "csb_hub_twin_history_pruned_total",
                "Attribute instances removed from the twin history after the retention.",
                &self.history_pruned,
            ),
            (
                "csb_hub_twin_stream_lagged_total",
                "Change events SSE clients missed because they fell behind.",
                &self.stream_lagged,
            ),
        ];
        let mut out = String::new();
        for (name, help, v) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                Self::get(v)
            ));
        }
        out
    }
}

/// Lookups from wire ids (as in the county inventory) to entity indexes.
#[derive(Debug, Default)]
pub(crate) struct Links {
    /// `site/device` → gateway.
    gateways: HashMap<String, usize>,
    /// `site/device/camera` → camera.
    cameras: HashMap<String, usize>,
    /// `site/device/sensor` → sensor.
    sensors: HashMap<String, usize>,
    /// (`site/device/camera`, the camera's zone id) → zone.
    zones: HashMap<(String, String), usize>,
    /// `site/device` → its cameras (local id, entity) in the inventory.
    gateway_cameras: HashMap<String, Vec<(String, usize)>>,
    /// `site/device` → its sensors (local id, entity).
    gateway_sensors: HashMap<String, Vec<(String, usize)>>,
    /// `site/device` → counting lines of its cameras: (camera local id, line id, road entity).
    gateway_lines: HashMap<String, Vec<(String, String, usize)>>,
}

/// Update state that is not an attribute.
#[derive(Debug, Default)]
pub(crate) struct Aux {
    /// Open problems per zone entity: problem id → last seen (event time).
    problems: HashMap<usize, HashMap<Ulid, i64>>,
    /// Time of the previous `agent` telemetry per gateway: the length of a flow window.
    last_agent_ms: HashMap<usize, i64>,
}

pub(crate) struct State {
    pub entities: Vec<Entity>,
    pub index: HashMap<String, usize>,
    links: Links,
    aux: Aux,
    next_seq: u64,
}

/// The twin: state, change stream, history.
pub struct Twin {
    state: RwLock<State>,
    /// The change stream: subscribers, the newest changes for resuming, the closing signal.
    feed: feed::Feed<Change>,
    history: Option<History>,
    retention_ms: i64,
    pub counters: TwinCounters,
    feed_log: Mutex<LogLimiter>,
    /// Payload bytes of the batches in the feed channel.
    queued_bytes: AtomicU64,
}

pub use csb_wire::now_ms;

impl Twin {
    /// Builds the entities of `county` (none without one). `history` persists changes; without
    /// it (unit tests) the twin is memory only.
    pub fn new(county: Option<&County>, history: Option<History>, retention_ms: i64) -> Twin {
        let (entities, links) = match county {
            Some(c) => build::entities(c),
            None => (Vec::new(), Links::default()),
        };
        let index = entities
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.clone(), i))
            .collect();
        let feed = feed::Feed::new(STREAM_CAPACITY, RECENT_CAPACITY);
        let twin = Twin {
            state: RwLock::new(State {
                entities,
                index,
                links,
                aux: Aux::default(),
                next_seq: feed.boot_seq(),
            }),
            feed,
            history,
            retention_ms,
            counters: TwinCounters::default(),
            feed_log: Mutex::new(LogLimiter::new(5, Duration::from_secs(60))),
            queued_bytes: AtomicU64::new(0),
        };
        twin.restore();
        twin
    }

    /// Opens (creating) the history database in `dir` and builds the twin; blocking.
    pub fn open(county: Option<&County>, dir: &Path, retention_ms: i64) -> Result<Twin, TwinError> {
        let history = History::open(dir).map_err(|cause| TwinError::Open {
            path: dir.display().to_string(),
            cause,
        })?;
        Ok(Twin::new(county, Some(history), retention_ms))
    }

    /// Puts the last recorded value of every live attribute back (a restart keeps the picture).
    fn restore(&self) {
        let Some(h) = &self.history else { return };
        let current = match h.current() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "twin: cannot read the saved live state; starting empty");
                return;
            }
        };
        let mut st = self.write_state();
        let mut n = 0;
        for (entity, attr, obs) in current {
            let Some(&i) = st.index.get(&entity) else {
                continue; // no longer in the county model
            };
            let e = &mut st.entities[i];
            if e.live.len() < MAX_LIVE_ATTRS || e.live.contains_key(&attr) {
                e.live.insert(
                    attr,
                    Live {
                        recorded_ms: obs.observed_ms,
                        current: obs,
                    },
                );
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(attributes = n, "twin: live state restored from history");
        }
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Read access to the entities, for queries. Keep the closure short: updates wait.
    pub fn read<T>(&self, f: impl FnOnce(&[Entity], &HashMap<String, usize>) -> T) -> T {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&st.entities, &st.index)
    }

    pub fn history(&self) -> Option<&History> {
        self.history.as_ref()
    }

    pub fn retention_ms(&self) -> i64 {
        self.retention_ms
    }

    /// The change stream (SSE): subscribe, resume, closing.
    pub fn feed(&self) -> &feed::Feed<Change> {
        &self.feed
    }

    /// Ends the change streams (shutdown).
    pub fn close_streams(&self) {
        self.feed.close();
    }

    /// Applies one durable ingest batch; returns the changes (already published on the stream).
    pub fn apply(&self, input: &Input) -> Vec<Arc<Change>> {
        self.apply_all(input).0
    }

    /// [`Twin::apply`], and the history records of the batch: every change, plus observations
    /// older than the current value (a replayed backlog), which only go to the history.
    pub fn apply_all(&self, input: &Input) -> (Vec<Arc<Change>>, Vec<history::Record>) {
        let (changes, mut records) = {
            let mut st = self.write_state();
            update::apply(&mut st, input)
        };
        self.counters
            .batches_applied
            .fetch_add(1, Ordering::Relaxed);
        let changes = self.publish(changes);
        for c in &changes {
            for (attr, obs) in &c.attrs {
                records.push(history::Record {
                    entity: c.entity.clone(),
                    attr: attr.clone(),
                    obs: obs.clone(),
                    current: true,
                });
            }
        }
        (changes, records)
    }

    /// Hands changes to the stream and the recent buffer; assigns nothing (seq is set).
    fn publish(&self, changes: Vec<Change>) -> Vec<Arc<Change>> {
        let changes: Vec<Arc<Change>> = changes.into_iter().map(Arc::new).collect();
        if changes.is_empty() {
            return changes;
        }
        self.counters
            .changes
            .fetch_add(changes.len() as u64, Ordering::Relaxed);
        self.feed.publish(&changes);
        changes
    }

    fn feed_full(&self) {
        self.counters.feed_dropped.fetch_add(1, Ordering::Relaxed);
        let mut l = self.feed_log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(suppressed) = l.allow(Instant::now()) {
            tracing::warn!(
                suppressed_since_last = suppressed,
                capacity = FEED_CAPACITY,
                "twin feed full: a stored batch was not applied to the twin (the twin task is \
                 behind); its live attributes catch up with the next data"
            );
        }
    }
}

/// One durable ingest batch for the twin, and the ids the store found already stored (a
/// resend must not count twice, e.g. in traffic flow).
pub struct Input {
    pub batch: Arc<WriteBatch>,
    pub duplicates: std::collections::HashSet<Ulid>,
}

/// Ingest's side of the twin channel.
#[derive(Clone)]
pub struct Feed {
    tx: mpsc::Sender<Input>,
    twin: Arc<Twin>,
}

impl DurableSink for Feed {
    /// Offers a batch that is stored durably. Never waits: when the twin task is behind and
    /// the channel is full the batch is dropped for the twin, counted and logged.
    fn offer(&self, batch: &Arc<WriteBatch>, out: &WriteOutcome) {
        if batch.events.is_empty() && batch.telemetry.is_empty() && batch.statuses.is_empty() {
            return;
        }
        let duplicates = out
            .events_duplicate
            .iter()
            .chain(&out.telemetry_duplicate)
            .copied()
            .collect();
        let input = Input {
            batch: batch.clone(),
            duplicates,
        };
        let bytes = batch_bytes(batch);
        let queued = &self.twin.queued_bytes;
        let before = queued.fetch_add(bytes, Ordering::Relaxed);
        if before > 0 && before + bytes > FEED_MAX_BYTES {
            queued.fetch_sub(bytes, Ordering::Relaxed);
            self.twin.feed_full();
            return;
        }
        match self.tx.try_send(input) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                queued.fetch_sub(bytes, Ordering::Relaxed);
                self.twin.feed_full();
            }
            // The twin task is gone (shutdown): nothing to update.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                queued.fetch_sub(bytes, Ordering::Relaxed);
            }
        }
    }
}

/// What a batch holds in memory, roughly: its payloads (1 KiB per message when the store
/// was given none), and 512 bytes per status.
fn batch_bytes(b: &WriteBatch) -> u64 {
    let payloads = |p: &[bytes::Bytes], n: usize| -> u64 {
        if p.len() == n {
            p.iter().map(|x| x.len() as u64).sum()
        } else {
            n as u64 * 1024
        }
    };
    payloads(&b.event_payloads, b.events.len())
        + payloads(&b.telemetry_payloads, b.telemetry.len())
        + b.statuses.len() as u64 * 512
}

/// The feed for ingest and the receiver for [`run`].
pub fn channel(twin: Arc<Twin>) -> (Feed, mpsc::Receiver<Input>) {
    let (tx, rx) = mpsc::channel(FEED_CAPACITY);
    (Feed { tx, twin }, rx)
}

/// The twin task: applies batches until every [`Feed`] is dropped (ingest stopped), writing
/// history in batches and pruning it; writes what is pending before it returns.
pub async fn run(twin: Arc<Twin>, mut rx: mpsc::Receiver<Input>) {
    let mut pending: Vec<history::Record> = Vec::new();
    let mut flush = tokio::time::interval(HISTORY_FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(input) => {
                    pending.extend(twin.apply_all(&input).1);
                    twin.queued_bytes.fetch_sub(batch_bytes(&input.batch), Ordering::Relaxed);
                    if pending.len() >= HISTORY_BATCH {
                        write_history(&twin, &mut pending).await;
                    }
                }
                None => break,
            },
            _ = flush.tick() => {
                if !pending.is_empty() {
                    write_history(&twin, &mut pending).await;
                }
            }
            _ = prune.tick() => prune_history(&twin).await,
        }
    }
    write_history(&twin, &mut pending).await;
    if let Some(h) = twin.history() {
        let h = h.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || h.flush()).await {
            tracing::error!(error = %e, "twin history: final flush failed");
        }
    }
}

async fn write_history(twin: &Arc<Twin>, pending: &mut Vec<history::Record>) {
    let Some(h) = twin.history() else {
        pending.clear();
        return;
    };
    let records = std::mem::take(pending);
    let n = records.len() as u64;
    if n == 0 {
        return;
    }
    let h = h.clone();
    // sled calls block; keep them off the async workers.
    let r = tokio::task::spawn_blocking(move || h.write(&records, now_ms())).await;
    match r {
        Ok(Ok(())) => {
            twin.counters
                .history_written
                .fetch_add(n, Ordering::Relaxed);
        }
        Ok(Err(e)) => {
            twin.counters.history_failed.fetch_add(n, Ordering::Relaxed);
            tracing::error!(records = n, error = %e, "twin history write failed");
        }
        Err(e) => {
            twin.counters.history_failed.fetch_add(n, Ordering::Relaxed);
            tracing::error!(records = n, error = %e, "twin history write task failed");
        }
    }
}

async fn prune_history(twin: &Arc<Twin>) {
    let Some(h) = twin.history() else { return };
    let h = h.clone();
    let cutoff = now_ms() - twin.retention_ms();
    match tokio::task::spawn_blocking(move || h.prune(cutoff)).await {
        Ok(Ok(n)) => {
            if n > 0 {
                twin.counters.history_pruned.fetch_add(n, Ordering::Relaxed);
                tracing::info!(removed = n, "twin history pruned to the retention");
            }
        }
        Ok(Err(e)) => tracing::error!(error = %e, "twin history prune failed"),
        Err(e) => tracing::error!(error = %e, "twin history prune task failed"),
    }
}

/// `2026-11-24T19:57:43.123Z` for Unix ms (UTC), as NGSI-LD's `observedAt` wants.
pub fn iso_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

#[cfg(test)]
mod tests;
