//! OpenCV glue: wrapping frame bytes as `Mat`s without copying, motion gating on a small grey
//! image, and evidence snapshots (boxes, track ids and zone outlines drawn, JPEG-encoded).

use opencv::core::{self, Mat, Point, Rect, Scalar, Size, Vector};
use opencv::prelude::*;
use opencv::{imgcodecs, imgproc};
use serde::Deserialize;
use thiserror::Error;

use csb_wire::Detection;

#[derive(Debug, Error)]
pub enum VisionError {
    #[error("OpenCV: {0}")]
    OpenCv(#[from] opencv::Error),
    #[error("frame buffer of {len} bytes is too small for {width}x{height} with stride {stride}")]
    ShortBuffer {
        len: usize,
        width: u32,
        height: u32,
        stride: usize,
    },
}

/// Runs `f` on a BGR `Mat` that borrows `data` (rows `stride` bytes apart). The Mat never
/// outlives the call, which is what makes borrowing the bytes sound.
pub fn with_bgr_mat<R>(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    f: impl FnOnce(&Mat) -> Result<R, VisionError>,
) -> Result<R, VisionError> {
    if width == 0
        || height == 0
        || stride < width as usize * 3
        || data.len() < stride * height as usize
    {
        return Err(VisionError::ShortBuffer {
            len: data.len(),
            width,
            height,
            stride,
        });
    }
    // SAFETY: the buffer covers height rows of `stride` bytes (checked above); OpenCV only reads
    // it through the Mat, which is dropped before this function returns.
    let mat = unsafe {
        Mat::new_rows_cols_with_data_unsafe(
            height as i32,
            width as i32,
            core::CV_8UC3,
            data.as_ptr() as *mut std::ffi::c_void,
            stride,
        )?
    };
    f(&mat)
}

/// Motion gating settings, per camera.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MotionConfig {
    /// Off: every frame goes to the detector.
    pub enabled: bool,
    /// Width of the grey thumbnail compared between frames (height keeps the aspect).
    pub thumb_width: u32,
    /// Grey-level difference (0..255) that counts a thumbnail pixel as changed.
    pub pixel_threshold: u8,
    /// Share of changed pixels that counts as motion.
    pub min_changed_ratio: f32,
    /// Run the detector at least this often even without motion, so stationary objects (a parked
    /// car) stay confirmed and their tracks do not expire.
    pub keepalive_ms: u64,
    /// Upper bound on detection rate for this camera (frames/s); 0 = unlimited.
    pub max_detect_fps: f32,
}

impl Default for MotionConfig {
    fn default() -> Self {
        MotionConfig {
            enabled: true,
            thumb_width: 64,
            pixel_threshold: 20,
            min_changed_ratio: 0.002,
            keepalive_ms: 1000,
            max_detect_fps: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateDecision {
    /// Run the detector on this frame.
    Detect,
    /// Skip inference; tracks coast.
    Skip,
}

/// The gate's view of a frame: `width` px wide (aspect kept), grey, lightly blurred so sensor
/// noise and compression artefacts do not count as motion.
pub fn grey_thumbnail(bgr: &Mat, width: u32) -> Result<Mat, VisionError> {
    let w = width.max(8) as i32;
    let h = ((bgr.rows() as f32 / bgr.cols().max(1) as f32) * w as f32)
        .round()
        .max(4.0) as i32;
    let mut small = Mat::default();
    imgproc::resize(
        bgr,
        &mut small,
        Size::new(w, h),
        0.0,
        0.0,
        imgproc::INTER_AREA,
    )?;
    let mut grey = Mat::default();
    imgproc::cvt_color_def(&small, &mut grey, imgproc::COLOR_BGR2GRAY)?;
    let mut blurred = Mat::default();
    imgproc::gaussian_blur_def(&grey, &mut blurred, Size::new(3, 3), 0.0)?;
    Ok(blurred)
}

/// Share of pixels of two thumbnails differing by more than `pixel_threshold`; None when their
/// sizes differ (resolution changed).
pub fn changed_share(a: &Mat, b: &Mat, pixel_threshold: u8) -> Result<Option<f32>, VisionError> {
    if a.size()? != b.size()? {
        return Ok(None);
    }
    let mut diff = Mat::default();
    core::absdiff(a, b, &mut diff)?;
    let mut mask = Mat::default();
    imgproc::threshold(
        &diff,
        &mut mask,
        pixel_threshold as f64,
        255.0,
        imgproc::THRESH_BINARY,
    )?;
    let changed = core::count_non_zero(&mask)? as f32;
    Ok(Some(changed / (b.rows() * b.cols()).max(1) as f32))
}

/// Decides per frame whether inference is needed, comparing a small grey thumbnail with the one
/// of the last frame that was detected (not merely the previous frame, so slow changes add up).
pub struct MotionGate {
    cfg: MotionConfig,
    reference: Option<Mat>,
    last_detect_ms: Option<i64>,
    pub detected: u64,
    pub skipped: u64,
}

impl MotionGate {
    pub fn new(cfg: MotionConfig) -> Self {
        MotionGate {
            cfg,
            reference: None,
            last_detect_ms: None,
            detected: 0,
            skipped: 0,
        }
    }

    fn thumbnail(&self, bgr: &Mat) -> Result<Mat, VisionError> {
        grey_thumbnail(bgr, self.cfg.thumb_width)
    }

    /// Share of thumbnail pixels that changed against the reference (1.0 when there is none).
    fn changed_ratio(&self, thumb: &Mat) -> Result<f32, VisionError> {
        let Some(reference) = &self.reference else {
            return Ok(1.0);
        };
        Ok(changed_share(reference, thumb, self.cfg.pixel_threshold)?.unwrap_or(1.0))
    }

    pub fn decide(&mut self, bgr: &Mat, ts_ms: i64) -> Result<GateDecision, VisionError> {
        let since = self.last_detect_ms.map(|t| ts_ms.saturating_sub(t));
        if self.cfg.max_detect_fps > 0.0 {
            let min_gap = (1000.0 / self.cfg.max_detect_fps) as i64;
            if since.is_some_and(|s| s < min_gap) {
                self.skipped += 1;
                return Ok(GateDecision::Skip);
            }
        }
        let decision = if !self.cfg.enabled {
            GateDecision::Detect
        } else {
            let thumb = self.thumbnail(bgr)?;
            let moved = self.changed_ratio(&thumb)? >= self.cfg.min_changed_ratio;
            let stale = since.is_none_or(|s| s >= self.cfg.keepalive_ms as i64);
            if moved || stale {
                self.reference = Some(thumb);
                GateDecision::Detect
            } else {
                GateDecision::Skip
            }
        };
        match decision {
            GateDecision::Detect => {
                self.last_detect_ms = Some(ts_ms);
                self.detected += 1;
            }
            GateDecision::Skip => self.skipped += 1,
        }
        Ok(decision)
    }
}

/// `bgr` resized to `w`×`h` (bilinear), as tightly packed BGR bytes: a full frame made into the
/// detector's input when a picture and its detections must come from the same frame.
pub fn resize_bgr(bgr: &Mat, w: u32, h: u32) -> Result<Vec<u8>, VisionError> {
    let mut small = Mat::default();
    imgproc::resize(
        bgr,
        &mut small,
        Size::new(w as i32, h as i32),
        0.0,
        0.0,
        imgproc::INTER_LINEAR,
    )?;
    Ok(small.data_bytes()?.to_vec())
}

/// Where a label of `text` starting at `p` fits inside the picture.
fn fit_label(img: &Mat, text: &str, p: Point, scale: f64) -> Point {
    let mut base = 0;
    let size = imgproc::get_text_size(text, imgproc::FONT_HERSHEY_SIMPLEX, scale, 1, &mut base)
        .unwrap_or_default();
    Point::new(
        p.x.clamp(2, (img.cols() - size.width - 2).max(2)),
        p.y.clamp(
            size.height + 24,
            (img.rows() - base - 2).max(size.height + 24),
        ),
    )
}

/// A polygon to outline on a snapshot, in source pixels.
#[derive(Debug, Clone)]
pub struct Outline {
    pub label: String,
    pub points: Vec<(f32, f32)>,
}

/// Colour per class, BGR, stable so operators learn them.
fn colour(class_id: u32) -> Scalar {
    const PALETTE: [(f64, f64, f64); 6] = [
        (0.0, 0.0, 255.0),
        (0.0, 200.0, 255.0),
        (255.0, 128.0, 0.0),
        (0.0, 255.0, 0.0),
        (255.0, 0.0, 255.0),
        (128.0, 0.0, 255.0),
    ];
    let (b, g, r) = PALETTE[class_id as usize % PALETTE.len()];
    Scalar::new(b, g, r, 0.0)
}

/// Draws boxes (with label, score and track id), zone outlines and a caption on a copy of the
/// frame and returns it as JPEG bytes.
pub fn render_snapshot(
    frame: &Mat,
    objects: &[Detection],
    outlines: &[Outline],
    caption: &str,
    quality: i32,
) -> Result<Vec<u8>, VisionError> {
    let mut img = frame.try_clone()?;
    let font = imgproc::FONT_HERSHEY_SIMPLEX;
    // Cyan outlines: no class colour uses it, so zones never read as detections.
    let outline = Scalar::new(255.0, 255.0, 0.0, 0.0);
    for z in outlines {
        let pts: Vector<Point> = z
            .points
            .iter()
            .map(|&(x, y)| Point::new(x as i32, y as i32))
            .collect();
        let mut polys: Vector<Vector<Point>> = Vector::new();
        polys.push(pts.clone());
        imgproc::polylines(&mut img, &polys, true, outline, 2, imgproc::LINE_AA, 0)?;
        if let Some(p) = pts.iter().next() {
            let at = fit_label(&img, &z.label, Point::new(p.x + 4, p.y + 16), 0.5);
            imgproc::put_text(
                &mut img,
                &z.label,
                at,
                font,
                0.5,
                outline,
                1,
                imgproc::LINE_AA,
                false,
            )?;
        }
    }
    for o in objects {
        let c = colour(o.class_id);
        let r = Rect::new(
            o.bbox.x1 as i32,
            o.bbox.y1 as i32,
            (o.bbox.x2 - o.bbox.x1).max(1.0) as i32,
            (o.bbox.y2 - o.bbox.y1).max(1.0) as i32,
        );
        imgproc::rectangle(&mut img, r, c, 2, imgproc::LINE_8, 0)?;
        let text = match o.track_id {
            Some(id) => format!("#{id} {} {:.2}", o.label, o.score),
            None => format!("{} {:.2}", o.label, o.score),
        };
        // Above the box, or below it when the box touches the caption band at the top.
        let y = if r.y > 40 {
            r.y - 4
        } else {
            r.y + r.height + 14
        };
        imgproc::put_text(
            &mut img,
            &text,
            Point::new(r.x, y),
            font,
            0.45,
            c,
            1,
            imgproc::LINE_AA,
            false,
        )?;
    }
    // Caption on a dark band so it is readable on any background.
    let band = Rect::new(0, 0, img.cols(), 22);
    imgproc::rectangle(
        &mut img,
        band,
        Scalar::new(0.0, 0.0, 0.0, 0.0),
        imgproc::FILLED,
        imgproc::LINE_8,
        0,
    )?;
    imgproc::put_text(
        &mut img,
        caption,
        Point::new(6, 16),
        font,
        0.5,
        Scalar::all(255.0),
        1,
        imgproc::LINE_AA,
        false,
    )?;
    let mut buf = Vector::<u8>::new();
    let params =
        Vector::<i32>::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, quality.clamp(10, 100)]);
    imgcodecs::imencode(".jpg", &img, &mut buf, &params)?;
    Ok(buf.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use csb_wire::BBox;

    fn frame(h: u32, stride: usize, fill: u8) -> Vec<u8> {
        vec![fill; stride * h as usize]
    }

    #[test]
    fn short_buffer_is_an_error_not_a_crash() {
        let data = vec![0u8; 10];
        let r = with_bgr_mat(&data, 4, 4, 12, |_| Ok(()));
        assert!(matches!(r, Err(VisionError::ShortBuffer { .. })));
    }

    #[test]
    fn gate_skips_still_frames_detects_motion_and_keeps_alive() {
        let (w, h, stride) = (160u32, 120u32, 480usize);
        let still = frame(h, stride, 100);
        let mut moved = still.clone();
        // A bright 30x30 square appears: ~4.7 % of the picture.
        for y in 40..70 {
            for x in 60..90 {
                let i = y * stride + x * 3;
                moved[i..i + 3].copy_from_slice(&[250, 250, 250]);
            }
        }
        let mut gate = MotionGate::new(MotionConfig::default());
        let d = |g: &mut MotionGate, data: &[u8], ts| {
            with_bgr_mat(data, w, h, stride, |m| g.decide(m, ts)).unwrap()
        };
        assert_eq!(
            d(&mut gate, &still, 0),
            GateDecision::Detect,
            "first frame is always detected"
        );
        assert_eq!(d(&mut gate, &still, 100), GateDecision::Skip);
        assert_eq!(d(&mut gate, &still, 200), GateDecision::Skip);
        assert_eq!(d(&mut gate, &moved, 300), GateDecision::Detect);
        assert_eq!(
            d(&mut gate, &moved, 400),
            GateDecision::Skip,
            "compared with the last detected frame"
        );
        assert_eq!(
            d(&mut gate, &moved, 1300),
            GateDecision::Detect,
            "keep-alive after 1 s"
        );
        assert_eq!((gate.detected, gate.skipped), (3, 3));
    }

    #[test]
    fn fps_cap_limits_detection() {
        let (w, h, stride) = (64u32, 48u32, 192usize);
        let cfg = MotionConfig {
            enabled: false,
            max_detect_fps: 2.0,
            ..MotionConfig::default()
        };
        let mut gate = MotionGate::new(cfg);
        let data = frame(h, stride, 0);
        let n = (0..10)
            .filter(|i| {
                with_bgr_mat(&data, w, h, stride, |m| gate.decide(m, i * 100)).unwrap()
                    == GateDecision::Detect
            })
            .count();
        assert_eq!(n, 2, "10 frames over 1 s at max 2 detections/s");
    }

    #[test]
    fn snapshot_is_a_jpeg_with_the_box_drawn() {
        let (w, h, stride) = (200u32, 100u32, 600usize);
        let data = frame(h, stride, 0);
        let obj = Detection {
            class_id: 0,
            label: "person".into(),
            score: 0.9,
            bbox: BBox {
                x1: 50.0,
                y1: 30.0,
                x2: 100.0,
                y2: 90.0,
            },
            track_id: Some(7),
        };
        let zone = Outline {
            label: "zone".into(),
            points: vec![(10.0, 10.0), (190.0, 10.0), (190.0, 95.0)],
        };
        let jpeg = with_bgr_mat(&data, w, h, stride, |m| {
            render_snapshot(m, &[obj], &[zone], "test", 90)
        })
        .unwrap();
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "JPEG magic");
        let decoded =
            imgcodecs::imdecode(&Vector::<u8>::from_slice(&jpeg), imgcodecs::IMREAD_COLOR).unwrap();
        assert_eq!((decoded.cols(), decoded.rows()), (200, 100));
        // The box's left edge is drawn in red (BGR 0,0,255) on the black frame.
        let px = decoded.at_2d::<core::Vec3b>(60, 50).unwrap();
        assert!(px[2] > 150 && px[0] < 100, "box edge pixel {px:?}");
        // Inside the box stays black.
        let inside = decoded.at_2d::<core::Vec3b>(60, 75).unwrap();
        assert!(inside[2] < 60, "inside pixel {inside:?}");
    }
}
