//! Web sessions: the page signs in once with an API token and is given an `HttpOnly`,
//! `SameSite=Strict` cookie instead — the page's scripts never hold the token, and the SSE
//! stream (`EventSource` cannot send headers) is authenticated like every other call.
//!
//! A session remembers only the hash of its token: revoking the token (`cloud-hub token revoke`)
//! ends its sessions within the token file's refresh. Sessions are kept in
//! `{data_dir}/sessions.json` (hashes of the session ids, never the ids), so a restarted hub
//! keeps its wall screens signed in. Writes with a session cookie must come from the hub's own
//! origin (checked in `crate::http::auth`): `SameSite` does not stop a page on another port of
//! the same host.

use aide::transform::TransformOperation;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::http::error::{small_json, ApiError};
use crate::http::openapi::{content, errors, respond, schema_of};
use crate::http::sessions::{cookie, COOKIE, LIFETIME_MS};
use crate::http::state::ApiState;
use crate::http::tokens::TokenInfo;
use crate::ingest::metrics::HttpAuthRefusal;
use crate::storage::store::Store;

/// `Set-Cookie` for session `id` (empty: clear it). `Secure` when the client reached the hub
/// over HTTPS (through a TLS proxy that says so).
fn set_cookie(id: &str, headers: &HeaderMap) -> HeaderValue {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let max_age = if id.is_empty() { 0 } else { LIFETIME_MS / 1000 };
    let c = cookie::Cookie::build((COOKIE, id.to_string()))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .secure(https)
        .max_age(cookie::time::Duration::seconds(max_age))
        .build();
    HeaderValue::from_str(&c.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Who is signed in.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionInfo {
    /// Whether the request carried a live session cookie (or a valid bearer token). `false`:
    /// sign in with `POST /api/v1/session`.
    signed_in: bool,
    /// The token's name.
    name: Option<String>,
    role: Option<crate::http::tokens::Role>,
    /// A handler's department.
    department: Option<String>,
    /// `false` when the hub runs with HTTP auth off: everyone is `admin`, no sign-in.
    auth: bool,
}

impl SessionInfo {
    fn of(who: TokenInfo) -> Self {
        SessionInfo {
            signed_in: true,
            name: Some(who.name),
            role: Some(who.role),
            department: who.department,
            auth: true,
        }
    }

    fn anonymous() -> Self {
        SessionInfo {
            signed_in: true,
            name: Some("anonymous".into()),
            role: Some(crate::http::tokens::Role::Admin),
            department: None,
            auth: false,
        }
    }

    fn nobody() -> Self {
        SessionInfo {
            signed_in: false,
            name: None,
            role: None,
            department: None,
            auth: true,
        }
    }
}

/// `POST /api/v1/session`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An API token (`cloud-hub token add`).
    token: String,
}

pub(crate) fn sign_in_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("signIn")
        .tag("session")
        .summary("Sign in to the web page with an API token")
        .description(
            "Exchanges an API token for a session cookie (`csb_session`: HttpOnly, \
             SameSite=Strict, 30 days), which then authenticates the page's calls and its \
             event stream. With HTTP auth off, answers who everyone is and sets no cookie. \
             Writes with the cookie must come from the hub's own origin.",
        );
    let op = respond(
        op,
        200,
        content(
            "Signed in; the cookie is in `Set-Cookie`",
            "application/json",
            schema_of::<SessionInfo>(),
        ),
    );
    errors(
        op,
        &[
            (400, "The body is not `{\"token\": \"…\"}`"),
            (401, "The token was never issued or has been revoked"),
            (415, "The body is not JSON"),
            (500, "The session could not be stored"),
        ],
    )
}

pub(crate) async fn sign_in<S: Store>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    body: Result<Json<SignIn>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = small_json(body)?;
    let Some(access) = &st.access else {
        return Ok(Json(SessionInfo::anonymous()).into_response());
    };
    let Some((token, who)) = access.tokens().authenticate_hashed(body.token.trim()) else {
        st.metrics.refuse_http(HttpAuthRefusal::UnknownToken);
        access.log_refusal(
            &axum::http::Method::POST,
            "/api/v1/session",
            HttpAuthRefusal::UnknownToken,
            "",
        );
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token not recognised (never issued, or revoked)",
        ));
    };
    // The session file is written and synced: off the async threads.
    let sessions = access.sessions_arc();
    let id = tokio::task::spawn_blocking(move || sessions.create(token, csb_wire::now_ms()))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            tracing::error!(error = %e, "web session not stored");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        })?;
    tracing::info!(who = who.name, role = %who.role, "signed in to the web page");
    Ok((
        [(header::SET_COOKIE, set_cookie(&id, &headers))],
        Json(SessionInfo::of(who)),
    )
        .into_response())
}

pub(crate) fn whoami_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("session")
        .tag("session")
        .summary("Who is signed in")
        .description(
            "The caller of the session cookie (or bearer token); `signed_in: false` without one \
             (a page asks before it shows its sign-in, so this is never a 401). With HTTP auth \
             off: `anonymous`, `admin`, `auth: false`.",
        );
    respond(
        op,
        200,
        content(
            "Who is signed in",
            "application/json",
            schema_of::<SessionInfo>(),
        ),
    )
}

pub(crate) async fn whoami<S: Store>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
) -> Json<SessionInfo> {
    let Some(access) = &st.access else {
        return Json(SessionInfo::anonymous());
    };
    // A malformed `Authorization` is nobody, as no header is (this answer never refuses).
    let bearer = crate::http::auth::bearer(&headers).ok();
    let who = match bearer {
        Some(token) => access.tokens().authenticate(token),
        None => cookie(&headers).and_then(|id| {
            access
                .sessions()
                .lookup(&id, csb_wire::now_ms())
                .and_then(|t| access.tokens().by_hash(&t))
        }),
    };
    Json(who.map_or_else(SessionInfo::nobody, SessionInfo::of))
}

pub(crate) fn sign_out_docs(op: TransformOperation) -> TransformOperation {
    op.id("signOut")
        .tag("session")
        .summary("Sign out of the web page")
        .description("Ends the cookie's session and clears the cookie; 204 even without one.")
        .response_with::<204, (), _>(|r| r.description("Signed out"))
}

pub(crate) async fn sign_out<S: Store>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let (Some(access), Some(id)) = (&st.access, cookie(&headers)) {
        let sessions = access.sessions_arc();
        tokio::task::spawn_blocking(move || sessions.remove(&id))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    }
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, set_cookie("", &headers))],
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_cookie_is_this_one() {
        let doc = serde_json::to_value(crate::http::openapi()).unwrap();
        let scheme = &doc["components"]["securitySchemes"]["sessionCookie"];
        assert_eq!(scheme["name"], COOKIE, "{scheme}");
    }

    #[test]
    fn the_cookie_is_found_among_others_and_set_strict() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; csb_session=abc"),
        );
        assert_eq!(cookie(&h).as_deref(), Some("abc"));
        let v = set_cookie("abc", &HeaderMap::new());
        let v = v.to_str().unwrap();
        for part in ["csb_session=abc", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(v.contains(part), "{v}");
        }
        assert!(!v.contains("Secure"));
    }
}
