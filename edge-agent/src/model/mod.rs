//! Object detection models: manifest, runtime lookup, YOLOX and CenterFace processing and the
//! ONNX session.

pub mod centerface;
pub mod detector;
pub mod locate;
pub mod manifest;
pub mod runtime;
pub mod store;
pub mod yolox;

pub use detector::{Detector, DetectorError, DetectorOptions};
pub use yolox::ScaledImage;
