//! `GET /api/v1/devices`: the latest status of every device, as published, and when it came.

use aide::transform::TransformOperation;
use axum::extract::State;
use axum::Json;
use schemars::JsonSchema;
use serde::Serialize;

use crate::http::error::ApiError;
use crate::http::openapi::{store_errors, viewer};
use crate::http::state::{store_call, ApiState};
use crate::storage::store::{DeviceRecord, Store};

#[derive(Serialize, JsonSchema)]
pub struct DevicesBody {
    /// Devices in this answer.
    count: usize,
    /// Each status as published (`cameras`, `sensors` …) plus `received_ms`.
    devices: Vec<DeviceRecord>,
}

pub(crate) fn devices_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("listDevices")
        .tag("devices")
        .summary("The latest status of every device");
    store_errors(viewer(op))
}

pub(crate) async fn devices<S: Store>(
    State(st): State<ApiState<S>>,
) -> Result<Json<DevicesBody>, ApiError> {
    let devices = store_call(&st.store_slots, "device list", st.store.devices()).await?;
    Ok(Json(DevicesBody {
        count: devices.len(),
        devices,
    }))
}
