//! `GET /api/v1/county`: the county model the hub was started with.

use aide::transform::TransformOperation;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::http::error::ApiError;
use crate::http::openapi::{content, errors, respond, schema_of, viewer};
use crate::http::state::ApiState;
use crate::platform::county::County;
use crate::storage::store::Store;

pub(crate) fn county_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("getCounty")
        .tag("devices")
        .summary("The county model the hub was started with")
        .description(
            "The county, departments, towns, roads, zones (each with a GeoJSON `geometry`) and \
             the registered gateways, cameras and sensors (`configs/county/` is a sample).",
        );
    let op = respond(
        op,
        200,
        content(
            "The county model",
            "application/json",
            schema_of::<County>(),
        ),
    );
    viewer(errors(
        op,
        &[(
            404,
            "The hub runs without a county model (`cloud-hub serve --county DIR`)",
        )],
    ))
}

/// The county model as loaded: the county, departments, towns, roads, zones (GeoJSON geometry
/// inline) and the device inventory. 404 when the hub runs without one.
pub(crate) async fn county<S: Store>(State(st): State<ApiState<S>>) -> Result<Response, ApiError> {
    match &st.county {
        Some(c) => Ok(Json::<&County>(c).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no county model loaded (cloud-hub serve --county DIR, or county_dir in the config)",
        )),
    }
}
