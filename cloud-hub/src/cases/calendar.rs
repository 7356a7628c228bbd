//! Working time: the county's work windows (08:00–12:00 and 14:00–18:00 by default), working
//! weekdays, holidays and make-up days (调休). Handling limits in working minutes, hours or days
//! count only time inside the windows on working days; see `configs/governance/calendar.toml`.
//!
//! Times are UTC milliseconds, as everywhere in the hub; the calendar's local time is UTC plus a
//! fixed offset (China has no daylight saving time).

use std::collections::BTreeSet;

use time::{Date, Duration as TDuration, OffsetDateTime, UtcOffset, Weekday};

const MS_PER_MIN: i64 = 60_000;
const MIN_PER_DAY: i64 = 24 * 60;
/// Days [`WorkCalendar::add_working`] looks ahead before giving up: a calendar that has no
/// working time in ten years is misconfigured, and a deadline must never loop forever.
const MAX_DAYS: i64 = 3660;

/// A work window inside one local day, in minutes after midnight: `start < end <= 1440`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkCalendar {
    offset: UtcOffset,
    /// Sorted, non-overlapping.
    windows: Vec<Window>,
    /// Weekdays that are working days unless a holiday (Monday = 0).
    workdays: [bool; 7],
    holidays: BTreeSet<Date>,
    /// Weekend (or other) days that are working days (调休).
    makeup: BTreeSet<Date>,
}

impl WorkCalendar {
    /// The caller ([`super::config`]) validates: windows sorted and disjoint, at least one.
    pub fn new(
        offset: UtcOffset,
        windows: Vec<Window>,
        workdays: [bool; 7],
        holidays: BTreeSet<Date>,
        makeup: BTreeSet<Date>,
    ) -> Self {
        WorkCalendar {
            offset,
            windows,
            workdays,
            holidays,
            makeup,
        }
    }

    /// The local time's offset from UTC (Open311 writes times with it).
    pub fn offset(&self) -> UtcOffset {
        self.offset
    }

    /// Working minutes in one working day (480 with the default windows): a "working day" limit.
    pub fn minutes_per_day(&self) -> i64 {
        self.windows.iter().map(|w| w.end - w.start).sum()
    }

    pub fn is_workday(&self, d: Date) -> bool {
        if self.makeup.contains(&d) {
            return true;
        }
        let wd = d.weekday().number_days_from_monday() as usize;
        self.workdays[wd] && !self.holidays.contains(&d)
    }

    /// Local date and minute-of-day (with the ms left over) of a UTC instant.
    fn local(&self, ms: i64) -> (Date, i64) {
        let utc = OffsetDateTime::UNIX_EPOCH + TDuration::milliseconds(ms);
        let t = utc.to_offset(self.offset);
        let minute = i64::from(t.hour()) * 60 + i64::from(t.minute());
        let rest = i64::from(t.second()) * 1000 + i64::from(t.millisecond());
        (t.date(), minute * MS_PER_MIN + rest)
    }

    /// The UTC instant of local `date` at `ms_of_day`.
    fn instant(&self, date: Date, ms_of_day: i64) -> i64 {
        let midnight = date.midnight().assume_offset(self.offset);
        (midnight.unix_timestamp_nanos() / 1_000_000) as i64 + ms_of_day
    }

    /// The instant `working_ms` of working time after `start` (time outside the windows, on
    /// weekends and on holidays does not count). `None` if the calendar has no working time in
    /// the next ten years (a misconfiguration the loader refuses).
    pub fn add_working(&self, start: i64, working_ms: i64) -> Option<i64> {
        let (mut date, mut at) = self.local(start);
        let mut left = working_ms.max(0);
        for _ in 0..MAX_DAYS {
            if self.is_workday(date) {
                for w in &self.windows {
                    let (ws, we) = (w.start * MS_PER_MIN, w.end * MS_PER_MIN);
                    let from = ws.max(at);
                    if from >= we {
                        continue;
                    }
                    if left <= we - from {
                        return Some(self.instant(date, from + left));
                    }
                    left -= we - from;
                }
            }
            date = date.next_day()?;
            at = 0;
        }
        None
    }

    /// Working time between `a` and `b` (0 if `b <= a`), in ms.
    pub fn working_between(&self, a: i64, b: i64) -> i64 {
        if b <= a {
            return 0;
        }
        let (mut date, mut at) = self.local(a);
        let (end_date, end_at) = self.local(b);
        let mut total = 0;
        loop {
            let until = if date == end_date {
                end_at
            } else {
                MIN_PER_DAY * MS_PER_MIN
            };
            if self.is_workday(date) {
                for w in &self.windows {
                    let (ws, we) = (w.start * MS_PER_MIN, w.end * MS_PER_MIN);
                    let (from, to) = (ws.max(at), we.min(until));
                    if to > from {
                        total += to - from;
                    }
                }
            }
            if date >= end_date {
                return total;
            }
            match date.next_day() {
                Some(d) => date = d,
                None => return total,
            }
            at = 0;
        }
    }
}

/// `YYYY-MM-DD` as a date.
pub fn parse_date(s: &str) -> Option<Date> {
    let mut it = s.trim().splitn(3, '-');
    let y: i32 = it.next()?.parse().ok()?;
    let m: u8 = it.next()?.parse().ok()?;
    let d: u8 = it.next()?.parse().ok()?;
    Date::from_calendar_date(y, time::Month::try_from(m).ok()?, d).ok()
}

/// `HH:MM` (00:00..=24:00) as minutes after midnight.
pub fn parse_hhmm(s: &str) -> Option<i64> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    let v = h * 60 + m;
    ((0..24).contains(&h) && (0..60).contains(&m) || v == MIN_PER_DAY).then_some(v)
}

/// `+08:00` / `-05:30` as an offset.
pub fn parse_offset(s: &str) -> Option<UtcOffset> {
    let s = s.trim();
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1i8, &s[1..]),
        b'-' => (-1i8, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    UtcOffset::from_hms(sign * h, sign * m, 0).ok()
}

/// Weekday names as the calendar file writes them (`mon` … `sun`).
pub fn parse_weekday(s: &str) -> Option<Weekday> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "mon" | "monday" => Weekday::Monday,
        "tue" | "tuesday" => Weekday::Tuesday,
        "wed" | "wednesday" => Weekday::Wednesday,
        "thu" | "thursday" => Weekday::Thursday,
        "fri" | "friday" => Weekday::Friday,
        "sat" | "saturday" => Weekday::Saturday,
        "sun" | "sunday" => Weekday::Sunday,
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The default calendar's shape: 08–12, 14–18, Mon–Fri, +08:00; 2026-10-01..07 off (国庆),
    /// 2026-10-10 (Saturday) a make-up day.
    pub(crate) fn calendar() -> WorkCalendar {
        let d = |s: &str| parse_date(s).unwrap();
        let holidays = (1..=7).map(|i| d(&format!("2026-10-0{i}"))).collect();
        WorkCalendar::new(
            parse_offset("+08:00").unwrap(),
            vec![
                Window {
                    start: 8 * 60,
                    end: 12 * 60,
                },
                Window {
                    start: 14 * 60,
                    end: 18 * 60,
                },
            ],
            [true, true, true, true, true, false, false],
            holidays,
            [d("2026-10-10")].into_iter().collect(),
        )
    }

    /// UTC ms of a Beijing local time `YYYY-MM-DD HH:MM`.
    pub(crate) fn bj(s: &str) -> i64 {
        let (date, hm) = s.split_once(' ').unwrap();
        let c = calendar();
        c.instant(
            parse_date(date).unwrap(),
            parse_hhmm(hm).unwrap() * MS_PER_MIN,
        )
    }

    const H: i64 = 3_600_000;

    #[test]
    fn working_time_skips_lunch_nights_weekends_and_holidays() {
        let c = calendar();
        assert_eq!(c.minutes_per_day(), 480);
        // 2026-09-21 is a Monday. 4 working hours from 10:00: 2 before lunch, 2 after.
        assert_eq!(
            c.add_working(bj("2026-09-21 10:00"), 4 * H),
            Some(bj("2026-09-21 16:00"))
        );
        // Reported during lunch: the clock starts at 14:00.
        assert_eq!(
            c.add_working(bj("2026-09-21 12:30"), H),
            Some(bj("2026-09-21 15:00"))
        );
        // Across the night: 17:00 + 2 h = next day 09:00.
        assert_eq!(
            c.add_working(bj("2026-09-21 17:00"), 2 * H),
            Some(bj("2026-09-22 09:00"))
        );
        // Friday 17:00 + 2 h: over the weekend to Monday 09:00.
        assert_eq!(
            c.add_working(bj("2026-09-25 17:00"), 2 * H),
            Some(bj("2026-09-28 09:00"))
        );
        // Wednesday 2026-09-30 17:00 + 2 h: the National Day week is off, Thursday 10-08 09:00.
        assert_eq!(
            c.add_working(bj("2026-09-30 17:00"), 2 * H),
            Some(bj("2026-10-08 09:00"))
        );
        // Friday 10-09 17:00 + 2 h: Saturday 10-10 is a make-up working day.
        assert_eq!(
            c.add_working(bj("2026-10-09 17:00"), 2 * H),
            Some(bj("2026-10-10 09:00"))
        );
        // Exactly at a window's end it stays there (not the next window's start).
        assert_eq!(
            c.add_working(bj("2026-09-21 08:00"), 4 * H),
            Some(bj("2026-09-21 12:00"))
        );
        // A whole working day (480 min) from 08:00 ends at 18:00 the same day.
        assert_eq!(
            c.add_working(bj("2026-09-21 08:00"), 8 * H),
            Some(bj("2026-09-21 18:00"))
        );
    }

    #[test]
    fn working_between_is_the_inverse() {
        let c = calendar();
        for (a, ms) in [
            ("2026-09-21 10:00", 4 * H),
            ("2026-09-25 17:00", 2 * H),
            ("2026-09-30 17:00", 2 * H),
            ("2026-09-21 12:30", 30 * 60_000),
            ("2026-09-19 03:00", 20 * H),
        ] {
            let end = c.add_working(bj(a), ms).unwrap();
            assert_eq!(c.working_between(bj(a), end), ms, "{a} + {ms}");
        }
        assert_eq!(
            c.working_between(bj("2026-09-21 18:00"), bj("2026-09-22 08:00")),
            0
        );
        assert_eq!(
            c.working_between(bj("2026-09-22 08:00"), bj("2026-09-21 18:00")),
            0
        );
    }

    #[test]
    fn a_calendar_without_working_time_gives_no_deadline() {
        let c = WorkCalendar::new(
            UtcOffset::UTC,
            vec![Window { start: 0, end: 60 }],
            [false; 7],
            BTreeSet::new(),
            BTreeSet::new(),
        );
        assert_eq!(c.add_working(0, 1), None);
    }

    #[test]
    fn parsers_refuse_what_is_not_a_date_time_or_offset() {
        assert_eq!(parse_hhmm("08:00"), Some(480));
        assert_eq!(parse_hhmm("24:00"), Some(1440));
        for bad in ["24:01", "8", "08:60", "-1:00", "aa:bb"] {
            assert_eq!(parse_hhmm(bad), None, "{bad}");
        }
        assert!(parse_date("2026-02-29").is_none());
        assert!(parse_date("2028-02-29").is_some());
        assert!(parse_offset("08:00").is_none());
        assert_eq!(parse_offset("-05:30").unwrap().whole_minutes(), -330);
        assert_eq!(parse_weekday("Sat"), Some(Weekday::Saturday));
        assert_eq!(parse_weekday("sab"), None);
    }
}
