//! Append-only record log: where the hub keeps events and raw telemetry.
//!
//! Why not sled rows: sled 0.34 copies a leaf on every insert, which cost ~10 µs per event
//! and capped durable ingest at ~50k events/s on 2 cores (see `cloud-hub bench-ingest`).
//! Records here are written once, as received, and a batch costs one `write` and one
//! `fdatasync` however many records it holds.
//!
//! On disk, a directory of segment files `{seq:010}.log`, appended in order; a new segment is
//! started when the active one passes [`SEGMENT_BYTES`]. A segment starts with the 8 bytes
//! [`MAGIC`]; then each record is a frame (integers little-endian, the id big-endian):
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
//!   as duplicates and not written.
//! - A crash mid-append leaves at most a torn tail on the last segment (records never
//!   acknowledged: their senders resend). Opening the log indexes each segment up to its first
//!   bad frame and reports the rest; nothing is ever cut off, since a bad frame in the middle
//!   (a disk error) cannot be told from a torn tail for sure and would hide acknowledged
//!   records behind it. New records then go to a new segment.
//!
//! The indexes are in memory, rebuilt by reading the log's frame headers on open (payloads
//! are only checksummed): id → position for deduplication and lookups, (ts_ms, position) for
//! time-range scans, newest first, and per-source counts. About 90 bytes of memory per record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use thiserror::Error;

/// A segment is closed and a new one started once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest payload a frame may hold; a longer length field means a damaged frame.
pub const MAX_RECORD: usize = 16 * 1024 * 1024;
/// First bytes of every segment file: the format, so another file is never read as records.
pub const MAGIC: &[u8; 8] = b"csblog1\n";
/// Frame bytes before the key.
const HEADER: usize = 42;
/// Longest source key (topic levels are short; this is far above them).
pub const MAX_KEY: usize = 1024;
/// Positions copied out of the time index per lock hold while scanning, so a long scan never
/// keeps a writer waiting for long.
const SCAN_CHUNK: usize = 512;
/// Index entries visited per lock hold by [`RecordLog::for_each_in_range`].
const RANGE_CHUNK: usize = 65_536;

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

#[derive(Default)]
struct Index {
    by_id: IdMap<Slot>,
    /// (ts_ms, position) → (frame length, key number). Ties in time are in log order.
    by_time: BTreeMap<(i64, Pos), (u32, u32)>,
    /// Source keys by number, their numbers, and their statistics (same numbering).
    keys: Vec<Arc<str>>,
    key_ids: HashMap<Arc<str>, u32>,
    sources: Vec<SourceStats>,
    /// Open segment files by sequence number, for reads.
    files: HashMap<u32, Arc<File>>,
}

impl Index {
    fn key_id(&mut self, key: &str, ts_ms: i64, received_ms: i64) -> u32 {
        if let Some(&k) = self.key_ids.get(key) {
            return k;
        }
        let k = self.keys.len() as u32;
        let key: Arc<str> = Arc::from(key);
        self.keys.push(key.clone());
        self.key_ids.insert(key, k);
        self.sources.push(SourceStats::new(ts_ms, received_ms));
        k
    }

    fn insert(&mut self, h: &FrameHeader, key: &str, slot: Slot) {
        let k = self.key_id(key, h.ts_ms, h.received_ms);
        self.sources[k as usize].add(h.ts_ms, h.received_ms, h.len as u64);
        self.by_id.insert(h.id, slot);
        self.by_time.insert((h.ts_ms, slot.pos), (slot.frame, k));
    }
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
}

/// Largest append buffer kept between appends.
const KEEP_BUF: usize = 4 * 1024 * 1024;
/// Most records whose per-append lists are kept between appends.
const KEEP_LIST: usize = 16 * 1024;

pub struct RecordLog {
    dir: PathBuf,
    writer: Mutex<Writer>,
    index: RwLock<Index>,
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

impl RecordLog {
    /// Opens (creating if needed) the log in `dir`, rebuilding its indexes. Blocking.
    pub fn open(dir: &Path) -> Result<(RecordLog, Recovery), LogError> {
        std::fs::create_dir_all(dir).map_err(io("create log directory", dir))?;
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
            let name = entry.map_err(io("list", dir))?.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(".log")
                .and_then(|s| s.parse::<u32>().ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut index = Index::default();
        let mut rec = Recovery::default();
        let mut last: Option<(u32, Arc<File>, u64, bool)> = None;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io("open", &path))?;
            let size = file.metadata().map_err(io("stat", &path))?.len();
            let valid = scan_segment(&path, seq, &file, 0, |h, key, slot, _| {
                if index.by_id.contains_key(&h.id) {
                    rec.duplicate_frames += 1;
                } else {
                    index.insert(h, key, slot);
                    rec.records += 1;
                }
            })?;
            let is_last = i + 1 == seqs.len();
            if valid < size {
                let unread = size - valid;
                if is_last {
                    tracing::warn!(path = %path.display(), valid, unread,
                        "the log ends in an unfinished write (a crash mid-append: never \
                         acknowledged, so it is resent); it is left in place and new records \
                         go to a new segment");
                } else {
                    tracing::error!(path = %path.display(), valid, unread,
                        "damaged frame in the log: the records after it are not indexed; \
                         the file is kept as it is for inspection");
                }
                rec.damaged.push((path.clone(), valid, unread));
            }
            let file = Arc::new(file);
            index.files.insert(seq, file.clone());
            // A segment cut short before its marker is not appended to either.
            last = Some((seq, file, valid, valid < size || size < MAGIC.len() as u64));
            rec.segments += 1;
        }
        let writer = match last {
            Some((seq, file, len, damaged)) => Writer {
                seq,
                file,
                len,
                roll: damaged,
                buf: Vec::new(),
                fresh: Vec::new(),
                slots: Vec::new(),
                seen: HashSet::default(),
            },
            None => {
                let file = Self::create_segment(dir, 1)?;
                index.files.insert(1, file.clone());
                Writer {
                    seq: 1,
                    file,
                    len: MAGIC.len() as u64,
                    roll: false,
                    buf: Vec::new(),
                    fresh: Vec::new(),
                    slots: Vec::new(),
                    seen: HashSet::default(),
                }
            }
        };
        let log = RecordLog {
            dir: dir.to_path_buf(),
            writer: Mutex::new(writer),
            index: RwLock::new(index),
        };
        Ok((log, rec))
    }

    /// A new segment holding just the format marker, durably.
    fn create_segment(dir: &Path, seq: u32) -> Result<Arc<File>, LogError> {
        let path = segment_path(dir, seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io("create segment", &path))?;
        file.write_all_at(MAGIC, 0)
            .and_then(|()| file.sync_all())
            .map_err(io("write format marker to", &path))?;
        sync_dir(dir)?;
        Ok(Arc::new(file))
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // The index is only mutated by complete inserts; a panic elsewhere leaves it whole.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Records in the log.
    pub fn len(&self) -> u64 {
        self.read_index().by_id.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory the in-memory index holds, in bytes: the id table by its capacity, the time
    /// index by its length at ~2 entries' worth each (B-tree leaves filled in time order end up
    /// about half full). An estimate for health and benchmarks, within ~20 %.
    pub fn index_bytes(&self) -> u64 {
        let index = self.read_index();
        // hashbrown: a power-of-two number of buckets at most 7/8 full, one control byte each.
        let buckets = (index.by_id.capacity() * 8 / 7).next_power_of_two();
        let by_id = buckets * (std::mem::size_of::<(u128, Slot)>() + 1);
        let by_time = index.by_time.len() * 2 * std::mem::size_of::<((i64, Pos), (u32, u32))>();
        (by_id + by_time) as u64
    }

    pub fn contains(&self, id: u128) -> bool {
        self.read_index().by_id.contains_key(&id)
    }

    /// Statistics of every source key, in no particular order.
    pub fn sources(&self) -> Vec<(String, SourceStats)> {
        let index = self.read_index();
        index
            .keys
            .iter()
            .zip(&index.sources)
            .map(|(k, s)| (k.to_string(), *s))
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
        let (mut fresh, mut slots, mut seen) = (
            std::mem::take(&mut w.fresh),
            std::mem::take(&mut w.slots),
            std::mem::take(&mut w.seen),
        );
        let result = self.append_locked(&mut w, records, &mut fresh, &mut slots, &mut seen, stored);
        if fresh.capacity().max(seen.capacity()) <= KEEP_LIST {
            fresh.clear();
            slots.clear();
            seen.clear();
            (w.fresh, w.slots, w.seen) = (fresh, slots, seen);
        }
        result
    }

    fn append_locked(
        &self,
        w: &mut Writer,
        records: &[NewRecord<'_>],
        fresh: &mut Vec<usize>,
        slots: &mut Vec<Slot>,
        seen: &mut HashSet<u128, ahash::RandomState>,
        stored: impl FnOnce(&[usize], LogPos),
    ) -> Result<Appended, LogError> {
        let mut out = Appended::default();
        {
            let index = self.read_index();
            for (i, r) in records.iter().enumerate() {
                if index.by_id.contains_key(&r.id) || !seen.insert(r.id) {
                    out.duplicates.push(r.id);
                } else if r.payload.len() > MAX_RECORD {
                    return Err(LogError::TooLarge {
                        id: r.id,
                        len: r.payload.len(),
                    });
                } else if r.key.len() > MAX_KEY {
                    return Err(LogError::KeyTooLong {
                        id: r.id,
                        len: r.key.len(),
                    });
                } else {
                    fresh.push(i);
                }
            }
        }
        if fresh.is_empty() {
            return Ok(out);
        }
        let bytes: usize = fresh
            .iter()
            .map(|&i| HEADER + records[i].key.len() + records[i].payload.len())
            .sum();
        if w.roll || (w.len > MAGIC.len() as u64 && w.len + bytes as u64 > SEGMENT_BYTES) {
            let seq = w.seq + 1;
            let file = Self::create_segment(&self.dir, seq)?;
            self.write_index().files.insert(seq, file.clone());
            (w.seq, w.file, w.len, w.roll) = (seq, file, MAGIC.len() as u64, false);
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
        let path = segment_path(&self.dir, w.seq);
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
        {
            let mut index = self.write_index();
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

    /// Reads and checks the frame at `slot`; `id`, when given, must be the frame's.
    fn read_slot(&self, file: &File, id: Option<u128>, slot: Slot) -> Result<Record, LogError> {
        let path = || segment_path(&self.dir, slot.pos.seg);
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
        let found = {
            let index = self.read_index();
            index
                .by_id
                .get(&id)
                .and_then(|slot| index.files.get(&slot.pos.seg).map(|f| (f.clone(), *slot)))
        };
        match found {
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
        let mut hi: Option<(i64, Pos)> = to_ms.map(|to| (to, Pos { seg: 0, off: 0 }));
        if hi.is_some_and(|h| h <= lo) {
            return Ok(());
        }
        let mut wanted: HashMap<u32, bool> = HashMap::new();
        loop {
            let (chunk, last, full) = {
                let index = self.read_index();
                let range = match hi {
                    Some(h) => index.by_time.range(lo..h),
                    None => index.by_time.range(lo..),
                };
                let (mut chunk, mut last, mut seen) = (Vec::new(), None, 0);
                for (k, (frame, key)) in range.rev().take(SCAN_CHUNK) {
                    seen += 1;
                    last = Some(*k);
                    let want = *wanted
                        .entry(*key)
                        .or_insert_with(|| want_key(&index.keys[*key as usize]));
                    if let (true, Some(f)) = (want, index.files.get(&k.1.seg)) {
                        chunk.push((k.1, *frame, f.clone()));
                    }
                }
                (chunk, last, seen == SCAN_CHUNK)
            };
            for (pos, frame, file) in &chunk {
                if !visit(self.read_slot(
                    file,
                    None,
                    Slot {
                        pos: *pos,
                        frame: *frame,
                    },
                )) {
                    return Ok(());
                }
            }
            match (last, full) {
                (Some(l), true) => hi = Some(l),
                _ => return Ok(()),
            }
        }
    }

    /// Calls `f(ts_ms, key number, key)` for every record with `from_ms <= ts_ms < to_ms`, in
    /// time order, from the in-memory index alone (no disk reads): what aggregates are made
    /// of. Key numbers are stable while the log is open, so callers can cache per key.
    /// Takes the index's read lock per chunk of [`RANGE_CHUNK`] records (~1 ms), so a range of
    /// years never keeps ingest's appends waiting longer than that.
    pub fn for_each_in_range(&self, from_ms: i64, to_ms: i64, mut f: impl FnMut(i64, u32, &str)) {
        if to_ms <= from_ms {
            return;
        }
        let hi = (to_ms, Pos { seg: 0, off: 0 });
        let mut lo = std::ops::Bound::Included((from_ms, Pos { seg: 0, off: 0 }));
        loop {
            let index = self.read_index();
            let mut last = None;
            for (k, (_, key)) in index
                .by_time
                .range((lo, std::ops::Bound::Excluded(hi)))
                .take(RANGE_CHUNK)
            {
                f(k.0, *key, &index.keys[*key as usize]);
                last = Some(*k);
            }
            match last {
                Some(k) => lo = std::ops::Bound::Excluded(k),
                None => return,
            }
        }
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
            let path = segment_path(&self.dir, seq);
            let mut result = Ok(());
            scan_segment(&path, seq, &file, start, |h, key, slot, payload| {
                if result.is_err() {
                    return;
                }
                let indexed = self
                    .read_index()
                    .by_id
                    .get(&h.id)
                    .is_some_and(|s| s.pos == slot.pos);
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

    /// Bytes on disk in segment files.
    pub fn disk_bytes(&self) -> u64 {
        let index = self.read_index();
        index
            .files
            .values()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum()
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
}
