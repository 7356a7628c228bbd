//! YOLOX pre- and post-processing, exactly as YOLOX's own demo does it: top-left letterbox with a
//! constant fill, grid decode over strides, score = objectness × class probability, per-class NMS.
//! Pure functions over slices so they are testable without a model.

use csb_wire::BBox;

use super::manifest::{ChannelOrder, InputSpec};

/// A frame already scaled (by GStreamer) to fit the model input, 3 bytes per pixel in BGR order.
#[derive(Debug, Clone, Copy)]
pub struct ScaledImage<'a> {
    pub data: &'a [u8],
    pub width: u32,
    pub height: u32,
    /// Bytes per row (GStreamer pads rows to 4 bytes).
    pub stride: usize,
}

/// Fills `out` (NCHW, len 3·H·W) from `img` pasted at the top-left, padding the rest.
/// `out` is reused across frames so steady state allocates nothing.
pub fn letterbox_into(img: &ScaledImage<'_>, spec: &InputSpec, out: &mut Vec<f32>) {
    let (w, h) = (spec.width as usize, spec.height as usize);
    let plane = w * h;
    out.clear();
    out.resize(3 * plane, spec.pad_value);
    let iw = (img.width as usize).min(w);
    let ih = (img.height as usize).min(h);
    // BGR input: channel c of the tensor takes byte `order[c]` of each pixel.
    let order = match spec.channel_order {
        ChannelOrder::Bgr => [0usize, 1, 2],
        ChannelOrder::Rgb => [2usize, 1, 0],
    };
    let (p0, rest) = out.split_at_mut(plane);
    let (p1, p2) = rest.split_at_mut(plane);
    for y in 0..ih {
        let row = &img.data[y * img.stride..y * img.stride + iw * 3];
        let base = y * w;
        for (x, px) in row.chunks_exact(3).enumerate() {
            p0[base + x] = px[order[0]] as f32 * spec.scale;
            p1[base + x] = px[order[1]] as f32 * spec.scale;
            p2[base + x] = px[order[2]] as f32 * spec.scale;
        }
    }
}

/// The scaled size YOLOX uses for a source of `src_w`×`src_h`: `int(side · r)` with
/// r = min(in_h/src_h, in_w/src_w) (truncation, as YOLOX's `preproc`).
pub fn scaled_size(src_w: u32, src_h: u32, in_w: u32, in_h: u32) -> (u32, u32, f32) {
    let r = (in_h as f32 / src_h as f32).min(in_w as f32 / src_w as f32);
    let w = ((src_w as f32 * r) as u32).clamp(1, in_w);
    let h = ((src_h as f32 * r) as u32).clamp(1, in_h);
    (w, h, r)
}

/// One raw detection before labels are attached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawDet {
    pub class_id: u32,
    pub score: f32,
    pub bbox: BBox,
}

/// Decodes the `[anchors, 5 + classes]` output into boxes in source pixels, keeping those with
/// score ≥ `score_thr`, then applies per-class NMS at `nms_iou`.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    out: &[f32],
    num_classes: usize,
    strides: &[u32],
    in_w: u32,
    in_h: u32,
    ratio: f32,
    src_w: u32,
    src_h: u32,
    score_thr: f32,
    nms_iou: f32,
) -> Vec<RawDet> {
    let row = 5 + num_classes;
    let mut dets = Vec::new();
    let mut i = 0usize;
    let (max_x, max_y) = (src_w as f32, src_h as f32);
    for &s in strides {
        let (gw, gh) = (in_w / s, in_h / s);
        for gy in 0..gh {
            for gx in 0..gw {
                let Some(a) = out.get(i * row..(i + 1) * row) else {
                    return nms(dets, nms_iou);
                };
                i += 1;
                let obj = a[4];
                // Cheap reject before the class argmax: score can't exceed obj.
                if obj < score_thr {
                    continue;
                }
                let (cls, prob) =
                    a[5..]
                        .iter()
                        .copied()
                        .enumerate()
                        .fold(
                            (0usize, f32::MIN),
                            |b, (c, p)| if p > b.1 { (c, p) } else { b },
                        );
                let score = obj * prob;
                if score < score_thr {
                    continue;
                }
                let sf = s as f32;
                let cx = (a[0] + gx as f32) * sf;
                let cy = (a[1] + gy as f32) * sf;
                let w = a[2].exp() * sf;
                let h = a[3].exp() * sf;
                let bbox = BBox {
                    x1: ((cx - w / 2.0) / ratio).clamp(0.0, max_x),
                    y1: ((cy - h / 2.0) / ratio).clamp(0.0, max_y),
                    x2: ((cx + w / 2.0) / ratio).clamp(0.0, max_x),
                    y2: ((cy + h / 2.0) / ratio).clamp(0.0, max_y),
                };
                if !(bbox.x2 > bbox.x1 && bbox.y2 > bbox.y1) {
                    continue;
                }
                dets.push(RawDet {
                    class_id: cls as u32,
                    score,
                    bbox,
                });
            }
        }
    }
    nms(dets, nms_iou)
}

/// Per-class greedy NMS; output sorted by score, highest first.
pub fn nms(mut dets: Vec<RawDet>, iou: f32) -> Vec<RawDet> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut keep: Vec<RawDet> = Vec::with_capacity(dets.len());
    for d in dets {
        let suppressed = keep
            .iter()
            .any(|k| k.class_id == d.class_id && k.bbox.iou(&d.bbox) > iou);
        if !suppressed {
            keep.push(d);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest::Layout;

    fn spec() -> InputSpec {
        InputSpec {
            name: "images".into(),
            width: 32,
            height: 32,
            layout: Layout::Nchw,
            channel_order: ChannelOrder::Bgr,
            scale: 1.0,
            pad_value: 114.0,
        }
    }

    #[test]
    fn scaled_size_truncates_like_yolox() {
        // vtest.avi 768x576 -> r = 416/768
        assert_eq!(scaled_size(768, 576, 416, 416).0, 416);
        assert_eq!(scaled_size(768, 576, 416, 416).1, 312);
        let (w, h, _) = scaled_size(1000, 667, 416, 416);
        assert_eq!((w, h), (416, 277));
    }

    #[test]
    fn letterbox_pastes_top_left_and_pads() {
        // 2x1 image, stride 8 (padded rows), pixels BGR (1,2,3) and (4,5,6).
        let data = [1u8, 2, 3, 4, 5, 6, 0, 0];
        let img = ScaledImage {
            data: &data,
            width: 2,
            height: 1,
            stride: 8,
        };
        let mut out = Vec::new();
        letterbox_into(&img, &spec(), &mut out);
        let plane = 32 * 32;
        assert_eq!(out.len(), 3 * plane);
        assert_eq!(&out[0..3], &[1.0, 4.0, 114.0]); // B plane
        assert_eq!(out[plane], 2.0); // G plane
        assert_eq!(out[2 * plane + 1], 6.0); // R plane
        assert_eq!(out[32], 114.0); // second row is padding
    }

    #[test]
    fn decode_places_box_in_source_pixels() {
        // Input 32x32, one stride of 16 -> 2x2 grid = 4 anchors, 2 classes.
        let nc = 2;
        let mut out = vec![0f32; 4 * (5 + nc)];
        // Anchor (gx=1, gy=0): cx = (0.5+1)*16 = 24, cy = 0.5*16 = 8, w = h = e^0*16 = 16.
        let a = &mut out[(5 + nc)..2 * (5 + nc)];
        a.copy_from_slice(&[0.5, 0.5, 0.0, 0.0, 0.9, 0.1, 0.8]);
        let dets = decode(&out, nc, &[16], 32, 32, 0.5, 64, 64, 0.3, 0.45);
        assert_eq!(dets.len(), 1);
        let d = dets[0];
        assert_eq!(d.class_id, 1);
        assert!((d.score - 0.72).abs() < 1e-6);
        // Source box = (16..32, 0..16) / 0.5
        assert_eq!(
            (d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2),
            (32.0, 0.0, 64.0, 32.0)
        );
    }

    #[test]
    fn nms_is_per_class() {
        let b = BBox {
            x1: 0.0,
            y1: 0.0,
            x2: 10.0,
            y2: 10.0,
        };
        let b2 = BBox { x1: 1.0, ..b };
        let dets = vec![
            RawDet {
                class_id: 0,
                score: 0.5,
                bbox: b2,
            },
            RawDet {
                class_id: 0,
                score: 0.9,
                bbox: b,
            },
            RawDet {
                class_id: 2,
                score: 0.6,
                bbox: b,
            },
        ];
        let kept = nms(dets, 0.45);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert_eq!(kept[1].class_id, 2);
    }
}
