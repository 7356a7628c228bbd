//! Page sizes every stored-data query shares (events, telemetry, quarantine).

/// Most rows one query may examine, so a filter that matches nothing cannot scan the whole store.
pub const MAX_SCAN: usize = 200_000;
/// Rows a query returns when it names no `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Most rows one query returns.
pub const MAX_LIMIT: usize = 1000;
