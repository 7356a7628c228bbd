//! Hub configuration: one flat TOML file, every key optional, unknown keys rejected.
//!
//! Loading errors name the file, and toml's own message names the line, column and key, so an
//! operator can fix the file without reading code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The example file shipped with the crate; a test keeps it equal to [`HubConfig::default`].
pub const EXAMPLE_CONFIG: &str = include_str!("../../configs/hub.example.toml");

/// Bounds of `snapshot_max_bytes`: a useful JPEG is never below 1 KiB, and a request body is
/// held in memory while it is checked and stored, so it must stay modest.
const MIN_SNAPSHOT_BYTES: usize = 1024;
const MAX_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;
/// An entry is at most ~6 KiB on disk, so this caps the quarantine at some 60 GiB.
const MAX_QUARANTINE_ENTRIES: u64 = 10_000_000;
/// Smallest size bound of a record log, in segments: retention drops whole segments, so a
/// smaller bound would keep hardly more than the segment being written.
pub const MIN_LOG_RETENTION_SEGMENTS: u64 = 4;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Where the embedded MQTT broker listens (MQTT 3.1.1, plain TCP); port 0 picks a free one
    /// (the ready line shows it).
    pub mqtt_addr: SocketAddr,
    /// Where the REST API listens. The binary binds it; `serve` takes the bound listener.
    pub http_addr: SocketAddr,
    /// sled database directory, evidence JPEGs under its `snapshots/`; created if missing. One
    /// hub per directory (sled locks it).
    pub data_dir: PathBuf,
    /// Largest MQTT packet accepted; bigger ones make the broker drop the connection. Keep it
    /// above `ingest_max_payload_bytes`, so oversized payloads reach the quarantine (and get
    /// acked) instead of costing the sender its connection on every resend.
    pub mqtt_max_payload_bytes: usize,
    /// Devices connected over MQTT at once (the hub's own links do not count). Device N+1 is
    /// refused with CONNACK 3 (server unavailable) until one leaves. Each costs three file
    /// descriptors; `serve` raises its limit as far as the system allows.
    pub mqtt_max_connections: usize,
    /// QoS 1/2 publishes a client may have unacknowledged at once.
    pub mqtt_max_inflight: usize,
    /// How long a new TCP connection may take to send its MQTT CONNECT.
    pub mqtt_connect_timeout_ms: u16,
    /// How often the broker's self-probe connects through the MQTT listener. Three failed
    /// probes in a row (retried every second) make the hub report the broker failed and stop
    /// with an error, for its supervisor to restart it.
    pub mqtt_probe_interval_ms: u64,
    /// sled page cache; sled's own default is 1 GiB, too much for a small county server.
    pub store_cache_mb: u64,
    /// Largest event/telemetry/status payload ingest accepts; bigger ones are quarantined with
    /// reason `oversized`.
    pub ingest_max_payload_bytes: usize,
    /// Quarantine entries kept (refused messages, each with at most 4 KiB of its payload); the
    /// oldest are pruned beyond this.
    pub quarantine_max_entries: u64,
    /// Largest evidence snapshot (JPEG) accepted by `PUT /api/v1/snapshots/{id}`; bigger
    /// uploads get 413 without being read in full.
    pub snapshot_max_bytes: usize,
    /// The county model folder (`county.toml`, towns, roads, zones, devices; see
    /// `configs/county/README.md`). Relative paths are relative to the working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub county_dir: Option<PathBuf>,
    /// The governance configuration folder (categories, departments, routing, stage limits,
    /// calendar, evaluation; `configs/governance/README.md`). Unset: the shipped defaults,
    /// built into the hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub governance_dir: Option<PathBuf>,
    /// How often the case workflow fires the SLA timers that are due (warnings, escalation,
    /// 督办 reminders), ms (100..=60000).
    pub case_sweep_ms: u64,
    /// Days of digital-twin attribute history kept (`{data_dir}/twin`, the NGSI-LD temporal
    /// API); older instances are pruned.
    pub twin_history_days: u32,
    /// Size of the record logs' segment files (MiB, 1..=1024): retention drops whole
    /// segments, and a segment's index is in memory until it is full.
    pub log_segment_mb: u64,
    /// Days events are kept (`{data_dir}/events/`): whole segments are dropped, oldest first,
    /// once their newest event was received longer ago. 0 = forever; else at least
    /// `dedup_window_days`. Default 400: 13 months, so a month compares with the same month a
    /// year before (annual reviews of cases need a full year plus the month being reviewed).
    pub events_retention_days: u32,
    /// Bytes the event log may take on disk (segments and their indexes); beyond, the oldest
    /// segments are dropped. 0 = no bound; else at least 4 segments.
    pub events_retention_bytes: u64,
    /// Days raw telemetry messages are kept (`{data_dir}/telemetry/`, `GET /api/v1/telemetry`);
    /// not the series rollups, which `[telemetry_retention]` keeps. 0 = forever; else at least
    /// `dedup_window_days`. Default 90: as long as the 1-minute rollups, so any minute can be
    /// traced to its messages.
    pub telemetry_log_retention_days: u32,
    /// Bytes the raw telemetry log may take on disk; 0 = no bound, else at least 4 segments.
    pub telemetry_log_retention_bytes: u64,
    /// Days a stored id is recognised exactly, so a resend is acked but not stored twice: at
    /// least the edge outbox's `max_age_s` (14 days) plus a margin. A size bound that drops a
    /// segment inside this window keeps the segment's ids (its index file, ~12 % of it) until
    /// the window has passed.
    pub dedup_window_days: u32,
    /// Who may connect and publish (`[auth]`). Tables last: TOML tables follow the plain keys.
    pub auth: AuthConfig,
    /// `[telemetry_retention]`: days of telemetry series kept per resolution (raw, 1m, 1h).
    pub telemetry_retention: crate::storage::series::Retention,
    /// `[mqtt_tls]`: when present, `mqtt_addr` speaks MQTT over TLS only; plain TCP there is
    /// refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt_tls: Option<MqttTls>,
    /// `[webhooks]`: the departments told of each change of their cases, and how deliveries
    /// are tried.
    pub webhooks: Webhooks,
}

/// `[webhooks]` section: a department's system is POSTed each change of the cases dispatched
/// to it, signed with HMAC-SHA256 (`cases::webhook`; docs/cases.md "Webhooks").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Webhooks {
    /// One try's time limit (ms, 100..=120000).
    pub timeout_ms: u64,
    /// The wait after a first failure (ms, 100..=86400000); doubled after each further one.
    pub retry_first_ms: u64,
    /// The longest wait between tries (ms, retry_first_ms..=86400000).
    pub retry_max_ms: u64,
    /// Tries before a delivery is given up (1..=100): the case's timeline says so
    /// (`notify_failed`), and `csb_hub_webhook_given_up_total` counts it.
    pub attempts: u32,
    /// `[[webhooks.hook]]`: one per department.
    #[serde(rename = "hook", skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Webhook>,
}

impl Default for Webhooks {
    fn default() -> Self {
        let r = crate::cases::webhook::Retry::default();
        Webhooks {
            timeout_ms: r.timeout_ms,
            retry_first_ms: r.first_ms,
            retry_max_ms: r.max_ms,
            attempts: r.attempts,
            hooks: Vec::new(),
        }
    }
}

impl Webhooks {
    pub fn retry(&self) -> crate::cases::webhook::Retry {
        crate::cases::webhook::Retry {
            timeout_ms: self.timeout_ms,
            first_ms: self.retry_first_ms,
            max_ms: self.retry_max_ms,
            attempts: self.attempts,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let field = "webhooks";
        let within = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(invalid(
                    field,
                    format!("`{name}` {v} is outside {lo}..={hi}"),
                ))
            }
        };
        within("timeout_ms", self.timeout_ms, 100, 120_000)?;
        within("retry_first_ms", self.retry_first_ms, 100, 86_400_000)?;
        within(
            "retry_max_ms",
            self.retry_max_ms,
            self.retry_first_ms,
            86_400_000,
        )?;
        within("attempts", u64::from(self.attempts), 1, 100)?;
        let mut seen = std::collections::HashSet::new();
        for (i, h) in self.hooks.iter().enumerate() {
            let at = |what: String| invalid("webhooks.hook", format!("entry {}: {what}", i + 1));
            let id_ok = !h.department.is_empty()
                && h.department.len() <= 64
                && h.department
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !id_ok {
                return Err(at(format!(
                    "`department` `{}` is not a department id (1–64 of a-z, 0-9, -)",
                    h.department
                )));
            }
            if !seen.insert(h.department.as_str()) {
                return Err(at(format!(
                    "department `{}` has a webhook already",
                    h.department
                )));
            }
            match reqwest::Url::parse(&h.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                Ok(_) => return Err(at(format!("`url` `{}` is not an http(s) URL", h.url))),
                Err(e) => return Err(at(format!("`url` `{}`: {e}", h.url))),
            }
            if h.secret_file.as_os_str().is_empty() {
                return Err(at("`secret_file` must not be empty".into()));
            }
        }
        Ok(())
    }
}

/// `[[webhooks.hook]]`: where one department is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// A department id of the governance configuration (checked when the hub starts).
    pub department: String,
    /// `http://` or `https://`; redirects are not followed.
    pub url: String,
    /// The HMAC key, the file's first line (at least 16 bytes), read when the hub starts;
    /// keep the file readable by the hub's user only.
    pub secret_file: PathBuf,
}

/// `[mqtt_tls]` section: PEM files, read once at start-up (a bad file stops the hub with its
/// path named).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// Server certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// How long a new connection may take to finish its TLS handshake.
    #[serde(default = "default_tls_handshake_ms")]
    pub handshake_timeout_ms: u64,
}

fn default_tls_handshake_ms() -> u64 {
    5000
}

/// `[auth]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `off`: any MQTT client may connect and publish for any device (development, the demo).
    /// `required`: only devices with credentials (`cloud-hub device add`) may connect, and
    /// every event, telemetry and status payload must carry a valid signature of the device
    /// its topic names; others are quarantined as `spoofed`. Production sets `required`.
    pub devices: DeviceAuth,
    /// `off`: the REST API answers anyone who can reach it (development, the demo on
    /// loopback). `required`: every request but `GET /api/v1/health` needs
    /// `Authorization: Bearer <token>` of a token issued by `cloud-hub token add` with a role
    /// allowed for it (viewer < operator < admin); evidence uploads are signed by the device.
    pub http: HttpAuth,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpAuth {
    #[default]
    Off,
    Required,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceAuth {
    #[default]
    Off,
    Required,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            mqtt_addr: SocketAddr::from(([127, 0, 0, 1], 1883)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data/hub"),
            mqtt_max_payload_bytes: 1024 * 1024,
            mqtt_max_connections: 1000,
            mqtt_max_inflight: 100,
            mqtt_connect_timeout_ms: 5000,
            mqtt_probe_interval_ms: 10_000,
            store_cache_mb: 64,
            ingest_max_payload_bytes: 256 * 1024,
            quarantine_max_entries: 100_000,
            snapshot_max_bytes: 2 * 1024 * 1024,
            county_dir: None,
            governance_dir: None,
            case_sweep_ms: 1000,
            twin_history_days: 7,
            log_segment_mb: 64,
            events_retention_days: 400,
            events_retention_bytes: 0,
            telemetry_log_retention_days: 90,
            telemetry_log_retention_bytes: 0,
            dedup_window_days: 15,
            auth: AuthConfig::default(),
            telemetry_retention: crate::storage::series::Retention::default(),
            mqtt_tls: None,
            webhooks: Webhooks::default(),
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// toml's message already carries line, column and the offending key.
    #[error("config file {path}: {cause}")]
    Parse {
        path: PathBuf,
        cause: toml::de::Error,
    },
    #[error("config field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("cannot render config: {0}")]
    Render(toml::ser::Error),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl HubConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<HubConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let config = Self::parse(&text, path)?;
        config.validate().map_err(|e| match e {
            // Name the file here too: the value came from it.
            ConfigError::Invalid { field, reason } => {
                invalid(field, format!("{reason} (in {})", path.display()))
            }
            other => other,
        })?;
        Ok(config)
    }

    /// Parses TOML text; `origin` names where it came from in errors. Does not validate.
    pub fn parse(text: &str, origin: &Path) -> Result<HubConfig, ConfigError> {
        toml::from_str(text).map_err(|cause| ConfigError::Parse {
            path: origin.to_path_buf(),
            cause,
        })
    }

    /// Checks values the types cannot: call after merging command-line overrides.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.http_addr.port() != 0 && self.http_addr == self.mqtt_addr {
            return Err(invalid(
                "http_addr",
                format!("{} is also mqtt_addr", self.http_addr),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.mqtt_max_payload_bytes) {
            return Err(invalid(
                "mqtt_max_payload_bytes",
                format!("{} is outside 1024..=16777216", self.mqtt_max_payload_bytes),
            ));
        }
        if !(1..=100_000).contains(&self.mqtt_max_connections) {
            return Err(invalid(
                "mqtt_max_connections",
                format!("{} is outside 1..=100000", self.mqtt_max_connections),
            ));
        }
        if !(100..=3_600_000).contains(&self.mqtt_probe_interval_ms) {
            return Err(invalid(
                "mqtt_probe_interval_ms",
                format!("{} is outside 100..=3600000", self.mqtt_probe_interval_ms),
            ));
        }
        if !(1..=1000).contains(&self.mqtt_max_inflight) {
            return Err(invalid(
                "mqtt_max_inflight",
                format!("{} is outside 1..=1000", self.mqtt_max_inflight),
            ));
        }
        if self.mqtt_connect_timeout_ms < 100 {
            return Err(invalid(
                "mqtt_connect_timeout_ms",
                format!("{} is below 100", self.mqtt_connect_timeout_ms),
            ));
        }
        if !(1..=65_536).contains(&self.store_cache_mb) {
            return Err(invalid(
                "store_cache_mb",
                format!("{} is outside 1..=65536", self.store_cache_mb),
            ));
        }
        if !(1024..=self.mqtt_max_payload_bytes).contains(&self.ingest_max_payload_bytes) {
            return Err(invalid(
                "ingest_max_payload_bytes",
                format!(
                    "{} is outside 1024..={} (mqtt_max_payload_bytes)",
                    self.ingest_max_payload_bytes, self.mqtt_max_payload_bytes
                ),
            ));
        }
        if !(1..=MAX_QUARANTINE_ENTRIES).contains(&self.quarantine_max_entries) {
            return Err(invalid(
                "quarantine_max_entries",
                format!(
                    "{} is outside 1..={MAX_QUARANTINE_ENTRIES}",
                    self.quarantine_max_entries
                ),
            ));
        }
        if !(100..=60_000).contains(&self.case_sweep_ms) {
            return Err(invalid(
                "case_sweep_ms",
                format!("{} is outside 100..=60000", self.case_sweep_ms),
            ));
        }
        self.webhooks.validate()?;
        if !(1..=3650).contains(&self.twin_history_days) {
            return Err(invalid(
                "twin_history_days",
                format!("{} is outside 1..=3650", self.twin_history_days),
            ));
        }
        if let Err((field, reason)) = self.telemetry_retention.validate() {
            return Err(invalid(field, reason));
        }
        if !(1..=3650).contains(&self.dedup_window_days) {
            return Err(invalid(
                "dedup_window_days",
                format!("{} is outside 1..=3650", self.dedup_window_days),
            ));
        }
        for (field, days) in [
            ("events_retention_days", self.events_retention_days),
            (
                "telemetry_log_retention_days",
                self.telemetry_log_retention_days,
            ),
        ] {
            if days > 36_500 {
                return Err(invalid(field, format!("{days} is above 36500")));
            }
            // Dropping ids an edge may still resend would store the resend a second time.
            if days != 0 && days < self.dedup_window_days {
                return Err(invalid(
                    field,
                    format!(
                        "{days} days is shorter than dedup_window_days ({}): a resend of a \
                         dropped record would be stored again; use 0 (forever) or at least {}",
                        self.dedup_window_days, self.dedup_window_days
                    ),
                ));
            }
        }
        if !(1..=1024).contains(&self.log_segment_mb) {
            return Err(invalid(
                "log_segment_mb",
                format!("{} is outside 1..=1024", self.log_segment_mb),
            ));
        }
        let min_bytes = MIN_LOG_RETENTION_SEGMENTS * (self.log_segment_mb << 20);
        for (field, bytes) in [
            ("events_retention_bytes", self.events_retention_bytes),
            (
                "telemetry_log_retention_bytes",
                self.telemetry_log_retention_bytes,
            ),
        ] {
            if bytes != 0 && bytes < min_bytes {
                return Err(invalid(
                    field,
                    format!(
                        "{bytes} is below {min_bytes} ({MIN_LOG_RETENTION_SEGMENTS} segments of \
                         log_segment_mb); use 0 for no bound"
                    ),
                ));
            }
        }
        if !(MIN_SNAPSHOT_BYTES..=MAX_SNAPSHOT_BYTES).contains(&self.snapshot_max_bytes) {
            return Err(invalid(
                "snapshot_max_bytes",
                format!(
                    "{} is outside {MIN_SNAPSHOT_BYTES}..={MAX_SNAPSHOT_BYTES}",
                    self.snapshot_max_bytes
                ),
            ));
        }
        Ok(())
    }

    /// How the store is opened: sled's cache and the record logs' retention.
    pub fn store_options(&self) -> crate::storage::store::StoreOptions {
        let day = 86_400_000i64;
        let retention = |days: u32, bytes: u64| crate::storage::reclog::Retention {
            max_age_ms: i64::from(days) * day,
            max_bytes: bytes,
            dedup_window_ms: i64::from(self.dedup_window_days) * day,
        };
        let mut o = crate::storage::store::StoreOptions::new(self.store_cache_mb);
        o.events.segment_bytes = self.log_segment_mb << 20;
        o.telemetry.segment_bytes = self.log_segment_mb << 20;
        o.events.retention = retention(self.events_retention_days, self.events_retention_bytes);
        o.telemetry.retention = retention(
            self.telemetry_log_retention_days,
            self.telemetry_log_retention_bytes,
        );
        o
    }

    /// The config as TOML, for `check-config`.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(ConfigError::Render)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> &'static Path {
        Path::new("hub.toml")
    }

    #[test]
    fn example_file_matches_defaults() {
        let parsed = HubConfig::parse(EXAMPLE_CONFIG, origin()).unwrap();
        assert_eq!(parsed, HubConfig::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn empty_file_gives_defaults_and_partial_overrides() {
        assert_eq!(
            HubConfig::parse("", origin()).unwrap(),
            HubConfig::default()
        );
        let c = HubConfig::parse("mqtt_addr = \"0.0.0.0:11883\"\n", origin()).unwrap();
        assert_eq!(c.mqtt_addr.port(), 11883);
        assert_eq!(c.http_addr, HubConfig::default().http_addr);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = HubConfig::parse("mqtt_addr = \"127.0.0.1:1\"\nmqtt_adr = 3\n", origin())
            .unwrap_err()
            .to_string();
        assert!(err.contains("hub.toml"), "{err}");
        assert!(err.contains("mqtt_adr"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_value_names_field() {
        let err = HubConfig::parse("http_addr = \"localhost\"\n", origin())
            .unwrap_err()
            .to_string();
        assert!(err.contains("http_addr"), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn load_names_missing_file_and_invalid_values() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = HubConfig::load(&missing).unwrap_err().to_string();
        assert!(err.contains("nope.toml"), "{err}");

        let path = dir.path().join("hub.toml");
        std::fs::write(&path, "mqtt_max_payload_bytes = 10\n").unwrap();
        let err = HubConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("mqtt_max_payload_bytes"), "{err}");
        assert!(err.contains("hub.toml"), "{err}");
    }

    #[test]
    fn validate_takes_port_zero_and_rejects_same_addrs() {
        // Both listeners are bound by the hub, so the OS may pick either port.
        let c = HubConfig {
            mqtt_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            ..HubConfig::default()
        };
        c.validate().unwrap();
        let c = HubConfig {
            mqtt_probe_interval_ms: 10,
            ..HubConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("mqtt_probe_interval_ms"));
        let c = HubConfig {
            http_addr: HubConfig::default().mqtt_addr,
            ..HubConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("http_addr"));
    }

    #[test]
    fn validate_bounds_snapshot_size() {
        for bad in [0, 1023, 64 * 1024 * 1024 + 1] {
            let c = HubConfig {
                snapshot_max_bytes: bad,
                ..HubConfig::default()
            };
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("snapshot_max_bytes"), "{err}");
        }
        let c = HubConfig::parse("snapshot_max_bytes = 4096\n", origin()).unwrap();
        assert_eq!(c.snapshot_max_bytes, 4096);
        c.validate().unwrap();
    }

    #[test]
    fn validate_bounds_ingest_payload_and_quarantine() {
        let c = HubConfig {
            ingest_max_payload_bytes: HubConfig::default().mqtt_max_payload_bytes + 1,
            ..HubConfig::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("ingest_max_payload_bytes"), "{err}");
        assert!(err.contains("mqtt_max_payload_bytes"), "{err}");
        let c = HubConfig {
            ingest_max_payload_bytes: 100,
            ..HubConfig::default()
        };
        assert!(c.validate().is_err());
        let c = HubConfig {
            quarantine_max_entries: 0,
            ..HubConfig::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("quarantine_max_entries"), "{err}");
        let c = HubConfig::parse(
            "ingest_max_payload_bytes = 4096\nquarantine_max_entries = 10\n",
            origin(),
        )
        .unwrap();
        assert_eq!(
            (c.ingest_max_payload_bytes, c.quarantine_max_entries),
            (4096, 10)
        );
        c.validate().unwrap();
    }

    #[test]
    fn retention_keeps_the_dedup_window_and_a_few_segments() {
        let c = HubConfig::default();
        let o = c.store_options();
        assert_eq!(o.events.retention.max_age_ms, 400 * 86_400_000);
        assert_eq!(o.telemetry.retention.max_age_ms, 90 * 86_400_000);
        assert_eq!(o.events.retention.dedup_window_ms, 15 * 86_400_000);
        assert_eq!(
            (o.events.retention.max_bytes, o.telemetry.time_cache_bytes),
            (0, 0)
        );
        for (text, field) in [
            ("events_retention_days = 14\n", "events_retention_days"),
            (
                "telemetry_log_retention_days = 3\n",
                "telemetry_log_retention_days",
            ),
            ("events_retention_bytes = 1000\n", "events_retention_bytes"),
            (
                "telemetry_log_retention_bytes = 1\n",
                "telemetry_log_retention_bytes",
            ),
            ("dedup_window_days = 0\n", "dedup_window_days"),
            ("log_segment_mb = 0\n", "log_segment_mb"),
            (
                "log_segment_mb = 2\nevents_retention_bytes = 8388607\n",
                "events_retention_bytes",
            ),
            ("events_retention_days = 40000\n", "events_retention_days"),
        ] {
            let err = HubConfig::parse(text, origin())
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        let c = HubConfig::parse(
            "events_retention_days = 0\nevents_retention_bytes = 268435456\n\
             telemetry_log_retention_days = 7\ndedup_window_days = 7\n",
            origin(),
        )
        .unwrap();
        c.validate().unwrap();
        let o = c.store_options();
        assert_eq!(o.events.retention.max_age_ms, 0);
        assert_eq!(o.events.retention.max_bytes, 256 << 20);
        assert_eq!(o.telemetry.retention.dedup_window_ms, 7 * 86_400_000);
        assert_eq!(o.events.segment_bytes, 64 << 20);
        let c = HubConfig::parse(
            "log_segment_mb = 1\ntelemetry_log_retention_bytes = 4194304\n",
            origin(),
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.store_options().telemetry.segment_bytes, 1 << 20);
    }

    #[test]
    fn auth_section() {
        let c = HubConfig::parse("[auth]\ndevices = \"required\"\n", origin()).unwrap();
        assert_eq!(c.auth.devices, DeviceAuth::Required);
        let err = HubConfig::parse("[auth]\ndevices = \"maybe\"\n", origin())
            .unwrap_err()
            .to_string();
        assert!(err.contains("maybe"), "{err}");
        let text = c.to_toml().unwrap();
        assert_eq!(HubConfig::parse(&text, origin()).unwrap(), c);
    }

    #[test]
    fn renders_round_trip() {
        let c = HubConfig::default();
        let text = c.to_toml().unwrap();
        assert_eq!(HubConfig::parse(&text, origin()).unwrap(), c);
    }
}
