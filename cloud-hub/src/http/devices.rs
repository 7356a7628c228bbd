//! `GET /api/v1/devices`: the latest status of every device, as published, and when it came.

use axum::extract::State;
use axum::Json;
use schemars::JsonSchema;
use serde::Serialize;

use crate::http::error::ApiError;
use crate::http::state::{store_call, ApiState};
use crate::storage::store::{DeviceRecord, Store};

#[derive(Serialize, JsonSchema)]
pub struct DevicesBody {
    /// Devices in this answer.
    count: usize,
    /// Each status as published (`cameras`, `sensors` …) plus `received_ms`.
    devices: Vec<DeviceRecord>,
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
