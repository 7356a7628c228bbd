//! The running agent: one thread per camera pulls scaled frames from GStreamer into a bounded
//! queue; one detector thread runs the model over them (sharing the CPU fairly across cameras
//! instead of one ONNX session per camera) and hands events to the MQTT uplink.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use csb_wire::{CameraState, CameraStatus, Event, EventKind, FrameInfo, Telemetry, SCHEMA_VERSION};
use thiserror::Error;
use ulid::Ulid;

use crate::analytics::{AnalyticsError, CameraAnalytics, RuleEvent};
use crate::commands::{CommandDesk, Probe, Shot};
use crate::config::{AgentConfig, CameraConfig};
use crate::evidence::EvidenceUploader;
use crate::model::{Detector, DetectorError};
use crate::modelswap::{self, CameraModel, Swap, SwapCtx};
use crate::queue::{Item, LatestSlots};
use crate::source::{self, Frame, Pacing, Pulled, Source, SourceError, SourceOptions};
use crate::uplink::{Uplink, UplinkError};
use csb_wire::model::ModelManifest;

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Detector(#[from] DetectorError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error(transparent)]
    Analytics(#[from] AnalyticsError),
    #[error("camera `{camera}`: {message}")]
    Camera { camera: String, message: String },
}

/// How a run behaves; `run` uses live defaults, `bench` every-frame with a limit.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub pacing: Pacing,
    /// Stop each camera after this many frames.
    pub max_frames: Option<u64>,
    /// Publish an event for frames without objects too (benchmarks measure every publish).
    pub publish_empty: bool,
    /// Reopen failed cameras with back-off (live) instead of failing the run (bench).
    pub retry: bool,
    pub stop: Arc<AtomicBool>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            pacing: Pacing::Live,
            max_frames: None,
            publish_empty: false,
            retry: true,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct RunReport {
    pub frames: u64,
    pub dropped: u64,
    pub events: u64,
    pub elapsed: Duration,
    pub infer_ms_total: f64,
}

/// What camera threads report besides frames.
enum Ctl {
    Ended(usize),
    Failed(usize, SourceError),
}

struct CameraShared {
    status: Mutex<CameraStatus>,
    frames: AtomicU64,
    dropped: AtomicU64,
    /// Times the camera stopped delivering (failed to open, errored, stalled or ended while
    /// live); one outage lasts until frames flow again, however many reconnects it takes.
    outages: AtomicU64,
    /// Times the source was reopened after a failure.
    reconnects: AtomicU64,
    /// Wall-clock time of the newest frame, Unix ms; until the first frame, when the camera
    /// thread started (so a camera that never delivered still shows a growing age).
    last_frame_ms: AtomicU64,
}

impl CameraShared {
    fn new(id: &str) -> Self {
        CameraShared {
            status: Mutex::new(CameraStatus {
                id: id.to_string(),
                state: CameraState::Starting,
                fps: None,
                error: None,
                health: None,
            }),
            frames: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            last_frame_ms: AtomicU64::new(csb_wire::now_ms().max(0) as u64),
        }
    }
}

fn set_state(shared: &CameraShared, state: CameraState, error: Option<String>) {
    if let Ok(mut s) = shared.status.lock() {
        s.state = state;
        s.error = error;
    }
}

/// Reconnect back-off: 1 s doubling to 30 s, each delay ±20 % random (`source::Backoff`).
const RECONNECT_MIN: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// The back-off returns to `RECONNECT_MIN` once a reopened camera has delivered frames for this
/// long, so a camera that flaps (connects, sends a frame, drops) keeps backing off.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);

/// Sleeps `d` in short steps; returns false as soon as `stop` is set.
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
    false
}

/// Pulls frames from one camera until it ends, the run stops, or (without retry) it fails.
///
/// With `opts.retry` (live runs) every failure — the source cannot open, errors, delivers no
/// frame within `Source::frame_timeout` (5 s for a stalled RTSP stream), or an RTSP stream
/// ends — closes the source and reopens it after a jittered exponential back-off, counting
/// outages and reconnects in `shared`. The thread only ever `try_send`s frames in live mode,
/// so a dead or slow camera never holds up the detector or the other cameras, and every wait
/// checks `opts.stop`.
fn camera_thread(
    idx: usize,
    cam: CameraConfig,
    target: Arc<AtomicU64>,
    opts: RunOptions,
    tx: Arc<LatestSlots<Frame, Ctl>>,
    shared: Arc<CameraShared>,
) {
    let uri = match source::to_uri(&cam.uri) {
        Ok(u) => u,
        Err(message) => {
            let err = SourceError::Stream {
                camera: cam.id.clone(),
                uri: cam.uri.clone(),
                message,
            };
            set_state(&shared, CameraState::Failed, Some(err.to_string()));
            tracing::error!("{err}");
            tx.control(Ctl::Failed(idx, err));
            return;
        }
    };
    let live_stream = source::is_rtsp(&uri);
    let mut backoff = source::Backoff::new(RECONNECT_MIN, RECONNECT_MAX, idx as u64);
    let mut sent = 0u64;
    // Since when the camera has been failing (None while frames flow).
    let mut outage: Option<Instant> = None;
    'reopen: while !opts.stop.load(Ordering::Relaxed) {
        let packed = target.load(Ordering::Relaxed);
        let source_opts = SourceOptions {
            target: unpack(packed),
            pacing: opts.pacing,
            // Full-resolution frames only where a rule may need an evidence snapshot.
            full_frames: cam.snapshots && !cam.analytics.rules.is_empty(),
        };
        let mut flowing_since: Option<Instant> = None;
        let result = Source::open_with(&cam.id, &uri, source_opts).and_then(|mut src| loop {
            if opts.stop.load(Ordering::Relaxed) || opts.max_frames.is_some_and(|m| sent >= m) {
                return Ok(false);
            }
            if target.load(Ordering::Relaxed) != packed {
                // The camera's model changed to one of another input size.
                let (w, h) = unpack(target.load(Ordering::Relaxed));
                tracing::info!(
                    "camera `{}`: reopening to scale for its new model ({w}x{h})",
                    cam.id
                );
                return Ok(true);
            }
            let timeout = src.frame_timeout();
            let Some(pulled) = src.next_frame_or_stop(timeout, Some(&opts.stop))? else {
                return Ok(false);
            };
            match pulled {
                Pulled::Frame(f) => {
                    shared
                        .last_frame_ms
                        .store(f.ts_ms.max(0) as u64, Ordering::Relaxed);
                    if let Some(since) = outage.take() {
                        tracing::info!(
                            "camera `{}`: frames flowing again after {:.1} s",
                            cam.id,
                            since.elapsed().as_secs_f64()
                        );
                    }
                    if flowing_since.get_or_insert_with(Instant::now).elapsed()
                        >= BACKOFF_RESET_AFTER
                    {
                        backoff.reset();
                    }
                    set_state(&shared, CameraState::Running, None);
                    shared.frames.fetch_add(1, Ordering::Relaxed);
                    sent += 1;
                    if opts.pacing == Pacing::Live {
                        match tx.put_latest(idx, f) {
                            Ok(false) => {}
                            // The older, unprocessed frame was replaced: drop oldest.
                            Ok(true) => {
                                shared.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => return Ok(false),
                        }
                    } else if tx.put_wait(idx, f).is_err() {
                        return Ok(false);
                    }
                }
                // A live camera has no end: the server dropped the stream, which is an outage.
                Pulled::End if live_stream && opts.retry => {
                    return Err(src.stream_error("the stream ended (server closed it)"));
                }
                Pulled::End if cam.looping => {
                    if let Err(e) = src.rewind() {
                        tracing::warn!("{e}; reopening");
                        return Ok(true);
                    }
                }
                Pulled::End => return Ok(false),
            }
        });
        match result {
            Ok(true) => continue 'reopen,
            Ok(false) => break,
            Err(e) if opts.retry => {
                if outage.is_none() {
                    outage = Some(Instant::now());
                    shared.outages.fetch_add(1, Ordering::Relaxed);
                }
                let delay = backoff.next_delay();
                tracing::warn!("{e}; reconnecting in {:.1} s", delay.as_secs_f64());
                set_state(&shared, CameraState::Reconnecting, Some(e.to_string()));
                if !sleep_unless_stopped(delay, &opts.stop) {
                    break;
                }
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                set_state(&shared, CameraState::Failed, Some(e.to_string()));
                tx.control(Ctl::Failed(idx, e));
                return;
            }
        }
    }
    set_state(&shared, CameraState::Stopped, None);
    tx.control(Ctl::Ended(idx));
}

/// Runs every enabled camera of `cfg` through `detector` and publishes through `uplink` until
/// all cameras end or `opts.stop` is set. Blocking: call from a plain thread, not a runtime worker.
pub fn run(
    cfg: &AgentConfig,
    mut detector: Detector,
    uplink: &Uplink,
    rt: tokio::runtime::Handle,
    opts: RunOptions,
) -> Result<RunReport, PipelineError> {
    let mut cams: Vec<CameraConfig> = cfg.cameras.iter().filter(|c| c.enabled).cloned().collect();
    // The hub's managed settings, as last applied (kept beside the outbox across restarts).
    let state_dir = cfg.outbox_dir();
    let swap_ctx = SwapCtx {
        base: cfg.model.clone(),
        store_dir: state_dir.join("models"),
        hub_url: cfg.hub.url.clone(),
        site: cfg.agent.site.clone(),
        device: cfg.agent.device.clone(),
        key: uplink.signing_key(),
    };
    let mut config_version = None;
    // The hub's model in service (None: the agent's own), and the push that put it there.
    let mut running_model: Option<ModelManifest> = None;
    // The hub's models for single cameras (`cameras[].model`).
    let mut cam_models: Vec<CameraModel> = Vec::new();
    match crate::managed::load(&state_dir) {
        Ok(Some(p)) => {
            // Hub models kept from before the restart come from the local store (no download
            // when complete) and pass their self-tests again before they serve.
            let needs = p.model.is_some() || !p.models.is_empty();
            let model_ok = !needs
                || match modelswap::prepare_all(p.model.as_deref(), &p.models, &swap_ctx) {
                    Ok(ready) => {
                        if p.model.is_some() {
                            detector = ready.device;
                        }
                        running_model = p.model.as_deref().cloned();
                        cam_models = ready.cameras;
                        true
                    }
                    Err(e) => {
                        tracing::warn!(version = p.version, "the hub's models cannot run ({e}); running the agent's own model until the hub sends a new configuration");
                        false
                    }
                };
            match crate::managed::merged(&cams, &p, Some(detector.labels())) {
                Ok(m) if model_ok => {
                    tracing::info!(version = p.version, "running the hub's managed camera settings");
                    cams = m;
                    config_version = Some(p.version);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    version = p.version,
                    "the hub's managed settings no longer fit this agent ({e}); running the local config until the hub sends new ones"
                ),
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("{e}; running the local config"),
    }
    rt.block_on(uplink.set_config_version(config_version))?;
    rt.block_on(uplink.set_model(Some(modelswap::version_of(
        &detector,
        running_model.as_ref(),
    ))))?;
    // Each camera scales its frames for the model it runs; a camera given a model with another
    // input size reopens its stream at the new size (the others go on).
    let targets: Vec<Arc<AtomicU64>> = cams.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    retarget(&cams, &cam_models, &detector, &targets);
    // One slot per camera: its next frame waits while the current one is inferred (decode and
    // inference overlap); anything older is replaced, so detection stays live.
    let tx: Arc<LatestSlots<Frame, Ctl>> = Arc::new(LatestSlots::new(cams.len()));
    let shared: Vec<Arc<CameraShared>> = cams
        .iter()
        .map(|c| Arc::new(CameraShared::new(&c.id)))
        .collect();
    // The online status sent on (re)connect lists the cameras from the start.
    let initial: Vec<CameraStatus> = shared
        .iter()
        .filter_map(|s| s.status.lock().ok().map(|s| s.clone()))
        .collect();
    rt.block_on(uplink.set_cameras(initial))?;
    let mut threads = Vec::new();
    for (i, cam) in cams.iter().enumerate() {
        let (cam, opts, tx, sh) = (cam.clone(), opts.clone(), tx.clone(), shared[i].clone());
        let target = targets[i].clone();
        let t = std::thread::Builder::new()
            .name(format!("cam-{}", cam.id))
            .spawn(move || camera_thread(i, cam, target, opts, tx, sh))
            .map_err(|e| PipelineError::Camera {
                camera: cams[i].id.clone(),
                message: format!("cannot start thread: {e}"),
            })?;
        threads.push(t);
    }

    let mut analytics = cams
        .iter()
        .map(|c| CameraAnalytics::new(&cfg.agent.site, &cfg.agent.device, c))
        .collect::<Result<Vec<_>, _>>()?;
    let evidence = match &cfg.hub.url {
        Some(url) => {
            let up = EvidenceUploader::new(url, &cfg.agent.site, &cfg.agent.device)
                .map_err(|e| PipelineError::Camera {
                    camera: "*".into(),
                    message: format!("hub.url: cannot build HTTP client: {e}"),
                })?
                .with_signing_key(uplink.signing_key());
            // Snapshots wait in the outbox like events, until the hub has stored them.
            Some(match uplink.outbox() {
                Some(ob) => up.with_outbox(ob.clone(), &rt),
                None => up,
            })
        }
        None => None,
    };
    let started = Instant::now();
    let mut report = RunReport::default();
    let mut last_event: Vec<Option<Instant>> = vec![None; cams.len()];
    let mut ended = vec![false; cams.len()];
    let mut last_tick = Instant::now();
    let health_every = health_interval();
    let mut tick_frames: Vec<u64> = vec![0; cams.len()];
    let mut tick_detected: Vec<u64> = vec![0; cams.len()];
    let mut tick_infer = (0f64, 0u64);
    let mut failure = None;
    // AI re-checks from the hub, and those looking now.
    let mut commands = uplink.take_commands();
    // A model being made ready for a configuration push, beside the one in service.
    let mut swap: Option<Swap> = None;
    // The model (and its configuration) in service before the last swap, kept for a while to
    // fall back to if the new one fails at run time.
    let mut previous: Option<Previous> = None;
    // Each with its evidence candidates: the busiest frame, and the newest empty view.
    let mut probes: Vec<(Probe, [Option<Vec<u8>>; 2])> = Vec::new();

    while !ended.iter().all(|e| *e) {
        if opts.stop.load(Ordering::Relaxed) && opts.pacing == Pacing::Live {
            break;
        }
        if let Some((rx, desk)) = commands.as_mut() {
            while let Ok(cmd) = rx.try_recv() {
                match &cmd.op {
                    csb_wire::CommandOp::Recheck(_) => start_probe(cmd, &cams, desk, &mut probes),
                    csb_wire::CommandOp::Config(push) => {
                        let newer = push.version > config_version.unwrap_or(0);
                        if newer
                            && (!modelswap::same_model(
                                running_model.as_ref(),
                                push.model.as_deref(),
                            ) || !modelswap::same_models(&cam_models, &push.models))
                        {
                            if swap
                                .as_ref()
                                .is_some_and(|s| s.push.version >= push.version)
                            {
                                continue; // a repeat: answered when the model is ready
                            }
                            // The cameras' part is checked now (against the new model's labels
                            // when it brings them), so a bad push is refused without a download.
                            let labels = push.model.as_ref().map(|m| m.labels.as_slice());
                            match crate::managed::decide(push, config_version, &cams, labels) {
                                crate::managed::Decision::Apply(_) => {
                                    swap = Some(Swap::start(cmd.clone(), push.clone(), &swap_ctx));
                                }
                                crate::managed::Decision::Refuse(reason) => {
                                    desk.reply(crate::managed::reply(
                                        &cmd,
                                        csb_wire::ReplyStatus::Refused,
                                        Some(reason),
                                        None,
                                        None,
                                    ));
                                }
                                crate::managed::Decision::Running(v) => {
                                    let mv =
                                        modelswap::version_of(&detector, running_model.as_ref());
                                    desk.reply(crate::managed::reply(
                                        &cmd,
                                        csb_wire::ReplyStatus::Done,
                                        None,
                                        Some(v),
                                        Some(mv),
                                    ));
                                }
                            }
                            continue;
                        }
                        if newer {
                            // A newer push for the model in service supersedes a swap under way.
                            swap = None;
                        }
                        let mut ctx = ConfigCtx {
                            state_dir: &state_dir,
                            labels: detector.labels(),
                            model: Some(modelswap::version_of(&detector, running_model.as_ref())),
                            desk,
                            uplink,
                            evidence: evidence.as_ref(),
                            rt: &rt,
                            stop: &opts.stop,
                        };
                        report.events += apply_config(
                            &cmd,
                            &mut ctx,
                            &mut cams,
                            &mut analytics,
                            &mut config_version,
                        )?
                        .0;
                        // Cameras may have moved between the models in service.
                        retarget(&cams, &cam_models, &detector, &targets);
                    }
                }
            }
            finish_probes(cfg, desk, evidence.as_ref(), &rt, &mut probes);
            // The model made ready beside the one in service: swapped in between two frames.
            if let Some(res) = swap.as_ref().and_then(Swap::poll) {
                let s = swap.take().expect("polled above");
                match res {
                    Ok(ready) => {
                        let new_det = ready.device;
                        let mv = modelswap::version_of(&new_det, s.push.model.as_deref());
                        let mut ctx = ConfigCtx {
                            state_dir: &state_dir,
                            labels: new_det.labels(),
                            model: Some(mv.clone()),
                            desk,
                            uplink,
                            evidence: evidence.as_ref(),
                            rt: &rt,
                            stop: &opts.stop,
                        };
                        let before = config_version;
                        let (n, applied) = apply_config(
                            &s.cmd,
                            &mut ctx,
                            &mut cams,
                            &mut analytics,
                            &mut config_version,
                        )?;
                        report.events += n;
                        if applied {
                            let old = std::mem::replace(&mut detector, new_det);
                            let old_model = std::mem::replace(
                                &mut running_model,
                                s.push.model.as_deref().cloned(),
                            );
                            let old_cams = std::mem::replace(&mut cam_models, ready.cameras);
                            previous = Some(Previous {
                                detector: old,
                                model: old_model,
                                cameras: old_cams,
                                version: before,
                                until: Instant::now() + FALLBACK_KEPT,
                            });
                            retarget(&cams, &cam_models, &detector, &targets);
                            rt.block_on(uplink.set_model(Some(mv.clone())))?;
                            let now: Vec<&ModelManifest> =
                                cam_models.iter().map(|c| &c.manifest).collect();
                            let before: Vec<&ModelManifest> = previous
                                .iter()
                                .flat_map(|p| {
                                    p.model.iter().chain(p.cameras.iter().map(|c| &c.manifest))
                                })
                                .collect();
                            modelswap::in_service(running_model.as_ref(), &now, &before, &swap_ctx);
                            tracing::info!(version = s.push.version, model = %mv.name, "model swapped in");
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(
                            command = s.cmd.id,
                            version = s.push.version,
                            "configuration refused, the model in service stays: {reason}"
                        );
                        desk.reply(crate::managed::reply(
                            &s.cmd,
                            csb_wire::ReplyStatus::Refused,
                            Some(reason),
                            None,
                            None,
                        ));
                    }
                }
            }
            if previous.as_ref().is_some_and(|p| Instant::now() >= p.until) {
                previous = None;
            }
        }
        match tx.take(Duration::from_millis(200)) {
            Some(Item::Frame(i, frame)) => {
                let t0 = Instant::now();
                let ungated = probes.iter().any(|(p, _)| p.camera == i);
                let det = match model_of(&cams[i], &cam_models) {
                    Some(j) => &mut cam_models[j].det,
                    None => &mut detector,
                };
                let (in_w, in_h) = det.input_size();
                if frame.width > in_w || frame.height > in_h {
                    // Scaled for the camera's model before a swap; its stream is reopening.
                    continue;
                }
                let model_ref = det.model_ref().clone();
                let r = match analytics[i].process_with(&frame, frame.ts_ms, det, ungated) {
                    Ok(r) => r,
                    Err(AnalyticsError::Detector(e)) => match previous.take() {
                        // The model swapped in fails at run time: back to the one before it.
                        Some(p) => {
                            tracing::error!(
                                "the new model failed ({e}); back to the model before it"
                            );
                            detector = p.detector;
                            running_model = p.model;
                            cam_models = p.cameras;
                            config_version = p.version;
                            retarget(&cams, &cam_models, &detector, &targets);
                            rt.block_on(uplink.set_config_version(config_version))?;
                            rt.block_on(uplink.set_model(Some(modelswap::version_of(
                                &detector,
                                running_model.as_ref(),
                            ))))?;
                            continue;
                        }
                        None => return Err(e.into()),
                    },
                    Err(e) => {
                        // A frame OpenCV cannot read is this frame's problem, not the camera's.
                        tracing::warn!("{e}");
                        continue;
                    }
                };
                report.frames += 1;
                for (p, jpegs) in probes
                    .iter_mut()
                    .filter(|(p, _)| p.camera == i && r.detected)
                {
                    let (inside, shot) = p.observe(
                        &r.detections,
                        frame.src_width,
                        frame.src_height,
                        frame.ts_ms,
                    );
                    let slot = match shot {
                        Shot::Busiest => 0,
                        Shot::Empty => 1,
                        Shot::Skip => continue,
                    };
                    let what = format!("AI recheck {}", p.zone().unwrap_or(""));
                    match analytics[i].snapshot(&frame, &inside, p.zone(), &what, frame.ts_ms) {
                        Ok(Some(j)) => jpegs[slot] = Some(j),
                        Ok(None) => {}
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
                if r.detected {
                    let ms = t0.elapsed().as_secs_f64() * 1000.0;
                    report.infer_ms_total += ms;
                    tick_infer.0 += ms;
                    tick_infer.1 += 1;
                }
                let cam = &cams[i];
                let due = last_event[i]
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(cam.event_interval_ms));
                let wanted = opts.publish_empty || !r.detections.is_empty();
                if cam.publish_detections && r.detected && wanted && due {
                    let event = Event {
                        v: SCHEMA_VERSION,
                        id: Ulid::new(),
                        site: cfg.agent.site.clone(),
                        device: cfg.agent.device.clone(),
                        camera: cam.id.clone(),
                        kind: EventKind::Detection,
                        ts_ms: frame.ts_ms,
                        frame: Some(FrameInfo {
                            seq: frame.seq,
                            pts_ms: frame.pts_ms,
                            width: frame.src_width,
                            height: frame.src_height,
                        }),
                        model: Some(model_ref.clone()),
                        objects: r.detections,
                        rule: None,
                    };
                    if publish_bounded(&event, uplink, &rt, &opts.stop)? {
                        report.events += 1;
                    }
                    last_event[i] = Some(Instant::now());
                }
                report.events +=
                    publish_rule_events(r.rule_events, uplink, evidence.as_ref(), &rt, &opts.stop)?;
            }
            Some(Item::Control(Ctl::Ended(i))) => ended[i] = true,
            Some(Item::Control(Ctl::Failed(i, e))) => {
                ended[i] = true;
                if !opts.retry {
                    failure = Some(e);
                    opts.stop.store(true, Ordering::Relaxed);
                }
            }
            None => {}
        }
        if last_tick.elapsed() >= health_every {
            publish_health(
                cfg,
                uplink,
                &rt,
                &shared,
                &mut analytics,
                &mut tick_frames,
                &mut tick_detected,
                &mut tick_infer,
                last_tick.elapsed(),
            );
            last_tick = Instant::now();
        }
    }
    // Re-checks cut short by the stop are not answered: the hub sends them again, and the
    // agent's next run looks again.
    // Open problems end with the agent; the hub closes nothing on its own guess.
    for a in &mut analytics {
        report.events +=
            publish_rule_events(a.finish(), uplink, evidence.as_ref(), &rt, &opts.stop)?;
    }
    opts.stop.store(true, Ordering::Relaxed);
    // Unblock camera threads waiting for their slot, then join them.
    tx.close();
    for t in threads {
        let _ = t.join();
    }
    report.elapsed = started.elapsed();
    report.dropped = shared
        .iter()
        .map(|s| s.dropped.load(Ordering::Relaxed))
        .sum();
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(report)
}

/// Which of `cam_models` camera `cam` runs (none: the device's model).
fn model_of(cam: &CameraConfig, cam_models: &[CameraModel]) -> Option<usize> {
    let key = cam.model.as_ref()?;
    cam_models.iter().position(|m| m.manifest.key() == *key)
}

fn pack(size: (u32, u32)) -> u64 {
    (u64::from(size.0) << 32) | u64::from(size.1)
}

fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

/// Sets each camera's scaling size to its model's input size.
fn retarget(
    cams: &[CameraConfig],
    cam_models: &[CameraModel],
    detector: &Detector,
    targets: &[Arc<AtomicU64>],
) {
    for (i, c) in cams.iter().enumerate() {
        let size = match model_of(c, cam_models) {
            Some(j) => cam_models[j].det.input_size(),
            None => detector.input_size(),
        };
        if let Some(t) = targets.get(i) {
            t.store(pack(size), Ordering::Relaxed);
        }
    }
}

/// How long the model in service before a swap is kept to fall back to.
const FALLBACK_KEPT: Duration = Duration::from_secs(600);

/// The model in service before the last swap.
struct Previous {
    detector: Detector,
    model: Option<ModelManifest>,
    cameras: Vec<CameraModel>,
    version: Option<u64>,
    until: Instant,
}

/// What applying a configuration needs besides the cameras.
struct ConfigCtx<'a> {
    state_dir: &'a std::path::Path,
    labels: &'a [String],
    /// The model that runs once it is applied (named in the reply).
    model: Option<csb_wire::model::ModelVersion>,
    desk: &'a CommandDesk,
    uplink: &'a Uplink,
    evidence: Option<&'a EvidenceUploader>,
    rt: &'a tokio::runtime::Handle,
    stop: &'a AtomicBool,
}

/// Applies a fleet configuration (`CommandOp::Config`) to the running cameras, all of its
/// cameras or none: checked against this agent's cameras and model, kept on disk, then swapped
/// into each listed camera's analytics between two frames (no camera restarts, no frame is
/// lost); answered `done` with the version only after it is on disk. Returns the rule events
/// it published (problems ended by the change) and whether it was applied.
fn apply_config(
    cmd: &csb_wire::Command,
    ctx: &mut ConfigCtx<'_>,
    cams: &mut Vec<CameraConfig>,
    analytics: &mut [CameraAnalytics],
    version: &mut Option<u64>,
) -> Result<(u64, bool), PipelineError> {
    let csb_wire::CommandOp::Config(push) = &cmd.op else {
        return Ok((0, false));
    };
    use crate::managed::{decide, reply, Decision};
    use csb_wire::ReplyStatus;
    let model = ctx.model.clone();
    let answer = |status, reason, v| ctx.desk.reply(reply(cmd, status, reason, v, model.clone()));
    let merged = match decide(push, *version, cams, Some(ctx.labels)) {
        // Versions only go up: an old or repeated one is answered with what runs.
        Decision::Running(v) => {
            answer(ReplyStatus::Done, None, Some(v));
            return Ok((0, false));
        }
        Decision::Refuse(reason) => {
            tracing::warn!(
                command = cmd.id,
                version = push.version,
                "configuration refused: {reason}"
            );
            answer(ReplyStatus::Refused, Some(reason), None);
            return Ok((0, false));
        }
        Decision::Apply(m) => m,
    };
    let mut engines = Vec::new();
    for s in &push.cameras {
        let Some(i) = merged.iter().position(|c| c.id == s.id) else {
            continue;
        };
        match CameraAnalytics::rules_for(&merged[i]) {
            Ok(e) => engines.push((i, e)),
            Err(e) => {
                answer(ReplyStatus::Refused, Some(e.to_string()), None);
                return Ok((0, false));
            }
        }
    }
    if let Err(e) = crate::managed::save(ctx.state_dir, push) {
        tracing::error!("{e}");
        answer(ReplyStatus::Failed, Some(e.to_string()), None);
        return Ok((0, false));
    }
    let mut published = 0;
    for (i, engine) in engines {
        let ended = analytics[i].reconfigure(&merged[i], engine);
        published += publish_rule_events(ended, ctx.uplink, ctx.evidence, ctx.rt, ctx.stop)?;
    }
    *cams = merged;
    *version = Some(push.version);
    ctx.rt.block_on(ctx.uplink.set_config_version(*version))?;
    tracing::info!(
        command = cmd.id,
        version = push.version,
        cameras = push.cameras.len(),
        "configuration applied"
    );
    answer(ReplyStatus::Done, None, Some(push.version));
    Ok((published, true))
}

/// Starts an AI re-check on its camera, or refuses it with the reason.
fn start_probe(
    cmd: csb_wire::Command,
    cams: &[CameraConfig],
    desk: &CommandDesk,
    probes: &mut Vec<(Probe, [Option<Vec<u8>>; 2])>,
) {
    let csb_wire::CommandOp::Recheck(r) = &cmd.op else {
        return;
    };
    let refuse = |reason: String| {
        tracing::warn!(command = cmd.id, "AI re-check refused: {reason}");
        desk.reply(csb_wire::CommandReply {
            v: SCHEMA_VERSION,
            id: cmd.id.clone(),
            site: cmd.site.clone(),
            device: cmd.device.clone(),
            ts_ms: csb_wire::now_ms(),
            status: csb_wire::ReplyStatus::Refused,
            reason: Some(reason),
            recheck: None,
            config: None,
        });
    };
    let Some(index) = cams.iter().position(|c| c.id == r.camera) else {
        let known: Vec<&str> = cams.iter().map(|c| c.id.as_str()).collect();
        return refuse(format!(
            "no enabled camera `{}` (this agent runs: {})",
            r.camera,
            known.join(", ")
        ));
    };
    let (id, case, camera) = (cmd.id.clone(), r.case.clone(), r.camera.clone());
    match Probe::start(cmd.clone(), index, &cams[index], csb_wire::now_ms()) {
        Ok(p) => {
            tracing::info!(
                command = id,
                case,
                camera,
                zone = p.zone(),
                watch_s = (p.until_ms - p.started_ms) / 1000,
                "AI re-check: looking again (motion gating off for the window)"
            );
            probes.push((p, [None, None]));
        }
        Err(reason) => refuse(reason),
    }
}

/// Answers the re-checks whose window has passed: uploads the
/// snapshot (through the outbox: it reaches the hub even after an outage), then replies.
fn finish_probes(
    cfg: &AgentConfig,
    desk: &CommandDesk,
    evidence: Option<&EvidenceUploader>,
    rt: &tokio::runtime::Handle,
    probes: &mut Vec<(Probe, [Option<Vec<u8>>; 2])>,
) {
    let now = csb_wire::now_ms();
    let mut i = 0;
    while i < probes.len() {
        if now < probes[i].0.until_ms {
            i += 1;
            continue;
        }
        let (p, [busiest, empty]) = probes.swap_remove(i);
        // The picture that shows the verdict.
        let jpeg = if p.present() {
            busiest
        } else {
            empty.or(busiest)
        };
        let snapshot = match (evidence, jpeg) {
            (Some(up), Some(jpeg)) => {
                let id = Ulid::new().to_string();
                // No event: the snapshot belongs to the command's answer.
                up.spawn_upload(rt, id.clone(), Ulid::nil().to_string(), jpeg);
                Some(id)
            }
            _ => None,
        };
        let reply = p.reply(&cfg.agent.site, &cfg.agent.device, p.finish(now, snapshot));
        tracing::info!(command = reply.id, status = ?reply.status, present = ?reply.recheck.as_ref().map(|r| r.present),
            frames = ?reply.recheck.as_ref().map(|r| r.frames), "AI re-check answered");
        desk.reply(reply);
    }
}

pub(crate) use crate::localstatus::health_interval;

/// Per-camera fps, drop, outage and reconnect counts and the age of the newest frame as
/// telemetry, and the camera states as retained status.
#[allow(clippy::too_many_arguments)] // the run loop's state, passed piecewise to keep borrows disjoint
fn publish_health(
    cfg: &AgentConfig,
    uplink: &Uplink,
    rt: &tokio::runtime::Handle,
    shared: &[Arc<CameraShared>],
    analytics: &mut [CameraAnalytics],
    tick_frames: &mut [u64],
    tick_detected: &mut [u64],
    tick_infer: &mut (f64, u64),
    window: Duration,
) {
    let mut metrics = BTreeMap::new();
    let mut statuses = Vec::new();
    let secs = window.as_secs_f64().max(0.001);
    for (i, sh) in shared.iter().enumerate() {
        let frames = sh.frames.load(Ordering::Relaxed);
        let fps = (frames - tick_frames[i]) as f64 / secs;
        tick_frames[i] = frames;
        let (detected, skipped) = analytics
            .get(i)
            .map(|a| (a.gate().detected, a.gate().skipped))
            .unwrap_or_default();
        let fps_detected = (detected - tick_detected[i].min(detected)) as f64 / secs;
        tick_detected[i] = detected;
        let round1 = |v: f64| ((v * 10.0).round() / 10.0) as f32;
        if let Ok(mut st) = sh.status.lock() {
            st.fps = Some(round1(fps));
            st.health = Some(csb_wire::CameraHealth {
                fps_in: round1(fps),
                fps_detected: round1(fps_detected),
                skipped_total: skipped,
                dropped_total: sh.dropped.load(Ordering::Relaxed),
                last_frame_age_ms: (csb_wire::now_ms()
                    - sh.last_frame_ms.load(Ordering::Relaxed) as i64)
                    .max(0) as u64,
                outages_total: sh.outages.load(Ordering::Relaxed),
                reconnects_total: sh.reconnects.load(Ordering::Relaxed),
            });
            metrics.insert(format!("{}.fps", st.id), (fps * 10.0).round() / 10.0);
            metrics.insert(
                format!("{}.dropped_total", st.id),
                sh.dropped.load(Ordering::Relaxed) as f64,
            );
            metrics.insert(
                format!("{}.outages_total", st.id),
                sh.outages.load(Ordering::Relaxed) as f64,
            );
            metrics.insert(
                format!("{}.reconnects_total", st.id),
                sh.reconnects.load(Ordering::Relaxed) as f64,
            );
            let last = sh.last_frame_ms.load(Ordering::Relaxed) as i64;
            metrics.insert(
                format!("{}.last_frame_age_ms", st.id),
                (csb_wire::now_ms() - last).max(0) as f64,
            );
            statuses.push(st.clone());
        }
    }
    for a in analytics.iter_mut() {
        let cam = a.camera().id.clone();
        metrics.insert(format!("{cam}.detected_total"), a.gate().detected as f64);
        metrics.insert(format!("{cam}.gated_total"), a.gate().skipped as f64);
        // Traffic flow: crossings per line, class and direction in this window.
        for ((line, class, dir), n) in a.take_counts() {
            metrics.insert(format!("{cam}.flow.{line}.{class}.{dir}"), n as f64);
        }
    }
    if tick_infer.1 > 0 {
        metrics.insert(
            "detector.ms_avg".into(),
            (tick_infer.0 / tick_infer.1 as f64 * 10.0).round() / 10.0,
        );
    }
    *tick_infer = (0.0, 0);
    if let Some(ob) = uplink.outbox() {
        let o = ob.snapshot();
        for (k, v) in [
            ("outbox.pending", o.pending),
            ("outbox.bytes", o.bytes),
            ("outbox.oldest_age_ms", o.oldest_age_ms),
            ("outbox.dropped_total", o.dropped_total),
            ("outbox.write_errors_total", o.write_errors),
            ("outbox.resent_total", o.resent),
            ("outbox.disk_bytes", o.disk_bytes),
        ] {
            metrics.insert(k.into(), v as f64);
        }
        let st = uplink.stats();
        metrics.insert(
            "outbox.read_errors_total".into(),
            st.outbox_read_errors
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
        // Acks refused (unreadable, another device's, or not signed with our key).
        metrics.insert(
            "uplink.bad_acks_total".into(),
            st.bad_acks.load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
    }
    let t = Telemetry {
        v: SCHEMA_VERSION,
        id: Ulid::new(),
        site: cfg.agent.site.clone(),
        device: cfg.agent.device.clone(),
        source: "agent".into(),
        ts_ms: csb_wire::now_ms(),
        metrics,
    };
    // Health is a snapshot: when the uplink queue is full (broker down) skip it rather than
    // hold up detection.
    let res = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(1), async {
            uplink.set_cameras(statuses).await?;
            uplink.publish_telemetry(&t).await
        })
        .await
    });
    match res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("cannot publish agent health: {e}"),
        Err(_) => tracing::warn!("agent health skipped: uplink queue full"),
    }
}

/// Publishes rule events, starting their snapshot uploads first; returns how many went out.
fn publish_rule_events(
    events: Vec<RuleEvent>,
    uplink: &Uplink,
    evidence: Option<&EvidenceUploader>,
    rt: &tokio::runtime::Handle,
    stop: &AtomicBool,
) -> Result<u64, PipelineError> {
    let mut n = 0;
    for ev in events {
        if let (Some(up), Some(jpeg), Some(id)) = (
            evidence,
            ev.snapshot,
            ev.event.rule.as_ref().and_then(|r| r.snapshot.clone()),
        ) {
            up.spawn_upload(rt, id, ev.event.id.to_string(), jpeg);
        }
        if publish_bounded(&ev.event, uplink, rt, stop)? {
            n += 1;
        }
    }
    Ok(n)
}

/// Publishes one event. While the MQTT queue is full (broker unreachable) this waits in 1 s
/// steps, so back-pressure still reaches the cameras, but it gives up once the agent is
/// stopping: a shutdown must not hang on a dead uplink. An event given up here is logged as
/// undelivered (until the durable outbox of issue 4 keeps it). Returns whether it was queued.
fn publish_bounded(
    event: &Event,
    uplink: &Uplink,
    rt: &tokio::runtime::Handle,
    stop: &AtomicBool,
) -> Result<bool, PipelineError> {
    loop {
        // `publish` only enqueues; cancelling it on timeout leaves nothing half-sent. The timer
        // is created inside `block_on`, where the runtime's clock exists.
        match rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), uplink.publish_event(event)).await
        }) {
            Ok(res) => return res.map(|()| true).map_err(Into::into),
            Err(_) if stop.load(Ordering::Relaxed) => {
                tracing::error!(event = %event.id, camera = %event.camera, broker = %uplink.broker(),
                    "uplink unavailable while stopping: event not delivered");
                return Ok(false);
            }
            Err(_) => {}
        }
    }
}
