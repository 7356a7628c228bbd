//! `POST /api/v1/provision`: a new gateway exchanges its one-time enrolment token
//! ([`crate::ingest::enrol`]) for its device credentials — the MQTT user name and the secret
//! that is its password and signing key. Open to anyone (the token is the credential); every
//! refusal is a 401 that says why (unknown, used, expired), counted as `enrolment_refused`.

use aide::transform::TransformOperation;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::http::error::{small_json, ApiError};
use crate::http::openapi::{content, errors, respond, schema_of};
use crate::http::state::ApiState;
use crate::ingest::devices::DeviceError;
use crate::ingest::enrol::{self, EnrolError};
use crate::ingest::metrics::HttpAuthRefusal;
use crate::storage::store::Store;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRequest {
    /// The one-time token from `cloud-hub device enrol` (`csbe_…`).
    token: String,
    /// The box's own `SITE/DEVICE` (its config's `[agent]`): a token issued for another
    /// device is then refused (409) without being used up.
    #[serde(default)]
    device: Option<String>,
}

/// The device's credentials, given once.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Provisioned {
    /// `SITE/DEVICE`: the MQTT user name (`mqtt.username`).
    username: String,
    site: String,
    device: String,
    /// The MQTT password and the key of the device's payload signatures (`mqtt.secret_file`).
    /// Shown this once; the hub keeps its own copy in devices.json.
    secret: String,
    /// The hub's MQTT port.
    mqtt_port: u16,
}

pub(crate) fn provision_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("provisionDevice")
        .tag("devices")
        .summary("Enrol a gateway: a one-time token for its device credentials")
        .description(
            "`edge-agent provision` calls this with the token `cloud-hub device enrol` issued. \
             The token works once and until it expires; the credentials are on disk before \
             the answer and take effect at once (no restart).",
        );
    let op = respond(
        op,
        201,
        content(
            "The device's credentials",
            "application/json",
            schema_of::<Provisioned>(),
        ),
    );
    errors(
        op,
        &[
            (400, "The body is not `{\"token\": \"…\"}`"),
            (401, "Not a token of this hub, already used, or expired (the message says which)"),
            (409, "The device already has credentials, or the token is for another device than `device`"),
            (415, "The body is not JSON"),
            (500, "The credentials could not be stored"),
        ],
    )
}

pub(crate) async fn provision<S: Store>(
    State(st): State<ApiState<S>>,
    body: Result<Json<ProvisionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = small_json(body)?;
    let Some(dir) = st.data_dir.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this hub does not enrol devices",
        ));
    };
    if body.token.len() > 256 || body.device.as_ref().is_some_and(|d| d.len() > 256) {
        return Err(ApiError::bad_request(
            "body field `token` or `device`: too long",
        ));
    }
    let (token, device) = (body.token, body.device);
    let r = tokio::task::spawn_blocking(move || {
        enrol::redeem(&dir, &token, device.as_deref(), csb_wire::now_ms())
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match r {
        Ok((username, secret)) => {
            let (site, device) = username.split_once('/').unwrap_or((&username, ""));
            tracing::info!(device = %username, "device enrolled with a one-time token");
            let answer = Provisioned {
                site: site.to_string(),
                device: device.to_string(),
                username: username.clone(),
                secret,
                mqtt_port: st.mqtt_addr.port(),
            };
            Ok((StatusCode::CREATED, Json(answer)).into_response())
        }
        Err(e @ (EnrolError::Unknown | EnrolError::Used { .. } | EnrolError::Expired { .. })) => {
            st.metrics.refuse_http(HttpAuthRefusal::EnrolmentRefused);
            if let Some(a) = &st.access {
                a.log_refusal(
                    &axum::http::Method::POST,
                    "/api/v1/provision",
                    HttpAuthRefusal::EnrolmentRefused,
                    "",
                );
            } else {
                tracing::warn!(reason = %e, "enrolment refused");
            }
            Err(ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))
        }
        Err(EnrolError::Device(e @ DeviceError::Exists(_))) => {
            Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
        Err(e @ EnrolError::WrongDevice { .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
        Err(e) => {
            tracing::error!(error = %e, "enrolment failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("enrolment failed: {e}"),
            ))
        }
    }
}
