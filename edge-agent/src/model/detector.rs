//! An object detector: one ONNX Runtime session plus the manifest entry that says how to feed it
//! and read it back.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use csb_wire::{BBox, Detection, ModelRef};
use ort::session::Session;
use ort::value::TensorRef;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::centerface;
use super::locate::{self, LocateError};
use super::manifest::{Decoder, Manifest, ManifestError, ModelEntry};
use super::yolox::{self, RawDet, ScaledImage};

#[derive(Debug, Error)]
pub enum DetectorError {
    #[error(transparent)]
    Locate(#[from] LocateError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Runtime { path: PathBuf, message: String },
    #[error(
        "ONNX Runtime {found} at {path} is too old: this agent needs 1.{need} or newer (its C API \
         version {need}). Fix: run `make setup` (installs the pinned runtime into \
         .cache/onnxruntime/) or point ORT_DYLIB_PATH / [model] ort_library at a newer one"
    )]
    RuntimeVersion {
        path: PathBuf,
        found: String,
        need: u32,
    },
    #[error("cannot read model file {path}: {source}")]
    ReadModel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open model {path} in ONNX Runtime: {message}")]
    Session { path: PathBuf, message: String },
    #[error("model {path} does not match its manifest entry `{model}`: {reason}")]
    Mismatch {
        path: PathBuf,
        model: String,
        reason: String,
    },
    #[error("inference failed (model `{model}`): {message}")]
    Inference { model: String, message: String },
}

/// How to build a detector; every path is optional and found by [`locate`] when absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorOptions {
    /// Model name in the manifest.
    pub name: String,
    /// Model file; default: the manifest's `file` in the models folder.
    pub path: Option<PathBuf>,
    /// Folder with `manifest.toml` and the labels files.
    pub models_dir: Option<PathBuf>,
    /// `libonnxruntime.so`; default: ORT_DYLIB_PATH, the setup cache, system folders.
    pub ort_library: Option<PathBuf>,
    /// ONNX Runtime intra-op threads. On a 2-core gateway the decoder needs some CPU too.
    pub intra_threads: usize,
    /// Busy-wait between ops: faster alone, but steals CPU from decoding in a full pipeline.
    pub intra_op_spinning: bool,
    /// Minimum score (objectness × class probability) to report.
    pub score_threshold: f32,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            name: "yolox_nano".into(),
            path: None,
            models_dir: None,
            ort_library: None,
            intra_threads: 2,
            intra_op_spinning: false,
            score_threshold: 0.3,
        }
    }
}

/// Why loading the runtime failed, kept for later callers.
#[derive(Debug, Clone)]
enum LoadFailure {
    /// The library is an ONNX Runtime without our API version.
    TooOld(String),
    Other(String),
}

/// ONNX Runtime is loaded once per process; later callers share the environment.
static ORT_ENV: OnceLock<Result<(PathBuf, ort::environment::Environment), LoadFailure>> =
    OnceLock::new();

fn environment(explicit: Option<&Path>) -> Result<ort::environment::Environment, DetectorError> {
    let lib = locate::ort_library(explicit)?;
    let res = ORT_ENV.get_or_init(|| {
        match super::runtime::probe(&lib) {
            Ok(info) if !info.supported => return Err(LoadFailure::TooOld(info.version)),
            Ok(_) => {}
            Err(e) => return Err(LoadFailure::Other(e)),
        }
        ort::init_from(&lib)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                b.with_name("edge-agent")
                    .with_telemetry(false)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .map(|e| (lib.clone(), e))
            .map_err(LoadFailure::Other)
    });
    match res {
        Ok((_, env)) => Ok(env.clone()),
        Err(LoadFailure::TooOld(found)) => Err(DetectorError::RuntimeVersion {
            path: lib,
            found: found.clone(),
            need: super::runtime::API_VERSION,
        }),
        Err(LoadFailure::Other(message)) => Err(DetectorError::Runtime {
            path: lib,
            message: message.clone(),
        }),
    }
}

pub fn sha256_file(path: &Path) -> Result<String, std::io::Error> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The graph outputs `entry`'s decoder reads, in the order [`Detector::infer`] returns them.
fn output_names(entry: &ModelEntry) -> Vec<&str> {
    let o = &entry.output;
    match entry.decoder {
        Decoder::Yolox => vec![o.name.as_str()],
        Decoder::Centerface => [Some(&o.name), o.scale.as_ref(), o.offset.as_ref()]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect(),
    }
}

pub struct Detector {
    session: Session,
    entry: ModelEntry,
    labels: Vec<String>,
    model_ref: ModelRef,
    model_path: PathBuf,
    models_dir: PathBuf,
    score_threshold: f32,
    input: Vec<f32>,
}

impl Detector {
    pub fn load(opts: &DetectorOptions) -> Result<Self, DetectorError> {
        let models_dir = locate::models_dir(opts.models_dir.as_deref())?;
        let manifest_path = models_dir.join("manifest.toml");
        let manifest = Manifest::load(&manifest_path)?;
        let entry = manifest.get(&opts.name, &manifest_path)?.clone();
        let labels = entry.load_labels(&models_dir)?;
        let path = locate::model_file(opts.path.as_deref(), &models_dir, &entry.file)?;

        let sha = sha256_file(&path).map_err(|source| DetectorError::ReadModel {
            path: path.clone(),
            source,
        })?;
        if sha != entry.sha256 {
            // A re-export of the same model differs byte-wise; behaviour, not bytes, is what
            // matters, so warn instead of refusing.
            tracing::warn!(model = %entry.name, file = %path.display(), expected = %entry.sha256, found = %sha,
                "model file sha256 differs from the manifest");
        }

        let env = environment(opts.ort_library.as_deref())?;
        let session_err =
            |e: ort::Error<ort::session::builder::SessionBuilder>| DetectorError::Session {
                path: path.clone(),
                message: e.to_string(),
            };
        let session = Session::builder(&env)
            .map_err(|e| DetectorError::Session {
                path: path.clone(),
                message: e.to_string(),
            })?
            .with_intra_threads(opts.intra_threads.max(1))
            .map_err(session_err)?
            .with_inter_threads(1)
            .map_err(session_err)?
            .with_intra_op_spinning(opts.intra_op_spinning)
            .map_err(session_err)?
            .commit_from_file(&path)
            .map_err(|e| DetectorError::Session {
                path: path.clone(),
                message: e.to_string(),
            })?;

        let mismatch = |reason: String| DetectorError::Mismatch {
            path: path.clone(),
            model: entry.name.clone(),
            reason,
        };
        if !session
            .inputs()
            .iter()
            .any(|i| i.name() == entry.input.name)
        {
            return Err(mismatch(format!("no input named `{}`", entry.input.name)));
        }
        for name in output_names(&entry) {
            if !session.outputs().iter().any(|o| o.name() == name) {
                return Err(mismatch(format!("no output named `{name}`")));
            }
        }
        if let Err(e) = csb_wire::model::check_decoder_io("output.", entry.decoder, &entry.output) {
            return Err(mismatch(e.to_string()));
        }

        let model_ref = ModelRef {
            name: entry.name.clone(),
            sha256: sha[..12].to_string(),
        };
        Ok(Detector {
            session,
            labels,
            model_ref,
            model_path: path,
            models_dir,
            score_threshold: opts.score_threshold,
            input: Vec::new(),
            entry,
        })
    }

    /// The model input size (width, height) that frames must be scaled to fit.
    pub fn input_size(&self) -> (u32, u32) {
        (self.entry.input.width, self.entry.input.height)
    }

    pub fn model_ref(&self) -> &ModelRef {
        &self.model_ref
    }

    /// The manifest entry this detector was built from.
    pub fn entry(&self) -> &ModelEntry {
        &self.entry
    }

    /// The folder of the manifest (labels and self-test images are relative to it).
    pub fn models_dir(&self) -> &Path {
        &self.models_dir
    }

    pub fn model_path(&self) -> &Path {
        &self.model_path
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Builds the input tensor for a scaled frame (exposed so benchmarks can pre-build inputs).
    pub fn preprocess(&self, img: &ScaledImage<'_>, out: &mut Vec<f32>) {
        match self.entry.decoder {
            // Both take the frame letterboxed top-left (how the camera thread scales it); the
            // channel order, scale and padding are the manifest's.
            Decoder::Yolox | Decoder::Centerface => {
                yolox::letterbox_into(img, &self.entry.input, out)
            }
        }
    }

    /// Runs the model on a prepared input tensor and returns the raw output values (for a model
    /// with several outputs, those its decoder reads, one after another).
    pub fn infer(&mut self, input: &[f32]) -> Result<Vec<f32>, DetectorError> {
        let (w, h) = self.input_size();
        let err = |e: ort::Error| DetectorError::Inference {
            model: self.entry.name.clone(),
            message: e.to_string(),
        };
        let tensor = TensorRef::from_array_view(([1usize, 3, h as usize, w as usize], input))
            .map_err(err)?;
        let outputs = self
            .session
            .run(ort::inputs![self.entry.input.name.as_str() => tensor])
            .map_err(|e| DetectorError::Inference {
                model: self.entry.name.clone(),
                message: e.to_string(),
            })?;
        // YOLOX: its one output. CenterFace: heatmap, scale and offset, one after another, each
        // checked to be the size the input gives (so `postprocess` can split them).
        let mut all = Vec::new();
        for (k, name) in output_names(&self.entry).into_iter().enumerate() {
            let value = outputs.get(name).ok_or_else(|| DetectorError::Inference {
                model: self.entry.name.clone(),
                message: format!("no output `{name}`"),
            })?;
            let (_, data) =
                value
                    .try_extract_tensor::<f32>()
                    .map_err(|e| DetectorError::Inference {
                        model: self.entry.name.clone(),
                        message: e.to_string(),
                    })?;
            if self.entry.decoder == Decoder::Yolox {
                return Ok(data.to_vec());
            }
            let want = centerface::lens(w, h, self.entry.output.strides[0])[k];
            if data.len() != want {
                return Err(DetectorError::Inference {
                    model: self.entry.name.clone(),
                    message: format!(
                        "output `{name}` has {} values, expected {want} for a {w}x{h} input",
                        data.len()
                    ),
                });
            }
            all.extend_from_slice(data);
        }
        Ok(all)
    }

    /// Decodes raw output for a source frame of `src_w`×`src_h`.
    pub fn postprocess(&self, out: &[f32], src_w: u32, src_h: u32) -> Vec<Detection> {
        let (w, h) = self.input_size();
        let (_, _, ratio) = yolox::scaled_size(src_w, src_h, w, h);
        let raw = match self.entry.decoder {
            Decoder::Yolox => yolox::decode(
                out,
                self.labels.len(),
                &self.entry.output.strides,
                w,
                h,
                ratio,
                src_w,
                src_h,
                self.score_threshold,
                self.entry.output.nms_iou,
            ),
            Decoder::Centerface => {
                let stride = self.entry.output.strides[0];
                match centerface::split(out, w, h, stride) {
                    Some(heads) => centerface::decode(
                        &heads,
                        w,
                        h,
                        stride,
                        ratio,
                        src_w,
                        src_h,
                        self.score_threshold,
                        self.entry.output.nms_iou,
                    ),
                    None => {
                        tracing::warn!(model = %self.entry.name, values = out.len(),
                            "centerface output does not fit the input size; no detections");
                        Vec::new()
                    }
                }
            }
        };
        raw.into_iter().map(|d| self.label(d)).collect()
    }

    fn label(&self, d: RawDet) -> Detection {
        let label = self
            .labels
            .get(d.class_id as usize)
            .cloned()
            .unwrap_or_else(|| format!("class_{}", d.class_id));
        let r = |v: f32| (v * 10.0).round() / 10.0;
        Detection {
            class_id: d.class_id,
            label,
            score: (d.score * 1000.0).round() / 1000.0,
            bbox: BBox {
                x1: r(d.bbox.x1),
                y1: r(d.bbox.y1),
                x2: r(d.bbox.x2),
                y2: r(d.bbox.y2),
            },
            track_id: None,
        }
    }

    /// Full detection on one scaled frame: preprocess → infer → postprocess.
    pub fn detect(
        &mut self,
        img: &ScaledImage<'_>,
        src_w: u32,
        src_h: u32,
    ) -> Result<Vec<Detection>, DetectorError> {
        let mut input = std::mem::take(&mut self.input);
        self.preprocess(img, &mut input);
        let out = self.infer(&input);
        self.input = input;
        Ok(self.postprocess(&out?, src_w, src_h))
    }
}
