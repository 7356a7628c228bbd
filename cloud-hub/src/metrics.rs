//! Ingest and evidence-upload counters, shared by the ingest loop and the API.
//!
//! Plain atomics: one writer, a handful of readers, no need for a metrics framework. The same
//! numbers feed `/api/v1/health` (JSON) and `/metrics` (Prometheus text).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::mqtt::front::{FrontCounters, FrontSnapshot, Refused};
use crate::mqtt::probe::HealthSnapshot;
use crate::store::StoreStats;

/// Why an inbound message was refused (and quarantined). Names are stable: they are metric
/// labels, API keys and the `reason` of quarantine entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Larger than `ingest_max_payload_bytes`.
    Oversized,
    /// Not JSON at all: not UTF-8, a syntax error, or cut short (truncated).
    NotJson,
    /// JSON, but not the message its channel carries: a field missing, of the wrong type, or
    /// failing validation (range, format, identifier). The detail names the field.
    Schema,
    /// Unsupported schema version `v`.
    Version,
    /// Not a device topic of a channel the hub ingests (`csb/v1/{site}/{device}/event`,
    /// `telemetry` or `status`): another prefix or version, an unknown channel, a bad level.
    BadTopic,
    /// The payload's site/device differ from the topic's.
    DeviceMismatch,
    /// With `auth.devices = "required"`: the payload is unsigned, or its signature is not the
    /// one of the device the topic names (or that device has no credentials). Never acked.
    Spoofed,
}

impl RejectReason {
    pub const ALL: [RejectReason; 7] = [
        RejectReason::Oversized,
        RejectReason::NotJson,
        RejectReason::Schema,
        RejectReason::Version,
        RejectReason::BadTopic,
        RejectReason::DeviceMismatch,
        RejectReason::Spoofed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Oversized => "oversized",
            RejectReason::NotJson => "not_json",
            RejectReason::Schema => "schema",
            RejectReason::Version => "version",
            RejectReason::BadTopic => "bad_topic",
            RejectReason::DeviceMismatch => "device_mismatch",
            RejectReason::Spoofed => "spoofed",
        }
    }

    /// The reason named `s` (as [`RejectReason::as_str`] writes it).
    pub fn parse(s: &str) -> Option<RejectReason> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why an evidence snapshot upload was refused. Names are stable: metric labels and API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UploadReject {
    /// The id in the path is not a ULID.
    BadId,
    /// `X-Csb-Device` missing or malformed, or `X-Csb-Event` malformed.
    BadHeader,
    /// A `Content-Type` other than `image/jpeg`.
    ContentType,
    Empty,
    /// Larger than `snapshot_max_bytes`.
    TooLarge,
    /// Does not start with the JPEG magic bytes.
    NotJpeg,
    /// The body could not be read (client went away mid-upload).
    Body,
    /// Different bytes are already stored under the id.
    Conflict,
}

impl UploadReject {
    pub const ALL: [UploadReject; 8] = [
        UploadReject::BadId,
        UploadReject::BadHeader,
        UploadReject::ContentType,
        UploadReject::Empty,
        UploadReject::TooLarge,
        UploadReject::NotJpeg,
        UploadReject::Body,
        UploadReject::Conflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UploadReject::BadId => "bad_id",
            UploadReject::BadHeader => "bad_header",
            UploadReject::ContentType => "content_type",
            UploadReject::Empty => "empty",
            UploadReject::TooLarge => "too_large",
            UploadReject::NotJpeg => "not_jpeg",
            UploadReject::Body => "body",
            UploadReject::Conflict => "conflict",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why an HTTP request was refused by `[auth] http = "required"`. Names are stable: metric
/// labels and API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpAuthRefusal {
    /// No `Authorization` header (401).
    MissingToken,
    /// An `Authorization` header that is not `Bearer <token>` (401).
    MalformedToken,
    /// A bearer token that was never issued or has been revoked (401).
    UnknownToken,
    /// A valid token whose role is below the one the request needs (403).
    InsufficientRole,
    /// An evidence upload without `X-Csb-Signature`, or with one that is not 64 hex (401).
    UploadUnsigned,
    /// An evidence upload from a device without credentials in devices.json (401).
    UploadUnknownDevice,
    /// An evidence upload whose signature is not its device's (401).
    UploadBadSignature,
}

impl HttpAuthRefusal {
    pub const ALL: [HttpAuthRefusal; 7] = [
        HttpAuthRefusal::MissingToken,
        HttpAuthRefusal::MalformedToken,
        HttpAuthRefusal::UnknownToken,
        HttpAuthRefusal::InsufficientRole,
        HttpAuthRefusal::UploadUnsigned,
        HttpAuthRefusal::UploadUnknownDevice,
        HttpAuthRefusal::UploadBadSignature,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HttpAuthRefusal::MissingToken => "missing_token",
            HttpAuthRefusal::MalformedToken => "malformed_token",
            HttpAuthRefusal::UnknownToken => "unknown_token",
            HttpAuthRefusal::InsufficientRole => "insufficient_role",
            HttpAuthRefusal::UploadUnsigned => "upload_unsigned",
            HttpAuthRefusal::UploadUnknownDevice => "upload_unknown_device",
            HttpAuthRefusal::UploadBadSignature => "upload_bad_signature",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// HTTP access counters, shaped for the health JSON's `http_auth` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpAuthCounters {
    pub refused: u64,
    pub refused_by_reason: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    events_accepted: AtomicU64,
    events_duplicate: AtomicU64,
    telemetry_accepted: AtomicU64,
    status_accepted: AtomicU64,
    telemetry_duplicate: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    /// Valid messages lost because the store kept failing (see `ingest`).
    store_failed: AtomicU64,
    /// Batches written (one store write and flush each).
    batches: AtomicU64,
    /// Ack messages handed to the broker, and the ids they carried.
    acks_sent: AtomicU64,
    acked_ids: AtomicU64,
    /// Ack messages the broker could not take at once (see `broker::BrokerLink::publish`).
    ack_publish_failed: AtomicU64,
    /// Rejected messages whose quarantine entry could not be stored.
    quarantine_failed: AtomicU64,
    /// Old quarantine entries removed to stay within `quarantine_max_entries`.
    quarantine_pruned: AtomicU64,
    snapshots_stored: AtomicU64,
    snapshots_identical: AtomicU64,
    snapshot_bytes_stored: AtomicU64,
    snapshots_served: AtomicU64,
    upload_rejected: [AtomicU64; UploadReject::ALL.len()],
    /// Valid uploads answered with an error because the store failed.
    snapshot_store_failed: AtomicU64,
    /// The MQTT front's connections and refusals (shared with the front).
    pub mqtt: Arc<FrontCounters>,
    http_auth_refused: [AtomicU64; HttpAuthRefusal::ALL.len()],
}

/// Evidence upload counters, shaped for the health JSON's `evidence` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvidenceCounters {
    /// Uploads stored (201).
    pub uploads_stored: u64,
    /// Re-uploads of an identical, already stored snapshot (200).
    pub uploads_identical: u64,
    pub bytes_stored: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
    pub store_failed: u64,
    /// Snapshots sent to API clients.
    pub served: u64,
}

/// A point-in-time copy of [`Metrics`], shaped for the health JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngestSnapshot {
    pub events_accepted: u64,
    pub events_duplicate: u64,
    pub telemetry_accepted: u64,
    pub telemetry_duplicate: u64,
    pub status_accepted: u64,
    /// Every rejected message is also quarantined (unless `quarantine_failed`).
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
    pub store_failed: u64,
    pub batches: u64,
    pub acks_sent: u64,
    pub acked_ids: u64,
    pub ack_publish_failed: u64,
    pub quarantine_failed: u64,
    pub quarantine_pruned: u64,
    /// MQTT CONNECTs refused for a wrong secret or an unknown device (`auth.devices =
    /// "required"`); CONNECTs without any login are `mqtt.refused_by_reason.no_credentials`.
    pub auth_refused: u64,
    /// MQTT-over-TLS connections refused before MQTT (`[mqtt_tls]`): failed handshakes (plain
    /// MQTT on the TLS port among them), handshakes not finished in time, and connections closed
    /// at once because `mqtt_max_connections` were already waiting for their CONNECT.
    pub tls_handshakes_failed: u64,
    pub tls_handshakes_timed_out: u64,
    pub tls_over_capacity: u64,
}

/// The `mqtt` section of `/api/v1/health`: the front's connections and refusals, and what the
/// broker's self-probe last saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MqttSnapshot {
    #[serde(flatten)]
    pub front: FrontSnapshot,
    pub broker: Option<HealthSnapshot>,
}

impl Metrics {
    pub fn mqtt(&self, broker: Option<HealthSnapshot>) -> MqttSnapshot {
        MqttSnapshot {
            front: self.mqtt.snapshot(),
            broker,
        }
    }

    pub fn add_events_accepted(&self, n: u64) {
        self.events_accepted.fetch_add(n, Relaxed);
    }
    pub fn add_events_duplicate(&self, n: u64) {
        self.events_duplicate.fetch_add(n, Relaxed);
    }
    pub fn add_telemetry_accepted(&self, n: u64) {
        self.telemetry_accepted.fetch_add(n, Relaxed);
    }
    pub fn add_status_accepted(&self, n: u64) {
        self.status_accepted.fetch_add(n, Relaxed);
    }
    pub fn add_telemetry_duplicate(&self, n: u64) {
        self.telemetry_duplicate.fetch_add(n, Relaxed);
    }
    pub fn add_batch(&self) {
        self.batches.fetch_add(1, Relaxed);
    }
    pub fn add_ack_sent(&self, ids: u64) {
        self.acks_sent.fetch_add(1, Relaxed);
        self.acked_ids.fetch_add(ids, Relaxed);
    }
    pub fn add_ack_publish_failed(&self) {
        self.ack_publish_failed.fetch_add(1, Relaxed);
    }
    pub fn add_quarantine_failed(&self, n: u64) {
        self.quarantine_failed.fetch_add(n, Relaxed);
    }
    pub fn add_quarantine_pruned(&self, n: u64) {
        self.quarantine_pruned.fetch_add(n, Relaxed);
    }
    pub fn add_store_failed(&self, n: u64) {
        self.store_failed.fetch_add(n, Relaxed);
    }
    pub fn reject(&self, reason: RejectReason) {
        self.rejected[reason.index()].fetch_add(1, Relaxed);
    }
    pub fn add_snapshot_stored(&self, bytes: u64) {
        self.snapshots_stored.fetch_add(1, Relaxed);
        self.snapshot_bytes_stored.fetch_add(bytes, Relaxed);
    }
    pub fn add_snapshot_identical(&self) {
        self.snapshots_identical.fetch_add(1, Relaxed);
    }
    pub fn add_snapshot_served(&self) {
        self.snapshots_served.fetch_add(1, Relaxed);
    }
    pub fn add_snapshot_store_failed(&self) {
        self.snapshot_store_failed.fetch_add(1, Relaxed);
    }
    pub fn reject_upload(&self, reason: UploadReject) {
        self.upload_rejected[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn refuse_http(&self, reason: HttpAuthRefusal) {
        self.http_auth_refused[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn http_auth(&self) -> HttpAuthCounters {
        let by_reason: BTreeMap<_, _> = HttpAuthRefusal::ALL
            .iter()
            .map(|r| (r.as_str(), self.http_auth_refused[r.index()].load(Relaxed)))
            .collect();
        HttpAuthCounters {
            refused: by_reason.values().sum(),
            refused_by_reason: by_reason,
        }
    }

    pub fn evidence(&self) -> EvidenceCounters {
        let by_reason: BTreeMap<_, _> = UploadReject::ALL
            .iter()
            .map(|r| (r.as_str(), self.upload_rejected[r.index()].load(Relaxed)))
            .collect();
        EvidenceCounters {
            uploads_stored: self.snapshots_stored.load(Relaxed),
            uploads_identical: self.snapshots_identical.load(Relaxed),
            bytes_stored: self.snapshot_bytes_stored.load(Relaxed),
            rejected: by_reason.values().sum(),
            rejected_by_reason: by_reason,
            store_failed: self.snapshot_store_failed.load(Relaxed),
            served: self.snapshots_served.load(Relaxed),
        }
    }

    pub fn snapshot(&self) -> IngestSnapshot {
        let by_reason: BTreeMap<_, _> = RejectReason::ALL
            .iter()
            .map(|r| (r.as_str(), self.rejected[r.index()].load(Relaxed)))
            .collect();
        IngestSnapshot {
            events_accepted: self.events_accepted.load(Relaxed),
            events_duplicate: self.events_duplicate.load(Relaxed),
            telemetry_accepted: self.telemetry_accepted.load(Relaxed),
            telemetry_duplicate: self.telemetry_duplicate.load(Relaxed),
            status_accepted: self.status_accepted.load(Relaxed),
            rejected: by_reason.values().sum(),
            rejected_by_reason: by_reason,
            store_failed: self.store_failed.load(Relaxed),
            batches: self.batches.load(Relaxed),
            acks_sent: self.acks_sent.load(Relaxed),
            acked_ids: self.acked_ids.load(Relaxed),
            ack_publish_failed: self.ack_publish_failed.load(Relaxed),
            quarantine_failed: self.quarantine_failed.load(Relaxed),
            quarantine_pruned: self.quarantine_pruned.load(Relaxed),
            auth_refused: self.mqtt.refused(Refused::BadCredentials)
                + self.mqtt.refused(Refused::UnknownDevice),
            tls_handshakes_failed: self
                .mqtt
                .refused(Refused::TlsHandshake)
                .saturating_sub(self.mqtt.tls_handshakes_timed_out.load(Relaxed)),
            tls_handshakes_timed_out: self.mqtt.tls_handshakes_timed_out.load(Relaxed),
            tls_over_capacity: self.mqtt.refused(Refused::TooManyPending),
        }
    }
}

/// Prometheus text exposition (format 0.0.4) of the ingest and evidence counters and store sizes.
pub fn render_prometheus(
    ingest: &IngestSnapshot,
    evidence: &EvidenceCounters,
    http_auth: &HttpAuthCounters,
    mqtt: &MqttSnapshot,
    store: Option<&StoreStats>,
    uptime: Duration,
) -> String {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    metric(
        "csb_hub_events_accepted_total",
        "counter",
        "Events validated and stored.",
        &[("", ingest.events_accepted)],
    );
    metric(
        "csb_hub_events_duplicate_total",
        "counter",
        "Events whose id was already stored; not stored again.",
        &[("", ingest.events_duplicate)],
    );
    metric(
        "csb_hub_telemetry_accepted_total",
        "counter",
        "Telemetry messages validated and stored.",
        &[("", ingest.telemetry_accepted)],
    );
    metric(
        "csb_hub_telemetry_duplicate_total",
        "counter",
        "Telemetry messages whose id was already stored; not stored again.",
        &[("", ingest.telemetry_duplicate)],
    );
    metric(
        "csb_hub_status_accepted_total",
        "counter",
        "Device status messages validated and stored.",
        &[("", ingest.status_accepted)],
    );
    let reason_labels = |by_reason: &BTreeMap<&str, u64>| -> Vec<(String, u64)> {
        by_reason
            .iter()
            .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n))
            .collect()
    };
    let labels = reason_labels(&ingest.rejected_by_reason);
    let samples: Vec<(&str, u64)> = labels.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    metric(
        "csb_hub_rejected_total",
        "counter",
        "Inbound messages refused and quarantined, by reason.",
        &samples,
    );
    metric(
        "csb_hub_quarantine_failed_total",
        "counter",
        "Refused messages whose quarantine entry could not be stored.",
        &[("", ingest.quarantine_failed)],
    );
    metric(
        "csb_hub_quarantine_pruned_total",
        "counter",
        "Oldest quarantine entries removed to stay within quarantine_max_entries.",
        &[("", ingest.quarantine_pruned)],
    );
    metric(
        "csb_hub_auth_refused_total",
        "counter",
        "MQTT connections refused for a wrong device user name or password.",
        &[("", ingest.auth_refused)],
    );
    metric(
        "csb_hub_mqtt_tls_refused_total",
        "counter",
        "MQTT-over-TLS connections refused before MQTT, by reason.",
        &[
            (
                "{reason=\"handshake_failed\"}",
                ingest.tls_handshakes_failed,
            ),
            (
                "{reason=\"handshake_timeout\"}",
                ingest.tls_handshakes_timed_out,
            ),
            ("{reason=\"over_capacity\"}", ingest.tls_over_capacity),
        ],
    );
    metric(
        "csb_hub_mqtt_devices_connected",
        "gauge",
        "Devices with a live MQTT session.",
        &[("", mqtt.front.devices_connected.max(0) as u64)],
    );
    metric(
        "csb_hub_mqtt_max_devices",
        "gauge",
        "mqtt_max_connections: devices that may be connected at once.",
        &[("", mqtt.front.max_devices)],
    );
    metric(
        "csb_hub_mqtt_admitted_total",
        "counter",
        "MQTT sessions admitted (CONNACK 0), takeovers included.",
        &[("", mqtt.front.admitted)],
    );
    let labels = reason_labels(&mqtt.front.refused_by_reason);
    let samples: Vec<(&str, u64)> = labels.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    metric(
        "csb_hub_mqtt_refused_total",
        "counter",
        "MQTT connections refused before a session, by reason.",
        &samples,
    );
    metric(
        "csb_hub_mqtt_takeovers_total",
        "counter",
        "MQTT sessions ended because their client id connected again.",
        &[("", mqtt.front.takeovers)],
    );
    metric(
        "csb_hub_mqtt_wills_total",
        "counter",
        "Last wills of sessions ended without DISCONNECT, by outcome.",
        &[
            ("{result=\"published\"}", mqtt.front.wills_published),
            ("{result=\"failed\"}", mqtt.front.wills_failed),
        ],
    );
    metric(
        "csb_hub_mqtt_acks_routed_total",
        "counter",
        "Acks the MQTT front wrote into device sessions itself, by outcome.",
        &[
            ("{result=\"written\"}", mqtt.front.acks_routed),
            ("{result=\"dropped\"}", mqtt.front.acks_route_dropped),
        ],
    );
    if let Some(b) = &mqtt.broker {
        metric(
            "csb_hub_mqtt_broker_up",
            "gauge",
            "1 while the broker's self-probe gets in through the MQTT listener.",
            &[(
                "",
                u64::from(b.state == crate::mqtt::probe::BrokerState::Ok),
            )],
        );
        metric(
            "csb_hub_mqtt_probes_failed_total",
            "counter",
            "Self-probes of the MQTT listener that were not admitted.",
            &[("", b.probes_failed)],
        );
    }
    metric(
        "csb_hub_ingest_batches_total",
        "counter",
        "Ingest batches written to the store (one flush each).",
        &[("", ingest.batches)],
    );
    metric(
        "csb_hub_acks_sent_total",
        "counter",
        "Ack messages published to devices after a durable write.",
        &[("", ingest.acks_sent)],
    );
    metric(
        "csb_hub_acked_ids_total",
        "counter",
        "Message ids carried by published acks (duplicates included).",
        &[("", ingest.acked_ids)],
    );
    metric(
        "csb_hub_ack_publish_failed_total",
        "counter",
        "Ack messages the broker could not take; the device resends and is acked then.",
        &[("", ingest.ack_publish_failed)],
    );
    metric(
        "csb_hub_store_failed_total",
        "counter",
        "Valid messages dropped because the store failed repeatedly.",
        &[("", ingest.store_failed)],
    );
    metric(
        "csb_hub_snapshots_stored_total",
        "counter",
        "Evidence snapshot uploads stored.",
        &[("", evidence.uploads_stored)],
    );
    metric(
        "csb_hub_snapshots_identical_total",
        "counter",
        "Re-uploads of an identical, already stored evidence snapshot.",
        &[("", evidence.uploads_identical)],
    );
    metric(
        "csb_hub_snapshot_bytes_stored_total",
        "counter",
        "Bytes of evidence snapshots stored.",
        &[("", evidence.bytes_stored)],
    );
    let labels = reason_labels(&evidence.rejected_by_reason);
    let samples: Vec<(&str, u64)> = labels.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    metric(
        "csb_hub_snapshots_rejected_total",
        "counter",
        "Evidence snapshot uploads refused, by reason.",
        &samples,
    );
    metric(
        "csb_hub_snapshot_store_failed_total",
        "counter",
        "Valid evidence uploads answered with an error because the store failed.",
        &[("", evidence.store_failed)],
    );
    metric(
        "csb_hub_snapshots_served_total",
        "counter",
        "Evidence snapshots sent to API clients.",
        &[("", evidence.served)],
    );
    let labels = reason_labels(&http_auth.refused_by_reason);
    let samples: Vec<(&str, u64)> = labels.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    metric(
        "csb_hub_http_auth_refused_total",
        "counter",
        "HTTP requests refused by auth.http = required (401/403), by reason.",
        &samples,
    );
    if let Some(s) = store {
        metric(
            "csb_hub_stored_events",
            "gauge",
            "Events in the store.",
            &[("", s.events)],
        );
        metric(
            "csb_hub_stored_telemetry",
            "gauge",
            "Telemetry records in the store.",
            &[("", s.telemetry)],
        );
        metric(
            "csb_hub_devices",
            "gauge",
            "Devices with a known status.",
            &[("", s.devices)],
        );
        metric(
            "csb_hub_quarantine_entries",
            "gauge",
            "Refused messages kept in the quarantine.",
            &[("", s.quarantine)],
        );
        metric(
            "csb_hub_stored_snapshots",
            "gauge",
            "Evidence snapshots in the store.",
            &[("", s.snapshots)],
        );
        metric(
            "csb_hub_stored_snapshot_bytes",
            "gauge",
            "Bytes of evidence snapshots in the store.",
            &[("", s.snapshot_bytes)],
        );
    }
    metric(
        "csb_hub_uptime_seconds",
        "gauge",
        "Seconds since the hub started.",
        &[("", uptime.as_secs())],
    );
    let version = format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    metric(
        "csb_hub_build_info",
        "gauge",
        "Always 1; the label carries the hub version.",
        &[(version.as_str(), 1)],
    );
    out
}

/// Lets the first `per_window` log lines of each window through, so a flood of bad messages
/// cannot fill the disk with logs; the counters still see every message.
#[derive(Debug)]
pub struct LogLimiter {
    per_window: u32,
    window: Duration,
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(per_window: u32, window: Duration) -> Self {
        LogLimiter {
            per_window,
            window,
            window_start: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` if this line may be logged, `n` being how many were suppressed since the last
    /// logged one (report it so the gap is visible); `None` to stay quiet.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window);
        if fresh {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < self.per_window {
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_reasons() {
        let m = Metrics::default();
        m.reject(RejectReason::NotJson);
        m.reject(RejectReason::NotJson);
        m.reject(RejectReason::DeviceMismatch);
        m.add_events_accepted(3);
        let s = m.snapshot();
        assert_eq!(s.rejected, 3);
        assert_eq!(s.rejected_by_reason["not_json"], 2);
        assert_eq!(s.rejected_by_reason["device_mismatch"], 1);
        assert_eq!(s.rejected_by_reason["version"], 0);
        assert_eq!(s.events_accepted, 3);

        m.reject_upload(UploadReject::TooLarge);
        m.reject_upload(UploadReject::Conflict);
        m.add_snapshot_identical();
        let e = m.evidence();
        assert_eq!(e.rejected, 2);
        assert_eq!(e.rejected_by_reason["too_large"], 1);
        assert_eq!(e.rejected_by_reason["bad_id"], 0);
        assert_eq!(e.uploads_identical, 1);
        assert_eq!(e.uploads_stored, 0);
    }

    #[test]
    fn prometheus_text() {
        let m = Metrics::default();
        m.reject(RejectReason::Schema);
        m.reject_upload(UploadReject::NotJpeg);
        m.add_snapshot_stored(1000);
        m.add_snapshot_stored(500);
        m.refuse_http(HttpAuthRefusal::UnknownToken);
        let text = render_prometheus(
            &m.snapshot(),
            &m.evidence(),
            &m.http_auth(),
            &m.mqtt(None),
            Some(&StoreStats {
                events: 7,
                telemetry: 0,
                devices: 1,
                quarantine: 2,
                snapshots: 3,
                snapshot_bytes: 4096,
            }),
            Duration::from_secs(5),
        );
        assert!(
            text.contains("# TYPE csb_hub_rejected_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("csb_hub_rejected_total{reason=\"schema\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("csb_hub_rejected_total{reason=\"not_json\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("csb_hub_stored_events 7\n"), "{text}");
        assert!(text.contains("csb_hub_quarantine_entries 2\n"), "{text}");
        assert!(
            text.contains("csb_hub_snapshots_rejected_total{reason=\"not_jpeg\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("csb_hub_snapshots_rejected_total{reason=\"too_large\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("csb_hub_snapshots_stored_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("csb_hub_snapshot_bytes_stored_total 1500\n"),
            "{text}"
        );
        assert!(text.contains("csb_hub_stored_snapshots 3\n"), "{text}");
        assert!(
            text.contains("csb_hub_stored_snapshot_bytes 4096\n"),
            "{text}"
        );
        assert!(text.contains("csb_hub_uptime_seconds 5\n"), "{text}");
        assert!(
            text.contains("csb_hub_http_auth_refused_total{reason=\"unknown_token\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("csb_hub_http_auth_refused_total{reason=\"upload_bad_signature\"} 0\n"),
            "{text}"
        );
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            v.parse::<u64>().unwrap();
        }
    }

    #[test]
    fn reason_names_are_stable_and_round_trip() {
        let names: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "oversized",
                "not_json",
                "schema",
                "version",
                "bad_topic",
                "device_mismatch",
                "spoofed"
            ]
        );
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::parse(r.as_str()), Some(r));
            // serde (quarantine entries) writes the same names.
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert_eq!(RejectReason::parse("json"), None);
    }

    #[test]
    fn limiter_bounds_lines_per_window() {
        let mut l = LogLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(59)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(l.allow(t0 + Duration::from_secs(61)), Some(0));
        assert_eq!(l.allow(t0 + Duration::from_secs(62)), None);
    }
}
