//! HTTP API access (`[auth] http = "required"`): the [`POLICY`] table of who may call what, the
//! bearer-token check in front of every route ([`require_access`]), and the device signature
//! evidence uploads carry instead ([`upload_credentials`], checked by `crate::http::snapshots`).
//! Tokens are in [`crate::http::tokens`]; refusals are counted (`ingest::metrics`) and logged
//! rate-limited, never with a credential.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use csb_wire::sign::{SigningKey, UPLOAD_SIGNATURE_HEADER};

use crate::http::error::{clip, ApiError};
use crate::http::sessions::{self, Sessions};
use crate::http::tokens::{Role, TokenInfo, TokenRegistry};
use crate::ingest::devices::DeviceRegistry;
use crate::ingest::metrics::{HttpAuthRefusal, Metrics};
use crate::support::loglimit::LogLimiter;

/// Uploader of a snapshot, `{site}/{device}` (required on upload, echoed on download).
pub const DEVICE_HEADER: &str = "x-csb-device";
/// The event a snapshot belongs to, a ULID (optional on upload, echoed on download).
pub const EVENT_HEADER: &str = "x-csb-event";

/// What `[auth] http = "required"` checks requests with.
#[derive(Clone)]
pub struct HttpAccess {
    tokens: Arc<TokenRegistry>,
    /// The web page's sessions (cookies exchanged for a token).
    sessions: Arc<Sessions>,
    /// Evidence upload keys: the same credentials the devices use on MQTT.
    devices: Arc<DeviceRegistry>,
    /// Refusals are logged at most a few lines a minute (always counted).
    limiter: Arc<Mutex<LogLimiter>>,
}

impl HttpAccess {
    pub fn new(
        tokens: Arc<TokenRegistry>,
        sessions: Arc<Sessions>,
        devices: Arc<DeviceRegistry>,
    ) -> Self {
        HttpAccess {
            tokens,
            sessions,
            devices,
            limiter: Arc::new(Mutex::new(LogLimiter::new(10, Duration::from_secs(60)))),
        }
    }

    pub(crate) fn tokens(&self) -> &TokenRegistry {
        &self.tokens
    }

    pub(crate) fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    pub(crate) fn sessions_arc(&self) -> Arc<Sessions> {
        self.sessions.clone()
    }

    /// The token `token` is, if it is one (Open311 takes it as its `api_key`).
    pub(crate) fn authenticate(&self, token: &str) -> Option<TokenInfo> {
        self.tokens.authenticate(token)
    }

    /// Logs a refusal: method, path, reason and the token's name, never a credential.
    pub(crate) fn log_refusal(
        &self,
        method: &Method,
        path: &str,
        reason: HttpAuthRefusal,
        who: &str,
    ) {
        let mut l = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(suppressed) = l.allow(Instant::now()) {
            tracing::warn!(
                %method,
                path = %clip(path),
                reason = reason.as_str(),
                who,
                suppressed_since_last = suppressed,
                "HTTP request refused"
            );
        }
    }
}

/// Who may call a route with `[auth] http = "required"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: load balancers and orchestrators probe health without credentials.
    Open,
    /// An edge device, proven by the request's `X-Csb-Signature` (checked by the handler, which
    /// needs the body); bearer tokens are not taken, so evidence is always attributable to the
    /// device that captured it.
    Device,
    /// A bearer token of this role or a higher one.
    Role(Role),
    /// A bearer token (or session) of this role or higher, or a device's signature of the
    /// request (model downloads: `csb_wire::sign::sign_download`, checked here).
    DeviceOrRole(Role),
}

enum PathMatch {
    Exact(&'static str),
    /// The prefix followed by one path segment (an id).
    Item(&'static str),
    /// The prefix followed by anything.
    Under(&'static str),
    /// The web page's paths (anything outside the API's prefixes: `crate::http::web`).
    Page,
    /// A model's file: `/api/v1/models/{name}/{version}/files/{kind}`.
    ModelFile,
}

struct Rule {
    /// `"*"` for any method; HEAD counts as GET.
    method: &'static str,
    path: PathMatch,
    access: Access,
}

/// Routes that need something other than the default; first match wins. The default: reads
/// (GET, HEAD) need `viewer`, anything else (writes) `operator`. A new endpoint falls under the
/// default by its method; give it a row here when it needs more (management: `admin`) or less.
const POLICY: &[Rule] = &[
    // The web page's files: the page signs in itself (its data comes from the API).
    Rule {
        method: "GET",
        path: PathMatch::Page,
        access: Access::Open,
    },
    // Signing in, out, and who is signed in: the handlers check the token and the cookie
    // themselves (a page asks who it is before it signs in: never a 401).
    Rule {
        method: "*",
        path: PathMatch::Exact("/api/v1/session"),
        access: Access::Open,
    },
    Rule {
        method: "GET",
        path: PathMatch::Exact("/api/v1/health"),
        access: Access::Open,
    },
    // A new gateway has no credentials yet: its one-time token is checked by the handler.
    Rule {
        method: "POST",
        path: PathMatch::Exact("/api/v1/provision"),
        access: Access::Open,
    },
    // The API's description (no data in it): clients and tools read it before they have a token.
    Rule {
        method: "GET",
        path: PathMatch::Exact("/api/v1/openapi.json"),
        access: Access::Open,
    },
    Rule {
        method: "PUT",
        path: PathMatch::Item("/api/v1/snapshots/"),
        access: Access::Device,
    },
    // A model's files: viewers, or the devices that run it (a signed request, no token).
    Rule {
        method: "GET",
        path: PathMatch::ModelFile,
        access: Access::DeviceOrRole(Role::Viewer),
    },
    // The digital twin (NGSI-LD reads and the change stream): viewers, like the other reads.
    Rule {
        method: "GET",
        path: PathMatch::Under("/ngsi-ld/v1/"),
        access: Access::Role(Role::Viewer),
    },
    Rule {
        method: "GET",
        path: PathMatch::Exact("/api/v1/twin/stream"),
        access: Access::Role(Role::Viewer),
    },
    // Cases: any token may ask; the workflow checks each role's actions (a viewer's are none).
    Rule {
        method: "POST",
        path: PathMatch::Under("/api/v1/cases"),
        access: Access::Role(Role::Viewer),
    },
    // Open311 GeoReport v2 (citizen apps): reads are public, as Open311 servers' are; a POST
    // proves itself with its `api_key`, which the handler checks (crate::http::open311).
    Rule {
        method: "*",
        path: PathMatch::Under("/open311/v2/"),
        access: Access::Open,
    },
    // Reserved for management endpoints (tokens, devices, config over HTTP).
    Rule {
        method: "*",
        path: PathMatch::Under("/api/v1/admin/"),
        access: Access::Role(Role::Admin),
    },
];

/// What `method path` needs with `[auth] http = "required"` (see [`POLICY`]).
pub fn access_for(method: &Method, path: &str) -> Access {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    let path_matches = |m: &PathMatch| match *m {
        PathMatch::Exact(p) => path == p,
        PathMatch::Item(prefix) => path
            .strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/')),
        PathMatch::Under(prefix) => path.starts_with(prefix),
        PathMatch::Page => crate::http::web::is_page(path),
        PathMatch::ModelFile => path
            .strip_prefix("/api/v1/models/")
            .map(|rest| rest.split('/').collect::<Vec<_>>())
            .is_some_and(|s| s.len() == 4 && s[2] == "files" && s.iter().all(|x| !x.is_empty())),
    };
    POLICY
        .iter()
        .find(|r| (r.method == "*" || r.method == method) && path_matches(&r.path))
        .map(|r| r.access)
        .unwrap_or(if method == "GET" {
            Access::Role(Role::Viewer)
        } else {
            Access::Role(Role::Operator)
        })
}

/// `WWW-Authenticate` challenges (RFC 6750 for the bearer ones).
const CHALLENGE_BEARER: &str = "Bearer realm=\"csb-hub\"";
const CHALLENGE_BAD_REQUEST: &str = "Bearer realm=\"csb-hub\", error=\"invalid_request\"";
const CHALLENGE_BAD_TOKEN: &str = "Bearer realm=\"csb-hub\", error=\"invalid_token\"";
const CHALLENGE_SCOPE: &str = "Bearer realm=\"csb-hub\", error=\"insufficient_scope\"";
/// Evidence uploads authenticate with a device signature, not a bearer token.
pub(crate) const CHALLENGE_SIGNATURE: &str = "CSB-Signature realm=\"csb-hub\"";

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, HttpAuthRefusal> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(HttpAuthRefusal::MissingToken)?;
    let value = value
        .to_str()
        .map_err(|_| HttpAuthRefusal::MalformedToken)?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(HttpAuthRefusal::MalformedToken)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || token.contains(char::is_whitespace)
    {
        return Err(HttpAuthRefusal::MalformedToken);
    }
    Ok(token)
}

/// Checks the request's bearer token against the role it needs.
fn check_bearer(
    access: &HttpAccess,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    needed: Role,
) -> Result<TokenInfo, (HttpAuthRefusal, String, ApiError)> {
    let refuse = |reason, who: String, status, challenge, message: String| {
        (
            reason,
            who,
            ApiError::new(status, message).with_challenge(challenge),
        )
    };
    let token = bearer(headers).map_err(|reason| match reason {
        HttpAuthRefusal::MissingToken => refuse(
            reason,
            String::new(),
            StatusCode::UNAUTHORIZED,
            CHALLENGE_BEARER,
            "authentication required: send `Authorization: Bearer <token>` with a token from \
             `cloud-hub token add`"
                .into(),
        ),
        _ => refuse(
            reason,
            String::new(),
            StatusCode::UNAUTHORIZED,
            CHALLENGE_BAD_REQUEST,
            "header `Authorization` must be `Bearer <token>`".into(),
        ),
    })?;
    let Some(who) = access.tokens.authenticate(token) else {
        return Err(refuse(
            HttpAuthRefusal::UnknownToken,
            String::new(),
            StatusCode::UNAUTHORIZED,
            CHALLENGE_BAD_TOKEN,
            "bearer token not recognised (never issued, or revoked)".into(),
        ));
    };
    if !who.role.covers(needed) {
        return Err(refuse(
            HttpAuthRefusal::InsufficientRole,
            who.name.clone(),
            StatusCode::FORBIDDEN,
            CHALLENGE_SCOPE,
            format!(
                "`{method} {}` needs role `{needed}` or higher; token `{}` has role `{}`",
                clip(path),
                who.name,
                who.role
            ),
        ));
    }
    Ok(who)
}

/// Checks a web session cookie: the session must be live, its token still issued, its role
/// enough, and a write must come from the hub's own origin.
fn check_session(
    access: &HttpAccess,
    id: &str,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    needed: Role,
) -> Result<TokenInfo, (HttpAuthRefusal, String, ApiError)> {
    let who = access
        .sessions
        .lookup(id, csb_wire::now_ms())
        .and_then(|token| access.tokens.by_hash(&token))
        .ok_or_else(|| {
            (
                HttpAuthRefusal::UnknownSession,
                String::new(),
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "session ended (signed out, expired, or its token revoked): sign in again",
                )
                .with_challenge(CHALLENGE_BEARER),
            )
        })?;
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && !same_origin(headers) {
        return Err((
            HttpAuthRefusal::CrossOrigin,
            who.name,
            ApiError::new(
                StatusCode::FORBIDDEN,
                "a write with the session cookie must come from the hub's own page (`Origin` \
                 differs from `Host`)",
            ),
        ));
    }
    if !who.role.covers(needed) {
        let message = format!(
            "`{method} {}` needs role `{needed}` or higher; `{}` has role `{}`",
            clip(path),
            who.name,
            who.role
        );
        return Err((
            HttpAuthRefusal::InsufficientRole,
            who.name,
            ApiError::new(StatusCode::FORBIDDEN, message),
        ));
    }
    Ok(who)
}

/// Whether a request's `Origin` (or, without one, its `Referer`) is the host it was sent to.
/// Browsers send `Origin` with every write; a request with neither is not a browser's.
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let from = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    match (from, host) {
        (None, _) => true,
        (Some(from), Some(host)) => {
            let rest = from
                .strip_prefix("http://")
                .or_else(|| from.strip_prefix("https://"))
                .unwrap_or("");
            rest.split('/').next() == Some(host)
        }
        (Some(_), None) => false,
    }
}

/// What the access middleware holds: the checks (`None` with `http = "off"`) and the counters
/// its refusals go to.
#[derive(Clone)]
pub struct Gate {
    pub access: Option<HttpAccess>,
    pub metrics: Arc<Metrics>,
}

/// The `[auth] http = "required"` gate in front of every route (see [`access_for`]).
pub async fn require_access(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let Some(access) = &gate.access else {
        return next.run(req).await;
    };
    let needed = match access_for(req.method(), req.uri().path()) {
        // `Device`: put_snapshot verifies the signature once it has the body.
        Access::Open | Access::Device => return next.run(req).await,
        Access::Role(role) => role,
        // A device's signed request (no token, no cookie): checked here, it has no body.
        Access::DeviceOrRole(_)
            if req.headers().contains_key(UPLOAD_SIGNATURE_HEADER)
                && !req.headers().contains_key(header::AUTHORIZATION)
                && sessions::cookie(req.headers()).is_none() =>
        {
            return match check_download(access, req.headers(), req.uri().path()) {
                Ok(()) => next.run(req).await,
                Err((who, e)) => {
                    let reason = HttpAuthRefusal::DownloadSignature;
                    gate.metrics.refuse_http(reason);
                    access.log_refusal(req.method(), req.uri().path(), reason, &who);
                    e.into_response()
                }
            };
        }
        Access::DeviceOrRole(role) => role,
    };
    let checked = match sessions::cookie(req.headers()) {
        // A bearer token, when sent, is what counts (API clients may carry stale cookies).
        Some(id) if req.headers().get(header::AUTHORIZATION).is_none() => check_session(
            access,
            &id,
            req.headers(),
            req.method(),
            req.uri().path(),
            needed,
        ),
        _ => check_bearer(
            access,
            req.headers(),
            req.method(),
            req.uri().path(),
            needed,
        ),
    };
    match checked {
        Ok(who) => {
            // Handlers may want to know who asked (audit of future write endpoints).
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        Err((reason, who, e)) => {
            gate.metrics.refuse_http(reason);
            access.log_refusal(req.method(), req.uri().path(), reason, &who);
            e.into_response()
        }
    }
}

/// Checks a device's signature of a download ([`csb_wire::sign::verify_download`]): the
/// device has credentials, the timestamp is within minutes of the hub's clock, the signature
/// is the device's over this path, device and timestamp. On refusal: who, and the 401.
fn check_download(
    access: &HttpAccess,
    headers: &HeaderMap,
    path: &str,
) -> Result<(), (String, ApiError)> {
    use csb_wire::sign::{
        verify_download, DOWNLOAD_DEVICE_HEADER, DOWNLOAD_MAX_SKEW_MS, DOWNLOAD_TIMESTAMP_HEADER,
    };
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or("")
    };
    let device = text(DOWNLOAD_DEVICE_HEADER);
    let refuse = |message: String| {
        (
            clip(device),
            ApiError::new(StatusCode::UNAUTHORIZED, message).with_challenge(CHALLENGE_SIGNATURE),
        )
    };
    let Some((site, dev)) = device.split_once('/').filter(|(s, d)| {
        csb_wire::topic::validate_level("site", s).is_ok()
            && csb_wire::topic::validate_level("device", d).is_ok()
    }) else {
        return Err(refuse(
            "a signed download needs header `X-Csb-Device: {site}/{device}`".into(),
        ));
    };
    let timestamp = text(DOWNLOAD_TIMESTAMP_HEADER);
    let Ok(ts) = timestamp.parse::<i64>() else {
        return Err(refuse(
            "a signed download needs header `X-Csb-Timestamp: <unix ms>`".into(),
        ));
    };
    let skew = csb_wire::now_ms().saturating_sub(ts);
    if skew.unsigned_abs() > DOWNLOAD_MAX_SKEW_MS as u64 {
        return Err(refuse(format!(
            "header `X-Csb-Timestamp` is {} s from the hub's clock (at most {} s): check the \
             device's clock",
            skew / 1000,
            DOWNLOAD_MAX_SKEW_MS / 1000
        )));
    }
    let Some(key) = access.devices.key(site, dev) else {
        return Err(refuse(format!(
            "device {} has no credentials (`cloud-hub device add`)",
            clip(device)
        )));
    };
    verify_download(&key, path, device, timestamp, text(UPLOAD_SIGNATURE_HEADER)).map_err(|_| {
        refuse(format!(
            "header `X-Csb-Signature` is not {}'s signature of `GET {}` at this timestamp",
            clip(device),
            clip(path)
        ))
    })
}

/// What an upload's signature is checked against once its body is read.
pub(crate) struct SignedUpload {
    pub(crate) key: SigningKey,
    /// The signed strings, exactly as sent.
    pub(crate) id: String,
    pub(crate) device: String,
    pub(crate) event: String,
    pub(crate) signature: String,
}

/// The uploading device's key and the request's signature, before the body is read: an
/// unsigned upload or an unknown device is refused without reading the body.
pub(crate) fn upload_credentials(
    access: &HttpAccess,
    headers: &HeaderMap,
    raw_id: String,
    site: &str,
    device: &str,
) -> Result<SignedUpload, (HttpAuthRefusal, ApiError)> {
    let unauthorized = |reason, message: String| {
        (
            reason,
            ApiError::new(StatusCode::UNAUTHORIZED, message).with_challenge(CHALLENGE_SIGNATURE),
        )
    };
    let signature = headers
        .get(UPLOAD_SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            unauthorized(
                HttpAuthRefusal::UploadUnsigned,
                "evidence uploads must be signed: header `X-Csb-Signature: <64 hex>` \
                 (HMAC-SHA256 with the device key, see docs/wire.md)"
                    .into(),
            )
        })?;
    let Some(key) = access.devices.key(site, device) else {
        return Err(unauthorized(
            HttpAuthRefusal::UploadUnknownDevice,
            format!("device {site}/{device} has no credentials (`cloud-hub device add`)"),
        ));
    };
    // upload_headers has checked both: present, and ASCII.
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    Ok(SignedUpload {
        key,
        id: raw_id,
        device: text(DEVICE_HEADER),
        event: text(EVENT_HEADER),
        signature: signature.to_string(),
    })
}

#[cfg(test)]
mod access_tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn policy_table() {
        let a = |m: Method, p: &str| access_for(&m, p);
        assert_eq!(a(Method::GET, "/api/v1/health"), Access::Open);
        assert_eq!(a(Method::HEAD, "/api/v1/health"), Access::Open);
        assert_eq!(a(Method::GET, "/api/v1/openapi.json"), Access::Open);
        assert_eq!(
            a(Method::POST, "/api/v1/openapi.json"),
            Access::Role(Role::Operator)
        );
        // Only reading health is open.
        assert_eq!(
            a(Method::POST, "/api/v1/health"),
            Access::Role(Role::Operator)
        );
        assert_eq!(a(Method::PUT, "/api/v1/snapshots/01J0"), Access::Device);
        assert_eq!(
            a(Method::PUT, "/api/v1/snapshots/01J0/x"),
            Access::Role(Role::Operator)
        );
        assert_eq!(
            a(Method::PUT, "/api/v1/snapshots/"),
            Access::Role(Role::Operator)
        );
        for p in [
            "/api/v1/events",
            "/api/v1/events/01J0/snapshot",
            "/api/v1/snapshots/01J0",
            "/metrics",
            "/api/v1/nonesuch",
        ] {
            assert_eq!(a(Method::GET, p), Access::Role(Role::Viewer), "{p}");
            assert_eq!(a(Method::DELETE, p), Access::Role(Role::Operator), "{p}");
        }
        // The web page's paths are the page's (it signs in itself); writes there are not.
        for p in ["/", "/cases", "/assets/index-1a2b.js", "/nonesuch"] {
            assert_eq!(a(Method::GET, p), Access::Open, "{p}");
            assert_eq!(a(Method::DELETE, p), Access::Role(Role::Operator), "{p}");
        }
        assert_eq!(a(Method::POST, "/api/v1/session"), Access::Open);
        assert_eq!(a(Method::DELETE, "/api/v1/session"), Access::Open);
        assert_eq!(a(Method::GET, "/api/v1/session"), Access::Open);
        assert_eq!(
            a(Method::GET, "/api/v1/admin/tokens"),
            Access::Role(Role::Admin)
        );
        // Open311: the handler checks a POST's api_key.
        assert_eq!(a(Method::GET, "/open311/v2/services.json"), Access::Open);
        assert_eq!(a(Method::POST, "/open311/v2/requests.xml"), Access::Open);
        assert_eq!(a(Method::POST, "/open311/v2"), Access::Role(Role::Operator));
        // A model's files: viewers or signing devices; the rest of the warehouse as usual.
        assert_eq!(
            a(Method::GET, "/api/v1/models/yolox_nano/1.0/files/model"),
            Access::DeviceOrRole(Role::Viewer)
        );
        assert_eq!(
            a(Method::PUT, "/api/v1/models/yolox_nano/1.0/files/model"),
            Access::Role(Role::Operator)
        );
        assert_eq!(
            a(Method::GET, "/api/v1/models/yolox_nano/1.0"),
            Access::Role(Role::Viewer)
        );
        assert_eq!(
            a(Method::GET, "/api/v1/models/yolox_nano/1.0/files/model/x"),
            Access::Role(Role::Viewer)
        );
    }

    #[test]
    fn bearer_header_forms() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(
            bearer(&HeaderMap::new()),
            Err(HttpAuthRefusal::MissingToken)
        );
        assert_eq!(bearer(&h("Bearer csb_x")), Ok("csb_x"));
        assert_eq!(bearer(&h("bearer  csb_x ")), Ok("csb_x"));
        for bad in ["Basic abc", "Bearer", "Bearer ", "csb_x", "Bearer a b"] {
            assert_eq!(
                bearer(&h(bad)),
                Err(HttpAuthRefusal::MalformedToken),
                "{bad}"
            );
        }
    }

    #[test]
    fn challenges_are_valid_header_values() {
        for c in [
            CHALLENGE_BEARER,
            CHALLENGE_BAD_REQUEST,
            CHALLENGE_BAD_TOKEN,
            CHALLENGE_SCOPE,
            CHALLENGE_SIGNATURE,
        ] {
            HeaderValue::from_str(c).unwrap();
        }
    }
}
