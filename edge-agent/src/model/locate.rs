//! Finding the ONNX Runtime library, the model manifest and model files without extra environment.
//! Every "not found" error lists each place that was tried and how to fix it, because a field
//! technician at a gateway has no other way to see where the binary looked.

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Where a search looked, for error messages.
#[derive(Debug, Clone, Default)]
pub struct Looked(pub Vec<PathBuf>);

impl fmt::Display for Looked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            write!(f, "\n  - {}", p.display())?;
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum LocateError {
    #[error(
        "ONNX Runtime library not found. Looked in:{looked}\nFix: run `make setup` in the repository \
         (it installs the pinned onnxruntime wheel's library into .cache/onnxruntime/), or set \
         ORT_DYLIB_PATH (or [model] ort_library in the config, or --ort-lib) to a libonnxruntime.so"
    )]
    OrtLibrary { looked: Looked },
    #[error(
        "model manifest not found. Looked in:{looked}\nFix: run from the repository, set CSB_MODELS_DIR \
         to a folder holding manifest.toml, or pass --models-dir"
    )]
    Manifest { looked: Looked },
    #[error(
        "model file `{file}` not found. Looked in:{looked}\nFix: run `make setup` (copies it from \
         ../shared/models or MODEL_SRC), or pass --model PATH"
    )]
    Model { file: String, looked: Looked },
}

/// Folders that may be the repository or install root: the current directory and the binary's
/// folder, each with their ancestors (target/release/edge-agent → repo root), plus `CSB_HOME`.
pub fn roots() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(h) = std::env::var_os("CSB_HOME") {
        out.push(PathBuf::from(h));
    }
    let starts = [
        std::env::current_dir().ok(),
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf)),
    ];
    for start in starts.into_iter().flatten() {
        for a in start.ancestors().take(5) {
            if a.join("models/manifest.toml").is_file() && !out.iter().any(|o| o == a) {
                out.push(a.to_path_buf());
            }
        }
    }
    out
}

fn first_existing(candidates: Vec<PathBuf>) -> Result<PathBuf, Looked> {
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(Looked(candidates)),
    }
}

/// The ONNX Runtime shared library: explicit path, `ORT_DYLIB_PATH`, the setup step's cache, next
/// to the binary, then system library folders.
pub fn ort_library(explicit: Option<&Path>) -> Result<PathBuf, LocateError> {
    let mut c = Vec::new();
    // A path the user named (flag, config or ORT_DYLIB_PATH) is the only candidate: falling
    // back silently would run another runtime than the one asked for.
    if let Some(p) = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
    {
        c.push(p);
    } else {
        for r in roots() {
            c.push(r.join(".cache/onnxruntime/libonnxruntime.so"));
        }
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            c.push(dir.join("libonnxruntime.so"));
            c.push(dir.join("../lib/libonnxruntime.so"));
        }
        let multiarch = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
        for d in ["/usr/local/lib", "/usr/lib", multiarch.as_str()] {
            c.push(Path::new(d).join("libonnxruntime.so"));
        }
    }
    first_existing(c).map_err(|looked| LocateError::OrtLibrary { looked })
}

/// The folder holding `manifest.toml`.
pub fn models_dir(explicit: Option<&Path>) -> Result<PathBuf, LocateError> {
    let mut c = Vec::new();
    if let Some(p) = explicit {
        c.push(p.join("manifest.toml"));
    } else {
        if let Some(p) = std::env::var_os("CSB_MODELS_DIR") {
            c.push(PathBuf::from(p).join("manifest.toml"));
        }
        for r in roots() {
            c.push(r.join("models/manifest.toml"));
        }
        c.push(PathBuf::from("/etc/csb/models/manifest.toml"));
    }
    first_existing(c)
        .map(|p| p.parent().map(Path::to_path_buf).unwrap_or_default())
        .map_err(|looked| LocateError::Manifest { looked })
}

/// A model file named in the manifest: in the models folder, else in `../shared/models` beside a
/// root (the workspace's shared data, used directly when setup has not copied it).
pub fn model_file(
    explicit: Option<&Path>,
    models_dir: &Path,
    file: &str,
) -> Result<PathBuf, LocateError> {
    let mut c = Vec::new();
    if let Some(p) = explicit {
        c.push(p.to_path_buf());
    } else {
        c.push(models_dir.join(file));
        for r in roots() {
            c.push(r.join("../shared/models").join(file));
        }
    }
    first_existing(c).map_err(|looked| LocateError::Model {
        file: file.to_string(),
        looked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_error_lists_places_and_fix() {
        let err = ort_library(Some(Path::new("/nonexistent/libonnxruntime.so")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/libonnxruntime.so"), "{err}");
        assert!(err.contains("make setup"), "{err}");
    }

    #[test]
    fn finds_repo_manifest_from_test_cwd() {
        // cargo runs unit tests with cwd = the crate folder, inside the repository.
        let dir = models_dir(None).unwrap();
        assert!(dir.join("manifest.toml").is_file());
    }
}
