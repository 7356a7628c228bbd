//! `cloud-hub bench-platform`: the data platform at county volume in one store. Loads events
//! (default 1,000,000 over 30 days) and telemetry (default 10,000,000 points over 7 days)
//! through the store's write path (no MQTT: `bench-ingest` measures the wire), builds the twin
//! of the county model plus synthetic street furniture (default 20,000 sensors) and serves its
//! NGSI-LD API on loopback; then reports p50/p99 of a 24-hour event aggregate, a 7-day
//! telemetry rollup and geo queries (`near` and `within`, over HTTP as a client sees them),
//! plus disk bytes per stored event and point.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use ulid::Ulid;

use crate::bench::history::{event_queries, load_events};
use crate::bench::kit::{dir_bytes, time_runs, Latency, XorShift};
use crate::bench::series::{load_telemetry, telemetry_queries, BenchOptions};
use crate::bench::BenchError;
use crate::platform::county::{County, Placed, Sensor};
use crate::platform::geo::{Geometry, Position};
use crate::platform::twin::Twin;
use crate::storage::series::SERIES_DIR;
use crate::storage::store::{SledStore, EVENT_LOG_DIR, TELEMETRY_LOG_DIR};

/// Also the `cloud-hub bench-platform` options (field docs are its help).
#[derive(Debug, Clone, clap::Args)]
pub struct PlatformOptions {
    /// Events to load (spread over --event-days).
    #[arg(long, default_value_t = PlatformOptions::default().events)]
    pub events: usize,
    #[arg(long, default_value_t = PlatformOptions::default().event_days)]
    pub event_days: u32,
    /// Telemetry points to load (spread over --telemetry-days, ending now).
    #[arg(long, default_value_t = PlatformOptions::default().points)]
    pub points: u64,
    /// Telemetry series (devices × 10 metrics).
    #[arg(long, default_value_t = PlatformOptions::default().series)]
    pub series: u32,
    #[arg(long, default_value_t = PlatformOptions::default().telemetry_days)]
    pub telemetry_days: u32,
    /// Synthetic sensors added to the county model's entities (spread over its extent) for
    /// the geo queries.
    #[arg(long, default_value_t = PlatformOptions::default().entities)]
    pub entities: usize,
    /// Timed runs of each query.
    #[arg(long, default_value_t = PlatformOptions::default().queries)]
    pub queries: usize,
    /// County model folder.
    #[arg(long, default_value = crate::platform::county::DEFAULT_DIR)]
    pub county: PathBuf,
    /// Directory for the throw-away store (default: the system temp dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl Default for PlatformOptions {
    fn default() -> Self {
        PlatformOptions {
            events: 1_000_000,
            event_days: 30,
            points: 10_000_000,
            series: 1000,
            telemetry_days: 7,
            entities: 20_000,
            queries: 200,
            county: PathBuf::from(crate::platform::county::DEFAULT_DIR),
            data_dir: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlatformReport {
    pub events: usize,
    pub event_load_per_s: f64,
    pub points: u64,
    pub point_load_per_s: f64,
    pub entities: usize,
    pub event_disk_bytes_per_event: f64,
    /// Series store (raw + 1m + 1h) and the raw telemetry record log together.
    pub telemetry_disk_bytes_per_point: f64,
    pub series_disk_bytes_per_point: f64,
    pub queries: Vec<Latency>,
    /// The goal: every p99 at most 100 ms.
    pub worst_p99_ms: f64,
}

impl PlatformReport {
    pub fn text(&self) -> String {
        let mut out = format!(
            "data platform: {} events loaded at {:.0}/s, {} telemetry points at {:.0}/s, \
             twin of {} entities\n\
             disk: {:.0} bytes per event; {:.1} bytes per telemetry point \
             ({:.1} series store + {:.1} raw log)\n",
            self.events,
            self.event_load_per_s,
            self.points,
            self.point_load_per_s,
            self.entities,
            self.event_disk_bytes_per_event,
            self.telemetry_disk_bytes_per_point,
            self.series_disk_bytes_per_point,
            self.telemetry_disk_bytes_per_point - self.series_disk_bytes_per_point,
        );
        for q in &self.queries {
            out += &q.line("results");
            out.push('\n');
        }
        out += &format!(
            "worst p99 {:.2} ms (goal ≤ 100 ms: {})\n",
            self.worst_p99_ms,
            if self.worst_p99_ms <= 100.0 {
                "met"
            } else {
                "NOT met"
            }
        );
        out
    }
}

pub async fn run(opts: &PlatformOptions) -> Result<PlatformReport, BenchError> {
    for (name, v) in [
        ("events", opts.events),
        ("event-days", opts.event_days as usize),
        ("points", opts.points as usize),
        ("series", opts.series as usize),
        ("telemetry-days", opts.telemetry_days as usize),
        ("queries", opts.queries),
    ] {
        if v == 0 {
            return Err(BenchError::Option(name));
        }
    }
    let county = County::load(&opts.county).map_err(|e| BenchError::Phase {
        phase: "county",
        reason: e.to_string(),
    })?;
    let parent = opts.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = parent.join(format!("csb-bench-platform-{}", Ulid::new()));
    std::fs::create_dir_all(&dir).map_err(|cause| BenchError::Dir {
        path: dir.clone(),
        cause,
    })?;
    let result = run_in(opts, county, &dir).await;
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the bench store");
    }
    result
}

async fn run_in(
    opts: &PlatformOptions,
    county: County,
    dir: &Path,
) -> Result<PlatformReport, BenchError> {
    let store = {
        let d = dir.to_path_buf();
        tokio::task::spawn_blocking(move || SledStore::open(&d, 64))
            .await
            .map_err(|e| BenchError::Phase {
                phase: "open",
                reason: e.to_string(),
            })??
    };
    let store = Arc::new(store);
    let event_load_s = load_events(&*store, opts.events, opts.event_days).await?;
    let tel = BenchOptions {
        points: opts.points,
        series: opts.series,
        days: opts.telemetry_days,
        queries: opts.queries,
        data_dir: None,
    };
    let loaded = load_telemetry(&store, &tel).await?;

    let mut queries = Vec::new();
    // The three first: the 24-hour event aggregate, the 7-day rollup, then geo.
    let mut ev = event_queries(&store, opts.events, opts.event_days, opts.queries).await?;
    let mut ts = telemetry_queries(&store, &loaded, opts.queries).await?;
    queries.push(ev.remove(0));
    queries.push(ts.remove(0));
    let (entities, geo) = geo_queries(county, opts.entities, opts.queries).await?;
    queries.extend(geo);
    queries.extend(ev);
    queries.extend(ts);

    let event_bytes = dir_bytes(&dir.join(EVENT_LOG_DIR));
    let series_bytes = dir_bytes(&dir.join(SERIES_DIR));
    let log_bytes = dir_bytes(&dir.join(TELEMETRY_LOG_DIR));
    drop(store);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let points = loaded.points as f64;
    Ok(PlatformReport {
        events: opts.events,
        event_load_per_s: opts.events as f64 / event_load_s.max(1e-9),
        points: loaded.points,
        point_load_per_s: points / loaded.load_s.max(1e-9),
        entities,
        event_disk_bytes_per_event: event_bytes as f64 / opts.events as f64,
        telemetry_disk_bytes_per_point: (series_bytes + log_bytes) as f64 / points,
        series_disk_bytes_per_point: series_bytes as f64 / points,
        worst_p99_ms: queries.iter().map(|q| q.p99_ms).fold(0.0, f64::max),
        queries,
    })
}

/// Every position of a geometry (for the county's extent).
fn positions(g: &Geometry) -> Vec<Position> {
    match g {
        Geometry::Point(p) => vec![*p],
        Geometry::LineString(l) => l.clone(),
        Geometry::Polygon(rings) => rings.concat(),
        Geometry::MultiPolygon(polys) => polys.iter().flat_map(|r| r.concat()).collect(),
    }
}

/// The county's bounding box `[west, south, east, north]`: its outline, else its towns.
fn extent(county: &County) -> Option<[f64; 4]> {
    let shapes: Vec<&Geometry> = match &county.outline {
        Some(o) => vec![o],
        None => county.towns.iter().map(|t| &t.geometry).collect(),
    };
    let mut bb = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
    for p in shapes.iter().flat_map(|g| positions(g)) {
        bb = [
            bb[0].min(p[0]),
            bb[1].min(p[1]),
            bb[2].max(p[0]),
            bb[3].max(p[1]),
        ];
    }
    (bb[0] < bb[2] && bb[1] < bb[3]).then_some(bb)
}

/// Adds `n` synthetic sensors (street lights, manhole covers…, 50 per gateway id) uniformly
/// over the county's extent, builds the twin, serves its NGSI-LD routes on loopback and times
/// `near` (1 km and 5 km) and `within` (a 2 km square) around random points of the county.
async fn geo_queries(
    mut county: County,
    n: usize,
    runs: usize,
) -> Result<(usize, Vec<Latency>), BenchError> {
    let phase = |reason: String| BenchError::Phase {
        phase: "geo",
        reason,
    };
    let bb = extent(&county).ok_or_else(|| phase("the county model has no extent".into()))?;
    let mut rng = XorShift(0x6a09_e667_f3bc_c909);
    const KINDS: [&str; 4] = ["street_light", "manhole_tilt", "air_quality", "water_level"];
    for i in 0..n {
        county.sensors.push(Sensor {
            id: format!("bench/gw-geo-{:04}/s-{i:06}", i / 50),
            placed: Placed {
                name: format!("bench sensor {i}"),
                name_en: None,
                model: None,
                town: None,
                department: None,
                installed: None,
                location: [rng.uniform(bb[0], bb[2]), rng.uniform(bb[1], bb[3])],
            },
            kind: KINDS[i % KINDS.len()].into(),
            metrics: vec![],
        });
    }
    let twin = Arc::new(Twin::new(Some(&county), None, 86_400_000));
    let entities = twin.read(|e, _| e.len());
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| phase(format!("bind a loopback port: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| phase(format!("loopback address: {e}")))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = crate::http::ngsi::router::<()>(twin);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let client = reqwest::Client::new();
    let base = format!("http://{addr}/ngsi-ld/v1/entities?limit=1000&options=keyValues");
    let mut out = Vec::new();
    let kinds: [(&str, &str); 3] = [
        ("geo: entities near a point, within 1 km", "near1"),
        ("geo: entities near a point, within 5 km", "near5"),
        ("geo: entities within a 2 km square", "within"),
    ];
    for (name, kind) in kinds {
        let lat = time_runs(name, runs, |_| {
            let c = [rng.uniform(bb[0], bb[2]), rng.uniform(bb[1], bb[3])];
            let url = match kind {
                "near1" | "near5" => format!(
                    "{base}&georel=near;maxDistance=={}&geometry=Point&coordinates=[{},{}]",
                    if kind == "near1" { 1000 } else { 5000 },
                    c[0],
                    c[1]
                ),
                _ => {
                    // ~1 km each way: 0.009° of latitude, 0.0105° of longitude at 31° N.
                    let (dx, dy) = (0.0105, 0.009);
                    let (w, s, e, n) = (c[0] - dx, c[1] - dy, c[0] + dx, c[1] + dy);
                    format!(
                        "{base}&georel=within&geometry=Polygon&coordinates=[[[{w},{s}],[{e},{s}],[{e},{n}],[{w},{n}],[{w},{s}]]]"
                    )
                }
            };
            let client = client.clone();
            async move {
                let resp = client
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| phase(format!("GET {url}: {e}")))?;
                let status = resp.status();
                let body: serde_json::Value = resp
                    .json()
                    .await
                    .map_err(|e| phase(format!("GET {url}: {e}")))?;
                match body.as_array() {
                    Some(a) if status.is_success() => Ok(a.len() as u64),
                    _ => Err(phase(format!("GET {url}: {status} {body}"))),
                }
            }
        })
        .await?;
        out.push(lat);
    }
    let _ = stop.send(());
    let _ = server.await;
    Ok((entities, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_small_run_reports_every_query_on_the_sample_county() {
        let dir = tempfile::tempdir().unwrap();
        let county = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/county");
        let opts = PlatformOptions {
            events: 3000,
            event_days: 2,
            points: 20_000,
            series: 20,
            telemetry_days: 7,
            entities: 2000,
            queries: 3,
            county,
            data_dir: Some(dir.path().to_path_buf()),
        };
        let r = run(&opts).await.unwrap();
        // 4 event, 3 telemetry and 3 geo queries; the three first.
        assert_eq!(r.queries.len(), 10);
        assert!(r.queries[0].name.contains("24 h aggregate"));
        assert!(r.queries[1].name.contains("7-day 1h rollup"));
        assert!(r.queries[2].name.starts_with("geo"));
        assert!(r.entities > 2000, "{}", r.entities);
        // 2000 sensors over the county: a 5 km circle holds some of them on average.
        assert!(r.queries[3].mean_result > 0.0, "{:?}", r.queries[3]);
        // A 7-day hourly rollup has up to 168 buckets.
        assert!(
            (100.0..=169.0).contains(&r.queries[1].mean_result),
            "{:?}",
            r.queries[1]
        );
        assert!(r.telemetry_disk_bytes_per_point > r.series_disk_bytes_per_point);
        assert!(r.text().contains("goal ≤ 100 ms"));
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[tokio::test]
    async fn a_missing_county_is_named() {
        let opts = PlatformOptions {
            county: PathBuf::from("/nonexistent/county"),
            ..Default::default()
        };
        let e = run(&opts).await.unwrap_err().to_string();
        assert!(e.contains("/nonexistent/county"), "{e}");
    }
}
