//! Zones, lines and rules of one camera, as written in the agent's TOML config and as the hub
//! pushes them to agents (`CommandOp::Config`): one type and one validator on both sides, so
//! the hub refuses what an agent would refuse before sending it.
//!
//! Every struct refuses unknown fields (a misspelt `min_dwel_s` must not silently fall back to a
//! default), and [`RulesConfig::validate`] names the offending field with its index path, e.g.
//! `rules[2].kind.dwell.zone: unknown zone "x"`, so a technician can fix a gateway's config
//! without reading code.

use std::collections::HashSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a rules config was refused: `field` is the path of the offending value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {reason}")]
pub struct RulesConfigError {
    /// Path of the field, e.g. `rules[2].kind.dwell.zone` or `zones[0].polygon[3]`.
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> RulesConfigError {
    RulesConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Longest id accepted for zones, lines and rules (the wire limits `rule` and `event_type` to
/// 64 bytes).
pub const MAX_ID_LEN: usize = 64;

/// Everything the rule engine of one camera needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Offset of local time from UTC in minutes, for presence schedules (480 = China, UTC+8).
    /// A fixed offset, no time-zone database: China has no daylight saving time.
    #[serde(default = "default_tz")]
    pub timezone_offset_minutes: i32,
    #[serde(default)]
    pub zones: Vec<ZoneConfig>,
    #[serde(default)]
    pub lines: Vec<LineConfig>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            timezone_offset_minutes: default_tz(),
            zones: Vec::new(),
            lines: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// A polygon in the image. An object is in the zone when its anchor (bottom centre of its box)
/// is inside the polygon (edges count as inside).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub id: String,
    /// Vertices as `[x, y]` in normalised image coordinates (0..=1, origin top-left), at least 3.
    pub polygon: Vec<[f32; 2]>,
    /// Only objects with these labels can be in the zone; empty = every class.
    #[serde(default)]
    pub classes: Vec<String>,
    /// Consecutive frames an object must be inside (outside) before it counts as having entered
    /// (left), against box flicker at the edge. The same count debounces "stationary" and crowd
    /// thresholds of rules on this zone. 0 behaves as 1.
    #[serde(default = "default_inertia")]
    pub inertia_frames: u32,
}

/// A counting line (a segment) in the image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    pub id: String,
    /// Normalised image coordinates. `in` = crossing from the left of the `from → to` vector to
    /// its right, as seen on the image (y pointing down): for a line drawn left → right across the
    /// picture, `in` is moving down the picture.
    pub from: [f32; 2],
    pub to: [f32; 2],
    /// Only objects with these labels are counted; empty = every class.
    #[serde(default)]
    pub classes: Vec<String>,
}

/// One rule: common fields plus the rule-specific `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Rule id, reported as `RuleInfo::rule` (1..=64 bytes, unique per camera).
    pub id: String,
    /// What the city calls it, e.g. `illegal_parking`, `street_vending`, `crowd_gathering`.
    pub event_type: String,
    /// Governance classification code (部件/事件 code), if mapped.
    #[serde(default)]
    pub category: Option<String>,
    /// After an End, the same rule + zone (+ track for per-object rules) does not Start again
    /// within this many seconds.
    #[serde(default = "default_cooldown")]
    pub cooldown_s: f64,
    /// How often an ongoing problem emits an Update, in seconds.
    #[serde(default = "default_update_interval")]
    pub update_interval_s: f64,
    pub kind: RuleKind,
}

/// The rule-specific part, written as a table named after the kind:
/// `[rules.kind.dwell]`, `kind = { crowd = { zone = "square", min_count = 10 } }`, ...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    Dwell(DwellRule),
    Crowd(CrowdRule),
    LineCrossing(LineCrossingRule),
    Presence(PresenceRule),
    SensorThreshold(SensorThresholdRule),
}

impl RuleKind {
    /// The name used in config and in error paths (`dwell`, `crowd`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::Dwell(_) => "dwell",
            RuleKind::Crowd(_) => "crowd",
            RuleKind::LineCrossing(_) => "line_crossing",
            RuleKind::Presence(_) => "presence",
            RuleKind::SensorThreshold(_) => "sensor_threshold",
        }
    }

    pub fn rule_type(&self) -> crate::RuleType {
        match self {
            RuleKind::Dwell(_) => crate::RuleType::Dwell,
            RuleKind::Crowd(_) => crate::RuleType::Crowd,
            RuleKind::LineCrossing(_) => crate::RuleType::LineCrossing,
            RuleKind::Presence(_) => crate::RuleType::Presence,
            RuleKind::SensorThreshold(_) => crate::RuleType::SensorThreshold,
        }
    }
}

/// Per object: one problem per track that stays stationary in the zone for `min_dwell_s`
/// (illegal parking, street vending).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DwellRule {
    pub zone: String,
    /// Labels this rule applies to; empty = every class the zone admits.
    #[serde(default)]
    pub classes: Vec<String>,
    pub min_dwell_s: f64,
    /// An object whose box centre moves slower than this (source pixels per second) is stationary.
    #[serde(default = "default_max_speed")]
    pub max_speed_px_s: f64,
}

/// Per zone: at least `min_count` distinct tracks in the zone for `min_duration_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CrowdRule {
    pub zone: String,
    #[serde(default = "default_crowd_classes")]
    pub classes: Vec<String>,
    pub min_count: u32,
    #[serde(default)]
    pub min_duration_s: f64,
}

/// Each crossing of the line is an Instant event; per-class, per-direction counters are kept
/// for periodic telemetry (see `RuleEngine::take_due_counts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LineCrossingRule {
    pub line: String,
    #[serde(default)]
    pub classes: Vec<String>,
    /// Length of one counting window, in seconds.
    #[serde(default = "default_report_interval")]
    pub report_interval_s: f64,
    /// A track is counted at most once per direction within this many seconds (jitter on the
    /// line).
    #[serde(default = "default_debounce")]
    pub debounce_s: f64,
    /// Emit an Instant event per crossing; `false` keeps only the counters (busy roads).
    #[serde(default = "yes")]
    pub events: bool,
}

/// Per zone: anything of the classes in the zone while a schedule window is open (intrusion into
/// a closed area).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceRule {
    pub zone: String,
    #[serde(default)]
    pub classes: Vec<String>,
    /// When the rule is armed; empty = always.
    #[serde(default)]
    pub schedule: Vec<ScheduleWindow>,
    #[serde(default = "default_presence_duration")]
    pub min_duration_s: f64,
}

/// A daily window in local time (`RulesConfig::timezone_offset_minutes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleWindow {
    /// ISO weekdays the window *starts* on, 1 = Monday .. 7 = Sunday; empty = every day.
    #[serde(default)]
    pub days: Vec<u8>,
    /// `HH:MM`, inclusive.
    pub start: String,
    /// `HH:MM`, exclusive; `24:00` = midnight at the end of the day. An end before the start
    /// wraps past midnight into the next day (`22:00`–`06:00`).
    pub end: String,
}

/// A sensor reading beyond a threshold (waterlogging level, manhole tilt, air quality), or
/// changing faster than a rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SensorThresholdRule {
    /// Sensor id, as passed to `RuleEngine::on_sensor`.
    pub sensor: String,
    pub metric: String,
    /// Problem while the value is above this ...
    #[serde(default)]
    pub above: Option<f64>,
    /// ... or below this.
    #[serde(default)]
    pub below: Option<f64>,
    /// A problem ends only when the value is back past the threshold by this much
    /// (`above - hysteresis`, `below + hysteresis`), so noise around the threshold cannot flap.
    #[serde(default)]
    pub hysteresis: f64,
    /// Problem while |change per minute| against the previous reading exceeds this.
    #[serde(default)]
    pub rate_per_min: Option<f64>,
    /// The condition must hold this long before the problem starts.
    #[serde(default)]
    pub min_duration_s: f64,
}

fn yes() -> bool {
    true
}
fn default_tz() -> i32 {
    480
}
fn default_inertia() -> u32 {
    3
}
fn default_cooldown() -> f64 {
    60.0
}
fn default_update_interval() -> f64 {
    30.0
}
fn default_max_speed() -> f64 {
    15.0
}
fn default_crowd_classes() -> Vec<String> {
    vec!["person".into()]
}
fn default_report_interval() -> f64 {
    60.0
}
fn default_debounce() -> f64 {
    2.0
}
fn default_presence_duration() -> f64 {
    2.0
}

/// Parses `HH:MM` (00:00..=24:00) into minutes since midnight.
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    if !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

fn check_id(field: &str, id: &str) -> Result<(), RulesConfigError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(err(field, format!("must be 1..={MAX_ID_LEN} bytes")));
    }
    if id.chars().any(|c| c.is_control()) {
        return Err(err(field, "must not contain control characters"));
    }
    Ok(())
}

fn check_classes(field: &str, classes: &[String]) -> Result<(), RulesConfigError> {
    for (i, c) in classes.iter().enumerate() {
        if c.trim().is_empty() {
            return Err(err(format!("{field}[{i}]"), "empty class label"));
        }
    }
    Ok(())
}

fn check_point(field: &str, p: [f32; 2]) -> Result<(), RulesConfigError> {
    if !p.iter().all(|c| c.is_finite() && (0.0..=1.0).contains(c)) {
        return Err(err(
            field,
            format!(
                "[{}, {}] is not in normalised image coordinates 0..=1",
                p[0], p[1]
            ),
        ));
    }
    Ok(())
}

/// Seconds that must be finite and >= 0 (or > 0 when `positive`).
fn check_secs(field: &str, v: f64, positive: bool) -> Result<(), RulesConfigError> {
    if !v.is_finite() || v < 0.0 || (positive && v == 0.0) {
        let want = if positive { "> 0" } else { ">= 0" };
        return Err(err(field, format!("{v} must be a finite number {want}")));
    }
    if v > 31_536_000.0 {
        return Err(err(field, format!("{v} s is more than a year")));
    }
    Ok(())
}

fn check_known(
    field: &str,
    what: &str,
    name: &str,
    known: &[&str],
) -> Result<(), RulesConfigError> {
    if known.contains(&name) {
        Ok(())
    } else {
        Err(err(field, format!("unknown {what} \"{name}\"")))
    }
}

/// Signed area (shoelace); positive when the vertices run clockwise on screen (y down).
pub fn polygon_area(poly: &[(f64, f64)]) -> f64 {
    let n = poly.len();
    (0..n)
        .map(|i| {
            let (a, b) = (poly[i], poly[(i + 1) % n]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum::<f64>()
        / 2.0
}

impl RulesConfig {
    /// Checks everything types cannot: ids, geometry, references between rules and
    /// zones/lines, ranges. The first problem found is returned, naming its field.
    pub fn validate(&self) -> Result<(), RulesConfigError> {
        if !(-14 * 60..=14 * 60).contains(&self.timezone_offset_minutes) {
            return Err(err(
                "timezone_offset_minutes",
                format!("{} is outside -840..=840", self.timezone_offset_minutes),
            ));
        }
        let mut seen = HashSet::new();
        for (i, z) in self.zones.iter().enumerate() {
            let f = format!("zones[{i}]");
            z.validate(&f)?;
            if !seen.insert(z.id.as_str()) {
                return Err(err(
                    format!("{f}.id"),
                    format!("zone \"{}\" is defined twice", z.id),
                ));
            }
        }
        let mut seen = HashSet::new();
        for (i, l) in self.lines.iter().enumerate() {
            let f = format!("lines[{i}]");
            l.validate(&f)?;
            if !seen.insert(l.id.as_str()) {
                return Err(err(
                    format!("{f}.id"),
                    format!("line \"{}\" is defined twice", l.id),
                ));
            }
        }
        let zones: Vec<&str> = self.zones.iter().map(|z| z.id.as_str()).collect();
        let lines: Vec<&str> = self.lines.iter().map(|l| l.id.as_str()).collect();
        let mut seen = HashSet::new();
        let mut counted: Vec<(&str, &str)> = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            r.validate(i, &zones, &lines)?;
            if !seen.insert(r.id.as_str()) {
                return Err(err(
                    format!("rules[{i}].id"),
                    format!("rule \"{}\" is defined twice", r.id),
                ));
            }
            if let RuleKind::LineCrossing(l) = &r.kind {
                // Counts are reported per line: one counting rule per line keeps that unique.
                if let Some((_, other)) = counted.iter().find(|(line, _)| *line == l.line) {
                    return Err(err(
                        format!("rules[{i}].kind.line_crossing.line"),
                        format!("line \"{}\" is already counted by rule \"{other}\"", l.line),
                    ));
                }
                counted.push((l.line.as_str(), r.id.as_str()));
            }
        }
        Ok(())
    }
}

impl ZoneConfig {
    fn validate(&self, f: &str) -> Result<(), RulesConfigError> {
        check_id(&format!("{f}.id"), &self.id)?;
        if self.polygon.len() < 3 {
            return Err(err(
                format!("{f}.polygon"),
                format!("{} points, a polygon needs at least 3", self.polygon.len()),
            ));
        }
        if self.polygon.len() > 256 {
            return Err(err(format!("{f}.polygon"), "more than 256 points"));
        }
        for (j, p) in self.polygon.iter().enumerate() {
            check_point(&format!("{f}.polygon[{j}]"), *p)?;
        }
        let pts: Vec<(f64, f64)> = self
            .polygon
            .iter()
            .map(|p| (p[0] as f64, p[1] as f64))
            .collect();
        if polygon_area(&pts).abs() < 1e-6 {
            return Err(err(
                format!("{f}.polygon"),
                "has no area (points coincide or lie on one line)",
            ));
        }
        check_classes(&format!("{f}.classes"), &self.classes)?;
        if self.inertia_frames > 1000 {
            return Err(err(
                format!("{f}.inertia_frames"),
                format!("{} is more than 1000", self.inertia_frames),
            ));
        }
        Ok(())
    }
}

impl LineConfig {
    fn validate(&self, f: &str) -> Result<(), RulesConfigError> {
        check_id(&format!("{f}.id"), &self.id)?;
        check_point(&format!("{f}.from"), self.from)?;
        check_point(&format!("{f}.to"), self.to)?;
        let (dx, dy) = (self.to[0] - self.from[0], self.to[1] - self.from[1]);
        if dx.hypot(dy) < 1e-3 {
            return Err(err(format!("{f}.to"), "is the same point as `from`"));
        }
        check_classes(&format!("{f}.classes"), &self.classes)
    }
}

impl RuleConfig {
    /// Checks rule `index` (`rules[index]` in error paths) against the zone and line ids of
    /// its camera.
    pub fn validate(
        &self,
        index: usize,
        known_zones: &[&str],
        known_lines: &[&str],
    ) -> Result<(), RulesConfigError> {
        let f = format!("rules[{index}]");
        check_id(&format!("{f}.id"), &self.id)?;
        check_id(&format!("{f}.event_type"), &self.event_type)?;
        if let Some(c) = &self.category {
            check_id(&format!("{f}.category"), c)?;
        }
        check_secs(&format!("{f}.cooldown_s"), self.cooldown_s, false)?;
        check_secs(
            &format!("{f}.update_interval_s"),
            self.update_interval_s,
            true,
        )?;
        let k = format!("{f}.kind.{}", self.kind.name());
        match &self.kind {
            RuleKind::Dwell(d) => {
                check_known(&format!("{k}.zone"), "zone", &d.zone, known_zones)?;
                check_classes(&format!("{k}.classes"), &d.classes)?;
                check_secs(&format!("{k}.min_dwell_s"), d.min_dwell_s, false)?;
                if !d.max_speed_px_s.is_finite() || d.max_speed_px_s <= 0.0 {
                    return Err(err(
                        format!("{k}.max_speed_px_s"),
                        format!("{} must be a finite number > 0", d.max_speed_px_s),
                    ));
                }
            }
            RuleKind::Crowd(c) => {
                check_known(&format!("{k}.zone"), "zone", &c.zone, known_zones)?;
                check_classes(&format!("{k}.classes"), &c.classes)?;
                if c.min_count == 0 {
                    return Err(err(format!("{k}.min_count"), "must be >= 1"));
                }
                check_secs(&format!("{k}.min_duration_s"), c.min_duration_s, false)?;
            }
            RuleKind::LineCrossing(l) => {
                check_known(&format!("{k}.line"), "line", &l.line, known_lines)?;
                check_classes(&format!("{k}.classes"), &l.classes)?;
                check_secs(&format!("{k}.report_interval_s"), l.report_interval_s, true)?;
                check_secs(&format!("{k}.debounce_s"), l.debounce_s, false)?;
            }
            RuleKind::Presence(p) => {
                check_known(&format!("{k}.zone"), "zone", &p.zone, known_zones)?;
                check_classes(&format!("{k}.classes"), &p.classes)?;
                check_secs(&format!("{k}.min_duration_s"), p.min_duration_s, false)?;
                for (j, w) in p.schedule.iter().enumerate() {
                    let wf = format!("{k}.schedule[{j}]");
                    for (d_i, d) in w.days.iter().enumerate() {
                        if !(1..=7).contains(d) {
                            return Err(err(
                                format!("{wf}.days[{d_i}]"),
                                format!("{d} is not a weekday 1 (Monday) ..= 7 (Sunday)"),
                            ));
                        }
                    }
                    let start = parse_hhmm(&w.start)
                        .filter(|m| *m < 24 * 60)
                        .ok_or_else(|| {
                            err(
                                format!("{wf}.start"),
                                format!("\"{}\" is not a time HH:MM in 00:00..=23:59", w.start),
                            )
                        })?;
                    let end = parse_hhmm(&w.end).ok_or_else(|| {
                        err(
                            format!("{wf}.end"),
                            format!("\"{}\" is not a time HH:MM in 00:00..=24:00", w.end),
                        )
                    })?;
                    if start == end {
                        return Err(err(
                            format!("{wf}.end"),
                            "equals `start`: an empty window (use 00:00 to 24:00 for a whole day)",
                        ));
                    }
                }
            }
            RuleKind::SensorThreshold(s) => {
                check_id(&format!("{k}.sensor"), &s.sensor)?;
                check_id(&format!("{k}.metric"), &s.metric)?;
                if s.above.is_none() && s.below.is_none() && s.rate_per_min.is_none() {
                    return Err(err(
                        k.clone(),
                        "needs at least one of `above`, `below`, `rate_per_min`",
                    ));
                }
                for (name, v) in [("above", s.above), ("below", s.below)] {
                    if let Some(v) = v {
                        if !v.is_finite() {
                            return Err(err(format!("{k}.{name}"), "must be a finite number"));
                        }
                    }
                }
                if let (Some(a), Some(b)) = (s.above, s.below) {
                    if b >= a {
                        return Err(err(
                            format!("{k}.below"),
                            format!("{b} must be less than `above` ({a})"),
                        ));
                    }
                }
                if !s.hysteresis.is_finite() || s.hysteresis < 0.0 {
                    return Err(err(
                        format!("{k}.hysteresis"),
                        format!("{} must be a finite number >= 0", s.hysteresis),
                    ));
                }
                if let Some(r) = s.rate_per_min {
                    if !r.is_finite() || r <= 0.0 {
                        return Err(err(
                            format!("{k}.rate_per_min"),
                            format!("{r} must be a finite number > 0"),
                        ));
                    }
                }
                check_secs(&format!("{k}.min_duration_s"), s.min_duration_s, false)?;
            }
        }
        Ok(())
    }
}
