//! Rate-limited logging: a flood of bad input must not fill the disk with log lines.

use std::time::{Duration, Instant};

/// Lets the first `per_window` log lines of each window through, so a flood of bad messages
/// cannot fill the disk with logs; the counters still see every message.
#[derive(Debug)]
pub struct LogLimiter {
    per_window: u32,
    window: Duration,
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(per_window: u32, window: Duration) -> Self {
        LogLimiter {
            per_window,
            window,
            window_start: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` if this line may be logged, `n` being how many were suppressed since the last
    /// logged one (report it so the gap is visible); `None` to stay quiet.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window);
        if fresh {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < self.per_window {
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_bounds_lines_per_window() {
        let mut l = LogLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(59)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(l.allow(t0 + Duration::from_secs(61)), Some(0));
        assert_eq!(l.allow(t0 + Duration::from_secs(62)), None);
    }
}
