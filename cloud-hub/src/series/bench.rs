//! `cloud-hub bench-telemetry`: loads synthetic telemetry through the store's write path
//! ([`crate::store::Store::write`], batches of 2048 messages as ingest writes them; not over
//! MQTT), then times series queries and reports disk bytes per stored point.

use std::path::{Path, PathBuf};
use std::time::Instant;

use csb_wire::Telemetry;
use serde::Serialize;

use super::{Resolution, SeriesQuery, SERIES_DIR};
use crate::store::{SledStore, Store, WriteBatch, TELEMETRY_LOG_DIR};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Points in all (≈ series × points per series).
    pub points: u64,
    /// Series: devices × 10 metrics each.
    pub series: u32,
    /// Days the points are spread over (ending now).
    pub days: u32,
    /// Queries timed per kind.
    pub queries: usize,
    pub data_dir: Option<PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            points: 1_000_000,
            series: 1000,
            days: 7,
            queries: 200,
            data_dir: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub what: String,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_points: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub path: &'static str,
    pub points: u64,
    pub series: u32,
    pub days: u32,
    pub interval_ms: i64,
    pub load_s: f64,
    pub points_per_s: f64,
    /// Time to persist what was still pending after the last write.
    pub final_persist_s: f64,
    pub series_disk_bytes: u64,
    pub series_bytes_per_point: f64,
    /// Encoded keys + values per point, without sled's overhead: raw, 1m, 1h.
    pub encoded_bytes_per_point: [f64; 3],
    /// The raw telemetry record log, for comparison (JSON as received).
    pub log_bytes_per_point: f64,
    pub queries: Vec<Latency>,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "bench-telemetry ({})", self.path)?;
        writeln!(
            f,
            "  loaded {} points in {} series over {} days (one point per series every {} ms) in {:.1} s: {:.0} points/s (+{:.1} s final persist)",
            self.points, self.series, self.days, self.interval_ms, self.load_s, self.points_per_s, self.final_persist_s
        )?;
        writeln!(
            f,
            "  series store: {} bytes on disk, {:.2} bytes/point (raw + 1m + 1h); record log: {:.1} bytes/point",
            self.series_disk_bytes, self.series_bytes_per_point, self.log_bytes_per_point
        )?;
        let [r, m, h] = self.encoded_bytes_per_point;
        writeln!(
            f,
            "  encoded keys+values per point (without sled's overhead): raw {r:.2}, 1m {m:.2}, 1h {h:.2}"
        )?;
        for q in &self.queries {
            writeln!(
                f,
                "  {:<34} p50 {:>8.3} ms  p99 {:>8.3} ms  ({:.0} points/buckets each)",
                q.what, q.p50_ms, q.p99_ms, q.mean_points
            )?;
        }
        Ok(())
    }
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

const METRICS: usize = 10;

pub async fn run(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let base = opts.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!(
        "csb-bench-telemetry-{}-{}",
        std::process::id(),
        csb_wire::now_ms()
    ));
    let result = load_and_query(opts, &dir).await;
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the bench store");
    }
    result
}

async fn load_and_query(opts: &BenchOptions, dir: &Path) -> anyhow::Result<BenchReport> {
    let dir = dir.to_path_buf();
    let store = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || SledStore::open(&dir, 64)).await??
    };
    let devices = (opts.series as usize).div_ceil(METRICS).max(1);
    let series = (devices * METRICS) as u64;
    let per_series = (opts.points / series).max(1);
    let span = i64::from(opts.days) * 86_400_000;
    let interval = (span / per_series as i64).max(1);
    let end = csb_wire::now_ms();
    let start = end - span;
    let names: Vec<String> = (0..METRICS).map(|m| format!("m{m}")).collect();
    let mut walk = vec![200i64; devices * METRICS];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let t0 = Instant::now();
    let mut batch = WriteBatch::default();
    for k in 0..per_series as i64 {
        for d in 0..devices {
            let ts = start + k * interval + (d as i64 * 997) % interval;
            let mut metrics = std::collections::BTreeMap::new();
            for (m, name) in names.iter().enumerate() {
                // Random walk at 0.1 resolution, as sensors report.
                let w = &mut walk[d * METRICS + m];
                *w += (next() % 5) as i64 - 2;
                metrics.insert(name.clone(), *w as f64 / 10.0);
            }
            let t = Telemetry {
                v: 1,
                id: ulid::Ulid::from_parts(ts as u64, u128::from(next())),
                site: "bench".into(),
                device: format!("gw-{d:05}"),
                source: "sensor".into(),
                ts_ms: ts,
                metrics,
            };
            batch.telemetry_payloads.push(serde_json::to_vec(&t)?);
            batch.telemetry.push(t);
            if batch.telemetry.len() >= 2048 {
                store.write(std::mem::take(&mut batch)).await?;
            }
        }
    }
    store.write(batch).await?;
    let load_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    {
        let s = store.series().clone();
        tokio::task::spawn_blocking(move || s.persist()).await??;
    }
    let final_persist_s = t1.elapsed().as_secs_f64();
    let points = per_series * series;
    let series_disk_bytes = dir_bytes(&dir.join(SERIES_DIR));
    let log_bytes = dir_bytes(&dir.join(TELEMETRY_LOG_DIR));
    let logical = {
        let s = store.series().clone();
        tokio::task::spawn_blocking(move || s.logical_bytes()).await?
    };

    let mut queries = Vec::new();
    let kinds: [(&str, i64, Resolution); 3] = [
        (
            "7-day 1h rollup of one series",
            7 * 86_400_000,
            Resolution::Hour,
        ),
        (
            "24-hour 1m rollup of one series",
            86_400_000,
            Resolution::Minute,
        ),
        ("1-hour raw range of one series", 3_600_000, Resolution::Raw),
    ];
    for (what, len, res) in kinds {
        let mut lat = Vec::with_capacity(opts.queries);
        let mut n_points = 0usize;
        for _ in 0..opts.queries {
            let sid = next() as usize % series as usize;
            let to = end - (next() % 86_400_000) as i64;
            let q = SeriesQuery {
                site: "bench".into(),
                device: format!("gw-{:05}", sid / METRICS),
                source: "sensor".into(),
                metric: names[sid % METRICS].clone(),
                from_ms: to - len,
                to_ms: to,
                resolution: Some(res),
                limit: super::MAX_QUERY_POINTS,
            };
            let s = store.series().clone();
            let t = Instant::now();
            let d = tokio::task::spawn_blocking(move || s.query(&q)).await??;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            n_points += d
                .map(|d| d.points.map_or(0, |p| p.len()) + d.buckets.map_or(0, |b| b.len()))
                .unwrap_or(0);
        }
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        queries.push(Latency {
            what: what.into(),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            mean_points: n_points as f64 / opts.queries.max(1) as f64,
        });
    }
    Ok(BenchReport {
        path: "store write path (SledStore::write, 2048-message batches), not MQTT",
        points,
        series: series as u32,
        days: opts.days,
        interval_ms: interval,
        load_s,
        points_per_s: points as f64 / load_s,
        final_persist_s,
        series_disk_bytes,
        series_bytes_per_point: series_disk_bytes as f64 / points as f64,
        encoded_bytes_per_point: logical.map(|b| b as f64 / points as f64),
        log_bytes_per_point: log_bytes as f64 / points as f64,
        queries,
    })
}
