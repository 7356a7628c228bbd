//! Which ONNX Runtime a library file is, asked of the library itself before the ort crate loads
//! it: an older runtime lacks the API version this agent is built for, and the ort crate would
//! fail on it with a message that does not name the version or the file.

use std::ffi::{c_char, c_void, CStr};
use std::path::Path;

/// The ONNX Runtime C API version this agent is built against (the ort crate's `api-31`
/// feature): runtimes from 1.31 on provide it.
pub const API_VERSION: u32 = 31;

/// The head of ONNX Runtime's `OrtApiBase`, stable across all versions.
#[repr(C)]
struct OrtApiBase {
    get_api: unsafe extern "C" fn(u32) -> *const c_void,
    get_version_string: unsafe extern "C" fn() -> *const c_char,
}

/// A runtime library's version and whether it offers [`API_VERSION`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    pub version: String,
    pub supported: bool,
}

/// Opens `lib` and asks it its version. The library stays loaded (the ort crate opens the same
/// one next; unloading ONNX Runtime mid-process is not safe).
pub fn probe(lib: &Path) -> Result<RuntimeInfo, String> {
    // SAFETY: loading a shared library runs its initialisers; `lib` is the ONNX Runtime the
    // agent is about to use anyway.
    let l = unsafe { libloading::Library::new(lib) }.map_err(|e| {
        // libloading keeps dlerror()'s text (which names the file and why) as the source.
        let mut s = e.to_string();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(c) = cur {
            s = format!("{s}: {c}");
            cur = c.source();
        }
        s
    })?;
    let info = {
        // SAFETY: `OrtGetApiBase` has had this signature in every ONNX Runtime release.
        let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const OrtApiBase> =
            unsafe { l.get(b"OrtGetApiBase\0") }
                .map_err(|e| format!("not an ONNX Runtime library (no OrtGetApiBase: {e})"))?;
        let base = unsafe { get_base() };
        if base.is_null() {
            return Err("OrtGetApiBase returned nothing".into());
        }
        // SAFETY: `base` points at the library's static OrtApiBase; the version string is static.
        let (version, api) = unsafe {
            let v = ((*base).get_version_string)();
            let version = if v.is_null() {
                String::from("unknown")
            } else {
                CStr::from_ptr(v).to_string_lossy().into_owned()
            };
            (version, ((*base).get_api)(API_VERSION))
        };
        RuntimeInfo {
            version,
            supported: !api.is_null(),
        }
    };
    std::mem::forget(l);
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setup_runtime_offers_our_api() {
        let Ok(lib) = super::super::locate::ort_library(None) else {
            eprintln!("no ONNX Runtime here (run make setup); skipped");
            return;
        };
        let info = probe(&lib).unwrap();
        assert!(info.supported, "{info:?}");
        assert!(info.version.starts_with("1."), "{info:?}");
    }

    #[test]
    fn a_file_that_is_not_onnx_runtime_is_named_as_such() {
        let err = probe(Path::new("/nonexistent/libonnxruntime.so")).unwrap_err();
        assert!(err.contains("nonexistent"), "{err}");
    }
}
