//! `/metrics`: the Prometheus text exposition of the hub's counters and store sizes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use aide::transform::TransformOperation;
use axum::extract::State;
use axum::http::header;

use crate::http::openapi::{content, respond, viewer};
use crate::http::state::{store_call, ApiState};
use crate::ingest::metrics::{EvidenceCounters, HttpAuthCounters, IngestSnapshot, MqttSnapshot};
use crate::storage::store::{LogHealth, Store, StoreHealth, StoreStats};

/// The content type of the Prometheus text exposition format 0.0.4.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) fn metrics_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("metrics")
        .tag("operations")
        .summary("Prometheus metrics (text exposition 0.0.4)");
    viewer(respond(
        op,
        200,
        content(
            "Every counter, the store's sizes and the twin's counters",
            "text/plain",
            schemars::json_schema!({"type": "string"}),
        ),
    ))
}

/// `GET /metrics`: every counter and the store's sizes (when the store answers), and the twin's.
pub(crate) async fn metrics<S: Store>(
    State(st): State<ApiState<S>>,
) -> ([(header::HeaderName, &'static str); 1], String) {
    let stats = store_call(&st.store_slots, "store stats", st.store.stats())
        .await
        .ok();
    let mut text = render_prometheus(
        &st.metrics.snapshot(),
        &st.metrics.evidence(),
        &st.metrics.http_auth(),
        &st.metrics.mqtt(st.broker.as_ref().map(|b| b.snapshot())),
        stats.as_ref(),
        st.started.elapsed(),
    );
    text.push_str(&render_store_health(
        &st.store.health(),
        st.store.index_bytes(),
    ));
    if let Some(t) = &st.twin {
        text.push_str(&t.counters.render_prometheus());
    }
    if let Some(c) = &st.cases {
        text.push_str(&c.counters.render_prometheus());
    }
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text)
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
        "csb_hub_mqtt_oversized_packets_total",
        "counter",
        "MQTT sessions closed for a packet over mqtt_max_payload_bytes.",
        &[("", mqtt.front.oversized_packets)],
    );
    metric(
        "csb_hub_mqtt_subscriptions_denied_total",
        "counter",
        "SUBSCRIBE filters refused (SUBACK 0x80): a device reaching past its own ack and cmd topics.",
        &[("", mqtt.front.subscriptions_denied)],
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
                u64::from(b.state == crate::ingest::mqtt::probe::BrokerState::Ok),
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
        "csb_hub_commands_sent_total",
        "counter",
        "Commands published to agents (AI re-checks; each resend counted).",
        &[("", ingest.commands_sent)],
    );
    metric(
        "csb_hub_command_publish_failed_total",
        "counter",
        "Commands the broker could not take; sent again at the next interval.",
        &[("", ingest.command_publish_failed)],
    );
    metric(
        "csb_hub_command_replies_total",
        "counter",
        "Valid command replies from agents handed to the case workflow.",
        &[("", ingest.replies)],
    );
    metric(
        "csb_hub_command_replies_dropped_total",
        "counter",
        "Command replies dropped because the case workflow was busy (the command is resent).",
        &[("", ingest.replies_dropped)],
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

/// Prometheus text of the store's health: free space on the data volume, write failures, the
/// record logs' size and what retention dropped, the index memory.
pub fn render_store_health(h: &StoreHealth, index_bytes: u64) -> String {
    let mut out = String::with_capacity(1024);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    if let Some(free) = h.free_bytes {
        metric(
            "csb_hub_store_free_bytes",
            "gauge",
            "Bytes free for the hub on the data directory's volume.",
            &[("", free)],
        );
    }
    metric(
        "csb_hub_store_write_failures_total",
        "counter",
        "Store writes (batches and evidence) that failed; ingest retries a batch, each try counts.",
        &[("", h.write_failures)],
    );
    metric(
        "csb_hub_store_writes_failing",
        "gauge",
        "1 while the last store write failed (health is degraded), by kind.",
        &[
            ("{kind=\"batch\"}", u64::from(h.writes_failing.is_some())),
            (
                "{kind=\"evidence\"}",
                u64::from(h.evidence_writes_failing.is_some()),
            ),
        ],
    );
    let logs = [("events", &h.events_log), ("telemetry", &h.telemetry_log)];
    let labels: Vec<String> = logs
        .iter()
        .map(|(l, _)| format!("{{log=\"{l}\"}}"))
        .collect();
    let samples = |f: fn(&LogHealth) -> u64| -> Vec<(&str, u64)> {
        labels
            .iter()
            .zip(&logs)
            .map(|(l, (_, h))| (l.as_str(), f(h)))
            .collect()
    };
    metric(
        "csb_hub_log_disk_bytes",
        "gauge",
        "Bytes of a record log's segment and index files.",
        &samples(|h| h.disk_bytes),
    );
    metric(
        "csb_hub_log_retention_dropped_segments_total",
        "counter",
        "Record log segments dropped by retention (age or size).",
        &samples(|h| h.retention.segments_dropped),
    );
    metric(
        "csb_hub_log_retention_dropped_bytes_total",
        "counter",
        "Bytes of record log segments dropped by retention.",
        &samples(|h| h.retention.bytes_dropped),
    );
    metric(
        "csb_hub_index_bytes",
        "gauge",
        "Memory the record logs' indexes hold (an estimate).",
        &[("", index_bytes)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::metrics::{HttpAuthRefusal, Metrics, UploadReject};
    use crate::storage::quarantine::RejectReason;

    #[test]
    fn store_health_gauges() {
        let mut h = StoreHealth {
            free_bytes: Some(4096),
            write_failures: 3,
            writes_failing: Some("store: writes failing: No space left on device".into()),
            ..StoreHealth::default()
        };
        h.telemetry_log.retention.segments_dropped = 2;
        h.telemetry_log.retention.bytes_dropped = 1 << 27;
        let text = render_store_health(&h, 77);
        for want in [
            "csb_hub_store_free_bytes 4096\n",
            "csb_hub_store_write_failures_total 3\n",
            "csb_hub_store_writes_failing{kind=\"batch\"} 1\n",
            "csb_hub_store_writes_failing{kind=\"evidence\"} 0\n",
            "csb_hub_log_retention_dropped_segments_total{log=\"telemetry\"} 2\n",
            "csb_hub_log_retention_dropped_segments_total{log=\"events\"} 0\n",
            "csb_hub_log_retention_dropped_bytes_total{log=\"telemetry\"} 134217728\n",
            "csb_hub_index_bytes 77\n",
            "# TYPE csb_hub_store_write_failures_total counter\n",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        h.free_bytes = None;
        assert!(!render_store_health(&h, 0).contains("free_bytes"));
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
}
