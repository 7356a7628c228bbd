//! Payload builders: csb-wire events, telemetry and device statuses with realistic defaults
//! (each valid as built, see the tests below), the topics they go on, and signing.
//!
//! ```
//! use csb_test_support::payloads::{EventBuilder, StatusBuilder, TelemetryBuilder, T0};
//! use csb_wire::{CameraState, DeviceState, Phase};
//!
//! let parked = EventBuilder::rule("illegal_parking")
//!     .device("gw-demo-01")
//!     .camera("cam-tiantang-01")
//!     .ts(T0)
//!     .objects(&[(2, "car")])
//!     .zone("no-parking-north")
//!     .phase(Phase::Start)
//!     .build();
//! let level = TelemetryBuilder::new("gw-demo-01", "wl-underpass-01")
//!     .ts(T0)
//!     .metric("water_level_cm", 12.5)
//!     .build();
//! let online = StatusBuilder::new("gw-demo-01", DeviceState::Online)
//!     .camera("cam-tiantang-01", CameraState::Running)
//!     .build();
//! # let _ = (parked, level, online);
//! ```

use std::collections::BTreeMap;

use csb_wire::{
    BBox, CameraState, CameraStatus, Detection, DeviceState, DeviceStatus, Event, EventKind,
    FrameInfo, ModelRef, OutboxStatus, Phase, RuleInfo, RuleType, SensorState, SensorStatus,
    Telemetry,
};
use ulid::Ulid;

/// The site (county) every test device belongs to: the sample county's.
pub const SITE: &str = "yuexi";

/// A fixed instant for repeatable times: 2026-09-21T14:13:20Z.
pub const T0: i64 = 1_790_000_000_000;

/// `csb/v1/yuexi/{device}/{channel}`.
pub fn topic(device: &str, channel: &str) -> String {
    format!("csb/v1/{SITE}/{device}/{channel}")
}

/// A payload as JSON bytes.
pub fn json(p: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(p).expect("a payload serialises")
}

/// `json` published on `topic`, signed with the device `secret` when given (as an agent with a
/// `secret_file` does), else unchanged.
pub fn signed(topic: &str, json: Vec<u8>, secret: Option<&str>) -> Vec<u8> {
    match secret {
        None => json,
        Some(s) => csb_wire::sign::sign(topic, &json, &csb_wire::sign::signing_key(s))
            .expect("a test payload signs"),
    }
}

/// A detection event: `device` and `camera`, at `ts_ms`, one object per `(class id, label)`.
/// Shorthand for the [`EventBuilder`] chain most tests want.
pub fn event(device: &str, camera: &str, ts_ms: i64, objects: &[(u32, &str)]) -> Event {
    EventBuilder::detection()
        .device(device)
        .camera(camera)
        .ts(ts_ms)
        .objects(objects)
        .build()
}

/// Telemetry of `device`'s `source` at `ts_ms` with `metrics`. Shorthand for
/// [`TelemetryBuilder`].
pub fn telemetry(device: &str, source: &str, ts_ms: i64, metrics: &[(&str, f64)]) -> Telemetry {
    TelemetryBuilder::new(device, source)
        .ts(ts_ms)
        .metrics(metrics)
        .build()
}

/// A field sensor's health in a device status: `state`, nothing read or wrong yet.
pub fn sensor_status(id: &str, state: SensorState) -> SensorStatus {
    SensorStatus {
        id: id.into(),
        state,
        last_reading_age_ms: None,
        readings_total: 0,
        errors_total: 0,
        last_error: None,
    }
}

/// Builds an [`Event`]. Defaults: site `yuexi`, device `gw-01`, camera `cam-01`, now, a
/// 768x576 frame (seq 1, pts 40 ms) seen by yolox_nano, no objects. Objects score 0.8 in a box
/// (10, 20)-(50, 120). A rule event is a dwell `start` whose condition began at `ts`, with no
/// zone, category or track ids until given.
#[derive(Debug, Clone)]
pub struct EventBuilder {
    event: Event,
    /// Whether the rule's condition began `duration_ms` before `ts` (else at `ts`).
    dwelt: bool,
}

impl EventBuilder {
    /// A `detection` event.
    pub fn detection() -> Self {
        EventBuilder {
            event: Event {
                v: 1,
                id: Ulid::new(),
                site: SITE.into(),
                device: "gw-01".into(),
                camera: "cam-01".into(),
                kind: EventKind::Detection,
                ts_ms: csb_wire::now_ms(),
                frame: Some(FrameInfo {
                    seq: 1,
                    pts_ms: Some(40),
                    width: 768,
                    height: 576,
                }),
                model: Some(ModelRef {
                    name: "yolox_nano".into(),
                    sha256: "695e750a5d57".into(),
                }),
                objects: Vec::new(),
                rule: None,
            },
            dwelt: false,
        }
    }

    /// A `rule` event of `event_type` (e.g. `illegal_parking`), from rule `{event_type}-rule`.
    pub fn rule(event_type: &str) -> Self {
        let mut b = Self::detection();
        b.event.kind = EventKind::Rule;
        b.event.rule = Some(RuleInfo {
            rule: format!("{event_type}-rule"),
            rule_type: RuleType::Dwell,
            event_type: event_type.into(),
            category: None,
            phase: Phase::Start,
            problem_id: Ulid::new(),
            zone: None,
            track_ids: Vec::new(),
            started_ms: 0,
            duration_ms: 0,
            count: None,
            direction: None,
            value: None,
            metric: None,
            snapshot: None,
        });
        b
    }

    pub fn id(mut self, id: Ulid) -> Self {
        self.event.id = id;
        self
    }

    pub fn site(mut self, site: &str) -> Self {
        self.event.site = site.into();
        self
    }

    pub fn device(mut self, device: &str) -> Self {
        self.event.device = device.into();
        self
    }

    pub fn camera(mut self, camera: &str) -> Self {
        self.event.camera = camera.into();
        self
    }

    pub fn ts(mut self, ts_ms: i64) -> Self {
        self.event.ts_ms = ts_ms;
        self
    }

    /// `width` x `height` instead of 768x576, with no presentation time.
    pub fn frame(mut self, width: u32, height: u32) -> Self {
        self.event.frame = Some(FrameInfo {
            seq: 1,
            pts_ms: None,
            width,
            height,
        });
        self
    }

    /// No frame and no model, as a rule event from a sensor (it may then have no objects).
    pub fn without_frame(mut self) -> Self {
        self.event.frame = None;
        self.event.model = None;
        self
    }

    /// Adds one object per `(class id, label)`.
    pub fn objects(mut self, objects: &[(u32, &str)]) -> Self {
        self.event
            .objects
            .extend(objects.iter().map(|(class_id, label)| Detection {
                class_id: *class_id,
                label: (*label).into(),
                score: 0.8,
                bbox: BBox {
                    x1: 10.0,
                    y1: 20.0,
                    x2: 50.0,
                    y2: 120.0,
                },
                track_id: None,
            }));
        self
    }

    /// Gives every object track `id` and names it in the rule's `track_ids`.
    pub fn track(mut self, id: u64) -> Self {
        for o in &mut self.event.objects {
            o.track_id = Some(id);
        }
        if let Some(r) = &mut self.event.rule {
            r.track_ids.push(id);
        }
        self
    }

    fn rule_mut(&mut self) -> &mut RuleInfo {
        self.event
            .rule
            .as_mut()
            .expect("rule fields are for EventBuilder::rule")
    }

    /// The rule's id (from the agent's config).
    pub fn rule_id(mut self, rule: &str) -> Self {
        self.rule_mut().rule = rule.into();
        self
    }

    pub fn rule_type(mut self, rule_type: RuleType) -> Self {
        self.rule_mut().rule_type = rule_type;
        self
    }

    pub fn category(mut self, code: &str) -> Self {
        self.rule_mut().category = Some(code.into());
        self
    }

    pub fn phase(mut self, phase: Phase) -> Self {
        self.rule_mut().phase = phase;
        self
    }

    pub fn problem(mut self, problem_id: Ulid) -> Self {
        self.rule_mut().problem_id = problem_id;
        self
    }

    pub fn zone(mut self, zone: &str) -> Self {
        self.rule_mut().zone = Some(zone.into());
        self
    }

    /// The condition lasted `duration_ms` so far: it began that long before `ts`.
    pub fn dwell(mut self, duration_ms: i64) -> Self {
        self.rule_mut().duration_ms = duration_ms;
        self.dwelt = true;
        self
    }

    /// `rule.duration_ms` alone (`started_ms` stays at `ts`).
    pub fn duration(mut self, duration_ms: i64) -> Self {
        self.rule_mut().duration_ms = duration_ms;
        self
    }

    /// The evidence snapshot's id.
    pub fn snapshot(mut self, snapshot: Ulid) -> Self {
        self.rule_mut().snapshot = Some(snapshot.to_string());
        self
    }

    pub fn build(mut self) -> Event {
        let ts = self.event.ts_ms;
        let dwelt = self.dwelt;
        if let Some(r) = &mut self.event.rule {
            r.started_ms = if dwelt { ts - r.duration_ms } else { ts };
        }
        self.event
    }

    /// The event as JSON bytes.
    pub fn json(self) -> Vec<u8> {
        json(&self.build())
    }
}

/// Builds [`Telemetry`]. Defaults: site `yuexi`, now; metrics must be added (telemetry holds
/// 1..=256).
#[derive(Debug, Clone)]
pub struct TelemetryBuilder(Telemetry);

impl TelemetryBuilder {
    /// Telemetry of `device`'s `source` (a sensor id, a camera id or `agent`).
    pub fn new(device: &str, source: &str) -> Self {
        TelemetryBuilder(Telemetry {
            v: 1,
            id: Ulid::new(),
            site: SITE.into(),
            device: device.into(),
            source: source.into(),
            ts_ms: csb_wire::now_ms(),
            metrics: BTreeMap::new(),
        })
    }

    pub fn ts(mut self, ts_ms: i64) -> Self {
        self.0.ts_ms = ts_ms;
        self
    }

    pub fn metric(mut self, name: &str, value: f64) -> Self {
        self.0.metrics.insert(name.into(), value);
        self
    }

    pub fn metrics(mut self, metrics: &[(&str, f64)]) -> Self {
        for (k, v) in metrics {
            self.0.metrics.insert(k.to_string(), *v);
        }
        self
    }

    pub fn build(self) -> Telemetry {
        self.0
    }

    pub fn json(self) -> Vec<u8> {
        json(&self.0)
    }
}

/// Builds a [`DeviceStatus`]. Defaults: site `yuexi`, now, agent 0.1.0, no cameras, sensors or
/// outbox. Cameras run at 10 fps.
#[derive(Debug, Clone)]
pub struct StatusBuilder(DeviceStatus);

impl StatusBuilder {
    pub fn new(device: &str, state: DeviceState) -> Self {
        StatusBuilder(DeviceStatus {
            v: 1,
            site: SITE.into(),
            device: device.into(),
            ts_ms: csb_wire::now_ms(),
            state,
            agent_version: Some("0.1.0".into()),
            cameras: Vec::new(),
            sensors: Vec::new(),
            outbox: None,
            config_version: None,
            model: None,
        })
    }

    pub fn ts(mut self, ts_ms: i64) -> Self {
        self.0.ts_ms = ts_ms;
        self
    }

    /// No `agent_version` (an agent too old to say).
    pub fn without_version(mut self) -> Self {
        self.0.agent_version = None;
        self
    }

    pub fn camera(mut self, id: &str, state: CameraState) -> Self {
        self.0.cameras.push(CameraStatus {
            id: id.into(),
            state,
            fps: Some(10.0),
            error: None,
            health: None,
        });
        self
    }

    pub fn sensor(mut self, sensor: SensorStatus) -> Self {
        self.0.sensors.push(sensor);
        self
    }

    pub fn outbox(mut self, outbox: OutboxStatus) -> Self {
        self.0.outbox = Some(outbox);
        self
    }

    pub fn build(self) -> DeviceStatus {
        self.0
    }

    pub fn json(self) -> Vec<u8> {
        json(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_builders_make_is_valid_on_the_wire() {
        let events = [
            EventBuilder::detection().build(),
            EventBuilder::detection().objects(&[(0, "person")]).build(),
            EventBuilder::detection().frame(640, 480).build(),
            EventBuilder::rule("illegal_parking").build(),
            EventBuilder::rule("illegal_parking")
                .objects(&[(2, "car")])
                .track(7)
                .zone("gate")
                .category("0201")
                .phase(Phase::End)
                .dwell(300_000)
                .snapshot(Ulid::new())
                .build(),
            EventBuilder::rule("waterlogging").without_frame().build(),
        ];
        for e in events {
            let back: Event = csb_wire::decode(&json(&e)).unwrap_or_else(|x| panic!("{x}: {e:?}"));
            assert_eq!(back, e);
        }
        let t = telemetry("gw-01", "wl-01", T0, &[("water_level_cm", 12.5)]);
        assert_eq!(csb_wire::decode::<Telemetry>(&json(&t)).unwrap(), t);
        let s = StatusBuilder::new("gw-01", DeviceState::Online)
            .camera("cam-01", CameraState::Running)
            .sensor(SensorStatus {
                readings_total: 3,
                ..sensor_status("wl-01", SensorState::Reporting)
            })
            .build();
        assert_eq!(csb_wire::decode::<DeviceStatus>(&json(&s)).unwrap(), s);
    }

    #[test]
    fn a_dwell_begins_before_the_event() {
        let e = EventBuilder::rule("illegal_parking")
            .dwell(10_000)
            .ts(T0)
            .build();
        let r = e.rule.unwrap();
        assert_eq!((r.started_ms, r.duration_ms), (T0 - 10_000, 10_000));
        let e = EventBuilder::rule("x").ts(T0).duration(5).build();
        assert_eq!(e.rule.unwrap().started_ms, T0);
    }

    #[test]
    fn signed_payloads_verify_with_the_device_key() {
        let t = topic("gw-01", "event");
        let e = json(&event("gw-01", "cam-01", T0, &[]));
        let p = signed(&t, e, Some("s3cret"));
        csb_wire::sign::verify(&t, &p, &csb_wire::sign::signing_key("s3cret")).unwrap();
        assert_eq!(signed(&t, b"{}".to_vec(), None), b"{}");
    }
}
