//! `edge-agent replay`: a recording through the same analytics as the live agent, as fast as
//! possible, with stream time as the clock so dwell times match the footage, not the CPU.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use crate::analytics::{AnalyticsError, CameraAnalytics};
use crate::config::{AgentConfig, ConfigError};
use crate::model::{Detector, DetectorError};
use crate::source::{self, Pacing, Pulled, Source, SourceError, SourceOptions};

#[derive(Debug, Error)]
pub enum ReplayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{config}: no camera `{camera}` (or no enabled camera)")]
    NoCamera { config: String, camera: String },
    #[error(transparent)]
    Detector(#[from] DetectorError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Analytics(#[from] AnalyticsError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Input(String),
}

/// Totals printed after the events.
#[derive(Debug, Default, Serialize)]
pub struct ReplaySummary {
    pub frames: u64,
    pub detected_frames: u64,
    pub skipped_frames: u64,
    pub rule_events: u64,
    pub stream_ms: u64,
    pub wall_ms: u64,
    /// Line crossings: line → class → direction → count.
    pub line_counts: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
    >,
}

pub fn run(
    file: &str,
    config: &Path,
    camera: Option<&str>,
    json: bool,
    snapshots: Option<&Path>,
) -> Result<ReplaySummary, ReplayError> {
    let cfg = AgentConfig::load(config)?;
    let cam = cfg
        .cameras
        .iter()
        .find(|c| camera.map_or(c.enabled, |id| c.id == id))
        .cloned()
        .ok_or_else(|| ReplayError::NoCamera {
            config: config.display().to_string(),
            camera: camera.unwrap_or("").to_string(),
        })?;
    if let Some(dir) = snapshots {
        std::fs::create_dir_all(dir).map_err(|source| ReplayError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let mut detector = Detector::load(&cfg.model)?;
    let mut analytics = CameraAnalytics::new(&cfg.agent.site, &cfg.agent.device, &cam)?;
    let uri = source::to_uri(file).map_err(ReplayError::Input)?;
    let opts = SourceOptions {
        target: detector.input_size(),
        pacing: Pacing::EveryFrame,
        full_frames: cam.snapshots || snapshots.is_some(),
    };
    let mut src = Source::open_with(&cam.id, &uri, opts)?;
    // Stream time anchored at the wall clock of the start: plausible timestamps, footage pace.
    let base = csb_wire::now_ms();
    let started = Instant::now();
    let mut summary = ReplaySummary::default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let io_err = |source| ReplayError::Io {
        path: "stdout".into(),
        source,
    };
    loop {
        let frame = match src.next_frame(Duration::from_secs(30))? {
            Pulled::Frame(f) => f,
            Pulled::End => break,
        };
        let pts = frame.pts_ms.unwrap_or(summary.frames * 100);
        summary.stream_ms = pts;
        let ts = base + pts as i64;
        let r = analytics.process(&frame, ts, &mut detector)?;
        summary.frames += 1;
        if r.detected {
            summary.detected_frames += 1;
        } else {
            summary.skipped_frames += 1;
        }
        let events = r.rule_events;
        emit(events, &mut summary, snapshots, json, &mut out, pts)?;
    }
    let end_events = analytics.finish();
    let end_pts = summary.stream_ms;
    emit(end_events, &mut summary, snapshots, json, &mut out, end_pts)?;
    if summary.frames == 0 {
        return Err(ReplayError::Input(format!("{file}: no frames decoded")));
    }
    finish_summary(&mut summary, &mut analytics, started);
    let text = serde_json::to_string(&serde_json::json!({ "summary": &summary }))
        .map_err(|e| ReplayError::Input(e.to_string()))?;
    if json {
        writeln!(out, "{text}").map_err(io_err)?;
    } else {
        eprintln!("{text}");
    }
    Ok(summary)
}

fn finish_summary(summary: &mut ReplaySummary, analytics: &mut CameraAnalytics, started: Instant) {
    for ((line, class, dir), n) in analytics.take_counts() {
        *summary
            .line_counts
            .entry(line)
            .or_default()
            .entry(class)
            .or_default()
            .entry(dir)
            .or_default() += n;
    }
    summary.wall_ms = started.elapsed().as_millis() as u64;
}

/// Writes rule events (and their snapshots) as JSON lines or readable text.
fn emit(
    events: Vec<crate::analytics::RuleEvent>,
    summary: &mut ReplaySummary,
    snapshots: Option<&Path>,
    json: bool,
    out: &mut impl Write,
    pts: u64,
) -> Result<(), ReplayError> {
    let io_err = |source| ReplayError::Io {
        path: "stdout".into(),
        source,
    };
    {
        for ev in events {
            summary.rule_events += 1;
            if let (Some(dir), Some(jpeg), Some(id)) = (
                snapshots,
                ev.snapshot.as_ref(),
                ev.event.rule.as_ref().and_then(|r| r.snapshot.as_ref()),
            ) {
                let p = dir.join(format!("{id}.jpg"));
                std::fs::write(&p, jpeg).map_err(|source| ReplayError::Io {
                    path: p.display().to_string(),
                    source,
                })?;
            }
            if json {
                let line = serde_json::to_string(&ev.event)
                    .map_err(|e| ReplayError::Input(e.to_string()))?;
                writeln!(out, "{line}").map_err(io_err)?;
            } else if let Some(rule) = &ev.event.rule {
                writeln!(
                    out,
                    "{:>8.1}s {:?} {} rule={} zone={} tracks={:?} dwell={:.1}s{}{}",
                    pts as f64 / 1000.0,
                    rule.phase,
                    rule.event_type,
                    rule.rule,
                    rule.zone.as_deref().unwrap_or("-"),
                    rule.track_ids,
                    rule.duration_ms as f64 / 1000.0,
                    rule.direction
                        .as_deref()
                        .map(|d| format!(" direction={d}"))
                        .unwrap_or_default(),
                    rule.snapshot
                        .as_deref()
                        .map(|s| format!(" snapshot={s}"))
                        .unwrap_or_default(),
                )
                .map_err(io_err)?;
            }
        }
    }
    Ok(())
}
