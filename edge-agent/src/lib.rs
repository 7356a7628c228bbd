//! Edge agent: cameras → GStreamer decode/scale → ONNX detection → MQTT events.
//! See ARCHITECTURE.md at the repository root for how a frame travels through these modules.

pub mod analytics;
pub mod bench;
pub mod bench_outbox;
pub mod commands;
pub mod config;
pub mod doctor;
pub mod evidence;
pub mod jitter;
pub mod localstatus;
pub mod managed;
pub mod model;
pub mod modelswap;
pub mod outbox;
pub mod perception;
pub mod pipeline;
pub mod provision;
pub mod queue;
pub mod replay;
pub mod rules;
pub mod selftest;
pub mod sensors;
pub mod source;
pub mod synth;
pub mod tools;
pub mod track;
pub mod uplink;
pub mod vision;
