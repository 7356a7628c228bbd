//! Rollouts: a warehouse model to a set of devices, one canary first, then batches.
//!
//! A rollout changes nothing by itself on the wire: for each device it sets the next desired
//! configuration in [`FleetConfig`] (the device's camera settings kept, the new model), which
//! the fleet layer pushes and resends until the agent answers. The rollout then watches:
//! - the agent's answer: `refused` (it could not download, load or self-test the model — it
//!   kept the model in service) fails the device at once, with the agent's reason;
//! - then a soak: the device counts as succeeded only after its statuses have shown the new
//!   version and model, online, every camera running and the agent reporting, for `soak_s`;
//! - a device that neither answers nor reports within `device_timeout_s` fails — never pending
//!   forever.
//!
//! A failed device gets its previous configuration back (a new version with the old model and
//! settings); so does every device still updating when the rollout aborts, by its failure
//! threshold or by an operator. A step (the canary, then each batch) must reach the success
//! threshold before the next starts. Every decision is in the rollout's log and the record is
//! stored durably (`rollouts.json`, replaced atomically and synced) before the API answers and
//! after every change, so a restarted hub resumes where it was.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use csb_wire::model::ModelManifest;
use csb_wire::{CameraState, DeviceState, DeviceStatus};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::config::{Desired, FleetConfig, FleetError};
use super::health::LastStatus;
use crate::support::clock::Clock;

pub const FILE: &str = "rollouts.json";
/// Most devices one rollout takes.
pub const MAX_DEVICES: usize = 5_000;
/// Log entries kept per rollout.
const LOG_KEPT: usize = 2_000;
/// Finished rollouts kept (the oldest are forgotten).
const FINISHED_KEPT: usize = 200;

#[derive(Debug, Error)]
pub enum RolloutError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("no rollout `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("cannot store {path}: {message}")]
    Store { path: PathBuf, message: String },
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RolloutError {
    RolloutError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Where rollouts find models: the warehouse (implemented in `lib.rs`).
pub trait ModelSource: Send + Sync + 'static {
    /// The manifest of a model that may be rolled out now (registered, files complete, not
    /// retired), or why not.
    fn assignable(&self, name: &str, version: &str) -> Result<ModelManifest, String>;
}

/// Which model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelKey {
    pub name: String,
    pub version: String,
}

/// The size of a batch: a number of devices or a percentage of the rollout's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BatchSize {
    Count(u32),
    Percent(u32),
}

fn d_success() -> u32 {
    100
}
fn d_soak() -> u32 {
    60
}
fn d_timeout() -> u32 {
    600
}
fn d_silent() -> u32 {
    60
}

/// What to roll out, where, and how carefully.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// The warehouse model to roll out (it must be `ready`).
    pub model: ModelKey,
    /// Devices `SITE/DEVICE`, in the order batches take them (or `group`).
    #[serde(default)]
    pub devices: Vec<String>,
    /// A device group (`/api/v1/fleet/groups`) instead of `devices`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The canary: updated alone first. Default: the first device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    /// Batches after the canary, in order; the last size repeats until every device is taken.
    /// Default: the rest at once (`[{"percent": 100}]`).
    #[serde(default)]
    pub batches: Vec<BatchSize>,
    /// A step is done when at least this share of its devices succeeded (percent, 1–100).
    #[serde(default = "d_success")]
    pub success_threshold_pct: u32,
    /// The rollout aborts when more than this share of the devices started so far failed
    /// (percent, 0–100; 0: the first failure aborts).
    #[serde(default)]
    pub max_failures_pct: u32,
    /// How long a device must stay healthy on the new version to count as succeeded.
    #[serde(default = "d_soak")]
    pub soak_s: u32,
    /// A device that has not applied and soaked within this fails.
    #[serde(default = "d_timeout")]
    pub device_timeout_s: u32,
    /// A device with no status for this long while soaking fails (the agent reports every
    /// few seconds while its pipelines run).
    #[serde(default = "d_silent")]
    pub silent_s: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    /// No new device starts; devices already updating go on and are judged.
    Paused,
    Succeeded,
    /// Stopped by its failure threshold; `reason` says which device and why.
    Failed,
    /// Stopped by an operator.
    Aborted,
}

impl RolloutState {
    pub fn finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Aborted)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceRunState {
    /// Its step has not started.
    Waiting,
    /// The new version is desired; the agent has not applied it yet.
    Updating,
    /// Applied; being watched for `soak_s`.
    Soaking,
    Succeeded,
    Failed,
    /// Was updating when the rollout stopped; sent back to its previous configuration.
    Aborted,
    /// Its step never started (the rollout stopped first).
    Skipped,
}

/// One device in a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceRun {
    pub state: DeviceRunState,
    /// Its step: 0 the canary, 1.. the batches.
    pub step: usize,
    /// The configuration version carrying the new model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_since_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The configuration version that gave it back its previous model and settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_version: Option<u64>,
    /// Its desired configuration before the rollout (none: the agent's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Desired>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogEntry {
    pub at_ms: i64,
    /// `created`, `step`, `sent`, `applied`, `refused`, `soak_failed`, `timeout`,
    /// `succeeded`, `rolled_back`, `paused`, `resumed`, `aborted`, `failed`, `finished`.
    pub what: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A rollout and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Rollout {
    /// `ro-{n}`.
    pub id: String,
    pub spec: RolloutSpec,
    /// The model as the warehouse described it when the rollout started.
    pub model: ModelManifest,
    pub created_ms: i64,
    pub created_by: String,
    pub state: RolloutState,
    /// Why it failed or was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The devices of each step: the canary, then the batches.
    pub steps: Vec<Vec<String>>,
    /// The step under way (== `steps.len()` when all are done).
    pub step: usize,
    pub devices: BTreeMap<String, DeviceRun>,
    pub updated_ms: i64,
    /// Oldest first.
    pub log: Vec<LogEntry>,
}

impl Rollout {
    fn log(&mut self, at_ms: i64, what: &str, device: Option<&str>, note: Option<String>) {
        self.updated_ms = at_ms;
        self.log.push(LogEntry {
            at_ms,
            what: what.into(),
            device: device.map(str::to_string),
            note,
        });
        let extra = self.log.len().saturating_sub(LOG_KEPT);
        self.log.drain(..extra);
    }

    /// Counts per device state.
    pub fn counts(&self) -> BTreeMap<DeviceRunState, usize> {
        let mut m = BTreeMap::new();
        for d in self.devices.values() {
            *m.entry(d.state).or_insert(0) += 1;
        }
        m
    }

    fn active(&self) -> bool {
        !self.state.finished()
    }
}

impl PartialOrd for DeviceRunState {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for DeviceRunState {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RolloutFile {
    next: u64,
    rollouts: Vec<Rollout>,
}

/// Device groups by name, for `spec.group` (implemented by the groups record).
pub trait Groups: Send + Sync + 'static {
    fn members(&self, group: &str) -> Option<Vec<String>>;
}

pub struct Rollouts {
    path: PathBuf,
    state: Mutex<RolloutFile>,
    /// Held by whatever moves rollouts (the tick, an operator's action, a start), so a tick
    /// never works on a copy an action has changed meanwhile.
    steps: Mutex<()>,
    fleet: Arc<FleetConfig>,
    status: Arc<LastStatus>,
    models: Arc<dyn ModelSource>,
    groups: Option<Arc<dyn Groups>>,
    clock: Arc<dyn Clock>,
}

/// What a soak check concluded about one device now.
#[derive(Debug, PartialEq)]
enum Health {
    Healthy,
    /// Not judged yet (no status since it applied).
    Unknown,
    Unhealthy(String),
}

/// Judges a device's newest status against the version and model it should run.
fn judge(
    last: Option<&(DeviceStatus, i64)>,
    version: u64,
    model: &ModelManifest,
    applied_ms: i64,
    now: i64,
    silent_ms: i64,
) -> Health {
    let Some((s, received)) = last else {
        return Health::Unknown;
    };
    if now - received > silent_ms {
        return Health::Unhealthy(format!(
            "silent: no status for {} s",
            (now - received) / 1000
        ));
    }
    if s.state != DeviceState::Online {
        return Health::Unhealthy(format!("the agent reported {:?}", s.state).to_lowercase());
    }
    if s.config_version != Some(version) {
        // A status from before the answer, or the agent went back on its own.
        return if *received <= applied_ms + 2_000 {
            Health::Unknown
        } else {
            Health::Unhealthy(format!(
                "runs configuration {} instead of {version}",
                s.config_version
                    .map_or_else(|| "(local)".to_string(), |v| v.to_string())
            ))
        };
    }
    match &s.model {
        Some(m) if m.name == model.name && m.version.as_deref() == Some(&model.version) => {}
        other => {
            let runs = other.as_ref().map_or_else(
                || "no model".to_string(),
                |m| format!("{}@{}", m.name, m.version.as_deref().unwrap_or("local")),
            );
            return Health::Unhealthy(format!("runs {runs} instead of {}", model.key()));
        }
    }
    for c in &s.cameras {
        match c.state {
            CameraState::Running => {}
            CameraState::Starting => return Health::Unknown,
            other => {
                let why = c.error.as_deref().unwrap_or("no error given");
                return Health::Unhealthy(format!(
                    "camera {} is {}: {why}",
                    c.id,
                    format!("{other:?}").to_lowercase()
                ));
            }
        }
        if let Some(h) = &c.health {
            if h.last_frame_age_ms > silent_ms as u64 {
                return Health::Unhealthy(format!(
                    "camera {}: no frame for {} s",
                    c.id,
                    h.last_frame_age_ms / 1000
                ));
            }
        }
    }
    Health::Healthy
}

/// Splits `rest` into batches by `sizes` (the last size repeats), of `total` devices.
fn plan_batches(rest: &[String], sizes: &[BatchSize], total: usize) -> Vec<Vec<String>> {
    let default = [BatchSize::Percent(100)];
    let sizes = if sizes.is_empty() {
        &default[..]
    } else {
        sizes
    };
    let mut out = Vec::new();
    let mut i = 0;
    let mut k = 0;
    while i < rest.len() {
        let n = match sizes[k.min(sizes.len() - 1)] {
            BatchSize::Count(n) => n as usize,
            BatchSize::Percent(p) => (total * p as usize).div_ceil(100),
        }
        .max(1);
        let end = (i + n).min(rest.len());
        out.push(rest[i..end].to_vec());
        i = end;
        k += 1;
    }
    out
}

fn device_ok(id: &str) -> bool {
    id.split_once('/').is_some_and(|(s, d)| {
        csb_wire::topic::validate_level("site", s).is_ok()
            && csb_wire::topic::validate_level("device", d).is_ok()
    })
}

impl Rollouts {
    pub fn open(
        data_dir: &Path,
        fleet: Arc<FleetConfig>,
        status: Arc<LastStatus>,
        models: Arc<dyn ModelSource>,
        groups: Option<Arc<dyn Groups>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, RolloutError> {
        let path = data_dir.join(FILE);
        let state = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| RolloutError::Read {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RolloutFile::default(),
            Err(e) => {
                return Err(RolloutError::Read {
                    path,
                    message: e.to_string(),
                })
            }
        };
        Ok(Rollouts {
            path,
            state: Mutex::new(state),
            steps: Mutex::new(()),
            fleet,
            status,
            models,
            groups,
            clock,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RolloutFile> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, f: &RolloutFile) -> Result<(), RolloutError> {
        let json = serde_json::to_vec(f).map_err(|e| RolloutError::Store {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let tmp = self.path.with_extension("json.tmp");
        crate::ingest::devices::replace_private(&self.path, &tmp, &json).map_err(|e| {
            RolloutError::Store {
                path: self.path.clone(),
                message: e.to_string(),
            }
        })
    }

    pub fn list(&self) -> Vec<Rollout> {
        self.lock().rollouts.iter().rev().cloned().collect()
    }

    pub fn get(&self, id: &str) -> Option<Rollout> {
        self.lock().rollouts.iter().find(|r| r.id == id).cloned()
    }

    /// Checks `spec`, resolves its devices and model, stores the rollout and starts its canary.
    pub fn start(&self, spec: RolloutSpec, by: &str) -> Result<Rollout, RolloutError> {
        let model = self
            .models
            .assignable(&spec.model.name, &spec.model.version)
            .map_err(|e| invalid("model", e))?;
        let mut devices = match (&spec.group, spec.devices.is_empty()) {
            (Some(_), false) => {
                return Err(invalid("group", "give `devices` or `group`, not both"))
            }
            (Some(g), true) => {
                let members = self
                    .groups
                    .as_ref()
                    .and_then(|gs| gs.members(g))
                    .ok_or_else(|| invalid("group", format!("no device group `{g}`")))?;
                if members.is_empty() {
                    return Err(invalid(
                        "group",
                        format!("device group `{g}` has no devices"),
                    ));
                }
                members
            }
            (None, true) => return Err(invalid("devices", "name at least one device")),
            (None, false) => spec.devices.clone(),
        };
        if devices.len() > MAX_DEVICES {
            return Err(invalid("devices", format!("at most {MAX_DEVICES} devices")));
        }
        let mut seen = BTreeSet::new();
        for (i, d) in devices.iter().enumerate() {
            if !device_ok(d) {
                return Err(invalid(
                    format!("devices[{i}]"),
                    format!("`{d}` is not SITE/DEVICE"),
                ));
            }
            if !seen.insert(d.clone()) {
                return Err(invalid(
                    format!("devices[{i}]"),
                    format!("`{d}` is listed twice"),
                ));
            }
        }
        if !(1..=100).contains(&spec.success_threshold_pct) {
            return Err(invalid("success_threshold_pct", "must be 1..=100"));
        }
        if spec.max_failures_pct > 100 {
            return Err(invalid("max_failures_pct", "must be 0..=100"));
        }
        if spec.batches.len() > 100 {
            return Err(invalid("batches", "at most 100 batch sizes"));
        }
        for (i, b) in spec.batches.iter().enumerate() {
            let ok = match b {
                BatchSize::Count(n) => *n >= 1,
                BatchSize::Percent(p) => (1..=100).contains(p),
            };
            if !ok {
                return Err(invalid(
                    format!("batches[{i}]"),
                    "a count is at least 1, a percent 1..=100",
                ));
            }
        }
        for (name, v, max) in [
            ("soak_s", spec.soak_s, 86_400),
            ("device_timeout_s", spec.device_timeout_s, 7 * 86_400),
            ("silent_s", spec.silent_s, 86_400),
        ] {
            if !(1..=max).contains(&v) {
                return Err(invalid(name, format!("must be 1..={max}")));
            }
        }
        let canary = spec.canary.clone().unwrap_or_else(|| devices[0].clone());
        let Some(ci) = devices.iter().position(|d| *d == canary) else {
            return Err(invalid(
                "canary",
                format!("`{canary}` is not one of the devices"),
            ));
        };
        devices.remove(ci);
        let total = devices.len() + 1;
        let mut steps = vec![vec![canary]];
        steps.extend(plan_batches(&devices, &spec.batches, total));

        let now = self.clock.now_ms();
        let guard = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = self.lock();
        let busy: Vec<String> = all
            .rollouts
            .iter()
            .filter(|r| r.active())
            .flat_map(|r| {
                r.devices
                    .keys()
                    .filter(|d| seen.contains(*d))
                    .map(move |d| format!("{d} (in {})", r.id))
            })
            .collect();
        if !busy.is_empty() {
            return Err(RolloutError::Conflict(format!(
                "devices already in a running rollout: {}",
                busy.join(", ")
            )));
        }
        let id = format!("ro-{}", all.next + 1);
        let mut runs = BTreeMap::new();
        for (k, step) in steps.iter().enumerate() {
            for d in step {
                runs.insert(
                    d.clone(),
                    DeviceRun {
                        state: DeviceRunState::Waiting,
                        step: k,
                        version: None,
                        started_ms: None,
                        soak_since_ms: None,
                        finished_ms: None,
                        reason: None,
                        rollback_version: None,
                        previous: None,
                    },
                );
            }
        }
        let mut r = Rollout {
            id: id.clone(),
            spec,
            model,
            created_ms: now,
            created_by: by.to_string(),
            state: RolloutState::Running,
            reason: None,
            steps,
            step: 0,
            devices: runs,
            updated_ms: now,
            log: Vec::new(),
        };
        let plan = r
            .steps
            .iter()
            .map(|s| s.len().to_string())
            .collect::<Vec<_>>()
            .join(" + ");
        r.log(
            now,
            "created",
            None,
            Some(format!("by {by}: {} to {plan} devices", r.model.key())),
        );
        let mut next = RolloutFile {
            next: all.next + 1,
            rollouts: all.rollouts.clone(),
        };
        next.rollouts.push(r);
        self.persist(&next)?;
        *all = next;
        drop(all);
        drop(guard);
        self.tick();
        self.get(&id).ok_or(RolloutError::NotFound(id))
    }

    /// Pauses (`pause`), resumes (`resume`) or aborts (`abort`) a rollout.
    pub fn act(&self, id: &str, action: Action, by: &str) -> Result<Rollout, RolloutError> {
        let now = self.clock.now_ms();
        {
            let _steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
            let mut all = self.lock();
            let mut next = RolloutFile {
                next: all.next,
                rollouts: all.rollouts.clone(),
            };
            let r = next
                .rollouts
                .iter_mut()
                .find(|r| r.id == id)
                .ok_or_else(|| RolloutError::NotFound(id.to_string()))?;
            match (action, r.state) {
                (_, s) if s.finished() => {
                    return Err(RolloutError::Conflict(format!(
                        "rollout {id} has finished ({})",
                        format!("{s:?}").to_lowercase()
                    )))
                }
                (Action::Pause, RolloutState::Running) => {
                    r.state = RolloutState::Paused;
                    r.log(now, "paused", None, Some(format!("by {by}")));
                }
                (Action::Resume, RolloutState::Paused) => {
                    r.state = RolloutState::Running;
                    r.log(now, "resumed", None, Some(format!("by {by}")));
                }
                (Action::Abort, _) => {
                    r.state = RolloutState::Aborted;
                    r.reason = Some(format!("aborted by {by}"));
                    r.log(now, "aborted", None, Some(format!("by {by}")));
                }
                // Pausing a paused rollout, resuming a running one: already so.
                _ => return Ok(r.clone()),
            }
            self.persist(&next)?;
            *all = next;
        }
        self.tick();
        self.get(id)
            .ok_or_else(|| RolloutError::NotFound(id.into()))
    }

    /// Moves every active rollout on: starts devices, judges answers and soaks, rolls back
    /// failures, advances steps. Called every second by the fleet task (and after changes).
    /// Blocking (it syncs files): not on a runtime thread.
    pub fn tick(&self) {
        let _steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<String> = self
            .lock()
            .rollouts
            .iter()
            .filter(|r| r.active() || r.devices.values().any(unsettled))
            .map(|r| r.id.clone())
            .collect();
        for id in ids {
            if let Err(e) = self.tick_one(&id) {
                tracing::error!(rollout = %id, "rollout step not taken: {e}; tried again in a second");
            }
        }
    }

    fn tick_one(&self, id: &str) -> Result<(), RolloutError> {
        let Some(mut r) = self.get(id) else {
            return Ok(());
        };
        let before = r.clone();
        let now = self.clock.now_ms();
        let by = format!("rollout {}", r.id);
        if r.state.finished() {
            // Stopped: every device still on its way goes back.
            for run in r.devices.values_mut() {
                if matches!(
                    run.state,
                    DeviceRunState::Updating | DeviceRunState::Soaking
                ) {
                    run.state = DeviceRunState::Aborted;
                    run.finished_ms = Some(now);
                }
                if run.state == DeviceRunState::Waiting {
                    run.state = DeviceRunState::Skipped;
                }
            }
        } else {
            self.judge_devices(&mut r, now)?;
            self.decide_step(&mut r, now);
            if r.state == RolloutState::Running {
                self.start_step(&mut r, now, &by)?;
            }
        }
        // Roll back whatever failed or was stopped and is not back yet.
        let pending: Vec<String> = r
            .devices
            .iter()
            .filter(|(_, run)| needs_rollback(run))
            .map(|(d, _)| d.clone())
            .collect();
        for d in pending {
            let run = r.devices.get(&d).cloned().expect("listed above");
            let (cameras, model, models) = match &run.previous {
                Some(p) => (p.cameras.clone(), p.model.clone(), p.models.clone()),
                None => (Vec::new(), None, Vec::new()),
            };
            let rec = self
                .fleet
                .set(&d, cameras, model, models, &format!("{by} rollback"))?;
            let v = rec.desired.as_ref().map(|x| x.version);
            let back_to = run
                .previous
                .as_ref()
                .and_then(|p| p.model.as_ref().map(|m| m.key()))
                .unwrap_or_else(|| "its own model".into());
            if let Some(x) = r.devices.get_mut(&d) {
                x.rollback_version = v;
            }
            r.log(
                now,
                "rolled_back",
                Some(&d),
                Some(format!(
                    "configuration {} sent: back to {back_to}",
                    v.unwrap_or(0)
                )),
            );
        }
        if r != before {
            self.save(r)?;
        }
        Ok(())
    }

    fn save(&self, r: Rollout) -> Result<(), RolloutError> {
        let mut all = self.lock();
        let mut next = RolloutFile {
            next: all.next,
            rollouts: all.rollouts.clone(),
        };
        match next.rollouts.iter_mut().find(|x| x.id == r.id) {
            Some(x) => *x = r,
            None => return Ok(()),
        }
        // Forget the oldest finished rollouts beyond the limit.
        let finished = next.rollouts.iter().filter(|r| !r.active()).count();
        if finished > FINISHED_KEPT {
            let mut drop_n = finished - FINISHED_KEPT;
            next.rollouts.retain(|r| {
                if drop_n > 0 && !r.active() && !r.devices.values().any(unsettled) {
                    drop_n -= 1;
                    false
                } else {
                    true
                }
            });
        }
        self.persist(&next)?;
        *all = next;
        Ok(())
    }

    /// Judges the devices of the rollout that are updating or soaking.
    fn judge_devices(&self, r: &mut Rollout, now: i64) -> Result<(), RolloutError> {
        let timeout = i64::from(r.spec.device_timeout_s) * 1000;
        let soak = i64::from(r.spec.soak_s) * 1000;
        let silent = i64::from(r.spec.silent_s) * 1000;
        let names: Vec<String> = r.devices.keys().cloned().collect();
        for d in names {
            let run = r.devices[&d].clone();
            let Some(version) = run.version else { continue };
            let started = run.started_ms.unwrap_or(now);
            let mut fail = None;
            let mut upd = run.clone();
            match run.state {
                DeviceRunState::Updating => {
                    let rec = self.fleet.get(&d);
                    let applied = rec
                        .as_ref()
                        .is_some_and(|c| c.applied_version.is_some_and(|v| v >= version));
                    let refused = rec.as_ref().and_then(|c| {
                        c.rejected
                            .as_ref()
                            .filter(|x| x.version == version)
                            .map(|x| x.reason.clone())
                    });
                    if let Some(why) = refused {
                        r.log(now, "refused", Some(&d), Some(why.clone()));
                        fail = Some(format!("refused: {why}"));
                    } else if applied {
                        upd.state = DeviceRunState::Soaking;
                        upd.soak_since_ms = Some(now);
                        r.log(
                            now,
                            "applied",
                            Some(&d),
                            Some(format!("configuration {version}")),
                        );
                    } else if now - started > timeout {
                        fail = Some(format!(
                            "no answer within {} s (device offline or silent)",
                            r.spec.device_timeout_s
                        ));
                        r.log(now, "timeout", Some(&d), fail.clone());
                    }
                }
                DeviceRunState::Soaking => {
                    let since = run.soak_since_ms.unwrap_or(now);
                    let last = self.status.get(&d);
                    match judge(last.as_ref(), version, &r.model, since, now, silent) {
                        Health::Unhealthy(why) => {
                            r.log(now, "soak_failed", Some(&d), Some(why.clone()));
                            fail = Some(why);
                        }
                        Health::Unknown if now - started > timeout => {
                            fail = Some(format!(
                                "no healthy status within {} s",
                                r.spec.device_timeout_s
                            ));
                            r.log(now, "timeout", Some(&d), fail.clone());
                        }
                        Health::Unknown => {
                            // The soak counts from the first healthy status.
                            upd.soak_since_ms = Some(now);
                        }
                        Health::Healthy if now - since >= soak => {
                            upd.state = DeviceRunState::Succeeded;
                            upd.finished_ms = Some(now);
                            r.log(
                                now,
                                "succeeded",
                                Some(&d),
                                Some(format!(
                                    "healthy on {} for {} s",
                                    r.model.key(),
                                    r.spec.soak_s
                                )),
                            );
                        }
                        Health::Healthy => {}
                    }
                }
                _ => continue,
            }
            if let Some(why) = fail {
                upd.state = DeviceRunState::Failed;
                upd.reason = Some(why);
                upd.finished_ms = Some(now);
            }
            r.devices.insert(d, upd);
        }
        Ok(())
    }

    /// Applies the failure threshold and finishes steps.
    fn decide_step(&self, r: &mut Rollout, now: i64) {
        let started: Vec<&DeviceRun> = r
            .devices
            .values()
            .filter(|d| d.state != DeviceRunState::Waiting)
            .collect();
        let failed: Vec<(&String, &DeviceRun)> = r
            .devices
            .iter()
            .filter(|(_, d)| d.state == DeviceRunState::Failed)
            .collect();
        let allowed = started.len() * r.spec.max_failures_pct as usize / 100;
        let canary_failed = r
            .steps
            .first()
            .and_then(|s| s.first())
            .and_then(|c| r.devices.get(c))
            .is_some_and(|d| d.state == DeviceRunState::Failed);
        if canary_failed || failed.len() > allowed {
            let Some((d, run)) = failed
                .first()
                .map(|(d, run)| ((*d).clone(), (*run).clone()))
            else {
                return;
            };
            let which = if canary_failed {
                format!("canary {}", r.steps[0][0])
            } else {
                d.clone()
            };
            let why = run.reason.unwrap_or_default();
            let reason = format!(
                "{which} failed at step {} ({}): {why}",
                run.step,
                if run.step == 0 { "canary" } else { "batch" }
            );
            r.state = RolloutState::Failed;
            r.reason = Some(reason.clone());
            r.log(now, "failed", None, Some(reason));
            for run in r.devices.values_mut() {
                match run.state {
                    DeviceRunState::Updating | DeviceRunState::Soaking => {
                        run.state = DeviceRunState::Aborted;
                        run.finished_ms = Some(now);
                    }
                    DeviceRunState::Waiting => run.state = DeviceRunState::Skipped,
                    _ => {}
                }
            }
            return;
        }
        let Some(step) = r.steps.get(r.step).cloned() else {
            return;
        };
        let runs: Vec<&DeviceRun> = step.iter().filter_map(|d| r.devices.get(d)).collect();
        let started_all = runs.iter().all(|d| d.state != DeviceRunState::Waiting);
        let done = runs
            .iter()
            .all(|d| matches!(d.state, DeviceRunState::Succeeded | DeviceRunState::Failed));
        if !(started_all && done) {
            return;
        }
        let ok = runs
            .iter()
            .filter(|d| d.state == DeviceRunState::Succeeded)
            .count();
        let pct = ok * 100 / runs.len().max(1);
        if pct < r.spec.success_threshold_pct as usize {
            let reason = format!(
                "step {} reached {pct} % succeeded, below the {} % threshold",
                r.step, r.spec.success_threshold_pct
            );
            r.state = RolloutState::Failed;
            r.reason = Some(reason.clone());
            r.log(now, "failed", None, Some(reason));
            for run in r.devices.values_mut() {
                if run.state == DeviceRunState::Waiting {
                    run.state = DeviceRunState::Skipped;
                }
            }
            return;
        }
        r.log(
            now,
            "step",
            None,
            Some(format!(
                "step {} done: {ok}/{} succeeded",
                r.step,
                runs.len()
            )),
        );
        r.step += 1;
        if r.step >= r.steps.len() {
            r.state = RolloutState::Succeeded;
            r.log(
                now,
                "finished",
                None,
                Some(format!("{} everywhere", r.model.key())),
            );
        }
    }

    /// Starts the waiting devices of the current step.
    fn start_step(&self, r: &mut Rollout, now: i64, by: &str) -> Result<(), RolloutError> {
        let Some(step) = r.steps.get(r.step).cloned() else {
            return Ok(());
        };
        for d in step {
            if r.devices.get(&d).map(|x| x.state) != Some(DeviceRunState::Waiting) {
                continue;
            }
            let previous = self.fleet.get(&d).and_then(|c| c.desired);
            // The cameras' settings and their own models stay as they were.
            let (cameras, models) = previous
                .as_ref()
                .map(|p| (p.cameras.clone(), p.models.clone()))
                .unwrap_or_default();
            let rec = self
                .fleet
                .set(&d, cameras, Some(r.model.clone()), models, by)?;
            let version = rec.desired.as_ref().map(|x| x.version);
            if let Some(run) = r.devices.get_mut(&d) {
                run.state = DeviceRunState::Updating;
                run.version = version;
                run.started_ms = Some(now);
                run.previous = previous;
            }
            r.log(
                now,
                "sent",
                Some(&d),
                Some(format!(
                    "configuration {} with {}",
                    version.unwrap_or(0),
                    r.model.key()
                )),
            );
        }
        Ok(())
    }
}

/// A device a stopped rollout still has to settle: on its way, waiting, or not sent back.
fn unsettled(run: &DeviceRun) -> bool {
    matches!(
        run.state,
        DeviceRunState::Updating | DeviceRunState::Soaking | DeviceRunState::Waiting
    ) || needs_rollback(run)
}

/// A failed or stopped device whose previous configuration has not been sent back yet.
fn needs_rollback(run: &DeviceRun) -> bool {
    matches!(run.state, DeviceRunState::Failed | DeviceRunState::Aborted)
        && run.version.is_some()
        && run.rollback_version.is_none()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pause,
    Resume,
    Abort,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Commands;
    use crate::support::clock::ManualClock;
    use csb_wire::{CameraStatus, Command, CommandReply, ReplyStatus, SCHEMA_VERSION};
    use std::time::Duration;

    #[derive(Default)]
    struct Sent(Mutex<Vec<Command>>);
    impl Commands for Sent {
        fn send(&self, c: &Command) -> bool {
            self.0.lock().unwrap().push(c.clone());
            true
        }
    }

    struct OneModel(ModelManifest);
    impl ModelSource for OneModel {
        fn assignable(&self, name: &str, version: &str) -> Result<ModelManifest, String> {
            if name == self.0.name && version == self.0.version {
                Ok(self.0.clone())
            } else {
                Err(format!("no model {name}@{version}"))
            }
        }
    }

    fn manifest() -> ModelManifest {
        serde_json::from_value(serde_json::json!({
            "name": "yolox_nano", "version": "2", "decoder": "yolox", "labels": ["person", "bus"],
            "input": {"name": "images", "width": 416, "height": 416, "layout": "nchw",
                      "channel_order": "bgr", "scale": 1.0, "pad_value": 114.0},
            "output": {"name": "output", "strides": [8, 16, 32], "nms_iou": 0.45},
            "sha256": "a".repeat(64), "bytes": 10,
            "selftest": {"image_sha256": "b".repeat(64), "image_bytes": 5,
                         "expect": [{"label": "bus", "min_score": 0.8, "box": [1, 2, 3, 4]}]}
        }))
        .unwrap()
    }

    struct Rig {
        _dir: tempfile::TempDir,
        clock: ManualClock,
        sent: Arc<Sent>,
        fleet: Arc<FleetConfig>,
        status: Arc<LastStatus>,
        ro: Rollouts,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at(1_000_000);
        let sent = Arc::new(Sent::default());
        let fleet = Arc::new(
            FleetConfig::open(
                dir.path(),
                sent.clone(),
                Arc::new(clock.clone()),
                Duration::from_secs(5),
            )
            .unwrap(),
        );
        let status = Arc::new(LastStatus::default());
        let ro = Rollouts::open(
            dir.path(),
            fleet.clone(),
            status.clone(),
            Arc::new(OneModel(manifest())),
            None,
            Arc::new(clock.clone()),
        )
        .unwrap();
        Rig {
            _dir: dir,
            clock,
            sent,
            fleet,
            status,
            ro,
        }
    }

    impl Rig {
        /// The agent `device` answers the newest push it got.
        fn answer(&self, device: &str, ok: bool, reason: &str) -> u64 {
            let cmd = self
                .sent
                .0
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|c| format!("{}/{}", c.site, c.device) == device)
                .cloned()
                .unwrap();
            let csb_wire::CommandOp::Config(p) = &cmd.op else {
                panic!()
            };
            self.fleet
                .on_reply(&CommandReply {
                    v: SCHEMA_VERSION,
                    id: cmd.id.clone(),
                    site: cmd.site.clone(),
                    device: cmd.device.clone(),
                    ts_ms: 0,
                    status: if ok {
                        ReplyStatus::Done
                    } else {
                        ReplyStatus::Refused
                    },
                    reason: (!ok).then(|| reason.to_string()),
                    recheck: None,
                    config: ok.then_some(csb_wire::ConfigApplied {
                        version: p.version,
                        model: None,
                    }),
                })
                .unwrap();
            p.version
        }

        /// `device` reports it runs `version` with the model, healthy.
        fn healthy(&self, device: &str, version: u64, model: Option<&str>) {
            let (site, dev) = device.split_once('/').unwrap();
            let mut s = csb_test_status(site, dev);
            s.config_version = Some(version);
            s.model = model.map(|v| csb_wire::model::ModelVersion {
                name: "yolox_nano".into(),
                version: Some(v.into()),
                sha256: "aaaaaaaaaaaa".into(),
            });
            s.ts_ms = self.clock.now_ms();
            self.status.record(s, self.clock.now_ms());
        }
    }

    fn csb_test_status(site: &str, device: &str) -> DeviceStatus {
        DeviceStatus {
            v: SCHEMA_VERSION,
            site: site.into(),
            device: device.into(),
            ts_ms: 0,
            state: DeviceState::Online,
            agent_version: None,
            cameras: vec![CameraStatus {
                id: "cam-1".into(),
                state: CameraState::Running,
                fps: Some(10.0),
                error: None,
                health: None,
            }],
            sensors: vec![],
            outbox: None,
            config_version: None,
            model: None,
        }
    }

    fn spec(devices: &[&str]) -> RolloutSpec {
        serde_json::from_value(serde_json::json!({
            "model": {"name": "yolox_nano", "version": "2"},
            "devices": devices,
            "batches": [{"count": 2}],
            "soak_s": 10, "device_timeout_s": 60, "silent_s": 30
        }))
        .unwrap()
    }

    #[test]
    fn canary_then_batches_each_soaked_before_the_next() {
        let g = rig();
        let devs = ["s/gw-1", "s/gw-2", "s/gw-3", "s/gw-4"];
        let r = g.ro.start(spec(&devs), "ops").unwrap();
        assert_eq!(r.steps.len(), 3, "canary + 2 + 1: {:?}", r.steps);
        assert_eq!(r.devices["s/gw-1"].state, DeviceRunState::Updating);
        assert_eq!(r.devices["s/gw-2"].state, DeviceRunState::Waiting);
        let push = g.sent.0.lock().unwrap()[0].clone();
        match &push.op {
            csb_wire::CommandOp::Config(p) => {
                assert_eq!(p.model.as_ref().unwrap().version, "2")
            }
            _ => panic!(),
        }
        let v = g.answer("s/gw-1", true, "");
        g.ro.tick();
        assert_eq!(
            g.ro.get(&r.id).unwrap().devices["s/gw-1"].state,
            DeviceRunState::Soaking
        );
        // Healthy, but not for the soak time yet: the batch waits.
        g.clock.advance(1_000);
        g.healthy("s/gw-1", v, Some("2"));
        g.ro.tick();
        g.clock.advance(5_000);
        g.healthy("s/gw-1", v, Some("2"));
        g.ro.tick();
        assert_eq!(
            g.ro.get(&r.id).unwrap().devices["s/gw-2"].state,
            DeviceRunState::Waiting
        );
        g.clock.advance(5_000);
        g.healthy("s/gw-1", v, Some("2"));
        g.ro.tick();
        let now = g.ro.get(&r.id).unwrap();
        assert_eq!(now.devices["s/gw-1"].state, DeviceRunState::Succeeded);
        assert_eq!(now.devices["s/gw-2"].state, DeviceRunState::Updating);
        assert_eq!(now.devices["s/gw-3"].state, DeviceRunState::Updating);
        assert_eq!(now.devices["s/gw-4"].state, DeviceRunState::Waiting);
        for step in [&["s/gw-2", "s/gw-3"][..], &["s/gw-4"][..]] {
            let vs: Vec<u64> = step.iter().map(|d| g.answer(d, true, "")).collect();
            g.ro.tick();
            for _ in 0..3 {
                g.clock.advance(5_000);
                for (d, v) in step.iter().zip(&vs) {
                    g.healthy(d, *v, Some("2"));
                }
                g.ro.tick();
            }
        }
        let done = g.ro.get(&r.id).unwrap();
        assert_eq!(done.state, RolloutState::Succeeded, "{:?}", done.log);
        assert!(done
            .devices
            .values()
            .all(|d| d.state == DeviceRunState::Succeeded));
        // Survives a restart.
        let again = Rollouts::open(
            g._dir.path(),
            g.fleet.clone(),
            g.status.clone(),
            Arc::new(OneModel(manifest())),
            None,
            Arc::new(g.clock.clone()),
        )
        .unwrap();
        assert_eq!(again.get(&r.id).unwrap(), done);
    }

    #[test]
    fn a_refusing_canary_fails_the_rollout_and_gets_its_old_configuration_back() {
        let g = rig();
        let r = g.ro.start(spec(&["s/gw-1", "s/gw-2"]), "ops").unwrap();
        g.answer(
            "s/gw-1",
            false,
            "model yolox_nano@2: self-test failed: bus >= 0.85: best was train 0.95",
        );
        g.ro.tick();
        let r = g.ro.get(&r.id).unwrap();
        assert_eq!(r.state, RolloutState::Failed);
        let reason = r.reason.clone().unwrap();
        assert!(
            reason.contains("canary s/gw-1") && reason.contains("self-test failed"),
            "{reason}"
        );
        assert_eq!(r.devices["s/gw-2"].state, DeviceRunState::Skipped);
        let back = r.devices["s/gw-1"].rollback_version.unwrap();
        let desired = g.fleet.get("s/gw-1").unwrap().desired.unwrap();
        assert_eq!(desired.version, back);
        assert!(desired.model.is_none(), "back to the agent's own model");
        assert!(g.fleet.get("s/gw-2").is_none(), "the batch never started");
        assert!(r.log.iter().any(|e| e.what == "rolled_back"));
    }

    #[test]
    fn silence_and_timeouts_fail_a_device_and_abort_stops_those_updating() {
        let g = rig();
        let mut sp = spec(&["s/gw-1", "s/gw-2", "s/gw-3"]);
        sp.max_failures_pct = 50;
        let r = g.ro.start(sp, "ops").unwrap();
        let v = g.answer("s/gw-1", true, "");
        g.ro.tick();
        g.healthy("s/gw-1", v, Some("2"));
        for _ in 0..3 {
            g.clock.advance(5_000);
            g.healthy("s/gw-1", v, Some("2"));
            g.ro.tick();
        }
        // Batch: gw-2 never answers, gw-3 applies then goes silent.
        let v3 = g.answer("s/gw-3", true, "");
        g.ro.tick();
        g.healthy("s/gw-3", v3, Some("2"));
        g.ro.tick();
        g.clock.advance(31_000);
        g.ro.tick();
        let now = g.ro.get(&r.id).unwrap();
        assert_eq!(now.devices["s/gw-3"].state, DeviceRunState::Failed);
        assert!(now.devices["s/gw-3"]
            .reason
            .as_ref()
            .unwrap()
            .contains("silent"));
        assert_eq!(
            now.state,
            RolloutState::Running,
            "1 of 3 failed is within 50 %"
        );
        g.clock.advance(30_000);
        g.ro.tick();
        let now = g.ro.get(&r.id).unwrap();
        assert_eq!(now.devices["s/gw-2"].state, DeviceRunState::Failed);
        assert!(now.devices["s/gw-2"]
            .reason
            .as_ref()
            .unwrap()
            .contains("no answer"));
        assert_eq!(now.state, RolloutState::Failed);
        assert!(now.devices["s/gw-2"].rollback_version.is_some());

        // Abort: the device updating goes back too.
        let g = rig();
        let r = g.ro.start(spec(&["s/gw-1"]), "ops").unwrap();
        let r = g.ro.act(&r.id, Action::Abort, "ops").unwrap();
        assert_eq!(r.state, RolloutState::Aborted);
        assert_eq!(r.devices["s/gw-1"].state, DeviceRunState::Aborted);
        assert!(r.devices["s/gw-1"].rollback_version.is_some());
        assert!(matches!(
            g.ro.act(&r.id, Action::Resume, "ops"),
            Err(RolloutError::Conflict(_))
        ));
    }

    #[test]
    fn bad_specs_name_the_field() {
        let g = rig();
        let mut sp = spec(&["s/gw-1"]);
        sp.model.version = "9".into();
        assert!(
            matches!(g.ro.start(sp, "ops"), Err(RolloutError::Invalid { field, .. }) if field == "model")
        );
        let sp = spec(&["s/gw-1", "nope"]);
        assert!(
            matches!(g.ro.start(sp, "ops"), Err(RolloutError::Invalid { field, .. }) if field == "devices[1]")
        );
        let mut sp = spec(&["s/gw-1"]);
        sp.canary = Some("s/gw-9".into());
        assert!(
            matches!(g.ro.start(sp, "ops"), Err(RolloutError::Invalid { field, .. }) if field == "canary")
        );
        g.ro.start(spec(&["s/gw-1"]), "ops").unwrap();
        assert!(matches!(
            g.ro.start(spec(&["s/gw-1"]), "ops"),
            Err(RolloutError::Conflict(_))
        ));
        assert_eq!(
            plan_batches(
                &["a", "b", "c", "d", "e"].map(String::from),
                &[BatchSize::Count(1), BatchSize::Percent(50)],
                6
            )
            .iter()
            .map(Vec::len)
            .collect::<Vec<_>>(),
            vec![1, 3, 1]
        );
    }
}
