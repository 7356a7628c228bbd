//! The ingest loop: broker link → size/topic/payload validation → store, in durable batches →
//! acks to the devices.
//!
//! Every message is either stored or refused with a [`RejectReason`]; refusals are counted,
//! logged (rate-limited, see [`LogLimiter`]) with the topic and the field at fault, and kept in
//! the quarantine ([`crate::storage::quarantine`]) in the same write as the batch's valid messages.
//!
//! Acks: once a batch's write has returned (sled flush), each device gets one [`Ack`] per batch
//! on `csb/v1/{site}/{device}/ack` naming every event and telemetry id of that batch: stored
//! now, stored before (a resend), or quarantined with a readable id. Nothing is acked before it
//! is durable, and a failed write acks nothing: the edge resends and the dedup index makes the
//! resend harmless.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use csb_wire::{
    decode, Ack, Channel, CommandReply, DeviceStatus, Event, PayloadError, Telemetry, Topic,
    TopicRef, MAX_ACK_IDS, SCHEMA_VERSION,
};
use thiserror::Error;
use ulid::Ulid;

use crate::ingest::devices::DeviceRegistry;
use crate::ingest::metrics::Metrics;
use crate::ingest::mqtt::broker::{BrokerError, BrokerLink, InboundMessage};
use crate::storage::quarantine::RejectReason;
use crate::storage::quarantine::{Probe, QuarantineEntry};
use crate::storage::store::{Store, WriteBatch, WriteOutcome, MAX_BATCH};
use crate::support::loglimit::LogLimiter;

/// Upper bound on what the shutdown drain picks up from the link.
const MAX_DRAIN: usize = 10_000;
/// Store write attempts per batch before its messages are counted as lost.
const STORE_ATTEMPTS: u32 = 3;
/// Rejection log lines per window; the rest are only counted.
const REJECT_LOGS_PER_WINDOW: u32 = 20;
const REJECT_LOG_WINDOW: Duration = Duration::from_secs(60);
/// Ack-failure log lines per window.
const ACK_LOGS_PER_WINDOW: u32 = 5;
/// Ids per ack message (the wire allows up to `MAX_ACK_IDS`): 256 ids are ~7.5 KB of JSON,
/// within the 10 KiB default incoming packet limit of common clients (rumqttc), so an edge
/// that forgot to raise it still gets its acks.
pub const ACK_IDS_PER_MESSAGE: usize = 256;
const _: () = assert!(ACK_IDS_PER_MESSAGE <= MAX_ACK_IDS);
/// Cap on topic/detail text in one log line, so hostile input cannot make huge lines.
const LOG_TEXT_MAX: usize = 300;

#[derive(Debug, Error)]
pub enum IngestError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// A validated message.
// Rule info made `Event` much bigger than the others; a value lives only until it is moved
// into its batch, so boxing would add an allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    Event(Event),
    Telemetry(Telemetry),
    Status(DeviceStatus),
    /// An agent's answer to a command (not stored in the logs: the case workflow records what
    /// it decides, and an answer it missed comes again with the command's next send).
    Reply(CommandReply),
}

/// Why a message was refused, with a human-readable detail naming the field or topic part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

fn payload_rejection(e: PayloadError, payload: &[u8]) -> Rejection {
    let reason = match &e {
        PayloadError::Json(j) => match j.classify() {
            // Well-formed JSON of the wrong shape; a newer schema version usually is exactly
            // that, so look at `v` before calling it a schema error.
            serde_json::error::Category::Data => match Probe::read(payload).and_then(|p| p.v) {
                Some(v) if v != u64::from(SCHEMA_VERSION) => {
                    return Rejection {
                        reason: RejectReason::Version,
                        detail: format!(
                            "unsupported schema version v={v} (this build reads \
                                 v={SCHEMA_VERSION}): {e}"
                        ),
                    }
                }
                _ => RejectReason::Schema,
            },
            // Syntax errors (invalid UTF-8 included) and input cut short.
            _ => RejectReason::NotJson,
        },
        PayloadError::Version { .. } => RejectReason::Version,
        PayloadError::Field { .. } | PayloadError::Level(_) => RejectReason::Schema,
    };
    Rejection {
        reason,
        detail: e.to_string(),
    }
}

fn check_origin(topic: &TopicRef<'_>, site: &str, device: &str) -> Result<(), Rejection> {
    if topic.site == site && topic.device == device {
        Ok(())
    } else {
        // A device must not speak for another: the topic is what ACLs will be based on.
        Err(Rejection {
            reason: RejectReason::DeviceMismatch,
            detail: format!(
                "payload site/device `{site}/{device}` differs from topic `{}/{}`",
                topic.site, topic.device
            ),
        })
    }
}

/// Topics the hub itself publishes on (`ack`, later `cmd`). The hub's link subscribes to every
/// topic so that strays can be quarantined, and so receives its own publishes back: skip them.
pub fn is_outbound(topic: &[u8]) -> bool {
    let ends = |suffix: &[u8]| topic.ends_with(suffix);
    (ends(b"/ack") || ends(b"/cmd"))
        && std::str::from_utf8(topic)
            .ok()
            .and_then(|t| TopicRef::parse(t).ok())
            .is_some_and(|t| matches!(t.channel, Channel::Ack | Channel::Cmd))
}

/// Validates one message: size, topic shape, payload schema and fields, and that the payload
/// comes from the device its topic names. No signature check: see [`classify_with`].
pub fn classify(topic: &[u8], payload: &[u8], max_payload: usize) -> Result<Accepted, Rejection> {
    classify_with(topic, payload, max_payload, None)
}

/// [`classify`], and with `devices` (`auth.devices = "required"`) the payload's signature must
/// be the one of the device the topic names: else `spoofed`. Checked before anything else is
/// read from the payload, so an unverified message never gets an ack (a quarantined one with
/// a readable id would be acked to the topic's device, and its outbox would drop that id).
pub fn classify_with(
    topic: &[u8],
    payload: &[u8],
    max_payload: usize,
    devices: Option<&DeviceRegistry>,
) -> Result<Accepted, Rejection> {
    let topic_str = std::str::from_utf8(topic).map_err(|_| Rejection {
        reason: RejectReason::BadTopic,
        detail: "topic is not UTF-8".into(),
    })?;
    let topic = TopicRef::parse(topic_str).map_err(|e| Rejection {
        reason: RejectReason::BadTopic,
        detail: e.to_string(),
    })?;
    if !matches!(
        topic.channel,
        Channel::Event | Channel::Telemetry | Channel::Status | Channel::CmdReply
    ) {
        return Err(Rejection {
            reason: RejectReason::BadTopic,
            detail: format!("the hub does not ingest the `{}` channel", topic.channel),
        });
    }
    if let Some(reg) = devices {
        // The payload is at most `mqtt_max_payload_bytes` (the broker's limit): hashing it
        // costs less than decoding it would.
        check_signature(topic_str, &topic, payload, reg)?;
    }
    if payload.len() > max_payload {
        return Err(Rejection {
            reason: RejectReason::Oversized,
            detail: format!(
                "payload of {} bytes exceeds ingest_max_payload_bytes = {max_payload}",
                payload.len()
            ),
        });
    }
    let bad = |e| payload_rejection(e, payload);
    match topic.channel {
        Channel::Event => {
            let e: Event = decode(payload).map_err(bad)?;
            check_origin(&topic, &e.site, &e.device)?;
            Ok(Accepted::Event(e))
        }
        Channel::Telemetry => {
            let t: Telemetry = decode(payload).map_err(bad)?;
            check_origin(&topic, &t.site, &t.device)?;
            Ok(Accepted::Telemetry(t))
        }
        Channel::CmdReply => {
            let r: CommandReply = decode(payload).map_err(bad)?;
            check_origin(&topic, &r.site, &r.device)?;
            Ok(Accepted::Reply(r))
        }
        _ => {
            let s: DeviceStatus = decode(payload).map_err(bad)?;
            check_origin(&topic, &s.site, &s.device)?;
            Ok(Accepted::Status(s))
        }
    }
}

fn check_signature(
    topic_str: &str,
    topic: &TopicRef<'_>,
    payload: &[u8],
    devices: &DeviceRegistry,
) -> Result<(), Rejection> {
    let spoofed = |detail: String| Rejection {
        reason: RejectReason::Spoofed,
        detail,
    };
    let key = devices.key(topic.site, topic.device).ok_or_else(|| {
        spoofed(format!(
            "device `{}/{}` has no credentials (cloud-hub device add)",
            topic.site, topic.device
        ))
    })?;
    csb_wire::sign::verify(topic_str, payload, &key).map_err(|e| {
        spoofed(format!(
            "{e} (device `{}/{}` of the topic)",
            topic.site, topic.device
        ))
    })
}

/// Ids to acknowledge, per device in first-seen order; each id is acked once per device.
#[derive(Debug, Default)]
pub struct AckBatch {
    devices: Vec<DeviceAcks>,
    index: HashMap<String, usize>,
    /// The device of the previous `add`: a device's messages tend to come in runs.
    last: Option<usize>,
}

#[derive(Debug)]
struct DeviceAcks {
    site: String,
    device: String,
    /// May repeat an id (a resend within the batch): [`AckBatch::messages`] drops repeats.
    /// Checking each id on arrival cost a hash set per device and batch, grown from empty
    /// every time (~1 % of durable ingest's CPU); repeats are rare, so they are looked for
    /// once, when the acks are built.
    ids: Vec<Ulid>,
}

impl AckBatch {
    pub fn add(&mut self, site: &str, device: &str, id: Ulid) {
        let i = match self.last {
            Some(i) if self.devices[i].site == site && self.devices[i].device == device => i,
            _ => self.device_index(site, device),
        };
        self.last = Some(i);
        self.devices[i].ids.push(id);
    }

    fn device_index(&mut self, site: &str, device: &str) -> usize {
        let key = format!("{site}/{device}");
        match self.index.get(&key) {
            Some(&i) => i,
            None => {
                self.devices.push(DeviceAcks {
                    site: site.to_string(),
                    device: device.to_string(),
                    ids: Vec::new(),
                });
                self.index.insert(key, self.devices.len() - 1);
                self.devices.len() - 1
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The ack messages: per device, its ids in chunks of at most `max_ids`.
    pub fn messages(&self, ts_ms: i64, max_ids: usize) -> Vec<(String, Ack)> {
        let mut out = Vec::with_capacity(self.devices.len());
        for d in &self.devices {
            // Site and device were validated as topic levels before they got here.
            let Ok(topic) = Topic::new(d.site.as_str(), d.device.as_str(), Channel::Ack) else {
                continue;
            };
            let topic = topic.to_string();
            let ids = first_of_each(&d.ids);
            for chunk in ids.chunks(max_ids.max(1)) {
                out.push((
                    topic.clone(),
                    Ack {
                        v: SCHEMA_VERSION,
                        site: d.site.clone(),
                        device: d.device.clone(),
                        ts_ms,
                        ids: chunk.to_vec(),
                    },
                ));
            }
        }
        out
    }
}

/// `ids` with repeats dropped, first occurrences in order. Borrowed when the ids rise
/// strictly (the usual case: an edge's ULIDs rise, and it sends them in order), so there is
/// nothing to allocate or hash.
fn first_of_each(ids: &[Ulid]) -> std::borrow::Cow<'_, [Ulid]> {
    if ids.windows(2).all(|w| w[0] < w[1]) {
        return std::borrow::Cow::Borrowed(ids);
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    std::borrow::Cow::Owned(ids.iter().copied().filter(|id| seen.insert(*id)).collect())
}

/// What ingest needs from the hub config.
#[derive(Clone)]
pub struct IngestSettings {
    /// Payloads above this are quarantined as `oversized`.
    pub max_payload_bytes: usize,
    /// Set with `auth.devices = "required"`: every payload's signature is verified.
    pub devices: Option<Arc<DeviceRegistry>>,
}

/// A validated batch, and what to ack once it is durable.
struct Prepared {
    batch: WriteBatch,
    acks: AckBatch,
    /// Ids of quarantined messages: acked only if their entries were stored.
    quarantine_acks: AckBatch,
    received_ms: i64,
}

impl Prepared {
    /// Messages in the batch (what bounds its memory together with the payload limit).
    fn len(&self) -> usize {
        let b = &self.batch;
        b.events.len() + b.telemetry.len() + b.statuses.len() + b.quarantine.len()
    }
}

/// Most written batches kept for [`Recycler`].
const RECYCLE_MAX: usize = 4;

/// Reuses the vectors of written batches once the store and the twin are done with them. A
/// batch's vector of decoded events is up to ~1 MB (`MAX_BATCH` × ~460 B); allocated afresh for
/// every batch, and freed on another thread, it kept landing on fresh pages that the kernel had
/// to zero: ~9 % of the CPU of durable ingest (`cloud-hub bench-ingest` under perf).
#[derive(Default)]
struct Recycler {
    /// Handed to the store; maybe still read by the write task or the twin.
    in_use: Vec<Arc<WriteBatch>>,
    /// Emptied, with their capacity.
    spare: Vec<WriteBatch>,
}

impl Recycler {
    /// Keeps `batch` to reuse once nobody else holds it (or forgets it when enough are kept).
    fn track(&mut self, batch: &Arc<WriteBatch>) {
        self.collect();
        if self.in_use.len() < RECYCLE_MAX {
            self.in_use.push(batch.clone());
        }
    }

    /// An empty batch, with the capacity of an earlier one when there is one to reuse. New ones
    /// get room for a full batch of events at once: growing step by step means a fresh
    /// allocation (and fresh pages) per step, and the vectors are kept anyway.
    fn take(&mut self) -> WriteBatch {
        self.collect();
        self.spare.pop().unwrap_or_else(|| WriteBatch {
            events: Vec::with_capacity(MAX_BATCH),
            event_payloads: Vec::with_capacity(MAX_BATCH),
            ..WriteBatch::default()
        })
    }

    /// Empties the batches only this holds now (their contents are freed here) into `spare`.
    fn collect(&mut self) {
        let mut i = 0;
        while i < self.in_use.len() {
            if Arc::strong_count(&self.in_use[i]) > 1 {
                i += 1;
                continue;
            }
            // The only holder: nobody can clone it meanwhile, so the unwrap succeeds.
            if let Ok(mut b) = Arc::try_unwrap(self.in_use.swap_remove(i)) {
                if self.spare.len() < RECYCLE_MAX {
                    b.clear();
                    self.spare.push(b);
                }
            }
        }
    }
}

/// A batch being written by its own task.
struct Pending {
    task: tokio::task::JoinHandle<Option<WriteOutcome>>,
    acks: AckBatch,
    quarantine_acks: AckBatch,
    received_ms: i64,
    n_status: u64,
    n_quarantine: u64,
    total: u64,
}

/// What layers above ingest (the twin, the case workflow) implement to see each batch once it
/// is stored durably — so ingest never names them.
pub trait DurableSink: Send + Sync + 'static {
    /// Called between store writes: must never wait (drop and count when behind).
    fn offer(&self, batch: &Arc<WriteBatch>, outcome: &WriteOutcome);
}

/// What takes agents' command replies (the case workflow), so ingest never names it.
pub trait ReplySink: Send + Sync + 'static {
    /// Must never wait: `false` when there is no room (the reply is dropped and counted; the
    /// command is sent again and answered again).
    fn reply(&self, reply: CommandReply) -> bool;
}

/// A message for one device that ingest publishes through its link, signed with the device's
/// key when it has one (as acks are): the hub's commands.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub topic: Topic,
    /// The unsigned JSON object.
    pub payload: Vec<u8>,
}

/// Messages waiting for ingest to publish them; senders fail rather than wait when full.
pub const OUTBOUND_CAPACITY: usize = 1_024;

pub struct Ingest<S: Store> {
    link: BrokerLink,
    store: Arc<S>,
    metrics: Arc<Metrics>,
    settings: IngestSettings,
    limiter: LogLimiter,
    ack_limiter: LogLimiter,
    /// Quarantine entry ids: monotonic, so entries of one millisecond keep arrival order.
    ids: ulid::Generator,
    /// Get every batch once it is durable (the digital twin; later the case workflow).
    sinks: Arc<[Arc<dyn DurableSink>]>,
    recycler: Recycler,
    replies: Option<Arc<dyn ReplySink>>,
    outbound: Option<tokio::sync::mpsc::Receiver<Outbound>>,
}

impl<S: Store> Ingest<S> {
    pub fn new(
        link: BrokerLink,
        store: Arc<S>,
        metrics: Arc<Metrics>,
        settings: IngestSettings,
    ) -> Self {
        Ingest {
            link,
            store,
            metrics,
            settings,
            limiter: LogLimiter::new(REJECT_LOGS_PER_WINDOW, REJECT_LOG_WINDOW),
            ack_limiter: LogLimiter::new(ACK_LOGS_PER_WINDOW, REJECT_LOG_WINDOW),
            ids: ulid::Generator::new(),
            sinks: Arc::new([]),
            recycler: Recycler::default(),
            replies: None,
            outbound: None,
        }
    }

    /// Hands valid command replies to `sink`.
    pub fn with_replies(mut self, sink: Arc<dyn ReplySink>) -> Self {
        self.replies = Some(sink);
        self
    }

    /// Publishes what arrives on `rx` (see [`Outbound`]).
    pub fn with_outbound(mut self, rx: tokio::sync::mpsc::Receiver<Outbound>) -> Self {
        self.outbound = Some(rx);
        self
    }

    /// Offers each batch to `sink` once it is durable (after any sinks added before).
    pub fn with_sink(mut self, sink: Arc<dyn DurableSink>) -> Self {
        let mut sinks = self.sinks.to_vec();
        sinks.push(sink);
        self.sinks = sinks.into();
        self
    }

    /// Runs until `shutdown` resolves, then drains what the link already holds and flushes.
    /// Stop the MQTT server before resolving `shutdown` so the drain sees everything.
    ///
    /// Pipelined with group commit: while one batch is being written (and flushed), the rounds
    /// the router delivers meanwhile are received, validated and gathered into the next batch,
    /// which is written as soon as the store is free. So one flush covers everything that
    /// arrived during the previous one: under load batches grow (up to [`MAX_BATCH`]) and the
    /// flush cost per message falls; when idle a message is written at once. Writes stay
    /// strictly one after another (a resend in batch n+1 finds batch n stored), a batch is acked
    /// as soon as its write returns, and memory holds at most one batch in the store, one being
    /// gathered (at most `MAX_BATCH` messages) and one round of the router.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), IngestError> {
        tokio::pin!(shutdown);
        let mut pending: Option<Pending> = None;
        let mut gathered: Option<Prepared> = None;
        let stopped = loop {
            let written = async {
                match pending.as_mut() {
                    Some(p) => (&mut p.task).await,
                    None => std::future::pending().await,
                }
            };
            let outbound = async {
                match self.outbound.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let room = MAX_BATCH.saturating_sub(gathered.as_ref().map_or(0, Prepared::len));
            let messages = tokio::select! {
                biased;
                _ = &mut shutdown => break Ok(()),
                o = outbound => {
                    match o {
                        Some(o) => self.publish_outbound(o),
                        None => self.outbound = None,
                    }
                    continue;
                }
                // Ack as soon as the write is durable, then write what gathered meanwhile.
                r = written => {
                    if let Some(p) = pending.take() {
                        self.complete(p, r);
                    }
                    pending = gathered.take().map(|g| self.start_write(g));
                    continue;
                }
                // A full gathered batch waits for the store; the router holds the rest.
                r = self.link.recv_batch(room), if room > 0 => match r {
                    Ok(m) => m,
                    Err(e) => break Err(e),
                },
            };
            // Let the router fill the next round while this one is validated.
            if let Err(e) = self.link.release().await {
                break Err(e);
            }
            self.prepare(messages, &mut gathered);
            if pending.is_none() {
                pending = gathered.take().map(|g| self.start_write(g));
            }
        };
        if let Some(g) = gathered.take() {
            if let Some(p) = pending.take() {
                self.finish(p).await;
            }
            pending = Some(self.start_write(g));
        }
        // What was handed to the store is finished (and acked) whatever happens next.
        if let Some(p) = pending.take() {
            self.finish(p).await;
        }
        stopped?;
        let rest = self.link.try_recv_batch(MAX_DRAIN)?;
        if !rest.is_empty() {
            tracing::info!(
                count = rest.len(),
                "draining buffered messages before shutdown"
            );
            let mut rest = rest.into_iter();
            loop {
                let chunk: Vec<_> = rest.by_ref().take(MAX_BATCH).collect();
                if chunk.is_empty() {
                    break;
                }
                let mut next = None;
                self.prepare(chunk, &mut next);
                if let Some(n) = next {
                    let p = self.start_write(n);
                    self.finish(p).await;
                }
            }
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "final store flush failed");
        }
        Ok(())
    }

    /// Validates messages into `gathered` (started if `None`), after what it holds: valid
    /// messages and quarantine entries to store, ids to ack. Arrival order is kept, so a
    /// device's last status wins and a resend within the batch is found as a duplicate.
    /// Appending in place, rather than merging batches, spares moving every decoded event.
    fn prepare(&mut self, messages: Vec<InboundMessage>, gathered: &mut Option<Prepared>) {
        if messages.is_empty() {
            return;
        }
        let now = SystemTime::now();
        let received_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let recycler = &mut self.recycler;
        let p = gathered.get_or_insert_with(|| Prepared {
            batch: recycler.take(),
            acks: AckBatch::default(),
            quarantine_acks: AckBatch::default(),
            received_ms,
        });
        p.received_ms = p.received_ms.max(received_ms);
        p.batch.received_ms = p.received_ms;
        let (batch, acks, quarantine_acks) = (&mut p.batch, &mut p.acks, &mut p.quarantine_acks);
        // Room for the round's events at once: growing a vector of decoded events step by
        // step costs more (copies, fresh pages) than it seems.
        let events = messages
            .iter()
            .filter(|m| m.topic.ends_with(b"/event"))
            .count();
        batch.events.reserve(events);
        batch.event_payloads.reserve(events);
        for m in messages {
            if is_outbound(&m.topic) {
                continue;
            }
            match classify_with(
                &m.topic,
                &m.payload,
                self.settings.max_payload_bytes,
                self.settings.devices.as_deref(),
            ) {
                // The validated payload is stored as received: no second encoding.
                Ok(Accepted::Event(e)) => {
                    acks.add(&e.site, &e.device, e.id);
                    batch.events.push(e);
                    batch.event_payloads.push(m.payload);
                }
                Ok(Accepted::Telemetry(t)) => {
                    acks.add(&t.site, &t.device, t.id);
                    batch.telemetry.push(t);
                    batch.telemetry_payloads.push(m.payload);
                }
                Ok(Accepted::Status(s)) => batch.statuses.push((s, received_ms)),
                Ok(Accepted::Reply(r)) => {
                    let taken = self.replies.as_ref().is_some_and(|sink| sink.reply(r));
                    self.metrics.add_reply(taken);
                }
                Err(r) => {
                    self.log_reject(&m.topic, &r);
                    let id = self
                        .ids
                        .generate_from_datetime(now)
                        .unwrap_or_else(|_| Ulid::new());
                    let entry = QuarantineEntry::new(
                        id,
                        received_ms,
                        &m.topic,
                        &m.payload,
                        r.reason,
                        &r.detail,
                    );
                    if let Some((topic, msg_id)) = entry.ack_to() {
                        quarantine_acks.add(&topic.site, &topic.device, msg_id);
                    }
                    batch.quarantine.push(entry);
                }
            }
        }
        if gathered.as_ref().is_some_and(|p| p.batch.is_empty()) {
            if let (Some(p), true) = (gathered.take(), self.recycler.spare.len() < RECYCLE_MAX) {
                self.recycler.spare.push(p.batch);
            }
        }
    }

    /// Hands a batch to the store (with retries) in a task of its own.
    fn start_write(&mut self, p: Prepared) -> Pending {
        let n_quarantine = p.batch.quarantine.len() as u64;
        let n_status = p.batch.statuses.len() as u64;
        let total = p.batch.events.len() as u64 + p.batch.telemetry.len() as u64 + n_status;
        let batch = Arc::new(p.batch);
        self.recycler.track(&batch);
        let store = self.store.clone();
        let sinks = self.sinks.clone();
        let task = tokio::spawn(async move {
            for attempt in 1..=STORE_ATTEMPTS {
                match store.write(batch.clone()).await {
                    Ok(out) => {
                        for sink in sinks.iter() {
                            sink.offer(&batch, &out);
                        }
                        return Some(out);
                    }
                    Err(e) => {
                        tracing::error!(attempt, of = STORE_ATTEMPTS, error = %e, "store write failed");
                        if attempt < STORE_ATTEMPTS {
                            tokio::time::sleep(Duration::from_millis(100 << (2 * attempt))).await;
                        }
                    }
                }
            }
            None
        });
        Pending {
            task,
            acks: p.acks,
            quarantine_acks: p.quarantine_acks,
            received_ms: p.received_ms,
            n_status,
            n_quarantine,
            total,
        }
    }

    async fn finish(&mut self, mut p: Pending) {
        let r = (&mut p.task).await;
        self.complete(p, r);
    }

    /// Counts a finished write and, if it is durable, sends its acks.
    fn complete(&mut self, p: Pending, r: Result<Option<WriteOutcome>, tokio::task::JoinError>) {
        let out = match r {
            Ok(Some(out)) => out,
            Ok(None) | Err(_) => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "store write task failed");
                }
                // Not acked: edges with an outbox resend them; anything else sent them once.
                self.metrics.add_store_failed(p.total);
                self.metrics.add_quarantine_failed(p.n_quarantine);
                tracing::error!(
                    messages = p.total,
                    quarantine = p.n_quarantine,
                    "dropped a batch after {STORE_ATTEMPTS} failed store writes (nothing acked)"
                );
                return;
            }
        };
        let m = &self.metrics;
        m.add_batch();
        m.add_events_accepted(out.events_inserted);
        m.add_events_duplicate(out.events_duplicate.len() as u64);
        m.add_telemetry_accepted(out.telemetry_inserted);
        m.add_telemetry_duplicate(out.telemetry_duplicate.len() as u64);
        m.add_status_accepted(p.n_status);
        m.add_quarantine_pruned(out.quarantine_pruned);
        if !out.events_duplicate.is_empty() || !out.telemetry_duplicate.is_empty() {
            // Expected: edges resend until acked. Debug only, the counters show volume.
            tracing::debug!(
                events = ?out.events_duplicate,
                telemetry = ?out.telemetry_duplicate,
                "duplicates not stored again (acked again)"
            );
        }
        let mut acks = p.acks;
        match &out.quarantine_error {
            // Not stored, so not acked: the edge resends and it is tried again.
            Some(e) => {
                m.add_quarantine_failed(p.n_quarantine);
                tracing::error!(
                    entries = p.n_quarantine,
                    error = %e,
                    "quarantine write failed"
                );
            }
            None => {
                for d in p.quarantine_acks.devices {
                    for id in d.ids {
                        acks.add(&d.site, &d.device, id);
                    }
                }
            }
        }
        self.send_acks(&acks, p.received_ms);
    }

    /// Publishes the acks of a durable batch. Never waits: an ack that cannot be handed over is
    /// counted and the edge resends (and is acked) later.
    fn send_acks(&mut self, acks: &AckBatch, ts_ms: i64) {
        if acks.is_empty() {
            return;
        }
        for (topic, ack) in acks.messages(ts_ms, ACK_IDS_PER_MESSAGE) {
            let n = ack.ids.len() as u64;
            let payload = match serde_json::to_vec(&ack) {
                Ok(p) => p,
                Err(e) => {
                    // Ulids and validated levels always serialise; be safe anyway.
                    self.ack_failed(&topic, &e.to_string());
                    continue;
                }
            };
            // Signed with the device's own key: any broker client can publish on an ack topic,
            // and a forged ack would make the edge drop what was never stored. Devices with a
            // key accept only signed acks.
            let key = self.settings.devices.as_ref();
            let payload = match key.and_then(|r| r.key(&ack.site, &ack.device)) {
                None => payload,
                Some(key) => match csb_wire::sign::sign(&topic, &payload, &key) {
                    Ok(p) => p,
                    Err(e) => {
                        self.ack_failed(&topic, &e.to_string());
                        continue;
                    }
                },
            };
            match self.link.publish(topic.clone(), payload) {
                Ok(()) => self.metrics.add_ack_sent(n),
                Err(e) => self.ack_failed(&topic, &e.to_string()),
            }
        }
    }

    /// Publishes a hub message to a device, signed with its key when it has one (an agent with
    /// credentials accepts only signed commands). Never waits: a failure is counted and the
    /// sender sends again later.
    fn publish_outbound(&mut self, o: Outbound) {
        let topic = o.topic.to_string();
        let key = self.settings.devices.as_ref();
        let payload = match key.and_then(|r| r.key(&o.topic.site, &o.topic.device)) {
            None => Ok(o.payload),
            Some(key) => csb_wire::sign::sign(&topic, &o.payload, &key),
        };
        let published = match payload {
            Ok(p) => match self.link.publish(topic.clone(), p) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(topic, error = %e, "command not published; sent again later");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(topic, error = %e, "command not signed; not sent");
                false
            }
        };
        self.metrics.add_command(published);
    }

    fn ack_failed(&mut self, topic: &str, error: &str) {
        self.metrics.add_ack_publish_failed();
        if let Some(suppressed) = self.ack_limiter.allow(Instant::now()) {
            tracing::warn!(
                topic,
                error,
                suppressed_since_last = suppressed,
                "ack not published; the device will resend and be acked then"
            );
        }
    }

    fn log_reject(&mut self, topic: &[u8], r: &Rejection) {
        self.metrics.reject(r.reason);
        if let Some(suppressed) = self.limiter.allow(Instant::now()) {
            let topic = String::from_utf8_lossy(topic);
            tracing::warn!(
                topic = %clip(&topic),
                reason = r.reason.as_str(),
                error = %clip(&r.detail),
                suppressed_since_last = suppressed,
                "rejected message (quarantined)"
            );
        }
    }
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(LOG_TEXT_MAX) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::store::tests::event;

    const T0: i64 = 1_790_000_000_000;
    const MAX: usize = 256 * 1024;

    fn reason(topic: &str, payload: &[u8]) -> RejectReason {
        classify(topic.as_bytes(), payload, MAX).unwrap_err().reason
    }

    #[test]
    fn recycler_reuses_batches_only_once_nobody_else_holds_them() {
        let mut r = Recycler::default();
        let mut b = r.take();
        assert!(b.events.capacity() >= MAX_BATCH);
        b.events
            .push(event("gw-01", "cam-01", T0, &[(0, "person")]));
        b.event_payloads.push(bytes::Bytes::from_static(b"{}"));
        b.received_ms = T0;
        let ptr = b.events.as_ptr();
        let written = Arc::new(b);
        r.track(&written);
        let held_by_twin = written.clone();
        drop(written);
        // Still read elsewhere: a new batch, not this one.
        let other = r.take();
        assert_ne!(other.events.as_ptr(), ptr);
        assert_eq!(held_by_twin.events.len(), 1);
        drop(held_by_twin);
        // Now only the recycler holds it: it comes back empty, with its vector.
        let again = r.take();
        assert_eq!(again.events.as_ptr(), ptr);
        assert!(again.is_empty() && again.event_payloads.is_empty());
        assert_eq!(again.received_ms, 0);
        // Bounded: a flood of batches is not all kept.
        for _ in 0..3 * RECYCLE_MAX {
            r.track(&Arc::new(WriteBatch::default()));
        }
        r.collect();
        assert!(r.in_use.is_empty() && r.spare.len() <= RECYCLE_MAX);
    }

    #[test]
    fn accepts_valid_event() {
        let e = event("gw-01", "cam-01", T0, &[(0, "person")]);
        let got = classify(
            b"csb/v1/yuexi/gw-01/event",
            &serde_json::to_vec(&e).unwrap(),
            MAX,
        )
        .unwrap();
        assert_eq!(got, Accepted::Event(e));
    }

    #[test]
    fn rejection_reasons() {
        let e = event("gw-01", "cam-01", T0, &[(0, "person")]);
        let good = serde_json::to_vec(&e).unwrap();
        let ev = "csb/v1/yuexi/gw-01/event";
        // Truncated, not JSON at all, not UTF-8.
        assert_eq!(reason(ev, b"{\"v\":1,"), RejectReason::NotJson);
        assert_eq!(reason(ev, &good[..good.len() / 2]), RejectReason::NotJson);
        assert_eq!(reason(ev, b"hello"), RejectReason::NotJson);
        assert_eq!(reason(ev, b""), RejectReason::NotJson);
        assert_eq!(
            reason(ev, b"{\"v\":1,\"id\":\"\xff\"}"),
            RejectReason::NotJson
        );
        // Versions: a v2 payload of the v1 shape, and one of another shape.
        let mut v = serde_json::to_value(&e).unwrap();
        v["v"] = 2.into();
        assert_eq!(reason(ev, v.to_string().as_bytes()), RejectReason::Version);
        let r = classify(ev.as_bytes(), br#"{"v":2,"payload":{}}"#, MAX).unwrap_err();
        assert_eq!(r.reason, RejectReason::Version);
        assert!(r.detail.contains("v=2"), "{}", r.detail);
        // Schema: a bad field value, a missing field, a mistyped one.
        let mut bad = e.clone();
        bad.objects[0].score = 1.5;
        let r = classify(ev.as_bytes(), &serde_json::to_vec(&bad).unwrap(), MAX).unwrap_err();
        assert_eq!(r.reason, RejectReason::Schema);
        assert!(r.detail.contains("objects[0].score"), "{}", r.detail);
        let mut v = serde_json::to_value(&e).unwrap();
        v.as_object_mut().unwrap().remove("camera");
        let r = classify(ev.as_bytes(), v.to_string().as_bytes(), MAX).unwrap_err();
        assert_eq!(r.reason, RejectReason::Schema);
        assert!(r.detail.contains("camera"), "{}", r.detail);
        v["camera"] = 7.into();
        assert_eq!(reason(ev, v.to_string().as_bytes()), RejectReason::Schema);
        assert_eq!(reason(ev, b"[1,2]"), RejectReason::Schema);
        // An event payload on the telemetry channel is not telemetry.
        assert_eq!(
            reason("csb/v1/yuexi/gw-01/telemetry", &good),
            RejectReason::Schema
        );
        // Who speaks for whom.
        assert_eq!(
            reason("csb/v1/yuexi/gw-02/event", &good),
            RejectReason::DeviceMismatch
        );
        assert_eq!(
            reason("csb/v1/other/gw-01/event", &good),
            RejectReason::DeviceMismatch
        );
        // Topics.
        for t in [
            "csb/v1/yu exi/gw-01/event",
            "csb/v1/yuexi/gw-01/cmd",
            "csb/v1/yuexi/gw-01/bogus",
            "csb/v2/yuexi/gw-01/event",
            "csb/v1/yuexi/event",
            "other/topic",
        ] {
            assert_eq!(reason(t, &good), RejectReason::BadTopic, "{t}");
        }
        // The reply channel is read: an event there is not a reply.
        assert_eq!(
            reason("csb/v1/yuexi/gw-01/cmd/reply", &good),
            RejectReason::Schema
        );
        assert_eq!(
            classify(b"csb/v1/\xff/gw-01/event", &good, MAX)
                .unwrap_err()
                .reason,
            RejectReason::BadTopic
        );
        // Size is checked before anything is parsed.
        let r = classify(ev.as_bytes(), &good, good.len() - 1).unwrap_err();
        assert_eq!(r.reason, RejectReason::Oversized);
        assert!(
            r.detail.contains("ingest_max_payload_bytes"),
            "{}",
            r.detail
        );
        assert!(classify(ev.as_bytes(), &good, good.len()).is_ok());
    }

    #[test]
    fn signatures_are_checked_first_when_required() {
        let dir = tempfile::tempdir().unwrap();
        let secret = crate::ingest::devices::add(dir.path(), "yuexi/gw-01").unwrap();
        crate::ingest::devices::add(dir.path(), "yuexi/gw-02").unwrap();
        let reg = DeviceRegistry::open(dir.path()).unwrap();
        let key = csb_wire::sign::signing_key(&secret);
        let ev = "csb/v1/yuexi/gw-01/event";
        let e = event("gw-01", "cam-01", T0, &[(0, "person")]);
        let signed = csb_wire::sign::sign(ev, &serde_json::to_vec(&e).unwrap(), &key).unwrap();
        let with = |t: &str, p: &[u8]| classify_with(t.as_bytes(), p, MAX, Some(&reg));
        assert_eq!(with(ev, &signed).unwrap(), Accepted::Event(e.clone()));
        // Unsigned, or gw-01's key on gw-02's topic, or a device without credentials.
        let unsigned = serde_json::to_vec(&e).unwrap();
        assert_eq!(
            with(ev, &unsigned).unwrap_err().reason,
            RejectReason::Spoofed
        );
        let mut b = e.clone();
        b.device = "gw-02".into();
        let t2 = "csb/v1/yuexi/gw-02/event";
        let forged = csb_wire::sign::sign(t2, &serde_json::to_vec(&b).unwrap(), &key).unwrap();
        assert_eq!(with(t2, &forged).unwrap_err().reason, RejectReason::Spoofed);
        let r = with("csb/v1/yuexi/gw-09/event", &signed).unwrap_err();
        assert_eq!(r.reason, RejectReason::Spoofed);
        assert!(r.detail.contains("no credentials"), "{}", r.detail);
        // Garbage with a readable id is spoofed (never acked), not schema (acked).
        let garbage = format!(r#"{{"v":1,"id":"{}"}}"#, Ulid::new());
        assert_eq!(
            with(ev, garbage.as_bytes()).unwrap_err().reason,
            RejectReason::Spoofed
        );
        // Without a registry the signature is an ignored field.
        assert!(classify(ev.as_bytes(), &signed, MAX).is_ok());
    }

    #[test]
    fn outbound_topics_are_recognised() {
        assert!(is_outbound(b"csb/v1/yuexi/gw-01/ack"));
        assert!(is_outbound(b"csb/v1/yuexi/gw-01/cmd"));
        assert!(!is_outbound(b"csb/v1/yuexi/gw-01/cmd/reply"));
        assert!(!is_outbound(b"csb/v1/yuexi/gw-01/event"));
        // Not a valid device topic: quarantined, not skipped.
        assert!(!is_outbound(b"csb/v1/yu exi/gw-01/ack"));
        assert!(!is_outbound(b"ack"));
    }

    #[test]
    fn acks_group_per_device_dedupe_and_chunk() {
        let ids: Vec<Ulid> = (0..5).map(|_| Ulid::new()).collect();
        let mut a = AckBatch::default();
        assert!(a.is_empty());
        a.add("yuexi", "gw-01", ids[0]);
        a.add("yuexi", "gw-02", ids[1]);
        a.add("yuexi", "gw-01", ids[2]);
        // A duplicate within the batch (resent twice) is acked once.
        a.add("yuexi", "gw-01", ids[0]);
        a.add("yuexi", "gw-01", ids[3]);
        a.add("other", "gw-01", ids[4]);
        let msgs = a.messages(T0, 2);
        let got: Vec<(&str, Vec<Ulid>)> = msgs
            .iter()
            .map(|(t, ack)| (t.as_str(), ack.ids.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("csb/v1/yuexi/gw-01/ack", vec![ids[0], ids[2]]),
                ("csb/v1/yuexi/gw-01/ack", vec![ids[3]]),
                ("csb/v1/yuexi/gw-02/ack", vec![ids[1]]),
                ("csb/v1/other/gw-01/ack", vec![ids[4]]),
            ]
        );
        for (topic, ack) in &msgs {
            assert_eq!(ack.v, SCHEMA_VERSION);
            assert_eq!(ack.ts_ms, T0);
            assert!(topic.contains(&format!("/{}/{}/", ack.site, ack.device)));
            // What goes on the wire is what the edge validates.
            let bytes = serde_json::to_vec(ack).unwrap();
            assert_eq!(&decode::<Ack>(&bytes).unwrap(), ack);
        }
        assert_eq!(a.messages(T0, MAX_ACK_IDS).len(), 3);
        // A full chunk stays under rumqttc's default 10 KiB incoming packet limit.
        let mut big = AckBatch::default();
        for _ in 0..ACK_IDS_PER_MESSAGE + 1 {
            big.add("yuexi", "gw-01", Ulid::new());
        }
        let msgs = big.messages(T0, ACK_IDS_PER_MESSAGE);
        assert_eq!(msgs.len(), 2);
        assert!(serde_json::to_vec(&msgs[0].1).unwrap().len() < 10 * 1024);
    }

    #[test]
    fn repeats_are_dropped_keeping_first_occurrences() {
        let mut g = ulid::Generator::new();
        let ids: Vec<Ulid> = (0..4).map(|_| g.generate().unwrap()).collect();
        // Rising ids (an edge's usual order): nothing to drop, nothing copied.
        assert!(matches!(first_of_each(&ids), std::borrow::Cow::Borrowed(_)));
        let mixed = [ids[2], ids[0], ids[2], ids[1], ids[0], ids[3]];
        assert_eq!(&*first_of_each(&mixed), &[ids[2], ids[0], ids[1], ids[3]]);
        assert_eq!(&*first_of_each(&[ids[1], ids[0]]), &[ids[1], ids[0]]);
        assert!(first_of_each(&[]).is_empty());
    }

    #[test]
    fn clip_respects_char_boundaries() {
        let s = "é".repeat(LOG_TEXT_MAX + 10);
        assert_eq!(clip(&s).chars().count(), LOG_TEXT_MAX);
        assert_eq!(clip("short"), "short");
    }
}
