//! What the hub's integration tests (`cloud-hub/tests/`), the multi-process end-to-end tests
//! (`tests/`, crate `csb-e2e`) and the fuzz targets (`fuzz/`) share, each in one place:
//!
//! - [`payloads`]: event, telemetry and device status builders with valid, realistic defaults;
//!   topics; signing.
//! - [`mqtt`]: a real MQTT client as an edge uses it (QoS 1 with PUBACKs, a last will, acks,
//!   login, TLS); [`raw_mqtt`]: packets by hand, for what a library client hides.
//! - [`process`]: the built binaries and fixtures, a `cloud-hub serve` process from
//!   [`process::HubBuilder`], `edge-agent` processes.
//! - [`agent`]: edge agent config files.
//! - [`disk`]: a small tmpfs to fill, for full-disk tests.
//! - [`models`]: warehouse manifests of the real model, registering one in a hub.
//! - [`http`]: reading a hub over HTTP, polling, server-sent events.
//! - [`oracle`]: expected values worked out independently of the hub (rollups, distances).
//! - [`fuzz`]: scratch files for the config fuzz targets.
//!
//! It depends on csb-wire but never on cloud-hub or edge-agent: cloud-hub dev-depends on it,
//! and a dependency back would give its tests two copies of the hub's types. What needs the
//! hub's library (an in-process hub) stays in `cloud-hub/tests/common/`.
//!
//! [`http`], [`mqtt`], [`raw_mqtt`] and [`process`] need the default `net` feature.

pub mod agent;
pub mod fuzz;
pub mod oracle;
pub mod payloads;

#[cfg(feature = "net")]
pub mod disk;
#[cfg(feature = "net")]
pub mod http;
#[cfg(feature = "net")]
pub mod models;
#[cfg(feature = "net")]
pub mod mqtt;
#[cfg(feature = "net")]
pub mod process;
#[cfg(feature = "net")]
pub mod raw_mqtt;
