//! What a detection model is, as the hub's model warehouse registers it and agents run it: the
//! input it takes, how its output is decoded, its labels and its self-test. The edge agent's
//! local `models/manifest.toml` uses the same input, output and expectation types, so a model
//! registered at the hub and one installed by hand are described alike.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::payload::{field_err, PayloadError};

/// Most labels a model may have.
pub const MAX_LABELS: usize = 1000;
/// Most detections a self-test may require.
pub const MAX_EXPECT: usize = 64;
/// Largest model file the warehouse takes (bytes).
pub const MAX_MODEL_BYTES: u64 = 1 << 30;
/// Largest self-test image (bytes).
pub const MAX_IMAGE_BYTES: u64 = 16 << 20;

/// How a model's output is decoded into boxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decoder {
    /// YOLOX head: [1, anchors, 5 + classes], xy offsets, log wh, sigmoid obj and class probs.
    Yolox,
    /// CenterFace head (stride 4): sigmoid heatmap `[1, 1, H/4, W/4]` (`output.name`), log box
    /// size `[1, 2, H/4, W/4]` (`output.scale`, y then x) and centre offset `[1, 2, H/4, W/4]`
    /// (`output.offset`, y then x); one class.
    Centerface,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Nchw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelOrder {
    Bgr,
    Rgb,
}

/// The model's input tensor and how a frame is put into it (letterboxed, top-left).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Input tensor name in the ONNX graph.
    pub name: String,
    /// Input width in pixels (a positive multiple of 32).
    pub width: u32,
    /// Input height in pixels (a positive multiple of 32).
    pub height: u32,
    pub layout: Layout,
    pub channel_order: ChannelOrder,
    /// Pixel values are multiplied by this (1.0: raw 0..255).
    pub scale: f32,
    /// Fill value of the letterbox padding.
    pub pad_value: f32,
}

/// The model's output tensor and its decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Output tensor name in the ONNX graph.
    pub name: String,
    /// Feature map strides of the head, e.g. [8, 16, 32].
    pub strides: Vec<u32>,
    /// IoU above which non-maximum suppression drops the weaker box.
    pub nms_iou: f32,
    /// CenterFace: name of the box size (log scale) output; `name` is then the heatmap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<String>,
    /// CenterFace: name of the centre offset output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
}

/// One detection a self-test requires: this label, at least this score, overlapping this box
/// (source pixels) at IoU >= `min_iou`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub label: String,
    pub min_score: f32,
    /// `[x1, y1, x2, y2]` in the self-test image's pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    #[serde(default = "default_min_iou")]
    pub min_iou: f32,
}

fn default_min_iou() -> f32 {
    0.5
}

/// A model's self-test as the warehouse keeps it: the image is a file of the model's package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageSelfTest {
    /// sha256 of the self-test image (JPEG or PNG), 64 lowercase hex digits.
    pub image_sha256: String,
    /// Size of the self-test image in bytes.
    pub image_bytes: u64,
    /// The detections the model must give on it.
    pub expect: Vec<Expected>,
}

/// A model as the hub's warehouse registers it and pushes it to agents: everything an agent
/// needs to run it besides the files themselves (the ONNX file, the self-test image), which it
/// downloads and checks against `sha256` / `selftest.image_sha256`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// Model name, e.g. `yolox_nano` (letters, digits, `_`, `-`, `.`; 1–64).
    pub name: String,
    /// Version, e.g. `2026.12.1` (letters, digits, `_`, `-`, `.`; 1–32).
    pub version: String,
    pub decoder: Decoder,
    /// Class labels in the model's output order.
    pub labels: Vec<String>,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// sha256 of the ONNX file, 64 lowercase hex digits.
    pub sha256: String,
    /// Size of the ONNX file in bytes.
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Required: a model is not taken into service without passing it.
    pub selftest: PackageSelfTest,
}

/// Which model a device (or camera) runs, in events and status: name, version and the first
/// 12 hex digits of the file's sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelVersion {
    pub name: String,
    /// Absent for a model installed by hand (the local manifest has no versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub sha256: String,
}

/// Checks a name or version: 1..=`max` of letters, digits, `_`, `-`, `.`, not starting with `.`.
pub fn check_ident(field: &str, s: &str, max: usize) -> Result<(), PayloadError> {
    let ok = !s.is_empty()
        && s.len() <= max
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(field_err(
            field,
            format!("must be 1–{max} letters, digits, `_`, `-` or `.`, not starting with `.`"),
        ))
    }
}

fn check_sha(field: &str, s: &str) -> Result<(), PayloadError> {
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(field_err(field, "must be 64 lowercase hex digits"))
    }
}

/// Checks an input and output spec (field paths under `prefix`).
pub fn check_io(prefix: &str, input: &InputSpec, output: &OutputSpec) -> Result<(), PayloadError> {
    let f = |s: &str| format!("{prefix}{s}");
    for (name, v) in [("input.width", input.width), ("input.height", input.height)] {
        if v == 0 || v % 32 != 0 || v > 4096 {
            return Err(field_err(
                f(name),
                "must be a positive multiple of 32, at most 4096",
            ));
        }
    }
    let extra = [
        ("output.scale", &output.scale),
        ("output.offset", &output.offset),
    ];
    let names = [("input.name", &input.name), ("output.name", &output.name)]
        .into_iter()
        .chain(
            extra
                .iter()
                .filter_map(|(n, v)| v.as_ref().map(|v| (*n, v))),
        );
    for (name, v) in names {
        if v.is_empty() || v.len() > 128 {
            return Err(field_err(f(name), "must be 1–128 characters"));
        }
    }
    if !(input.scale.is_finite() && input.scale > 0.0) {
        return Err(field_err(f("input.scale"), "must be a positive number"));
    }
    if !input.pad_value.is_finite() {
        return Err(field_err(f("input.pad_value"), "must be a number"));
    }
    if output.strides.is_empty()
        || output.strides.len() > 8
        || output.strides.iter().any(|s| *s == 0 || *s > 256)
    {
        return Err(field_err(
            f("output.strides"),
            "must be 1–8 strides in 1..=256",
        ));
    }
    if !(0.0..=1.0).contains(&output.nms_iou) {
        return Err(field_err(f("output.nms_iou"), "must be in 0..=1"));
    }
    Ok(())
}

/// Checks that the output spec names what `decoder` reads (field paths under `prefix`): YOLOX
/// reads one output, CenterFace three (`output.name` the heatmap, `output.scale`,
/// `output.offset`) at a single stride.
pub fn check_decoder_io(
    prefix: &str,
    decoder: Decoder,
    output: &OutputSpec,
) -> Result<(), PayloadError> {
    let f = |s: &str| format!("{prefix}{s}");
    match decoder {
        Decoder::Yolox => {
            for (name, v) in [
                ("output.scale", &output.scale),
                ("output.offset", &output.offset),
            ] {
                if v.is_some() {
                    return Err(field_err(f(name), "is for the centerface decoder only"));
                }
            }
        }
        Decoder::Centerface => {
            for (name, v) in [
                ("output.scale", &output.scale),
                ("output.offset", &output.offset),
            ] {
                if v.is_none() {
                    return Err(field_err(
                        f(name),
                        "is required by the centerface decoder (the output's name)",
                    ));
                }
            }
            if output.strides.len() != 1 {
                return Err(field_err(
                    f("output.strides"),
                    "the centerface decoder has one stride (4)",
                ));
            }
        }
    }
    Ok(())
}

/// Checks a self-test's expectations (field paths under `prefix`).
pub fn check_expect(prefix: &str, expect: &[Expected]) -> Result<(), PayloadError> {
    if expect.is_empty() || expect.len() > MAX_EXPECT {
        return Err(field_err(
            format!("{prefix}expect"),
            format!("must list 1–{MAX_EXPECT} detections"),
        ));
    }
    for (i, x) in expect.iter().enumerate() {
        let [x1, y1, x2, y2] = x.bbox;
        let finite = x.bbox.iter().all(|v| v.is_finite());
        if !(finite && x1 < x2 && y1 < y2) {
            return Err(field_err(
                format!("{prefix}expect[{i}].box"),
                "needs x1 < x2 and y1 < y2",
            ));
        }
        for (name, v) in [("min_score", x.min_score), ("min_iou", x.min_iou)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(field_err(
                    format!("{prefix}expect[{i}].{name}"),
                    "must be in 0..=1",
                ));
            }
        }
        if x.label.is_empty() || x.label.len() > 64 {
            return Err(field_err(
                format!("{prefix}expect[{i}].label"),
                "must be 1–64 characters",
            ));
        }
    }
    Ok(())
}

impl ModelManifest {
    /// Every check the hub makes before registering and the agent before downloading; field
    /// paths from the manifest's root (`labels[3]`, `selftest.expect[0].label`).
    pub fn check(&self) -> Result<(), PayloadError> {
        check_ident("name", &self.name, 64)?;
        check_ident("version", &self.version, 32)?;
        if self.labels.is_empty() || self.labels.len() > MAX_LABELS {
            return Err(field_err(
                "labels",
                format!("must list 1–{MAX_LABELS} labels"),
            ));
        }
        for (i, l) in self.labels.iter().enumerate() {
            if l.trim().is_empty() || l.len() > 64 || l.contains(['\n', '\r']) {
                return Err(field_err(
                    format!("labels[{i}]"),
                    "must be 1–64 characters on one line",
                ));
            }
        }
        check_io("", &self.input, &self.output)?;
        check_decoder_io("", self.decoder, &self.output)?;
        check_sha("sha256", &self.sha256)?;
        if self.bytes == 0 || self.bytes > MAX_MODEL_BYTES {
            return Err(field_err("bytes", format!("must be 1..={MAX_MODEL_BYTES}")));
        }
        for (name, v) in [("license", &self.license), ("origin", &self.origin)] {
            if v.as_ref().is_some_and(|v| v.len() > 500) {
                return Err(field_err(name, "at most 500 characters"));
            }
        }
        check_sha("selftest.image_sha256", &self.selftest.image_sha256)?;
        if self.selftest.image_bytes == 0 || self.selftest.image_bytes > MAX_IMAGE_BYTES {
            return Err(field_err(
                "selftest.image_bytes",
                format!("must be 1..={MAX_IMAGE_BYTES}"),
            ));
        }
        check_expect("selftest.", &self.selftest.expect)?;
        for (i, x) in self.selftest.expect.iter().enumerate() {
            if !self.labels.contains(&x.label) {
                return Err(field_err(
                    format!("selftest.expect[{i}].label"),
                    format!("`{}` is not one of the model's labels", x.label),
                ));
            }
        }
        Ok(())
    }

    /// `name@version`, how logs and rollouts name a model.
    pub fn key(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> ModelManifest {
        ModelManifest {
            name: "yolox_nano".into(),
            version: "1.0.0".into(),
            decoder: Decoder::Yolox,
            labels: vec!["person".into(), "bus".into()],
            input: InputSpec {
                name: "images".into(),
                width: 416,
                height: 416,
                layout: Layout::Nchw,
                channel_order: ChannelOrder::Bgr,
                scale: 1.0,
                pad_value: 114.0,
            },
            output: OutputSpec {
                name: "output".into(),
                strides: vec![8, 16, 32],
                nms_iou: 0.45,
                scale: None,
                offset: None,
            },
            sha256: "a".repeat(64),
            bytes: 100,
            license: Some("Apache-2.0".into()),
            origin: None,
            selftest: PackageSelfTest {
                image_sha256: "b".repeat(64),
                image_bytes: 10,
                expect: vec![Expected {
                    label: "bus".into(),
                    min_score: 0.8,
                    bbox: [1.0, 2.0, 30.0, 40.0],
                    min_iou: 0.5,
                }],
            },
        }
    }

    fn field(e: PayloadError) -> String {
        match e {
            PayloadError::Field { field, .. } => field,
            other => panic!("not a field error: {other}"),
        }
    }

    #[test]
    fn sample_is_valid_and_errors_name_the_field() {
        sample().check().unwrap();
        let mut m = sample();
        m.version = "../x".into();
        assert_eq!(field(m.check().unwrap_err()), "version");
        let mut m = sample();
        m.selftest.expect[0].label = "train".into();
        assert_eq!(field(m.check().unwrap_err()), "selftest.expect[0].label");
        let mut m = sample();
        m.input.width = 100;
        assert_eq!(field(m.check().unwrap_err()), "input.width");
        let mut m = sample();
        m.sha256 = "A".repeat(64);
        assert_eq!(field(m.check().unwrap_err()), "sha256");
    }

    fn centerface() -> ModelManifest {
        let mut m = sample();
        m.name = "centerface".into();
        m.decoder = Decoder::Centerface;
        m.labels = vec!["face".into()];
        m.selftest.expect[0].label = "face".into();
        m.input.name = "input.1".into();
        m.input.channel_order = ChannelOrder::Rgb;
        m.output = OutputSpec {
            name: "537".into(),
            strides: vec![4],
            nms_iou: 0.3,
            scale: Some("538".into()),
            offset: Some("539".into()),
        };
        m
    }

    #[test]
    fn centerface_needs_its_three_outputs() {
        centerface().check().unwrap();
        let mut m = centerface();
        m.output.offset = None;
        assert_eq!(field(m.check().unwrap_err()), "output.offset");
        let mut m = centerface();
        m.output.scale = Some(String::new());
        assert_eq!(field(m.check().unwrap_err()), "output.scale");
        let mut m = centerface();
        m.output.strides = vec![4, 8];
        assert_eq!(field(m.check().unwrap_err()), "output.strides");
        // YOLOX reads one output: extra names are a mistake, not silently ignored.
        let mut m = sample();
        m.output.scale = Some("538".into());
        assert_eq!(field(m.check().unwrap_err()), "output.scale");
        // Manifests written before the CenterFace fields still parse, and YOLOX ones serialize
        // without them.
        let json = serde_json::to_value(sample()).unwrap();
        assert!(json["output"].get("scale").is_none(), "{json}");
        let back: ModelManifest = serde_json::from_value(json).unwrap();
        assert_eq!(back, sample());
        let json = serde_json::to_string(&centerface()).unwrap();
        assert!(json.contains(r#""decoder":"centerface""#), "{json}");
    }
}
