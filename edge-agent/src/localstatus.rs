//! The running agent's own account of itself, on local disk: `edge-agent status` (and `doctor`
//! and `queue`, which cannot open an outbox the agent holds) read it. Written with every health
//! tick, atomically (a reader never sees half a file), beside the outbox it describes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use csb_wire::{CameraStatus, OutboxStatus, SensorStatus};
use serde::{Deserialize, Serialize};

/// File name inside the outbox folder (sled ignores files it does not own).
pub const FILE: &str = "agent-status.json";

pub fn path(outbox_dir: &Path) -> PathBuf {
    outbox_dir.join(FILE)
}

/// How often camera health goes out (and this file is written): 10 s, or
/// `CSB_HEALTH_INTERVAL_MS` (100 ms … 1 h) from the environment, e.g. for tests that cannot wait
/// 10 s per sample.
pub fn health_interval() -> Duration {
    const DEFAULT: Duration = Duration::from_secs(10);
    let Ok(v) = std::env::var("CSB_HEALTH_INTERVAL_MS") else {
        return DEFAULT;
    };
    match v.trim().parse::<u64>() {
        Ok(ms) if (100..=3_600_000).contains(&ms) => Duration::from_millis(ms),
        _ => {
            tracing::warn!("CSB_HEALTH_INTERVAL_MS={v:?} is not 100..=3600000 ms; using 10 s");
            DEFAULT
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LocalStatus {
    pub pid: u32,
    pub site: String,
    pub device: String,
    pub agent_version: String,
    pub started_ms: i64,
    pub updated_ms: i64,
    /// The file is rewritten this often while the agent runs.
    pub interval_ms: u64,
    /// False once the agent stopped cleanly.
    pub running: bool,
    pub broker: String,
    pub connected: bool,
    /// MQTT connections made since the start (more than one: the link dropped and came back).
    pub connects: u64,
    /// Acks from the hub (each names the records it stored durably).
    pub hub_acks: u64,
    pub cameras: Vec<CameraStatus>,
    pub sensors: Vec<SensorStatus>,
    pub outbox: Option<OutboxStatus>,
    /// The hub's managed configuration version running (none: the local config only).
    #[serde(default)]
    pub config_version: Option<u64>,
    /// The detection model in service (a version: one from the hub's warehouse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<csb_wire::model::ModelVersion>,
}

impl LocalStatus {
    /// Whether the process that wrote this is still alive and writing.
    pub fn alive(&self, now_ms: i64) -> bool {
        // Three missed writes: the agent is hung or gone even if its pid was reused.
        let fresh = now_ms - self.updated_ms <= 3 * self.interval_ms as i64 + 2000;
        // SAFETY: kill with signal 0 only checks that the process exists.
        let exists = unsafe { libc::kill(self.pid as libc::pid_t, 0) } == 0;
        self.running && fresh && exists
    }
}

/// Writes `s` to `dir`'s status file through a temporary file and a rename.
pub fn write(dir: &Path, s: &LocalStatus) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let json = serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path(dir))
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no status file at {0}: the agent has not run with this outbox (or not long enough to write one)")]
    Missing(PathBuf),
    #[error("cannot read {path}: {message}")]
    Bad { path: PathBuf, message: String },
}

pub fn read(outbox_dir: &Path) -> Result<LocalStatus, ReadError> {
    let p = path(outbox_dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::Missing(p)),
        Err(e) => {
            return Err(ReadError::Bad {
                path: p,
                message: e.to_string(),
            })
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| ReadError::Bad {
        path: p,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LocalStatus {
        LocalStatus {
            pid: std::process::id(),
            site: "yuexi".into(),
            device: "gw-1".into(),
            agent_version: "0".into(),
            started_ms: 1,
            updated_ms: csb_wire::now_ms(),
            interval_ms: 1000,
            running: true,
            broker: "127.0.0.1:1883".into(),
            connected: true,
            connects: 1,
            hub_acks: 0,
            cameras: vec![],
            sensors: vec![],
            outbox: None,
            config_version: None,
            model: None,
        }
    }

    #[test]
    fn round_trips_and_judges_liveness() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(read(d.path()), Err(ReadError::Missing(_))));
        let s = sample();
        write(d.path(), &s).unwrap();
        let back = read(d.path()).unwrap();
        assert_eq!(back, s);
        let now = csb_wire::now_ms();
        assert!(back.alive(now));
        assert!(!back.alive(now + 10_000), "stale after three missed writes");
        let stopped = LocalStatus {
            running: false,
            ..s.clone()
        };
        assert!(!stopped.alive(now));
        let gone = LocalStatus {
            pid: i32::MAX as u32,
            ..s
        };
        assert!(!gone.alive(now));
    }
}
