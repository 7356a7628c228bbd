//! The on-disk index of a closed segment, `{seq:010}.idx`, and the little of it kept in memory.
//!
//! Written once, when its segment is closed (or rebuilt from the segment when missing or
//! damaged), atomically: a temporary file, fsync, rename, fsync of the directory. Layout,
//! integers little-endian:
//!
//! ```text
//! magic "csbidx1\n" | crc32 u32 (of every byte after it) | version u32
//! seg_size u64 | valid u64 | records u64
//! min_ts i64 | max_ts i64 | min_received i64 | max_received i64 | min_id u128 | max_id u128
//! n_keys u32 | bloom_blocks u32 | keys_off u64 | bloom_off u64 | ids_off u64 | times_off u64
//! keys:  n_keys × (len u16 | key | records u64 | bytes u64 | first_ts i64 | last_ts i64
//!                  | first_received i64 | last_received i64)
//! bloom: bloom_blocks × 64 bytes (a blocked Bloom filter of the ids)
//! ids:   records × (id u128 | off u32 | frame u32), sorted by id
//! times: records × (ts_ms i64 | off u32 | frame u32 | key u32), sorted by (ts_ms, off)
//! ```
//!
//! `seg_size` is the segment file's size when indexed (an index whose segment has another
//! size is stale and rebuilt), `valid` the bytes up to its first bad frame. In memory
//! ([`Sealed`]) stay the header, every [`FENCE`]-th id and (ts, off) (so a lookup reads one
//! small block), the segment's key numbers, and, while the segment is inside the dedup window,
//! the Bloom filter: about 1.5 bytes per record, against ~90 for the open segment's maps.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{FrameHeader, LogError, SourceStats};

/// First bytes of every index file.
pub const INDEX_MAGIC: &[u8; 8] = b"csbidx1\n";
const VERSION: u32 = 1;
const HEADER: usize = 144;
/// Records between two fence keys kept in memory: a lookup reads one block of this many.
pub const FENCE: usize = 128;
const ID_ENTRY: usize = 24;
const TIME_ENTRY: usize = 20;
const KEY_STATS: usize = 48;
/// Bloom filter size and probes: ~1.5 % false positives (each costs one block read).
const BLOOM_BITS_PER_ID: usize = 10;
const BLOOM_PROBES: u32 = 6;

pub fn index_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:010}.idx"))
}

/// The fixed part of an index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdxHeader {
    pub seg_size: u64,
    pub valid: u64,
    pub records: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub min_received: i64,
    pub max_received: i64,
    pub min_id: u128,
    pub max_id: u128,
    n_keys: u32,
    bloom_blocks: u32,
    keys_off: u64,
    bloom_off: u64,
    ids_off: u64,
    times_off: u64,
}

impl IdxHeader {
    /// Unix ms in the largest id's ULID time: past its segment's last receipt means the
    /// segment holds ids from a clock ahead of the hub's.
    pub fn max_id_ms(&self) -> i64 {
        (self.max_id >> 80) as i64
    }
}

/// A blocked Bloom filter: all probes of an id fall in one 64-byte block (one cache line).
#[derive(Debug)]
pub struct Bloom {
    blocks: Box<[[u64; 8]]>,
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// Fixed, not keyed per process: the filter is stored. Crafted ids can only cost extra block
/// reads, never a wrong answer (a hit is always checked against the ids).
fn bloom_hash(id: u128) -> (u64, u64) {
    let a = fmix64(id as u64 ^ fmix64((id >> 64) as u64 ^ 0x9e37_79b9_7f4a_7c15));
    (a, fmix64(a ^ 0xc2b2_ae3d_27d4_eb4f))
}

impl Bloom {
    fn with_ids(ids: impl ExactSizeIterator<Item = u128>) -> Bloom {
        let n = (ids.len() * BLOOM_BITS_PER_ID).div_ceil(512).max(1);
        let mut blocks = vec![[0u64; 8]; n].into_boxed_slice();
        for id in ids {
            let (a, b) = bloom_hash(id);
            let block = &mut blocks[Self::block_of(a, n)];
            for i in 0..BLOOM_PROBES {
                let bit = (b >> (i * 9)) & 511;
                block[(bit >> 6) as usize] |= 1 << (bit & 63);
            }
        }
        Bloom { blocks }
    }

    fn block_of(a: u64, n: usize) -> usize {
        (((a >> 32) * n as u64) >> 32) as usize
    }

    pub fn may_contain(&self, id: u128) -> bool {
        let (a, b) = bloom_hash(id);
        Self::block_may_contain(&self.blocks[Self::block_of(a, self.blocks.len())], b)
    }

    fn block_may_contain(block: &[u64; 8], b: u64) -> bool {
        (0..BLOOM_PROBES).all(|i| {
            let bit = (b >> (i * 9)) & 511;
            block[(bit >> 6) as usize] & (1 << (bit & 63)) != 0
        })
    }

    fn from_bytes(bytes: &[u8]) -> Bloom {
        let mut blocks = vec![[0u64; 8]; bytes.len() / 64].into_boxed_slice();
        for (i, block) in blocks.iter_mut().enumerate() {
            for (j, w) in block.iter_mut().enumerate() {
                *w = u64_at(bytes, i * 64 + j * 8);
            }
        }
        Bloom { blocks }
    }

    fn bytes(&self) -> usize {
        self.blocks.len() * 64
    }
}

/// One entry of a time section: a record's time, place and key (the segment's own number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub ts: i64,
    pub off: u32,
    pub frame: u32,
    pub key: u32,
}

/// Collects a segment's indexed frames and writes its index file.
#[derive(Default)]
pub struct Builder {
    keys: Vec<(String, SourceStats)>,
    /// Global key number of each of the segment's keys.
    globals: Vec<u32>,
    key_of: HashMap<String, u32>,
    ids: Vec<(u128, u32, u32)>,
    times: Vec<TimeEntry>,
    min_ts: i64,
    max_ts: i64,
    min_received: i64,
    max_received: i64,
}

impl Builder {
    /// Adds an indexed frame; `global` gives its key's number in the log (asked once per key).
    pub fn add(
        &mut self,
        h: &FrameHeader,
        key: &str,
        off: u32,
        frame: u32,
        global: impl FnOnce() -> u32,
    ) {
        let k = match self.key_of.get(key) {
            Some(&k) => k,
            None => {
                let k = self.keys.len() as u32;
                self.keys
                    .push((key.to_string(), SourceStats::new(h.ts_ms, h.received_ms)));
                self.globals.push(global());
                self.key_of.insert(key.to_string(), k);
                k
            }
        };
        self.keys[k as usize]
            .1
            .add(h.ts_ms, h.received_ms, h.len as u64);
        if self.ids.is_empty() {
            (self.min_ts, self.max_ts) = (h.ts_ms, h.ts_ms);
            (self.min_received, self.max_received) = (h.received_ms, h.received_ms);
        }
        self.min_ts = self.min_ts.min(h.ts_ms);
        self.max_ts = self.max_ts.max(h.ts_ms);
        self.min_received = self.min_received.min(h.received_ms);
        self.max_received = self.max_received.max(h.received_ms);
        self.ids.push((h.id, off, frame));
        self.times.push(TimeEntry {
            ts: h.ts_ms,
            off,
            frame,
            key: k,
        });
    }

    /// Frames added.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// The index file's bytes, and each of its keys' global number.
    pub fn finish(mut self, seg_size: u64, valid: u64) -> (Vec<u8>, Vec<u32>) {
        self.ids.sort_unstable_by_key(|e| e.0);
        self.times.sort_unstable_by_key(|e| (e.ts, e.off));
        let n = self.ids.len();
        let bloom = Bloom::with_ids(self.ids.iter().map(|e| e.0));
        let keys_len: usize = self.keys.iter().map(|(k, _)| 2 + k.len() + KEY_STATS).sum();
        let keys_off = HEADER as u64;
        let bloom_off = keys_off + keys_len as u64;
        let ids_off = bloom_off + bloom.bytes() as u64;
        let times_off = ids_off + (n * ID_ENTRY) as u64;
        let total = times_off as usize + n * TIME_ENTRY;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&VERSION.to_le_bytes());
        for v in [seg_size, valid, n as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [
            self.min_ts,
            self.max_ts,
            self.min_received,
            self.max_received,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let (min_id, max_id) = match (self.ids.first(), self.ids.last()) {
            (Some(a), Some(b)) => (a.0, b.0),
            _ => (0, 0),
        };
        out.extend_from_slice(&min_id.to_le_bytes());
        out.extend_from_slice(&max_id.to_le_bytes());
        out.extend_from_slice(&(self.keys.len() as u32).to_le_bytes());
        out.extend_from_slice(&(bloom.blocks.len() as u32).to_le_bytes());
        for v in [keys_off, bloom_off, ids_off, times_off] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        debug_assert_eq!(out.len(), HEADER);
        for (k, s) in &self.keys {
            out.extend_from_slice(&(k.len() as u16).to_le_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&s.records.to_le_bytes());
            out.extend_from_slice(&s.bytes.to_le_bytes());
            for v in [
                s.first_ts_ms,
                s.last_ts_ms,
                s.first_received_ms,
                s.last_received_ms,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        for block in bloom.blocks.iter() {
            for w in block {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        for (id, off, frame) in &self.ids {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
            out.extend_from_slice(&frame.to_le_bytes());
        }
        for t in &self.times {
            out.extend_from_slice(&t.ts.to_le_bytes());
            out.extend_from_slice(&t.off.to_le_bytes());
            out.extend_from_slice(&t.frame.to_le_bytes());
            out.extend_from_slice(&t.key.to_le_bytes());
        }
        let crc = crc32fast::hash(&out[12..]);
        out[8..12].copy_from_slice(&crc.to_le_bytes());
        (out, self.globals)
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

fn i64_at(b: &[u8], i: usize) -> i64 {
    u64_at(b, i) as i64
}

fn u128_at(b: &[u8], i: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[i..i + 16]);
    u128::from_le_bytes(a)
}

fn time_entry(b: &[u8]) -> TimeEntry {
    TimeEntry {
        ts: i64_at(b, 0),
        off: u32_at(b, 8),
        frame: u32_at(b, 12),
        key: u32_at(b, 16),
    }
}

/// Parses the header; `Err` says why the bytes are not a whole, current index.
fn parse_header(b: &[u8]) -> Result<IdxHeader, String> {
    if b.len() < HEADER || &b[..8] != INDEX_MAGIC {
        return Err("not an index file of this hub (no format marker)".into());
    }
    if crc32fast::hash(&b[12..]) != u32_at(b, 8) {
        return Err("checksum mismatch".into());
    }
    if u32_at(b, 12) != VERSION {
        return Err(format!("format version {}, not {VERSION}", u32_at(b, 12)));
    }
    let h = IdxHeader {
        seg_size: u64_at(b, 16),
        valid: u64_at(b, 24),
        records: u64_at(b, 32),
        min_ts: i64_at(b, 40),
        max_ts: i64_at(b, 48),
        min_received: i64_at(b, 56),
        max_received: i64_at(b, 64),
        min_id: u128_at(b, 72),
        max_id: u128_at(b, 88),
        n_keys: u32_at(b, 104),
        bloom_blocks: u32_at(b, 108),
        keys_off: u64_at(b, 112),
        bloom_off: u64_at(b, 120),
        ids_off: u64_at(b, 128),
        times_off: u64_at(b, 136),
    };
    let n = h.records;
    let consistent = h.keys_off == HEADER as u64
        && h.bloom_off >= h.keys_off
        && h.ids_off == h.bloom_off + u64::from(h.bloom_blocks) * 64
        && h.times_off == h.ids_off + n * ID_ENTRY as u64
        && b.len() as u64 == h.times_off + n * TIME_ENTRY as u64;
    if !consistent {
        return Err("section offsets do not match the file's length".into());
    }
    Ok(h)
}

/// The keys section: each key and its statistics.
fn parse_keys<'a>(b: &'a [u8], h: &IdxHeader) -> Result<Vec<(&'a str, SourceStats)>, String> {
    let (mut at, end) = (h.keys_off as usize, h.bloom_off as usize);
    let mut out = Vec::with_capacity(h.n_keys as usize);
    for _ in 0..h.n_keys {
        if at + 2 > end {
            return Err("keys section cut short".into());
        }
        let len = u16::from_le_bytes([b[at], b[at + 1]]) as usize;
        at += 2;
        if at + len + KEY_STATS > end {
            return Err("keys section cut short".into());
        }
        let key = std::str::from_utf8(&b[at..at + len]).map_err(|_| "a key is not UTF-8")?;
        at += len;
        let s = SourceStats {
            records: u64_at(b, at),
            bytes: u64_at(b, at + 8),
            first_ts_ms: i64_at(b, at + 16),
            last_ts_ms: i64_at(b, at + 24),
            first_received_ms: i64_at(b, at + 32),
            last_received_ms: i64_at(b, at + 40),
        };
        at += KEY_STATS;
        out.push((key, s));
    }
    if at != end {
        return Err("keys section longer than its keys".into());
    }
    Ok(out)
}

/// A closed segment as the log keeps it in memory: its index's header, fences and key numbers,
/// the Bloom filter while pinned, and the index file (open, so a reader never finds it gone).
#[derive(Debug, Clone)]
pub struct Sealed {
    pub seq: u32,
    /// `false` once a size bound dropped the segment file inside the dedup window: only its
    /// ids are kept, for deduplication.
    pub readable: bool,
    pub h: IdxHeader,
    pub idx: Arc<File>,
    pub idx_path: PathBuf,
    pub idx_len: u64,
    /// Global number of each of the segment's keys.
    pub keys: Vec<u32>,
    id_fence: Vec<u128>,
    time_fence: Vec<(i64, u32)>,
    pub bloom: Option<Arc<Bloom>>,
}

/// Whether a segment's Bloom filter may stay in memory: its records were received inside the
/// dedup window (edges may still resend them), or it holds ids of a clock ahead of ours
/// (which would put every new id in its range). Which of these do is the log's choice.
pub fn pin_bloom(h: &IdxHeader, now_ms: i64, window_ms: i64) -> bool {
    h.records > 0 && (h.max_received >= now_ms.saturating_sub(window_ms) || clock_ahead(h))
}

/// Whether a segment holds ids more than a day ahead of their receipt.
pub fn clock_ahead(h: &IdxHeader) -> bool {
    h.records > 0 && h.max_id_ms() > h.max_received.saturating_add(86_400_000)
}

impl Sealed {
    /// Parses a whole index file; `Err` says why it cannot be used (then it is rebuilt).
    /// `resolve` gives a key's global number; `pin` whether to keep the Bloom filter.
    pub fn parse(
        seq: u32,
        bytes: &[u8],
        idx: Arc<File>,
        idx_path: PathBuf,
        mut resolve: impl FnMut(&str) -> u32,
        pin: impl FnOnce(&IdxHeader) -> bool,
    ) -> Result<(Sealed, Vec<(u32, SourceStats)>), String> {
        let h = parse_header(bytes)?;
        let keys = parse_keys(bytes, &h)?;
        let n = h.records as usize;
        let ids = &bytes[h.ids_off as usize..h.times_off as usize];
        let times = &bytes[h.times_off as usize..];
        let id_fence: Vec<u128> = (0..n)
            .step_by(FENCE)
            .map(|i| u128_at(ids, i * ID_ENTRY))
            .collect();
        let time_fence: Vec<(i64, u32)> = (0..n)
            .step_by(FENCE)
            .map(|i| {
                let e = time_entry(&times[i * TIME_ENTRY..]);
                (e.ts, e.off)
            })
            .collect();
        let bloom = pin(&h).then(|| {
            let at = h.bloom_off as usize;
            Arc::new(Bloom::from_bytes(
                &bytes[at..at + h.bloom_blocks as usize * 64],
            ))
        });
        let mut global = Vec::with_capacity(keys.len());
        let mut stats = Vec::with_capacity(keys.len());
        for (k, s) in keys {
            let g = resolve(k);
            global.push(g);
            stats.push((g, s));
        }
        // Every time entry's key must name one of the keys.
        if (0..n).any(|i| u32_at(times, i * TIME_ENTRY + 16) as usize >= global.len()) {
            return Err("a time entry names no key".into());
        }
        let sealed = Sealed {
            seq,
            readable: true,
            h,
            idx,
            idx_path,
            idx_len: bytes.len() as u64,
            keys: global,
            id_fence,
            time_fence,
            bloom,
        };
        Ok((sealed, stats))
    }

    /// Reads and parses the index file at `path`.
    pub fn load(
        seq: u32,
        path: &Path,
        resolve: impl FnMut(&str) -> u32,
        pin: impl FnOnce(&IdxHeader) -> bool,
    ) -> Result<(Sealed, Vec<(u32, SourceStats)>), String> {
        let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        let mut bytes = Vec::new();
        use std::io::Read;
        (&file)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read: {e}"))?;
        Self::parse(
            seq,
            &bytes,
            Arc::new(file),
            path.to_path_buf(),
            resolve,
            pin,
        )
    }

    /// Memory this keeps (fences, key numbers, Bloom filter).
    pub fn memory(&self) -> usize {
        std::mem::size_of::<Sealed>()
            + self.id_fence.capacity() * 16
            + self.time_fence.capacity() * 16
            + self.keys.capacity() * 4
            + self.bloom.as_ref().map_or(0, |b| b.bytes())
    }

    /// Whether `id` may be here: in the id range and in the Bloom filter — the pinned one, or
    /// else its one 64-byte block read from the index file (a read error answers "maybe": the
    /// exact check that follows reports it).
    pub fn may_hold(&self, id: u128) -> bool {
        if self.h.records == 0 || !(self.h.min_id..=self.h.max_id).contains(&id) {
            return false;
        }
        if let Some(b) = &self.bloom {
            return b.may_contain(id);
        }
        let (a, b) = bloom_hash(id);
        let n = self.h.bloom_blocks as usize;
        let mut buf = [0u8; 64];
        let at = self.h.bloom_off + Bloom::block_of(a, n.max(1)) as u64 * 64;
        if n == 0 || self.idx.read_exact_at(&mut buf, at).is_err() {
            return true;
        }
        Bloom::block_may_contain(&Bloom::from_bytes(&buf).blocks[0], b)
    }

    /// Bytes its Bloom filter takes when pinned.
    pub fn bloom_bytes(&self) -> usize {
        self.h.bloom_blocks as usize * 64
    }

    /// A copy with its Bloom filter read from the index file and kept in memory.
    pub fn with_bloom(&self) -> Result<Sealed, LogError> {
        let bytes = self.read(self.h.bloom_off, self.bloom_bytes())?;
        Ok(Sealed {
            bloom: Some(Arc::new(Bloom::from_bytes(&bytes))),
            ..self.clone()
        })
    }

    fn read(&self, at: u64, len: usize) -> Result<Vec<u8>, LogError> {
        let mut buf = vec![0u8; len];
        self.idx
            .read_exact_at(&mut buf, at)
            .map_err(|cause| LogError::Io {
                op: "read index",
                path: self.idx_path.clone(),
                cause,
            })?;
        Ok(buf)
    }

    /// Where the record with this id is (offset, frame length), checking the ids on disk.
    pub fn find_id(&self, id: u128) -> Result<Option<(u32, u32)>, LogError> {
        if self.h.records == 0 || !(self.h.min_id..=self.h.max_id).contains(&id) {
            return Ok(None);
        }
        let j = self.id_fence.partition_point(|f| *f <= id);
        let Some(block) = j.checked_sub(1) else {
            return Ok(None);
        };
        let from = block * FENCE;
        let to = (from + FENCE).min(self.h.records as usize);
        let b = self.read(
            self.h.ids_off + (from * ID_ENTRY) as u64,
            (to - from) * ID_ENTRY,
        )?;
        let (mut lo, mut hi) = (0, to - from);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let got = u128_at(&b, mid * ID_ENTRY);
            match got.cmp(&id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let at = mid * ID_ENTRY;
                    return Ok(Some((u32_at(&b, at + 16), u32_at(&b, at + 20))));
                }
            }
        }
        Ok(None)
    }

    /// Time entries `[from, to)` of the time section, in time order.
    pub fn read_times(&self, from: usize, to: usize) -> Result<Vec<TimeEntry>, LogError> {
        let to = to.min(self.h.records as usize);
        if from >= to {
            return Ok(Vec::new());
        }
        let b = self.read(
            self.h.times_off + (from * TIME_ENTRY) as u64,
            (to - from) * TIME_ENTRY,
        )?;
        Ok(b.chunks_exact(TIME_ENTRY).map(time_entry).collect())
    }

    /// The first time entry for which `below(ts, off)` is false (entries are sorted, so
    /// `below` holds for a prefix): one block read.
    pub fn time_bound(&self, below: impl Fn(i64, u32) -> bool) -> Result<usize, LogError> {
        let j = self.time_fence.partition_point(|&(ts, off)| below(ts, off));
        let Some(block) = j.checked_sub(1) else {
            return Ok(0);
        };
        let from = block * FENCE;
        let entries = self.read_times(from, from + FENCE)?;
        Ok(from + entries.partition_point(|e| below(e.ts, e.off)))
    }

    /// [`Sealed::read_cols`] from the index file's bytes in hand (just written).
    pub fn cols_from(&self, bytes: &[u8]) -> TimeCols {
        let n = self.h.records as usize;
        let mut cols = TimeCols::new(self.h.min_ts, self.h.max_ts, self.keys.len(), n);
        let times = &bytes[self.h.times_off as usize..];
        for e in times.chunks_exact(TIME_ENTRY).take(n).map(time_entry) {
            cols.push(e.ts, e.key);
        }
        cols
    }

    /// The time section's times and keys, for aggregates ([`TimeCols`]).
    pub fn read_cols(&self) -> Result<TimeCols, LogError> {
        let n = self.h.records as usize;
        let mut cols = TimeCols::new(self.h.min_ts, self.h.max_ts, self.keys.len(), n);
        // In small blocks through one buffer: a load (aggregates at volume miss the cache)
        // leaves no large transient allocation behind.
        let step = 8 * 1024;
        let mut buf = vec![0u8; step * TIME_ENTRY];
        for from in (0..n).step_by(step) {
            let len = (n - from).min(step) * TIME_ENTRY;
            self.idx
                .read_exact_at(
                    &mut buf[..len],
                    self.h.times_off + (from * TIME_ENTRY) as u64,
                )
                .map_err(|cause| LogError::Io {
                    op: "read index",
                    path: self.idx_path.clone(),
                    cause,
                })?;
            for e in buf[..len].chunks_exact(TIME_ENTRY).map(time_entry) {
                cols.push(e.ts, e.key);
            }
        }
        Ok(cols)
    }

    /// Each key's statistics (global numbers), from the keys section.
    pub fn key_stats(&self) -> Result<Vec<(u32, SourceStats)>, LogError> {
        let len = (self.h.bloom_off - self.h.keys_off) as usize;
        let mut b = vec![0u8; HEADER];
        b.extend_from_slice(&self.read(self.h.keys_off, len)?);
        let keys = parse_keys(&b, &self.h).map_err(|detail| LogError::Index {
            path: self.idx_path.clone(),
            detail,
        })?;
        Ok(keys
            .into_iter()
            .zip(&self.keys)
            .map(|((_, s), g)| (*g, s))
            .collect())
    }

    /// Offsets of the indexed frames, sorted (replays skip frames not indexed).
    pub fn offsets(&self) -> Result<Vec<u32>, LogError> {
        let mut offs: Vec<u32> = self
            .read_times(0, self.h.records as usize)?
            .into_iter()
            .map(|e| e.off)
            .collect();
        offs.sort_unstable();
        Ok(offs)
    }

    /// A copy that keeps only the ids (its segment file dropped inside the dedup window).
    pub fn ids_only(&self) -> Sealed {
        Sealed {
            readable: false,
            ..self.clone()
        }
    }

    /// A copy without the Bloom filter in memory (checked on disk from now on).
    pub fn without_bloom(&self) -> Sealed {
        Sealed {
            bloom: None,
            ..self.clone()
        }
    }
}

/// A segment's times and keys in a compact form: 4-byte times relative to its first when its
/// span fits (it almost always does), 2-byte key numbers when it has at most 65,536 keys.
#[derive(Debug)]
pub struct TimeCols {
    ts: TsCol,
    key: KeyCol,
}

#[derive(Debug)]
enum TsCol {
    Narrow { base: i64, v: Vec<u32> },
    Wide(Vec<i64>),
}

#[derive(Debug)]
enum KeyCol {
    Narrow(Vec<u16>),
    Wide(Vec<u32>),
}

impl TimeCols {
    fn new(min_ts: i64, max_ts: i64, n_keys: usize, n: usize) -> TimeCols {
        let narrow_ts = max_ts
            .checked_sub(min_ts)
            .is_some_and(|d| d <= u32::MAX as i64);
        TimeCols {
            ts: match narrow_ts {
                true => TsCol::Narrow {
                    base: min_ts,
                    v: Vec::with_capacity(n),
                },
                false => TsCol::Wide(Vec::with_capacity(n)),
            },
            key: match n_keys <= 1 << 16 {
                true => KeyCol::Narrow(Vec::with_capacity(n)),
                false => KeyCol::Wide(Vec::with_capacity(n)),
            },
        }
    }

    fn push(&mut self, ts: i64, key: u32) {
        match &mut self.ts {
            TsCol::Narrow { base, v } => v.push((ts - *base) as u32),
            TsCol::Wide(v) => v.push(ts),
        }
        match &mut self.key {
            KeyCol::Narrow(v) => v.push(key as u16),
            KeyCol::Wide(v) => v.push(key),
        }
    }

    pub fn len(&self) -> usize {
        match &self.key {
            KeyCol::Narrow(v) => v.len(),
            KeyCol::Wide(v) => v.len(),
        }
    }

    #[inline]
    pub fn ts(&self, i: usize) -> i64 {
        match &self.ts {
            TsCol::Narrow { base, v } => base + v[i] as i64,
            TsCol::Wide(v) => v[i],
        }
    }

    /// The segment's own key number of entry `i`.
    #[cfg(test)]
    pub fn key(&self, i: usize) -> u32 {
        match &self.key {
            KeyCol::Narrow(v) => v[i] as u32,
            KeyCol::Wide(v) => v[i],
        }
    }

    /// Calls `f(ts, key)` for entries `from..to`, in order: one match on the column forms, then
    /// a plain loop (aggregates spend their time here).
    pub fn for_each(&self, from: usize, to: usize, mut f: impl FnMut(i64, u32)) {
        let to = to.min(self.len());
        if from >= to {
            return;
        }
        match (&self.ts, &self.key) {
            (TsCol::Narrow { base, v }, KeyCol::Narrow(k)) => {
                for (t, k) in v[from..to].iter().zip(&k[from..to]) {
                    f(base + *t as i64, *k as u32);
                }
            }
            (TsCol::Narrow { base, v }, KeyCol::Wide(k)) => {
                for (t, k) in v[from..to].iter().zip(&k[from..to]) {
                    f(base + *t as i64, *k);
                }
            }
            (TsCol::Wide(v), KeyCol::Narrow(k)) => {
                for (t, k) in v[from..to].iter().zip(&k[from..to]) {
                    f(*t, *k as u32);
                }
            }
            (TsCol::Wide(v), KeyCol::Wide(k)) => {
                for (t, k) in v[from..to].iter().zip(&k[from..to]) {
                    f(*t, *k);
                }
            }
        }
    }

    /// The first entry after `ts`.
    pub fn upper_bound(&self, ts: i64) -> usize {
        ts.checked_add(1)
            .map_or(self.len(), |t| self.lower_bound(t))
    }

    /// The first entry at or after `ts`.
    pub fn lower_bound(&self, ts: i64) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.ts(mid) < ts {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    pub fn bytes(&self) -> usize {
        let ts = match &self.ts {
            TsCol::Narrow { v, .. } => v.capacity() * 4,
            TsCol::Wide(v) => v.capacity() * 8,
        };
        let key = match &self.key {
            KeyCol::Narrow(v) => v.capacity() * 2,
            KeyCol::Wide(v) => v.capacity() * 4,
        };
        ts + key + std::mem::size_of::<TimeCols>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(id: u128, ts_ms: i64, len: usize) -> FrameHeader {
        FrameHeader {
            len,
            crc: 0,
            id,
            ts_ms,
            received_ms: ts_ms + 1,
            key_len: 3,
        }
    }

    fn built(n: u32) -> (Vec<u8>, Vec<u32>) {
        let mut b = Builder::default();
        for i in 0..n {
            // Ids out of order, times repeating, three keys.
            let id = u128::from(i.wrapping_mul(2_654_435_761)) << 40 | u128::from(i);
            let key = ["a/b/c", "a/b/d", "x/y/z"][(i % 3) as usize];
            let global = 10 + i % 3;
            b.add(
                &header(id, i64::from(i / 4), 5),
                key,
                8 + i * 100,
                100,
                || global,
            );
        }
        b.finish(8 + u64::from(n) * 100 + 7, 8 + u64::from(n) * 100)
    }

    fn sealed(
        bytes: &[u8],
        globals: &[u32],
    ) -> (Sealed, Vec<(u32, SourceStats)>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = index_path(dir.path(), 3);
        std::fs::write(&path, bytes).unwrap();
        let mut g = globals.iter().copied();
        let (s, stats) = Sealed::load(3, &path, |_| g.next().unwrap(), |_| true).unwrap();
        (s, stats, dir)
    }

    #[test]
    fn an_index_finds_every_id_and_time_and_nothing_else() {
        let n = 1000u32;
        let (bytes, globals) = built(n);
        assert_eq!(globals, vec![10, 11, 12]);
        let (s, stats, _dir) = sealed(&bytes, &globals);
        assert_eq!(
            (s.h.records, s.h.seg_size, s.h.valid),
            (1000, 100_015, 100_008)
        );
        assert_eq!((s.h.min_ts, s.h.max_ts), (0, 249));
        let total: u64 = stats.iter().map(|(_, st)| st.records).sum();
        assert_eq!(total, 1000);
        assert_eq!(stats[0].1.bytes, 334 * 5);
        for i in 0..n {
            let id = u128::from(i.wrapping_mul(2_654_435_761)) << 40 | u128::from(i);
            assert!(s.may_hold(id));
            assert_eq!(s.find_id(id).unwrap(), Some((8 + i * 100, 100)), "{i}");
            assert_eq!(s.find_id(id + (1 << 39)).unwrap(), None);
        }
        // Times: all entries of ts 10 are 40..44.
        let lo = s.time_bound(|ts, _| ts < 10).unwrap();
        let hi = s.time_bound(|ts, _| ts < 11).unwrap();
        assert_eq!((lo, hi), (40, 44));
        let e = s.read_times(lo, hi).unwrap();
        assert!(e.iter().all(|e| e.ts == 10));
        assert!(e.windows(2).all(|w| w[0].off < w[1].off));
        let cols = s.read_cols().unwrap();
        assert_eq!(cols.len(), 1000);
        assert_eq!(
            (cols.ts(41), s.keys[cols.key(41) as usize]),
            (10, 10 + 41 % 3)
        );
        assert_eq!(cols.lower_bound(10), 40);
        let from_bytes = s.cols_from(&bytes);
        assert_eq!(
            (0..1000).map(|i| from_bytes.ts(i)).sum::<i64>(),
            (0..1000).map(|i| cols.ts(i)).sum::<i64>()
        );
        let key_stats = s.key_stats().unwrap();
        assert_eq!(key_stats, stats);
        assert_eq!(s.offsets().unwrap().len(), 1000);
    }

    #[test]
    fn the_filter_answers_maybe_for_every_id_and_rarely_for_others() {
        let ids: Vec<u128> = (0..20_000u128).map(|i| i * 7_919 + (i << 80)).collect();
        let bloom = Bloom::with_ids(ids.iter().copied());
        assert!(ids.iter().all(|id| bloom.may_contain(*id)));
        let false_hits = (0..20_000u128)
            .filter(|i| bloom.may_contain(i * 7_919 + 3 + (i << 80)))
            .count();
        assert!(
            false_hits < 20_000 * 3 / 100,
            "{false_hits} false positives"
        );
        assert!(bloom.bytes() <= 20_000 * BLOOM_BITS_PER_ID / 8 + 64);
    }

    #[test]
    fn a_damaged_or_short_index_is_refused_with_why() {
        let (mut bytes, globals) = built(50);
        let dir = tempfile::tempdir().unwrap();
        let path = index_path(dir.path(), 1);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let mut g = globals.iter().copied();
        let err = Sealed::load(1, &path, |_| g.next().unwrap(), |_| true).unwrap_err();
        assert!(err.contains("checksum"), "{err}");
        std::fs::write(&path, &bytes[..100]).unwrap();
        let err = Sealed::load(1, &path, |_| 0, |_| true).unwrap_err();
        assert!(err.contains("format marker"), "{err}");
        let err = Sealed::load(1, &dir.path().join("none.idx"), |_| 0, |_| true).unwrap_err();
        assert!(err.contains("cannot open"), "{err}");
    }

    #[test]
    fn an_empty_segment_has_an_index_too() {
        let (bytes, globals) = Builder::default().finish(0, 0);
        let (s, stats, _dir) = sealed(&bytes, &globals);
        assert_eq!((s.h.records, stats.len()), (0, 0));
        assert!(!s.may_hold(0));
        assert_eq!(s.find_id(0).unwrap(), None);
        assert_eq!(s.time_bound(|_, _| true).unwrap(), 0);
        assert_eq!(s.read_cols().unwrap().len(), 0);
    }

    #[test]
    fn wide_columns_hold_spans_over_49_days() {
        let mut b = Builder::default();
        b.add(&header(1, 0, 1), "k", 8, 50, || 0);
        b.add(&header(2, 1 << 40, 1), "k", 58, 50, || 0);
        let (bytes, globals) = b.finish(108, 108);
        let (s, _, _dir) = sealed(&bytes, &globals);
        let cols = s.read_cols().unwrap();
        assert_eq!((cols.ts(0), cols.ts(1)), (0, 1 << 40));
        assert_eq!(cols.lower_bound(1), 1);
    }
}
