//! Benchmarks. Every figure that is compared with another is measured side by side in one run,
//! so ratios stay meaningful on a noisy machine; nothing here is a timed assertion.
//!
//! `edge-agent bench` ([`run`], [`run_cameras`]): raw model speed and live-pipeline speed.
//!
//! raw      = inferences/s of `Detector::infer` on input tensors prepared before timing (up to
//!            100 frames, cycled for at least 2 s)
//! pipeline = frames/s of the production path (`pipeline::run`): GStreamer decode + scale →
//!            letterbox → infer → decode/NMS → MQTT QoS 1 publish, until the broker acked all;
//!            with N cameras (the same file under N ids, one decoder thread each, one detector)
//!            it is the total frames/s across cameras.
//! The raw figure is measured before the first pipeline run, between runs and after the last;
//! each run's ratio uses the mean of the two raw figures around it, so drift in machine load
//! affects both sides alike.
//!
//! `edge-agent bench-gating` ([`run_gating`]): what motion gating saves and what it costs. The
//! clip goes once through `CameraAnalytics::process` with gating on and once with gating off
//! (interleaved frame by frame, one detector, stream time as the clock), and the two are
//! compared frame by frame: share of inferences skipped, detections kept, rule events kept.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csb_wire::{BBox, Detection, Event, Phase};
use opencv::core::Mat;
use serde::Serialize;

use crate::analytics::{AnalyticsError, CameraAnalytics};
use crate::config::{AgentConfig, AgentSection, CameraConfig, MqttConfig};
use crate::model::{Detector, DetectorOptions};
use crate::perception::TrackedObject;
use crate::pipeline::{self, PipelineError, RunOptions};
use crate::rules::{DwellRule, PresenceRule, RuleConfig, RuleKind, RulesConfig, ZoneConfig};
use crate::source::{self, Pacing, Pulled, Source};
use crate::uplink::Uplink;
use crate::vision::{self, MotionConfig, VisionError};

/// One pipeline run of `edge-agent bench` (N cameras) with the raw figures around it.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Cameras run at once on one agent (each one the same file under its own id).
    pub cameras: usize,
    /// Frames processed, all cameras together.
    pub frames: u64,
    /// Mean of `raw_model_ips_before` and `raw_model_ips_after`.
    pub raw_model_ips: f64,
    pub raw_model_ips_before: f64,
    pub raw_model_ips_after: f64,
    /// Total frames/s across cameras.
    pub pipeline_fps: f64,
    /// `pipeline_fps / cameras`.
    pub per_camera_fps: f64,
    /// `pipeline_fps / raw_model_ips`.
    pub ratio: f64,
    pub intra_threads: usize,
    pub events_published: u64,
    pub events_acked: u64,
}

impl BenchReport {
    /// The one-camera text report (the format `scripts/bench.sh` and the README show).
    pub fn to_text(&self) -> String {
        format!(
            "frames                    {}\n\
             raw model inferences/s    {:.2}  (before {:.2}, after {:.2}; {} intra-op threads)\n\
             full pipeline frames/s    {:.2}  (decode→preprocess→infer→postprocess→MQTT publish, {} acked)\n\
             pipeline / raw            {:.3}\n",
            self.frames,
            self.raw_model_ips,
            self.raw_model_ips_before,
            self.raw_model_ips_after,
            self.intra_threads,
            self.pipeline_fps,
            self.events_acked,
            self.ratio
        )
    }
}

/// `edge-agent bench --cameras 1,2,4`: one run per camera count, raw figures around each.
#[derive(Debug, Clone, Serialize)]
pub struct MultiBenchReport {
    /// Mean of every raw measurement of the session.
    pub raw_model_ips: f64,
    /// Raw inferences/s before the first run, between runs and after the last, in order.
    pub raw_model_ips_samples: Vec<f64>,
    pub intra_threads: usize,
    pub frames_per_camera: u64,
    pub runs: Vec<BenchReport>,
}

impl MultiBenchReport {
    pub fn to_text(&self) -> String {
        let samples: Vec<String> = self
            .raw_model_ips_samples
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect();
        let mut s = format!(
            "raw model inferences/s    {:.2}  (measured before, between and after the runs: {}; {} intra-op threads)\n\
             full pipeline: decode→preprocess→infer→postprocess→MQTT publish, every frame, no motion gating,\n\
             {} frames per camera, the same file under N camera ids, one detector shared by all cameras\n\n",
            self.raw_model_ips,
            samples.join(", "),
            self.intra_threads,
            self.frames_per_camera,
        );
        s.push_str("cameras  frames  pipeline frames/s  per camera  raw inferences/s  pipeline / raw  acked\n");
        for r in &self.runs {
            s.push_str(&format!(
                "{:>7}  {:>6}  {:>17.2}  {:>10.2}  {:>16.2}  {:>14.3}  {:>5}\n",
                r.cameras,
                r.frames,
                r.pipeline_fps,
                r.per_camera_fps,
                r.raw_model_ips,
                r.ratio,
                r.events_acked
            ));
        }
        s
    }
}

/// Inferences/s over the prepared inputs, cycled for at least `RAW_MIN_S` so one scheduling blip
/// on a busy machine does not decide the figure.
fn raw_ips(det: &mut Detector, inputs: &[Vec<f32>]) -> Result<f64, PipelineError> {
    for x in inputs.iter().take(3) {
        det.infer(x)?; // warm-up: first runs allocate
    }
    let t = Instant::now();
    let mut n = 0u64;
    while n == 0 || t.elapsed() < Duration::from_secs_f64(RAW_MIN_S) {
        for x in inputs {
            det.infer(x)?;
        }
        n += inputs.len() as u64;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Shortest raw-model measurement, seconds (whole passes over the prepared inputs).
const RAW_MIN_S: f64 = 2.0;

/// Runs the one-camera benchmark on `file` for `frames` frames, publishing to `mqtt.broker`.
pub fn run(
    file: &str,
    frames: u64,
    model: &DetectorOptions,
    mqtt: &MqttConfig,
    rt: &tokio::runtime::Runtime,
) -> Result<BenchReport, PipelineError> {
    let mut multi = run_cameras(file, frames, &[1], model, mqtt, rt)?;
    Ok(multi.runs.remove(0))
}

/// Runs the pipeline once per entry of `cameras` (that many cameras on one agent, `frames` frames
/// each), with the raw model measured before, between and after the runs.
pub fn run_cameras(
    file: &str,
    frames: u64,
    cameras: &[usize],
    model: &DetectorOptions,
    mqtt: &MqttConfig,
    rt: &tokio::runtime::Runtime,
) -> Result<MultiBenchReport, PipelineError> {
    let bad = |message: String| PipelineError::Camera {
        camera: "bench".into(),
        message,
    };
    if cameras.is_empty() || cameras.contains(&0) {
        return Err(bad("--cameras: give camera counts >= 1, e.g. 1,2,4".into()));
    }
    let uri = source::to_uri(file).map_err(bad)?;
    let mut det = Detector::load(model)?;

    // Pre-decode and pre-process the frames so the raw figure is the model alone.
    let mut src = Source::open("bench", &uri, det.input_size(), Pacing::EveryFrame)?;
    let mut inputs = Vec::new();
    while (inputs.len() as u64) < frames.min(100) {
        match src.next_frame(Duration::from_secs(10))? {
            Pulled::Frame(f) => {
                let mut x = Vec::new();
                det.preprocess(&f.scaled(), &mut x);
                inputs.push(x);
            }
            Pulled::End => break,
        }
    }
    drop(src);
    if inputs.is_empty() {
        return Err(bad(format!("{file}: no frames decoded")));
    }
    let mut samples = vec![raw_ips(&mut det, &inputs)?];

    let uplink = rt.block_on(async {
        let u = Uplink::start(mqtt, "bench", "bench")?;
        u.wait_connected(Duration::from_secs(10)).await?;
        Ok::<_, PipelineError>(u)
    })?;
    let mut runs = Vec::new();
    for &n in cameras {
        let camera = |i: usize| CameraConfig {
            looping: true,
            event_interval_ms: 0,
            snapshots: false,
            // Every frame is inferred: this measures the pipeline, not the gate.
            motion: MotionConfig {
                enabled: false,
                ..MotionConfig::default()
            },
            ..CameraConfig::new(
                &if n == 1 {
                    "bench".to_string()
                } else {
                    format!("bench-{}", i + 1)
                },
                &uri,
            )
        };
        let cfg = AgentConfig {
            agent: AgentSection {
                site: "bench".into(),
                device: "bench".into(),
            },
            mqtt: mqtt.clone(),
            model: model.clone(),
            hub: Default::default(),
            outbox: Default::default(),
            cameras: (0..n).map(camera).collect(),
            sensor_mqtt: Default::default(),
            sensors: Vec::new(),
            sensor_rules: Vec::new(),
        };
        let stats = uplink.stats();
        let published_before = stats.published.load(Ordering::Relaxed);
        let acked_before = stats.acked.load(Ordering::Relaxed);
        let opts = RunOptions {
            pacing: Pacing::EveryFrame,
            max_frames: Some(frames),
            publish_empty: true,
            retry: false,
            stop: Arc::new(AtomicBool::new(false)),
        };
        // The pipeline gets its own detector, as `run` has; loading it is not part of the timing.
        let pipe_det = Detector::load(model)?;
        let t = Instant::now();
        let report = pipeline::run(&cfg, pipe_det, &uplink, rt.handle().clone(), opts)?;
        rt.block_on(uplink.flush(Duration::from_secs(30)));
        let elapsed = t.elapsed();
        let published = stats.published.load(Ordering::Relaxed) - published_before;
        let acked = stats
            .acked
            .load(Ordering::Relaxed)
            .saturating_sub(acked_before);

        let before = *samples.last().unwrap_or(&0.0);
        // The hub receiving the events usually shares this machine: let it finish storing them
        // so the raw figure measures the model, not the model next to the hub's backlog.
        std::thread::sleep(Duration::from_secs(1));
        let after = raw_ips(&mut det, &inputs)?;
        samples.push(after);
        let raw = (before + after) / 2.0;
        let fps = report.frames as f64 / elapsed.as_secs_f64();
        runs.push(BenchReport {
            cameras: n,
            frames: report.frames,
            raw_model_ips: raw,
            raw_model_ips_before: before,
            raw_model_ips_after: after,
            pipeline_fps: fps,
            per_camera_fps: fps / n as f64,
            ratio: fps / raw,
            intra_threads: model.intra_threads,
            events_published: published,
            events_acked: acked,
        });
    }
    rt.block_on(uplink.shutdown());
    Ok(MultiBenchReport {
        raw_model_ips: samples.iter().sum::<f64>() / samples.len() as f64,
        raw_model_ips_samples: samples,
        intra_threads: model.intra_threads,
        frames_per_camera: frames,
        runs,
    })
}

// ---------------------------------------------------------------------------------------------
// Motion gating
// ---------------------------------------------------------------------------------------------

/// Settings of `edge-agent bench-gating`.
#[derive(Debug, Clone)]
pub struct GatingOptions {
    /// The gate under test (the camera default unless overridden on the command line).
    pub motion: MotionConfig,
    /// `min_dwell_s` of the dwell rule over the whole-frame zone.
    pub dwell_s: f64,
    /// A still stretch is a run of consecutive still frames lasting at least this long.
    pub still_min_ms: u64,
}

impl Default for GatingOptions {
    fn default() -> Self {
        GatingOptions {
            motion: MotionConfig::default(),
            dwell_s: 2.0,
            still_min_ms: 1000,
        }
    }
}

/// Frames of one kind and how many of them the gated run skipped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SkipShare {
    pub frames: u64,
    pub skipped: u64,
    /// `skipped / frames`; null without frames.
    pub share: Option<f64>,
}

impl SkipShare {
    fn add(&mut self, skipped: bool) {
        self.frames += 1;
        self.skipped += u64::from(skipped);
    }
    fn finish(&mut self) {
        self.share = ratio(self.skipped, self.frames);
    }
}

/// Ungated detections, and how many of them the gated run had (IoU >= 0.5, one to one).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recall {
    /// Frames compared.
    pub frames: u64,
    /// Ungated detections in those frames.
    pub ungated: u64,
    /// Of those, matched by the gated run.
    pub matched: u64,
    /// `matched / ungated`; null without detections.
    pub recall: Option<f64>,
}

impl Recall {
    fn add(&mut self, reference: &[BBox], candidates: &[BBox]) {
        self.frames += 1;
        self.ungated += reference.len() as u64;
        self.matched += matched(reference, candidates, MATCH_IOU) as u64;
    }
    fn finish(&mut self) {
        self.recall = ratio(self.matched, self.ungated);
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseCounts {
    pub start: u64,
    pub update: u64,
    pub end: u64,
    pub instant: u64,
}

impl PhaseCounts {
    fn of(events: &[Event]) -> Self {
        let mut c = PhaseCounts::default();
        for e in events {
            match e.rule.as_ref().map(|r| r.phase) {
                Some(Phase::Start) => c.start += 1,
                Some(Phase::Update) => c.update += 1,
                Some(Phase::End) => c.end += 1,
                Some(Phase::Instant) => c.instant += 1,
                None => {}
            }
        }
        c
    }
}

/// A rule-event start, for listing lost and extra ones.
#[derive(Debug, Clone, Serialize)]
pub struct StartRef {
    pub rule: String,
    /// Stream time of the event, seconds.
    pub at_s: f64,
    pub bbox: Option<BBox>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EventComparison {
    /// The rules applied to both runs.
    pub rules: Vec<String>,
    pub ungated: PhaseCounts,
    pub gated: PhaseCounts,
    /// Ungated starts with a gated start of the same rule on the same object (box IoU >= 0.5,
    /// or both without objects) within `START_TOLERANCE_MS`.
    pub starts_matched: u64,
    /// Ungated starts without such a gated start.
    pub starts_lost: Vec<StartRef>,
    /// Gated starts without an ungated one.
    pub starts_extra: Vec<StartRef>,
    /// Median of |gated − ungated| start time over matched starts, ms.
    pub start_delay_median_ms: Option<i64>,
    /// Starts per rule id.
    pub starts_by_rule: std::collections::BTreeMap<String, RuleStarts>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleStarts {
    pub ungated: u64,
    pub gated: u64,
    pub matched: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GatingReport {
    pub file: String,
    pub frames: u64,
    pub stream_s: f64,
    /// Median frame interval, ms.
    pub frame_interval_ms: f64,
    pub thumb_width: u32,
    pub pixel_threshold: u8,
    pub min_changed_ratio: f32,
    pub keepalive_ms: u64,
    pub still_min_ms: u64,
    /// Inferences run with the gate on (off: one per frame).
    pub inferences_gated: u64,
    pub inferences_ungated: u64,
    /// Skipped share among all frames.
    pub skip_all: SkipShare,
    /// Skipped share in still stretches (the headline figure; see `edge-agent bench-gating -h`).
    pub skip_still_stretches: SkipShare,
    /// Number of still stretches found.
    pub still_stretches: u64,
    /// Skipped share among frames whose thumbnail barely changed from the previous frame.
    pub skip_pixel_still: SkipShare,
    /// Skipped share among frames whose ungated detections equal the previous frame's.
    pub skip_detection_still: SkipShare,
    /// Skipped share among frames that are not pixel-still (the scene moved).
    pub skip_moving: SkipShare,
    /// Most a keep-alive gate can skip on a still scene: 1 − 1/ceil(keepalive / frame interval).
    pub skip_cap_keepalive: Option<f64>,
    /// Frames the gated run inferred: its detections against the ungated ones (a sanity check;
    /// same frame, same model).
    pub recall_detected_frames: Recall,
    /// Frames the gated run skipped: its (coasting) tracks against the ungated detections.
    pub recall_skipped_tracks: Recall,
    /// Frames the gated run skipped: its tracks plus the detections of its last inferred frame.
    pub recall_skipped_tracks_or_held: Recall,
    /// Baseline for `recall_skipped_tracks`: the ungated run's own tracks on the same frames
    /// (what the tracker keeps of the detections without any gating).
    pub recall_skipped_ungated_tracks: Recall,
    /// Every frame: gated detections where inferred, else tracks plus held detections.
    pub recall_all: Recall,
    /// Tracks kept: the ungated run's tracks matched by the gated run's tracks, every frame.
    pub tracks_kept_all: Recall,
    /// The same on the frames the gated run skipped.
    pub tracks_kept_skipped: Recall,
    pub events: EventComparison,
    /// Wall time spent in `CameraAnalytics::process`, gated and ungated, interleaved per frame.
    pub process_ms_gated: f64,
    pub process_ms_ungated: f64,
    /// `process_ms_gated / process_ms_ungated`.
    pub process_time_ratio: f64,
}

/// IoU at which a gated box counts as the same object as an ungated detection.
pub const MATCH_IOU: f32 = 0.5;
/// IoU above which a detection counts as unchanged from the previous frame.
pub const STILL_IOU: f32 = 0.9;
/// How far apart (stream time) a gated and an ungated rule start may be and still match.
pub const START_TOLERANCE_MS: i64 = 2000;

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// How many `reference` boxes find a distinct `candidates` box at IoU >= `min_iou` (greedy, best
/// pair first).
fn matched(reference: &[BBox], candidates: &[BBox], min_iou: f32) -> usize {
    let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
    for (i, r) in reference.iter().enumerate() {
        for (j, c) in candidates.iter().enumerate() {
            // Identical boxes match even when degenerate (a coasting prediction that left the
            // frame is clamped to zero height: IoU 0/0).
            let iou = if r == c { 1.0 } else { r.iou(c) };
            if iou >= min_iou {
                pairs.push((iou, i, j));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut ref_used, mut cand_used) =
        (vec![false; reference.len()], vec![false; candidates.len()]);
    let mut n = 0;
    for (_, i, j) in pairs {
        if !ref_used[i] && !cand_used[j] {
            ref_used[i] = true;
            cand_used[j] = true;
            n += 1;
        }
    }
    n
}

fn boxes(dets: &[Detection]) -> Vec<BBox> {
    dets.iter().map(|d| d.bbox).collect()
}

fn track_boxes(tracks: &[TrackedObject]) -> Vec<BBox> {
    tracks.iter().map(|t| t.bbox).collect()
}

/// The gate's own thumbnail (same size, interpolation, grey conversion and blur as
/// `MotionGate`), used to tell still frames from moving ones against the *previous* frame.
struct Thumbs {
    cfg: MotionConfig,
    prev: Option<Mat>,
}

impl Thumbs {
    /// Share of thumbnail pixels that changed by more than `pixel_threshold` since the previous
    /// frame; None for the first frame.
    fn changed(&mut self, bgr: &Mat) -> Result<Option<f32>, VisionError> {
        let thumb = crate::vision::grey_thumbnail(bgr, self.cfg.thumb_width)?;
        let out = match &self.prev {
            Some(prev) => crate::vision::changed_share(prev, &thumb, self.cfg.pixel_threshold)?,
            None => None,
        };
        self.prev = Some(thumb);
        Ok(out)
    }
}

/// Per-frame facts kept for the still-stretch pass.
struct FrameFacts {
    pts_ms: u64,
    skipped: bool,
    pixel_still: bool,
    detection_still: bool,
}

/// The camera both runs use: defaults, a zone covering the whole frame and three rules on it
/// (every class): a dwell rule (stationary for `dwell_s`, the default 15 px/s), the same without
/// the speed limit (any track present for `dwell_s`) and a presence rule (anything tracked in the
/// frame for `dwell_s`, one problem for the whole zone). Default cool-downs.
fn gating_camera(id: &str, uri: &str, motion: MotionConfig, dwell_s: f64) -> CameraConfig {
    let mut cam = CameraConfig::new(id, uri);
    cam.motion = motion;
    cam.snapshots = false;
    let rule = |id: &str, kind: RuleKind| RuleConfig {
        id: id.into(),
        event_type: id.into(),
        category: None,
        cooldown_s: 60.0,
        update_interval_s: 30.0,
        kind,
    };
    let dwell = |max_speed_px_s: f64| {
        RuleKind::Dwell(DwellRule {
            zone: "frame".into(),
            classes: Vec::new(),
            min_dwell_s: dwell_s,
            max_speed_px_s,
        })
    };
    cam.analytics = RulesConfig {
        zones: vec![ZoneConfig {
            id: "frame".into(),
            polygon: vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
            classes: Vec::new(),
            inertia_frames: 3,
        }],
        rules: vec![
            rule("dwell-stationary", dwell(15.0)),
            rule("dwell-any-speed", dwell(1.0e9)),
            rule(
                "presence",
                RuleKind::Presence(PresenceRule {
                    zone: "frame".into(),
                    classes: Vec::new(),
                    schedule: Vec::new(),
                    min_duration_s: dwell_s,
                }),
            ),
        ],
        ..RulesConfig::default()
    };
    cam
}

fn start_ref(e: &Event, base_ms: i64) -> StartRef {
    StartRef {
        rule: e.rule.as_ref().map(|r| r.rule.clone()).unwrap_or_default(),
        at_s: (e.ts_ms - base_ms) as f64 / 1000.0,
        bbox: e.objects.first().map(|o| o.bbox),
    }
}

/// Pairs the rule starts of the two runs (see [`EventComparison`]).
fn compare_events(ungated: &[Event], gated: &[Event], base_ms: i64) -> EventComparison {
    let starts = |v: &[Event]| -> Vec<Event> {
        v.iter()
            .filter(|e| e.rule.as_ref().is_some_and(|r| r.phase == Phase::Start))
            .cloned()
            .collect()
    };
    let (u, g) = (starts(ungated), starts(gated));
    let mut g_used = vec![false; g.len()];
    let mut cmp = EventComparison {
        ungated: PhaseCounts::of(ungated),
        gated: PhaseCounts::of(gated),
        ..Default::default()
    };
    let mut delays = Vec::new();
    let rule_of = |e: &Event| e.rule.as_ref().map(|r| r.rule.clone()).unwrap_or_default();
    for ge in &g {
        cmp.starts_by_rule.entry(rule_of(ge)).or_default().gated += 1;
    }
    for ue in &u {
        let ur = ue.rule.as_ref().map(|r| r.rule.as_str());
        cmp.starts_by_rule.entry(rule_of(ue)).or_default().ungated += 1;
        let same_object = |ge: &Event| {
            (ue.objects.is_empty() && ge.objects.is_empty())
                || ue
                    .objects
                    .iter()
                    .any(|a| ge.objects.iter().any(|b| a.bbox.iou(&b.bbox) >= MATCH_IOU))
        };
        let best = g
            .iter()
            .enumerate()
            .filter(|(j, ge)| {
                !g_used[*j]
                    && ge.rule.as_ref().map(|r| r.rule.as_str()) == ur
                    && (ge.ts_ms - ue.ts_ms).abs() <= START_TOLERANCE_MS
                    && same_object(ge)
            })
            .min_by_key(|(_, ge)| (ge.ts_ms - ue.ts_ms).abs());
        match best {
            Some((j, ge)) => {
                g_used[j] = true;
                cmp.starts_matched += 1;
                cmp.starts_by_rule.entry(rule_of(ue)).or_default().matched += 1;
                delays.push((ge.ts_ms - ue.ts_ms).abs());
            }
            None => cmp.starts_lost.push(start_ref(ue, base_ms)),
        }
    }
    for (j, ge) in g.iter().enumerate() {
        if !g_used[j] {
            cmp.starts_extra.push(start_ref(ge, base_ms));
        }
    }
    delays.sort_unstable();
    cmp.start_delay_median_ms = delays.get(delays.len() / 2).copied();
    cmp
}

/// Marks frames that belong to a still stretch: a run of consecutive pixel-still frames spanning
/// at least `min_ms` of stream time (from the first frame's pts to the last one's plus one frame
/// interval). Returns the flags and the number of stretches.
fn still_stretches(facts: &[FrameFacts], interval_ms: f64, min_ms: u64) -> (Vec<bool>, u64) {
    let still = |f: &FrameFacts| f.pixel_still;
    let mut flags = vec![false; facts.len()];
    let mut count = 0;
    let mut i = 0;
    while i < facts.len() {
        if !still(&facts[i]) {
            i += 1;
            continue;
        }
        let mut j = i;
        while j + 1 < facts.len() && still(&facts[j + 1]) {
            j += 1;
        }
        let span = facts[j].pts_ms.saturating_sub(facts[i].pts_ms) as f64 + interval_ms;
        if span >= min_ms as f64 {
            count += 1;
            flags[i..=j].iter_mut().for_each(|f| *f = true);
        }
        i = j + 1;
    }
    (flags, count)
}

/// Runs `file` through the analytics twice (gate on / gate off) and compares the runs.
pub fn run_gating(
    file: &str,
    model: &DetectorOptions,
    opts: &GatingOptions,
) -> Result<GatingReport, PipelineError> {
    let bad = |message: String| PipelineError::Camera {
        camera: "bench-gating".into(),
        message,
    };
    let uri = source::to_uri(file).map_err(bad)?;
    let mut det = Detector::load(model)?;
    let gated_cam = gating_camera("gated", &uri, opts.motion.clone(), opts.dwell_s);
    let ungated_cam = gating_camera(
        "ungated",
        &uri,
        MotionConfig {
            enabled: false,
            max_detect_fps: 0.0,
            ..opts.motion.clone()
        },
        opts.dwell_s,
    );
    let mut gated = CameraAnalytics::new("bench", "bench", &gated_cam)?;
    let mut ungated = CameraAnalytics::new("bench", "bench", &ungated_cam)?;
    let mut thumbs = Thumbs {
        cfg: opts.motion.clone(),
        prev: None,
    };
    let mut src = Source::open("bench-gating", &uri, det.input_size(), Pacing::EveryFrame)?;

    // Stream time on a fixed base: deterministic timestamps, footage pace.
    let base_ms: i64 = 1_767_225_600_000; // 2026-01-01 00:00:00Z
    let (mut t_gated, mut t_ungated) = (Duration::ZERO, Duration::ZERO);
    let (mut ev_gated, mut ev_ungated) = (Vec::new(), Vec::new());
    let mut facts: Vec<FrameFacts> = Vec::new();
    let mut prev_ungated: Option<Vec<BBox>> = None;
    let mut held: Vec<BBox> = Vec::new();
    let mut rec_det = Recall::default();
    let mut rec_tracks = Recall::default();
    let mut rec_held = Recall::default();
    let mut rec_u_tracks = Recall::default();
    let mut rec_all = Recall::default();
    let mut tracks_all = Recall::default();
    let mut tracks_skipped = Recall::default();
    let mut inferences_gated = 0;
    let analytics_err = |e: AnalyticsError| PipelineError::Analytics(e);
    loop {
        let frame = match src.next_frame(Duration::from_secs(30))? {
            Pulled::Frame(f) => f,
            Pulled::End => break,
        };
        let n = facts.len() as u64;
        let pts = frame.pts_ms.unwrap_or(n * 100);
        let ts = base_ms + pts as i64;
        // Alternate which run goes first, so cache warmth favours neither.
        let (g, u) = if n.is_multiple_of(2) {
            let t = Instant::now();
            let g = gated.process(&frame, ts, &mut det).map_err(analytics_err)?;
            t_gated += t.elapsed();
            let t = Instant::now();
            let u = ungated
                .process(&frame, ts, &mut det)
                .map_err(analytics_err)?;
            t_ungated += t.elapsed();
            (g, u)
        } else {
            let t = Instant::now();
            let u = ungated
                .process(&frame, ts, &mut det)
                .map_err(analytics_err)?;
            t_ungated += t.elapsed();
            let t = Instant::now();
            let g = gated.process(&frame, ts, &mut det).map_err(analytics_err)?;
            t_gated += t.elapsed();
            (g, u)
        };
        let changed =
            vision::with_bgr_mat(&frame.data, frame.width, frame.height, frame.stride, |m| {
                thumbs.changed(m)
            })
            .map_err(|e| bad(e.to_string()))?;

        let u_boxes = boxes(&u.detections);
        let detection_still = prev_ungated.as_ref().is_some_and(|p| {
            p.len() == u_boxes.len() && matched(p, &u_boxes, STILL_IOU) == u_boxes.len()
        });
        let pixel_still = changed.is_some_and(|c| c < opts.motion.min_changed_ratio);
        let (g_tracks, u_tracks) = (track_boxes(&g.tracks), track_boxes(&u.tracks));
        tracks_all.add(&u_tracks, &g_tracks);
        if g.detected {
            inferences_gated += 1;
            held = boxes(&g.detections);
            rec_det.add(&u_boxes, &held);
            rec_all.add(&u_boxes, &held);
        } else {
            let mut either = g_tracks.clone();
            either.extend(held.iter().copied());
            rec_tracks.add(&u_boxes, &g_tracks);
            rec_held.add(&u_boxes, &either);
            rec_u_tracks.add(&u_boxes, &u_tracks);
            rec_all.add(&u_boxes, &either);
            tracks_skipped.add(&u_tracks, &g_tracks);
        }
        ev_gated.extend(g.rule_events.into_iter().map(|e| e.event));
        ev_ungated.extend(u.rule_events.into_iter().map(|e| e.event));
        facts.push(FrameFacts {
            pts_ms: pts,
            skipped: !g.detected,
            pixel_still,
            detection_still,
        });
        prev_ungated = Some(u_boxes);
    }
    if facts.is_empty() {
        return Err(bad(format!("{file}: no frames decoded")));
    }
    ev_gated.extend(gated.finish().into_iter().map(|e| e.event));
    ev_ungated.extend(ungated.finish().into_iter().map(|e| e.event));

    let mut intervals: Vec<u64> = facts
        .windows(2)
        .map(|w| w[1].pts_ms.saturating_sub(w[0].pts_ms))
        .filter(|d| *d > 0)
        .collect();
    intervals.sort_unstable();
    let interval_ms = intervals
        .get(intervals.len() / 2)
        .map_or(100.0, |v| *v as f64);
    let (in_stretch, stretches) = still_stretches(&facts, interval_ms, opts.still_min_ms);

    let mut all = SkipShare::default();
    let mut still = SkipShare::default();
    let mut pix = SkipShare::default();
    let mut dets_still = SkipShare::default();
    let mut moving = SkipShare::default();
    for (f, s) in facts.iter().zip(&in_stretch) {
        all.add(f.skipped);
        if *s {
            still.add(f.skipped);
        }
        if f.pixel_still {
            pix.add(f.skipped);
        } else {
            moving.add(f.skipped);
        }
        if f.detection_still {
            dets_still.add(f.skipped);
        }
    }
    for s in [&mut all, &mut still, &mut pix, &mut dets_still, &mut moving] {
        s.finish();
    }
    for r in [
        &mut rec_det,
        &mut rec_tracks,
        &mut rec_held,
        &mut rec_u_tracks,
        &mut rec_all,
        &mut tracks_all,
        &mut tracks_skipped,
    ] {
        r.finish();
    }
    let keepalive = opts.motion.keepalive_ms;
    let skip_cap_keepalive = (opts.motion.enabled && keepalive > 0).then(|| {
        let every = (keepalive as f64 / interval_ms).ceil().max(1.0);
        1.0 - 1.0 / every
    });
    let mut events = compare_events(&ev_ungated, &ev_gated, base_ms);
    for r in &gated_cam.analytics.rules {
        events.starts_by_rule.entry(r.id.clone()).or_default();
    }
    events.rules = gated_cam
        .analytics
        .rules
        .iter()
        .map(|r| match &r.kind {
            RuleKind::Dwell(d) if d.max_speed_px_s < 1.0e6 => format!(
                "{}: a track stationary (< {} px/s) >= {} s",
                r.id, d.max_speed_px_s, d.min_dwell_s
            ),
            RuleKind::Dwell(d) => format!("{}: a track present >= {} s", r.id, d.min_dwell_s),
            RuleKind::Presence(p) => {
                format!("{}: anything tracked >= {} s", r.id, p.min_duration_s)
            }
            _ => r.id.clone(),
        })
        .collect();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(GatingReport {
        file: file.to_string(),
        frames: facts.len() as u64,
        stream_s: (facts.last().map_or(0, |f| f.pts_ms) as f64 + interval_ms) / 1000.0,
        frame_interval_ms: interval_ms,
        thumb_width: opts.motion.thumb_width,
        pixel_threshold: opts.motion.pixel_threshold,
        min_changed_ratio: opts.motion.min_changed_ratio,
        keepalive_ms: keepalive,
        still_min_ms: opts.still_min_ms,
        inferences_gated,
        inferences_ungated: facts.len() as u64,
        skip_all: all,
        skip_still_stretches: still,
        still_stretches: stretches,
        skip_pixel_still: pix,
        skip_detection_still: dets_still,
        skip_moving: moving,
        skip_cap_keepalive,
        recall_detected_frames: rec_det,
        recall_skipped_tracks: rec_tracks,
        recall_skipped_tracks_or_held: rec_held,
        recall_skipped_ungated_tracks: rec_u_tracks,
        recall_all: rec_all,
        tracks_kept_all: tracks_all,
        tracks_kept_skipped: tracks_skipped,
        events,
        process_ms_gated: ms(t_gated),
        process_ms_ungated: ms(t_ungated),
        process_time_ratio: t_gated.as_secs_f64() / t_ungated.as_secs_f64().max(1e-9),
    })
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1} %", v * 100.0))
}

impl GatingReport {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{}: {} frames, {:.1} s, {:.0} ms/frame\n\
             gate: thumbnail {} px wide, pixel change > {}, motion if >= {:.2} % of pixels changed, keep-alive {} ms\n\
             inferences: gated {} / ungated {}  (process() time gated/ungated {:.3}: {:.0} / {:.0} ms)\n\n",
            self.file,
            self.frames,
            self.stream_s,
            self.frame_interval_ms,
            self.thumb_width,
            self.pixel_threshold,
            self.min_changed_ratio * 100.0,
            self.keepalive_ms,
            self.inferences_gated,
            self.inferences_ungated,
            self.process_time_ratio,
            self.process_ms_gated,
            self.process_ms_ungated,
        );
        let skip_rows: [(String, &SkipShare); 5] = [
            ("all frames".into(), &self.skip_all),
            (
                format!(
                    "still stretches ({} runs >= {} ms of pixel-still)",
                    self.still_stretches, self.still_min_ms
                ),
                &self.skip_still_stretches,
            ),
            (
                "pixel-still frames (thumb vs previous)".into(),
                &self.skip_pixel_still,
            ),
            (
                "detection-still frames (ungated dets same)".into(),
                &self.skip_detection_still,
            ),
            ("moving frames (not pixel-still)".into(), &self.skip_moving),
        ];
        s.push_str(&format!(
            "{:<60}{:>7}  {:>7}  {:>7}\n",
            "inference skipped", "frames", "skipped", "share"
        ));
        for (name, x) in &skip_rows {
            s.push_str(&format!(
                "  {:<58}{:>7}  {:>7}  {:>7}\n",
                name,
                x.frames,
                x.skipped,
                pct(x.share)
            ));
        }
        s.push_str(&format!(
            "  {:<58}{:>7}  {:>7}  {:>7}\n\n",
            "keep-alive cap on a still scene: 1 - 1/ceil(keepalive/frame)",
            "",
            "",
            pct(self.skip_cap_keepalive)
        ));
        let recall_rows: [(&str, &Recall); 5] = [
            (
                "inferred frames: gated detections",
                &self.recall_detected_frames,
            ),
            (
                "skipped frames: gated tracks (coasting)",
                &self.recall_skipped_tracks,
            ),
            (
                "skipped frames: gated tracks + last inferred detections",
                &self.recall_skipped_tracks_or_held,
            ),
            (
                "skipped frames: ungated run's own tracks (baseline)",
                &self.recall_skipped_ungated_tracks,
            ),
            (
                "all frames: detections, else tracks + held",
                &self.recall_all,
            ),
        ];
        let head = |s: &mut String, title: &str, what: &str| {
            s.push_str(&format!(
                "{:<60}{:>7}  {:>7}  {:>7}  {:>7}\n",
                title, "frames", what, "matched", "recall"
            ));
        };
        let row = |s: &mut String, name: &str, r: &Recall| {
            s.push_str(&format!(
                "  {:<58}{:>7}  {:>7}  {:>7}  {:>7}\n",
                name,
                r.frames,
                r.ungated,
                r.matched,
                pct(r.recall)
            ));
        };
        head(
            &mut s,
            "detections kept (ungated dets matched, IoU >= 0.5)",
            "dets",
        );
        for (name, r) in recall_rows {
            row(&mut s, name, r);
        }
        head(
            &mut s,
            "tracks kept (ungated tracks matched by gated tracks)",
            "tracks",
        );
        row(&mut s, "all frames", &self.tracks_kept_all);
        row(&mut s, "skipped frames", &self.tracks_kept_skipped);
        let e = &self.events;
        s.push_str(&format!(
            "\nrule events, zone = whole frame, every class (gate off → gate on)\n  {}\n",
            e.rules.join("\n  ")
        ));
        s.push_str(&format!(
            "  {:<56}{:>9}  {:>7}  {:>7}\n",
            "starts per rule", "ungated", "gated", "matched"
        ));
        for (rule, c) in &e.starts_by_rule {
            s.push_str(&format!(
                "    {rule:<54}{:>9}  {:>7}  {:>7}\n",
                c.ungated, c.gated, c.matched
            ));
        }
        s.push_str(&format!(
            "  all phases: ungated {} start / {} update / {} end, gated {} / {} / {}\n\
             \x20 starts matched {} of {} (same rule, same object at IoU >= 0.5, within {} ms; median shift {}); lost {}, extra {}\n",
            e.ungated.start,
            e.ungated.update,
            e.ungated.end,
            e.gated.start,
            e.gated.update,
            e.gated.end,
            e.starts_matched,
            e.ungated.start,
            START_TOLERANCE_MS,
            e.start_delay_median_ms
                .map_or("-".into(), |d| format!("{d} ms")),
            e.starts_lost.len(),
            e.starts_extra.len(),
        ));
        for (what, list) in [("lost", &e.starts_lost), ("extra", &e.starts_extra)] {
            for st in list.iter() {
                s.push_str(&format!(
                    "    {what}: {} at {:.2} s {:?}\n",
                    st.rule, st.at_s, st.bbox
                ));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x1: f32, y1: f32, x2: f32, y2: f32) -> BBox {
        BBox { x1, y1, x2, y2 }
    }

    #[test]
    fn matching_is_one_to_one() {
        let r = [b(0.0, 0.0, 10.0, 10.0), b(1.0, 0.0, 11.0, 10.0)];
        assert_eq!(matched(&r, &[b(0.0, 0.0, 10.0, 10.0)], 0.5), 1);
        assert_eq!(matched(&r, &r, 0.5), 2);
        assert_eq!(matched(&r, &[b(50.0, 50.0, 60.0, 60.0)], 0.5), 0);
        assert_eq!(matched(&[], &r, 0.5), 0);
        let flat = b(5.0, 0.0, 20.0, 0.0);
        assert_eq!(
            matched(&[flat], &[flat], 0.5),
            1,
            "identical degenerate boxes"
        );
    }

    fn f(pts_ms: u64, still: bool) -> FrameFacts {
        FrameFacts {
            pts_ms,
            skipped: false,
            pixel_still: still,
            detection_still: still,
        }
    }

    #[test]
    fn stretches_need_the_minimum_duration() {
        // 80 ms frames: a 3-frame run spans 240 ms, a 13-frame run 1040 ms.
        let mut v: Vec<FrameFacts> = (0..3).map(|i| f(i * 80, true)).collect();
        v.push(f(240, false));
        v.extend((4..17).map(|i| f(i * 80, true)));
        v.push(f(17 * 80, false));
        let (flags, n) = still_stretches(&v, 80.0, 1000);
        assert_eq!(n, 1);
        assert_eq!(flags.iter().filter(|x| **x).count(), 13);
        assert!(!flags[0] && flags[4] && flags[16] && !flags[17]);
    }
}
