//! Append-only record log: where the hub keeps events and raw telemetry.
//!
//! Why not sled rows: sled 0.34 copies a leaf on every insert, which cost ~10 µs per event
//! and capped durable ingest at ~50k events/s on 2 cores (see `cloud-hub bench-ingest`).
//! Records here are written once, as received, and a batch costs one `write` and one
//! `fdatasync` however many records it holds.
//!
//! On disk, a directory of segment files `{seq:010}.log`, appended in order; a new segment is
//! started when the active one passes its size ([`SEGMENT_BYTES`] by default). A segment
//! starts with the 8 bytes [`MAGIC`]; then each record is a frame (integers little-endian, the
//! id big-endian):
//!
//! ```text
//! len u32 | crc32 u32 | id u128 | ts_ms i64 | received_ms i64 | key_len u16 | key | payload
//! ```
//!
//! `len` is the payload's length; `crc32` covers everything after itself. `key` names the
//! record's source (`site/device/camera` for events, `site/device/source` for telemetry), so
//! per-source statistics and source filters need no payload decoding. Guarantees:
//! - [`RecordLog::append`] returns only after the frames are written and `fdatasync`ed, so what
//!   it reports as stored survives a crash (the caller acks only then).
//! - Each id is stored once: ids already in the log, or repeated within a batch, are reported
//!   as duplicates and not written. This holds for every id the log holds (and, after a size
//!   bound dropped their segment, for the ids received inside the dedup window).
//! - A crash mid-append leaves at most a torn tail on the last segment (records never
//!   acknowledged: their senders resend). Opening the log indexes each segment up to its first
//!   bad frame and reports the rest; nothing is ever cut off, since a bad frame in the middle
//!   (a disk error) cannot be told from a torn tail for sure and would hide acknowledged
//!   records behind it. New records then go to a new segment.
//!
//! Indexes, and why their memory stays bounded: only the active segment (and a closed one
//! while its index is being written) has its index in memory — id → position for dedup and
//! lookups, (ts_ms, position) for time scans, per-source counts; about 90 bytes a record, so at
//! most a segment's worth. When a segment closes, a background thread reads it back (checking
//! every frame) and writes its index file `{seq:010}.idx` ([`segindex`]: ids sorted with their
//! positions, (ts, position) sorted, per-key statistics, a Bloom filter of the ids) atomically,
//! then the log keeps of it only a summary: time, receipt and id ranges, every 128th id and
//! time, key numbers — about 0.25 bytes a record — and, for the newest segments inside the
//! dedup window, the Bloom filter (1.25 bytes a record, at most [`PINNED_BLOOM_BYTES`] in all).
//! A lookup or dedup check visits only segments whose id range holds the id (ids are ULIDs, so
//! mostly the newest) and whose filter says maybe — in memory, or one 64-byte block read from
//! the index file — then reads one 3 KiB block of ids. Time scans merge the segments overlapping the range, reading their time
//! sections in blocks and announcing each block's wanted records to the kernel in one read-ahead
//! (`Desc::prefetch`); aggregates use a bounded cache of decoded time columns
//! ([`TIME_CACHE_BYTES`], ~6 bytes a record). Opening reads the index files (checksummed),
//! scans only the last segment and fills that cache with the newest segments; a missing or
//! damaged index is rebuilt from its segment.
//!
//! Retention ([`Retention`], applied by the same background thread after each segment closes
//! and every minute): whole closed segments, oldest first, once their newest record was
//! received longer ago than `max_age_ms`, or while the log's files exceed `max_bytes`. A
//! segment dropped while still inside the dedup window keeps its index file (its ids stay
//! deduplicated) until the window has passed. Readers hold the files they read open, so a
//! segment dropped under a running scan is still read to the end; no reader sees an error.

mod segindex;

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

use segindex::{index_path, pin_bloom, Builder, Sealed, TimeCols, TimeEntry};
pub use segindex::{FENCE, INDEX_MAGIC};

/// A segment is closed and a new one started once it holds this many bytes (the default of
/// [`LogOptions::segment_bytes`]).
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest payload a frame may hold; a longer length field means a damaged frame.
pub const MAX_RECORD: usize = 16 * 1024 * 1024;
/// First bytes of every segment file: the format, so another file is never read as records.
pub const MAGIC: &[u8; 8] = b"csblog1\n";
/// Frame bytes before the key.
const HEADER: usize = 42;
/// Longest source key (topic levels are short; this is far above them).
pub const MAX_KEY: usize = 1024;
/// Positions copied out of an index per step while scanning, so a long scan never keeps a
/// writer waiting for long.
const SCAN_CHUNK: usize = 512;
/// Entries of the active segment's index visited per lock hold by
/// [`RecordLog::for_each_in_range`].
const RANGE_CHUNK: usize = 65_536;
/// Decoded time columns kept for aggregates by default (see the module docs): a month of a
/// million events, or the newest ~1.3 M records.
pub const TIME_CACHE_BYTES: usize = 8 * 1024 * 1024;
/// Bloom filters of the newest segments inside the dedup window kept in memory by default
/// (~1.7 M ids, 10 bits each): new ids fall in their ranges most. Older segments' filters are
/// read from their index files, one 64-byte block per check, so this memory does not grow
/// with the window's volume.
pub const PINNED_BLOOM_BYTES: usize = 2 * 1024 * 1024;
/// Closed segments waiting for their index beyond this make the writer write one itself: the
/// in-memory indexes stay bounded even if the background thread falls behind.
const MAX_UNSEALED: usize = 2;
/// How often the background thread applies retention when no segment closes.
const MAINTAIN_EVERY: Duration = Duration::from_secs(60);
/// Default dedup window: the edge outbox keeps unacked records 14 days (`max_age_s`), plus a
/// day for clocks and the last resend.
pub const DEDUP_WINDOW_MS: i64 = 15 * 86_400_000;

#[derive(Debug, Error)]
pub enum LogError {
    #[error("{op} {path}: {cause}")]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("record {id:032x} in {path} at byte {offset} is damaged: {detail}")]
    Corrupt {
        id: u128,
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error("record {id:032x} is {len} bytes, over the {MAX_RECORD} byte limit")]
    TooLarge { id: u128, len: usize },
    #[error("record {id:032x} has a source key of {len} bytes, over the {MAX_KEY} byte limit")]
    KeyTooLong { id: u128, len: usize },
    #[error(
        "{path} is not a record log segment of this hub (it does not start with the format \
         marker): move it out of the log directory"
    )]
    Format { path: PathBuf },
    #[error("segment index {path} is damaged: {detail}")]
    Index { path: PathBuf, detail: String },
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Which closed segments a log drops (see the module docs). Ages are of receipt: a segment is
/// as old as the newest record it holds was when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Segments whose newest record was received longer ago are dropped; 0 keeps them.
    pub max_age_ms: i64,
    /// The oldest segments are dropped while the log's files (segments and indexes) take more
    /// bytes than this; 0 = no bound. The open segment is never dropped.
    pub max_bytes: u64,
    /// Ids received this recently stay deduplicated exactly: their segments' Bloom filters stay
    /// in memory, and a segment dropped by `max_bytes` keeps its ids until the window passed.
    pub dedup_window_ms: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age_ms: 0,
            max_bytes: 0,
            dedup_window_ms: DEDUP_WINDOW_MS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// A segment is closed once it holds this many bytes (smaller ones in tests).
    pub segment_bytes: u64,
    pub retention: Retention,
    /// Memory for decoded time columns of closed segments ([`RecordLog::for_each_in_range`]
    /// reads them); filled with the newest segments after open and as segments close. 0 for
    /// a log that is not aggregated over (it then reads them per call).
    pub time_cache_bytes: usize,
    /// Memory for the Bloom filters of the newest segments in the dedup window
    /// ([`PINNED_BLOOM_BYTES`]); the rest are checked on disk.
    pub pinned_bloom_bytes: usize,
    /// `true`: a background thread seals closed segments and applies retention. `false`: only
    /// [`RecordLog::maintain`] does (tests that need a fixed clock), and the writer seals
    /// a segment itself when more than two wait.
    pub background: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: SEGMENT_BYTES,
            retention: Retention::default(),
            time_cache_bytes: TIME_CACHE_BYTES,
            pinned_bloom_bytes: PINNED_BLOOM_BYTES,
            background: true,
        }
    }
}

/// What one maintenance pass did ([`RecordLog::maintain`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Maintained {
    /// Closed segments whose index file was written.
    pub sealed: u32,
    /// Segments dropped by retention, and their bytes (segment and index files).
    pub dropped_segments: u32,
    pub dropped_bytes: u64,
    /// Of those, segments whose ids are kept for deduplication (inside the window).
    pub ids_kept: u32,
    /// Kept ids forgotten, their window having passed.
    pub ids_forgotten: u32,
    /// Bloom filters let go of (their segments left the dedup window, or newer ones took
    /// their place in [`LogOptions::pinned_bloom_bytes`]), and filters read back in.
    pub filters_released: u32,
    pub filters_pinned: u32,
}

/// Retention totals since the log was opened (metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct RetentionCounters {
    /// Segments dropped by retention (age or size).
    pub segments_dropped: u64,
    /// Bytes of the segments dropped.
    pub bytes_dropped: u64,
}

/// A record to append.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    pub id: u128,
    pub ts_ms: i64,
    /// When the hub received it (Unix ms): freshness in statistics.
    pub received_ms: i64,
    /// Its source, e.g. `site/device/camera`.
    pub key: &'a str,
    pub payload: &'a [u8],
}

/// What [`RecordLog::append`] did with a batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Appended {
    pub stored: u64,
    /// Ids already in the log or repeated in the batch, in batch order.
    pub duplicates: Vec<u128>,
}

/// Records of one source key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct SourceStats {
    pub records: u64,
    /// Payload bytes (as received).
    pub bytes: u64,
    /// Oldest and newest record time (`ts_ms`).
    pub first_ts_ms: i64,
    pub last_ts_ms: i64,
    /// First and last receipt by the hub.
    pub first_received_ms: i64,
    pub last_received_ms: i64,
}

impl SourceStats {
    fn new(ts_ms: i64, received_ms: i64) -> SourceStats {
        SourceStats {
            records: 0,
            bytes: 0,
            first_ts_ms: ts_ms,
            last_ts_ms: ts_ms,
            first_received_ms: received_ms,
            last_received_ms: received_ms,
        }
    }

    /// Adds another key's statistics (for callers that group keys).
    pub fn merge(&mut self, o: &SourceStats) {
        self.records += o.records;
        self.bytes += o.bytes;
        self.first_ts_ms = self.first_ts_ms.min(o.first_ts_ms);
        self.last_ts_ms = self.last_ts_ms.max(o.last_ts_ms);
        self.first_received_ms = self.first_received_ms.min(o.first_received_ms);
        self.last_received_ms = self.last_received_ms.max(o.last_received_ms);
    }

    fn add(&mut self, ts_ms: i64, received_ms: i64, bytes: u64) {
        self.records += 1;
        self.bytes += bytes;
        self.first_ts_ms = self.first_ts_ms.min(ts_ms);
        self.last_ts_ms = self.last_ts_ms.max(ts_ms);
        self.first_received_ms = self.first_received_ms.min(received_ms);
        self.last_received_ms = self.last_received_ms.max(received_ms);
    }
}

/// Per global key number, the statistics of some records (`None`: none of that key).
type KeyStats = Vec<Option<SourceStats>>;

/// Which sealed segments' Bloom filters to let go of and which to read back: the newest by
/// receipt inside the dedup window, as many as fit `budget`, plus any holding ids of a clock
/// ahead of ours (every new id falls in their range, so each would cost a read per record).
fn bloom_plan<'a>(
    sealed: impl Iterator<Item = &'a Arc<Sealed>>,
    now: i64,
    window_ms: i64,
    budget: usize,
) -> (Vec<Arc<Sealed>>, Vec<Arc<Sealed>>) {
    let mut v: Vec<&Arc<Sealed>> = sealed.filter(|s| s.h.records > 0).collect();
    v.sort_by_key(|s| std::cmp::Reverse((s.h.max_received, s.seq)));
    let (mut release, mut pin) = (Vec::new(), Vec::new());
    let mut left = budget;
    for s in v {
        let want = if segindex::clock_ahead(&s.h) {
            true
        } else if pin_bloom(&s.h, now, window_ms) && s.bloom_bytes() <= left {
            left -= s.bloom_bytes();
            true
        } else {
            // Newest first: once one does not fit, older ones do not either.
            left = 0;
            false
        };
        match (want, s.bloom.is_some()) {
            (true, false) => pin.push(s.clone()),
            (false, true) => release.push(s.clone()),
            _ => {}
        }
    }
    (release, pin)
}

fn merge_stats(into: &mut KeyStats, key: u32, s: &SourceStats) {
    let k = key as usize;
    if into.len() <= k {
        into.resize(k + 1, None);
    }
    match &mut into[k] {
        Some(m) => m.merge(s),
        slot => *slot = Some(*s),
    }
}

/// A place in the log's append order: segment sequence number and byte offset. Used as the
/// end of what a consumer (the telemetry series store) has applied, so it can replay what
/// came after ([`RecordLog::replay_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogPos {
    pub seg: u32,
    pub off: u64,
}

/// Where a record is: segment sequence number and offset of its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Pos {
    seg: u32,
    off: u32,
}

/// A frame's place and whole length.
#[derive(Debug, Clone, Copy)]
struct Slot {
    pos: Pos,
    frame: u32,
}

/// Keyed per process (ahash's random state), so ids chosen to collide cannot degrade it.
type IdMap<V> = HashMap<u128, V, ahash::RandomState>;

/// The in-memory index of one segment: the active one, or a closed one whose index file is
/// not written yet (then shared, immutable).
struct MemSeg {
    seq: u32,
    by_id: IdMap<Slot>,
    /// (ts_ms, position) → (frame length, key number). Ties in time are in log order.
    by_time: BTreeMap<(i64, Pos), (u32, u32)>,
    stats: KeyStats,
}

impl MemSeg {
    fn new(seq: u32) -> MemSeg {
        MemSeg {
            seq,
            by_id: IdMap::default(),
            by_time: BTreeMap::new(),
            stats: Vec::new(),
        }
    }

    fn insert(&mut self, h: &FrameHeader, key: u32, slot: Slot) {
        let k = key as usize;
        if self.stats.len() <= k {
            self.stats.resize(k + 1, None);
        }
        self.stats[k]
            .get_or_insert_with(|| SourceStats::new(h.ts_ms, h.received_ms))
            .add(h.ts_ms, h.received_ms, h.len as u64);
        self.by_id.insert(h.id, slot);
        self.by_time.insert((h.ts_ms, slot.pos), (slot.frame, key));
    }

    /// Memory held, estimated: the id table by its capacity, the time index by its length at
    /// ~2 entries' worth each (B-tree leaves filled in time order end up about half full).
    fn memory(&self) -> usize {
        // hashbrown: a power-of-two number of buckets at most 7/8 full, one control byte each.
        let buckets = (self.by_id.capacity() * 8 / 7).next_power_of_two();
        let by_id = buckets * (std::mem::size_of::<(u128, Slot)>() + 1);
        let by_time = self.by_time.len() * 2 * std::mem::size_of::<((i64, Pos), (u32, u32))>();
        by_id + by_time + self.stats.capacity() * std::mem::size_of::<Option<SourceStats>>()
    }
}

struct Index {
    /// Source keys by number, and their numbers. Numbers are stable while the log is open.
    keys: Vec<Arc<str>>,
    key_ids: HashMap<Arc<str>, u32>,
    active: MemSeg,
    /// Closed segments whose index file is not written yet.
    frozen: BTreeMap<u32, Arc<MemSeg>>,
    /// Closed segments with their index file, and segments dropped whose ids are kept.
    sealed: BTreeMap<u32, Arc<Sealed>>,
    /// `sealed` by largest id, largest first: a dedup check walks it only while the id can be
    /// in range, which for a new ULID is the first one or two.
    by_max_id: Vec<Arc<Sealed>>,
    /// Statistics of the readable sealed segments' records, and their count.
    sealed_stats: KeyStats,
    sealed_records: u64,
    /// Open segment files by sequence number, for reads (readable segments only).
    files: HashMap<u32, Arc<File>>,
}

impl Index {
    fn new(active: u32) -> Index {
        Index {
            keys: Vec::new(),
            key_ids: HashMap::new(),
            active: MemSeg::new(active),
            frozen: BTreeMap::new(),
            sealed: BTreeMap::new(),
            by_max_id: Vec::new(),
            sealed_stats: Vec::new(),
            sealed_records: 0,
            files: HashMap::new(),
        }
    }

    fn key_id(&mut self, key: &str) -> u32 {
        if let Some(&k) = self.key_ids.get(key) {
            return k;
        }
        let k = self.keys.len() as u32;
        let key: Arc<str> = Arc::from(key);
        self.keys.push(key.clone());
        self.key_ids.insert(key, k);
        k
    }

    fn insert(&mut self, h: &FrameHeader, key: &str, slot: Slot) {
        let k = self.key_id(key);
        self.active.insert(h, k, slot);
    }

    /// Whether an in-memory index (active or closed, not yet sealed) has `id`.
    fn mem_has(&self, id: u128) -> Option<Slot> {
        if let Some(s) = self.active.by_id.get(&id) {
            return Some(*s);
        }
        self.frozen.values().find_map(|m| m.by_id.get(&id).copied())
    }

    /// Sealed segments that may hold `id` (range, then filter), for an exact check on disk.
    fn sealed_candidates(&self, id: u128, readable_only: bool, out: &mut Vec<Arc<Sealed>>) {
        for s in &self.by_max_id {
            if s.h.max_id < id {
                break;
            }
            if (s.readable || !readable_only) && s.may_hold(id) {
                out.push(s.clone());
            }
        }
    }

    fn add_sealed(&mut self, s: Sealed, stats: &[(u32, SourceStats)]) {
        if s.readable {
            self.sealed_records += s.h.records;
            for (k, st) in stats {
                merge_stats(&mut self.sealed_stats, *k, st);
            }
        }
        self.sealed.insert(s.seq, Arc::new(s));
        self.sort_by_max_id();
    }

    fn sort_by_max_id(&mut self) {
        let mut v: Vec<Arc<Sealed>> = self
            .sealed
            .values()
            .filter(|s| s.h.records > 0)
            .cloned()
            .collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.h.max_id));
        self.by_max_id = v;
    }

    fn records(&self) -> u64 {
        self.sealed_records
            + self.active.by_id.len() as u64
            + self
                .frozen
                .values()
                .map(|m| m.by_id.len() as u64)
                .sum::<u64>()
    }
}

/// Decoded time columns of sealed segments, least recently used first out.
struct TimeCache {
    budget: usize,
    used: usize,
    tick: u64,
    map: HashMap<u32, (Arc<TimeCols>, u64)>,
}

impl TimeCache {
    fn get(&mut self, seq: u32) -> Option<Arc<TimeCols>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&seq).map(|(c, t)| {
            *t = tick;
            c.clone()
        })
    }

    fn put(&mut self, seq: u32, cols: Arc<TimeCols>) {
        if cols.bytes() > self.budget {
            return;
        }
        self.tick += 1;
        self.used += cols.bytes();
        if let Some((old, _)) = self.map.insert(seq, (cols, self.tick)) {
            self.used -= old.bytes();
        }
        while self.used > self.budget {
            let Some((&oldest, _)) = self.map.iter().min_by_key(|(_, (_, t))| *t) else {
                break;
            };
            self.remove(oldest);
        }
    }

    fn remove(&mut self, seq: u32) {
        if let Some((c, _)) = self.map.remove(&seq) {
            self.used -= c.bytes();
        }
    }
}

/// Called for the telemetry log: the oldest segment a consumer still needs (the series
/// store replays from its persisted position on open); retention keeps it and later ones.
pub type KeepFrom = Box<dyn Fn() -> u32 + Send + Sync>;

#[derive(Default)]
struct Wake {
    kicked: bool,
    stop: bool,
}

/// What the log shares with its background thread.
struct Core {
    dir: PathBuf,
    segment_bytes: u64,
    index: RwLock<Index>,
    retention: Mutex<Retention>,
    keep_from: Mutex<Option<KeepFrom>>,
    cache: Mutex<TimeCache>,
    pinned_bloom_bytes: usize,
    /// Serialises sealing and dropping: the sealed set and its statistics change only there.
    maint: Mutex<()>,
    wake: Mutex<Wake>,
    wake_cv: Condvar,
    dropped_segments: AtomicU64,
    dropped_bytes: AtomicU64,
    active_len: AtomicU64,
}

struct Writer {
    seq: u32,
    file: Arc<File>,
    len: u64,
    /// Set when a failed append could not be rolled back: the next append starts a new segment
    /// rather than writing after unknown bytes.
    roll: bool,
    /// Frames of the batch being appended. Kept between appends: a fresh buffer per batch
    /// means fresh pages, and zeroing those cost more than encoding the frames. The same goes
    /// for the per-append lists below (kept empty, with their capacity).
    buf: Vec<u8>,
    /// Indexes (into the append's records) of those not stored before.
    fresh: Vec<usize>,
    slots: Vec<Slot>,
    seen: HashSet<u128, ahash::RandomState>,
    /// Per record of the append: 0 new, 1 duplicate, 2 to check on disk.
    state: Vec<u8>,
    /// (record, sealed segment whose ids may hold it).
    check: Vec<(usize, Arc<Sealed>)>,
}

impl Writer {
    fn new(seq: u32, file: Arc<File>, len: u64, roll: bool) -> Writer {
        Writer {
            seq,
            file,
            len,
            roll,
            buf: Vec::new(),
            fresh: Vec::new(),
            slots: Vec::new(),
            seen: HashSet::default(),
            state: Vec::new(),
            check: Vec::new(),
        }
    }
}

/// Largest append buffer kept between appends.
const KEEP_BUF: usize = 4 * 1024 * 1024;
/// Most records whose per-append lists are kept between appends.
const KEEP_LIST: usize = 16 * 1024;

pub struct RecordLog {
    core: Arc<Core>,
    writer: Mutex<Writer>,
    worker: Option<std::thread::JoinHandle<()>>,
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: u128,
    pub ts_ms: i64,
    pub received_ms: i64,
    pub key: String,
    pub payload: Vec<u8>,
}

/// How opening went, for the log line and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub segments: u32,
    pub records: u64,
    /// Segments whose indexing stopped at a bad frame before their end: path, valid bytes,
    /// unread bytes. On the last segment usually an append torn by a crash.
    pub damaged: Vec<(PathBuf, u64, u64)>,
    /// Ids met a second time while reading (kept: the first).
    pub duplicate_frames: u64,
    /// Segment index files written anew because they were missing, stale or damaged.
    pub indexes_rebuilt: u32,
    /// Index files of dropped segments kept for deduplication.
    pub ids_only: u32,
}

fn io<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> LogError + 'p {
    move |cause| LogError::Io {
        op,
        path: path.to_path_buf(),
        cause,
    }
}

fn segment_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:010}.log"))
}

fn encode_frame(out: &mut Vec<u8>, r: &NewRecord<'_>) {
    let start = out.len();
    out.extend_from_slice(&(r.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&r.id.to_be_bytes());
    out.extend_from_slice(&r.ts_ms.to_le_bytes());
    out.extend_from_slice(&r.received_ms.to_le_bytes());
    out.extend_from_slice(&(r.key.len() as u16).to_le_bytes());
    out.extend_from_slice(r.key.as_bytes());
    out.extend_from_slice(r.payload);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

struct FrameHeader {
    len: usize,
    crc: u32,
    id: u128,
    ts_ms: i64,
    received_ms: i64,
    key_len: usize,
}

impl FrameHeader {
    fn frame_len(&self) -> usize {
        HEADER + self.key_len + self.len
    }
}

fn decode_header(h: &[u8; HEADER]) -> FrameHeader {
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let i64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        i64::from_le_bytes(b)
    };
    let mut id = [0u8; 16];
    id.copy_from_slice(&h[8..24]);
    FrameHeader {
        len: u32_at(0) as usize,
        crc: u32_at(4),
        id: u128::from_be_bytes(id),
        ts_ms: i64_at(24),
        received_ms: i64_at(32),
        key_len: u16::from_le_bytes([h[40], h[41]]) as usize,
    }
}

/// A frame read whole: checks its checksum and splits off key and payload.
fn decode_frame(frame: &[u8]) -> Result<(FrameHeader, &str, &[u8]), String> {
    let header: &[u8; HEADER] = frame
        .get(..HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or("shorter than a frame header")?;
    let h = decode_header(header);
    if h.frame_len() != frame.len() {
        return Err(format!(
            "frame header says {} bytes, {} were expected",
            h.frame_len(),
            frame.len()
        ));
    }
    if crc32fast::hash(&frame[8..]) != h.crc {
        return Err("checksum mismatch".into());
    }
    let key = std::str::from_utf8(&frame[HEADER..HEADER + h.key_len])
        .map_err(|_| "source key is not UTF-8".to_string())?;
    let payload = &frame[HEADER + h.key_len..];
    Ok((h, key, payload))
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

/// Reads frames from the start of a segment until its end or the first bad frame. Returns the
/// valid length; `found` gets each frame's header, key and slot.
fn scan_segment(
    path: &Path,
    seq: u32,
    file: &File,
    start: u64,
    mut found: impl FnMut(&FrameHeader, &str, Slot, &[u8]),
) -> Result<u64, LogError> {
    use std::io::{Seek, SeekFrom};
    let size = file.metadata().map_err(io("stat", path))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    if size < MAGIC.len() as u64 {
        // Created, then a crash before the marker was synced: nothing in it.
        return Ok(0);
    }
    // The handle may be shared (replays reuse the open segment's), so its cursor is anywhere.
    r.seek(SeekFrom::Start(0)).map_err(io("seek", path))?;
    r.read_exact(&mut magic).map_err(io("read", path))?;
    if &magic != MAGIC {
        return Err(LogError::Format {
            path: path.to_path_buf(),
        });
    }
    let start = start.max(MAGIC.len() as u64);
    r.seek(SeekFrom::Start(start)).map_err(io("seek", path))?;
    let (mut off, mut frame) = (start, Vec::new());
    while off + HEADER as u64 <= size {
        frame.resize(HEADER, 0);
        r.read_exact(&mut frame[..HEADER])
            .map_err(io("read", path))?;
        let mut header = [0u8; HEADER];
        header.copy_from_slice(&frame[..HEADER]);
        let h = decode_header(&header);
        let end = off + h.frame_len() as u64;
        if h.len > MAX_RECORD || h.key_len > MAX_KEY || end > size || end > u32::MAX as u64 {
            break;
        }
        frame.resize(h.frame_len(), 0);
        r.read_exact(&mut frame[HEADER..])
            .map_err(io("read", path))?;
        let Ok((h, key, payload)) = decode_frame(&frame) else {
            break;
        };
        let slot = Slot {
            pos: Pos {
                seg: seq,
                off: off as u32,
            },
            frame: h.frame_len() as u32,
        };
        found(&h, key, slot, payload);
        off = end;
    }
    Ok(off)
}

/// Logs a segment indexed only up to a bad frame, as opening always did.
fn report_damage(path: &Path, valid: u64, unread: u64, last: bool) {
    if last {
        tracing::warn!(path = %path.display(), valid, unread,
            "the log ends in an unfinished write (a crash mid-append: never \
             acknowledged, so it is resent); it is left in place and new records \
             go to a new segment");
    } else {
        tracing::error!(path = %path.display(), valid, unread,
            "damaged frame in the log: the records after it are not indexed; \
             the file is kept as it is for inspection");
    }
}

impl Core {
    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // The index is only mutated by complete inserts; a panic elsewhere leaves it whole.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    fn retention(&self) -> Retention {
        *self.retention.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kick(&self) {
        self.wake.lock().unwrap_or_else(|p| p.into_inner()).kicked = true;
        self.wake_cv.notify_one();
    }

    fn stopping(&self) -> bool {
        self.wake.lock().unwrap_or_else(|p| p.into_inner()).stop
    }

    /// Whether `id` is stored, or kept for deduplication: in memory, or on disk in a sealed
    /// segment whose range and filter say maybe.
    fn known(&self, id: u128) -> Result<bool, LogError> {
        let mut candidates = Vec::new();
        {
            let index = self.read_index();
            if index.mem_has(id).is_some() {
                return Ok(true);
            }
            index.sealed_candidates(id, false, &mut candidates);
        }
        for s in candidates {
            if s.find_id(id)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Writes a segment's index file atomically: temporary file, fsync, rename, fsync of the
    /// directory. Returns it open.
    fn write_index_file(&self, seq: u32, bytes: &[u8]) -> Result<(Arc<File>, PathBuf), LogError> {
        let path = index_path(&self.dir, seq);
        let tmp = self.dir.join(format!("{seq:010}.idx.tmp"));
        let written = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io("create", &tmp))
            .and_then(|f| {
                f.write_all_at(bytes, 0)
                    .and_then(|()| f.sync_all())
                    .map_err(io("write", &tmp))?;
                Ok(f)
            });
        let file = match written {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
        sync_dir(&self.dir)?;
        Ok((Arc::new(file), path))
    }

    /// Reads a closed segment back (checking every frame), writes its index file and swaps
    /// its in-memory index for the summary. Holds `maint`. `false`: nothing to seal.
    fn seal_locked(&self, seq: u32) -> Result<bool, LogError> {
        let (mem, file) = {
            let index = self.read_index();
            (
                index.frozen.get(&seq).cloned(),
                index.files.get(&seq).cloned(),
            )
        };
        let (Some(mem), Some(file)) = (mem, file) else {
            return Ok(false);
        };
        let path = segment_path(&self.dir, seq);
        let size = file.metadata().map_err(io("stat", &path))?.len();
        let mut b = Builder::default();
        let valid = scan_segment(&path, seq, &file, 0, |h, key, slot, _| {
            // Only the copy the index holds (a duplicate frame found on open is not).
            if mem.by_id.get(&h.id).is_some_and(|s| s.pos == slot.pos) {
                let k = mem.by_time.get(&(h.ts_ms, slot.pos)).map(|v| v.1);
                b.add(h, key, slot.pos.off, slot.frame, || {
                    k.unwrap_or_else(|| self.write_index().key_id(key))
                });
            }
        })?;
        if b.len() < mem.by_id.len() {
            // Damaged after it was written (a disk error): reads of those records failed
            // already; from now on they are not indexed, as after a reopen.
            report_damage(&path, valid, size - valid, false);
        }
        let (bytes, globals) = b.finish(size, valid);
        let (idx, idx_path) = self.write_index_file(seq, &bytes)?;
        let window = self.retention().dedup_window_ms;
        let now = now_ms();
        let mut g = globals.iter().copied();
        let (sealed, stats) = Sealed::parse(
            seq,
            &bytes,
            idx,
            idx_path.clone(),
            |_| g.next().unwrap_or(0),
            |h| pin_bloom(h, now, window),
        )
        .map_err(|detail| LogError::Index {
            path: idx_path,
            detail,
        })?;
        // The newest segment is the likeliest to be aggregated over: cache it now, from the
        // bytes in hand.
        let cols = Arc::new(sealed.cols_from(&bytes));
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(seq, cols);
        let mut index = self.write_index();
        index.frozen.remove(&seq);
        index.add_sealed(sealed, &stats);
        Ok(true)
    }

    /// Fills the time column cache with the newest sealed segments (after open).
    fn warm_cache(&self) {
        let budget = self.cache.lock().unwrap_or_else(|p| p.into_inner()).budget;
        let newest: Vec<Arc<Sealed>> = {
            let index = self.read_index();
            index
                .sealed
                .values()
                .rev()
                .filter(|s| s.readable && s.h.records > 0)
                .cloned()
                .collect()
        };
        let mut used = 0;
        for s in newest {
            // About what its columns take (see `TimeCols`).
            used += s.h.records as usize * 6;
            if used > budget || self.stopping() {
                break;
            }
            if let Err(e) = self.cols(&s) {
                tracing::warn!(error = %e, "cannot read a segment index's times");
                break;
            }
        }
    }

    /// Seals every closed segment still waiting, oldest first.
    fn seal_pending(&self) -> Result<u32, LogError> {
        let _m = self.maint.lock().unwrap_or_else(|p| p.into_inner());
        let pending: Vec<u32> = self.read_index().frozen.keys().copied().collect();
        let mut n = 0;
        for seq in pending {
            if self.stopping() {
                break;
            }
            n += u32::from(self.seal_locked(seq)?);
        }
        Ok(n)
    }

    /// Seals the oldest closed segment waiting (the writer, when the thread is behind).
    fn seal_oldest(&self) -> Result<(), LogError> {
        let _m = self.maint.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = self.read_index().frozen.keys().next().copied();
        if let Some(seq) = oldest {
            self.seal_locked(seq)?;
        }
        Ok(())
    }

    /// Time columns of a sealed segment, from the cache or read (and cached).
    fn cols(&self, s: &Sealed) -> Result<Arc<TimeCols>, LogError> {
        if let Some(c) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(s.seq)
        {
            return Ok(c);
        }
        let cols = Arc::new(s.read_cols()?);
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(s.seq, cols.clone());
        Ok(cols)
    }

    /// Seals what waits, lets go of filters and kept ids past the dedup window, and applies
    /// retention. `now_ms` is the clock (tests pass their own).
    fn maintain(&self, now: i64) -> Result<Maintained, LogError> {
        // A segment that cannot be sealed (a full disk) must not stop retention, which may
        // be what frees the space: its error is returned after.
        let (sealed, seal_error) = match self.seal_pending() {
            Ok(n) => (n, None),
            Err(e) => (0, Some(e)),
        };
        let mut out = Maintained {
            sealed,
            ..Maintained::default()
        };
        let _m = self.maint.lock().unwrap_or_else(|p| p.into_inner());
        let r = self.retention();
        let window_start = now.saturating_sub(r.dedup_window_ms);
        // Filters to let go of or read back (see `bloom_plan`), kept ids whose window passed.
        let (release, pin, forget) = {
            let index = self.read_index();
            let (release, pin) = bloom_plan(
                index.sealed.values(),
                now,
                r.dedup_window_ms,
                self.pinned_bloom_bytes,
            );
            let forget: Vec<Arc<Sealed>> = index
                .sealed
                .values()
                .filter(|s| !s.readable && s.h.max_received < window_start)
                .cloned()
                .collect();
            (release, pin, forget)
        };
        // Read outside the index lock; a filter that cannot be read stays on disk.
        let pinned: Vec<Sealed> = pin
            .iter()
            .filter_map(|s| match s.with_bloom() {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a segment's Bloom filter; it is checked on disk");
                    None
                }
            })
            .collect();
        if !release.is_empty() || !forget.is_empty() || !pinned.is_empty() {
            let mut index = self.write_index();
            for s in &release {
                // Unless it went meanwhile (retention runs under `maint` too, so it cannot).
                if index.sealed.contains_key(&s.seq) {
                    index.sealed.insert(s.seq, Arc::new(s.without_bloom()));
                }
            }
            for s in pinned.iter() {
                if index.sealed.contains_key(&s.seq) {
                    index.sealed.insert(s.seq, Arc::new(s.clone()));
                }
            }
            for s in &forget {
                index.sealed.remove(&s.seq);
            }
            index.sort_by_max_id();
        }
        for s in &forget {
            if let Err(e) = std::fs::remove_file(&s.idx_path) {
                tracing::warn!(path = %s.idx_path.display(), error = %e, "cannot remove a kept id index");
            }
        }
        out.filters_pinned = pinned.len() as u32;
        out.filters_released = release.len() as u32;
        out.ids_forgotten = forget.len() as u32;
        self.apply_retention(now, &r, &mut out)?;
        match seal_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Drops closed segments past `r.max_age_ms` and, oldest first, while the log is over
    /// `r.max_bytes`. Holds `maint`.
    fn apply_retention(
        &self,
        now: i64,
        r: &Retention,
        out: &mut Maintained,
    ) -> Result<(), LogError> {
        if r.max_age_ms <= 0 && r.max_bytes == 0 {
            return Ok(());
        }
        let keep_from = self
            .keep_from
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(u32::MAX, |f| f());
        let window_start = now.saturating_sub(r.dedup_window_ms);
        let (sealed, frozen_bytes): (Vec<Arc<Sealed>>, u64) = {
            let index = self.read_index();
            let frozen = index
                .frozen
                .keys()
                .filter_map(|seq| index.files.get(seq))
                .filter_map(|f| f.metadata().ok())
                .map(|m| m.len())
                .sum();
            (index.sealed.values().cloned().collect(), frozen)
        };
        // Ids kept for deduplication do not count: they cannot be dropped before their window
        // has passed, and counting them would make the bound drop readable records instead.
        let mut total = frozen_bytes
            + self.active_len.load(Relaxed)
            + sealed
                .iter()
                .filter(|s| s.readable)
                .map(|s| s.idx_len + s.h.seg_size)
                .sum::<u64>();
        // (segment, keep its ids)
        let mut plan: Vec<(Arc<Sealed>, bool)> = Vec::new();
        for s in sealed.iter().filter(|s| s.readable) {
            if s.seq >= keep_from {
                break;
            }
            let expired = r.max_age_ms > 0 && s.h.max_received < now.saturating_sub(r.max_age_ms);
            let over = r.max_bytes > 0 && total > r.max_bytes;
            if !(expired || over) {
                continue;
            }
            let keep_ids = s.h.records > 0 && s.h.max_received >= window_start;
            total -= s.h.seg_size + s.idx_len;
            plan.push((s.clone(), keep_ids));
        }
        if plan.is_empty() {
            return Ok(());
        }
        // Statistics of what stays, read before anything changes (only `maint` changes them).
        let mut stats: KeyStats = Vec::new();
        let mut records = 0;
        for s in sealed.iter().filter(|s| s.readable) {
            if plan.iter().any(|(d, _)| d.seq == s.seq) {
                continue;
            }
            records += s.h.records;
            for (k, st) in s.key_stats()? {
                merge_stats(&mut stats, k, &st);
            }
        }
        {
            let mut index = self.write_index();
            for (s, keep_ids) in &plan {
                index.sealed.remove(&s.seq);
                index.files.remove(&s.seq);
                if *keep_ids {
                    index.sealed.insert(s.seq, Arc::new(s.ids_only()));
                }
            }
            index.sealed_stats = stats;
            index.sealed_records = records;
            index.sort_by_max_id();
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        for (s, _) in &plan {
            cache.remove(s.seq);
        }
        drop(cache);
        for (s, keep_ids) in &plan {
            let path = segment_path(&self.dir, s.seq);
            let mut bytes = s.h.seg_size;
            // Gone from the log already; a file that stays is dropped again on the next open.
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!(path = %path.display(), error = %e, "cannot remove a dropped segment");
            }
            if !keep_ids {
                bytes += s.idx_len;
                if let Err(e) = std::fs::remove_file(&s.idx_path) {
                    tracing::error!(path = %s.idx_path.display(), error = %e, "cannot remove a dropped segment's index");
                }
            }
            out.dropped_segments += 1;
            out.dropped_bytes += bytes;
            out.ids_kept += u32::from(*keep_ids);
            self.dropped_segments.fetch_add(1, Relaxed);
            self.dropped_bytes.fetch_add(bytes, Relaxed);
            tracing::info!(path = %path.display(), records = s.h.records, bytes,
                ids_kept = keep_ids, "retention dropped a segment");
        }
        sync_dir(&self.dir)
    }
}

/// The log's background thread: seals closed segments and applies retention, woken when a
/// segment closes and every [`MAINTAIN_EVERY`].
fn maintenance(core: Arc<Core>) {
    loop {
        {
            let mut w = core.wake.lock().unwrap_or_else(|p| p.into_inner());
            if !w.stop && !w.kicked {
                w = core
                    .wake_cv
                    .wait_timeout(w, MAINTAIN_EVERY)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            if w.stop {
                return;
            }
            w.kicked = false;
        }
        match core.maintain(now_ms()) {
            Ok(m) if m != Maintained::default() => {
                tracing::debug!(dir = %core.dir.display(), ?m, "record log maintained")
            }
            Ok(_) => {}
            // Retried on the next wake; a segment not sealed stays readable from memory.
            Err(e) => tracing::error!(dir = %core.dir.display(), error = %e,
                "record log maintenance failed (indexing closed segments, retention)"),
        }
    }
}

impl Drop for RecordLog {
    fn drop(&mut self) {
        self.core
            .wake
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stop = true;
        self.core.wake_cv.notify_one();
        if let Some(w) = self.worker.take() {
            // Finishes at most the segment it is sealing; what waits is sealed on next open.
            let _ = w.join();
        }
    }
}

impl RecordLog {
    /// Opens (creating if needed) the log in `dir` with default options. Blocking.
    pub fn open(dir: &Path) -> Result<(RecordLog, Recovery), LogError> {
        Self::open_with(dir, LogOptions::default())
    }

    /// Opens (creating if needed) the log in `dir`: loads the closed segments' index files
    /// (rebuilding missing or damaged ones from their segments) and indexes the last segment
    /// in memory. Blocking.
    pub fn open_with(dir: &Path, opts: LogOptions) -> Result<(RecordLog, Recovery), LogError> {
        std::fs::create_dir_all(dir).map_err(io("create log directory", dir))?;
        let (mut seqs, mut idx_seqs) = (Vec::new(), Vec::new());
        for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
            let name = entry.map_err(io("list", dir))?.file_name();
            let name = name.to_string_lossy();
            let seq_of = |suffix: &str| {
                name.strip_suffix(suffix)
                    .and_then(|s| s.parse::<u32>().ok())
            };
            if let Some(seq) = seq_of(".log") {
                seqs.push(seq);
            } else if let Some(seq) = seq_of(".idx") {
                idx_seqs.push(seq);
            } else if name.ends_with(".idx.tmp") {
                // An index write cut short by a crash: written again below.
                let path = dir.join(&*name);
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
            }
        }
        seqs.sort_unstable();
        idx_seqs.sort_unstable();
        let now = now_ms();
        let window = opts.retention.dedup_window_ms;
        let core = Core {
            dir: dir.to_path_buf(),
            segment_bytes: opts.segment_bytes.max(MAGIC.len() as u64 + 1),
            index: RwLock::new(Index::new(seqs.last().copied().unwrap_or(1))),
            retention: Mutex::new(opts.retention),
            keep_from: Mutex::new(None),
            cache: Mutex::new(TimeCache {
                budget: opts.time_cache_bytes,
                used: 0,
                tick: 0,
                map: HashMap::new(),
            }),
            pinned_bloom_bytes: opts.pinned_bloom_bytes,
            maint: Mutex::new(()),
            wake: Mutex::new(Wake::default()),
            wake_cv: Condvar::new(),
            dropped_segments: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
            active_len: AtomicU64::new(0),
        };
        let mut rec = Recovery::default();
        // Ids of dropped segments kept for deduplication: loaded first, so rebuilt segments
        // are checked against them too.
        for &seq in idx_seqs.iter().filter(|s| seqs.binary_search(s).is_err()) {
            let path = index_path(dir, seq);
            let mut index = core.write_index();
            match Sealed::load(seq, &path, |k| index.key_id(k), |_| true) {
                Ok((s, _)) if s.h.max_received >= now.saturating_sub(window) => {
                    index.add_sealed(s.ids_only(), &[]);
                    rec.ids_only += 1;
                }
                // Past the window (or unreadable): nothing an edge could resend.
                _ => {
                    std::fs::remove_file(&path).map_err(io("remove", &path))?;
                }
            }
        }
        let mut last: Option<(u32, Arc<File>, u64, bool)> = None;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            let file = Arc::new(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io("open", &path))?,
            );
            let size = file.metadata().map_err(io("stat", &path))?.len();
            let is_last = i + 1 == seqs.len();
            core.write_index().files.insert(seq, file.clone());
            rec.segments += 1;
            if is_last {
                // Appended to from here on: its index is in memory; an index file of it would
                // go stale at the first append.
                let idx = index_path(dir, seq);
                if idx_seqs.binary_search(&seq).is_ok() {
                    std::fs::remove_file(&idx).map_err(io("remove", &idx))?;
                }
                let mut failed = None;
                let valid = scan_segment(&path, seq, &file, 0, |h, key, slot, _| {
                    match core.known(h.id) {
                        Ok(true) => rec.duplicate_frames += 1,
                        Ok(false) => {
                            core.write_index().insert(h, key, slot);
                            rec.records += 1;
                        }
                        Err(e) => failed = failed.take().or(Some(e)),
                    }
                })?;
                if let Some(e) = failed {
                    return Err(e);
                }
                if valid < size {
                    report_damage(&path, valid, size - valid, true);
                    rec.damaged.push((path.clone(), valid, size - valid));
                }
                // A segment cut short before its marker is not appended to either.
                last = Some((seq, file, valid, valid < size || size < MAGIC.len() as u64));
                continue;
            }
            let idx = index_path(dir, seq);
            let loaded = match idx_seqs.binary_search(&seq) {
                Ok(_) => {
                    let mut index = core.write_index();
                    // Filters are pinned by the first maintenance pass, newest first.
                    let r = Sealed::load(seq, &idx, |k| index.key_id(k), |_| false);
                    Some(match r {
                        Ok((s, _)) if s.h.seg_size != size => Err(format!(
                            "it indexes {} bytes, the segment has {size}",
                            s.h.seg_size
                        )),
                        other => other,
                    })
                }
                Err(_) => None,
            };
            let (sealed, stats) = match loaded {
                Some(Ok(found)) => found,
                other => {
                    if let Some(Err(why)) = other {
                        tracing::warn!(path = %idx.display(), why, "segment index rebuilt from its segment");
                    }
                    rec.indexes_rebuilt += 1;
                    match Self::rebuild_index(&core, seq, &path, &file, size)? {
                        Some(found) => found,
                        None => {
                            // Could not write it (e.g. a full disk): indexed in memory and
                            // sealed later by the background thread.
                            let mut mem = Index::new(seq);
                            std::mem::swap(&mut core.write_index().active, &mut mem.active);
                            let valid = Self::index_in_memory(&core, seq, &path, &file, &mut rec)?;
                            let mut index = core.write_index();
                            let frozen = std::mem::replace(&mut index.active, mem.active);
                            index.frozen.insert(seq, Arc::new(frozen));
                            if valid < size {
                                report_damage(&path, valid, size - valid, false);
                                rec.damaged.push((path.clone(), valid, size - valid));
                            }
                            continue;
                        }
                    }
                }
            };
            if sealed.h.valid < size {
                report_damage(&path, sealed.h.valid, size - sealed.h.valid, false);
                rec.damaged
                    .push((path.clone(), sealed.h.valid, size - sealed.h.valid));
            }
            rec.records += sealed.h.records;
            core.write_index().add_sealed(sealed, &stats);
        }
        let writer = match last {
            Some((seq, file, len, damaged)) => Writer::new(seq, file, len, damaged),
            None => {
                let file = Self::create_segment(dir, 1)?;
                core.write_index().files.insert(1, file.clone());
                Writer::new(1, file, MAGIC.len() as u64, false)
            }
        };
        core.active_len.store(writer.len, Relaxed);
        // Aggregates right after a restart find the newest segments' times in memory, as
        // they did when every index was rebuilt on open (~5 ms per full segment).
        core.warm_cache();
        let core = Arc::new(core);
        let worker = match opts.background {
            true => {
                let core = core.clone();
                Some(
                    std::thread::Builder::new()
                        .name("csb-reclog".into())
                        .spawn(move || maintenance(core))
                        .map_err(io("start the maintenance thread for", dir))?,
                )
            }
            false => None,
        };
        // A first pass now: segments left unsealed, retention due while the hub was down.
        core.kick();
        let log = RecordLog {
            core,
            writer: Mutex::new(writer),
            worker,
        };
        Ok((log, rec))
    }

    /// Indexes a closed segment afresh (its index file missing or unusable): its frames, less
    /// ids stored before it. `None` when the file could not be written.
    #[allow(clippy::type_complexity)]
    fn rebuild_index(
        core: &Core,
        seq: u32,
        path: &Path,
        file: &File,
        size: u64,
    ) -> Result<Option<(Sealed, Vec<(u32, SourceStats)>)>, LogError> {
        let mut b = Builder::default();
        let mut seen: HashSet<u128, ahash::RandomState> = HashSet::default();
        let mut failed = None;
        let valid = scan_segment(path, seq, file, 0, |h, key, slot, _| {
            if !seen.insert(h.id) {
                return;
            }
            match core.known(h.id) {
                Ok(true) => {}
                Ok(false) => b.add(h, key, slot.pos.off, slot.frame, || {
                    core.write_index().key_id(key)
                }),
                Err(e) => failed = failed.take().or(Some(e)),
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        let (bytes, globals) = b.finish(size, valid);
        let (idx, idx_path) = match core.write_index_file(seq, &bytes) {
            Ok(written) => written,
            Err(e) => {
                tracing::error!(error = %e, "cannot write a segment index; the segment is indexed in memory until it can be");
                return Ok(None);
            }
        };
        let mut g = globals.iter().copied();
        Sealed::parse(
            seq,
            &bytes,
            idx,
            idx_path.clone(),
            |_| g.next().unwrap_or(0),
            // As for the index files read at open: the first maintenance pass pins.
            |_| false,
        )
        .map(Some)
        .map_err(|detail| LogError::Index {
            path: idx_path,
            detail,
        })
    }

    /// Scans segment `seq` into the (empty) active in-memory index; returns its valid length.
    fn index_in_memory(
        core: &Core,
        seq: u32,
        path: &Path,
        file: &File,
        rec: &mut Recovery,
    ) -> Result<u64, LogError> {
        core.write_index().active.seq = seq;
        let mut failed = None;
        let valid = scan_segment(path, seq, file, 0, |h, key, slot, _| {
            match core.known(h.id) {
                Ok(true) => rec.duplicate_frames += 1,
                Ok(false) => {
                    core.write_index().insert(h, key, slot);
                    rec.records += 1;
                }
                Err(e) => failed = failed.take().or(Some(e)),
            }
        })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(valid),
        }
    }

    /// A new segment holding just the format marker, durably. A file left by an earlier
    /// attempt that failed (a full disk) is reused: nothing was ever stored in it.
    fn create_segment(dir: &Path, seq: u32) -> Result<Arc<File>, LogError> {
        let path = segment_path(dir, seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io("create segment", &path))?;
        let marked = file
            .write_all_at(MAGIC, 0)
            .and_then(|()| file.sync_all())
            .map_err(io("write format marker to", &path))
            .and_then(|()| sync_dir(dir));
        if let Err(e) = marked {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Arc::new(file))
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.core.read_index()
    }

    /// Changes retention from the next maintenance pass on.
    pub fn set_retention(&self, r: Retention) {
        *self
            .core
            .retention
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = r;
        self.core.kick();
    }

    /// Makes retention keep the segment `keep_from()` returns and every later one.
    pub fn set_keep_from(&self, keep_from: KeepFrom) {
        *self
            .core
            .keep_from
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(keep_from);
    }

    /// One maintenance pass now (what the background thread does after a segment closes and
    /// every minute): seals closed segments, releases filters and kept ids past the dedup
    /// window, applies retention; `now_ms` is the clock. Blocking.
    pub fn maintain(&self, now_ms: i64) -> Result<Maintained, LogError> {
        self.core.maintain(now_ms)
    }

    /// Segments and bytes retention dropped since the log was opened.
    pub fn retention_counters(&self) -> RetentionCounters {
        RetentionCounters {
            segments_dropped: self.core.dropped_segments.load(Relaxed),
            bytes_dropped: self.core.dropped_bytes.load(Relaxed),
        }
    }

    /// Records in the log.
    pub fn len(&self) -> u64 {
        self.read_index().records()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory the log's indexes hold, in bytes (an estimate for health and benchmarks, within
    /// ~20 %): the in-memory indexes of the open segment (and closed ones not yet sealed), the
    /// summaries of sealed ones, and the time column cache.
    pub fn index_bytes(&self) -> u64 {
        let cache = self
            .core
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .used;
        let index = self.read_index();
        let mem = index.active.memory() + index.frozen.values().map(|m| m.memory()).sum::<usize>();
        let sealed: usize = index.sealed.values().map(|s| s.memory()).sum();
        (mem + sealed + cache + index.sealed_stats.capacity() * 56) as u64
    }

    pub fn contains(&self, id: u128) -> bool {
        match self.find(id) {
            Ok(found) => found.is_some(),
            Err(e) => {
                tracing::error!(error = %e, "record lookup failed");
                false
            }
        }
    }

    /// Where the readable record `id` is, and its segment file.
    fn find(&self, id: u128) -> Result<Option<(Arc<File>, Slot)>, LogError> {
        let mut candidates = Vec::new();
        {
            let index = self.read_index();
            if let Some(slot) = index.mem_has(id) {
                return Ok(index.files.get(&slot.pos.seg).map(|f| (f.clone(), slot)));
            }
            index.sealed_candidates(id, true, &mut candidates);
        }
        for s in candidates {
            if let Some((off, frame)) = s.find_id(id)? {
                let file = self.read_index().files.get(&s.seq).cloned();
                let slot = Slot {
                    pos: Pos { seg: s.seq, off },
                    frame,
                };
                // None: dropped by retention meanwhile.
                return Ok(file.map(|f| (f, slot)));
            }
        }
        Ok(None)
    }

    /// Statistics of every source key holding records, in no particular order.
    pub fn sources(&self) -> Vec<(String, SourceStats)> {
        let index = self.read_index();
        let mut all = index.sealed_stats.clone();
        for m in index.frozen.values().map(|m| &**m).chain([&index.active]) {
            for (k, s) in m.stats.iter().enumerate() {
                if let Some(s) = s {
                    merge_stats(&mut all, k as u32, s);
                }
            }
        }
        all.iter()
            .enumerate()
            .filter_map(|(k, s)| Some((index.keys.get(k)?.to_string(), (*s)?)))
            .collect()
    }

    /// Appends the records whose ids are new, durably (see the module docs). Blocking.
    pub fn append(&self, records: &[NewRecord<'_>]) -> Result<Appended, LogError> {
        self.append_then(records, |_, _| {})
    }

    /// [`RecordLog::append`], then `stored(indexes into records of those stored now, end of
    /// the log after them)` while still holding the writer lock, when any was stored. So a
    /// consumer applying them sees appends in log order, and the end position it records
    /// covers exactly what it applied (the series store's replay watermark).
    pub fn append_then(
        &self,
        records: &[NewRecord<'_>],
        stored: impl FnOnce(&[usize], LogPos),
    ) -> Result<Appended, LogError> {
        if records.is_empty() {
            return Ok(Appended::default());
        }
        // One writer at a time: the duplicate check and the write must not interleave.
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (mut fresh, mut slots, mut seen, mut state, mut check) = (
            std::mem::take(&mut w.fresh),
            std::mem::take(&mut w.slots),
            std::mem::take(&mut w.seen),
            std::mem::take(&mut w.state),
            std::mem::take(&mut w.check),
        );
        let result = self.append_locked(
            &mut w,
            records,
            (&mut fresh, &mut slots, &mut seen, &mut state, &mut check),
            stored,
        );
        check.clear();
        if fresh.capacity().max(seen.capacity()).max(state.capacity()) <= KEEP_LIST {
            fresh.clear();
            slots.clear();
            seen.clear();
            state.clear();
            (w.fresh, w.slots, w.seen, w.state, w.check) = (fresh, slots, seen, state, check);
        }
        result
    }

    #[allow(clippy::type_complexity)]
    fn append_locked(
        &self,
        w: &mut Writer,
        records: &[NewRecord<'_>],
        (fresh, slots, seen, state, check): (
            &mut Vec<usize>,
            &mut Vec<Slot>,
            &mut HashSet<u128, ahash::RandomState>,
            &mut Vec<u8>,
            &mut Vec<(usize, Arc<Sealed>)>,
        ),
        stored: impl FnOnce(&[usize], LogPos),
    ) -> Result<Appended, LogError> {
        const NEW: u8 = 0;
        const DUP: u8 = 1;
        let mut out = Appended::default();
        {
            let index = self.read_index();
            let mut candidates = Vec::new();
            for (i, r) in records.iter().enumerate() {
                if !seen.insert(r.id) || index.mem_has(r.id).is_some() {
                    state.push(DUP);
                    continue;
                }
                if r.payload.len() > MAX_RECORD {
                    return Err(LogError::TooLarge {
                        id: r.id,
                        len: r.payload.len(),
                    });
                }
                if r.key.len() > MAX_KEY {
                    return Err(LogError::KeyTooLong {
                        id: r.id,
                        len: r.key.len(),
                    });
                }
                index.sealed_candidates(r.id, false, &mut candidates);
                state.push(NEW);
                check.extend(candidates.drain(..).map(|s| (i, s)));
            }
        }
        // Ids a sealed segment's range and filter may hold: checked on disk, off the lock.
        for (i, s) in check.iter() {
            if state[*i] == NEW && s.find_id(records[*i].id)?.is_some() {
                state[*i] = DUP;
            }
        }
        for (i, r) in records.iter().enumerate() {
            match state[i] {
                NEW => fresh.push(i),
                _ => out.duplicates.push(r.id),
            }
        }
        if fresh.is_empty() {
            return Ok(out);
        }
        let bytes: usize = fresh
            .iter()
            .map(|&i| HEADER + records[i].key.len() + records[i].payload.len())
            .sum();
        if w.roll || (w.len > MAGIC.len() as u64 && w.len + bytes as u64 > self.core.segment_bytes)
        {
            self.roll(w)?;
        }
        let mut buf = std::mem::take(&mut w.buf);
        buf.clear();
        buf.reserve(bytes);
        for &i in fresh.iter() {
            let r = &records[i];
            let off = w.len + buf.len() as u64;
            let before = buf.len();
            encode_frame(&mut buf, r);
            slots.push(Slot {
                pos: Pos {
                    seg: w.seq,
                    off: off as u32,
                },
                frame: (buf.len() - before) as u32,
            });
        }
        let path = segment_path(&self.core.dir, w.seq);
        let written = w
            .file
            .write_all_at(&buf, w.len)
            .map_err(io("append to", &path))
            .and_then(|()| w.file.sync_data().map_err(io("fsync", &path)));
        if buf.capacity() <= KEEP_BUF {
            w.buf = buf;
        }
        if let Err(e) = written {
            // Leave no partial frame for the next append to write after.
            if w.file.set_len(w.len).is_err() {
                w.roll = true;
            }
            return Err(e);
        }
        w.len += bytes as u64;
        self.core.active_len.store(w.len, Relaxed);
        {
            let mut index = self.core.write_index();
            for (&i, &slot) in fresh.iter().zip(slots.iter()) {
                let r = &records[i];
                let h = FrameHeader {
                    len: r.payload.len(),
                    crc: 0,
                    id: r.id,
                    ts_ms: r.ts_ms,
                    received_ms: r.received_ms,
                    key_len: r.key.len(),
                };
                index.insert(&h, r.key, slot);
            }
        }
        out.stored = fresh.len() as u64;
        stored(
            fresh,
            LogPos {
                seg: w.seq,
                off: w.len,
            },
        );
        Ok(out)
    }

    /// The log's end now: where the next append goes (a consumer starting fresh, with no
    /// position of its own, starts here rather than at the log's beginning).
    pub fn end(&self) -> LogPos {
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        LogPos {
            seg: w.seq,
            off: w.len,
        }
    }

    /// Closes the active segment and starts the next: its in-memory index waits for the
    /// background thread to write its index file (or for this writer, when too many wait).
    fn roll(&self, w: &mut Writer) -> Result<(), LogError> {
        let seq = w.seq + 1;
        let file = Self::create_segment(&self.core.dir, seq)?;
        let waiting = {
            let mut index = self.core.write_index();
            index.files.insert(seq, file.clone());
            let closed = std::mem::replace(&mut index.active, MemSeg::new(seq));
            index.frozen.insert(closed.seq, Arc::new(closed));
            index.frozen.len()
        };
        (w.seq, w.file, w.len, w.roll) = (seq, file, MAGIC.len() as u64, false);
        self.core.active_len.store(w.len, Relaxed);
        if waiting > MAX_UNSEALED {
            if let Err(e) = self.core.seal_oldest() {
                // Reads still work from memory; retried with the next closed segment.
                tracing::error!(error = %e, "cannot write a closed segment's index");
            }
        }
        self.core.kick();
        Ok(())
    }

    /// Reads and checks the frame at `slot`; `id`, when given, must be the frame's.
    fn read_slot(&self, file: &File, id: Option<u128>, slot: Slot) -> Result<Record, LogError> {
        let path = || segment_path(&self.core.dir, slot.pos.seg);
        let mut buf = vec![0u8; slot.frame as usize];
        file.read_exact_at(&mut buf, slot.pos.off as u64)
            .map_err(|cause| LogError::Io {
                op: "read",
                path: path(),
                cause,
            })?;
        let corrupt = |detail: String| LogError::Corrupt {
            id: id.unwrap_or(0),
            path: path(),
            offset: slot.pos.off as u64,
            detail,
        };
        let (h, key, payload) = decode_frame(&buf).map_err(corrupt)?;
        if id.is_some_and(|id| id != h.id) {
            return Err(corrupt(format!("the frame there is record {:032x}", h.id)));
        }
        Ok(Record {
            id: h.id,
            ts_ms: h.ts_ms,
            received_ms: h.received_ms,
            key: key.to_string(),
            payload: payload.to_vec(),
        })
    }

    /// The record with this id, if stored. Blocking.
    pub fn get(&self, id: u128) -> Result<Option<Record>, LogError> {
        match self.find(id)? {
            Some((file, slot)) => self.read_slot(&file, Some(id), slot).map(Some),
            None => Ok(None),
        }
    }

    /// Visits records with `from_ms <= ts_ms < to_ms` (unbounded where `None`) whose source key
    /// `want_key` accepts, newest first, until `visit` returns `false`. Records of other keys
    /// are not read at all. Blocking; reads in chunks so writers are not held up. A damaged
    /// record is passed as `Err` (the visitor decides whether to go on).
    pub fn scan_newest_first(
        &self,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        want_key: impl Fn(&str) -> bool,
        mut visit: impl FnMut(Result<Record, LogError>) -> bool,
    ) -> Result<(), LogError> {
        let lo = (from_ms.unwrap_or(i64::MIN), Pos { seg: 0, off: 0 });
        // Exclusive upper key; `None` = unbounded.
        let hi: Option<(i64, Pos)> = to_ms.map(|to| (to, Pos { seg: 0, off: 0 }));
        if hi.is_some_and(|h| h <= lo) {
            return Ok(());
        }
        let (mut cursors, mut names) = {
            let index = self.read_index();
            let overlaps = |min: i64, max: i64| max >= lo.0 && hi.is_none_or(|h| min < h.0);
            let mut c = Vec::new();
            for m in index.frozen.values() {
                if let Some(f) = index.files.get(&m.seq) {
                    c.push(Desc::new(m.seq, f.clone(), DescSrc::Frozen(m.clone()), hi));
                }
            }
            if let Some(f) = index.files.get(&index.active.seq) {
                c.push(Desc::new(index.active.seq, f.clone(), DescSrc::Active, hi));
            }
            for s in index.sealed.values() {
                if !s.readable || s.h.records == 0 || !overlaps(s.h.min_ts, s.h.max_ts) {
                    continue;
                }
                if let Some(f) = index.files.get(&s.seq) {
                    c.push(Desc::new(s.seq, f.clone(), DescSrc::sealed(s.clone()), hi));
                }
            }
            (c, index.keys.clone())
        };
        let mut wanted: Vec<Option<bool>> = Vec::new();
        // Whether records of key number `k` are wanted (decided once per key).
        let mut wants = |k: usize, wanted: &mut Vec<Option<bool>>| {
            if names.len() <= k {
                names = self.read_index().keys.clone();
            }
            if wanted.len() <= k {
                wanted.resize(k + 1, None);
            }
            *wanted[k].get_or_insert_with(|| names.get(k).is_some_and(|n| want_key(n)))
        };
        let mut heap: BinaryHeap<((i64, Pos), usize)> = BinaryHeap::new();
        for (i, c) in cursors.iter_mut().enumerate() {
            // Sealed segments start at a key above all of theirs and are read when reached.
            match &c.src {
                DescSrc::Sealed { seg, .. } => heap.push((
                    (
                        seg.h.max_ts,
                        Pos {
                            seg: seg.seq,
                            off: u32::MAX,
                        },
                    ),
                    i,
                )),
                _ => {
                    c.fill(self, lo)?;
                    if let Some(h) = c.head() {
                        heap.push((h.key, i));
                    }
                }
            }
        }
        while let Some((_, i)) = heap.pop() {
            let c = &mut cursors[i];
            if !c.ready {
                c.fill(self, lo)?;
                c.prefetch(|k| wants(k as usize, &mut wanted));
                if let Some(h) = c.head() {
                    heap.push((h.key, i));
                }
                continue;
            }
            let Some(item) = c.take() else {
                continue;
            };
            if c.head().is_none() {
                c.fill(self, lo)?;
                c.prefetch(|k| wants(k as usize, &mut wanted));
            }
            if let Some(h) = c.head() {
                heap.push((h.key, i));
            }
            if !wants(item.key_no as usize, &mut wanted) {
                continue;
            }
            let slot = Slot {
                pos: item.key.1,
                frame: item.frame,
            };
            if !visit(self.read_slot(&c.file, None, slot)) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Calls `f(ts_ms, key number, key)` for every record with `from_ms <= ts_ms < to_ms`, in
    /// time order, from the indexes alone (no record reads): what aggregates are made of. Key
    /// numbers are stable while the log is open, so callers can cache per key. Takes the
    /// index's read lock per chunk of [`RANGE_CHUNK`] records of the open segment, so a range
    /// of years never keeps ingest's appends waiting long. An index that cannot be read is
    /// logged and its records left out; [`RecordLog::try_for_each_in_range`] reports it.
    pub fn for_each_in_range(&self, from_ms: i64, to_ms: i64, f: impl FnMut(i64, u32, &str)) {
        if let Err(e) = self.try_for_each_in_range(from_ms, to_ms, f) {
            tracing::error!(error = %e, "time range scan stopped: a segment index cannot be read");
        }
    }

    /// [`RecordLog::for_each_in_range`], stopping at the first index that cannot be read.
    pub fn try_for_each_in_range(
        &self,
        from_ms: i64,
        to_ms: i64,
        mut f: impl FnMut(i64, u32, &str),
    ) -> Result<(), LogError> {
        if to_ms <= from_ms {
            return Ok(());
        }
        let (mut cursors, mut names) = {
            let index = self.read_index();
            let mut c = Vec::new();
            for m in index.frozen.values() {
                c.push(Asc::mem(m.seq, Some(m.clone()), from_ms));
            }
            c.push(Asc::mem(index.active.seq, None, from_ms));
            for s in index.sealed.values() {
                if s.readable && s.h.records > 0 && s.h.max_ts >= from_ms && s.h.min_ts < to_ms {
                    c.push(Asc::sealed(s.clone()));
                }
            }
            (c, index.keys.clone())
        };
        // Min-heap on (ts, segment): within a segment entries are in (ts, offset) order.
        let mut heap: BinaryHeap<std::cmp::Reverse<(i64, u32, usize)>> = BinaryHeap::new();
        for (i, c) in cursors.iter_mut().enumerate() {
            match &c.src {
                AscSrc::Sealed { seg, .. } => {
                    heap.push(std::cmp::Reverse((seg.h.min_ts.max(from_ms), seg.seq, i)))
                }
                _ => {
                    c.fill(self, from_ms, to_ms)?;
                    if let Some(ts) = c.head_ts(to_ms) {
                        heap.push(std::cmp::Reverse((ts, c.seq, i)));
                    }
                }
            }
        }
        while let Some(std::cmp::Reverse((_, _, i))) = heap.pop() {
            let c = &mut cursors[i];
            if !c.ready {
                c.fill(self, from_ms, to_ms)?;
                if let Some(ts) = c.head_ts(to_ms) {
                    heap.push(std::cmp::Reverse((ts, c.seq, i)));
                }
                continue;
            }
            // Emit from this cursor while it stays before every other one.
            let limit = heap.peek().map(|r| (r.0 .0, r.0 .1));
            c.emit(self, from_ms, to_ms, limit, &mut names, &mut f)?;
            if let Some(ts) = c.head_ts(to_ms) {
                heap.push(std::cmp::Reverse((ts, c.seq, i)));
            }
        }
        Ok(())
    }

    /// Visits, in append order, every indexed record after `after` (from the start when `None`)
    /// with the log position just past it. Frames that are not the indexed copy of their id
    /// (duplicates found on open) and damaged tails are skipped, as on open. Blocking; meant
    /// for start-up, before appends (a concurrent append may or may not be seen).
    pub fn replay_after<E: From<LogError>>(
        &self,
        after: Option<LogPos>,
        mut visit: impl FnMut(Record, LogPos) -> Result<(), E>,
    ) -> Result<(), E> {
        let after = after.unwrap_or_default();
        let mut segs: Vec<(u32, Arc<File>)> = {
            let index = self.read_index();
            index
                .files
                .iter()
                .filter(|(seq, _)| **seq >= after.seg)
                .map(|(seq, f)| (*seq, f.clone()))
                .collect()
        };
        segs.sort_unstable_by_key(|(seq, _)| *seq);
        for (seq, file) in segs {
            let start = if seq == after.seg { after.off } else { 0 };
            let path = segment_path(&self.core.dir, seq);
            // Which frames are indexed: from the segment's index file once sealed.
            let sealed = self.read_index().sealed.get(&seq).cloned();
            let offsets = match sealed {
                Some(s) => Some(s.offsets()?),
                None => None,
            };
            let mut result = Ok(());
            scan_segment(&path, seq, &file, start, |h, key, slot, payload| {
                if result.is_err() {
                    return;
                }
                let indexed = match &offsets {
                    Some(o) => o.binary_search(&slot.pos.off).is_ok(),
                    None => self
                        .read_index()
                        .mem_has(h.id)
                        .is_some_and(|s| s.pos == slot.pos),
                };
                if !indexed {
                    return;
                }
                let end = LogPos {
                    seg: seq,
                    off: slot.pos.off as u64 + slot.frame as u64,
                };
                let rec = Record {
                    id: h.id,
                    ts_ms: h.ts_ms,
                    received_ms: h.received_ms,
                    key: key.to_string(),
                    payload: payload.to_vec(),
                };
                result = visit(rec, end);
            })?;
            result?;
        }
        Ok(())
    }

    /// Bytes on disk: segment files and index files (those kept for deduplication too).
    pub fn disk_bytes(&self) -> u64 {
        let index = self.read_index();
        let segments: u64 = index
            .files
            .values()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum();
        segments + index.sealed.values().map(|s| s.idx_len).sum::<u64>()
    }
}

/// One entry of a newest-first scan.
#[derive(Debug, Clone, Copy)]
struct Item {
    key: (i64, Pos),
    frame: u32,
    key_no: u32,
}

enum DescSrc {
    /// The open segment, read under the index lock chunk by chunk; it may close meanwhile.
    Active,
    Frozen(Arc<MemSeg>),
    /// `lo`/`next`: the part of the time section still to read, `[lo, next)`.
    Sealed {
        seg: Arc<Sealed>,
        lo: Option<usize>,
        next: usize,
    },
}

impl DescSrc {
    fn sealed(seg: Arc<Sealed>) -> DescSrc {
        DescSrc::Sealed {
            seg,
            lo: None,
            next: 0,
        }
    }
}

/// A segment's entries below `bound`, newest first, a chunk at a time.
struct Desc {
    seq: u32,
    file: Arc<File>,
    src: DescSrc,
    /// Exclusive upper key of what is left; `None` = unbounded.
    bound: Option<(i64, Pos)>,
    /// The current chunk, newest last (taken from the end).
    buf: Vec<Item>,
    ready: bool,
    done: bool,
}

impl Desc {
    fn new(seq: u32, file: Arc<File>, src: DescSrc, bound: Option<(i64, Pos)>) -> Desc {
        Desc {
            seq,
            file,
            src,
            bound,
            buf: Vec::new(),
            ready: false,
            done: false,
        }
    }

    fn head(&self) -> Option<&Item> {
        self.buf.last()
    }

    /// Asks the kernel for the bytes the chunk's wanted records span, in one read ahead of
    /// them: a scan walks a closed segment backwards, which the kernel's read-ahead does not
    /// follow, so a cold page cache would otherwise cost one disk read per record. The open
    /// segment's records were just written (cached) and are left alone.
    fn prefetch(&self, mut want: impl FnMut(u32) -> bool) {
        if !matches!(self.src, DescSrc::Sealed { .. }) {
            return;
        }
        let (mut lo, mut hi) = (u64::MAX, 0u64);
        for it in self.buf.iter().filter(|it| want(it.key_no)) {
            let off = u64::from(it.key.1.off);
            lo = lo.min(off);
            hi = hi.max(off + u64::from(it.frame));
        }
        if hi > lo {
            use std::os::fd::AsRawFd;
            // Advice only: a failure changes nothing but speed.
            // SAFETY: the descriptor is open for as long as `self.file` lives.
            unsafe {
                libc::posix_fadvise(
                    self.file.as_raw_fd(),
                    lo as libc::off_t,
                    (hi - lo) as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                );
            }
        }
    }

    fn take(&mut self) -> Option<Item> {
        let item = self.buf.pop()?;
        self.bound = Some(item.key);
        Some(item)
    }

    /// Fills the next chunk (entries `>= lo` and below the bound), switching to the
    /// segment's next form when the open segment closed or was sealed meanwhile.
    fn fill(&mut self, log: &RecordLog, lo: (i64, Pos)) -> Result<(), LogError> {
        self.ready = true;
        if self.done || !self.buf.is_empty() {
            return Ok(());
        }
        let range = |bound: Option<(i64, Pos)>| match bound {
            Some(b) => (Bound::Included(lo), Bound::Excluded(b)),
            None => (Bound::Included(lo), Bound::Unbounded),
        };
        let from_mem = |m: &MemSeg, bound, buf: &mut Vec<Item>| {
            buf.extend(m.by_time.range(range(bound)).rev().take(SCAN_CHUNK).map(
                |(k, (frame, key))| Item {
                    key: *k,
                    frame: *frame,
                    key_no: *key,
                },
            ));
            buf.reverse();
        };
        loop {
            match &mut self.src {
                DescSrc::Active => {
                    let index = log.read_index();
                    if index.active.seq == self.seq {
                        from_mem(&index.active, self.bound, &mut self.buf);
                    } else if let Some(m) = index.frozen.get(&self.seq) {
                        self.src = DescSrc::Frozen(m.clone());
                        continue;
                    } else if let Some(s) = index.sealed.get(&self.seq).filter(|s| s.readable) {
                        self.src = DescSrc::sealed(s.clone());
                        continue;
                    }
                }
                DescSrc::Frozen(m) => from_mem(m, self.bound, &mut self.buf),
                DescSrc::Sealed {
                    seg,
                    lo: first,
                    next,
                } => {
                    let seq = self.seq;
                    let below = |key: (i64, Pos)| {
                        move |ts: i64, off: u32| (ts, Pos { seg: seq, off }) < key
                    };
                    let lo_i = match first {
                        Some(i) => *i,
                        None => {
                            *next = match self.bound {
                                Some(b) => seg.time_bound(below(b))?,
                                None => seg.h.records as usize,
                            };
                            let i = seg.time_bound(below(lo))?;
                            *first = Some(i);
                            i
                        }
                    };
                    let from = next.saturating_sub(SCAN_CHUNK).max(lo_i);
                    if from < *next {
                        let keys = &seg.keys;
                        self.buf
                            .extend(seg.read_times(from, *next)?.into_iter().map(
                                |e: TimeEntry| Item {
                                    key: (
                                        e.ts,
                                        Pos {
                                            seg: seq,
                                            off: e.off,
                                        },
                                    ),
                                    frame: e.frame,
                                    key_no: keys.get(e.key as usize).copied().unwrap_or(0),
                                },
                            ));
                        *next = from;
                    }
                }
            }
            break;
        }
        if self.buf.is_empty() {
            self.done = true;
        }
        Ok(())
    }
}

enum AscSrc {
    /// The open segment (read under the lock, chunk by chunk) or, once `Some`, a closed one.
    Mem(Option<Arc<MemSeg>>),
    /// `i..end` of the columns left; `cols` loaded when the cursor is first reached.
    Sealed {
        seg: Arc<Sealed>,
        cols: Option<Arc<TimeCols>>,
        i: usize,
        end: usize,
    },
}

/// A segment's entries in `[from, to)`, oldest first.
struct Asc {
    seq: u32,
    src: AscSrc,
    /// In-memory index: where the rest starts, and the time of its first entry (`None`: none
    /// left before `to`).
    next_from: Bound<(i64, Pos)>,
    head: Option<i64>,
    /// Entries emitted with the last time emitted: where to go on if the open segment is
    /// sealed under us (its columns hold the same entries in the same order).
    last_ts: Option<(i64, usize)>,
    ready: bool,
}

impl Asc {
    fn mem(seq: u32, frozen: Option<Arc<MemSeg>>, from_ms: i64) -> Asc {
        Asc {
            seq,
            src: AscSrc::Mem(frozen),
            next_from: Bound::Included((from_ms, Pos { seg: 0, off: 0 })),
            head: None,
            last_ts: None,
            ready: false,
        }
    }

    fn sealed(seg: Arc<Sealed>) -> Asc {
        Asc {
            seq: seg.seq,
            src: AscSrc::Sealed {
                seg,
                cols: None,
                i: 0,
                end: 0,
            },
            next_from: Bound::Unbounded,
            head: None,
            last_ts: None,
            ready: false,
        }
    }

    fn head_ts(&self, to_ms: i64) -> Option<i64> {
        match &self.src {
            AscSrc::Mem(_) => self.head,
            AscSrc::Sealed { cols, i, end, .. } => {
                let c = cols.as_ref()?;
                (*i < *end).then(|| c.ts(*i)).filter(|ts| *ts < to_ms)
            }
        }
    }

    /// Finds where the cursor stands: loads a sealed segment's columns, or the time of an
    /// in-memory index's next entry, following the open segment if it closed meanwhile.
    fn fill(&mut self, log: &RecordLog, from_ms: i64, to_ms: i64) -> Result<(), LogError> {
        self.ready = true;
        let hi = Bound::Excluded((to_ms, Pos { seg: 0, off: 0 }));
        loop {
            match &mut self.src {
                AscSrc::Sealed { seg, cols, i, end } => {
                    if cols.is_none() {
                        let c = log.core.cols(seg)?;
                        *end = c.lower_bound(to_ms);
                        *i = match self.last_ts {
                            // Carried on from the open segment's index.
                            Some((ts, n)) => c.lower_bound(ts) + n,
                            None => c.lower_bound(from_ms),
                        };
                        *cols = Some(c);
                    }
                    return Ok(());
                }
                AscSrc::Mem(Some(m)) => {
                    self.head = m.by_time.range((self.next_from, hi)).next().map(|e| e.0 .0);
                    return Ok(());
                }
                AscSrc::Mem(frozen) => {
                    let index = log.read_index();
                    if index.active.seq == self.seq {
                        self.head = index
                            .active
                            .by_time
                            .range((self.next_from, hi))
                            .next()
                            .map(|e| e.0 .0);
                        return Ok(());
                    } else if let Some(m) = index.frozen.get(&self.seq) {
                        *frozen = Some(m.clone());
                    } else if let Some(s) = index.sealed.get(&self.seq).filter(|s| s.readable) {
                        self.src = AscSrc::Sealed {
                            seg: s.clone(),
                            cols: None,
                            i: 0,
                            end: 0,
                        };
                    } else {
                        // Dropped by retention meanwhile.
                        self.head = None;
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Calls `f` for this cursor's entries up to (`ts`, segment) `limit`.
    fn emit(
        &mut self,
        log: &RecordLog,
        from_ms: i64,
        to_ms: i64,
        limit: Option<(i64, u32)>,
        names: &mut Vec<Arc<str>>,
        f: &mut impl FnMut(i64, u32, &str),
    ) -> Result<(), LogError> {
        let seq = self.seq;
        let before = move |ts: i64| limit.is_none_or(|l| (ts, seq) < l);
        let hi = Bound::Excluded((to_ms, Pos { seg: 0, off: 0 }));
        loop {
            match &mut self.src {
                AscSrc::Sealed { seg, cols, i, end } => {
                    let Some(c) = cols else { return Ok(()) };
                    // Where this segment's run ends: before the next cursor's head (ties in
                    // time go to the lower segment number).
                    let stop = match limit {
                        None => *end,
                        Some((ts, other)) if seq < other => c.upper_bound(ts).min(*end),
                        Some((ts, _)) => c.lower_bound(ts).min(*end),
                    };
                    let (keys, from) = (&seg.keys, *i);
                    c.for_each(from, stop, |ts, local| {
                        let k = keys.get(local as usize).copied().unwrap_or(0);
                        if names.len() <= k as usize {
                            *names = log.read_index().keys.clone();
                        }
                        f(ts, k, names.get(k as usize).map_or("", |n| n));
                    });
                    *i = stop.max(from);
                    return Ok(());
                }
                AscSrc::Mem(src) => {
                    // Straight from the map, a chunk per lock hold (no copy: a copy's fresh
                    // pages cost more than the walk).
                    let mut visit = |m: &MemSeg, keys: &[Arc<str>]| {
                        let (mut n, mut stopped) = (0, false);
                        for (k, v) in m.by_time.range((self.next_from, hi)) {
                            if n == RANGE_CHUNK || !before(k.0) {
                                stopped = true;
                                self.head = Some(k.0);
                                break;
                            }
                            f(k.0, v.1, keys.get(v.1 as usize).map_or("", |n| n));
                            self.next_from = Bound::Excluded(*k);
                            self.last_ts = match self.last_ts {
                                Some((t, c)) if t == k.0 => Some((t, c + 1)),
                                _ => Some((k.0, 1)),
                            };
                            n += 1;
                        }
                        if !stopped {
                            self.head = None;
                        }
                        n == RANGE_CHUNK
                    };
                    let more = match src {
                        Some(m) => {
                            if names.len() < m.stats.len() {
                                *names = log.read_index().keys.clone();
                            }
                            visit(m, names)
                        }
                        None => {
                            let index = log.read_index();
                            if index.active.seq != seq {
                                drop(index);
                                // Closed meanwhile: go on from its next form.
                                self.fill(log, from_ms, to_ms)?;
                                if self.head_ts(to_ms).is_none() {
                                    return Ok(());
                                }
                                continue;
                            }
                            visit(&index.active, &index.keys)
                        }
                    };
                    if !more {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u128, ts_ms: i64, payload: &[u8]) -> NewRecord<'_> {
        NewRecord {
            id,
            ts_ms,
            received_ms: ts_ms + 5,
            key: "yuexi/gw-01/cam-01",
            payload,
        }
    }

    fn newest_first(log: &RecordLog, from: Option<i64>, to: Option<i64>) -> Vec<u128> {
        let mut ids = Vec::new();
        log.scan_newest_first(
            from,
            to,
            |_| true,
            |r| {
                ids.push(r.expect("record reads back").id);
                true
            },
        )
        .expect("scan");
        ids
    }

    #[test]
    fn appends_dedups_and_reads_back_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, rec0) = RecordLog::open(dir.path()).expect("open");
        assert_eq!(rec0.records, 0);
        let out = log
            .append(&[rec(1, 10, b"one"), rec(2, 30, b"two"), rec(1, 10, b"one")])
            .expect("append");
        assert_eq!((out.stored, out.duplicates.clone()), (2, vec![1]));
        let out = log
            .append(&[rec(2, 30, b"two"), rec(3, 20, b"three")])
            .expect("append");
        assert_eq!((out.stored, out.duplicates), (1, vec![2]));
        assert_eq!(log.get(3).expect("get").expect("found").payload, b"three");
        assert!(log.get(9).expect("get").is_none());
        assert_eq!(newest_first(&log, None, None), vec![2, 3, 1]);
        assert_eq!(newest_first(&log, Some(10), Some(30)), vec![3, 1]);
        assert_eq!(newest_first(&log, Some(11), None), vec![2, 3]);
        assert!(newest_first(&log, Some(30), Some(30)).is_empty());
        drop(log);

        let (log, rec1) = RecordLog::open(dir.path()).expect("reopen");
        assert_eq!((rec1.records, rec1.damaged.len()), (3, 0));
        assert_eq!(log.len(), 3);
        let again = log.append(&[rec(1, 10, b"one")]).expect("append");
        assert_eq!((again.stored, again.duplicates), (0, vec![1]));
        assert_eq!(newest_first(&log, None, None), vec![2, 3, 1]);
    }

    #[test]
    fn a_torn_tail_is_left_alone_and_appending_goes_on_in_a_new_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = RecordLog::open(dir.path()).expect("open");
        log.append(&[rec(1, 1, b"kept"), rec(2, 2, b"kept too")])
            .expect("append");
        drop(log);
        // A crash mid-write: half a frame at the end.
        let path = segment_path(dir.path(), 1);
        let mut frame = Vec::new();
        encode_frame(&mut frame, &rec(3, 3, b"never acknowledged"));
        let before = std::fs::metadata(&path).expect("stat").len();
        let f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all_at(&frame[..frame.len() / 2], before)
            .expect("write");
        drop(f);

        let (log, got) = RecordLog::open(dir.path()).expect("reopen");
        assert_eq!(got.records, 2);
        assert_eq!(
            got.damaged,
            vec![(path.clone(), before, (frame.len() / 2) as u64)]
        );
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            before + (frame.len() / 2) as u64
        );
        // The resend is stored whole, in a new segment.
        let out = log
            .append(&[rec(3, 3, b"never acknowledged")])
            .expect("append");
        assert_eq!(out.stored, 1);
        drop(log);
        let (log, got) = RecordLog::open(dir.path()).expect("reopen");
        assert_eq!((got.segments, got.records), (2, 3));
        assert_eq!(
            got.damaged.len(),
            1,
            "the torn tail is still reported, not cut"
        );
        assert_eq!(
            log.get(3).expect("get").expect("found").payload,
            b"never acknowledged"
        );
        assert_eq!(newest_first(&log, None, None), vec![3, 2, 1]);
    }

    #[test]
    fn a_flipped_byte_is_caught_on_read_and_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = RecordLog::open(dir.path()).expect("open");
        log.append(&[rec(1, 1, b"first"), rec(2, 2, b"second")])
            .expect("append");
        // Damage the first record's payload; a new segment follows so it is not the tail.
        let path = segment_path(dir.path(), 1);
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.write_all_at(b"F", (MAGIC.len() + HEADER) as u64)
            .expect("write");
        drop(f);
        let err = log.get(1).expect_err("checksum must fail");
        assert!(
            matches!(&err, LogError::Corrupt { detail, .. } if detail.contains("checksum")),
            "{err}"
        );
        assert_eq!(log.get(2).expect("get").expect("found").payload, b"second");
        log.writer.lock().expect("lock").roll = true;
        log.append(&[rec(3, 3, b"third")]).expect("append");
        drop(log);

        let (log, got) = RecordLog::open(dir.path()).expect("reopen");
        assert_eq!(got.segments, 2);
        let size = std::fs::metadata(&path).expect("stat").len();
        assert_eq!(got.damaged, vec![(path.clone(), 8, size - 8)]);
        assert_eq!(newest_first(&log, None, None), vec![3]);
    }

    #[test]
    fn segments_roll_and_scans_cross_them_in_time_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = RecordLog::open(dir.path()).expect("open");
        let big = vec![7u8; 1024 * 1024];
        // 70 × 1 MiB passes SEGMENT_BYTES once; times go backwards to check ordering.
        for i in 0..70u128 {
            log.append(&[rec(i + 1, 1000 - i as i64, &big)])
                .expect("append");
        }
        assert_eq!(log.read_index().files.len(), 2);
        let ids = newest_first(&log, None, None);
        assert_eq!(ids, (1..=70).collect::<Vec<_>>());
        drop(log);
        let (log, got) = RecordLog::open(dir.path()).expect("reopen");
        assert_eq!((got.segments, got.records), (2, 70));
        assert_eq!(newest_first(&log, Some(950), Some(960)).len(), 10);
    }

    #[test]
    fn scans_longer_than_a_chunk_see_every_record_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = RecordLog::open(dir.path()).expect("open");
        let n = SCAN_CHUNK * 3 + 7;
        let payloads: Vec<Vec<u8>> = (0..n).map(|i| i.to_string().into_bytes()).collect();
        // Many records share a millisecond, so chunk boundaries fall inside equal times.
        let recs: Vec<_> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| rec(i as u128 + 1, (i / 100) as i64, p))
            .collect();
        log.append(&recs).expect("append");
        let ids = newest_first(&log, None, None);
        assert_eq!(ids.len(), n);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), n);
        let mut stop_after = 5;
        log.scan_newest_first(
            None,
            None,
            |_| true,
            |_| {
                stop_after -= 1;
                stop_after > 0
            },
        )
        .expect("scan");
        assert_eq!(stop_after, 0);
    }

    #[test]
    fn replay_after_a_position_sees_later_records_once_in_append_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = RecordLog::open(dir.path()).expect("open");
        let mut ends = Vec::new();
        log.append_then(&[rec(1, 50, b"a"), rec(2, 10, b"b")], |at, end| {
            assert_eq!(at, [0, 1]);
            ends.push(end);
        })
        .expect("append");
        log.append_then(&[rec(2, 10, b"b"), rec(3, 5, b"c")], |at, end| {
            assert_eq!(at, [1], "only the new record is reported");
            ends.push(end);
        })
        .expect("append");
        log.append_then(&[rec(3, 5, b"c")], |_, _| panic!("nothing new"))
            .expect("append");
        // A torn tail then a new segment, as after a crash.
        log.writer.lock().expect("lock").roll = true;
        log.append_then(&[rec(4, 1, b"d")], |_, end| ends.push(end))
            .expect("append");
        let replay = |after| {
            let mut seen = Vec::new();
            log.replay_after(after, |r, end| {
                seen.push((r.id, end));
                Ok::<_, LogError>(())
            })
            .expect("replay");
            seen
        };
        let all = replay(None);
        assert_eq!(
            all.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!((all[1].1, all[2].1, all[3].1), (ends[0], ends[1], ends[2]));
        assert_eq!(ends[2].seg, ends[1].seg + 1);
        let after_first: Vec<u128> = replay(Some(ends[0])).iter().map(|x| x.0).collect();
        assert_eq!(after_first, vec![3, 4]);
        assert!(replay(Some(ends[2])).is_empty());
    }

    #[test]
    fn oversized_records_are_refused_with_their_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = RecordLog::open(dir.path()).expect("open");
        let huge = vec![0u8; MAX_RECORD + 1];
        let err = log.append(&[rec(42, 1, &huge)]).expect_err("too large");
        assert!(err.to_string().contains("0000002a"), "{err}");
        assert!(log.is_empty());
    }

    #[test]
    fn ranges_longer_than_a_lock_chunk_are_visited_once_in_time_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = RecordLog::open(dir.path()).expect("open");
        let n = RANGE_CHUNK + 10;
        let recs: Vec<_> = (0..n)
            .map(|i| rec(i as u128 + 1, (i / 3) as i64, b"x"))
            .collect();
        log.append(&recs).expect("append");
        let mut seen = Vec::new();
        log.for_each_in_range(0, i64::MAX, |ts, _, _| seen.push(ts));
        assert_eq!(seen.len(), n);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        let mut some = 0;
        log.for_each_in_range(1, 3, |_, _, _| some += 1);
        assert_eq!(some, 6);
    }

    #[test]
    fn sources_are_counted_and_filter_scans_without_reading_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = RecordLog::open(dir.path()).expect("open");
        let a = |id, ts, p| NewRecord {
            key: "yuexi/gw-01/cam-01",
            ..rec(id, ts, p)
        };
        let b = |id, ts, p| NewRecord {
            key: "yuexi/gw-02/wl-01",
            received_ms: 99,
            ..rec(id, ts, p)
        };
        log.append(&[
            a(1, 10, b"aa"),
            b(2, 20, b"bbb"),
            a(3, 5, b"a"),
            a(1, 10, b"aa"),
        ])
        .expect("append");
        let check = |log: &RecordLog| {
            let mut got = log.sources();
            got.sort_by(|x, y| x.0.cmp(&y.0));
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].0, "yuexi/gw-01/cam-01");
            let s = got[0].1;
            assert_eq!((s.records, s.bytes), (2, 3));
            assert_eq!((s.first_ts_ms, s.last_ts_ms), (5, 10));
            assert_eq!((s.first_received_ms, s.last_received_ms), (10, 15));
            assert_eq!((got[1].1.records, got[1].1.last_received_ms), (1, 99));
        };
        check(&log);
        let mut ids = Vec::new();
        log.scan_newest_first(
            None,
            None,
            |k| k.contains("gw-02"),
            |r| {
                let r = r.expect("read");
                assert_eq!(r.key, "yuexi/gw-02/wl-01");
                ids.push(r.id);
                true
            },
        )
        .expect("scan");
        assert_eq!(ids, vec![2]);
        drop(log);
        let (log, _) = RecordLog::open(dir.path()).expect("reopen");
        check(&log);
        let r = log.get(2).expect("get").expect("found");
        assert_eq!((r.received_ms, r.key.as_str()), (99, "yuexi/gw-02/wl-01"));
    }

    #[test]
    fn a_foreign_file_is_refused_by_name_and_an_empty_segment_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(segment_path(dir.path(), 1), b"hello, not a log at all").expect("write");
        let err = RecordLog::open(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("0000000001.log"), "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        // A crash right after creating a segment: no marker yet.
        std::fs::write(segment_path(dir.path(), 1), b"").expect("write");
        let (log, _) = RecordLog::open(dir.path()).expect("open");
        log.append(&[rec(1, 1, b"x")]).expect("append");
        drop(log);
        let (log, got) = RecordLog::open(dir.path()).expect("reopen");
        assert_eq!((got.segments, got.records), (2, 1));
        assert!(log.contains(1));
    }

    const DAY: i64 = 86_400_000;

    /// A log with 8 KiB segments, retention as given.
    fn small(dir: &Path, retention: Retention) -> (RecordLog, Recovery) {
        RecordLog::open_with(
            dir,
            LogOptions {
                segment_bytes: 8 * 1024,
                retention,
                time_cache_bytes: TIME_CACHE_BYTES,
                pinned_bloom_bytes: PINNED_BLOOM_BYTES,
                // The tests' own clock decides what retention drops.
                background: false,
            },
        )
        .expect("open")
    }

    /// Record `i` of a test stream: ULID-like ids (time in the top 48 bits), times that go
    /// back now and then, four sources.
    fn nth(i: u64, received_ms: i64, payload: &[u8]) -> NewRecord<'_> {
        const KEYS: [&str; 4] = [
            "s/gw-1/cam-1",
            "s/gw-1/cam-2",
            "s/gw-2/cam-1",
            "s/gw-3/wl-1",
        ];
        let ts = 1_000_000 + (i as i64 * 37) % 5_000 + (i as i64 / 50) * 1_000;
        NewRecord {
            id: (u128::from(received_ms as u64) << 80) | u128::from(i) << 8 | 7,
            ts_ms: ts,
            received_ms,
            key: KEYS[(i % 4) as usize],
            payload,
        }
    }

    /// Everything a reader can see: each id's record, full and windowed scans both ways, the
    /// sources and the count.
    #[derive(Debug, PartialEq)]
    struct Seen {
        by_id: Vec<Option<(i64, String, Vec<u8>)>>,
        newest: Vec<u128>,
        windows: Vec<Vec<u128>>,
        filtered: Vec<u128>,
        oldest: Vec<(i64, String)>,
        sources: Vec<(String, SourceStats)>,
        len: u64,
    }

    fn seen(log: &RecordLog, ids: &[u128]) -> Seen {
        let by_id = ids
            .iter()
            .map(|id| {
                log.get(*id)
                    .expect("get")
                    .map(|r| (r.ts_ms, r.key, r.payload))
            })
            .collect();
        let windows = [
            (1_000_000, 1_003_000),
            (1_010_000, 1_012_345),
            (0, 1_000_001),
        ]
        .iter()
        .map(|(a, b)| newest_first(log, Some(*a), Some(*b)))
        .collect();
        let mut filtered = Vec::new();
        log.scan_newest_first(
            Some(1_002_000),
            None,
            |k| k.contains("gw-2"),
            |r| {
                filtered.push(r.expect("read").id);
                true
            },
        )
        .expect("scan");
        let mut oldest = Vec::new();
        log.try_for_each_in_range(1_001_000, 1_030_000, |ts, _, k| {
            oldest.push((ts, k.to_string()))
        })
        .expect("range");
        let mut sources = log.sources();
        sources.sort_by(|a, b| a.0.cmp(&b.0));
        Seen {
            by_id,
            newest: newest_first(log, None, None),
            windows,
            filtered,
            oldest,
            sources,
            len: log.len(),
        }
    }

    fn all_duplicates(log: &RecordLog, recs: &[NewRecord<'_>]) {
        let again = log.append(recs).expect("append");
        assert_eq!(again.stored, 0);
        assert_eq!(again.duplicates.len(), recs.len());
    }

    #[test]
    fn many_segments_reopen_alike_with_an_index_deleted_damaged_or_after_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = now_ms();
        let payload = vec![b'p'; 150];
        let recs: Vec<NewRecord<'_>> = (0..600).map(|i| nth(i, now - DAY, &payload)).collect();
        let ids: Vec<u128> = recs.iter().map(|r| r.id).chain([1, 2, 3]).collect();
        let (log, _) = small(dir.path(), Retention::default());
        for batch in recs.chunks(25) {
            assert_eq!(log.append(batch).expect("append").stored, 25);
        }
        let before = seen(&log, &ids);
        assert_eq!(before.len, 600);
        assert_eq!(before.by_id.iter().flatten().count(), 600);
        assert!(
            !before.windows.iter().any(|w| w.is_empty()),
            "{:?}",
            before.windows
        );
        // Sealed by the thread or now: reads and dedup are the same either way.
        log.maintain(now).expect("maintain");
        let segments = log.read_index().sealed.len();
        assert!(segments >= 10, "{segments} sealed segments");
        assert_eq!(seen(&log, &ids), before);
        all_duplicates(&log, &recs);
        drop(log);

        let (log, got) = small(dir.path(), Retention::default());
        assert_eq!(
            (got.records, got.indexes_rebuilt, got.damaged.len()),
            (600, 0, 0)
        );
        assert_eq!(seen(&log, &ids), before);
        all_duplicates(&log, &recs);
        drop(log);

        // An index deleted, another damaged: both rebuilt from their segments.
        std::fs::remove_file(index_path(dir.path(), 2)).expect("remove");
        let idx5 = index_path(dir.path(), 5);
        let mut b = std::fs::read(&idx5).expect("read");
        let at = b.len() - 3;
        b[at] ^= 0x40;
        std::fs::write(&idx5, b).expect("write");
        let (log, got) = small(dir.path(), Retention::default());
        assert_eq!((got.records, got.indexes_rebuilt), (600, 2));
        assert!(index_path(dir.path(), 2).exists());
        assert_eq!(seen(&log, &ids), before);
        all_duplicates(&log, &recs);
        let last = log.writer.lock().expect("lock").seq;
        drop(log);

        // A torn tail on the last segment: reported, left alone; the rest is unchanged.
        let path = segment_path(dir.path(), last);
        let mut frame = Vec::new();
        encode_frame(&mut frame, &nth(9_999, now, b"never acknowledged"));
        let size = std::fs::metadata(&path).expect("stat").len();
        let f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all_at(&frame[..frame.len() - 5], size)
            .expect("write");
        drop(f);
        let (log, got) = small(dir.path(), Retention::default());
        assert_eq!(
            got.damaged,
            vec![(path.clone(), size, (frame.len() - 5) as u64)]
        );
        assert_eq!(seen(&log, &ids), before);
        all_duplicates(&log, &recs);
        let resend = nth(9_999, now, b"never acknowledged");
        assert_eq!(log.append(&[resend]).expect("append").stored, 1);
        drop(log);
        let (log, got) = small(dir.path(), Retention::default());
        assert_eq!((got.records, got.damaged.len()), (601, 1));
        all_duplicates(&log, &recs);
        all_duplicates(&log, &[resend]);
        assert!(log.contains(resend.id));
    }

    #[test]
    fn age_retention_drops_old_segments_and_reads_stay_right() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = now_ms();
        let payload = vec![b'o'; 200];
        let old: Vec<NewRecord<'_>> = (0..200).map(|i| nth(i, now - 40 * DAY, &payload)).collect();
        let recent: Vec<NewRecord<'_>> = (200..400)
            .map(|i| nth(i, now - 2 * DAY, &payload))
            .collect();
        let retention = Retention {
            max_age_ms: 30 * DAY,
            ..Retention::default()
        };
        let (log, _) = small(dir.path(), Retention::default());
        for batch in old.chunks(20).chain(recent.chunks(20)) {
            log.append(batch).expect("append");
        }
        assert_eq!(log.maintain(now).expect("seal").dropped_segments, 0);
        log.set_retention(retention);
        let disk_before = log.disk_bytes();
        let m = log.maintain(now).expect("maintain");
        assert!(m.dropped_segments >= 4, "{m:?}");
        assert_eq!(m.ids_kept, 0, "nothing inside the dedup window was dropped");
        let counters = log.retention_counters();
        assert_eq!(counters.segments_dropped, u64::from(m.dropped_segments));
        assert_eq!(log.disk_bytes(), disk_before - counters.bytes_dropped);
        // Whole segments only: what is left is the recent records and at most the old ones
        // sharing their first segment.
        let left = log.len();
        assert!((200..220).contains(&left), "{left}");
        for r in &recent {
            assert_eq!(log.get(r.id).expect("get").expect("kept").payload, payload);
        }
        assert!(log.get(old[0].id).expect("get").is_none());
        let scanned = newest_first(&log, None, None);
        assert_eq!(scanned.len() as u64, left);
        let mut counted = 0;
        log.try_for_each_in_range(i64::MIN, i64::MAX, |_, _, _| counted += 1)
            .expect("range");
        assert_eq!(counted, left);
        let stats: u64 = log.sources().iter().map(|(_, s)| s.records).sum();
        assert_eq!(stats, left);
        // Inside the window: refused. Past it (and dropped): an edge cannot resend it, and it
        // is not known any more.
        all_duplicates(&log, &recent);
        assert_eq!(log.append(&old[..1]).expect("append").stored, 1);
        let gone = (1..=20u32)
            .filter(|seq| !segment_path(dir.path(), *seq).exists())
            .count();
        assert!(gone >= 4, "{gone} segment files removed");
        drop(log);
        let (log, got) = small(dir.path(), retention);
        assert_eq!(got.records, left + 1);
        all_duplicates(&log, &recent);
    }

    /// Sequence numbers of the sealed segments whose Bloom filter is in memory.
    fn pinned(log: &RecordLog) -> Vec<u32> {
        let index = log.read_index();
        let mut v: Vec<u32> = index
            .sealed
            .values()
            .filter(|s| s.bloom.is_some())
            .map(|s| s.seq)
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn bloom_filters_in_memory_stay_within_their_budget_and_dedup_holds_from_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = now_ms();
        let payload = vec![b'b'; 300];
        let recs: Vec<NewRecord<'_>> = (0..300).map(|i| nth(i, now - DAY, &payload)).collect();
        let open = || {
            RecordLog::open_with(
                dir.path(),
                LogOptions {
                    segment_bytes: 8 * 1024,
                    retention: Retention::default(),
                    time_cache_bytes: 0,
                    // Two of these segments' filters (one 64-byte block each).
                    pinned_bloom_bytes: 128,
                    background: false,
                },
            )
            .expect("open")
            .0
        };
        let log = open();
        for batch in recs.chunks(10) {
            log.append(batch).expect("append");
        }
        log.maintain(now).expect("maintain");
        let sealed: Vec<u32> = log.read_index().sealed.keys().copied().collect();
        assert!(sealed.len() >= 8, "{sealed:?}");
        // The two newest, whatever was pinned when each was sealed.
        assert_eq!(pinned(&log), sealed[sealed.len() - 2..].to_vec());
        assert!(log.index_bytes() > 0);
        // Every id is still refused, those of unpinned segments by their filters on disk; new
        // ids between stored ones are not.
        all_duplicates(&log, &recs);
        let fresh: Vec<NewRecord<'_>> = (0..300)
            .map(|i| NewRecord {
                id: nth(i, now - DAY, &payload).id + 1,
                ..nth(i, now - DAY, &payload)
            })
            .collect();
        assert_eq!(log.append(&fresh[..20]).expect("append").stored, 20);
        // Reopened: nothing pinned until a maintenance pass, which pins the newest again.
        drop(log);
        let log = open();
        assert!(pinned(&log).is_empty());
        all_duplicates(&log, &recs[..50]);
        let m = log.maintain(now).expect("maintain");
        assert_eq!(m.filters_pinned, 2, "{m:?}");
        assert_eq!(pinned(&log).len(), 2);
        // Past the window, none stay; the ids stay refused (their segments are still here).
        let m = log
            .maintain(now + DEDUP_WINDOW_MS + 2 * DAY)
            .expect("maintain");
        assert_eq!(m.filters_released, 2, "{m:?}");
        assert!(pinned(&log).is_empty());
        all_duplicates(&log, &recs);
    }

    #[test]
    fn size_retention_keeps_the_ids_of_dropped_segments_inside_the_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = now_ms();
        let payload = vec![b's'; 300];
        let recs: Vec<NewRecord<'_>> = (0..300).map(|i| nth(i, now - DAY, &payload)).collect();
        let retention = Retention {
            max_bytes: 40 * 1024,
            ..Retention::default()
        };
        let (log, _) = small(dir.path(), retention);
        for batch in recs.chunks(10) {
            log.append(batch).expect("append");
        }
        let m = log.maintain(now).expect("maintain");
        assert!(
            m.dropped_segments >= 5 && m.ids_kept == m.dropped_segments,
            "{m:?}"
        );
        let kept_ids: u64 = {
            let index = log.read_index();
            index
                .sealed
                .values()
                .filter(|s| !s.readable)
                .map(|s| s.idx_len)
                .sum()
        };
        assert!(kept_ids > 0);
        assert!(
            log.disk_bytes() - kept_ids <= 40 * 1024,
            "{}",
            log.disk_bytes()
        );
        // The oldest went first; every id is still refused.
        assert!(log.get(recs[0].id).expect("get").is_none());
        assert!(log.get(recs[299].id).expect("get").is_some());
        all_duplicates(&log, &recs);
        drop(log);
        let (log, got) = small(dir.path(), retention);
        assert_eq!(got.ids_only, m.dropped_segments);
        all_duplicates(&log, &recs);
        // Once the window has passed the kept ids go too.
        let later = now + DEDUP_WINDOW_MS + DAY;
        let m2 = log.maintain(later).expect("maintain");
        assert_eq!(m2.ids_forgotten, m.dropped_segments);
        assert_eq!(log.append(&recs[..1]).expect("append").stored, 1);
    }

    #[test]
    fn readers_running_while_retention_drops_their_segments_finish_without_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = now_ms();
        let payload = vec![b'r'; 200];
        let recs: Vec<NewRecord<'_>> = (0..300).map(|i| nth(i, now - 60 * DAY, &payload)).collect();
        let (log, _) = small(dir.path(), Retention::default());
        for batch in recs.chunks(10) {
            log.append(batch).expect("append");
        }
        log.maintain(now).expect("seal");
        let all = newest_first(&log, None, None);
        let drop_all = || {
            log.set_retention(Retention {
                max_age_ms: DAY,
                ..Retention::default()
            });
            let m = log.maintain(now).expect("maintain");
            assert!(m.dropped_segments > 0, "{m:?}");
        };
        // A newest-first scan: the segments go after its first record; it reads on.
        let mut got = Vec::new();
        log.scan_newest_first(
            None,
            None,
            |_| true,
            |r| {
                if got.is_empty() {
                    drop_all();
                }
                got.push(r.expect("a dropped segment still reads").id);
                true
            },
        )
        .expect("scan");
        assert_eq!(got, all);
        assert!(log.len() < 300);
        assert!(log.get(recs[0].id).expect("no error").is_none());

        // The same for a time range.
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = small(dir.path(), Retention::default());
        for batch in recs.chunks(10) {
            log.append(batch).expect("append");
        }
        log.maintain(now).expect("seal");
        let mut n = 0;
        log.try_for_each_in_range(i64::MIN, i64::MAX, |_, _, _| {
            if n == 0 {
                log.set_retention(Retention {
                    max_age_ms: DAY,
                    ..Retention::default()
                });
                log.maintain(now).expect("maintain");
            }
            n += 1;
        })
        .expect("range");
        assert_eq!(n, 300);
    }

    #[test]
    fn retention_keeps_what_a_consumer_still_needs_and_never_the_open_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = now_ms();
        let payload = vec![b'k'; 400];
        let recs: Vec<NewRecord<'_>> = (0..200).map(|i| nth(i, now - 90 * DAY, &payload)).collect();
        let (log, _) = small(
            dir.path(),
            Retention {
                max_age_ms: 30 * DAY,
                ..Retention::default()
            },
        );
        for batch in recs.chunks(10) {
            log.append(batch).expect("append");
        }
        log.set_keep_from(Box::new(|| 4));
        log.maintain(now).expect("maintain");
        let sealed: Vec<u32> = log.read_index().sealed.keys().copied().collect();
        assert_eq!(sealed.first(), Some(&4), "{sealed:?}");
        log.set_keep_from(Box::new(|| u32::MAX));
        log.maintain(now).expect("maintain");
        assert!(log.read_index().sealed.is_empty());
        // The open segment stays, however old.
        assert!(!log.is_empty());
        let active = log.writer.lock().expect("lock").seq;
        assert!(segment_path(dir.path(), active).exists());
    }

    #[test]
    fn appends_go_on_while_segments_are_sealed_and_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = now_ms();
        let (log, _) = small(
            dir.path(),
            Retention {
                max_bytes: 64 * 1024,
                ..Retention::default()
            },
        );
        let payload = vec![b'c'; 120];
        let recs: Vec<NewRecord<'_>> = (0..3000).map(|i| nth(i, now, &payload)).collect();
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..200 {
                    log.maintain(now).expect("maintain");
                    let _ = newest_first(&log, None, None);
                }
            });
            for batch in recs.chunks(30) {
                assert_eq!(log.append(batch).expect("append").stored, 30);
            }
        });
        log.maintain(now).expect("maintain");
        all_duplicates(&log, &recs);
        let n = log.len();
        assert_eq!(newest_first(&log, None, None).len() as u64, n);
        assert!(n < 3000 && n > 100, "{n}");
        let stats: u64 = log.sources().iter().map(|(_, s)| s.records).sum();
        assert_eq!(stats, n);
    }
}
