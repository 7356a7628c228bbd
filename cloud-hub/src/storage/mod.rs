//! Layer 1, storage: what the hub keeps on disk and how — the [`store::Store`] trait and its sled
//! backend, the append-only record logs of events and raw telemetry ([`reclog`]), the rollup
//! series ([`series`]) and the quarantine's entries ([`quarantine`]). Uses only `support`.

pub mod page;
pub mod quarantine;
pub mod reclog;
pub mod series;
pub mod store;
