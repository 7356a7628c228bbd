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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aide::transform::TransformOperation;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::http::error::ApiError;
use crate::http::openapi::{content, errors, respond, schema_of, viewer};
use crate::http::state::ApiState;
use crate::http::tokens::{hex, unhex32, TokenInfo};
use crate::ingest::metrics::HttpAuthRefusal;
use crate::storage::store::Store;

/// The session cookie's name (also written out in `crate::http::openapi`'s security scheme).
pub const COOKIE: &str = "csb_session";
/// How long a session lasts after sign-in (a wall screen signs in about once a month).
pub const LIFETIME_MS: i64 = 30 * 24 * 3600 * 1000;
/// Sessions kept at most; beyond it the one closest to expiry goes.
pub const MAX_SESSIONS: usize = 4096;
const FILE: &str = "sessions.json";

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("web sessions file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("web sessions: no randomness for a session id: {0}")]
    Random(String),
}

#[derive(Debug, Clone, Copy)]
struct Kept {
    token: [u8; 32],
    expires_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct SessionsFile {
    sessions: Vec<Row>,
}

#[derive(Serialize, Deserialize)]
struct Row {
    id_sha256: String,
    token_sha256: String,
    expires_ms: i64,
}

/// The signed-in sessions, by the hash of their id.
pub struct Sessions {
    path: PathBuf,
    map: Mutex<HashMap<[u8; 32], Kept>>,
}

fn hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Reads `{data_dir}/sessions.json`. Sessions are disposable: a missing or unreadable file
    /// means none (everyone signs in again), never a hub that does not start.
    pub fn open(data_dir: &Path, now_ms: i64) -> Sessions {
        let path = data_dir.join(FILE);
        let mut map = HashMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<SessionsFile>(&bytes) {
                Ok(f) => {
                    for r in f.sessions {
                        if let (Some(id), Some(token)) =
                            (unhex32(&r.id_sha256), unhex32(&r.token_sha256))
                        {
                            if r.expires_ms > now_ms {
                                map.insert(
                                    id,
                                    Kept {
                                        token,
                                        expires_ms: r.expires_ms,
                                    },
                                );
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "web sessions file unreadable: every page signs in again"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e,
                "web sessions file unreadable: every page signs in again"),
        }
        Sessions {
            path,
            map: Mutex::new(map),
        }
    }

    /// A new session for the token with hash `token`: its id (the cookie's value), stored.
    pub fn create(&self, token: [u8; 32], now_ms: i64) -> Result<String, SessionError> {
        let mut b = [0u8; 32];
        getrandom::getrandom(&mut b).map_err(|e| SessionError::Random(e.to_string()))?;
        let id = hex(&b);
        let mut map = self.lock();
        map.retain(|_, k| k.expires_ms > now_ms);
        while map.len() >= MAX_SESSIONS {
            let Some(first) = map
                .iter()
                .min_by_key(|(_, k)| k.expires_ms)
                .map(|(h, _)| *h)
            else {
                break;
            };
            map.remove(&first);
        }
        map.insert(
            hash(&id),
            Kept {
                token,
                expires_ms: now_ms + LIFETIME_MS,
            },
        );
        self.save(&map)?;
        Ok(id)
    }

    /// The hash of the token behind session `id`, while it has not expired.
    pub fn lookup(&self, id: &str, now_ms: i64) -> Option<[u8; 32]> {
        if id.len() != 64 {
            return None;
        }
        self.lock()
            .get(&hash(id))
            .filter(|k| k.expires_ms > now_ms)
            .map(|k| k.token)
    }

    /// Signs session `id` out (nothing when it is unknown).
    pub fn remove(&self, id: &str) -> Result<(), SessionError> {
        let mut map = self.lock();
        if map.remove(&hash(id)).is_some() {
            self.save(&map)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Kept>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, map: &HashMap<[u8; 32], Kept>) -> Result<(), SessionError> {
        let file = SessionsFile {
            sessions: map
                .iter()
                .map(|(id, k)| Row {
                    id_sha256: hex(id),
                    token_sha256: hex(&k.token),
                    expires_ms: k.expires_ms,
                })
                .collect(),
        };
        let fail = |reason: String| SessionError::File {
            path: self.path.clone(),
            reason,
        };
        let json = serde_json::to_vec(&file).map_err(|e| fail(e.to_string()))?;
        let tmp = self.path.with_extension("json.tmp");
        crate::ingest::devices::replace_private(&self.path, &tmp, &json)
            .map_err(|e| fail(e.to_string()))
    }
}

/// The session id in the request's `Cookie` headers, if any.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_string())
}

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
    /// The token's name.
    name: String,
    role: crate::http::tokens::Role,
    /// A handler's department.
    department: Option<String>,
    /// `false` when the hub runs with HTTP auth off: everyone is `admin`, no sign-in.
    auth: bool,
}

impl SessionInfo {
    fn of(who: TokenInfo) -> Self {
        SessionInfo {
            name: who.name,
            role: who.role,
            department: who.department,
            auth: true,
        }
    }

    fn anonymous() -> Self {
        SessionInfo {
            name: "anonymous".into(),
            role: crate::http::tokens::Role::Admin,
            department: None,
            auth: false,
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
    let Json(body) =
        body.map_err(|e| ApiError::new(e.status(), format!("body: {}", e.body_text())))?;
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
    let id = access
        .sessions()
        .create(token, csb_wire::now_ms())
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
            "The caller of the session cookie (or bearer token). With HTTP auth off: \
             `anonymous`, `admin`, `auth: false`.",
        );
    let op = respond(
        op,
        200,
        content(
            "Who is signed in",
            "application/json",
            schema_of::<SessionInfo>(),
        ),
    );
    viewer(op)
}

pub(crate) async fn whoami<S: Store>(
    State(st): State<ApiState<S>>,
    who: Option<Extension<TokenInfo>>,
) -> Json<SessionInfo> {
    match (who, &st.access) {
        (Some(Extension(w)), Some(_)) => Json(SessionInfo::of(w)),
        // Auth off (the middleware lets everything through unnamed).
        _ => Json(SessionInfo::anonymous()),
    }
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
        access
            .sessions()
            .remove(&id)
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
    fn sessions_last_survive_a_restart_and_end() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sessions::open(dir.path(), 1_000);
        let t = [7u8; 32];
        let id = s.create(t, 1_000).unwrap();
        assert_eq!(s.lookup(&id, 2_000), Some(t));
        assert_eq!(s.lookup(&"0".repeat(64), 2_000), None);
        // Only hashes are on disk.
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(!text.contains(&id));
        let again = Sessions::open(dir.path(), 3_000);
        assert_eq!(again.lookup(&id, 3_000), Some(t));
        assert_eq!(again.lookup(&id, 1_000 + LIFETIME_MS), None, "expired");
        again.remove(&id).unwrap();
        assert_eq!(Sessions::open(dir.path(), 3_000).lookup(&id, 3_000), None);
        // A broken file is no session, not a failure.
        std::fs::write(dir.path().join(FILE), b"{").unwrap();
        assert_eq!(Sessions::open(dir.path(), 3_000).lookup(&id, 3_000), None);
    }

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
