//! Versioned JSON payloads. Every payload carries `v` (schema version) so a hub can accept old
//! agents during a rolling upgrade; unknown fields are ignored for the same reason.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use thiserror::Error;
use ulid::Ulid;

use crate::topic::{validate_level, TopicError};

/// The payload schema version this crate writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
/// Upper bound on objects in one event: a sane frame never has more, a hostile payload might.
pub const MAX_OBJECTS: usize = 1000;

/// Something seen by an edge agent, published on `csb/v1/{site}/{device}/event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Schema version of this payload (currently 1).
    pub v: u32,
    /// Time-ordered id generated at the edge (ULID); the hub deduplicates on it.
    #[schemars(with = "String", regex(pattern = r"^[0-9A-HJKMNP-TV-Z]{26}$"))]
    #[serde(deserialize_with = "crate::ulid_text::one")]
    pub id: Ulid,
    pub site: String,
    pub device: String,
    /// The agent-local source that saw it: a camera id, or for a `sensor_threshold` rule event
    /// the sensor id (camera and sensor ids share one namespace per agent). The JSON name stays
    /// `camera` so v1 readers keep working.
    pub camera: String,
    pub kind: EventKind,
    /// Wall-clock capture time of the frame (or of the sensor reading), Unix ms (UTC).
    pub ts_ms: i64,
    /// The frame the objects were seen in. Required for `detection` events and whenever
    /// `objects` is not empty; absent from sensor events, which have no frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<FrameInfo>,
    /// The model that produced the detections; required for `detection` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
    pub objects: Vec<Detection>,
    /// Present when `kind` is `rule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Raw detections of one frame.
    Detection,
    /// A rule fired (dwell, crowd, line crossing, presence, sensor threshold): see `rule`.
    Rule,
}

/// What a rule event is about. One problem (a parked car, a crowd) keeps one `problem_id`
/// through its `start`, `update`s and `end`, so the hub opens one case, not one per frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RuleInfo {
    /// Rule id from the agent's config.
    pub rule: String,
    pub rule_type: RuleType,
    /// What the city calls it, e.g. `illegal_parking`, `street_vending`, `crowd_gathering`.
    pub event_type: String,
    /// Governance classification code (部件/事件 code) from the county's table, if mapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    pub phase: Phase,
    /// Stable id of the problem across its start/update/end events.
    #[schemars(with = "String", regex(pattern = r"^[0-9A-HJKMNP-TV-Z]{26}$"))]
    #[serde(deserialize_with = "crate::ulid_text::one")]
    pub problem_id: Ulid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Tracks involved (ids are per camera).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub track_ids: Vec<u64>,
    /// When the condition began (Unix ms); `ts_ms - started_ms` is the dwell so far.
    pub started_ms: i64,
    pub duration_ms: i64,
    /// Objects counted (crowd) or crossings (line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Line crossing direction: `in` (left→right of the line's direction) or `out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// Sensor value that triggered a threshold rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The sensor metric a threshold rule watches, e.g. `water_level_cm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Evidence snapshot id, uploaded to the hub separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleType {
    Dwell,
    Crowd,
    LineCrossing,
    Presence,
    SensorThreshold,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Start,
    Update,
    End,
    /// A one-off occurrence with no duration (a line crossing).
    Instant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FrameInfo {
    /// Frame counter of this camera since the agent started it.
    pub seq: u64,
    /// Stream presentation time in milliseconds, when the source has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pts_ms: Option<u64>,
    /// Source frame size in pixels; boxes are in this coordinate system.
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelRef {
    pub name: String,
    /// First 12 hex digits of the model file's sha256.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Detection {
    /// Index into the model's label list.
    pub class_id: u32,
    pub label: String,
    /// Confidence in 0..=1.
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: BBox,
    /// Tracker id of this object within its camera, when tracking runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_id: Option<u64>,
}

/// Axis-aligned box in source-frame pixels, (x1,y1) top-left, (x2,y2) bottom-right.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BBox {
    pub fn area(&self) -> f32 {
        (self.x2 - self.x1).max(0.0) * (self.y2 - self.y1).max(0.0)
    }

    pub fn iou(&self, o: &BBox) -> f32 {
        let w = (self.x2.min(o.x2) - self.x1.max(o.x1)).max(0.0);
        let h = (self.y2.min(o.y2) - self.y1.max(o.y1)).max(0.0);
        let inter = w * h;
        let union = self.area() + o.area() - inter;
        if union <= 0.0 {
            0.0
        } else {
            inter / union
        }
    }
}

/// Sensor or device metrics, published on `csb/v1/{site}/{device}/telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Telemetry {
    pub v: u32,
    #[schemars(with = "String", regex(pattern = r"^[0-9A-HJKMNP-TV-Z]{26}$"))]
    #[serde(deserialize_with = "crate::ulid_text::one")]
    pub id: Ulid,
    pub site: String,
    pub device: String,
    /// What measured it: a sensor id, a camera id, or `agent` for the gateway itself.
    pub source: String,
    pub ts_ms: i64,
    /// Metric name → value, e.g. `{"water_level_cm": 12.5}` or `{"cam-01.fps": 9.8}`.
    pub metrics: BTreeMap<String, f64>,
}

/// Hub → edge on `csb/v1/{site}/{device}/ack`: the hub has stored these messages (events and
/// telemetry, by their `id`) durably — or had already stored them, so a resend is acked too.
/// Only then may the edge forget them. Losing or repeating an ack is harmless: the edge resends
/// what stays unacked and the hub stores each id once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Ack {
    pub v: u32,
    pub site: String,
    pub device: String,
    pub ts_ms: i64,
    #[schemars(with = "Vec<String>")]
    #[serde(deserialize_with = "crate::ulid_text::many")]
    pub ids: Vec<Ulid>,
}

/// Upper bound on ids in one ack.
pub const MAX_ACK_IDS: usize = 10_000;

impl Validate for Ack {
    fn validate(&self) -> Result<(), PayloadError> {
        check_version(self.v)?;
        validate_level("site", &self.site)?;
        validate_level("device", &self.device)?;
        check_ts("ts_ms", self.ts_ms)?;
        if self.ids.is_empty() || self.ids.len() > MAX_ACK_IDS {
            return Err(field_err("ids", format!("must hold 1..={MAX_ACK_IDS} ids")));
        }
        Ok(())
    }
}

/// Device state, published retained on `csb/v1/{site}/{device}/status`; the agent's MQTT last
/// will is the same payload with `state: offline`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceStatus {
    pub v: u32,
    pub site: String,
    pub device: String,
    pub ts_ms: i64,
    pub state: DeviceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(default)]
    pub cameras: Vec<CameraStatus>,
    /// Field sensors this gateway reads (absent from camera-only agents).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensors: Vec<SensorStatus>,
    /// The agent's durable outbox: what waits for the hub's ack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<OutboxStatus>,
    /// The hub's managed configuration version this agent runs (`CommandOp::Config`); absent
    /// while it runs only its local config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<u64>,
    /// The detection model the agent runs (absent from agents without one, e.g. sensor-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<crate::model::ModelVersion>,
}

/// Backlog of the edge's durable outbox (docs/outbox.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutboxStatus {
    /// Messages (events and telemetry) stored but not yet acked by the hub.
    pub pending: u64,
    pub pending_events: u64,
    pub bytes: u64,
    /// Age of the oldest pending message.
    pub oldest_age_ms: u64,
    /// Messages dropped because the outbox was full or too old, in total; never silent.
    pub dropped_total: u64,
    /// Of those, events (dropped only when no telemetry was left to drop).
    pub dropped_events: u64,
    /// Messages that could not be written to disk (sent once without durability).
    pub write_errors: u64,
    /// Messages sent again because their ack did not come within the ack timeout.
    pub resent_total: u64,
}

/// One field sensor (water level, tilt, air quality) as its gateway sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SensorStatus {
    pub id: String,
    pub state: SensorState,
    /// Time since the newest valid reading; absent until the first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reading_age_ms: Option<u64>,
    /// Valid readings since the agent started.
    pub readings_total: u64,
    /// Payloads that could not be used (not JSON, a mapped field missing or not a number).
    pub errors_total: u64,
    /// The latest such problem, naming the topic and field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SensorState {
    /// No reading yet since the agent started.
    Waiting,
    /// Readings arrive within the sensor's expected interval.
    Reporting,
    /// No reading for longer than the sensor's `silent_after_s`.
    Silent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    Online,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CameraStatus {
    pub id: String,
    pub state: CameraState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<f32>,
    /// Last error for a camera that is not running, naming the device or URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Health since the agent started (absent from agents that do not report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<CameraHealth>,
}

/// Per-camera counters for operators: is the stream alive, is the box keeping up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CameraHealth {
    /// Decoded frames per second over the last reporting window (`fps` of the status).
    pub fps_in: f32,
    /// Frames per second that went through the detector.
    pub fps_detected: f32,
    /// Frames whose inference motion gating skipped, in total.
    pub skipped_total: u64,
    /// Frames dropped because the detector was busy, in total.
    pub dropped_total: u64,
    /// Time since the newest decoded frame.
    pub last_frame_age_ms: u64,
    pub outages_total: u64,
    pub reconnects_total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CameraState {
    Starting,
    Running,
    Reconnecting,
    Failed,
    Stopped,
}

/// Why a payload was refused. Each variant names the offending field so a rejection log line
/// tells an operator what to fix on which device.
#[derive(Debug, Error)]
pub enum PayloadError {
    #[error("payload is not valid JSON for this message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported schema version v={found} (this build reads v={SCHEMA_VERSION})")]
    Version { found: u32 },
    #[error("field `{field}`: {reason}")]
    Field { field: String, reason: String },
    #[error(transparent)]
    Level(#[from] TopicError),
}

pub(crate) fn field_err(field: impl Into<String>, reason: impl Into<String>) -> PayloadError {
    PayloadError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Payloads that can be checked beyond what their types enforce.
pub trait Validate {
    fn validate(&self) -> Result<(), PayloadError>;
}

/// Parses and validates one payload.
pub fn decode<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, PayloadError> {
    // One UTF-8 check of the whole payload (fast on ASCII) spares serde_json its check of each
    // string: ~10 % of decoding an event. Invalid UTF-8 is parsed as bytes, for the same error
    // (naming line and column) as before.
    let value: T = match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text)?,
        Err(_) => serde_json::from_slice(bytes)?,
    };
    value.validate()?;
    Ok(value)
}

pub(crate) fn check_version(v: u32) -> Result<(), PayloadError> {
    if v == SCHEMA_VERSION {
        Ok(())
    } else {
        Err(PayloadError::Version { found: v })
    }
}

pub(crate) fn check_ts(field: &str, ts_ms: i64) -> Result<(), PayloadError> {
    // 2000-01-01 .. 2200-01-01: catches seconds-vs-milliseconds mix-ups and zeroed clocks.
    if !(946_684_800_000..=7_258_118_400_000).contains(&ts_ms) {
        return Err(field_err(
            field,
            format!("{ts_ms} is not a plausible Unix time in milliseconds"),
        ));
    }
    Ok(())
}

impl Validate for Event {
    fn validate(&self) -> Result<(), PayloadError> {
        check_version(self.v)?;
        validate_level("site", &self.site)?;
        validate_level("device", &self.device)?;
        validate_level("camera", &self.camera)?;
        check_ts("ts_ms", self.ts_ms)?;
        match (self.kind, &self.rule) {
            (EventKind::Rule, None) => {
                return Err(field_err("rule", "required when kind is `rule`"))
            }
            (EventKind::Detection, Some(_)) => {
                return Err(field_err("rule", "only allowed when kind is `rule`"))
            }
            (EventKind::Rule, Some(r)) => {
                if r.rule.is_empty()
                    || r.rule.len() > 64
                    || r.event_type.is_empty()
                    || r.event_type.len() > 64
                {
                    return Err(field_err(
                        "rule",
                        "`rule` and `event_type` must be 1..=64 bytes",
                    ));
                }
                if r.duration_ms < 0 {
                    return Err(field_err("rule.duration_ms", "must be >= 0"));
                }
            }
            _ => {}
        }
        if let Some(r) = &self.rule {
            if let Some(m) = &r.metric {
                if m.is_empty() || m.len() > 128 {
                    return Err(field_err("rule.metric", "must be 1..=128 bytes"));
                }
            }
        }
        if self.kind == EventKind::Detection && self.model.is_none() {
            return Err(field_err("model", "required when kind is `detection`"));
        }
        if self.objects.len() > MAX_OBJECTS {
            return Err(field_err(
                "objects",
                format!("{} objects, at most {MAX_OBJECTS}", self.objects.len()),
            ));
        }
        let frame = match &self.frame {
            Some(f) => f,
            None if self.kind == EventKind::Detection || !self.objects.is_empty() => {
                return Err(field_err(
                    "frame",
                    "required when kind is `detection` or `objects` is not empty",
                ))
            }
            None => return Ok(()),
        };
        if frame.width == 0 || frame.height == 0 {
            return Err(field_err("frame", "width and height must be > 0"));
        }
        let (w, h) = (frame.width as f32, frame.height as f32);
        for (i, o) in self.objects.iter().enumerate() {
            if !(0.0..=1.0).contains(&o.score) {
                return Err(field_err(
                    format!("objects[{i}].score"),
                    format!("{} is outside 0..=1", o.score),
                ));
            }
            let b = o.bbox;
            let finite = [b.x1, b.y1, b.x2, b.y2].iter().all(|c| c.is_finite());
            // Half a pixel of slack for rounding at the frame edge.
            let inside = b.x1 >= -0.5 && b.y1 >= -0.5 && b.x2 <= w + 0.5 && b.y2 <= h + 0.5;
            if !finite || b.x1 > b.x2 || b.y1 > b.y2 || !inside {
                return Err(field_err(
                    format!("objects[{i}].box"),
                    format!(
                        "({}, {}, {}, {}) is not a box inside the {}x{} frame",
                        b.x1, b.y1, b.x2, b.y2, frame.width, frame.height
                    ),
                ));
            }
            if o.label.is_empty() || o.label.len() > 64 {
                return Err(field_err(
                    format!("objects[{i}].label"),
                    "must be 1..=64 bytes",
                ));
            }
        }
        Ok(())
    }
}

impl Validate for Telemetry {
    fn validate(&self) -> Result<(), PayloadError> {
        check_version(self.v)?;
        validate_level("site", &self.site)?;
        validate_level("device", &self.device)?;
        validate_level("source", &self.source)?;
        check_ts("ts_ms", self.ts_ms)?;
        if self.metrics.is_empty() || self.metrics.len() > 256 {
            return Err(field_err("metrics", "must hold 1..=256 entries"));
        }
        for (k, val) in &self.metrics {
            if k.is_empty() || k.len() > 128 {
                return Err(field_err(
                    "metrics",
                    format!("name `{k}` must be 1..=128 bytes"),
                ));
            }
            if !val.is_finite() {
                return Err(field_err(format!("metrics.{k}"), "must be a finite number"));
            }
        }
        Ok(())
    }
}

impl Validate for DeviceStatus {
    fn validate(&self) -> Result<(), PayloadError> {
        check_version(self.v)?;
        validate_level("site", &self.site)?;
        validate_level("device", &self.device)?;
        check_ts("ts_ms", self.ts_ms)?;
        for (i, c) in self.cameras.iter().enumerate() {
            validate_level("camera", &c.id)
                .map_err(|e| field_err(format!("cameras[{i}].id"), e.to_string()))?;
            // 1e39 parses into an f32 as infinity, which JSON cannot carry back out: the stored
            // status would no longer decode (found by fuzz/fuzz_targets/wire_roundtrip.rs).
            let rates = [
                ("fps", c.fps),
                ("health.fps_in", c.health.as_ref().map(|h| h.fps_in)),
                (
                    "health.fps_detected",
                    c.health.as_ref().map(|h| h.fps_detected),
                ),
            ];
            for (name, v) in rates {
                if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                    return Err(field_err(
                        format!("cameras[{i}].{name}"),
                        "must be a finite number >= 0",
                    ));
                }
            }
        }
        for (i, s) in self.sensors.iter().enumerate() {
            validate_level("sensor", &s.id)
                .map_err(|e| field_err(format!("sensors[{i}].id"), e.to_string()))?;
        }
        Ok(())
    }
}

/// (year, month, day) of a day count since 1970-01-01, proleptic Gregorian (H. Hinnant's
/// civil-from-days). Gateways and hubs format dates without a time-zone database.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Current time as Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_event() -> Event {
        Event {
            v: SCHEMA_VERSION,
            id: Ulid::new(),
            site: "yuexi".into(),
            device: "gw-01".into(),
            camera: "cam-01".into(),
            kind: EventKind::Detection,
            ts_ms: 1_790_000_000_000,
            frame: Some(FrameInfo {
                seq: 7,
                pts_ms: Some(700),
                width: 768,
                height: 576,
            }),
            model: Some(ModelRef {
                name: "yolox_nano".into(),
                sha256: "695e750a5d57".into(),
            }),
            objects: vec![Detection {
                class_id: 0,
                label: "person".into(),
                score: 0.8,
                bbox: BBox {
                    x1: 10.0,
                    y1: 20.0,
                    x2: 50.0,
                    y2: 120.0,
                },
                track_id: None,
            }],
            rule: None,
        }
    }

    #[test]
    fn event_round_trips_and_validates() {
        let e = sample_event();
        let bytes = serde_json::to_vec(&e).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"box\":{"), "{text}");
        let back: Event = decode(&bytes).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn errors_name_the_field() {
        let mut e = sample_event();
        e.objects[0].score = 1.5;
        let err = e.validate().unwrap_err().to_string();
        assert!(err.contains("objects[0].score"), "{err}");

        let mut e = sample_event();
        e.objects[0].bbox.x2 = 900.0;
        let err = e.validate().unwrap_err().to_string();
        assert!(err.contains("objects[0].box"), "{err}");

        let mut e = sample_event();
        e.ts_ms = 1_790_000_000; // seconds, not ms
        assert!(e.validate().unwrap_err().to_string().contains("ts_ms"));

        let mut v = serde_json::to_value(sample_event()).unwrap();
        v.as_object_mut().unwrap().remove("camera");
        let err = decode::<Event>(v.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("camera"), "{err}");

        let err = decode::<Event>(b"{not json").unwrap_err();
        assert!(matches!(err, PayloadError::Json(_)));

        // Invalid UTF-8 in a string is a JSON error naming where, as before the fast path.
        let sample = sample_event();
        let good = serde_json::to_vec(&sample).unwrap();
        let at = good.windows(6).position(|w| w == b"cam-01").unwrap();
        let mut bad = good.clone();
        bad[at] = 0xff;
        match decode::<Event>(&bad) {
            Err(PayloadError::Json(j)) => {
                assert_eq!(j.classify(), serde_json::error::Category::Syntax);
                assert!(j.to_string().contains("column"), "{j}");
            }
            other => panic!("expected a JSON error, got {other:?}"),
        }
        assert_eq!(decode::<Event>(&good).unwrap(), sample);

        let mut e = sample_event();
        e.v = 2;
        assert!(matches!(
            e.validate(),
            Err(PayloadError::Version { found: 2 })
        ));
    }

    fn sensor_event() -> Event {
        Event {
            camera: "wl-07".into(),
            kind: EventKind::Rule,
            frame: None,
            model: None,
            objects: Vec::new(),
            rule: Some(RuleInfo {
                rule: "waterlogging-wl-07".into(),
                rule_type: RuleType::SensorThreshold,
                event_type: "waterlogging".into(),
                category: None,
                phase: Phase::Start,
                problem_id: Ulid::new(),
                zone: None,
                track_ids: Vec::new(),
                started_ms: 1_790_000_000_000,
                duration_ms: 0,
                count: None,
                direction: Some("above".into()),
                value: Some(41.5),
                metric: Some("water_level_cm".into()),
                snapshot: None,
            }),
            ..sample_event()
        }
    }

    #[test]
    fn sensor_events_have_no_frame_or_model() {
        let e = sensor_event();
        let text = serde_json::to_string(&e).unwrap();
        assert!(
            !text.contains("\"frame\"") && !text.contains("\"model\""),
            "{text}"
        );
        assert_eq!(decode::<Event>(text.as_bytes()).unwrap(), e);

        // Objects are boxes in a frame: without one they cannot be checked.
        let mut bad = sensor_event();
        bad.objects = sample_event().objects;
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("`frame`"), "{err}");

        // A detection event still needs both.
        let mut bad = sample_event();
        bad.frame = None;
        assert!(bad.validate().unwrap_err().to_string().contains("`frame`"));
        let mut bad = sample_event();
        bad.model = None;
        assert!(bad.validate().unwrap_err().to_string().contains("`model`"));

        let mut bad = sensor_event();
        bad.rule.as_mut().unwrap().metric = Some(String::new());
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("rule.metric"));
    }

    #[test]
    fn status_rejects_rates_json_cannot_carry() {
        let text = r#"{"v":1,"site":"yuexi","device":"gw-demo-01","ts_ms":1795518947461,"state":"online","cameras":[{"id":"cam-01","state":"running","fps":10.0,"health":{"fps_in":1e39,"fps_detected":4.1,"skipped_total":0,"dropped_total":0,"last_frame_age_ms":40,"outages_total":0,"reconnects_total":0}}]}"#;
        let err = decode::<DeviceStatus>(text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cameras[0].health.fps_in"), "{err}");
        let ok = text.replace("1e39", "9.5");
        let s = decode::<DeviceStatus>(ok.as_bytes()).unwrap();
        let again = serde_json::to_vec(&s).unwrap();
        assert_eq!(decode::<DeviceStatus>(&again).unwrap(), s);
    }

    #[test]
    fn iou_is_sane() {
        let a = BBox {
            x1: 0.0,
            y1: 0.0,
            x2: 10.0,
            y2: 10.0,
        };
        let b = BBox {
            x1: 5.0,
            y1: 0.0,
            x2: 15.0,
            y2: 10.0,
        };
        assert!((a.iou(&b) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(a.iou(&a), 1.0);
    }

    #[test]
    fn telemetry_rejects_non_finite() {
        let mut t = Telemetry {
            v: 1,
            id: Ulid::new(),
            site: "s".into(),
            device: "d".into(),
            source: "agent".into(),
            ts_ms: now_ms(),
            metrics: BTreeMap::from([("fps".to_string(), 9.5)]),
        };
        t.validate().unwrap();
        t.metrics.insert("bad".into(), f64::NAN);
        assert!(t
            .validate()
            .unwrap_err()
            .to_string()
            .contains("metrics.bad"));
    }
}
