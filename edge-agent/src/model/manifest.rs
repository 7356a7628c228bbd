//! The model manifest (`models/manifest.toml`): what each model file is, how to feed it and how to
//! read its output. The detector is built from this, not from constants.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("cannot read model manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model manifest {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("model manifest {path} has no model named `{name}` (it lists: {known})")]
    UnknownModel {
        path: PathBuf,
        name: String,
        known: String,
    },
    #[error("labels file {path} (model `{model}`): {reason}")]
    Labels {
        path: PathBuf,
        model: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub models: Vec<ModelEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    pub file: String,
    pub sha256: String,
    pub bytes: Option<u64>,
    pub license: Option<String>,
    pub origin: Option<String>,
    pub decoder: Decoder,
    /// Labels file, one label per line, relative to the manifest.
    pub labels: String,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// A picture with detections the model must give on it: `doctor` runs it, and a model is
    /// not taken into service without passing it.
    pub selftest: Option<SelfTest>,
}

/// The self-test of a model: an image and what must be found in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfTest {
    /// Image file, relative to the manifest (also looked for in the install's `.cache/media`).
    pub image: String,
    pub expect: Vec<Expected>,
}

// The input, output and self-test types are the wire's: the hub's model warehouse describes
// models with the same ones.
pub use csb_wire::model::{ChannelOrder, Decoder, Expected, InputSpec, Layout, OutputSpec};

impl Manifest {
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ManifestError> {
        let m: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        for e in &m.models {
            let bad = |message: String| ManifestError::Parse {
                path: path.to_path_buf(),
                message,
            };
            if e.input.width == 0 || e.input.height == 0 || e.input.width % 32 != 0 {
                return Err(bad(format!(
                    "model `{}`: input width/height must be positive multiples of 32",
                    e.name
                )));
            }
            if e.output.strides.is_empty() || e.output.strides.contains(&0) {
                return Err(bad(format!(
                    "model `{}`: output.strides must be non-zero",
                    e.name
                )));
            }
            if let Err(err) = csb_wire::model::check_decoder_io("output.", e.decoder, &e.output) {
                return Err(bad(format!("model `{}`: {err}", e.name)));
            }
            if e.sha256.len() != 64 || !e.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "model `{}`: sha256 must be 64 hex digits",
                    e.name
                )));
            }
            if let Some(t) = &e.selftest {
                if t.expect.is_empty() {
                    return Err(bad(format!(
                        "model `{}`: selftest.expect must list at least one detection",
                        e.name
                    )));
                }
                for (i, x) in t.expect.iter().enumerate() {
                    let [x1, y1, x2, y2] = x.bbox;
                    let sane = x1 < x2
                        && y1 < y2
                        && (0.0..=1.0).contains(&x.min_score)
                        && (0.0..=1.0).contains(&x.min_iou);
                    if !sane {
                        return Err(bad(format!(
                            "model `{}`: selftest.expect[{i}] needs box x1 < x2, y1 < y2 and min_score, min_iou in 0..=1",
                            e.name
                        )));
                    }
                }
            }
        }
        Ok(m)
    }

    pub fn get(&self, name: &str, path: &Path) -> Result<&ModelEntry, ManifestError> {
        self.models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| ManifestError::UnknownModel {
                path: path.to_path_buf(),
                name: name.to_string(),
                known: self
                    .models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl ModelEntry {
    /// Reads the labels file named by this entry, relative to `manifest_dir`.
    pub fn load_labels(&self, manifest_dir: &Path) -> Result<Vec<String>, ManifestError> {
        let path = manifest_dir.join(&self.labels);
        let text = std::fs::read_to_string(&path).map_err(|e| ManifestError::Labels {
            path: path.clone(),
            model: self.name.clone(),
            reason: e.to_string(),
        })?;
        let labels: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if labels.is_empty() {
            return Err(ManifestError::Labels {
                path,
                model: self.name.clone(),
                reason: "no labels".into(),
            });
        }
        Ok(labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_manifest() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/manifest.toml")
    }

    #[test]
    fn repo_manifest_parses_with_labels() {
        let p = repo_manifest();
        let m = Manifest::load(&p).unwrap();
        let e = m.get("yolox_nano", &p).unwrap();
        assert_eq!(e.input.width, 416);
        assert_eq!(e.output.strides, vec![8, 16, 32]);
        let labels = e.load_labels(p.parent().unwrap()).unwrap();
        assert_eq!(labels.len(), 80);
        assert_eq!(labels[0], "person");
        assert_eq!(labels[5], "bus");
        // The second kind of model: its own decoder, outputs and one non-COCO label.
        let e = m.get("centerface", &p).unwrap();
        assert_eq!(e.decoder, Decoder::Centerface);
        assert_eq!(e.output.strides, vec![4]);
        assert_eq!(e.output.scale.as_deref(), Some("538"));
        assert_eq!(e.output.offset.as_deref(), Some("539"));
        assert_eq!(e.load_labels(p.parent().unwrap()).unwrap(), vec!["face"]);
        assert_eq!(e.selftest.as_ref().unwrap().expect[0].label, "face");
    }

    #[test]
    fn centerface_without_its_outputs_is_refused() {
        let text = std::fs::read_to_string(repo_manifest()).unwrap();
        let text = text.replace("offset = \"539\"\n", "");
        let err = Manifest::parse(&text, Path::new("/x/manifest.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("centerface") && err.contains("output.offset"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_file_and_field() {
        let p = Path::new("/x/manifest.toml");
        let err = Manifest::parse("[[models]]\nname = 3\n", p)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/x/manifest.toml") && err.contains("name"),
            "{err}"
        );
        let text = std::fs::read_to_string(repo_manifest()).unwrap();
        let m = Manifest::parse(&text, p).unwrap();
        let err = m.get("nope", p).unwrap_err().to_string();
        assert!(err.contains("yolox_nano"), "{err}");
    }
}
