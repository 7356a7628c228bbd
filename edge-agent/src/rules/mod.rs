//! Zones and rules: turns tracked objects and sensor readings into rule events
//! (`csb_wire::RuleInfo`) with a start / update / end lifecycle, one `problem_id` per problem.
//!
//! - [`config`]: the TOML shape of zones, counting lines and rules, and its validation.
//! - [`RuleEngine`]: one per camera; fed with [`on_frame`](RuleEngine::on_frame) and
//!   [`on_sensor`](RuleEngine::on_sensor), clocked only by their timestamps.
//! - [`geometry`], [`schedule`]: point-in-polygon, segment intersection, weekly windows.
//!
//! Against event floods: membership and "stationary" are debounced over `inertia_frames`, a
//! problem has exactly one Start, Updates come at most every `update_interval_s`, and after an
//! End the same problem cannot Start again within `cooldown_s`.

pub mod config;
mod engine;
pub mod geometry;
pub mod schedule;

#[cfg(test)]
mod tests;

pub use config::{
    CrowdRule, DwellRule, LineConfig, LineCrossingRule, PresenceRule, RuleConfig, RuleKind,
    RulesConfig, RulesConfigError, ScheduleWindow, SensorThresholdRule, ZoneConfig,
};
pub use engine::{DirectionCounts, LineCounts, RuleEngine, RuleOutput, LINE_BAND_FRACTION};
