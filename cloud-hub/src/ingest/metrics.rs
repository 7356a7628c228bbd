//! Ingest and evidence-upload counters, shared by the ingest loop and the API.
//!
//! Plain atomics: one writer, a handful of readers, no need for a metrics framework. The same
//! numbers feed `/api/v1/health` (JSON) and `/metrics` (Prometheus text).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use std::sync::Arc;

use crate::ingest::mqtt::front::{FrontCounters, FrontSnapshot, Refused};
use crate::ingest::mqtt::probe::HealthSnapshot;
use crate::storage::quarantine::RejectReason;

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
    /// A web session cookie that is unknown, expired, signed out, or whose token was revoked (401).
    UnknownSession,
    /// A write with a session cookie from a page of another origin (403): a forged request.
    CrossOrigin,
    /// `POST /api/v1/provision` with an enrolment token that is unknown, used or expired (401).
    EnrolmentRefused,
    /// A model download signed by a device: no or a bad device header, a timestamp too far from
    /// the hub's clock, a device without credentials, or a wrong signature (401).
    DownloadSignature,
}

impl HttpAuthRefusal {
    pub const ALL: [HttpAuthRefusal; 11] = [
        HttpAuthRefusal::MissingToken,
        HttpAuthRefusal::MalformedToken,
        HttpAuthRefusal::UnknownToken,
        HttpAuthRefusal::InsufficientRole,
        HttpAuthRefusal::UploadUnsigned,
        HttpAuthRefusal::UploadUnknownDevice,
        HttpAuthRefusal::UploadBadSignature,
        HttpAuthRefusal::UnknownSession,
        HttpAuthRefusal::CrossOrigin,
        HttpAuthRefusal::EnrolmentRefused,
        HttpAuthRefusal::DownloadSignature,
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
            HttpAuthRefusal::UnknownSession => "unknown_session",
            HttpAuthRefusal::CrossOrigin => "cross_origin",
            HttpAuthRefusal::EnrolmentRefused => "enrolment_refused",
            HttpAuthRefusal::DownloadSignature => "download_signature",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// HTTP access counters, shaped for the health JSON's `http_auth` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
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
    /// Commands published to agents (each resend counted), and those the broker refused.
    commands_sent: AtomicU64,
    command_publish_failed: AtomicU64,
    /// Valid command replies handed to the workflow, and those it had no room for.
    replies: AtomicU64,
    replies_dropped: AtomicU64,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
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
    /// Commands published to agents (each resend counted), and those the broker refused.
    pub commands_sent: u64,
    pub command_publish_failed: u64,
    /// Valid command replies handed to the case workflow, and those dropped because it was
    /// busy (the command is sent again, and answered again).
    pub replies: u64,
    pub replies_dropped: u64,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
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
    pub fn add_command(&self, published: bool) {
        if published {
            &self.commands_sent
        } else {
            &self.command_publish_failed
        }
        .fetch_add(1, Relaxed);
    }
    pub fn add_reply(&self, taken: bool) {
        if taken {
            &self.replies
        } else {
            &self.replies_dropped
        }
        .fetch_add(1, Relaxed);
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
            commands_sent: self.commands_sent.load(Relaxed),
            command_publish_failed: self.command_publish_failed.load(Relaxed),
            replies: self.replies.load(Relaxed),
            replies_dropped: self.replies_dropped.load(Relaxed),
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
}
