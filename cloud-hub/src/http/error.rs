//! The REST API's one error shape: a status and `{"error": "…"}` naming the parameter, header or
//! id at fault (with `WWW-Authenticate` on auth refusals). The NGSI-LD endpoints answer
//! ProblemDetails instead, as their standard mandates (`crate::http::ngsi`).

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::storage::store::StoreError;

/// A refused or failed request.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    /// `WWW-Authenticate` of a 401 (and of a 403 for too low a role).
    pub(crate) challenge: Option<&'static str>,
}

/// The body of every REST API error.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    /// What was wrong, naming the parameter, header or id at fault.
    pub error: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            challenge: None,
        }
    }

    pub fn with_challenge(mut self, challenge: &'static str) -> Self {
        self.challenge = Some(challenge);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A small JSON body as axum read it: 415 without a JSON content type, any other problem with
/// it a 400 (documented), never axum's own 422.
pub fn small_json<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| {
        let status = match e.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, format!("body: {}", e.body_text()))
    })
}

/// At most 64 characters of client input, for error messages.
pub fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A named path (`Path<T>` with a struct `T`), or 400 saying what in it is wrong.
pub fn path_of<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|e| ApiError::bad_request(format!("path: {}", clip(&e.body_text()))))
}

/// An id in the path (`{id}`), as sent.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
pub struct IdPath {
    /// A ULID: 26 characters of Crockford base32.
    #[schemars(regex(pattern = r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$"))]
    pub id: String,
}

/// Parses an id from the path; `what` names it in the error.
pub fn parse_id(what: &str, path: Result<Path<IdPath>, PathRejection>) -> Result<Ulid, ApiError> {
    let Path(IdPath { id: raw }) =
        path.map_err(|e| ApiError::bad_request(format!("{what} in the path: {e}")))?;
    Ulid::from_string(&raw)
        .map_err(|e| ApiError::bad_request(format!("{what} `{}` is not a ULID: {e}", clip(&raw))))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error serving request");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("storage error: {e}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if let Some(c) = self.challenge {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        r
    }
}
