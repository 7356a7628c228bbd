//! `cloud-hub bench-history`: event history at volume. Loads N events (default 1,000,000)
//! spread over D days through the store's own write path (batches as ingest makes them, no
//! MQTT: this measures storage and queries, `bench-ingest` measures the wire), reopens the
//! store (the indexes rebuilt from disk, as after a restart), then reports p50/p99 latency of
//! a 24-hour event aggregate (by type and hour), a 7-day aggregate by zone, a filtered history
//! page (newest 100 of one zone in 24 h) and a lookup by id, plus disk bytes per event.
//!
//! Then, for each count of `--rss-events` (default 1M, 5M, 10M), a store is loaded afresh with
//! that many events over the same days, the same queries are timed in process, and a real
//! `cloud-hub serve` is started on it: its RSS once open, and again after the queries were
//! answered over HTTP (its caches warm), with each count's RSS and p99 as a ratio of the
//! first's. The events arrive over the last `days` days (received times end now), as a hub
//! that ingested them live would hold them. No timed assertions: figures to read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csb_wire::{BBox, Detection, Event, EventKind, Phase, RuleInfo, RuleType, SCHEMA_VERSION};
use serde::Serialize;
use ulid::Ulid;

use crate::bench::kit::{dir_bytes, proc_stats, time_runs, HubProcess, Latency};
use crate::bench::BenchError;
use crate::storage::store::{
    EventAggregateQuery, EventDim, EventQuery, SledStore, Store, WriteBatch, EVENT_LOG_DIR,
};

/// Also the `cloud-hub bench-history` options (field docs are its help).
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryOptions {
    /// Events to load.
    #[arg(long, default_value_t = HistoryOptions::default().events)]
    pub events: usize,
    /// Days they are spread over.
    #[arg(long, default_value_t = HistoryOptions::default().days)]
    pub days: u32,
    /// Timed runs of each query.
    #[arg(long, default_value_t = HistoryOptions::default().queries)]
    pub queries: usize,
    /// Directory for the throw-away store (default: the system temp dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Stored event counts at which a hub process's RSS is read (comma list; `0` for none).
    #[arg(long, value_delimiter = ',', default_values_t = HistoryOptions::default().rss_events)]
    pub rss_events: Vec<usize>,
    /// The `cloud-hub` binary started for the RSS stages (default: this executable).
    #[arg(long)]
    pub hub: Option<PathBuf>,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        HistoryOptions {
            events: 1_000_000,
            days: 30,
            queries: 200,
            data_dir: None,
            rss_events: vec![1_000_000, 5_000_000, 10_000_000],
            hub: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryReport {
    pub events: usize,
    pub days: u32,
    pub load_events_per_s: f64,
    pub reopen_s: f64,
    pub disk_bytes: u64,
    pub disk_bytes_per_event: f64,
    pub queries: Vec<Latency>,
    /// One per `--rss-events` count, in that order.
    pub rss_stages: Vec<RssStage>,
}

/// A store of `events` events, queried in process and then served by a hub process.
#[derive(Debug, Clone, Serialize)]
pub struct RssStage {
    pub events: usize,
    pub load_events_per_s: f64,
    pub disk_bytes: u64,
    /// The same queries as the main report, in process.
    pub queries: Vec<Latency>,
    /// How long `cloud-hub serve` took to open the store and print its ready line.
    pub hub_open_s: f64,
    /// The hub's RSS once it is ready (nothing asked yet).
    pub hub_rss_open_bytes: u64,
    /// The hub's RSS after answering the queries over HTTP.
    pub hub_rss_queried_bytes: u64,
    /// Of it: anonymous memory (the heap) and mapped files (the binary's own pages).
    pub hub_rss_queried_anon_bytes: u64,
    pub hub_rss_queried_file_bytes: u64,
    /// What the hub's health reports as its index memory, after the queries.
    pub hub_index_bytes: u64,
    /// The queries over HTTP (request to parsed answer).
    pub http_queries: Vec<Latency>,
}

impl HistoryReport {
    pub fn text(&self) -> String {
        let mut out = format!(
            "event history: {} events over {} days, loaded through the store write path \
             (no MQTT) at {:.0} events/s; reopened (indexes rebuilt) in {:.2} s; \
             {:.0} disk bytes per event\n",
            self.events,
            self.days,
            self.load_events_per_s,
            self.reopen_s,
            self.disk_bytes_per_event
        );
        for q in &self.queries {
            out += &q.line("events/rows");
            out.push('\n');
        }
        let Some(first) = self.rss_stages.first() else {
            return out;
        };
        let mb = |b: u64| b as f64 / 1e6;
        out += "\nhub RSS and query p99 by stored events (each store loaded afresh; `cloud-hub \
                serve` on it; ratios to the first count; goal: RSS flat within 10 %, p99 within 20 %)\n";
        for st in &self.rss_stages {
            out += &format!(
                "{:>9} events: hub open {:.2} s, RSS {:.1} MB open ({:.3}×), {:.1} MB after \
                 queries ({:.3}×; heap {:.1}, files {:.1}), index {:.1} MB; load {:.0} events/s, \
                 {:.0} disk bytes/event\n",
                st.events,
                st.hub_open_s,
                mb(st.hub_rss_open_bytes),
                st.hub_rss_open_bytes as f64 / first.hub_rss_open_bytes.max(1) as f64,
                mb(st.hub_rss_queried_bytes),
                st.hub_rss_queried_bytes as f64 / first.hub_rss_queried_bytes.max(1) as f64,
                mb(st.hub_rss_queried_anon_bytes),
                mb(st.hub_rss_queried_file_bytes),
                mb(st.hub_index_bytes),
                st.load_events_per_s,
                st.disk_bytes as f64 / st.events.max(1) as f64,
            );
            for (i, q) in st.queries.iter().enumerate() {
                let base = first.queries.get(i).map_or(0.0, |b| b.p99_ms);
                let http = st.http_queries.get(i).map_or(0.0, |h| h.p99_ms);
                out += &format!(
                    "    {:<46} p99 {:>8.3} ms ({:.2}×)  over HTTP p99 {:>8.3} ms\n",
                    q.name,
                    q.p99_ms,
                    q.p99_ms / base.max(1e-9),
                    http
                );
            }
        }
        out
    }
}

const T0: i64 = 1_790_000_000_000;
const TYPES: [&str; 4] = [
    "illegal_parking",
    "street_vending",
    "crowd_gathering",
    "waterlogging",
];

/// Event `i` of `n` spread over `span_ms`: 8 gateways × 4 cameras, a third of them rule
/// events in 6 zones, the rest detections.
fn event(i: usize, n: usize, span_ms: i64) -> Event {
    let ts = T0 + (i as i128 * span_ms as i128 / n.max(1) as i128) as i64;
    let (gw, cam) = (i % 8, (i / 8) % 4);
    let rule = i.is_multiple_of(3).then(|| RuleInfo {
        rule: "r".into(),
        rule_type: RuleType::Dwell,
        event_type: TYPES[(i / 3) % TYPES.len()].into(),
        category: Some(format!("0{}01", 1 + (i / 3) % 4)),
        phase: if i.is_multiple_of(2) {
            Phase::Start
        } else {
            Phase::End
        },
        problem_id: Ulid::new(),
        zone: Some(format!("zone-{}", (i / 3) % 6)),
        track_ids: vec![],
        started_ms: ts,
        duration_ms: 0,
        count: None,
        direction: None,
        value: None,
        metric: None,
        snapshot: None,
    });
    Event {
        v: SCHEMA_VERSION,
        id: Ulid::from_parts(ts as u64, i as u128),
        site: "bench".into(),
        device: format!("gw-{gw:02}"),
        camera: format!("cam-{cam:02}"),
        kind: if rule.is_some() {
            EventKind::Rule
        } else {
            EventKind::Detection
        },
        ts_ms: ts,
        frame: None,
        model: None,
        objects: vec![Detection {
            class_id: 2,
            label: "car".into(),
            score: 0.8,
            bbox: BBox {
                x1: 10.0,
                y1: 20.0,
                x2: 50.0,
                y2: 60.0,
            },
            track_id: Some(i as u64),
        }],
        rule,
    }
}

pub async fn run(opts: &HistoryOptions) -> Result<HistoryReport, BenchError> {
    for (name, v) in [
        ("events", opts.events),
        ("days", opts.days as usize),
        ("queries", opts.queries),
    ] {
        if v == 0 {
            return Err(BenchError::Option(name));
        }
    }
    let parent = opts.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile_dir(&parent)?;
    let result = run_in(opts, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let mut report = result?;
    let stages: Vec<usize> = opts.rss_events.iter().copied().filter(|n| *n > 0).collect();
    if stages.is_empty() {
        return Ok(report);
    }
    let exe = match &opts.hub {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| BenchError::Phase {
            phase: "rss",
            reason: format!("own executable: {e}"),
        })?,
    };
    for n in stages {
        let dir = tempfile_dir(&parent)?;
        let stage = rss_stage(opts, n, &exe, &dir).await;
        match &stage {
            Ok(_) => {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Err(_) => eprintln!(
                "bench-history: the hub's data and log stay in {}",
                dir.display()
            ),
        }
        report.rss_stages.push(stage?);
    }
    Ok(report)
}

/// Loads `n` events into a fresh store in `dir`, times the queries in process, then serves the
/// store from a hub process and reads its RSS before and after the same queries over HTTP.
async fn rss_stage(
    opts: &HistoryOptions,
    n: usize,
    exe: &Path,
    dir: &Path,
) -> Result<RssStage, BenchError> {
    let data = dir.join("data");
    let stage = HistoryOptions {
        events: n,
        rss_events: Vec::new(),
        ..opts.clone()
    };
    let inproc = run_in(&stage, &data).await?;
    let t = Instant::now();
    let hub = HubProcess::start(exe, dir, &data, "")?;
    let hub_open_s = t.elapsed().as_secs_f64();
    // Let start-up allocations settle (mimalloc returns freed pages after a short delay).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = || {
        proc_stats(hub.pid())
            .map(|(rss, _)| rss)
            .ok_or_else(|| BenchError::Phase {
                phase: "rss",
                reason: "cannot read the hub's /proc".into(),
            })
    };
    let rss_open = rss()?;
    let http_queries = http_queries(&hub.http, n, opts.days, opts.queries).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_queried = rss()?;
    let (anon, file) = rss_parts(hub.pid()).unwrap_or_default();
    let index_bytes = async {
        let h: serde_json::Value = reqwest::get(format!("{}/api/v1/health", hub.http))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        h["storage"]["index_bytes"].as_u64()
    }
    .await
    .unwrap_or(0);
    hub.stop()?;
    Ok(RssStage {
        events: n,
        load_events_per_s: inproc.load_events_per_s,
        disk_bytes: inproc.disk_bytes,
        queries: inproc.queries,
        hub_open_s,
        hub_rss_open_bytes: rss_open,
        hub_rss_queried_bytes: rss_queried,
        hub_rss_queried_anon_bytes: anon,
        hub_rss_queried_file_bytes: file,
        hub_index_bytes: index_bytes,
        http_queries,
    })
}

/// A process's resident anonymous memory and resident mapped files (`RssAnon`, `RssFile`).
fn rss_parts(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    Some((kb("RssAnon:")?, kb("RssFile:")?))
}

/// [`event_queries`]' four queries through the hub's HTTP API.
async fn http_queries(
    base: &str,
    n: usize,
    days: u32,
    runs: usize,
) -> Result<Vec<Latency>, BenchError> {
    let span_ms = i64::from(days) * 86_400_000;
    let end_at = |r: usize, len: i64| {
        let room = (span_ms - len).max(1);
        T0 + len + ((r as i64 * 7_919_000_017) % room)
    };
    let client = reqwest::Client::new();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let r = client
                .get(&url)
                .send()
                .await
                .map_err(|e| BenchError::Phase {
                    phase: "http query",
                    reason: format!("{url}: {e}"),
                })?;
            if !r.status().is_success() {
                return Err(BenchError::Phase {
                    phase: "http query",
                    reason: format!("{url}: {}", r.status()),
                });
            }
            r.json::<serde_json::Value>()
                .await
                .map_err(|e| BenchError::Phase {
                    phase: "http query",
                    reason: format!("{url}: {e}"),
                })
        }
    };
    let day = 86_400_000;
    let mut out = Vec::new();
    out.push(
        time_runs("24 h aggregate by event type, hourly", runs, |r| {
            let to = end_at(r, day);
            let url = format!(
                "{base}/api/v1/events/aggregate?from={}&to={to}&bucket=1h&by=event_type",
                to - day
            );
            async move { Ok(get(url).await?["total"].as_u64().unwrap_or(0)) }
        })
        .await?,
    );
    out.push(
        time_runs("7 day aggregate of rule starts by zone, daily", runs, |r| {
            let to = end_at(r, 7 * day);
            let url = format!(
                "{base}/api/v1/events/aggregate?from={}&to={to}&bucket=1d&by=zone&kind=rule\
                 &phase=start",
                to - 7 * day
            );
            async move { Ok(get(url).await?["total"].as_u64().unwrap_or(0)) }
        })
        .await?,
    );
    out.push(
        time_runs("history: newest 100 of one zone in 24 h", runs, |r| {
            let to = end_at(r, day);
            let url = format!(
                "{base}/api/v1/events?zone=zone-{}&from={}&to={to}&limit=100",
                r % 6,
                to - day
            );
            async move { Ok(get(url).await?["count"].as_u64().unwrap_or(0)) }
        })
        .await?,
    );
    out.push(
        time_runs("one event by id", runs, |r| {
            let k = (r * 104_729) % n;
            let url = format!("{base}/api/v1/events/{}", event(k, n, span_ms).id);
            async move { Ok(u64::from(get(url).await?["id"].is_string())) }
        })
        .await?,
    );
    Ok(out)
}

fn tempfile_dir(parent: &Path) -> Result<PathBuf, BenchError> {
    let dir = parent.join(format!("csb-bench-history-{}", Ulid::new()));
    std::fs::create_dir_all(&dir).map_err(|cause| BenchError::Dir {
        path: dir.clone(),
        cause,
    })?;
    Ok(dir)
}

async fn open(dir: &Path) -> Result<SledStore, BenchError> {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || SledStore::open(&d, 64))
        .await
        .map_err(|e| BenchError::Phase {
            phase: "open",
            reason: e.to_string(),
        })?
        .map_err(BenchError::from)
}

/// Writes `n` events spread over `days` through the store's write path in ingest-sized
/// batches; returns the seconds it took.
pub(crate) async fn load_events<S: Store + ?Sized>(
    store: &S,
    n: usize,
    days: u32,
) -> Result<f64, BenchError> {
    let span_ms = i64::from(days) * 86_400_000;
    // Received over the last `days` days, as if ingested live: what ages out of the dedup
    // window and retention is then as in a running hub.
    let received_end = csb_wire::now_ms();
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + crate::storage::store::MAX_BATCH).min(n);
        let events: Vec<Event> = (i..end).map(|k| event(k, n, span_ms)).collect();
        let received_ms = received_end - span_ms + (events[0].ts_ms - T0);
        let out = store
            .write(WriteBatch {
                events,
                received_ms,
                ..Default::default()
            })
            .await?;
        if out.events_inserted != (end - i) as u64 {
            return Err(BenchError::Phase {
                phase: "load",
                reason: format!("{} of {} events stored", out.events_inserted, end - i),
            });
        }
        i = end;
    }
    Ok(t.elapsed().as_secs_f64())
}

async fn run_in(opts: &HistoryOptions, dir: &Path) -> Result<HistoryReport, BenchError> {
    let n = opts.events;
    let store = open(dir).await?;
    let load_s = load_events(&store, n, opts.days).await?;
    drop(store);
    let t = Instant::now();
    let store = Arc::new(open(dir).await?);
    let reopen_s = t.elapsed().as_secs_f64();
    if store.stats().await?.events != n as u64 {
        return Err(BenchError::Phase {
            phase: "reopen",
            reason: "not every event is back after reopening".into(),
        });
    }
    let queries = event_queries(&store, n, opts.days, opts.queries).await?;
    let disk = dir_bytes(&dir.join(EVENT_LOG_DIR));
    // Leave the store closed before the directory goes.
    drop(store);
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(HistoryReport {
        events: n,
        days: opts.days,
        load_events_per_s: n as f64 / load_s.max(1e-9),
        reopen_s,
        disk_bytes: disk,
        disk_bytes_per_event: disk as f64 / n as f64,
        queries,
        rss_stages: Vec::new(),
    })
}

/// Times the history queries over what [`load_events`] wrote (`n` events over `days`):
/// the 24-hour aggregate first, then a 7-day aggregate, a filtered page and a lookup by id.
pub(crate) async fn event_queries<S: Store + ?Sized + 'static>(
    store: &Arc<S>,
    n: usize,
    days: u32,
    runs: usize,
) -> Result<Vec<Latency>, BenchError> {
    let span_ms = i64::from(days) * 86_400_000;
    // Query windows end at pseudo-random points of the span (deterministic).
    let end_at = |r: usize, len: i64| {
        let room = (span_ms - len).max(1);
        T0 + len + ((r as i64 * 7_919_000_017) % room)
    };
    let mut queries = Vec::new();
    let s = store.clone();
    queries.push(
        time_runs("24 h aggregate by event type, hourly", runs, |r| {
            let s = s.clone();
            async move {
                let to = end_at(r, 86_400_000);
                let a = s
                    .aggregate_events(EventAggregateQuery {
                        filter: EventQuery::default(),
                        from_ms: to - 86_400_000,
                        to_ms: to,
                        bucket_ms: Some(3_600_000),
                        by: vec![EventDim::EventType],
                    })
                    .await?;
                Ok(a.total)
            }
        })
        .await?,
    );
    let s = store.clone();
    queries.push(
        time_runs("7 day aggregate of rule starts by zone, daily", runs, |r| {
            let s = s.clone();
            async move {
                let to = end_at(r, 7 * 86_400_000);
                let a = s
                    .aggregate_events(EventAggregateQuery {
                        filter: EventQuery {
                            kind: Some(EventKind::Rule),
                            phase: Some(Phase::Start),
                            ..Default::default()
                        },
                        from_ms: to - 7 * 86_400_000,
                        to_ms: to,
                        bucket_ms: Some(86_400_000),
                        by: vec![EventDim::Zone],
                    })
                    .await?;
                Ok(a.total)
            }
        })
        .await?,
    );
    let s = store.clone();
    queries.push(
        time_runs("history: newest 100 of one zone in 24 h", runs, |r| {
            let s = s.clone();
            async move {
                let to = end_at(r, 86_400_000);
                let page = s
                    .query_events(EventQuery {
                        zone: Some(format!("zone-{}", r % 6)),
                        from_ms: Some(to - 86_400_000),
                        to_ms: Some(to),
                        limit: 100,
                        ..Default::default()
                    })
                    .await?;
                Ok(page.events.len() as u64)
            }
        })
        .await?,
    );
    let s = store.clone();
    queries.push(
        time_runs("one event by id", runs, |r| {
            let s = s.clone();
            async move {
                let k = (r * 104_729) % n;
                let e = event(k, n, span_ms);
                Ok(u64::from(s.event(e.id).await?.is_some()))
            }
        })
        .await?,
    );
    Ok(queries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_small_run_stores_everything_and_answers_every_query() {
        let dir = tempfile::tempdir().unwrap();
        let opts = HistoryOptions {
            events: 3000,
            days: 2,
            queries: 3,
            data_dir: Some(dir.path().to_path_buf()),
            rss_events: Vec::new(),
            hub: None,
        };
        let r = run(&opts).await.unwrap();
        assert_eq!(r.events, 3000);
        assert_eq!(r.queries.len(), 4);
        // A 24 h window over 2 days holds about half the events.
        let day = r.queries[0].mean_result;
        assert!((1000.0..=2000.0).contains(&day), "{day}");
        assert_eq!(r.queries[3].mean_result, 1.0, "the looked-up event exists");
        assert!(r.disk_bytes_per_event > 100.0, "{}", r.disk_bytes_per_event);
        assert!(r.text().contains("p99"));
    }
}
