//! Agent configuration: a TOML file, checked before anything starts. Errors name the file, the
//! line and the field so a technician can fix a gateway's config without reading code.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::model::DetectorOptions;
use crate::outbox::OutboxConfig;
use crate::rules::{RuleConfig, RuleKind, RulesConfig};
use crate::sensors::{SensorConfig, SensorMqttConfig};
use crate::track::TrackerConfig;
use crate::vision::MotionConfig;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: field `{field}`: {reason}")]
    Field {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub agent: AgentSection,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub model: DetectorOptions,
    #[serde(default)]
    pub hub: HubLink,
    /// The durable store of everything not yet acked by the hub (docs/outbox.md).
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
    /// The local broker `mqtt` sensors publish to.
    #[serde(default)]
    pub sensor_mqtt: SensorMqttConfig,
    #[serde(default)]
    pub sensors: Vec<SensorConfig>,
    /// `sensor_threshold` rules over the sensors' metrics.
    #[serde(default)]
    pub sensor_rules: Vec<RuleConfig>,
}

/// The hub's HTTP side, for evidence uploads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubLink {
    /// e.g. `http://127.0.0.1:8080`; without it snapshots are taken but not uploaded.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Site (county or district) this gateway belongs to: the first topic level.
    pub site: String,
    /// This gateway's id: the second topic level.
    pub device: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `host:port` of the hub's broker.
    pub broker: String,
    /// MQTT client id; default: `edge-{device}`.
    pub client_id: Option<String>,
    pub keep_alive_s: u64,
    /// Messages waiting for the network before publishers are made to wait (bounded memory).
    pub queue: usize,
    /// This device's MQTT user name as issued by `cloud-hub device add` (`{site}/{device}`).
    pub username: Option<String>,
    /// File holding the device secret (the MQTT password, also the key that signs every
    /// payload). Keep it out of the config, readable by the agent only.
    pub secret_file: Option<PathBuf>,
    /// Connect with TLS, trusting this CA certificate (PEM). The broker host name must match
    /// the certificate.
    pub ca_file: Option<PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            broker: "127.0.0.1:1883".into(),
            client_id: None,
            keep_alive_s: 30,
            queue: 256,
            username: None,
            secret_file: None,
            ca_file: None,
        }
    }
}

impl MqttConfig {
    /// Splits `broker` into host and port.
    pub fn host_port(&self) -> Result<(String, u16), String> {
        let (host, port) = self
            .broker
            .rsplit_once(':')
            .ok_or_else(|| format!("`{}` is not host:port", self.broker))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{}` has no valid port", self.broker))?;
        if host.is_empty() || port == 0 {
            return Err(format!("`{}` is not host:port", self.broker));
        }
        Ok((host.trim_matches(['[', ']']).to_string(), port))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub id: String,
    /// `file://`, `rtsp://`, `http(s)://` URI, or a file path (relative to the config file).
    pub uri: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Restart files at the end so a recorded clip behaves like a camera.
    #[serde(default, rename = "loop")]
    pub looping: bool,
    /// Minimum time between detection events of this camera; 0 sends one per frame with objects.
    #[serde(default = "default_interval")]
    pub event_interval_ms: u64,
    /// Only report these labels; empty reports every class.
    #[serde(default)]
    pub classes: Vec<String>,
    /// Publish raw per-frame detection events (rate-limited by `event_interval_ms`). Rule events
    /// are what a city acts on; raw detections are for commissioning and debugging.
    #[serde(default = "yes")]
    pub publish_detections: bool,
    /// Attach a JPEG snapshot (boxes, track ids, zones drawn) to every rule event start.
    #[serde(default = "yes")]
    pub snapshots: bool,
    #[serde(default)]
    pub motion: MotionConfig,
    #[serde(default)]
    pub tracker: TrackerConfig,
    /// Zones, counting lines and rules of this camera.
    #[serde(default)]
    pub analytics: RulesConfig,
    /// The hub's model for this camera alone (`NAME@VERSION` of a pushed `models` entry); none:
    /// the device's model. Set by fleet pushes only, not in the config file.
    #[serde(skip)]
    pub model: Option<String>,
}

impl CameraConfig {
    /// A camera with every option at its default (as an empty `[[cameras]]` entry would be).
    pub fn new(id: &str, uri: &str) -> Self {
        CameraConfig {
            id: id.to_string(),
            uri: uri.to_string(),
            enabled: true,
            looping: false,
            event_interval_ms: default_interval(),
            classes: Vec::new(),
            publish_detections: true,
            snapshots: true,
            motion: MotionConfig::default(),
            tracker: TrackerConfig::default(),
            analytics: RulesConfig::default(),
            model: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_interval() -> u64 {
    1000
}

impl AgentConfig {
    /// Where the outbox lives: `outbox.dir`, or `/var/lib/csb-edge/{device}/outbox`.
    pub fn outbox_dir(&self) -> PathBuf {
        self.outbox.dir.clone().unwrap_or_else(|| {
            PathBuf::from("/var/lib/csb-edge")
                .join(&self.agent.device)
                .join("outbox")
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: AgentConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Relative camera file paths and model paths are relative to the config file, not to
    /// wherever the agent happens to be started.
    fn resolve_paths(&mut self, base: &Path) {
        for c in &mut self.cameras {
            if !c.uri.contains("://") && Path::new(&c.uri).is_relative() {
                c.uri = base.join(&c.uri).to_string_lossy().into_owned();
            }
        }
        for p in [
            &mut self.mqtt.secret_file,
            &mut self.mqtt.ca_file,
            &mut self.outbox.dir,
            &mut self.model.path,
            &mut self.model.models_dir,
            &mut self.model.ort_library,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: String, reason: String| ConfigError::Field {
            path: path.to_path_buf(),
            field,
            reason,
        };
        csb_wire::topic::validate_level("site", &self.agent.site)
            .map_err(|e| bad("agent.site".into(), e.to_string()))?;
        csb_wire::topic::validate_level("device", &self.agent.device)
            .map_err(|e| bad("agent.device".into(), e.to_string()))?;
        self.mqtt
            .host_port()
            .map_err(|e| bad("mqtt.broker".into(), e))?;
        if let Some(u) = &self.hub.url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(bad(
                    "hub.url".into(),
                    format!("`{u}` is not an http(s):// URL"),
                ));
            }
        }
        if self.mqtt.username.is_some() != self.mqtt.secret_file.is_some() {
            return Err(bad(
                "mqtt.secret_file".into(),
                "`username` and `secret_file` go together (both from `cloud-hub device add`)"
                    .into(),
            ));
        }
        self.outbox
            .validate()
            .map_err(|(f, r)| bad(format!("outbox.{f}"), r))?;
        if self.mqtt.queue == 0 || self.mqtt.queue > 100_000 {
            return Err(bad("mqtt.queue".into(), "must be 1..=100000".into()));
        }
        if !(0.0..=1.0).contains(&self.model.score_threshold) {
            return Err(bad(
                "model.score_threshold".into(),
                format!("{} is outside 0..=1", self.model.score_threshold),
            ));
        }
        if !(1..=64).contains(&self.model.intra_threads) {
            return Err(bad("model.intra_threads".into(), "must be 1..=64".into()));
        }
        let mut seen = HashSet::new();
        for (i, c) in self.cameras.iter().enumerate() {
            csb_wire::topic::validate_level("camera", &c.id)
                .map_err(|e| bad(format!("cameras[{i}].id"), e.to_string()))?;
            if !seen.insert(&c.id) {
                return Err(bad(
                    format!("cameras[{i}].id"),
                    format!("`{}` is used by another camera", c.id),
                ));
            }
            let scheme_ok = ["file://", "rtsp://", "rtsps://", "http://", "https://"]
                .iter()
                .any(|s| c.uri.starts_with(s))
                || !c.uri.contains("://");
            if !scheme_ok {
                return Err(bad(
                    format!("cameras[{i}].uri"),
                    format!(
                        "`{}`: use file://, rtsp://, http(s):// or a file path",
                        c.uri
                    ),
                ));
            }
        }
        for (i, c) in self.cameras.iter().enumerate() {
            c.tracker
                .validate()
                .map_err(|(f, r)| bad(format!("cameras[{i}].tracker.{f}"), r))?;
            c.analytics.validate().map_err(|e| {
                bad(
                    format!("cameras[{i}].analytics.{}", e.field),
                    e.reason.clone(),
                )
            })?;
            for (j, r) in c.analytics.rules.iter().enumerate() {
                if matches!(r.kind, RuleKind::SensorThreshold(_)) {
                    return Err(bad(
                        format!("cameras[{i}].analytics.rules[{j}].kind"),
                        "a camera has no sensor readings: put sensor_threshold rules in \
                         [[sensor_rules]]"
                            .into(),
                    ));
                }
            }
        }
        self.validate_sensors(&seen, &bad)?;
        if !self.cameras.iter().any(|c| c.enabled) && !self.sensors.iter().any(|s| s.enabled) {
            return Err(bad(
                "cameras".into(),
                "no enabled camera or sensor: nothing to run".into(),
            ));
        }
        Ok(())
    }

    /// Sensors: ids unique among cameras and sensors (both are event sources), each sensor's
    /// own fields, and rules that name an existing sensor and one of its metrics.
    fn validate_sensors(
        &self,
        camera_ids: &HashSet<&String>,
        bad: &dyn Fn(String, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        for (i, s) in self.sensors.iter().enumerate() {
            csb_wire::topic::validate_level("sensor", &s.id)
                .map_err(|e| bad(format!("sensors[{i}].id"), e.to_string()))?;
            if camera_ids.contains(&s.id) || !ids.insert(&s.id) {
                return Err(bad(
                    format!("sensors[{i}].id"),
                    format!("`{}` is used by another camera or sensor", s.id),
                ));
            }
            s.validate()
                .map_err(|(f, r)| bad(format!("sensors[{i}].{f}"), r))?;
        }
        if self.sensors.iter().any(|s| s.enabled && s.topic.is_some()) {
            self.sensor_mqtt
                .host_port()
                .map_err(|e| bad("sensor_mqtt.broker".into(), e))?;
        }
        // Kinds first: a camera rule here would otherwise fail on its unknown zone or line.
        for (i, r) in self.sensor_rules.iter().enumerate() {
            if !matches!(r.kind, RuleKind::SensorThreshold(_)) {
                return Err(bad(
                    format!("sensor_rules[{i}].kind"),
                    format!(
                        "`{}` rules watch cameras: put them under the camera's \
                         [[cameras.analytics.rules]]; only sensor_threshold here",
                        r.kind.name()
                    ),
                ));
            }
        }
        let rules = RulesConfig {
            rules: self.sensor_rules.clone(),
            ..RulesConfig::default()
        };
        rules.validate().map_err(|e| {
            // The rules validator says `rules[i]`; here the table is `sensor_rules`.
            let field = e.field.strip_prefix("rules").unwrap_or(&e.field);
            bad(format!("sensor_rules{field}"), e.reason.clone())
        })?;
        for (i, r) in self.sensor_rules.iter().enumerate() {
            let RuleKind::SensorThreshold(t) = &r.kind else {
                continue;
            };
            let f = format!("sensor_rules[{i}].kind.sensor_threshold");
            let Some(s) = self.sensors.iter().find(|s| s.id == t.sensor) else {
                let known: Vec<&str> = self.sensors.iter().map(|s| s.id.as_str()).collect();
                return Err(bad(
                    format!("{f}.sensor"),
                    format!("no sensor `{}` (sensors: {})", t.sensor, known.join(", ")),
                ));
            };
            if !s.metrics().contains(&t.metric.as_str()) {
                return Err(bad(
                    format!("{f}.metric"),
                    format!(
                        "sensor `{}` has no metric `{}` (it has: {})",
                        s.id,
                        t.metric,
                        s.metrics().join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    const GOOD: &str = r#"
[agent]
site = "yuexi"
device = "gw-01"
[[cameras]]
id = "cam-01"
uri = "clips/street.avi"
loop = true
"#;

    #[test]
    fn loads_and_resolves_relative_paths() {
        let (dir, p) = write(GOOD);
        let cfg = AgentConfig::load(&p).unwrap();
        assert_eq!(cfg.mqtt.host_port().unwrap(), ("127.0.0.1".into(), 1883));
        assert_eq!(
            cfg.cameras[0].uri,
            dir.path().join("clips/street.avi").to_string_lossy()
        );
        assert!(cfg.cameras[0].looping);
        assert_eq!(cfg.cameras[0].event_interval_ms, 1000);
    }

    #[test]
    fn errors_name_file_and_field() {
        let (_d, p) = write(&GOOD.replace("gw-01", "gw 01"));
        let e = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("agent.device") && e.contains("agent.toml"),
            "{e}"
        );

        let (_d, p) = write(&format!("{GOOD}\n[mqtt]\nbroker = \"nohost\"\n"));
        let e = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("mqtt.broker"), "{e}");

        let (_d, p) = write(&format!("{GOOD}\n[model]\nscore_treshold = 0.5\n"));
        let e = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("score_treshold"), "{e}");

        let (_d, p) = write(&format!(
            "{GOOD}\n[[cameras]]\nid = \"cam-01\"\nuri = \"x\"\n"
        ));
        let e = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("cameras[1].id"), "{e}");

        let (_d, p) = write(&GOOD.replace("clips/street.avi", "ftp://x/y"));
        let e = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("cameras[0].uri"), "{e}");
    }

    const SENSORS: &str = r#"
[agent]
site = "yuexi"
device = "gw-01"
[[sensors]]
id = "wl-07"
kind = "mqtt"
topic = "lora/wl-07"
fields = { water_level_cm = "level" }
[[sensor_rules]]
id = "w"
event_type = "waterlogging"
[sensor_rules.kind.sensor_threshold]
sensor = "wl-07"
metric = "water_level_cm"
above = 30.0
"#;

    #[test]
    fn sensor_only_gateway_and_sensor_mistakes() {
        let (_d, p) = write(SENSORS);
        let cfg = AgentConfig::load(&p).unwrap();
        assert!(cfg.cameras.is_empty());
        assert_eq!(cfg.sensor_mqtt.broker, "127.0.0.1:1883");

        let cases = [
            (SENSORS.replace("metric = \"water_level_cm\"", "metric = \"level\""),
                "sensor_rules[0].kind.sensor_threshold.metric"),
            (SENSORS.replace("sensor = \"wl-07\"", "sensor = \"wl-08\""),
                "sensor_rules[0].kind.sensor_threshold.sensor"),
            (SENSORS.replace("above = 30.0", ""), "sensor_rules[0].kind.sensor_threshold"),
            (format!("{SENSORS}\n[sensor_mqtt]\nbroker = \"nohost\"\n"), "sensor_mqtt.broker"),
            // Camera and sensor ids share one namespace: both are event sources.
            (format!("{SENSORS}\n[[cameras]]\nid = \"wl-07\"\nuri = \"x.avi\"\n"), "sensors[0].id"),
            (SENSORS.replace("topic = \"lora/wl-07\"\n", ""), "sensors[0].topic"),
            (
                SENSORS.replace(
                    "[sensor_rules.kind.sensor_threshold]\nsensor = \"wl-07\"\nmetric = \"water_level_cm\"\nabove = 30.0",
                    "[sensor_rules.kind.dwell]\nzone = \"z\"\nmin_dwell_s = 5.0",
                ),
                "sensor_rules[0].kind",
            ),
        ];
        for (text, field) in cases {
            let (_d, p) = write(&text);
            let e = AgentConfig::load(&p).unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "want {field}: {e}");
        }

        // A camera rule engine never sees readings: sensor rules belong in [[sensor_rules]].
        let text = format!(
            "{GOOD}[[cameras.analytics.rules]]\nid = \"s\"\nevent_type = \"w\"\n\
             [cameras.analytics.rules.kind.sensor_threshold]\nsensor = \"x\"\nmetric = \"m\"\nabove = 1.0\n"
        );
        let (_d, p) = write(&text);
        let e = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("cameras[0].analytics.rules[0].kind"), "{e}");

        let (_d, p) = write("[agent]\nsite = \"s\"\ndevice = \"d\"\n");
        let e = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("no enabled camera or sensor"), "{e}");
    }

    /// Every config shipped in configs/ loads: a sample a technician copies must be valid.
    #[test]
    fn shipped_configs_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut files = vec![root.join("demo.toml")];
        for e in std::fs::read_dir(root.join("examples")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                files.push(p);
            }
        }
        assert!(files.len() >= 3, "{files:?}");
        for f in files {
            AgentConfig::load(&f).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
