//! Field sensors in the agent's TOML: where readings come from (a local MQTT topic with a JSON
//! field mapping, or the built-in simulator), how telemetry is downsampled, when a sensor
//! counts as silent. Errors name the field path, e.g. `sensors[1].fields.level`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::MqttConfig;

/// The gateway's local broker that field devices (or a LoRa/NB-IoT bridge) publish to. Often a
/// mosquitto on the gateway itself; it may be the hub's broker in a small deployment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorMqttConfig {
    /// `host:port`.
    pub broker: String,
    /// MQTT client id; default `{device}-sensors`.
    pub client_id: Option<String>,
    pub keep_alive_s: u64,
    /// Optional credentials of the local broker.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Default for SensorMqttConfig {
    fn default() -> Self {
        SensorMqttConfig {
            broker: "127.0.0.1:1883".into(),
            client_id: None,
            keep_alive_s: 30,
            username: None,
            password: None,
        }
    }
}

impl SensorMqttConfig {
    pub fn host_port(&self) -> Result<(String, u16), String> {
        // One parser for every `host:port` in the config.
        MqttConfig {
            broker: self.broker.clone(),
            ..MqttConfig::default()
        }
        .host_port()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorKind {
    /// Readings are JSON messages on a topic of the local broker.
    Mqtt,
    /// Readings are generated (demo, commissioning): see `simulate`.
    Simulated,
}

/// Which aggregates of a telemetry window are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stat {
    /// Published under the metric's own name.
    Mean,
    Min,
    Max,
    Last,
    Count,
}

impl Stat {
    /// Suffix of the telemetry metric name (`water_level_cm.max`); the mean has none.
    pub fn suffix(self) -> Option<&'static str> {
        match self {
            Stat::Mean => None,
            Stat::Min => Some("min"),
            Stat::Max => Some("max"),
            Stat::Last => Some("last"),
            Stat::Count => Some("count"),
        }
    }
}

/// Where a metric sits in the sensor's JSON payload, and how to scale it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum FieldMap {
    /// `"data.level"` (dotted path; array indexes as numbers) or `"/data/level"` (JSON Pointer).
    Path(String),
    /// `{ path = "bat_mv", scale = 0.001 }`: value = raw × scale + offset.
    Scaled {
        path: String,
        #[serde(default = "one")]
        scale: f64,
        #[serde(default)]
        offset: f64,
    },
}

impl FieldMap {
    pub fn path(&self) -> &str {
        match self {
            FieldMap::Path(p) | FieldMap::Scaled { path: p, .. } => p,
        }
    }

    /// (scale, offset).
    pub fn linear(&self) -> (f64, f64) {
        match self {
            FieldMap::Path(_) => (1.0, 0.0),
            FieldMap::Scaled { scale, offset, .. } => (*scale, *offset),
        }
    }

    /// The path as an RFC 6901 JSON Pointer.
    pub fn pointer(&self) -> String {
        to_pointer(self.path())
    }
}

/// `a.b.0` → `/a/b/0`; a path starting with `/` is already a pointer.
pub fn to_pointer(path: &str) -> String {
    if path.starts_with('/') {
        return path.to_string();
    }
    path.split('.')
        .map(|seg| format!("/{}", seg.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// A simulated signal: a smooth rise from `base` to `base + amplitude` and back over
/// `period_s` (raised cosine, starting at `base` when the agent starts), plus uniform noise of
/// ±`noise`. Deterministic per sensor, so a demo replays the same curve.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Waveform {
    #[serde(default)]
    pub base: f64,
    #[serde(default)]
    pub amplitude: f64,
    #[serde(default = "default_period")]
    pub period_s: f64,
    #[serde(default)]
    pub noise: f64,
    /// Shifts the curve: the value at agent start is the one `phase_s` into the period.
    #[serde(default)]
    pub phase_s: f64,
}

impl Waveform {
    /// The noiseless value `t_s` seconds after the agent started.
    pub fn clean(&self, t_s: f64) -> f64 {
        let x = std::f64::consts::TAU * (t_s + self.phase_s) / self.period_s;
        self.base + self.amplitude * 0.5 * (1.0 - x.cos())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    /// Sensor id: the `source` of its telemetry and the `camera` (source) of its rule events;
    /// unique among the agent's cameras and sensors.
    pub id: String,
    pub kind: SensorKind,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `mqtt`: the topic (MQTT wildcards `+`/`#` allowed) its readings arrive on.
    #[serde(default)]
    pub topic: Option<String>,
    /// `mqtt`: metric name → field of the JSON payload.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldMap>,
    /// `mqtt`: field holding the reading's time (Unix seconds or milliseconds, told apart by
    /// size). Without it, or when implausible, the arrival time is used.
    #[serde(default)]
    pub ts_field: Option<String>,
    /// `simulated`: metric name → signal.
    #[serde(default)]
    pub simulate: BTreeMap<String, Waveform>,
    /// `simulated`: time between readings.
    #[serde(default = "default_sim_interval")]
    pub interval_ms: u64,
    /// Telemetry window: readings are aggregated and sent once per window (aligned to the
    /// clock). 0 sends every reading as it comes.
    #[serde(default = "default_telemetry_interval")]
    pub telemetry_interval_s: f64,
    /// Aggregates sent per window (ignored when `telemetry_interval_s` is 0).
    #[serde(default = "default_stats")]
    pub telemetry_stats: Vec<Stat>,
    /// No reading for this long makes the sensor `silent` in the device status.
    #[serde(default = "default_silent")]
    pub silent_after_s: f64,
}

impl SensorConfig {
    /// The metric names this sensor produces.
    pub fn metrics(&self) -> Vec<&str> {
        match self.kind {
            SensorKind::Mqtt => self.fields.keys().map(String::as_str).collect(),
            SensorKind::Simulated => self.simulate.keys().map(String::as_str).collect(),
        }
    }

    /// Checks one sensor; `Err((field, reason))` with `field` relative to `sensors[i]`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, r: String| Err((f.to_string(), r));
        match self.kind {
            SensorKind::Mqtt => {
                let Some(topic) = &self.topic else {
                    return bad("topic", "required for an `mqtt` sensor".into());
                };
                if topic.is_empty() || !rumqttc::valid_filter(topic) {
                    return bad(
                        "topic",
                        format!("`{topic}` is not a valid MQTT topic filter"),
                    );
                }
                if self.fields.is_empty() {
                    return bad(
                        "fields",
                        "map at least one metric to a payload field, e.g. water_level_cm = \"data.level\"".into(),
                    );
                }
                if !self.simulate.is_empty() {
                    return bad("simulate", "only for `simulated` sensors".into());
                }
                for (m, f) in &self.fields {
                    if f.path().is_empty() {
                        return bad(&format!("fields.{m}"), "empty path".into());
                    }
                    let (scale, offset) = f.linear();
                    if !scale.is_finite() || !offset.is_finite() {
                        return bad(
                            &format!("fields.{m}"),
                            "scale and offset must be finite".into(),
                        );
                    }
                }
            }
            SensorKind::Simulated => {
                if self.simulate.is_empty() {
                    return bad(
                        "simulate",
                        "give at least one metric, e.g. [sensors.simulate.water_level_cm]".into(),
                    );
                }
                if self.topic.is_some() || !self.fields.is_empty() || self.ts_field.is_some() {
                    return bad(
                        "topic",
                        "`topic`, `fields` and `ts_field` are for `mqtt` sensors".into(),
                    );
                }
                if !(10..=3_600_000).contains(&self.interval_ms) {
                    return bad(
                        "interval_ms",
                        format!("{} is not 10..=3600000", self.interval_ms),
                    );
                }
                for (m, w) in &self.simulate {
                    let finite = [w.base, w.amplitude, w.noise, w.phase_s]
                        .iter()
                        .all(|v| v.is_finite());
                    let period_ok = w.period_s.is_finite() && w.period_s > 0.0;
                    if !(finite && period_ok) || w.noise < 0.0 {
                        return bad(
                            &format!("simulate.{m}"),
                            "needs finite numbers, period_s > 0 and noise >= 0".into(),
                        );
                    }
                }
            }
        }
        for m in self.metrics() {
            if m.is_empty() || m.len() > 96 || m.contains(char::is_whitespace) {
                return bad(
                    "fields",
                    format!("metric name `{m}` must be 1..=96 bytes without spaces"),
                );
            }
        }
        let t = self.telemetry_interval_s;
        if !t.is_finite() || !(t == 0.0 || (0.1..=86_400.0).contains(&t)) {
            return bad(
                "telemetry_interval_s",
                format!("{t} is not 0 (every reading) or 0.1..=86400"),
            );
        }
        if t > 0.0 && self.telemetry_stats.is_empty() {
            return bad(
                "telemetry_stats",
                "name at least one of mean, min, max, last, count".into(),
            );
        }
        let s = self.silent_after_s;
        if !s.is_finite() || s <= 0.0 {
            return bad("silent_after_s", format!("{s} must be > 0"));
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn default_period() -> f64 {
    600.0
}
fn default_sim_interval() -> u64 {
    1000
}
fn default_telemetry_interval() -> f64 {
    60.0
}
fn default_stats() -> Vec<Stat> {
    vec![Stat::Mean, Stat::Min, Stat::Max, Stat::Last, Stat::Count]
}
fn default_silent() -> f64 {
    600.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sensor(text: &str) -> SensorConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn paths_become_pointers() {
        assert_eq!(to_pointer("data.level"), "/data/level");
        assert_eq!(to_pointer("/data/level"), "/data/level");
        assert_eq!(to_pointer("obj.0.v"), "/obj/0/v");
        assert_eq!(to_pointer("a/b.c~d"), "/a~1b/c~0d");
    }

    #[test]
    fn mqtt_sensor_with_scaled_field() {
        let s = sensor(
            r#"
id = "wl-07"
kind = "mqtt"
topic = "lora/wl-07/up"
fields = { water_level_cm = "data.level", battery_v = { path = "bat_mv", scale = 0.001 } }
"#,
        );
        s.validate().unwrap();
        assert_eq!(s.metrics(), ["battery_v", "water_level_cm"]);
        assert_eq!(s.fields["battery_v"].linear(), (0.001, 0.0));
        assert_eq!(s.telemetry_interval_s, 60.0);
    }

    #[test]
    fn mistakes_name_the_field() {
        let cases = [
            ("id = \"a\"\nkind = \"mqtt\"\nfields = { x = \"v\" }", "topic"),
            ("id = \"a\"\nkind = \"mqtt\"\ntopic = \"a/#/b\"\nfields = { x = \"v\" }", "topic"),
            ("id = \"a\"\nkind = \"mqtt\"\ntopic = \"t\"", "fields"),
            ("id = \"a\"\nkind = \"simulated\"", "simulate"),
            (
                "id = \"a\"\nkind = \"simulated\"\n[simulate.x]\nperiod_s = 0",
                "simulate.x",
            ),
            (
                "id = \"a\"\nkind = \"simulated\"\ntelemetry_interval_s = -1\n[simulate.x]\nbase = 1",
                "telemetry_interval_s",
            ),
        ];
        for (text, field) in cases {
            let (f, r) = sensor(text).validate().unwrap_err();
            assert_eq!(f, field, "{text}: {r}");
        }
        // A misspelt option is refused by the parser, not ignored.
        assert!(toml::from_str::<SensorConfig>(
            "id = \"a\"\nkind = \"simulated\"\nintervall_ms = 5\n[simulate.x]\nbase = 1"
        )
        .is_err());
    }

    #[test]
    fn waveform_rises_and_falls() {
        let w = Waveform {
            base: 10.0,
            amplitude: 30.0,
            period_s: 100.0,
            noise: 0.0,
            phase_s: 0.0,
        };
        assert!((w.clean(0.0) - 10.0).abs() < 1e-9);
        assert!((w.clean(50.0) - 40.0).abs() < 1e-9);
        assert!((w.clean(100.0) - 10.0).abs() < 1e-9);
        assert!(w.clean(25.0) > 20.0 && w.clean(25.0) < 30.0);
    }
}
