//! Time limits of a case's stages: a limit in working or natural time, the clock of one running
//! stage (suspension stops it, approved extensions add to it), its deadline and its traffic
//! light — green below 80 % of the limit, yellow from 80 % up to the deadline itself, red past it.
//!
//! A [`StageClock`] is a plain value kept with the case: what is due (the warning point, the
//! deadline) is computed from it, so a sweep over open cases is a comparison per case and a hub
//! restarted after a deadline finds it passed from the stored clock alone.

use serde::{Deserialize, Serialize};

use super::calendar::WorkCalendar;

const MS_PER_MIN: i64 = 60_000;

/// The unit of a limit. Working units count only the calendar's working time; a working day
/// is the calendar's working minutes per day (480 by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    WorkingMinutes,
    WorkingHours,
    WorkingDays,
    NaturalMinutes,
    NaturalHours,
    NaturalDays,
}

impl Unit {
    pub fn is_working(self) -> bool {
        matches!(
            self,
            Unit::WorkingMinutes | Unit::WorkingHours | Unit::WorkingDays
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::WorkingMinutes => "working_minutes",
            Unit::WorkingHours => "working_hours",
            Unit::WorkingDays => "working_days",
            Unit::NaturalMinutes => "natural_minutes",
            Unit::NaturalHours => "natural_hours",
            Unit::NaturalDays => "natural_days",
        }
    }
}

/// A time limit: `{ value = 4, unit = "working_hours" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub value: u32,
    pub unit: Unit,
}

impl Limit {
    /// The limit in ms of its own measure (working ms for working units).
    pub fn ms(&self, cal: &WorkCalendar) -> i64 {
        let v = i64::from(self.value);
        match self.unit {
            Unit::WorkingMinutes | Unit::NaturalMinutes => v * MS_PER_MIN,
            Unit::WorkingHours | Unit::NaturalHours => v * 60 * MS_PER_MIN,
            Unit::WorkingDays => v * cal.minutes_per_day() * MS_PER_MIN,
            Unit::NaturalDays => v * 24 * 60 * MS_PER_MIN,
        }
    }
}

/// Traffic light of a running stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "SlaLight")]
pub enum Light {
    Green,
    Yellow,
    Red,
}

/// Share of the limit after which a stage turns yellow (and its warning is due).
pub const WARN_PERMILLE: i64 = 800;

/// The clock of one stage of one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StageClock {
    pub unit_working: bool,
    /// The limit plus approved extensions, in ms of the clock's measure.
    pub budget_ms: i64,
    /// Measure used in earlier runs (before a suspension).
    pub used_ms: i64,
    /// When the current run began; `None` while suspended (挂账).
    pub running_since: Option<i64>,
}

impl StageClock {
    /// A clock started at `now` for `limit`.
    pub fn start(limit: Limit, now: i64, cal: &WorkCalendar) -> Self {
        StageClock {
            unit_working: limit.unit.is_working(),
            budget_ms: limit.ms(cal),
            used_ms: 0,
            running_since: Some(now),
        }
    }

    fn measure(&self, a: i64, b: i64, cal: &WorkCalendar) -> i64 {
        if self.unit_working {
            cal.working_between(a, b)
        } else {
            (b - a).max(0)
        }
    }

    fn advance(&self, from: i64, ms: i64, cal: &WorkCalendar) -> Option<i64> {
        if self.unit_working {
            cal.add_working(from, ms)
        } else {
            Some(from.saturating_add(ms.max(0)))
        }
    }

    /// Measure used up to `now`.
    pub fn used_at(&self, now: i64, cal: &WorkCalendar) -> i64 {
        self.used_ms
            + self
                .running_since
                .map_or(0, |since| self.measure(since, now, cal))
    }

    /// When the budget's `permille` share is used up; `None` while suspended.
    pub fn point(&self, permille: i64, cal: &WorkCalendar) -> Option<i64> {
        let since = self.running_since?;
        let target = self.budget_ms * permille / 1000;
        self.advance(since, target - self.used_ms, cal)
    }

    pub fn deadline(&self, cal: &WorkCalendar) -> Option<i64> {
        self.point(1000, cal)
    }

    pub fn warn_at(&self, cal: &WorkCalendar) -> Option<i64> {
        self.point(WARN_PERMILLE, cal)
    }

    pub fn light(&self, now: i64, cal: &WorkCalendar) -> Light {
        let used = self.used_at(now, cal);
        if used > self.budget_ms {
            Light::Red
        } else if used * 1000 >= self.budget_ms * WARN_PERMILLE {
            Light::Yellow
        } else {
            Light::Green
        }
    }

    /// Stops the clock (挂账); the time used so far is kept.
    pub fn suspend(&mut self, now: i64, cal: &WorkCalendar) {
        if self.running_since.is_some() {
            self.used_ms = self.used_at(now, cal);
            self.running_since = None;
        }
    }

    /// Starts it again with what was left.
    pub fn resume(&mut self, now: i64) {
        if self.running_since.is_none() {
            self.running_since = Some(now);
        }
    }

    /// An approved extension (延期): the budget grows by `extra` in the clock's measure
    /// (an extension in another kind of unit is converted by its length).
    pub fn extend(&mut self, extra: Limit, cal: &WorkCalendar) {
        self.budget_ms += extra.ms(cal);
    }
}

#[cfg(test)]
mod tests {
    use super::super::calendar::tests::{bj, calendar};
    use super::*;

    fn hours(n: u32) -> Limit {
        Limit {
            value: n,
            unit: Unit::WorkingHours,
        }
    }

    #[test]
    fn light_turns_yellow_at_80_percent_and_red_past_the_deadline() {
        let c = calendar();
        // 5 working hours from Monday 10:00: 80 % (4 h) at 16:00, deadline 17:00.
        let clock = StageClock::start(hours(5), bj("2026-09-21 10:00"), &c);
        assert_eq!(clock.warn_at(&c), Some(bj("2026-09-21 16:00")));
        assert_eq!(clock.deadline(&c), Some(bj("2026-09-21 17:00")));
        assert_eq!(clock.light(bj("2026-09-21 15:59"), &c), Light::Green);
        assert_eq!(clock.light(bj("2026-09-21 16:00"), &c), Light::Yellow);
        assert_eq!(clock.light(bj("2026-09-21 17:00"), &c), Light::Yellow);
        assert_eq!(clock.light(bj("2026-09-21 17:01"), &c), Light::Red);
        // Past 18:00 no working time passes: still red the next morning, not more or less.
        assert_eq!(clock.light(bj("2026-09-22 07:00"), &c), Light::Red);
        // Lunch does not count: at 13:00 only 2 h are used.
        assert_eq!(clock.used_at(bj("2026-09-21 13:00"), &c), 2 * 3_600_000);
    }

    #[test]
    fn suspension_and_extension_move_the_deadline() {
        let c = calendar();
        let mut clock = StageClock::start(hours(4), bj("2026-09-21 08:00"), &c);
        assert_eq!(clock.deadline(&c), Some(bj("2026-09-21 12:00")));
        // Suspended at 09:00 (1 h used), resumed Wednesday 15:00: 3 h left → 18:00.
        clock.suspend(bj("2026-09-21 09:00"), &c);
        assert_eq!(clock.deadline(&c), None);
        assert_eq!(clock.light(bj("2026-09-22 17:00"), &c), Light::Green);
        clock.resume(bj("2026-09-23 15:00"));
        assert_eq!(clock.deadline(&c), Some(bj("2026-09-23 18:00")));
        // One working day more: Thursday 18:00.
        clock.extend(
            Limit {
                value: 1,
                unit: Unit::WorkingDays,
            },
            &c,
        );
        assert_eq!(clock.deadline(&c), Some(bj("2026-09-24 18:00")));
    }

    #[test]
    fn natural_limits_run_through_nights_and_holidays() {
        let c = calendar();
        let clock = StageClock::start(
            Limit {
                value: 2,
                unit: Unit::NaturalHours,
            },
            bj("2026-10-01 23:00"),
            &c,
        );
        assert_eq!(clock.deadline(&c), Some(bj("2026-10-02 01:00")));
        assert_eq!(clock.light(bj("2026-10-02 00:36"), &c), Light::Yellow);
    }
}
