//! Parses the API's time parameters: Unix milliseconds or an RFC 3339 timestamp.
//!
//! Small enough to write here rather than pull in a date library for one function.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "`{input}` is not Unix milliseconds or an RFC 3339 time like 2026-09-21T08:30:00Z: {reason}"
)]
pub struct TimeParseError {
    pub input: String,
    pub reason: &'static str,
}

/// Unix milliseconds (`1790000000000`) or RFC 3339 (`2026-09-21T08:30:00.250+08:00`), as Unix ms.
pub fn parse_time_ms(s: &str) -> Result<i64, TimeParseError> {
    let err = |reason| TimeParseError {
        input: s.chars().take(64).collect(),
        reason,
    };
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().map_err(|_| err("number too large"));
    }
    parse_rfc3339(s).map_err(err)
}

fn parse_rfc3339(s: &str) -> Result<i64, &'static str> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err("too short");
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, &'static str> {
        let part = &b[range];
        if part.iter().all(u8::is_ascii_digit) {
            Ok(part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
        } else {
            Err("expected digits")
        }
    };
    let sep = |i: usize, c: &[u8]| {
        if c.contains(&b[i]) {
            Ok(())
        } else {
            Err("bad separator")
        }
    };
    let year = num(0..4)?;
    sep(4, b"-")?;
    let month = num(5..7)?;
    sep(7, b"-")?;
    let day = num(8..10)?;
    sep(10, b"Tt ")?;
    let hour = num(11..13)?;
    sep(13, b":")?;
    let minute = num(14..16)?;
    sep(16, b":")?;
    let second = num(17..19)?;

    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err("empty fraction");
        }
        // Milliseconds from the first three digits; finer digits are truncated.
        for k in 0..3 {
            let d = if start + k < i {
                b[start + k] - b'0'
            } else {
                0
            };
            millis = millis * 10 + i64::from(d);
        }
    }
    let offset_min = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&c @ (b'+' | b'-')) if i + 6 == b.len() => {
            let h = num(i + 1..i + 3)?;
            sep(i + 3, b":")?;
            let m = num(i + 4..i + 6)?;
            if h > 23 || m > 59 {
                return Err("offset out of range");
            }
            let o = h * 60 + m;
            if c == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return Err("expected Z or an offset like +08:00 at the end"),
    };

    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err("day out of range");
    }
    // Second 60 allowed for leap seconds; it lands on the next minute's first second.
    if hour > 23 || minute > 59 || second > 60 {
        return Err("time of day out of range");
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Ok(secs * 1000 + millis)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_ms() {
        assert_eq!(parse_time_ms("1790000000000"), Ok(1_790_000_000_000));
        assert_eq!(parse_time_ms("0"), Ok(0));
        assert!(parse_time_ms("99999999999999999999").is_err());
        assert!(parse_time_ms("-5").is_err());
        assert!(parse_time_ms("").is_err());
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_time_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time_ms("2000-01-01T00:00:00Z"), Ok(946_684_800_000));
        // Checked against `date -u -d 2026-09-21T08:30:00Z +%s`.
        assert_eq!(parse_time_ms("2026-09-21T08:30:00Z"), Ok(1_789_979_400_000));
        assert_eq!(
            parse_time_ms("2026-09-21T16:30:00.250+08:00"),
            Ok(1_789_979_400_250)
        );
        assert_eq!(
            parse_time_ms("2026-09-21t03:30:00.1234567-05:00"),
            Ok(1_789_979_400_123)
        );
        assert_eq!(parse_time_ms("2024-02-29 00:00:00z"), Ok(1_709_164_800_000));
        assert_eq!(parse_time_ms("1969-12-31T23:59:59Z"), Ok(-1000));
    }

    #[test]
    fn rejects_bad_times() {
        for bad in [
            "2026-09-21",
            "2026-09-21T08:30:00",
            "2026-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2026-09-21T24:00:00Z",
            "2026-09-21T08:30:00+0800",
            "2026-09-21T08:30:00.Z",
            "2026-09-21T08:30:00Zjunk",
            "yesterday",
            "1.5e12",
            "2026-09-2１T08:30:00Z",
        ] {
            let e = parse_time_ms(bad).unwrap_err();
            assert!(e.to_string().contains("RFC 3339"), "{bad}: {e}");
        }
    }
}
