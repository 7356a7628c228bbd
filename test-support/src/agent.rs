//! Edge agent config files (TOML) for tests that start a real `edge-agent`: the `[agent]`,
//! `[mqtt]` and `[outbox]` sections every agent needs, and the cameras, sensors and tables a
//! test adds, in the order it adds them.
//!
//! ```
//! use csb_test_support::agent::{AgentToml, Wave};
//!
//! let toml = AgentToml::new("gw-fault", 1883)
//!     .mqtt("keep_alive_s = 5")
//!     .outbox("ack_timeout_s = 5")
//!     .simulated_sensor("wl-fault", 200, Wave::new(10.0, 5.0, 60.0))
//!     .to_toml();
//! assert!(toml.contains("[[sensors]]\nid = \"wl-fault\""));
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::payloads::SITE;

/// A simulated water level (`[sensors.simulate.water_level_cm]`): a sine of `amplitude` around
/// `base` with period `period_s`, plus uniform `noise`.
#[derive(Debug, Clone, Copy)]
pub struct Wave {
    pub base: f64,
    pub amplitude: f64,
    pub period_s: f64,
    pub noise: f64,
}

impl Wave {
    pub fn new(base: f64, amplitude: f64, period_s: f64) -> Self {
        Wave {
            base,
            amplitude,
            period_s,
            noise: 0.0,
        }
    }

    pub fn noise(mut self, noise: f64) -> Self {
        self.noise = noise;
        self
    }
}

/// An agent's config file; see the module docs.
#[derive(Debug, Clone)]
pub struct AgentToml {
    site: String,
    device: String,
    mqtt: String,
    outbox_dir: String,
    outbox: String,
    tables: String,
}

/// `s` as a TOML basic string.
fn quoted(s: impl AsRef<str>) -> String {
    format!("{:?}", s.as_ref())
}

impl AgentToml {
    /// Agent `device` of site `yuexi` talking to the broker on 127.0.0.1:`mqtt_port`, with its
    /// outbox in `outbox/` beside the config file.
    pub fn new(device: &str, mqtt_port: u16) -> Self {
        AgentToml {
            site: SITE.into(),
            device: device.into(),
            mqtt: format!("broker = \"127.0.0.1:{mqtt_port}\"\n"),
            outbox_dir: "outbox".into(),
            outbox: String::new(),
            tables: String::new(),
        }
    }

    /// More `[mqtt]` lines (e.g. `keep_alive_s = 5`).
    pub fn mqtt(mut self, lines: &str) -> Self {
        self.mqtt.push_str(lines);
        self.mqtt.push('\n');
        self
    }

    /// Logs in as `username` with the secret in `secret_file` (and signs with it), over TLS
    /// trusting `ca_file` when given.
    pub fn login(mut self, username: &str, secret_file: &Path, ca_file: Option<&Path>) -> Self {
        let _ = writeln!(self.mqtt, "username = {}", quoted(username));
        let _ = writeln!(
            self.mqtt,
            "secret_file = {}",
            quoted(secret_file.display().to_string())
        );
        if let Some(ca) = ca_file {
            let _ = writeln!(self.mqtt, "ca_file = {}", quoted(ca.display().to_string()));
        }
        self
    }

    /// The outbox in `dir` (relative paths are relative to the config file).
    pub fn outbox_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.outbox_dir = dir.as_ref().display().to_string();
        self
    }

    /// More `[outbox]` lines (e.g. `ack_timeout_s = 5`).
    pub fn outbox(mut self, lines: &str) -> Self {
        self.outbox.push_str(lines);
        self.outbox.push('\n');
        self
    }

    /// `[hub] url`: where evidence snapshots go.
    pub fn hub(self, url: &str) -> Self {
        self.table(&format!("[hub]\nurl = {}", quoted(url)))
    }

    /// `[model]` with `lines` (e.g. `intra_threads = 1`).
    pub fn model(self, lines: &str) -> Self {
        self.table(&format!("[model]\n{lines}"))
    }

    /// A `[[cameras]]` entry reading `uri`, with more of its lines and sub-tables (`loop =
    /// true`, `[[cameras.analytics.zones]]`, ...) in `rest`.
    pub fn camera(self, id: &str, uri: &str, rest: &str) -> Self {
        self.table(&format!(
            "[[cameras]]\nid = {}\nuri = {}\n{rest}",
            quoted(id),
            quoted(uri)
        ))
    }

    /// A `[[sensors]]` entry whose readings come from `source` (its `kind` and what that kind
    /// needs), aggregated into telemetry every second.
    pub fn sensor(self, id: &str, source: &str) -> Self {
        self.sensor_with(id, source, "")
    }

    /// A simulated water level sensor read every `interval_ms`.
    pub fn simulated_sensor(self, id: &str, interval_ms: u32, wave: Wave) -> Self {
        let mut sim = format!(
            "[sensors.simulate.water_level_cm]\nbase = {:?}\namplitude = {:?}\nperiod_s = {:?}\n",
            wave.base, wave.amplitude, wave.period_s
        );
        if wave.noise != 0.0 {
            let _ = writeln!(sim, "noise = {:?}", wave.noise);
        }
        let source = format!("kind = \"simulated\"\ninterval_ms = {interval_ms}");
        self.sensor_with(id, &source, &sim)
    }

    fn sensor_with(self, id: &str, source: &str, sub_tables: &str) -> Self {
        self.table(&format!(
            "[[sensors]]\nid = {}\n{source}\ntelemetry_interval_s = 1\n{sub_tables}",
            quoted(id)
        ))
    }

    /// Any other table, as TOML text (e.g. `[sensor_mqtt]`, `[[sensor_rules]]`).
    pub fn table(mut self, toml: &str) -> Self {
        self.tables.push_str(toml.trim_end());
        self.tables.push('\n');
        self
    }

    /// The config file's text.
    pub fn to_toml(&self) -> String {
        format!(
            "[agent]\nsite = {}\ndevice = {}\n[mqtt]\n{}[outbox]\ndir = {}\n{}{}",
            quoted(&self.site),
            quoted(&self.device),
            self.mqtt,
            quoted(&self.outbox_dir),
            self.outbox,
            self.tables
        )
    }

    /// Writes `dir/agent.toml`; returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        self.write_as(dir, "agent.toml")
    }

    /// Writes `dir/name`; returns its path.
    pub fn write_as(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.to_toml()).expect("write agent config");
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_come_in_order_and_parse_as_toml() {
        let t = AgentToml::new("gw-1", 1883)
            .mqtt("keep_alive_s = 5")
            .login(
                "yuexi/gw-1",
                Path::new("/s/gw.secret"),
                Some(Path::new("/s/ca.pem")),
            )
            .outbox_dir("/tmp/outbox")
            .outbox("ack_timeout_s = 3")
            .hub("http://127.0.0.1:8080")
            .model("intra_threads = 1")
            .camera("cam-1", "file:///x.avi", "loop = true")
            .simulated_sensor("wl-1", 200, Wave::new(10.0, 5.0, 60.0).noise(0.5))
            .sensor("wl-2", "kind = \"mqtt\"\ntopic = \"field/+/wl-2\"")
            .to_toml();
        let v: toml::Table = t.parse().unwrap_or_else(|e| panic!("{e}\n{t}"));
        assert_eq!(v["agent"]["site"].as_str(), Some("yuexi"));
        assert_eq!(v["agent"]["device"].as_str(), Some("gw-1"));
        assert_eq!(v["mqtt"]["broker"].as_str(), Some("127.0.0.1:1883"));
        assert_eq!(v["mqtt"]["keep_alive_s"].as_integer(), Some(5));
        assert_eq!(v["mqtt"]["secret_file"].as_str(), Some("/s/gw.secret"));
        assert_eq!(v["mqtt"]["ca_file"].as_str(), Some("/s/ca.pem"));
        assert_eq!(v["outbox"]["dir"].as_str(), Some("/tmp/outbox"));
        assert_eq!(v["outbox"]["ack_timeout_s"].as_integer(), Some(3));
        assert_eq!(v["hub"]["url"].as_str(), Some("http://127.0.0.1:8080"));
        assert_eq!(v["model"]["intra_threads"].as_integer(), Some(1));
        assert_eq!(v["cameras"][0]["loop"].as_bool(), Some(true));
        let sensors = v["sensors"].as_array().unwrap();
        assert_eq!(sensors.len(), 2);
        let sim = &sensors[0];
        assert_eq!(sim["kind"].as_str(), Some("simulated"));
        assert_eq!(sim["interval_ms"].as_integer(), Some(200));
        assert_eq!(sim["telemetry_interval_s"].as_integer(), Some(1));
        let wl = &sim["simulate"]["water_level_cm"];
        assert_eq!(wl["base"].as_float(), Some(10.0));
        assert_eq!(wl["amplitude"].as_float(), Some(5.0));
        assert_eq!(wl["period_s"].as_float(), Some(60.0));
        assert_eq!(wl["noise"].as_float(), Some(0.5));
        assert_eq!(sensors[1]["topic"].as_str(), Some("field/+/wl-2"));
        assert_eq!(sensors[1]["telemetry_interval_s"].as_integer(), Some(1));
    }

    #[test]
    fn no_noise_unless_asked() {
        let t = AgentToml::new("gw-1", 1)
            .simulated_sensor("wl", 100, Wave::new(0.0, 60.0, 6.0))
            .to_toml();
        assert!(!t.contains("noise"), "{t}");
        assert!(
            t.contains("base = 0.0\namplitude = 60.0\nperiod_s = 6.0\n"),
            "{t}"
        );
    }
}
