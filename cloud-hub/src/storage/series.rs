//! Telemetry time series: points per (site, device, source, metric), with 1-minute and 1-hour
//! rollups (min, max, sum → mean, count), kept beside the raw telemetry record log.
//!
//! The record log (`{store}/telemetry/`) stays the source of truth. Each batch's newly stored
//! telemetry (duplicates never: the log reports them) is applied here *in memory* while the log's
//! writer lock is held ([`append_telemetry`]), together with the log position just past it. A
//! background thread persists what is pending every [`FLUSH_INTERVAL`] (or sooner when
//! [`FLUSH_POINTS`] are pending) as one atomic sled batch that also holds that log position (the
//! watermark), then flushes. On open, the log records after the watermark are applied again
//! ([`Series::catch_up`]): a hub that dies right after an append loses nothing, and since the
//! watermark and the data it covers are committed together, nothing is counted twice.
//!
//! On disk, a sled database `{store}/series/`, one tree (so one batch is atomic):
//! - `w` → watermark (segment u32 BE, offset u64 BE).
//! - `s` ++ series id u32 BE → [`SeriesInfo`] JSON.
//! - `r` ++ id ++ chunk start → raw points of one [`RAW_CHUNK_MS`] window, sorted by time:
//!   delta-of-delta timestamps and decimal-scaled integer deltas (or f64 bits), varints.
//! - `m` / `h` ++ id ++ block start → the 1-minute buckets of one hour / 1-hour buckets of one
//!   day: bucket index, count, min, max, sum (one value when count is 1).
//!
//! Times in keys are sign-flipped big-endian, so keys sort by time and negative times work.
//! Retention (`[telemetry_retention]`) deletes whole chunks/blocks that ended before the cutoff
//! of their resolution, hourly.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use csb_wire::Telemetry;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::storage::reclog::{LogError, LogPos, RecordLog};

/// Directory of the series database, inside the store directory.
pub const SERIES_DIR: &str = "series";
/// Raw points are stored in chunks of one hour per series.
pub const RAW_CHUNK_MS: i64 = 3_600_000;
/// 1-minute buckets are stored in blocks of one hour per series.
pub const MINUTE_BLOCK_MS: i64 = 3_600_000;
/// 1-hour buckets are stored in blocks of one day per series.
pub const HOUR_BLOCK_MS: i64 = 86_400_000;
/// How often pending points are persisted. The log holds them meanwhile, so this only bounds
/// replay work after a crash and how often chunks are rewritten.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(2);
/// Pending points that trigger a persist before the interval is up.
pub const FLUSH_POINTS: usize = 250_000;
/// Pending points above which the write path waits (bounded) for the persister: bounds memory.
const HARD_PENDING_POINTS: usize = 4_000_000;
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Distinct series kept; beyond, new series are not created (counted and logged) so a device
/// inventing metric names cannot exhaust memory.
pub const MAX_SERIES: usize = 500_000;
/// Most points (raw or buckets) one query returns.
pub const MAX_QUERY_POINTS: usize = 100_000;
pub const DEFAULT_QUERY_POINTS: usize = 10_000;
/// `resolution=auto` keeps answers at about this many points or fewer.
pub const AUTO_TARGET_POINTS: i64 = 2000;

const KEY_WATERMARK: &[u8] = b"w";

#[derive(Debug, Error)]
pub enum SeriesError {
    #[error("cannot open the series store at {path}: {cause}")]
    Open {
        path: std::path::PathBuf,
        cause: sled::Error,
    },
    #[error("series store {op} failed: {cause}")]
    Sled {
        op: &'static str,
        cause: sled::Error,
    },
    #[error("series store: stored {what} is corrupt")]
    Corrupt { what: String },
    #[error("series store: replaying the telemetry log: {0}")]
    Log(#[from] LogError),
}

/// `[telemetry_retention]`: days kept per resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    pub raw_days: u32,
    pub minute_days: u32,
    pub hour_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            raw_days: 30,
            minute_days: 90,
            hour_days: 730,
        }
    }
}

impl Retention {
    /// Checks bounds and order (a coarser resolution keeps at least as long); the error names
    /// the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, v) in [
            ("telemetry_retention.raw_days", self.raw_days),
            ("telemetry_retention.minute_days", self.minute_days),
            ("telemetry_retention.hour_days", self.hour_days),
        ] {
            if !(1..=36_500).contains(&v) {
                return Err((key, format!("{v} is outside 1..=36500")));
            }
        }
        if self.minute_days < self.raw_days {
            return Err((
                "telemetry_retention.minute_days",
                format!(
                    "{} is below raw_days = {}: rollups must outlive raw points",
                    self.minute_days, self.raw_days
                ),
            ));
        }
        if self.hour_days < self.minute_days {
            return Err((
                "telemetry_retention.hour_days",
                format!(
                    "{} is below minute_days = {}",
                    self.hour_days, self.minute_days
                ),
            ));
        }
        Ok(())
    }

    fn cutoff(days: u32, now_ms: i64) -> i64 {
        now_ms.saturating_sub(i64::from(days) * 86_400_000)
    }
}

/// A series and what it has received (all time: rollups outlive raw points).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SeriesInfo {
    pub site: String,
    pub device: String,
    pub source: String,
    pub metric: String,
    pub first_ms: i64,
    pub last_ms: i64,
    pub count: u64,
}

/// Filter of [`SeriesStore::list_series`]; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesFilter {
    pub site: Option<String>,
    pub device: Option<String>,
    pub source: Option<String>,
    pub metric: Option<String>,
    pub limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    Raw,
    #[serde(rename = "1m")]
    Minute,
    #[serde(rename = "1h")]
    Hour,
}

impl Resolution {
    pub fn bucket_ms(self) -> i64 {
        match self {
            Resolution::Raw => 1,
            Resolution::Minute => 60_000,
            Resolution::Hour => 3_600_000,
        }
    }
}

/// A series query; `resolution: None` = auto. `from_ms` inclusive, `to_ms` exclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesQuery {
    pub site: String,
    pub device: String,
    pub source: String,
    pub metric: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub resolution: Option<Resolution>,
    pub limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Point {
    pub t: i64,
    pub v: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Bucket {
    /// Bucket start (Unix ms, aligned to the resolution).
    pub t: i64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct SeriesData {
    pub resolution: Resolution,
    /// Raw points (resolution raw), oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<Vec<Point>>,
    /// Buckets (1m, 1h), oldest first; a bucket is returned when its start is in
    /// [`from` aligned down, `to`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<Bucket>>,
    /// `limit` was reached: later points exist; query from after the last one.
    pub truncated: bool,
}

/// Aggregate of one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agg {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Agg {
    fn one(v: f64) -> Agg {
        Agg {
            count: 1,
            sum: v,
            min: v,
            max: v,
        }
    }

    fn merge(&mut self, o: &Agg) {
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

/// Start of the bucket/chunk of width `w` holding `t` (floor, also for negative times;
/// saturating at the bottom of the range, which validated telemetry never reaches).
pub fn align(t: i64, w: i64) -> i64 {
    t.saturating_sub(t.rem_euclid(w))
}

type ChunkKey = (u32, i64);

/// Points applied but not yet persisted.
#[derive(Default)]
struct Pending {
    raw: BTreeMap<ChunkKey, Vec<(i64, f64)>>,
    minute: BTreeMap<ChunkKey, BTreeMap<i64, Agg>>,
    hour: BTreeMap<ChunkKey, BTreeMap<i64, Agg>>,
    points: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.raw.is_empty() && self.minute.is_empty() && self.hour.is_empty()
    }

    fn add(&mut self, sid: u32, t: i64, v: f64) {
        self.raw
            .entry((sid, align(t, RAW_CHUNK_MS)))
            .or_default()
            .push((t, v));
        for (map, block, width) in [
            (&mut self.minute, MINUTE_BLOCK_MS, 60_000),
            (&mut self.hour, HOUR_BLOCK_MS, 3_600_000),
        ] {
            map.entry((sid, align(t, block)))
                .or_default()
                .entry(align(t, width))
                .and_modify(|a| a.merge(&Agg::one(v)))
                .or_insert(Agg::one(v));
        }
        self.points += 1;
    }

    /// Puts a failed persist's points back (they are older than what arrived meanwhile).
    fn absorb(&mut self, old: Pending) {
        for (k, mut pts) in old.raw {
            let e = self.raw.entry(k).or_default();
            pts.append(e);
            *e = pts;
        }
        for (mine, theirs) in [(&mut self.minute, old.minute), (&mut self.hour, old.hour)] {
            for (k, buckets) in theirs {
                let e = mine.entry(k).or_default();
                for (b, a) in buckets {
                    e.entry(b).and_modify(|x| x.merge(&a)).or_insert(a);
                }
            }
        }
        self.points += old.points;
    }
}

struct State {
    /// `site \x1f device \x1f source \x1f metric` → id (the levels cannot hold \x1f).
    ids: HashMap<String, u32>,
    infos: Vec<SeriesInfo>,
    infos_dirty: Vec<u32>,
    pending: Pending,
    /// What a persist in progress is writing: still visible to queries until committed.
    flushing: Option<Arc<Pending>>,
    /// Log position just past the last applied record.
    applied: Option<LogPos>,
    persisted: Option<LogPos>,
    key: String,
    refused_new_series: u64,
    last_flush: Instant,
}

impl State {
    fn series_key(&mut self, site: &str, device: &str, source: &str, metric: &str) -> &str {
        self.key.clear();
        for (i, part) in [site, device, source, metric].into_iter().enumerate() {
            if i > 0 {
                self.key.push('\x1f');
            }
            self.key.push_str(part);
        }
        &self.key
    }

    fn lookup(&mut self, site: &str, device: &str, source: &str, metric: &str) -> Option<u32> {
        let k = self.series_key(site, device, source, metric).to_owned();
        self.ids.get(&k).copied()
    }

    fn apply(&mut self, t: &Telemetry) {
        for (metric, &v) in &t.metrics {
            if !v.is_finite() {
                continue;
            }
            self.series_key(&t.site, &t.device, &t.source, metric);
            let sid = match self.ids.get(self.key.as_str()) {
                Some(&sid) => sid,
                None => {
                    if self.infos.len() >= MAX_SERIES {
                        self.refused_new_series += 1;
                        if self.refused_new_series.is_power_of_two() {
                            tracing::warn!(
                                max = MAX_SERIES,
                                refused = self.refused_new_series,
                                site = %t.site, device = %t.device, metric = %metric,
                                "series limit reached: points of new series are not kept as \
                                 series (the raw telemetry is stored)"
                            );
                        }
                        continue;
                    }
                    let sid = self.infos.len() as u32;
                    self.ids.insert(self.key.clone(), sid);
                    self.infos.push(SeriesInfo {
                        site: t.site.clone(),
                        device: t.device.clone(),
                        source: t.source.clone(),
                        metric: metric.clone(),
                        first_ms: t.ts_ms,
                        last_ms: t.ts_ms,
                        count: 0,
                    });
                    sid
                }
            };
            let info = &mut self.infos[sid as usize];
            if info.count == 0 || info.first_ms > t.ts_ms {
                info.first_ms = t.ts_ms;
            }
            if info.count == 0 || info.last_ms < t.ts_ms {
                info.last_ms = t.ts_ms;
            }
            info.count += 1;
            self.infos_dirty.push(sid);
            self.pending.add(sid, t.ts_ms, v);
        }
    }
}

/// The series store of a [`SledStore`]; see the module docs.
pub struct Series {
    db: sled::Db,
    state: Mutex<State>,
    /// Persists take it for writing while they commit and drop their in-flight snapshot;
    /// queries for reading while they combine pending and stored data, so they see each
    /// point exactly once.
    gate: RwLock<()>,
    /// One persist at a time.
    persist_lock: Mutex<()>,
    /// Signalled (with the state lock) after each persist, for writers waiting on memory.
    wake: Condvar,
    /// Wakes the background thread, which waits on it holding no reference to the store (so
    /// dropping the store closes the database at once).
    tick: Arc<Tick>,
    retention: Mutex<Retention>,
}

#[derive(Default)]
struct Tick {
    kicked: Mutex<bool>,
    cv: Condvar,
}

impl Tick {
    fn kick(&self) {
        *lock(&self.kicked) = true;
        self.cv.notify_one();
    }

    /// Waits until kicked or `timeout`.
    fn wait(&self, timeout: Duration) {
        let g = lock(&self.kicked);
        let mut g = self
            .cv
            .wait_timeout_while(g, timeout, |k| !*k)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
        *g = false;
    }
}

fn key(tag: u8, sid: u32, t: i64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = tag;
    k[1..5].copy_from_slice(&sid.to_be_bytes());
    k[5..].copy_from_slice(&((t as u64) ^ (1 << 63)).to_be_bytes());
    k
}

fn key_time(k: &[u8]) -> Option<i64> {
    let b: [u8; 8] = k.get(5..13)?.try_into().ok()?;
    Some((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

fn sled_err(op: &'static str) -> impl FnOnce(sled::Error) -> SeriesError {
    move |cause| SeriesError::Sled { op, cause }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // State is only changed by complete steps; a panic elsewhere leaves it whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Series {
    /// Opens (creating) the series database in `dir` and starts its persist/prune thread.
    /// Call [`Series::catch_up`] before new telemetry is appended.
    pub fn open(dir: &Path, cache_mb: u64) -> Result<Arc<Series>, SeriesError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_mb.max(8) * 1024 * 1024)
            .open()
            .map_err(|cause| SeriesError::Open {
                path: dir.to_path_buf(),
                cause,
            })?;
        let watermark = match db.get(KEY_WATERMARK).map_err(sled_err("open"))? {
            None => None,
            Some(v) if v.len() == 12 => Some(LogPos {
                seg: u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
                off: u64::from_be_bytes(v[4..12].try_into().unwrap_or([0; 8])),
            }),
            Some(_) => {
                return Err(SeriesError::Corrupt {
                    what: "watermark".into(),
                })
            }
        };
        let mut infos = Vec::new();
        let mut ids = HashMap::new();
        for item in db.scan_prefix(b"s") {
            let (k, v) = item.map_err(sled_err("open"))?;
            let sid = k
                .get(1..5)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| SeriesError::Corrupt {
                    what: "series key".into(),
                })?;
            let info: SeriesInfo =
                serde_json::from_slice(&v).map_err(|e| SeriesError::Corrupt {
                    what: format!("series {sid}: {e}"),
                })?;
            if sid as usize != infos.len() {
                return Err(SeriesError::Corrupt {
                    what: format!("series ids: {sid} follows {}", infos.len()),
                });
            }
            let k = [info.site.as_str(), &info.device, &info.source, &info.metric].join("\x1f");
            ids.insert(k, sid);
            infos.push(info);
        }
        let series = Arc::new(Series {
            db,
            state: Mutex::new(State {
                ids,
                infos,
                infos_dirty: Vec::new(),
                pending: Pending::default(),
                flushing: None,
                applied: watermark,
                persisted: watermark,
                key: String::new(),
                refused_new_series: 0,
                last_flush: Instant::now(),
            }),
            gate: RwLock::new(()),
            persist_lock: Mutex::new(()),
            wake: Condvar::new(),
            tick: Arc::new(Tick::default()),
            retention: Mutex::new(Retention::default()),
        });
        let weak = Arc::downgrade(&series);
        let tick = series.tick.clone();
        std::thread::Builder::new()
            .name("csb-series".into())
            .spawn(move || background(weak, tick))
            .map_err(|e| SeriesError::Corrupt {
                what: format!("cannot start the persist thread: {e}"),
            })?;
        Ok(series)
    }

    /// The log position persisted with the series: a reopen replays the log from there.
    pub fn persisted(&self) -> Option<LogPos> {
        lock(&self.state).persisted
    }

    pub fn set_retention(&self, r: Retention) {
        *lock(&self.retention) = r;
    }

    /// Applies the log's records after the watermark (a crash lost them here), then persists.
    pub fn catch_up(&self, log: &RecordLog) -> Result<u64, SeriesError> {
        let after = lock(&self.state).applied;
        let mut n = 0u64;
        log.replay_after(after, |rec, end| {
            let mut st = lock(&self.state);
            match serde_json::from_slice::<Telemetry>(&rec.payload) {
                Ok(t) => st.apply(&t),
                Err(e) => tracing::error!(id = %ulid::Ulid(rec.id), error = %e,
                    "series replay: skipping undecodable telemetry record"),
            }
            st.applied = Some(end);
            n += 1;
            let full = st.pending.points >= FLUSH_POINTS;
            drop(st);
            if full {
                self.persist()?;
            }
            Ok::<_, SeriesError>(())
        })?;
        self.persist()?;
        if n > 0 {
            tracing::info!(
                records = n,
                "telemetry series caught up with the record log"
            );
        }
        Ok(n)
    }

    /// Applies newly stored telemetry (called under the log's writer lock, see
    /// [`append_telemetry`]). In memory only; bounded: waits (at most a few seconds) for the
    /// persister when far behind.
    pub fn apply<'a>(&self, telemetry: impl Iterator<Item = &'a Telemetry>, end: LogPos) {
        let mut st = lock(&self.state);
        for t in telemetry {
            st.apply(t);
        }
        st.applied = Some(end);
        let points = st.pending.points;
        drop(st);
        if points >= FLUSH_POINTS {
            self.tick.kick();
        }
        if points >= HARD_PENDING_POINTS {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut st = lock(&self.state);
            while st.pending.points >= HARD_PENDING_POINTS && Instant::now() < deadline {
                self.tick.kick();
                st = self
                    .wake
                    .wait_timeout(st, Duration::from_millis(50))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        }
    }

    /// Writes everything pending, with the watermark, in one atomic batch; then flushes.
    pub fn persist(&self) -> Result<(), SeriesError> {
        let _one = lock(&self.persist_lock);
        let (snap, applied, infos) = {
            let mut st = lock(&self.state);
            st.last_flush = Instant::now();
            if st.pending.is_empty() && st.applied == st.persisted && st.infos_dirty.is_empty() {
                return Ok(());
            }
            let snap = Arc::new(std::mem::take(&mut st.pending));
            st.flushing = Some(snap.clone());
            let mut dirty = std::mem::take(&mut st.infos_dirty);
            dirty.sort_unstable();
            dirty.dedup();
            let infos: Vec<(u32, SeriesInfo)> = dirty
                .into_iter()
                .map(|sid| (sid, st.infos[sid as usize].clone()))
                .collect();
            (snap, st.applied, infos)
        };
        let batch = self.batch(&snap, applied, &infos);
        // Committing and dropping the in-flight copy happen together under the gate, so a
        // query sees each point once.
        let gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let result = batch.and_then(|b| self.db.apply_batch(b).map_err(sled_err("write")));
        let mut st = lock(&self.state);
        st.flushing = None;
        match result {
            Ok(()) => {
                st.persisted = applied;
                drop(st);
                drop(gate);
                self.wake.notify_all();
                self.db.flush().map_err(sled_err("flush"))?;
                Ok(())
            }
            Err(e) => {
                // Keep the points for the next attempt.
                let old = Arc::try_unwrap(snap).unwrap_or_default();
                st.pending.absorb(old);
                st.infos_dirty.extend(infos.iter().map(|(sid, _)| *sid));
                Err(e)
            }
        }
    }

    /// The sled batch writing `snap` merged into the stored chunks and blocks.
    fn batch(
        &self,
        snap: &Pending,
        applied: Option<LogPos>,
        infos: &[(u32, SeriesInfo)],
    ) -> Result<sled::Batch, SeriesError> {
        let mut batch = sled::Batch::default();
        for (&(sid, start), pts) in &snap.raw {
            let k = key(b'r', sid, start);
            let mut all = match self.db.get(k).map_err(sled_err("read chunk"))? {
                Some(v) => decode_points(&v).ok_or_else(|| SeriesError::Corrupt {
                    what: format!("raw chunk of series {sid} at {start}"),
                })?,
                None => Vec::new(),
            };
            all.extend_from_slice(pts);
            // Stable: points of equal time keep arrival order.
            all.sort_by_key(|p| p.0);
            batch.insert(&k[..], encode_points(&all));
        }
        for (tag, map) in [(b'm', &snap.minute), (b'h', &snap.hour)] {
            for (&(sid, start), buckets) in map {
                let k = key(tag, sid, start);
                let width = if tag == b'm' { 60_000 } else { 3_600_000 };
                let mut all = match self.db.get(k).map_err(sled_err("read rollup"))? {
                    Some(v) => {
                        decode_buckets(&v, start, width).ok_or_else(|| SeriesError::Corrupt {
                            what: format!("rollup block of series {sid} at {start}"),
                        })?
                    }
                    None => BTreeMap::new(),
                };
                for (b, a) in buckets {
                    all.entry(*b).and_modify(|x| x.merge(a)).or_insert(*a);
                }
                batch.insert(&k[..], encode_buckets(&all, start, width));
            }
        }
        for (sid, info) in infos {
            let mut k = [0u8; 5];
            k[0] = b's';
            k[1..].copy_from_slice(&sid.to_be_bytes());
            let v = serde_json::to_vec(info).map_err(|e| SeriesError::Corrupt {
                what: format!("series {sid} info: {e}"),
            })?;
            batch.insert(&k[..], v);
        }
        if let Some(w) = applied {
            let mut v = [0u8; 12];
            v[..4].copy_from_slice(&w.seg.to_be_bytes());
            v[4..].copy_from_slice(&w.off.to_be_bytes());
            batch.insert(KEY_WATERMARK, &v[..]);
        }
        Ok(batch)
    }

    /// Deletes chunks and blocks that ended before their resolution's cutoff. Returns rows
    /// deleted.
    pub fn prune(&self, now_ms: i64) -> Result<u64, SeriesError> {
        let r = *lock(&self.retention);
        let n_series = lock(&self.state).infos.len() as u32;
        let mut removed = 0u64;
        for (tag, days, span) in [
            (b'r', r.raw_days, RAW_CHUNK_MS),
            (b'm', r.minute_days, MINUTE_BLOCK_MS),
            (b'h', r.hour_days, HOUR_BLOCK_MS),
        ] {
            let cutoff = Retention::cutoff(days, now_ms);
            for sid in 0..n_series {
                // A chunk starting at s covers [s, s + span): gone when s + span <= cutoff.
                let lo = key(tag, sid, i64::MIN);
                let hi = key(tag, sid, cutoff.saturating_sub(span).saturating_add(1));
                let keys: Vec<sled::IVec> = self
                    .db
                    .range(lo..hi)
                    .keys()
                    .collect::<Result<_, _>>()
                    .map_err(sled_err("prune"))?;
                if keys.is_empty() {
                    continue;
                }
                let mut b = sled::Batch::default();
                for k in &keys {
                    b.remove(k);
                }
                let _g = self.gate.write().unwrap_or_else(|p| p.into_inner());
                self.db.apply_batch(b).map_err(sled_err("prune"))?;
                removed += keys.len() as u64;
            }
        }
        if removed > 0 {
            self.db.flush().map_err(sled_err("flush"))?;
        }
        Ok(removed)
    }

    /// Bytes of the series database on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Bytes of the stored keys and values of (raw, 1m, 1h) rows: the encoding's size,
    /// without sled's overhead (a scan: benchmarks).
    pub fn logical_bytes(&self) -> [u64; 3] {
        let mut out = [0u64; 3];
        for (k, v) in self.db.iter().flatten() {
            let slot = match k.first() {
                Some(b'r') => 0,
                Some(b'm') => 1,
                Some(b'h') => 2,
                _ => continue,
            };
            out[slot] += (k.len() + v.len()) as u64;
        }
        out
    }

    /// Series matching `f`, at most `f.limit` (then `true`).
    pub fn list(&self, f: &SeriesFilter) -> (Vec<SeriesInfo>, bool) {
        let st = lock(&self.state);
        let m = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        let mut out: Vec<SeriesInfo> = st
            .infos
            .iter()
            .filter(|i| {
                m(&f.site, &i.site)
                    && m(&f.device, &i.device)
                    && m(&f.source, &i.source)
                    && m(&f.metric, &i.metric)
            })
            .take(f.limit.saturating_add(1))
            .cloned()
            .collect();
        let truncated = out.len() > f.limit;
        out.truncate(f.limit);
        (out, truncated)
    }

    /// Reads one series; `None` when it does not exist.
    pub fn query(&self, q: &SeriesQuery) -> Result<Option<SeriesData>, SeriesError> {
        let limit = q.limit.clamp(1, MAX_QUERY_POINTS);
        let _g = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let mut st = lock(&self.state);
        let Some(sid) = st.lookup(&q.site, &q.device, &q.source, &q.metric) else {
            return Ok(None);
        };
        let info = st.infos[sid as usize].clone();
        let resolution = q
            .resolution
            .unwrap_or_else(|| auto_resolution(&info, q, *lock(&self.retention)));
        let sources: Vec<&Pending> = std::iter::once(&st.pending)
            .chain(st.flushing.as_deref())
            .collect();
        if resolution == Resolution::Raw {
            let lo = (sid, align(q.from_ms, RAW_CHUNK_MS));
            let hi = (sid, q.to_ms);
            let mut pts: Vec<(i64, f64)> = Vec::new();
            for p in &sources {
                for (_, v) in p.raw.range(lo..hi) {
                    pts.extend(v.iter().filter(|(t, _)| *t >= q.from_ms && *t < q.to_ms));
                }
            }
            drop(st);
            let range = self.db.range(key(b'r', sid, lo.1)..key(b'r', sid, q.to_ms));
            let mut stored: Vec<(i64, f64)> = Vec::new();
            for item in range {
                let (k, v) = item.map_err(sled_err("query"))?;
                let chunk = decode_points(&v).ok_or_else(|| SeriesError::Corrupt {
                    what: format!("raw chunk of series {sid} at {:?}", key_time(&k)),
                })?;
                stored.extend(
                    chunk
                        .into_iter()
                        .filter(|(t, _)| *t >= q.from_ms && *t < q.to_ms),
                );
                if stored.len() > limit + pts.len() {
                    break;
                }
            }
            // Pending points go after stored ones of equal time (they arrived later).
            stored.extend(pts);
            stored.sort_by_key(|p| p.0);
            let truncated = stored.len() > limit;
            stored.truncate(limit);
            return Ok(Some(SeriesData {
                resolution,
                points: Some(stored.into_iter().map(|(t, v)| Point { t, v }).collect()),
                buckets: None,
                truncated,
            }));
        }
        let (tag, block, width) = match resolution {
            Resolution::Minute => (b'm', MINUTE_BLOCK_MS, 60_000),
            _ => (b'h', HOUR_BLOCK_MS, 3_600_000),
        };
        let from = align(q.from_ms, width);
        let mut all: BTreeMap<i64, Agg> = BTreeMap::new();
        let lo = (sid, align(from, block));
        let hi = (sid, q.to_ms);
        for p in &sources {
            let map = if tag == b'm' { &p.minute } else { &p.hour };
            for (_, buckets) in map.range(lo..hi) {
                for (b, a) in buckets.range(from..q.to_ms) {
                    all.entry(*b).and_modify(|x| x.merge(a)).or_insert(*a);
                }
            }
        }
        drop(st);
        for item in self.db.range(key(tag, sid, lo.1)..key(tag, sid, q.to_ms)) {
            let (k, v) = item.map_err(sled_err("query"))?;
            let start = key_time(&k).unwrap_or(0);
            let stored = decode_buckets(&v, start, width).ok_or_else(|| SeriesError::Corrupt {
                what: format!("rollup block of series {sid} at {start}"),
            })?;
            for (b, a) in stored.range(from..q.to_ms) {
                all.entry(*b).and_modify(|x| x.merge(a)).or_insert(*a);
            }
        }
        let truncated = all.len() > limit;
        let buckets = all
            .into_iter()
            .take(limit)
            .map(|(t, a)| Bucket {
                t,
                min: a.min,
                max: a.max,
                mean: a.sum / a.count as f64,
                count: a.count,
            })
            .collect();
        Ok(Some(SeriesData {
            resolution,
            points: None,
            buckets: Some(buckets),
            truncated,
        }))
    }
}

/// The finest resolution that keeps the answer near [`AUTO_TARGET_POINTS`] and still holds
/// the range's start (retention).
fn auto_resolution(info: &SeriesInfo, q: &SeriesQuery, r: Retention) -> Resolution {
    let now = csb_wire::now_ms();
    let span = q.to_ms.saturating_sub(q.from_ms).max(1);
    // Points expected in the range at the series' average rate.
    let lived = (info.last_ms - info.first_ms).max(1);
    let overlap = (q.to_ms.min(info.last_ms + 1) - q.from_ms.max(info.first_ms)).max(0);
    let est = (info.count as f64 * overlap as f64 / lived as f64).ceil() as i64;
    if est <= AUTO_TARGET_POINTS && q.from_ms >= Retention::cutoff(r.raw_days, now) {
        Resolution::Raw
    } else if span / 60_000 <= AUTO_TARGET_POINTS
        && q.from_ms >= Retention::cutoff(r.minute_days, now)
    {
        Resolution::Minute
    } else {
        Resolution::Hour
    }
}

/// The persist/prune loop; ends when the series store is dropped.
fn background(me: Weak<Series>, tick: Arc<Tick>) {
    let mut last_prune = Instant::now() - PRUNE_INTERVAL + Duration::from_secs(60);
    loop {
        tick.wait(Duration::from_millis(500));
        let Some(s) = me.upgrade() else { return };
        let (due, pending) = {
            let st = lock(&s.state);
            (
                st.pending.points >= FLUSH_POINTS || st.last_flush.elapsed() >= FLUSH_INTERVAL,
                !st.pending.is_empty() || st.applied != st.persisted,
            )
        };
        if due && pending {
            if let Err(e) = s.persist() {
                tracing::error!(error = %e, "persisting telemetry series failed; will retry");
            }
        } else if due {
            lock(&s.state).last_flush = Instant::now();
        }
        if last_prune.elapsed() >= PRUNE_INTERVAL {
            last_prune = Instant::now();
            match s.prune(csb_wire::now_ms()) {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "telemetry series retention pruned"),
                Err(e) => tracing::error!(error = %e, "telemetry series prune failed"),
            }
        }
        drop(s);
    }
}

impl Drop for Series {
    fn drop(&mut self) {
        if let Err(e) = self.persist() {
            tracing::error!(error = %e, "persisting telemetry series on close failed (the log replays it)");
        }
        // Let the background thread see that the store is gone.
        self.tick.kick();
    }
}

// ---- encoding ----

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

fn zz(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzz(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

const POW10: [f64; 7] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

/// Smallest k ≤ 6 with every value = integer / 10^k exactly (so it can be stored as an
/// integer), or `None`.
fn decimal_scale(values: impl Iterator<Item = f64> + Clone) -> Option<u8> {
    'k: for (k, p) in POW10.iter().enumerate() {
        for v in values.clone() {
            let m = (v * p).round();
            if m.abs() >= MAX_EXACT || (m / p).to_bits() != v.to_bits() {
                continue 'k;
            }
        }
        return Some(k as u8);
    }
    None
}

/// Values: tag byte = decimal scale k (0..=6) then zigzag deltas of the scaled integers, or
/// 0xff then raw f64 bits (XOR with the previous value, as a varint).
fn put_values(out: &mut Vec<u8>, values: &[f64]) {
    match decimal_scale(values.iter().copied()) {
        Some(k) => {
            out.push(k);
            let mut prev = 0i64;
            for v in values {
                let m = (v * POW10[k as usize]).round() as i64;
                put_varint(out, zz(m.wrapping_sub(prev)));
                prev = m;
            }
        }
        None => {
            out.push(0xff);
            let mut prev = 0u64;
            for v in values {
                // Byte-swapped XOR: equal sign/exponent/high mantissa → small varint.
                put_varint(out, (v.to_bits() ^ prev).swap_bytes());
                prev = v.to_bits();
            }
        }
    }
}

fn get_values(b: &[u8], at: &mut usize, n: usize) -> Option<Vec<f64>> {
    let tag = *b.get(*at)?;
    *at += 1;
    let mut out = Vec::with_capacity(n);
    if tag == 0xff {
        let mut prev = 0u64;
        for _ in 0..n {
            let bits = get_varint(b, at)?.swap_bytes() ^ prev;
            out.push(f64::from_bits(bits));
            prev = bits;
        }
    } else {
        let p = *POW10.get(tag as usize)?;
        let mut prev = 0i64;
        for _ in 0..n {
            prev = prev.wrapping_add(unzz(get_varint(b, at)?));
            out.push(prev as f64 / p);
        }
    }
    Some(out)
}

/// A raw chunk: n, first time (zigzag), delta-of-delta times (zigzag), values.
fn encode_points(pts: &[(i64, f64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pts.len() * 4 + 16);
    put_varint(&mut out, pts.len() as u64);
    let (mut prev, mut prev_delta) = (0i64, 0i64);
    for (i, (t, _)) in pts.iter().enumerate() {
        if i == 0 {
            put_varint(&mut out, zz(*t));
        } else {
            let d = t.wrapping_sub(prev);
            put_varint(&mut out, zz(d.wrapping_sub(prev_delta)));
            prev_delta = d;
        }
        prev = *t;
    }
    let values: Vec<f64> = pts.iter().map(|p| p.1).collect();
    put_values(&mut out, &values);
    out
}

fn decode_points(b: &[u8]) -> Option<Vec<(i64, f64)>> {
    let mut at = 0;
    let n = usize::try_from(get_varint(b, &mut at)?).ok()?;
    if n > b.len() {
        return None;
    }
    let mut ts = Vec::with_capacity(n);
    let (mut prev, mut delta) = (0i64, 0i64);
    for i in 0..n {
        let v = unzz(get_varint(b, &mut at)?);
        if i == 0 {
            prev = v;
        } else {
            delta = delta.wrapping_add(v);
            prev = prev.wrapping_add(delta);
        }
        ts.push(prev);
    }
    let values = get_values(b, &mut at, n)?;
    Some(ts.into_iter().zip(values).collect())
}

/// A rollup block: n, then per bucket its index in the block (delta) and count; then the
/// values: for count 1 just the value, else min, max, sum.
fn encode_buckets(buckets: &BTreeMap<i64, Agg>, start: i64, width: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(buckets.len() * 12 + 8);
    put_varint(&mut out, buckets.len() as u64);
    let mut prev = 0i64;
    let mut values = Vec::with_capacity(buckets.len() * 3);
    for (t, a) in buckets {
        let idx = (t - start) / width;
        put_varint(&mut out, zz(idx - prev));
        prev = idx;
        put_varint(&mut out, a.count);
        if a.count == 1 {
            values.push(a.sum);
        } else {
            values.extend([a.min, a.max, a.sum]);
        }
    }
    put_values(&mut out, &values);
    out
}

fn decode_buckets(b: &[u8], start: i64, width: i64) -> Option<BTreeMap<i64, Agg>> {
    let mut at = 0;
    let n = usize::try_from(get_varint(b, &mut at)?).ok()?;
    if n > b.len() {
        return None;
    }
    let mut heads = Vec::with_capacity(n);
    let (mut prev, mut nvals) = (0i64, 0usize);
    for _ in 0..n {
        prev += unzz(get_varint(b, &mut at)?);
        let count = get_varint(b, &mut at)?;
        nvals += if count == 1 { 1 } else { 3 };
        heads.push((start + prev * width, count));
    }
    let values = get_values(b, &mut at, nvals)?;
    let mut it = values.into_iter();
    let mut out = BTreeMap::new();
    for (t, count) in heads {
        let a = if count == 1 {
            Agg::one(it.next()?)
        } else {
            Agg {
                count,
                min: it.next()?,
                max: it.next()?,
                sum: it.next()?,
            }
        };
        out.insert(t, a);
    }
    Some(out)
}

#[cfg(test)]
mod tests;
