//! Telemetry downsampling: a sensor that reports every second need not cost the uplink a
//! message a second. Readings are aggregated per clock-aligned window (so windows of different
//! sensors and gateways line up for the hub's rollups) and sent once per window.

use std::collections::BTreeMap;

use super::config::Stat;

#[derive(Debug, Clone, Copy)]
struct Agg {
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
}

/// The open window of one sensor.
#[derive(Debug, Clone)]
pub struct Window {
    interval_ms: i64,
    stats: Vec<Stat>,
    /// Start of the open window (Unix ms), None while empty.
    start: Option<i64>,
    last_ts: i64,
    aggs: BTreeMap<String, Agg>,
}

/// A closed window, ready to become a telemetry message.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Time of the newest reading in the window.
    pub ts_ms: i64,
    pub metrics: BTreeMap<String, f64>,
}

impl Window {
    /// `interval_ms` 0: every reading is its own summary, under plain metric names.
    pub fn new(interval_ms: i64, stats: &[Stat]) -> Self {
        let mut stats = stats.to_vec();
        stats.sort();
        stats.dedup();
        Window {
            interval_ms: interval_ms.max(0),
            stats,
            start: None,
            last_ts: 0,
            aggs: BTreeMap::new(),
        }
    }

    fn bucket(&self, ts: i64) -> i64 {
        ts - ts.rem_euclid(self.interval_ms)
    }

    /// Adds a reading. Returns the previous window's summary when this reading belongs to a
    /// later window (readings older than the open window are counted in it, not dropped).
    pub fn add(&mut self, ts_ms: i64, values: &[(String, f64)]) -> Option<Summary> {
        if self.interval_ms == 0 {
            return Some(Summary {
                ts_ms,
                metrics: values.iter().cloned().collect(),
            });
        }
        let bucket = self.bucket(ts_ms);
        let closed = match self.start {
            Some(s) if bucket > s => self.take(),
            _ => None,
        };
        if self.start.is_none() {
            self.start = Some(bucket);
        }
        self.last_ts = self.last_ts.max(ts_ms);
        for (m, v) in values {
            let a = self.aggs.entry(m.clone()).or_insert(Agg {
                n: 0,
                sum: 0.0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                last: *v,
            });
            a.n += 1;
            a.sum += v;
            a.min = a.min.min(*v);
            a.max = a.max.max(*v);
            a.last = *v;
        }
        closed
    }

    /// Closes the open window if the clock (`now_ms`) has passed its end by `grace_ms`, so a
    /// sensor that stops reporting still gets its last window sent.
    pub fn close_if_due(&mut self, now_ms: i64, grace_ms: i64) -> Option<Summary> {
        match self.start {
            Some(s) if now_ms >= s + self.interval_ms + grace_ms => self.take(),
            _ => None,
        }
    }

    /// Closes the open window now (shutdown).
    pub fn take(&mut self) -> Option<Summary> {
        self.start.take()?;
        let mut metrics = BTreeMap::new();
        for (m, a) in std::mem::take(&mut self.aggs) {
            for s in &self.stats {
                let v = match s {
                    Stat::Mean => a.sum / a.n as f64,
                    Stat::Min => a.min,
                    Stat::Max => a.max,
                    Stat::Last => a.last,
                    Stat::Count => a.n as f64,
                };
                let name = match s.suffix() {
                    None => m.clone(),
                    Some(x) => format!("{m}.{x}"),
                };
                metrics.insert(name, v);
            }
        }
        let ts_ms = std::mem::take(&mut self.last_ts);
        (!metrics.is_empty()).then_some(Summary { ts_ms, metrics })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_790_000_040_000; // a multiple of 60 s

    fn v(x: f64) -> Vec<(String, f64)> {
        vec![("level".into(), x)]
    }

    #[test]
    fn aggregates_per_clock_window() {
        let all = [Stat::Mean, Stat::Min, Stat::Max, Stat::Last, Stat::Count];
        let mut w = Window::new(60_000, &all);
        assert!(w.add(T0 + 1_000, &v(10.0)).is_none());
        assert!(w.add(T0 + 30_000, &v(30.0)).is_none());
        assert!(w.add(T0 + 59_999, &v(20.0)).is_none());
        let s = w
            .add(T0 + 60_000, &v(99.0))
            .expect("next window closes this one");
        assert_eq!(s.ts_ms, T0 + 59_999);
        assert_eq!(s.metrics["level"], 20.0);
        assert_eq!(s.metrics["level.min"], 10.0);
        assert_eq!(s.metrics["level.max"], 30.0);
        assert_eq!(s.metrics["level.last"], 20.0);
        assert_eq!(s.metrics["level.count"], 3.0);
        // The new window holds only 99; it closes on the clock once past its end plus grace.
        assert!(w.close_if_due(T0 + 119_000, 2_000).is_none());
        let s = w.close_if_due(T0 + 122_000, 2_000).unwrap();
        assert_eq!(s.metrics["level.count"], 1.0);
        assert!(w.take().is_none(), "nothing left");
    }

    #[test]
    fn selected_stats_and_raw_mode() {
        let mut w = Window::new(10_000, &[Stat::Max, Stat::Max]);
        w.add(T0, &v(1.0));
        w.add(T0 + 1, &v(5.0));
        let s = w.take().unwrap();
        assert_eq!(s.metrics.len(), 1);
        assert_eq!(s.metrics["level.max"], 5.0);

        let mut raw = Window::new(0, &[Stat::Mean]);
        let s = raw.add(T0, &v(7.5)).unwrap();
        assert_eq!((s.ts_ms, s.metrics["level"]), (T0, 7.5));
    }

    #[test]
    fn late_reading_counts_in_the_open_window() {
        let mut w = Window::new(60_000, &[Stat::Count]);
        w.add(T0 + 61_000, &v(1.0));
        assert!(w.add(T0 + 5_000, &v(2.0)).is_none());
        assert_eq!(w.take().unwrap().metrics["level.count"], 2.0);
    }
}
