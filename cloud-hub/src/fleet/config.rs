//! Fleet configuration: desired vs applied, per device.
//!
//! `set` checks a device's camera settings with the same validator the agents run
//! (`ConfigPush::check`), gives them the next version, stores them durably (`fleet-config.json`
//! in the data directory, replaced atomically and synced) and sends them at once; `sweep` sends
//! again every `resend_every` until the agent answers — an agent offline during the push gets it
//! when it is back. The agent's answer (`on_reply`) records the version applied, or the refusal
//! with the agent's reason (a camera it does not run, a class its model lacks). Every step is in
//! the device's audit trail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use csb_wire::model::{ModelManifest, ModelVersion};
use csb_wire::{
    CameraSettings, Command, CommandOp, CommandReply, ConfigPush, ReplyStatus, SCHEMA_VERSION,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::Commands;
use crate::support::clock::Clock;

pub const FILE: &str = "fleet-config.json";
/// Command ids of configuration pushes start with this (replies are routed by it).
pub const ID_PREFIX: &str = "cfg-";
/// Audit entries kept per device.
const AUDIT_KEPT: usize = 50;
/// How long one sent copy stays valid for the agent.
const COPY_VALID_MS: i64 = 60_000;

#[derive(Debug, Error)]
pub enum FleetError {
    #[error("`{0}` is not SITE/DEVICE")]
    Device(String),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("cannot store {path}: {message}")]
    Store { path: PathBuf, message: String },
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
}

/// Where a device's configuration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// The agent runs the desired version.
    InSync,
    /// Sent (or waiting to be), not answered yet: the agent may be offline.
    Pending,
    /// The agent refused the desired version; `rejected.reason` says why.
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Desired {
    pub version: u64,
    pub cameras: Vec<CameraSettings>,
    /// The warehouse model the device runs; absent: the agent's own model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelManifest>,
    /// Warehouse models for the cameras that name one (`cameras[].model`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelManifest>,
    /// When and by whom it was set (the API token's name).
    pub set_ms: i64,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Rejection {
    pub version: u64,
    pub reason: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// `set`, `sent`, `applied`, `refused`, `failed`.
    pub what: String,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One device's configuration record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceConfig {
    /// `SITE/DEVICE`.
    pub device: String,
    pub desired: Option<Desired>,
    /// The version the agent last said it runs.
    pub applied_version: Option<u64>,
    pub applied_ms: Option<i64>,
    /// The model the agent said it runs with the applied version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_model: Option<ModelVersion>,
    pub rejected: Option<Rejection>,
    /// Copies of the desired version sent so far, and the last one's time.
    pub sends: u32,
    pub last_sent_ms: Option<i64>,
    /// Newest last.
    pub audit: Vec<AuditEntry>,
}

impl DeviceConfig {
    fn new(device: &str) -> Self {
        DeviceConfig {
            device: device.to_string(),
            desired: None,
            applied_version: None,
            applied_ms: None,
            applied_model: None,
            rejected: None,
            sends: 0,
            last_sent_ms: None,
            audit: Vec::new(),
        }
    }

    pub fn state(&self) -> SyncState {
        let Some(d) = &self.desired else {
            return SyncState::InSync;
        };
        if self.applied_version == Some(d.version) {
            SyncState::InSync
        } else if self
            .rejected
            .as_ref()
            .is_some_and(|r| r.version == d.version)
        {
            SyncState::Rejected
        } else {
            SyncState::Pending
        }
    }

    fn log(&mut self, at_ms: i64, what: &str, version: u64, note: Option<String>) {
        self.audit.push(AuditEntry {
            at_ms,
            what: what.into(),
            version,
            note,
        });
        let extra = self.audit.len().saturating_sub(AUDIT_KEPT);
        self.audit.drain(..extra);
    }

    fn split(&self) -> Option<(&str, &str)> {
        self.device.split_once('/')
    }

    /// The command carrying the desired version, as sent at `now`.
    fn command(&self, now: i64) -> Option<Command> {
        let d = self.desired.as_ref()?;
        let (site, device) = self.split()?;
        Some(Command {
            v: SCHEMA_VERSION,
            id: format!("{ID_PREFIX}{}", d.version),
            site: site.to_string(),
            device: device.to_string(),
            ts_ms: now,
            expires_ms: now + COPY_VALID_MS,
            op: CommandOp::Config(ConfigPush {
                version: d.version,
                cameras: d.cameras.clone(),
                model: d.model.clone().map(Box::new),
                models: d.models.clone(),
            }),
        })
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FleetFile {
    devices: BTreeMap<String, DeviceConfig>,
}

/// Counters for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct FleetCounters {
    pub sends: std::sync::atomic::AtomicU64,
    pub send_failures: std::sync::atomic::AtomicU64,
    pub applied: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
    pub replies_ignored: std::sync::atomic::AtomicU64,
}

pub struct FleetConfig {
    path: PathBuf,
    devices: Mutex<BTreeMap<String, DeviceConfig>>,
    commands: Arc<dyn Commands>,
    clock: Arc<dyn Clock>,
    resend_every: Duration,
    pub counters: FleetCounters,
}

fn device_ok(id: &str) -> Result<(), FleetError> {
    let bad = || FleetError::Device(id.to_string());
    let (site, device) = id.split_once('/').ok_or_else(bad)?;
    csb_wire::topic::validate_level("site", site).map_err(|_| bad())?;
    csb_wire::topic::validate_level("device", device).map_err(|_| bad())?;
    Ok(())
}

impl FleetConfig {
    /// Opens (or starts) the record in `data_dir`.
    pub fn open(
        data_dir: &Path,
        commands: Arc<dyn Commands>,
        clock: Arc<dyn Clock>,
        resend_every: Duration,
    ) -> Result<Self, FleetError> {
        let path = data_dir.join(FILE);
        let devices = match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice::<FleetFile>(&b)
                    .map_err(|e| FleetError::Read {
                        path: path.clone(),
                        message: e.to_string(),
                    })?
                    .devices
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(FleetError::Read {
                    path,
                    message: e.to_string(),
                })
            }
        };
        Ok(FleetConfig {
            path,
            devices: Mutex::new(devices),
            commands,
            clock,
            resend_every,
            counters: FleetCounters::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DeviceConfig>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the whole record (under the lock, so writes never interleave).
    fn persist(&self, devices: &BTreeMap<String, DeviceConfig>) -> Result<(), FleetError> {
        let json = serde_json::to_vec_pretty(&FleetFile {
            devices: devices.clone(),
        })
        .map_err(|e| FleetError::Store {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let tmp = self.path.with_extension("json.tmp");
        crate::ingest::devices::replace_private(&self.path, &tmp, &json).map_err(|e| {
            FleetError::Store {
                path: self.path.clone(),
                message: e.to_string(),
            }
        })
    }

    pub fn list(&self) -> Vec<DeviceConfig> {
        self.lock().values().cloned().collect()
    }

    pub fn get(&self, device: &str) -> Option<DeviceConfig> {
        self.lock().get(device).cloned()
    }

    /// Makes `cameras` the next desired version of `device`, keeping the model it is to run,
    /// and the cameras' own models unless `models` replaces them.
    pub fn set_cameras(
        &self,
        device: &str,
        cameras: Vec<CameraSettings>,
        models: Option<Vec<ModelManifest>>,
        by: &str,
    ) -> Result<DeviceConfig, FleetError> {
        let (model, kept) = self
            .get(device)
            .and_then(|r| r.desired)
            .map_or((None, Vec::new()), |d| (d.model, d.models));
        self.set(device, cameras, model, models.unwrap_or(kept), by)
    }

    /// Makes `cameras` and `model` the next desired version of `device`, stored durably before
    /// it is acknowledged, and sends it.
    pub fn set(
        &self,
        device: &str,
        cameras: Vec<CameraSettings>,
        model: Option<ModelManifest>,
        models: Vec<ModelManifest>,
        by: &str,
    ) -> Result<DeviceConfig, FleetError> {
        device_ok(device)?;
        let now = self.clock.now_ms();
        let mut all = self.lock();
        let mut rec = all
            .get(device)
            .cloned()
            .unwrap_or_else(|| DeviceConfig::new(device));
        let version = rec
            .desired
            .as_ref()
            .map_or(0, |d| d.version)
            .max(rec.applied_version.unwrap_or(0))
            + 1;
        let push = ConfigPush {
            version,
            cameras: cameras.clone(),
            model: model.clone().map(Box::new),
            models: models.clone(),
        };
        push.check().map_err(|e| match e {
            csb_wire::PayloadError::Field { field, reason } => {
                FleetError::Invalid { field, reason }
            }
            other => FleetError::Invalid {
                field: "cameras".into(),
                reason: other.to_string(),
            },
        })?;
        let what = match &model {
            Some(m) => format!("by {by}, model {}", m.key()),
            None => format!("by {by}"),
        };
        rec.desired = Some(Desired {
            version,
            cameras,
            model,
            models,
            set_ms: now,
            by: by.to_string(),
        });
        rec.sends = 0;
        rec.last_sent_ms = None;
        rec.log(now, "set", version, Some(what));
        let mut next = all.clone();
        next.insert(device.to_string(), rec.clone());
        self.persist(&next)?;
        *all = next;
        drop(all);
        self.send_due(device, now);
        Ok(self.get(device).unwrap_or(rec))
    }

    /// Sends the desired version of `device` if it is pending and not sent within
    /// `resend_every`. The record of the send is kept in memory (a restart just sends again).
    fn send_due(&self, device: &str, now: i64) {
        let mut all = self.lock();
        let Some(rec) = all.get_mut(device) else {
            return;
        };
        if rec.state() != SyncState::Pending {
            return;
        }
        if rec
            .last_sent_ms
            .is_some_and(|t| now - t < self.resend_every.as_millis() as i64)
        {
            return;
        }
        let Some(cmd) = rec.command(now) else { return };
        use std::sync::atomic::Ordering::Relaxed;
        if self.commands.send(&cmd) {
            self.counters.sends.fetch_add(1, Relaxed);
            rec.sends += 1;
            rec.last_sent_ms = Some(now);
            if rec.sends == 1 {
                let v = cmd_version(&cmd);
                rec.log(now, "sent", v, None);
            }
        } else {
            self.counters.send_failures.fetch_add(1, Relaxed);
        }
    }

    /// `device` has just connected (its online status was stored): a pending configuration goes
    /// to it now, whatever the resend interval (copies sent while it was away were lost).
    pub fn came_online(&self, device: &str) {
        let pending = {
            let mut all = self.lock();
            match all.get_mut(device) {
                Some(r) if r.state() == SyncState::Pending => {
                    r.last_sent_ms = None;
                    true
                }
                _ => false,
            }
        };
        if pending {
            self.send_due(device, self.clock.now_ms());
        }
    }

    /// Sends every pending configuration that is due.
    pub fn sweep(&self) {
        let now = self.clock.now_ms();
        let pending: Vec<String> = self
            .lock()
            .values()
            .filter(|r| r.state() == SyncState::Pending)
            .map(|r| r.device.clone())
            .collect();
        for d in pending {
            self.send_due(&d, now);
        }
    }

    /// An agent's answer to a configuration push; stored before it counts.
    pub fn on_reply(&self, reply: &CommandReply) -> Result<(), FleetError> {
        use std::sync::atomic::Ordering::Relaxed;
        let device = format!("{}/{}", reply.site, reply.device);
        let Some(version) = reply
            .id
            .strip_prefix(ID_PREFIX)
            .and_then(|v| v.parse::<u64>().ok())
        else {
            self.counters.replies_ignored.fetch_add(1, Relaxed);
            return Ok(());
        };
        let now = self.clock.now_ms();
        let mut all = self.lock();
        let Some(rec) = all.get(&device).cloned() else {
            self.counters.replies_ignored.fetch_add(1, Relaxed);
            return Ok(());
        };
        let mut rec = rec;
        match reply.status {
            ReplyStatus::Done => {
                let running = reply.config.as_ref().map_or(version, |c| c.version);
                if rec.applied_version == Some(running) {
                    return Ok(()); // a repeat
                }
                rec.applied_version = Some(running);
                rec.applied_ms = Some(now);
                rec.applied_model = reply.config.as_ref().and_then(|c| c.model.clone());
                rec.log(now, "applied", running, None);
                self.counters.applied.fetch_add(1, Relaxed);
            }
            ReplyStatus::Refused | ReplyStatus::Failed => {
                let reason = reply
                    .reason
                    .clone()
                    .unwrap_or_else(|| "no reason given".into());
                if rec
                    .rejected
                    .as_ref()
                    .is_some_and(|r| r.version == version && r.reason == reason)
                {
                    return Ok(());
                }
                // An answer to an older version than the desired one changes nothing now.
                if rec.desired.as_ref().is_some_and(|d| d.version != version) {
                    self.counters.replies_ignored.fetch_add(1, Relaxed);
                    return Ok(());
                }
                let what = if reply.status == ReplyStatus::Refused {
                    "refused"
                } else {
                    "failed"
                };
                rec.rejected = Some(Rejection {
                    version,
                    reason: reason.clone(),
                    at_ms: now,
                });
                rec.log(now, what, version, Some(reason));
                self.counters.refused.fetch_add(1, Relaxed);
            }
        }
        let mut next = all.clone();
        next.insert(device, rec);
        self.persist(&next)?;
        *all = next;
        Ok(())
    }
}

/// Tells the fleet task which devices came online, from each durably stored batch (ingest's
/// `DurableSink`). Never waits: a full queue drops the news (the periodic resend still comes).
pub struct OnlineFeed(pub tokio::sync::mpsc::Sender<String>);

impl crate::ingest::pipeline::DurableSink for OnlineFeed {
    fn offer(
        &self,
        batch: &Arc<crate::storage::store::WriteBatch>,
        _: &crate::storage::store::WriteOutcome,
    ) {
        for (s, _) in &batch.statuses {
            if s.state == csb_wire::DeviceState::Online {
                let _ = self.0.try_send(format!("{}/{}", s.site, s.device));
            }
        }
    }
}

fn cmd_version(c: &Command) -> u64 {
    match &c.op {
        CommandOp::Config(p) => p.version,
        CommandOp::Recheck(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::clock::ManualClock;

    #[derive(Default)]
    struct Sent(Mutex<Vec<Command>>);
    impl Commands for Sent {
        fn send(&self, c: &Command) -> bool {
            self.0.lock().unwrap().push(c.clone());
            true
        }
    }

    fn cam(id: &str, zone_y: f32) -> CameraSettings {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "analytics": { "zones": [ { "id": "z", "polygon": [[0.1, zone_y], [0.9, zone_y], [0.9, 0.9]] } ] }
        }))
        .unwrap()
    }

    fn reply(
        device: &str,
        id: &str,
        status: ReplyStatus,
        version: Option<u64>,
        reason: Option<&str>,
    ) -> CommandReply {
        let (site, device) = device.split_once('/').unwrap();
        CommandReply {
            v: SCHEMA_VERSION,
            id: id.into(),
            site: site.into(),
            device: device.into(),
            ts_ms: 0,
            status,
            reason: reason.map(str::to_string),
            recheck: None,
            config: version.map(|version| csb_wire::ConfigApplied {
                version,
                model: None,
            }),
        }
    }

    #[test]
    fn a_push_is_versioned_stored_sent_until_answered_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let sent = Arc::new(Sent::default());
        let clock = ManualClock::at(1_000_000);
        let f = FleetConfig::open(
            dir.path(),
            sent.clone(),
            Arc::new(clock.clone()),
            Duration::from_secs(5),
        )
        .unwrap();
        let r = f
            .set_cameras("yuexi/gw-1", vec![cam("cam-1", 0.5)], None, "ops")
            .unwrap();
        assert_eq!(r.desired.as_ref().unwrap().version, 1);
        assert_eq!(r.state(), SyncState::Pending);
        assert_eq!(sent.0.lock().unwrap().len(), 1, "sent at once");
        assert_eq!(sent.0.lock().unwrap()[0].id, "cfg-1");
        f.sweep();
        assert_eq!(
            sent.0.lock().unwrap().len(),
            1,
            "not again before resend_every"
        );
        clock.advance(5_000);
        f.sweep();
        assert_eq!(
            sent.0.lock().unwrap().len(),
            2,
            "again while unanswered (the agent may be offline)"
        );

        f.came_online("yuexi/gw-1");
        assert_eq!(
            sent.0.lock().unwrap().len(),
            3,
            "at once when the device connects"
        );
        f.came_online("yuexi/gw-other");
        assert_eq!(
            sent.0.lock().unwrap().len(),
            3,
            "nothing pending for that one"
        );

        f.on_reply(&reply(
            "yuexi/gw-1",
            "cfg-1",
            ReplyStatus::Done,
            Some(1),
            None,
        ))
        .unwrap();
        let r = f.get("yuexi/gw-1").unwrap();
        assert_eq!((r.state(), r.applied_version), (SyncState::InSync, Some(1)));
        clock.advance(60_000);
        f.sweep();
        assert_eq!(sent.0.lock().unwrap().len(), 3, "in sync: nothing sent");

        // An invalid one is refused at the hub with the field, and changes nothing.
        let mut bad = cam("cam-1", 0.5);
        bad.analytics.zones[0].polygon.truncate(2);
        let e = f
            .set_cameras("yuexi/gw-1", vec![bad], None, "ops")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cameras[0].analytics.zones[0].polygon"),
            "{e}"
        );
        assert_eq!(f.get("yuexi/gw-1").unwrap().desired.unwrap().version, 1);

        // Version 2, refused by the agent: the reason is kept; a restart keeps everything.
        f.set_cameras("yuexi/gw-1", vec![cam("cam-9", 0.4)], None, "ops")
            .unwrap();
        f.on_reply(&reply(
            "yuexi/gw-1",
            "cfg-2",
            ReplyStatus::Refused,
            None,
            Some("cameras[0].id: no enabled camera `cam-9`"),
        ))
        .unwrap();
        drop(f);
        let f = FleetConfig::open(
            dir.path(),
            sent.clone(),
            Arc::new(clock.clone()),
            Duration::from_secs(5),
        )
        .unwrap();
        let r = f.get("yuexi/gw-1").unwrap();
        assert_eq!(r.state(), SyncState::Rejected);
        assert!(r.rejected.unwrap().reason.contains("cam-9"));
        assert_eq!(r.applied_version, Some(1));
        let whats: Vec<&str> = r.audit.iter().map(|a| a.what.as_str()).collect();
        assert_eq!(whats, ["set", "sent", "applied", "set", "sent", "refused"]);
        assert!(f.set_cameras("nodevice", vec![], None, "ops").is_err());
    }
}
