//! The per-camera rule engine: tracks in, rule events (start/update/end/instant) out.

use std::collections::{BTreeMap, HashMap};

use csb_wire::{BBox, Detection, Phase, RuleInfo, RuleType};
use ulid::Ulid;

use super::config::{RuleConfig, RuleKind, RulesConfig, RulesConfigError, SensorThresholdRule};
use super::geometry::{point_in_polygon, segments_intersect, signed_distance, Pt};
use super::schedule::Schedule;
use crate::perception::{FrameMeta, TrackedObject};

/// Half-width of the band around a counting line, as a fraction of the frame diagonal, inside
/// which an anchor is on neither side (≈ 5 px at 768×576, 11 px at 1080p): box jitter on the
/// line cannot count.
pub const LINE_BAND_FRACTION: f64 = 0.005;

/// One rule event, ready to be wrapped in a `csb_wire::Event` of kind `rule`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleOutput {
    /// `snapshot` is left `None`: evidence is attached downstream.
    pub info: RuleInfo,
    /// The tracks involved, boxes clamped into the frame, `track_id` set. Empty for sensor rules.
    pub objects: Vec<Detection>,
}

/// Crossings of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirectionCounts {
    /// Left → right of the line's `from → to` vector (`"in"`).
    pub in_count: u64,
    /// Right → left (`"out"`).
    pub out_count: u64,
}

/// The counters of one line-crossing rule over one window.
#[derive(Debug, Clone, PartialEq)]
pub struct LineCounts {
    pub rule: String,
    pub line: String,
    /// Window start (first frame after the previous take), Unix ms.
    pub since_ms: i64,
    /// Window end (the take, or the latest frame for [`RuleEngine::counts`]), Unix ms.
    pub until_ms: i64,
    /// Label → counts; only classes that crossed appear.
    pub by_class: BTreeMap<String, DirectionCounts>,
}

impl LineCounts {
    pub fn total(&self) -> DirectionCounts {
        self.by_class
            .values()
            .fold(DirectionCounts::default(), |a, c| DirectionCounts {
                in_count: a.in_count + c.in_count,
                out_count: a.out_count + c.out_count,
            })
    }

    /// Telemetry metrics: `{rule}.in`, `{rule}.out` (all classes) and `{rule}.{label}.in|out`.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        let t = self.total();
        m.insert(format!("{}.in", self.rule), t.in_count as f64);
        m.insert(format!("{}.out", self.rule), t.out_count as f64);
        for (label, c) in &self.by_class {
            m.insert(format!("{}.{label}.in", self.rule), c.in_count as f64);
            m.insert(format!("{}.{label}.out", self.rule), c.out_count as f64);
        }
        m
    }
}

/// A boolean that changes only after `frames` consecutive observations disagree with it.
#[derive(Debug, Clone, Copy)]
struct Debounced {
    state: bool,
    /// When the current state began: the first frame of the streak that flipped it.
    since_ms: i64,
    pending: u32,
    pending_since_ms: i64,
}

impl Debounced {
    fn new(state: bool, ts: i64) -> Self {
        Debounced {
            state,
            since_ms: ts,
            pending: 0,
            pending_since_ms: ts,
        }
    }

    fn update(&mut self, raw: bool, ts: i64, frames: u32) {
        if raw == self.state {
            self.pending = 0;
            return;
        }
        if self.pending == 0 {
            self.pending_since_ms = ts;
        }
        self.pending += 1;
        if self.pending >= frames.max(1) {
            self.state = raw;
            self.since_ms = self.pending_since_ms;
            self.pending = 0;
        }
    }
}

/// An open problem.
#[derive(Debug, Clone, Copy)]
struct Problem {
    id: Ulid,
    started_ms: i64,
    last_emit_ms: i64,
}

impl Problem {
    fn open(started_ms: i64, ts: i64) -> Self {
        Problem {
            // Time-ordered by the frame clock, so replays produce ordered ids too.
            id: Ulid::from_parts(ts.max(0) as u64, Ulid::new().random()),
            started_ms,
            last_emit_ms: ts,
        }
    }

    /// Whether an Update is due at `ts` (and marks it sent).
    fn update_due(&mut self, ts: i64, interval_ms: i64) -> bool {
        if ts - self.last_emit_ms >= interval_ms {
            self.last_emit_ms = ts;
            true
        } else {
            false
        }
    }
}

fn cooled(last_end: Option<i64>, ts: i64, cooldown_ms: i64) -> bool {
    last_end.is_none_or(|end| ts - end >= cooldown_ms)
}

fn ms(secs: f64) -> i64 {
    (secs * 1000.0).round() as i64
}

fn class_ok(classes: &[String], label: &str) -> bool {
    classes.is_empty() || classes.iter().any(|c| c == label)
}

fn anchor(o: &TrackedObject) -> Pt {
    let (x, y) = o.anchor();
    (x as f64, y as f64)
}

/// The track as a wire detection, its box clamped into the frame (a coasting prediction can
/// drift outside, which the hub would refuse).
fn detection(o: &TrackedObject, size: (u32, u32)) -> Detection {
    let (w, h) = (size.0 as f32, size.1 as f32);
    let c = |v: f32, max: f32| {
        if v.is_finite() {
            v.clamp(0.0, max)
        } else {
            0.0
        }
    };
    let (x1, x2) = (c(o.bbox.x1, w), c(o.bbox.x2, w));
    let (y1, y2) = (c(o.bbox.y1, h), c(o.bbox.y2, h));
    Detection {
        class_id: o.class_id,
        label: o.label.clone(),
        score: if o.score.is_finite() {
            o.score.clamp(0.0, 1.0)
        } else {
            0.0
        },
        bbox: BBox {
            x1: x1.min(x2),
            y1: y1.min(y2),
            x2: x1.max(x2),
            y2: y1.max(y2),
        },
        track_id: Some(o.track_id),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    In,
    Out,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

struct ZoneRt {
    id: String,
    norm: Vec<Pt>,
    px: Vec<Pt>,
    classes: Vec<String>,
    inertia: u32,
}

struct LineRt {
    id: String,
    norm: (Pt, Pt),
    px: (Pt, Pt),
    classes: Vec<String>,
}

/// Which side of a line a track was last seen clearly on, and where.
#[derive(Debug, Clone, Copy, Default)]
struct LineSide {
    side: i8,
    anchor: Pt,
}

impl LineSide {
    /// Feeds an observed anchor; returns the direction when the track crossed the segment.
    fn observe(&mut self, p: Pt, line: (Pt, Pt), band: f64) -> Option<Direction> {
        let d = signed_distance(line.0, line.1, p);
        if d.abs() <= band {
            return None; // on the line: wait until it is clearly on one side
        }
        let side = if d > 0.0 { 1 } else { -1 };
        let prev = *self;
        *self = LineSide { side, anchor: p };
        if prev.side == 0 || prev.side == side {
            return None;
        }
        // Changed sides: it crossed this line only if its path went through the segment, not
        // around one of its ends.
        if !segments_intersect(prev.anchor, p, line.0, line.1) {
            return None;
        }
        Some(if side > 0 {
            Direction::In
        } else {
            Direction::Out
        })
    }
}

struct TrackState {
    obj: TrackedObject,
    /// Membership per zone (index as in the config).
    zones: Vec<Debounced>,
    lines: Vec<LineSide>,
}

struct RuleMeta {
    id: String,
    event_type: String,
    category: Option<String>,
    rule_type: RuleType,
    cooldown_ms: i64,
    update_ms: i64,
    /// The watched metric, for sensor rules.
    metric: Option<String>,
}

impl RuleMeta {
    fn info(&self, phase: Phase, p: &Problem, ts: i64) -> RuleInfo {
        RuleInfo {
            rule: self.id.clone(),
            rule_type: self.rule_type,
            event_type: self.event_type.clone(),
            category: self.category.clone(),
            phase,
            problem_id: p.id,
            zone: None,
            track_ids: Vec::new(),
            started_ms: p.started_ms,
            duration_ms: (ts - p.started_ms).max(0),
            count: None,
            direction: None,
            value: None,
            metric: self.metric.clone(),
            snapshot: None,
        }
    }
}

struct DwellTrack {
    stationary: Debounced,
    problem: Option<Problem>,
}

struct DwellState {
    zone: usize,
    classes: Vec<String>,
    min_ms: i64,
    max_speed: f64,
    tracks: BTreeMap<u64, DwellTrack>,
    /// Track → when its last problem ended.
    ended: HashMap<u64, i64>,
}

/// Crowd and presence: one problem per zone.
struct ZoneCountState {
    zone: usize,
    classes: Vec<String>,
    min_count: usize,
    min_ms: i64,
    schedule: Option<Schedule>,
    over: Option<Debounced>,
    problem: Option<Problem>,
    last_end: Option<i64>,
}

struct LineState {
    line: usize,
    classes: Vec<String>,
    debounce_ms: i64,
    report_ms: i64,
    events: bool,
    /// Track → when it was last counted in (0) and out (1).
    last_counted: HashMap<u64, [Option<i64>; 2]>,
    window_start: Option<i64>,
    by_class: BTreeMap<String, DirectionCounts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SensorSide {
    Above,
    Below,
    Rising,
    Falling,
}

impl SensorSide {
    fn as_str(self) -> &'static str {
        match self {
            SensorSide::Above => "above",
            SensorSide::Below => "below",
            SensorSide::Rising => "rising",
            SensorSide::Falling => "falling",
        }
    }
}

#[derive(Default)]
struct SensorCond {
    pending: Option<(i64, SensorSide)>,
    problem: Option<(Problem, SensorSide)>,
    last_end: Option<i64>,
}

struct SensorState {
    cfg: SensorThresholdRule,
    min_ms: i64,
    last: Option<(i64, f64)>,
    level: SensorCond,
    rate: SensorCond,
}

enum RuleState {
    Dwell(DwellState),
    Crowd(ZoneCountState),
    Presence(ZoneCountState),
    Line(LineState),
    Sensor(SensorState),
}

struct RuleRt {
    meta: RuleMeta,
    state: RuleState,
}

/// Turns the tracks of one camera (and sensor readings) into rule events. Its only clock is
/// the timestamps it is given, so replays and tests control time.
pub struct RuleEngine {
    cfg: RulesConfig,
    zones: Vec<ZoneRt>,
    lines: Vec<LineRt>,
    rules: Vec<RuleRt>,
    tracks: BTreeMap<u64, TrackState>,
    size: (u32, u32),
    last_ts: Option<i64>,
}

impl RuleEngine {
    /// Validates `cfg` and builds the engine.
    pub fn new(cfg: RulesConfig) -> Result<Self, RulesConfigError> {
        cfg.validate()?;
        let zones: Vec<ZoneRt> = cfg
            .zones
            .iter()
            .map(|z| {
                let norm: Vec<Pt> = z
                    .polygon
                    .iter()
                    .map(|p| (p[0] as f64, p[1] as f64))
                    .collect();
                ZoneRt {
                    id: z.id.clone(),
                    px: norm.clone(),
                    norm,
                    classes: z.classes.clone(),
                    inertia: z.inertia_frames,
                }
            })
            .collect();
        let lines: Vec<LineRt> = cfg
            .lines
            .iter()
            .map(|l| {
                let norm = (
                    (l.from[0] as f64, l.from[1] as f64),
                    (l.to[0] as f64, l.to[1] as f64),
                );
                LineRt {
                    id: l.id.clone(),
                    norm,
                    px: norm,
                    classes: l.classes.clone(),
                }
            })
            .collect();
        let zone_ix = |id: &str| zones.iter().position(|z| z.id == id).unwrap_or(0);
        let line_ix = |id: &str| lines.iter().position(|l| l.id == id).unwrap_or(0);
        let rules = cfg
            .rules
            .iter()
            .map(|r| RuleRt {
                meta: meta(r),
                state: match &r.kind {
                    RuleKind::Dwell(d) => RuleState::Dwell(DwellState {
                        zone: zone_ix(&d.zone),
                        classes: d.classes.clone(),
                        min_ms: ms(d.min_dwell_s),
                        max_speed: d.max_speed_px_s,
                        tracks: BTreeMap::new(),
                        ended: HashMap::new(),
                    }),
                    RuleKind::Crowd(c) => RuleState::Crowd(ZoneCountState {
                        zone: zone_ix(&c.zone),
                        classes: c.classes.clone(),
                        min_count: c.min_count as usize,
                        min_ms: ms(c.min_duration_s),
                        schedule: None,
                        over: None,
                        problem: None,
                        last_end: None,
                    }),
                    RuleKind::Presence(p) => RuleState::Presence(ZoneCountState {
                        zone: zone_ix(&p.zone),
                        classes: p.classes.clone(),
                        min_count: 1,
                        min_ms: ms(p.min_duration_s),
                        schedule: Some(Schedule::new(&p.schedule)),
                        over: None,
                        problem: None,
                        last_end: None,
                    }),
                    RuleKind::LineCrossing(l) => RuleState::Line(LineState {
                        line: line_ix(&l.line),
                        classes: l.classes.clone(),
                        debounce_ms: ms(l.debounce_s),
                        report_ms: ms(l.report_interval_s),
                        events: l.events,
                        last_counted: HashMap::new(),
                        window_start: None,
                        by_class: BTreeMap::new(),
                    }),
                    RuleKind::SensorThreshold(s) => RuleState::Sensor(SensorState {
                        cfg: s.clone(),
                        min_ms: ms(s.min_duration_s),
                        last: None,
                        level: SensorCond::default(),
                        rate: SensorCond::default(),
                    }),
                },
            })
            .collect();
        Ok(RuleEngine {
            cfg,
            zones,
            lines,
            rules,
            tracks: BTreeMap::new(),
            size: (1, 1),
            last_ts: None,
        })
    }

    pub fn config(&self) -> &RulesConfig {
        &self.cfg
    }

    /// Whether any rule looks at camera frames (false for a sensor-only engine).
    pub fn needs_frames(&self) -> bool {
        self.rules
            .iter()
            .any(|r| !matches!(r.state, RuleState::Sensor(_)))
    }

    fn set_frame_size(&mut self, w: u32, h: u32) {
        if self.size == (w, h) {
            return;
        }
        self.size = (w, h);
        let (fw, fh) = (w as f64, h as f64);
        let px = |p: Pt| (p.0 * fw, p.1 * fh);
        for z in &mut self.zones {
            z.px = z.norm.iter().map(|p| px(*p)).collect();
        }
        for l in &mut self.lines {
            l.px = (px(l.norm.0), px(l.norm.1));
        }
    }

    /// Feeds the tracks of one frame. Tracks missing from `tracks` are gone (their problems
    /// end); a track with `missed > 0` is still present, coasting on its prediction: it keeps
    /// its zone membership and stationary state until a detection matches it again, and it
    /// never counts a line crossing.
    pub fn on_frame(&mut self, frame: &FrameMeta, tracks: &[TrackedObject]) -> Vec<RuleOutput> {
        let mut out = Vec::new();
        if frame.width == 0 || frame.height == 0 {
            return out;
        }
        let ts = frame.ts_ms;
        self.set_frame_size(frame.width, frame.height);
        self.last_ts = Some(ts);
        let band = LINE_BAND_FRACTION * (frame.width as f64).hypot(frame.height as f64);

        let current: BTreeMap<u64, &TrackedObject> =
            tracks.iter().map(|t| (t.track_id, t)).collect();
        let mut crossings: Vec<(usize, u64, Direction)> = Vec::new();
        for (&id, &obj) in &current {
            let st = self.tracks.entry(id).or_insert_with(|| TrackState {
                obj: obj.clone(),
                zones: vec![Debounced::new(false, ts); self.zones.len()],
                lines: vec![LineSide::default(); self.lines.len()],
            });
            st.obj = obj.clone();
            if obj.missed > 0 {
                continue;
            }
            let p = anchor(obj);
            for (m, z) in st.zones.iter_mut().zip(&self.zones) {
                let raw = class_ok(&z.classes, &obj.label) && point_in_polygon(p, &z.px);
                m.update(raw, ts, z.inertia);
            }
            for (li, (side, l)) in st.lines.iter_mut().zip(&self.lines).enumerate() {
                if !class_ok(&l.classes, &obj.label) {
                    continue;
                }
                if let Some(dir) = side.observe(p, l.px, band) {
                    crossings.push((li, id, dir));
                }
            }
        }

        let ctx = FrameCtx {
            ts,
            size: self.size,
            tz: self.cfg.timezone_offset_minutes,
            current: &current,
            tracks: &self.tracks,
            zones: &self.zones,
            crossings: &crossings,
        };
        for rule in &mut self.rules {
            let m = &rule.meta;
            match &mut rule.state {
                RuleState::Dwell(s) => s.on_frame(m, &ctx, &mut out),
                RuleState::Crowd(s) | RuleState::Presence(s) => s.on_frame(m, &ctx, &mut out),
                RuleState::Line(s) => s.on_frame(m, &ctx, &mut out),
                RuleState::Sensor(_) => {}
            }
        }
        self.tracks.retain(|id, _| current.contains_key(id));
        out
    }

    /// Feeds one sensor reading to the `sensor_threshold` rules watching `sensor`/`metric`.
    /// Readings not newer than the previous one of a rule, and non-finite values, are ignored.
    pub fn on_sensor(
        &mut self,
        sensor: &str,
        metric: &str,
        ts_ms: i64,
        value: f64,
    ) -> Vec<RuleOutput> {
        let mut out = Vec::new();
        if !value.is_finite() {
            return out;
        }
        for rule in &mut self.rules {
            if let RuleState::Sensor(s) = &mut rule.state {
                if s.cfg.sensor == sensor && s.cfg.metric == metric {
                    s.on_reading(&rule.meta, ts_ms, value, &mut out);
                }
            }
        }
        out
    }

    /// Ends every open problem at `ts_ms` (camera stopped, config replaced, shutdown) and
    /// forgets all tracks; line counters are kept for a last `take_counts`.
    pub fn finish(&mut self, ts_ms: i64) -> Vec<RuleOutput> {
        let mut out = Vec::new();
        let size = self.size;
        for rule in &mut self.rules {
            let m = &rule.meta;
            match &mut rule.state {
                RuleState::Dwell(s) => {
                    for (id, t) in std::mem::take(&mut s.tracks) {
                        if let Some(p) = t.problem {
                            let objects: Vec<Detection> = self
                                .tracks
                                .get(&id)
                                .map(|t| detection(&t.obj, size))
                                .into_iter()
                                .collect();
                            out.push(RuleOutput {
                                info: RuleInfo {
                                    zone: Some(self.zones[s.zone].id.clone()),
                                    track_ids: vec![id],
                                    ..m.info(Phase::End, &p, ts_ms)
                                },
                                objects,
                            });
                            s.ended.insert(id, ts_ms);
                        }
                    }
                }
                RuleState::Crowd(s) | RuleState::Presence(s) => {
                    if let Some(p) = s.problem.take() {
                        out.push(RuleOutput {
                            info: RuleInfo {
                                zone: Some(self.zones[s.zone].id.clone()),
                                ..m.info(Phase::End, &p, ts_ms)
                            },
                            objects: Vec::new(),
                        });
                        s.last_end = Some(ts_ms);
                    }
                    s.over = None;
                }
                RuleState::Line(s) => s.last_counted.clear(),
                RuleState::Sensor(s) => {
                    let value = s.last.map(|l| l.1);
                    for c in [&mut s.level, &mut s.rate] {
                        c.pending = None;
                        if let Some((p, side)) = c.problem.take() {
                            out.push(sensor_output(m, Phase::End, &p, side, ts_ms, value));
                            c.last_end = Some(ts_ms);
                        }
                    }
                }
            }
        }
        self.tracks.clear();
        out
    }

    /// The line counters of the current windows (until the latest frame).
    pub fn counts(&self) -> Vec<LineCounts> {
        let now = self.last_ts.unwrap_or(0);
        self.rules
            .iter()
            .filter_map(|r| match &r.state {
                RuleState::Line(s) => Some(LineCounts {
                    rule: r.meta.id.clone(),
                    line: self.lines[s.line].id.clone(),
                    since_ms: s.window_start.unwrap_or(now),
                    until_ms: now,
                    by_class: s.by_class.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Crossings since the previous take as `((line id, label, "in" | "out"), count)`, only
    /// non-zero entries, sorted; the window closes at the latest frame. A line is counted by at
    /// most one rule (validation), so the line id is a unique key.
    pub fn take_counts(&mut self) -> Vec<((String, String, String), u64)> {
        let now = self.last_ts.unwrap_or(0);
        let mut v = Vec::new();
        for c in self.take_line_counts(now) {
            for (label, n) in c.by_class {
                for (dir, k) in [("in", n.in_count), ("out", n.out_count)] {
                    if k > 0 {
                        v.push(((c.line.clone(), label.clone(), dir.to_string()), k));
                    }
                }
            }
        }
        v.sort();
        v
    }

    /// Closes every line-counting window at `ts_ms`, returning its counters, and starts new
    /// ones.
    pub fn take_line_counts(&mut self, ts_ms: i64) -> Vec<LineCounts> {
        self.take_where(ts_ms, false)
    }

    /// Like [`take_line_counts`](Self::take_line_counts), but only for rules whose window has lasted
    /// their `report_interval_s`: call it on every frame or timer tick and publish what it
    /// returns.
    pub fn take_due_counts(&mut self, ts_ms: i64) -> Vec<LineCounts> {
        self.take_where(ts_ms, true)
    }

    fn take_where(&mut self, ts_ms: i64, only_due: bool) -> Vec<LineCounts> {
        let mut res = Vec::new();
        for r in &mut self.rules {
            if let RuleState::Line(s) = &mut r.state {
                let since = *s.window_start.get_or_insert(ts_ms);
                if only_due && ts_ms - since < s.report_ms {
                    continue;
                }
                res.push(LineCounts {
                    rule: r.meta.id.clone(),
                    line: self.lines[s.line].id.clone(),
                    since_ms: since,
                    until_ms: ts_ms,
                    by_class: std::mem::take(&mut s.by_class),
                });
                s.window_start = Some(ts_ms);
            }
        }
        res
    }
}

fn meta(r: &RuleConfig) -> RuleMeta {
    RuleMeta {
        id: r.id.clone(),
        event_type: r.event_type.clone(),
        category: r.category.clone(),
        rule_type: r.kind.rule_type(),
        cooldown_ms: ms(r.cooldown_s),
        update_ms: ms(r.update_interval_s).max(1),
        metric: match &r.kind {
            RuleKind::SensorThreshold(s) => Some(s.metric.clone()),
            _ => None,
        },
    }
}

struct FrameCtx<'a> {
    ts: i64,
    size: (u32, u32),
    tz: i32,
    current: &'a BTreeMap<u64, &'a TrackedObject>,
    tracks: &'a BTreeMap<u64, TrackState>,
    zones: &'a [ZoneRt],
    crossings: &'a [(usize, u64, Direction)],
}

impl DwellState {
    fn on_frame(&mut self, m: &RuleMeta, ctx: &FrameCtx, out: &mut Vec<RuleOutput>) {
        let ts = ctx.ts;
        let zone = &ctx.zones[self.zone];
        let emit = |phase: Phase, p: &Problem, obj: &TrackedObject, out: &mut Vec<RuleOutput>| {
            out.push(RuleOutput {
                info: RuleInfo {
                    zone: Some(zone.id.clone()),
                    track_ids: vec![obj.track_id],
                    ..m.info(phase, p, ts)
                },
                objects: vec![detection(obj, ctx.size)],
            })
        };
        for (&id, &obj) in ctx.current {
            if !class_ok(&self.classes, &obj.label) {
                continue;
            }
            let member = ctx.tracks[&id].zones[self.zone];
            let still = (obj.velocity.0 as f64).hypot(obj.velocity.1 as f64) <= self.max_speed;
            let t = self.tracks.entry(id).or_insert_with(|| DwellTrack {
                stationary: Debounced::new(still, ts),
                problem: None,
            });
            if obj.missed == 0 {
                t.stationary.update(still, ts, zone.inertia);
            }
            if member.state && t.stationary.state {
                // Dwelling since it was both in the zone and stationary.
                let since = member.since_ms.max(t.stationary.since_ms);
                match &mut t.problem {
                    None => {
                        let last_end = self.ended.get(&id).copied();
                        if ts - since >= self.min_ms && cooled(last_end, ts, m.cooldown_ms) {
                            let p = Problem::open(since, ts);
                            emit(Phase::Start, &p, obj, out);
                            t.problem = Some(p);
                        }
                    }
                    Some(p) => {
                        if p.update_due(ts, m.update_ms) {
                            emit(Phase::Update, p, obj, out);
                        }
                    }
                }
            } else if let Some(p) = t.problem.take() {
                emit(Phase::End, &p, obj, out);
                self.ended.insert(id, ts);
            }
        }
        // Tracks that disappeared end their problems.
        let gone: Vec<u64> = self
            .tracks
            .keys()
            .filter(|id| !ctx.current.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(p) = self.tracks.remove(&id).and_then(|t| t.problem) {
                if let Some(st) = ctx.tracks.get(&id) {
                    emit(Phase::End, &p, &st.obj, out);
                }
                self.ended.insert(id, ts);
            }
        }
        let cooldown = m.cooldown_ms;
        self.ended.retain(|_, end| ts - *end < cooldown);
    }
}

impl ZoneCountState {
    fn on_frame(&mut self, m: &RuleMeta, ctx: &FrameCtx, out: &mut Vec<RuleOutput>) {
        let ts = ctx.ts;
        let zone = &ctx.zones[self.zone];
        let inside: Vec<&TrackedObject> = ctx
            .current
            .iter()
            .filter(|(id, o)| {
                class_ok(&self.classes, &o.label) && ctx.tracks[*id].zones[self.zone].state
            })
            .map(|(_, o)| *o)
            .collect();
        let armed = self.schedule.as_ref().is_none_or(|s| s.is_open(ts, ctx.tz));
        let over = self.over.get_or_insert(Debounced::new(false, ts));
        if armed {
            over.update(inside.len() >= self.min_count, ts, zone.inertia);
        } else {
            // Outside the schedule nothing counts, and presence before the window opens does
            // not count towards the duration.
            *over = Debounced::new(false, ts);
        }
        let emit = |phase: Phase, p: &Problem, out: &mut Vec<RuleOutput>| {
            out.push(RuleOutput {
                info: RuleInfo {
                    zone: Some(zone.id.clone()),
                    track_ids: inside.iter().map(|o| o.track_id).collect(),
                    count: Some(inside.len() as u32),
                    ..m.info(phase, p, ts)
                },
                objects: inside.iter().map(|o| detection(o, ctx.size)).collect(),
            })
        };
        if over.state {
            match &mut self.problem {
                None => {
                    if ts - over.since_ms >= self.min_ms && cooled(self.last_end, ts, m.cooldown_ms)
                    {
                        let p = Problem::open(over.since_ms, ts);
                        emit(Phase::Start, &p, out);
                        self.problem = Some(p);
                    }
                }
                Some(p) => {
                    if p.update_due(ts, m.update_ms) {
                        emit(Phase::Update, p, out);
                    }
                }
            }
        } else if let Some(p) = self.problem.take() {
            emit(Phase::End, &p, out);
            self.last_end = Some(ts);
        }
    }
}

impl LineState {
    fn on_frame(&mut self, m: &RuleMeta, ctx: &FrameCtx, out: &mut Vec<RuleOutput>) {
        let ts = ctx.ts;
        self.window_start.get_or_insert(ts);
        for &(li, id, dir) in ctx.crossings {
            if li != self.line {
                continue;
            }
            let obj = ctx.current[&id];
            if !class_ok(&self.classes, &obj.label) {
                continue;
            }
            let slot = &mut self.last_counted.entry(id).or_default()[dir as usize];
            if slot.is_some_and(|t| ts - t < self.debounce_ms) {
                continue;
            }
            *slot = Some(ts);
            let c = self.by_class.entry(obj.label.clone()).or_default();
            let n = match dir {
                Direction::In => {
                    c.in_count += 1;
                    c.in_count
                }
                Direction::Out => {
                    c.out_count += 1;
                    c.out_count
                }
            };
            if self.events {
                let p = Problem::open(ts, ts);
                out.push(RuleOutput {
                    info: RuleInfo {
                        track_ids: vec![id],
                        // Crossings of this class in this direction so far in the window.
                        count: Some(n.min(u32::MAX as u64) as u32),
                        direction: Some(dir.as_str().into()),
                        ..m.info(Phase::Instant, &p, ts)
                    },
                    objects: vec![detection(obj, ctx.size)],
                });
            }
        }
        self.last_counted
            .retain(|id, _| ctx.current.contains_key(id));
    }
}

fn sensor_output(
    m: &RuleMeta,
    phase: Phase,
    p: &Problem,
    side: SensorSide,
    ts: i64,
    value: Option<f64>,
) -> RuleOutput {
    RuleOutput {
        info: RuleInfo {
            // Which condition: `above`/`below` the level, or `rising`/`falling` too fast.
            direction: Some(side.as_str().into()),
            value,
            ..m.info(phase, p, ts)
        },
        objects: Vec::new(),
    }
}

impl SensorCond {
    /// Advances one condition. `trigger`: the side the reading breaches now (None = within
    /// limits); `holds(side)`: whether an open problem of that side still holds (hysteresis).
    fn step(
        &mut self,
        m: &RuleMeta,
        min_ms: i64,
        (ts, value): (i64, f64),
        trigger: Option<SensorSide>,
        holds: impl Fn(SensorSide) -> bool,
        out: &mut Vec<RuleOutput>,
    ) {
        if let Some((p, side)) = &mut self.problem {
            if holds(*side) {
                if p.update_due(ts, m.update_ms) {
                    out.push(sensor_output(m, Phase::Update, p, *side, ts, Some(value)));
                }
                return;
            }
            out.push(sensor_output(m, Phase::End, p, *side, ts, Some(value)));
            self.problem = None;
            self.last_end = Some(ts);
        }
        let Some(side) = trigger else {
            self.pending = None;
            return;
        };
        let since = match self.pending {
            Some((t, s)) if s == side => t,
            _ => ts,
        };
        self.pending = Some((since, side));
        if ts - since >= min_ms && cooled(self.last_end, ts, m.cooldown_ms) {
            let p = Problem::open(since, ts);
            out.push(sensor_output(m, Phase::Start, &p, side, ts, Some(value)));
            self.problem = Some((p, side));
            self.pending = None;
        }
    }
}

impl SensorState {
    fn on_reading(&mut self, m: &RuleMeta, ts: i64, v: f64, out: &mut Vec<RuleOutput>) {
        if self.last.is_some_and(|(t, _)| ts <= t) {
            return;
        }
        let c = &self.cfg;
        let (above, below, hyst) = (c.above, c.below, c.hysteresis);
        if above.is_some() || below.is_some() {
            let trigger = if above.is_some_and(|a| v > a) {
                Some(SensorSide::Above)
            } else if below.is_some_and(|b| v < b) {
                Some(SensorSide::Below)
            } else {
                None
            };
            let holds = |side| match side {
                SensorSide::Above => above.is_some_and(|a| v > a - hyst),
                _ => below.is_some_and(|b| v < b + hyst),
            };
            self.level
                .step(m, self.min_ms, (ts, v), trigger, holds, out);
        }
        if let Some(limit) = c.rate_per_min {
            let rate = self
                .last
                .map(|(t, pv)| (v - pv) / ((ts - t) as f64 / 60_000.0));
            let trigger = rate.filter(|r| r.abs() > limit).map(|r| {
                if r > 0.0 {
                    SensorSide::Rising
                } else {
                    SensorSide::Falling
                }
            });
            let breaching = trigger.is_some();
            self.rate
                .step(m, self.min_ms, (ts, v), trigger, |_| breaching, out);
        }
        self.last = Some((ts, v));
    }
}
