//! The technician's commands besides `doctor`: `status` (what the running agent says of
//! itself), `queue` (the outbox: inspect, purge with confirmation), `probe` (frames, detection,
//! fps and an annotated picture from any URI) and `zones preview` (a camera's zones and lines
//! drawn over its live picture). Each returns its exit code; `main.rs` only parses arguments.

pub mod probe;
pub mod queue;
pub mod status;

/// "2 h 5 min", "40 s": for people reading a terminal.
pub fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} days", s / 86400),
    }
}

pub fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}
