//! Storage behind the [`Store`] trait, with a sled implementation ([`SledStore`]).
//!
//! Callers (ingest, API) are generic over `Store`, so a PostgreSQL backend only has to implement
//! the trait. Writes come in batches ([`WriteBatch`]) and are durable when `write` returns: that
//! is the point at which ingest acks the batch to the devices.
//!
//! Events and raw telemetry are in append-only record logs ([`crate::storage::reclog`]), one
//! directory each: `{dir}/events/` and `{dir}/telemetry/`. A record is the message's JSON as
//! received (validated), framed with its id and `ts_ms`; the logs' indexes (the open segment's
//! in memory, the closed segments' in index files beside them, with small summaries in memory)
//! give deduplication by id (persistent, so a resend days later is still recognised),
//! lookups by id, and time-range scans, newest first. A batch costs one append and one
//! `fdatasync` per log. Each log drops its oldest segments by age and size
//! ([`StoreOptions`], `events_retention_*` / `telemetry_log_retention_*` in the hub config);
//! the telemetry log keeps what the series store would replay. Stores written before the logs
//! existed kept these as sled rows (trees `events`/`ids`, `telemetry`/`telemetry_ids`); they
//! are moved into the logs on open, once.
//!
//! Write failures are tracked ([`StoreHealth`]): while the last batch write failed (a full
//! disk), `/api/v1/health` is `degraded` with the cause; the next write that succeeds clears
//! it. Nothing failed is acked (ingest acks only what `write` returned as stored).
//!
//! sled holds the rest (one database, several trees):
//! - `quarantine`: hub-generated ULID → [`QuarantineEntry`] JSON of a refused message (see
//!   [`crate::storage::quarantine`]); at most `quarantine_max_entries`, the oldest pruned.
//! - `devices`: `site/device` → latest [`DeviceRecord`] JSON.
//! - `meta`: snapshot counters, so health checks need not count trees (sled's `len` is a scan);
//!   stores written before the id trees held the counts keep their old counts here.
//! - `snapshots`: ULID → [`SnapshotMeta`] JSON of an evidence JPEG; the bytes are a file (below).
//!
//! Evidence JPEG bytes live in files, `{dir}/snapshots/{YYYY-MM-DD}/{ULID}.jpg` (UTC day of the
//! ULID's timestamp), not in sled. sled's leaves hold up to 16 entries and are rewritten whole
//! when their delta chains are consolidated, so 100 KiB..2 MiB values would be rewritten many
//! times over and crowd the page cache that serves event queries; freed space is also only
//! reclaimed slowly. As files, a write costs its size once, retention is deleting old day
//! directories, and operators can open evidence with any tool. Each file is written atomically
//! (tmp file, fsync, rename, fsync of the directory) *before* its metadata is committed to sled
//! (with the counters, then flushed): metadata present ⇒ file durable. A crash in between leaves
//! a file without metadata: the upload was never acknowledged, is not served, and is replaced
//! when the agent retries.

use std::fs::File;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use csb_wire::{civil_from_days, now_ms, DeviceStatus, Event, EventKind, Phase, Telemetry};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use thiserror::Error;
use ulid::Ulid;

use crate::storage::quarantine::{
    key_at_ms, prune_plan, QuarantineEntry, QuarantinePage, QuarantineQuery,
};
pub use crate::storage::reclog::LogPos;
use crate::storage::reclog::{
    LogError, LogOptions, NewRecord, RecordLog, RetentionCounters, SourceStats,
};
use crate::storage::series::{
    Retention, Series, SeriesData, SeriesError, SeriesFilter, SeriesInfo, SeriesQuery,
};

pub use crate::storage::page::{DEFAULT_LIMIT, MAX_LIMIT, MAX_SCAN};

/// Most messages ingest hands over per store write: big enough to amortise the flush, small
/// enough that one batch's latency stays low. The broker hands over a few hundred at a time anyway.
pub const MAX_BATCH: usize = 2048;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot open store at {path}: {cause}{hint}")]
    Open {
        path: PathBuf,
        cause: sled::Error,
        hint: &'static str,
    },
    #[error("store {op} failed: {cause}")]
    Sled {
        op: &'static str,
        cause: sled::Error,
    },
    #[error("cannot encode {what} for storage: {cause}")]
    Encode {
        what: &'static str,
        cause: serde_json::Error,
    },
    #[error("store worker task failed: {0}")]
    Task(String),
    #[error("store {op} failed on {path}: {cause}")]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("store {what} log: {cause}")]
    Log { what: &'static str, cause: LogError },
    #[error("{0}")]
    Series(String),
}

impl StoreError {
    /// The operating system's error underneath, if this is one (e.g. a full disk).
    pub fn io_cause(&self) -> Option<&std::io::Error> {
        match self {
            StoreError::Io { cause, .. } => Some(cause),
            StoreError::Log {
                cause: LogError::Io { cause, .. },
                ..
            } => Some(cause),
            StoreError::Sled {
                cause: sled::Error::Io(e),
                ..
            }
            | StoreError::Open {
                cause: sled::Error::Io(e),
                ..
            } => Some(e),
            _ => None,
        }
    }
}

/// Validated messages to persist together.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub events: Vec<Event>,
    pub telemetry: Vec<Telemetry>,
    /// The JSON payloads `events` and `telemetry` were decoded (and validated) from, in the same
    /// order, when the caller has them: stored as received, which saves encoding them again on
    /// the write path. When a list's length differs from its values', the store encodes.
    pub event_payloads: Vec<Bytes>,
    pub telemetry_payloads: Vec<Bytes>,
    /// In arrival order; the last one per device wins.
    pub statuses: Vec<(DeviceStatus, i64)>,
    /// Refused messages. Stored with the rest and flushed with it, but a failure here does not
    /// fail the batch (see [`WriteOutcome::quarantine_error`]).
    pub quarantine: Vec<QuarantineEntry>,
    /// When the hub received the batch's messages (Unix ms; the latest of them); 0 = now.
    pub received_ms: i64,
}

impl WriteBatch {
    /// Empties it, keeping the vectors' capacity.
    pub fn clear(&mut self) {
        let WriteBatch {
            events,
            telemetry,
            event_payloads,
            telemetry_payloads,
            statuses,
            quarantine,
            received_ms,
        } = self;
        events.clear();
        telemetry.clear();
        event_payloads.clear();
        telemetry_payloads.clear();
        statuses.clear();
        quarantine.clear();
        *received_ms = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.telemetry.is_empty()
            && self.statuses.is_empty()
            && self.quarantine.is_empty()
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    pub events_inserted: u64,
    /// Ids of events already stored (or repeated within the batch); not stored again.
    pub events_duplicate: Vec<Ulid>,
    pub telemetry_inserted: u64,
    /// Ids of telemetry already stored (or repeated within the batch); not stored again.
    pub telemetry_duplicate: Vec<Ulid>,
    pub statuses_written: u64,
    /// Quarantine entries stored, and old ones pruned to make room.
    pub quarantined: u64,
    pub quarantine_pruned: u64,
    /// Why the quarantine entries could not be stored, if so (the valid messages were).
    pub quarantine_error: Option<String>,
    /// The event log's end just after this batch's new events, when it stored any: a consumer
    /// that has applied the batch records it, and after a crash replays what follows
    /// ([`Store::events_after`]).
    pub events_end: Option<LogPos>,
}

/// Which object classes an event must contain (any object matching is enough).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassFilter {
    pub label: String,
    /// Set when the parameter was a number: then `class_id` also matches.
    pub class_id: Option<u32>,
}

impl ClassFilter {
    pub fn parse(s: &str) -> ClassFilter {
        ClassFilter {
            label: s.to_string(),
            class_id: s.parse().ok(),
        }
    }

    fn matches(&self, e: &Event) -> bool {
        e.objects
            .iter()
            .any(|o| o.label == self.label || Some(o.class_id) == self.class_id)
    }
}

/// An event query. Time bounds are Unix ms, `from` inclusive and `to` exclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    pub site: Option<String>,
    pub device: Option<String>,
    pub camera: Option<String>,
    /// Matches labels or class ids of the event's `objects` (rule events carry objects too).
    pub class: Option<ClassFilter>,
    pub kind: Option<EventKind>,
    /// Matches `rule.event_type`, so only rule events can match.
    pub event_type: Option<String>,
    /// Match `rule.zone`, `rule.category`, `rule.phase` (rule events only).
    pub zone: Option<String>,
    pub category: Option<String>,
    pub phase: Option<Phase>,
    /// Only these cameras (`site/device/camera`), e.g. those of a town; `None` = any.
    pub cameras: Option<std::collections::BTreeSet<String>>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub limit: usize,
}

impl Default for EventQuery {
    fn default() -> Self {
        EventQuery {
            site: None,
            device: None,
            camera: None,
            class: None,
            kind: None,
            event_type: None,
            zone: None,
            category: None,
            phase: None,
            cameras: None,
            from_ms: None,
            to_ms: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl EventQuery {
    fn matches(&self, e: &Event) -> bool {
        let rule = e.rule.as_ref();
        let rule_has = |want: &Option<String>, got: fn(&csb_wire::RuleInfo) -> Option<&str>| {
            want.as_ref()
                .is_none_or(|w| rule.and_then(got).is_some_and(|g| g == w))
        };
        self.site.as_ref().is_none_or(|s| *s == e.site)
            && self.device.as_ref().is_none_or(|d| *d == e.device)
            && self.camera.as_ref().is_none_or(|c| *c == e.camera)
            && self.class.as_ref().is_none_or(|c| c.matches(e))
            && self.kind.is_none_or(|k| k == e.kind)
            && rule_has(&self.event_type, |r| Some(r.event_type.as_str()))
            && rule_has(&self.zone, |r| r.zone.as_deref())
            && rule_has(&self.category, |r| r.category.as_deref())
            && self
                .phase
                .is_none_or(|p| rule.is_some_and(|r| r.phase == p))
    }

    /// Whether events of this log key can match (checked once per key, before any read).
    fn key_may_match(&self, key: &str) -> bool {
        let t = EventTags::parse(key);
        let is = |want: &Option<String>, got: &str| want.as_ref().is_none_or(|w| w == got);
        let camera = || format!("{}/{}/{}", t.site, t.device, t.camera);
        is(&self.site, t.site)
            && is(&self.device, t.device)
            && is(&self.camera, t.camera)
            && is(&self.event_type, t.event_type)
            && is(&self.zone, t.zone)
            && is(&self.category, t.category)
            && self.phase.is_none_or(|p| phase_str(p) == t.phase)
            && self.kind.is_none_or(|k| {
                t.kind
                    == match k {
                        EventKind::Detection => "detection",
                        EventKind::Rule => "rule",
                    }
            })
            && self.cameras.as_ref().is_none_or(|c| c.contains(&camera()))
    }
}

/// What event aggregates group by: the event's source levels and rule fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventDim {
    Site,
    Device,
    Camera,
    Kind,
    EventType,
    Zone,
    Category,
    Phase,
}

impl EventDim {
    pub const ALL: [EventDim; 8] = [
        EventDim::Site,
        EventDim::Device,
        EventDim::Camera,
        EventDim::Kind,
        EventDim::EventType,
        EventDim::Zone,
        EventDim::Category,
        EventDim::Phase,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventDim::Site => "site",
            EventDim::Device => "device",
            EventDim::Camera => "camera",
            EventDim::Kind => "kind",
            EventDim::EventType => "event_type",
            EventDim::Zone => "zone",
            EventDim::Category => "category",
            EventDim::Phase => "phase",
        }
    }
}

/// Most buckets one aggregate may have (per group).
pub const MAX_BUCKETS: i64 = 10_000;

/// Counts of events in `[from_ms, to_ms)` matching `filter` (its `limit` unused), grouped by
/// `by` (values in that order; none = one group) and, with `bucket_ms`, by time bucket
/// (aligned to the Unix epoch, so UTC days for 86 400 000).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventAggregateQuery {
    pub filter: EventQuery,
    pub from_ms: i64,
    pub to_ms: i64,
    pub bucket_ms: Option<i64>,
    pub by: Vec<EventDim>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AggregateGroup {
    /// Values of the `by` dimensions, in order (empty string: the event has none, e.g. a
    /// detection's zone).
    pub key: Vec<String>,
    pub total: u64,
    /// `[bucket start ms, count]`, only buckets with events, in time order.
    pub buckets: Vec<(i64, u64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventAggregate {
    pub total: u64,
    /// Groups by descending total.
    pub groups: Vec<AggregateGroup>,
}

/// Events newest first. `truncated` means the scan limit was hit before `limit` matches were
/// found: older matches may exist, narrow the time range.
#[derive(Debug, Clone, Default)]
pub struct EventPage {
    pub events: Vec<Event>,
    pub truncated: bool,
}

/// A raw telemetry query. Time bounds are Unix ms, `from` inclusive and `to` exclusive, as for
/// events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryQuery {
    pub site: Option<String>,
    pub device: Option<String>,
    /// Matches `Telemetry::source`: a sensor id, a camera id or `agent`.
    pub source: Option<String>,
    /// Keeps messages whose `metrics` hold this name; they come back with all their metrics.
    pub metric: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub limit: usize,
}

impl Default for TelemetryQuery {
    fn default() -> Self {
        TelemetryQuery {
            site: None,
            device: None,
            source: None,
            metric: None,
            from_ms: None,
            to_ms: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl TelemetryQuery {
    fn matches(&self, t: &Telemetry) -> bool {
        self.site.as_ref().is_none_or(|s| *s == t.site)
            && self.device.as_ref().is_none_or(|d| *d == t.device)
            && self.source.as_ref().is_none_or(|s| *s == t.source)
            && self
                .metric
                .as_ref()
                .is_none_or(|m| t.metrics.contains_key(m))
    }
}

/// Telemetry newest first; `truncated` as in [`EventPage`].
#[derive(Debug, Clone, Default)]
pub struct TelemetryPage {
    pub telemetry: Vec<Telemetry>,
    pub truncated: bool,
}

/// Which kind of data a source produces.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DataKind {
    Events,
    Telemetry,
}

/// What the store holds from one source: volume and time span (exact: kept by the record log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct SourceRecord {
    pub kind: DataKind,
    pub site: String,
    pub device: String,
    /// The camera (events) or telemetry source (a sensor id, a camera id, `agent`).
    pub source: String,
    #[serde(flatten)]
    pub stats: SourceStats,
}

/// The latest status of a device and when the hub received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeviceRecord {
    #[serde(flatten)]
    pub status: DeviceStatus,
    pub received_ms: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct StoreStats {
    pub events: u64,
    pub telemetry: u64,
    pub devices: u64,
    /// Entries in the quarantine.
    pub quarantine: u64,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
}

/// An evidence JPEG to store, as uploaded by an edge agent. Rule events reference it by id in
/// `rule.snapshot`; it may arrive before or after the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSnapshot {
    pub id: Ulid,
    /// Who uploaded it (`X-Csb-Device`).
    pub site: String,
    pub device: String,
    /// The event it belongs to, when the uploader said (`X-Csb-Event`).
    pub event: Option<Ulid>,
    pub received_ms: i64,
    pub bytes: Vec<u8>,
}

/// What the hub knows about a stored snapshot besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub id: Ulid,
    pub site: String,
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Ulid>,
    pub received_ms: i64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub bytes: Vec<u8>,
}

/// Result of storing a snapshot. Snapshots are immutable: a second upload never replaces one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutSnapshot {
    /// Stored (durably) now.
    Created,
    /// The same bytes were already stored under this id (a retried upload); nothing written.
    Identical,
    /// Different bytes are stored under this id; nothing written.
    Conflict { stored_len: u64 },
}

/// How the store's writes and its disk are doing: `/api/v1/health` turns `degraded` while
/// writes fail, `/metrics` has the gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct StoreHealth {
    /// Why batch writes (events, telemetry, statuses) fail, while the last one failed:
    /// `store: writes failing: <cause> (data dir <dir>)`; `None` once one succeeded.
    pub writes_failing: Option<String>,
    /// The same for evidence snapshot writes.
    pub evidence_writes_failing: Option<String>,
    /// Failed batch and snapshot writes since start (ingest retries a batch: each try counts).
    pub write_failures: u64,
    /// The last failure's whole message.
    pub last_write_error: Option<String>,
    /// Bytes free for the hub on the data directory's volume; `None` when it cannot be told.
    pub free_bytes: Option<u64>,
    pub events_log: LogHealth,
    pub telemetry_log: LogHealth,
}

impl StoreHealth {
    /// Why the store makes the hub unhealthy, if it does.
    pub fn reasons(&self) -> Vec<String> {
        [&self.writes_failing, &self.evidence_writes_failing]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

/// A record log's size on disk and what retention dropped from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct LogHealth {
    pub disk_bytes: u64,
    #[serde(flatten)]
    pub retention: RetentionCounters,
}

/// Storage used by the hub. Futures are `Send` so axum handlers and spawned tasks can await them.
pub trait Store: SeriesStore + Send + Sync + 'static {
    /// Persists a batch; when this returns `Ok` the batch survives a crash. (An `Arc` so a
    /// retry does not copy the batch.)
    fn write(
        &self,
        batch: impl Into<Arc<WriteBatch>> + Send,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send;
    fn query_events(
        &self,
        query: EventQuery,
    ) -> impl Future<Output = Result<EventPage, StoreError>> + Send;
    /// Event counts by group and time bucket (see [`EventAggregateQuery`]).
    fn aggregate_events(
        &self,
        query: EventAggregateQuery,
    ) -> impl Future<Output = Result<EventAggregate, StoreError>> + Send;
    /// Raw telemetry, newest first, filtered like [`Store::query_events`].
    fn query_telemetry(
        &self,
        query: TelemetryQuery,
    ) -> impl Future<Output = Result<TelemetryPage, StoreError>> + Send;
    /// Quarantined (refused) messages, newest first.
    fn query_quarantine(
        &self,
        query: QuarantineQuery,
    ) -> impl Future<Output = Result<QuarantinePage, StoreError>> + Send;
    fn devices(&self) -> impl Future<Output = Result<Vec<DeviceRecord>, StoreError>> + Send;
    /// What is stored from each source (a camera's events, a telemetry source's messages).
    fn sources(&self) -> impl Future<Output = Result<Vec<SourceRecord>, StoreError>> + Send;
    fn stats(&self) -> impl Future<Output = Result<StoreStats, StoreError>> + Send;
    /// Up to `limit` stored events in the order they were stored, after `after` (from the
    /// start when `None`), each with the log position just past it: how a consumer that keeps
    /// its own position (the case workflow) catches up after a crash or after falling behind.
    /// Events dropped by retention are gone; an event appended meanwhile may or may not be in.
    fn events_after(
        &self,
        after: Option<LogPos>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(Event, LogPos)>, StoreError>> + Send;
    /// The event log's end now (see [`Store::events_after`]).
    fn events_end(&self) -> LogPos;
    /// Bytes of memory the store's indexes hold (an estimate; 0 when it keeps none).
    fn index_bytes(&self) -> u64 {
        0
    }
    /// Write failures and disk space (cheap: counters and one `statvfs`).
    fn health(&self) -> StoreHealth {
        StoreHealth::default()
    }
    /// One event by id.
    fn event(&self, id: Ulid) -> impl Future<Output = Result<Option<Event>, StoreError>> + Send;
    /// Stores an evidence snapshot unless its id is taken; durable when this returns `Ok`.
    fn put_snapshot(
        &self,
        snapshot: NewSnapshot,
    ) -> impl Future<Output = Result<PutSnapshot, StoreError>> + Send;
    fn snapshot(
        &self,
        id: Ulid,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send;
    /// Makes everything written so far durable (used on shutdown).
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Key of the sled rows that held events and telemetry before the record logs: sign-flipped
/// big-endian `ts_ms` ++ 16-byte ULID (read when migrating, see [`SledStore::migrate_rows`]).
fn legacy_key_time(key: &[u8]) -> Option<(i64, u128)> {
    let ts: [u8; 8] = key.get(..8)?.try_into().ok()?;
    let id: [u8; 16] = key.get(8..24)?.try_into().ok()?;
    Some((
        (u64::from_be_bytes(ts) ^ (1 << 63)) as i64,
        u128::from_be_bytes(id),
    ))
}

const META_SNAPSHOTS: &[u8] = b"count/snapshots";
const META_SNAPSHOT_BYTES: &[u8] = b"bytes/snapshots";

/// Directories of the record logs, inside the store directory.
pub const EVENT_LOG_DIR: &str = "events";
pub const TELEMETRY_LOG_DIR: &str = "telemetry";

/// Directory of evidence files, inside the store directory. (sled's own files there are `conf`,
/// `db`, `blobs/` and `snap.*`.)
pub const SNAPSHOT_DIR: &str = "snapshots";
/// Where snapshot files are written before being renamed into place.
const SNAPSHOT_TMP_DIR: &str = "tmp";

/// Default of `quarantine_max_entries` (the hub config sets it, see
/// [`SledStore::with_quarantine_max`]).
pub const DEFAULT_QUARANTINE_MAX: u64 = 100_000;

/// How [`SledStore::open_with`] sets up the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// sled's page cache (`store_cache_mb`).
    pub cache_mb: u64,
    /// The event and raw telemetry record logs: segment size, retention, time column cache.
    pub events: LogOptions,
    pub telemetry: LogOptions,
}

impl StoreOptions {
    /// Defaults: logs kept forever, events' time columns cached for aggregates.
    pub fn new(cache_mb: u64) -> StoreOptions {
        StoreOptions {
            cache_mb,
            events: LogOptions::default(),
            // Raw telemetry is paged and rolled up, never aggregated over by the log.
            telemetry: LogOptions {
                time_cache_bytes: 0,
                ..LogOptions::default()
            },
        }
    }
}

/// Whether writes fail now, and how often they did.
#[derive(Default)]
struct WriteHealth {
    failures: std::sync::atomic::AtomicU64,
    /// (batch writes, snapshot writes): the reason while failing; and the last error.
    failing: Mutex<(Option<String>, Option<String>, Option<String>)>,
}

impl WriteHealth {
    fn record<T>(&self, evidence: bool, r: &Result<T, StoreError>, dir: &Path) {
        let mut f = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let slot = if evidence { &mut f.1 } else { &mut f.0 };
        match r {
            Ok(_) => {
                if slot.take().is_some() {
                    tracing::info!(evidence, "store writes succeed again");
                }
            }
            Err(e) => {
                self.failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let what = if evidence {
                    "evidence writes"
                } else {
                    "writes"
                };
                *slot = Some(format!(
                    "store: {what} failing: {} (data dir {})",
                    e.io_cause()
                        .map_or_else(|| e.to_string(), |c| c.to_string()),
                    dir.display()
                ));
                f.2 = Some(e.to_string());
            }
        }
    }
}

/// Bytes free for an unprivileged writer on the volume holding `path`.
pub fn volume_free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes the struct it is given; `c` is a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    dir: PathBuf,
    pub(crate) events: Arc<RecordLog>,
    pub(crate) telemetry: Arc<RecordLog>,
    devices: sled::Tree,
    meta: sled::Tree,
    snapshots: sled::Tree,
    quarantine: sled::Tree,
    /// Entries in `quarantine`: counted once at open (sled's `len` is a scan), then kept here.
    /// The lock also serialises quarantine writes, so pruning cannot race.
    quarantine_len: Arc<Mutex<u64>>,
    quarantine_max: u64,
    files: Arc<SnapshotFiles>,
    /// Telemetry series and rollups, fed from the telemetry log (see [`crate::storage::series`]).
    pub(crate) series: Arc<crate::storage::series::Series>,
    /// Buffers reused by each write (writes run one at a time anyway: the logs' locks).
    scratch: Arc<Mutex<Scratch>>,
    write_health: Arc<WriteHealth>,
}

/// The evidence file area. `put_lock` serialises uploads, so "is the id taken?" and "store it"
/// cannot interleave for the same id (uploads are rare; one at a time is plenty).
struct SnapshotFiles {
    dir: PathBuf,
    put_lock: Mutex<()>,
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> StoreError + 'p {
    move |cause| StoreError::Io {
        op,
        path: path.to_path_buf(),
        cause,
    }
}

impl SnapshotFiles {
    /// Creates the directories and removes temporary files left by a crash.
    fn open(dir: PathBuf) -> Result<SnapshotFiles, StoreError> {
        let tmp = dir.join(SNAPSHOT_TMP_DIR);
        std::fs::create_dir_all(&tmp).map_err(io_err("create snapshot directory", &tmp))?;
        for entry in std::fs::read_dir(&tmp).map_err(io_err("list", &tmp))? {
            let path = entry.map_err(io_err("list", &tmp))?.path();
            if path.is_file() {
                tracing::warn!(path = %path.display(), "removing unfinished snapshot upload");
                std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
        }
        Ok(SnapshotFiles {
            dir,
            put_lock: Mutex::new(()),
        })
    }

    /// `{dir}/{YYYY-MM-DD}/{ULID}.jpg`, the day being the UTC date of the ULID's timestamp.
    fn path(&self, id: Ulid) -> PathBuf {
        let days = (id.timestamp_ms() / 86_400_000) as i64;
        let (y, m, d) = civil_from_days(days);
        self.dir
            .join(format!("{y:04}-{m:02}-{d:02}"))
            .join(format!("{id}.jpg"))
    }

    /// Writes `bytes` to `path(id)` atomically and durably, replacing any file there.
    fn write(&self, id: Ulid, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path(id);
        let day_dir = path.parent().expect("snapshot path has a day directory");
        let new_day = !day_dir.exists();
        std::fs::create_dir_all(day_dir).map_err(io_err("create snapshot directory", day_dir))?;
        let tmp = self.dir.join(SNAPSHOT_TMP_DIR).join(format!("{id}.jpg"));
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))?;
        sync_dir(day_dir)?;
        if new_day {
            // The day directory's own entry.
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

fn sled_err(op: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
    move |cause| StoreError::Sled { op, cause }
}

impl SledStore {
    /// Opens (creating if needed) the store in `dir`, its record logs kept forever. Blocking:
    /// call from a blocking context.
    pub fn open(dir: &Path, cache_mb: u64) -> Result<SledStore, StoreError> {
        Self::open_with(dir, &StoreOptions::new(cache_mb))
    }

    /// Opens (creating if needed) the store in `dir`. Blocking: call from a blocking context.
    pub fn open_with(dir: &Path, opts: &StoreOptions) -> Result<SledStore, StoreError> {
        let cache_mb = opts.cache_mb;
        let open_err = |cause: sled::Error| {
            let hint = match &cause {
                // sled reports a held lock as ErrorKind::Other; only its message tells.
                sled::Error::Io(e) if e.to_string().contains("could not acquire lock") => {
                    " (is another cloud-hub using this data_dir?)"
                }
                _ => "",
            };
            StoreError::Open {
                path: dir.to_path_buf(),
                cause,
                hint,
            }
        };
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_mb.saturating_mul(1024 * 1024))
            .open()
            .map_err(open_err)?;
        let tree = |name: &str| db.open_tree(name).map_err(open_err);
        let log = |what: &'static str, sub: &str, o: LogOptions| {
            let (log, rec) = RecordLog::open_with(&dir.join(sub), o)
                .map_err(|cause| StoreError::Log { what, cause })?;
            tracing::info!(
                what,
                records = rec.records,
                segments = rec.segments,
                damaged_segments = rec.damaged.len(),
                indexes_rebuilt = rec.indexes_rebuilt,
                ids_only_segments = rec.ids_only,
                "record log opened"
            );
            Ok::<_, StoreError>(Arc::new(log))
        };
        let quarantine = tree("quarantine")?;
        let series = crate::storage::series::Series::open(
            &dir.join(crate::storage::series::SERIES_DIR),
            cache_mb,
        )?;
        let store = SledStore {
            dir: dir.to_path_buf(),
            events: log("event", EVENT_LOG_DIR, opts.events)?,
            telemetry: log("telemetry", TELEMETRY_LOG_DIR, opts.telemetry)?,
            devices: tree("devices")?,
            meta: tree("meta")?,
            snapshots: tree("snapshots")?,
            quarantine_len: Arc::new(Mutex::new(quarantine.len() as u64)),
            quarantine,
            quarantine_max: DEFAULT_QUARANTINE_MAX,
            files: Arc::new(SnapshotFiles::open(dir.join(SNAPSHOT_DIR))?),
            series,
            scratch: Arc::default(),
            write_health: Arc::default(),
            db,
        };
        store.migrate_rows("event", &store.events, "events", "ids", |v| {
            serde_json::from_slice::<Event>(v)
                .map(|e| event_key(&e))
                .ok()
        })?;
        store.migrate_rows(
            "telemetry",
            &store.telemetry,
            "telemetry",
            "telemetry_ids",
            |v| {
                serde_json::from_slice::<SourceFields>(v)
                    .map(|f| f.key())
                    .ok()
            },
        )?;
        store.series.catch_up(&store.telemetry)?;
        // Retention keeps the raw telemetry the series store would replay after a crash.
        let series = Arc::downgrade(&store.series);
        store.telemetry.set_keep_from(Box::new(move || {
            series
                .upgrade()
                .and_then(|s| s.persisted())
                .map_or(0, |p| p.seg)
        }));
        Ok(store)
    }

    /// Moves the rows of a store written before the record logs (tree `rows`, dedup index
    /// `index`) into `log`, then drops both trees. Appends are deduplicated, so a crash midway
    /// just means it runs again; the trees go only after every row is in the log.
    fn migrate_rows(
        &self,
        what: &'static str,
        log: &RecordLog,
        rows: &str,
        index: &str,
        key_of: impl Fn(&[u8]) -> Option<String>,
    ) -> Result<(), StoreError> {
        let names = self.db.tree_names();
        if !names.iter().any(|n| n.as_ref() == rows.as_bytes()) {
            return Ok(());
        }
        let err = sled_err("migration to the record log");
        let tree = self
            .db
            .open_tree(rows)
            .map_err(sled_err("migration to the record log"))?;
        let (mut moved, mut chunk) = (0u64, Vec::new());
        let flush = |chunk: &mut Vec<(u128, i64, String, sled::IVec)>| {
            let recs: Vec<NewRecord<'_>> = chunk
                .iter()
                .map(|(id, ts_ms, key, v)| NewRecord {
                    id: *id,
                    ts_ms: *ts_ms,
                    // When it arrived was not kept; its own time is the best guess.
                    received_ms: *ts_ms,
                    key,
                    payload: v,
                })
                .collect();
            let r = log
                .append(&recs)
                .map_err(|cause| StoreError::Log { what, cause });
            chunk.clear();
            r.map(|a| a.stored)
        };
        for item in tree.iter() {
            let (key, value) = item.map_err(sled_err("migration to the record log"))?;
            match legacy_key_time(&key) {
                Some((ts_ms, id)) => {
                    // Rows were validated on the way in; one that no longer decodes keeps an
                    // empty source rather than being left behind.
                    let key = key_of(&value).unwrap_or_default();
                    chunk.push((id, ts_ms, key, value))
                }
                // Not a row (e.g. a stray counter): nothing to carry over.
                None => continue,
            }
            if chunk.len() >= 4096 {
                moved += flush(&mut chunk)?;
            }
        }
        moved += flush(&mut chunk)?;
        self.db
            .drop_tree(rows)
            .map_err(sled_err("migration to the record log"))?;
        if names.iter().any(|n| n.as_ref() == index.as_bytes()) {
            self.db.drop_tree(index).map_err(err)?;
        }
        self.db.flush().map_err(sled_err("flush"))?;
        tracing::info!(
            what,
            moved,
            "moved stored records from sled into the record log"
        );
        Ok(())
    }

    /// Keeps at most `max` (≥ 1) quarantine entries from the next write on.
    pub fn with_quarantine_max(mut self, max: u64) -> SledStore {
        self.quarantine_max = max.max(1);
        self
    }

    /// Runs blocking sled work off the async runtime's worker threads.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(SledStore) -> Result<T, StoreError> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(me))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn write_sync(&self, batch: &WriteBatch) -> Result<WriteOutcome, StoreError> {
        let encode = |what, r: Result<Vec<u8>, serde_json::Error>| {
            r.map_err(|cause| StoreError::Encode { what, cause })
        };
        // JSON is encoded here only for batches built without their payloads (tests, tools);
        // ingest hands over the payloads as received.
        let event_json = match batch.event_payloads.len() == batch.events.len() {
            true => Vec::new(),
            false => (batch.events.iter())
                .map(|e| encode("event", serde_json::to_vec(e)))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let telemetry_json = match batch.telemetry_payloads.len() == batch.telemetry.len() {
            true => Vec::new(),
            false => (batch.telemetry.iter())
                .map(|t| encode("telemetry", serde_json::to_vec(t)))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let mut statuses = Vec::with_capacity(batch.statuses.len());
        for (s, received_ms) in &batch.statuses {
            let rec = DeviceRecord {
                status: s.clone(),
                received_ms: *received_ms,
            };
            statuses.push((
                device_key(&s.site, &s.device),
                encode("status", serde_json::to_vec(&rec))?,
            ));
        }

        let mut out = WriteOutcome::default();
        let received_ms = match batch.received_ms {
            0 => now_ms(),
            t => t,
        };
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let Scratch { keys, records } = &mut *scratch;
        keys.clear();
        for e in &batch.events {
            keys.push(e.id.0, |k| push_event_key(k, e));
        }
        let evs = keys.records(
            recycle(std::mem::take(records)),
            batch.events.iter().map(|e| e.ts_ms),
            payloads(&batch.event_payloads, &event_json),
            received_ms,
        );
        let mut events_end = None;
        let appended = self
            .events
            .append_then(&evs, |_, end| events_end = Some(end))
            .map(|a| (a.stored, a.duplicates.into_iter().map(Ulid).collect()))
            .map_err(|cause| StoreError::Log {
                what: "event",
                cause,
            });
        *records = recycle(evs);
        (out.events_inserted, out.events_duplicate) = appended?;
        out.events_end = events_end;
        keys.clear();
        for t in &batch.telemetry {
            keys.push(t.id.0, |k| {
                push_source_key(k, &t.site, &t.device, &t.source)
            });
        }
        let tel = keys.records(
            recycle(std::mem::take(records)),
            batch.telemetry.iter().map(|t| t.ts_ms),
            payloads(&batch.telemetry_payloads, &telemetry_json),
            received_ms,
        );
        let appended = append_telemetry(&self.telemetry, &self.series, &batch.telemetry, &tel);
        *records = recycle(tel);
        (out.telemetry_inserted, out.telemetry_duplicate) = appended?;
        scratch.trim();
        drop(scratch);
        if !statuses.is_empty() {
            // A map: of one device's statuses in this batch the last one wins.
            let mut b = sled::Batch::default();
            for (key, value) in &statuses {
                b.insert(key.as_bytes(), value.as_slice());
                out.statuses_written += 1;
            }
            self.devices.apply_batch(b).map_err(sled_err("write"))?;
        }
        if !batch.quarantine.is_empty() {
            match self.write_quarantine(&batch.quarantine) {
                Ok((stored, pruned)) => {
                    out.quarantined = stored;
                    out.quarantine_pruned = pruned;
                }
                Err(e) => out.quarantine_error = Some(e.to_string()),
            }
        }
        // The logs are synced by their appends; one flush for the sled part. Only now may any
        // of it be acknowledged.
        if !batch.statuses.is_empty() || !batch.quarantine.is_empty() {
            self.db.flush().map_err(sled_err("flush"))?;
        }
        Ok(out)
    }

    /// Adds quarantine entries, pruning the oldest beyond `quarantine_max`. Not part of the
    /// batch's transaction (sled transactions cannot scan for the oldest keys); each insert and
    /// removal is atomic and the caller's flush makes them durable together with the batch.
    /// Returns (entries stored, entries pruned or skipped).
    fn write_quarantine(&self, entries: &[QuarantineEntry]) -> Result<(u64, u64), StoreError> {
        let mut len = self
            .quarantine_len
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let plan = prune_plan(*len, entries.len() as u64, self.quarantine_max);
        let mut pruned = plan.skip_new;
        if plan.remove_existing > 0 {
            let oldest: Vec<sled::IVec> = self
                .quarantine
                .iter()
                .keys()
                .take(plan.remove_existing as usize)
                .collect::<Result<_, _>>()
                .map_err(sled_err("quarantine prune"))?;
            for key in oldest {
                if self
                    .quarantine
                    .remove(key)
                    .map_err(sled_err("quarantine prune"))?
                    .is_some()
                {
                    *len = len.saturating_sub(1);
                    pruned += 1;
                }
            }
        }
        let mut stored = 0;
        for e in &entries[plan.skip_new as usize..] {
            let value = serde_json::to_vec(e).map_err(|cause| StoreError::Encode {
                what: "quarantine entry",
                cause,
            })?;
            // A retried batch rewrites its entries under the same ids: count them once.
            if self
                .quarantine
                .insert(e.id.0.to_be_bytes(), value)
                .map_err(sled_err("quarantine write"))?
                .is_none()
            {
                *len += 1;
            }
            stored += 1;
        }
        Ok((stored, pruned))
    }

    fn quarantine_sync(&self, q: &QuarantineQuery) -> Result<QuarantinePage, StoreError> {
        let from = q.from_ms.unwrap_or(0);
        if q.to_ms.is_some_and(|to| to <= from) {
            return Ok(QuarantinePage::default());
        }
        let lo = key_at_ms(from).to_vec();
        let hi = q.to_ms.map(|to| key_at_ms(to).to_vec());
        let (entries, truncated) =
            scan_keys_newest_first(&self.quarantine, "quarantine entry", lo, hi, q.limit, |e| {
                q.matches(e)
            })?;
        Ok(QuarantinePage { entries, truncated })
    }

    fn events_after_sync(
        &self,
        after: Option<LogPos>,
        limit: usize,
    ) -> Result<Vec<(Event, LogPos)>, StoreError> {
        /// Ends the replay once the page is full (not an error to the caller).
        enum Stop {
            Full,
            Log(LogError),
        }
        impl From<LogError> for Stop {
            fn from(e: LogError) -> Self {
                Stop::Log(e)
            }
        }
        let mut out = Vec::with_capacity(limit.min(4096));
        let r = self.events.replay_after(after, |rec, end| {
            if out.len() >= limit {
                return Err(Stop::Full);
            }
            match serde_json::from_slice::<Event>(&rec.payload) {
                Ok(e) => out.push((e, end)),
                // Stored events were validated; one that no longer decodes is skipped (and
                // said), not a reason to stop every consumer behind it.
                Err(e) => tracing::error!(id = %Ulid(rec.id), error = %e,
                    "event log replay: skipping an undecodable record"),
            }
            Ok(())
        });
        match r {
            Ok(()) | Err(Stop::Full) => Ok(out),
            Err(Stop::Log(cause)) => Err(StoreError::Log {
                what: "event",
                cause,
            }),
        }
    }

    fn query_sync(&self, q: &EventQuery) -> Result<EventPage, StoreError> {
        let want = |k: &str| q.key_may_match(k);
        let (events, truncated) = scan_log_newest_first(
            &self.events,
            "event",
            (q.from_ms, q.to_ms),
            want,
            q.limit,
            |e| q.matches(e),
        )?;
        Ok(EventPage { events, truncated })
    }

    fn telemetry_sync(&self, q: &TelemetryQuery) -> Result<TelemetryPage, StoreError> {
        let want = |k: &str| {
            key_matches(
                k,
                q.site.as_deref(),
                q.device.as_deref(),
                q.source.as_deref(),
            )
        };
        let (telemetry, truncated) = scan_log_newest_first(
            &self.telemetry,
            "telemetry",
            (q.from_ms, q.to_ms),
            want,
            q.limit,
            |t| q.matches(t),
        )?;
        Ok(TelemetryPage {
            telemetry,
            truncated,
        })
    }

    fn devices_sync(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.devices.iter() {
            let (key, value) = item.map_err(sled_err("devices"))?;
            match serde_json::from_slice(&value) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::error!(key = ?key, error = %e, "skipping undecodable device record")
                }
            }
        }
        Ok(out)
    }

    /// Bytes the event and telemetry record logs' in-memory indexes hold (an estimate, see
    /// [`RecordLog::index_bytes`]): they grow with every record stored.
    pub fn index_bytes(&self) -> u64 {
        self.events.index_bytes() + self.telemetry.index_bytes()
    }

    /// See [`Store::health`].
    pub fn health(&self) -> StoreHealth {
        let (writes_failing, evidence_writes_failing, last_write_error) = self
            .write_health
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let log = |l: &RecordLog| LogHealth {
            disk_bytes: l.disk_bytes(),
            retention: l.retention_counters(),
        };
        StoreHealth {
            writes_failing,
            evidence_writes_failing,
            write_failures: self
                .write_health
                .failures
                .load(std::sync::atomic::Ordering::Relaxed),
            last_write_error,
            free_bytes: volume_free_bytes(&self.dir),
            events_log: log(&self.events),
            telemetry_log: log(&self.telemetry),
        }
    }

    fn stats_sync(&self) -> Result<StoreStats, StoreError> {
        Ok(StoreStats {
            events: self.events.len(),
            telemetry: self.telemetry.len(),
            // Small: one entry per device.
            devices: self.devices.len() as u64,
            quarantine: *self
                .quarantine_len
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            snapshots: read_counter(&self.meta, META_SNAPSHOTS)?,
            snapshot_bytes: read_counter(&self.meta, META_SNAPSHOT_BYTES)?,
        })
    }

    fn event_sync(&self, id: Ulid) -> Result<Option<Event>, StoreError> {
        let Some(rec) = self.events.get(id.0).map_err(|cause| StoreError::Log {
            what: "event",
            cause,
        })?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&rec.payload)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what: format!("event {id}"),
                detail: e.to_string(),
            })
    }

    fn snapshot_meta_sync(&self, id: Ulid) -> Result<Option<SnapshotMeta>, StoreError> {
        let Some(v) = self
            .snapshots
            .get(id.0.to_be_bytes())
            .map_err(sled_err("snapshot lookup"))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what: format!("metadata of snapshot {id}"),
                detail: e.to_string(),
            })
    }

    /// Reads the file of a snapshot whose metadata exists, checking its length.
    fn read_snapshot_file(&self, meta: &SnapshotMeta) -> Result<Vec<u8>, StoreError> {
        let path = self.files.path(meta.id);
        let bytes = std::fs::read(&path).map_err(io_err("read snapshot", &path))?;
        if bytes.len() as u64 != meta.len {
            return Err(StoreError::Corrupt {
                what: format!("snapshot file {}", path.display()),
                detail: format!("{} bytes, {} were stored", bytes.len(), meta.len),
            });
        }
        Ok(bytes)
    }

    fn put_snapshot_sync(&self, snap: NewSnapshot) -> Result<PutSnapshot, StoreError> {
        // A panic while holding the lock leaves no state behind it to protect.
        let _guard = self
            .files
            .put_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(meta) = self.snapshot_meta_sync(snap.id)? {
            let stored = self.read_snapshot_file(&meta)?;
            return Ok(if stored == snap.bytes {
                PutSnapshot::Identical
            } else {
                PutSnapshot::Conflict {
                    stored_len: meta.len,
                }
            });
        }
        // No metadata: a file at the path is from an upload that was never committed (nor
        // acknowledged); replacing it is right.
        self.files.write(snap.id, &snap.bytes)?;
        let len = snap.bytes.len() as u64;
        let meta = SnapshotMeta {
            id: snap.id,
            site: snap.site,
            device: snap.device,
            event: snap.event,
            received_ms: snap.received_ms,
            len,
        };
        let value = serde_json::to_vec(&meta).map_err(|cause| StoreError::Encode {
            what: "snapshot metadata",
            cause,
        })?;
        let key = snap.id.0.to_be_bytes();
        let result = (&self.snapshots, &self.meta).transaction(|(sn, meta)| {
            sn.insert(&key[..], value.as_slice())?;
            add_counter(meta, META_SNAPSHOTS, 1)?;
            add_counter(meta, META_SNAPSHOT_BYTES, len)?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        });
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(sled_err("snapshot write")(e)),
        }
        self.db.flush().map_err(sled_err("flush"))?;
        Ok(PutSnapshot::Created)
    }

    fn snapshot_sync(&self, id: Ulid) -> Result<Option<Snapshot>, StoreError> {
        let Some(meta) = self.snapshot_meta_sync(id)? else {
            return Ok(None);
        };
        let bytes = self.read_snapshot_file(&meta)?;
        Ok(Some(Snapshot { meta, bytes }))
    }
}

/// Records of `log` with `from_ms <= ts_ms < to_ms` (unbounded where `None`): up to `limit`
/// (clamped to 1..=[`MAX_LIMIT`]) that `keep` accepts, newest first, examining at most
/// [`MAX_SCAN`] records (then `true` = truncated). Undecodable or damaged records are skipped
/// and logged once per query, so one bad record cannot make a whole history unreadable.
fn scan_log_newest_first<T: DeserializeOwned>(
    log: &RecordLog,
    what: &'static str,
    (from_ms, to_ms): (Option<i64>, Option<i64>),
    want_key: impl Fn(&str) -> bool,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<(Vec<T>, bool), StoreError> {
    let limit = limit.clamp(1, MAX_LIMIT);
    let (mut out, mut scanned, mut bad, mut truncated) = (Vec::new(), 0usize, 0usize, false);
    log.scan_newest_first(from_ms, to_ms, want_key, |r| {
        if scanned >= MAX_SCAN {
            truncated = true;
            return false;
        }
        scanned += 1;
        let decoded = r
            .map_err(|e| e.to_string())
            .and_then(|r| serde_json::from_slice::<T>(&r.payload).map_err(|e| e.to_string()));
        match decoded {
            Ok(record) if keep(&record) => {
                out.push(record);
                out.len() < limit
            }
            Ok(_) => true,
            Err(error) => {
                bad += 1;
                if bad == 1 {
                    tracing::error!(what, %error, "skipping unreadable stored record");
                }
                true
            }
        }
    })
    .map_err(|cause| StoreError::Log { what, cause })?;
    if bad > 1 {
        tracing::error!(
            what,
            count = bad,
            "skipped unreadable stored records in one query"
        );
    }
    Ok((out, truncated))
}

/// Reverse scan of keys `[lo, hi)` (`hi` unbounded when `None`); see [`scan_newest_first`].
fn scan_keys_newest_first<T: DeserializeOwned>(
    tree: &sled::Tree,
    what: &'static str,
    lo: Vec<u8>,
    hi: Option<Vec<u8>>,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<(Vec<T>, bool), StoreError> {
    let mut out = Vec::new();
    let limit = limit.clamp(1, MAX_LIMIT);
    let iter = match hi {
        Some(hi) => tree.range(lo..hi),
        None => tree.range(lo..),
    };
    let (mut scanned, mut corrupt, mut truncated) = (0usize, 0usize, false);
    for item in iter.rev() {
        if scanned >= MAX_SCAN {
            truncated = true;
            break;
        }
        scanned += 1;
        let (key, value) = item.map_err(sled_err("query"))?;
        let record: T = match serde_json::from_slice(&value) {
            Ok(r) => r,
            Err(e) => {
                corrupt += 1;
                if corrupt == 1 {
                    tracing::error!(what, ?key, error = %e, "skipping undecodable stored record");
                }
                continue;
            }
        };
        if keep(&record) {
            out.push(record);
            if out.len() >= limit {
                break;
            }
        }
    }
    if corrupt > 1 {
        tracing::error!(
            what,
            count = corrupt,
            "skipped undecodable stored records in one query"
        );
    }
    Ok((out, truncated))
}

/// [`Store::aggregate_events`] over a log's time indexes: each key is classified once
/// (matches? which group?), then every record in range costs a lookup and an add.
fn aggregate(log: &RecordLog, q: &EventAggregateQuery) -> Result<EventAggregate, LogError> {
    use std::collections::HashMap;
    // Per key number: the group it counts in, or None when the filter excludes it.
    let mut class: Vec<Option<Option<usize>>> = Vec::new();
    let mut groups: Vec<(Vec<String>, u64, std::collections::BTreeMap<i64, u64>)> = Vec::new();
    let mut group_of: HashMap<Vec<String>, usize> = HashMap::new();
    let mut total = 0u64;
    log.try_for_each_in_range(q.from_ms, q.to_ms, |ts, k, key| {
        let k = k as usize;
        if class.len() <= k {
            class.resize(k + 1, None);
        }
        let g = match class[k] {
            Some(g) => g,
            None => {
                let g = q.filter.key_may_match(key).then(|| {
                    let t = EventTags::parse(key);
                    let values: Vec<String> = q.by.iter().map(|d| t.get(*d).to_string()).collect();
                    *group_of.entry(values.clone()).or_insert_with(|| {
                        groups.push((values, 0, Default::default()));
                        groups.len() - 1
                    })
                });
                class[k] = Some(g);
                g
            }
        };
        if let Some(g) = g {
            total += 1;
            let grp = &mut groups[g];
            grp.1 += 1;
            // A bucket under 1 ms (the API allows ≥ 1 min) counts without buckets.
            if let Some(b) = q.bucket_ms.filter(|b| *b > 0) {
                *grp.2.entry(ts.div_euclid(b) * b).or_default() += 1;
            }
        }
    })?;
    let mut groups: Vec<AggregateGroup> = groups
        .into_iter()
        .map(|(key, total, buckets)| AggregateGroup {
            key,
            total,
            buckets: buckets.into_iter().collect(),
        })
        .collect();
    groups.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.key.cmp(&b.key)));
    Ok(EventAggregate { total, groups })
}

/// Buffers of [`SledStore::write_sync`], kept between batches: built afresh, a batch's keys
/// and record list landed on fresh pages often enough that the kernel zeroing them cost ~3 %
/// of durable ingest's CPU (`cloud-hub bench-ingest` under perf).
#[derive(Default)]
struct Scratch {
    keys: KeyArena,
    /// Always empty between batches; only its capacity is kept.
    records: Vec<NewRecord<'static>>,
}

impl Scratch {
    /// Lets go of buffers grown past what an ingest batch needs (a one-off big write).
    fn trim(&mut self) {
        if self.keys.text.capacity() > KEEP_KEY_BYTES || self.records.capacity() > KEEP_RECORDS {
            *self = Scratch::default();
        }
    }
}

/// Most key bytes and records [`Scratch`] keeps: several full ingest batches' worth.
const KEEP_KEY_BYTES: usize = 1024 * 1024;
const KEEP_RECORDS: usize = 4 * MAX_BATCH;

/// The source keys of a batch's records in one string, with each record's id.
#[derive(Default)]
struct KeyArena {
    text: String,
    /// (id, end of its key in `text`).
    ends: Vec<(u128, usize)>,
}

impl KeyArena {
    fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }

    fn push(&mut self, id: u128, write_key: impl FnOnce(&mut String)) {
        write_key(&mut self.text);
        self.ends.push((id, self.text.len()));
    }

    /// The records, into `out`: each pushed key and id with its `ts_ms` and payload.
    fn records<'a>(
        &'a self,
        mut out: Vec<NewRecord<'a>>,
        ts: impl Iterator<Item = i64>,
        payloads: impl Iterator<Item = &'a [u8]>,
        received_ms: i64,
    ) -> Vec<NewRecord<'a>> {
        let mut start = 0;
        for ((&(id, end), ts_ms), payload) in self.ends.iter().zip(ts).zip(payloads) {
            out.push(NewRecord {
                id,
                ts_ms,
                received_ms,
                key: &self.text[start..end],
                payload,
            });
            start = end;
        }
        out
    }
}

/// An emptied vector of records, with its capacity, for records of another lifetime: the
/// standard library collects a vector's own iterator in place, keeping the allocation.
fn recycle<'a, 'b>(mut v: Vec<NewRecord<'a>>) -> Vec<NewRecord<'b>> {
    v.clear();
    // Never runs (the vector is empty); it only gives the records their new lifetime.
    v.into_iter()
        .map(|r| NewRecord {
            key: "",
            payload: &[],
            ..r
        })
        .collect()
}

/// Each message's JSON: as encoded here when the batch came without it (`encoded` is then
/// not empty), else as received.
fn payloads<'a>(
    received: &'a [bytes::Bytes],
    encoded: &'a [Vec<u8>],
) -> impl Iterator<Item = &'a [u8]> {
    let received = received
        .iter()
        .take(if encoded.is_empty() { usize::MAX } else { 0 });
    (received.map(|b| &b[..])).chain(encoded.iter().map(|b| &b[..]))
}

/// The record log's source key: `site/device/camera` of an event, `site/device/source` of
/// telemetry. All three are validated topic-level-like ids, so `/` cannot occur in them.
fn source_key(site: &str, device: &str, source: &str) -> String {
    let mut k = String::with_capacity(site.len() + device.len() + source.len() + 2);
    push_source_key(&mut k, site, device, source);
    k
}

fn push_source_key(k: &mut String, site: &str, device: &str, source: &str) {
    for (i, part) in [site, device, source].into_iter().enumerate() {
        if i > 0 {
            k.push('/');
        }
        k.push_str(part);
    }
}

/// An event's record log key: its source key, then the dimensions aggregates group by
/// ([`EventTags`]), `|`-separated: per key the log keeps counts and an in-memory time index,
/// so aggregates never read the events themselves.
pub fn event_key(e: &Event) -> String {
    let mut k = String::with_capacity(96);
    push_event_key(&mut k, e);
    k
}

/// [`event_key`] written at the end of `k`.
fn push_event_key(k: &mut String, e: &Event) {
    // No intermediate strings: this runs for every stored event.
    fn push_clean(k: &mut String, v: &str) {
        // `|` is ASCII, so it is never part of another character's UTF-8 bytes.
        match v.as_bytes().contains(&b'|') {
            false => k.push_str(v),
            true => k.push_str(&v.replace('|', "_")),
        }
    }
    let rule = e.rule.as_ref();
    push_clean(k, &e.site);
    k.push('/');
    push_clean(k, &e.device);
    k.push('/');
    push_clean(k, &e.camera);
    k.push('|');
    k.push_str(match e.kind {
        EventKind::Detection => "detection",
        EventKind::Rule => "rule",
    });
    let fields = [
        rule.map(|r| r.event_type.as_str()),
        rule.and_then(|r| r.zone.as_deref()),
        rule.and_then(|r| r.category.as_deref()),
        rule.map(|r| phase_str(r.phase)),
    ];
    for f in fields {
        k.push('|');
        push_clean(k, f.unwrap_or(""));
    }
}

fn phase_str(p: Phase) -> &'static str {
    match p {
        Phase::Start => "start",
        Phase::Update => "update",
        Phase::End => "end",
        Phase::Instant => "instant",
    }
}

/// The dimensions of an event's log key (see [`event_key`]); empty strings where absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventTags<'a> {
    pub site: &'a str,
    pub device: &'a str,
    pub camera: &'a str,
    pub kind: &'a str,
    pub event_type: &'a str,
    pub zone: &'a str,
    pub category: &'a str,
    pub phase: &'a str,
}

impl<'a> EventTags<'a> {
    pub fn parse(key: &'a str) -> EventTags<'a> {
        let mut parts = key.split('|');
        let mut next = || parts.next().unwrap_or("");
        let source = next();
        let mut src = source.splitn(3, '/');
        let mut level = || src.next().unwrap_or("");
        let (site, device, camera) = (level(), level(), level());
        EventTags {
            site,
            device,
            camera,
            kind: next(),
            event_type: next(),
            zone: next(),
            category: next(),
            phase: next(),
        }
    }

    pub fn get(&self, dim: EventDim) -> &'a str {
        match dim {
            EventDim::Site => self.site,
            EventDim::Device => self.device,
            EventDim::Camera => self.camera,
            EventDim::Kind => self.kind,
            EventDim::EventType => self.event_type,
            EventDim::Zone => self.zone,
            EventDim::Category => self.category,
            EventDim::Phase => self.phase,
        }
    }
}

/// Whether a source key matches optional site, device and source filters (dimensions after
/// a `|` are not part of the source).
fn key_matches(key: &str, site: Option<&str>, device: Option<&str>, source: Option<&str>) -> bool {
    let key = key.split('|').next().unwrap_or("");
    let mut parts = key.splitn(3, '/');
    let mut part_is = |want: Option<&str>| {
        let got = parts.next();
        want.is_none_or(|w| got == Some(w))
    };
    part_is(site) && part_is(device) && part_is(source)
}

/// The fields a stored event or telemetry message's source key is made of.
#[derive(Deserialize)]
struct SourceFields {
    site: String,
    device: String,
    #[serde(default)]
    camera: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

impl SourceFields {
    fn key(&self) -> String {
        let source = self
            .camera
            .as_deref()
            .or(self.source.as_deref())
            .unwrap_or("");
        source_key(&self.site, &self.device, source)
    }
}

fn device_key(site: &str, device: &str) -> String {
    // Both are validated topic levels, so '/' cannot occur inside them.
    format!("{site}/{device}")
}

fn decode_counter(v: Option<sled::IVec>) -> u64 {
    v.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

fn read_counter(meta: &sled::Tree, key: &[u8]) -> Result<u64, StoreError> {
    Ok(decode_counter(meta.get(key).map_err(sled_err("stats"))?))
}

fn add_counter(
    meta: &sled::transaction::TransactionalTree,
    key: &[u8],
    n: u64,
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    if n > 0 {
        let v = decode_counter(meta.get(key)?).saturating_add(n);
        meta.insert(key, &v.to_be_bytes()[..])?;
    }
    Ok(())
}

impl Store for SledStore {
    async fn write(
        &self,
        batch: impl Into<Arc<WriteBatch>> + Send,
    ) -> Result<WriteOutcome, StoreError> {
        let batch = batch.into();
        if batch.is_empty() {
            return Ok(WriteOutcome::default());
        }
        let r = self.blocking(move |s| s.write_sync(&batch)).await;
        self.write_health.record(false, &r, &self.dir);
        r
    }

    async fn query_events(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        self.blocking(move |s| s.query_sync(&query)).await
    }

    async fn aggregate_events(
        &self,
        query: EventAggregateQuery,
    ) -> Result<EventAggregate, StoreError> {
        self.blocking(move |s| {
            aggregate(&s.events, &query).map_err(|cause| StoreError::Log {
                what: "event",
                cause,
            })
        })
        .await
    }

    async fn query_telemetry(&self, query: TelemetryQuery) -> Result<TelemetryPage, StoreError> {
        self.blocking(move |s| s.telemetry_sync(&query)).await
    }

    async fn query_quarantine(&self, query: QuarantineQuery) -> Result<QuarantinePage, StoreError> {
        self.blocking(move |s| s.quarantine_sync(&query)).await
    }

    async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.blocking(|s| s.devices_sync()).await
    }

    async fn sources(&self) -> Result<Vec<SourceRecord>, StoreError> {
        let mut out = Vec::new();
        for (kind, log) in [
            (DataKind::Events, &self.events),
            (DataKind::Telemetry, &self.telemetry),
        ] {
            // Event keys carry dimensions after the source: one entry per source.
            let mut merged: std::collections::BTreeMap<String, SourceStats> = Default::default();
            for (key, stats) in log.sources() {
                let source = key.split('|').next().unwrap_or("").to_string();
                merged
                    .entry(source)
                    .and_modify(|m| m.merge(&stats))
                    .or_insert(stats);
            }
            for (key, stats) in merged {
                let mut parts = key.splitn(3, '/').map(str::to_string);
                let mut next = || parts.next().unwrap_or_default();
                let (site, device, source) = (next(), next(), next());
                out.push(SourceRecord {
                    kind,
                    site,
                    device,
                    source,
                    stats,
                });
            }
        }
        out.sort_by(|a, b| {
            (a.kind, &a.site, &a.device, &a.source).cmp(&(b.kind, &b.site, &b.device, &b.source))
        });
        Ok(out)
    }

    fn index_bytes(&self) -> u64 {
        SledStore::index_bytes(self)
    }

    fn health(&self) -> StoreHealth {
        SledStore::health(self)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.blocking(|s| s.stats_sync()).await
    }

    fn events_end(&self) -> LogPos {
        self.events.end()
    }

    async fn events_after(
        &self,
        after: Option<LogPos>,
        limit: usize,
    ) -> Result<Vec<(Event, LogPos)>, StoreError> {
        self.blocking(move |s| s.events_after_sync(after, limit))
            .await
    }

    async fn event(&self, id: Ulid) -> Result<Option<Event>, StoreError> {
        self.blocking(move |s| s.event_sync(id)).await
    }

    async fn put_snapshot(&self, snapshot: NewSnapshot) -> Result<PutSnapshot, StoreError> {
        let r = self.blocking(move |s| s.put_snapshot_sync(snapshot)).await;
        self.write_health.record(true, &r, &self.dir);
        r
    }

    async fn snapshot(&self, id: Ulid) -> Result<Option<Snapshot>, StoreError> {
        self.blocking(move |s| s.snapshot_sync(id)).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.blocking(|s| {
            s.series.persist()?;
            s.db.flush().map(|_| ()).map_err(sled_err("flush"))
        })
        .await
    }
}

// ---- telemetry series (rollups) ----

impl From<SeriesError> for StoreError {
    fn from(e: SeriesError) -> Self {
        StoreError::Series(e.to_string())
    }
}

/// Telemetry series reads; the sled store implements it, a PostgreSQL backend would too
/// (writes come through [`crate::storage::store::Store::write`]).
pub trait SeriesStore: Send + Sync + 'static {
    fn list_series(
        &self,
        filter: SeriesFilter,
    ) -> impl Future<Output = Result<(Vec<SeriesInfo>, bool), StoreError>> + Send;
    /// `Ok(None)` when the series does not exist.
    fn query_series(
        &self,
        query: SeriesQuery,
    ) -> impl Future<Output = Result<Option<SeriesData>, StoreError>> + Send;
}

/// Appends a batch's telemetry to the log and applies what was newly stored to the series.
pub fn append_telemetry(
    log: &RecordLog,
    series: &Series,
    telemetry: &[Telemetry],
    records: &[NewRecord<'_>],
) -> Result<(u64, Vec<ulid::Ulid>), StoreError> {
    log.append_then(records, |stored, end| {
        series.apply(stored.iter().filter_map(|&i| telemetry.get(i)), end)
    })
    .map(|a| (a.stored, a.duplicates.into_iter().map(ulid::Ulid).collect()))
    .map_err(|cause| StoreError::Log {
        what: "telemetry",
        cause,
    })
}

impl SeriesStore for SledStore {
    async fn list_series(
        &self,
        filter: SeriesFilter,
    ) -> Result<(Vec<SeriesInfo>, bool), StoreError> {
        let s = self.series.clone();
        tokio::task::spawn_blocking(move || Ok(s.list(&filter)))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn query_series(&self, query: SeriesQuery) -> Result<Option<SeriesData>, StoreError> {
        let s = self.series.clone();
        tokio::task::spawn_blocking(move || s.query(&query).map_err(StoreError::from))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

impl SledStore {
    /// Sets `[telemetry_retention]` (default [`Retention::default`]).
    pub fn with_telemetry_retention(self, r: Retention) -> SledStore {
        self.series.set_retention(r);
        self
    }

    /// The telemetry series store (benchmarks, tests).
    pub fn series(&self) -> &Arc<Series> {
        &self.series
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use csb_wire::{
        BBox, CameraState, CameraStatus, Detection, DeviceState, EventKind, FrameInfo, ModelRef,
        Phase, RuleInfo, RuleType, SensorState, SensorStatus,
    };
    use std::collections::BTreeMap;

    use crate::storage::quarantine::RejectReason;

    #[test]
    fn write_buffers_keep_their_room_and_give_each_record_its_own_key() {
        let mut records: Vec<NewRecord<'static>> = Vec::with_capacity(64);
        let ptr = records.as_ptr();
        let mut keys = KeyArena::default();
        let events: Vec<Event> = ["gw-01", "gw-02|x"]
            .iter()
            .map(|d| event(d, "cam-01", 1_790_000_000_000, &[(0, "person")]))
            .collect();
        for e in &events {
            keys.push(e.id.0, |k| push_event_key(k, e));
        }
        let received = [
            bytes::Bytes::from_static(b"{1}"),
            bytes::Bytes::from_static(b"{2}"),
        ];
        let recs = keys.records(
            recycle(std::mem::take(&mut records)),
            events.iter().map(|e| e.ts_ms),
            payloads(&received, &[]),
            7,
        );
        assert_eq!(recs.as_ptr(), ptr, "the record list's allocation is reused");
        let got: Vec<(u128, &str, &[u8])> = recs.iter().map(|r| (r.id, r.key, r.payload)).collect();
        assert_eq!(
            got,
            vec![
                (events[0].id.0, event_key(&events[0]).as_str(), &b"{1}"[..]),
                (events[1].id.0, event_key(&events[1]).as_str(), &b"{2}"[..]),
            ]
        );
        assert!(recs
            .iter()
            .all(|r| r.received_ms == 7 && r.ts_ms == events[0].ts_ms));
        records = recycle(recs);
        assert!(records.is_empty() && records.capacity() >= 64);
        // Encoded JSON, when given, replaces what was received.
        let encoded = vec![b"a".to_vec()];
        let chosen: Vec<&[u8]> = payloads(&received, &encoded).collect();
        assert_eq!(chosen, vec![&b"a"[..]]);
        assert_eq!(source_key("s", "d", "x"), "s/d/x");
    }

    pub(crate) fn event(device: &str, camera: &str, ts_ms: i64, labels: &[(u32, &str)]) -> Event {
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
                pts_ms: None,
                width: 640,
                height: 480,
            }),
            model: Some(ModelRef {
                name: "yolox_nano".into(),
                sha256: "695e750a5d57".into(),
            }),
            objects: labels
                .iter()
                .map(|(id, l)| Detection {
                    class_id: *id,
                    label: (*l).into(),
                    score: 0.9,
                    bbox: BBox {
                        x1: 1.0,
                        y1: 1.0,
                        x2: 10.0,
                        y2: 10.0,
                    },
                    track_id: None,
                })
                .collect(),
            rule: None,
        }
    }

    /// A dwell rule event about tracked objects, with an evidence snapshot reference.
    pub(crate) fn rule_event(ts_ms: i64, event_type: &str, label: &str, snapshot: Ulid) -> Event {
        let mut e = event("gw-01", "cam-01", ts_ms, &[(2, label)]);
        e.kind = EventKind::Rule;
        e.objects[0].track_id = Some(17);
        e.rule = Some(RuleInfo {
            rule: "no-parking-gate".into(),
            rule_type: RuleType::Dwell,
            event_type: event_type.into(),
            category: Some("0101".into()),
            phase: Phase::Start,
            problem_id: Ulid::new(),
            zone: Some("gate".into()),
            track_ids: vec![17],
            started_ms: ts_ms - 120_000,
            duration_ms: 120_000,
            count: None,
            direction: None,
            value: None,
            metric: None,
            snapshot: Some(snapshot.to_string()),
        });
        e
    }

    fn new_snapshot(id: Ulid, bytes: &[u8]) -> NewSnapshot {
        NewSnapshot {
            id,
            site: "yuexi".into(),
            device: "gw-01".into(),
            event: None,
            received_ms: T0,
            bytes: bytes.to_vec(),
        }
    }

    fn open() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(&dir.path().join("db"), 8).unwrap();
        (dir, s)
    }

    /// Opens a store again after dropping it. sled's I/O threads may hold the directory lock for
    /// a moment after the last handle is gone; a restarted process never sees that.
    fn reopen(path: &Path) -> SledStore {
        for _ in 0..100 {
            match SledStore::open(path, 8) {
                Ok(s) => return s,
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{} still locked after 2 s", path.display());
    }

    fn ids(page: &EventPage) -> Vec<Ulid> {
        page.events.iter().map(|e| e.id).collect()
    }

    const T0: i64 = 1_790_000_000_000;

    /// Key of the sled rows of stores written before the record logs.
    fn legacy_key(ts_ms: i64, id: Ulid) -> Vec<u8> {
        let mut k = ((ts_ms as u64) ^ (1 << 63)).to_be_bytes().to_vec();
        k.extend_from_slice(&id.0.to_be_bytes());
        k
    }

    #[tokio::test]
    async fn rows_of_an_older_store_move_into_the_logs_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let early = event("gw-01", "cam-01", -5, &[(0, "person")]);
        let late = event("gw-01", "cam-01", T0, &[(2, "car")]);
        let t = telemetry("gw-01", "agent", T0, &[("cpu_load", 0.4)]);
        {
            // As a hub before the record logs left it: rows and id index trees in sled.
            let db = sled::open(&path).unwrap();
            let (events, ids) = (
                db.open_tree("events").unwrap(),
                db.open_tree("ids").unwrap(),
            );
            for e in [&late, &early] {
                let key = legacy_key(e.ts_ms, e.id);
                events.insert(&key, serde_json::to_vec(e).unwrap()).unwrap();
                ids.insert(e.id.0.to_be_bytes(), key).unwrap();
            }
            ids.insert(b"#count", &2u64.to_be_bytes()[..]).unwrap();
            let tel = db.open_tree("telemetry").unwrap();
            tel.insert(legacy_key(t.ts_ms, t.id), serde_json::to_vec(&t).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        for round in 0..2 {
            let s = reopen(&path);
            let stats = s.stats().await.unwrap();
            assert_eq!((stats.events, stats.telemetry), (2, 1), "round {round}");
            let page = s.query_events(EventQuery::default()).await.unwrap();
            assert_eq!(page.events, vec![late.clone(), early.clone()]);
            assert_eq!(s.event(early.id).await.unwrap(), Some(early.clone()));
            let names = s.db.tree_names();
            for gone in ["events", "ids", "telemetry", "telemetry_ids"] {
                assert!(
                    !names.iter().any(|n| n.as_ref() == gone.as_bytes()),
                    "{gone}"
                );
            }
            let out = s
                .write(WriteBatch {
                    events: vec![late.clone()],
                    telemetry: vec![t.clone()],
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(out.events_duplicate, vec![late.id]);
            assert_eq!(out.telemetry_duplicate, vec![t.id]);
        }
    }

    #[tokio::test]
    async fn sources_count_what_each_camera_and_sensor_sent_and_filters_use_them() {
        let (_d, s) = open();
        let a = event("gw-01", "cam-01", T0, &[(0, "person")]);
        let b = event("gw-01", "cam-02", T0 + 10, &[(0, "person")]);
        let c = event("gw-01", "cam-01", T0 + 20, &[(2, "car")]);
        let t = telemetry("gw-02", "wl-01", T0, &[("water_level_cm", 12.0)]);
        s.write(WriteBatch {
            events: vec![a.clone(), b.clone(), c.clone(), a.clone()],
            telemetry: vec![t.clone()],
            received_ms: T0 + 500,
            ..Default::default()
        })
        .await
        .unwrap();
        let src = s.sources().await.unwrap();
        let brief: Vec<_> = src
            .iter()
            .map(|r| {
                (
                    r.kind,
                    r.device.as_str(),
                    r.source.as_str(),
                    r.stats.records,
                )
            })
            .collect();
        assert_eq!(
            brief,
            vec![
                (DataKind::Events, "gw-01", "cam-01", 2),
                (DataKind::Events, "gw-01", "cam-02", 1),
                (DataKind::Telemetry, "gw-02", "wl-01", 1),
            ]
        );
        assert_eq!(
            (src[0].stats.first_ts_ms, src[0].stats.last_ts_ms),
            (T0, T0 + 20)
        );
        assert_eq!(src[0].stats.last_received_ms, T0 + 500);
        let q = EventQuery {
            camera: Some("cam-01".into()),
            ..Default::default()
        };
        assert_eq!(ids(&s.query_events(q).await.unwrap()), vec![c.id, a.id]);
        let q = EventQuery {
            device: Some("gw-09".into()),
            ..Default::default()
        };
        assert!(s.query_events(q).await.unwrap().events.is_empty());
    }

    #[test]
    fn source_keys_match_their_parts_only() {
        let k = "yuexi/gw-01/cam-01";
        assert!(key_matches(k, None, None, None));
        assert!(key_matches(k, Some("yuexi"), Some("gw-01"), Some("cam-01")));
        assert!(!key_matches(k, None, Some("gw-0"), None));
        assert!(!key_matches(k, None, None, Some("cam-01/x")));
        assert!(!key_matches(k, Some("yuex"), None, None));
    }

    #[test]
    fn rule_filters_match_the_event_and_its_log_key_alike() {
        let e = rule_event(T0, "illegal_parking", "car", Ulid::new());
        let key = event_key(&e);
        let cases = [
            (
                EventQuery {
                    zone: Some("gate".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                EventQuery {
                    zone: Some("junction".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                EventQuery {
                    category: Some("0101".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                EventQuery {
                    phase: Some(Phase::End),
                    ..Default::default()
                },
                false,
            ),
            (
                EventQuery {
                    event_type: Some("illegal_parking".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                EventQuery {
                    kind: Some(EventKind::Detection),
                    ..Default::default()
                },
                false,
            ),
        ];
        for (q, want) in cases {
            assert_eq!(q.matches(&e), want, "{q:?}");
            assert_eq!(q.key_may_match(&key), want, "{q:?} on {key}");
        }
        let tags = EventTags::parse(&key);
        assert_eq!(
            (tags.camera, tags.zone, tags.phase),
            ("cam-01", "gate", "start")
        );
    }

    #[tokio::test]
    async fn newest_first_and_dedup() {
        let (_d, s) = open();
        let e1 = event("gw-01", "cam-01", T0, &[(0, "person")]);
        let e2 = event("gw-01", "cam-01", T0 + 1000, &[(2, "car")]);
        let e3 = event("gw-02", "cam-02", T0 + 500, &[(0, "person"), (2, "car")]);
        // Written out of time order, with e1 repeated inside the batch.
        let out = s
            .write(WriteBatch {
                events: vec![e2.clone(), e1.clone(), e3.clone(), e1.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(out.events_inserted, 3);
        assert_eq!(out.events_duplicate, vec![e1.id]);
        // And again in a later batch.
        let out = s
            .write(WriteBatch {
                events: vec![e3.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(out.events_inserted, 0);
        assert_eq!(out.events_duplicate, vec![e3.id]);

        let page = s.query_events(EventQuery::default()).await.unwrap();
        assert_eq!(ids(&page), vec![e2.id, e3.id, e1.id]);
        assert!(!page.truncated);
        assert_eq!(page.events[0], e2);
        assert_eq!(s.stats().await.unwrap().events, 3);
    }

    #[tokio::test]
    async fn filters() {
        let (_d, s) = open();
        let e1 = event("gw-01", "cam-01", T0, &[(0, "person")]);
        let e2 = event("gw-01", "cam-02", T0 + 1000, &[(2, "car")]);
        let e3 = event("gw-02", "cam-01", T0 + 2000, &[(0, "person"), (2, "car")]);
        s.write(WriteBatch {
            events: vec![e1.clone(), e2.clone(), e3.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
        let q = |f: fn(&mut EventQuery)| {
            let mut q = EventQuery::default();
            f(&mut q);
            q
        };
        let run = |q: EventQuery| {
            let s = s.clone();
            async move { ids(&s.query_events(q).await.unwrap()) }
        };
        assert_eq!(
            run(q(|q| q.device = Some("gw-01".into()))).await,
            vec![e2.id, e1.id]
        );
        assert_eq!(
            run(q(|q| q.camera = Some("cam-01".into()))).await,
            vec![e3.id, e1.id]
        );
        assert_eq!(
            run(q(|q| q.class = Some(ClassFilter::parse("car")))).await,
            vec![e3.id, e2.id]
        );
        assert_eq!(
            run(q(|q| q.class = Some(ClassFilter::parse("0")))).await,
            vec![e3.id, e1.id]
        );
        assert_eq!(
            run(q(|q| q.class = Some(ClassFilter::parse("bicycle")))).await,
            Vec::<Ulid>::new()
        );
        assert_eq!(
            run(q(|q| q.site = Some("other".into()))).await,
            Vec::<Ulid>::new()
        );
        // from inclusive, to exclusive.
        assert_eq!(
            run(q(|q| {
                q.from_ms = Some(T0 + 1000);
                q.to_ms = Some(T0 + 2000);
            }))
            .await,
            vec![e2.id]
        );
        assert_eq!(
            run(q(|q| q.from_ms = Some(T0 + 1))).await,
            vec![e3.id, e2.id]
        );
        assert_eq!(run(q(|q| q.to_ms = Some(T0 + 1))).await, vec![e1.id]);
        assert_eq!(run(q(|q| q.limit = 2)).await, vec![e3.id, e2.id]);
        assert_eq!(
            run(q(|q| {
                q.device = Some("gw-01".into());
                q.class = Some(ClassFilter::parse("person"));
            }))
            .await,
            vec![e1.id]
        );
    }

    #[tokio::test]
    async fn rule_event_round_trip_by_query_and_id() {
        let (_d, s) = open();
        let det = event("gw-01", "cam-01", T0, &[(2, "car")]);
        let parking = rule_event(T0 + 1000, "illegal_parking", "car", Ulid::new());
        let vending = rule_event(T0 + 2000, "street_vending", "person", Ulid::new());
        s.write(WriteBatch {
            events: vec![det.clone(), parking.clone(), vending.clone()],
            ..Default::default()
        })
        .await
        .unwrap();

        // Everything (rule info, track ids, snapshot reference) comes back as written.
        let page = s.query_events(EventQuery::default()).await.unwrap();
        assert_eq!(
            page.events,
            vec![vending.clone(), parking.clone(), det.clone()]
        );
        assert_eq!(s.event(parking.id).await.unwrap(), Some(parking.clone()));
        assert_eq!(s.event(det.id).await.unwrap(), Some(det.clone()));
        assert_eq!(s.event(Ulid::new()).await.unwrap(), None);

        let run = |q: EventQuery| {
            let s = s.clone();
            async move { ids(&s.query_events(q).await.unwrap()) }
        };
        let kind = |k| EventQuery {
            kind: Some(k),
            ..EventQuery::default()
        };
        assert_eq!(
            run(kind(EventKind::Rule)).await,
            vec![vending.id, parking.id]
        );
        assert_eq!(run(kind(EventKind::Detection)).await, vec![det.id]);
        let event_type = |t: &str| EventQuery {
            event_type: Some(t.into()),
            ..EventQuery::default()
        };
        assert_eq!(run(event_type("illegal_parking")).await, vec![parking.id]);
        assert_eq!(run(event_type("crowd_gathering")).await, Vec::<Ulid>::new());
        // `class` still looks at the objects, of rule events too.
        let class = |c: &str, k: Option<EventKind>| EventQuery {
            class: Some(ClassFilter::parse(c)),
            kind: k,
            ..EventQuery::default()
        };
        assert_eq!(run(class("car", None)).await, vec![parking.id, det.id]);
        assert_eq!(
            run(class("car", Some(EventKind::Rule))).await,
            vec![parking.id]
        );
        assert_eq!(run(class("person", None)).await, vec![vending.id]);
    }

    #[tokio::test]
    async fn snapshot_create_idempotent_conflict_and_lookup() {
        let (d, s) = open();
        let id = Ulid::from_parts(T0 as u64, 42);
        let jpeg = b"\xFF\xD8\xFF\xE0 pretend jpeg";
        assert_eq!(s.snapshot(id).await.unwrap(), None);

        let mut first = new_snapshot(id, jpeg);
        first.event = Some(Ulid::new());
        assert_eq!(
            s.put_snapshot(first.clone()).await.unwrap(),
            PutSnapshot::Created
        );
        // A retry with the same bytes (other headers do not matter) changes nothing.
        assert_eq!(
            s.put_snapshot(new_snapshot(id, jpeg)).await.unwrap(),
            PutSnapshot::Identical
        );
        assert_eq!(
            s.put_snapshot(new_snapshot(id, b"\xFF\xD8\xFF other"))
                .await
                .unwrap(),
            PutSnapshot::Conflict {
                stored_len: jpeg.len() as u64
            }
        );
        let got = s.snapshot(id).await.unwrap().unwrap();
        assert_eq!(got.bytes, jpeg);
        assert_eq!(
            got.meta,
            SnapshotMeta {
                id,
                site: "yuexi".into(),
                device: "gw-01".into(),
                event: first.event,
                received_ms: T0,
                len: jpeg.len() as u64,
            }
        );
        // A plain file in a day directory (T0 is 2026-09-21 UTC).
        let file = d
            .path()
            .join("db/snapshots/2026-09-21")
            .join(format!("{id}.jpg"));
        assert_eq!(std::fs::read(&file).unwrap(), jpeg);

        let other = Ulid::new();
        s.put_snapshot(new_snapshot(other, b"\xFF\xD8\xFF\xDB"))
            .await
            .unwrap();
        let st = s.stats().await.unwrap();
        assert_eq!(st.snapshots, 2);
        assert_eq!(st.snapshot_bytes, jpeg.len() as u64 + 4);
    }

    #[tokio::test]
    async fn snapshot_survives_reopen_and_unfinished_uploads_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let id = Ulid::new();
        {
            let s = SledStore::open(&path, 8).unwrap();
            s.put_snapshot(new_snapshot(id, b"\xFF\xD8\xFF kept"))
                .await
                .unwrap();
        }
        // Leftovers of a crash: a temporary file, and a renamed file whose metadata never
        // made it (so it was never acknowledged).
        let snaps = path.join(SNAPSHOT_DIR);
        std::fs::write(snaps.join("tmp").join("x.jpg"), b"half").unwrap();
        let orphan = Ulid::new();
        let s = reopen(&path);
        let orphan_path = s.files.path(orphan);
        std::fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
        std::fs::write(&orphan_path, b"\xFF\xD8\xFF torn").unwrap();
        assert!(!snaps.join("tmp").join("x.jpg").exists());

        assert_eq!(
            s.snapshot(id).await.unwrap().unwrap().bytes,
            b"\xFF\xD8\xFF kept"
        );
        assert_eq!(s.snapshot(orphan).await.unwrap(), None);
        assert_eq!(
            s.put_snapshot(new_snapshot(orphan, b"\xFF\xD8\xFF retried"))
                .await
                .unwrap(),
            PutSnapshot::Created
        );
        assert_eq!(
            s.snapshot(orphan).await.unwrap().unwrap().bytes,
            b"\xFF\xD8\xFF retried"
        );
        assert_eq!(s.stats().await.unwrap().snapshots, 2);

        // A file that no longer matches its metadata is reported, not served.
        std::fs::write(s.files.path(id), b"\xFF\xD8\xFF truncated?").unwrap();
        let err = s.snapshot(id).await.unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(T0 / 86_400_000), (2026, 9, 21));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
    }

    #[tokio::test]
    async fn telemetry_and_latest_status_per_device() {
        let (_d, s) = open();
        let tel = Telemetry {
            v: 1,
            id: Ulid::new(),
            site: "yuexi".into(),
            device: "gw-01".into(),
            source: "agent".into(),
            ts_ms: T0,
            metrics: BTreeMap::from([("cpu".to_string(), 0.5)]),
        };
        let status = |state, ts_ms| DeviceStatus {
            v: 1,
            site: "yuexi".into(),
            device: "gw-01".into(),
            ts_ms,
            state,
            agent_version: Some("0.1.0".into()),
            cameras: vec![CameraStatus {
                id: "cam-01".into(),
                state: CameraState::Running,
                fps: Some(9.5),
                error: None,
                health: None,
            }],
            sensors: vec![],
            outbox: None,
            config_version: None,
            model: None,
        };
        // An offline last will carries its connect-time timestamp, older than the online status
        // sent right after: arrival order, not ts_ms, decides which is current.
        let out = s
            .write(WriteBatch {
                telemetry: vec![tel.clone(), tel.clone()],
                statuses: vec![
                    (status(DeviceState::Online, T0 + 10), T0 + 20),
                    (status(DeviceState::Offline, T0), T0 + 30),
                ],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(out.telemetry_inserted, 1);
        assert_eq!(out.statuses_written, 2);
        let devs = s.devices().await.unwrap();
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0].status.state, DeviceState::Offline);
        assert_eq!(devs[0].received_ms, T0 + 30);
        let json = serde_json::to_value(&devs[0]).unwrap();
        assert_eq!(json["device"], "gw-01");
        assert_eq!(json["received_ms"], T0 + 30);
        let st = s.stats().await.unwrap();
        assert_eq!(
            st,
            StoreStats {
                events: 0,
                telemetry: 1,
                devices: 1,
                quarantine: 0,
                snapshots: 0,
                snapshot_bytes: 0,
            }
        );
    }

    fn telemetry(device: &str, source: &str, ts_ms: i64, metrics: &[(&str, f64)]) -> Telemetry {
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

    fn tel_ids(page: &TelemetryPage) -> Vec<Ulid> {
        page.telemetry.iter().map(|t| t.id).collect()
    }

    #[tokio::test]
    async fn telemetry_query_order_range_filters_and_limit() {
        let (_d, s) = open();
        let agent = telemetry("gw-01", "agent", T0, &[("cpu_load", 0.4)]);
        let wl1 = telemetry("gw-01", "wl-01", T0 + 1000, &[("water_level_cm", 12.5)]);
        let cam = telemetry("gw-01", "cam-01", T0 + 1500, &[("cam-01.fps", 9.8)]);
        let wl2 = telemetry(
            "gw-01",
            "wl-01",
            T0 + 2000,
            &[("water_level_cm", 13.0), ("battery_v", 3.6)],
        );
        let other = telemetry("gw-02", "wl-01", T0 + 2500, &[("water_level_cm", 40.0)]);
        let batt = telemetry("gw-01", "wl-01", T0 + 3000, &[("battery_v", 3.5)]);
        // Written out of time order.
        s.write(WriteBatch {
            telemetry: vec![
                wl2.clone(),
                agent.clone(),
                batt.clone(),
                cam.clone(),
                other.clone(),
                wl1.clone(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
        // Events and telemetry are separate trees: neither query sees the other.
        assert!(s
            .query_events(EventQuery::default())
            .await
            .unwrap()
            .events
            .is_empty());

        let run = |f: fn(&mut TelemetryQuery)| {
            let s = s.clone();
            let mut q = TelemetryQuery::default();
            f(&mut q);
            async move { tel_ids(&s.query_telemetry(q).await.unwrap()) }
        };
        // Newest first, like events.
        let page = s.query_telemetry(TelemetryQuery::default()).await.unwrap();
        assert_eq!(
            tel_ids(&page),
            vec![batt.id, other.id, wl2.id, cam.id, wl1.id, agent.id]
        );
        assert!(!page.truncated);
        assert_eq!(page.telemetry[2], wl2);

        assert_eq!(
            run(|q| q.source = Some("wl-01".into())).await,
            vec![batt.id, other.id, wl2.id, wl1.id]
        );
        assert_eq!(
            run(|q| q.source = Some("agent".into())).await,
            vec![agent.id]
        );
        assert_eq!(
            run(|q| q.device = Some("gw-02".into())).await,
            vec![other.id]
        );
        assert_eq!(
            run(|q| q.site = Some("other".into())).await,
            Vec::<Ulid>::new()
        );
        assert_eq!(
            run(|q| q.metric = Some("water_level_cm".into())).await,
            vec![other.id, wl2.id, wl1.id]
        );
        assert_eq!(
            run(|q| q.metric = Some("cam-01.fps".into())).await,
            vec![cam.id]
        );
        assert_eq!(
            run(|q| q.metric = Some("water".into())).await,
            Vec::<Ulid>::new()
        );
        // The metric filter selects messages; each keeps all its metrics.
        let page = s
            .query_telemetry(TelemetryQuery {
                device: Some("gw-01".into()),
                source: Some("wl-01".into()),
                metric: Some("battery_v".into()),
                ..TelemetryQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(page.telemetry, vec![batt.clone(), wl2.clone()]);
        assert_eq!(page.telemetry[1].metrics.len(), 2);

        // from inclusive, to exclusive.
        assert_eq!(
            run(|q| {
                q.from_ms = Some(T0 + 1000);
                q.to_ms = Some(T0 + 2000);
            })
            .await,
            vec![cam.id, wl1.id]
        );
        assert_eq!(
            run(|q| q.from_ms = Some(T0 + 2001)).await,
            vec![batt.id, other.id]
        );
        assert_eq!(run(|q| q.to_ms = Some(T0 + 1)).await, vec![agent.id]);
        assert_eq!(
            run(|q| {
                q.from_ms = Some(T0 + 2000);
                q.to_ms = Some(T0 + 2000);
            })
            .await,
            Vec::<Ulid>::new()
        );
        // The limit keeps the newest matches.
        assert_eq!(run(|q| q.limit = 2).await, vec![batt.id, other.id]);
        assert_eq!(
            run(|q| {
                q.limit = 1;
                q.metric = Some("water_level_cm".into());
                q.to_ms = Some(T0 + 2500);
            })
            .await,
            vec![wl2.id]
        );
    }

    #[tokio::test]
    async fn telemetry_query_skips_undecodable_rows() {
        let (_d, s) = open();
        let good = telemetry("gw-01", "agent", T0, &[("cpu_load", 0.4)]);
        s.write(WriteBatch {
            telemetry: vec![good.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
        s.telemetry
            .append(&[NewRecord {
                id: Ulid::new().0,
                ts_ms: T0 + 1,
                received_ms: T0 + 1,
                key: "yuexi/gw-01/agent",
                payload: b"{not json",
            }])
            .unwrap();
        let page = s.query_telemetry(TelemetryQuery::default()).await.unwrap();
        assert_eq!(page.telemetry, vec![good]);
    }

    #[tokio::test]
    async fn device_status_keeps_its_sensors() {
        let (_d, s) = open();
        let status = DeviceStatus {
            v: 1,
            site: "yuexi".into(),
            device: "gw-01".into(),
            ts_ms: T0,
            state: DeviceState::Online,
            agent_version: None,
            cameras: vec![],
            sensors: vec![SensorStatus {
                id: "wl-01".into(),
                state: SensorState::Reporting,
                last_reading_age_ms: Some(1200),
                readings_total: 42,
                errors_total: 1,
                last_error: Some("field `level` missing".into()),
            }],
            outbox: None,
            config_version: None,
            model: None,
        };
        s.write(WriteBatch {
            statuses: vec![(status.clone(), T0 + 5)],
            ..Default::default()
        })
        .await
        .unwrap();
        let devs = s.devices().await.unwrap();
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0].status, status);
        let json = serde_json::to_value(&devs[0]).unwrap();
        assert_eq!(json["sensors"][0]["id"], "wl-01");
        assert_eq!(json["sensors"][0]["state"], "reporting");
    }

    #[tokio::test]
    async fn data_survives_reopen_and_lock_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let e = event("gw-01", "cam-01", T0, &[(0, "person")]);
        {
            let s = SledStore::open(&path, 8).unwrap();
            s.write(WriteBatch {
                events: vec![e.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
            let err = SledStore::open(&path, 8).err().unwrap().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains("another cloud-hub"), "{err}");
        }
        let s = reopen(&path);
        let page = s.query_events(EventQuery::default()).await.unwrap();
        assert_eq!(page.events, vec![e]);
        assert_eq!(s.stats().await.unwrap().events, 1);
    }

    #[tokio::test]
    async fn resends_are_duplicates_across_batches_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let e = event("gw-01", "cam-01", T0, &[(0, "person")]);
        let t = telemetry("gw-01", "agent", T0, &[("cpu_load", 0.4)]);
        {
            let s = SledStore::open(&path, 8).unwrap();
            let out = s
                .write(WriteBatch {
                    events: vec![e.clone()],
                    telemetry: vec![t.clone()],
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!((out.events_inserted, out.telemetry_inserted), (1, 1));
        }
        // After a restart (the index is on disk, not a cache) a resend is recognised, even one
        // whose time was changed: the id decides.
        let s = reopen(&path);
        let mut t_moved = t.clone();
        t_moved.ts_ms += 5000;
        let out = s
            .write(WriteBatch {
                events: vec![e.clone()],
                telemetry: vec![t.clone(), t_moved],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(out.events_inserted, 0);
        assert_eq!(out.events_duplicate, vec![e.id]);
        assert_eq!(out.telemetry_inserted, 0);
        assert_eq!(out.telemetry_duplicate, vec![t.id, t.id]);
        let st = s.stats().await.unwrap();
        assert_eq!((st.events, st.telemetry), (1, 1));
        let page = s.query_telemetry(TelemetryQuery::default()).await.unwrap();
        assert_eq!(page.telemetry, vec![t]);
    }

    #[tokio::test]
    async fn payloads_are_stored_as_received() {
        let (_d, s) = open();
        let e = event("gw-01", "cam-01", T0, &[(0, "person")]);
        let t = telemetry("gw-01", "agent", T0, &[("cpu_load", 0.4)]);
        // As an agent might send it: spaced out, with a field this hub does not know.
        let mut v = serde_json::to_value(&e).unwrap();
        v["future_field"] = "kept".into();
        let raw = serde_json::to_vec_pretty(&v).unwrap();
        s.write(WriteBatch {
            events: vec![e.clone()],
            event_payloads: vec![raw.clone().into()],
            telemetry: vec![t.clone()],
            // Not parallel to `telemetry`: the store encodes it itself.
            telemetry_payloads: vec![],
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(s.events.get(e.id.0).unwrap().unwrap().payload, raw);
        assert_eq!(s.event(e.id).await.unwrap(), Some(e));
        let page = s.query_telemetry(TelemetryQuery::default()).await.unwrap();
        assert_eq!(page.telemetry, vec![t]);
    }

    #[tokio::test]
    async fn a_write_torn_by_a_crash_is_resent_and_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let a = event("gw-01", "cam-01", T0, &[(0, "person")]);
        let b = event("gw-01", "cam-01", T0 + 1, &[(0, "person")]);
        {
            let s = SledStore::open(&path, 8).unwrap();
            s.write(WriteBatch {
                events: vec![a.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        }
        // The crash: part of b's frame reached the disk, the ack never left.
        let seg = path.join(EVENT_LOG_DIR).join("0000000001.log");
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0x40, 1, 0, 0, 7, 7, 7]).unwrap();
        drop(f);
        let s = reopen(&path);
        let out = s
            .write(WriteBatch {
                events: vec![a.clone(), b.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((out.events_inserted, out.events_duplicate), (1, vec![a.id]));
        drop(s);
        let s = reopen(&path);
        let page = s.query_events(EventQuery::default()).await.unwrap();
        assert_eq!(page.events, vec![b.clone(), a.clone()]);
        assert_eq!(s.stats().await.unwrap().events, 2);
    }

    fn quarantined(n: usize, device: &str, reason: RejectReason, ms: i64) -> Vec<QuarantineEntry> {
        let mut gen = ulid::Generator::new();
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
        (0..n)
            .map(|i| {
                QuarantineEntry::new(
                    gen.generate_from_datetime(at).unwrap(),
                    ms,
                    format!("csb/v1/yuexi/{device}/event").as_bytes(),
                    format!("bad {i}").as_bytes(),
                    reason,
                    "detail",
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn quarantine_is_stored_queried_newest_first_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let s = SledStore::open(&path, 8).unwrap().with_quarantine_max(5);
        let first = quarantined(3, "gw-01", RejectReason::NotJson, T0);
        let e = event("gw-01", "cam-01", T0, &[(0, "person")]);
        let out = s
            .write(WriteBatch {
                events: vec![e.clone()],
                quarantine: first.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((out.events_inserted, out.quarantined), (1, 3));
        assert_eq!(out.quarantine_error, None);
        let second = quarantined(4, "gw-02", RejectReason::Schema, T0 + 1000);
        let out = s
            .write(WriteBatch {
                quarantine: second.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        // 7 > 5: the two oldest went.
        assert_eq!((out.quarantined, out.quarantine_pruned), (4, 2));
        assert_eq!(s.stats().await.unwrap().quarantine, 5);

        let all = s
            .query_quarantine(QuarantineQuery::default())
            .await
            .unwrap();
        let got: Vec<Ulid> = all.entries.iter().map(|e| e.id).collect();
        let want: Vec<Ulid> = second
            .iter()
            .rev()
            .chain(first[2..].iter())
            .map(|e| e.id)
            .collect();
        assert_eq!(got, want);
        assert_eq!(all.entries[0], second[3]);
        let q = |f: fn(&mut QuarantineQuery)| {
            let s = s.clone();
            let mut q = QuarantineQuery::default();
            f(&mut q);
            async move {
                s.query_quarantine(q)
                    .await
                    .unwrap()
                    .entries
                    .iter()
                    .map(|e| e.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            q(|q| q.reason = Some(RejectReason::NotJson)).await,
            vec![first[2].id]
        );
        assert_eq!(q(|q| q.device = Some("gw-02".into())).await.len(), 4);
        assert_eq!(q(|q| q.to_ms = Some(T0 + 1000)).await, vec![first[2].id]);
        assert_eq!(q(|q| q.from_ms = Some(T0 + 1000)).await.len(), 4);
        assert_eq!(q(|q| q.limit = 2).await, vec![second[3].id, second[2].id]);

        // The count survives a reopen, and a batch alone bigger than the limit keeps its newest.
        drop(s);
        let s = reopen(&path).with_quarantine_max(5);
        assert_eq!(s.stats().await.unwrap().quarantine, 5);
        let flood = quarantined(8, "gw-03", RejectReason::BadTopic, T0 + 2000);
        let out = s
            .write(WriteBatch {
                quarantine: flood.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((out.quarantined, out.quarantine_pruned), (5, 8));
        let got = s
            .query_quarantine(QuarantineQuery::default())
            .await
            .unwrap();
        let ids: Vec<Ulid> = got.entries.iter().map(|e| e.id).collect();
        let want: Vec<Ulid> = flood[3..].iter().rev().map(|e| e.id).collect();
        assert_eq!(ids, want);
        assert_eq!(s.stats().await.unwrap().quarantine, 5);
    }
}
