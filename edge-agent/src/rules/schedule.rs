//! Weekly schedules in local time with a fixed UTC offset (no time-zone database: the agent
//! runs in China, which has no daylight saving time).

use super::config::{parse_hhmm, ScheduleWindow};

const MS_PER_MIN: i64 = 60_000;
const MIN_PER_DAY: i64 = 24 * 60;

/// Local calendar position of a Unix time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// ISO weekday, 1 = Monday ..= 7 = Sunday.
    pub weekday: u8,
    /// Minutes since local midnight, 0..1440.
    pub minute: u32,
}

impl LocalTime {
    pub fn from_unix_ms(ts_ms: i64, offset_minutes: i32) -> LocalTime {
        let local_min = ts_ms.div_euclid(MS_PER_MIN) + offset_minutes as i64;
        let day = local_min.div_euclid(MIN_PER_DAY);
        // 1970-01-01 was a Thursday (ISO 4).
        let weekday = ((day + 3).rem_euclid(7) + 1) as u8;
        LocalTime {
            weekday,
            minute: local_min.rem_euclid(MIN_PER_DAY) as u32,
        }
    }

    fn previous_weekday(self) -> u8 {
        if self.weekday == 1 {
            7
        } else {
            self.weekday - 1
        }
    }
}

/// A parsed [`ScheduleWindow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    days: Vec<u8>,
    start: u32,
    end: u32,
}

impl Window {
    /// `None` when the times do not parse (config validation rejects those first).
    pub fn parse(w: &ScheduleWindow) -> Option<Window> {
        Some(Window {
            days: w.days.clone(),
            start: parse_hhmm(&w.start)?,
            end: parse_hhmm(&w.end)?,
        })
    }

    fn on(&self, weekday: u8) -> bool {
        self.days.is_empty() || self.days.contains(&weekday)
    }

    /// Whether the window is open at `t`. A window that wraps midnight belongs to the day it
    /// starts on: `days = [5]`, `22:00`–`06:00` is open Friday 22:00 to Saturday 06:00.
    pub fn contains(&self, t: LocalTime) -> bool {
        if self.start < self.end {
            self.on(t.weekday) && t.minute >= self.start && t.minute < self.end
        } else {
            (self.on(t.weekday) && t.minute >= self.start)
                || (self.on(t.previous_weekday()) && t.minute < self.end)
        }
    }
}

/// A set of windows; empty = always open.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schedule {
    windows: Vec<Window>,
}

impl Schedule {
    pub fn new(windows: &[ScheduleWindow]) -> Schedule {
        Schedule {
            windows: windows.iter().filter_map(Window::parse).collect(),
        }
    }

    pub fn is_open(&self, ts_ms: i64, offset_minutes: i32) -> bool {
        if self.windows.is_empty() {
            return true;
        }
        let t = LocalTime::from_unix_ms(ts_ms, offset_minutes);
        self.windows.iter().any(|w| w.contains(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2024-01-01 00:00 UTC was a Monday.
    const MON_UTC: i64 = 1_704_067_200_000;

    #[test]
    fn local_time_with_offset() {
        let t = LocalTime::from_unix_ms(MON_UTC, 0);
        assert_eq!(
            t,
            LocalTime {
                weekday: 1,
                minute: 0
            }
        );
        // 08:00 in China on Monday.
        assert_eq!(
            LocalTime::from_unix_ms(MON_UTC, 480),
            LocalTime {
                weekday: 1,
                minute: 480
            }
        );
        // Sunday 20:00 UTC is Monday 04:00 in China.
        let t = LocalTime::from_unix_ms(MON_UTC - 4 * 3_600_000, 480);
        assert_eq!(
            t,
            LocalTime {
                weekday: 1,
                minute: 240
            }
        );
        // A negative offset moves back across midnight.
        let t = LocalTime::from_unix_ms(MON_UTC + 3_600_000, -120);
        assert_eq!(
            t,
            LocalTime {
                weekday: 7,
                minute: 23 * 60
            }
        );
        // Before the epoch still works (1969-12-31 was a Wednesday).
        assert_eq!(LocalTime::from_unix_ms(-1, 0).weekday, 3);
    }

    #[test]
    fn hhmm() {
        assert_eq!(parse_hhmm("00:00"), Some(0));
        assert_eq!(parse_hhmm("7:05"), Some(425));
        assert_eq!(parse_hhmm("24:00"), Some(1440));
        for bad in [
            "24:01", "12:60", "1200", "12:5", "ab:cd", "", "-1:00", "+1:00",
        ] {
            assert_eq!(parse_hhmm(bad), None, "{bad}");
        }
    }
}
