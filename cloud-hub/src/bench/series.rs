//! `cloud-hub bench-telemetry`: loads synthetic telemetry through the store's write path
//! ([`crate::storage::store::Store::write`], batches of 2048 messages as ingest writes them; not over
//! MQTT), then times series queries and reports disk bytes per stored point.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use csb_wire::Telemetry;
use serde::Serialize;

use crate::bench::kit::{dir_bytes, Latency, XorShift};
use crate::bench::BenchError;
use crate::storage::series::{Resolution, Series, SeriesQuery, MAX_QUERY_POINTS, SERIES_DIR};
use crate::storage::store::{SledStore, Store, WriteBatch, TELEMETRY_LOG_DIR};

/// Also the `cloud-hub bench-telemetry` options (field docs are its help).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Points in all (spread evenly over the series and days).
    #[arg(long, default_value_t = BenchOptions::default().points)]
    pub points: u64,
    /// Series (devices × 10 metrics).
    #[arg(long, default_value_t = BenchOptions::default().series)]
    pub series: u32,
    /// Days the points cover, ending now.
    #[arg(long, default_value_t = BenchOptions::default().days)]
    pub days: u32,
    /// Queries timed per kind (at least 1).
    #[arg(long, default_value_t = BenchOptions::default().queries)]
    pub queries: usize,
    /// Directory for the throw-away store (default: the system temp dir).
    #[arg(long)]
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
            writeln!(f, "  {}", q.line("points/buckets"))?;
        }
        Ok(())
    }
}

const METRICS: usize = 10;

fn phase(phase: &'static str) -> impl Fn(String) -> BenchError {
    move |reason| BenchError::Phase { phase, reason }
}

pub async fn run(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
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

/// What [`load_telemetry`] wrote, for the queries that follow.
pub(crate) struct Loaded {
    pub points: u64,
    pub series: u64,
    pub interval_ms: i64,
    /// The newest point's time (the load ends "now").
    pub end_ms: i64,
    pub load_s: f64,
    pub final_persist_s: f64,
}

fn metric_name(m: usize) -> String {
    format!("m{m}")
}

fn device_name(d: usize) -> String {
    format!("gw-{d:05}")
}

/// Writes `opts.points` telemetry points (devices × 10 metrics, a random walk at 0.1
/// resolution as sensors report, spread over `opts.days` ending now) through the store's write
/// path in 2048-message batches, then persists what is pending.
pub(crate) async fn load_telemetry(
    store: &SledStore,
    opts: &BenchOptions,
) -> Result<Loaded, BenchError> {
    let devices = (opts.series as usize).div_ceil(METRICS).max(1);
    let series = (devices * METRICS) as u64;
    let per_series = (opts.points / series).max(1);
    let span = i64::from(opts.days) * 86_400_000;
    let interval = (span / per_series as i64).max(1);
    let end = csb_wire::now_ms();
    let start = end - span;
    let names: Vec<String> = (0..METRICS).map(metric_name).collect();
    let mut walk = vec![200i64; devices * METRICS];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let t0 = Instant::now();
    let mut batch = WriteBatch::default();
    for k in 0..per_series as i64 {
        for d in 0..devices {
            let ts = start + k * interval + (d as i64 * 997) % interval;
            let mut metrics = std::collections::BTreeMap::new();
            for (m, name) in names.iter().enumerate() {
                let w = &mut walk[d * METRICS + m];
                *w += (rng.next_u64() % 5) as i64 - 2;
                metrics.insert(name.clone(), *w as f64 / 10.0);
            }
            let t = Telemetry {
                v: 1,
                id: ulid::Ulid::from_parts(ts as u64, u128::from(rng.next_u64())),
                site: "bench".into(),
                device: device_name(d),
                source: "sensor".into(),
                ts_ms: ts,
                metrics,
            };
            batch.telemetry_payloads.push(
                serde_json::to_vec(&t)
                    .map_err(|e| phase("load")(e.to_string()))?
                    .into(),
            );
            batch.telemetry.push(t);
            if batch.telemetry.len() >= 2048 {
                store.write(std::mem::take(&mut batch)).await?;
            }
        }
    }
    store.write(batch).await?;
    let load_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    blocking(store.series(), "persist", |s| {
        s.persist().map_err(|e| e.to_string())
    })
    .await?
    .map_err(phase("persist"))?;
    Ok(Loaded {
        points: per_series * series,
        series,
        interval_ms: interval,
        end_ms: end,
        load_s,
        final_persist_s: t1.elapsed().as_secs_f64(),
    })
}

/// Runs `f` on the series store off the async threads.
async fn blocking<T: Send + 'static>(
    series: &Arc<Series>,
    what: &'static str,
    f: impl FnOnce(&Series) -> T + Send + 'static,
) -> Result<T, BenchError> {
    let s = series.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| phase(what)(e.to_string()))
}

/// Times the series queries over what [`load_telemetry`] wrote: the 7-day 1-hour rollup
/// first, then a 24-hour 1-minute rollup and a 1-hour raw range, each of a random series.
pub(crate) async fn telemetry_queries(
    store: &SledStore,
    loaded: &Loaded,
    runs: usize,
) -> Result<Vec<Latency>, BenchError> {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
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
    let mut out = Vec::new();
    for (what, len, res) in kinds {
        let lat = crate::bench::kit::time_runs(what, runs, |_| {
            let sid = rng.next_u64() as usize % loaded.series as usize;
            let to = loaded.end_ms - (rng.next_u64() % 86_400_000) as i64;
            let q = SeriesQuery {
                site: "bench".into(),
                device: device_name(sid / METRICS),
                source: "sensor".into(),
                metric: metric_name(sid % METRICS),
                from_ms: to - len,
                to_ms: to,
                resolution: Some(res),
                limit: MAX_QUERY_POINTS,
            };
            let s = store.series().clone();
            async move {
                let d = blocking(&s, "query", move |s| s.query(&q).map_err(|e| e.to_string()))
                    .await?
                    .map_err(phase("query"))?;
                Ok(
                    d.map(|d| d.points.map_or(0, |p| p.len()) + d.buckets.map_or(0, |b| b.len()))
                        .unwrap_or(0) as u64,
                )
            }
        })
        .await?;
        out.push(lat);
    }
    Ok(out)
}

async fn load_and_query(opts: &BenchOptions, dir: &Path) -> Result<BenchReport, BenchError> {
    let store = {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || SledStore::open(&dir, 64))
            .await
            .map_err(|e| phase("open")(e.to_string()))??
    };
    let loaded = load_telemetry(&store, opts).await?;
    let points = loaded.points;
    let series_disk_bytes = dir_bytes(&dir.join(SERIES_DIR));
    let log_bytes = dir_bytes(&dir.join(TELEMETRY_LOG_DIR));
    let logical = blocking(store.series(), "size", |s| s.logical_bytes()).await?;
    let queries = telemetry_queries(&store, &loaded, opts.queries.max(1)).await?;
    Ok(BenchReport {
        path: "store write path (SledStore::write, 2048-message batches), not MQTT",
        points,
        series: loaded.series as u32,
        days: opts.days,
        interval_ms: loaded.interval_ms,
        load_s: loaded.load_s,
        points_per_s: points as f64 / loaded.load_s,
        final_persist_s: loaded.final_persist_s,
        series_disk_bytes,
        series_bytes_per_point: series_disk_bytes as f64 / points as f64,
        encoded_bytes_per_point: logical.map(|b| b as f64 / points as f64),
        log_bytes_per_point: log_bytes as f64 / points as f64,
        queries,
    })
}
