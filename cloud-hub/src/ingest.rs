//! The ingest loop: broker link → topic/payload validation → store, in durable batches.
//!
//! Every message is either stored or rejected with a [`RejectReason`]; rejections are counted
//! and logged (rate-limited, see [`LogLimiter`]) with the topic and the field at fault.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use csb_wire::{decode, Channel, DeviceStatus, Event, PayloadError, Telemetry, Topic};
use thiserror::Error;

use crate::broker::{BrokerError, BrokerLink, InboundMessage};
use crate::metrics::{LogLimiter, Metrics, RejectReason};
use crate::store::{Store, WriteBatch};

/// Messages handled per store write: big enough to amortise the flush, small enough that one
/// batch's latency stays low. The broker hands over at most ~200 at a time anyway.
pub const MAX_BATCH: usize = 256;
/// Upper bound on what the shutdown drain picks up from the link.
const MAX_DRAIN: usize = 10_000;
/// Store write attempts per batch before its messages are counted as lost.
const STORE_ATTEMPTS: u32 = 3;
/// Rejection log lines per window; the rest are only counted.
const REJECT_LOGS_PER_WINDOW: u32 = 20;
const REJECT_LOG_WINDOW: Duration = Duration::from_secs(60);
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
}

/// Why a message was refused, with a human-readable detail naming the field or topic part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

fn payload_rejection(e: PayloadError) -> Rejection {
    let reason = match e {
        PayloadError::Json(_) => RejectReason::Json,
        PayloadError::Version { .. } => RejectReason::Version,
        PayloadError::Field { .. } | PayloadError::Level(_) => RejectReason::Field,
    };
    Rejection {
        reason,
        detail: e.to_string(),
    }
}

fn check_origin(topic: &Topic, site: &str, device: &str) -> Result<(), Rejection> {
    if topic.site == site && topic.device == device {
        Ok(())
    } else {
        // A device must not speak for another: the topic is what ACLs will be based on.
        Err(Rejection {
            reason: RejectReason::TopicMismatch,
            detail: format!(
                "payload site/device `{site}/{device}` differs from topic `{}/{}`",
                topic.site, topic.device
            ),
        })
    }
}

/// Validates one message: topic shape, payload schema and fields, and that the payload comes
/// from the device its topic names.
pub fn classify(topic: &[u8], payload: &[u8]) -> Result<Accepted, Rejection> {
    let topic_str = std::str::from_utf8(topic).map_err(|_| Rejection {
        reason: RejectReason::Topic,
        detail: "topic is not UTF-8".into(),
    })?;
    let topic = Topic::parse(topic_str).map_err(|e| Rejection {
        reason: RejectReason::Topic,
        detail: e.to_string(),
    })?;
    match topic.channel {
        Channel::Event => {
            let e: Event = decode(payload).map_err(payload_rejection)?;
            check_origin(&topic, &e.site, &e.device)?;
            Ok(Accepted::Event(e))
        }
        Channel::Telemetry => {
            let t: Telemetry = decode(payload).map_err(payload_rejection)?;
            check_origin(&topic, &t.site, &t.device)?;
            Ok(Accepted::Telemetry(t))
        }
        Channel::Status => {
            let s: DeviceStatus = decode(payload).map_err(payload_rejection)?;
            check_origin(&topic, &s.site, &s.device)?;
            Ok(Accepted::Status(s))
        }
        // Not subscribed by the hub; here only if the subscriptions change.
        other => Err(Rejection {
            reason: RejectReason::Topic,
            detail: format!("the hub does not ingest the `{other}` channel"),
        }),
    }
}

pub struct Ingest<S: Store> {
    link: BrokerLink,
    store: Arc<S>,
    metrics: Arc<Metrics>,
    limiter: LogLimiter,
}

impl<S: Store> Ingest<S> {
    pub fn new(link: BrokerLink, store: Arc<S>, metrics: Arc<Metrics>) -> Self {
        Ingest {
            link,
            store,
            metrics,
            limiter: LogLimiter::new(REJECT_LOGS_PER_WINDOW, REJECT_LOG_WINDOW),
        }
    }

    /// Runs until `shutdown` resolves, then drains what the link already holds and flushes.
    /// Stop the MQTT server before resolving `shutdown` so the drain sees everything.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), IngestError> {
        tokio::pin!(shutdown);
        loop {
            let batch = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                r = self.link.recv_batch(MAX_BATCH) => r?,
            };
            self.handle(batch).await;
            // Only now, with the batch durable, may the router send more.
            self.link.release().await?;
        }
        let rest = self.link.try_recv_batch(MAX_DRAIN)?;
        if !rest.is_empty() {
            tracing::info!(
                count = rest.len(),
                "draining buffered messages before shutdown"
            );
            for chunk in rest.chunks(MAX_BATCH) {
                self.handle(chunk.to_vec()).await;
            }
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "final store flush failed");
        }
        Ok(())
    }

    async fn handle(&mut self, messages: Vec<InboundMessage>) {
        if messages.is_empty() {
            return;
        }
        let received_ms = csb_wire::now_ms();
        let mut batch = WriteBatch::default();
        for m in &messages {
            match classify(&m.topic, &m.payload) {
                Ok(Accepted::Event(e)) => batch.events.push(e),
                Ok(Accepted::Telemetry(t)) => batch.telemetry.push(t),
                Ok(Accepted::Status(s)) => batch.statuses.push((s, received_ms)),
                Err(r) => self.reject(&m.topic, &r),
            }
        }
        if batch.is_empty() {
            return;
        }
        let (n_tel, n_status) = (batch.telemetry.len() as u64, batch.statuses.len() as u64);
        let total = batch.events.len() as u64 + n_tel + n_status;
        for attempt in 1..=STORE_ATTEMPTS {
            match self.store.write(batch.clone()).await {
                Ok(out) => {
                    self.metrics.add_events_accepted(out.events_inserted);
                    self.metrics
                        .add_events_duplicate(out.events_duplicate.len() as u64);
                    self.metrics.add_telemetry_accepted(n_tel);
                    self.metrics.add_status_accepted(n_status);
                    if !out.events_duplicate.is_empty() {
                        // Expected after agent reconnects; debug only, the counter shows volume.
                        let ids = &out.events_duplicate;
                        tracing::debug!(?ids, "duplicate events not stored again");
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(attempt, of = STORE_ATTEMPTS, error = %e, "store write failed");
                    if attempt < STORE_ATTEMPTS {
                        tokio::time::sleep(Duration::from_millis(100 << (2 * attempt))).await;
                    }
                }
            }
        }
        // The broker already acknowledged these to the devices; we cannot hand them back.
        self.metrics.add_store_failed(total);
        tracing::error!(
            messages = total,
            "dropped a batch after {STORE_ATTEMPTS} failed store writes"
        );
    }

    fn reject(&mut self, topic: &[u8], r: &Rejection) {
        self.metrics.reject(r.reason);
        if let Some(suppressed) = self.limiter.allow(Instant::now()) {
            let topic = String::from_utf8_lossy(topic);
            tracing::warn!(
                topic = %clip(&topic),
                reason = r.reason.as_str(),
                error = %clip(&r.detail),
                suppressed_since_last = suppressed,
                "rejected message"
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
    use crate::store::tests::event;

    const T0: i64 = 1_790_000_000_000;

    fn reason(topic: &str, payload: &[u8]) -> RejectReason {
        classify(topic.as_bytes(), payload).unwrap_err().reason
    }

    #[test]
    fn accepts_valid_event() {
        let e = event("gw-01", "cam-01", T0, &[(0, "person")]);
        let got = classify(
            b"csb/v1/yuexi/gw-01/event",
            &serde_json::to_vec(&e).unwrap(),
        )
        .unwrap();
        assert_eq!(got, Accepted::Event(e));
    }

    #[test]
    fn rejection_reasons() {
        let e = event("gw-01", "cam-01", T0, &[(0, "person")]);
        let good = serde_json::to_vec(&e).unwrap();
        assert_eq!(
            reason("csb/v1/yuexi/gw-01/event", b"{\"v\":1,"),
            RejectReason::Json
        );
        let mut v = serde_json::to_value(&e).unwrap();
        v["v"] = 2.into();
        assert_eq!(
            reason("csb/v1/yuexi/gw-01/event", v.to_string().as_bytes()),
            RejectReason::Version
        );
        let mut bad = e.clone();
        bad.objects[0].score = 1.5;
        let r = classify(
            b"csb/v1/yuexi/gw-01/event",
            &serde_json::to_vec(&bad).unwrap(),
        )
        .unwrap_err();
        assert_eq!(r.reason, RejectReason::Field);
        assert!(r.detail.contains("objects[0].score"), "{}", r.detail);
        assert_eq!(
            reason("csb/v1/yuexi/gw-02/event", &good),
            RejectReason::TopicMismatch
        );
        assert_eq!(
            reason("csb/v1/other/gw-01/event", &good),
            RejectReason::TopicMismatch
        );
        assert_eq!(
            reason("csb/v1/yu exi/gw-01/event", &good),
            RejectReason::Topic
        );
        assert_eq!(reason("csb/v1/yuexi/gw-01/cmd", &good), RejectReason::Topic);
        assert_eq!(
            classify(b"csb/v1/\xff/gw-01/event", &good)
                .unwrap_err()
                .reason,
            RejectReason::Topic
        );
        // An event payload on the telemetry channel is not telemetry.
        assert_eq!(
            reason("csb/v1/yuexi/gw-01/telemetry", &good),
            RejectReason::Json
        );
    }

    #[test]
    fn clip_respects_char_boundaries() {
        let s = "é".repeat(LOG_TEXT_MAX + 10);
        assert_eq!(clip(&s).chars().count(), LOG_TEXT_MAX);
        assert_eq!(clip("short"), "short");
    }
}
