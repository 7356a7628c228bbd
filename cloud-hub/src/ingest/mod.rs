//! Layer 2, ingest: everything between a device's socket and the store — the MQTT front and
//! the embedded broker ([`mqtt`]), device credentials ([`devices`]) and one-time enrolment tokens ([`enrol`]), the pipeline that
//! validates, stores in durable batches, quarantines and acks ([`pipeline`]), and the counters
//! they keep ([`metrics`]). Uses `storage` and `support`.

pub mod devices;
pub mod enrol;
pub mod metrics;
pub mod mqtt;
pub mod pipeline;

pub use pipeline::{DurableSink, Ingest, IngestError, IngestSettings};
