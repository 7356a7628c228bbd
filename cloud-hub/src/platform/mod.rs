//! Layer 3, platform: the county as the hub knows it — the county model and its geometry
//! ([`county`], [`geo`]), the inventory of devices and data sources ([`inventory`], 摸清家底), the
//! digital twin ([`twin`]) and the NGSI-LD query language over it ([`ngsi`]), and the feed of
//! newly stored events ([`activity`]). Uses `storage`,
//! `ingest`'s counters and `support`; knows nothing of HTTP.

pub mod activity;
pub mod county;
pub mod geo;
pub mod inventory;
pub mod ngsi;
pub mod twin;
