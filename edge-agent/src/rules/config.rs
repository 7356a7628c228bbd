//! Zones, lines and rules of one camera: the types and their validator live in the wire crate
//! (`csb_wire::rules`), shared with the hub, which validates pushed configs with them.

pub use csb_wire::rules::*;
