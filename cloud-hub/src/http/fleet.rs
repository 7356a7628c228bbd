//! Fleet configuration over HTTP: `GET /api/v1/fleet/configs` (every device: desired and
//! applied version, in sync / pending / rejected), `GET` and `PUT
//! /api/v1/fleet/configs/{site}/{device}` (one device's record with its audit trail; a new
//! desired version of its camera settings, checked with the agents' own validator, stored, then
//! pushed).

use aide::transform::TransformOperation;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::fleet::config::{DeviceConfig, FleetConfig, FleetError, SyncState};
use crate::http::cases::{blocking, JsonBody};
use crate::http::error::ApiError;
use crate::http::openapi::{content, errors, operator, respond, schema_of, viewer};
use crate::http::state::ApiState;
use crate::http::tokens::TokenInfo;
use crate::storage::store::Store;

/// A device's configuration record and where it stands.
#[derive(Serialize, JsonSchema)]
pub struct DeviceConfigView {
    #[serde(flatten)]
    pub record: DeviceConfig,
    pub state: SyncState,
}

impl From<DeviceConfig> for DeviceConfigView {
    fn from(record: DeviceConfig) -> Self {
        DeviceConfigView {
            state: record.state(),
            record,
        }
    }
}

/// One row of the fleet list.
#[derive(Serialize, JsonSchema)]
pub struct FleetRow {
    pub device: String,
    pub desired_version: Option<u64>,
    pub applied_version: Option<u64>,
    /// The warehouse model the desired version runs (`name@version`); absent: the agent's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired_model: Option<String>,
    /// The model the agent said it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_model: Option<csb_wire::model::ModelVersion>,
    pub state: SyncState,
    /// Why the agent refused the desired version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The desired version's time of setting, or the last answer's.
    pub updated_ms: Option<i64>,
}

#[derive(Serialize, JsonSchema)]
pub struct FleetList {
    pub count: usize,
    pub in_sync: usize,
    pub pending: usize,
    pub rejected: usize,
    pub devices: Vec<FleetRow>,
}

/// `{site}/{device}` in the path.
#[derive(Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct DevicePath {
    /// The gateway's site (first topic level), e.g. `yuexi`.
    pub site: String,
    /// The gateway's device id, e.g. `gw-01`.
    pub device: String,
}

/// A new desired configuration for one device.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    /// Each listed camera runs these settings (zones, lines, rules, class filter) instead of its
    /// local ones; cameras not listed keep their local settings. A camera's `model`
    /// (`NAME@VERSION`) must be one of `models`.
    pub cameras: Vec<csb_wire::CameraSettings>,
    /// Warehouse models for the cameras that name one (each `ready` in the warehouse). Absent:
    /// the device keeps the ones it has been given; `[]`: none.
    #[serde(default)]
    pub models: Option<Vec<crate::fleet::rollout::ModelKey>>,
}

fn fleet_of<S>(st: &ApiState<S>) -> Result<std::sync::Arc<FleetConfig>, ApiError> {
    st.fleet.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "fleet configuration is not running",
        )
    })
}

fn device_of(path: Result<Path<DevicePath>, PathRejection>) -> Result<String, ApiError> {
    let Path(p) = path.map_err(|e| ApiError::bad_request(format!("path: {}", e.body_text())))?;
    Ok(format!("{}/{}", p.site, p.device))
}

fn fleet_error(e: FleetError) -> ApiError {
    match e {
        FleetError::Device(_) => ApiError::bad_request(e.to_string()),
        // As the other JSON bodies' field errors (cases): the field is named.
        FleetError::Invalid { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        FleetError::Store { .. } | FleetError::Read { .. } => {
            tracing::error!("{e}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

pub(crate) fn list_docs(op: TransformOperation) -> TransformOperation {
    let op = op.id("listFleetConfigs").tag("fleet").summary(
        "Every device's configuration: desired vs applied version, in sync, pending or rejected",
    );
    errors(viewer(op), &[(503, "Fleet configuration is not running")])
}

pub(crate) async fn list<S: Store>(
    State(st): State<ApiState<S>>,
) -> Result<Json<FleetList>, ApiError> {
    let fleet = fleet_of(&st)?;
    let devices: Vec<FleetRow> = fleet
        .list()
        .into_iter()
        .map(|r| FleetRow {
            state: r.state(),
            desired_version: r.desired.as_ref().map(|d| d.version),
            applied_version: r.applied_version,
            desired_model: r
                .desired
                .as_ref()
                .and_then(|d| d.model.as_ref().map(|m| m.key())),
            applied_model: r.applied_model.clone(),
            reason: r
                .rejected
                .as_ref()
                .filter(|x| r.desired.as_ref().is_some_and(|d| d.version == x.version))
                .map(|x| x.reason.clone()),
            updated_ms: r.audit.last().map(|a| a.at_ms),
            device: r.device,
        })
        .collect();
    let count = |s: SyncState| devices.iter().filter(|d| d.state == s).count();
    Ok(Json(FleetList {
        count: devices.len(),
        in_sync: count(SyncState::InSync),
        pending: count(SyncState::Pending),
        rejected: count(SyncState::Rejected),
        devices,
    }))
}

pub(crate) fn get_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("getFleetConfig")
        .tag("fleet")
        .summary("One device's configuration: the desired settings, what the agent applied or why it refused, the audit trail");
    errors(
        viewer(op),
        &[
            (400, "The path is not SITE/DEVICE"),
            (404, "No configuration was ever set for this device"),
            (503, "Fleet configuration is not running"),
        ],
    )
}

pub(crate) async fn get<S: Store>(
    State(st): State<ApiState<S>>,
    path: Result<Path<DevicePath>, PathRejection>,
) -> Result<Json<DeviceConfigView>, ApiError> {
    let device = device_of(path)?;
    let fleet = fleet_of(&st)?;
    match fleet.get(&device) {
        Some(r) => Ok(Json(r.into())),
        None => Err(ApiError::not_found(format!(
            "no configuration set for {device}"
        ))),
    }
}

pub(crate) fn set_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("setFleetConfig")
        .tag("fleet")
        .summary("Set a device's camera settings: the next version, checked with the agents' validator, stored, pushed until the agent answers");
    let op = respond(
        op,
        202,
        content(
            "Stored and being pushed",
            "application/json",
            schema_of::<DeviceConfigView>(),
        ),
    );
    errors(
        operator(op),
        &[
            (400, "The path is not SITE/DEVICE"),
            (413, "The body is over the request size limit"),
            (415, "`Content-Type` is not `application/json`"),
            (
                422,
                "A body field is wrong, the settings are invalid, or a model is not ready in the warehouse (the message names the field)",
            ),
            (500, "The record could not be stored (logged)"),
            (503, "Fleet configuration is not running"),
        ],
    )
}

pub(crate) async fn set<S: Store>(
    State(st): State<ApiState<S>>,
    who: Option<Extension<TokenInfo>>,
    path: Result<Path<DevicePath>, PathRejection>,
    JsonBody(body): JsonBody<SetConfig>,
) -> Result<(StatusCode, Json<DeviceConfigView>), ApiError> {
    let device = device_of(path)?;
    let fleet = fleet_of(&st)?;
    let by = who.map_or_else(|| "anonymous".to_string(), |Extension(t)| t.name);
    let models = match body.models {
        None => None,
        Some(keys) => {
            let warehouse = crate::http::models::warehouse_of(&st)?;
            let mut out = Vec::with_capacity(keys.len());
            for (i, k) in keys.iter().enumerate() {
                let m = warehouse.assignable(&k.name, &k.version).map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("models[{i}]: {e}"),
                    )
                })?;
                out.push(m);
            }
            Some(out)
        }
    };
    let rec = blocking(&st.store_slots, "fleet configuration", move || {
        fleet
            .set_cameras(&device, body.cameras, models, &by)
            .map_err(fleet_error)
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(rec.into())))
}
