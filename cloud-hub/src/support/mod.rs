//! Layer 0, support: small pieces every layer may use and that use no other layer — time
//! parsing, watched files, rate-limited logging, the injectable clock, the change feed of SSE streams.

pub mod clock;
pub mod feed;
pub mod loglimit;
pub mod lognoise;
pub mod timeparse;
pub mod watched;
