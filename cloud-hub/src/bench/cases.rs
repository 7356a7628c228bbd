//! `cloud-hub bench-cases`: the case workflow at county volume, in one process on the real
//! store (sled on disk, every change flushed as in the hub).
//!
//! 1. Load `--cases` cases (default 100,000) of every source, state and town, with their
//!    timelines, as a year of operation leaves them (bulk import, one flush), and reopen.
//! 2. Live: AI events at `--events-per-s` (default 1,000) for `--seconds`, of which
//!    `--case-share` (20 %) are rule events with a category — half new problems (a case opens,
//!    registered and dispatched), half repeats (merged into the open case) — taken in by the
//!    workflow's one thread as in the hub (the other 80 % never reach it: the feed filters
//!    them). Meanwhile a reader lists cases with filters. Measured: event → case visible
//!    (stored, flushed, readable) p50/p99, and the listings' p50/p99.
//! 3. An SLA sweep over the open cases: with nothing due, and with every open case due at
//!    once (a hub back after a long outage).
//! 4. Transitions per second (a 督办 note on open cases, each flushed), one caller and four.
//! 5. Disk bytes per case.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csb_wire::{
    BBox, Detection, Event, EventKind, FrameInfo, ModelRef, Phase, RuleInfo, RuleType,
    SCHEMA_VERSION,
};
use serde::Serialize;
use ulid::Ulid;

use super::kit::{dir_bytes, percentile, BenchError, Latency, XorShift};
use crate::cases::config::Governance;
use crate::cases::engine::{Engine, Taken};
use crate::cases::intake::Nowhere;
use crate::cases::lifecycle::{Action, Actor, Case, NewCase, Place, Role, Source, State};
use crate::cases::store::{CaseFilter, CaseStore, SledCases};
use crate::support::clock::{Clock, SystemClock};

#[derive(Debug, Clone, clap::Args)]
pub struct CasesOptions {
    /// Cases loaded before the live phase.
    #[arg(long, default_value_t = 100_000)]
    pub cases: usize,
    /// AI events per second offered during the live phase.
    #[arg(long, default_value_t = 1_000)]
    pub events_per_s: u32,
    /// Share of them that open or merge into cases.
    #[arg(long, default_value_t = 0.2)]
    pub case_share: f64,
    /// Length of the live phase.
    #[arg(long, default_value_t = 20)]
    pub seconds: u32,
    /// Directory for the throw-away store (default: the system temp dir).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct CasesReport {
    pub cases: usize,
    pub open: usize,
    pub load_s: f64,
    pub reopen_s: f64,
    /// This process's resident memory before the store was opened, and after it was reopened
    /// (with the cases' summaries in memory and sled's cache).
    pub rss_before_mb: f64,
    pub rss_reopened_mb: f64,
    pub disk_bytes_per_case: f64,
    pub events_offered: u64,
    pub case_events: u64,
    pub opened: u64,
    pub merged: u64,
    /// Case events the workflow had not taken in when the live phase ended.
    pub backlog: u64,
    pub event_to_case: Latency,
    pub lists: Vec<Latency>,
    pub sweep_idle_ms: f64,
    pub sweep_all_due: usize,
    pub sweep_all_ms: f64,
    pub transitions_per_s_1: f64,
    pub transitions_per_s_4: f64,
}

impl CasesReport {
    pub fn text(&self) -> String {
        let mut t = format!(
            "bench-cases: {} cases ({} open) loaded in {:.1} s, reopened in {:.2} s; {:.0} B of disk per case\n\
             RSS {:.1} MiB before the store was opened, {:.1} MiB once reopened\n\
             live: {} AI events offered, {} case events ({} opened, {} merged, {} left in the queue)\n",
            self.cases, self.open, self.load_s, self.reopen_s, self.disk_bytes_per_case,
            self.rss_before_mb, self.rss_reopened_mb,
            self.events_offered, self.case_events, self.opened, self.merged, self.backlog,
        );
        t.push_str(&format!(
            "  {}   goal p99 <= 200 ms\n",
            self.event_to_case.line("events")
        ));
        for l in &self.lists {
            t.push_str(&format!("  {}   goal p99 <= 50 ms\n", l.line("cases")));
        }
        t.push_str(&format!(
            "SLA sweep in the steady state: {:.3} ms (goal <= 100 ms); catching up {} open cases \
             due at once: {:.1} ms ({:.3} ms per case)\n\
             transitions/s (each flushed): {:.0} with one caller, {:.0} with four\n",
            self.sweep_idle_ms,
            self.sweep_all_due,
            self.sweep_all_ms,
            self.sweep_all_ms / self.sweep_all_due.max(1) as f64,
            self.transitions_per_s_1,
            self.transitions_per_s_4,
        ));
        t
    }
}

const TOWNS: [&str; 10] = [
    "tiantang", "laibang", "wenao", "shitou", "zhuyang", "heping", "baimao", "qingtian", "baoping",
    "houchong",
];

fn phase<T>(phase: &'static str) -> impl FnOnce(T) -> BenchError
where
    T: std::fmt::Display,
{
    move |e| BenchError::Phase {
        phase,
        reason: e.to_string(),
    }
}

/// One loaded case: a source, category and town by `rng`, walked to a state as a year of
/// operation leaves cases (60 % closed, 10 % rejected, the rest open at every stage; open ones
/// from the last three days, as a county works its cases off).
fn loaded_case(
    g: &Governance,
    rng: &mut XorShift,
    ids: &mut ulid::Generator,
    closed_at: i64,
    now: i64,
) -> Option<Case> {
    let roll = rng.next_u64() % 100;
    let created = if !(10..40).contains(&roll) {
        closed_at
    } else {
        now - (rng.uniform(0.0, 3.0 * 86_400_000.0) as i64)
    };
    let at = std::time::UNIX_EPOCH + Duration::from_millis(created as u64);
    let id = ids
        .generate_from_datetime(at)
        .unwrap_or_else(|_| Ulid::from_datetime(at))
        .to_string();
    let cat = &g.categories[(rng.next_u64() % g.categories.len() as u64) as usize];
    let town = TOWNS[(rng.next_u64() % TOWNS.len() as u64) as usize];
    let video = rng.next_u64() % 10 < 7;
    let new = NewCase {
        id,
        source: if video {
            Source::VideoAi
        } else {
            Source::Citizen
        },
        category: cat.id.clone(),
        place: Place {
            point: Some([116.2 + rng.uniform(0.0, 0.3), 30.8 + rng.uniform(0.0, 0.3)]),
            town: Some(town.into()),
            ..Place::default()
        },
        evidence: vec![Ulid::new().to_string(), Ulid::new().to_string()],
        camera: video.then(|| format!("yuexi/gw-{:03}/cam-1", rng.next_u64() % 500)),
    };
    let system = Actor::system();
    let op = Actor {
        id: "desk-1".into(),
        role: Role::Operator,
        department: None,
    };
    let mut c = Case::report(new, system, created, g).ok()?;
    if roll < 10 {
        let reject = Action::Reject {
            reason: crate::cases::lifecycle::RejectReason::FalsePositive,
        };
        c.apply(&op, reject, "误报", None, created + 60_000, g)
            .ok()?;
        return Some(c);
    }
    let mut t = created + 60_000;
    c.apply(&op, Action::Register, "", None, t, g).ok()?;
    c.apply(&op, Action::Dispatch { department: None }, "", None, t, g)
        .ok()?;
    if roll < 20 {
        return Some(c); // dispatched (open)
    }
    let handler = Actor {
        id: "handler-1".into(),
        role: Role::Handler,
        department: c.department.clone(),
    };
    t += 600_000;
    c.apply(&handler, Action::Accept, "", None, t, g).ok()?;
    if roll < 30 {
        return Some(c); // handling
    }
    t += 3_600_000;
    let handled = Action::ReportHandled { photos: vec![] };
    c.apply(&handler, handled, "处置完毕", None, t, g).ok()?;
    if roll < 40 {
        return Some(c); // verifying (open)
    }
    c.apply(&op, Action::Close, "核查通过", None, t + 600_000, g)
        .ok()?;
    Some(c)
}

/// A rule event of a problem seen by `camera` (a new spot per camera).
fn rule_event(camera: u64, problem: Ulid, now: i64) -> Event {
    Event {
        v: SCHEMA_VERSION,
        id: Ulid::new(),
        site: "yuexi".into(),
        device: format!("gw-live-{:04}", camera / 4),
        camera: format!("cam-{}", camera % 4),
        kind: EventKind::Rule,
        ts_ms: now,
        frame: Some(FrameInfo {
            seq: 1,
            pts_ms: None,
            width: 1920,
            height: 1080,
        }),
        model: Some(ModelRef {
            name: "yolox_nano".into(),
            sha256: "695e750a5d57".into(),
        }),
        objects: vec![Detection {
            class_id: 2,
            label: "car".into(),
            score: 0.82,
            bbox: BBox {
                x1: 100.0,
                y1: 100.0,
                x2: 300.0,
                y2: 250.0,
            },
            track_id: Some(7),
        }],
        rule: Some(RuleInfo {
            rule: "park".into(),
            rule_type: RuleType::Dwell,
            event_type: "illegal_parking".into(),
            category: Some("0505".into()),
            phase: Phase::Start,
            problem_id: problem,
            zone: Some("no-parking".into()),
            track_ids: vec![7],
            started_ms: now - 130_000,
            duration_ms: 130_000,
            count: None,
            direction: None,
            value: None,
            metric: None,
            snapshot: Some(Ulid::new().to_string()),
        }),
    }
}

fn rss_mb() -> f64 {
    super::kit::proc_stats(std::process::id()).map_or(0.0, |(rss, _)| rss as f64 / 1048576.0)
}

fn latency(name: &str, mut ms: Vec<f64>, sum: u64) -> Latency {
    ms.sort_by(f64::total_cmp);
    Latency {
        name: name.into(),
        p50_ms: percentile(&ms, 0.5),
        p99_ms: percentile(&ms, 0.99),
        max_ms: ms.last().copied().unwrap_or(0.0),
        mean_result: sum as f64 / ms.len().max(1) as f64,
    }
}

pub fn run(opts: &CasesOptions) -> Result<CasesReport, BenchError> {
    if opts.cases == 0 || opts.events_per_s == 0 || opts.seconds == 0 {
        return Err(BenchError::Option("cases, events-per-s and seconds"));
    }
    let base = opts.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("csb-bench-cases-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|cause| BenchError::Dir {
        path: dir.clone(),
        cause,
    })?;
    let result = run_in(opts, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(opts: &CasesOptions, dir: &std::path::Path) -> Result<CasesReport, BenchError> {
    let g = Arc::new(Governance::built_in().map_err(phase("governance"))?);
    let now = SystemClock.now_ms();
    // 1. A year of cases.
    let rss_before_mb = rss_mb();
    let t = Instant::now();
    let mut open = 0;
    {
        let store = SledCases::open(dir).map_err(phase("open"))?;
        let mut rng = XorShift(0x5eed_ca5e);
        let year = 365 * 86_400_000i64;
        let mut ids = ulid::Generator::new();
        for i in 0..opts.cases {
            let closed_at = now - year + (i as i64) * (year / opts.cases as i64);
            let Some(c) = loaded_case(&g, &mut rng, &mut ids, closed_at, now) else {
                continue;
            };
            open += usize::from(c.state.is_open());
            store.import(&c).map_err(phase("load"))?;
        }
        store.sync().map_err(phase("load"))?;
    }
    let load_s = t.elapsed().as_secs_f64();
    let disk_bytes_per_case = dir_bytes(dir) as f64 / opts.cases as f64;
    let t = Instant::now();
    let store = Arc::new(
        (0..100)
            .find_map(|_| {
                SledCases::open(dir)
                    .inspect_err(|_| std::thread::sleep(Duration::from_millis(50)))
                    .ok()
            })
            .ok_or_else(|| phase("reopen")("the store did not reopen"))?,
    );
    let reopen_s = t.elapsed().as_secs_f64();
    let rss_reopened_mb = rss_mb();
    let engine = Arc::new(Engine::new(
        store.clone(),
        g.clone(),
        Arc::new(SystemClock),
        Arc::new(Nowhere),
    ));

    // 2. Live: events at a fixed rate; case events to the workflow thread; a reader listing.
    let (tx, rx) =
        std::sync::mpsc::sync_channel::<(Event, Instant)>(crate::cases::engine::FEED_CAPACITY);
    let stop = Arc::new(AtomicBool::new(false));
    let (opened, merged) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let worker = {
        let (engine, opened, merged) = (engine.clone(), opened.clone(), merged.clone());
        std::thread::spawn(move || -> Result<Vec<f64>, String> {
            let mut ms = Vec::new();
            for (e, at) in rx {
                match engine.take(&e).map_err(|e| e.to_string())? {
                    Taken::Opened { .. } => opened.fetch_add(1, Relaxed),
                    Taken::Merged { .. } => merged.fetch_add(1, Relaxed),
                    other => return Err(format!("unexpected {other:?}")),
                };
                ms.push(at.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(ms)
        })
    };
    let reader = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || -> Result<Vec<Latency>, String> {
            let f = |state,
                     department: Option<&str>,
                     town: Option<&str>,
                     category: Option<&str>,
                     open_only| CaseFilter {
                state,
                department: department.map(str::to_string),
                town: town.map(str::to_string),
                category: category.map(str::to_string),
                source: None,
                open_only,
            };
            let queries = [
                (
                    "list: open cases, newest 50",
                    f(None, None, None, None, true),
                ),
                (
                    "list: dispatched to urban-mgmt",
                    f(
                        Some(State::Dispatched),
                        Some("urban-mgmt"),
                        None,
                        None,
                        false,
                    ),
                ),
                (
                    "list: open in one town",
                    f(None, None, Some("laibang"), None, true),
                ),
                (
                    "list: closed illegal parking",
                    f(
                        Some(State::Closed),
                        None,
                        None,
                        Some("illegal-parking"),
                        false,
                    ),
                ),
                // Matches nothing: every summary is looked at (the worst case).
                (
                    "list: suspended in one town (none: full scan)",
                    f(Some(State::Suspended), None, Some("houchong"), None, false),
                ),
            ];
            let mut out: Vec<(Vec<f64>, u64)> = vec![(Vec::new(), 0); queries.len()];
            let mut i = 0;
            while !stop.load(Relaxed) {
                let (_, q) = &queries[i % queries.len()];
                let t = Instant::now();
                let page = engine.list(q, None, 50).map_err(|e| e.to_string())?;
                out[i % queries.len()]
                    .0
                    .push(t.elapsed().as_secs_f64() * 1000.0);
                out[i % queries.len()].1 += page.len() as u64;
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(queries
                .iter()
                .zip(out)
                .map(|((name, _), (ms, sum))| latency(name, ms, sum))
                .collect())
        })
    };
    let mut rng = XorShift(0xfeed_beef);
    let mut problems: Vec<(u64, Ulid)> = Vec::new();
    let (mut offered, mut case_events) = (0u64, 0u64);
    let start = Instant::now();
    let total = u64::from(opts.events_per_s) * u64::from(opts.seconds);
    let mut next_camera = 0u64;
    while offered < total {
        // Paced in 10 ms ticks.
        let due = (start.elapsed().as_secs_f64() * f64::from(opts.events_per_s)) as u64;
        while offered < due.min(total) {
            offered += 1;
            if rng.uniform(0.0, 1.0) >= opts.case_share {
                continue; // a detection or uncategorised event: the feed filters it out
            }
            case_events += 1;
            let (camera, problem) = if problems.is_empty() || rng.next_u64().is_multiple_of(2) {
                next_camera += 1;
                let p = (next_camera, Ulid::new());
                problems.push(p);
                p
            } else {
                problems[(rng.next_u64() % problems.len() as u64) as usize]
            };
            let e = rule_event(camera, problem, SystemClock.now_ms());
            if tx.try_send((e, Instant::now())).is_err() {
                return Err(phase("live")(
                    "the workflow fell more than a full queue behind",
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(tx);
    let backlog_at_end = case_events - opened.load(Relaxed) - merged.load(Relaxed);
    let lat = worker
        .join()
        .map_err(|_| phase("live")("worker panicked"))?
        .map_err(phase("live"))?;
    stop.store(true, Relaxed);
    let lists = reader
        .join()
        .map_err(|_| phase("live")("reader panicked"))?
        .map_err(phase("live"))?;
    let n = lat.len() as u64;
    let event_to_case = latency("event -> case visible (stored, flushed)", lat, n);

    // 3. SLA sweeps: the loaded open cases' timers are all due (nobody swept while they were
    // loaded: a hub back after days down); then the steady state, with little due.
    let t = Instant::now();
    let fired = engine.sweep().map_err(phase("sweep"))?;
    let sweep_all_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    engine.sweep().map_err(phase("sweep"))?;
    let sweep_idle_ms = t.elapsed().as_secs_f64() * 1000.0;

    // 4. Transitions per second: 督办 notes on open cases, each flushed.
    let targets: Vec<String> = engine
        .list(
            &CaseFilter {
                open_only: true,
                ..CaseFilter::default()
            },
            None,
            400,
        )
        .map_err(phase("transitions"))?
        .into_iter()
        .filter(|c| c.state != State::Suspended)
        .map(|c| c.id)
        .collect();
    let sup = Actor {
        id: "chief".into(),
        role: Role::Supervisor,
        department: None,
    };
    let rate = |threads: usize| -> Result<f64, BenchError> {
        let done = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        let window = Duration::from_secs(3);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|k| {
                    let (done, engine, sup, targets) = (done.clone(), &engine, &sup, &targets);
                    s.spawn(move || -> Result<(), String> {
                        let mut i = k;
                        while t.elapsed() < window {
                            let id = &targets[i % targets.len()];
                            engine
                                .transition(id, sup, Action::Supervise, "请加快处置", None)
                                .map_err(|e| e.to_string())?;
                            done.fetch_add(1, Relaxed);
                            i += threads;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| phase("transitions")("a caller panicked"))?
                    .map_err(phase("transitions"))?;
            }
            Ok::<_, BenchError>(())
        })?;
        Ok(done.load(Relaxed) as f64 / t.elapsed().as_secs_f64())
    };
    let (transitions_per_s_1, transitions_per_s_4) = if targets.is_empty() {
        (0.0, 0.0)
    } else {
        (rate(1)?, rate(4)?)
    };
    Ok(CasesReport {
        cases: opts.cases,
        open,
        load_s,
        reopen_s,
        rss_before_mb,
        rss_reopened_mb,
        disk_bytes_per_case,
        events_offered: offered,
        case_events,
        opened: opened.load(Relaxed),
        merged: merged.load(Relaxed),
        backlog: backlog_at_end,
        event_to_case,
        lists,
        sweep_idle_ms,
        sweep_all_due: fired.len(),
        sweep_all_ms,
        transitions_per_s_1,
        transitions_per_s_4,
    })
}
