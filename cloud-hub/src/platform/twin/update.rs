//! Ingested data → live attributes. Only devices of the county inventory are followed: data
//! from others is ignored here (the inventory reports them as unregistered).
//!
//! | entity | attribute | from | policy |
//! |---|---|---|---|
//! | Gateway | `status` (`online`/`offline`), `agentVersion`, `configVersion` (the fleet configuration it runs) | status (incl. the last will) | on change |
//! | Gateway | `outboxPending` | status `outbox.pending` | ≤ 1/min |
//! | Camera | `status` (`online` when its gateway is online and it is `starting`/`running`), `cameraState`, `lastError` | the gateway's status | on change |
//! | Camera | `fps` | status `cameras[].fps`, telemetry `{cam}.fps` | ≤ 1/min |
//! | Sensor | `status` (`online` when its gateway is online and it is not `silent`), `sensorState` | the gateway's status | on change |
//! | Sensor | each metric it reports (`water_level_cm`, `tilt_deg`, `pm25_ugm3` …: the window mean) | telemetry with `source` = the sensor | every reading |
//! | Sensor | `alarm` (the `event_type` of an open threshold problem, or `none`) | `sensor_threshold` rule events | on change |
//! | Zone | `lastEventType` | rule events naming the zone (not `update`s) | every event |
//! | Zone | `activeProblems` (open problems), `occupancy` (the rule's `count`, else its objects; 0 when nothing is open) | rule events naming the zone | on change |
//! | RoadSegment | `intensity` (crossings in the window), `intensityByClass`, `flowPerHour` | `agent` telemetry `{cam}.flow.{line}.{class}.{dir}` of cameras whose `lines` map to the road | every window |
//!
//! Status attributes are observed at the hub's receive time: a last will's `ts_ms` is the
//! time its agent connected, not when it went silent.
//!
//! Traffic flow comes from the agent's flow telemetry rather than from line-crossing events:
//! the events do not name their line, may be switched off on busy roads (`events = false`),
//! and the telemetry covers exactly the agent's health window, zeros included. A road watched
//! by several lines (two cameras on one segment) takes the busiest line of the window, not the
//! sum, since the cameras see the same vehicles.

use std::collections::{BTreeMap, HashMap};

use csb_wire::{
    CameraState, DeviceState, DeviceStatus, Event, Phase, RuleType, SensorState, Telemetry,
};
use serde_json::{json, Value};

use super::history::Record;
use super::{Change, Input, Live, Observed, Policy, State, MAX_LIVE_ATTRS};

/// fps and outbox depth jitter: at most one history instance a minute.
const SAMPLE_MS: i64 = 60_000;
/// An open problem not seen for this long (no update, no end: the agent restarted) is dropped.
const PROBLEM_STALE_MS: i64 = 3_600_000;
/// Open problems tracked per zone at most.
const MAX_PROBLEMS: usize = 1000;
/// A flow window longer than this (or a first one) has no known length: no `flowPerHour`.
const MAX_WINDOW_MS: i64 = 3_600_000;

/// Collects changes per entity in the order they happen.
struct Changes<'a> {
    st: &'a mut State,
    out: Vec<(usize, Vec<(String, Observed)>)>,
    at: HashMap<usize, usize>,
    /// Observations older than the current value: history only.
    backfill: Vec<Record>,
}

impl Changes<'_> {
    /// Sets a live attribute; records a change per `policy`. An observation older than the
    /// current one does not replace it, but still becomes history when every observation
    /// counts (a replayed backlog fills the time series).
    fn set(&mut self, i: usize, name: &str, value: Value, observed_ms: i64, policy: Policy) {
        let Some(e) = self.st.entities.get_mut(i) else {
            return;
        };
        let obs = Observed { value, observed_ms };
        let record = match e.live.get_mut(name) {
            None => {
                if e.live.len() >= MAX_LIVE_ATTRS {
                    return;
                }
                e.live.insert(
                    name.to_string(),
                    Live {
                        current: obs.clone(),
                        recorded_ms: observed_ms,
                    },
                );
                true
            }
            Some(l) if observed_ms < l.current.observed_ms => {
                if policy == Policy::Always {
                    self.backfill.push(Record {
                        entity: e.id.clone(),
                        attr: name.to_string(),
                        obs,
                        current: false,
                    });
                }
                return;
            }
            Some(l) => {
                let changed = l.current.value != obs.value;
                let record = match policy {
                    Policy::Always => true,
                    Policy::OnChange => changed,
                    Policy::Sampled(ms) => changed && observed_ms - l.recorded_ms >= ms,
                };
                l.current = obs.clone();
                if record {
                    l.recorded_ms = observed_ms;
                }
                record
            }
        };
        if record {
            // One change per entity, unless an attribute changes twice in the batch (two
            // readings): then a new change, so the stream shows both values.
            let k = match self.at.get(&i) {
                Some(&k) if !self.out[k].1.iter().any(|(n, _)| n == name) => k,
                _ => {
                    self.out.push((i, Vec::new()));
                    self.at.insert(i, self.out.len() - 1);
                    self.out.len() - 1
                }
            };
            self.out[k].1.push((name.to_string(), obs));
        }
    }

    fn finish(self) -> (Vec<Change>, Vec<Record>) {
        let st = self.st;
        let changes = self
            .out
            .into_iter()
            .map(|(i, attrs)| {
                let seq = st.next_seq;
                st.next_seq += 1;
                Change {
                    seq,
                    entity: st.entities[i].id.clone(),
                    kind: st.entities[i].kind,
                    attrs,
                }
            })
            .collect();
        (changes, self.backfill)
    }
}

/// The changes of a batch (for the stream and history), and older observations (history only).
pub(crate) fn apply(st: &mut State, input: &Input) -> (Vec<Change>, Vec<Record>) {
    let mut c = Changes {
        st,
        out: Vec::new(),
        at: HashMap::new(),
        backfill: Vec::new(),
    };
    let b = &input.batch;
    for (s, received_ms) in &b.statuses {
        status(&mut c, s, *received_ms);
    }
    for e in b
        .events
        .iter()
        .filter(|e| !input.duplicates.contains(&e.id))
    {
        event(&mut c, e);
    }
    for t in b
        .telemetry
        .iter()
        .filter(|t| !input.duplicates.contains(&t.id))
    {
        telemetry(&mut c, t);
    }
    c.finish()
}

fn camera_state(s: CameraState) -> &'static str {
    match s {
        CameraState::Starting => "starting",
        CameraState::Running => "running",
        CameraState::Reconnecting => "reconnecting",
        CameraState::Failed => "failed",
        CameraState::Stopped => "stopped",
    }
}

fn sensor_state(s: SensorState) -> &'static str {
    match s {
        SensorState::Waiting => "waiting",
        SensorState::Reporting => "reporting",
        SensorState::Silent => "silent",
    }
}

fn online(b: bool) -> Value {
    json!(if b { "online" } else { "offline" })
}

fn status(c: &mut Changes, s: &DeviceStatus, at: i64) {
    let gw = format!("{}/{}", s.site, s.device);
    let Some(&g) = c.st.links.gateways.get(&gw) else {
        return;
    };
    let up = s.state == DeviceState::Online;
    c.set(g, "status", online(up), at, Policy::OnChange);
    if let Some(v) = &s.agent_version {
        c.set(g, "agentVersion", json!(v), at, Policy::OnChange);
    }
    if let Some(v) = s.config_version {
        c.set(g, "configVersion", json!(v), at, Policy::OnChange);
    }
    if let Some(o) = &s.outbox {
        c.set(
            g,
            "outboxPending",
            json!(o.pending),
            at,
            Policy::Sampled(SAMPLE_MS),
        );
    }
    let cams =
        c.st.links
            .gateway_cameras
            .get(&gw)
            .cloned()
            .unwrap_or_default();
    for (local, i) in cams {
        let reported = s.cameras.iter().find(|x| x.id == local);
        let running = reported
            .is_some_and(|x| matches!(x.state, CameraState::Starting | CameraState::Running));
        c.set(i, "status", online(up && running), at, Policy::OnChange);
        if !up {
            continue;
        }
        match reported {
            Some(x) => {
                c.set(
                    i,
                    "cameraState",
                    json!(camera_state(x.state)),
                    at,
                    Policy::OnChange,
                );
                if let Some(fps) = x.fps {
                    let fps = (f64::from(fps) * 10.0).round() / 10.0;
                    c.set(i, "fps", json!(fps), at, Policy::Sampled(SAMPLE_MS));
                }
                let err = x.error.clone().unwrap_or_default();
                c.set(i, "lastError", json!(err), at, Policy::OnChange);
            }
            // The gateway is up but does not run this camera (its config lacks it).
            None => c.set(i, "cameraState", json!("absent"), at, Policy::OnChange),
        }
    }
    let sensors =
        c.st.links
            .gateway_sensors
            .get(&gw)
            .cloned()
            .unwrap_or_default();
    for (local, i) in sensors {
        let reported = s.sensors.iter().find(|x| x.id == local);
        // A gateway that reports no sensor list (older agent) still vouches for being up.
        let ok = up && reported.is_none_or(|x| x.state != SensorState::Silent);
        c.set(i, "status", online(ok), at, Policy::OnChange);
        if let (true, Some(x)) = (up, reported) {
            c.set(
                i,
                "sensorState",
                json!(sensor_state(x.state)),
                at,
                Policy::OnChange,
            );
        }
    }
}

fn event(c: &mut Changes, e: &Event) {
    let Some(rule) = &e.rule else { return };
    let source = format!("{}/{}/{}", e.site, e.device, e.camera);
    if rule.rule_type == RuleType::SensorThreshold {
        if let Some(&i) = c.st.links.sensors.get(&source) {
            let alarm = match rule.phase {
                Phase::Start | Phase::Update => json!(rule.event_type),
                Phase::End => json!("none"),
                Phase::Instant => return,
            };
            c.set(i, "alarm", alarm, e.ts_ms, Policy::OnChange);
        }
        return;
    }
    let Some(zone) = &rule.zone else { return };
    let Some(&z) = c.st.links.zones.get(&(source, zone.clone())) else {
        return;
    };
    if rule.phase != Phase::Update {
        c.set(
            z,
            "lastEventType",
            json!(rule.event_type),
            e.ts_ms,
            Policy::Always,
        );
    }
    let open = {
        let problems = c.st.aux.problems.entry(z).or_default();
        match rule.phase {
            Phase::Start | Phase::Update => {
                if problems.len() < MAX_PROBLEMS || problems.contains_key(&rule.problem_id) {
                    problems.insert(rule.problem_id, e.ts_ms);
                }
            }
            Phase::End => {
                problems.remove(&rule.problem_id);
            }
            Phase::Instant => {}
        }
        problems.retain(|_, seen| e.ts_ms - *seen < PROBLEM_STALE_MS);
        problems.len()
    };
    c.set(z, "activeProblems", json!(open), e.ts_ms, Policy::OnChange);
    match rule.phase {
        Phase::Start | Phase::Update => {
            let n = rule.count.map_or(e.objects.len() as u64, u64::from);
            c.set(z, "occupancy", json!(n), e.ts_ms, Policy::OnChange);
        }
        Phase::End if open == 0 => c.set(z, "occupancy", json!(0), e.ts_ms, Policy::OnChange),
        _ => {}
    }
}

/// A metric name usable as an NGSI-LD attribute name (and in `q`).
fn attr_name_ok(s: &str) -> bool {
    s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn telemetry(c: &mut Changes, t: &Telemetry) {
    let gw = format!("{}/{}", t.site, t.device);
    if t.source != "agent" {
        let id = format!("{gw}/{}", t.source);
        if let Some(&i) = c.st.links.sensors.get(&id) {
            // The window mean under the metric's own name; `.min`/`.max`/`.count` stay in the
            // raw telemetry.
            for (k, v) in t.metrics.iter().filter(|(k, _)| attr_name_ok(k)) {
                c.set(i, k, json!(v), t.ts_ms, Policy::Always);
            }
        }
        return;
    }
    let Some(&g) = c.st.links.gateways.get(&gw) else {
        return;
    };
    let cams =
        c.st.links
            .gateway_cameras
            .get(&gw)
            .cloned()
            .unwrap_or_default();
    for (local, i) in &cams {
        if let Some(fps) = t.metrics.get(&format!("{local}.fps")) {
            c.set(*i, "fps", json!(fps), t.ts_ms, Policy::Sampled(SAMPLE_MS));
        }
    }
    let Some(lines) = c.st.links.gateway_lines.get(&gw).cloned() else {
        return;
    };
    let window =
        c.st.aux
            .last_agent_ms
            .insert(g, t.ts_ms)
            .map(|prev| t.ts_ms - prev)
            .filter(|w| (1..=MAX_WINDOW_MS).contains(w));
    // Per road: the busiest line's (total, by class).
    let mut roads: BTreeMap<usize, (f64, BTreeMap<String, f64>)> = BTreeMap::new();
    for (cam, line, road) in &lines {
        let prefix = format!("{cam}.flow.{line}.");
        let mut total = 0.0;
        let mut by_class: BTreeMap<String, f64> = BTreeMap::new();
        for (k, v) in t.metrics.range(prefix.clone()..) {
            let Some(rest) = k.strip_prefix(&prefix) else {
                break;
            };
            // `{class}.{dir}`
            let Some((class, _dir)) = rest.rsplit_once('.') else {
                continue;
            };
            total += v;
            *by_class.entry(class.to_string()).or_default() += v;
        }
        let slot = roads.entry(*road).or_insert((-1.0, BTreeMap::new()));
        if total > slot.0 {
            *slot = (total, by_class);
        }
    }
    for (road, (total, by_class)) in roads {
        c.set(road, "intensity", json!(total), t.ts_ms, Policy::Always);
        c.set(
            road,
            "intensityByClass",
            json!(by_class),
            t.ts_ms,
            Policy::Always,
        );
        if let Some(w) = window {
            let per_hour = (total * 3_600_000.0 / w as f64 * 10.0).round() / 10.0;
            c.set(
                road,
                "flowPerHour",
                json!(per_hour),
                t.ts_ms,
                Policy::Always,
            );
        }
    }
}
