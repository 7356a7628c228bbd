//! The 家底 report: every device the county registered (county model) or the hub has heard
//! from, with its place, owner, versions and state, plus what each data source has delivered.
//!
//! Pure: built from the county model, the stored device statuses and the record logs' source
//! statistics ([`Store::sources`](crate::storage::store::Store::sources)), so the API and the CLI show
//! exactly the same thing and tests need no hub.
//!
//! State of a device:
//! - a gateway is `online` while its last status (retained, republished every health tick)
//!   says so, `offline` after an offline status — its own on shutdown or the broker's last
//!   will when the link dies — and `stale` when online but silent for longer than
//!   `stale_after_ms` (the hub may have missed the will, e.g. while it was down itself);
//! - a camera or sensor is `online` when its gateway is and the gateway reports it running
//!   (camera) or reporting (sensor); otherwise `offline`, with the reason in `detail`;
//! - `never_seen`: registered, but the hub has no status or data from it.
//!
//! Devices seen on the wire but missing from the county model are listed with
//! `registered = false` ("unregistered"), never dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use csb_wire::{CameraState, DeviceState, SensorState};
use serde::{Deserialize, Serialize};

use crate::platform::county::{County, Placed};
use crate::storage::store::{DataKind, DeviceRecord, SourceRecord};

/// Default of `stale_after_ms`: statuses come every health tick (seconds), so five minutes of
/// silence from an "online" gateway means something is wrong.
pub const DEFAULT_STALE_AFTER_MS: i64 = 5 * 60 * 1000;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Gateway,
    Camera,
    Sensor,
}

impl DeviceKind {
    fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Gateway => "gateway",
            DeviceKind::Camera => "camera",
            DeviceKind::Sensor => "sensor",
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Online,
    Offline,
    Stale,
    NeverSeen,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Offline => "offline",
            Status::Stale => "stale",
            Status::NeverSeen => "never_seen",
        }
    }
}

/// One device of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeviceRow {
    /// As on the wire: `site/device` (gateway), `site/device/id` (camera, sensor).
    pub id: String,
    pub kind: DeviceKind,
    /// In the county model; `false` = seen on the wire only ("unregistered").
    pub registered: bool,
    pub name: Option<String>,
    pub model: Option<String>,
    /// Gateway firmware from the county model.
    pub firmware: Option<String>,
    /// What the gateway itself reports running (`agent_version` of its status).
    pub reported_version: Option<String>,
    /// The hub's managed configuration version the gateway reports running (its status).
    #[serde(default)]
    pub config_applied: Option<u64>,
    /// The configuration version the hub wants it to run (fleet configuration), when set.
    #[serde(default)]
    pub config_desired: Option<u64>,
    pub town: Option<String>,
    pub department: Option<String>,
    pub installed: Option<String>,
    /// `[lon, lat]`.
    pub location: Option<[f64; 2]>,
    pub status: Status,
    /// Why it is not online, when known (camera or sensor state, last error, silence).
    pub detail: Option<String>,
    /// Last status or data from it the hub received (Unix ms).
    pub last_seen_ms: Option<i64>,
    /// Events and telemetry messages stored from it (a gateway counts its cameras' too).
    pub events: u64,
    pub telemetry: u64,
}

/// One data source: a camera's events or one telemetry source's messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SourceRow {
    /// `site/device/source`.
    pub id: String,
    pub kind: DataKind,
    /// The device it belongs to, as in [`DeviceRow::id`].
    pub device: String,
    pub records: u64,
    pub bytes: u64,
    pub first_ts_ms: i64,
    pub last_ts_ms: i64,
    pub last_received_ms: i64,
    /// `now - last_received_ms`.
    pub age_ms: i64,
    /// Delivered within `stale_after_ms`.
    pub fresh: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Summary {
    pub devices: u64,
    pub registered: u64,
    pub unregistered: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub by_status: BTreeMap<String, u64>,
    /// Town id → devices; devices without a town under `(none)`.
    pub by_town: BTreeMap<String, u64>,
    pub by_department: BTreeMap<String, u64>,
    pub sources: u64,
    pub stale_sources: u64,
    pub events: u64,
    pub telemetry: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Inventory {
    pub generated_ms: i64,
    pub stale_after_ms: i64,
    /// The county model's id, when one is loaded.
    pub county: Option<String>,
    pub summary: Summary,
    pub devices: Vec<DeviceRow>,
    pub sources: Vec<SourceRow>,
}

const NONE: &str = "(none)";

fn row(id: String, kind: DeviceKind, placed: Option<&Placed>) -> DeviceRow {
    DeviceRow {
        id,
        kind,
        registered: placed.is_some(),
        name: placed.map(|p| p.name.clone()),
        model: placed.and_then(|p| p.model.clone()),
        firmware: None,
        reported_version: None,
        config_applied: None,
        config_desired: None,
        town: placed.and_then(|p| p.town.clone()),
        department: placed.and_then(|p| p.department.clone()),
        installed: placed.and_then(|p| p.installed.clone()),
        location: placed.map(|p| p.location),
        status: Status::NeverSeen,
        detail: None,
        last_seen_ms: None,
        events: 0,
        telemetry: 0,
    }
}

/// The row of `id`, added as unregistered when the county model does not have it.
fn get(rows: &mut BTreeMap<String, DeviceRow>, id: String, kind: DeviceKind) -> &mut DeviceRow {
    rows.entry(id.clone())
        .or_insert_with(|| row(id, kind, None))
}

/// Builds the report. `now_ms` and `stale_after_ms` decide `stale` and `fresh`.
pub fn build(
    county: Option<&County>,
    statuses: &[DeviceRecord],
    sources: &[SourceRecord],
    now_ms: i64,
    stale_after_ms: i64,
) -> Inventory {
    let mut rows: BTreeMap<String, DeviceRow> = BTreeMap::new();
    if let Some(c) = county {
        for g in &c.gateways {
            let mut r = row(g.id.clone(), DeviceKind::Gateway, Some(&g.placed));
            r.firmware = g.firmware.clone();
            rows.insert(g.id.clone(), r);
        }
        for cam in &c.cameras {
            rows.insert(
                cam.id.clone(),
                row(cam.id.clone(), DeviceKind::Camera, Some(&cam.placed)),
            );
        }
        for s in &c.sensors {
            rows.insert(
                s.id.clone(),
                row(s.id.clone(), DeviceKind::Sensor, Some(&s.placed)),
            );
        }
    }
    // Cameras each gateway reports, to tell a camera's telemetry from a sensor's.
    let mut cameras: BTreeSet<String> = BTreeSet::new();
    for d in statuses {
        let s = &d.status;
        let gw_id = format!("{}/{}", s.site, s.device);
        let silent = now_ms.saturating_sub(d.received_ms);
        let gw_status = match s.state {
            DeviceState::Offline => Status::Offline,
            DeviceState::Online if silent > stale_after_ms => Status::Stale,
            DeviceState::Online => Status::Online,
        };
        let gw = get(&mut rows, gw_id.clone(), DeviceKind::Gateway);
        gw.status = gw_status;
        gw.detail = match gw_status {
            Status::Stale => Some(format!("online, but no status for {} s", silent / 1000)),
            Status::Offline => Some("offline status (shutdown or last will)".into()),
            _ => None,
        };
        gw.reported_version = s.agent_version.clone();
        gw.config_applied = s.config_version;
        gw.last_seen_ms = Some(d.received_ms);
        for c in &s.cameras {
            let id = format!("{gw_id}/{}", c.id);
            cameras.insert(id.clone());
            let r = get(&mut rows, id, DeviceKind::Camera);
            r.last_seen_ms = Some(d.received_ms);
            (r.status, r.detail) = match (gw_status, c.state) {
                (Status::Online, CameraState::Running) => (Status::Online, None),
                (Status::Online, state) => (
                    Status::Offline,
                    Some(match &c.error {
                        Some(e) => format!("{state:?}: {e}").to_lowercase(),
                        None => format!("{state:?}").to_lowercase(),
                    }),
                ),
                (gw, _) => (gw, Some(format!("gateway {}", gw.as_str()))),
            };
        }
        for sensor in &s.sensors {
            let r = get(
                &mut rows,
                format!("{gw_id}/{}", sensor.id),
                DeviceKind::Sensor,
            );
            r.last_seen_ms = Some(d.received_ms);
            (r.status, r.detail) = match (gw_status, sensor.state) {
                (Status::Online, SensorState::Reporting) => (Status::Online, None),
                (Status::Online, state) => (
                    Status::Offline,
                    Some(match &sensor.last_error {
                        Some(e) => format!("{state:?}: {e}").to_lowercase(),
                        None => format!("{state:?}").to_lowercase(),
                    }),
                ),
                (gw, _) => (gw, Some(format!("gateway {}", gw.as_str()))),
            };
        }
    }
    // Cameras and sensors their gateway's status does not list (an offline status lists
    // none) take the gateway's state.
    let gateways: BTreeMap<String, Status> = rows
        .values()
        .filter(|r| r.kind == DeviceKind::Gateway)
        .map(|r| (r.id.clone(), r.status))
        .collect();
    for r in rows.values_mut() {
        if r.kind == DeviceKind::Gateway || r.status != Status::NeverSeen {
            continue;
        }
        let gw_id = r.id.rsplit_once('/').map_or("", |(gw, _)| gw);
        match gateways.get(gw_id) {
            Some(Status::Online) => {
                r.status = Status::Offline;
                r.detail = Some("not in its gateway's status".into());
            }
            Some(&gw) if gw != Status::NeverSeen => {
                r.status = gw;
                r.detail = Some(format!("gateway {}", gw.as_str()));
            }
            _ => {}
        }
    }
    let mut source_rows = Vec::with_capacity(sources.len());
    for s in sources {
        let gw_id = format!("{}/{}", s.site, s.device);
        let src_id = format!("{gw_id}/{}", s.source);
        // Where the data is counted: events belong to their camera; telemetry from `agent` to
        // the gateway, from a known camera to it, else to a sensor of that id.
        let owner = match s.kind {
            DataKind::Events => Some((src_id.clone(), DeviceKind::Camera)),
            DataKind::Telemetry if s.source == "agent" => None,
            DataKind::Telemetry
                if cameras.contains(&src_id)
                    || county.is_some_and(|c| c.cameras.iter().any(|cam| cam.id == src_id)) =>
            {
                Some((src_id.clone(), DeviceKind::Camera))
            }
            DataKind::Telemetry => Some((src_id.clone(), DeviceKind::Sensor)),
        };
        let add = |r: &mut DeviceRow| {
            match s.kind {
                DataKind::Events => r.events += s.stats.records,
                DataKind::Telemetry => r.telemetry += s.stats.records,
            }
            r.last_seen_ms = Some(r.last_seen_ms.map_or(s.stats.last_received_ms, |t| {
                t.max(s.stats.last_received_ms)
            }));
        };
        add(get(&mut rows, gw_id.clone(), DeviceKind::Gateway));
        let device = match owner {
            Some((id, kind)) => {
                add(get(&mut rows, id.clone(), kind));
                id
            }
            None => gw_id,
        };
        let age_ms = now_ms.saturating_sub(s.stats.last_received_ms);
        source_rows.push(SourceRow {
            id: src_id,
            kind: s.kind,
            device,
            records: s.stats.records,
            bytes: s.stats.bytes,
            first_ts_ms: s.stats.first_ts_ms,
            last_ts_ms: s.stats.last_ts_ms,
            last_received_ms: s.stats.last_received_ms,
            age_ms,
            fresh: age_ms <= stale_after_ms,
        });
    }
    let devices: Vec<DeviceRow> = rows.into_values().collect();
    let mut sum = Summary::default();
    for d in &devices {
        sum.devices += 1;
        if d.registered {
            sum.registered += 1;
        } else {
            sum.unregistered += 1;
        }
        *sum.by_kind.entry(d.kind.as_str().into()).or_default() += 1;
        *sum.by_status.entry(d.status.as_str().into()).or_default() += 1;
        *sum.by_town
            .entry(d.town.clone().unwrap_or_else(|| NONE.into()))
            .or_default() += 1;
        *sum.by_department
            .entry(d.department.clone().unwrap_or_else(|| NONE.into()))
            .or_default() += 1;
    }
    for s in &source_rows {
        sum.sources += 1;
        sum.stale_sources += u64::from(!s.fresh);
        sum.bytes += s.bytes;
        match s.kind {
            DataKind::Events => sum.events += s.records,
            DataKind::Telemetry => sum.telemetry += s.records,
        }
    }
    Inventory {
        generated_ms: now_ms,
        stale_after_ms,
        county: county.map(|c| c.county.id.clone()),
        summary: sum,
        devices,
        sources: source_rows,
    }
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(out: &mut String, v: &str) {
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

fn csv_line(out: &mut String, fields: &[String]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, f);
    }
    out.push_str("\r\n");
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_default()
}

fn opt_num<T: ToString>(v: Option<T>) -> String {
    v.map(|n| n.to_string()).unwrap_or_default()
}

impl Inventory {
    /// The devices as CSV (header row first). Starts with a UTF-8 BOM so spreadsheet programs
    /// read the Chinese names right.
    pub fn devices_csv(&self) -> String {
        let mut out = String::from("\u{feff}");
        let header = [
            "id",
            "kind",
            "registered",
            "name",
            "model",
            "firmware",
            "reported_version",
            "config_applied",
            "config_desired",
            "town",
            "department",
            "installed",
            "lon",
            "lat",
            "status",
            "detail",
            "last_seen_ms",
            "events",
            "telemetry",
        ];
        csv_line(&mut out, &header.map(String::from));
        for d in &self.devices {
            csv_line(
                &mut out,
                &[
                    d.id.clone(),
                    d.kind.as_str().into(),
                    d.registered.to_string(),
                    opt(&d.name),
                    opt(&d.model),
                    opt(&d.firmware),
                    opt(&d.reported_version),
                    opt_num(d.config_applied),
                    opt_num(d.config_desired),
                    opt(&d.town),
                    opt(&d.department),
                    opt(&d.installed),
                    opt_num(d.location.map(|l| l[0])),
                    opt_num(d.location.map(|l| l[1])),
                    d.status.as_str().into(),
                    opt(&d.detail),
                    opt_num(d.last_seen_ms),
                    d.events.to_string(),
                    d.telemetry.to_string(),
                ],
            );
        }
        out
    }

    /// The data sources as CSV.
    pub fn sources_csv(&self) -> String {
        let mut out = String::from("\u{feff}");
        let header = [
            "id",
            "kind",
            "device",
            "records",
            "bytes",
            "first_ts_ms",
            "last_ts_ms",
            "last_received_ms",
            "age_ms",
            "fresh",
        ];
        csv_line(&mut out, &header.map(String::from));
        for s in &self.sources {
            let kind = match s.kind {
                DataKind::Events => "events",
                DataKind::Telemetry => "telemetry",
            };
            csv_line(
                &mut out,
                &[
                    s.id.clone(),
                    kind.into(),
                    s.device.clone(),
                    s.records.to_string(),
                    s.bytes.to_string(),
                    s.first_ts_ms.to_string(),
                    s.last_ts_ms.to_string(),
                    s.last_received_ms.to_string(),
                    s.age_ms.to_string(),
                    s.fresh.to_string(),
                ],
            );
        }
        out
    }

    /// A plain-text report for a terminal: summary, then devices and sources as tables.
    pub fn text(&self) -> String {
        let s = &self.summary;
        let mut out = String::new();
        let counts = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "家底 inventory{}: {} devices ({} registered, {} unregistered)",
            self.county
                .as_ref()
                .map(|c| format!(" of {c}"))
                .unwrap_or_default(),
            s.devices,
            s.registered,
            s.unregistered
        );
        let _ = writeln!(out, "  by kind:       {}", counts(&s.by_kind));
        let _ = writeln!(out, "  by status:     {}", counts(&s.by_status));
        let _ = writeln!(out, "  by town:       {}", counts(&s.by_town));
        let _ = writeln!(out, "  by department: {}", counts(&s.by_department));
        let _ = writeln!(
            out,
            "  data: {} sources ({} not fresh), {} events, {} telemetry messages, {} bytes\n",
            s.sources, s.stale_sources, s.events, s.telemetry, s.bytes
        );
        let mut table = vec![[
            "ID", "KIND", "REG", "STATUS", "TOWN", "DEPT", "MODEL", "VERSION", "EVENTS", "TELEM",
            "DETAIL",
        ]
        .map(String::from)
        .to_vec()];
        for d in &self.devices {
            table.push(vec![
                d.id.clone(),
                d.kind.as_str().into(),
                if d.registered { "yes" } else { "NO" }.into(),
                d.status.as_str().into(),
                opt(&d.town),
                opt(&d.department),
                opt(&d.model),
                d.firmware
                    .clone()
                    .or_else(|| d.reported_version.clone())
                    .unwrap_or_default(),
                d.events.to_string(),
                d.telemetry.to_string(),
                opt(&d.detail),
            ]);
        }
        push_table(&mut out, &table);
        out.push('\n');
        let mut table = vec![["SOURCE", "KIND", "RECORDS", "BYTES", "AGE_S", "FRESH"]
            .map(String::from)
            .to_vec()];
        for s in &self.sources {
            table.push(vec![
                s.id.clone(),
                match s.kind {
                    DataKind::Events => "events".into(),
                    DataKind::Telemetry => "telemetry".into(),
                },
                s.records.to_string(),
                s.bytes.to_string(),
                (s.age_ms / 1000).to_string(),
                if s.fresh { "yes" } else { "NO" }.into(),
            ]);
        }
        push_table(&mut out, &table);
        out
    }
}

/// Left-aligned columns, widths by characters (CJK names count as one each; close enough).
fn push_table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::reclog::SourceStats;
    use csb_wire::{CameraStatus, DeviceStatus, SensorStatus};

    fn county() -> County {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/county");
        County::load(&dir).expect("sample county loads")
    }

    fn status(device: &str, state: DeviceState, received_ms: i64) -> DeviceRecord {
        DeviceRecord {
            status: DeviceStatus {
                v: 1,
                site: "yuexi".into(),
                device: device.into(),
                ts_ms: received_ms,
                state,
                agent_version: Some("0.1.0".into()),
                cameras: vec![],
                sensors: vec![],
                outbox: None,
                config_version: None,
                model: None,
            },
            received_ms,
        }
    }

    fn source(kind: DataKind, device: &str, source: &str, records: u64, last: i64) -> SourceRecord {
        SourceRecord {
            kind,
            site: "yuexi".into(),
            device: device.into(),
            source: source.into(),
            stats: SourceStats {
                records,
                bytes: records * 100,
                first_ts_ms: 0,
                last_ts_ms: last,
                first_received_ms: 0,
                last_received_ms: last,
            },
        }
    }

    const NOW: i64 = 1_790_000_000_000;

    #[test]
    fn registered_unregistered_states_and_counts() {
        let c = county();
        let registered = (c.gateways.len() + c.cameras.len() + c.sensors.len()) as u64;
        let demo_cam = c
            .cameras
            .iter()
            .find(|cam| cam.id.starts_with("yuexi/gw-demo-01/"))
            .expect("the demo gateway has a camera")
            .id
            .clone();
        let cam_id = demo_cam.rsplit('/').next().unwrap().to_string();
        let mut demo = status("gw-demo-01", DeviceState::Online, NOW - 1000);
        demo.status.cameras = vec![
            CameraStatus {
                id: cam_id.clone(),
                state: CameraState::Running,
                fps: Some(10.0),
                error: None,
                health: None,
            },
            CameraStatus {
                id: "cam-extra".into(),
                state: CameraState::Failed,
                fps: None,
                error: Some("rtsp://10.0.0.9 refused".into()),
                health: None,
            },
        ];
        demo.status.sensors = vec![SensorStatus {
            id: "wl-new".into(),
            state: SensorState::Silent,
            last_reading_age_ms: None,
            readings_total: 0,
            errors_total: 0,
            last_error: None,
        }];
        let statuses = vec![
            demo,
            status("gw-tiantang-02", DeviceState::Offline, NOW - 5000),
            status("gw-tiantang-03", DeviceState::Online, NOW - 10 * 60 * 1000),
            status("gw-rogue", DeviceState::Online, NOW - 100),
        ];
        let sources = vec![
            source(DataKind::Events, "gw-demo-01", &cam_id, 7, NOW - 2000),
            source(DataKind::Telemetry, "gw-demo-01", "agent", 3, NOW - 1000),
            source(DataKind::Telemetry, "gw-demo-01", &cam_id, 2, NOW - 1000),
            source(
                DataKind::Events,
                "gw-rogue",
                "cam-x",
                4,
                NOW - 20 * 60 * 1000,
            ),
        ];
        let inv = build(Some(&c), &statuses, &sources, NOW, DEFAULT_STALE_AFTER_MS);
        let by_id = |id: &str| {
            inv.devices
                .iter()
                .find(|d| d.id == id)
                .unwrap_or_else(|| panic!("{id} listed"))
        };
        let s = &inv.summary;
        // Unregistered: the rogue gateway, its camera, the extra camera and the new sensor.
        assert_eq!((s.registered, s.unregistered), (registered, 4));
        assert_eq!(s.devices, registered + 4);
        assert!(!by_id("yuexi/gw-rogue").registered);
        assert_eq!(by_id("yuexi/gw-rogue/cam-x").kind, DeviceKind::Camera);
        assert_eq!(by_id("yuexi/gw-demo-01/wl-new").kind, DeviceKind::Sensor);

        let demo_gw = by_id("yuexi/gw-demo-01");
        assert_eq!(demo_gw.status, Status::Online);
        assert_eq!((demo_gw.events, demo_gw.telemetry), (7, 5));
        assert_eq!(demo_gw.reported_version.as_deref(), Some("0.1.0"));
        let cam = by_id(&demo_cam);
        assert_eq!(
            (cam.status, cam.events, cam.telemetry),
            (Status::Online, 7, 2)
        );
        let extra = by_id("yuexi/gw-demo-01/cam-extra");
        assert_eq!(extra.status, Status::Offline);
        assert!(extra.detail.as_deref().unwrap().contains("refused"));
        assert_eq!(by_id("yuexi/gw-demo-01/wl-new").status, Status::Offline);
        assert_eq!(by_id("yuexi/gw-tiantang-02").status, Status::Offline);
        assert_eq!(by_id("yuexi/gw-tiantang-03").status, Status::Stale);
        // Registered and never heard of.
        let quiet = c
            .gateways
            .iter()
            .find(|g| !g.id.contains("demo") && !g.id.contains("tiantang-0"))
            .unwrap();
        assert_eq!(by_id(&quiet.id).status, Status::NeverSeen);

        assert_eq!(s.by_kind.values().sum::<u64>(), s.devices);
        assert_eq!(s.by_status.values().sum::<u64>(), s.devices);
        assert_eq!(s.by_town.values().sum::<u64>(), s.devices);
        assert_eq!(
            s.by_town.get("(none)"),
            Some(&4),
            "unregistered have no town"
        );
        assert_eq!((s.events, s.telemetry, s.sources), (11, 5, 4));
        assert_eq!(s.stale_sources, 1);
        let rogue = inv
            .sources
            .iter()
            .find(|x| x.device == "yuexi/gw-rogue/cam-x");
        assert!(!rogue.unwrap().fresh);
    }

    #[test]
    fn csv_quotes_and_text_lists_every_device() {
        let c = county();
        let inv = build(Some(&c), &[], &[], NOW, DEFAULT_STALE_AFTER_MS);
        let csv = inv.devices_csv();
        let lines: Vec<&str> = csv.trim_end().split("\r\n").collect();
        assert_eq!(lines.len(), inv.devices.len() + 1);
        assert!(lines[0].starts_with("\u{feff}id,kind,registered,"));
        let mut out = String::new();
        csv_field(&mut out, "a,\"b\"");
        assert_eq!(out, "\"a,\"\"b\"\"\"");
        let text = inv.text();
        for d in &inv.devices {
            assert!(text.contains(&d.id), "{}", d.id);
        }
        assert!(text.contains("never_seen"));
    }
}
