//! Ingest counters, shared by the ingest loop (writer) and the API (reader).
//!
//! Plain atomics: one writer, a handful of readers, no need for a metrics framework. The same
//! numbers feed `/api/v1/health` (JSON) and `/metrics` (Prometheus text).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::store::StoreStats;

/// Why an inbound message was refused. Names are stable: they are metric labels and API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Not JSON, or JSON missing/mistyping a field.
    Json,
    /// Unsupported schema version `v`.
    Version,
    /// A field failed validation (range, format, identifier).
    Field,
    /// The topic is not a valid device topic for a channel the hub ingests.
    Topic,
    /// The payload's site/device differ from the topic's.
    TopicMismatch,
}

impl RejectReason {
    pub const ALL: [RejectReason; 5] = [
        RejectReason::Json,
        RejectReason::Version,
        RejectReason::Field,
        RejectReason::Topic,
        RejectReason::TopicMismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Json => "json",
            RejectReason::Version => "version",
            RejectReason::Field => "field",
            RejectReason::Topic => "topic",
            RejectReason::TopicMismatch => "topic_mismatch",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    events_accepted: AtomicU64,
    events_duplicate: AtomicU64,
    telemetry_accepted: AtomicU64,
    status_accepted: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    /// Valid messages lost because the store kept failing (see `ingest`).
    store_failed: AtomicU64,
}

/// A point-in-time copy of [`Metrics`], shaped for the health JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngestSnapshot {
    pub events_accepted: u64,
    pub events_duplicate: u64,
    pub telemetry_accepted: u64,
    pub status_accepted: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
    pub store_failed: u64,
}

impl Metrics {
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
    pub fn add_store_failed(&self, n: u64) {
        self.store_failed.fetch_add(n, Relaxed);
    }
    pub fn reject(&self, reason: RejectReason) {
        self.rejected[reason.index()].fetch_add(1, Relaxed);
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
            status_accepted: self.status_accepted.load(Relaxed),
            rejected: by_reason.values().sum(),
            rejected_by_reason: by_reason,
            store_failed: self.store_failed.load(Relaxed),
        }
    }
}

/// Prometheus text exposition (format 0.0.4) of the ingest counters and store sizes.
pub fn render_prometheus(
    ingest: &IngestSnapshot,
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
        "csb_hub_status_accepted_total",
        "counter",
        "Device status messages validated and stored.",
        &[("", ingest.status_accepted)],
    );
    let labels: Vec<(String, u64)> = ingest
        .rejected_by_reason
        .iter()
        .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n))
        .collect();
    let samples: Vec<(&str, u64)> = labels.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    metric(
        "csb_hub_rejected_total",
        "counter",
        "Inbound messages refused, by reason.",
        &samples,
    );
    metric(
        "csb_hub_store_failed_total",
        "counter",
        "Valid messages dropped because the store failed repeatedly.",
        &[("", ingest.store_failed)],
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
        m.reject(RejectReason::Json);
        m.reject(RejectReason::Json);
        m.reject(RejectReason::TopicMismatch);
        m.add_events_accepted(3);
        let s = m.snapshot();
        assert_eq!(s.rejected, 3);
        assert_eq!(s.rejected_by_reason["json"], 2);
        assert_eq!(s.rejected_by_reason["topic_mismatch"], 1);
        assert_eq!(s.rejected_by_reason["version"], 0);
        assert_eq!(s.events_accepted, 3);
    }

    #[test]
    fn prometheus_text() {
        let m = Metrics::default();
        m.reject(RejectReason::Field);
        let text = render_prometheus(
            &m.snapshot(),
            Some(&StoreStats {
                events: 7,
                telemetry: 0,
                devices: 1,
            }),
            Duration::from_secs(5),
        );
        assert!(
            text.contains("# TYPE csb_hub_rejected_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("csb_hub_rejected_total{reason=\"field\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("csb_hub_rejected_total{reason=\"json\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("csb_hub_stored_events 7\n"), "{text}");
        assert!(text.contains("csb_hub_uptime_seconds 5\n"), "{text}");
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            v.parse::<u64>().unwrap();
        }
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
