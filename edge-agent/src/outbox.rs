//! The durable outbox: every event and telemetry message is on disk before it is sent and stays
//! there until the hub acks it. Format and guarantees: docs/outbox.md. Sending lives in
//! `uplink.rs`; this module only stores, bounds and counts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use csb_wire::Channel;
use serde::Deserialize;
use thiserror::Error;
use ulid::Ulid;

#[derive(Debug, Error)]
pub enum OutboxError {
    #[error("outbox {dir}: {source}")]
    Db { dir: PathBuf, source: sled::Error },
    #[error("outbox {dir}: a {bytes}-byte message is larger than max_bytes ({max})")]
    TooLarge { dir: PathBuf, bytes: u64, max: u64 },
    #[error("outbox {dir}: the writer thread has stopped")]
    Closed { dir: PathBuf },
    #[error("outbox record {seq}: {reason}")]
    Corrupt { seq: u64, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Directory of the sled database (relative paths: relative to the config file); the agent
    /// uses `/var/lib/csb-edge/{device}/outbox` when not given.
    pub dir: Option<PathBuf>,
    /// Payload bytes kept at most; beyond, oldest telemetry then oldest events are dropped.
    pub max_bytes: u64,
    /// Records older than this are dropped (counted as `expired`).
    pub max_age_s: u64,
    /// Resend a message whose ack has not come within this time.
    pub ack_timeout_s: f64,
    /// Backlog (records from before the current connection) replayed at most this fast.
    pub replay_per_s: u32,
    /// Messages sent but not yet acked, at most.
    pub max_inflight: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            dir: None,
            max_bytes: 1 << 30,
            max_age_s: 14 * 24 * 3600,
            ack_timeout_s: 30.0,
            replay_per_s: 500,
            max_inflight: 2000,
        }
    }
}

impl OutboxConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, r: String| Err((f.to_string(), r));
        if self.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return bad("dir", "must not be empty".into());
        }
        if self.max_bytes < 1 << 20 {
            return bad(
                "max_bytes",
                format!("{} is less than 1 MiB", self.max_bytes),
            );
        }
        if self.max_age_s < 60 {
            return bad("max_age_s", "must be at least 60".into());
        }
        if !(self.ack_timeout_s.is_finite() && (1.0..=3600.0).contains(&self.ack_timeout_s)) {
            return bad("ack_timeout_s", "must be 1..=3600".into());
        }
        if self.replay_per_s == 0 {
            return bad("replay_per_s", "must be > 0".into());
        }
        if !(1..=100_000).contains(&self.max_inflight) {
            return bad("max_inflight", "must be 1..=100000".into());
        }
        Ok(())
    }
}

/// What a record is. When space runs out telemetry goes first, then evidence JPEGs (an event
/// without its picture is still a case), events last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Event,
    Telemetry,
    /// An evidence snapshot: payload = the event's id (16 bytes) + the JPEG; `id` = snapshot id.
    /// Uploaded over HTTP, not MQTT.
    Evidence,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Event => "event",
            Class::Telemetry => "telemetry",
            Class::Evidence => "evidence",
        }
    }
    pub fn channel(self) -> Channel {
        match self {
            Class::Event | Class::Evidence => Channel::Event,
            Class::Telemetry => Channel::Telemetry,
        }
    }
    fn code(self) -> u8 {
        match self {
            Class::Event => 0,
            Class::Telemetry => 1,
            Class::Evidence => 2,
        }
    }
}

/// One stored message.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub class: Class,
    pub enqueued_ms: i64,
    pub id: Ulid,
    pub payload: Vec<u8>,
}

impl Record {
    pub fn channel(&self) -> Channel {
        self.class.channel()
    }
}

const FORMAT: u8 = 1;
const HEADER: usize = 1 + 1 + 8 + 16 + 1;

fn encode(class: Class, enqueued_ms: i64, id: Ulid, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + payload.len());
    v.push(FORMAT);
    v.push(class.code());
    v.extend_from_slice(&enqueued_ms.to_le_bytes());
    v.extend_from_slice(&id.to_bytes());
    v.push(class.code());
    v.extend_from_slice(payload);
    v
}

fn decode(seq: u64, v: &[u8]) -> Result<Record, OutboxError> {
    let corrupt = |reason: &str| OutboxError::Corrupt {
        seq,
        reason: reason.into(),
    };
    if v.len() < HEADER {
        return Err(corrupt("shorter than its header"));
    }
    if v[0] != FORMAT {
        return Err(corrupt(&format!("unknown format version {}", v[0])));
    }
    let class = match v[1] {
        0 => Class::Event,
        1 => Class::Telemetry,
        2 => Class::Evidence,
        c => return Err(corrupt(&format!("unknown class {c}"))),
    };
    let enqueued_ms = i64::from_le_bytes(v[2..10].try_into().map_err(|_| corrupt("time"))?);
    let id = Ulid::from_bytes(v[10..26].try_into().map_err(|_| corrupt("id"))?);
    Ok(Record {
        seq,
        class,
        enqueued_ms,
        id,
        payload: v[HEADER..].to_vec(),
    })
}

/// Counters for status and telemetry.
#[derive(Debug, Default)]
pub struct OutboxStats {
    pub pending_events: AtomicU64,
    pub pending_telemetry: AtomicU64,
    pub pending_evidence: AtomicU64,
    pub bytes: AtomicU64,
    pub dropped_full_events: AtomicU64,
    pub dropped_full_telemetry: AtomicU64,
    pub dropped_full_evidence: AtomicU64,
    pub dropped_expired: AtomicU64,
    pub write_errors: AtomicU64,
    pub resent: AtomicU64,
    pub acked: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxSnapshot {
    pub pending: u64,
    pub pending_events: u64,
    pub bytes: u64,
    pub oldest_age_ms: u64,
    pub dropped_total: u64,
    pub dropped_events: u64,
    pub write_errors: u64,
    pub resent: u64,
    pub acked: u64,
    pub disk_bytes: u64,
}

struct Put {
    class: Class,
    id: Ulid,
    payload: Vec<u8>,
    reply: tokio::sync::oneshot::Sender<Result<u64, OutboxError>>,
}

pub struct Outbox {
    dir: PathBuf,
    db: sled::Db,
    events: sled::Tree,
    telemetry: sled::Tree,
    evidence: sled::Tree,
    max_bytes: u64,
    max_age_ms: i64,
    stats: Arc<OutboxStats>,
    /// Serialises space accounting between the writer and acks.
    space: Arc<Mutex<()>>,
    tx: Mutex<Option<mpsc::SyncSender<Put>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Every record with a lower sequence number is flushed: the sender reads only below it,
    /// so nothing leaves before it is durable.
    durable_next: AtomicU64,
}

/// Most puts one flush covers.
const GROUP: usize = 1024;

impl Outbox {
    /// Opens (or creates) the outbox in `dir` and counts what is already in it.
    pub fn open(dir: &Path, cfg: &OutboxConfig) -> Result<Arc<Self>, OutboxError> {
        let dir = dir.to_path_buf();
        let db_err = |source| OutboxError::Db {
            dir: dir.clone(),
            source,
        };
        let db = sled::Config::new()
            .path(&dir)
            .cache_capacity(16 << 20)
            .segment_size(128 << 10)
            // JSON compresses well: less flash wear and disk (docs/outbox.md "Space").
            .use_compression(true)
            .compression_factor(1)
            .flush_every_ms(Some(500))
            .open()
            .map_err(db_err)?;
        let events = db.open_tree("event").map_err(db_err)?;
        let telemetry = db.open_tree("telemetry").map_err(db_err)?;
        let evidence = db.open_tree("evidence").map_err(db_err)?;
        let stats = Arc::new(OutboxStats::default());
        for (tree, n) in [
            (&events, &stats.pending_events),
            (&telemetry, &stats.pending_telemetry),
            (&evidence, &stats.pending_evidence),
        ] {
            for kv in tree.iter() {
                let (_, v) = kv.map_err(db_err)?;
                n.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes
                    .fetch_add(v.len().saturating_sub(HEADER) as u64, Ordering::Relaxed);
            }
        }
        let (tx, rx) = mpsc::sync_channel::<Put>(4 * GROUP);
        let ob = Arc::new(Outbox {
            dir: dir.clone(),
            db,
            events,
            telemetry,
            evidence,
            max_bytes: cfg.max_bytes,
            max_age_ms: cfg.max_age_s as i64 * 1000,
            stats,
            space: Arc::new(Mutex::new(())),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(None),
            durable_next: AtomicU64::new(0),
        });
        ob.durable_next.store(ob.next_seq(), Ordering::Release);
        let w = ob.clone();
        let handle = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || w.writer_loop(rx))
            .map_err(|e| OutboxError::Db {
                dir: dir.clone(),
                source: sled::Error::Io(e),
            })?;
        if let Ok(mut g) = ob.writer.lock() {
            *g = Some(handle);
        }
        Ok(ob)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> &OutboxStats {
        &self.stats
    }

    fn tree(&self, class: Class) -> &sled::Tree {
        match class {
            Class::Event => &self.events,
            Class::Telemetry => &self.telemetry,
            Class::Evidence => &self.evidence,
        }
    }

    fn pending_counter(&self, class: Class) -> &AtomicU64 {
        match class {
            Class::Event => &self.stats.pending_events,
            Class::Telemetry => &self.stats.pending_telemetry,
            Class::Evidence => &self.stats.pending_evidence,
        }
    }

    /// Stores a message durably; returns its sequence number once it is flushed to disk.
    pub async fn enqueue(
        &self,
        class: Class,
        id: Ulid,
        payload: Vec<u8>,
    ) -> Result<u64, OutboxError> {
        self.enqueue_many(vec![(class, id, payload)])
            .await
            .pop()
            .unwrap_or_else(|| Err(self.closed()))
    }

    fn closed(&self) -> OutboxError {
        OutboxError::Closed {
            dir: self.dir.clone(),
        }
    }

    /// Stores several messages; they share one flush (all are handed to the writer before any
    /// reply is awaited). One result per message, in order.
    pub async fn enqueue_many(
        &self,
        items: Vec<(Class, Ulid, Vec<u8>)>,
    ) -> Vec<Result<u64, OutboxError>> {
        let Some(tx) = self.tx.lock().ok().and_then(|g| g.clone()) else {
            return items.iter().map(|_| Err(self.closed())).collect();
        };
        let mut replies = Vec::with_capacity(items.len());
        for (class, id, payload) in items {
            let (reply, rx) = tokio::sync::oneshot::channel();
            let put = Put {
                class,
                id,
                payload,
                reply,
            };
            // The channel is bounded; a full one means the disk is behind: wait off the runtime.
            let sent = match tx.try_send(put) {
                Ok(()) => true,
                Err(mpsc::TrySendError::Full(put)) => {
                    let tx = tx.clone();
                    tokio::task::spawn_blocking(move || tx.send(put).is_ok())
                        .await
                        .unwrap_or(false)
                }
                Err(mpsc::TrySendError::Disconnected(_)) => false,
            };
            replies.push(sent.then_some(rx));
        }
        let mut out = Vec::with_capacity(replies.len());
        for rx in replies {
            out.push(match rx {
                Some(rx) => rx.await.unwrap_or_else(|_| Err(self.closed())),
                None => Err(self.closed()),
            });
        }
        out
    }

    fn writer_loop(&self, rx: mpsc::Receiver<Put>) {
        let mut last_sweep = std::time::Instant::now();
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(p) => p,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.sweep_expired();
                    last_sweep = std::time::Instant::now();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            while group.len() < GROUP {
                match rx.try_recv() {
                    Ok(p) => group.push(p),
                    Err(_) => break,
                }
            }
            let mut results = Vec::with_capacity(group.len());
            for p in &group {
                results.push(self.put(p.class, p.id, &p.payload));
            }
            // One fsync for the whole group: the acknowledgement to every producer waits for it.
            let flushed = self
                .db
                .flush()
                .map(|_| ())
                .map_err(|source| OutboxError::Db {
                    dir: self.dir.clone(),
                    source,
                });
            if flushed.is_ok() {
                if let Some(max) = results.iter().filter_map(|r| r.as_ref().ok()).max() {
                    self.durable_next.fetch_max(max + 1, Ordering::AcqRel);
                }
            }
            for (p, r) in group.into_iter().zip(results) {
                let r = match (&flushed, r) {
                    (Ok(()), r) => r,
                    (Err(e), _) => Err(OutboxError::Db {
                        dir: self.dir.clone(),
                        source: sled::Error::Unsupported(e.to_string()),
                    }),
                };
                if r.is_err() {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                }
                let _ = p.reply.send(r);
            }
            if last_sweep.elapsed() >= Duration::from_secs(10) {
                self.sweep_expired();
                last_sweep = std::time::Instant::now();
            }
        }
    }

    fn put(&self, class: Class, id: Ulid, payload: &[u8]) -> Result<u64, OutboxError> {
        let db_err = |source| OutboxError::Db {
            dir: self.dir.clone(),
            source,
        };
        let size = payload.len() as u64;
        if size > self.max_bytes {
            return Err(OutboxError::TooLarge {
                dir: self.dir.clone(),
                bytes: size,
                max: self.max_bytes,
            });
        }
        let _g = self.space.lock();
        while self.stats.bytes.load(Ordering::Relaxed) + size > self.max_bytes {
            // Oldest telemetry first, then evidence; events only when nothing else is left.
            let mut victim = None;
            for c in [Class::Telemetry, Class::Evidence, Class::Event] {
                if let Some(kv) = self.tree(c).first().map_err(db_err)? {
                    victim = Some((c, kv));
                    break;
                }
            }
            let Some((c, (k, _))) = victim else { break };
            if self.remove_key(c, &k)? {
                let n = match c {
                    Class::Event => &self.stats.dropped_full_events,
                    Class::Telemetry => &self.stats.dropped_full_telemetry,
                    Class::Evidence => &self.stats.dropped_full_evidence,
                };
                if n.fetch_add(1, Ordering::Relaxed).is_power_of_two() {
                    tracing::error!(dir = %self.dir.display(), class = c.as_str(),
                        "outbox full (max_bytes {}): dropping the oldest {} records", self.max_bytes, c.as_str());
                }
            } else {
                // The first key just read is gone: the counters disagree with the trees. Store
                // anyway rather than spin; the byte count is only an estimate from here on.
                break;
            }
        }
        let seq = self.db.generate_id().map_err(db_err)?;
        let value = encode(class, csb_wire::now_ms(), id, payload);
        self.tree(class)
            .insert(seq.to_be_bytes(), value)
            .map_err(db_err)?;
        self.stats.bytes.fetch_add(size, Ordering::Relaxed);
        self.pending_counter(class).fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    /// Removes one record; true if it was there.
    fn remove_key(&self, class: Class, key: &[u8]) -> Result<bool, OutboxError> {
        let old = self
            .tree(class)
            .remove(key)
            .map_err(|source| OutboxError::Db {
                dir: self.dir.clone(),
                source,
            })?;
        let Some(v) = old else { return Ok(false) };
        self.stats.bytes.fetch_sub(
            (v.len().saturating_sub(HEADER) as u64).min(self.stats.bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        let n = self.pending_counter(class);
        let _ = n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| x.checked_sub(1));
        Ok(true)
    }

    /// The hub has stored these records: forget them. No flush of its own (docs/outbox.md,
    /// guarantee 3). Returns how many were still here.
    pub fn ack(&self, records: &[(Class, u64)]) -> Result<usize, OutboxError> {
        let _g = self.space.lock();
        let mut n = 0;
        for (c, seq) in records {
            if self.remove_key(*c, &seq.to_be_bytes())? {
                n += 1;
            }
        }
        self.stats.acked.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// Records with `from <= seq < to`, oldest first, at most `limit`.
    pub fn range(&self, from: u64, to: u64, limit: usize) -> Result<Vec<Record>, OutboxError> {
        let db_err = |source| OutboxError::Db {
            dir: self.dir.clone(),
            source,
        };
        if from >= to {
            return Ok(Vec::new());
        }
        let (a, b) = (from.to_be_bytes(), to.to_be_bytes());
        let mut ev = self.events.range(a..b).peekable();
        let mut te = self.telemetry.range(a..b).peekable();
        let mut out = Vec::new();
        while out.len() < limit {
            let pick_event = match (ev.peek(), te.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(Ok((k1, _))), Some(Ok((k2, _)))) => k1 <= k2,
                (Some(Err(_)), _) => true,
                (_, Some(Err(_))) => false,
            };
            let it = if pick_event { &mut ev } else { &mut te };
            let Some(kv) = it.next() else { break };
            let (k, v) = kv.map_err(db_err)?;
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            match decode(seq, &v) {
                Ok(r) => out.push(r),
                Err(e) => {
                    // A record we cannot read can never be sent: drop it, loudly.
                    tracing::error!("{e}; removing it");
                    let c = if pick_event {
                        Class::Event
                    } else {
                        Class::Telemetry
                    };
                    let _ = self.remove_key(c, &k);
                }
            }
        }
        Ok(out)
    }

    /// The oldest sequence numbers of one class, at most `limit` (for `edge-agent queue`'s purge).
    pub fn seqs(&self, class: Class, limit: usize) -> Result<Vec<u64>, OutboxError> {
        self.tree(class)
            .iter()
            .keys()
            .take(limit)
            .map(|k| {
                k.map(|k| u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])))
                    .map_err(|source| OutboxError::Db {
                        dir: self.dir.clone(),
                        source,
                    })
            })
            .collect()
    }

    /// Records below this sequence number are on disk.
    pub fn durable_next(&self) -> u64 {
        self.durable_next.load(Ordering::Acquire)
    }

    /// One record, if still stored.
    /// `Ok(None)` when it is gone (acked, dropped, or unreadable and therefore removed, as in
    /// [`Outbox::range`]); `Err` when the disk could not be read (try again later).
    pub fn get(&self, class: Class, seq: u64) -> Result<Option<Record>, OutboxError> {
        let key = seq.to_be_bytes();
        let v = self
            .tree(class)
            .get(key)
            .map_err(|source| OutboxError::Db {
                dir: self.dir.clone(),
                source,
            })?;
        let Some(v) = v else { return Ok(None) };
        match decode(seq, &v) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                tracing::error!("{e}; removing it");
                let _ = self.remove_key(class, &key);
                Ok(None)
            }
        }
    }

    /// The next sequence number sled will hand out is above every stored one.
    pub fn next_seq(&self) -> u64 {
        let last = |t: &sled::Tree| {
            t.last()
                .ok()
                .flatten()
                .map(|(k, _)| u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])) + 1)
                .unwrap_or(0)
        };
        last(&self.events).max(last(&self.telemetry))
    }

    /// Messages (events and telemetry) and evidence snapshots not yet acked.
    pub fn pending(&self) -> u64 {
        self.stats.pending_events.load(Ordering::Relaxed)
            + self.stats.pending_telemetry.load(Ordering::Relaxed)
            + self.stats.pending_evidence.load(Ordering::Relaxed)
    }

    /// The oldest evidence snapshots, at most `limit`.
    pub fn evidence(&self, limit: usize) -> Vec<Record> {
        self.evidence
            .iter()
            .take(limit)
            .filter_map(|kv| {
                let (k, v) = kv.ok()?;
                decode(u64::from_be_bytes(k.as_ref().try_into().ok()?), &v).ok()
            })
            .collect()
    }

    fn oldest_ms(&self) -> Option<i64> {
        let first = |t: &sled::Tree| {
            t.first()
                .ok()
                .flatten()
                .and_then(|(k, v)| decode(u64::from_be_bytes(k.as_ref().try_into().ok()?), &v).ok())
                .map(|r| r.enqueued_ms)
        };
        match (first(&self.events), first(&self.telemetry)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Drops records older than `max_age_s`, counted.
    fn sweep_expired(&self) {
        let cutoff = csb_wire::now_ms() - self.max_age_ms;
        for class in [Class::Telemetry, Class::Evidence, Class::Event] {
            loop {
                let Ok(Some((k, v))) = self.tree(class).first() else {
                    break;
                };
                let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
                match decode(seq, &v) {
                    Ok(r) if r.enqueued_ms >= cutoff => break,
                    _ => {}
                }
                let _g = self.space.lock();
                if let Ok(true) = self.remove_key(class, &k) {
                    let n = self.stats.dropped_expired.fetch_add(1, Ordering::Relaxed);
                    if n.is_power_of_two() {
                        tracing::error!(dir = %self.dir.display(), "outbox: dropping {} records older than max_age", class.as_str());
                    }
                }
            }
        }
    }

    pub fn snapshot(&self) -> OutboxSnapshot {
        let s = &self.stats;
        let ev = s.pending_events.load(Ordering::Relaxed);
        let dropped_events = s.dropped_full_events.load(Ordering::Relaxed);
        OutboxSnapshot {
            pending: self.pending(),
            pending_events: ev,
            bytes: s.bytes.load(Ordering::Relaxed),
            oldest_age_ms: self
                .oldest_ms()
                .map(|t| (csb_wire::now_ms() - t).max(0) as u64)
                .unwrap_or(0),
            dropped_total: dropped_events
                + s.dropped_full_telemetry.load(Ordering::Relaxed)
                + s.dropped_full_evidence.load(Ordering::Relaxed)
                + s.dropped_expired.load(Ordering::Relaxed),
            dropped_events,
            write_errors: s.write_errors.load(Ordering::Relaxed),
            resent: s.resent.load(Ordering::Relaxed),
            acked: s.acked.load(Ordering::Relaxed),
            disk_bytes: self.db.size_on_disk().unwrap_or(0),
        }
    }

    /// Stops the writer (after what is queued) and flushes.
    pub fn close(&self) {
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
        if let Some(h) = self.writer.lock().ok().and_then(|mut g| g.take()) {
            let _ = h.join();
        }
        let _ = self.db.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled's flusher may hold the lock a moment after the previous handle was dropped (a
    /// reopen in a test on a loaded machine): retry briefly.
    fn open(dir: &Path, max_bytes: u64) -> Arc<Outbox> {
        let config = OutboxConfig {
            max_bytes,
            ..OutboxConfig::default()
        };
        let mut tries = 0;
        loop {
            match Outbox::open(dir, &config) {
                Ok(o) => return o,
                Err(e) if tries < 100 && e.to_string().contains("could not acquire lock") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("outbox opens: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn survives_reopen_in_order_and_acks_remove() {
        let d = tempfile::tempdir().unwrap();
        let ids: Vec<Ulid> = (0..5).map(|_| Ulid::new()).collect();
        let mut seqs = Vec::new();
        {
            let ob = open(d.path(), 1 << 20);
            for (i, id) in ids.iter().enumerate() {
                let class = if i == 2 {
                    Class::Telemetry
                } else {
                    Class::Event
                };
                seqs.push((class, ob.enqueue(class, *id, vec![b'x'; 10]).await.unwrap()));
            }
            assert_eq!(ob.pending(), 5);
            ob.close();
        }
        let ob = open(d.path(), 1 << 20);
        assert_eq!(ob.snapshot().pending, 5, "counted again at open");
        assert_eq!(ob.snapshot().bytes, 50);
        let all = ob.range(0, u64::MAX, 100).unwrap();
        let got: Vec<Ulid> = all.iter().map(|r| r.id).collect();
        assert_eq!(got, ids, "enqueue order across both classes");
        assert_eq!(all[2].class, Class::Telemetry);
        assert!(ob.next_seq() > all[4].seq);
        assert_eq!(ob.ack(&seqs[..2]).unwrap(), 2);
        assert_eq!(ob.ack(&seqs[..2]).unwrap(), 0, "a repeated ack is harmless");
        assert_eq!(ob.pending(), 3);
        let rest = ob.range(0, u64::MAX, 100).unwrap();
        assert_eq!(rest[0].id, ids[2]);
        assert_eq!(ob.range(seqs[3].1, u64::MAX, 1).unwrap()[0].id, ids[3]);
    }

    #[tokio::test]
    async fn full_outbox_drops_telemetry_before_events() {
        let d = tempfile::tempdir().unwrap();
        let ob = open(d.path(), 1 << 20);
        let kb = |n: usize| vec![b'x'; n * 1024];
        ob.enqueue(Class::Telemetry, Ulid::new(), kb(400))
            .await
            .unwrap();
        let ev1 = Ulid::new();
        ob.enqueue(Class::Event, ev1, kb(400)).await.unwrap();
        // Does not fit: the telemetry goes, the event stays.
        ob.enqueue(Class::Event, Ulid::new(), kb(400))
            .await
            .unwrap();
        let s = ob.snapshot();
        assert_eq!((s.pending_events, s.pending), (2, 2));
        assert_eq!(ob.stats().dropped_full_telemetry.load(Ordering::Relaxed), 1);
        // No telemetry left: the oldest event goes, counted.
        ob.enqueue(Class::Event, Ulid::new(), kb(400))
            .await
            .unwrap();
        assert_eq!(s.dropped_events, 0);
        assert_eq!(ob.snapshot().dropped_events, 1);
        assert!(ob
            .range(0, u64::MAX, 10)
            .unwrap()
            .iter()
            .all(|r| r.id != ev1));
        assert!(matches!(
            ob.enqueue(Class::Event, Ulid::new(), kb(2048)).await,
            Err(OutboxError::TooLarge { .. })
        ));
    }

    #[test]
    fn record_format_round_trips_and_rejects_garbage() {
        let id = Ulid::new();
        let v = encode(Class::Telemetry, 1_790_000_000_000, id, b"{}");
        assert_eq!(v.len(), HEADER + 2);
        let r = decode(7, &v).unwrap();
        assert_eq!(
            (r.seq, r.class, r.enqueued_ms, r.id),
            (7, Class::Telemetry, 1_790_000_000_000, id)
        );
        assert_eq!(r.payload, b"{}");
        assert!(decode(1, &v[..5]).is_err());
        let mut bad = v.clone();
        bad[0] = 9;
        assert!(decode(1, &bad)
            .unwrap_err()
            .to_string()
            .contains("format version 9"));
    }
}
