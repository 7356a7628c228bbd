//! Agent configuration: a TOML file, checked before anything starts. Errors name the file, the
//! line and the field so a technician can fix a gateway's config without reading code.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::model::DetectorOptions;
use crate::rules::RulesConfig;
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
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
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
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            broker: "127.0.0.1:1883".into(),
            client_id: None,
            keep_alive_s: 30,
            queue: 256,
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
        }
        if !self.cameras.iter().any(|c| c.enabled) {
            return Err(bad("cameras".into(), "no enabled camera".into()));
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
}
