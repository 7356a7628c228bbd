//! `edge-agent probe URI` (grab frames, detect, report fps and inference time, write an
//! annotated JPEG) and `edge-agent zones preview CAMERA` (the camera's zones and lines drawn
//! over its live picture): what a technician needs to aim a camera and check its zones.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use crate::config::{AgentConfig, CameraConfig};
use crate::model::{Detector, DetectorError, DetectorOptions};
use crate::source::{self, Frame, Pacing, Pulled, Source, SourceError, SourceOptions};
use crate::vision::{render_snapshot, resize_bgr, Outline, VisionError};

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(transparent)]
    Detector(#[from] DetectorError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{0}: {1}")]
    Uri(String, String),
    #[error("{0}: no frame decoded")]
    NoFrame(String),
    #[error("drawing the picture: {0}")]
    Vision(#[from] VisionError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no camera `{id}` in the config (it has: {known})")]
    NoCamera { id: String, known: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub uri: String,
    pub frames: u64,
    pub width: u32,
    pub height: u32,
    /// Frames decoded per second over the run (a file: as fast as it decodes and detects).
    pub fps: f64,
    pub inference_ms_p50: f64,
    pub inference_ms_p95: f64,
    /// Objects in the picture written, by label.
    pub objects: Vec<(String, usize)>,
    pub picture: PathBuf,
}

fn open(camera: &str, uri: &str, target: (u32, u32)) -> Result<Source, ProbeError> {
    let uri = source::to_uri(uri).map_err(|e| ProbeError::Uri(uri.to_string(), e))?;
    let pacing = if source::is_rtsp(&uri) {
        Pacing::Live
    } else {
        Pacing::EveryFrame
    };
    Ok(Source::open_with(
        camera,
        &uri,
        SourceOptions {
            target,
            pacing,
            full_frames: true,
        },
    )?)
}

fn next(src: &mut Source) -> Result<Option<Frame>, ProbeError> {
    match src.next_frame(src.frame_timeout())? {
        Pulled::Frame(f) => Ok(Some(f)),
        Pulled::End => Ok(None),
    }
}

fn write(path: &Path, jpeg: &[u8]) -> Result<(), ProbeError> {
    std::fs::write(path, jpeg).map_err(|source| ProbeError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Grabs up to `frames` frames from `uri`, detecting on each; writes the last one annotated.
pub fn probe(
    uri: &str,
    frames: u64,
    picture: &Path,
    model: &DetectorOptions,
    show_progress: bool,
) -> Result<ProbeReport, ProbeError> {
    let mut det = Detector::load(model)?;
    let mut src = open("probe", uri, det.input_size())?;
    let bar = if show_progress {
        indicatif::ProgressBar::new(frames)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("probing {bar:40} {pos}/{len} frames {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut infer = Vec::new();
    let mut last: Option<Frame> = None;
    let mut n = 0;
    let start = Instant::now();
    while n < frames {
        let Some(f) = next(&mut src)? else { break };
        n += 1;
        let t = Instant::now();
        let objects = det.detect(&f.scaled(), f.src_width, f.src_height)?;
        infer.push(t.elapsed().as_secs_f64() * 1000.0);
        bar.inc(1);
        bar.set_message(format!("{} objects", objects.len()));
        last = Some(f);
    }
    let secs = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let Some(frame) = last else {
        return Err(ProbeError::NoFrame(uri.to_string()));
    };
    let Some(full) = frame
        .full
        .clone()
        .or_else(|| src.full_frame(Duration::from_secs(5)))
    else {
        return Err(ProbeError::NoFrame(uri.to_string()));
    };
    // The full-resolution branch keeps only its newest frame, which a file decoded flat out has
    // moved past: detect again on the very frame drawn.
    let (iw, ih) = det.input_size();
    let (sw, sh, _) = crate::model::yolox::scaled_size(full.width, full.height, iw, ih);
    let small = full.with_mat(|m| resize_bgr(m, sw, sh))?;
    let img = crate::model::ScaledImage {
        data: &small,
        width: sw,
        height: sh,
        stride: sw as usize * 3,
    };
    let objects = det.detect(&img, full.width, full.height)?;
    let caption = format!("probe {uri}: {} objects", objects.len());
    let jpeg = full.with_mat(|m| render_snapshot(m, &objects, &[], &caption, 90))?;
    write(picture, &jpeg)?;
    infer.sort_by(f64::total_cmp);
    let mut by_label: Vec<(String, usize)> = Vec::new();
    for o in &objects {
        match by_label.iter_mut().find(|(l, _)| *l == o.label) {
            Some((_, c)) => *c += 1,
            None => by_label.push((o.label.clone(), 1)),
        }
    }
    Ok(ProbeReport {
        uri: uri.to_string(),
        frames: n,
        width: frame.src_width,
        height: frame.src_height,
        fps: if secs > 0.0 { n as f64 / secs } else { 0.0 },
        inference_ms_p50: percentile(&infer, 0.5),
        inference_ms_p95: percentile(&infer, 0.95),
        objects: by_label,
        picture: picture.to_path_buf(),
    })
}

/// The zones and lines of `cam` in source pixels, as outlines to draw.
pub fn outlines(cam: &CameraConfig, w: u32, h: u32) -> Vec<Outline> {
    let (w, h) = (w as f32, h as f32);
    let mut v: Vec<Outline> = cam
        .analytics
        .zones
        .iter()
        .map(|z| Outline {
            label: format!("zone {}", z.id),
            points: z.polygon.iter().map(|p| (p[0] * w, p[1] * h)).collect(),
        })
        .collect();
    v.extend(cam.analytics.lines.iter().map(|l| Outline {
        // `in` is to the right of from → to: the label says which way counts as in.
        label: format!("line {} (in: right of start->end)", l.id),
        points: vec![(l.from[0] * w, l.from[1] * h), (l.to[0] * w, l.to[1] * h)],
    }));
    v
}

#[derive(Debug, Clone, Serialize)]
pub struct PreviewReport {
    pub camera: String,
    pub width: u32,
    pub height: u32,
    pub zones: usize,
    pub lines: usize,
    pub picture: PathBuf,
}

/// Draws camera `id`'s zones and lines over a frame from it.
pub fn zones_preview(
    cfg: &AgentConfig,
    id: &str,
    picture: &Path,
) -> Result<PreviewReport, ProbeError> {
    let cam = cfg
        .cameras
        .iter()
        .find(|c| c.id == id)
        .ok_or_else(|| ProbeError::NoCamera {
            id: id.to_string(),
            known: cfg
                .cameras
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let mut src = open(&cam.id, &cam.uri, (416, 416))?;
    // A live camera's first frames can be grey while its decoder settles: take the newest of
    // the first second.
    let first = next(&mut src)?.ok_or_else(|| ProbeError::NoFrame(cam.uri.clone()))?;
    let mut frame = first;
    let settle = Instant::now();
    while src.is_rtsp() && settle.elapsed() < Duration::from_secs(1) {
        match next(&mut src)? {
            Some(f) => frame = f,
            None => break,
        }
    }
    let shapes = outlines(cam, frame.src_width, frame.src_height);
    let caption = format!(
        "{}: {} zone(s), {} line(s) - {}",
        cam.id,
        cam.analytics.zones.len(),
        cam.analytics.lines.len(),
        chrono_free_now()
    );
    let Some(full) = frame
        .full
        .clone()
        .or_else(|| src.full_frame(Duration::from_secs(5)))
    else {
        return Err(ProbeError::NoFrame(cam.uri.clone()));
    };
    let jpeg = full.with_mat(|m| render_snapshot(m, &[], &shapes, &caption, 90))?;
    write(picture, &jpeg)?;
    Ok(PreviewReport {
        camera: cam.id.clone(),
        width: frame.src_width,
        height: frame.src_height,
        zones: cam.analytics.zones.len(),
        lines: cam.analytics.lines.len(),
        picture: picture.to_path_buf(),
    })
}

/// UTC time for captions, without a date library.
fn chrono_free_now() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_and_lines_scale_to_the_picture() {
        let mut cam = CameraConfig::new("c", "/x.avi");
        cam.analytics.zones.push(crate::rules::config::ZoneConfig {
            id: "z".into(),
            polygon: vec![[0.0, 0.0], [0.5, 0.0], [0.5, 0.5]],
            classes: vec![],
            inertia_frames: 1,
        });
        cam.analytics.lines.push(crate::rules::config::LineConfig {
            id: "l".into(),
            from: [0.0, 1.0],
            to: [1.0, 1.0],
            classes: vec![],
        });
        let o = outlines(&cam, 800, 600);
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].points[1], (400.0, 0.0));
        assert_eq!(o[1].points, vec![(0.0, 600.0), (800.0, 600.0)]);
        assert!(o[1].label.contains("line l"));
    }

    #[test]
    fn percentiles_of_few_samples() {
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.5), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.95), 3.0);
    }
}
