//! Benchmarks: each prints figures and ratios measured in one run and asserts nothing about
//! time (machines here are noisy). Outside the serving path: nothing below `bench` names it.
//!
//! - [`cases`]: `cloud-hub bench-cases`, the case workflow at county volume.
//! - [`ingest`]: `cloud-hub bench-ingest`, raw broker vs the MQTT front vs durable ingest.
//! - [`fleet`]: `cloud-hub bench-fleet`, a fleet of raw MQTT devices against a hub process.
//! - [`history`]: `cloud-hub bench-history`, event/telemetry history queries.
//! - [`platform`]: `cloud-hub bench-platform`, twin, NGSI-LD and rollup queries.
//! - [`series`]: the rollup workload `platform` and the series tests share.
//! - [`kit`]: what they share (latency summaries, disk and CPU readings, errors).

pub mod cases;
pub mod fleet;
pub mod history;
pub mod ingest;
pub mod kit;
pub mod platform;
pub mod series;

pub use kit::BenchError;
