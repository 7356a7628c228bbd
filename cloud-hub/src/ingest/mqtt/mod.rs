//! The MQTT server devices talk to: rumqttd behind the hub's own front.
//!
//! - `front`: the public listener (plain TCP or TLS). Reads each CONNECT itself, admits or
//!   refuses it with a CONNACK, owns capacity, client-id takeover and last wills, and splices
//!   admitted sessions to rumqttd.
//! - `broker`: rumqttd's router and server (loopback only), the hub's in-process links (ingest,
//!   acks, wills).
//! - `probe`: a real client through the public listener on an interval; the broker's health.
//! - `packet`: the CONNECT/CONNACK bytes the front reads and writes (rumqttd's v4 codec).
//! - `tls`: certificates for the TLS listener, and `cloud-hub tls-cert`.
//!
//! Nothing outside this folder names rumqttd.

pub mod broker;
pub mod front;
pub mod packet;
pub mod probe;
pub mod routes;
pub mod tls;
