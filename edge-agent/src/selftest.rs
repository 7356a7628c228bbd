//! A model's self-test (manifest `[models.selftest]`): decode its picture through the same
//! GStreamer path as a camera, detect, and check each required detection is there. `doctor`
//! runs it; a model that fails it is not taken into service.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use csb_wire::{BBox, Detection};
use thiserror::Error;

use crate::model::manifest::Expected;
use crate::model::{locate, Detector, DetectorError};
use crate::source::{self, Pacing, Pulled, Source, SourceError};

#[derive(Debug, Error)]
pub enum SelfTestError {
    #[error("model `{0}` has no [models.selftest] in its manifest entry")]
    None(String),
    #[error(
        "self-test image `{file}` not found. Looked in:{looked}\nFix: run `make setup` (copies it \
         into .cache/media), or put it beside the manifest"
    )]
    Image {
        file: String,
        looked: locate::Looked,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("self-test image {0}: no frame decoded")]
    NoFrame(PathBuf),
    #[error(transparent)]
    Detector(#[from] DetectorError),
}

/// What a self-test found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub image: PathBuf,
    /// Expectations not met, described ("bus >= 0.85 at [68,110,476,394]: best was truck 0.40").
    pub missing: Vec<String>,
    pub found: Vec<Detection>,
    pub infer_ms: f64,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Finds a self-test image: beside the manifest, then in the install's `.cache/media`.
pub fn image_path(models_dir: &Path, file: &str) -> Result<PathBuf, SelfTestError> {
    let mut c = vec![models_dir.join(file)];
    for r in locate::roots() {
        c.push(r.join(".cache/media").join(file));
    }
    match c.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(SelfTestError::Image {
            file: file.to_string(),
            looked: locate::Looked(c),
        }),
    }
}

/// Runs the self-test of `det`'s model.
pub fn run(det: &mut Detector) -> Result<Outcome, SelfTestError> {
    let spec = det
        .entry()
        .selftest
        .clone()
        .ok_or_else(|| SelfTestError::None(det.entry().name.clone()))?;
    let image = image_path(det.models_dir(), &spec.image)?;
    let uri = source::to_uri(&image.to_string_lossy())
        .map_err(|_| SelfTestError::NoFrame(image.clone()))?;
    let mut src = Source::open("selftest", &uri, det.input_size(), Pacing::EveryFrame)?;
    let frame = match src.next_frame(Duration::from_secs(10))? {
        Pulled::Frame(f) => f,
        Pulled::End => return Err(SelfTestError::NoFrame(image)),
    };
    drop(src);
    // The first run includes ONNX Runtime's own warm-up; the second is the figure to show.
    det.detect(&frame.scaled(), frame.src_width, frame.src_height)?;
    let t = Instant::now();
    let found = det.detect(&frame.scaled(), frame.src_width, frame.src_height)?;
    let infer_ms = t.elapsed().as_secs_f64() * 1000.0;
    let missing = check(&spec.expect, &found);
    Ok(Outcome {
        image,
        missing,
        found,
        infer_ms,
    })
}

/// Each expectation needs its own detection (one detection cannot satisfy two).
fn check(expect: &[Expected], found: &[Detection]) -> Vec<String> {
    let mut used = vec![false; found.len()];
    let mut missing = Vec::new();
    for x in expect {
        let want = BBox {
            x1: x.bbox[0],
            y1: x.bbox[1],
            x2: x.bbox[2],
            y2: x.bbox[3],
        };
        let hit = found.iter().enumerate().position(|(i, d)| {
            !used[i]
                && d.label == x.label
                && d.score >= x.min_score
                && d.bbox.iou(&want) >= x.min_iou
        });
        match hit {
            Some(i) => used[i] = true,
            None => {
                // What was there instead: the detection overlapping the box most.
                let best = found
                    .iter()
                    .map(|d| (d.bbox.iou(&want), d))
                    .filter(|(iou, _)| *iou >= x.min_iou)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, d)| format!("{} {:.2}", d.label, d.score))
                    .unwrap_or_else(|| "nothing there".into());
                missing.push(format!(
                    "{} >= {:.2} at [{:.0},{:.0},{:.0},{:.0}]: found {best}",
                    x.label, x.min_score, x.bbox[0], x.bbox[1], x.bbox[2], x.bbox[3]
                ));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(label: &str, score: f32, b: [f32; 4]) -> Detection {
        Detection {
            class_id: 0,
            label: label.into(),
            score,
            bbox: BBox {
                x1: b[0],
                y1: b[1],
                x2: b[2],
                y2: b[3],
            },
            track_id: None,
        }
    }

    fn want(label: &str, min_score: f32, b: [f32; 4]) -> Expected {
        Expected {
            label: label.into(),
            min_score,
            bbox: b,
            min_iou: 0.5,
        }
    }

    #[test]
    fn every_expectation_needs_its_own_matching_detection() {
        let found = [
            det("bus", 0.95, [68., 110., 476., 394.]),
            det("car", 0.86, [459., 279., 546., 389.]),
        ];
        assert!(check(&[want("bus", 0.85, [70., 112., 470., 390.])], &found).is_empty());
        // Two cars wanted in the same place: one detection answers only one of them.
        let two = [
            want("car", 0.7, [459., 279., 546., 389.]),
            want("car", 0.7, [459., 279., 546., 389.]),
        ];
        assert_eq!(check(&two, &found).len(), 1);
        // Wrong label (a shifted labels file) names what was found instead.
        let m = check(&[want("truck", 0.5, [68., 110., 476., 394.])], &found);
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("found bus 0.95"), "{m:?}");
        // Too weak, or elsewhere.
        assert_eq!(
            check(&[want("bus", 0.99, [68., 110., 476., 394.])], &found).len(),
            1
        );
        let m = check(&[want("bus", 0.5, [0., 0., 10., 10.])], &found);
        assert!(m[0].contains("nothing there"), "{m:?}");
    }
}
