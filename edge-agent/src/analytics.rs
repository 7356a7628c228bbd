//! Per-camera perception after decoding: motion gate → detector → tracker → rules → rule events
//! with evidence. Shared by the live agent (`pipeline`) and `edge-agent replay`, so what a
//! technician tunes with a recording is exactly what runs on the pole.

use csb_wire::{Detection, Event, EventKind, FrameInfo, ModelRef, SCHEMA_VERSION};
use thiserror::Error;
use ulid::Ulid;

use crate::config::CameraConfig;
use crate::model::{Detector, DetectorError};
use crate::perception::{FrameMeta, TrackedObject};
use crate::rules::{RuleEngine, RuleOutput, RulesConfigError};
use crate::source::Frame;
use crate::track::Tracker;
use crate::vision::{self, GateDecision, MotionGate, Outline, VisionError};

#[derive(Debug, Error)]
pub enum AnalyticsError {
    #[error(transparent)]
    Detector(#[from] DetectorError),
    #[error("camera `{camera}`: {source}")]
    Vision { camera: String, source: VisionError },
    #[error("camera `{camera}`: analytics config: {source}")]
    Rules {
        camera: String,
        source: RulesConfigError,
    },
}

/// A rule event ready to publish, with its evidence JPEG when one was taken.
#[derive(Debug, Clone)]
pub struct RuleEvent {
    pub event: Event,
    pub snapshot: Option<Vec<u8>>,
}

/// What one frame produced.
#[derive(Debug, Default)]
pub struct FrameResult {
    /// Whether the detector ran (false: motion gating skipped it and tracks coasted).
    pub detected: bool,
    /// Raw detections when the detector ran, filtered by the camera's classes.
    pub detections: Vec<Detection>,
    pub tracks: Vec<TrackedObject>,
    pub rule_events: Vec<RuleEvent>,
}

pub struct CameraAnalytics {
    site: String,
    device: String,
    cam: CameraConfig,
    gate: MotionGate,
    tracker: Tracker,
    rules: RuleEngine,
    /// Frame and model of the latest processed frame, for events emitted without a frame.
    last: Option<(FrameInfo, ModelRef, i64)>,
}

impl CameraAnalytics {
    pub fn new(site: &str, device: &str, cam: &CameraConfig) -> Result<Self, AnalyticsError> {
        let rules =
            RuleEngine::new(cam.analytics.clone()).map_err(|source| AnalyticsError::Rules {
                camera: cam.id.clone(),
                source,
            })?;
        Ok(CameraAnalytics {
            site: site.to_string(),
            device: device.to_string(),
            gate: MotionGate::new(cam.motion.clone()),
            tracker: Tracker::new(cam.tracker.clone()),
            rules,
            cam: cam.clone(),
            last: None,
        })
    }

    pub fn camera(&self) -> &CameraConfig {
        &self.cam
    }

    pub fn gate(&self) -> &MotionGate {
        &self.gate
    }

    /// Line-crossing counts per line, class and direction since the last call (for telemetry).
    pub fn take_counts(&mut self) -> Vec<((String, String, String), u64)> {
        self.rules.take_counts()
    }

    /// Runs one frame through gate, detector, tracker and rules. `ts_ms` is the frame's clock
    /// (wall time live, stream time in replays).
    pub fn process(
        &mut self,
        frame: &Frame,
        ts_ms: i64,
        detector: &mut Detector,
    ) -> Result<FrameResult, AnalyticsError> {
        self.process_with(frame, ts_ms, detector, false)
    }

    /// [`CameraAnalytics::process`], with the detector run whatever the motion gate says when
    /// `ungated` (an AI re-check looks at every frame of its window).
    pub fn process_with(
        &mut self,
        frame: &Frame,
        ts_ms: i64,
        detector: &mut Detector,
        ungated: bool,
    ) -> Result<FrameResult, AnalyticsError> {
        let vis = |source| AnalyticsError::Vision {
            camera: self.cam.id.clone(),
            source,
        };
        let decision = if ungated {
            GateDecision::Detect
        } else {
            vision::with_bgr_mat(&frame.data, frame.width, frame.height, frame.stride, |m| {
                self.gate.decide(m, ts_ms)
            })
            .map_err(vis)?
        };
        let mut result = FrameResult::default();
        if decision == GateDecision::Detect {
            let mut dets = detector.detect(&frame.scaled(), frame.src_width, frame.src_height)?;
            if !self.cam.classes.is_empty() {
                dets.retain(|o| self.cam.classes.iter().any(|c| c == &o.label));
            }
            result.tracks = self.tracker.update(ts_ms, &dets);
            result.detections = dets;
            result.detected = true;
        } else {
            result.tracks = self.tracker.coast(ts_ms);
        }
        let meta = FrameMeta {
            camera: self.cam.id.clone(),
            ts_ms,
            width: frame.src_width,
            height: frame.src_height,
        };
        self.last = Some((
            FrameInfo {
                seq: frame.seq,
                pts_ms: frame.pts_ms,
                width: frame.src_width,
                height: frame.src_height,
            },
            detector.model_ref().clone(),
            ts_ms,
        ));
        let outputs = self.rules.on_frame(&meta, &result.tracks);
        for out in outputs {
            let ev = self.rule_event(frame, ts_ms, detector.model_ref(), out)?;
            result.rule_events.push(ev);
        }
        Ok(result)
    }

    /// Checks that `cam`'s rules build (call before [`CameraAnalytics::reconfigure`], for every
    /// camera of a change, so a change applies to all of them or to none).
    pub fn rules_for(cam: &CameraConfig) -> Result<RuleEngine, AnalyticsError> {
        RuleEngine::new(cam.analytics.clone()).map_err(|source| AnalyticsError::Rules {
            camera: cam.id.clone(),
            source,
        })
    }

    /// Runs `cam`'s class filter and `rules` from the next frame on, keeping the tracker and
    /// the motion gate (no object loses its track, no frame is missed). Problems open under
    /// the old rules end now: their zones or thresholds may be gone.
    pub fn reconfigure(&mut self, cam: &CameraConfig, rules: RuleEngine) -> Vec<RuleEvent> {
        let ended = self.finish();
        self.rules = rules;
        self.cam.classes = cam.classes.clone();
        self.cam.analytics = cam.analytics.clone();
        ended
    }

    /// Ends every open problem (end of a recording, camera stopped, shutdown).
    pub fn finish(&mut self) -> Vec<RuleEvent> {
        let Some((frame, model, ts_ms)) = self.last.clone() else {
            return Vec::new();
        };
        self.rules
            .finish(ts_ms)
            .into_iter()
            .map(|out| RuleEvent {
                event: self.wrap(ts_ms, frame.clone(), &model, out.objects, out.info),
                snapshot: None,
            })
            .collect()
    }

    fn wrap(
        &self,
        ts_ms: i64,
        frame: FrameInfo,
        model: &ModelRef,
        mut objects: Vec<Detection>,
        info: csb_wire::RuleInfo,
    ) -> Event {
        // Kalman boxes carry sub-pixel noise; a tenth of a pixel is plenty on the wire.
        let r = |v: f32| (v * 10.0).round() / 10.0;
        for o in &mut objects {
            o.score = (o.score * 1000.0).round() / 1000.0;
            o.bbox = csb_wire::BBox {
                x1: r(o.bbox.x1),
                y1: r(o.bbox.y1),
                x2: r(o.bbox.x2),
                y2: r(o.bbox.y2),
            };
        }
        Event {
            v: SCHEMA_VERSION,
            id: Ulid::new(),
            site: self.site.clone(),
            device: self.device.clone(),
            camera: self.cam.id.clone(),
            kind: EventKind::Rule,
            ts_ms,
            frame: Some(frame),
            model: Some(model.clone()),
            objects,
            rule: Some(info),
        }
    }

    fn rule_event(
        &self,
        frame: &Frame,
        ts_ms: i64,
        model: &ModelRef,
        out: RuleOutput,
    ) -> Result<RuleEvent, AnalyticsError> {
        let mut info = out.info;
        let mut snapshot = None;
        // Evidence for the start of a problem; crossings and updates would flood the uplink.
        if self.cam.snapshots && info.phase == csb_wire::Phase::Start {
            let what = format!("{} {}", info.event_type, info.zone.as_deref().unwrap_or(""));
            snapshot = self.snapshot(frame, &out.objects, info.zone.as_deref(), &what, ts_ms)?;
            if snapshot.is_some() {
                info.snapshot = Some(Ulid::new().to_string());
            }
        }
        let info_frame = FrameInfo {
            seq: frame.seq,
            pts_ms: frame.pts_ms,
            width: frame.src_width,
            height: frame.src_height,
        };
        let event = self.wrap(ts_ms, info_frame, model, out.objects, info);
        Ok(RuleEvent { event, snapshot })
    }

    /// An evidence JPEG of `frame` (its full-resolution copy; `None` without one) with
    /// `objects` boxed, the zone (or every zone and line) outlined and a caption of the camera,
    /// `what` and the time.
    pub fn snapshot(
        &self,
        frame: &Frame,
        objects: &[Detection],
        zone: Option<&str>,
        what: &str,
        ts_ms: i64,
    ) -> Result<Option<Vec<u8>>, AnalyticsError> {
        let Some(full) = &frame.full else {
            return Ok(None);
        };
        let outlines = self.outlines(full.width, full.height, zone);
        // Boxes are in source pixels; the full frame is the source size.
        let caption = format!("{} {what} {}", self.cam.id, fmt_utc(ts_ms));
        full.with_mat(|m| vision::render_snapshot(m, objects, &outlines, &caption, 85))
            .map(Some)
            .map_err(|source| AnalyticsError::Vision {
                camera: self.cam.id.clone(),
                source,
            })
    }

    /// Zone polygons (and counting lines) in pixels for drawing; the event's own zone first.
    fn outlines(&self, w: u32, h: u32, zone: Option<&str>) -> Vec<Outline> {
        let (w, h) = (w as f32, h as f32);
        let mut v: Vec<Outline> = self
            .cam
            .analytics
            .zones
            .iter()
            .filter(|z| zone.is_none_or(|id| id == z.id))
            .map(|z| Outline {
                label: z.id.clone(),
                points: z.polygon.iter().map(|p| (p[0] * w, p[1] * h)).collect(),
            })
            .collect();
        v.extend(self.cam.analytics.lines.iter().map(|l| Outline {
            label: l.id.clone(),
            points: vec![(l.from[0] * w, l.from[1] * h), (l.to[0] * w, l.to[1] * h)],
        }));
        v
    }
}

/// `2026-11-24 10:15:03Z` for captions (no time-zone database on the gateway).
pub fn fmt_utc(ts_ms: i64) -> String {
    let secs = ts_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = csb_wire::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        assert_eq!(super::fmt_utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(super::fmt_utc(1_795_518_947_461), "2026-11-24 11:15:47Z");
        assert_eq!(super::fmt_utc(951_782_400_000), "2000-02-29 00:00:00Z");
    }
}
