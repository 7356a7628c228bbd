//! Edge agent: cameras → GStreamer decode/scale → ONNX detection → MQTT events.
//! See ARCHITECTURE.md at the repository root for how a frame travels through these modules.

pub mod bench;
pub mod config;
pub mod model;
pub mod pipeline;
pub mod source;
pub mod uplink;
pub mod perception;
