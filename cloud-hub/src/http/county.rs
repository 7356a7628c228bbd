//! `GET /api/v1/county`: the county model the hub was started with; `GET
//! /api/v1/county/outline`: its outline as GeoJSON (the map's frame; large, so apart).

use aide::transform::TransformOperation;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::http::error::ApiError;
use crate::http::openapi::{content, errors, respond, schema_of, viewer};
use crate::http::state::ApiState;
use crate::platform::county::County;
use crate::platform::geo::Geometry;
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

/// The county's outline, as served.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct OutlineFeature {
    /// Always `Feature`.
    #[serde(rename = "type")]
    kind: &'static str,
    properties: OutlineProps,
    geometry: Geometry,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct OutlineProps {
    id: String,
    name: String,
    adcode: Option<u32>,
}

pub(crate) fn outline_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("getCountyOutline")
        .tag("devices")
        .summary("The county's outline, a GeoJSON Feature")
        .description(
            "The boundary named by the county model's `county.outline` (display only: a county \
             deployment loads its own survey data), for maps drawn without any tile server.",
        );
    let op = respond(
        op,
        200,
        content(
            "The outline",
            "application/geo+json",
            schema_of::<OutlineFeature>(),
        ),
    );
    viewer(errors(
        op,
        &[(
            404,
            "The hub runs without a county model, or the model has no outline",
        )],
    ))
}

pub(crate) async fn outline<S: Store>(State(st): State<ApiState<S>>) -> Result<Response, ApiError> {
    let c = st.county.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no county model loaded (cloud-hub serve --county DIR, or county_dir in the config)",
        )
    })?;
    let geometry = c.outline.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "the county model has no outline (`county.outline` in county.toml)",
        )
    })?;
    let f = OutlineFeature {
        kind: "Feature",
        properties: OutlineProps {
            id: c.county.id.clone(),
            name: c.county.name.clone(),
            adcode: c.county.adcode,
        },
        geometry,
    };
    let body = serde_json::to_vec(&f)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/geo+json")],
        body,
    )
        .into_response())
}
